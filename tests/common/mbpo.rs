//! A tiny MBPO run on Pendulum-v1 (seconds on the CPU), included by path (`#[path]`) in
//! `policy.rs` (resume, learning mechanics) and `wgpu_parity.rs` (the same run on a
//! device), so neither test crate compiles the other's fixtures.
use mbrl_gpu::algo::mbpo::MbpoConfig;
use mbrl_gpu::env::EnvId;

/// The `quick` preset cut down: 100-step epochs, a model retrained every 50 steps on a
/// 2-layer 16-wide ensemble, 4 rollouts per step with k following [1, 3, 1, 3], 2 SAC
/// updates of batch 32 per step, one evaluation episode per epoch.
pub fn tiny_mbpo(steps: usize) -> MbpoConfig {
    let mut c = MbpoConfig::preset(&EnvId::Pendulum.into(), "quick").unwrap();
    c.steps = steps;
    c.epoch_length = 100;
    c.freq_train_model = 50;
    c.initial_exploration_steps = 100;
    c.effective_model_rollouts_per_step = 4;
    c.num_sac_updates_per_step = 2;
    c.rollout_schedule = [1, 3, 1, 3];
    c.eval_episodes = 1;
    c.model.hidden = 16;
    c.model.num_layers = 2;
    c.train.epochs = 3;
    c.train.patience = None;
    c.sac.hidden = 16;
    c.sac.batch_size = 32;
    c
}
