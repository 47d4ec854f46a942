//! Model rollouts closed by a learned terminal value (`Backend::rollout_with_value`) on a
//! device against the CPU, shared by `wgpu_parity.rs` and `cuda_pocl.rs`. The value is an
//! untrained SAC agent's `CriticValue` (so it is a value of order one, not a constant), the
//! model an untrained ensemble; three propagation modes, with the cart-pole's terminations
//! (paths that end inside the horizon get no value) and the pendulum's reward.
use super::planners::Compare;
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{Backend, Propagation, RolloutParams, TerminalValue, MAX_ELITES};
use mbrl_gpu::env::EnvId;
use mbrl_gpu::model::{Ensemble, ModelConfig};
use mbrl_gpu::policy::sac::{CriticValue, Sac, SacConfig};
use std::sync::Arc;

fn value(env: EnvId, seed: u64, gamma: f32) -> TerminalValue {
    let cfg = SacConfig {
        hidden: 11,
        num_layers: 2,
        ..SacConfig::default()
    };
    let spec = env.spec();
    let agent = Sac::new(cfg, spec.obs_dim, &spec.act_low, &spec.act_high, seed).unwrap();
    TerminalValue {
        gamma,
        value: Arc::new(CriticValue::from_agent(&agent)),
    }
}

fn params(env: EnvId, prop: Propagation) -> RolloutParams {
    let mut elites = [0u32; MAX_ELITES];
    elites[..3].copy_from_slice(&[2, 0, 3]);
    RolloutParams {
        seed_lo: 0x5EED,
        seed_hi: 1,
        step: 2,
        population: 37,
        particles: 3,
        horizon: 5,
        obs_dim: env.obs_dim() as u32,
        act_dim: env.act_dim() as u32,
        propagation: prop as u32,
        env: env.code(),
        learn_reward: 0,
        num_elites: 3,
        elites,
    }
}

/// Returns of one rollout on `be` with `tv` (or without a value).
fn returns<B: Backend>(
    be: &B,
    p: &RolloutParams,
    model: &Ensemble,
    start: &[f32],
    actions: &[f32],
    tv: Option<&TerminalValue>,
) -> Vec<f32> {
    let up = |v: &[f32]| be.upload(v).unwrap();
    let (pp, nn, ss, aa) = (up(&model.params), up(&model.norm()), up(start), up(actions));
    let mut out = be.upload(&vec![-7.77e30; p.population as usize]).unwrap();
    let shape = model.shape();
    match tv {
        Some(tv) => be
            .rollout_with_value(p, &shape, &pp, &nn, &ss, &aa, tv, &mut out)
            .unwrap(),
        None => be.rollout(p, &shape, &pp, &nn, &ss, &aa, &mut out).unwrap(),
    }
    be.download(&out).unwrap()
}

/// Every case's returns on `dev` against the CPU's: value A, then value B (a re-upload), then
/// A again (the cache must follow the value it is given), and the plain rollout after them.
/// The paths carry the model's forward differences through 5 steps and two more networks:
/// 1e-4 of the largest |return| plus 1e-4 relative.
pub fn parity<B: Backend>(dev: &B, label: &str) -> Vec<Compare> {
    let cpu = CpuBackend::new();
    let mut out = vec![];
    let cases = [
        (EnvId::Pendulum, Propagation::Ts1, vec![0.9f32, 0.3, -0.5]),
        (
            EnvId::CartPole,
            Propagation::TsInf,
            vec![0.02, -0.1, 0.05, 0.2],
        ),
        (
            EnvId::Pendulum,
            Propagation::Expectation,
            vec![-1.0, 0.0, 1.5],
        ),
    ];
    for (env, prop, start) in cases {
        let mut mc = ModelConfig::pets(env.obs_dim(), env.act_dim());
        mc.hidden = 13;
        mc.num_layers = 2;
        mc.ensemble_size = 5;
        let model = Ensemble::new(mc, 9).unwrap();
        let p = params(env, prop);
        let spec = env.spec();
        let n = (p.population * p.horizon) as usize * env.act_dim();
        let actions: Vec<f32> = (0..n as u32)
            .map(|i| {
                let u = mbrl_gpu::rng::uniform(3, 1, i, 0);
                spec.act_low[0] + u * (spec.act_high[0] - spec.act_low[0])
            })
            .collect();
        let (a, b) = (value(env, 1, 0.9), value(env, 2, 0.97));
        for (name, tv) in [
            ("value A", Some(&a)),
            ("value B", Some(&b)),
            ("value A again", Some(&a)),
            ("no value", None),
        ] {
            let want = returns(&cpu, &p, &model, &start, &actions, tv);
            let got = returns(dev, &p, &model, &start, &actions, tv);
            let scale = want
                .iter()
                .filter(|v| v.is_finite())
                .fold(1.0f32, |m, v| m.max(v.abs()));
            out.push(Compare {
                what: format!("{label} {env:?} {prop:?} {name}"),
                got,
                want,
                atol: 1e-4 * scale,
                rtol: 1e-4,
            });
        }
    }
    out
}

/// A value the device cannot run, one of another width, and a discount outside (0, 1] are
/// errors that name the problem, before anything runs.
pub fn misuse_is_refused<B: Backend>(be: &B) {
    struct HostOnly;
    impl mbrl_gpu::backend::StateValue for HostOnly {
        fn obs_dim(&self) -> usize {
            3
        }
        fn values(&self, _: &[f32], rows: usize, out: &mut [f32]) {
            out[..rows].fill(0.0);
        }
    }
    let env = EnvId::Pendulum;
    let mut mc = ModelConfig::pets(3, 1);
    mc.hidden = 8;
    let model = Ensemble::new(mc, 1).unwrap();
    let p = params(env, Propagation::Ts1);
    let up = |v: &[f32]| be.upload(v).unwrap();
    let (pp, nn, ss) = (up(&model.params), up(&model.norm()), up(&[1.0, 0.0, 0.0]));
    let aa = up(&vec![0.0; (p.population * p.horizon) as usize]);
    let mut out = be.zeros(p.population as usize).unwrap();
    let shape = model.shape();
    let mut run = |tv: &TerminalValue| {
        be.rollout_with_value(&p, &shape, &pp, &nn, &ss, &aa, tv, &mut out)
            .map_err(|e| e.to_string())
    };
    let host_only = TerminalValue {
        gamma: 0.9,
        value: Arc::new(HostOnly),
    };
    if be.name() == "cpu" {
        run(&host_only).unwrap();
    } else {
        let e = run(&host_only).unwrap_err();
        assert!(e.contains("--backend cpu"), "{e}");
    }
    let e = run(&value(EnvId::CartPole, 1, 0.9)).unwrap_err();
    assert!(e.contains("4 observation values"), "{e}");
    for gamma in [0.0, 1.5, f32::NAN] {
        let e = run(&value(env, 1, gamma)).unwrap_err();
        assert!(e.contains("discount"), "{gamma}: {e}");
    }
}
