//! Fixtures shared by the device parity tests (`wgpu_parity.rs`, `cuda_pocl.rs`).
pub mod branch;
pub mod dense;
pub mod path;
pub mod planners;
pub mod sac;
pub mod value;
use mbrl_gpu::backend::{Backend, EnsembleShape, Propagation, RolloutParams};
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

/// A rollout case per MuJoCo v5 task code (`env::task`): observation and action widths,
/// whether the model learns the reward (all but the inverted pendulum's exact reward, which
/// is checked both ways), and a start near the termination thresholds so that candidates
/// differ (the hopper's obs[5] sits just under its state-range limit of 100).
pub struct TaskCase {
    pub name: &'static str,
    pub code: u32,
    pub obs_dim: usize,
    pub act_dim: usize,
    pub learn_reward: bool,
    pub start: Vec<f32>,
}

impl TaskCase {
    /// A small probabilistic ensemble of `ensemble` members for the case's widths.
    pub fn shape(&self, ensemble: usize) -> mbrl_gpu::backend::EnsembleShape {
        mbrl_gpu::backend::EnsembleShape {
            ensemble,
            in_dim: self.obs_dim + self.act_dim,
            out_dim: self.obs_dim + self.learn_reward as usize,
            hidden: 24,
            num_layers: 2,
            activation: mbrl_gpu::backend::Activation::Silu,
            probabilistic: true,
        }
    }
}

pub fn mujoco_task_cases() -> Vec<TaskCase> {
    use mbrl_gpu::env::task;
    let start = |od: usize, set: &[(usize, f32)]| {
        let mut v = vec![0.0f32; od];
        for (i, x) in set {
            v[*i] = *x;
        }
        v
    };
    vec![
        TaskCase {
            name: "hopper",
            code: task::HOPPER,
            obs_dim: 11,
            act_dim: 3,
            learn_reward: true,
            start: start(11, &[(0, 0.72), (1, 0.12), (5, 99.9)]),
        },
        TaskCase {
            name: "walker2d",
            code: task::WALKER2D,
            obs_dim: 17,
            act_dim: 6,
            learn_reward: true,
            start: start(17, &[(0, 0.82), (1, 0.95)]),
        },
        TaskCase {
            name: "ant",
            code: task::ANT,
            obs_dim: 105,
            act_dim: 8,
            learn_reward: true,
            start: start(105, &[(0, 0.22)]),
        },
        TaskCase {
            name: "inverted-pendulum",
            code: task::INVERTED_PENDULUM,
            obs_dim: 4,
            act_dim: 1,
            learn_reward: false,
            start: start(4, &[(1, 0.17)]),
        },
        TaskCase {
            // The shaped planning reward: the cart off centre, so both cost terms count.
            name: "inverted-pendulum centred",
            code: task::INVERTED_PENDULUM_CENTRED,
            obs_dim: 4,
            act_dim: 1,
            learn_reward: false,
            start: start(4, &[(0, 0.45), (1, 0.17)]),
        },
        TaskCase {
            name: "inverted-pendulum learned",
            code: task::INVERTED_PENDULUM,
            obs_dim: 4,
            act_dim: 1,
            learn_reward: true,
            start: start(4, &[(1, 0.17)]),
        },
    ]
}

/// The device poison: a quiet NaN with a payload that no arithmetic produces (computed NaNs
/// carry the canonical payload), so an element a kernel never wrote is told apart from a NaN it
/// computed, and never matches a reference.
pub const POISON: u32 = 0x7fc0_dead;

/// The CPU reference's pre-fill: finite, far outside every output, and unlike the device
/// poison, so an element that neither backend writes can never compare equal.
pub const REF_FILL: f32 = -7.77e30;

/// An output buffer pre-filled so that an element nobody writes fails the comparison: a
/// device's with [`POISON`], the CPU reference's with [`REF_FILL`].
pub fn poisoned<B: Backend>(b: &B, n: usize) -> B::Buf {
    let fill = if b.name() == "cpu" {
        REF_FILL
    } else {
        f32::from_bits(POISON)
    };
    b.upload(&vec![fill; n]).unwrap()
}

/// A model rollout on any backend from host arrays: uploaded, into a poisoned output,
/// downloaded (the CPU reference and the device run the same call).
#[allow(clippy::too_many_arguments)]
pub fn rollout_on<B: Backend>(
    b: &B,
    p: &RolloutParams,
    shape: &EnsembleShape,
    params: &[f32],
    norm: &[f32],
    start: &[f32],
    actions: &[f32],
) -> Vec<f32> {
    let (pp, nn, ss, aa) = (
        b.upload(params).unwrap(),
        b.upload(norm).unwrap(),
        b.upload(start).unwrap(),
        b.upload(actions).unwrap(),
    );
    let mut ret = poisoned(b, p.population as usize);
    b.rollout(p, shape, &pp, &nn, &ss, &aa, &mut ret).unwrap();
    b.download(&ret).unwrap()
}
