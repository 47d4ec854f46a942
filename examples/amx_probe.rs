//! Throughput of the bf16 training product (`bf16::matmul_views`) at SAC sizes, on one
//! thread and on two at once (do two cores' tile units scale?).
use mbrl_gpu::bf16::{matmul_views, TrainScratch};
use mbrl_gpu::linalg::View;

fn run(m: usize, k: usize, n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let mut s = TrainScratch::default();
    matmul_views(&mut c, View::rm(&a, m, k), View::rm(&b, k, n), &mut s);
    let t = std::time::Instant::now();
    for _ in 0..reps {
        matmul_views(&mut c, View::rm(&a, m, k), View::rm(&b, k, n), &mut s);
    }
    2.0 * (m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    for (m, k, n) in [(256, 256, 256), (1024, 1024, 1024), (128, 200, 200)] {
        let reps = (4e9 / (2.0 * (m * k * n) as f64)) as usize;
        let one = run(m, k, n, reps);
        let two: Vec<f64> = std::thread::scope(|s| {
            let h: Vec<_> = (0..2).map(|_| s.spawn(|| run(m, k, n, reps))).collect();
            h.into_iter().map(|h| h.join().unwrap()).collect()
        });
        println!(
            "{m}x{k}x{n}: one thread {one:.0} GFLOP/s; two threads {:.0} + {:.0}",
            two[0], two[1]
        );
    }
}
