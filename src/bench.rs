//! `mbrl-gpu bench`: throughput figures with the machine's GEMM peak measured in the same run.
//! Timings here are reports, never assertions.
use crate::backend::{Backend, EnsembleShape};
use crate::linalg as gemm;
use crate::model::{Ensemble, ModelConfig, TrainConfig, Transitions};
use crate::rng::{normal, stream};
use crate::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub name: String,
    pub backend: String,
    pub threads: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub reps: usize,
    pub gflops: f64,
    /// The CPU's f32 GEMM peak measured in the same run; for device backends, which have no
    /// measured peak here, 0 (and `fraction_of_peak` 0).
    pub peak_gflops: f64,
    /// gflops / peak_gflops.
    pub fraction_of_peak: f64,
    /// The CPU's f32 FMA issue ceiling measured in the same run (register-only FMA loops on
    /// all threads; 0 where not measured): a second reference that, unlike the GEMM peak,
    /// does not depend on how well the `gemm` crate suits this CPU.
    pub fma_ceiling_gflops: f64,
    /// gflops / fma_ceiling_gflops (0 where not measured).
    pub fraction_of_fma_ceiling: f64,
    pub note: String,
}

/// Median and minimum in milliseconds of `reps` timed calls after one warm-up.
pub fn time_ms(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

/// The machine's f32 GEMM peak on all rayon threads: the best median GFLOP/s of large square
/// products through the same GEMM crate the backend uses.
pub fn gemm_peak(reps: usize) -> f64 {
    let mut best = 0.0f64;
    for n in [1024usize, 1536] {
        let a: Vec<f32> = (0..n * n).map(|i| normal(1, 1, i as u32, 0)).collect();
        let b: Vec<f32> = (0..n * n).map(|i| normal(1, 2, i as u32, 0)).collect();
        let mut c = vec![0.0f32; n * n];
        let (med, _) = time_ms(reps, || gemm::matmul_f32_parallel(&mut c, &a, &b, n, n, n));
        best = best.max(2.0 * (n * n * n) as f64 / (med * 1e-3) / 1e9);
    }
    best
}

fn result(
    name: &str,
    med: f64,
    min: f64,
    reps: usize,
    flop: f64,
    peak: f64,
    note: String,
) -> BenchResult {
    let gflops = flop / (med * 1e-3) / 1e9;
    BenchResult {
        name: name.into(),
        backend: "cpu".into(),
        threads: rayon::current_num_threads(),
        median_ms: med,
        min_ms: min,
        reps,
        gflops,
        peak_gflops: peak,
        fraction_of_peak: if peak > 0.0 { gflops / peak } else { 0.0 },
        fma_ceiling_gflops: 0.0,
        fraction_of_fma_ceiling: 0.0,
        note,
    }
}

/// The f32 FMA issue ceiling on all rayon threads (GFLOP/s, best of `reps`), 0 where this
/// CPU has no FMA loop of [`peak_kernels`].
pub fn fma_ceiling(reps: usize) -> f64 {
    let Some((_, _, flop_per_iter, kernel)) =
        peak_kernels().into_iter().find(|k| k.0 == "fma_f32_peak")
    else {
        return 0.0;
    };
    let (_, min, flop) = run_peak_kernel(reps, flop_per_iter, kernel);
    flop / (min * 1e-3) / 1e9
}

/// Median and minimum ms of one register-only loop on every rayon thread, and its FLOPs:
/// 2²² iterations of 12 independent vector operations per thread, ~20 ms at the rates seen
/// here, long enough to swamp the fork-join cost.
fn run_peak_kernel(reps: usize, flop_per_iter: f64, kernel: fn(u64) -> f32) -> (f64, f64, f64) {
    let (iters, threads) = (1u64 << 22, rayon::current_num_threads());
    let (med, min) = time_ms(reps, || {
        let s: f32 = (0..threads).into_par_iter().map(|_| kernel(iters)).sum();
        std::hint::black_box(s);
    });
    (med, min, flop_per_iter * iters as f64 * threads as f64)
}

/// Random transitions for benchmarks and tests: obs ~ N(0,1), act ~ N(0,1), next_obs a smooth
/// function of both, so a model has something to fit.
pub fn synthetic_transitions(n: usize, obs_dim: usize, act_dim: usize, seed: u64) -> Transitions {
    let mut t = Transitions::new(obs_dim, act_dim);
    let mut k = 0u32;
    let mut draw = || {
        k += 1;
        normal(seed, stream::DATA, k, 0)
    };
    for _ in 0..n {
        let o: Vec<f32> = (0..obs_dim).map(|_| draw()).collect();
        let a: Vec<f32> = (0..act_dim).map(|_| draw()).collect();
        let nx: Vec<f32> = (0..obs_dim)
            .map(|j| o[j] + 0.1 * (o[(j + 1) % obs_dim]).sin() + 0.05 * a[j % act_dim])
            .collect();
        t.push(&o, &a, &nx, None);
    }
    t
}

/// The ensemble `bench model` times a forward of (1000 rows per member): E = 7, input 24,
/// 4×200 SiLU, head 36.
pub fn forward_bench_shape() -> EnsembleShape {
    EnsembleShape {
        ensemble: 7,
        in_dim: 24,
        out_dim: 18,
        hidden: 200,
        num_layers: 4,
        activation: crate::backend::Activation::Silu,
        probabilistic: true,
    }
}

/// `bench model`: ensemble forward at half-cheetah sizes and one training epoch at cart-pole
/// sizes, each next to the CPU's GEMM peak (measured only when the backend is the CPU).
/// On a device backend the forward is timed with the download of its output, which is what
/// makes queued work complete.
pub fn model_benches<B: Backend>(be: &B, reps: usize) -> Result<Vec<BenchResult>> {
    let on_cpu = be.name() == "cpu";
    let mut peaks = vec![];
    if on_cpu {
        peaks.push(gemm_peak(reps));
    }
    // Shares of the peak are filled in by `finish_with_peak`.
    let peak = 0.0;
    let mut out = vec![];

    let shape = forward_bench_shape();
    let rows = 1000;
    let params = be.upload(&crate::backend::cpu::ensemble::init_params(&shape, 0))?;
    let norm = be.upload(&[vec![0.0; 24], vec![1.0; 24]].concat())?;
    let x: Vec<f32> = (0..7 * rows * 24)
        .map(|i| normal(3, 1, i as u32, 0))
        .collect();
    let x = be.upload(&x)?;
    let mut mean = be.zeros(7 * rows * 18)?;
    let mut lv = be.zeros(7 * rows * 18)?;
    let (med, min) = time_ms(reps * 4, || {
        be.ensemble_forward(&shape, &params, &norm, &x, rows, &mut mean, &mut lv)
            .expect("forward");
        if !on_cpu {
            be.download(&lv).expect("download");
        }
    });
    let flop = 2.0 * (7 * rows * shape.macs_per_row()) as f64;
    out.push(result(
        "ensemble_forward_e7_r1000_24x200x4_36",
        med,
        min,
        reps * 4,
        flop,
        peak,
        "2·m·n·k per matmul".into(),
    ));

    // Training epoch: 2000 cart-pole transitions (in 5, out 4), E=7, 4×200, batch 256.
    // Per epoch = (time of 6 epochs − time of 1) / 5, which cancels set-up and the final
    // elite evaluation.
    let data = synthetic_transitions(2000, 4, 1, 11);
    let mut cfg_model = ModelConfig::pets(4, 1);
    cfg_model.num_elites = 5;
    let shape_cp = cfg_model.shape();
    // Forward 2·macs, backward 2·macs for dW plus 2·(macs − first layer) for dX.
    let macs = shape_cp.macs_per_row() as f64;
    let first = (shape_cp.in_dim * shape_cp.hidden) as f64;
    let flop = 2000.0 * 7.0 * 2.0 * (3.0 * macs - first);
    // f32 (the specification) and, on the CPU, bf16 training products.
    let precisions: &[(crate::backend::Precision, &str)] = if on_cpu {
        &[
            (crate::backend::Precision::F32, ""),
            (crate::backend::Precision::Bf16, "_bf16"),
        ]
    } else {
        &[(crate::backend::Precision::F32, "")]
    };
    for &(precision, suffix) in precisions {
        let run = |epochs: usize| -> f64 {
            let mut m = Ensemble::new(cfg_model.clone(), 0).expect("model");
            let cfg = TrainConfig {
                epochs,
                precision,
                ..TrainConfig::default()
            };
            let s = Instant::now();
            crate::model::train::train(be, &mut m, &data, &cfg, |_| {}).expect("train");
            s.elapsed().as_secs_f64() * 1e3
        };
        let mut per_epoch: Vec<f64> = (0..reps.max(3))
            .map(|_| {
                let t1 = run(1);
                let t6 = run(6);
                (t6 - t1) / 5.0
            })
            .collect();
        per_epoch.sort_by(f64::total_cmp);
        let med = per_epoch[per_epoch.len() / 2];
        out.push(result(
            &format!("train_epoch_n2000_e7_5x200x4_8_b256{suffix}"),
            med,
            per_epoch[0],
            per_epoch.len(),
            flop,
            peak,
            format!(
                "one epoch of bootstrap minibatch Adam; forward + backward FLOPs{}",
                if suffix.is_empty() {
                    ""
                } else {
                    "; bf16 products, f32 sums"
                }
            ),
        ));
    }
    for r in out.iter_mut() {
        r.backend = be.name().into();
    }
    if on_cpu {
        peaks.push(gemm_peak(reps));
    }
    Ok(finish_with_peak(out, &peaks))
}

/// One planning configuration to measure.
struct PlanCase {
    name: &'static str,
    model: Ensemble,
    task: u32,
    lower: Vec<f32>,
    upper: Vec<f32>,
    cfg: crate::plan::PlannerConfig,
    ts: crate::plan::TsConfig,
    obs: Vec<f32>,
}

/// The small real-time model of `bench plan` (and `examples/plan_profile.rs`): the pendulum's
/// sizes, 5 members of 3×64, all of them elites.
pub fn small_model_config() -> ModelConfig {
    let pd = crate::env::EnvId::Pendulum.spec();
    let mut small = ModelConfig::pets(pd.obs_dim, pd.act_dim);
    small.ensemble_size = 5;
    small.num_elites = 5;
    small.num_layers = 3;
    small.hidden = 64;
    small
}

/// The planning configurations `bench plan` measures: mbrl-lib's cart-pole PETS step,
/// half-cheetah sizes, and a small real-time model (5 members 3×64, population 1000, horizon
/// 30, 3 CEM iterations, expectation over the members).
fn plan_cases() -> Result<Vec<PlanCase>> {
    use crate::backend::Propagation;
    use crate::env::{task, EnvId};
    use crate::plan::{PlannerConfig, TsConfig};
    let ts1 = TsConfig {
        particles: 20,
        propagation: Propagation::Ts1,
    };
    let cp = EnvId::CartPole.spec();
    let mut hc = ModelConfig::pets(task::HALF_CHEETAH_OBS, task::HALF_CHEETAH_ACT);
    hc.num_elites = 5;
    let pd = EnvId::Pendulum.spec();
    let small = small_model_config();
    Ok(vec![
        PlanCase {
            name: "plan_step_cartpole_mbrl_lib",
            model: Ensemble::new(ModelConfig::pets(4, 1), 0)?,
            task: EnvId::CartPole.code(),
            lower: cp.act_low.clone(),
            upper: cp.act_high.clone(),
            cfg: PlannerConfig::pets_cartpole(),
            ts: ts1,
            obs: vec![0.01, -0.02, 0.03, 0.0],
        },
        PlanCase {
            name: "plan_step_half_cheetah_sizes",
            model: Ensemble::new(hc, 0)?,
            task: task::HALF_CHEETAH,
            lower: vec![-1.0; task::HALF_CHEETAH_ACT],
            upper: vec![1.0; task::HALF_CHEETAH_ACT],
            cfg: PlannerConfig {
                horizon: 30,
                population: 400,
                num_elites: 64,
                ..PlannerConfig::pets_cartpole()
            },
            ts: ts1,
            obs: (0..task::HALF_CHEETAH_OBS as u32)
                .map(|i| 0.1 * normal(5, 1, i, 0))
                .collect(),
        },
        PlanCase {
            name: "plan_step_small_5x3x64_pop1000",
            model: Ensemble::new(small, 0)?,
            task: EnvId::Pendulum.code(),
            lower: pd.act_low.clone(),
            upper: pd.act_high.clone(),
            cfg: PlannerConfig {
                horizon: 30,
                population: 1000,
                num_elites: 100,
                iterations: 3,
                ..PlannerConfig::pets_cartpole()
            },
            ts: TsConfig {
                particles: 1,
                propagation: Propagation::Expectation,
            },
            obs: vec![0.9, 0.43, -0.2],
        },
    ])
}

fn plan_row<B: Backend>(be: &B, c: &PlanCase, reps: usize, peak: f64) -> Result<BenchResult> {
    use crate::plan::Mpc;
    let precision = be.planning_precision();
    let cfg = crate::plan::PlannerConfig {
        precision,
        ..c.cfg.clone()
    };
    let mut mpc = Mpc::with_model_task(be, &c.model, c.task, &c.lower, &c.upper, cfg, c.ts, 0)?;
    let mut failed = None;
    let (med, min) = time_ms(reps, || {
        if let Err(e) = mpc.act(be, &c.obs, &[]) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let flop = 2.0 * mpc.rows_per_action() as f64 * c.model.shape().macs_per_row() as f64;
    let rows_per_s = mpc.rows_per_action() as f64 / (med * 1e-3);
    let arith = match precision {
        crate::backend::Precision::F32 => "f32",
        crate::backend::Precision::Bf16 if be.name() == "cpu" => crate::bf16::describe(),
        crate::backend::Precision::Bf16 => "bf16 weights",
    };
    let suffix = if precision == crate::backend::Precision::Bf16 {
        "_bf16"
    } else {
        ""
    };
    let mut r = result(
        &format!("{}{suffix}", c.name),
        med,
        min,
        reps,
        flop,
        peak,
        format!(
            "ms per action ({arith}); {:.3e} model rows/s; {:.1} GFLOP per action",
            rows_per_s,
            flop / 1e9
        ),
    );
    r.backend = be.name().into();
    Ok(r)
}

/// `bench plan`: one MPC planning step (CEM × trajectory sampling through an untrained
/// ensemble) for each of [`plan_cases`], and on the CPU also with bf16 products; the GEMM
/// peak is measured before and after (the best of both is the reference). `only`: just the
/// cases whose names contain it.
pub fn plan_benches<B: Backend>(
    be: &B,
    reps: usize,
    only: Option<&str>,
) -> Result<Vec<BenchResult>> {
    let on_cpu = be.name() == "cpu";
    let mut peaks = vec![];
    if on_cpu {
        peaks.push(gemm_peak(reps));
    }
    let mut rows = vec![];
    let bf16 = crate::backend::cpu::CpuBackend::with_bf16_planning();
    for c in plan_cases()?
        .into_iter()
        .filter(|c| only.is_none_or(|o| c.name.contains(o)))
    {
        rows.push((plan_row(be, &c, reps, 0.0)?, c.model.shape()));
        if on_cpu {
            rows.push((plan_row(&bf16, &c, reps, 0.0)?, c.model.shape()));
        }
    }
    if on_cpu {
        peaks.push(gemm_peak(reps));
    }
    Ok(finish_with_peak(
        rows.into_iter().map(|(r, _)| r).collect(),
        &peaks,
    ))
}

/// Set every row's share of the peak to the best of `peaks` (the GEMM peak measured before
/// and after the work, so a machine that got busier in between shows as a spread, not as a
/// changed share), and append the peak row with its spread.
fn finish_with_peak(mut rows: Vec<BenchResult>, peaks: &[f64]) -> Vec<BenchResult> {
    if peaks.is_empty() {
        return rows;
    }
    let best = peaks.iter().cloned().fold(0.0, f64::max);
    let worst = peaks.iter().cloned().fold(f64::INFINITY, f64::min);
    // The CPU's peak measures the CPU's rows only: a device row's share of it would mean
    // nothing.
    let fma = fma_ceiling(3);
    for r in rows.iter_mut().filter(|r| r.backend == "cpu") {
        r.peak_gflops = best;
        r.fraction_of_peak = r.gflops / best;
        if fma > 0.0 {
            r.fma_ceiling_gflops = fma;
            r.fraction_of_fma_ceiling = r.gflops / fma;
        }
    }
    let mut p = result(
        "gemm_peak_square",
        0.0,
        0.0,
        peaks.len(),
        0.0,
        best,
        format!(
            "f32 GEMM 1024³/1536³ on all threads, best of {} measurements before and after \
             the work: {:.1}–{:.1} GFLOP/s (spread {:.1} %); f32 FMA issue ceiling {:.1} \
             GFLOP/s",
            peaks.len(),
            worst,
            best,
            100.0 * (best - worst) / best,
            fma
        ),
    );
    p.gflops = best;
    p.fraction_of_peak = 1.0;
    if fma > 0.0 {
        p.fma_ceiling_gflops = fma;
        p.fraction_of_fma_ceiling = best / fma;
    }
    rows.push(p);
    rows
}

/// `bench policy`: SAC gradient steps (batch 256, 2×256 networks) at Pendulum-v1 and
/// HalfCheetah sizes, and MBPO env steps at mbrl-lib's `mbpo_cartpole` values, next to the
/// CPU's GEMM peak. The `sac_update` rows time the CPU specification, and on a device backend
/// also its device step; MBPO's model training, rollouts and (on a device) SAC steps run on
/// `be`.
/// With `only`, just the groups whose row names contain it.
pub fn policy_benches<B: Backend>(
    be: &B,
    reps: usize,
    only: Option<&str>,
) -> Result<Vec<BenchResult>> {
    let want = |group: &str| only.is_none_or(|o| group.contains(o) || o.contains(group));
    use crate::algo::mbpo::{self, MbpoConfig};
    use crate::env::EnvId;
    use crate::policy::{Replay, Sac, SacConfig};
    let mut peaks = vec![gemm_peak(reps)];
    let mut rows = vec![];
    use crate::backend::Precision;
    let cases = [("pendulum", 3usize, 1usize), ("halfcheetah", 17, 6)];
    for ((name, obs, act), precision) in cases
        .into_iter()
        .flat_map(|c| [(c, Precision::F32), (c, Precision::Bf16)])
        .filter(|_| want("sac_update"))
    {
        let cfg = SacConfig {
            precision,
            ..SacConfig::default()
        };
        let suffix = if precision == Precision::Bf16 {
            "_bf16"
        } else {
            ""
        };
        let (lo, hi) = (vec![-1.0f32; act], vec![1.0f32; act]);
        let mut agent = Sac::new(cfg.clone(), obs, &lo, &hi, 0)?;
        let mut replay = Replay::new(obs, act, 10_000);
        let t = synthetic_transitions(10_000, obs, act, 3);
        for i in 0..t.len() {
            let r = t.obs[i * obs] * 0.1;
            replay.push(
                &t.obs[i * obs..][..obs],
                &t.act[i * act..][..act]
                    .iter()
                    .map(|a| a.tanh())
                    .collect::<Vec<_>>(),
                r,
                &t.next_obs[i * obs..][..obs],
                false,
            );
        }
        let batch = replay.sample(0, stream::REPLAY, 0, cfg.batch_size);
        let flop = 2.0 * agent.nets.macs_per_update(cfg.batch_size) as f64;
        if be.name() != "cpu" && precision == Precision::F32 {
            // The device step as `sac`/`mbpo` run it (`DeviceSac::update_from`): minibatch
            // and noise drawn on the device from a mirror of the replay buffer, every stage
            // launched; timed to completion by reading the statistics back after 20.
            use crate::policy::device::{DeviceReplay, DeviceSac};
            let mut dev = DeviceSac::new(be, &agent)?;
            let mut ring = DeviceReplay::empty(be)?;
            ring.sync(be, &replay)?;
            let n = 20;
            let bs = cfg.batch_size;
            dev.update_from(&ring, 0, stream::REPLAY, 0, bs)?;
            dev.wait()?;
            let (med, min) = time_ms(reps, || {
                for k in 0..n {
                    dev.update_from(&ring, 0, stream::REPLAY, k, bs)
                        .expect("finite synthetic batch");
                }
                dev.wait().expect("device reachable");
            });
            let (med, min) = (med / n as f64, min / n as f64);
            let mut row = result(
                &format!("sac_update_{name}_b256_2x256_{}", be.name()),
                med,
                min,
                reps,
                flop,
                0.0,
                format!(
                    "one SAC gradient step on {} (minibatch and noise drawn there, 20 \
                     operations launched, nothing transferred): {:.0} steps/s; {:.2} GFLOP \
                     per step",
                    be.name(),
                    1e3 / med,
                    flop / 1e9
                ),
            );
            row.backend = be.name().into();
            rows.push(row);
        }
        let n = 10;
        let (med, min) = time_ms(reps, || {
            for _ in 0..n {
                agent.update(&batch).expect("finite synthetic batch");
            }
        });
        let (med, min) = (med / n as f64, min / n as f64);
        rows.push(result(
            &format!("sac_update_{name}_b256_2x256{suffix}"),
            med,
            min,
            reps,
            flop,
            0.0,
            format!(
                "one SAC gradient step (critics, actor, α, Polyak) at obs {obs}, act {act}: \
                 {:.0} steps/s; {:.2} GFLOP per step (forward and backward of every network; \
                 the actor's gradient through the smaller critic's input only){}",
                1e3 / med,
                flop / 1e9,
                if precision == Precision::Bf16 {
                    format!(
                        "; hidden-layer products in bf16 ({})",
                        crate::bf16::describe()
                    )
                } else {
                    String::new()
                }
            ),
        ));
    }
    // MAAC: one path-gradient evaluation (forward H model steps, backward through all of
    // it) for 256 Pendulum-v1 start states, SAC's 2×256 networks and the PETS ensemble's 5
    // elites (4×200 SiLU, learned reward), as MAAC's preset runs it.
    for h in [1usize, 3, 5].into_iter().filter(|_| want("maac_path")) {
        use crate::model::{Ensemble, ModelConfig};
        use crate::policy::path::{path_loss, ModelPath, PathNoise, PathSettings, PathWorkspace};
        let cfg = SacConfig::default();
        let (o, a, b) = (3usize, 1usize, cfg.batch_size);
        let agent = Sac::new(cfg.clone(), o, &[-2.0], &[2.0], 0)?;
        let mut mc = ModelConfig::pets(o, a);
        mc.learn_reward = true;
        let model = Ensemble::new(mc, 0)?;
        let (shape, params) = crate::algo::mbpo::elite_view(&model);
        let t = synthetic_transitions(b, o, a, 5);
        let noise = PathNoise::draw(0, 0, h, b, a, shape.out_dim, shape.ensemble);
        let mut ws = PathWorkspace::default();
        let mut grad = vec![0.0f32; agent.actor.len()];
        let set = PathSettings::plain(cfg.gamma, 0.2, EnvId::Pendulum.code(), true);
        let n = 5;
        let (med, min) = time_ms(reps, || {
            for _ in 0..n {
                let mut dynamics = ModelPath::new(
                    shape,
                    &params,
                    &model.input_mean,
                    &model.input_std,
                    o,
                    true,
                    &noise.member,
                    &noise.xi,
                );
                path_loss(
                    &agent.nets,
                    &agent.actor,
                    &agent.critic,
                    &agent.squash,
                    &mut dynamics,
                    set,
                    &t.obs,
                    &noise,
                    Some(&mut grad),
                    &mut ws,
                );
            }
        });
        let (med, min) = (med / n as f64, min / n as f64);
        // Actor: forward + both backward products per step; model member and critics:
        // forward + the input-gradient product (their parameters are not trained here).
        let macs = (h + 1) * 3 * agent.nets.actor.macs_per_row()
            + h * 2 * shape.macs_per_row()
            + 2 * 2 * agent.nets.critic.macs_per_row();
        let flop = 2.0 * (b * macs) as f64;
        rows.push(result(
            &format!("maac_path_pendulum_b256_h{h}"),
            med,
            min,
            reps,
            flop,
            0.0,
            format!(
                "one MAAC path gradient: {b} start states, H = {h} steps through the 5 elites \
                 of the 7×4×200 ensemble, 2×256 actor and critics: {:.0} evaluations/s, {:.2} \
                 GFLOP each",
                1e3 / med,
                flop / 1e9
            ),
        ));
        if be.name() != "cpu" {
            // The same evaluation on the device (`DevicePath`: 9H + 8 launches, the noise
            // drawn and uploaded per evaluation as MAAC's updates do), timed to completion
            // by reading the 4-value report back after `n`.
            use crate::backend::PathShape;
            use crate::policy::device::BranchModel;
            use crate::policy::device_path::{DevicePath, PathNets, PathSpec};
            let unit = |n: usize| {
                let mut v = vec![0.0f32; n];
                v.extend(std::iter::repeat_n(1.0f32, n));
                v
            };
            let actor = be.upload(&agent.actor)?;
            let critic = be.upload(&agent.critic)?;
            let (norm_obs, norm_critic) = (be.upload(&unit(o))?, be.upload(&unit(o + a))?);
            let elites = be.upload(&params)?;
            let norm = be.upload(&model.norm())?;
            let log_alpha = be.upload(&[0.2f32.ln()])?;
            let nets = PathNets {
                nets: &agent.nets,
                actor: &actor,
                critic: &critic,
                norm_obs: &norm_obs,
                norm_critic: &norm_critic,
                model: BranchModel {
                    shape,
                    params: &elites,
                    norm: &norm,
                },
                log_alpha: &log_alpha,
            };
            let ps = PathShape {
                rows: b,
                obs_dim: o,
                act_dim: a,
                out_dim: shape.out_dim,
                members: shape.ensemble,
                horizon: h,
            };
            let mut path = DevicePath::new(be, ps, agent.actor.len(), &agent.squash)?;
            path.set_noise(be, &noise)?;
            let start = be.upload(&t.obs[..b * o])?;
            let mut g = be.zeros(agent.actor.len())?;
            let mut stats = be.zeros(crate::backend::sac_stats::LEN)?;
            let spec = PathSpec {
                gamma: cfg.gamma,
                task: EnvId::Pendulum.code(),
                learn_reward: true,
                terminal_value: true,
                target_entropy: -1.0,
                ..PathSpec::default()
            };
            path.run(be, &nets, spec, &start, &mut g, &mut stats)?;
            be.download(&path.report)?;
            let (med, min) = time_ms(reps, || {
                for k in 0..n {
                    let nz = PathNoise::draw(0, k, h, b, a, shape.out_dim, shape.ensemble);
                    path.set_noise(be, &nz).expect("sized above");
                    path.run(be, &nets, spec, &start, &mut g, &mut stats)
                        .expect("sized above");
                }
                be.download(&path.report).expect("device reachable");
            });
            let (med, min) = (med / n as f64, min / n as f64);
            let mut row = result(
                &format!("maac_path_pendulum_b256_h{h}_{}", be.name()),
                med,
                min,
                reps,
                flop,
                0.0,
                format!(
                    "the same path gradient on {} ({} launches; its noise drawn on the host \
                     and uploaded, as each MAAC update does): {:.0} evaluations/s",
                    be.name(),
                    9 * h + 8,
                    1e3 / med
                ),
            );
            row.backend = be.name().into();
            rows.push(row);
        }
    }
    // MBPO: the second epoch (200 env steps: one model training with patience 5, 80,000
    // branched rollouts, 4,000 SAC steps) at the mbpo_cartpole values. The first epoch is
    // not representative: its model is trained, and its SAC steps begin, only at its last
    // step (`freq_train_model` = `epoch_length`).
    for precision in [Precision::F32, Precision::Bf16]
        .into_iter()
        .filter(|_| want("mbpo_env_step"))
    {
        let mut cfg = MbpoConfig::preset(&EnvId::CartPole.into(), "cartpole")?;
        cfg.sac.precision = precision;
        cfg.steps = cfg.initial_exploration_steps + 2 * cfg.epoch_length;
        cfg.eval_episodes = 1;
        let mbpo_reps = if reps >= 5 { 3 } else { 1 };
        let mut times = vec![];
        for _ in 0..mbpo_reps {
            let (_, rows) = mbpo::run(be, &cfg, None, |_| {})?;
            times.push(rows.last().map_or(f64::NAN, |r| r.seconds * 1e3));
        }
        times.sort_by(f64::total_cmp);
        let (med, min) = (times[times.len() / 2], times[0]);
        let per_step = med / cfg.epoch_length as f64;
        let nets = crate::policy::sac::Nets::new(4, 1, &cfg.sac);
        let member_macs = cfg.model.shape().macs_per_row() as f64;
        let sac_flop = 2.0
            * (cfg.num_sac_updates_per_step * cfg.epoch_length) as f64
            * nets.macs_per_update(cfg.sac.batch_size) as f64;
        let rollout_flop = 2.0
            * cfg.rollout_batch() as f64
            * (nets.actor.macs_per_row() as f64
                + member_macs * cfg.model.ensemble_size as f64 / cfg.model.num_elites as f64);
        let mut row = result(
            &format!(
                "mbpo_env_step_cartpole{}",
                if precision == Precision::Bf16 {
                    "_bf16"
                } else {
                    ""
                }
            ),
            per_step,
            min / cfg.epoch_length as f64,
            mbpo_reps,
            (sac_flop + rollout_flop) / cfg.epoch_length as f64,
            0.0,
            format!(
                "mbpo_cartpole values: the second epoch ({} env steps, one evaluation episode), \
             {:.1} env steps/s; FLOPs count its {} SAC steps and {} rollouts, not the model \
             training (which the time includes)",
                cfg.epoch_length,
                1e3 / per_step,
                cfg.num_sac_updates_per_step * cfg.epoch_length,
                cfg.rollout_batch()
            ),
        );
        row.backend = be.name().into();
        rows.push(row);
    }
    peaks.push(gemm_peak(reps));
    Ok(finish_with_peak(rows, &peaks))
}

/// Gymnasium's own vector environment, timed by the bridge's interpreter in the same run:
/// prints `{"n": N, "median_ms": …, "min_ms": …}` per copy count, one batched step timed.
const GYM_VECTOR_BENCH: &str = r#"
import json, sys, time
import numpy as np
import gymnasium as gym
env_id, reps, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for n in map(int, sys.argv[4:]):
    v = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(n)])
    v.reset(seed=0)
    rng = np.random.default_rng(0)
    low, high = v.single_action_space.low, v.single_action_space.high
    acts = rng.uniform(low, high, (steps, n) + low.shape).astype(v.single_action_space.dtype)
    times = []
    for r in range(reps + 1):
        t0 = time.perf_counter()
        for t in range(steps):
            v.step(acts[t])
        if r:
            times.append((time.perf_counter() - t0) * 1e3 / steps)
    v.close()
    times.sort()
    print(json.dumps({"n": n, "median_ms": times[len(times) // 2], "min_ms": times[0]}))
"#;

/// Copy counts of the environment benchmarks.
pub const ENV_COPIES: [usize; 3] = [1, 8, 64];

/// Environment steps per second, natively and through the Gymnasium bridge, next to
/// Gymnasium's own `SyncVectorEnv` run by the same interpreter: one row per (way, copies),
/// each a median over `reps` timings of 100 batched steps. `env` is a native environment
/// with a Gymnasium counterpart; `python` None skips the two Python rows (with a note row).
pub fn env_benches(
    env: &crate::env::EnvName,
    reps: usize,
    python: Option<&crate::env::gym::GymOptions>,
) -> Result<Vec<BenchResult>> {
    use crate::env::gym::{GymEnv, GymId};
    use crate::env::{Env, EnvId, EnvName};
    let gym_id = match env {
        EnvName::Native(EnvId::Pendulum) => "Pendulum-v1",
        EnvName::Native(EnvId::MountainCar) => "MountainCarContinuous-v0",
        EnvName::Mujoco(t) => t.info().gym_id,
        _ => {
            return Err(crate::invalid!(
                "{env}: give a native environment with a Gymnasium registration to compare \
                 with (pendulum, mountain-car, or a MuJoCo task)"
            ))
        }
    };
    const STEPS: usize = 100;
    let spec = env.spec()?;
    let row = |name: String, med: f64, min: f64, n: usize| {
        let mut r = result(&name, med, min, reps, 0.0, 0.0, String::new());
        r.threads = 1;
        r.note = format!("{:.0} env steps/s", n as f64 / (med * 1e-3));
        r
    };
    let actions = |n: usize| -> Vec<Vec<f32>> {
        (0..STEPS)
            .map(|t| {
                (0..n * spec.act_dim)
                    .map(|i| {
                        let j = i % spec.act_dim;
                        let u = crate::rng::uniform(5, 1, i as u32, t as u32);
                        spec.act_low[j] + (spec.act_high[j] - spec.act_low[j]) * u
                    })
                    .collect()
            })
            .collect()
    };
    let mut rows = vec![];
    let time_env = |e: &mut dyn Env, n: usize| -> Result<(f64, f64)> {
        let acts = actions(n);
        let seeds: Vec<u64> = (0..n as u64).collect();
        let mut failed = None;
        let (med, min) = time_ms(reps, || {
            if let Err(err) = e.reset(&seeds) {
                failed.get_or_insert(err);
                return;
            }
            for a in &acts {
                if let Err(err) = e.step(a) {
                    failed.get_or_insert(err);
                    return;
                }
            }
        });
        match failed {
            Some(err) => Err(err.into()),
            None => Ok((med / STEPS as f64, min / STEPS as f64)),
        }
    };
    for n in ENV_COPIES {
        let mut e = env.open(n)?;
        let (med, min) = time_env(&mut *e, n)?;
        rows.push(row(
            format!("env_step_{}_native_n{n}", env.name()),
            med,
            min,
            n,
        ));
    }
    let Some(opts) = python else {
        let mut r = row(
            format!("env_step_{}_bridge_skipped", env.name()),
            0.0,
            0.0,
            0,
        );
        r.note = "no Python with Gymnasium: bridge and Gymnasium rows skipped".into();
        rows.push(r);
        return Ok(rows);
    };
    let id = GymId {
        module: None,
        id: gym_id.into(),
    };
    for n in ENV_COPIES {
        let mut e = GymEnv::open(&id, n, opts)?;
        let (med, min) = time_env(&mut e, n)?;
        rows.push(row(
            format!("env_step_{}_bridge_n{n}", env.name()),
            med,
            min,
            n,
        ));
    }
    let mut cmd = std::process::Command::new(&opts.python);
    cmd.args(["-c", GYM_VECTOR_BENCH, gym_id, &reps.max(1).to_string()])
        .arg(STEPS.to_string())
        .args(ENV_COPIES.map(|n| n.to_string()))
        .envs(opts.vars.iter().map(|(k, v)| (k, v)));
    let out = cmd
        .output()
        .map_err(|e| crate::invalid!("running Gymnasium's vector benchmark: {e}"))?;
    if !out.status.success() {
        return Err(crate::invalid!(
            "Gymnasium's vector benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| crate::invalid!("Gymnasium's vector benchmark printed {line:?}: {e}"))?;
        let n = v["n"].as_u64().unwrap_or(0) as usize;
        let med = v["median_ms"].as_f64().unwrap_or(f64::NAN);
        let min = v["min_ms"].as_f64().unwrap_or(f64::NAN);
        let mut r = row(
            format!("env_step_{}_gymnasium_sync_vector_n{n}", env.name()),
            med,
            min,
            n,
        );
        r.backend = "python".into();
        rows.push(r);
    }
    Ok(rows)
}

/// Planner overhead without matrix arithmetic: one action of true-dynamics Pendulum-v1
/// planning at pytorch_mppi's benchmark size (K = 1000 candidates, horizon T = 30, one
/// iteration), and the three parts of an MPPI action timed alone (sampling, the 30 000
/// environment steps, the weighted update). `only`: one optimizer's rows.
pub fn true_plan_benches<B: Backend>(
    be: &B,
    reps: usize,
    only: Option<crate::plan::Optimizer>,
) -> Result<Vec<BenchResult>> {
    use crate::backend::{MppiParams, Propagation, RolloutParams, MAX_ELITES};
    use crate::env::EnvId;
    use crate::plan::{Mpc, Optimizer, PlannerConfig};
    let (k, t) = (1000usize, 30usize);
    let env = EnvId::Pendulum;
    let state = [2.5f32, 0.3];
    let obs = {
        let mut o = [0.0f32; 3];
        env.observe(&state, &mut o);
        o
    };
    let mut rows = vec![];
    for opt in [Optimizer::Mppi, Optimizer::Icem, Optimizer::Cem] {
        if only.is_some_and(|o| o != opt) {
            continue;
        }
        let cfg = PlannerConfig {
            optimizer: opt,
            horizon: t,
            population: k,
            num_elites: k / 10,
            iterations: 1,
            alpha: if opt == Optimizer::Mppi { 0.0 } else { 0.1 },
            noise_covariance: if opt == Optimizer::Mppi {
                vec![1.0]
            } else {
                vec![]
            },
            ..PlannerConfig::pets_cartpole()
        };
        let mut mpc = Mpc::with_true_dynamics(be, env, cfg, 0)?;
        let mut failed = None;
        let (med, min) = time_ms(reps, || {
            if let Err(e) = mpc.act(be, &obs, &state) {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let name = format!(
            "{}_pendulum_true_k{k}_t{t}",
            format!("{opt:?}").to_lowercase()
        );
        let mut r = result(
            &name,
            med,
            min,
            reps,
            0.0,
            0.0,
            "one action, 1 iteration".into(),
        );
        r.backend = be.name().into();
        rows.push(r);
    }
    if only.is_none_or(|o| o == Optimizer::Mppi) {
        let len = t;
        let p = MppiParams {
            seed_lo: 1,
            seed_hi: 0,
            step: 1,
            population: k as u32,
            len: len as u32,
            act_dim: 1,
            lambda: 1.0,
            alpha: 0.0,
        };
        let mean = be.zeros(len)?;
        let mut mean_out = be.zeros(len)?;
        let one = be.upload(&[1.0])?;
        let (lo, hi) = (be.upload(&[-2.0])?, be.upload(&[2.0])?);
        let mut pop = be.zeros(k * len)?;
        let mut ret = be.zeros(k)?;
        let start = be.upload(&state)?;
        let rp = RolloutParams {
            seed_lo: 0,
            seed_hi: 0,
            step: 0,
            population: k as u32,
            particles: 1,
            horizon: t as u32,
            obs_dim: 3,
            act_dim: 1,
            propagation: Propagation::Expectation as u32,
            env: env.code(),
            learn_reward: 0,
            num_elites: 0,
            elites: [0; MAX_ELITES],
        };
        let mut failed = None;
        let mut part = |name: &str, f: &mut dyn FnMut() -> Result<()>| {
            let (med, min) = time_ms(reps, || {
                if let Err(e) = f() {
                    failed = Some(e);
                }
            });
            let mut r = result(
                name,
                med,
                min,
                reps,
                0.0,
                0.0,
                "part of one MPPI action".into(),
            );
            r.backend = be.name().into();
            rows.push(r);
        };
        part("mppi_part_sample_k1000_t30", &mut || {
            be.mppi_sample(&p, &mean, &one, &lo, &hi, &mut pop)
        });
        part("mppi_part_rollout_true_k1000_t30", &mut || {
            be.rollout_true(&rp, &start, &pop, &mut ret)
        });
        part("mppi_part_update_k1000_t30", &mut || {
            be.mppi_update(&p, &pop, &ret, &one, &mut mean_out)
        });
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(rows)
}

/// `bench cpu`: the arithmetic ceilings of this CPU on all rayon threads, in one run: the
/// f32 GEMM peak every other row is measured against, and the instruction peaks behind it —
/// independent f32 FMAs and, where the CPU has AVX512-BF16, `vdpbf16ps` — from register-only
/// loops (no memory traffic), so a goal can be checked against what the silicon issues.
/// Each figure counts one multiply-add as 2 FLOP (a `vdpbf16ps` lane does two).
pub fn cpu_peaks(reps: usize) -> Vec<BenchResult> {
    let mut rows = vec![];
    let gemm = gemm_peak(reps);
    for (name, note, flop_per_iter, kernel) in peak_kernels() {
        let (med, min, flop) = run_peak_kernel(reps, flop_per_iter, kernel);
        rows.push(result(name, med, min, reps, flop, 0.0, note.into()));
    }
    let mut g = result(
        "gemm_peak_square",
        0.0,
        0.0,
        reps,
        0.0,
        0.0,
        "f32 GEMM 1024³/1536³ on all threads (the reference of the other benches)".into(),
    );
    g.gflops = gemm;
    rows.push(g);
    // Shares of the f32 FMA ceiling.
    if let Some(fma) = rows
        .iter()
        .find(|r| r.name == "fma_f32_peak")
        .map(|r| r.gflops)
    {
        for r in &mut rows {
            r.peak_gflops = fma;
            r.fraction_of_peak = r.gflops / fma;
        }
    }
    rows
}

type PeakKernel = (&'static str, &'static str, f64, fn(u64) -> f32);

/// The register-only loops this CPU can run: (row name, note, FLOP per iteration, loop).
fn peak_kernels() -> Vec<PeakKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut k: Vec<PeakKernel> = vec![];
        if is_x86_feature_detected!("avx512f") {
            k.push((
                "fma_f32_peak",
                "12 independent 16-lane vfmadd231ps per iteration (f32 FMA issue ceiling)",
                12.0 * 16.0 * 2.0,
                peak_x86::fma512,
            ));
        } else if is_x86_feature_detected!("fma") {
            k.push((
                "fma_f32_peak",
                "12 independent 8-lane vfmadd231ps per iteration (f32 FMA issue ceiling)",
                12.0 * 8.0 * 2.0,
                peak_x86::fma256,
            ));
        }
        if is_x86_feature_detected!("avx512bf16") {
            k.push((
                "dpbf16_peak",
                "12 independent vdpbf16ps per iteration: 16 lanes × 2 bf16 products (the \
                 AVX512-BF16 ceiling of the bf16 path without AMX)",
                12.0 * 32.0 * 2.0,
                peak_x86::dpbf16,
            ));
        }
        k
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        vec![]
    }
}

#[cfg(target_arch = "x86_64")]
mod peak_x86 {
    use std::arch::x86_64::*;

    pub fn fma512(iters: u64) -> f32 {
        // SAFETY: chosen only where AVX-512F was detected.
        unsafe { fma512_impl(iters) }
    }

    pub fn fma256(iters: u64) -> f32 {
        // SAFETY: chosen only where FMA (and so AVX) was detected.
        unsafe { fma256_impl(iters) }
    }

    pub fn dpbf16(iters: u64) -> f32 {
        // SAFETY: chosen only where AVX512-BF16 was detected.
        unsafe { dpbf16_impl(iters) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn fma512_impl(iters: u64) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 12];
        let (mut x, y) = (_mm512_set1_ps(1.0e-3), _mm512_set1_ps(0.999));
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(x, y, *a);
            }
            // An opaque move keeps the multiplicand from being folded out of the loop.
            std::arch::asm!("/* {0} */", inout(zmm_reg) x, options(nomem, nostack));
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    #[target_feature(enable = "avx,fma")]
    unsafe fn fma256_impl(iters: u64) -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (mut x, y) = (_mm256_set1_ps(1.0e-3), _mm256_set1_ps(0.999));
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(x, y, *a);
            }
            std::arch::asm!("/* {0} */", inout(ymm_reg) x, options(nomem, nostack));
        }
        let mut out = [0.0f32; 8];
        let s = acc
            .iter()
            .fold(_mm256_set1_ps(0.0), |s, &a| _mm256_add_ps(s, a));
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dpbf16_impl(iters: u64) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); 12];
        // bf16 1.0 in every half-word.
        let mut x = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi16(0x3f80));
        let y = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi16(0x3f80));
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm512_dpbf16_ps(*a, x, y);
            }
            let mut xi = std::mem::transmute::<__m512bh, __m512i>(x);
            std::arch::asm!("/* {0} */", inout(zmm_reg) xi, options(nomem, nostack));
            x = std::mem::transmute::<__m512i, __m512bh>(xi);
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }
}
