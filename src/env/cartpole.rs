//! Continuous cart-pole: the environment mbrl-lib's PETS uses (`mbrl/env/cartpole_continuous.py`).
//!
//! It is Gymnasium's CartPole-v1 (`gymnasium/envs/classic_control/cartpole.py`) with one change:
//! the action is a real number `a` (nominally in [-1, 1]) and the force is `a * force_mag`
//! instead of `±force_mag`. Everything else is CartPole-v1: constants, explicit Euler
//! integrator, termination when |x| > 2.4 or |θ| > 12°, reward 1.0 per step. Episodes are
//! 200 steps (mbrl-lib's `trial_length` for PETS cart-pole).
//!
//! # Precision, following the Python source under NumPy 2
//! The state `(x, x_dot, theta, theta_dot)` is a tuple of `np.float64` (drawn by
//! `np_random.uniform`, then updated by float64 arithmetic), so it is kept in `f64` here.
//! The only float32 value is the force: `action.squeeze() * self.force_mag` multiplies a
//! `np.float32` by a Python float, which NumPy 2 (NEP 50, "weak" Python scalars) evaluates in
//! float32; adding it to the float64 term widens it back. `math.cos`/`math.sin` are the C
//! library's double-precision functions, as are Rust's `f64::cos`/`f64::sin`.
//! `theta_dot**2` and `costheta**2` go through libm `pow` in CPython/NumPy; we use `x * x`
//! (the correctly rounded square, what a device kernel computes). glibc's `pow(x, 2)` differs
//! from it by one ulp in about 0.1 % of calls, a 1e-16 relative effect.
//!
//! mbrl-lib returns the float64 state as the observation; our observations are f32 (the
//! state rounded once), which is where the parity tests' tolerance comes from.
//!
//! # Actions
//! mbrl-lib does not clip the action: `a = 1.5` pushes with 15 N. We do the same. Its
//! action space is `Box(-1, 1)`, which the planners respect.
//!
//! # Reward on the terminating step, and the planning reward
//! The environment (mbrl-lib, like CartPole-v1) returns 1.0 on every step *including* the
//! step that terminates, and 0.0 on steps taken after termination. mbrl-lib's planning reward
//! `reward_fns.cartpole` is instead `~termination_fns.cartpole(next_obs)`: 0.0 on the
//! terminating transition. We choose [`reward`] = 1.0 for every transition, equal to what
//! `step` reports, so that the planned return of an action sequence is its true return.
//! The difference to mbrl-lib's planner is exactly one unit on sequences that terminate:
//! candidates that terminate keep their order among themselves; a candidate that terminates
//! on the last step of the horizon ties with one that survives instead of ranking one lower.
//! A planner that wants mbrl-lib's convention subtracts `terminated(next_obs) as f32`.

use super::EnvSpec;

/// Standard gravity used by CartPole-v1 (m/s²).
pub const GRAVITY: f64 = 9.8;
/// Mass of the cart (kg).
pub const MASSCART: f64 = 1.0;
/// Mass of the pole (kg).
pub const MASSPOLE: f64 = 0.1;
/// `masspole + masscart`, evaluated in f64 as in Python.
pub const TOTAL_MASS: f64 = MASSPOLE + MASSCART;
/// Half the pole's length (m).
pub const LENGTH: f64 = 0.5;
/// `masspole * length`.
pub const POLEMASS_LENGTH: f64 = MASSPOLE * LENGTH;
/// Force for action 1.0 (N). The product `action * FORCE_MAG` is taken in f32 (see module docs).
pub const FORCE_MAG: f32 = 10.0;
/// Integration step (s).
pub const TAU: f64 = 0.02;
/// Cart position beyond which the episode terminates (m).
pub const X_THRESHOLD: f64 = 2.4;
/// Pole angle beyond which the episode terminates: `12 * 2 * math.pi / 360` (rad).
pub const THETA_THRESHOLD_RADIANS: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
/// Episode length (TimeLimit).
pub const MAX_EPISODE_STEPS: usize = 200;
/// Dimension of the state and of the observation: `[x, x_dot, theta, theta_dot]`.
pub const STATE_DIM: usize = 4;
/// Dimension of the observation (identical to the state).
pub const OBS_DIM: usize = 4;
/// Dimension of the action.
pub const ACT_DIM: usize = 1;
/// Initial state: each component uniform in `[-RESET_HIGH, RESET_HIGH)`.
pub const RESET_HIGH: f64 = 0.05;

pub(crate) fn spec() -> EnvSpec {
    EnvSpec {
        name: "cartpole".into(),
        obs_dim: OBS_DIM,
        act_dim: ACT_DIM,
        state_dim: STATE_DIM,
        act_low: vec![-1.0],
        act_high: vec![1.0],
        max_episode_steps: MAX_EPISODE_STEPS,
        description: "continuous cart-pole of mbrl-lib's PETS: CartPole-v1 physics, force = 10 N × action \
                      (action in [-1, 1], not clipped), reward 1 per step, terminates when |x| > 2.4 \
                      or |theta| > 12°, 200 steps; obs = state = [x, x_dot, theta, theta_dot]"
            .into(),
    }
}

/// One Euler step of the true dynamics, in place, in the source's precision.
/// Returns `(reward, terminated)` as the environment reports them for a live episode.
pub fn step(state: &mut [f64], act: &[f32]) -> (f64, bool) {
    let (x, x_dot, theta, theta_dot) = (state[0], state[1], state[2], state[3]);
    // np.float32 * Python float -> float32 under NEP 50, then widened by the float64 sum.
    let force = f64::from(act[0] * FORCE_MAG);
    let costheta = theta.cos();
    let sintheta = theta.sin();
    // Same association as Python: `a * b**2 * c` is `(a * b**2) * c`.
    let temp = (force + POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) / TOTAL_MASS;
    let thetaacc = (GRAVITY * sintheta - costheta * temp)
        / (LENGTH * (4.0 / 3.0 - MASSPOLE * (costheta * costheta) / TOTAL_MASS));
    let xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS;
    // kinematics_integrator == "euler": positions advance with the old velocities.
    state[0] = x + TAU * x_dot;
    state[1] = x_dot + TAU * xacc;
    state[2] = theta + TAU * theta_dot;
    state[3] = theta_dot + TAU * thetaacc;
    (1.0, out_of_bounds(state[0], state[2]))
}

/// The source's termination test, on f64 values: strict inequalities, so NaN is not terminal
/// (`!(-t..=t).contains(&x)` would call NaN terminal, hence the allow).
#[allow(clippy::manual_range_contains)]
fn out_of_bounds(x: f64, theta: f64) -> bool {
    x < -X_THRESHOLD
        || x > X_THRESHOLD
        || theta < -THETA_THRESHOLD_RADIANS
        || theta > THETA_THRESHOLD_RADIANS
}

/// Observation of a state: the state itself, rounded to f32.
pub fn observe(state: &[f64], obs: &mut [f32]) {
    for (o, s) in obs.iter_mut().zip(state) {
        *o = *s as f32;
    }
}

/// Planning reward: 1.0 for every transition (see the module docs for mbrl-lib's variant).
pub fn reward(_obs: &[f32], _act: &[f32], _next_obs: &[f32]) -> f32 {
    1.0
}

/// Planning termination from a (possibly predicted) observation.
///
/// For finite values it is the environment's test (`|x| > 2.4 or |θ| > 12°`, strict), applied
/// to the f32 observation widened to f64; it can only disagree with `step` when the f64
/// state lies within one f32 rounding (~1e-7) of a threshold. A non-finite coordinate counts
/// as terminated (as in mbrl-lib's `termination_fns.cartpole`, which tests `not_done`), so a
/// diverging model prediction stops earning reward.
pub fn terminated(next_obs: &[f32]) -> bool {
    let x = f64::from(next_obs[0]);
    let theta = f64::from(next_obs[2]);
    let alive = (-X_THRESHOLD..=X_THRESHOLD).contains(&x)
        && (-THETA_THRESHOLD_RADIANS..=THETA_THRESHOLD_RADIANS).contains(&theta);
    !alive
}

/// Initial state: Gymnasium's distribution (each component uniform in [-0.05, 0.05)), drawn
/// from our generator.
pub(crate) fn sample_initial_state(rng: &mut super::SplitMix64, state: &mut [f64]) {
    for s in state.iter_mut() {
        *s = rng.uniform(-RESET_HIGH, RESET_HIGH);
    }
}
