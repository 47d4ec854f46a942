//! The iCEM and MPPI device operations against the CPU, shared by `wgpu_parity.rs` and
//! `cuda_pocl.rs`: each case runs one operation on the CPU and on the device under test with
//! the same random inputs of awkward sizes (population 37, horizons 1, 7 and 8, 2 and 3 action
//! dimensions), the device's outputs poisoned with a NaN of a payload no arithmetic produces
//! and the CPU's with a finite sentinel, and returns both results with the tolerance the
//! caller asserts.
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{Backend, EliteParams, MppiParams, SampleParams};
use mbrl_gpu::plan::noise_factors;
use mbrl_gpu::rng::{self, stream};

/// The device poison and the CPU fill; the same values as the test files' own.
pub const POISON: u32 = 0x7fc0_dead;
pub const REF_FILL: f32 = -7.77e30;

/// One comparison: `got` (device) against `want` (CPU) within `atol + rtol·|want|`.
pub struct Compare {
    pub what: String,
    pub got: Vec<f32>,
    pub want: Vec<f32>,
    pub atol: f32,
    pub rtol: f32,
}

fn out<B: Backend>(b: &B, n: usize) -> B::Buf {
    let fill = if b.name() == "cpu" {
        REF_FILL
    } else {
        f32::from_bits(POISON)
    };
    b.upload(&vec![fill; n]).unwrap()
}

fn randn(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| rng::normal(seed, stream::DATA, i, 77) * scale)
        .collect()
}

fn randu(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| lo + rng::uniform(seed, stream::DATA, i, 78) * (hi - lo))
        .collect()
}

const LOWER: [f32; 3] = [-1.0, -2.0, 0.0];
const UPPER: [f32; 3] = [1.0, 0.5, 3.0];

/// iCEM's coloured-noise sampling (`cem_sample` dist 2).
pub fn colored_sample<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    let cpu = CpuBackend::new();
    let mut cases = vec![];
    for (h, a, beta) in [(7u32, 2u32, 2.5f32), (8, 3, 0.0), (1, 2, 2.0), (8, 2, 1.0)] {
        let len = (h * a) as usize;
        let mean: Vec<f32> = (0..len)
            .map(|j| {
                let d = j % a as usize;
                0.5 * (LOWER[d] + UPPER[d]) + 0.2 * rng::normal(3, stream::DATA, j as u32, 5)
            })
            .collect();
        let mut var = randu(4, len, 0.0, 0.5);
        var[0] = 0.0;
        let p = SampleParams {
            seed_lo: 0x1234_5678,
            seed_hi: 9,
            step: 3,
            population: 37,
            len: len as u32,
            act_dim: a,
            dist: 2,
            beta,
        };
        let on = |b: &B| -> Vec<f32> {
            let (m, v) = (b.upload(&mean).unwrap(), b.upload(&var).unwrap());
            let (l, u) = (
                b.upload(&LOWER[..a as usize]).unwrap(),
                b.upload(&UPPER[..a as usize]).unwrap(),
            );
            let mut o = out(b, 37 * len);
            b.cem_sample(&p, &m, &v, &l, &u, &mut o).unwrap();
            b.download(&o).unwrap()
        };
        let want = {
            let (m, v) = (mean.clone(), var.clone());
            let mut o = vec![REF_FILL; 37 * len];
            cpu.cem_sample(
                &p,
                &m,
                &v,
                &LOWER[..a as usize].to_vec(),
                &UPPER[..a as usize].to_vec(),
                &mut o,
            )
            .unwrap();
            o
        };
        // x_t sums ≤ H/2 terms A_f·(a_f cos − b_f sin) with |Δnormal| ≤ 1e-6 relative and
        // |Δcos| ≤ 3e-7 between the polynomial and the device's cos: |Δx| ≲ 5e-6 at these
        // sizes, times σ ≤ 0.71.
        cases.push(Compare {
            what: format!("{label} cem_sample coloured H={h} A={a} β={beta}"),
            got: on(dev),
            want,
            atol: 1e-5,
            rtol: 0.0,
        });
    }
    cases
}

/// iCEM's elite memory: `cem_select` (ranking with ties, NaN and infinities) and `cem_keep`
/// with and without the shift. Copies: exact.
pub fn elite_memory<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    let cpu = CpuBackend::new();
    let (np, h, a) = (37usize, 7usize, 2usize);
    let len = h * a;
    let pop = randn(11, np * len, 1.0);
    let mut ret = randn(12, np, 10.0);
    ret[3] = ret[30];
    ret[4] = f32::NAN;
    ret[5] = f32::INFINITY;
    ret[6] = f32::NEG_INFINITY;
    let mean = randn(13, len, 0.5);
    let mut cases = vec![];
    for k in [1usize, 6, 37] {
        let p = EliteParams {
            population: np as u32,
            len: len as u32,
            act_dim: a as u32,
            num_elites: k as u32,
            dst_row: 0,
            shift: 0,
            _pad: [0; 2],
        };
        let select = |b: &B| -> (Vec<f32>, Vec<f32>) {
            let (pp, rr) = (b.upload(&pop).unwrap(), b.upload(&ret).unwrap());
            let (mut e, mut er) = (out(b, k * len), out(b, k));
            b.cem_select(&p, &pp, &rr, &mut e, &mut er).unwrap();
            (b.download(&e).unwrap(), b.download(&er).unwrap())
        };
        let (we, wr) = {
            let (mut e, mut er) = (vec![REF_FILL; k * len], vec![REF_FILL; k]);
            cpu.cem_select(&p, &pop, &ret, &mut e, &mut er).unwrap();
            (e, er)
        };
        let (ge, gr) = select(dev);
        for (what, got, want) in [("elites", ge, we.clone()), ("elite returns", gr, wr)] {
            cases.push(Compare {
                what: format!("{label} cem_select {what} K={k}"),
                got,
                want,
                atol: 0.0,
                rtol: 0.0,
            });
        }
        for shift in [0u32, 1] {
            let keep = k.min(5);
            let kp = EliteParams {
                num_elites: keep as u32,
                dst_row: 3,
                shift,
                ..p
            };
            let rows = 3 + keep;
            // Rows 0..3 are left alone: both sides start them from the same values.
            let base = randn(14, rows * len, 1.0);
            let mut poison = vec![f32::from_bits(POISON); rows * len];
            let mut fill = vec![REF_FILL; rows * len];
            poison[..3 * len].copy_from_slice(&base[..3 * len]);
            fill[..3 * len].copy_from_slice(&base[..3 * len]);
            cases.push(Compare {
                what: format!("{label} cem_keep K={keep} shift={shift}"),
                got: keep_on(dev, &kp, &we, &mean, &poison),
                want: keep_on(&cpu, &kp, &we, &mean, &fill),
                atol: 0.0,
                rtol: 0.0,
            });
        }
    }
    cases
}

fn keep_on<B: Backend>(
    b: &B,
    p: &EliteParams,
    elites: &[f32],
    mean: &[f32],
    init: &[f32],
) -> Vec<f32> {
    let (e, m) = (b.upload(elites).unwrap(), b.upload(mean).unwrap());
    let mut o = b.upload(init).unwrap();
    b.cem_keep(p, &e, &m, &mut o).unwrap();
    b.download(&o).unwrap()
}

fn mppi_sample_on<B: Backend>(b: &B, p: &MppiParams, mean: &[f32], chol: &[f32]) -> Vec<f32> {
    let (m, c) = (b.upload(mean).unwrap(), b.upload(chol).unwrap());
    let (l, u) = (b.upload(&LOWER).unwrap(), b.upload(&UPPER).unwrap());
    let mut o = out(b, (p.population * p.len) as usize);
    b.mppi_sample(p, &m, &c, &l, &u, &mut o).unwrap();
    b.download(&o).unwrap()
}

fn mppi_update_on<B: Backend>(
    b: &B,
    p: &MppiParams,
    pop: &[f32],
    ret: &[f32],
    prec: &[f32],
    mean: &[f32],
) -> Vec<f32> {
    let (pp, rr, pr) = (
        b.upload(pop).unwrap(),
        b.upload(ret).unwrap(),
        b.upload(prec).unwrap(),
    );
    let mut m = b.upload(mean).unwrap();
    b.mppi_update(p, &pp, &rr, &pr, &mut m).unwrap();
    b.download(&m).unwrap()
}

/// MPPI sampling with a full 3×3 covariance and the update with NaN and infinite returns,
/// and a round with no finite return (the plan must stay as it was, exactly).
pub fn mppi<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    let cpu = CpuBackend::new();
    let (np, h, a) = (37usize, 7usize, 3usize);
    let len = h * a;
    let cov = [0.5, 0.1, 0.0, 0.1, 0.3, -0.05, 0.0, -0.05, 0.8];
    let (chol, prec) = noise_factors(&cov, &LOWER, &UPPER).unwrap();
    let mean: Vec<f32> = randu(21, len, -0.4, 0.4);
    let p = MppiParams {
        seed_lo: 0xABCD,
        seed_hi: 1,
        step: 5,
        population: np as u32,
        len: len as u32,
        act_dim: a as u32,
        lambda: 0.7,
        alpha: 0.2,
    };
    let want_pop = mppi_sample_on(&cpu, &p, &mean, &chol);
    let mut cases = vec![Compare {
        what: format!("{label} mppi_sample"),
        got: mppi_sample_on(dev, &p, &mean, &chol),
        // ε = Σ_{b ≤ a} L z_b with |Δz| ≤ 1e-6 relative, |L| < 1: a few 1e-6.
        want: want_pop.clone(),
        atol: 5e-6,
        rtol: 0.0,
    }];
    let mut ret = randn(22, np, 3.0);
    ret[2] = f32::NAN;
    ret[7] = f32::NEG_INFINITY;
    ret[8] = f32::INFINITY;
    for (what, r) in [
        ("update", ret),
        ("update, no finite return", vec![f32::NAN; np]),
    ] {
        // Weights differ through exp (device exp vs libm, a few ULP) and the costs' summation
        // (FMA contraction): relative 1e-5 of weighted means of O(1) values.
        cases.push(Compare {
            what: format!("{label} mppi_{what}"),
            got: mppi_update_on(dev, &p, &want_pop, &r, &prec, &mean),
            want: mppi_update_on(&cpu, &p, &want_pop, &r, &prec, &mean),
            atol: 1e-5,
            rtol: 1e-5,
        });
    }
    cases
}

/// MPPI and iCEM as controllers: three consecutive MPC steps of `super::mpc_case` (an
/// untrained pendulum ensemble, TS∞ particles) on the device and on the CPU, so that the warm
/// start, iCEM's kept and shifted elites, its decaying population and its best-sequence
/// answer all run through the device operations; the device planner runs under a (distant)
/// deadline, so its per-round wait for the device runs too. Actions agree to rounding: the
/// ensemble's outputs differ by ~1e-5 and no ranking decision flips at these returns.
pub fn mpc_steps<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    use mbrl_gpu::plan::{Mpc, Optimizer, PlannerConfig};
    use std::time::{Duration, Instant};
    let c = super::mpc_case();
    let cpu = CpuBackend::new();
    let mut cases = vec![];
    for opt in [Optimizer::Mppi, Optimizer::Icem] {
        let cfg = PlannerConfig {
            optimizer: opt,
            iterations: 3,
            alpha: if opt == Optimizer::Mppi { 0.0 } else { 0.1 },
            ..c.planner.clone()
        };
        let mut on_cpu = Mpc::with_model(&cpu, &c.model, c.env, cfg.clone(), c.ts, c.seed).unwrap();
        let mut on_dev = Mpc::with_model(dev, &c.model, c.env, cfg, c.ts, c.seed).unwrap();
        for (i, o) in c.observations.iter().enumerate() {
            let deadline = Some(Instant::now() + Duration::from_secs(600));
            let (a, out) = on_dev.act_until(dev, o, &[], deadline).unwrap();
            assert_eq!(out.iterations, 3, "{label} {opt:?} step {i}: {out:?}");
            let b = on_cpu.act(&cpu, o, &[]).unwrap();
            cases.push(Compare {
                what: format!("{label} {opt:?} mpc action, step {i}"),
                got: a,
                want: b,
                atol: 1e-4,
                rtol: 0.0,
            });
        }
    }
    cases
}
