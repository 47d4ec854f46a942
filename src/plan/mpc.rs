//! Model-predictive control: plan from the current observation, apply the first action,
//! shift the solution (warm start), repeat.
use super::{ModelObjective, Planner, PlannerConfig, TrueObjective, TsConfig};
use crate::backend::Backend;
use crate::env::EnvId;
use crate::model::Ensemble;
use crate::Result;
use std::time::Instant;

/// What the planner scores candidates with.
pub enum Dynamics<B: Backend> {
    Model(ModelObjective<B>),
    True(TrueObjective<B>),
    /// A MuJoCo task's simulator, on the CPU.
    #[cfg(feature = "mujoco")]
    Mujoco(super::MujocoObjective),
}

pub struct Mpc<B: Backend> {
    pub planner: Planner<B>,
    pub dynamics: Dynamics<B>,
    /// Wall-clock seconds of every `act` call since the last `take_latencies`.
    latencies: Vec<f64>,
}

impl<B: Backend> Mpc<B> {
    /// MPC through a learned ensemble on environment `env`'s reward and termination.
    pub fn with_model(
        backend: &B,
        model: &Ensemble,
        env: EnvId,
        cfg: PlannerConfig,
        ts: TsConfig,
        seed: u64,
    ) -> Result<Self> {
        Self::with_model_task(
            backend,
            model,
            env.code(),
            &env.spec().act_low,
            &env.spec().act_high,
            cfg,
            ts,
            seed,
        )
    }

    /// MPC through a learned ensemble for any task code (see `env::task`) and bounds.
    #[allow(clippy::too_many_arguments)]
    pub fn with_model_task(
        backend: &B,
        model: &Ensemble,
        task: u32,
        lower: &[f32],
        upper: &[f32],
        cfg: PlannerConfig,
        ts: TsConfig,
        seed: u64,
    ) -> Result<Self> {
        if lower.len() != model.config.act_dim {
            return Err(crate::Error::Shape(format!(
                "the model takes {} action dimensions, the task has {}",
                model.config.act_dim,
                lower.len()
            )));
        }
        let objective = ModelObjective::new(backend, model, task, ts, cfg.horizon, seed)?;
        let planner = Planner::new(backend, cfg, lower, upper, seed)?;
        Ok(Self {
            planner,
            dynamics: Dynamics::Model(objective),
            latencies: vec![],
        })
    }

    /// MPC with the environment's own dynamics ("planning with the true simulator").
    pub fn with_true_dynamics(
        backend: &B,
        env: EnvId,
        cfg: PlannerConfig,
        seed: u64,
    ) -> Result<Self> {
        let spec = env.spec();
        let objective = TrueObjective::new(backend, env, cfg.horizon)?;
        let planner = Planner::new(backend, cfg, &spec.act_low, &spec.act_high, seed)?;
        Ok(Self {
            planner,
            dynamics: Dynamics::True(objective),
            latencies: vec![],
        })
    }

    /// MPC with a MuJoCo task's own dynamics (MJPC's predictive sampling with CEM): every
    /// candidate is simulated from the current state (qpos ++ qvel, as `Env::state` gives it).
    #[cfg(feature = "mujoco")]
    pub fn with_mujoco(
        backend: &B,
        task: crate::env::mujoco::MujocoTask,
        cfg: PlannerConfig,
        seed: u64,
    ) -> Result<Self> {
        let spec = task.spec();
        let objective = super::MujocoObjective::new(task, cfg.horizon)?;
        let planner = Planner::new(backend, cfg, &spec.act_low, &spec.act_high, seed)?;
        Ok(Self {
            planner,
            dynamics: Dynamics::Mujoco(objective),
            latencies: vec![],
        })
    }

    /// Swap in a retrained model (same architecture) without losing the planner's warm
    /// start: uploads the new parameters, normaliser and elites.
    pub fn update_model(&mut self, backend: &B, model: &Ensemble) -> Result<()> {
        match &mut self.dynamics {
            Dynamics::Model(o) => o.update_model(backend, model),
            _ => Err(crate::invalid!(
                "this controller plans with the true dynamics; it has no model to update"
            )),
        }
    }

    /// Close the model rollouts with a learned terminal value (see
    /// [`crate::backend::TerminalValue`]); `None` removes it.
    pub fn set_terminal_value(
        &mut self,
        value: Option<crate::backend::TerminalValue>,
    ) -> Result<()> {
        match &mut self.dynamics {
            Dynamics::Model(o) => o.set_terminal_value(value),
            _ => Err(crate::invalid!(
                "a terminal value closes the paths of a learned model; this controller plans \
                 with the true dynamics"
            )),
        }
    }

    /// Start of an episode.
    pub fn reset(&mut self, backend: &B) -> Result<()> {
        self.planner.reset(backend)
    }

    /// One control step from observation `obs` (model) or internal state `state` (true
    /// dynamics). The returned action is finite and inside the bounds.
    pub fn act(&mut self, backend: &B, obs: &[f32], state: &[f32]) -> Result<Vec<f32>> {
        Ok(self.act_until(backend, obs, state, None)?.0)
    }

    /// [`Mpc::act`] that stops planning after the round during which `deadline` passes; also
    /// returns what the planner did (rounds, deadline, fallback).
    pub fn act_until(
        &mut self,
        backend: &B,
        obs: &[f32],
        state: &[f32],
        deadline: Option<Instant>,
    ) -> Result<(Vec<f32>, super::PlanOutcome)> {
        let t0 = Instant::now();
        let out = match &mut self.dynamics {
            Dynamics::Model(o) => {
                o.set_start(backend, obs)?;
                self.planner.plan_until(backend, o, deadline)?
            }
            Dynamics::True(o) => {
                o.set_start(backend, state)?;
                self.planner.plan_until(backend, o, deadline)?
            }
            #[cfg(feature = "mujoco")]
            Dynamics::Mujoco(o) => {
                o.set_start(state);
                self.planner.plan_until(backend, o, deadline)?
            }
        };
        let a = self.planner.act_dim();
        let action = super::safe_action(&out.plan[..a], self.planner.lower(), self.planner.upper());
        self.latencies.push(t0.elapsed().as_secs_f64());
        Ok((action, out))
    }

    pub fn take_latencies(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.latencies)
    }

    /// Model rows (one member evaluation of one row) per `act` call.
    pub fn rows_per_action(&self) -> usize {
        let c = &self.planner.cfg;
        let candidates: usize = (0..c.rounds())
            .map(|i| c.population_at(i) + if i > 0 { c.kept_elites() } else { 0 })
            .sum();
        match &self.dynamics {
            Dynamics::Model(o) => o.rows_per_eval(candidates),
            _ => candidates * c.horizon,
        }
    }
}

/// Median and 99th percentile of a set of latencies, in milliseconds.
pub fn latency_stats(seconds: &[f64]) -> (f64, f64) {
    if seconds.is_empty() {
        return (0.0, 0.0);
    }
    let mut v: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    (q(0.5), q(0.99))
}
