//! Profile target: SAC gradient steps at batch 256, 2×256 networks (`perf record` it).
use mbrl_gpu::policy::{Replay, Sac, SacConfig};

fn main() {
    // `sac_profile N [f32|bf16] [OBS ACT]`: N updates (f32 or bf16 training products) at
    // Pendulum-v1 sizes (3, 1) or the given ones (HalfCheetah: 17 6).
    let arg = |i: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse::<usize>().ok())
    };
    let (obs, act) = (arg(3).unwrap_or(3), arg(4).unwrap_or(1));
    let precision = match std::env::args().nth(2).as_deref() {
        Some("bf16") => mbrl_gpu::backend::Precision::Bf16,
        _ => mbrl_gpu::backend::Precision::F32,
    };
    let cfg = SacConfig {
        precision,
        ..SacConfig::default()
    };
    let mut agent = Sac::new(cfg, obs, &vec![-2.0; act], &vec![2.0; act], 0).unwrap();
    let mut r = Replay::new(obs, act, 4096);
    let t = mbrl_gpu::bench::synthetic_transitions(4096, obs, act, 1);
    for i in 0..t.len() {
        r.push(
            &t.obs[i * obs..][..obs],
            &t.act[i * act..][..act]
                .iter()
                .map(|a| a.tanh())
                .collect::<Vec<_>>(),
            0.1,
            &t.next_obs[i * obs..][..obs],
            false,
        );
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let t0 = std::time::Instant::now();
    for u in 0..n {
        let b = r.sample(0, 14, u as u32, 256);
        agent.update(&b).unwrap();
    }
    eprintln!(
        "{:.3} ms per update",
        t0.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}
