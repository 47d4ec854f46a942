//! MBPO's branched rollout on a device (`DeviceSac::branch`: the actor, `branch_route`, the
//! elites' forward and `branch_step`) against its specification
//! (`algo::mbpo::branched_rollout`, which the CPU backend runs), shared by `wgpu_parity.rs`
//! and `cuda_pocl.rs`. Each case starts from the same agent, untrained model and buffers; the
//! model buffer is nearly full, so the rollout wraps around its end, and 259 rows make every
//! one-workgroup kernel handle uneven chunks (⌈259/256⌉ = 2 rows for some invocations, 1 or
//! none for others).
use super::planners::Compare;
use mbrl_gpu::algo::mbpo::{branched_rollout, elite_view, MbpoConfig};
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{Backend, BranchParams};
use mbrl_gpu::env::EnvId;
use mbrl_gpu::model::Ensemble;
use mbrl_gpu::policy::device::{BranchModel, BranchSpec, DeviceReplay, DeviceSac};
use mbrl_gpu::policy::sac::{Sac, SacConfig};
use mbrl_gpu::policy::Replay;

/// One case: its configuration, agent, model, D_env and D_model before the rollout.
pub struct Case {
    pub cfg: MbpoConfig,
    pub agent: Sac,
    pub model: Ensemble,
    pub env_data: Replay,
    pub model_data: Replay,
    pub k: usize,
}

pub fn case(env: EnvId, learn_reward: bool, sample_actions: bool) -> Case {
    let preset = match env {
        EnvId::CartPole => "cartpole",
        _ => "pendulum",
    };
    let mut cfg = MbpoConfig::preset(&env.into(), preset).unwrap();
    cfg.seed = 11;
    cfg.effective_model_rollouts_per_step = 37;
    cfg.freq_train_model = 7;
    cfg.sac_samples_action = sample_actions;
    cfg.model.hidden = 13;
    cfg.model.num_layers = 2;
    cfg.model.ensemble_size = 5;
    cfg.model.num_elites = 3;
    cfg.model.learn_reward = learn_reward;
    cfg.sac = SacConfig {
        hidden: 11,
        num_layers: 2,
        ..cfg.sac.clone()
    };
    let (od, ad) = (cfg.model.obs_dim, cfg.model.act_dim);
    let spec = env.spec();
    let agent = Sac::new(cfg.sac.clone(), od, &spec.act_low, &spec.act_high, 5).unwrap();
    let mut model = Ensemble::new(cfg.model.clone(), 3).unwrap();
    model.elites = vec![4, 0, 2];
    let din = od + ad;
    model.input_mean = (0..din).map(|j| 0.1 * j as f32 - 0.2).collect();
    model.input_std = (0..din).map(|j| 0.5 + 0.25 * j as f32).collect();
    let mut g = mbrl_gpu::rng::Philox::new(7, 99, 0);
    let mut v = |n: usize, s: f32| (0..n).map(|_| s * g.normal()).collect::<Vec<f32>>();
    // Start states near the origin (the cart-pole's stay alive for a step or two under an
    // untrained model, so termination happens inside the rollout).
    let mut env_data = Replay::new(od, ad, 500);
    for _ in 0..300 {
        let (o, a, n) = (v(od, 0.05), v(ad, 0.5), v(od, 0.05));
        env_data.push(&o, &a, 1.0, &n, false);
    }
    let k = 4;
    let rows = cfg.rollout_batch();
    let cap = rows * k + 50;
    let mut model_data = Replay::new(od, ad, cap);
    for _ in 0..cap - 100 {
        let (o, a, n) = (v(od, 1.0), v(ad, 1.0), v(od, 1.0));
        model_data.push(&o, &a, -1.0, &n, true);
    }
    Case {
        cfg,
        agent,
        model,
        env_data,
        model_data,
        k,
    }
}

/// D_model after two rollouts (batches 3 and 4) on `be`: through `DeviceSac::branch`, or
/// with `device` false through the CPU specification. The second reuses the first's device
/// buffers (whose stopped flags and count it must ignore) and wraps around the ring, so
/// its rows come back in two ranged reads.
pub fn rollout<B: Backend>(be: &B, c: &Case, device: bool) -> Replay {
    let mut out = c.model_data.clone();
    let mut added = 0;
    if !device {
        let mut agent = c.agent.clone();
        for batch in [3, 4] {
            added += branched_rollout(
                be,
                &c.cfg,
                &mut agent,
                &c.model,
                &c.env_data,
                batch,
                c.k,
                &mut out,
            )
            .unwrap();
        }
        assert_eq!(out.written(), c.model_data.written() + added);
        return out;
    }
    let mut dev = OnDevice::new(be, c, &out);
    for batch in [3, 4] {
        added += dev.branch(&spec(c, batch), &mut out).unwrap();
    }
    assert_eq!(out.written(), c.model_data.written() + added);
    assert!(out.written() > out.capacity(), "the second rollout wraps");
    assert_eq!(dev.ring.len(), out.len());
    out
}

/// The case's rollout settings, at rollout batch `batch`.
pub fn spec(c: &Case, batch: u32) -> BranchSpec {
    BranchSpec {
        seed: c.cfg.seed,
        batch,
        k: c.k,
        rows: c.cfg.rollout_batch(),
        task: c.cfg.env_name().unwrap().task_code(),
        learn_reward: c.cfg.model.learn_reward,
        sample_actions: c.cfg.sac_samples_action,
    }
}

/// A case's agent, buffers and elites on a device, ready to branch.
pub struct OnDevice<'b, B: Backend> {
    pub sac: DeviceSac<'b, B>,
    pub start: DeviceReplay<B::Buf>,
    pub ring: DeviceReplay<B::Buf>,
    shape: mbrl_gpu::backend::EnsembleShape,
    params: B::Buf,
    norm: B::Buf,
}

impl<'b, B: Backend> OnDevice<'b, B> {
    /// The case on `be`, with `out` as the model buffer's mirror.
    pub fn new(be: &'b B, c: &Case, out: &Replay) -> Self {
        let mut start = DeviceReplay::empty(be).unwrap();
        start.sync(be, &c.env_data).unwrap();
        let mut ring = DeviceReplay::empty(be).unwrap();
        ring.sync(be, out).unwrap();
        let (shape, params) = elite_view(&c.model);
        Self {
            sac: DeviceSac::new(be, &c.agent).unwrap(),
            start,
            ring,
            shape,
            params: be.upload(&params).unwrap(),
            norm: be.upload(&c.model.norm()).unwrap(),
        }
    }

    pub fn branch(&mut self, spec: &BranchSpec, out: &mut Replay) -> mbrl_gpu::Result<usize> {
        let view = BranchModel {
            shape: self.shape,
            params: &self.params,
            norm: &self.norm,
        };
        self.sac
            .branch(spec, &view, &self.start, &mut self.ring, out)
    }
}

/// The cases: the pendulum (its reward function, no termination), the cart-pole (its
/// termination stops rows mid-rollout) and a learned reward, with and without policy noise.
pub fn cases() -> Vec<(String, Case)> {
    vec![
        ("pendulum".into(), case(EnvId::Pendulum, false, true)),
        ("cart-pole".into(), case(EnvId::CartPole, false, true)),
        (
            "pendulum, learned reward, mean actions".into(),
            case(EnvId::Pendulum, true, false),
        ),
    ]
}

/// `dev`'s D_model after each case's rollout against the CPU specification's. The count of
/// transitions must agree exactly (`what` ends in "count"); the values carry the policy's
/// and the model's forward differences (a few ULP per layer) through up to four steps of
/// s' = s + μ + σ·ε and the reward functions, which the WGSL backend evaluates in f32 where
/// the CPU widens to f64: 2e-5 of each array's largest entry (worst seen over two rollouts:
/// 7.6e-6 on lavapipe's pendulum rewards, 4.8e-6 on PoCL's; 1.4e-6 on states).
pub fn parity<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    let cpu = CpuBackend::new();
    let mut out = vec![];
    for (name, c) in cases() {
        let want = rollout(&cpu, &c, false);
        let got = rollout(dev, &c, true);
        out.push(Compare {
            what: format!("{label} branch {name}: transition count"),
            got: vec![got.written() as f32],
            want: vec![want.written() as f32],
            atol: 0.0,
            rtol: 0.0,
        });
        let fields = ["obs", "act", "reward", "next_obs", "terminated"];
        for (f, (g, w)) in fields
            .iter()
            .zip(got.to_arrays().into_iter().zip(want.to_arrays()))
        {
            let scale = w.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            out.push(Compare {
                what: format!("{label} branch {name}: {f}"),
                got: g,
                want: w,
                atol: 2e-5 * scale,
                rtol: 0.0,
            });
        }
    }
    out
}

/// Wrong sizes and impossible settings are errors naming the problem on every backend.
pub fn misuse_is_refused<B: Backend>(b: &B) {
    let p = BranchParams {
        rows: 5,
        obs_dim: 3,
        act_dim: 1,
        out_dim: 3,
        members: 2,
        per: 4,
        task: 1,
        learn_reward: 0,
        capacity: 8,
        ..BranchParams::default()
    };
    let z = |n: usize| b.zeros(n).unwrap();
    let err = |r: mbrl_gpu::Result<()>, what: &str| {
        let e = r.expect_err(what).to_string();
        assert!(
            e.contains(what),
            "expected an error naming {what:?}, got {e:?}"
        );
    };
    let (x, mut route, mut xg) = (z(5 * 4), z(5), z(2 * 4 * 4));
    b.branch_route(&p, &x, &mut route, &mut xg).unwrap();
    err(
        b.branch_route(&p, &z(3), &mut route, &mut xg),
        "model input",
    );
    err(
        b.branch_route(&p, &x, &mut route, &mut z(7)),
        "grouped model input",
    );
    let many = BranchParams { members: 17, ..p };
    err(b.branch_route(&many, &x, &mut route, &mut xg), "at most 16");
    let no_reward = BranchParams {
        task: mbrl_gpu::env::task::NONE,
        ..p
    };
    err(
        b.branch_route(&no_reward, &x, &mut route, &mut xg),
        "learn the reward",
    );
    let wide = BranchParams { out_dim: 4, ..p };
    err(b.branch_route(&wide, &x, &mut route, &mut xg), "predicts 4");
    let (mean, lv) = (z(2 * 4 * 3), z(2 * 4 * 3));
    let (mut obs, mut stopped, mut count) = (z(15), z(5), z(1));
    let mut ring = z(8 * 9);
    let mut step = |p: &BranchParams, mean: &B::Buf, ring: &mut B::Buf| {
        b.branch_step(
            p,
            &route,
            mean,
            &lv,
            &x,
            &mut obs,
            &mut stopped,
            &mut count,
            ring,
        )
    };
    step(&p, &mean, &mut ring).unwrap();
    err(step(&p, &z(5), &mut ring), "mean");
    err(step(&p, &mean, &mut z(8 * 9 - 1)), "replay ring");
    let small = BranchParams { capacity: 4, ..p };
    err(step(&small, &mean, &mut ring), "replay ring of 4 rows");
    let past = BranchParams { base: 8, ..p };
    err(step(&past, &mean, &mut ring), "from slot 8");
}

/// A model buffer without room for rows·k transitions (its mirror would overwrite rows of the
/// same rollout) is refused before anything runs, and the host buffer is left as it was.
pub fn no_room_is_refused<B: Backend>(be: &B) {
    let c = case(EnvId::Pendulum, false, true);
    let small = c.cfg.rollout_batch() * c.k - 1;
    let mut out = Replay::new(3, 1, small);
    let before = out.clone();
    let mut dev = OnDevice::new(be, &c, &out);
    let e = dev.branch(&spec(&c, 0), &mut out).unwrap_err().to_string();
    assert!(e.contains("model buffer of at least 1036 rows"), "{e}");
    assert_eq!(out, before);
}
