//! mbrl-gpu: model-based reinforcement learning whose inner loops run as fused kernels.
//!
//! Module map (see `DESIGN.md` in the shared folder for the architecture):
//! - [`rng`]: Philox4x32-10, the counter-based generator every backend reproduces bit for bit;
//! - [`backend`]: the `Backend` trait of coarse fused operations and its implementations
//!   (`cpu` is the specification);
//! - [`model`]: the probabilistic ensemble (parameters, normaliser, training, elites);
//! - [`policy`]: SAC's actor and critics, replay buffers;
//! - [`env`]: batched environments and their reward/termination functions;
//! - [`io`]: safetensors checkpoints, transition CSVs, metrics.
pub mod algo;
pub mod backend;
pub mod bench;
pub mod bf16;
pub mod dense;
pub mod env;
pub mod error;
pub mod fastmath;
pub mod io;
pub mod limits;
pub mod linalg;
pub mod model;
pub mod plan;
pub mod policy;
pub mod rng;
pub mod serve;

pub use error::{Error, Result};

/// Run `f` on a thread of rayon's pool (directly if already on one). The parallel loops
/// inside `f` then share work among the pool's threads as it goes; called from outside the
/// pool, each of them would inject its work and put the caller to sleep until it is done, a
/// wake-up per loop (a SAC update runs dozens). On the 2-core Xeon, `examples/sac_profile.rs`
/// took 5.27 ms per SAC update this way against 5.69 ms (medians of 10 interleaved runs;
/// paired ratio 1.095).
pub(crate) fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::join(f, || ()).0
    }
}

/// [`in_pool`], with the pool's other threads kept awake while `f` runs: each polls for
/// the work `f`'s parallel loops share out ([`rayon::yield_now`]) instead of going to sleep
/// between them. A SAC update is dozens of parallel loops a few tens of microseconds
/// apart; between them an idle worker went to sleep and had to be woken by a system call,
/// 10–15 % of a bf16 update's CPU time under `perf` (on a virtual machine a wake-up is
/// also an interrupt to another virtual CPU). The pollers burn their threads only for the
/// duration of `f`.
pub(crate) fn in_hot_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return in_pool(f);
    }
    in_pool(|| {
        let done = AtomicBool::new(false);
        let mut out = None;
        rayon::scope(|s| {
            for _ in 1..threads {
                s.spawn(|_| {
                    while !done.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            // Set on the way out even if `f` panics: the scope waits for the pollers.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                }
            }
            let _stop = Stop(&done);
            out = Some(f());
        });
        out.expect("f ran")
    })
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    /// Parallel loops inside a hot pool give what they give outside it, and a panic inside
    /// comes out as a panic: the pollers stop, so nothing hangs.
    #[test]
    fn a_hot_pool_should_run_parallel_loops_and_let_panics_out() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            let v: Vec<u64> = (0..100_000).collect();
            for _ in 0..20 {
                let s: u64 = super::in_hot_pool(|| {
                    let a: u64 = v.par_iter().map(|x| x * 3).sum();
                    let b: u64 = v.par_chunks(1000).map(|c| c.iter().sum::<u64>()).sum();
                    a + b
                });
                assert_eq!(s, 4 * (100_000 * 99_999 / 2));
            }
            let r = std::panic::catch_unwind(|| {
                super::in_hot_pool(|| {
                    let _: u64 = v.par_iter().map(|x| x + 1).sum();
                    panic!("inside the hot pool")
                })
            });
            assert!(r.is_err());
        });
        // From outside any pool, on the global one.
        assert_eq!(super::in_hot_pool(|| 7), 7);
    }
}
