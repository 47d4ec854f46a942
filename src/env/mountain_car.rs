//! MountainCarContinuous-v0 (`gymnasium/envs/classic_control/continuous_mountain_car.py`).
//!
//! State = observation = `[position, velocity]`. One step:
//!
//! ```text
//! force     = min(max(a, -1), 1)
//! velocity += force * 0.0015 - 0.0025 cos(3 position);  clamp to [-0.07, 0.07]
//! position += velocity;                                 clamp to [-1.2, 0.6]
//! if position == -1.2 and velocity < 0: velocity = 0    (inelastic left wall)
//! terminated = position >= 0.45 and velocity >= 0
//! reward     = (100 if terminated else 0) - 0.1 a²      (the *unclipped* action)
//! ```
//! Episodes are truncated at 999 steps.
//!
//! # Precision, following the Python source under NumPy 2
//! This environment mixes three kinds of numbers, and NumPy 2's promotion rules (NEP 50)
//! decide the precision of each operation:
//! * the state array is float64 right after `reset` (`np.array([uniform, 0])`) but float32
//!   after every step (`np.array([position, velocity], dtype=np.float32)`), so
//!   `self.state[0]` is a `np.float64` on the first step of an episode and a `np.float32`
//!   afterwards;
//! * the action element `action[0]` is a `np.float32`; clipping replaces it by a Python float
//!   (`-1.0`/`1.0`) when it is out of range;
//! * the constants and `math.cos(...)` are Python floats, which are "weak": combined with a
//!   `np.float32` they are first rounded to float32 and the operation runs in float32;
//!   combined with a `np.float64`, or with each other, it runs in float64. Comparisons follow
//!   the same rule (`np.float32(0.45) >= 0.45` is true in NumPy 2).
//!
//! A private `Np` scalar type reproduces exactly this, so each step is computed with the same roundings as
//! Gymnasium. [`StateWidth`] says which dtype the state array has.

use super::EnvSpec;

/// Lower position limit (m), also the wall.
pub const MIN_POSITION: f64 = -1.2;
/// Upper position limit.
pub const MAX_POSITION: f64 = 0.6;
/// Speed limit.
pub const MAX_SPEED: f64 = 0.07;
/// Goal position: terminated when `position >= GOAL_POSITION` and `velocity >= GOAL_VELOCITY`.
pub const GOAL_POSITION: f64 = 0.45;
/// Goal velocity (Gymnasium's default 0).
pub const GOAL_VELOCITY: f64 = 0.0;
/// Force scale.
pub const POWER: f64 = 0.0015;
/// Gravity term coefficient: `velocity -= 0.0025 cos(3 position)`.
pub const GRAVITY_COEF: f64 = 0.0025;
/// Action bounds used for clipping the force (not the reward).
pub const MIN_ACTION: f32 = -1.0;
/// Action bounds used for clipping the force (not the reward).
pub const MAX_ACTION: f32 = 1.0;
/// Reward for reaching the goal.
pub const GOAL_REWARD: f64 = 100.0;
/// Episode length (TimeLimit).
pub const MAX_EPISODE_STEPS: usize = 999;
/// State: `[position, velocity]`.
pub const STATE_DIM: usize = 2;
/// Observation (identical to the state).
pub const OBS_DIM: usize = 2;
/// Action: `[force]`.
pub const ACT_DIM: usize = 1;

pub(crate) fn spec() -> EnvSpec {
    EnvSpec {
        name: "mountain-car".into(),
        obs_dim: OBS_DIM,
        act_dim: ACT_DIM,
        state_dim: STATE_DIM,
        act_low: vec![MIN_ACTION],
        act_high: vec![MAX_ACTION],
        max_episode_steps: MAX_EPISODE_STEPS,
        description: "MountainCarContinuous-v0: drive an underpowered car up the right hill; force in \
                      [-1, 1] (clipped for the dynamics, not for the reward), reward 100 at the goal \
                      (position >= 0.45, velocity >= 0) minus 0.1 a² per step, 999 steps; \
                      obs = state = [position, velocity]"
            .into(),
    }
}

/// The NumPy dtype of the state array at the start of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateWidth {
    /// float64: right after Gymnasium's `reset` (or a state set as float64).
    F64,
    /// float32: after any step (or a state set as float32).
    F32,
}

/// A Python/NumPy scalar as NEP 50 sees it.
#[derive(Clone, Copy, Debug)]
enum Np {
    /// `np.float32`.
    F32(f32),
    /// `np.float64` (a "strong" float64).
    F64(f64),
    /// A Python float (or int): float64, but "weak" against `np.float32`.
    Py(f64),
}

impl Np {
    fn value(self) -> f64 {
        match self {
            Np::F32(v) => f64::from(v),
            Np::F64(v) | Np::Py(v) => v,
        }
    }

    /// Rounds to float32 (`np.array(..., dtype=np.float32)`, or a weak scalar cast).
    fn to_f32(self) -> f32 {
        match self {
            Np::F32(v) => v,
            Np::F64(v) | Np::Py(v) => v as f32,
        }
    }

    /// Applies a binary operation with NEP 50 promotion: float32 if one side is `np.float32`
    /// and the other is float32 or weak; float64 otherwise (Python-float result if both weak).
    fn binop(self, other: Np, f32_op: fn(f32, f32) -> f32, f64_op: fn(f64, f64) -> f64) -> Np {
        match (self, other) {
            (Np::F32(_), Np::F32(_) | Np::Py(_)) | (Np::Py(_), Np::F32(_)) => {
                Np::F32(f32_op(self.to_f32(), other.to_f32()))
            }
            (Np::Py(a), Np::Py(b)) => Np::Py(f64_op(a, b)),
            _ => Np::F64(f64_op(self.value(), other.value())),
        }
    }

    fn add(self, o: Np) -> Np {
        self.binop(o, |a, b| a + b, |a, b| a + b)
    }
    fn sub(self, o: Np) -> Np {
        self.binop(o, |a, b| a - b, |a, b| a - b)
    }
    fn mul(self, o: Np) -> Np {
        self.binop(o, |a, b| a * b, |a, b| a * b)
    }

    /// Compares with NEP 50 promotion (float32 comparison when float32 meets weak or float32).
    fn cmp(self, other: Np) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Np::F32(_), Np::F32(_) | Np::Py(_)) | (Np::Py(_), Np::F32(_)) => {
                self.to_f32().partial_cmp(&other.to_f32())
            }
            _ => self.value().partial_cmp(&other.value()),
        }
    }
    fn gt(self, o: Np) -> bool {
        self.cmp(o) == Some(std::cmp::Ordering::Greater)
    }
    fn lt(self, o: Np) -> bool {
        self.cmp(o) == Some(std::cmp::Ordering::Less)
    }
    fn ge(self, o: Np) -> bool {
        matches!(
            self.cmp(o),
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        )
    }
    fn eq(self, o: Np) -> bool {
        self.cmp(o) == Some(std::cmp::Ordering::Equal)
    }
}

/// One step of the true dynamics, in place, with Gymnasium's roundings.
///
/// `width` is the dtype of the state array before the step; afterwards the state holds
/// float32 values (widened to f64), i.e. its width is [`StateWidth::F32`].
/// Returns `(reward, terminated)`.
pub fn step(state: &mut [f64], width: StateWidth, act: &[f32]) -> (f64, bool) {
    let (mut position, mut velocity) = match width {
        StateWidth::F64 => (Np::F64(state[0]), Np::F64(state[1])),
        StateWidth::F32 => (Np::F32(state[0] as f32), Np::F32(state[1] as f32)),
    };
    let a = act[0];
    // `min(max(action[0], -1.0), 1.0)`: Python's max/min keep the first argument unless the
    // other compares strictly greater/smaller, so in range the np.float32 survives.
    let force = if a < MIN_ACTION {
        Np::Py(f64::from(MIN_ACTION))
    } else if a > MAX_ACTION {
        Np::Py(f64::from(MAX_ACTION))
    } else {
        Np::F32(a)
    };
    // `math.cos(3 * position)`: `3 * position` keeps position's dtype; math.cos returns a
    // Python float.
    let cos = Np::Py(Np::Py(3.0).mul(position).value().cos());
    let gravity = Np::Py(GRAVITY_COEF).mul(cos);
    velocity = velocity.add(force.mul(Np::Py(POWER)).sub(gravity));
    if velocity.gt(Np::Py(MAX_SPEED)) {
        velocity = Np::Py(MAX_SPEED);
    }
    if velocity.lt(Np::Py(-MAX_SPEED)) {
        velocity = Np::Py(-MAX_SPEED);
    }
    position = position.add(velocity);
    if position.gt(Np::Py(MAX_POSITION)) {
        position = Np::Py(MAX_POSITION);
    }
    if position.lt(Np::Py(MIN_POSITION)) {
        position = Np::Py(MIN_POSITION);
    }
    if position.eq(Np::Py(MIN_POSITION)) && velocity.lt(Np::Py(0.0)) {
        velocity = Np::Py(0.0);
    }
    let terminated = position.ge(Np::Py(GOAL_POSITION)) && velocity.ge(Np::Py(GOAL_VELOCITY));
    let reward = action_reward(terminated, a);
    state[0] = f64::from(position.to_f32());
    state[1] = f64::from(velocity.to_f32());
    (reward, terminated)
}

/// `reward = 0; if terminated: reward = 100.0; reward -= math.pow(action[0], 2) * 0.1`:
/// f64 arithmetic on the unclipped action (its square is exact in f64).
fn action_reward(terminated: bool, a: f32) -> f64 {
    let base = if terminated { GOAL_REWARD } else { 0.0 };
    let a = f64::from(a);
    base - a * a * 0.1
}

/// Observation: the state rounded to f32 (exact after any step, where the state is float32).
pub fn observe(state: &[f64], obs: &mut [f32]) {
    obs[0] = state[0] as f32;
    obs[1] = state[1] as f32;
}

/// Planning termination: the environment's goal test on the float32 observation
/// (`np.float32 >= 0.45` compares in float32 under NumPy 2), which is exactly what `step`
/// does for every step but the first of an episode (whose float64 start state cannot be at
/// the goal after reset: it starts in [-0.6, -0.4]).
pub fn terminated(next_obs: &[f32]) -> bool {
    Np::F32(next_obs[0]).ge(Np::Py(GOAL_POSITION)) && Np::F32(next_obs[1]).ge(Np::Py(GOAL_VELOCITY))
}

/// Planning reward: 100 when `next_obs` is at the goal, minus 0.1 a² (unclipped action),
/// computed exactly as [`step`] computes it.
pub fn reward(_obs: &[f32], act: &[f32], next_obs: &[f32]) -> f32 {
    action_reward(terminated(next_obs), act[0]) as f32
}

/// Initial state: Gymnasium's distribution (position uniform in [-0.6, -0.4), velocity 0),
/// drawn from our generator.
pub(crate) fn sample_initial_state(rng: &mut super::SplitMix64, state: &mut [f64]) {
    state[0] = rng.uniform(-0.6, -0.4);
    state[1] = 0.0;
}
