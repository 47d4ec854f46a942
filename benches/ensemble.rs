//! Criterion: ensemble forward and one NLL backward at the PETS sizes, CPU backend.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mbrl_gpu::backend::cpu::{ensemble::init_params, CpuBackend};
use mbrl_gpu::backend::{Activation, Backend, EnsembleShape, LossConfig};
use mbrl_gpu::rng::normal;

fn shape(in_dim: usize, out_dim: usize) -> EnsembleShape {
    EnsembleShape {
        ensemble: 7,
        in_dim,
        out_dim,
        hidden: 200,
        num_layers: 4,
        activation: Activation::Silu,
        probabilistic: true,
    }
}

fn bench(c: &mut Criterion) {
    let be = CpuBackend::new();
    let mut g = c.benchmark_group("ensemble_cpu");
    g.sample_size(20);
    // Half-cheetah sizes: 7 members × 1000 rows, 24 → 4×200 SiLU → 36.
    let s = shape(24, 18);
    let rows = 1000;
    let p = init_params(&s, 0);
    let norm: Vec<f32> = [vec![0.0; 24], vec![1.0; 24]].concat();
    let x: Vec<f32> = (0..7 * rows * 24)
        .map(|i| normal(1, 1, i as u32, 0))
        .collect();
    let (mut m, mut lv) = (vec![0.0; 7 * rows * 18], vec![0.0; 7 * rows * 18]);
    g.throughput(Throughput::Elements(
        (7 * rows * s.macs_per_row() * 2) as u64,
    ));
    g.bench_function("forward_e7_r1000_hc", |b| {
        b.iter(|| {
            be.ensemble_forward(&s, &p, &norm, &x, rows, &mut m, &mut lv)
                .unwrap()
        })
    });
    // Cart-pole sizes: one minibatch of 256 rows per member, 5 → 4×200 → 8.
    let s = shape(5, 4);
    let rows = 256;
    let p = init_params(&s, 0);
    let norm: Vec<f32> = [vec![0.0; 5], vec![1.0; 5]].concat();
    let x: Vec<f32> = (0..7 * rows * 5)
        .map(|i| normal(1, 2, i as u32, 0))
        .collect();
    let y: Vec<f32> = (0..7 * rows * 4)
        .map(|i| normal(1, 3, i as u32, 0))
        .collect();
    let loss = LossConfig {
        logvar_penalty: 0.01,
        weight_decay: vec![3e-5; 5],
        precision: mbrl_gpu::backend::Precision::F32,
    };
    let mut grad = vec![0.0; p.len()];
    let mut losses = vec![0.0; 7];
    g.throughput(Throughput::Elements(
        (7 * rows * s.macs_per_row() * 6) as u64,
    ));
    g.bench_function("nll_backward_e7_b256_cartpole", |b| {
        b.iter(|| {
            be.ensemble_nll_backward(&s, &loss, &p, &norm, &x, &y, rows, &mut grad, &mut losses)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
