//! Every wgpu operation against the CPU specification, through the same `Backend` trait, on
//! random inputs (from `mbrl_gpu::rng`) with sizes that are multiples of no workgroup or tile
//! (E = 3, rows 37, hidden 13 and 200, population 37, horizon 7, 1001 parameters), outputs
//! poisoned before each run so that an element a kernel forgets shows up: the device's with a
//! NaN of a payload no arithmetic produces, the CPU reference's with a different, finite
//! sentinel, so that an element neither side writes cannot compare equal.
//!
//! Without an adapter the tests print that they skipped and why; under `CI=true` that is a
//! failure (CI installs Mesa's lavapipe). Each tolerance says where it comes from. Common
//! ground: both sides compute in f32; the device's exp, ln, sin, cos and atan2 are the
//! polynomials of shaders/common.wgsl (relative error ≤ 3e-7, the CPU's own exp/ln are the
//! same polynomials); what differs is the order of summation (tiled GEMMs and tree
//! reductions against the `gemm` crate and sequential loops), fused multiply-adds, and the
//! device's sqrt and division (WGSL allows 2.5 ULP where the CPU rounds correctly).
use mbrl_gpu::backend::cpu::{cem::top_k, ensemble::init_params, CpuBackend};
use mbrl_gpu::backend::wgpu::{self as wgpu_backend, WgpuBackend};
use mbrl_gpu::backend::{
    Activation, AdamParams, Backend, EnsembleShape, InitParams, LossConfig, Propagation,
    RolloutParams, SampleParams, UpdateParams, MAX_ELITES,
};
use mbrl_gpu::env::{task, EnvId};
use mbrl_gpu::rng::{self, stream};
use std::sync::OnceLock;

mod common;
use common::{poisoned, rollout_on, POISON, REF_FILL};
#[path = "common/mbpo.rs"]
mod mbpo_fixture;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// One device for the whole file (pipelines compile once); `Err` says why there is none.
fn shared() -> &'static Result<WgpuBackend, String> {
    static GPU: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    GPU.get_or_init(|| {
        let b = WgpuBackend::new().map_err(|e| e.to_string());
        if let Ok(b) = &b {
            eprintln!(
                "wgpu parity tests on {} (SHADER_F16: {})",
                b.adapter().describe(),
                b.supports_f16()
            );
        }
        b
    })
}

/// The shared backend, or `None` after printing why the test is skipped (a panic in CI).
fn gpu(test: &str) -> Option<&'static WgpuBackend> {
    match shared() {
        Ok(b) => Some(b),
        Err(e) if in_ci() => panic!("{test}: CI=true requires a wgpu adapter, and: {e}"),
        Err(e) => {
            eprintln!("{test}: skipped — no wgpu adapter: {e}");
            None
        }
    }
}

/// Standard normals, element i of `step` on the DATA stream.
fn randn(seed: u64, step: u32, n: usize, scale: f32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| rng::normal(seed, stream::DATA, i, step) * scale)
        .collect()
}

fn rand_uniform(seed: u64, step: u32, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| lo + rng::uniform(seed, stream::DATA, i, step) * (hi - lo))
        .collect()
}

/// |got − want| ≤ atol + rtol·|want| wherever the reference is finite, and the device value
/// finite there too; a reference ±∞ must be met by the same infinity and a reference NaN by a
/// computed NaN. An element still holding the device poison or the reference fill fails.
/// Reports the worst error.
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() != POISON,
            "{what}[{i}]: wgpu never wrote this element (cpu {w})"
        );
        assert!(
            *w != REF_FILL,
            "{what}[{i}]: the CPU reference never wrote this element"
        );
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: wgpu {g} where the cpu gives NaN");
            continue;
        }
        if w.is_infinite() {
            assert_eq!(g, w, "{what}[{i}]: infinities must match exactly");
            continue;
        }
        assert!(
            g.is_finite(),
            "{what}[{i}]: wgpu {g} where the cpu gives {w}"
        );
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: wgpu {g} vs cpu {w} (|Δ| = {err:e}, allowed {:e})",
            atol + rtol * w.abs()
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
    eprintln!("{what}: worst |Δ| = {:e} at {}", worst.0, worst.1);
}

fn shape(
    hidden: usize,
    layers: usize,
    activation: Activation,
    probabilistic: bool,
) -> EnsembleShape {
    EnsembleShape {
        ensemble: 3,
        in_dim: 5,
        out_dim: 4,
        hidden,
        num_layers: layers,
        activation,
        probabilistic,
    }
}

/// PETS initial weights plus noise on everything (so biases and bounds are not trivial).
fn params_for(shape: &EnsembleShape, seed: u64) -> Vec<f32> {
    let lay = shape.layout();
    let mut p = init_params(shape, seed);
    let noise = randn(seed, 99, lay.total, 0.05);
    for (v, n) in p.iter_mut().zip(noise) {
        *v += n;
    }
    if shape.probabilistic {
        // Bounds near the raw log-variances, so that both softplus branches bend.
        for j in 0..shape.out_dim {
            p[lay.max_logvar + j] = 0.5 + 0.1 * j as f32;
            p[lay.min_logvar + j] = -1.0 - 0.2 * j as f32;
        }
    }
    p
}

/// Normaliser [mean (in), std (in)].
fn norm_for(in_dim: usize, seed: u64) -> Vec<f32> {
    let mut v = randn(seed, 7, in_dim, 0.3);
    v.extend(rand_uniform(seed, 8, in_dim, 0.5, 2.0));
    v
}

// ---------------------------------------------------------------------------------------

#[test]
fn availability_should_list_adapters_with_their_type() {
    let a = wgpu_backend::availability();
    eprintln!("wgpu availability: {} — {}", a.available, a.detail);
    assert_eq!(a.backend, "wgpu");
    match shared() {
        Ok(b) => {
            assert!(
                a.available,
                "an adapter was opened but availability says none"
            );
            assert!(a.detail.contains(&b.adapter().name), "{}", a.detail);
            let kind = format!("{:?}", b.adapter().device_type);
            assert!(a.detail.contains(&kind), "{}", a.detail);
            let hw = b.adapter().is_hardware();
            assert!(a.detail.contains(if hw { "hardware" } else { "software" }));
            assert_eq!(wgpu_backend::is_hardware(), hw);
        }
        Err(_) => {
            assert!(!a.available);
            assert!(!wgpu_backend::is_hardware());
        }
    }
}

#[test]
fn philox_should_produce_the_bits_of_rng_rs() {
    let Some(g) = gpu("philox_should_produce_the_bits_of_rng_rs") else {
        return;
    };
    // Seeds with both halves set; a count that is no multiple of the 256-wide workgroups.
    for (seed, strm, step, word3) in [
        (0u64, 0u32, 0u32, 0u32),
        (0xDEAD_BEEF_0123_4567, stream::CEM_SAMPLE, 3, 0),
        (u64::MAX, u32::MAX, u32::MAX, 5),
        (42, stream::TS_NOISE, 1 << 20, 15),
    ] {
        let got = g.philox_blocks(seed, strm, step, word3, 1001).unwrap();
        let key = [seed as u32, (seed >> 32) as u32];
        for (i, w) in got.iter().enumerate() {
            let want = rng::philox4x32_10([i as u32, step, strm, word3], key);
            assert_eq!(
                *w, want,
                "block {i} of seed {seed:#x} stream {strm} step {step}"
            );
        }
    }
    // Random123's known answer, through the same kernel (counter 0 of key 0).
    let kat = g.philox_blocks(0, 0, 0, 0, 1).unwrap();
    assert_eq!(kat[0], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
}

#[test]
fn rng_mappings_should_match_rng_rs() {
    let Some(g) = gpu("rng_mappings_should_match_rng_rs") else {
        return;
    };
    let n = 3001u32;
    for (seed, strm, step, below_n) in [
        (7u64, stream::CEM_SAMPLE, 2u32, 5u32),
        (0x1234_5678_9ABC_DEF0, stream::TS_MEMBER, 11, 7),
        (3, stream::TS_NOISE, 0, u32::MAX),
    ] {
        let s = g.rng_samples(seed, strm, step, n, below_n).unwrap();
        let uni: Vec<f32> = (0..n).map(|i| rng::uniform(seed, strm, i, step)).collect();
        let bel: Vec<u32> = (0..n)
            .map(|i| rng::below(seed, strm, i, step, below_n))
            .collect();
        let nor: Vec<f32> = (0..n).map(|i| rng::normal(seed, strm, i, step)).collect();
        let tru: Vec<f32> = (0..n)
            .map(|i| rng::truncated_normal(seed, strm, i, step))
            .collect();
        // Exact: the unit map is exact f32 arithmetic and `below` is integer arithmetic.
        assert_eq!(s.uniform, uni, "uniform");
        assert_eq!(s.below, bel, "below");
        // Box–Muller runs the same ln and cos(2π·) polynomials on both sides (src/fastmath.rs
        // and common.wgsl), so without fused multiply-adds the results are identical (they
        // are on lavapipe); a GPU may fuse the Horner steps (≤ 1 ULP each) and round sqrt to
        // 2.5 ULP: |Δz| ≲ 1e-6 for |z| ≤ 5. A truncated sample could only differ wholesale if
        // |z| landed within ~1e-6 of ±2 on one side (probability ~1e-7 per sample).
        assert_close("normal", &s.normal, &nor, 2e-6, 1e-6);
        assert_close("truncated normal", &s.truncated_normal, &tru, 2e-6, 1e-6);
    }
}

fn forward_case(g: &WgpuBackend, shape: EnsembleShape, rows: usize, seed: u64, atol: f32) {
    let cpu = CpuBackend::new();
    let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
    let params = params_for(&shape, seed);
    let norm = norm_for(i, seed);
    let x = randn(seed, 1, e * rows * i, 1.0);
    let run = |b: &dyn Fn() -> (Vec<f32>, Vec<f32>)| b();
    let want = run(&|| {
        let (p, n, xx) = (
            cpu.upload(&params).unwrap(),
            cpu.upload(&norm).unwrap(),
            cpu.upload(&x).unwrap(),
        );
        let (mut m, mut lv) = (poisoned(&cpu, e * rows * o), poisoned(&cpu, e * rows * o));
        cpu.ensemble_forward(&shape, &p, &n, &xx, rows, &mut m, &mut lv)
            .unwrap();
        (cpu.download(&m).unwrap(), cpu.download(&lv).unwrap())
    });
    let got = run(&|| {
        let (p, n, xx) = (
            g.upload(&params).unwrap(),
            g.upload(&norm).unwrap(),
            g.upload(&x).unwrap(),
        );
        let (mut m, mut lv) = (poisoned(g, e * rows * o), poisoned(g, e * rows * o));
        g.ensemble_forward(&shape, &p, &n, &xx, rows, &mut m, &mut lv)
            .unwrap();
        (g.download(&m).unwrap(), g.download(&lv).unwrap())
    });
    let tag = format!("forward h{} {:?}", shape.hidden, shape.activation);
    assert_close(&format!("{tag} mean"), &got.0, &want.0, atol, atol);
    if shape.probabilistic {
        assert_close(&format!("{tag} logvar"), &got.1, &want.1, atol, atol);
    } else {
        assert!(
            got.1.iter().all(|v| v.to_bits() == POISON),
            "a deterministic forward must leave logvar untouched"
        );
    }
}

#[test]
fn ensemble_forward_should_match_cpu() {
    let Some(g) = gpu("ensemble_forward_should_match_cpu") else {
        return;
    };
    // Tolerance 2e-5 absolute and relative: outputs are O(1) sums of ≤ 200 products per
    // layer; a different summation order changes each by ~√K·ε·Σ|a·w| ≈ 2e-7·√200 ≈ 3e-6
    // after three layers, and SiLU/softplus use the same exp/ln polynomials on both sides.
    forward_case(g, shape(13, 2, Activation::Silu, true), 37, 1, 2e-5);
    forward_case(g, shape(200, 2, Activation::Silu, true), 37, 2, 2e-5);
    forward_case(g, shape(13, 3, Activation::Relu, false), 37, 3, 2e-5);
    forward_case(g, shape(13, 1, Activation::Tanh, true), 70, 4, 2e-5);
    forward_case(g, shape(13, 0, Activation::Silu, true), 37, 5, 2e-5);
}

struct TrainData {
    shape: EnsembleShape,
    rows: usize,
    params: Vec<f32>,
    norm: Vec<f32>,
    x: Vec<f32>,
    y: Vec<f32>,
    loss: LossConfig,
}

fn train_data(shape: EnsembleShape, rows: usize, seed: u64) -> TrainData {
    let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
    TrainData {
        params: params_for(&shape, seed),
        norm: norm_for(i, seed),
        x: randn(seed, 1, e * rows * i, 1.0),
        y: randn(seed, 2, e * rows * o, 0.5),
        loss: LossConfig {
            logvar_penalty: 0.01,
            weight_decay: (0..=shape.num_layers)
                .map(|l| if l == 1 { 0.0 } else { 2.5e-5 * (l + 1) as f32 })
                .collect(),
            precision: mbrl_gpu::backend::Precision::F32,
        },
        shape,
        rows,
    }
}

/// (grad, losses) of one nll_backward.
fn nll_on<B: Backend>(b: &B, d: &TrainData) -> (Vec<f32>, Vec<f32>) {
    let total = d.shape.layout().total;
    let (p, n, x, y) = (
        b.upload(&d.params).unwrap(),
        b.upload(&d.norm).unwrap(),
        b.upload(&d.x).unwrap(),
        b.upload(&d.y).unwrap(),
    );
    let (mut grad, mut losses) = (poisoned(b, total), poisoned(b, d.shape.ensemble));
    b.ensemble_nll_backward(
        &d.shape,
        &d.loss,
        &p,
        &n,
        &x,
        &y,
        d.rows,
        &mut grad,
        &mut losses,
    )
    .unwrap();
    (b.download(&grad).unwrap(), b.download(&losses).unwrap())
}

#[test]
fn ensemble_nll_backward_should_match_cpu() {
    let Some(g) = gpu("ensemble_nll_backward_should_match_cpu") else {
        return;
    };
    let cpu = CpuBackend::new();
    for (sh, seed) in [
        (shape(13, 2, Activation::Silu, true), 11),
        (shape(200, 2, Activation::Silu, true), 12),
        (shape(13, 2, Activation::Relu, false), 13),
        (shape(13, 3, Activation::Tanh, true), 14),
        (shape(13, 0, Activation::Silu, true), 15),
    ] {
        let d = train_data(sh, 37, seed);
        let (gw, lw) = nll_on(&cpu, &d);
        let (gg, lg) = nll_on(g, &d);
        // Gradients are sums over 37 rows (and 200 hidden units) of products of O(1)
        // factors; reordering (16-deep K slices, tree reductions) and FMA change them by
        // ~√K·ε·Σ|terms| ≲ 1e-6. 1e-5 absolute and relative leaves a 10× margin for GPUs
        // whose division and exp inputs round differently (lavapipe agrees to ~3e-8).
        let tag = format!("nll h{} {:?}", sh.hidden, sh.activation);
        assert_close(&format!("{tag} grad"), &gg, &gw, 1e-5, 1e-5);
        // Losses: one sum of 37·4 terms ≈ O(1); the reduction order differs.
        assert_close(&format!("{tag} losses"), &lg, &lw, 1e-6, 1e-5);
    }
}

#[test]
fn adam_step_should_match_cpu() {
    let Some(g) = gpu("adam_step_should_match_cpu") else {
        return;
    };
    let cpu = CpuBackend::new();
    let n = 1001;
    let w0 = randn(21, 0, n, 1.0);
    let grad = randn(21, 1, n, 0.1);
    let m0 = randn(21, 2, n, 0.01);
    let v0: Vec<f32> = randn(21, 3, n, 0.01).iter().map(|x| x * x).collect();
    for step in [1u32, 2, 7, 1000] {
        let p = AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
            len: n as u32,
            _pad: [0; 2],
        };
        let run = |b: &dyn Fn() -> Vec<Vec<f32>>| b();
        let want = run(&|| {
            let (mut w, gg, mut m, mut v) = (
                cpu.upload(&w0).unwrap(),
                cpu.upload(&grad).unwrap(),
                cpu.upload(&m0).unwrap(),
                cpu.upload(&v0).unwrap(),
            );
            cpu.adam_step(&p, &mut w, &gg, &mut m, &mut v).unwrap();
            vec![w, m, v]
        });
        let got = run(&|| {
            let (mut w, gg, mut m, mut v) = (
                g.upload(&w0).unwrap(),
                g.upload(&grad).unwrap(),
                g.upload(&m0).unwrap(),
                g.upload(&v0).unwrap(),
            );
            g.adam_step(&p, &mut w, &gg, &mut m, &mut v).unwrap();
            vec![
                g.download(&w).unwrap(),
                g.download(&m).unwrap(),
                g.download(&v).unwrap(),
            ]
        });
        // The bias corrections are bit-identical (same square-and-multiply as powi); m and v
        // may differ by an FMA rounding (1 ULP); the step lr·m̂/(√v̂ + ε) ≤ ~3·lr carries the
        // device's sqrt and division error (≤ 5 ULP), i.e. ≤ 3e-3·6e-7 on top of w's own
        // ULP (≤ 5e-7 for |w| < 4).
        assert_close(&format!("adam w (t={step})"), &got[0], &want[0], 1e-6, 2e-7);
        assert_close(&format!("adam m (t={step})"), &got[1], &want[1], 1e-9, 2e-7);
        assert_close(
            &format!("adam v (t={step})"),
            &got[2],
            &want[2],
            1e-12,
            2e-7,
        );
    }
}

fn sample_on<B: Backend>(b: &B, p: &SampleParams, mean: &[f32], var: &[f32]) -> Vec<f32> {
    let (lo, hi) = ([-1.0f32, -2.0], [1.0f32, 0.5]);
    let (m, v, l, h) = (
        b.upload(mean).unwrap(),
        b.upload(var).unwrap(),
        b.upload(&lo).unwrap(),
        b.upload(&hi).unwrap(),
    );
    let mut out = poisoned(b, (p.population * p.len) as usize);
    b.cem_sample(p, &m, &v, &l, &h, &mut out).unwrap();
    b.download(&out).unwrap()
}

#[test]
fn cem_sample_should_match_cpu() {
    let Some(g) = gpu("cem_sample_should_match_cpu") else {
        return;
    };
    let cpu = CpuBackend::new();
    let (pop, h, a) = (37u32, 7u32, 2u32);
    let len = (h * a) as usize;
    // Means inside the bounds of their action dimension, some at a bound.
    let mut mean = rand_uniform(31, 0, len, -0.9, 0.4);
    mean[3] = -2.0;
    mean[4] = 1.0;
    let mut var = rand_uniform(31, 1, len, 0.0, 0.5);
    var[5] = 0.0;
    for dist in [0u32, 1] {
        let p = SampleParams {
            seed_lo: 0x89AB_CDEF,
            seed_hi: 17,
            step: 4,
            population: pop,
            len: len as u32,
            act_dim: a,
            dist,
            beta: 0.0,
        };
        let want = sample_on(&cpu, &p, &mean, &var);
        let got = sample_on(g, &p, &mean, &var);
        // Uniform: lb + u·(ub − lb) with u exact, one possible FMA rounding: 1 ULP of 2.
        // Truncated normal: m + z·σ with |Δz| ≤ 1e-6 (see the rng test) and σ ≤ 0.71, plus
        // the device sqrt's 2.5 ULP.
        let tol = if dist == 1 { 3e-7 } else { 2e-6 };
        assert_close(&format!("cem_sample dist {dist}"), &got, &want, tol, 0.0);
    }
}

#[test]
fn ensemble_vjp_should_match_cpu() {
    let Some(g) = gpu("ensemble_vjp_should_match_cpu") else {
        return;
    };
    for c in common::dense::vjp(g, "wgpu") {
        assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
    }
}

#[test]
fn sac_steps_should_match_cpu() {
    let Some(g) = gpu("sac_steps_should_match_cpu") else {
        return;
    };
    for c in common::sac::step(g, "wgpu") {
        assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
    }
}

/// The CPU backend's device path of MBPO's branched rollout (`DeviceSac::branch`: the
/// actor through `ensemble_forward` and `sac_squash`, `branch_route`, `branch_step`) is the
/// specification (`mbpo::branched_rollout`) bit for bit, so the device parity below compares
/// against the specification itself.
#[test]
fn a_branched_rollout_through_the_device_path_on_the_cpu_should_equal_the_specification() {
    let cpu = CpuBackend::new();
    common::branch::no_room_is_refused(&cpu);
    for (name, c) in common::branch::cases() {
        let want = common::branch::rollout(&cpu, &c, false);
        let got = common::branch::rollout(&cpu, &c, true);
        let added = want.written() - c.model_data.written();
        assert!(added > 100, "{name}");
        if name == "cart-pole" {
            // Terminations stop rows inside the rollout.
            assert!(added < c.cfg.rollout_batch() * c.k, "{name}: {added}");
        }
        assert_eq!(got.written(), want.written(), "{name}");
        let fields = ["obs", "act", "reward", "next_obs", "terminated"];
        for (f, (g, w)) in fields
            .iter()
            .zip(got.to_arrays().into_iter().zip(want.to_arrays()))
        {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let first = bits(&g).iter().zip(bits(&w)).position(|(a, b)| *a != b);
            assert_eq!(first, None, "{name}: {f} first differs at that index");
        }
    }
}

#[test]
fn branched_rollouts_should_match_cpu() {
    let Some(g) = gpu("branched_rollouts_should_match_cpu") else {
        return;
    };
    for c in common::branch::parity(g, "wgpu") {
        assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
    }
}

/// The path gradient's fixture is meaningful on the CPU (finite, non-zero gradients;
/// terminations inside the horizon where the cases are built for them).
#[test]
fn path_gradient_cases_should_be_meaningful_on_the_cpu() {
    common::path::cases_are_meaningful();
}

#[test]
fn path_gradients_should_match_cpu() {
    let Some(g) = gpu("path_gradients_should_match_cpu") else {
        return;
    };
    for c in common::path::parity(g, "wgpu") {
        assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
    }
}

#[test]
fn rollouts_closed_by_a_terminal_value_should_match_cpu() {
    let Some(g) = gpu("rollouts_closed_by_a_terminal_value_should_match_cpu") else {
        return;
    };
    for c in common::value::parity(g, "wgpu") {
        assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
    }
}

#[test]
fn icem_and_mppi_ops_should_match_cpu() {
    let Some(g) = gpu("icem_and_mppi_ops_should_match_cpu") else {
        return;
    };
    use common::planners;
    let cases = [
        planners::colored_sample(g, "wgpu"),
        planners::elite_memory(g, "wgpu"),
        planners::mppi(g, "wgpu"),
        planners::mpc_steps(g, "wgpu"),
    ];
    for c in cases.iter().flatten() {
        assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
    }
}

fn init_on<B: Backend>(b: &B, p: &InitParams, prev: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (lo, hi) = ([-1.0f32, -2.0, 0.0], [1.0f32, 0.5, 3.0]);
    let (l, h, pr) = (
        b.upload(&lo).unwrap(),
        b.upload(&hi).unwrap(),
        b.upload(prev).unwrap(),
    );
    let (mut m, mut v) = (poisoned(b, p.len as usize), poisoned(b, p.len as usize));
    b.cem_init(p, &l, &h, &pr, &mut m, &mut v).unwrap();
    (b.download(&m).unwrap(), b.download(&v).unwrap())
}

#[test]
fn cem_init_should_match_cpu() {
    let Some(g) = gpu("cem_init_should_match_cpu") else {
        return;
    };
    let cpu = CpuBackend::new();
    // 13 steps of 3 action dimensions: 39 elements, not a multiple of any workgroup.
    let prev = randn(41, 0, 39, 1.0);
    for shift in [0u32, 1] {
        let p = InitParams {
            len: 39,
            act_dim: 3,
            shift,
            _pad: 0,
        };
        let (wm, wv) = init_on(&cpu, &p, &prev);
        let (gm, gv) = init_on(g, &p, &prev);
        // Copies, a midpoint and (ub − lb)²/16: one rounding each, the same on both.
        assert_close(&format!("cem_init mean, shift {shift}"), &gm, &wm, 0.0, 0.0);
        assert_close(&format!("cem_init var, shift {shift}"), &gv, &wv, 0.0, 0.0);
    }
}

fn update_on<B: Backend>(
    b: &B,
    p: &UpdateParams,
    pop: &[f32],
    ret: &[f32],
    mean: &[f32],
    var: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (pp, rr) = (b.upload(pop).unwrap(), b.upload(ret).unwrap());
    let (mut m, mut v) = (b.upload(mean).unwrap(), b.upload(var).unwrap());
    b.cem_update(p, &pp, &rr, &mut m, &mut v).unwrap();
    (b.download(&m).unwrap(), b.download(&v).unwrap())
}

#[test]
fn cem_update_should_pick_the_cpu_elites() {
    let Some(g) = gpu("cem_update_should_pick_the_cpu_elites") else {
        return;
    };
    let cpu = CpuBackend::new();
    let (np, len) = (300usize, 14usize);
    let pop = randn(41, 0, np * len, 1.0);
    let mut ret = randn(41, 1, np, 10.0);
    // Ties (broken by index), NaN (ranked as −∞), infinities, and signed zeros.
    ret[5] = ret[200];
    ret[7] = f32::NAN;
    ret[8] = f32::NEG_INFINITY;
    ret[9] = f32::INFINITY;
    ret[10] = 0.0;
    ret[11] = -0.0;
    // A tie exactly at the boundary of the 21 elites: the lower index must win.
    let order = top_k(&ret, np);
    let last = order[20];
    let rival = *order[21..].iter().find(|&&q| q > last).unwrap();
    ret[rival] = ret[last];
    let mean = randn(41, 2, len, 0.3);
    let var = rand_uniform(41, 3, len, 0.1, 1.0);
    for k in [1u32, 21, 37, 300] {
        let p = UpdateParams {
            population: np as u32,
            len: len as u32,
            num_elites: k,
            _pad: 0,
            alpha: 0.1,
            min_var: 1e-3,
            _pad2: [0; 2],
        };
        let want = update_on(&cpu, &p, &pop, &ret, &mean, &var);
        let got = update_on(g, &p, &pop, &ret, &mean, &var);
        // Same elites summed in the same (rank) order: only FMA contraction and the
        // device's division (2.5 ULP) differ, a few ULP of O(1) values.
        assert_close(
            &format!("cem_update mean k={k}"),
            &got.0,
            &want.0,
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("cem_update var k={k}"),
            &got.1,
            &want.1,
            1e-6,
            1e-6,
        );
    }
}

/// A model for `env` (obs + act → obs [+ reward]).
fn model_for(env: EnvId, hidden: usize, learn_reward: bool, prob: bool) -> EnsembleShape {
    let (od, ad) = (env.obs_dim(), env.act_dim());
    EnsembleShape {
        ensemble: 3,
        in_dim: od + ad,
        out_dim: od + usize::from(learn_reward),
        hidden,
        num_layers: 2,
        activation: Activation::Silu,
        probabilistic: prob,
    }
}

fn rollout_params(
    env: EnvId,
    prop: Propagation,
    pop: u32,
    particles: u32,
    h: u32,
) -> RolloutParams {
    let mut elites = [0u32; MAX_ELITES];
    elites[..3].copy_from_slice(&[2, 0, 2]);
    RolloutParams {
        seed_lo: 0x0BAD_F00D,
        seed_hi: 3,
        step: 5,
        population: pop,
        particles,
        horizon: h,
        obs_dim: env.obs_dim() as u32,
        act_dim: env.act_dim() as u32,
        propagation: prop as u32,
        env: env.code(),
        learn_reward: 0,
        num_elites: 3,
        elites,
    }
}

#[test]
fn rollout_should_match_cpu() {
    let Some(g) = gpu("rollout_should_match_cpu") else {
        return;
    };
    let cpu = CpuBackend::new();
    let (pop, k, h) = (37u32, 3u32, 7u32);
    // (env, propagation, hidden, learned reward, probabilistic, start observation)
    type Case = (EnvId, Propagation, usize, bool, bool, &'static [f32]);
    let cases: [Case; 8] = [
        (
            EnvId::Pendulum,
            Propagation::Ts1,
            13,
            false,
            true,
            &[0.6, 0.8, 0.5],
        ),
        (
            EnvId::Pendulum,
            Propagation::TsInf,
            200,
            false,
            true,
            &[-1.0, 0.0, -2.0],
        ),
        (
            EnvId::Pendulum,
            Propagation::Expectation,
            13,
            false,
            true,
            &[0.0, 1.0, 0.0],
        ),
        (
            EnvId::Pendulum,
            Propagation::Ts1,
            13,
            true,
            true,
            &[0.6, -0.8, 1.0],
        ),
        // Near the cart-pole and mountain-car thresholds, so that particles terminate (and
        // collect the goal reward) at different steps.
        (
            EnvId::CartPole,
            Propagation::TsInf,
            13,
            false,
            true,
            &[2.2, 0.5, 0.1, 0.0],
        ),
        (
            EnvId::CartPole,
            Propagation::Ts1,
            13,
            false,
            true,
            &[-2.0, -0.5, -0.15, 0.0],
        ),
        (
            EnvId::MountainCar,
            Propagation::Ts1,
            13,
            false,
            true,
            &[0.3, 0.01],
        ),
        (
            EnvId::MountainCar,
            Propagation::Expectation,
            13,
            true,
            false,
            &[0.44, 0.02],
        ),
    ];
    for (n, (env, prop, hidden, learn_reward, prob, obs)) in cases.into_iter().enumerate() {
        let shape = model_for(env, hidden, learn_reward, prob);
        let seed = 50 + n as u64;
        let mut p = rollout_params(env, prop, pop, k, h);
        p.learn_reward = u32::from(learn_reward);
        // Small weights keep predicted trajectories near the start, so that rewards and
        // terminations depend on the sampled noise rather than on a runaway model.
        let mut params = params_for(&shape, seed);
        for v in params.iter_mut().take(shape.layout().max_logvar) {
            *v *= 0.5;
        }
        let norm = norm_for(shape.in_dim, seed);
        let spec = env.spec();
        let actions = rand_uniform(
            seed,
            3,
            (pop * h) as usize,
            spec.act_low[0],
            spec.act_high[0],
        );
        let want = rollout_on(&cpu, &p, &shape, &params, &norm, obs, &actions);
        let got = rollout_on(g, &p, &shape, &params, &norm, obs, &actions);
        // Returns sum 7 rewards of states that passed through the model 7 times. Each step's
        // prediction differs by the GEMM order (~1e-6 relative) and the noise by the
        // exp/normal error (~1e-6 absolute); the small-weight model does not amplify them, so
        // states agree to ~1e-5 and rewards (O(1..10) for pendulum) to ~1e-4 absolute.
        // Cart-pole and mountain car pay constants, which agree unless a state lands within
        // ~1e-5 of a threshold on one side only (none does here).
        let tag = format!(
            "rollout {} {prop:?} h{hidden} reward={learn_reward}",
            env.name()
        );
        assert_close(&tag, &got, &want, 2e-4, 2e-5);
        if env != EnvId::Pendulum && !learn_reward {
            // The case must exercise termination: returns differ between candidates.
            assert!(
                want.iter().any(|r| *r != want[0]),
                "{tag}: no termination exercised"
            );
        }
    }
    // Half-cheetah's planning reward (task code 3): 18 observations and 6 actions, more
    // than the native environments' 4 and 1.
    let (od, ad) = (task::HALF_CHEETAH_OBS, task::HALF_CHEETAH_ACT);
    let shape = EnsembleShape {
        ensemble: 3,
        in_dim: od + ad,
        out_dim: od,
        hidden: 200,
        num_layers: 2,
        activation: Activation::Silu,
        probabilistic: true,
    };
    let mut p = rollout_params(EnvId::Pendulum, Propagation::Ts1, pop, k, h);
    (p.env, p.obs_dim, p.act_dim) = (task::HALF_CHEETAH, od as u32, ad as u32);
    let params = params_for(&shape, 59);
    let norm = norm_for(shape.in_dim, 59);
    let obs = randn(59, 5, od, 0.5);
    let actions = rand_uniform(59, 3, (pop * h) as usize * ad, -1.0, 1.0);
    let want = rollout_on(&cpu, &p, &shape, &params, &norm, &obs, &actions);
    let got = rollout_on(g, &p, &shape, &params, &norm, &obs, &actions);
    // As above: rewards are velocities of O(1) minus 0.1·‖a‖² ≤ 0.6.
    assert_close("rollout half-cheetah Ts1 h200", &got, &want, 2e-4, 2e-5);

    // The MuJoCo tasks' termination functions (and the inverted pendulum's reward), from
    // starts near the thresholds.
    for c in common::mujoco_task_cases() {
        let shape = c.shape(3);
        let mut p = rollout_params(EnvId::Pendulum, Propagation::Ts1, pop, k, h);
        (p.env, p.obs_dim, p.act_dim) = (c.code, c.obs_dim as u32, c.act_dim as u32);
        p.learn_reward = c.learn_reward as u32;
        let seed = 400 + c.code as u64;
        let mut params = params_for(&shape, seed);
        let head = shape.layout().layers[2];
        for w in &mut params[head.weight..head.bias + shape.ensemble * head.fan_out] {
            *w *= 0.05;
        }
        let norm = norm_for(shape.in_dim, seed);
        let actions = rand_uniform(seed, 3, (pop * h) as usize * c.act_dim, -1.0, 1.0);
        let want = rollout_on(&cpu, &p, &shape, &params, &norm, &c.start, &actions);
        let got = rollout_on(g, &p, &shape, &params, &norm, &c.start, &actions);
        let tag = format!("rollout task {}", c.name);
        assert_close(&tag, &got, &want, 2e-4, 2e-5);
        assert!(
            want.iter().any(|r| *r != want[0]),
            "{tag}: no termination exercised: {want:?}"
        );
    }

    // A model whose prediction runs off to infinity: every candidate is −∞ on both.
    let env = EnvId::Pendulum;
    let shape = model_for(env, 13, false, true);
    let mut params = params_for(&shape, 60);
    let head = shape.layout().layers[2];
    for m in 0..3 {
        params[head.bias + m * head.fan_out] = 1e38;
    }
    let p = rollout_params(env, Propagation::Ts1, pop, k, h);
    let norm = norm_for(shape.in_dim, 60);
    let actions = rand_uniform(60, 3, (pop * h) as usize, -2.0, 2.0);
    let obs = [1.0, 0.0, 0.0];
    let want = rollout_on(&cpu, &p, &shape, &params, &norm, &obs, &actions);
    let got = rollout_on(g, &p, &shape, &params, &norm, &obs, &actions);
    assert!(want.iter().all(|r| *r == f32::NEG_INFINITY), "{want:?}");
    assert_eq!(got, want, "diverging rollouts must be −∞");
}

#[test]
fn rollout_true_should_match_cpu() {
    let Some(g) = gpu("rollout_true_should_match_cpu") else {
        return;
    };
    let cpu = CpuBackend::new();
    let (pop, h) = (37u32, 7u32);
    // Reset states, then states near the thresholds (cart-pole falls, the car reaches the
    // goal) and a pendulum several turns around at the speed limit.
    let starts: [(EnvId, &[f32]); 6] = [
        (EnvId::CartPole, &[]),
        (EnvId::Pendulum, &[]),
        (EnvId::MountainCar, &[]),
        (EnvId::CartPole, &[2.3, 0.8, 0.15, 0.6]),
        (EnvId::Pendulum, &[20.5, 7.9]),
        (EnvId::MountainCar, &[0.43, 0.02]),
    ];
    for (n, (env, given)) in starts.into_iter().enumerate() {
        let seed = 70 + n as u64;
        let p = rollout_params(env, Propagation::TsInf, pop, 1, h);
        let mut start = vec![0.0f32; env.state_dim()];
        env.reset_state(seed, &mut start);
        if !given.is_empty() {
            start.copy_from_slice(given);
        }
        let spec = env.spec();
        // Actions up to 1.5× the bounds, so that the environments' clipping is exercised.
        let actions = rand_uniform(
            seed,
            4,
            (pop * h) as usize,
            1.5 * spec.act_low[0],
            1.5 * spec.act_high[0],
        );
        let run = |b: &dyn Fn() -> Vec<f32>| b();
        let want = run(&|| {
            let (s, a) = (cpu.upload(&start).unwrap(), cpu.upload(&actions).unwrap());
            let mut r = poisoned(&cpu, pop as usize);
            cpu.rollout_true(&p, &s, &a, &mut r).unwrap();
            cpu.download(&r).unwrap()
        });
        let got = run(&|| {
            let (s, a) = (g.upload(&start).unwrap(), g.upload(&actions).unwrap());
            let mut r = poisoned(g, pop as usize);
            g.rollout_true(&p, &s, &a, &mut r).unwrap();
            g.download(&r).unwrap()
        });
        // The CPU steps each state in f64 and rounds once per step; the device steps in f32
        // (a few ULP per step, ~1e-6 relative after 7 steps). Pendulum returns are ~−10 to
        // −70: 1e-5 relative. Cart-pole and mountain-car returns are step counts and
        // −0.1·Σa² (exact up to rounding) unless a state is within 1e-6 of a threshold.
        let tag = format!("rollout_true {} from {start:?}", env.name());
        assert_close(&tag, &got, &want, 1e-5, 1e-5);
        if !given.is_empty() && env != EnvId::Pendulum {
            assert!(
                want.iter().any(|r| *r != want[0]),
                "{tag}: no termination exercised"
            );
        }
    }
}

#[test]
fn cem_planning_should_choose_the_cpu_action() {
    let Some(_) = gpu("cem_planning_should_choose_the_cpu_action") else {
        return;
    };
    let cpu = CpuBackend::new();
    let env = EnvId::Pendulum;
    let shape = model_for(env, 13, false, true);
    let (pop, k, h, iters, elites) = (37u32, 3u32, 7u32, 4u32, 5u32);
    let params = params_for(&shape, 90);
    let norm = norm_for(shape.in_dim, 90);
    let mut state = vec![0.0f32; 2];
    env.reset_state(90, &mut state);
    let mut obs = vec![0.0f32; 3];
    env.observe(&state, &mut obs);
    let len = h as usize * env.act_dim();
    let plan =
        |b: &dyn PlanBackend| b.plan(&shape, &params, &norm, &obs, pop, k, h, iters, elites, len);
    let want = plan(&cpu);
    // A device of its own, so that no other test's download submits its pending work.
    let g = &WgpuBackend::new().unwrap();
    let got = plan(g);
    // Four iterations of sample → rollout (7 steps) → update, recorded without a host
    // round-trip: the download of the mean is the only submission.
    assert_eq!(g.submissions(), 1, "a planning step must be one submission");
    // Returns agree to ~1e-5 relative (see rollout_should_match_cpu), so the elites — the 5
    // best of 37 candidates — are the same sets unless two returns tie within that, which
    // they do not here; the means then differ only by rounding (≲ 1e-6) compounded over 4
    // iterations. 1e-4 on an action in [-2, 2] is therefore "the same action".
    assert_close("planned mean (first action first)", &got, &want, 1e-4, 0.0);
    eprintln!("first action: wgpu {} cpu {}", got[0], want[0]);
}

/// A CEM planning step run entirely through the trait: all iterations are recorded before
/// the single download of the mean.
trait PlanBackend {
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        shape: &EnsembleShape,
        params: &[f32],
        norm: &[f32],
        obs: &[f32],
        pop: u32,
        particles: u32,
        h: u32,
        iters: u32,
        elites: u32,
        len: usize,
    ) -> Vec<f32>;
}

impl<B: Backend> PlanBackend for B {
    fn plan(
        &self,
        shape: &EnsembleShape,
        params: &[f32],
        norm: &[f32],
        obs: &[f32],
        pop: u32,
        particles: u32,
        h: u32,
        iters: u32,
        elites: u32,
        len: usize,
    ) -> Vec<f32> {
        let env = EnvId::Pendulum;
        let spec = env.spec();
        let p = self.upload(params).unwrap();
        let n = self.upload(norm).unwrap();
        let start = self.upload(obs).unwrap();
        let lo = self.upload(&spec.act_low).unwrap();
        let hi = self.upload(&spec.act_high).unwrap();
        let mut mean = self.upload(&vec![0.0; len]).unwrap();
        let mut var = self.upload(&vec![1.0; len]).unwrap();
        let mut population = poisoned(self, pop as usize * len);
        let mut returns = poisoned(self, pop as usize);
        let mut rp = rollout_params(env, Propagation::TsInf, pop, particles, h);
        rp.step = 0;
        for it in 0..iters {
            let sp = SampleParams {
                seed_lo: 1234,
                seed_hi: 0,
                step: it,
                population: pop,
                len: len as u32,
                act_dim: 1,
                dist: 0,
                beta: 0.0,
            };
            self.cem_sample(&sp, &mean, &var, &lo, &hi, &mut population)
                .unwrap();
            self.rollout(&rp, shape, &p, &n, &start, &population, &mut returns)
                .unwrap();
            let up = UpdateParams {
                population: pop,
                len: len as u32,
                num_elites: elites,
                _pad: 0,
                alpha: 0.1,
                min_var: 1e-4,
                _pad2: [0; 2],
            };
            self.cem_update(&up, &population, &returns, &mut mean, &mut var)
                .unwrap();
        }
        self.download(&mean).unwrap()
    }
}

/// Adam's update −Δw = lr/(1 − β₁ᵗ) · m(g)/(√v(g)/√(1 − β₂ᵗ) + ε) of one element as a function
/// of its gradient g, from that element's state (m₀, v₀) before the step, in f64:
/// m(g) = β₁m₀ + (1 − β₁)g, v(g) = β₂v₀ + (1 − β₂)g² (src/backend/cpu/optim.rs).
fn adam_update(p: &AdamParams, m0: f32, v0: f32, g: f64) -> f64 {
    let (b1, b2) = (p.beta1 as f64, p.beta2 as f64);
    let t = p.step as i32;
    let m = b1 * m0 as f64 + (1.0 - b1) * g;
    let v = b2 * v0 as f64 + (1.0 - b2) * g * g;
    p.lr as f64 / (1.0 - b1.powi(t)) * m / (v.sqrt() / (1.0 - b2.powi(t)).sqrt() + p.eps as f64)
}

/// The most Adam's update of one element can differ between two gradients that both lie in
/// [g − tol, g + tol], tol the gradient parity tolerance of `ensemble_nll_backward_should_match_cpu`.
///
/// Without ε the update is K·m(g)/√v(g) (K = lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)), whose derivative is
/// K·((1 − β₁)β₂v₀ − β₁m₀(1 − β₂)·g)/v(g)^{3/2}: the numerator is linear in g, so the only
/// critical point is g* = (1 − β₁)β₂v₀/(β₁m₀(1 − β₂)) and over the interval the extremes are
/// at the ends or at g* (with v₀ = 0, hence m₀ = 0, the update is ±K(1 − β₁)/√(1 − β₂) by
/// the sign of g). ε only shrinks an update toward 0, by the factor √v/(√v + ε√(1 − β₂ᵗ)) ∈ [ρ, 1] with
/// ρ taken at the interval's smallest v. Hence every update in the interval lies in
/// [min(lo, ρ·lo), max(hi, ρ·hi)] (lo, hi the ε-free extremes), and the bound is the distance
/// from the CPU's update to the far end of that range. It is ~0 where |g| ≫ tol (the update is
/// then ≈ lr·sign, flat in g) and up to 2·lr where the interval straddles a sign change.
fn adam_update_spread(p: &AdamParams, m0: f32, v0: f32, g: f64, tol: f64) -> f64 {
    let (b1, b2) = (p.beta1 as f64, p.beta2 as f64);
    let t = p.step as i32;
    let k = p.lr as f64 / (1.0 - b1.powi(t)) * (1.0 - b2.powi(t)).sqrt();
    let (m0, v0) = (m0 as f64, v0 as f64);
    let m = |g: f64| b1 * m0 + (1.0 - b1) * g;
    let v = |g: f64| b2 * v0 + (1.0 - b2) * g * g;
    let no_eps = |g: f64| {
        let vv = v(g);
        if vv > 0.0 {
            k * m(g) / vv.sqrt()
        } else {
            // v = 0 only with v₀ = 0 and g = 0, where m = β₁m₀ = 0 too (m₀² ≤ v₀/(1 − β₂)).
            0.0
        }
    };
    let (a, z) = (g - tol, g + tol);
    let mut pts = vec![a, z];
    if m0 != 0.0 {
        let crit = b2 * v0 * (1.0 - b1) / (b1 * m0 * (1.0 - b2));
        if (a..=z).contains(&crit) {
            pts.push(crit);
        }
    }
    // Near g = 0 with v₀ = 0 the ε-free update jumps from −K(1−β₁)/√(1−β₂) to +: both signs.
    let vals: Vec<f64> = if v0 == 0.0 && a <= 0.0 && z >= 0.0 {
        let step = k * (1.0 - b1) / (1.0 - b2).sqrt();
        vec![-step, step]
    } else {
        pts.iter().map(|g| no_eps(*g)).collect()
    };
    let (lo, hi) = vals
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(*v), h.max(*v))
        });
    let g_small = if a <= 0.0 && z >= 0.0 {
        0.0
    } else {
        a.abs().min(z.abs())
    };
    let sv = v(g_small).sqrt();
    let rho = sv / (sv + p.eps as f64 * (1.0 - b2.powi(t)).sqrt());
    let (lo, hi) = (lo.min(rho * lo), hi.max(rho * hi));
    let here = adam_update(p, m0 as f32, v0 as f32, g);
    (hi - here).max(here - lo)
}

/// Six Adam steps of NLL training. Each step starts both backends from the same state — the
/// CPU's parameters, first and second moments before that step — so that each step's update
/// is compared on its own instead of through trajectories that drift apart. The update of
/// every parameter must then agree within what the gradient parity tolerance allows through
/// Adam's update rule (`adam_update_spread`), plus the Adam kernel's own rounding.
#[test]
fn training_steps_should_give_the_cpu_losses_and_parameter_updates() {
    let Some(g) = gpu("training_steps_should_give_the_cpu_losses_and_parameter_updates") else {
        return;
    };
    let cpu = CpuBackend::new();
    let d = train_data(shape(13, 2, Activation::Silu, true), 37, 101);
    let total = d.shape.layout().total;
    let mut state = TrainState {
        params: d.params.clone(),
        m: vec![0.0; total],
        v: vec![0.0; total],
    };
    let (mut tight, mut worst_ratio, mut moved) = (0usize, 0.0f64, 0.0f64);
    for step in 1..=6u32 {
        let ap = AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
            len: total as u32,
            _pad: [0; 2],
        };
        let want = cpu.train_step(&d, &state, &ap);
        let got = g.train_step(&d, &state, &ap);
        // The losses are those of the nll test on the same parameters: 1e-6 + 1e-5 relative.
        assert_close(
            &format!("losses at step {step}"),
            &got.losses,
            &want.losses,
            1e-6,
            1e-5,
        );
        for i in 0..total {
            let w0 = state.params[i];
            let (dw, dg) = (want.params[i] - w0, got.params[i] - w0);
            let gi = want.grad[i] as f64;
            // The gradient tolerance of ensemble_nll_backward_should_match_cpu, through Adam;
            // then the Adam kernel's own rounding (adam_step_should_match_cpu: 1e-6 + 2e-7·|w|).
            let spread =
                adam_update_spread(&ap, state.m[i], state.v[i], gi, 1e-5 + 1e-5 * gi.abs());
            let allowed = spread + 1e-6 + 2e-7 * w0.abs() as f64;
            let err = (dg - dw).abs() as f64;
            assert!(
                dg.is_finite() && err <= allowed,
                "step {step}, parameter {i}: wgpu moved it by {dg:e}, cpu by {dw:e} \
                 (|Δ| = {err:e} > {allowed:e}; cpu gradient {gi:e}, wgpu {:e})",
                got.grad[i]
            );
            tight += usize::from(allowed < 0.1 * ap.lr as f64);
            worst_ratio = worst_ratio.max(err / allowed);
            moved = moved.max(dw.abs() as f64);
        }
        state = TrainState {
            params: want.params,
            m: want.m,
            v: want.v,
        };
    }
    // The check has teeth only if most bounds are far below the ~lr that every step moves
    // a parameter by (a dropped or wrong gradient element changes its update by ~lr).
    assert!(
        tight > 6 * total * 9 / 10,
        "only {tight} of {} updates were checked to better than lr/10",
        6 * total
    );
    eprintln!(
        "training: largest step {moved:e}; {tight} of {} updates bounded below lr/10; \
         worst |Δ| at {worst_ratio:.3} of its bound",
        6 * total
    );
}

/// Parameters and Adam moments before a training step.
struct TrainState {
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// One step's results: losses and gradient at the old parameters, then the new state.
struct StepResult {
    losses: Vec<f32>,
    grad: Vec<f32>,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

trait TrainBackend {
    fn train_step(&self, d: &TrainData, s: &TrainState, ap: &AdamParams) -> StepResult;
}

impl<B: Backend> TrainBackend for B {
    fn train_step(&self, d: &TrainData, s: &TrainState, ap: &AdamParams) -> StepResult {
        let total = s.params.len();
        let mut p = self.upload(&s.params).unwrap();
        let n = self.upload(&d.norm).unwrap();
        let x = self.upload(&d.x).unwrap();
        let y = self.upload(&d.y).unwrap();
        let (mut m, mut v) = (self.upload(&s.m).unwrap(), self.upload(&s.v).unwrap());
        let mut grad = poisoned(self, total);
        let mut losses = poisoned(self, d.shape.ensemble);
        self.ensemble_nll_backward(
            &d.shape,
            &d.loss,
            &p,
            &n,
            &x,
            &y,
            d.rows,
            &mut grad,
            &mut losses,
        )
        .unwrap();
        let grad_host = self.download(&grad).unwrap();
        self.adam_step(ap, &mut p, &grad, &mut m, &mut v).unwrap();
        StepResult {
            losses: self.download(&losses).unwrap(),
            grad: grad_host,
            params: self.download(&p).unwrap(),
            m: self.download(&m).unwrap(),
            v: self.download(&v).unwrap(),
        }
    }
}

#[test]
fn f16_weights_should_stay_within_half_precision_of_cpu() {
    let test = "f16_weights_should_stay_within_half_precision_of_cpu";
    let Some(g) = gpu(test) else {
        return;
    };
    if !g.supports_f16() {
        // CI runs on Mesa's lavapipe, which offers SHADER_F16 (Mesa 22.3.6 here reports it), so
        // there its absence means the f16 path went untested: a failure, like a missing adapter.
        assert!(
            !in_ci(),
            "{test}: CI=true expects lavapipe's SHADER_F16, but {} does not offer it",
            g.adapter().describe()
        );
        eprintln!(
            "{test}: skipped — {} does not offer SHADER_F16; the f16 weight path is not testable here",
            g.adapter().describe()
        );
        assert!(WgpuBackend::new().unwrap().with_f16_weights(true).is_err());
        return;
    }
    let h = WgpuBackend::new().unwrap().with_f16_weights(true).unwrap();
    // Rounding a weight to f16 changes it by ≤ 2⁻¹¹ relative (RMS 2⁻¹¹/√3 ≈ 2.8e-4); a
    // K-term dot product of such errors with random signs is off by ~2.8e-4 of its
    // magnitude, and three layers compound to ~5e-4 of outputs that are O(1) (lavapipe:
    // ≤ 1.1e-4). 2e-3 absolute and relative is a 4× margin, while skipping the conversion
    // or accumulating in f16 (error ~√K·2⁻¹¹ ≈ 7e-3 per layer at K = 200) fails it.
    forward_case(&h, shape(200, 2, Activation::Silu, true), 37, 5, 2e-3);
    forward_case(&h, shape(13, 2, Activation::Relu, false), 37, 6, 2e-3);
    let cpu = CpuBackend::new();
    let env = EnvId::Pendulum;
    let shape = model_for(env, 200, false, true);
    let p = rollout_params(env, Propagation::Expectation, 37, 1, 7);
    let params = params_for(&shape, 7);
    let norm = norm_for(shape.in_dim, 7);
    let obs = [0.6f32, 0.8, 0.1];
    let actions = rand_uniform(7, 3, 37 * 7, -2.0, 2.0);
    let want = rollout_on(&cpu, &p, &shape, &params, &norm, &obs, &actions);
    let got = rollout_on(&h, &p, &shape, &params, &norm, &obs, &actions);
    // Each step's state change (|Δs| ≲ 0.5) is off by ~5e-4 of itself, ~2.5e-4; over 7
    // steps the state error random-walks to ~7e-4, and the pendulum cost (slope 2|θ| ≲ 6)
    // turns that into ~4e-3 per step, ~1e-2 summed with random signs over the horizon:
    // 1e-2 absolute plus 1e-3 relative (lavapipe: ≤ 2.2e-4).
    assert_close("rollout with f16 weights", &got, &want, 1e-2, 1e-3);
}

#[test]
fn misuse_should_be_an_error_not_a_panic() {
    common::sac::misuse_is_refused(&CpuBackend::new());
    common::branch::misuse_is_refused(&CpuBackend::new());
    common::value::misuse_is_refused(&CpuBackend::new());
    let Some(g) = gpu("misuse_should_be_an_error_not_a_panic") else {
        return;
    };
    common::sac::misuse_is_refused(g);
    common::branch::misuse_is_refused(g);
    common::value::misuse_is_refused(g);
    let sh = shape(13, 2, Activation::Silu, true);
    let p = g.upload(&params_for(&sh, 1)).unwrap();
    let small = g.upload(&[0.0; 3]).unwrap();
    let (mut a, mut b) = (g.zeros(3).unwrap(), g.zeros(3).unwrap());
    assert!(g
        .ensemble_forward(&sh, &p, &small, &small, 10, &mut a, &mut b)
        .is_err());
    let mut w = g.zeros(4).unwrap();
    assert!(g.write(&mut w, &[1.0; 5]).is_err());
    let mut rp = rollout_params(EnvId::Pendulum, Propagation::Ts1, 4, 1, 3);
    rp.env = 99;
    let mut r = g.zeros(4).unwrap();
    assert!(g.rollout_true(&rp, &small, &small, &mut r).is_err());
    // Buffers still work afterwards.
    g.write(&mut w, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(g.download(&w).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn mpc_steps_should_match_cpu_with_one_submission_each() {
    use mbrl_gpu::plan::Mpc;
    let Some(_) = gpu("mpc_steps_should_match_cpu_with_one_submission_each") else {
        return;
    };
    let c = common::mpc_case();
    let cpu = CpuBackend::new();
    // A device of its own, so that no other test's work lands in its submission count.
    let g = &WgpuBackend::new().unwrap();
    let mut on_cpu =
        Mpc::with_model(&cpu, &c.model, c.env, c.planner.clone(), c.ts, c.seed).unwrap();
    let mut on_gpu = Mpc::with_model(g, &c.model, c.env, c.planner, c.ts, c.seed).unwrap();
    for (i, o) in c.observations.iter().enumerate() {
        let before = g.submissions();
        let a = on_gpu.act(g, o, &[]).unwrap();
        // The observation upload, the warm-start shift and every CEM iteration are recorded
        // together; the download of the plan is the step's only submission.
        assert_eq!(g.submissions() - before, 1, "step {i}");
        let b = on_cpu.act(&cpu, o, &[]).unwrap();
        // As in cem_planning_should_choose_the_cpu_action: same elites, rounding only.
        assert_close(&format!("mpc action, step {i}"), &a, &b, 1e-4, 0.0);
    }
}

/// MBPO's branched rollout with its model step on the device: the transitions it stores
/// match the CPU's (same policy, same model, same Philox draws). Tolerance: the model's
/// outputs agree to ~1e-5 (`ensemble_forward_should_match_cpu`) and a rollout of length 3
/// feeds them back twice, so stored states agree to 1e-3 absolute; the count of stored rows
/// must be equal (no termination decision flips at these states).
#[test]
fn mbpo_branched_rollout_should_match_cpu() {
    use mbrl_gpu::algo::mbpo::{branched_rollout, MbpoConfig};
    use mbrl_gpu::model::Ensemble;
    use mbrl_gpu::policy::{Replay, Sac};
    let Some(g) = gpu("mbpo_branched_rollout_should_match_cpu") else {
        return;
    };
    let mut cfg = MbpoConfig::preset(&EnvId::Pendulum.into(), "quick").unwrap();
    cfg.effective_model_rollouts_per_step = 3;
    cfg.freq_train_model = 37;
    let spec = EnvId::Pendulum.spec();
    let mut model = Ensemble::new(cfg.model.clone(), 4).unwrap();
    let mut data = Replay::new(3, 1, 500);
    for i in 0..300 {
        let th = i as f32 * 0.05;
        let s = [th.cos(), th.sin(), (i as f32 * 0.3).sin()];
        data.push(&s, &[0.1], -1.0, &s, false);
    }
    let inputs: Vec<f32> = (0..300)
        .flat_map(|i| {
            let (o, a, _, _, _) = data.row(i);
            [o, a].concat()
        })
        .collect();
    model.fit_normaliser(&inputs);
    let run = |b: &dyn Fn(&mut Sac, &mut Replay) -> usize| {
        let mut agent = Sac::new(cfg.sac.clone(), 3, &spec.act_low, &spec.act_high, 9).unwrap();
        let mut out = Replay::new(3, 1, 10_000);
        let n = b(&mut agent, &mut out);
        (n, out.to_arrays())
    };
    let cpu = CpuBackend::new();
    let (n_cpu, a_cpu) =
        run(&|agent, out| branched_rollout(&cpu, &cfg, agent, &model, &data, 2, 3, out).unwrap());
    let (n_gpu, a_gpu) =
        run(&|agent, out| branched_rollout(g, &cfg, agent, &model, &data, 2, 3, out).unwrap());
    assert_eq!(n_cpu, n_gpu, "stored transitions");
    assert_eq!(
        n_cpu,
        3 * cfg.rollout_batch(),
        "the pendulum never terminates"
    );
    for (what, (x, y)) in ["obs", "act", "reward", "next_obs"]
        .iter()
        .zip(a_cpu.iter().zip(&a_gpu))
    {
        assert_close(what, y, x, 1e-3, 1e-3);
    }
}

/// `sac::run` with its gradient steps on the device (the `Trainer` path: minibatches drawn
/// from the device mirror, the actor read back before acting, the agent at evaluations)
/// against the same run on the CPU: 400 updates of the quick preset.
#[test]
fn a_sac_run_on_the_device_should_follow_the_cpu_run() {
    let Some(g) = gpu("a_sac_run_on_the_device_should_follow_the_cpu_run") else {
        return;
    };
    use mbrl_gpu::algo::sac::{self, SacRunConfig};
    let env = mbrl_gpu::env::EnvName::parse("pendulum").unwrap();
    let mut cfg = SacRunConfig::preset(&env, "quick").unwrap();
    cfg.steps = 800;
    cfg.eval_episodes = 2;
    let (cpu_agent, want) = sac::run(&CpuBackend::new(), &cfg, None, |_| {}).unwrap();
    let (dev_agent, got) = sac::run(g, &cfg, None, |_| {}).unwrap();
    assert_eq!(got.len(), want.len());
    assert_eq!(dev_agent.updates, cpu_agent.updates);
    for (g, w) in got.iter().zip(&want) {
        eprintln!(
            "{} steps: return {} vs {}, critic loss {} vs {}, α {} vs {}",
            w.env_steps,
            g.eval_return,
            w.eval_return,
            g.critic_loss,
            w.critic_loss,
            g.alpha,
            w.alpha
        );
        assert_eq!(
            (g.env_steps, g.updates, g.diverged),
            (w.env_steps, w.updates, 0)
        );
        // Float rounding drifts apart over 400 updates of Adam (lavapipe: returns equal to
        // 1e-4, losses to 1e-6 relative); a wrong stage or a stale actor moves them by tens of
        // percent.
        let close = |a: f64, b: f64, rel: f64| (a - b).abs() <= rel * b.abs().max(1e-3);
        assert!(close(g.eval_return, w.eval_return, 0.01));
        if w.updates > 0 {
            assert!(close(g.critic_loss, w.critic_loss, 0.01));
            assert!(close(g.alpha, w.alpha, 0.01));
            assert!(close(g.entropy, w.entropy, 0.05));
        }
    }
    let diff = dev_agent
        .actor
        .iter()
        .zip(&cpu_agent.actor)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("actor parameters: largest difference {diff:e}");
    assert!(diff < 1e-2, "{diff}");
}

/// `mbpo::run` with its model and SAC steps on the device (two replay mirrors: real and model
/// data, the model buffer refilled and resized as the rollout length grows from 1 to 3): it
/// takes the CPU run's updates without a rollback and follows its returns and losses.
/// MAAC with `--backend wgpu`: SAC's critic steps and the path gradient's actor steps
/// (`DeviceSac::path_update_from`) on the device, against the CPU specification's run.
#[test]
fn a_maac_run_on_the_device_should_take_its_path_steps_there() {
    let Some(g) = gpu("a_maac_run_on_the_device_should_take_its_path_steps_there") else {
        return;
    };
    use mbrl_gpu::algo::mbpo;
    let mut c = mbpo_fixture::tiny_mbpo(300);
    c.maac = Some(mbpo::MaacSettings { horizon: 2 });
    let (cpu_agent, want) = mbpo::run(&CpuBackend::new(), &c, None, |_| {}).unwrap();
    let (dev_agent, got) = mbpo::run(g, &c, None, |_| {}).unwrap();
    assert_eq!(dev_agent.updates, cpu_agent.updates);
    assert!(dev_agent.is_finite());
    assert!(
        want.last().unwrap().updates > 100,
        "the run must take path steps"
    );
    for (g, w) in got.iter().zip(&want) {
        eprintln!(
            "{} steps: return {} vs {}, actor loss {} vs {}, critic loss {} vs {}, α {} vs {}",
            w.env_steps,
            g.eval_return,
            w.eval_return,
            g.actor_loss,
            w.actor_loss,
            g.critic_loss,
            w.critic_loss,
            g.alpha,
            w.alpha
        );
        assert_eq!(
            (g.env_steps, g.updates, g.diverged),
            (w.env_steps, w.updates, 0)
        );
        let close = |a: f64, b: f64| (a - b).abs() <= 0.01 * b.abs() + 1e-6;
        assert!(close(g.eval_return, w.eval_return));
        assert!(close(g.critic_loss, w.critic_loss));
        assert!(close(g.actor_loss, w.actor_loss));
        assert!(close(g.alpha, w.alpha));
    }
}

/// SVG(∞) with `--backend wgpu`: the model trained on the device and each policy step's
/// path gradient composed of the device stages with the inferred noise (no terminal value,
/// whole 200-step episodes and 20-step windows), against the CPU specification's run.
#[test]
fn an_svg_run_on_the_device_should_take_its_path_gradients_there() {
    let Some(g) = gpu("an_svg_run_on_the_device_should_take_its_path_gradients_there") else {
        return;
    };
    use mbrl_gpu::algo::svg::SvgConfig;
    use mbrl_gpu::env::EnvId;
    for (env, window) in [
        (EnvId::Pendulum, 0),
        (EnvId::Pendulum, 20),
        (EnvId::CartPole, 0),
    ] {
        let mut c = SvgConfig::preset(&env.into(), "quick").unwrap();
        c.steps = 600;
        c.eval_every = 200;
        c.eval_episodes = 2;
        c.model.hidden = 16;
        c.train.epochs = 5;
        c.policy.hidden = 16;
        c.updates_per_episode = 3;
        c.episodes_per_update = 2;
        c.window = window;
        c.entropy_weight = 0.05;
        let (cpu_agent, want) =
            mbrl_gpu::algo::svg::run(&CpuBackend::new(), &c, None, |_| {}).unwrap();
        let (dev_agent, got) = mbrl_gpu::algo::svg::run(g, &c, None, |_| {}).unwrap();
        assert_eq!(got.len(), 3);
        assert!(dev_agent.is_finite());
        let moved = dev_agent
            .actor
            .iter()
            .zip(&cpu_agent.actor)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("window {window}: actors differ by at most {moved}");
        for (g, w) in got.iter().zip(&want) {
            eprintln!(
                "{} steps: return {} vs {}, path loss {} vs {}, entropy {} vs {}, model {} vs {}",
                w.env_steps,
                g.eval_return,
                w.eval_return,
                g.actor_loss,
                w.actor_loss,
                g.entropy,
                w.entropy,
                g.model_loss,
                w.model_loss
            );
            assert_eq!(
                (g.env_steps, g.updates, g.diverged),
                (w.env_steps, w.updates, 0)
            );
            // Models trained on the device and paths through them agree with the CPU's up
            // to rounding; a wrong noise layout, γ or entropy weight moves the path loss by
            // far more than 1 %.
            let close = |a: f64, b: f64| (a - b).abs() <= 0.01 * b.abs() + 1e-6;
            assert!(close(g.eval_return, w.eval_return));
            assert!(close(g.actor_loss, w.actor_loss));
            assert!(close(g.entropy, w.entropy));
        }
        assert!(
            moved < 1e-3,
            "the device run's actor left the CPU run's: {moved}"
        );
    }
}

#[test]
fn an_mbpo_run_on_the_device_should_train_sac_there() {
    let Some(g) = gpu("an_mbpo_run_on_the_device_should_train_sac_there") else {
        return;
    };
    use mbrl_gpu::algo::mbpo;
    let c = mbpo_fixture::tiny_mbpo(400);
    let (cpu_agent, want) = mbpo::run(&CpuBackend::new(), &c, None, |_| {}).unwrap();
    let (dev_agent, got) = mbpo::run(g, &c, None, |_| {}).unwrap();
    assert_eq!(got.len(), want.len());
    assert_eq!(dev_agent.updates, cpu_agent.updates);
    assert!(dev_agent.is_finite());
    for (g, w) in got.iter().zip(&want) {
        eprintln!(
            "{} steps (k = {}): return {} vs {}, critic loss {} vs {}, updates {} vs {}",
            w.env_steps,
            w.rollout_length,
            g.eval_return,
            w.eval_return,
            g.critic_loss,
            w.critic_loss,
            g.updates,
            w.updates
        );
        assert_eq!(
            (g.env_steps, g.updates, g.diverged),
            (w.env_steps, w.updates, 0)
        );
        // The model's training and the rollouts' member draws are the CPU's up to float
        // rounding too (lavapipe: returns and losses equal to 1e-6 relative); a stale actor,
        // a wrong mirror or the wrong buffer moves them by far more than 1 %.
        let close = |a: f64, b: f64| (a - b).abs() <= 0.01 * b.abs();
        assert!(close(g.eval_return, w.eval_return));
        assert!(close(g.critic_loss, w.critic_loss));
    }
}
