//! Reward and termination functions by number, as the rollout kernels see them
//! (`RolloutParams::env`). Codes 0–2 are the native environments ([`EnvId::code`]); further
//! codes are tasks whose dynamics live elsewhere (a Gymnasium environment through the
//! bridge) but whose reward a planner can still evaluate on the device.
use super::EnvId;

/// mbrl-lib's `reward_fns.halfcheetah`: `next_obs[0] − 0.1·‖a‖²`, where observation 0 is the
/// forward velocity (mbrl-lib prepends it); never terminates. Used by `bench plan`.
pub const HALF_CHEETAH: u32 = 3;

/// Observation and action sizes of the half-cheetah task.
pub const HALF_CHEETAH_OBS: usize = 18;
pub const HALF_CHEETAH_ACT: usize = 6;

/// Whether `code` names a reward function.
pub fn known(code: u32) -> bool {
    EnvId::from_code(code).is_some() || code == HALF_CHEETAH
}

/// Reward of a transition under task `code` (unknown codes give NaN, which the rollout
/// turns into a return of −∞; callers validate codes first).
pub fn reward(code: u32, obs: &[f32], act: &[f32], next_obs: &[f32]) -> f32 {
    match EnvId::from_code(code) {
        Some(env) => env.reward(obs, act, next_obs),
        None if code == HALF_CHEETAH => next_obs[0] - 0.1 * act.iter().map(|a| a * a).sum::<f32>(),
        None => f32::NAN,
    }
}

/// Termination of a transition under task `code`.
pub fn terminated(code: u32, next_obs: &[f32]) -> bool {
    match EnvId::from_code(code) {
        Some(env) => env.terminated(next_obs),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_cheetah_reward_should_be_velocity_minus_control_cost() {
        let mut next = [0.0f32; HALF_CHEETAH_OBS];
        next[0] = 2.0;
        let act = [0.5f32, -1.0, 0.0, 0.0, 0.0, 0.0];
        assert!((reward(HALF_CHEETAH, &next, &act, &next) - (2.0 - 0.125)).abs() < 1e-6);
        assert!(!terminated(HALF_CHEETAH, &next));
        assert!(known(0) && known(HALF_CHEETAH) && !known(99));
    }
}
