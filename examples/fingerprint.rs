//! Bit-for-bit fingerprints of the CPU engines, to tell whether a change moved any number:
//! FNV-1a hashes of a 5-layer bf16 planning chain, of 100 SAC updates (Pendulum-v1 and
//! HalfCheetah sizes) and of 3 training epochs, each in f32 and bf16. Run it before and
//! after a change (`cargo run --release --example fingerprint`) and compare the lines.
use mbrl_gpu::backend::{cpu::CpuBackend, Precision};
use mbrl_gpu::model::train::{train, TrainConfig};
use mbrl_gpu::model::{Ensemble, ModelConfig};
use mbrl_gpu::policy::{Replay, Sac, SacConfig};

fn h(v: &[f32]) -> u64 {
    v.iter().fold(1469598103934665603u64, |a, x| {
        (a ^ x.to_bits() as u64).wrapping_mul(1099511628211)
    })
}

fn main() {
    {
        use mbrl_gpu::bf16::{chain, ChainScratch, Packed};
        let dims = [5usize, 200, 200, 200, 200, 8];
        let mut seed = 7u64;
        let mut rnd = |n: usize, s: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * s
                })
                .collect()
        };
        let ws: Vec<Vec<f32>> = dims.windows(2).map(|d| rnd(d[0] * d[1], 0.2)).collect();
        let bs: Vec<Vec<f32>> = dims[1..].iter().map(|&n| rnd(n, 0.1)).collect();
        let layers: Vec<Packed> = ws
            .iter()
            .zip(dims.windows(2))
            .map(|(w, d)| Packed::new(w, d[0], d[1]))
            .collect();
        let biases: Vec<&[f32]> = bs.iter().map(|b| b.as_slice()).collect();
        let x = rnd(1000 * 5, 4.0);
        let mut out = vec![0.0f32; 1000 * 8];
        let mut s = ChainScratch::default();
        chain(
            &x,
            1000,
            &layers,
            &biases,
            mbrl_gpu::backend::Activation::Silu,
            &mut out,
            &mut s,
        );
        println!("chain bf16 silu: {:016x}", h(&out));
    }
    for precision in [Precision::F32, Precision::Bf16] {
        for (obs, act) in [(3usize, 1usize), (17, 6)] {
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
            for u in 0..100 {
                let b = r.sample(0, 14, u as u32, 256);
                agent.update(&b).unwrap();
            }
            println!(
                "sac {precision:?} {obs}x{act}: actor {:016x} critic {:016x}",
                h(&agent.actor),
                h(&agent.critic)
            );
        }
        let data = mbrl_gpu::bench::synthetic_transitions(2000, 4, 1, 11);
        let mut cfg_model = ModelConfig::pets(4, 1);
        cfg_model.num_elites = 5;
        let mut m = Ensemble::new(cfg_model, 0).unwrap();
        let cfg = TrainConfig {
            epochs: 3,
            precision,
            ..TrainConfig::default()
        };
        train(&CpuBackend::new(), &mut m, &data, &cfg, |_| {}).unwrap();
        println!("train {precision:?}: {:016x}", h(&m.params));
    }
}
