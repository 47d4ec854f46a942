//! An independent oracle for the ensemble forward pass: checkpoints built in PyTorch and their
//! outputs computed there in float64, from the equations rather than from our code
//! (`scripts/record_torch_forward.py`; fixtures in `tests/fixtures/torch/`). The CPU backend
//! is the specification the device backends are checked against, so this is what checks the
//! specification itself: the checkpoint layout (names, shapes, [E, in, out] weights, config
//! metadata) as PyTorch writes it, the input normaliser, the three activations, and the two
//! soft bounds of the log-variance.
//!
//! Tolerance: a worst-case forward error bound of the f32 computation, element by element
//! (standard rounding-error analysis, Higham, *Accuracy and Stability of Numerical
//! Algorithms*, §3.1), evaluated in f64 along the reference's own activations:
//! - normalising: `(x − μ)/σ` is two roundings, ≤ 2u·|xn| (u = 2⁻²⁴, the f32 unit roundoff);
//! - a layer `z = Σ_k a_k·w_k + b` of K inputs, summed in any order with or without FMA, is
//!   off by ≤ γ_{K+1}·(Σ_k |a_k·w_k| + |b|) with γ_n = n·u/(1 − n·u), plus the inputs' own
//!   errors carried through: Σ_k |w_k|·err(a_k);
//! - an activation multiplies an incoming error e by at most max |act'| over [z − e, z + e]
//!   (≤ 1.1 for SiLU, 1 for ReLU and tanh, less where they saturate or switch off) and adds
//!   its own rounding: SiLU `z/(1 + exp(−z))` with the CPU's exp (≤ 3e-7 relative,
//!   src/fastmath.rs) ≤ (3e-7 + 2u)·|a|; tanh (libm, ≤ 2 ulp) ≤ 3e-7·|a|; ReLU none;
//! - each soft bound `hi − softplus(hi − raw)` is 1-Lipschitz and adds the roundings of the
//!   subtraction, the softplus (`max(z,0) + ln1p(exp(−|z|))`: exp ≤ 3e-7 and ln1p ≤ 5e-7
//!   relative on values ≤ 1, so ≤ 8e-7 absolute, plus u of the sum) and the outer operation.
//!
//! The float64 reference's own error (~1e-16 relative) is negligible. Every term is a
//! first-order bound; the second-order terms are below 1e-12 of it. Being a worst case, the
//! bound (≤ 1e-4 here, on outputs of order 1 to 6) sits well above the errors actually seen
//! (≤ 8e-7, at most 7 % of their bound; the test prints both), yet a formula error, a
//! transposed weight or a wrong bound moves outputs by 1e-3 or more, far outside it
//! (`the_oracle_should_tell_the_soft_bounds_apart` shows the fixtures can tell).
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{Activation, Backend};
use mbrl_gpu::io::checkpoint;
use mbrl_gpu::model::Ensemble;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::PathBuf;

/// The fixtures, one per configuration of `scripts/record_torch_forward.py`: SiLU,
/// probabilistic, reward learned (2 hidden layers); tanh, deterministic (3); ReLU,
/// probabilistic (1). All E = 3, obs 3, act 2, hidden 13, 9 rows.
const CASES: [&str; 3] = ["silu_prob_reward", "tanh_det", "relu_prob"];

/// The f32 unit roundoff, 2⁻²⁴.
const U: f64 = f32::EPSILON as f64 / 2.0;

fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(file)
}

/// The PyTorch side: inputs (float32) and outputs (float64) of one configuration.
struct Reference {
    rows: usize,
    obs: Vec<f32>,
    act: Vec<f32>,
    /// [E, rows, D], the raw head mean (the predicted change).
    mean: Vec<f64>,
    /// [E, rows, D]; None for a deterministic model.
    logvar: Option<Vec<f64>>,
}

fn tensor_f32(st: &SafeTensors, name: &str, shape: &[usize]) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("no tensor {name}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    assert_eq!(t.shape(), shape, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn tensor_f64(st: &SafeTensors, name: &str, shape: &[usize]) -> Vec<f64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("no tensor {name}"));
    assert_eq!(t.dtype(), Dtype::F64, "{name}");
    assert_eq!(t.shape(), shape, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The checkpoint through the library's own loader, and the reference beside it.
fn load_case(name: &str) -> (Ensemble, Reference) {
    let model = checkpoint::load(&fixture(&format!("{name}.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: the PyTorch-written checkpoint must load: {e}"));
    let bytes = std::fs::read(fixture(&format!("{name}.forward.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let c = &model.config;
    let rows = st.tensor("obs").unwrap().shape()[0];
    let (e, d) = (c.ensemble_size, c.out_dim());
    let reference = Reference {
        rows,
        obs: tensor_f32(&st, "obs", &[rows, c.obs_dim]),
        act: tensor_f32(&st, "act", &[rows, c.act_dim]),
        mean: tensor_f64(&st, "mean", &[e, rows, d]),
        logvar: c
            .probabilistic
            .then(|| tensor_f64(&st, "logvar", &[e, rows, d])),
    };
    assert_eq!(
        st.names().len(),
        if c.probabilistic { 4 } else { 3 },
        "{name}: unexpected tensors in the reference"
    );
    (model, reference)
}

fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

/// Own rounding of an f32 activation on the CPU, relative to |act(z)|.
fn activation_rounding(a: Activation) -> f64 {
    match a {
        // exp ≤ 3e-7 relative (src/fastmath.rs), then an add and a division.
        Activation::Silu => 3e-7 + 2.0 * U,
        Activation::Relu => 0.0,
        // libm's tanhf: ≤ 2 ulp, i.e. ≤ 4u < 3e-7 relative.
        Activation::Tanh => 3e-7,
    }
}

/// max |act'(ξ)| over ξ ∈ [z − r, z + r]: how much an input error of at most r can grow.
fn activation_slope(a: Activation, z: f64, r: f64) -> f64 {
    let (lo, hi) = (z - r, z + r);
    match a {
        Activation::Relu => f64::from(u8::from(hi > 0.0)),
        Activation::Tanh => {
            let nearest = if lo <= 0.0 && hi >= 0.0 {
                0.0
            } else {
                lo.abs().min(hi.abs())
            };
            1.0 - nearest.tanh().powi(2)
        }
        Activation::Silu => {
            // silu'(ξ) = σ(ξ)·(1 + ξ·(1 − σ(ξ))), extreme at ξ = ±2.3994 (1.0998 and −0.0998).
            let d = |x: f64| {
                let s = 1.0 / (1.0 + (-x).exp());
                (s * (1.0 + x * (1.0 - s))).abs()
            };
            [lo, hi, 2.399_357, -2.399_357]
                .into_iter()
                .filter(|x| (lo..=hi).contains(x))
                .map(d)
                .fold(0.0, f64::max)
        }
    }
}

fn activate(a: Activation, z: f64) -> f64 {
    match a {
        Activation::Silu => z / (1.0 + (-z).exp()),
        Activation::Relu => z.max(0.0),
        Activation::Tanh => z.tanh(),
    }
}

/// Absolute error of the CPU's f32 softplus at z, beyond the error of its input: exp(−|z|)
/// (≤ 3e-7 relative, value ≤ 1) through ln1p (slope ≤ 1, ≤ 5e-7 relative on a value ≤ ln 2),
/// then the sum with max(z, 0).
fn softplus_rounding(z: f64) -> f64 {
    8e-7 + U * softplus(z)
}

/// The error bound of the module docs for every output, with the f64 values it was
/// evaluated along (the head's raw output, [E, rows, head_dim]).
struct Bound {
    mean: Vec<f64>,
    logvar: Vec<f64>,
    raw: Vec<f64>,
    head_dim: usize,
}

fn error_bound(model: &Ensemble, r: &Reference) -> Bound {
    let cfg = &model.config;
    let shape = model.shape();
    let lay = shape.layout();
    let (e_n, d, hd) = (shape.ensemble, shape.out_dim, shape.head_dim());
    let act_round = activation_rounding(shape.activation);
    let p = |i: usize| model.params[i] as f64;
    let mut bound = Bound {
        mean: vec![0.0; e_n * r.rows * d],
        logvar: vec![0.0; e_n * r.rows * d],
        raw: vec![0.0; e_n * r.rows * hd],
        head_dim: hd,
    };
    for e in 0..e_n {
        for row in 0..r.rows {
            let x: Vec<f64> = r.obs[row * cfg.obs_dim..(row + 1) * cfg.obs_dim]
                .iter()
                .chain(&r.act[row * cfg.act_dim..(row + 1) * cfg.act_dim])
                .map(|v| *v as f64)
                .collect();
            // (value, error bound) of every unit of the current layer's input.
            let mut a: Vec<f64> = (0..x.len())
                .map(|j| (x[j] - model.input_mean[j] as f64) / model.input_std[j] as f64)
                .collect();
            let mut err: Vec<f64> = a.iter().map(|v| 2.0 * U * v.abs()).collect();
            for (l, lo) in lay.layers.iter().enumerate() {
                let (fi, fo) = (lo.fan_in, lo.fan_out);
                let w = |j: usize, k: usize| p(lo.weight + (e * fi + j) * fo + k);
                let mut z = vec![0.0; fo];
                let mut ez = vec![0.0; fo];
                for k in 0..fo {
                    let b = p(lo.bias + e * fo + k);
                    let (mut s, mut mag, mut carried) = (b, b.abs(), 0.0);
                    for j in 0..fi {
                        s += a[j] * w(j, k);
                        mag += (a[j].abs() + err[j]) * w(j, k).abs();
                        carried += w(j, k).abs() * err[j];
                    }
                    z[k] = s;
                    ez[k] = carried + gamma(fi + 1) * mag;
                }
                if l < shape.num_layers {
                    a = z.iter().map(|v| activate(shape.activation, *v)).collect();
                    err = (0..fo)
                        .map(|k| {
                            activation_slope(shape.activation, z[k], ez[k]) * ez[k]
                                + act_round * a[k].abs()
                        })
                        .collect();
                } else {
                    a = z;
                    err = ez;
                }
            }
            let at = (e * r.rows + row) * d;
            bound.raw[(e * r.rows + row) * hd..][..hd].copy_from_slice(&a);
            bound.mean[at..at + d].copy_from_slice(&err[..d]);
            if shape.probabilistic {
                for j in 0..d {
                    let (hi, lo) = (p(lay.max_logvar + j), p(lay.min_logvar + j));
                    let raw = a[d + j];
                    let t1 = hi - raw;
                    let lv1 = hi - softplus(t1);
                    let e1 = err[d + j] + U * t1.abs() + softplus_rounding(t1) + U * lv1.abs();
                    let t2 = lv1 - lo;
                    let lv = lo + softplus(t2);
                    bound.logvar[at + j] = e1 + U * t2.abs() + softplus_rounding(t2) + U * lv.abs();
                }
            }
        }
    }
    bound
}

/// Every |got − want| ≤ bound; returns (worst error, worst error / bound).
#[track_caller]
fn assert_within(what: &str, got: &[f32], want: &[f64], bound: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (mut worst, mut ratio) = (0.0f64, 0.0f64);
    for (i, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            g.is_finite() && err <= *b,
            "{what}[{i}]: mbrl-gpu {g} vs PyTorch {w} (|Δ| = {err:e}, bound {b:e})"
        );
        worst = worst.max(err);
        ratio = ratio.max(err / b);
    }
    (worst, ratio)
}

/// [E, rows, in] with every member seeing the same rows, as `Ensemble::predict` builds it.
fn stacked_inputs(model: &Ensemble, r: &Reference) -> Vec<f32> {
    let (od, ad) = (model.config.obs_dim, model.config.act_dim);
    let mut x = Vec::new();
    for _ in 0..model.config.ensemble_size {
        for row in 0..r.rows {
            x.extend_from_slice(&r.obs[row * od..(row + 1) * od]);
            x.extend_from_slice(&r.act[row * ad..(row + 1) * ad]);
        }
    }
    x
}

#[test]
fn pytorch_checkpoints_should_load_with_their_config() {
    let (m, r) = load_case("silu_prob_reward");
    let c = &m.config;
    assert_eq!(
        (
            c.obs_dim,
            c.act_dim,
            c.ensemble_size,
            c.hidden,
            c.num_layers
        ),
        (3, 2, 3, 13, 2)
    );
    assert_eq!(c.activation, Activation::Silu);
    assert!(c.probabilistic && c.learn_reward);
    assert_eq!((c.num_elites, m.elites.clone()), (2, vec![2, 0]));
    assert_eq!(r.rows, 9);
    let (m, _) = load_case("tanh_det");
    assert_eq!(m.config.activation, Activation::Tanh);
    assert!(!m.config.probabilistic && !m.config.learn_reward);
    let (m, _) = load_case("relu_prob");
    assert_eq!(
        (m.config.activation, m.config.num_layers),
        (Activation::Relu, 1)
    );
}

#[test]
fn cpu_forward_should_match_the_pytorch_oracle() {
    let cpu = CpuBackend::new();
    for name in CASES {
        let (model, r) = load_case(name);
        let bound = error_bound(&model, &r);
        // The f64 pass that carries the bound must itself be the reference's computation, or
        // the magnitudes it sums would be the wrong ones: agreement to f64 rounding.
        let d = model.config.out_dim();
        for (i, want) in r.mean.iter().enumerate() {
            let (row, j) = (i / d, i % d);
            let mine = bound.raw[row * bound.head_dim + j];
            assert!(
                (mine - want).abs() <= 1e-12 * (1.0 + want.abs()),
                "{name}: the bound's f64 pass gives mean[{i}] = {mine}, PyTorch {want}"
            );
        }
        let shape = model.shape();
        let n = shape.ensemble * r.rows * d;
        let x = stacked_inputs(&model, &r);
        // Outputs pre-filled with NaN: an element the forward does not write fails below.
        let (mut mean, mut logvar) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        cpu.ensemble_forward(
            &shape,
            &model.params,
            &model.norm(),
            &x,
            r.rows,
            &mut mean,
            &mut logvar,
        )
        .unwrap();
        let widest = |b: &[f64]| b.iter().fold(0.0f64, |m, v| m.max(*v));
        let (em, qm) = assert_within(&format!("{name} mean"), &mean, &r.mean, &bound.mean);
        eprintln!(
            "{name}: mean worst |Δ| {em:.2e}, at most {qm:.3} of its bound (bounds ≤ {:.2e})",
            widest(&bound.mean)
        );
        if let Some(want) = &r.logvar {
            let (el, ql) = assert_within(&format!("{name} logvar"), &logvar, want, &bound.logvar);
            eprintln!(
                "{name}: logvar worst |Δ| {el:.2e}, at most {ql:.3} of its bound (bounds ≤ {:.2e})",
                widest(&bound.logvar)
            );
        }
    }
}

#[test]
fn ensemble_predict_should_match_the_pytorch_oracle() {
    for name in CASES {
        let (model, r) = load_case(name);
        let bound = error_bound(&model, &r);
        let (mean, var) = model.predict(&r.obs, &r.act).unwrap();
        let (od, d) = (model.config.obs_dim, model.config.out_dim());
        // predict returns obs + change (one more rounding, u·|result|) and exp(logvar) (libm
        // expf, ≤ 1 ulp: 2u relative, on top of e^{err} − 1 from the logvar's own error).
        let mut want_mean = r.mean.clone();
        let mut mean_bound = bound.mean.clone();
        for (i, (w, b)) in want_mean.iter_mut().zip(&mut mean_bound).enumerate() {
            let (row, j) = ((i / d) % r.rows, i % d);
            if j < od {
                *w += r.obs[row * od + j] as f64;
                *b += U * w.abs();
            }
        }
        let (em, _) = assert_within(
            &format!("{name} predicted mean"),
            &mean,
            &want_mean,
            &mean_bound,
        );
        match &r.logvar {
            Some(lv) => {
                let want: Vec<f64> = lv.iter().map(|v| v.exp()).collect();
                let b: Vec<f64> = want
                    .iter()
                    .zip(&bound.logvar)
                    .map(|(v, e)| v * (e.exp_m1() + 2.0 * U))
                    .collect();
                let (ev, _) = assert_within(&format!("{name} variance"), &var, &want, &b);
                eprintln!("{name}: predict mean worst {em:.2e}, variance worst {ev:.2e}");
            }
            None => {
                assert!(
                    var.iter().all(|v| *v == 0.0),
                    "{name}: deterministic variance"
                );
                eprintln!("{name}: predict mean worst {em:.2e}");
            }
        }
    }
}

/// A log-variance head as a function of (raw, max_logvar, min_logvar).
type SoftBound = fn(f64, f64, f64) -> f64;

/// The fixtures exercise both soft bounds: dropping either one, or clamping hard instead,
/// moves some log-variance far outside the tolerance (so the comparison above would catch it).
#[test]
fn the_oracle_should_tell_the_soft_bounds_apart() {
    for name in ["silu_prob_reward", "relu_prob"] {
        let (model, r) = load_case(name);
        let bound = error_bound(&model, &r);
        let lay = model.shape().layout();
        let d = model.config.out_dim();
        let want = r.logvar.as_ref().unwrap();
        let variants: [(&str, SoftBound); 3] = [
            ("upper bound only", |raw, hi, _| hi - softplus(hi - raw)),
            ("lower bound only", |raw, _, lo| lo + softplus(raw - lo)),
            ("hard clamp", |raw, hi, lo| raw.clamp(lo, hi)),
        ];
        for (what, f) in variants {
            let worst = (0..want.len())
                .map(|i| {
                    let j = i % d;
                    let raw = bound.raw[(i / d) * bound.head_dim + d + j];
                    let hi = model.params[lay.max_logvar + j] as f64;
                    let lo = model.params[lay.min_logvar + j] as f64;
                    (f(raw, hi, lo) - want[i]).abs() / bound.logvar[i]
                })
                .fold(0.0f64, f64::max);
            assert!(
                worst > 100.0,
                "{name}: a forward with the {what} would pass within {worst:.1}× the bound"
            );
            eprintln!("{name}: {what} would miss by {worst:.0}× the bound");
        }
    }
}
