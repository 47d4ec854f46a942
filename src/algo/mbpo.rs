//! MBPO (Janner et al. 2019), Algorithm 2 of the lecture's MBPO slides, with mbrl-lib
//! 0.2.0's knobs and loop structure (`mbrl/algorithms/mbpo.py`):
//!
//! ```text
//! D_env ← `initial_exploration_steps` steps (random actions or the initial policy)
//! for each epoch (`epoch_length` env steps, the environment reset at its start):
//!     k ← truncated_linear(rollout_schedule, epoch + 1); resize D_model to
//!         k · rollouts_per_step · freq_train_model · ⌈epoch_length / freq⌉ · retain
//!     for each env step:
//!         act with π in the environment, add the transition to D_env
//!         every `freq_train_model` steps: train the ensemble on D_env (holdout, elites);
//!             branch `effective_model_rollouts_per_step · freq_train_model` rollouts of
//!             length k from states of D_env into D_model
//!         `num_sac_updates_per_step` SAC steps, each on D_env with probability
//!             `real_data_ratio`, else on D_model
//!     evaluate the mean action; checkpoint
//! ```
//!
//! The branched rollout (policy sample → random elite member per row and step (TS1) →
//! Gaussian sample of Δs and r → termination → D_model, terminated rows stopped):
//! [`branched_rollout`] is its specification, which the CPU backend runs; on a device the
//! same draws and expressions run there ([`crate::policy::device::DeviceSac::branch`]),
//! from the device's mirror of D_env into its mirror of D_model, with the actor SAC trains
//! there, and D_model is read back once per rollout for the host's copy.
//!
//! Every env step counts, the initial exploration included: `steps` is the number of real
//! transitions the run may collect.
use super::offpolicy::{
    self, episode_seed, evaluate, random_action, transitions, Row, Stats, Trainer, Views,
};
use super::sac::{check_counts, record};
use crate::backend::{Backend, EnsembleShape};
use crate::env::{task, EnvId, EnvName};
use crate::io::run::RunDir;
use crate::model::{train::train, Ensemble, ModelConfig, TrainConfig};
use crate::policy::checkpoint as ckpt;
use crate::policy::device::BranchSpec;
use crate::policy::path::{path_loss, ModelPath, PathNoise, PathSettings, PathWorkspace};
use crate::policy::sac::Batch;
use crate::policy::{Replay, Sac, SacConfig};
use crate::rng::{below, normals, stream, uniform};
use crate::{invalid, io, setting, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// An MBPO run; written to `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MbpoConfig {
    pub env: String,
    pub preset: String,
    pub seed: u64,
    /// Real environment steps in all, the initial exploration included.
    pub steps: usize,
    /// Env steps per epoch; the environment is reset and the policy evaluated at each
    /// epoch's end.
    pub epoch_length: usize,
    pub initial_exploration_steps: usize,
    /// Explore initially with uniform random actions (else with the initial policy's samples).
    pub random_initial_explore: bool,
    /// Retrain the model and branch new rollouts every this many env steps.
    pub freq_train_model: usize,
    pub effective_model_rollouts_per_step: usize,
    /// [start epoch, end epoch, min length, max length]: k grows linearly between them.
    pub rollout_schedule: [usize; 4],
    pub num_sac_updates_per_step: usize,
    pub sac_updates_every_steps: usize,
    pub num_epochs_to_retain_sac_buffer: usize,
    /// Probability that a SAC step reads D_env rather than D_model.
    pub real_data_ratio: f32,
    /// Model rollouts sample the policy (true in mbrl-lib) rather than take its mean.
    pub sac_samples_action: bool,
    /// Environment steps take policy samples; false takes the mean action, as mbrl-lib's
    /// MBPO loop does (its exploration comes from the model rollouts' samples).
    pub explore_with_samples: bool,
    /// Deterministic evaluation episodes per epoch.
    pub eval_episodes: usize,
    /// Capacity of D_env.
    pub replay_capacity: usize,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub sac: SacConfig,
    /// MAAC: the actor learns from path gradients through the model instead of SAC's
    /// one-step gradient (`mbrl-gpu maac`); absent in MBPO runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maac: Option<MaacSettings>,
}

/// What MAAC (Clavera et al. 2020, Algorithm 1 of the seeds' MAAC slide) changes in MBPO's
/// loop: each actor step maximises the soft H-step model return plus γ^H·Q at the horizon
/// ([`crate::policy::path`]), from the start states of the step's minibatch (drawn from
/// D_env ∪ D_model with `real_data_ratio`, the mixing ratio); the critics and the
/// temperature (the entropy weight: `sac.alpha`, learned unless
/// `sac.automatic_entropy_tuning = false`) learn as in SAC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaacSettings {
    /// Model steps H of the path objective; 0 is SAC's actor gradient.
    pub horizon: usize,
}

pub const PRESETS: [&str; 3] = ["cartpole", "pendulum", "quick"];

impl MbpoConfig {
    /// `cartpole`: mbrl-lib 0.2.0's `mbpo_cartpole` (and its `gaussian_mlp_ensemble` model),
    /// except that the initial exploration is 200 random steps instead of 5,000 policy
    /// steps, so that learning happens within the 2,000 steps the issue asks for.
    /// `pendulum`: the same for Pendulum-v1 with sampled actions in the environment and a
    /// tenth of the SAC minibatches from real data, tuned here. `quick`: small networks,
    /// minutes.
    pub fn preset(env: &EnvName, name: &str) -> Result<Self> {
        let spec = env.spec()?;
        let mut model = ModelConfig::pets(spec.obs_dim, spec.act_dim);
        model.learn_reward = true;
        let train = TrainConfig {
            epochs: 200,
            min_steps: 0,
            batch_size: 256,
            lr: 1e-3,
            weight_decay: vec![5e-5],
            logvar_penalty: 0.01,
            holdout_ratio: 0.2,
            patience: Some(5),
            improvement_threshold: 0.01,
            bootstrap: true,
            seed: 0,
            precision: Default::default(),
        };
        let sac = SacConfig {
            target_update_interval: 4,
            target_entropy: Some(-0.05),
            ..SacConfig::default()
        };
        let mut c = Self {
            env: env.name(),
            preset: name.into(),
            seed: 0,
            steps: 2_000,
            epoch_length: 200,
            initial_exploration_steps: 200,
            random_initial_explore: true,
            freq_train_model: 200,
            effective_model_rollouts_per_step: 400,
            rollout_schedule: [1, 15, 1, 1],
            num_sac_updates_per_step: 20,
            sac_updates_every_steps: 1,
            num_epochs_to_retain_sac_buffer: 1,
            real_data_ratio: 0.0,
            sac_samples_action: true,
            explore_with_samples: false,
            eval_episodes: 10,
            replay_capacity: 1_000_000,
            model,
            train,
            sac,
            maac: None,
        };
        match (name, env.task_env()) {
            ("cartpole", Some(EnvId::CartPole)) => {}
            ("pendulum", Some(EnvId::Pendulum)) => {
                // Tuned here (seed 0, 3,000 steps): with mbrl-lib's mean-action exploration
                // and model data only, the pendulum never swings up (−1,500 at 3,000 steps);
                // sampled actions reach −210, and a tenth of real data −186.
                c.steps = 3_000;
                c.explore_with_samples = true;
                c.real_data_ratio = 0.1;
                c.sac.target_entropy = None;
            }
            ("quick", _) => {
                c.model.ensemble_size = 5;
                c.model.num_elites = 3;
                c.model.hidden = 64;
                c.model.num_layers = 3;
                c.effective_model_rollouts_per_step = 50;
                c.num_sac_updates_per_step = 10;
                // Tuned on the cart-pole (seed 0): 64-wide networks at lr 1e-3 or target
                // entropy −1 never balance it within 1,400 steps; these reach 195 at 1,000.
                c.sac.hidden = 128;
                c.sac.batch_size = 128;
                c.eval_episodes = 3;
            }
            (n, _) if PRESETS.contains(&n) => {
                let own = env.task_env().map(EnvId::name);
                return Err(invalid!(
                    "preset {n:?} is for the {n} environment, not {env}; use `quick`{}",
                    match own {
                        Some(own) if PRESETS.contains(&own) => format!(" or `{own}`"),
                        _ => String::new(),
                    }
                ));
            }
            (n, _) if MUJOCO_OVERRIDES.iter().any(|m| m.task == n) => {
                let o = MUJOCO_OVERRIDES
                    .iter()
                    .find(|m| m.task == n)
                    .expect("matched above");
                if env.mujoco().map(|t| o.mujoco_task() == t) != Some(true) {
                    return Err(invalid!(
                        "preset {n:?} (mbrl-lib's mbpo_{n}) is for the {} task, not {env}",
                        o.mujoco_task().name()
                    ));
                }
                c.apply(o);
            }
            (n, _) => {
                let mujoco: Vec<&str> = MUJOCO_OVERRIDES.iter().map(|m| m.task).collect();
                return Err(invalid!(
                    "unknown MBPO preset {n:?}; choices: {}, and on the MuJoCo tasks {}",
                    PRESETS.join(", "),
                    mujoco.join(", ")
                ));
            }
        }
        Ok(c)
    }

    /// MAAC's presets: MBPO's of the same name with the path objective of `horizon` 3.
    pub fn maac_preset(env: &EnvName, name: &str) -> Result<Self> {
        let mut c = Self::preset(env, name)?;
        c.maac = Some(MaacSettings { horizon: 3 });
        Ok(c)
    }

    pub fn env_name(&self) -> Result<EnvName> {
        Ok(EnvName::parse(&self.env)?)
    }

    pub fn validate(&self) -> Result<()> {
        let env = self.env_name()?;
        check_counts(&[
            ("steps", self.steps, 1 << 32),
            ("epoch_length", self.epoch_length, 1 << 24),
            ("freq_train_model", self.freq_train_model, 1 << 24),
            (
                "effective_model_rollouts_per_step",
                self.effective_model_rollouts_per_step,
                1 << 16,
            ),
            (
                "sac_updates_every_steps",
                self.sac_updates_every_steps,
                1 << 16,
            ),
            (
                "num_epochs_to_retain_sac_buffer",
                self.num_epochs_to_retain_sac_buffer,
                1 << 10,
            ),
            ("eval_episodes", self.eval_episodes, 1 << 16),
            ("replay_capacity", self.replay_capacity, 1 << 28),
        ])?;
        if self.num_sac_updates_per_step > 1 << 12 {
            return Err(setting!(
                "num_sac_updates_per_step",
                "is {}; at most 4096 is supported",
                self.num_sac_updates_per_step
            ));
        }
        let [e0, e1, k0, k1] = self.rollout_schedule;
        if k0 == 0 || k1 == 0 || k0.max(k1) > 1000 || e0 > e1 {
            return Err(setting!(
                "rollout_schedule",
                "is {:?}; it must be [start epoch, end epoch ≥ start, min length ≥ 1, max \
                 length ≥ 1], lengths at most 1000",
                self.rollout_schedule
            ));
        }
        if !(0.0..=1.0).contains(&self.real_data_ratio) {
            return Err(setting!(
                "real_data_ratio",
                "must be in [0, 1], got {}",
                self.real_data_ratio
            ));
        }
        // D_model's largest size, and the rows one rollout step moves.
        let rows = self.rollout_batch();
        let cap = self.model_buffer_capacity(k0.max(k1));
        if rows > 1 << 24 || cap > 1 << 28 {
            return Err(setting!(
                "effective_model_rollouts_per_step",
                "gives {rows} rollouts per model training and a model buffer of {cap} \
                 transitions; at most 2^24 and 2^28 are supported"
            ));
        }
        self.model.check_env(&env)?;
        if let Some(m) = &self.maac {
            if m.horizon > 100 {
                return Err(setting!(
                    "maac.horizon",
                    "is {}; at most 100 model steps are supported (Lemma 4.1: the gradient's \
                     error grows with H; MAAC uses a few)",
                    m.horizon
                ));
            }
            // The backward keeps every step's layer inputs and activation derivatives.
            let per_row = 2
                * (self.sac.hidden * self.sac.num_layers
                    + self.model.hidden * self.model.num_layers);
            let bytes = 4 * self.sac.batch_size * (m.horizon + 1) * per_row;
            if bytes > 8 << 30 {
                return Err(setting!(
                    "maac.horizon",
                    "is {}: with sac.batch_size {} and these network widths the path backward \
                     would keep {:.1} GiB of activations; at most 8 GiB is supported",
                    m.horizon,
                    self.sac.batch_size,
                    bytes as f64 / (1u64 << 30) as f64
                ));
            }
        }
        self.model.validate().map_err(|e| e.in_section("model"))?;
        self.train.validate().map_err(|e| e.in_section("train"))?;
        crate::limits::check_model(&self.model, self.train.batch_size)?;
        self.sac.validate().map_err(|e| e.in_section("sac"))
    }

    /// Branched rollouts per model training.
    pub fn rollout_batch(&self) -> usize {
        self.effective_model_rollouts_per_step * self.freq_train_model
    }

    fn model_buffer_capacity(&self, k: usize) -> usize {
        let trains_per_epoch = self.epoch_length.div_ceil(self.freq_train_model);
        k * self.rollout_batch() * trains_per_epoch * self.num_epochs_to_retain_sac_buffer
    }

    /// mbrl-lib's `truncated_linear(*rollout_schedule, epoch + 1)`.
    pub fn rollout_length(&self, epoch: usize) -> usize {
        let [x0, x1, y0, y1] = self.rollout_schedule.map(|v| v as f64);
        let x = (epoch + 1) as f64;
        let y = if x1 - x0 < 1e-10 {
            y1
        } else if x <= x0 {
            y0
        } else {
            y0 + ((x - x0) / (x1 - x0)).min(1.0) * (y1 - y0)
        };
        y as usize
    }
}

/// mbrl-lib 0.2.0's `mbpo_*` overrides for the MuJoCo tasks, the MBPO presets of the native
/// MuJoCo tasks (`exp/conf/overrides/mbpo_{halfcheetah,hopper,walker,ant,inv_pendulum}.yaml`). Every one uses model batch 256, validation ratio 0.2, 400 rollouts
/// per step, one SAC update every step, one epoch of SAC buffer, γ 0.99, τ 0.005, α 0.2,
/// SAC batch 256, with the 7 × 4×200 SiLU ensemble and 5 elites.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MujocoOverrides {
    pub task: &'static str,
    /// Gymnasium id mbrl-lib names (v2/v4 there; this crate will run v5).
    pub gym_id: &'static str,
    pub num_steps: usize,
    pub epoch_length: usize,
    pub patience: usize,
    pub model_lr: f32,
    pub model_wd: f32,
    pub freq_train_model: usize,
    pub rollout_schedule: [usize; 4],
    pub num_sac_updates_per_step: usize,
    pub sac_target_update_interval: usize,
    pub sac_automatic_entropy_tuning: bool,
    pub sac_target_entropy: f32,
    pub sac_hidden_size: usize,
    pub sac_lr: f32,
}

/// The preset `mbpo`/`maac` start from when none is named: the environment's own (mbrl-lib's
/// `mbpo_*` for the MuJoCo tasks), else `quick`.
pub fn default_preset(env: &EnvName) -> String {
    if let Some(t) = env.mujoco() {
        if let Some(o) = MUJOCO_OVERRIDES.iter().find(|o| o.mujoco_task() == t) {
            return o.task.into();
        }
    }
    match env.task_env().map(EnvId::name) {
        Some(n) if PRESETS.contains(&n) => n.into(),
        _ => "quick".into(),
    }
}

impl MujocoOverrides {
    /// The native task the override is for.
    pub fn mujoco_task(&self) -> crate::env::mujoco::MujocoTask {
        use crate::env::mujoco::MujocoTask as T;
        match self.task {
            "halfcheetah" => T::HalfCheetah,
            "hopper" => T::Hopper,
            "walker" => T::Walker2d,
            "ant" => T::Ant,
            _ => T::InvertedPendulum,
        }
    }
}

impl MbpoConfig {
    /// mbrl-lib's `mbpo_*` values over its MBPO defaults (5,000 steps of policy exploration,
    /// no real data in the SAC batches, learned rewards; the termination functions of
    /// [`crate::env::task`]).
    fn apply(&mut self, o: &MujocoOverrides) {
        self.steps = o.num_steps;
        self.epoch_length = o.epoch_length;
        self.initial_exploration_steps = 5000;
        self.random_initial_explore = false;
        self.freq_train_model = o.freq_train_model;
        self.effective_model_rollouts_per_step = 400;
        self.rollout_schedule = o.rollout_schedule;
        self.num_sac_updates_per_step = o.num_sac_updates_per_step;
        self.real_data_ratio = 0.0;
        self.train.lr = o.model_lr;
        self.train.weight_decay = vec![o.model_wd];
        self.train.patience = Some(o.patience);
        self.sac.target_update_interval = o.sac_target_update_interval;
        self.sac.automatic_entropy_tuning = o.sac_automatic_entropy_tuning;
        self.sac.target_entropy = Some(o.sac_target_entropy);
        self.sac.hidden = o.sac_hidden_size;
        self.sac.lr = o.sac_lr;
    }
}

pub const MUJOCO_OVERRIDES: [MujocoOverrides; 5] = [
    MujocoOverrides {
        task: "halfcheetah",
        gym_id: "HalfCheetah-v2",
        num_steps: 400_000,
        epoch_length: 1000,
        patience: 5,
        model_lr: 1e-3,
        model_wd: 1e-5,
        freq_train_model: 250,
        rollout_schedule: [20, 150, 1, 1],
        num_sac_updates_per_step: 10,
        sac_target_update_interval: 1,
        sac_automatic_entropy_tuning: true,
        sac_target_entropy: -1.0,
        sac_hidden_size: 512,
        sac_lr: 3e-4,
    },
    MujocoOverrides {
        task: "hopper",
        gym_id: "Hopper-v4",
        num_steps: 125_000,
        epoch_length: 1000,
        patience: 5,
        model_lr: 1e-3,
        model_wd: 1e-5,
        freq_train_model: 250,
        rollout_schedule: [20, 150, 1, 15],
        num_sac_updates_per_step: 40,
        sac_target_update_interval: 4,
        sac_automatic_entropy_tuning: false,
        sac_target_entropy: 1.0,
        sac_hidden_size: 512,
        sac_lr: 3e-4,
    },
    MujocoOverrides {
        task: "walker",
        gym_id: "Walker2d-v4",
        num_steps: 300_000,
        epoch_length: 1000,
        patience: 10,
        model_lr: 1e-3,
        model_wd: 1e-5,
        freq_train_model: 250,
        rollout_schedule: [20, 150, 1, 1],
        num_sac_updates_per_step: 20,
        sac_target_update_interval: 4,
        sac_automatic_entropy_tuning: false,
        sac_target_entropy: -1.0,
        sac_hidden_size: 1024,
        sac_lr: 1e-4,
    },
    MujocoOverrides {
        task: "ant",
        gym_id: "Ant-v2 (truncated observation)",
        num_steps: 300_000,
        epoch_length: 1000,
        patience: 10,
        model_lr: 3e-4,
        model_wd: 5e-5,
        freq_train_model: 250,
        rollout_schedule: [20, 100, 1, 25],
        num_sac_updates_per_step: 20,
        sac_target_update_interval: 4,
        sac_automatic_entropy_tuning: false,
        sac_target_entropy: -1.0,
        sac_hidden_size: 1024,
        sac_lr: 1e-4,
    },
    MujocoOverrides {
        task: "inv_pendulum",
        gym_id: "InvertedPendulum-v4",
        num_steps: 20_000,
        epoch_length: 250,
        patience: 5,
        model_lr: 1e-3,
        model_wd: 1e-5,
        freq_train_model: 250,
        rollout_schedule: [1, 15, 1, 1],
        num_sac_updates_per_step: 10,
        sac_target_update_interval: 1,
        sac_automatic_entropy_tuning: true,
        sac_target_entropy: -1.0,
        sac_hidden_size: 256,
        sac_lr: 3e-4,
    },
];

/// The loop's counters, saved in the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Counters {
    /// Real transitions collected (exploration included).
    env_steps: usize,
    /// Steps since the initial exploration ended (mbrl-lib's `env_steps`).
    loop_steps: usize,
    epoch: usize,
    episodes: u64,
    trainings: u64,
    #[serde(with = "offpolicy::nan_as_null")]
    model_loss: f64,
}

const FORMAT: &str = "mbrl-gpu/mbpo-run/1";

pub use super::offpolicy::Event;

/// The elite members alone, as an ensemble of `num_elites` members.
pub fn elite_view(model: &Ensemble) -> (EnsembleShape, Vec<f32>) {
    let full = model.shape();
    let lay = full.layout();
    let shape = EnsembleShape {
        ensemble: model.elites.len(),
        ..full
    };
    let el = shape.layout();
    let mut p = vec![0.0f32; el.total];
    for (src, dst) in lay.layers.iter().zip(&el.layers) {
        let (w, b) = (src.fan_in * src.fan_out, src.fan_out);
        for (i, &m) in model.elites.iter().enumerate() {
            p[dst.weight + i * w..][..w].copy_from_slice(&model.params[src.weight + m * w..][..w]);
            p[dst.bias + i * b..][..b].copy_from_slice(&model.params[src.bias + m * b..][..b]);
        }
    }
    if full.probabilistic {
        let d = full.out_dim;
        p[el.max_logvar..][..d].copy_from_slice(&model.params[lay.max_logvar..][..d]);
        p[el.min_logvar..][..d].copy_from_slice(&model.params[lay.min_logvar..][..d]);
    }
    (shape, p)
}

/// Branch `rows` rollouts of length `k` from start states drawn from `env_data` into
/// `out`; returns the transitions added. Randomness: start states from stream MBPO_START,
/// policy noise from MBPO_ROLLOUT, the member of row r at step t from MBPO_MEMBER and the
/// model noise from MBPO_NOISE, all at step `batch·1024 + t`.
#[allow(clippy::too_many_arguments)]
pub fn branched_rollout<B: Backend>(
    backend: &B,
    cfg: &MbpoConfig,
    agent: &mut Sac,
    model: &Ensemble,
    env_data: &Replay,
    batch: u32,
    k: usize,
    out: &mut Replay,
) -> Result<usize> {
    let code = cfg.env_name()?.task_code();
    let (o, a) = (env_data.obs_dim, env_data.act_dim);
    let rows = cfg.rollout_batch();
    let seed = cfg.seed;
    let mut obs = env_data.sample_obs(seed, stream::MBPO_START, batch, rows);
    let rows = obs.len() / o;
    let (shape, params) = elite_view(model);
    let ne = shape.ensemble;
    let d = shape.out_dim;
    let params = backend.upload(&params)?;
    let norm = backend.upload(&model.norm())?;
    let mut alive = vec![true; rows];
    let mut added = 0;
    for t in 0..k {
        let step = batch.wrapping_mul(1024).wrapping_add(t as u32);
        let act = if cfg.sac_samples_action {
            agent.act_with(&obs, rows, Some((stream::MBPO_ROLLOUT, step)))
        } else {
            agent.act_with(&obs, rows, None)
        };
        // Rows grouped by their member: member m's rows fill slot m of x [ne, per, in].
        let member: Vec<usize> = (0..rows)
            .map(|r| below(seed, stream::MBPO_MEMBER, r as u32, step, ne as u32) as usize)
            .collect();
        let mut count = vec![0usize; ne];
        let mut pos = vec![0usize; rows];
        for r in 0..rows {
            pos[r] = count[member[r]];
            count[member[r]] += 1;
        }
        let per = count.iter().copied().max().unwrap_or(0).max(1);
        let din = o + a;
        let mut x = vec![0.0f32; ne * per * din];
        for r in 0..rows {
            let dst = &mut x[(member[r] * per + pos[r]) * din..][..din];
            dst[..o].copy_from_slice(&obs[r * o..(r + 1) * o]);
            dst[o..].copy_from_slice(&act[r * a..(r + 1) * a]);
        }
        let xb = backend.upload(&x)?;
        let mut mean_b = backend.zeros(ne * per * d)?;
        let mut lv_b = backend.zeros(ne * per * d)?;
        backend.ensemble_forward(&shape, &params, &norm, &xb, per, &mut mean_b, &mut lv_b)?;
        let (mean, lv) = (backend.download(&mean_b)?, backend.download(&lv_b)?);
        let mut noise = vec![0.0f32; rows * d];
        normals(seed, stream::MBPO_NOISE, 0, step, &mut noise);
        let mut next = vec![0.0f32; rows * o];
        for r in 0..rows {
            let i = (member[r] * per + pos[r]) * d;
            let sample = |j: usize| mean[i + j] + (0.5 * lv[i + j]).exp() * noise[r * d + j];
            for j in 0..o {
                next[r * o + j] = obs[r * o + j] + sample(j);
            }
            if !alive[r] {
                continue;
            }
            let s = &obs[r * o..(r + 1) * o];
            let ac = &act[r * a..(r + 1) * a];
            let nx = &next[r * o..(r + 1) * o];
            let reward = if cfg.model.learn_reward {
                sample(o)
            } else {
                task::reward(code, s, ac, nx)
            };
            // A row whose prediction left the finite numbers stops here, unrecorded: the
            // SAC buffers never hold a NaN.
            if !(reward.is_finite() && nx.iter().all(|v| v.is_finite())) {
                alive[r] = false;
                continue;
            }
            let term = task::terminated(code, nx);
            out.push(s, ac, reward, nx, term);
            added += 1;
            if term {
                alive[r] = false;
            }
        }
        obs = next;
        for (r, v) in obs.chunks_exact_mut(o).enumerate() {
            if !alive[r] {
                // Keeps dead rows' values finite; they are never recorded again.
                v.iter_mut().for_each(|x| *x = 0.0);
            }
        }
    }
    Ok(added)
}

/// The elite members as MAAC's path dynamics read them.
struct PathModelView {
    shape: EnsembleShape,
    params: Vec<f32>,
    mean: Vec<f32>,
    std: Vec<f32>,
    obs_dim: usize,
    learn_reward: bool,
}

impl PathModelView {
    fn new(model: &Ensemble) -> Self {
        let (shape, params) = elite_view(model);
        Self {
            shape,
            params,
            mean: model.input_mean.clone(),
            std: model.input_std.clone(),
            obs_dim: model.config.obs_dim,
            learn_reward: model.config.learn_reward,
        }
    }
}

/// One MAAC gradient step: SAC's critic and temperature steps, the actor's from the path
/// objective of horizon `h` started at the minibatch's states. Noise: stream MAAC_PATH and
/// MAAC_MEMBER at step = update index.
fn path_update(
    agent: &mut Sac,
    view: &PathModelView,
    h: usize,
    task: u32,
    batch: &Batch<f32>,
    ws: &mut PathWorkspace<f32>,
    stats: &mut Stats,
) -> Result<()> {
    let noise = PathNoise::draw(
        agent.seed,
        agent.updates as u32,
        h,
        batch.rows,
        agent.nets.act_dim,
        view.shape.out_dim,
        view.shape.ensemble,
    );
    let gamma = agent.cfg.gamma;
    let result = agent.update_with(batch, |x, grad| {
        let mut dynamics = ModelPath::new(
            view.shape,
            &view.params,
            &view.mean,
            &view.std,
            view.obs_dim,
            view.learn_reward,
            &noise.member,
            &noise.xi,
        );
        let set = PathSettings::plain(gamma, x.alpha, task, true);
        let rep = path_loss(
            x.nets,
            x.actor,
            x.critic,
            x.squash,
            &mut dynamics,
            set,
            &batch.obs,
            &noise,
            Some(grad),
            ws,
        );
        (rep.loss, rep.logp_mean)
    });
    record(agent, result, stats)
}

/// Run MBPO; with a run directory, every epoch is checkpointed there and a directory
/// holding a checkpoint is continued from it.
pub fn run<B: Backend>(
    backend: &B,
    cfg: &MbpoConfig,
    out: Option<&RunDir>,
    mut progress: impl FnMut(Event),
) -> Result<(Sac, Vec<Row>)> {
    cfg.validate()?;
    cfg.train
        .check_backend(backend.name())
        .map_err(|e| e.in_section("train"))?;
    let env_name = cfg.env_name()?;
    let mut env = env_name.open(1)?;
    let mut eval_env = env_name.open(1)?;
    let spec = env.spec().clone();
    let (od, ad) = (spec.obs_dim, spec.act_dim);
    let mut agent = Sac::new(cfg.sac.clone(), od, &spec.act_low, &spec.act_high, cfg.seed)?;
    let mut model = Ensemble::new(cfg.model.clone(), cfg.seed)?;
    let mut env_data = Replay::new(od, ad, cfg.replay_capacity);
    let mut model_data = Replay::new(od, ad, 1);
    let mut rows: Vec<Row> = vec![];
    let mut c = Counters {
        model_loss: f64::NAN,
        ..Counters::default()
    };
    let mut resumed = false;
    if let Some(dir) = out {
        let same = |a: &MbpoConfig, b: &MbpoConfig| {
            let mut a = a.clone();
            a.steps = b.steps;
            &a == b
        };
        let roles = ["agent", "env_data", "model", "model_data"];
        if let Some(l) = offpolicy::load::<_, Counters>(dir, FORMAT, cfg, same, &roles)? {
            agent = l.parse(dir, "agent", ckpt::agent_from_bytes)?;
            env_data = l.parse(dir, "env_data", |b| ckpt::replay_from_bytes(b, od, ad))?;
            model_data = l.parse(dir, "model_data", |b| ckpt::replay_from_bytes(b, od, ad))?;
            model = l.parse(dir, "model", io::checkpoint::from_bytes)?;
            let ok = agent.cfg == cfg.sac
                && model.config == cfg.model
                && env_data.written() == l.state.env_steps;
            if !ok {
                return Err(invalid!(
                    "{}: the checkpoint's agent, model, buffers and counters do not agree",
                    dir.path().display()
                ));
            }
            c = l.state;
            rows = l.rows;
            offpolicy::write_views(dir, &rows, &views(&agent, &model, cfg.maac.is_some())?)?;
            resumed = true;
            progress(Event::Resumed {
                env_steps: c.env_steps,
            });
        }
    }
    let mut t0 = Instant::now();
    if !resumed {
        // Initial exploration, over as many episodes as it takes.
        let mut obs = env.reset(&[episode_seed(cfg.seed, c.episodes)])?;
        while c.env_steps < cfg.initial_exploration_steps.min(cfg.steps) {
            let step = c.env_steps as u32;
            let action = if cfg.random_initial_explore {
                random_action(cfg.seed, &spec.act_low, &spec.act_high, step)
            } else {
                agent.act(&obs, 1, Some(step))
            };
            let tr = env.step(&action)?.remove(0);
            env_data.push(&obs, &action, tr.reward, &tr.obs, tr.terminated);
            c.env_steps += 1;
            obs = tr.obs;
            progress(Event::Step {
                env_steps: c.env_steps,
            });
            if tr.terminated || tr.truncated {
                c.episodes += 1;
                obs = env.reset(&[episode_seed(cfg.seed, c.episodes)])?;
            }
        }
        c.episodes += 1;
    }
    let mut stats = Stats::default();
    let mut trainer = Trainer::new(backend, &agent)?;
    // MAAC's copy of the elites (the host's, and on a device the device's), refreshed at
    // every model training.
    let mut path_model =
        (cfg.maac.is_some() && c.trainings > 0).then(|| PathModelView::new(&model));
    if path_model.is_some() {
        trainer.set_path_model(&model)?;
    }
    let mut path_ws = PathWorkspace::default();
    while c.env_steps < cfg.steps {
        let k = cfg.rollout_length(c.epoch);
        let cap = cfg.model_buffer_capacity(k);
        if cap != model_data.capacity() {
            model_data = model_data.with_capacity(cap);
        }
        let mut obs = vec![];
        let mut done = true;
        for _ in 0..cfg.epoch_length {
            if c.env_steps >= cfg.steps {
                break;
            }
            if done {
                obs = env.reset(&[episode_seed(cfg.seed, c.episodes)])?;
                c.episodes += 1;
            }
            let step = c.env_steps as u32;
            let noise = cfg.explore_with_samples.then_some(step);
            trainer.refresh_actor(&mut agent)?;
            let action = agent.act(&obs, 1, noise);
            let tr = env.step(&action)?.remove(0);
            env_data.push(&obs, &action, tr.reward, &tr.obs, tr.terminated);
            done = tr.terminated || tr.truncated;
            obs = tr.obs;
            if (c.loop_steps + 1).is_multiple_of(cfg.freq_train_model) {
                let mut tc = cfg.train.clone();
                tc.seed = cfg.seed.wrapping_mul(1000).wrapping_add(c.trainings);
                let rep = train(backend, &mut model, &transitions(&env_data), &tc, |_| {})?;
                c.model_loss = rep.history.last().map_or(f64::NAN, |h| h.train_loss);
                let spec = BranchSpec {
                    seed: cfg.seed,
                    batch: c.trainings as u32,
                    k,
                    rows: cfg.rollout_batch(),
                    task: env_name.task_code(),
                    learn_reward: cfg.model.learn_reward,
                    sample_actions: cfg.sac_samples_action,
                };
                // On a device the rollout runs there with the current actor; on the host,
                // the CPU specification.
                if trainer
                    .branch(&spec, &model, &env_data, &mut model_data)?
                    .is_none()
                {
                    branched_rollout(
                        backend,
                        cfg,
                        &mut agent,
                        &model,
                        &env_data,
                        c.trainings as u32,
                        k,
                        &mut model_data,
                    )?;
                }
                c.trainings += 1;
                path_model = cfg.maac.is_some().then(|| PathModelView::new(&model));
                if path_model.is_some() {
                    trainer.set_path_model(&model)?;
                }
            }
            if (c.loop_steps + 1).is_multiple_of(cfg.sac_updates_every_steps) {
                for _ in 0..cfg.num_sac_updates_per_step {
                    let u = agent.updates as u32;
                    let real = uniform(cfg.seed, stream::MBPO_MIX, 0, u) < cfg.real_data_ratio;
                    let buf = if real { &env_data } else { &model_data };
                    if buf.len() < cfg.sac.batch_size {
                        break;
                    }
                    let (draw, rows) = ((cfg.seed, stream::REPLAY, u), cfg.sac.batch_size);
                    match (&cfg.maac, &path_model) {
                        (Some(m), Some(view)) => {
                            let task = env_name.task_code();
                            let on_device = trainer.path_update_from(
                                &mut agent,
                                usize::from(!real),
                                buf,
                                draw,
                                rows,
                                m.horizon,
                                task,
                                view.learn_reward,
                            )?;
                            if !on_device {
                                path_update(
                                    &mut agent,
                                    view,
                                    m.horizon,
                                    task,
                                    &buf.sample(draw.0, draw.1, draw.2, rows),
                                    &mut path_ws,
                                    &mut stats,
                                )?;
                            }
                        }
                        // Before the first model exists: SAC's gradient (H = 0).
                        _ => trainer.update_from(
                            &mut agent,
                            usize::from(!real),
                            buf,
                            draw,
                            rows,
                            &mut stats,
                        )?,
                    }
                }
            }
            c.loop_steps += 1;
            c.env_steps += 1;
            progress(Event::Step {
                env_steps: c.env_steps,
            });
        }
        trainer.sync(&mut agent, &mut stats)?;
        let ret = evaluate(&mut agent, &mut *eval_env, cfg.eval_episodes, cfg.seed)?;
        let mut row = stats.take_row(c.env_steps, ret, agent.updates);
        row.model_loss = c.model_loss;
        row.rollout_length = k;
        row.seconds = t0.elapsed().as_secs_f64();
        t0 = Instant::now();
        progress(Event::Row(&row));
        rows.push(row);
        c.epoch += 1;
        if let Some(dir) = out {
            let files = vec![
                ("agent", ckpt::agent_bytes(&agent)?),
                ("env_data", ckpt::replay_bytes(&env_data)?),
                ("model", io::checkpoint::to_bytes(&model)?),
                ("model_data", ckpt::replay_bytes(&model_data)?),
            ];
            offpolicy::commit(
                dir,
                FORMAT,
                cfg,
                &c,
                files,
                &rows,
                &views(&agent, &model, cfg.maac.is_some())?,
            )?;
        }
    }
    Ok((agent, rows))
}

fn views(agent: &Sac, model: &Ensemble, maac: bool) -> Result<Views> {
    let mut v = super::sac::views(agent)?;
    v.model = Some(io::checkpoint::to_bytes(model)?);
    v.title = if maac {
        "MAAC learning curve"
    } else {
        "MBPO learning curve"
    };
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_length_should_follow_mbrl_libs_truncated_linear() {
        let mut c = MbpoConfig::preset(&EnvId::Pendulum.into(), "pendulum").unwrap();
        c.rollout_schedule = [20, 100, 1, 25];
        // epoch + 1 ≤ 20 → 1; then linear to 25 at epoch + 1 = 100.
        assert_eq!(c.rollout_length(0), 1);
        assert_eq!(c.rollout_length(19), 1);
        assert_eq!(c.rollout_length(59), 13);
        assert_eq!(c.rollout_length(99), 25);
        assert_eq!(c.rollout_length(500), 25);
        c.rollout_schedule = [1, 1, 3, 7];
        assert_eq!(c.rollout_length(0), 7);
    }

    #[test]
    fn presets_should_validate_and_bad_ones_name_the_setting() {
        for (env, p) in [
            (EnvId::CartPole, "cartpole"),
            (EnvId::Pendulum, "pendulum"),
            (EnvId::MountainCar, "quick"),
        ] {
            MbpoConfig::preset(&env.into(), p)
                .unwrap()
                .validate()
                .unwrap();
        }
        assert!(MbpoConfig::preset(&EnvId::Pendulum.into(), "cartpole").is_err());
        let mut c = MbpoConfig::preset(&EnvId::Pendulum.into(), "pendulum").unwrap();
        c.rollout_schedule = [1, 15, 0, 1];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("rollout_schedule"));
        c.rollout_schedule = [1, 15, 1, 1];
        c.effective_model_rollouts_per_step = 60_000;
        c.freq_train_model = 1000;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("effective_model_rollouts_per_step"));
    }

    #[test]
    fn elite_view_should_predict_as_the_members_it_copies() {
        let mut cfg = ModelConfig::pets(3, 1);
        cfg.hidden = 8;
        cfg.num_layers = 2;
        cfg.ensemble_size = 4;
        cfg.num_elites = 2;
        let mut m = Ensemble::new(cfg, 1).unwrap();
        m.elites = vec![3, 1];
        let (shape, p) = elite_view(&m);
        let be = crate::backend::cpu::CpuBackend::new();
        let x: Vec<f32> = (0..4).map(|i| i as f32 * 0.3 - 0.5).collect();
        let full = m.shape();
        let xs = |e: usize| x.repeat(e);
        let run = |s: &EnsembleShape, p: &[f32], e: usize| {
            let (mut mu, mut lv) = (vec![0.0; e * 3], vec![0.0; e * 3]);
            be.ensemble_forward(s, &p.to_vec(), &m.norm(), &xs(e), 1, &mut mu, &mut lv)
                .unwrap();
            (mu, lv)
        };
        let (mf, lf) = run(&full, &m.params, 4);
        let (me, le) = run(&shape, &p, 2);
        // Three outputs per member: elite 0 is member 3, elite 1 member 1.
        assert_eq!(&me[..3], &mf[9..12]);
        assert_eq!(&me[3..], &mf[3..6]);
        assert_eq!(&le[..3], &lf[9..12]);
        assert_ne!(&me[..3], &mf[..3]);
    }
}
