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
