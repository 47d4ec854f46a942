//! Model-free SAC on a native environment: the baseline MBPO is measured against.
//!
//! ```text
//! for every env step:  a ~ π(·|s) (uniform random for the first `learning_starts` steps)
//!                      store (s, a, r, s', terminated) in D
//!                      `updates_per_step` gradient steps on minibatches from D
//! after the episode in which `eval_every` more steps were reached: evaluate, checkpoint
//! ```
//! Truncation (the time limit) is not termination: the critic target bootstraps through it.
use super::offpolicy::{self, episode_seed, evaluate, random_action, Row, Stats, Trainer, Views};
use crate::backend::Backend;
use crate::env::EnvName;
use crate::io::run::RunDir;
use crate::policy::checkpoint as ckpt;
use crate::policy::{Replay, Sac, SacConfig};
use crate::rng::stream;
use crate::{invalid, setting, Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A SAC run; written to `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SacRunConfig {
    pub env: String,
    pub preset: String,
    pub seed: u64,
    /// Environment steps in all.
    pub steps: usize,
    /// Uniformly random actions for this many steps before the policy acts and learns.
    pub learning_starts: usize,
    /// Gradient steps per environment step.
    pub updates_per_step: usize,
    /// Evaluate (and checkpoint) at the end of the episode in which this many more steps
    /// were reached.
    pub eval_every: usize,
    /// Deterministic evaluation episodes per row.
    pub eval_episodes: usize,
    /// Replay buffer capacity (transitions).
    pub replay_capacity: usize,
    pub sac: SacConfig,
}

pub const PRESETS: [&str; 2] = ["default", "quick"];

impl SacRunConfig {
    /// `default`: pranz24 / Stable-Baselines3 settings (2×256, lr 3e-4, batch 256, γ 0.99,
    /// τ 0.005) for 10,000 steps; `quick`: a small network and 2,000 steps, minutes on a
    /// laptop CPU, for trying the pipeline.
    pub fn preset(env: &EnvName, name: &str) -> Result<Self> {
        let mut c = Self {
            env: env.name(),
            preset: name.into(),
            seed: 0,
            steps: 10_000,
            learning_starts: 1_000,
            updates_per_step: 1,
            eval_every: 1_000,
            eval_episodes: 10,
            replay_capacity: 1_000_000,
            sac: SacConfig::default(),
        };
        match name {
            "default" => {}
            "quick" => {
                c.steps = 2_000;
                c.learning_starts = 400;
                c.eval_every = 400;
                c.eval_episodes = 3;
                c.sac.hidden = 64;
                c.sac.batch_size = 64;
                c.sac.lr = 1e-3;
            }
            n => {
                return Err(invalid!(
                    "unknown SAC preset {n:?}; choices: {}",
                    PRESETS.join(", ")
                ))
            }
        }
        Ok(c)
    }

    pub fn env_name(&self) -> Result<EnvName> {
        Ok(EnvName::parse(&self.env)?)
    }

    pub fn validate(&self) -> Result<()> {
        // A Gymnasium environment that cannot be made fails here, before a run directory.
        self.env_name()?.spec()?;
        check_counts(&[
            ("steps", self.steps, 1 << 32),
            ("eval_every", self.eval_every, 1 << 32),
            ("eval_episodes", self.eval_episodes, 1 << 16),
            ("replay_capacity", self.replay_capacity, 1 << 28),
        ])?;
        if self.updates_per_step > 1 << 12 {
            return Err(setting!(
                "updates_per_step",
                "is {}; at most 4096 is supported",
                self.updates_per_step
            ));
        }
        self.sac.validate().map_err(|e| e.in_section("sac"))
    }
}

/// Each (key, value, cap): value in 1..=cap.
pub(crate) fn check_counts(v: &[(&str, usize, usize)]) -> Result<()> {
    for (k, value, cap) in v {
        if *value == 0 || value > cap {
            return Err(setting!(*k, "is {value}; it must be between 1 and {cap}"));
        }
    }
    Ok(())
}

/// The loop's counters, saved in the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Counters {
    env_steps: usize,
    episodes: u64,
    next_eval: usize,
}

const FORMAT: &str = "mbrl-gpu/sac-run/1";

pub use super::offpolicy::Event;

/// Run SAC; with a run directory, every row is checkpointed there and a directory holding a
/// checkpoint is continued from it (ending as an uninterrupted run would).
pub fn run<B: Backend>(
    backend: &B,
    cfg: &SacRunConfig,
    out: Option<&RunDir>,
    mut progress: impl FnMut(Event),
) -> Result<(Sac, Vec<Row>)> {
    cfg.validate()?;
    let env_name = cfg.env_name()?;
    let mut env = env_name.open(1)?;
    let mut eval_env = env_name.open(1)?;
    let spec = env.spec().clone();
    let mut agent = Sac::new(
        cfg.sac.clone(),
        spec.obs_dim,
        &spec.act_low,
        &spec.act_high,
        cfg.seed,
    )?;
    let mut replay = Replay::new(spec.obs_dim, spec.act_dim, cfg.replay_capacity);
    let mut rows: Vec<Row> = vec![];
    let mut c = Counters {
        next_eval: cfg.eval_every,
        ..Counters::default()
    };
    if let Some(dir) = out {
        // `steps` may grow on resume.
        let same = |a: &SacRunConfig, b: &SacRunConfig| {
            let mut a = a.clone();
            a.steps = b.steps;
            &a == b
        };
        if let Some(l) =
            offpolicy::load::<_, Counters>(dir, FORMAT, cfg, same, &["agent", "replay"])?
        {
            agent = l.parse(dir, "agent", ckpt::agent_from_bytes)?;
            replay = l.parse(dir, "replay", |b| {
                ckpt::replay_from_bytes(b, spec.obs_dim, spec.act_dim)
            })?;
            let ok = agent.nets.obs_dim == spec.obs_dim
                && agent.cfg == cfg.sac
                && replay.written() == l.state.env_steps;
            if !ok {
                return Err(invalid!(
                    "{}: the checkpoint's agent, replay buffer and counters do not agree",
                    dir.path().display()
                ));
            }
            c = l.state;
            rows = l.rows;
            offpolicy::write_views(dir, &rows, &views(&agent)?)?;
            progress(Event::Resumed {
                env_steps: c.env_steps,
            });
        }
    }
    let mut stats = Stats::default();
    let mut trainer = Trainer::new(backend, &agent)?;
    let mut t0 = Instant::now();
    while c.env_steps < cfg.steps {
        let mut obs = env.reset(&[episode_seed(cfg.seed, c.episodes)])?;
        loop {
            let step = c.env_steps as u32;
            let action = if c.env_steps < cfg.learning_starts {
                random_action(cfg.seed, &spec.act_low, &spec.act_high, step)
            } else {
                trainer.refresh_actor(&mut agent)?;
                agent.act(&obs, 1, Some(step))
            };
            let tr = env.step(&action)?.remove(0);
            replay.push(&obs, &action, tr.reward, &tr.obs, tr.terminated);
            c.env_steps += 1;
            if c.env_steps >= cfg.learning_starts {
                for _ in 0..cfg.updates_per_step {
                    let draw = (cfg.seed, stream::REPLAY, agent.updates as u32);
                    let rows = cfg.sac.batch_size;
                    trainer.update_from(&mut agent, 0, &replay, draw, rows, &mut stats)?;
                }
            }
            progress(Event::Step {
                env_steps: c.env_steps,
            });
            obs = tr.obs;
            if tr.terminated || tr.truncated || c.env_steps >= cfg.steps {
                break;
            }
        }
        c.episodes += 1;
        if c.env_steps >= c.next_eval || c.env_steps >= cfg.steps {
            while c.next_eval <= c.env_steps {
                c.next_eval += cfg.eval_every;
            }
            trainer.sync(&mut agent, &mut stats)?;
            let ret = evaluate(&mut agent, &mut *eval_env, cfg.eval_episodes, cfg.seed)?;
            let mut row = stats.take_row(c.env_steps, ret, agent.updates);
            row.seconds = t0.elapsed().as_secs_f64();
            t0 = Instant::now();
            progress(Event::Row(&row));
            rows.push(row);
            if let Some(dir) = out {
                let files = vec![
                    ("agent", ckpt::agent_bytes(&agent)?),
                    ("replay", ckpt::replay_bytes(&replay)?),
                ];
                offpolicy::commit(dir, FORMAT, cfg, &c, files, &rows, &views(&agent)?)?;
            }
        }
    }
    Ok((agent, rows))
}

/// One gradient step; a refused (non-finite) step is counted and the run goes on with the
/// last good parameters. A run whose every step is refused stops: nothing is learning.
pub(crate) fn update(
    agent: &mut Sac,
    batch: &crate::policy::sac::Batch<f32>,
    stats: &mut Stats,
) -> Result<()> {
    let result = agent.update(batch);
    record(agent, result, stats)
}

/// Count a gradient step's outcome into `stats` (see [`update`]).
pub(crate) fn record(
    agent: &mut Sac,
    result: Result<crate::policy::sac::UpdateStats>,
    stats: &mut Stats,
) -> Result<()> {
    match result {
        Ok(s) => {
            stats.add(&s);
            Ok(())
        }
        Err(Error::Diverged(msg)) => {
            stats.diverged += 1;
            // Skip this draw next time rather than retrying the same minibatch forever.
            agent.updates += 1;
            if stats.diverged >= 1000 {
                return Err(Error::Diverged(format!(
                    "{} SAC updates since the last evaluation were refused as non-finite; the last: {msg}",
                    stats.diverged
                )));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn views(agent: &Sac) -> Result<Views> {
    Ok(Views {
        policy: ckpt::policy_bytes(agent)?,
        critic: Some(ckpt::critic_bytes(agent)?),
        model: None,
        title: "SAC learning curve",
    })
}
