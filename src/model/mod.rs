//! The probabilistic ensemble of PETS (Chua et al. 2018; lecture slides "PETS: Probabilistic
//! Ensembles with Trajectory Sampling"): E bootstrapped MLPs, each predicting a Gaussian over
//! the state change (and optionally the reward).
pub mod data;
pub mod ensemble;
pub mod train;

pub use data::Transitions;
pub use ensemble::{Ensemble, ModelConfig};
pub use train::{EpochReport, TrainConfig, TrainReport};
