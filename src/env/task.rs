//! Reward and termination functions by number, as the rollout kernels see them
//! (`RolloutParams::env`). Codes 0–2 are the native environments ([`EnvId::code`]); further
//! codes are tasks whose dynamics live elsewhere (a Gymnasium environment through the
//! bridge) but whose reward a planner can still evaluate on the device.
use super::EnvId;
use crate::backend::cpu::Real;

/// mbrl-lib's `reward_fns.halfcheetah`: `next_obs[0] − 0.1·‖a‖²`, where observation 0 is the
/// forward velocity (mbrl-lib prepends it); never terminates. Used by `bench plan`.
pub const HALF_CHEETAH: u32 = 3;

/// Observation and action sizes of the half-cheetah task.
pub const HALF_CHEETAH_OBS: usize = 18;
pub const HALF_CHEETAH_ACT: usize = 6;

/// A task whose reward is not known as a function of observations (a Gymnasium environment
/// without a native counterpart): the model must learn the reward, and nothing terminates.
/// [`reward`] gives NaN for it, which the rollouts refuse unless the model learns rewards.
pub const NONE: u32 = 0xFFFF;

/// The MuJoCo v5 tasks' termination functions on observations (mbrl-lib's
/// `termination_fns` and MBPO's static functions, on Gymnasium v5's observation layouts);
/// their rewards are learned (Gymnasium's forward reward is a finite difference over the
/// frame skip, which no observation holds), except the inverted pendulum's.
///
/// Hopper-v5 (obs = qpos[1:] ++ clip(qvel, ±10)): alive while every value is finite, every
/// |obs[1:]| < 100, obs[0] (height) > 0.7 and |obs[1]| (angle) < 0.2.
pub const HOPPER: u32 = 4;
/// Walker2d-v5: alive while 0.8 < obs[0] < 2.0 and −1 < obs[1] < 1.
pub const WALKER2D: u32 = 5;
/// Ant-v5 (obs[0] is the torso height): alive while every value is finite and
/// 0.2 ≤ obs[0] ≤ 1.0.
pub const ANT: u32 = 6;
/// InvertedPendulum-v5: terminates when a value is not finite or |obs[1]| > 0.2; the reward
/// is 1 while alive and 0 on the terminating step, exactly as Gymnasium's.
pub const INVERTED_PENDULUM: u32 = 7;

/// A planning reward for InvertedPendulum-v5 (`planner_reward = "shaped"`): the task's
/// termination, and while alive `1 − W·(x² + (θ/0.2)²)` with x = obs[0] (the cart on its
/// rail, whose stops are at ±1) and θ = obs[1] (the pole, terminating beyond ±0.2), W =
/// [`CENTRED_WEIGHT`]; 0 on the terminating step. Inside the live region the reward stays
/// ≥ 0, so surviving a step always scores at least as much as falling; among paths that all
/// survive the horizon (the task's own 0/1 reward scores them alike) it prefers the one that
/// keeps the cart away from its stops and the pole upright. PETS's own experiments planned
/// with shaped costs of this kind; the returns reported stay the task's.
pub const INVERTED_PENDULUM_CENTRED: u32 = 8;

/// W of [`INVERTED_PENDULUM_CENTRED`]: 0.5 costs the planner half a step's reward at a stop.
pub const CENTRED_WEIGHT: f32 = 0.5;

/// Whether `code` names a reward or termination function.
pub fn known(code: u32) -> bool {
    EnvId::from_code(code).is_some() || (HALF_CHEETAH..=INVERTED_PENDULUM_CENTRED).contains(&code)
}

/// Whether `code` has a reward function of observations (else the model must learn it).
pub fn has_reward(code: u32) -> bool {
    EnvId::from_code(code).is_some()
        || code == HALF_CHEETAH
        || code == INVERTED_PENDULUM
        || code == INVERTED_PENDULUM_CENTRED
}

/// The shaped planning reward of task `code` (`planner_reward = "shaped"`), where one exists.
pub fn shaped(code: u32) -> Option<u32> {
    (code == INVERTED_PENDULUM).then_some(INVERTED_PENDULUM_CENTRED)
}

/// Reward of a transition under task `code` (codes without a reward function give NaN, which
/// the rollout turns into a return of −∞; callers check [`has_reward`] first).
pub fn reward(code: u32, obs: &[f32], act: &[f32], next_obs: &[f32]) -> f32 {
    match EnvId::from_code(code) {
        Some(env) => env.reward(obs, act, next_obs),
        None if code == HALF_CHEETAH => next_obs[0] - 0.1 * act.iter().map(|a| a * a).sum::<f32>(),
        None if code == INVERTED_PENDULUM => {
            if terminated(code, next_obs) {
                0.0
            } else {
                1.0
            }
        }
        None if code == INVERTED_PENDULUM_CENTRED => {
            if terminated(code, next_obs) {
                0.0
            } else {
                let (x, th) = (next_obs[0], next_obs[1] / 0.2);
                1.0 - CENTRED_WEIGHT * (x * x + th * th)
            }
        }
        None => f32::NAN,
    }
}

/// Termination of a transition under task `code`.
pub fn terminated(code: u32, next_obs: &[f32]) -> bool {
    if let Some(env) = EnvId::from_code(code) {
        return env.terminated(next_obs);
    }
    let finite = || next_obs.iter().all(|v| v.is_finite());
    match code {
        HOPPER => {
            let alive = finite()
                && next_obs[1..].iter().all(|v| v.abs() < 100.0)
                && next_obs[0] > 0.7
                && next_obs[1].abs() < 0.2;
            !alive
        }
        WALKER2D => {
            let (h, a) = (next_obs[0], next_obs[1]);
            !(h > 0.8 && h < 2.0 && a > -1.0 && a < 1.0)
        }
        ANT => !(finite() && next_obs[0] >= 0.2 && next_obs[0] <= 1.0),
        INVERTED_PENDULUM | INVERTED_PENDULUM_CENTRED => !finite() || next_obs[1].abs() > 0.2,
        _ => false,
    }
}

/// Upstream gradients of a reward: `w` times ∂r/∂obs, ∂r/∂act and ∂r/∂next_obs are added
/// into `obs`, `act` and `next` (each as wide as the corresponding input).
pub struct RewardGrad<'g, T> {
    pub w: T,
    pub obs: &'g mut [T],
    pub act: &'g mut [T],
    pub next: &'g mut [T],
}

/// [`reward`] in any precision, and with `grad` its gradient: what path-gradient methods
/// (MAAC, SVG) backpropagate through. Derived by hand per task (checked against central
/// finite differences in f64 in the tests); almost everywhere, as the rewards are piecewise
/// smooth (the pendulum's action clip, the goal bonus of the mountain car, termination).
///
/// - pendulum: r = −(θ² + 0.1·θ̇² + 0.001·u²), θ = atan2(obs₁, obs₀), u = clip(a, −2, 2):
///   ∂θ/∂obs₀ = −obs₁/ρ², ∂θ/∂obs₁ = obs₀/ρ² (ρ² = obs₀² + obs₁²), ∂r/∂u = −0.002·u inside
///   the clip, 0 outside;
/// - cart-pole: r = 1, no gradient (the learning signal is the critic's and termination's);
/// - mountain car: r = 100·[goal reached] − 0.1·a², ∂r/∂a = −0.2·a;
/// - half-cheetah: r = next₀ − 0.1·‖a‖².
pub fn reward_vjp<T: Real>(
    code: u32,
    obs: &[T],
    act: &[T],
    next: &[T],
    grad: Option<RewardGrad<'_, T>>,
) -> T {
    let c = T::c;
    match (EnvId::from_code(code), code) {
        (Some(EnvId::Pendulum), _) => {
            let (x, y, td) = (obs[0], obs[1], obs[2]);
            let th = y.atan2(x);
            let lim = c(super::pendulum::MAX_TORQUE as f64);
            let u = act[0].max(-lim).min(lim);
            let r = -(th * th + c(0.1) * td * td + c(0.001) * u * u);
            if let Some(g) = grad {
                let rho2 = x * x + y * y;
                // ∂r/∂θ = −2θ.
                g.obs[0] += g.w * c(-2.0) * th * (-y / rho2);
                g.obs[1] += g.w * c(-2.0) * th * (x / rho2);
                g.obs[2] += g.w * c(-0.2) * td;
                if act[0] > -lim && act[0] < lim {
                    g.act[0] += g.w * c(-0.002) * u;
                }
            }
            r
        }
        (Some(EnvId::CartPole), _) => T::one(),
        (Some(EnvId::MountainCar), _) => {
            let nx: Vec<f32> = next.iter().map(|v| Real::to_f64(*v) as f32).collect();
            let bonus = if super::mountain_car::terminated(&nx) {
                c(100.0)
            } else {
                T::zero()
            };
            if let Some(g) = grad {
                g.act[0] += g.w * c(-0.2) * act[0];
            }
            bonus - c(0.1) * act[0] * act[0]
        }
        (None, HALF_CHEETAH) => {
            let cost: T = act.iter().map(|a| *a * *a).sum();
            if let Some(g) = grad {
                g.next[0] += g.w;
                for (ga, a) in g.act.iter_mut().zip(act) {
                    *ga += g.w * c(-0.2) * *a;
                }
            }
            next[0] - c(0.1) * cost
        }
        (None, INVERTED_PENDULUM) => {
            // 1 while alive: no gradient (the signal is termination's and the critic's).
            let nx: Vec<f32> = next.iter().map(|v| Real::to_f64(*v) as f32).collect();
            if terminated(code, &nx) {
                T::zero()
            } else {
                T::one()
            }
        }
        (None, _) => T::nan(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ∂r against f64 central differences, and the value against the f32 reward function,
    /// at random points away from the kinks.
    #[test]
    fn reward_gradients_should_match_finite_differences() {
        let mut g = crate::rng::Philox::new(3, 99, 0);
        let cases: [(u32, usize, usize); 4] = [
            (EnvId::Pendulum.code(), 3, 1),
            (EnvId::CartPole.code(), 4, 1),
            (EnvId::MountainCar.code(), 2, 1),
            (HALF_CHEETAH, HALF_CHEETAH_OBS, HALF_CHEETAH_ACT),
        ];
        for (code, o, a) in cases {
            for trial in 0..20 {
                let mut v: Vec<f64> = (0..2 * o + a).map(|_| g.normal() as f64 * 0.8).collect();
                if code == EnvId::MountainCar.code() && trial % 2 == 1 {
                    // At the goal: the bonus is constant nearby.
                    v[o + a] = 0.6;
                    v[o + a + 1] = 0.05;
                }
                let (obs, rest) = v.split_at(o);
                let (act, next) = rest.split_at(a);
                let (mut go, mut ga, mut gn) = (vec![0.0; o], vec![0.0; a], vec![0.0; o]);
                let r = reward_vjp(
                    code,
                    obs,
                    act,
                    next,
                    Some(RewardGrad {
                        w: 1.0,
                        obs: &mut go,
                        act: &mut ga,
                        next: &mut gn,
                    }),
                );
                let f32s = |x: &[f64]| x.iter().map(|v| *v as f32).collect::<Vec<_>>();
                let r32 = reward(code, &f32s(obs), &f32s(act), &f32s(next));
                assert!(
                    (r - r32 as f64).abs() <= 1e-5 * (1.0 + r.abs()),
                    "task {code}: {r} vs the f32 reward {r32}"
                );
                let analytic: Vec<f64> = go.iter().chain(&ga).chain(&gn).copied().collect();
                for (i, an) in analytic.iter().enumerate() {
                    let h = 1e-6;
                    let mut p = v.clone();
                    p[i] += h;
                    let mut m = v.clone();
                    m[i] -= h;
                    let f = |x: &[f64]| {
                        let (ob, rs) = x.split_at(o);
                        let (ac, nx) = rs.split_at(a);
                        reward_vjp::<f64>(code, ob, ac, nx, None)
                    };
                    let fd = (f(&p) - f(&m)) / (2.0 * h);
                    assert!(
                        (fd - an).abs() <= 1e-6 * (1.0 + fd.abs()),
                        "task {code} trial {trial} input {i}: analytic {an}, central difference {fd}"
                    );
                }
            }
        }
    }

    #[test]
    fn half_cheetah_reward_should_be_velocity_minus_control_cost() {
        let mut next = [0.0f32; HALF_CHEETAH_OBS];
        next[0] = 2.0;
        let act = [0.5f32, -1.0, 0.0, 0.0, 0.0, 0.0];
        assert!((reward(HALF_CHEETAH, &next, &act, &next) - (2.0 - 0.125)).abs() < 1e-6);
        assert!(!terminated(HALF_CHEETAH, &next));
        assert!(known(0) && known(HALF_CHEETAH) && !known(99));
    }

    /// The shaped inverted-pendulum reward: the task's termination, the quadratic cost inside
    /// it, never below the terminating step's 0 while the cart is within its stops.
    #[test]
    fn the_centred_inverted_pendulum_reward_should_cost_distance_from_the_centre() {
        let c = INVERTED_PENDULUM_CENTRED;
        assert_eq!(shaped(INVERTED_PENDULUM), Some(c));
        assert_eq!(shaped(HALF_CHEETAH), None);
        assert!(known(c) && has_reward(c));
        let r = |x: f32, th: f32| reward(c, &[0.0; 4], &[0.0], &[x, th, 0.3, -0.7]);
        assert_eq!(r(0.0, 0.0), 1.0);
        assert!((r(0.5, 0.1) - (1.0 - 0.5 * (0.25 + 0.25))).abs() < 1e-6);
        assert!((r(-1.0, -0.2) - 0.0).abs() < 1e-6, "{}", r(-1.0, -0.2));
        assert_eq!(r(0.0, 0.2001), 0.0);
        assert_eq!(r(0.0, f32::NAN), 0.0);
        for (x, th) in [(0.3, 0.05), (-0.9, 0.19), (0.0, -0.2)] {
            let next = [x, th, 0.0, 0.0];
            assert!(r(x, th) >= 0.0 && r(x, th) <= 1.0);
            // Terminations are the task's, reward for reward where nothing is shaped.
            assert_eq!(terminated(c, &next), terminated(INVERTED_PENDULUM, &next));
            assert_eq!(reward(INVERTED_PENDULUM, &[0.0; 4], &[0.0], &next), 1.0);
        }
        assert!(r(0.2, 0.0) > r(0.4, 0.0) && r(0.0, 0.05) > r(0.0, -0.1));
    }
}
