//! Every hand-written backward of the ensemble against f64 central finite differences.
//!
//! The specification code is generic over the float type, so these checks run the very code
//! the CPU backend runs, in f64. Step h = 1e-5: truncation error ~h²·|f'''| ≈ 1e-10 and
//! round-off ~ε·|L|/h ≈ 1e-16·10²/1e-5 = 1e-9, so an analytic gradient that is right agrees to
//! ~1e-8; the tolerance 1e-6·(1 + |fd|) leaves two orders of margin while any wrong term
//! (a missing factor 2, a dropped chain-rule factor) is off by O(|g|).
use mbrl_gpu::backend::cpu::ensemble::{nll_backward, total_loss, vjp, Workspace};
use mbrl_gpu::backend::{Activation, EnsembleShape, LossConfig};
use mbrl_gpu::rng::{normal, uniform};

const H: f64 = 1e-5;

fn tol(fd: f64) -> f64 {
    1e-6 * (1.0 + fd.abs())
}

struct Case {
    shape: EnsembleShape,
    rows: usize,
    params: Vec<f64>,
    mean: Vec<f64>,
    std: Vec<f64>,
    x: Vec<f64>,
    y: Vec<f64>,
    loss: LossConfig,
}

#[allow(clippy::too_many_arguments)]
fn case(
    e: usize,
    rows: usize,
    in_dim: usize,
    hidden: usize,
    layers: usize,
    out: usize,
    act: Activation,
    prob: bool,
    seed: u64,
) -> Case {
    let shape = EnsembleShape {
        ensemble: e,
        in_dim,
        out_dim: out,
        hidden,
        num_layers: layers,
        activation: act,
        probabilistic: prob,
    };
    let lay = shape.layout();
    let mut k = 0u32;
    let mut n = |s: f64| {
        k += 1;
        normal(seed, 1, k, 0) as f64 * s
    };
    let mut params: Vec<f64> = (0..lay.total).map(|_| n(0.6)).collect();
    if prob {
        // Bounds where both softplus branches bend: raw log-variances (~N(0, 1)) fall on both
        // sides of max ∈ [0, 1] and min ∈ [-1.5, -0.5].
        for j in 0..out {
            params[lay.max_logvar + j] = uniform(seed, 2, j as u32, 0) as f64;
            params[lay.min_logvar + j] = -0.5 - uniform(seed, 3, j as u32, 0) as f64;
        }
    }
    let mean: Vec<f64> = (0..in_dim).map(|_| n(1.0)).collect();
    let std: Vec<f64> = (0..in_dim).map(|_| 0.5 + n(0.2).abs()).collect();
    let x: Vec<f64> = (0..e * rows * in_dim).map(|_| n(1.0)).collect();
    let y: Vec<f64> = (0..e * rows * out).map(|_| n(1.0)).collect();
    let loss = LossConfig {
        logvar_penalty: 0.01,
        weight_decay: (0..=layers).map(|l| 1e-3 * (l + 1) as f32).collect(),
        precision: mbrl_gpu::backend::Precision::F32,
    };
    Case {
        shape,
        rows,
        params,
        mean,
        std,
        x,
        y,
        loss,
    }
}

fn loss_at(c: &Case, params: &[f64], ws: &mut Workspace<f64>) -> f64 {
    let e = c.shape.ensemble;
    let mut g = vec![0.0; params.len()];
    let mut losses = vec![0.0; e];
    nll_backward(
        &c.shape,
        &c.loss,
        params,
        &c.mean,
        &c.std,
        &c.x,
        &c.y,
        c.rows,
        &mut g,
        &mut losses,
        ws,
    );
    total_loss(&c.shape, &c.loss, params, &losses)
}

fn check_nll(c: &Case) {
    let mut ws = Workspace::default();
    let e = c.shape.ensemble;
    let mut grad = vec![0.0; c.params.len()];
    let mut losses = vec![0.0; e];
    nll_backward(
        &c.shape,
        &c.loss,
        &c.params,
        &c.mean,
        &c.std,
        &c.x,
        &c.y,
        c.rows,
        &mut grad,
        &mut losses,
        &mut ws,
    );
    let mut p = c.params.clone();
    let mut worst = 0.0f64;
    for i in 0..p.len() {
        let orig = p[i];
        p[i] = orig + H;
        let lp = loss_at(c, &p, &mut ws);
        p[i] = orig - H;
        let lm = loss_at(c, &p, &mut ws);
        p[i] = orig;
        let fd = (lp - lm) / (2.0 * H);
        let err = (grad[i] - fd).abs();
        worst = worst.max(err / tol(fd));
        assert!(
            err <= tol(fd),
            "{:?}: param {i}: analytic {} vs finite difference {fd}",
            c.shape,
            grad[i]
        );
    }
    assert!(worst.is_finite());
}

/// Σ (a ⊙ mean) + Σ (b ⊙ logvar) for fixed random a, b: its gradient is the VJP with
/// upstream (a, b), which exercises the backward for arbitrary upstream gradients.
fn probe(c: &Case, params: &[f64], x: &[f64], a: &[f64], b: &[f64]) -> f64 {
    use mbrl_gpu::backend::cpu::ensemble::forward;
    let n = c.shape.ensemble * c.rows * c.shape.out_dim;
    let (mut m, mut lv) = (vec![0.0; n], vec![0.0; n]);
    let mut ws = Workspace::default();
    forward(
        &c.shape, params, &c.mean, &c.std, x, c.rows, &mut m, &mut lv, &mut ws,
    );
    let mut s: f64 = m.iter().zip(a).map(|(u, v)| u * v).sum();
    if c.shape.probabilistic {
        s += lv.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
    }
    s
}

fn check_vjp(c: &Case) {
    let n = c.shape.ensemble * c.rows * c.shape.out_dim;
    let a: Vec<f64> = (0..n).map(|i| normal(9, 4, i as u32, 0) as f64).collect();
    let b: Vec<f64> = (0..n).map(|i| normal(9, 5, i as u32, 0) as f64).collect();
    let mut grad = vec![0.0; c.params.len()];
    let mut dx = vec![0.0; c.x.len()];
    let mut ws = Workspace::default();
    vjp(
        &c.shape, &c.params, &c.mean, &c.std, &c.x, c.rows, &a, &b, &mut grad, &mut dx, &mut ws,
    );
    let mut p = c.params.clone();
    for i in 0..p.len() {
        let orig = p[i];
        p[i] = orig + H;
        let fp = probe(c, &p, &c.x, &a, &b);
        p[i] = orig - H;
        let fm = probe(c, &p, &c.x, &a, &b);
        p[i] = orig;
        let fd = (fp - fm) / (2.0 * H);
        assert!(
            (grad[i] - fd).abs() <= tol(fd),
            "{:?}: param {i}: vjp {} vs fd {fd}",
            c.shape,
            grad[i]
        );
    }
    let mut x = c.x.clone();
    for i in 0..x.len() {
        let orig = x[i];
        x[i] = orig + H;
        let fp = probe(c, &c.params, &x, &a, &b);
        x[i] = orig - H;
        let fm = probe(c, &c.params, &x, &a, &b);
        x[i] = orig;
        let fd = (fp - fm) / (2.0 * H);
        assert!(
            (dx[i] - fd).abs() <= tol(fd),
            "{:?}: input {i}: vjp {} vs fd {fd}",
            c.shape,
            dx[i]
        );
    }
}

#[test]
fn nll_backward_should_match_finite_differences_silu_odd_sizes() {
    // E=3, batch 7, input 5, hidden 13, two hidden layers, 4 outputs.
    check_nll(&case(3, 7, 5, 13, 2, 4, Activation::Silu, true, 1));
}

#[test]
fn nll_backward_should_match_finite_differences_tanh_and_relu() {
    check_nll(&case(2, 5, 3, 5, 3, 2, Activation::Tanh, true, 2));
    check_nll(&case(3, 7, 4, 13, 1, 3, Activation::Relu, true, 3));
}

#[test]
fn mse_backward_should_match_finite_differences_for_deterministic_members() {
    check_nll(&case(3, 7, 5, 13, 2, 4, Activation::Silu, false, 4));
}

#[test]
fn input_and_parameter_vjp_should_match_finite_differences() {
    check_vjp(&case(3, 7, 5, 13, 2, 4, Activation::Silu, true, 5));
    check_vjp(&case(2, 3, 2, 5, 1, 3, Activation::Tanh, false, 6));
}

#[test]
fn large_batches_split_into_tasks_should_give_the_same_gradient() {
    // 1100 rows forces several row chunks per member; the reduction over chunks must equal
    // the single-chunk result computed on the same data in two halves.
    let c = case(2, 1100, 3, 5, 1, 2, Activation::Silu, true, 7);
    let mut ws = Workspace::default();
    let mut g = vec![0.0; c.params.len()];
    let mut l = vec![0.0; 2];
    nll_backward(
        &c.shape, &c.loss, &c.params, &c.mean, &c.std, &c.x, &c.y, c.rows, &mut g, &mut l, &mut ws,
    );
    // Spot-check 40 parameters by finite differences (the full sweep is covered above).
    let mut p = c.params.clone();
    for i in (0..p.len()).step_by(p.len() / 40 + 1) {
        let orig = p[i];
        p[i] = orig + H;
        let lp = loss_at(&c, &p, &mut ws);
        p[i] = orig - H;
        let lm = loss_at(&c, &p, &mut ws);
        p[i] = orig;
        let fd = (lp - lm) / (2.0 * H);
        assert!((g[i] - fd).abs() <= tol(fd), "param {i}: {} vs {fd}", g[i]);
    }
}
