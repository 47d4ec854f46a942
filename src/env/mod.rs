//! Native environments that reproduce Gymnasium 1.x, batched, plus the reward and termination
//! functions planners call on predicted observations.
//!
//! | [`EnvId`] | reproduces | obs | act | state | steps |
//! |---|---|---|---|---|---|
//! | `cartpole` | mbrl-lib's continuous cart-pole (CartPole-v1 physics, force = 10·a) | 4 | 1 | 4 | 200 |
//! | `pendulum` | Pendulum-v1 | 3 | 1 | 2 | 200 |
//! | `mountain-car` | MountainCarContinuous-v0 | 2 | 1 | 2 | 999 |
//!
//! # Fidelity
//! Each step follows the Python source statement by statement: same constants, same explicit
//! Euler update, same order of clipping, reward and termination, and the same floating-point
//! widths. Gymnasium computes in Python floats and NumPy scalars; under NumPy 2 (NEP 50) a
//! `np.float32` action combined with Python constants is computed in float32, while the state
//! is float64 (cart-pole, pendulum) or float32 after the first step (mountain car). The
//! per-environment modules document which sub-expressions are f32 and which f64, and do the
//! same. [`NativeEnv`] therefore keeps the internal state in `f64` (values exactly as
//! Gymnasium's `env.unwrapped.state`) and exposes an `f32` copy through [`Env::state`]; the
//! `f32` functions on [`EnvId`] (for planning and device kernels) widen to `f64` internally
//! and round the result once.
//!
//! `tests/env_parity.rs` replays trajectories recorded from Gymnasium
//! (`scripts/record_gym.py` → `tests/fixtures/gym/*.json`) and checks the agreement.
//!
//! # Seeding
//! [`EnvId::reset_state`] and [`Env::reset`] draw the initial state from Gymnasium's
//! distribution with our own generator, SplitMix64 (Steele, Lea & Flood 2014), seeded with
//! the given `u64`: `u = (next_u64() >> 11) · 2⁻⁵³`, `value = low + (high − low)·u`, one draw
//! per random state component in order. It does not reproduce NumPy's PCG64 streams; parity
//! with Gymnasium is checked from recorded start states instead. (The MuJoCo tasks do
//! reproduce them, through [`np_random`]: their published figures came later.)

pub mod cartpole;
pub mod gym;
pub mod mountain_car;
pub mod mujoco;
pub mod np_random;
pub mod pendulum;
pub mod task;
mod ziggurat;

pub use mountain_car::StateWidth;

use std::fmt;
use std::str::FromStr;

/// Largest `state_dim` and `obs_dim` of any native environment (stack buffers).
const MAX_DIM: usize = 4;

/// Which native environment. Static dispatch so that device kernels can mirror each function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EnvId {
    /// Continuous cart-pole (mbrl-lib's PETS version of CartPole-v1).
    CartPole,
    /// Pendulum-v1.
    Pendulum,
    /// MountainCarContinuous-v0.
    MountainCar,
}

/// Static description of an environment.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvSpec {
    /// The name [`EnvName::parse`] accepts.
    pub name: String,
    /// Observation dimension.
    pub obs_dim: usize,
    /// Action dimension.
    pub act_dim: usize,
    /// Dimension of the internal state (Gymnasium's `env.unwrapped.state`).
    pub state_dim: usize,
    /// Lower action bounds (the action space; whether they are enforced depends on the env).
    pub act_low: Vec<f32>,
    /// Upper action bounds.
    pub act_high: Vec<f32>,
    /// Episodes are truncated after this many steps.
    pub max_episode_steps: usize,
    /// One line for humans.
    pub description: String,
}

/// Result of one step of one env.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Observation after the step.
    pub obs: Vec<f32>,
    /// Reward of the step (Gymnasium's float64 reward rounded to f32).
    pub reward: f32,
    /// The episode reached a terminal state on this step.
    pub terminated: bool,
    /// The episode reached `max_episode_steps` on this step (set even if also terminated, as
    /// Gymnasium's `TimeLimit` does).
    pub truncated: bool,
}

/// Errors of the environment API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvError {
    /// `EnvId::parse` got a name it does not know.
    #[error("unknown environment {name:?}; choose one of: {choices}")]
    UnknownEnv {
        /// The name given.
        name: String,
        /// The accepted names, comma-separated.
        choices: String,
    },
    /// A buffer had the wrong number of values.
    #[error("wrong number of values for {what}: expected {expected}, got {got}")]
    WrongLength {
        /// What the buffer is, with its shape.
        what: String,
        /// Values expected.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// An action or state value was NaN or infinite.
    #[error("non-finite {what} value {value} in row {row}, component {component}")]
    NonFinite {
        /// "action" or "state".
        what: &'static str,
        /// The env copy (for `step`/`set_state`) or the step (for `replay`).
        row: usize,
        /// Index within the row.
        component: usize,
        /// The offending value.
        value: f64,
    },
    /// `step` was called before any `reset` or `set_state`.
    #[error("step called before reset or set_state")]
    NotReset,
    /// The Gymnasium bridge failed (see [`gym`]).
    #[error("{env}: {message}")]
    Gym {
        /// The environment's name (`gym:ID`).
        env: String,
        /// What happened.
        message: String,
    },
    /// A replayed step produced a value that is not a finite f32.
    #[error(
        "step {step} produced a non-finite {what} ({value}): the start state or the actions \
         are beyond what the dynamics can represent in f32"
    )]
    NonFiniteResult {
        /// The step, from 0.
        step: usize,
        /// "observation" or "reward".
        what: &'static str,
        /// The offending value.
        value: f64,
    },
}

impl EnvId {
    /// The number device kernels use for this environment (`RolloutParams::env`).
    pub const fn code(self) -> u32 {
        match self {
            EnvId::CartPole => 0,
            EnvId::Pendulum => 1,
            EnvId::MountainCar => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<EnvId> {
        EnvId::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Every native environment.
    pub const ALL: [EnvId; 3] = [EnvId::CartPole, EnvId::Pendulum, EnvId::MountainCar];

    /// The command-line name: "cartpole", "pendulum", "mountain-car".
    pub fn name(self) -> &'static str {
        match self {
            EnvId::CartPole => "cartpole",
            EnvId::Pendulum => "pendulum",
            EnvId::MountainCar => "mountain-car",
        }
    }

    /// Parses a name as given by [`EnvId::name`]; an unknown name is an error listing the
    /// choices.
    pub fn parse(s: &str) -> Result<EnvId, EnvError> {
        EnvId::ALL
            .into_iter()
            .find(|id| id.name() == s)
            .ok_or_else(|| EnvError::UnknownEnv {
                name: s.to_string(),
                choices: EnvId::ALL.map(EnvId::name).join(", "),
            })
    }

    /// Dimensions, bounds and episode length.
    pub fn spec(self) -> EnvSpec {
        match self {
            EnvId::CartPole => cartpole::spec(),
            EnvId::Pendulum => pendulum::spec(),
            EnvId::MountainCar => mountain_car::spec(),
        }
    }

    /// Observation dimension (cheap, for hot loops).
    pub const fn obs_dim(self) -> usize {
        match self {
            EnvId::CartPole => cartpole::OBS_DIM,
            EnvId::Pendulum => pendulum::OBS_DIM,
            EnvId::MountainCar => mountain_car::OBS_DIM,
        }
    }

    /// Action dimension (cheap, for hot loops).
    pub const fn act_dim(self) -> usize {
        match self {
            EnvId::CartPole => cartpole::ACT_DIM,
            EnvId::Pendulum => pendulum::ACT_DIM,
            EnvId::MountainCar => mountain_car::ACT_DIM,
        }
    }

    /// Internal state dimension (cheap, for hot loops).
    pub const fn state_dim(self) -> usize {
        match self {
            EnvId::CartPole => cartpole::STATE_DIM,
            EnvId::Pendulum => pendulum::STATE_DIM,
            EnvId::MountainCar => mountain_car::STATE_DIM,
        }
    }

    /// Reward of a transition, from observations (what a learned model predicts) — for planning.
    ///
    /// Equal to the reward `step` reports for the same transition, up to the f32 rounding of
    /// the observations (exactly equal for cart-pole and mountain car; within 2e-6 for
    /// pendulum, whose angle is recovered as `atan2(sin, cos)`). For cart-pole this is 1.0 on
    /// every transition, including the terminating one; see [`cartpole`] for how that
    /// differs from mbrl-lib's planning reward. Panics if a slice is shorter than its
    /// dimension.
    pub fn reward(self, obs: &[f32], act: &[f32], next_obs: &[f32]) -> f32 {
        match self {
            EnvId::CartPole => cartpole::reward(obs, act, next_obs),
            EnvId::Pendulum => pendulum::reward(obs, act, next_obs),
            EnvId::MountainCar => mountain_car::reward(obs, act, next_obs),
        }
    }

    /// Termination from the next observation — for planning. Equal to `step`'s flag except
    /// within one f32 rounding of a threshold (see the per-environment functions).
    pub fn terminated(self, next_obs: &[f32]) -> bool {
        match self {
            EnvId::CartPole => cartpole::terminated(next_obs),
            EnvId::Pendulum => pendulum::terminated(next_obs),
            EnvId::MountainCar => mountain_car::terminated(next_obs),
        }
    }

    /// True dynamics on the internal state (the variables Gymnasium keeps in
    /// `env.unwrapped.state`), for "planning with the true simulator". Writes the next state.
    ///
    /// The state is widened to f64, stepped exactly as [`NativeEnv`] steps it (a mountain-car
    /// state given in f32 is a float32 array, as Gymnasium's is after any step), and rounded
    /// once. Actions are clipped as the environment clips them. Panics if a slice is shorter
    /// than its dimension.
    pub fn step_state(self, state: &[f32], act: &[f32], next_state: &mut [f32]) {
        let n = self.state_dim();
        let mut s = [0.0f64; MAX_DIM];
        for (d, v) in s[..n].iter_mut().zip(&state[..n]) {
            *d = f64::from(*v);
        }
        self.step_state_f64(&mut s[..n], StateWidth::F32, act);
        for (d, v) in next_state[..n].iter_mut().zip(&s[..n]) {
            *d = *v as f32;
        }
    }

    /// One step of the true dynamics on an f64 state, in place, with Gymnasium's precision.
    /// `width` is the NumPy dtype of the state array (it only matters for mountain car; after
    /// the step a mountain-car state is float32). Returns `(reward, terminated)` as the
    /// environment reports them for an episode that has not terminated before.
    pub fn step_state_f64(self, state: &mut [f64], width: StateWidth, act: &[f32]) -> (f64, bool) {
        match self {
            EnvId::CartPole => cartpole::step(state, act),
            EnvId::Pendulum => pendulum::step(state, act),
            EnvId::MountainCar => mountain_car::step(state, width, act),
        }
    }

    /// Internal state from an observation (the inverse of [`EnvId::observe`]): identity for
    /// cart-pole and mountain car, θ = atan2(sin θ, cos θ) and θ̇ for the pendulum (θ is
    /// recovered modulo 2π, which its dynamics and reward do not distinguish).
    pub fn state_from_obs(self, obs: &[f32]) -> Vec<f32> {
        match self {
            EnvId::Pendulum => vec![obs[1].atan2(obs[0]), obs[2]],
            _ => obs[..self.state_dim()].to_vec(),
        }
    }

    /// Observation from internal state (identity for cartpole / mountain car;
    /// `[cos, sin, thdot]` for pendulum).
    pub fn observe(self, state: &[f32], obs: &mut [f32]) {
        let n = self.state_dim();
        let mut s = [0.0f64; MAX_DIM];
        for (d, v) in s[..n].iter_mut().zip(&state[..n]) {
            *d = f64::from(*v);
        }
        self.observe_f64(&s[..n], obs);
    }

    /// Observation from an f64 internal state, computed in f64 and rounded once.
    pub fn observe_f64(self, state: &[f64], obs: &mut [f32]) {
        match self {
            EnvId::CartPole => cartpole::observe(state, obs),
            EnvId::Pendulum => pendulum::observe(state, obs),
            EnvId::MountainCar => mountain_car::observe(state, obs),
        }
    }

    /// Initial state sampling from a seed with our own deterministic generator (SplitMix64;
    /// see the module docs), from Gymnasium's initial distribution, rounded to f32.
    /// [`NativeEnv::reset`] with the same seed starts from the same state (kept in f64).
    pub fn reset_state(self, seed: u64, state: &mut [f32]) {
        let n = self.state_dim();
        let mut s = [0.0f64; MAX_DIM];
        self.reset_state_f64(seed, &mut s[..n]);
        for (d, v) in state[..n].iter_mut().zip(&s[..n]) {
            *d = *v as f32;
        }
    }

    /// [`EnvId::reset_state`] without the final rounding.
    pub fn reset_state_f64(self, seed: u64, state: &mut [f64]) {
        let mut rng = SplitMix64::new(seed);
        match self {
            EnvId::CartPole => cartpole::sample_initial_state(&mut rng, state),
            EnvId::Pendulum => pendulum::sample_initial_state(&mut rng, state),
            EnvId::MountainCar => mountain_car::sample_initial_state(&mut rng, state),
        }
    }
}

impl fmt::Display for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EnvId {
    type Err = EnvError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EnvId::parse(s)
    }
}

/// The environment a run names: a native one, or any Gymnasium environment with Box spaces
/// through the Python bridge ([`gym`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EnvName {
    Native(EnvId),
    /// A Gymnasium v5 MuJoCo task stepped in-process (the `mujoco` feature).
    Mujoco(mujoco::MujocoTask),
    Gym(gym::GymId),
}

impl EnvName {
    /// `cartpole`, `pendulum`, `mountain-car`, a MuJoCo task (`halfcheetah`, `hopper`,
    /// `walker2d`, `ant`, `inverted-pendulum`), `gym:ID` or `gym:MODULE:ID`.
    pub fn parse(s: &str) -> Result<EnvName, EnvError> {
        if let Some(g) = gym::GymId::parse(s) {
            return Ok(EnvName::Gym(g?));
        }
        if let Some(t) = mujoco::MujocoTask::parse(s) {
            return Ok(EnvName::Mujoco(t));
        }
        EnvId::parse(s).map(EnvName::Native).map_err(|e| match e {
            EnvError::UnknownEnv { name, choices } => EnvError::UnknownEnv {
                name,
                choices: format!(
                    "{choices}, {} (MuJoCo), or gym:ID for a Gymnasium environment (e.g. \
                     gym:Pendulum-v1)",
                    mujoco::MujocoTask::ALL
                        .map(mujoco::MujocoTask::name)
                        .join(", ")
                ),
            },
            e => e,
        })
    }

    /// The name [`EnvName::parse`] reads back.
    pub fn name(&self) -> String {
        match self {
            EnvName::Native(id) => id.name().into(),
            EnvName::Mujoco(t) => t.name().into(),
            EnvName::Gym(g) => g.name(),
        }
    }

    /// The native environment, if this is one.
    pub fn native(&self) -> Option<EnvId> {
        match self {
            EnvName::Native(id) => Some(*id),
            EnvName::Mujoco(_) | EnvName::Gym(_) => None,
        }
    }

    /// The native task whose reward and termination functions, presets and hand-derived
    /// gradients apply: the native environment itself, or the one a Gymnasium ID reproduces
    /// step for step (`gym:Pendulum-v1` → `pendulum`).
    pub fn task_env(&self) -> Option<EnvId> {
        match self {
            EnvName::Native(id) => Some(*id),
            EnvName::Mujoco(_) => None,
            EnvName::Gym(g) => g.native(),
        }
    }

    /// The reward/termination code planners and model rollouts use ([`task`]):
    /// [`task::NONE`] when no reward function from observations is known (the model must
    /// learn the reward; nothing terminates).
    pub fn task_code(&self) -> u32 {
        match self {
            EnvName::Mujoco(t) => t.task_code(),
            _ => self.task_env().map_or(task::NONE, EnvId::code),
        }
    }

    /// The MuJoCo task, if this is one.
    pub fn mujoco(&self) -> Option<mujoco::MujocoTask> {
        match self {
            EnvName::Mujoco(t) => Some(*t),
            _ => None,
        }
    }

    /// Dimensions, bounds and episode length. For a Gymnasium environment this starts a
    /// worker once per process and name, and remembers the answer.
    pub fn spec(&self) -> Result<EnvSpec, EnvError> {
        match self {
            EnvName::Native(id) => Ok(id.spec()),
            EnvName::Mujoco(t) => Ok(t.spec()),
            EnvName::Gym(g) => {
                static SPECS: std::sync::Mutex<Vec<(gym::GymId, EnvSpec)>> =
                    std::sync::Mutex::new(Vec::new());
                if let Some((_, s)) = SPECS
                    .lock()
                    .ok()
                    .and_then(|v| v.iter().find(|(k, _)| k == g).cloned())
                {
                    return Ok(s);
                }
                let env = gym::GymEnv::open(g, 1, &gym::GymOptions::from_env()?)?;
                let s = env.spec().clone();
                if let Ok(mut v) = SPECS.lock() {
                    v.push((g.clone(), s.clone()));
                }
                Ok(s)
            }
        }
    }

    /// `copies` copies, ready for [`Env::reset`].
    pub fn open(&self, copies: usize) -> Result<Box<dyn Env>, EnvError> {
        match self {
            EnvName::Native(id) => Ok(Box::new(NativeEnv::new(*id, copies))),
            #[cfg(feature = "mujoco")]
            EnvName::Mujoco(t) => Ok(Box::new(mujoco::MujocoEnv::new(*t, copies)?)),
            #[cfg(not(feature = "mujoco"))]
            EnvName::Mujoco(t) => Err(EnvError::Gym {
                env: t.name().into(),
                message: "this mbrl-gpu was built without the `mujoco` feature (cargo build \
                          --features mujoco; see the README), or use gym:ID through the \
                          Gymnasium bridge"
                    .into(),
            }),
            EnvName::Gym(g) => Ok(Box::new(gym::GymEnv::open(
                g,
                copies,
                &gym::GymOptions::from_env()?,
            )?)),
        }
    }

    /// The native environment, or an error saying that `what` needs one.
    pub fn require_native(&self, what: &str) -> Result<EnvId, EnvError> {
        self.native().ok_or_else(|| EnvError::Gym {
            env: self.name(),
            message: format!(
                "{what} needs a native environment (`mbrl-gpu envs`); a Gymnasium \
                 environment is stepped only through its own `step`"
            ),
        })
    }
}

impl From<EnvId> for EnvName {
    fn from(id: EnvId) -> Self {
        EnvName::Native(id)
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", 2014).
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`.
    pub(crate) fn uniform(&mut self, low: f64, high: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        low + (high - low) * u
    }
}

/// `seeds` holds one seed per copy.
pub(crate) fn check_seeds(seeds: &[u64], copies: usize) -> Result<(), EnvError> {
    if seeds.len() != copies {
        return Err(EnvError::WrongLength {
            what: format!("seeds (one per copy, {copies} copies)"),
            expected: copies,
            got: seeds.len(),
        });
    }
    Ok(())
}

/// `actions` is `[copies, act_dim]` of `name`, every value finite, and the copies were reset.
pub(crate) fn check_step(
    actions: &[f32],
    copies: usize,
    act_dim: usize,
    name: &str,
    ready: bool,
) -> Result<(), EnvError> {
    if actions.len() != copies * act_dim {
        return Err(EnvError::WrongLength {
            what: format!("actions of {copies} × {name} ([N, act_dim] = [{copies}, {act_dim}])"),
            expected: copies * act_dim,
            got: actions.len(),
        });
    }
    if let Some(i) = actions.iter().position(|a| !a.is_finite()) {
        return Err(EnvError::NonFinite {
            what: "action",
            row: i / act_dim,
            component: i % act_dim,
            value: f64::from(actions[i]),
        });
    }
    if !ready {
        return Err(EnvError::NotReset);
    }
    Ok(())
}

/// A batch of N independent copies of one environment.
pub trait Env: Send {
    /// Dimensions, bounds and episode length.
    fn spec(&self) -> &EnvSpec;
    /// N.
    fn num_envs(&self) -> usize;
    /// Reset every copy, copy i from `seeds[i]`; returns observations `[N, obs_dim]` row-major.
    fn reset(&mut self, seeds: &[u64]) -> Result<Vec<f32>, EnvError>;
    /// Step every copy with actions `[N, act_dim]` row-major (actions are clipped to the bounds
    /// exactly as Gymnasium does, if it does); returns one Transition per copy. Error on wrong
    /// length or non-finite actions.
    fn step(&mut self, actions: &[f32]) -> Result<Vec<Transition>, EnvError>;
    /// Current internal states `[N, state_dim]`.
    fn state(&self) -> &[f32];
    /// Sets every copy's internal state `[N, state_dim]` and starts a new episode from it.
    fn set_state(&mut self, states: &[f32]) -> Result<(), EnvError>;
}

/// N copies of a native environment, stepped on the CPU.
///
/// Semantics per copy are those of `gymnasium.make(...)` (the environment inside a
/// `TimeLimit`): `truncated` becomes true when the copy's episode reaches
/// `max_episode_steps`; there is no auto-reset — a copy that terminated or was truncated keeps
/// stepping until [`Env::reset`] or [`Env::set_state`] (cart-pole then pays 0.0, as Gymnasium's
/// cart-pole does after termination).
pub struct NativeEnv {
    id: EnvId,
    spec: EnvSpec,
    num_envs: usize,
    /// [N, state_dim] in f64: Gymnasium's state values.
    state: Vec<f64>,
    /// [N, state_dim] rounded to f32, for [`Env::state`].
    state_f32: Vec<f32>,
    /// NumPy dtype of each copy's state array (matters for mountain car only).
    width: Vec<StateWidth>,
    /// Steps since the copy's episode started.
    elapsed: Vec<usize>,
    /// The copy's episode has terminated.
    done: Vec<bool>,
    /// A reset or set_state has happened.
    ready: bool,
}

impl NativeEnv {
    /// `num_envs` copies of `id`. Call [`Env::reset`] or [`Env::set_state`] before stepping.
    pub fn new(id: EnvId, num_envs: usize) -> Self {
        let n = num_envs * id.state_dim();
        NativeEnv {
            id,
            spec: id.spec(),
            num_envs,
            state: vec![0.0; n],
            state_f32: vec![0.0; n],
            width: vec![StateWidth::F64; num_envs],
            elapsed: vec![0; num_envs],
            done: vec![false; num_envs],
            ready: false,
        }
    }

    /// Which environment.
    pub fn id(&self) -> EnvId {
        self.id
    }

    /// Current internal states `[N, state_dim]`.in full precision (Gymnasium's values).
    pub fn state_f64(&self) -> &[f64] {
        &self.state
    }

    /// Steps taken by each copy since its episode started.
    pub fn elapsed_steps(&self) -> &[usize] {
        &self.elapsed
    }

    /// Like [`Env::set_state`] with f64 values, as if assigned to Gymnasium's
    /// `env.unwrapped.state` as a float64 array (what `reset` leaves there). Use it to start
    /// from a recorded Gymnasium state without rounding it.
    pub fn set_state_f64(&mut self, states: &[f64]) -> Result<(), EnvError> {
        self.check_state_len(states.len())?;
        let sd = self.id.state_dim();
        for (i, v) in states.iter().enumerate() {
            if !v.is_finite() {
                return Err(EnvError::NonFinite {
                    what: "state",
                    row: i / sd,
                    component: i % sd,
                    value: *v,
                });
            }
        }
        self.state.copy_from_slice(states);
        self.begin_episodes(StateWidth::F64);
        Ok(())
    }

    fn check_state_len(&self, got: usize) -> Result<(), EnvError> {
        let sd = self.id.state_dim();
        if got != self.num_envs * sd {
            return Err(EnvError::WrongLength {
                what: format!(
                    "states of {} × {} ([N, state_dim] = [{}, {}])",
                    self.num_envs,
                    self.id.name(),
                    self.num_envs,
                    sd
                ),
                expected: self.num_envs * sd,
                got,
            });
        }
        Ok(())
    }

    fn begin_episodes(&mut self, width: StateWidth) {
        self.width.fill(width);
        self.elapsed.fill(0);
        self.done.fill(false);
        self.ready = true;
        self.sync_f32();
    }

    fn sync_f32(&mut self) {
        for (d, s) in self.state_f32.iter_mut().zip(&self.state) {
            *d = *s as f32;
        }
    }

    fn observations(&self) -> Vec<f32> {
        let (sd, od) = (self.id.state_dim(), self.id.obs_dim());
        let mut obs = vec![0.0f32; self.num_envs * od];
        for (s, o) in self.state.chunks_exact(sd).zip(obs.chunks_exact_mut(od)) {
            self.id.observe_f64(s, o);
        }
        obs
    }
}

impl Env for NativeEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn num_envs(&self) -> usize {
        self.num_envs
    }

    /// Copy i starts from [`EnvId::reset_state_f64`]`(seeds[i])`, held as a float64 array
    /// like Gymnasium's state after `reset`.
    fn reset(&mut self, seeds: &[u64]) -> Result<Vec<f32>, EnvError> {
        check_seeds(seeds, self.num_envs)?;
        let sd = self.id.state_dim();
        for (s, seed) in self.state.chunks_exact_mut(sd).zip(seeds) {
            self.id.reset_state_f64(*seed, s);
        }
        self.begin_episodes(StateWidth::F64);
        Ok(self.observations())
    }

    fn step(&mut self, actions: &[f32]) -> Result<Vec<Transition>, EnvError> {
        let (sd, od, ad) = (self.id.state_dim(), self.id.obs_dim(), self.id.act_dim());
        check_step(actions, self.num_envs, ad, self.id.name(), self.ready)?;
        let mut out = Vec::with_capacity(self.num_envs);
        for i in 0..self.num_envs {
            let s = &mut self.state[i * sd..(i + 1) * sd];
            let a = &actions[i * ad..(i + 1) * ad];
            let (mut reward, terminated) = self.id.step_state_f64(s, self.width[i], a);
            self.width[i] = StateWidth::F32;
            if self.id == EnvId::CartPole && self.done[i] {
                // Gymnasium's cart-pole: `steps_beyond_terminated` -> reward 0.0.
                reward = 0.0;
            }
            self.done[i] |= terminated;
            self.elapsed[i] += 1;
            let mut obs = vec![0.0f32; od];
            self.id.observe_f64(s, &mut obs);
            out.push(Transition {
                obs,
                reward: reward as f32,
                terminated,
                truncated: self.elapsed[i] >= self.spec.max_episode_steps,
            });
        }
        self.sync_f32();
        Ok(out)
    }

    fn state(&self) -> &[f32] {
        &self.state_f32
    }

    /// As if assigned to `env.unwrapped.state` as a float32 array; starts a new episode
    /// (elapsed steps 0).
    fn set_state(&mut self, states: &[f32]) -> Result<(), EnvError> {
        self.check_state_len(states.len())?;
        let sd = self.id.state_dim();
        if let Some(i) = states.iter().position(|v| !v.is_finite()) {
            return Err(EnvError::NonFinite {
                what: "state",
                row: i / sd,
                component: i % sd,
                value: f64::from(states[i]),
            });
        }
        for (d, s) in self.state.iter_mut().zip(states) {
            *d = f64::from(*s);
        }
        self.begin_episodes(StateWidth::F32);
        Ok(())
    }
}

/// One step of [`replay`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplayStep {
    /// Observation after the step.
    pub obs: Vec<f32>,
    /// Reward of the step.
    pub reward: f32,
    /// The step terminated the episode (it is then the last record).
    pub terminated: bool,
}

/// For `mbrl-gpu env replay`: from a start state and actions, one record per step, stopping
/// after the first termination. The start state is taken as f32 (see [`replay_f64`] to start
/// from a full-precision Gymnasium state). Errors, before any step, on a wrong state length,
/// a wrong action length or a non-finite value.
pub fn replay(id: EnvId, state: &[f32], actions: &[Vec<f32>]) -> Result<Vec<ReplayStep>, EnvError> {
    check_replay_actions(id, actions)?;
    let mut env = NativeEnv::new(id, 1);
    env.set_state(state)?;
    run_replay(env, actions)
}

/// [`replay`] from an f64 start state (e.g. Gymnasium's `env.unwrapped.state` after `reset`,
/// a float64 array), without rounding it to f32.
pub fn replay_f64(
    id: EnvId,
    state: &[f64],
    actions: &[Vec<f32>],
) -> Result<Vec<ReplayStep>, EnvError> {
    check_replay_actions(id, actions)?;
    let mut env = NativeEnv::new(id, 1);
    env.set_state_f64(state)?;
    run_replay(env, actions)
}

fn check_replay_actions(id: EnvId, actions: &[Vec<f32>]) -> Result<(), EnvError> {
    let ad = id.act_dim();
    for (t, a) in actions.iter().enumerate() {
        if a.len() != ad {
            return Err(EnvError::WrongLength {
                what: format!("the action of step {t} ({} act_dim = {ad})", id.name()),
                expected: ad,
                got: a.len(),
            });
        }
        if let Some(c) = a.iter().position(|v| !v.is_finite()) {
            return Err(EnvError::NonFinite {
                what: "action",
                row: t,
                component: c,
                value: f64::from(a[c]),
            });
        }
    }
    Ok(())
}

fn run_replay(mut env: NativeEnv, actions: &[Vec<f32>]) -> Result<Vec<ReplayStep>, EnvError> {
    let mut out = Vec::with_capacity(actions.len());
    for (step, a) in actions.iter().enumerate() {
        let tr = env
            .step(a)?
            .pop()
            .expect("one transition per copy, one copy");
        let bad = |what, value: f32| EnvError::NonFiniteResult {
            step,
            what,
            value: f64::from(value),
        };
        if let Some(v) = tr.obs.iter().find(|v| !v.is_finite()) {
            return Err(bad("observation", *v));
        }
        if !tr.reward.is_finite() {
            return Err(bad("reward", tr.reward));
        }
        let terminated = tr.terminated;
        out.push(ReplayStep {
            obs: tr.obs,
            reward: tr.reward,
            terminated,
        });
        if terminated {
            break;
        }
    }
    Ok(out)
}
