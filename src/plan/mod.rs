//! Shooting planners (random shooting, CEM) over action sequences, the trajectory-sampling
//! objectives they optimise, and model-predictive control.
//!
//! A planner knows nothing of models (as in mbrl-lib): it optimises an [`Objective`] that
//! scores a population of action sequences [P, H, A] held in device buffers. The objectives
//! wire a learned ensemble ([`ModelObjective`]) or the environment's true dynamics
//! ([`TrueObjective`]) into the backend's fused rollout.
pub mod mpc;

pub use mpc::Mpc;

use crate::backend::{
    Backend, InitParams, Precision, Propagation, RolloutParams, SampleParams, UpdateParams,
};
use crate::backend::{EnsembleShape, MAX_ELITES};
use crate::model::Ensemble;
use crate::{invalid, setting, Result};
use serde::{Deserialize, Serialize};

/// Which shooting method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// Cross-entropy method: iterate sample → score → refit to the elites.
    Cem,
    /// Random shooting: one round of uniform samples, keep the best.
    RandomShooting,
}

/// Planner settings (defaults: mbrl-lib 0.2.0 `pets_cartpole`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerConfig {
    /// cem or random-shooting.
    pub optimizer: Optimizer,
    /// Planning horizon H (steps).
    pub horizon: usize,
    /// Candidates per iteration P.
    pub population: usize,
    /// Elites per iteration (CEM).
    pub num_elites: usize,
    /// CEM iterations per action.
    pub iterations: usize,
    /// Smoothing α: mean ← α·mean + (1−α)·elite mean.
    pub alpha: f32,
    /// Lower bound on the sampling variance.
    pub min_var: f32,
    /// Shift the previous solution by one step to start the next (warm start).
    pub warm_start: bool,
    /// Arithmetic of the rollouts: f32 (the specification) or bf16 products with f32 sums
    /// (AMX tiles on CPUs that have them); the backend is built for it.
    #[serde(default)]
    pub precision: Precision,
}

impl PlannerConfig {
    pub fn pets_cartpole() -> Self {
        Self {
            optimizer: Optimizer::Cem,
            horizon: 15,
            population: 350,
            num_elites: 35,
            iterations: 5,
            alpha: 0.1,
            min_var: 1e-6,
            warm_start: true,
            precision: Precision::F32,
        }
    }

    /// Errors are [`crate::Error::Setting`]s keyed by field (`num_elites`).
    pub fn validate(&self) -> Result<()> {
        if self.horizon == 0 {
            return Err(setting!("horizon", "must be at least 1"));
        }
        if self.population == 0 {
            return Err(setting!("population", "must be at least 1"));
        }
        if self.optimizer == Optimizer::Cem {
            if self.num_elites == 0 || self.num_elites > self.population {
                return Err(setting!(
                    "num_elites",
                    "is {}; it must be between 1 and the population ({})",
                    self.num_elites,
                    self.population
                ));
            }
            if self.iterations == 0 {
                return Err(setting!("iterations", "must be at least 1 for CEM"));
            }
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(setting!("alpha", "must be in [0, 1], got {}", self.alpha));
        }
        if !(self.min_var.is_finite() && self.min_var >= 0.0) {
            return Err(setting!(
                "min_var",
                "must be finite and ≥ 0, got {}",
                self.min_var
            ));
        }
        Ok(())
    }
}

/// Scores a population of action sequences. `step` is a counter distinct for every call
/// within a run, which the objective uses as its Philox step.
pub trait Objective<B: Backend> {
    fn evaluate(
        &mut self,
        backend: &B,
        population: &B::Buf,
        population_size: usize,
        step: u32,
        returns: &mut B::Buf,
    ) -> Result<()>;
}

/// CEM / random shooting with its buffers on the device. A planning step uploads nothing
/// itself (the objective uploads its start observation) and downloads the plan: the warm
/// start and the variance reset run on the device (`cem_init`), alternating two mean
/// buffers so the shift never reads what it writes.
pub struct Planner<B: Backend> {
    pub cfg: PlannerConfig,
    act_dim: usize,
    lower: Vec<f32>,
    upper: Vec<f32>,
    lower_buf: B::Buf,
    upper_buf: B::Buf,
    /// The plan being optimised and the previous step's plan.
    mean: B::Buf,
    prev: B::Buf,
    var: B::Buf,
    population: B::Buf,
    returns: B::Buf,
    /// Whether the next plan starts from the previous one shifted (false after `reset`).
    warm: bool,
    seed: u64,
    counter: u32,
}

impl<B: Backend> Planner<B> {
    pub fn new(
        backend: &B,
        cfg: PlannerConfig,
        lower: &[f32],
        upper: &[f32],
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        if cfg.precision != backend.planning_precision() {
            return Err(setting!(
                "precision",
                "is {:?} but the {} backend plans in {:?}; build the backend for it \
                 (AnyBackend::with_precision, CpuBackend::with_bf16_planning)",
                cfg.precision,
                backend.name(),
                backend.planning_precision()
            ));
        }
        if lower.len() != upper.len() || lower.is_empty() {
            return Err(invalid!(
                "action bounds must have one lower and one upper value per dimension"
            ));
        }
        for (l, u) in lower.iter().zip(upper) {
            if !(l.is_finite() && u.is_finite()) || l > u {
                return Err(invalid!(
                    "action bounds must be finite with lower ≤ upper, got [{l}, {u}]"
                ));
            }
        }
        let a = lower.len();
        let len = cfg.horizon * a;
        Ok(Self {
            act_dim: a,
            lower_buf: backend.upload(lower)?,
            upper_buf: backend.upload(upper)?,
            mean: backend.zeros(len)?,
            prev: backend.zeros(len)?,
            var: backend.zeros(len)?,
            population: backend.zeros(cfg.population * len)?,
            returns: backend.zeros(cfg.population)?,
            lower: lower.to_vec(),
            upper: upper.to_vec(),
            warm: false,
            seed,
            counter: 0,
            cfg,
        })
    }

    pub fn act_dim(&self) -> usize {
        self.act_dim
    }

    pub fn horizon(&self) -> usize {
        self.cfg.horizon
    }

    /// Forget the previous solution (start of an episode): the next plan starts at the
    /// middle of the bounds.
    pub fn reset(&mut self, _backend: &B) -> Result<()> {
        self.warm = false;
        Ok(())
    }

    /// Optimise the objective; returns the whole planned sequence [H·A].
    pub fn plan(&mut self, backend: &B, objective: &mut impl Objective<B>) -> Result<Vec<f32>> {
        let len = (self.cfg.horizon * self.act_dim) as u32;
        let pop = self.cfg.population as u32;
        let init = InitParams {
            len,
            act_dim: self.act_dim as u32,
            shift: u32::from(self.warm && self.cfg.warm_start),
            _pad: 0,
        };
        backend.cem_init(
            &init,
            &self.lower_buf,
            &self.upper_buf,
            &self.prev,
            &mut self.mean,
            &mut self.var,
        )?;
        let (dist, iterations, elites, alpha) = match self.cfg.optimizer {
            Optimizer::Cem => (0, self.cfg.iterations, self.cfg.num_elites, self.cfg.alpha),
            // One uniform round; the update with one elite and α = 0 copies the best
            // candidate into the mean.
            Optimizer::RandomShooting => (1, 1, 1, 0.0),
        };
        for _ in 0..iterations {
            self.counter = self.counter.wrapping_add(1);
            let sp = SampleParams {
                seed_lo: self.seed as u32,
                seed_hi: (self.seed >> 32) as u32,
                step: self.counter,
                population: pop,
                len,
                act_dim: self.act_dim as u32,
                dist,
                _pad: 0,
            };
            backend.cem_sample(
                &sp,
                &self.mean,
                &self.var,
                &self.lower_buf,
                &self.upper_buf,
                &mut self.population,
            )?;
            objective.evaluate(
                backend,
                &self.population,
                self.cfg.population,
                self.counter,
                &mut self.returns,
            )?;
            let up = UpdateParams {
                population: pop,
                len,
                num_elites: elites as u32,
                _pad: 0,
                alpha,
                min_var: self.cfg.min_var,
                _pad2: [0; 2],
            };
            backend.cem_update(
                &up,
                &self.population,
                &self.returns,
                &mut self.mean,
                &mut self.var,
            )?;
        }
        let solution = backend.download(&self.mean)?;
        // This plan is the next step's starting point.
        std::mem::swap(&mut self.mean, &mut self.prev);
        self.warm = true;
        Ok(solution)
    }

    /// Plan and return the first action, finite and inside the bounds whatever the objective
    /// did; the next call starts from this plan shifted one step (if `warm_start`).
    pub fn act(&mut self, backend: &B, objective: &mut impl Objective<B>) -> Result<Vec<f32>> {
        let seq = self.plan(backend, objective)?;
        Ok(safe_action(&seq[..self.act_dim], &self.lower, &self.upper))
    }
}

/// Clamp to the bounds; a non-finite component becomes the middle of its bounds.
pub fn safe_action(a: &[f32], lower: &[f32], upper: &[f32]) -> Vec<f32> {
    a.iter()
        .zip(lower.iter().zip(upper))
        .map(|(v, (l, u))| {
            if v.is_finite() {
                v.clamp(*l, *u)
            } else {
                0.5 * (l + u)
            }
        })
        .collect()
}

/// Trajectory-sampling settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TsConfig {
    pub particles: usize,
    pub propagation: Propagation,
}

/// Scores action sequences by trajectory sampling through a learned ensemble.
pub struct ModelObjective<B: Backend> {
    shape: EnsembleShape,
    params: B::Buf,
    norm: B::Buf,
    start: B::Buf,
    template: RolloutParams,
}

impl<B: Backend> ModelObjective<B> {
    /// `task` is the reward/termination code (`EnvId::code()` or a code of `env::task`).
    pub fn new(
        backend: &B,
        model: &Ensemble,
        task: u32,
        ts: TsConfig,
        horizon: usize,
        seed: u64,
    ) -> Result<Self> {
        if ts.particles == 0 {
            return Err(invalid!("particles must be at least 1"));
        }
        if model.elites.is_empty() || model.elites.len() > MAX_ELITES {
            return Err(invalid!(
                "the model needs between 1 and {MAX_ELITES} elites, it has {}",
                model.elites.len()
            ));
        }
        let mut elites = [0u32; MAX_ELITES];
        for (d, s) in elites.iter_mut().zip(&model.elites) {
            *d = *s as u32;
        }
        let cfg = &model.config;
        Ok(Self {
            shape: model.shape(),
            params: backend.upload(&model.params)?,
            norm: backend.upload(&model.norm())?,
            start: backend.zeros(cfg.obs_dim)?,
            template: RolloutParams {
                seed_lo: seed as u32,
                seed_hi: (seed >> 32) as u32,
                step: 0,
                population: 0,
                particles: ts.particles as u32,
                horizon: horizon as u32,
                obs_dim: cfg.obs_dim as u32,
                act_dim: cfg.act_dim as u32,
                propagation: ts.propagation as u32,
                env: task,
                learn_reward: cfg.learn_reward as u32,
                num_elites: model.elites.len() as u32,
                elites,
            },
        })
    }

    /// Replace the parameters, normaliser and elites by those of a retrained model of the
    /// same architecture.
    pub fn update_model(&mut self, backend: &B, model: &Ensemble) -> Result<()> {
        if model.shape() != self.shape {
            return Err(crate::Error::Shape(format!(
                "the new model's shape {:?} differs from the planner's {:?}",
                model.shape(),
                self.shape
            )));
        }
        backend.write(&mut self.params, &model.params)?;
        backend.write(&mut self.norm, &model.norm())?;
        let n = model.elites.len().min(MAX_ELITES);
        for (d, s) in self.template.elites.iter_mut().zip(&model.elites[..n]) {
            *d = *s as u32;
        }
        self.template.num_elites = n as u32;
        Ok(())
    }

    /// The observation to plan from (the one upload of a planning step).
    pub fn set_start(&mut self, backend: &B, obs: &[f32]) -> Result<()> {
        backend.write(&mut self.start, obs)
    }

    /// Member-rows per call to `evaluate` (for throughput reports): rows × the members each
    /// passes through (every elite under expectation, one otherwise).
    pub fn rows_per_eval(&self, population: usize) -> usize {
        let members = if self.template.propagation == Propagation::Expectation as u32 {
            self.template.num_elites as usize
        } else {
            1
        };
        population * self.template.particles as usize * self.template.horizon as usize * members
    }

    pub fn shape(&self) -> &EnsembleShape {
        &self.shape
    }
}

impl<B: Backend> Objective<B> for ModelObjective<B> {
    fn evaluate(
        &mut self,
        backend: &B,
        population: &B::Buf,
        population_size: usize,
        step: u32,
        returns: &mut B::Buf,
    ) -> Result<()> {
        let p = RolloutParams {
            step,
            population: population_size as u32,
            ..self.template
        };
        backend.rollout(
            &p,
            &self.shape,
            &self.params,
            &self.norm,
            &self.start,
            population,
            returns,
        )
    }
}

/// Scores action sequences with the environment's true dynamics.
pub struct TrueObjective<B: Backend> {
    start: B::Buf,
    template: RolloutParams,
}

impl<B: Backend> TrueObjective<B> {
    pub fn new(backend: &B, env: crate::env::EnvId, horizon: usize) -> Result<Self> {
        let spec = env.spec();
        Ok(Self {
            start: backend.zeros(spec.state_dim)?,
            template: RolloutParams {
                seed_lo: 0,
                seed_hi: 0,
                step: 0,
                population: 0,
                particles: 1,
                horizon: horizon as u32,
                obs_dim: spec.obs_dim as u32,
                act_dim: spec.act_dim as u32,
                propagation: Propagation::Expectation as u32,
                env: env.code(),
                learn_reward: 0,
                num_elites: 0,
                elites: [0; MAX_ELITES],
            },
        })
    }

    /// The environment's internal state to plan from.
    pub fn set_start(&mut self, backend: &B, state: &[f32]) -> Result<()> {
        backend.write(&mut self.start, state)
    }
}

impl<B: Backend> Objective<B> for TrueObjective<B> {
    fn evaluate(
        &mut self,
        backend: &B,
        population: &B::Buf,
        population_size: usize,
        step: u32,
        returns: &mut B::Buf,
    ) -> Result<()> {
        let p = RolloutParams {
            step,
            population: population_size as u32,
            ..self.template
        };
        backend.rollout_true(&p, &self.start, population, returns)
    }
}

/// Scores action sequences with a MuJoCo task's true dynamics on the CPU (whatever the
/// backend holds the population on), from the state of [`MujocoObjective::set_start`].
#[cfg(feature = "mujoco")]
pub struct MujocoObjective {
    rollouts: crate::env::mujoco::Rollouts,
    horizon: usize,
    start: Vec<f64>,
}

#[cfg(feature = "mujoco")]
impl MujocoObjective {
    pub fn new(task: crate::env::mujoco::MujocoTask, horizon: usize) -> Result<Self> {
        Ok(Self {
            rollouts: crate::env::mujoco::Rollouts::new(task)?,
            horizon,
            start: vec![],
        })
    }

    /// The state to plan from: qpos ++ qvel ([`crate::env::Env::state`] of the task).
    pub fn set_start(&mut self, state: &[f32]) {
        self.start = state.iter().map(|v| f64::from(*v)).collect();
    }
}

#[cfg(feature = "mujoco")]
impl<B: Backend> Objective<B> for MujocoObjective {
    fn evaluate(
        &mut self,
        backend: &B,
        population: &B::Buf,
        population_size: usize,
        _step: u32,
        returns: &mut B::Buf,
    ) -> Result<()> {
        let actions = backend.download(population)?;
        let mut r = vec![0.0f32; population_size];
        self.rollouts
            .returns(&self.start, &actions, self.horizon, &mut r)?;
        backend.write(returns, &r)
    }
}
