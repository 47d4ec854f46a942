//! Fixtures shared by the device parity tests (`wgpu_parity.rs`, `cuda_pocl.rs`).
use mbrl_gpu::backend::Propagation;
use mbrl_gpu::env::EnvId;
use mbrl_gpu::model::{Ensemble, ModelConfig};
use mbrl_gpu::plan::{PlannerConfig, TsConfig};

/// A consecutive-MPC-steps case: an untrained pendulum ensemble with awkward widths, a
/// small CEM (37 candidates, 3 particles, TS∞) and three observations in a row, so the
/// second and third steps exercise the warm start.
pub struct MpcCase {
    pub env: EnvId,
    pub model: Ensemble,
    pub planner: PlannerConfig,
    pub ts: TsConfig,
    pub seed: u64,
    pub observations: [[f32; 3]; 3],
}

pub fn mpc_case() -> MpcCase {
    let mut cfg = ModelConfig::pets(3, 1);
    cfg.hidden = 13;
    cfg.num_layers = 2;
    MpcCase {
        env: EnvId::Pendulum,
        model: Ensemble::new(cfg, 4).unwrap(),
        planner: PlannerConfig {
            horizon: 6,
            population: 37,
            num_elites: 5,
            iterations: 3,
            ..PlannerConfig::pets_cartpole()
        },
        ts: TsConfig {
            particles: 3,
            propagation: Propagation::TsInf,
        },
        seed: 9,
        observations: [[0.9, 0.43, -0.2], [0.85, 0.52, 0.3], [0.8, 0.6, 0.5]],
    }
}
