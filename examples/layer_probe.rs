//! Probe: one thread's GFLOP/s of `dense::layer` (row-major) and `dense::layer_fm` (feature-major)
//! at the ensemble's layer shapes, and whether they give the same bits. `layer_probe M` (rows,
//! 250 by default); run with `RAYON_NUM_THREADS=1` for the single-thread GEMM peak beside it.
use mbrl_gpu::backend::Activation;
use mbrl_gpu::dense::{fm_len, layer, layer_fm, to_fm, PackedF32};
use std::time::Instant;

fn main() {
    let m: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(250);
    let reps = 200;
    for (k, n, act) in [
        (200usize, 200usize, None),
        (200, 200, Some(Activation::Silu)),
        (24, 200, Some(Activation::Silu)),
        (200, 36, None),
        (256, 256, None),
        (192, 192, None),
        (200, 192, None),
        (200, 8, None),
        (200, 16, None),
        (200, 32, None),
        (200, 4, None),
        // The small real-time model (pendulum, 3×64).
        (4, 64, Some(Activation::Silu)),
        (64, 64, Some(Activation::Tanh)),
        (64, 64, Some(Activation::Relu)),
        (64, 64, Some(Activation::Silu)),
        (64, 64, None),
        (64, 6, None),
    ] {
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-4)
            .collect();
        let src: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 100) as f32 * 1e-2).collect();
        let b = vec![0.1f32; n];
        let pk = PackedF32::new(&w, k, n);
        let mut dst = vec![0.0f32; m * n];
        let t = median_s(reps, || {
            layer(&mut dst, &src, m, &pk, &b, act);
        });
        let gf = 2.0 * (m * k * n) as f64 / t / 1e9;
        let pf = PackedF32::feature_major(&w, k, n);
        let mut sf = vec![0.0f32; fm_len(m, k)];
        to_fm(&mut sf, &src, m, k);
        let mut df = vec![0.0f32; fm_len(m, n)];
        let t2 = median_s(reps, || {
            layer_fm(&mut df, &sf, m, &pf, &b, act);
        });
        let gf2 = 2.0 * (m * k * n) as f64 / t2 / 1e9;
        let mut back = vec![0.0f32; m * n];
        mbrl_gpu::dense::from_fm(&mut back, &df, m, n, 0, n);
        let same = back
            .iter()
            .zip(&dst)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        println!(
            "m {m} k {k} n {n} act {act:?}: {:.2} us, {gf:.1} GFLOP/s | fm {:.2} us, {gf2:.1} GFLOP/s, same bits {same}",
            t * 1e6,
            t2 * 1e6
        );
    }
    let peak = mbrl_gpu::bench::gemm_peak(5);
    println!("gemm peak (this thread count): {peak:.1}");
}

/// Seconds per call of `f`: the median of 7 timings of `reps` calls each.
fn median_s(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..7)
        .map(|_| {
            let s = Instant::now();
            for _ in 0..reps {
                f();
            }
            s.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[3]
}
