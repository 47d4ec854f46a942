//! Profile target: the `bench model` forward (E = 7, 1000 rows per member, input 24, 4×200
//! SiLU, head 36) through the CPU backend, `perf record` it. `forward_profile N` times N
//! forwards and prints the median of 5 batches.
use mbrl_gpu::backend::{cpu::CpuBackend, Backend};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let be = CpuBackend::new();
    let shape = mbrl_gpu::bench::forward_bench_shape();
    let rows = 1000;
    let params = mbrl_gpu::backend::cpu::ensemble::init_params(&shape, 0);
    let norm = [vec![0.0; 24], vec![1.0; 24]].concat();
    let x: Vec<f32> = (0..7 * rows * 24)
        .map(|i| mbrl_gpu::rng::normal(3, 1, i as u32, 0))
        .collect();
    let (mut mean, mut lv) = (vec![0.0; 7 * rows * 18], vec![0.0; 7 * rows * 18]);
    let mut run = || {
        be.ensemble_forward(&shape, &params, &norm, &x, rows, &mut mean, &mut lv)
            .unwrap()
    };
    run();
    let mut times = vec![];
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            run();
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3 / n as f64);
    }
    times.sort_by(f64::total_cmp);
    let flop = 2.0 * (7 * rows * shape.macs_per_row()) as f64;
    println!(
        "{:.3} ms per forward ({:.1} GFLOP/s)",
        times[2],
        flop / times[2] / 1e6
    );
}
