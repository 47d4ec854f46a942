//! `mbrl-gpu bench`: throughput figures with the machine's GEMM peak measured in the same run.
//! Timings here are reports, never assertions.
use crate::backend::{Backend, EnsembleShape};
use crate::linalg as gemm;
use crate::model::{Ensemble, ModelConfig, TrainConfig, Transitions};
use crate::rng::{normal, stream};
use crate::Result;
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
        note,
    }
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

/// `bench model`: ensemble forward at half-cheetah sizes and one training epoch at cart-pole
/// sizes, each next to the CPU's GEMM peak (measured only when the backend is the CPU).
/// On a device backend the forward is timed with the download of its output, which is what
/// makes queued work complete.
pub fn model_benches<B: Backend>(be: &B, reps: usize) -> Result<Vec<BenchResult>> {
    let on_cpu = be.name() == "cpu";
    let peak = if on_cpu { gemm_peak(reps) } else { 0.0 };
    let mut out = vec![];

    // Forward: E=7, 1000 rows per member, input 24, 4×200 SiLU, head 36.
    let shape = EnsembleShape {
        ensemble: 7,
        in_dim: 24,
        out_dim: 18,
        hidden: 200,
        num_layers: 4,
        activation: crate::backend::Activation::Silu,
        probabilistic: true,
    };
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
    let run = |epochs: usize| -> f64 {
        let mut m = Ensemble::new(cfg_model.clone(), 0).expect("model");
        let cfg = TrainConfig {
            epochs,
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
    let shape_cp = cfg_model.shape();
    // Forward 2·macs, backward 2·macs for dW plus 2·(macs − first layer) for dX.
    let macs = shape_cp.macs_per_row() as f64;
    let first = (shape_cp.in_dim * shape_cp.hidden) as f64;
    let flop = 2000.0 * 7.0 * 2.0 * (3.0 * macs - first);
    out.push(result(
        "train_epoch_n2000_e7_5x200x4_8_b256",
        med,
        per_epoch[0],
        per_epoch.len(),
        flop,
        peak,
        "one epoch of bootstrap minibatch Adam; forward + backward FLOPs".into(),
    ));
    out.push(result(
        "gemm_peak_square",
        0.0,
        0.0,
        reps,
        0.0,
        peak,
        "best of 1024³ and 1536³ f32 products on all threads".into(),
    ));
    for r in out.iter_mut() {
        r.backend = be.name().into();
    }
    if !on_cpu {
        out.pop();
    }
    if let (true, Some(p)) = (on_cpu, out.last_mut()) {
        p.gflops = peak;
        p.fraction_of_peak = 1.0;
    }
    Ok(out)
}

/// `bench plan`: one MPC planning step (CEM × trajectory sampling through an untrained
/// ensemble) at mbrl-lib's cart-pole configuration and at half-cheetah sizes.
pub fn plan_benches<B: Backend>(be: &B, reps: usize) -> Result<Vec<BenchResult>> {
    use crate::backend::Propagation;
    use crate::env::{task, EnvId};
    use crate::plan::{Mpc, PlannerConfig, TsConfig};
    let peak = if be.name() == "cpu" {
        gemm_peak(reps)
    } else {
        0.0
    };
    let ts = TsConfig {
        particles: 20,
        propagation: Propagation::Ts1,
    };
    let mut out = vec![];
    let mut one = |name: &str,
                   model: Ensemble,
                   task: u32,
                   lower: Vec<f32>,
                   upper: Vec<f32>,
                   cfg: PlannerConfig,
                   obs: Vec<f32>|
     -> Result<()> {
        let mut mpc = Mpc::with_model_task(be, &model, task, &lower, &upper, cfg, ts, 0)?;
        let (med, min) = time_ms(reps, || {
            mpc.act(be, &obs, &[]).expect("plan");
        });
        let flop = 2.0 * mpc.rows_per_action() as f64 * model.shape().macs_per_row() as f64;
        let rows_per_s = mpc.rows_per_action() as f64 / (med * 1e-3);
        let mut r = result(
            name,
            med,
            min,
            reps,
            flop,
            peak,
            format!(
                "ms per action; {:.3e} model rows/s; {:.1} GFLOP per action",
                rows_per_s,
                flop / 1e9
            ),
        );
        r.backend = be.name().into();
        out.push(r);
        Ok(())
    };
    let cp = EnvId::CartPole.spec();
    one(
        "plan_step_cartpole_mbrl_lib",
        Ensemble::new(ModelConfig::pets(4, 1), 0)?,
        EnvId::CartPole.code(),
        cp.act_low.clone(),
        cp.act_high.clone(),
        PlannerConfig::pets_cartpole(),
        vec![0.01, -0.02, 0.03, 0.0],
    )?;
    let mut hc = ModelConfig::pets(task::HALF_CHEETAH_OBS, task::HALF_CHEETAH_ACT);
    hc.num_elites = 5;
    let cfg = PlannerConfig {
        horizon: 30,
        population: 400,
        num_elites: 64,
        ..PlannerConfig::pets_cartpole()
    };
    let obs: Vec<f32> = (0..task::HALF_CHEETAH_OBS as u32)
        .map(|i| 0.1 * normal(5, 1, i, 0))
        .collect();
    one(
        "plan_step_half_cheetah_sizes",
        Ensemble::new(hc, 0)?,
        task::HALF_CHEETAH,
        vec![-1.0; task::HALF_CHEETAH_ACT],
        vec![1.0; task::HALF_CHEETAH_ACT],
        cfg,
        obs,
    )?;
    Ok(out)
}
