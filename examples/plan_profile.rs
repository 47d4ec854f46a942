//! Profile target: the small real-time planning case of `bench plan` (5 members 3×64,
//! population 1000, horizon 30, 3 CEM iterations, expectation), `perf record` it.
//! `plan_profile N [f32|bf16]` times N actions; `PROFILE_RELU=1` swaps SiLU for ReLU, to see
//! what the activation epilogue costs; `PROFILE_CARTPOLE=1` runs `bench plan`'s mbrl-lib
//! cart-pole step instead (7 × 4×200 SiLU, 5 elites, 350 candidates × 20 particles, TS1,
//! horizon 15, 5 CEM iterations).
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
    let precision = if bf16 {
        mbrl_gpu::backend::Precision::Bf16
    } else {
        mbrl_gpu::backend::Precision::F32
    };
    let (env, model, cfg, ts, obs) = if std::env::var_os("PROFILE_CARTPOLE").is_some() {
        let cp = EnvId::CartPole.spec();
        let ts = TsConfig {
            particles: 20,
            propagation: Propagation::Ts1,
        };
        (
            EnvId::CartPole,
            ModelConfig::pets(cp.obs_dim, cp.act_dim),
            PlannerConfig::pets_cartpole(),
            ts,
            vec![0.01, -0.02, 0.03, 0.0],
        )
    } else {
        let mut small = mbrl_gpu::bench::small_model_config();
        if std::env::var_os("PROFILE_RELU").is_some() {
            small.activation = mbrl_gpu::backend::Activation::Relu;
        }
        let cfg = PlannerConfig {
            horizon: 30,
            population: 1000,
            num_elites: 100,
            iterations: 3,
            ..PlannerConfig::pets_cartpole()
        };
        let ts = TsConfig {
            particles: 1,
            propagation: Propagation::Expectation,
        };
        (EnvId::Pendulum, small, cfg, ts, vec![0.9, 0.43, -0.2])
    };
    let spec = env.spec();
    let model = Ensemble::new(model, 0).unwrap();
    let cfg = PlannerConfig { precision, ..cfg };
    let mut mpc = Mpc::with_model_task(
        &be,
        &model,
        env.code(),
        &spec.act_low,
        &spec.act_high,
        cfg,
        ts,
        0,
    )
    .unwrap();
    let obs = &obs[..];
    mpc.act(&be, obs, &[]).unwrap();
    let t0 = std::time::Instant::now();
    let mut last = vec![];
    for _ in 0..n {
        last = mpc.act(&be, obs, &[]).unwrap();
    }
    eprintln!(
        "{:.3} ms per action",
        t0.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    // Exact (round-trip) digits: two builds that plan the same bits print the same line.
    eprintln!("last action {last:?}");
}
