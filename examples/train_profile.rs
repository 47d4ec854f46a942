//! Profile target: the training epoch of `bench model` (2000 cart-pole transitions, E = 7,
//! 4×200, batch 256), `perf record` it. `train_profile EPOCHS [f32|bf16]`.
use mbrl_gpu::backend::{cpu::CpuBackend, Precision};
use mbrl_gpu::model::train::{train, TrainConfig};
use mbrl_gpu::model::{Ensemble, ModelConfig};

fn main() {
    let epochs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let precision = match std::env::args().nth(2).as_deref() {
        Some("bf16") => Precision::Bf16,
        _ => Precision::F32,
    };
    let data = mbrl_gpu::bench::synthetic_transitions(2000, 4, 1, 11);
    let mut cfg_model = ModelConfig::pets(4, 1);
    cfg_model.num_elites = 5;
    let mut m = Ensemble::new(cfg_model, 0).unwrap();
    let cfg = TrainConfig {
        epochs,
        precision,
        ..TrainConfig::default()
    };
    let be = CpuBackend::new();
    let t0 = std::time::Instant::now();
    train(&be, &mut m, &data, &cfg, |_| {}).unwrap();
    eprintln!(
        "{:.2} ms per epoch (set-up included)",
        t0.elapsed().as_secs_f64() * 1e3 / epochs as f64
    );
}
