//! PETS (Chua et al. 2018), Algorithm 1 of the lecture's PETS slides:
//!
//! ```text
//! D ← one trial of random actions
//! for trial = 1..N:
//!     train the probabilistic ensemble on D
//!     for t = 0..T:  a_t ← CEM over action sequences scored by trajectory sampling
//!                    execute a_t, add (s_t, a_t, s_{t+1}) to D
//! ```
use crate::backend::{Activation, Backend, Propagation};
use crate::env::{Env, EnvId, NativeEnv};
use crate::model::{train::train, Ensemble, ModelConfig, TrainConfig, Transitions};
use crate::plan::{mpc::latency_stats, Mpc, PlannerConfig, TsConfig};
use crate::rng::{stream, uniform};
use crate::{invalid, io, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Everything a PETS run needs; written to `config.toml` in the run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PetsConfig {
    /// Environment name (`mbrl-gpu envs` lists them).
    pub env: String,
    /// Preset this configuration started from.
    pub preset: String,
    /// Trials after the random one.
    pub trials: usize,
    /// Steps per trial (the environment's episode length by default).
    pub trial_length: usize,
    pub seed: u64,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub planner: PlannerConfig,
    pub particles: usize,
    pub propagation: Propagation,
    /// Retrain the model every this many environment steps within a trial as well as at its
    /// start (mbrl-lib's `freq_train_model`); 0 trains once per trial.
    pub train_every: usize,
}

/// Preset names accepted by `--preset`.
pub const PRESETS: [&str; 3] = ["quick", "cartpole", "pendulum"];

impl PetsConfig {
    /// A named preset for `env`. `cartpole` is mbrl-lib 0.2.0's `pets_cartpole`; `pendulum`
    /// the same architecture with a longer horizon for the swing-up; `quick` a small
    /// configuration per environment that a laptop CPU runs in minutes.
    pub fn preset(env: EnvId, name: &str) -> Result<Self> {
        let spec = env.spec();
        let mut model = ModelConfig::pets(spec.obs_dim, spec.act_dim);
        let mut train = TrainConfig {
            epochs: 25,
            ..TrainConfig::default()
        };
        let mut planner = PlannerConfig::pets_cartpole();
        let mut particles = 20;
        let mut trials = 10;
        // mbrl-lib pets_cartpole: freq_train_model 50.
        let mut train_every = 50;
        // mbrl-lib trains 25 epochs of batch 256: on the first 200 transitions that is 25
        // Adam steps, too few for a 7 × 4×200 ensemble to predict anything; at least 200
        // steps per training (a second on this CPU) lets the first MPC trial plan.
        train.min_steps = 200;
        match (name, env) {
            ("cartpole", EnvId::CartPole) => {}
            ("pendulum", EnvId::Pendulum) => {
                planner.horizon = 25;
                planner.population = 400;
                planner.num_elites = 40;
                trials = 15;
            }
            ("quick", _) => {
                model.ensemble_size = 5;
                model.num_elites = 3;
                model.hidden = 64;
                model.num_layers = 3;
                train.epochs = 50;
                train.min_steps = 0;
                train.batch_size = 32;
                train.lr = 1e-3;
                planner.population = 200;
                planner.num_elites = 20;
                planner.iterations = 4;
                particles = 20;
                trials = 5;
                train_every = 0;
                if env == EnvId::Pendulum {
                    planner.horizon = 25;
                    planner.population = 200;
                    planner.num_elites = 20;
                    trials = 8;
                }
                if env == EnvId::MountainCar {
                    planner.horizon = 30;
                    planner.population = 200;
                    planner.num_elites = 20;
                }
            }
            (n, _) if PRESETS.contains(&n) => {
                return Err(invalid!(
                    "preset {n:?} is for the {n} environment, not {}; use `quick` or `{}`",
                    env.name(),
                    if env == EnvId::MountainCar {
                        "quick"
                    } else {
                        env.name()
                    }
                ))
            }
            (n, _) => {
                return Err(invalid!(
                    "unknown preset {n:?}; choices: {}",
                    PRESETS.join(", ")
                ))
            }
        }
        model.activation = Activation::Silu;
        Ok(Self {
            env: env.name().into(),
            preset: name.into(),
            trials,
            trial_length: spec.max_episode_steps,
            seed: 0,
            model,
            train,
            planner,
            particles,
            propagation: Propagation::Ts1,
            train_every,
        })
    }

    pub fn env_id(&self) -> Result<EnvId> {
        Ok(EnvId::parse(&self.env)?)
    }

    pub fn validate(&self) -> Result<()> {
        let env = self.env_id()?;
        let spec = env.spec();
        if self.model.obs_dim != spec.obs_dim || self.model.act_dim != spec.act_dim {
            return Err(invalid!(
                "model dimensions ({}, {}) do not match {} ({}, {})",
                self.model.obs_dim,
                self.model.act_dim,
                env.name(),
                spec.obs_dim,
                spec.act_dim
            ));
        }
        if self.trial_length == 0 {
            return Err(invalid!("trial length must be at least 1"));
        }
        if self.particles == 0 {
            return Err(invalid!("particles must be at least 1"));
        }
        self.model.validate()?;
        self.train.validate()?;
        self.planner.validate()
    }
}

/// One row of `metrics.csv`.
#[derive(Clone, Debug, Serialize)]
pub struct TrialReport {
    /// 0 is the random-action trial.
    pub trial: usize,
    /// Environment steps taken so far, this trial included.
    pub env_steps: usize,
    #[serde(rename = "return")]
    pub ret: f64,
    pub steps: usize,
    pub train_loss: f64,
    pub train_seconds: f64,
    pub plan_ms_median: f64,
    pub plan_ms_p99: f64,
    pub seconds: f64,
}

/// Progress callbacks for a front end.
pub enum Event<'a> {
    TrialStart { trial: usize, steps: usize },
    Step { trial: usize, step: usize },
    TrialEnd(&'a TrialReport),
}

/// Run PETS; writes `config.toml`, `metrics.csv`, `model.safetensors` and
/// `learning_curve.svg` into `out` (if given) after every trial, each file atomically.
pub fn run<B: Backend>(
    backend: &B,
    cfg: &PetsConfig,
    out: Option<&Path>,
    mut progress: impl FnMut(Event),
) -> Result<(Ensemble, Vec<TrialReport>)> {
    cfg.validate()?;
    let env_id = cfg.env_id()?;
    let spec = env_id.spec();
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        let text = toml::to_string(cfg).map_err(|e| invalid!("config to TOML: {e}"))?;
        io::atomic_write(&dir.join("config.toml"), text.as_bytes())?;
    }
    let mut env = NativeEnv::new(env_id, 1);
    let mut data = Transitions::new(spec.obs_dim, spec.act_dim);
    let mut model = Ensemble::new(cfg.model.clone(), cfg.seed)?;
    let mut reports: Vec<TrialReport> = vec![];
    let ts = TsConfig {
        particles: cfg.particles,
        propagation: cfg.propagation,
    };
    for trial in 0..=cfg.trials {
        let t0 = Instant::now();
        progress(Event::TrialStart {
            trial,
            steps: cfg.trial_length,
        });
        let (mut train_loss, mut train_seconds) = (f64::NAN, 0.0);
        let mut trainings = 0u64;
        let mut retrain = |model: &mut Ensemble, data: &Transitions| -> Result<()> {
            let ts0 = Instant::now();
            let mut tc = cfg.train.clone();
            tc.seed = cfg
                .seed
                .wrapping_mul(1000)
                .wrapping_add((trial as u64) << 16)
                .wrapping_add(trainings);
            trainings += 1;
            let rep = train(backend, model, data, &tc, |_| {})?;
            train_loss = rep.history.last().map_or(f64::NAN, |h| h.train_loss);
            train_seconds += ts0.elapsed().as_secs_f64();
            Ok(())
        };
        let mut mpc = None;
        if trial > 0 {
            retrain(&mut model, &data)?;
            let seed = cfg.seed.wrapping_mul(7919).wrapping_add(trial as u64);
            mpc = Some(Mpc::with_model(
                backend,
                &model,
                env_id,
                cfg.planner.clone(),
                ts,
                seed,
            )?);
        }
        let reset_seed = |episode: u64| {
            cfg.seed
                .wrapping_mul(1_000_003)
                .wrapping_add((trial as u64) << 20)
                .wrapping_add(episode)
        };
        let mut obs = env.reset(&[reset_seed(0)])?;
        let mut ret = 0.0f64;
        let mut steps = 0;
        let mut episodes = 1;
        let mut first_return = None;
        for step in 0..cfg.trial_length {
            if let Some(m) = mpc.as_mut() {
                if cfg.train_every > 0 && step > 0 && step % cfg.train_every == 0 {
                    retrain(&mut model, &data)?;
                    m.update_model(backend, &model)?;
                }
            }
            let action = match mpc.as_mut() {
                Some(m) => m.act(backend, &obs, env.state())?,
                None => (0..spec.act_dim)
                    .map(|j| {
                        let u = uniform(
                            cfg.seed,
                            stream::RANDOM_ACTION,
                            (step * spec.act_dim + j) as u32,
                            trial as u32,
                        );
                        spec.act_low[j] + u * (spec.act_high[j] - spec.act_low[j])
                    })
                    .collect(),
            };
            let tr = env.step(&action)?.remove(0);
            data.push(&obs, &action, &tr.obs, Some(tr.reward));
            ret += tr.reward as f64;
            obs = tr.obs;
            steps += 1;
            progress(Event::Step { trial, step });
            if tr.terminated || tr.truncated {
                if trial > 0 {
                    break;
                }
                // The random trial gathers `trial_length` transitions over as many episodes
                // as it takes (mbrl-lib's initial exploration); its return is the first's.
                obs = env.reset(&[reset_seed(episodes)])?;
                if episodes == 1 {
                    first_return = Some(ret);
                }
                episodes += 1;
            }
        }
        if let Some(r) = first_return {
            ret = r;
        }
        let (med, p99) = mpc
            .as_mut()
            .map_or((0.0, 0.0), |m| latency_stats(&m.take_latencies()));
        let rep = TrialReport {
            trial,
            env_steps: data.len(),
            ret,
            steps,
            train_loss,
            train_seconds,
            plan_ms_median: med,
            plan_ms_p99: p99,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress(Event::TrialEnd(&rep));
        reports.push(rep);
        if let Some(dir) = out {
            write_outputs(dir, &reports, if trial > 0 { Some(&model) } else { None })?;
        }
    }
    Ok((model, reports))
}

fn write_outputs(dir: &Path, reports: &[TrialReport], model: Option<&Ensemble>) -> Result<()> {
    let mut csv = String::from(
        "trial,env_steps,return,steps,train_loss,train_seconds,plan_ms_median,plan_ms_p99,seconds\n",
    );
    for r in reports {
        csv.push_str(&format!(
            "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3}\n",
            r.trial,
            r.env_steps,
            r.ret,
            r.steps,
            r.train_loss,
            r.train_seconds,
            r.plan_ms_median,
            r.plan_ms_p99,
            r.seconds
        ));
    }
    io::atomic_write(&dir.join("metrics.csv"), csv.as_bytes())?;
    let points: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| (r.env_steps as f64, r.ret))
        .collect();
    let svg = io::plot::learning_curve_svg(
        "PETS learning curve",
        "environment steps",
        "return",
        &points,
    );
    io::atomic_write(&dir.join("learning_curve.svg"), svg.as_bytes())?;
    if let Some(m) = model {
        io::checkpoint::save(m, &dir.join("model.safetensors"))?;
    }
    Ok(())
}
