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
use crate::env::mujoco::MujocoTask;
use crate::env::{task, EnvId, EnvName};
use crate::io::run::{RunDir, MANIFEST, STATE_DIR};
use crate::model::{train::train, Ensemble, ModelConfig, TrainConfig, Transitions};
use crate::plan::{mpc::latency_stats, Mpc, PlannerConfig, TsConfig};
use crate::rng::{stream, uniform};
use crate::{invalid, io, setting, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Everything a PETS run needs; written to `config.toml` in the run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PetsConfig {
    /// Environment name (`mbrl-gpu envs` lists them).
    pub env: String,
    /// Preset this configuration started from.
    pub preset: String,
    /// Trials after the random one.
    pub trials: usize,
    /// Steps per trial (the environment's episode length by default).
    pub trial_length: usize,
    /// Seed of the model initialisation, training, planning and environment resets.
    pub seed: u64,
    /// The probabilistic ensemble.
    pub model: ModelConfig,
    /// How the ensemble is trained before every trial.
    pub train: TrainConfig,
    /// The CEM / random-shooting planner.
    pub planner: PlannerConfig,
    /// Trajectory-sampling particles per candidate.
    pub particles: usize,
    /// How particles move through the ensemble (ts1, tsinf, expectation).
    pub propagation: Propagation,
    /// Retrain the model every this many environment steps within a trial as well as at its
    /// start (mbrl-lib's `freq_train_model`); 0 trains once per trial.
    pub train_every: usize,
    /// A `sac`/`mbpo`/`maac` run directory whose critic closes every planned path with
    /// γ^H·V(s_H) (`plan --terminal-value`); unset by default. CPU backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_value: Option<std::path::PathBuf>,
    /// The reward the planner scores model paths with: the task's own (`task`, what the
    /// returns report), or its shaped planning reward (`shaped`; inverted-pendulum only:
    /// [`task::INVERTED_PENDULUM_CENTRED`]). Absent from older runs' files: `task`.
    #[serde(default)]
    pub planner_reward: PlannerReward,
}

/// Which reward the planner maximises ([`PetsConfig::planner_reward`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlannerReward {
    /// The task's reward.
    #[default]
    Task,
    /// The task's shaped planning reward ([`task::shaped`]): the same terminations, and a
    /// preference among paths that the task's reward scores alike.
    Shaped,
}

/// Preset names accepted by `--preset`.
pub const PRESETS: [&str; 6] = [
    "quick",
    "cartpole",
    "pendulum",
    "halfcheetah",
    "hopper",
    "inv_pendulum",
];

/// The preset named after `env`'s task, if it has one.
pub fn own_preset(env: &EnvName) -> Option<&'static str> {
    match (env.task_env(), env.mujoco()) {
        (Some(EnvId::CartPole), _) => Some("cartpole"),
        (Some(EnvId::Pendulum), _) => Some("pendulum"),
        (_, Some(MujocoTask::HalfCheetah)) => Some("halfcheetah"),
        (_, Some(MujocoTask::Hopper)) => Some("hopper"),
        (_, Some(MujocoTask::InvertedPendulum)) => Some("inv_pendulum"),
        _ => None,
    }
}

impl PetsConfig {
    /// A named preset for `env`. `cartpole` is mbrl-lib 0.2.0's `pets_cartpole`; `pendulum`
    /// the same architecture with a longer horizon for the swing-up; `halfcheetah`, `hopper`
    /// and `inv_pendulum` mbrl-lib's `pets_*` overrides for the MuJoCo tasks (sized for a
    /// GPU); `quick` a small configuration per environment that a laptop CPU runs in minutes.
    pub fn preset(env_name: &EnvName, name: &str) -> Result<Self> {
        let spec = env_name.spec()?;
        let mut model = ModelConfig::pets(spec.obs_dim, spec.act_dim);
        // A task without a reward function from observations plans on learned rewards.
        model.learn_reward = !task::has_reward(env_name.task_code());
        let env = env_name.task_env();
        let mine = own_preset(env_name);
        let mut train = TrainConfig {
            epochs: 25,
            ..TrainConfig::default()
        };
        let mut planner = PlannerConfig::pets_cartpole();
        let mut particles = 20;
        let mut trials = 10;
        // mbrl-lib pets_cartpole: freq_train_model 50.
        let mut train_every = 50;
        let mut planner_reward = PlannerReward::Task;
        // mbrl-lib trains 25 epochs of batch 256: on the first 200 transitions that is 25
        // Adam steps, too few for a 7 × 4×200 ensemble to predict anything; at least 200
        // steps per training (a second on this CPU) lets the first MPC trial plan.
        train.min_steps = 200;
        match (name, env) {
            ("cartpole", _) if mine == Some("cartpole") => {}
            ("halfcheetah" | "hopper", _) if mine == Some(name) => {
                // mbrl-lib pets_halfcheetah / pets_hopper (learned rewards, 5 elites).
                train.lr = 2e-4;
                train.weight_decay = vec![3e-5];
                train.batch_size = 32;
                train.holdout_ratio = 0.0;
                train.patience = Some(25);
                train.epochs = 25;
                planner.horizon = 30;
                planner.population = 350;
                planner.num_elites = 35;
                planner.alpha = 0.1;
                if name == "halfcheetah" {
                    trials = 300;
                    train_every = 0; // freq_train_model 1000 = once per 1000-step trial
                } else {
                    trials = 125;
                    train_every = 250;
                }
            }
            ("inv_pendulum", _) if mine == Some(name) => {
                // mbrl-lib pets_inv_pendulum (its model_lr "00143" read as 1.43e-3), except
                // that the reward is the task's exact one (1 while |angle| ≤ 0.2), which
                // mbrl-lib learns.
                train.lr = 1.43e-3;
                train.weight_decay = vec![3.3e-5];
                train.batch_size = 256;
                train.holdout_ratio = 0.2;
                train.patience = Some(50);
                train.epochs = 31;
                train_every = 250;
                planner.horizon = 45;
                planner.population = 480;
                planner.num_elites = 37; // elite ratio 0.078
                planner.alpha = 0.134484;
                trials = 20;
            }
            ("pendulum", _) if mine == Some("pendulum") => {
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
                if env == Some(EnvId::Pendulum) {
                    planner.horizon = 25;
                    planner.population = 200;
                    planner.num_elites = 20;
                    trials = 8;
                }
                if env == Some(EnvId::MountainCar) {
                    planner.horizon = 30;
                    planner.population = 200;
                    planner.num_elites = 20;
                }
                if env_name.mujoco() == Some(MujocoTask::InvertedPendulum) {
                    // 0.6 s of look-ahead is enough to keep the pole up; the 1000-step
                    // trials make a few trials plenty of data. With the task's 0/1 reward
                    // every path that survives 15 steps scores the same and the cart
                    // drifts to its stop (README); the shaped reward keeps it centred.
                    planner.horizon = 15;
                    train_every = 250;
                    planner_reward = PlannerReward::Shaped;
                }
            }
            (n, _) if PRESETS.contains(&n) => {
                return Err(invalid!(
                    "preset {n:?} is for another environment than {env_name}; use `quick`{}",
                    match mine {
                        Some(m) => format!(" or `{m}`"),
                        None => String::new(),
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
            env: env_name.name(),
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
            terminal_value: None,
            planner_reward,
        })
    }

    /// The critic of `terminal_value`, if set (see
    /// [`crate::policy::checkpoint::load_terminal_value`]).
    pub fn load_terminal_value(&self) -> Result<Option<crate::backend::TerminalValue>> {
        let Some(dir) = &self.terminal_value else {
            return Ok(None);
        };
        let env = self.env_name()?;
        let spec = self.model.check_env(&env)?;
        crate::policy::checkpoint::load_terminal_value(
            "terminal_value",
            dir,
            &env.to_string(),
            spec.obs_dim,
            spec.act_dim,
        )
        .map(Some)
    }

    pub fn env_name(&self) -> Result<EnvName> {
        Ok(EnvName::parse(&self.env)?)
    }

    /// Errors about a setting are [`crate::Error::Setting`]s keyed by its dotted name.
    pub fn validate(&self) -> Result<()> {
        let spec = self.model.check_env(&self.env_name()?)?;
        if self.trials == 0 {
            return Err(setting!(
                "trials",
                "must be at least 1 (trial 0, the random one, always runs first)"
            ));
        }
        if self.trial_length == 0 {
            return Err(setting!("trial_length", "must be at least 1"));
        }
        if self.particles == 0 {
            return Err(setting!("particles", "must be at least 1"));
        }
        self.model.validate().map_err(|e| e.in_section("model"))?;
        self.train.validate().map_err(|e| e.in_section("train"))?;
        self.planner
            .validate()
            .map_err(|e| e.in_section("planner"))?;
        crate::limits::check_model(&self.model, self.train.batch_size)?;
        crate::limits::check_planning(
            Some(&self.model),
            &self.planner,
            spec.act_dim,
            spec.obs_dim,
            self.particles,
        )?;
        self.planning_task()?;
        // A missing or mismatched critic is refused before a run directory is made.
        self.load_terminal_value().map(|_| ())
    }

    /// The reward/termination code the planner scores paths with ([`Self::planner_reward`]).
    pub fn planning_task(&self) -> Result<u32> {
        let env = self.env_name()?;
        let code = env.task_code();
        match self.planner_reward {
            PlannerReward::Task => Ok(code),
            PlannerReward::Shaped => task::shaped(code).ok_or_else(|| {
                setting!(
                    "planner_reward",
                    "\"shaped\": {env} has no shaped planning reward (inverted-pendulum \
                     has one); use \"task\""
                )
            }),
        }
    }
}

/// One trial's results: the learning columns go to `metrics.csv` (a function of the
/// configuration and seed alone, so a resumed run writes the same file as an uninterrupted
/// one), the wall-clock columns to `timings.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialReport {
    /// 0 is the random-action trial.
    pub trial: usize,
    /// Environment steps taken so far, this trial included.
    pub env_steps: usize,
    #[serde(rename = "return", with = "nan_as_null")]
    pub ret: f64,
    pub steps: usize,
    /// NaN for the random trial, which trains nothing.
    #[serde(with = "nan_as_null")]
    pub train_loss: f64,
    pub train_seconds: f64,
    pub plan_ms_median: f64,
    pub plan_ms_p99: f64,
    pub seconds: f64,
}

use super::offpolicy::nan_as_null;

/// Progress callbacks for a front end.
pub enum Event<'a> {
    /// The run continues from a checkpoint holding `trials` finished trials.
    Resumed {
        trials: usize,
        transitions: usize,
    },
    TrialStart {
        trial: usize,
        steps: usize,
    },
    Step {
        trial: usize,
        step: usize,
    },
    TrialEnd(&'a TrialReport),
}

/// Run PETS. With a run directory, every finished trial is checkpointed there (see
/// [`crate::io::run`]): `model.safetensors`, `transitions.safetensors`, `metrics.csv`,
/// `timings.csv` and `learning_curve.svg`; and a directory that already holds a checkpoint
/// is continued from it, ending exactly as an uninterrupted run would (same backend).
pub fn run<B: Backend>(
    backend: &B,
    cfg: &PetsConfig,
    out: Option<&RunDir>,
    mut progress: impl FnMut(Event),
) -> Result<(Ensemble, Vec<TrialReport>)> {
    cfg.validate()?;
    cfg.train
        .check_backend(backend.name())
        .map_err(|e| e.in_section("train"))?;
    let env_name = cfg.env_name()?;
    let mut env = env_name.open(1)?;
    let spec = env.spec().clone();
    // Loaded (and refused) before any work, not at the first planned trial.
    let terminal = cfg.load_terminal_value()?;
    let resumed = match out {
        Some(dir) => load_checkpoint(dir, cfg)?,
        None => None,
    };
    let (mut model, mut data, mut reports) = match resumed {
        Some(s) => s,
        None => (
            Ensemble::new(cfg.model.clone(), cfg.seed)?,
            Transitions::new(spec.obs_dim, spec.act_dim),
            vec![],
        ),
    };
    if let (Some(dir), false) = (out, reports.is_empty()) {
        // Views a kill may have left behind the checkpoint are rebuilt from it.
        write_views(dir, &reports, &model)?;
        progress(Event::Resumed {
            trials: reports.len(),
            transitions: data.len(),
        });
    }
    let ts = TsConfig {
        particles: cfg.particles,
        propagation: cfg.propagation,
    };
    for trial in reports.len()..=cfg.trials {
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
            mpc = Some(Mpc::with_model_task(
                backend,
                &model,
                cfg.planning_task()?,
                &spec.act_low,
                &spec.act_high,
                cfg.planner.clone(),
                ts,
                seed,
            )?);
            if let (Some(m), Some(tv)) = (mpc.as_mut(), &terminal) {
                m.set_terminal_value(Some(tv.clone()))?;
            }
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
            commit(dir, cfg, &model, &data, &reports)?;
        }
    }
    Ok((model, reports))
}

/// `checkpoint.json`: what a resumed run needs, and the commit point of a checkpoint.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    /// The configuration the run was started with (`trials` may grow on resume).
    config: PetsConfig,
    /// State files, relative to the run directory.
    model: String,
    transitions: String,
    /// Every finished trial, in order.
    reports: Vec<TrialReport>,
}

const MANIFEST_FORMAT: &str = "mbrl-gpu/pets-run/1";

/// Write trial `reports.len() − 1`'s state under names of its own, then commit it by
/// replacing the manifest, then the views; finally drop the previous state.
fn commit(
    dir: &RunDir,
    cfg: &PetsConfig,
    model: &Ensemble,
    data: &Transitions,
    reports: &[TrialReport],
) -> Result<()> {
    let k = reports.len() - 1;
    let model_name = format!("{STATE_DIR}/model-{k:04}.safetensors");
    let data_name = format!("{STATE_DIR}/transitions-{k:04}.safetensors");
    dir.write(&model_name, &io::checkpoint::to_bytes(model)?)?;
    dir.write(&data_name, &io::transitions::to_bytes(data)?)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        config: cfg.clone(),
        model: model_name.clone(),
        transitions: data_name.clone(),
        reports: reports.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| invalid!("manifest: {e}"))?;
    dir.write(MANIFEST, &json)?;
    write_views(dir, reports, model)?;
    dir.prune_state(&[&model_name, &data_name])
}

/// The run's last checkpoint, checked against `cfg`; None when none was committed yet.
fn load_checkpoint(
    dir: &RunDir,
    cfg: &PetsConfig,
) -> Result<Option<(Ensemble, Transitions, Vec<TrialReport>)>> {
    let Some(bytes) = dir.read(MANIFEST)? else {
        dir.prune_state(&[])?;
        return Ok(None);
    };
    let path = dir.path().join(MANIFEST);
    let bad = |msg: String| invalid!("{}: {msg}", path.display());
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a PETS checkpoint manifest ({e})")))?;
    if m.format != MANIFEST_FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {MANIFEST_FORMAT:?}",
            m.format
        )));
    }
    let mut started = m.config.clone();
    started.trials = cfg.trials;
    if &started != cfg {
        let diff = io::config::differences(&started, cfg)?;
        return Err(bad(format!(
            "the run was started with other settings ({}); resume it with its own config.toml",
            diff.join(", ")
        )));
    }
    let in_dir = |name: &str| -> Result<std::path::PathBuf> {
        // Only names of the form the writer uses: a crafted manifest cannot point elsewhere.
        let ok = name.starts_with(&format!("{STATE_DIR}/"))
            && !name[STATE_DIR.len() + 1..].contains(['/', '\\'])
            && !name.contains("..");
        if !ok {
            return Err(bad(format!("state file {name:?} is outside {STATE_DIR}/")));
        }
        Ok(dir.path().join(name))
    };
    let model = io::checkpoint::load(&in_dir(&m.model)?)?;
    let data = io::transitions::load(&in_dir(&m.transitions)?)?;
    let r = &m.reports;
    let consistent = !r.is_empty()
        && r.iter().enumerate().all(|(i, t)| t.trial == i)
        && r.last().is_some_and(|t| t.env_steps == data.len())
        && model.config == cfg.model
        && (data.obs_dim, data.act_dim) == (cfg.model.obs_dim, cfg.model.act_dim);
    if !consistent {
        return Err(bad(
            "the checkpoint's model, transitions and trial list do not agree".into(),
        ));
    }
    dir.prune_state(&[&m.model, &m.transitions])?;
    Ok(Some((model, data, m.reports)))
}

/// The files a user reads, rewritten from the state: the model first, so the metrics never
/// report a trial whose model is not on disk yet.
fn write_views(dir: &RunDir, reports: &[TrialReport], model: &Ensemble) -> Result<()> {
    if reports.len() > 1 {
        dir.write("model.safetensors", &io::checkpoint::to_bytes(model)?)?;
    }
    let mut csv = String::from("trial,env_steps,return,steps,train_loss\n");
    let mut times = String::from("trial,train_seconds,plan_ms_median,plan_ms_p99,seconds\n");
    for r in reports {
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            r.trial, r.env_steps, r.ret, r.steps, r.train_loss
        ));
        times.push_str(&format!(
            "{},{:.3},{:.3},{:.3},{:.3}\n",
            r.trial, r.train_seconds, r.plan_ms_median, r.plan_ms_p99, r.seconds
        ));
    }
    dir.write("metrics.csv", csv.as_bytes())?;
    dir.write("timings.csv", times.as_bytes())?;
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
    dir.write("learning_curve.svg", svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverted pendulum's `quick` preset plans with the shaped reward; every other
    /// preset with the task's; `shaped` where no shaped reward exists is refused by name.
    #[test]
    fn the_planner_reward_should_be_the_tasks_unless_shaped_where_one_exists() {
        let ip = EnvName::parse("inverted-pendulum").unwrap();
        let quick = PetsConfig::preset(&ip, "quick").unwrap();
        assert_eq!(quick.planner_reward, PlannerReward::Shaped);
        assert_eq!(
            quick.planning_task().unwrap(),
            task::INVERTED_PENDULUM_CENTRED
        );
        let mut plain = PetsConfig::preset(&ip, "inv_pendulum").unwrap();
        assert_eq!(plain.planning_task().unwrap(), task::INVERTED_PENDULUM);
        plain.planner_reward = PlannerReward::Shaped;
        plain.validate().unwrap();

        let mut cp = PetsConfig::preset(&EnvId::CartPole.into(), "quick").unwrap();
        assert_eq!(cp.planning_task().unwrap(), EnvId::CartPole.code());
        cp.planner_reward = PlannerReward::Shaped;
        let e = cp.validate().unwrap_err().to_string();
        assert!(
            e.contains("planner_reward") && e.contains("cartpole"),
            "{e}"
        );

        // A config.toml written before the setting existed reads as the task's reward.
        let mut old = toml::to_string(&PetsConfig::preset(&ip, "quick").unwrap()).unwrap();
        old = old.replace("planner_reward = \"shaped\"\n", "");
        assert!(!old.contains("planner_reward"));
        let back: PetsConfig = toml::from_str(&old).unwrap();
        assert_eq!(back.planner_reward, PlannerReward::Task);
    }
}
