//! Planners, trajectory sampling and MPC on the CPU backend: properties a user relies on.
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{Backend, Propagation, RolloutParams, MAX_ELITES};
use mbrl_gpu::env::{Env, EnvId, NativeEnv};
use mbrl_gpu::model::{Ensemble, ModelConfig};
use mbrl_gpu::plan::{Mpc, Objective, Optimizer, Planner, PlannerConfig, TsConfig};

/// Scores a sequence by −Σ (a − target)²: CEM must find the target.
struct Quadratic {
    target: Vec<f32>,
}

impl Objective<CpuBackend> for Quadratic {
    fn evaluate(
        &mut self,
        _: &CpuBackend,
        population: &Vec<f32>,
        n: usize,
        _: u32,
        returns: &mut Vec<f32>,
    ) -> mbrl_gpu::Result<()> {
        let len = self.target.len();
        for c in 0..n {
            returns[c] = -population[c * len..(c + 1) * len]
                .iter()
                .zip(&self.target)
                .map(|(a, t)| (a - t).powi(2))
                .sum::<f32>();
        }
        Ok(())
    }
}

fn cem(h: usize, population: usize, iterations: usize) -> PlannerConfig {
    PlannerConfig {
        optimizer: Optimizer::Cem,
        horizon: h,
        population,
        num_elites: population / 10,
        iterations,
        alpha: 0.1,
        min_var: 1e-6,
        warm_start: true,
        precision: Default::default(),
    }
}

#[test]
fn cem_should_find_the_optimum_of_a_quadratic_objective() {
    let be = CpuBackend::new();
    let target: Vec<f32> = (0..7 * 2)
        .map(|i| ((i as f32) * 0.37).sin() * 0.8)
        .collect();
    let mut planner = Planner::new(&be, cem(7, 500, 15), &[-1.0, -1.0], &[1.0, 1.0], 3).unwrap();
    let mut obj = Quadratic {
        target: target.clone(),
    };
    let seq = planner.plan(&be, &mut obj).unwrap();
    let err = seq
        .iter()
        .zip(&target)
        .map(|(a, t)| (a - t).abs())
        .fold(0.0f32, f32::max);
    eprintln!("worst coordinate error {err}");
    // Initial σ = 0.5 shrinks by refitting to the best 10 %; the mean starts 0.8 away in the
    // worst coordinate and must end within 0.05 of the optimum.
    assert!(err < 0.05, "worst coordinate error {err}");
}

#[test]
fn random_shooting_should_return_the_best_sampled_candidate() {
    let be = CpuBackend::new();
    let cfg = PlannerConfig {
        optimizer: Optimizer::RandomShooting,
        ..cem(3, 500, 1)
    };
    let mut planner = Planner::new(&be, cfg, &[-2.0], &[2.0], 5).unwrap();
    let mut obj = Quadratic {
        target: vec![1.5, -1.0, 0.3],
    };
    let seq = planner.plan(&be, &mut obj).unwrap();
    // 500 uniform samples in [−2, 2]³: the best is within ~0.3 of the target per coordinate.
    for (a, t) in seq.iter().zip([1.5, -1.0, 0.3]) {
        assert!((a - t).abs() < 0.4, "{seq:?}");
        assert!((-2.0..=2.0).contains(a));
    }
}

#[test]
fn planner_should_reject_bad_settings() {
    let be = CpuBackend::new();
    let bounds = (&[-1.0f32][..], &[1.0f32][..]);
    let bad = [
        PlannerConfig {
            horizon: 0,
            ..cem(5, 50, 2)
        },
        PlannerConfig {
            num_elites: 60,
            ..cem(5, 50, 2)
        },
        PlannerConfig {
            iterations: 0,
            ..cem(5, 50, 2)
        },
    ];
    for cfg in bad {
        let e = Planner::<CpuBackend>::new(&be, cfg.clone(), bounds.0, bounds.1, 0);
        assert!(e.is_err(), "{cfg:?} accepted");
    }
    let e = Planner::<CpuBackend>::new(&be, cem(5, 50, 2), &[f32::NAN], &[1.0], 0);
    let msg = e.err().expect("NaN bound accepted").to_string();
    assert!(msg.contains("finite"), "{msg}");
}

fn untrained(obs: usize, act: usize, probabilistic: bool) -> Ensemble {
    let mut cfg = ModelConfig::pets(obs, act);
    cfg.hidden = 16;
    cfg.num_layers = 2;
    cfg.probabilistic = probabilistic;
    Ensemble::new(cfg, 1).unwrap()
}

fn params(
    pop: usize,
    k: usize,
    h: usize,
    prop: Propagation,
    env: EnvId,
    elites: &[usize],
) -> RolloutParams {
    let mut e = [0u32; MAX_ELITES];
    for (d, s) in e.iter_mut().zip(elites) {
        *d = *s as u32;
    }
    RolloutParams {
        seed_lo: 11,
        seed_hi: 0,
        step: 2,
        population: pop as u32,
        particles: k as u32,
        horizon: h as u32,
        obs_dim: env.spec().obs_dim as u32,
        act_dim: env.spec().act_dim as u32,
        propagation: prop as u32,
        env: env.code(),
        learn_reward: 0,
        num_elites: elites.len() as u32,
        elites: e,
    }
}

#[test]
fn expectation_rollout_of_a_deterministic_model_should_match_a_hand_loop() {
    // With mean-only members and the expectation mode, a rollout is a plain recurrence that
    // can be written out with Ensemble::predict; the fused kernel must give the same returns.
    let be = CpuBackend::new();
    let env = EnvId::Pendulum;
    let m = untrained(3, 1, false);
    let (pop, h) = (5, 6);
    let actions: Vec<f32> = (0..pop * h)
        .map(|i| ((i as f32) * 0.7).sin() * 2.0)
        .collect();
    let start = vec![0.3f32, -0.8, 0.5];
    let p = params(pop, 3, h, Propagation::Expectation, env, &m.elites);
    let mut ret = vec![f32::NAN; pop];
    be.rollout(
        &p,
        &m.shape(),
        &m.params,
        &m.norm(),
        &start,
        &actions,
        &mut ret,
    )
    .unwrap();
    for c in 0..pop {
        let mut s = start.clone();
        let mut total = 0.0f32;
        for t in 0..h {
            let a = &actions[c * h + t..c * h + t + 1];
            let (mean, _) = m.predict(&s, a).unwrap();
            let mut next = vec![0.0f32; 3];
            for &e in &m.elites {
                for j in 0..3 {
                    next[j] += mean[e * 3 + j] / m.elites.len() as f32;
                }
            }
            total += env.reward(&s, a, &next);
            s = next;
        }
        // Same f32 operations in a different summation order: agreement to 1e-4 relative.
        assert!(
            (ret[c] - total).abs() <= 1e-4 * total.abs().max(1.0),
            "{c}: {} vs {total}",
            ret[c]
        );
    }
}

#[test]
fn rollouts_should_be_reproducible_and_depend_on_the_seed() {
    let be = CpuBackend::new();
    let env = EnvId::CartPole;
    let m = untrained(4, 1, true);
    let (pop, k, h) = (13, 7, 9);
    let actions: Vec<f32> = (0..pop * h).map(|i| ((i as f32) * 0.3).cos()).collect();
    let start = vec![0.01f32, 0.0, -0.02, 0.01];
    for prop in [Propagation::Ts1, Propagation::TsInf] {
        let p = params(pop, k, h, prop, env, &m.elites);
        let (mut a, mut b, mut c) = (vec![0.0; pop], vec![0.0; pop], vec![0.0; pop]);
        be.rollout(
            &p,
            &m.shape(),
            &m.params,
            &m.norm(),
            &start,
            &actions,
            &mut a,
        )
        .unwrap();
        be.rollout(
            &p,
            &m.shape(),
            &m.params,
            &m.norm(),
            &start,
            &actions,
            &mut b,
        )
        .unwrap();
        assert_eq!(a, b, "{prop:?}: same seed, same returns");
        let q = RolloutParams { seed_lo: 12, ..p };
        be.rollout(
            &q,
            &m.shape(),
            &m.params,
            &m.norm(),
            &start,
            &actions,
            &mut c,
        )
        .unwrap();
        assert_ne!(a, c, "{prop:?}: another seed, other samples");
        // Cart-pole pays 1 per step while alive: returns lie in [1, h].
        assert!(a.iter().all(|r| (1.0..=h as f32).contains(r)), "{a:?}");
    }
}

#[test]
fn a_model_that_outputs_nan_should_give_minus_infinity_and_a_safe_action() {
    let be = CpuBackend::new();
    let mut m = untrained(3, 1, true);
    let lay = m.shape().layout();
    // Poison the head bias of every member: every prediction is NaN.
    let last = lay.layers.last().unwrap();
    let e = m.shape().ensemble;
    for v in &mut m.params[last.bias..last.bias + e * last.fan_out] {
        *v = f32::NAN;
    }
    let p = params(4, 2, 3, Propagation::Ts1, EnvId::Pendulum, &m.elites);
    let mut ret = vec![0.0; 4];
    let actions = vec![0.5f32; 12];
    be.rollout(
        &p,
        &m.shape(),
        &m.params,
        &m.norm(),
        &vec![1.0, 0.0, 0.0],
        &actions,
        &mut ret,
    )
    .unwrap();
    assert!(ret.iter().all(|r| *r == f32::NEG_INFINITY), "{ret:?}");
    let ts = TsConfig {
        particles: 2,
        propagation: Propagation::Ts1,
    };
    let mut mpc = Mpc::with_model(&be, &m, EnvId::Pendulum, cem(3, 20, 2), ts, 0).unwrap();
    let a = mpc.act(&be, &[1.0, 0.0, 0.0], &[]).unwrap();
    assert!(a[0].is_finite() && (-2.0..=2.0).contains(&a[0]), "{a:?}");
}

#[test]
fn terminated_particles_should_earn_nothing_more() {
    // Start the true cart-pole beyond the angle limit on its first step: the one reward of
    // the terminating step is paid, then nothing.
    let be = CpuBackend::new();
    let mut p = params(3, 1, 10, Propagation::Expectation, EnvId::CartPole, &[]);
    p.num_elites = 0;
    let mut ret = vec![0.0; 3];
    be.rollout_true(&p, &vec![0.0, 0.0, 0.25, 2.0], &vec![1.0; 30], &mut ret)
        .unwrap();
    assert_eq!(ret, vec![1.0; 3]);
}

#[test]
fn true_dynamics_rollout_should_agree_with_stepping_the_environment() {
    let be = CpuBackend::new();
    let env = EnvId::Pendulum;
    let h = 12;
    let actions: Vec<f32> = (0..2 * h).map(|i| ((i as f32) * 0.9).sin() * 2.0).collect();
    let mut e = NativeEnv::new(env, 1);
    e.reset(&[4]).unwrap();
    let start = e.state().to_vec();
    let mut ret = vec![0.0; 2];
    let p = params(2, 1, h, Propagation::Expectation, env, &[]);
    be.rollout_true(&p, &start, &actions, &mut ret).unwrap();
    for c in 0..2 {
        let mut e = NativeEnv::new(env, 1);
        e.reset(&[4]).unwrap();
        let mut total = 0.0f32;
        for t in 0..h {
            total += e.step(&actions[c * h + t..c * h + t + 1]).unwrap()[0].reward;
        }
        // The environment steps in f64 and the planner's copy in f32: 1e-4 relative over
        // twelve steps of a smooth system.
        assert!(
            (ret[c] - total).abs() <= 1e-4 * total.abs(),
            "{} vs {total}",
            ret[c]
        );
    }
}

#[test]
fn mpc_with_true_dynamics_should_balance_the_cartpole() {
    let be = CpuBackend::new();
    let mut mpc = Mpc::with_true_dynamics(&be, EnvId::CartPole, cem(15, 100, 3), 0).unwrap();
    let mut e = NativeEnv::new(EnvId::CartPole, 1);
    let mut obs = e.reset(&[7]).unwrap();
    let mut ret = 0.0;
    for _ in 0..200 {
        let a = mpc.act(&be, &obs, e.state()).unwrap();
        let tr = e.step(&a).unwrap().remove(0);
        ret += tr.reward;
        obs = tr.obs;
        if tr.terminated || tr.truncated {
            break;
        }
    }
    assert_eq!(ret, 200.0);
}

#[test]
fn rollout_should_reject_bad_arguments() {
    let be = CpuBackend::new();
    let m = untrained(4, 1, true);
    let mut ret = vec![0.0; 2];
    let acts = vec![0.0; 2 * 3];
    let s = vec![0.0; 4];
    let ok = params(2, 2, 3, Propagation::Ts1, EnvId::CartPole, &m.elites);
    for (bad, what) in [
        (RolloutParams { horizon: 0, ..ok }, "horizon"),
        (RolloutParams { particles: 0, ..ok }, "particles"),
        (RolloutParams { env: 99, ..ok }, "task"),
        (RolloutParams { obs_dim: 3, ..ok }, "obs"),
    ] {
        let e = be.rollout(&bad, &m.shape(), &m.params, &m.norm(), &s, &acts, &mut ret);
        assert!(e.is_err(), "{what} accepted");
    }
    let mut bad = ok;
    bad.elites[0] = 9;
    assert!(be
        .rollout(&bad, &m.shape(), &m.params, &m.norm(), &s, &acts, &mut ret)
        .is_err());
}

#[test]
fn update_model_should_plan_exactly_as_a_controller_built_on_the_new_model() {
    let be = CpuBackend::new();
    let m = untrained(3, 1, true);
    let mut retrained = m.clone();
    retrained.params.iter_mut().for_each(|w| *w *= -1.0);
    retrained.elites = vec![2, 4];
    let ts = TsConfig {
        particles: 2,
        propagation: Propagation::TsInf,
    };
    let obs = [1.0, 0.0, 0.0];
    // Same call sequence on three controllers, so their Philox counters agree.
    let run = |start: &Ensemble, swap: Option<&Ensemble>| {
        let mut mpc = Mpc::with_model(&be, start, EnvId::Pendulum, cem(4, 20, 2), ts, 0).unwrap();
        mpc.act(&be, &obs, &[]).unwrap();
        if let Some(n) = swap {
            mpc.update_model(&be, n).unwrap();
        }
        mpc.reset(&be).unwrap();
        mpc.act(&be, &obs, &[]).unwrap()
    };
    let updated = run(&m, Some(&retrained));
    assert_eq!(updated, run(&retrained, None));
    assert_ne!(
        updated,
        run(&m, None),
        "the planner still used the old weights"
    );
    let mut mpc = Mpc::with_model(&be, &m, EnvId::Pendulum, cem(4, 20, 2), ts, 0).unwrap();
    assert!(mpc.update_model(&be, &untrained(3, 1, false)).is_err());
}

#[test]
fn bf16_planning_should_pack_once_per_model_update_and_use_the_new_weights() {
    let be = CpuBackend::with_bf16_planning();
    let m = untrained(3, 1, true);
    let mut retrained = m.clone();
    retrained.params.iter_mut().for_each(|w| *w *= -1.0);
    let ts = TsConfig {
        particles: 2,
        propagation: Propagation::TsInf,
    };
    let cfg = PlannerConfig {
        precision: mbrl_gpu::backend::Precision::Bf16,
        ..cem(4, 20, 2)
    };
    let obs = [1.0, 0.0, 0.0];
    let mut mpc = Mpc::with_model(&be, &m, EnvId::Pendulum, cfg.clone(), ts, 0).unwrap();
    let before = be.bf16_packs();
    let first: Vec<Vec<f32>> = (0..3).map(|_| mpc.act(&be, &obs, &[]).unwrap()).collect();
    assert_eq!(
        be.bf16_packs() - before,
        1,
        "3 actions × 2 CEM iterations of one model: one packing"
    );
    for a in &first {
        assert!(a.iter().all(|v| v.is_finite() && (-2.0..=2.0).contains(v)));
    }
    mpc.update_model(&be, &retrained).unwrap();
    mpc.act(&be, &obs, &[]).unwrap();
    assert_eq!(be.bf16_packs() - before, 2, "a model update packs again");
    // Planning in bf16 on a backend that computes f32 is refused, not silently ignored.
    let e = Mpc::with_model(&CpuBackend::new(), &m, EnvId::Pendulum, cfg, ts, 0)
        .err()
        .expect("precision mismatch")
        .to_string();
    assert!(e.contains("precision"), "{e}");
}
