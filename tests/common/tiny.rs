//! The smallest MBPO run that still trains a model and takes SAC steps (one evaluation at
//! 400 env steps), for the tests of environments rather than of learning.
pub const TINY_MBPO: [&str; 20] = [
    "--preset",
    "quick",
    "--steps",
    "400",
    "--set",
    "epoch_length=200",
    "--set",
    "freq_train_model=200",
    "--set",
    "initial_exploration_steps=200",
    "--set",
    "eval_episodes=1",
    "--set",
    "train.epochs=3",
    "--set",
    "num_sac_updates_per_step=2",
    "--set",
    "effective_model_rollouts_per_step=50",
    "--set",
    "num_epochs_to_retain_sac_buffer=1",
];
