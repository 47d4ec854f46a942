//! Pendulum-v1 (`gymnasium/envs/classic_control/pendulum.py`).
//!
//! State `[th, thdot]` (th = 0 is upright), observation `[cos th, sin th, thdot]`, torque
//! `u` clipped to [-2, 2]. One step:
//!
//! ```text
//! costs    = angle_normalize(th)² + 0.1 thdot² + 0.001 u²      (reward = -costs)
//! newthdot = clip(thdot + (3g/(2l) sin th + 3/(m l²) u) dt, -8, 8)
//! newth    = th + newthdot dt
//! ```
//! with g = 10, m = l = 1, dt = 0.05. The reward uses the state *before* the step. No
//! termination; episodes are truncated at 200 steps.
//!
//! # Precision, following the Python source under NumPy 2
//! The state is a float64 array (`np_random.uniform`, then `np.array([newth, newthdot])`),
//! kept in `f64` here. The torque `u = np.clip(u, -2, 2)[0]` is a `np.float32`, and NumPy 2
//! (NEP 50) evaluates every sub-expression that combines it only with Python numbers in
//! float32: `0.001 * (u**2)` and `3.0 / (m * l**2) * u`. Those two terms are computed in
//! `f32` and widened when added to float64 terms, as NumPy does. `u**2` and `thdot**2` are
//! libm `pow` calls in NumPy; we square by multiplication (see `cartpole.rs` for why that is
//! at most one ulp apart). `np.sin`/`np.cos` on float64 are the C library's functions here
//! (NumPy may use SIMD variants on AVX-512 machines, within an ulp or two).
//! The observation is `np.array([cos, sin, thdot], dtype=np.float32)`: computed in f64 and
//! rounded once, as here.

use super::EnvSpec;
use std::f64::consts::{PI, TAU};

/// Gravity (m/s²), Pendulum-v1's default `g`.
pub const G: f64 = 10.0;
/// Pendulum mass (kg).
pub const M: f64 = 1.0;
/// Pendulum length (m).
pub const L: f64 = 1.0;
/// Integration step (s).
pub const DT: f64 = 0.05;
/// Angular speed limit (rad/s).
pub const MAX_SPEED: f64 = 8.0;
/// Torque limit (N m); actions are clipped to ±this, in f32.
pub const MAX_TORQUE: f32 = 2.0;
/// Episode length (TimeLimit).
pub const MAX_EPISODE_STEPS: usize = 200;
/// State: `[th, thdot]`.
pub const STATE_DIM: usize = 2;
/// Observation: `[cos th, sin th, thdot]`.
pub const OBS_DIM: usize = 3;
/// Action: `[torque]`.
pub const ACT_DIM: usize = 1;

pub(crate) fn spec() -> EnvSpec {
    EnvSpec {
        name: "pendulum".into(),
        obs_dim: OBS_DIM,
        act_dim: ACT_DIM,
        state_dim: STATE_DIM,
        act_low: vec![-MAX_TORQUE],
        act_high: vec![MAX_TORQUE],
        max_episode_steps: MAX_EPISODE_STEPS,
        description: "Pendulum-v1: swing up and balance; torque in [-2, 2] (clipped), \
                      reward -(angle² + 0.1 thdot² + 0.001 u²), no termination, 200 steps; \
                      state [th, thdot], obs [cos th, sin th, thdot]"
            .into(),
    }
}

/// `((x + π) % 2π) - π` with Python/NumPy's floored modulo (result has the divisor's sign).
pub fn angle_normalize(x: f64) -> f64 {
    // NumPy's npy_divmod: mod = fmod(a, b); if mod != 0 and its sign differs from b's, add
    // b; a zero remainder becomes +0. Rust's `%` on f64 is C's fmod.
    let mut m = (x + PI) % TAU;
    if m != 0.0 {
        if m < 0.0 {
            m += TAU;
        }
    } else {
        m = 0.0;
    }
    m - PI
}

/// `np.clip(u, -max_torque, max_torque)` on the float32 action.
fn clip_torque(u: f32) -> f32 {
    u.clamp(-MAX_TORQUE, MAX_TORQUE)
}

/// `angle_normalize(th)**2 + 0.1 * thdot**2 + 0.001 * (u**2)`: the first two terms in f64,
/// the last in f32 (NEP 50), summed left to right in f64.
fn costs(th: f64, thdot: f64, u: f32) -> f64 {
    let a = angle_normalize(th);
    a * a + 0.1 * (thdot * thdot) + f64::from(0.001f32 * (u * u))
}

/// One step of the true dynamics, in place, in the source's precision.
/// Returns `(reward, terminated)`; Pendulum never terminates.
pub fn step(state: &mut [f64], act: &[f32]) -> (f64, bool) {
    let (th, thdot) = (state[0], state[1]);
    let u = clip_torque(act[0]);
    let reward = -costs(th, thdot, u);
    // `3 * g / (2 * l)` is 15.0 exactly; `3.0 / (m * l**2) * u` is a float32 product.
    let accel = 3.0 * G / (2.0 * L) * th.sin() + f64::from((3.0 / (M * L * L)) as f32 * u);
    let newthdot = (thdot + accel * DT).clamp(-MAX_SPEED, MAX_SPEED);
    state[0] = th + newthdot * DT;
    state[1] = newthdot;
    (reward, false)
}

/// Observation `[cos th, sin th, thdot]`, computed in f64 and rounded to f32.
pub fn observe(state: &[f64], obs: &mut [f32]) {
    obs[0] = state[0].cos() as f32;
    obs[1] = state[0].sin() as f32;
    obs[2] = state[1] as f32;
}

/// Planning reward from the observation before the step: `th = atan2(sin, cos)` (any
/// representative of the angle: only `angle_normalize(th)` enters), `thdot = obs[2]`, and the
/// clipped action, with the same arithmetic as [`step`].
///
/// It differs from `step`'s reward only through the f32 rounding of the observation:
/// |Δth| ≲ 1e-7 and |Δthdot| ≤ 8·2⁻²⁴, so |Δreward| ≤ 2π·1e-7 + 0.2·8·5e-7 < 2e-6.
pub fn reward(obs: &[f32], act: &[f32], _next_obs: &[f32]) -> f32 {
    let th = f64::from(obs[1]).atan2(f64::from(obs[0]));
    let thdot = f64::from(obs[2]);
    (-costs(th, thdot, clip_torque(act[0]))) as f32
}

/// Pendulum-v1 never terminates.
pub fn terminated(_next_obs: &[f32]) -> bool {
    false
}

/// Initial state: Gymnasium's distribution (th uniform in [-π, π), thdot uniform in [-1, 1)),
/// drawn from our generator.
pub(crate) fn sample_initial_state(rng: &mut super::SplitMix64, state: &mut [f64]) {
    state[0] = rng.uniform(-PI, PI);
    state[1] = rng.uniform(-1.0, 1.0);
}
