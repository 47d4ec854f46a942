//! The dense-layer engine's vector–Jacobian product (`ensemble_vjp`) against the CPU, shared
//! by `wgpu_parity.rs` and `cuda_pocl.rs`: random parameters, normaliser, inputs and upstream
//! gradients of awkward sizes (37 rows and 1, widths 13, 37, 200), deterministic heads (the
//! SAC critics' and actor's) and probabilistic ones (a model's mean and log-variance, through
//! the soft bounds), the parameter and input gradients together and each alone, outputs
//! poisoned first.
use super::planners::Compare;
use super::poisoned;
use mbrl_gpu::backend::cpu::ensemble::init_params;
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{Activation, Backend, EnsembleShape};
use mbrl_gpu::rng::{self, stream};

fn randn(seed: u64, salt: u32, n: usize, scale: f32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| rng::normal(seed, stream::DATA, i, 300 + salt) * scale)
        .collect()
}

fn shape(
    ensemble: usize,
    in_dim: usize,
    out_dim: usize,
    hidden: usize,
    num_layers: usize,
    activation: Activation,
    probabilistic: bool,
) -> EnsembleShape {
    EnsembleShape {
        ensemble,
        in_dim,
        out_dim,
        hidden,
        num_layers,
        activation,
        probabilistic,
    }
}

/// Which gradients one call asks for.
#[derive(Clone, Copy, Debug)]
enum Want {
    Both,
    Params,
    Inputs,
}

/// (grad, dx) of one `ensemble_vjp`, empty where not asked for.
#[allow(clippy::too_many_arguments)]
fn vjp_on<B: Backend>(
    b: &B,
    sh: &EnsembleShape,
    host: [&[f32]; 5],
    rows: usize,
    want: Want,
) -> (Vec<f32>, Vec<f32>) {
    let [p, n, x, dm, dl] = host.map(|v| b.upload(v).unwrap());
    let mut grad = poisoned(b, sh.layout().total);
    let mut dx = poisoned(b, sh.ensemble * rows * sh.in_dim);
    let (g, d) = match want {
        Want::Both => (Some(&mut grad), Some(&mut dx)),
        Want::Params => (Some(&mut grad), None),
        Want::Inputs => (None, Some(&mut dx)),
    };
    b.ensemble_vjp(sh, &p, &n, &x, rows, &dm, &dl, g, d)
        .unwrap();
    let take = |on: bool, buf: &B::Buf| {
        if on {
            b.download(buf).unwrap()
        } else {
            Vec::new()
        }
    };
    (
        take(!matches!(want, Want::Inputs), &grad),
        take(!matches!(want, Want::Params), &dx),
    )
}

pub fn vjp<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    let cpu = CpuBackend::new();
    let cases = [
        (
            shape(3, 5, 4, 13, 2, Activation::Silu, true),
            37,
            Want::Both,
        ),
        (
            shape(2, 7, 1, 37, 2, Activation::Relu, false),
            37,
            Want::Both,
        ),
        (
            shape(1, 3, 6, 200, 1, Activation::Tanh, false),
            37,
            Want::Params,
        ),
        (
            shape(3, 5, 4, 13, 0, Activation::Silu, true),
            37,
            Want::Inputs,
        ),
        (shape(2, 4, 2, 13, 3, Activation::Silu, true), 1, Want::Both),
    ];
    let mut out = Vec::new();
    for (seed, (sh, rows, want)) in cases.into_iter().enumerate() {
        let seed = seed as u64 + 40;
        let (e, i, o) = (sh.ensemble, sh.in_dim, sh.out_dim);
        let lay = sh.layout();
        let mut params = init_params(&sh, seed);
        for (v, r) in params.iter_mut().zip(randn(seed, 0, lay.total, 0.05)) {
            *v += r;
        }
        if sh.probabilistic {
            // Bounds near the raw log-variances, so that both softplus branches bend.
            for j in 0..o {
                params[lay.max_logvar + j] = 0.3 + 0.1 * j as f32;
                params[lay.min_logvar + j] = -0.5 - 0.2 * j as f32;
            }
        }
        let mut norm = randn(seed, 1, i, 0.3);
        norm.extend(randn(seed, 2, i, 0.3).iter().map(|v| 1.0 + v.abs()));
        let x = randn(seed, 3, e * rows * i, 1.0);
        let dm = randn(seed, 4, e * rows * o, 0.5);
        let dl = randn(seed, 5, e * rows * o, 0.5);
        let host = [&params[..], &norm, &x, &dm, &dl];
        let (gw, dw) = vjp_on(&cpu, &sh, host, rows, want);
        let (gg, dg) = vjp_on(dev, &sh, host, rows, want);
        let tag = format!(
            "{label} vjp e{e} h{} l{} {:?} prob={} rows {rows} {want:?}",
            sh.hidden, sh.num_layers, sh.activation, sh.probabilistic
        );
        // Sums over ≤ 37 rows and ≤ 200 hidden units of O(1) products, reordered (16-deep K
        // slices, tree reductions, FMA): ~√K·ε·Σ|terms|. 1e-5 of the tensor's largest
        // magnitude plus 1e-5 relative, the NLL backward's tolerance scaled to the tensor.
        for (what, got, want) in [("grad", gg, gw), ("dx", dg, dw)] {
            if want.is_empty() {
                continue;
            }
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            out.push(Compare {
                what: format!("{tag} {what}"),
                got,
                want,
                atol: 1e-5 * scale,
                rtol: 1e-5,
            });
        }
    }
    out
}
