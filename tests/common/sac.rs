//! SAC's device gradient step (`policy::device::DeviceSac`) against the CPU, shared by
//! `wgpu_parity.rs` and `cuda_pocl.rs`. The CPU backend's device step equals `Sac::update`
//! bit for bit (a unit test in `policy/device.rs`), so it is the reference here. Each case
//! starts both backends from the same agent state (after 0, 1 and 2 CPU updates, so the Adam
//! moments and the Polyak schedule are non-trivial) and compares one update's gradients,
//! then the parameters it leaves; the middle step draws its minibatch on the device.
use super::planners::Compare;
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{Activation, Backend};
use mbrl_gpu::policy::device::{DeviceReplay, DeviceSac};
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

/// (gradients, then parameters after the update) of one device step from `agent`, on a
/// minibatch drawn on the device from a mirror of `replay` (odd k) or written from the host.
fn one_step<B: Backend>(be: &B, agent: &Sac, replay: &Replay, k: u32) -> Vec<Vec<f32>> {
    let mut dev = DeviceSac::new(be, agent).unwrap();
    let rows = agent.cfg.batch_size;
    if k % 2 == 1 {
        let mut ring = DeviceReplay::empty(be).unwrap();
        ring.sync(be, replay).unwrap();
        dev.update_from(&ring, 1, 2, k, rows).unwrap();
    } else {
        dev.update(&replay.sample(1, 2, k, rows)).unwrap();
    }
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

/// Wrong sizes and absurd settings are errors naming the problem, never panics, on every
/// backend (the checks are shared: `backend/check.rs`).
pub fn misuse_is_refused<B: Backend>(b: &B) {
    use mbrl_gpu::backend::{EnsembleShape, SacParams};
    let sh = EnsembleShape {
        ensemble: 2,
        in_dim: 5,
        out_dim: 1,
        hidden: 8,
        num_layers: 2,
        activation: Activation::Relu,
        probabilistic: false,
    };
    let total = sh.layout().total;
    let p = b.upload(&vec![0.1; total]).unwrap();
    let norm = b
        .upload(&[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
        .unwrap();
    let x = b.upload(&[0.5; 2 * 4 * 5]).unwrap();
    let d = b.upload(&[1.0; 2 * 4]).unwrap();
    let short = b.upload(&[1.0; 3]).unwrap();
    let (mut g, mut dx) = (b.zeros(total).unwrap(), b.zeros(2 * 4 * 5).unwrap());
    let mut tiny = b.zeros(3).unwrap();
    let err = |r: mbrl_gpu::Result<()>, what: &str| {
        let e = r.expect_err(what).to_string();
        assert!(
            e.contains(what),
            "expected an error naming {what:?}, got {e:?}"
        );
    };
    err(
        b.ensemble_vjp(&sh, &p, &norm, &x, 4, &short, &d, Some(&mut g), None),
        "d_mean",
    );
    err(
        b.ensemble_vjp(&sh, &p, &norm, &x, 4, &d, &d, None, Some(&mut tiny)),
        "dx",
    );
    err(
        b.ensemble_vjp(&sh, &p, &norm, &x, 4, &d, &d, Some(&mut tiny), None),
        "grad",
    );
    // Zero rows: the gradient of an empty sum is zero, written over whatever was there.
    b.write(&mut g, &vec![7.0; total]).unwrap();
    b.ensemble_vjp(&sh, &p, &norm, &x, 0, &d, &d, Some(&mut g), Some(&mut dx))
        .unwrap();
    assert!(b.download(&g).unwrap().iter().all(|v| *v == 0.0));
    let sp = SacParams {
        rows: 4,
        obs_dim: 3,
        act_dim: 2,
        given: 0,
        gamma: 0.99,
        target_entropy: -2.0,
        tau: 0.005,
        len: 3,
        ..SacParams::default()
    };
    let (head, sb) = (b.upload(&[0.0; 16]).unwrap(), b.upload(&[1.0; 4]).unwrap());
    let (mut logp, mut xo) = (b.zeros(4).unwrap(), b.zeros(2 * 4 * 5).unwrap());
    err(
        b.sac_squash(&sp, &head, &short, &x, &sb, &short, &mut logp, &mut xo),
        "eps",
    );
    err(
        b.sac_squash(&sp, &head, &x, &x, &sb, &short, &mut logp, &mut tiny),
        "critic input",
    );
    let none = SacParams { rows: 0, ..sp };
    err(
        b.sac_squash(&none, &head, &x, &x, &sb, &short, &mut logp, &mut xo),
        "at least one row",
    );
    let (mut dq, mut ag, mut st) = (
        b.zeros(8).unwrap(),
        b.zeros(1).unwrap(),
        b.zeros(8).unwrap(),
    );
    err(
        b.sac_actor_grad(&sp, &short, &logp, &short, &mut dq, &mut ag, &mut st),
        "Q",
    );
    err(
        b.sac_critic_grad(&sp, &d, &logp, &logp, &logp, &short, &d, &mut dq, &mut tiny),
        "stats",
    );
    let (mut o4, mut o8) = (b.zeros(12).unwrap(), b.zeros(8).unwrap());
    let (mut r4, mut m4) = (b.zeros(4).unwrap(), b.zeros(4).unwrap());
    let mut n12 = b.zeros(12).unwrap();
    err(
        b.sac_minibatch(
            &SacParams { len: 0, ..sp },
            &x,
            &mut o4,
            &mut o8,
            &mut r4,
            &mut n12,
            &mut m4,
        ),
        "empty replay",
    );
    err(
        b.sac_minibatch(
            &SacParams { len: 5, ..sp },
            &x,
            &mut o4,
            &mut o8,
            &mut r4,
            &mut n12,
            &mut m4,
        ),
        "replay ring",
    );
    err(b.sac_noise(&sp, &mut o8, &mut tiny), "eps (policy)");
    err(b.write_at(&mut o4, 10, &[1.0; 3]), "written at 10");
    err(b.download_at(&o4, 11, 2).map(drop), "read at 11");
    err(b.download_at(&o4, usize::MAX, 2).map(drop), "read at");
    // A ranged read returns exactly its values.
    let v = b.upload(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    assert_eq!(b.download_at(&v, 1, 3).unwrap(), vec![2.0, 3.0, 4.0]);
    assert!(b.download_at(&v, 5, 0).unwrap().is_empty());
    let mut t = b.zeros(3).unwrap();
    err(b.polyak(&SacParams { tau: 1.5, ..sp }, &mut t, &short), "τ");
    err(
        b.polyak(&SacParams { len: 9, ..sp }, &mut t, &short),
        "target",
    );
}
