//! Which matrix-multiply core the CPU backend uses, decided by measurement at the ensemble's
//! shapes (rows × 200 · 200 × 200, single thread, as each task runs it): a hand-written
//! register-tiled loop, `matrixmultiply`, and `gemm`.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mbrl_gpu::linalg::{matmul, View};

/// Hand-written i-k-j loop over 4-row blocks: the compiler vectorises the j loop.
fn tiled(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    c[..m * n].fill(0.0);
    for i0 in (0..m).step_by(4) {
        let i1 = (i0 + 4).min(m);
        for p in 0..k {
            let brow = &b[p * n..(p + 1) * n];
            for i in i0..i1 {
                let aip = a[i * k + p];
                let crow = &mut c[i * n..(i + 1) * n];
                for (cv, bv) in crow.iter_mut().zip(brow) {
                    *cv += aip * bv;
                }
            }
        }
    }
}

fn bench(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("gemm_core");
    g.sample_size(30);
    for &(m, k, n) in &[
        (500usize, 200usize, 200usize),
        (128, 200, 200),
        (500, 24, 200),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let id = format!("{m}x{k}x{n}");
        g.bench_with_input(BenchmarkId::new("hand_tiled", &id), &(), |bch, _| {
            bch.iter(|| tiled(&mut c, &a, &b, m, k, n))
        });
        g.bench_with_input(BenchmarkId::new("matrixmultiply", &id), &(), |bch, _| {
            bch.iter(|| unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("gemm_crate", &id), &(), |bch, _| {
            bch.iter(|| matmul(&mut c, View::rm(&a, m, k), View::rm(&b, k, n), false))
        });
        // Same product with activations stored feature-major (dst and lhs column-major), so
        // the micro-kernel's long dimension runs over rows instead of the 200 features.
        g.bench_with_input(
            BenchmarkId::new("gemm_crate_feature_major", &id),
            &(),
            |bch, _| {
                bch.iter(|| unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        m as isize,
                        1,
                        false,
                        a.as_ptr(),
                        m as isize,
                        1,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                })
            },
        );
    }
    g.finish();
}

/// One dense layer as the planner runs it — `act(x·W + b)` for a member's row group — three
/// ways: the `gemm` crate plus a bias/SiLU pass, the fused f32 kernel (`mbrl_gpu::dense`),
/// and bf16 products (`mbrl_gpu::bf16`, AMX tiles where present). Packing is outside the
/// timed loop, as the planner packs once per model update.
fn dense_layers(cr: &mut Criterion) {
    use mbrl_gpu::backend::Activation;
    let mut g = cr.benchmark_group("dense_layer");
    g.sample_size(30);
    for &(m, k, n) in &[(200usize, 200usize, 200usize), (500, 64, 64)] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.01).collect();
        let bias = vec![0.1f32; n];
        let mut c = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let id = format!("{m}x{k}x{n}_silu");
        g.bench_with_input(BenchmarkId::new("gemm_then_silu", &id), &(), |bch, _| {
            bch.iter(|| {
                matmul(&mut c, View::rm(&a, m, k), View::rm(&w, k, n), false);
                for row in c.chunks_exact_mut(n) {
                    for (v, b) in row.iter_mut().zip(&bias) {
                        let z = *v + b;
                        *v = z / (1.0 + mbrl_gpu::fastmath::exp_f32(-z));
                    }
                }
            })
        });
        let packed = mbrl_gpu::dense::PackedF32::new(&w, k, n);
        g.bench_with_input(BenchmarkId::new("fused_f32", &id), &(), |bch, _| {
            bch.iter(|| {
                mbrl_gpu::dense::layer(&mut c, &a, m, &packed, &bias, Some(Activation::Silu))
            })
        });
        // A two-layer chain in bf16 (the epilogue between the layers is the fused one).
        let p2 = [
            mbrl_gpu::bf16::Packed::new(&w, k, n),
            mbrl_gpu::bf16::Packed::new(&vec![0.01f32; n * n], n, n),
        ];
        let mut scratch = mbrl_gpu::bf16::ChainScratch::default();
        g.throughput(Throughput::Elements((2 * m * (k * n + n * n)) as u64));
        g.bench_with_input(BenchmarkId::new("bf16_two_layers", &id), &(), |bch, _| {
            bch.iter(|| {
                mbrl_gpu::bf16::chain(
                    &a,
                    m,
                    &p2,
                    &[&bias, &bias],
                    Activation::Silu,
                    &mut c,
                    &mut scratch,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, dense_layers);
criterion_main!(benches);
