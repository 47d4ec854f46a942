//! SAC's device gradient step (`policy::device::DeviceSac`) against the CPU, shared by
//! `wgpu_parity.rs` and `cuda_pocl.rs`. The CPU backend's device step equals `Sac::update`
//! bit for bit (a unit test in `policy/device.rs`), so it is the reference here. Each case
//! starts both backends from the same agent state (after 0, 1 and 2 CPU updates, so the Adam
//! moments and the Polyak schedule are non-trivial) and compares one update's gradients,
//! then the parameters it leaves.
use super::planners::Compare;
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{Activation, Backend};
use mbrl_gpu::policy::device::DeviceSac;
use mbrl_gpu::policy::sac::{Sac, SacConfig};
use mbrl_gpu::policy::Replay;

fn replay(seed: u64) -> Replay {
    let mut replay = Replay::new(3, 2, 400);
    let mut g = mbrl_gpu::rng::Philox::new(seed, 99, 0);
    for i in 0..350 {
        let mut v = |n: usize, s: f32| (0..n).map(|_| s * g.normal()).collect::<Vec<f32>>();
        let (o, a, n) = (v(3, 1.0), v(2, 0.7), v(3, 1.0));
        replay.push(&o, &a, 0.01 * i as f32 - 2.0, &n, i % 7 == 3);
    }
    replay
}

/// (gradients, then parameters after the update) of one device step from `agent`.
fn one_step<B: Backend>(be: &B, agent: &Sac, replay: &Replay, k: u32) -> Vec<Vec<f32>> {
    let mut dev = DeviceSac::new(be, agent).unwrap();
    let batch = replay.sample(1, 2, k, agent.cfg.batch_size);
    dev.update(&batch).unwrap();
    let (ga, gc, gl) = dev.gradients().unwrap();
    let mut after = agent.clone();
    dev.sync(&mut after).unwrap();
    vec![
        ga,
        gc,
        vec![gl],
        after.actor,
        after.critic,
        after.critic_target,
        vec![after.log_alpha],
    ]
}

pub fn step<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    let cpu = CpuBackend::new();
    let mut out = Vec::new();
    // Batch 29 (one block of rows) and 300 (rows past one 256-thread block, 2B = 600 critic
    // rows in the reductions); ReLU (SAC's default) and SiLU hidden layers.
    for (activation, hidden, batch, interval) in [
        (Activation::Relu, 37, 29, 2),
        (Activation::Silu, 13, 300, 1),
    ] {
        let cfg = SacConfig {
            hidden,
            num_layers: 2,
            activation,
            batch_size: batch,
            target_update_interval: interval,
            ..SacConfig::default()
        };
        let lr = cfg.lr;
        let mut agent = Sac::new(cfg, 3, &[-2.0, -0.5], &[2.0, 1.5], 5).unwrap();
        let data = replay(batch as u64);
        for k in 0..3u32 {
            let want = one_step(&cpu, &agent, &data, k);
            let got = one_step(dev, &agent, &data, k);
            let names = [
                "actor grad",
                "critic grad",
                "log α grad",
                "actor",
                "critics",
                "target critics",
                "log α",
            ];
            for (i, ((name, g), w)) in names.iter().zip(got).zip(want).enumerate() {
                let scale = w.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                // Gradients: sums over ≤ 600 rows and 37 units of products through exp,
                // tanh and ln (a few ULP apart between backends), reordered: 2e-5 of the
                // tensor's largest entry. Parameters: Adam moves each by about lr, and by up
                // to 2·lr where a gradient near zero changes sign between backends, so they
                // are held to 2.5·lr (the gradients are the strong check); the targets move
                // τ of that.
                let (atol, rtol) = match i {
                    0..=2 => (2e-5 * scale, 1e-4),
                    3 | 4 => (2.5 * lr, 0.0),
                    5 => (2.5 * lr * 0.005 + 1e-6, 0.0),
                    _ => (1e-5, 0.0),
                };
                out.push(Compare {
                    what: format!("{label} sac {activation:?} h{hidden} b{batch} step {k}: {name}"),
                    got: g,
                    want: w,
                    atol,
                    rtol,
                });
            }
            let batch = data.sample(1, 2, k, agent.cfg.batch_size);
            agent.update(&batch).unwrap();
        }
    }
    out
}
