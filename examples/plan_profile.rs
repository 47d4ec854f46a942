//! Profile target: the small real-time planning case of `bench plan` (5 members 3×64,
//! population 1000, horizon 30, 3 CEM iterations, expectation), `perf record` it.
//! `plan_profile N [f32|bf16]` times N actions; `PROFILE_RELU=1` swaps SiLU for ReLU, to see
//! what the activation epilogue costs.
use mbrl_gpu::backend::{cpu::CpuBackend, Propagation};
use mbrl_gpu::env::EnvId;
use mbrl_gpu::model::{Ensemble, ModelConfig};
use mbrl_gpu::plan::{Mpc, PlannerConfig, TsConfig};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let bf16 = std::env::args().nth(2).as_deref() == Some("bf16");
    let be = if bf16 {
        CpuBackend::with_bf16_planning()
    } else {
        CpuBackend::new()
    };
    let pd = EnvId::Pendulum.spec();
    let mut small = ModelConfig::pets(pd.obs_dim, pd.act_dim);
    small.ensemble_size = 5;
    small.num_elites = 5;
    small.num_layers = 3;
    small.hidden = 64;
    if std::env::var_os("PROFILE_RELU").is_some() {
        small.activation = mbrl_gpu::backend::Activation::Relu;
    }
    let model = Ensemble::new(small, 0).unwrap();
    let cfg = PlannerConfig {
        horizon: 30,
        population: 1000,
        num_elites: 100,
        iterations: 3,
        precision: if bf16 {
            mbrl_gpu::backend::Precision::Bf16
        } else {
            mbrl_gpu::backend::Precision::F32
        },
        ..PlannerConfig::pets_cartpole()
    };
    let ts = TsConfig {
        particles: 1,
        propagation: Propagation::Expectation,
    };
    let mut mpc = Mpc::with_model_task(
        &be,
        &model,
        EnvId::Pendulum.code(),
        &pd.act_low,
        &pd.act_high,
        cfg,
        ts,
        0,
    )
    .unwrap();
    let obs = [0.9, 0.43, -0.2];
    mpc.act(&be, &obs, &[]).unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        mpc.act(&be, &obs, &[]).unwrap();
    }
    eprintln!(
        "{:.3} ms per action",
        t0.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}
