//! Native environments against trajectories recorded from Gymnasium 1.x, and the properties
//! of the `mbrl_gpu::env` API.
//!
//! The fixtures `tests/fixtures/gym/*.json` come from `scripts/record_gym.py` (real
//! Gymnasium; the continuous cart-pole is mbrl-lib's `step` restated in the script). Each
//! episode starts from the recorded `env.unwrapped.state`, read from its IEEE-754 bit
//! patterns so the start is exact.

use mbrl_gpu::env::{replay, replay_f64, Env, EnvError, EnvId, NativeEnv, ReplayStep, StateWidth};
use serde::Deserialize;

// ------------------------------------------------------------------------------------------
// Tolerances
//
// Our steps perform the same IEEE operations as the Python source (same widths, same order),
// so the only sources of difference are:
// * `x**2` in Python/NumPy is libm `pow`, which on glibc is one ulp away from the correctly
//   rounded `x * x` we compute in ~0.1 % of calls: a 1e-16 relative perturbation of an f64
//   state (1e-7 for the pendulum's f32 `u**2` term, which enters the reward only);
// * sin/cos/atan2 may differ by an ulp between C libraries (and NumPy's SIMD paths);
// * cart-pole: mbrl-lib returns float64 observations, ours are f32: |Δ| ≤ 2⁻²⁴·|x|;
// * rewards are reported as f32 (Gymnasium's are float64): |Δ| ≤ 2⁻²⁴·|r|.
// Over a few hundred steps these 1e-16 perturbations grow (the pendulum spins, the cart-pole
// falls), but stay many orders of magnitude below f32 resolution; so the tolerance is one
// f32 rounding of the recorded value (relative 2⁻²⁴ ≈ 6e-8, the f32 cast) plus a margin:
// relative 1e-6, with an absolute floor of 1e-9 for components that cross zero (cart-pole
// positions and velocities, pendulum sin/cos), where relative error is meaningless and the
// f64 perturbations are absolute ~1e-16.
// ------------------------------------------------------------------------------------------

/// Relative tolerance of observations and rewards against the recording.
const RTOL: f64 = 1e-6;
/// Absolute floor for values that pass through zero.
const ATOL: f64 = 1e-9;

fn close(actual: f32, expected: f64) -> bool {
    (f64::from(actual) - expected).abs() <= RTOL * expected.abs() + ATOL
}

#[derive(Deserialize)]
struct Fixture {
    env: String,
    episodes: Vec<Episode>,
}

#[derive(Deserialize)]
struct Episode {
    seed: u64,
    start: String,
    start_state: Vec<f64>,
    start_state_f64_bits: Vec<String>,
    start_obs: Vec<f64>,
    actions: Vec<Vec<f32>>,
    obs: Vec<Vec<f64>>,
    reward: Vec<f64>,
    terminated: Vec<bool>,
    truncated: Vec<bool>,
}

impl Episode {
    /// The exact start state, from its bit patterns (checked against the decimal floats).
    fn start_state(&self) -> Vec<f64> {
        let s: Vec<f64> = self
            .start_state_f64_bits
            .iter()
            .map(|h| f64::from_bits(u64::from_str_radix(h, 16).expect("hex bits")))
            .collect();
        assert_eq!(s.len(), self.start_state.len());
        for (a, b) in s.iter().zip(&self.start_state) {
            assert!((a - b).abs() <= 1e-15 * b.abs(), "bits {a} vs decimal {b}");
        }
        s
    }

    fn len(&self) -> usize {
        self.actions.len()
    }
}

fn load(id: EnvId) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/gym/{}.json",
        env!("CARGO_MANIFEST_DIR"),
        id.name()
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let fx: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(fx.env, id.name());
    for ep in &fx.episodes {
        let n = ep.len();
        assert!(n > 0);
        assert_eq!(ep.obs.len(), n);
        assert_eq!(ep.reward.len(), n);
        assert_eq!(ep.terminated.len(), n);
        assert_eq!(ep.truncated.len(), n);
    }
    fx
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|x| *x as f32).collect()
}

/// Replays every recorded episode through `NativeEnv` and `replay_f64`, step by step.
fn check_against_recording(id: EnvId) {
    let fx = load(id);
    let mut worst = 0.0f64;
    for (e, ep) in fx.episodes.iter().enumerate() {
        let ctx = |t: usize| {
            format!(
                "{} episode {e} (seed {}, {}) step {t}",
                id, ep.seed, ep.start
            )
        };
        let start = ep.start_state();

        let mut env = NativeEnv::new(id, 1);
        env.set_state_f64(&start).unwrap();
        let mut obs0 = vec![0.0f32; id.obs_dim()];
        id.observe_f64(&start, &mut obs0);
        for (a, b) in obs0.iter().zip(&ep.start_obs) {
            assert!(
                close(*a, *b),
                "{}: start obs {obs0:?} vs {:?}",
                ctx(0),
                ep.start_obs
            );
        }

        let mut ours = Vec::new();
        for t in 0..ep.len() {
            let tr = env.step(&ep.actions[t]).unwrap().remove(0);
            for (a, b) in tr.obs.iter().zip(&ep.obs[t]) {
                assert!(
                    close(*a, *b),
                    "{}: obs {:?} vs recorded {:?}",
                    ctx(t),
                    tr.obs,
                    ep.obs[t]
                );
                worst = worst.max((f64::from(*a) - b).abs() / b.abs().max(1e-3));
            }
            assert!(
                close(tr.reward, ep.reward[t]),
                "{}: reward {} vs recorded {}",
                ctx(t),
                tr.reward,
                ep.reward[t]
            );
            assert_eq!(tr.terminated, ep.terminated[t], "{}: terminated", ctx(t));
            assert_eq!(tr.truncated, ep.truncated[t], "{}: truncated", ctx(t));
            ours.push(ReplayStep {
                obs: tr.obs,
                reward: tr.reward,
                terminated: tr.terminated,
            });
        }

        // `replay_f64` is the same computation and stops after the first termination, which
        // in a recording is the last step.
        let replayed = replay_f64(id, &start, &ep.actions).unwrap();
        assert_eq!(
            replayed,
            ours,
            "{}: replay_f64 differs from NativeEnv",
            ctx(0)
        );
    }
    eprintln!("{id}: worst relative obs deviation {worst:.3e}");
}

#[test]
fn cartpole_should_match_gymnasium_recording() {
    check_against_recording(EnvId::CartPole);
}

#[test]
fn pendulum_should_match_gymnasium_recording() {
    check_against_recording(EnvId::Pendulum);
}

#[test]
fn mountain_car_should_match_gymnasium_recording() {
    check_against_recording(EnvId::MountainCar);
}

/// The fixtures are only as good as the branches they reach.
#[test]
fn fixtures_should_exercise_terminations_truncations_clipping_and_limits() {
    for id in EnvId::ALL {
        let fx = load(id);
        let spec = id.spec();
        let eps = &fx.episodes;
        let steps: usize = eps.iter().map(Episode::len).sum();
        assert!(steps >= 300, "{id}: only {steps} steps");
        assert!(
            eps.iter().any(|e| e.truncated.last() == Some(&true)),
            "{id}: no truncation"
        );
        let terminated = eps.iter().filter(|e| e.terminated.contains(&true)).count();
        if id != EnvId::Pendulum {
            assert!(terminated >= 3, "{id}: only {terminated} terminations");
            // After a termination the next episode resets with the next seed.
            assert!(eps.windows(2).any(|w| w[0].terminated.last() == Some(&true)
                && w[1].start == "reset"
                && w[1].seed == w[0].seed + 1));
        }
        let out_of_bounds = eps
            .iter()
            .flat_map(|e| &e.actions)
            .filter(|a| a[0] < spec.act_low[0] || a[0] > spec.act_high[0])
            .count();
        assert!(
            out_of_bounds >= 10,
            "{id}: only {out_of_bounds} out-of-bounds actions"
        );
        let all_obs = || eps.iter().flat_map(|e| &e.obs);
        match id {
            EnvId::CartPole => {
                assert!(all_obs().any(|o| o[2].abs() > cartpole_theta_threshold()));
                assert!(eps.iter().any(|e| e.len() == spec.max_episode_steps));
            }
            EnvId::Pendulum => {
                let max_speed = all_obs().filter(|o| o[2].abs() == 8.0).count();
                assert!(
                    max_speed >= 10,
                    "pendulum: speed limit reached {max_speed} times"
                );
                // Angle wrap-around: passing the bottom (cos < 0) with sin changing sign.
                let wraps = eps
                    .iter()
                    .flat_map(|e| e.obs.windows(2))
                    .filter(|w| w[0][0] < 0.0 && w[1][0] < 0.0 && w[0][1] * w[1][1] < 0.0)
                    .count();
                assert!(wraps >= 5, "pendulum: only {wraps} wrap-arounds");
            }
            EnvId::MountainCar => {
                let hits = |f: &dyn Fn(&Vec<f64>) -> bool| all_obs().filter(|o| f(o)).count();
                let v = 0.07f32 as f64;
                assert!(hits(&|o| o[1] == v) >= 2, "velocity never at +0.07");
                assert!(hits(&|o| o[1] == -v) >= 2, "velocity never at -0.07");
                assert!(
                    hits(&|o| o[0] == -1.2f32 as f64 && o[1] == 0.0) >= 3,
                    "no wall hit"
                );
                assert!(
                    hits(&|o| o[0] == 0.6f32 as f64) >= 2,
                    "never at the right limit"
                );
            }
        }
    }
}

fn cartpole_theta_threshold() -> f64 {
    mbrl_gpu::env::cartpole::THETA_THRESHOLD_RADIANS
}

/// The planning functions see only observations; on Gymnasium's own transitions they must
/// report Gymnasium's reward and termination.
#[test]
fn planning_reward_and_termination_should_agree_with_gymnasium_step_on_recorded_transitions() {
    for id in EnvId::ALL {
        let fx = load(id);
        for (e, ep) in fx.episodes.iter().enumerate() {
            let mut prev = f32s(&ep.start_obs);
            for t in 0..ep.len() {
                let next = f32s(&ep.obs[t]);
                let r = id.reward(&prev, &ep.actions[t], &next);
                let expected = ep.reward[t];
                // Cart-pole and mountain car compute the same expression on exactly the same
                // inputs: equal after rounding to f32. Pendulum recovers the angle from the
                // f32 observation: |Δr| < 2e-6 (see `env::pendulum::reward`).
                let tol = match id {
                    EnvId::Pendulum => 1e-5,
                    _ => 0.0,
                };
                assert!(
                    (f64::from(r) - f64::from(expected as f32)).abs() <= tol,
                    "{id} episode {e} step {t}: planning reward {r} vs recorded {expected}"
                );
                assert_eq!(
                    id.terminated(&next),
                    ep.terminated[t],
                    "{id} episode {e} step {t}: planning termination"
                );
                prev = next;
            }
        }
    }
}

/// Small deterministic generator for test inputs.
struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
    }
}

/// Actions spanning 1.5 × the bounds on each side, so clipping is exercised.
fn test_action(id: EnvId, rng: &mut Lcg) -> Vec<f32> {
    let spec = id.spec();
    (0..spec.act_dim)
        .map(|k| rng.uniform(1.5 * spec.act_low[k], 1.5 * spec.act_high[k]))
        .collect()
}

#[test]
fn step_state_and_observe_should_agree_with_native_env_step() {
    let mut rng = Lcg(7);
    for id in EnvId::ALL {
        let (sd, od) = (id.state_dim(), id.obs_dim());
        // States: fresh resets, and states along a trajectory (so not just near the start).
        let mut states = Vec::new();
        let mut walker = NativeEnv::new(id, 1);
        walker.reset(&[99]).unwrap();
        for seed in 0..64u64 {
            let mut s = vec![0.0f32; sd];
            id.reset_state(seed, &mut s);
            states.push(s);
            walker.step(&test_action(id, &mut rng)).unwrap();
            states.push(walker.state().to_vec());
        }
        let mut env = NativeEnv::new(id, 1);
        for s in &states {
            let a = test_action(id, &mut rng);
            env.set_state(s).unwrap();
            let tr = env.step(&a).unwrap().remove(0);
            let mut next = vec![0.0f32; sd];
            id.step_state(s, &a, &mut next);
            assert_eq!(next, env.state(), "{id}: step_state from {s:?} with {a:?}");
            let mut obs = vec![0.0f32; od];
            id.observe(&next, &mut obs);
            // `NativeEnv` observes its f64 state; `observe` the f32-rounded one. Identical for
            // cart-pole and mountain car (obs = state); for pendulum cos/sin move by at most
            // the rounding of the angle, 2⁻²⁴·|th| (|th| < 12 here), plus one f32 rounding.
            let tol = if id == EnvId::Pendulum { 1e-6 } else { 0.0 };
            for (a, b) in obs.iter().zip(&tr.obs) {
                assert!(
                    (a - b).abs() <= tol,
                    "{id}: observe {obs:?} vs step obs {:?}",
                    tr.obs
                );
            }
            // The planning functions agree with the step on its own transition.
            let mut prev = vec![0.0f32; od];
            id.observe(s, &mut prev);
            assert_eq!(id.terminated(&tr.obs), tr.terminated, "{id}: terminated");
            let r = id.reward(&prev, &a, &tr.obs);
            assert!(
                (r - tr.reward).abs() <= 1e-5,
                "{id}: reward {r} vs {}",
                tr.reward
            );
        }
    }
}

#[test]
fn batched_native_env_should_step_each_copy_like_a_single_env() {
    for id in EnvId::ALL {
        let fx = load(id);
        let n = fx.episodes.len();
        let ad = id.act_dim();
        let steps = fx.episodes.iter().map(Episode::len).min().unwrap();
        let starts: Vec<f64> = fx.episodes.iter().flat_map(|e| e.start_state()).collect();
        let mut batch = NativeEnv::new(id, n);
        batch.set_state_f64(&starts).unwrap();
        let mut singles: Vec<NativeEnv> = fx
            .episodes
            .iter()
            .map(|e| {
                let mut env = NativeEnv::new(id, 1);
                env.set_state_f64(&e.start_state()).unwrap();
                env
            })
            .collect();
        for t in 0..steps {
            let actions: Vec<f32> = fx
                .episodes
                .iter()
                .flat_map(|e| e.actions[t].clone())
                .collect();
            assert_eq!(actions.len(), n * ad);
            let out = batch.step(&actions).unwrap();
            assert_eq!(out.len(), n);
            for (i, single) in singles.iter_mut().enumerate() {
                let one = single.step(&fx.episodes[i].actions[t]).unwrap().remove(0);
                assert_eq!(out[i], one, "{id} copy {i} step {t}");
                let sd = id.state_dim();
                assert_eq!(&batch.state()[i * sd..(i + 1) * sd], single.state());
            }
        }
    }
}

#[test]
fn unknown_env_name_error_should_list_the_choices() {
    let err = EnvId::parse("hopper").unwrap_err();
    assert!(matches!(err, EnvError::UnknownEnv { .. }));
    let msg = err.to_string();
    assert!(msg.contains("hopper"), "{msg}");
    for id in EnvId::ALL {
        assert!(msg.contains(id.name()), "{msg} should list {}", id.name());
    }
    assert!(EnvId::parse("").is_err());
    assert!(EnvId::parse("CartPole").is_err(), "names are exact");
}

#[test]
fn env_names_should_round_trip_and_specs_should_match_dimensions() {
    for id in EnvId::ALL {
        assert_eq!(EnvId::parse(id.name()).unwrap(), id);
        assert_eq!(id.name().parse::<EnvId>().unwrap(), id);
        assert_eq!(id.to_string(), id.name());
        let spec = id.spec();
        assert_eq!(spec.name, id.name());
        assert_eq!(
            (spec.obs_dim, spec.act_dim, spec.state_dim),
            (id.obs_dim(), id.act_dim(), id.state_dim())
        );
        assert_eq!(spec.act_low.len(), spec.act_dim);
        assert_eq!(spec.act_high.len(), spec.act_dim);
        assert!(spec.act_low.iter().zip(&spec.act_high).all(|(l, h)| l < h));
        assert!(!spec.description.is_empty());
        let env = NativeEnv::new(id, 5);
        assert_eq!(env.num_envs(), 5);
        assert_eq!(env.state().len(), 5 * spec.state_dim);
        assert_eq!(env.spec(), &spec);
    }
    let steps: Vec<usize> = EnvId::ALL
        .iter()
        .map(|id| id.spec().max_episode_steps)
        .collect();
    assert_eq!(steps, [200, 200, 999]);
}

#[test]
fn step_should_reject_wrong_action_length_without_stepping() {
    for id in EnvId::ALL {
        let mut env = NativeEnv::new(id, 3);
        env.reset(&[1, 2, 3]).unwrap();
        let before = env.state().to_vec();
        for len in [0, 2, 4, 6] {
            let err = env.step(&vec![0.1; len]).unwrap_err();
            assert_eq!(
                err,
                EnvError::WrongLength {
                    what: err_what(&err),
                    expected: 3,
                    got: len
                },
                "{id}"
            );
            assert!(err.to_string().contains("expected 3, got"), "{err}");
        }
        assert_eq!(
            env.state(),
            &before[..],
            "{id}: a rejected step must not move the state"
        );
        assert_eq!(env.elapsed_steps(), &[0, 0, 0]);

        let start = vec![0.0f32; id.state_dim()];
        let err = replay(id, &start, &[vec![0.0], vec![0.0, 0.0]]).unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::WrongLength {
                    expected: 1,
                    got: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("step 1"), "{err}");
        let err = replay(id, &[0.0; 7], &[vec![0.0]]).unwrap_err();
        assert!(matches!(err, EnvError::WrongLength { got: 7, .. }), "{err}");
        let err = env.set_state(&[0.0; 2 * 4 + 1]).unwrap_err();
        assert!(matches!(err, EnvError::WrongLength { .. }), "{err}");
        let err = env.reset(&[1, 2]).unwrap_err();
        assert!(
            matches!(
                err,
                EnvError::WrongLength {
                    expected: 3,
                    got: 2,
                    ..
                }
            ),
            "{err}"
        );
    }
}

fn err_what(e: &EnvError) -> String {
    match e {
        EnvError::WrongLength { what, .. } => what.clone(),
        _ => String::new(),
    }
}

#[test]
fn step_should_reject_nan_and_infinite_actions_without_stepping() {
    for id in EnvId::ALL {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut env = NativeEnv::new(id, 3);
            env.reset(&[4, 5, 6]).unwrap();
            let before = env.state().to_vec();
            let err = env.step(&[0.0, bad, 0.0]).unwrap_err();
            match &err {
                EnvError::NonFinite {
                    what,
                    row,
                    component,
                    ..
                } => assert_eq!((*what, *row, *component), ("action", 1, 0)),
                other => panic!("{id}: {other:?}"),
            }
            assert!(err.to_string().contains("non-finite action"), "{err}");
            assert_eq!(env.state(), &before[..]);

            let start = vec![0.0f32; id.state_dim()];
            let err = replay(id, &start, &[vec![0.0], vec![0.0], vec![bad]]).unwrap_err();
            assert!(matches!(err, EnvError::NonFinite { row: 2, .. }), "{err}");
            let mut bad_state = start.clone();
            bad_state[0] = bad;
            assert!(matches!(
                env.set_state(&[bad_state.clone(), start.clone(), start.clone()].concat()),
                Err(EnvError::NonFinite {
                    what: "state",
                    row: 0,
                    component: 0,
                    ..
                })
            ));
        }
    }
}

#[test]
fn step_before_reset_or_set_state_should_be_an_error() {
    for id in EnvId::ALL {
        let mut env = NativeEnv::new(id, 2);
        assert_eq!(env.step(&[0.0, 0.0]).unwrap_err(), EnvError::NotReset);
        env.set_state(&vec![0.0; 2 * id.state_dim()]).unwrap();
        assert!(env.step(&[0.0, 0.0]).is_ok());
    }
}

#[test]
fn episodes_should_truncate_at_max_episode_steps() {
    for id in EnvId::ALL {
        let max = id.spec().max_episode_steps;
        let mut env = NativeEnv::new(id, 2);
        // States that never terminate under zero action: the cart-pole's upright equilibrium
        // (exactly at rest), the pendulum (never terminates), the mountain car at rest near
        // the valley floor (it cannot climb without force).
        let rest: Vec<f32> = match id {
            EnvId::CartPole => vec![0.0; 8],
            EnvId::Pendulum => vec![3.0, 0.0, -1.0, 0.5],
            EnvId::MountainCar => vec![-0.5, 0.0, -0.6, 0.01],
        };
        for round in 0..2 {
            env.set_state(&rest).unwrap();
            for t in 1..=max + 3 {
                let out = env.step(&[0.0, 0.0]).unwrap();
                for tr in &out {
                    assert!(!tr.terminated, "{id} step {t}");
                    assert_eq!(tr.truncated, t >= max, "{id} round {round} step {t}");
                }
                assert_eq!(env.elapsed_steps(), &[t, t]);
            }
        }
        // `reset` also starts a new episode.
        env.reset(&[1, 2]).unwrap();
        assert_eq!(env.elapsed_steps(), &[0, 0]);
        assert!(!env.step(&[0.0, 0.0]).unwrap()[0].truncated);
    }
}

#[test]
fn reset_should_be_deterministic_and_sample_gymnasium_initial_ranges() {
    use std::f64::consts::PI;
    for id in EnvId::ALL {
        let sd = id.state_dim();
        let seeds: Vec<u64> = (0..500).collect();
        let mut env = NativeEnv::new(id, seeds.len());
        let obs = env.reset(&seeds).unwrap();
        let states = env.state_f64().to_vec();
        let mut again = NativeEnv::new(id, seeds.len());
        assert_eq!(again.reset(&seeds).unwrap(), obs);
        assert_eq!(again.state_f64(), &states[..]);
        for (i, s) in states.chunks_exact(sd).enumerate() {
            let (lo, hi): (&[f64], &[f64]) = match id {
                EnvId::CartPole => (&[-0.05; 4], &[0.05; 4]),
                EnvId::Pendulum => (&[-PI, -1.0], &[PI, 1.0]),
                EnvId::MountainCar => (&[-0.6, 0.0], &[-0.4, 0.0]),
            };
            for k in 0..sd {
                assert!(lo[k] <= s[k] && s[k] <= hi[k], "{id} seed {i}: {s:?}");
            }
            let mut s32 = vec![0.0f32; sd];
            id.reset_state(seeds[i], &mut s32);
            assert_eq!(s32, &env.state()[i * sd..(i + 1) * sd]);
            let mut o = vec![0.0f32; id.obs_dim()];
            id.observe_f64(s, &mut o);
            assert_eq!(o, &obs[i * id.obs_dim()..(i + 1) * id.obs_dim()]);
        }
        // Different seeds give different states and cover the range.
        let firsts: Vec<f64> = states.chunks_exact(sd).map(|s| s[0]).collect();
        let mut sorted = firsts.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.dedup();
        assert_eq!(sorted.len(), firsts.len(), "{id}: repeated initial states");
        let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
        let width = match id {
            EnvId::CartPole => 0.1,
            EnvId::Pendulum => 2.0 * PI,
            EnvId::MountainCar => 0.2,
        };
        assert!(
            hi - lo > 0.95 * width,
            "{id}: initial states span only {lo}..{hi}"
        );
    }
}

#[test]
fn actions_should_be_clipped_exactly_where_gymnasium_clips_them() {
    let step1 = |id: EnvId, state: &[f32], a: f32| {
        let mut env = NativeEnv::new(id, 1);
        env.set_state(state).unwrap();
        let tr = env.step(&[a]).unwrap().remove(0);
        (env.state().to_vec(), tr)
    };
    // Pendulum clips the torque before both the dynamics and the cost.
    let s = [1.0, 0.5];
    assert_eq!(
        step1(EnvId::Pendulum, &s, 5.0),
        step1(EnvId::Pendulum, &s, 2.0)
    );
    assert_eq!(
        step1(EnvId::Pendulum, &s, -7.0),
        step1(EnvId::Pendulum, &s, -2.0)
    );
    // Mountain car clips the force but charges the unclipped action: -0.1 · 3².
    let s = [-0.5, 0.01];
    let (clipped, big) = (
        step1(EnvId::MountainCar, &s, 1.0),
        step1(EnvId::MountainCar, &s, 3.0),
    );
    assert_eq!(clipped.0, big.0);
    assert_eq!(clipped.1.reward, -0.1);
    assert_eq!(big.1.reward, (-(3.0f64 * 3.0) * 0.1) as f32);
    // mbrl-lib's continuous cart-pole does not clip: 1.5 pushes harder than 1.0.
    let s = [0.0; 4];
    let (one, more) = (
        step1(EnvId::CartPole, &s, 1.0),
        step1(EnvId::CartPole, &s, 1.5),
    );
    assert!(more.0[1] > one.0[1] * 1.4, "{:?} vs {:?}", more.0, one.0);
}

#[test]
fn cartpole_should_pay_one_on_the_terminating_step_and_zero_after_it() {
    let mut env = NativeEnv::new(EnvId::CartPole, 1);
    env.set_state(&[2.39, 1.0, 0.0, 0.0]).unwrap();
    let first = env.step(&[0.0]).unwrap().remove(0);
    assert!(first.terminated && first.reward == 1.0, "{first:?}");
    let after = env.step(&[0.0]).unwrap().remove(0);
    assert!(after.terminated && after.reward == 0.0, "{after:?}");
    // `replay` stops after the first termination.
    let steps = replay(EnvId::CartPole, &[2.3, 1.0, 0.0, 0.0], &vec![vec![0.0]; 20]).unwrap();
    assert_eq!(steps.len(), 6, "x crosses 2.4 on the sixth step: {steps:?}");
    assert!(steps.last().unwrap().terminated);
    assert!(steps[..5].iter().all(|s| !s.terminated && s.reward == 1.0));
}

/// NumPy 2 keeps the mountain car's state in float32 after the first step; a float64 state
/// (what `reset` leaves) is stepped in float64. Gymnasium 1.4 / NumPy 2.4 give different
/// results for the same state held in the two dtypes (values below printed from
/// `env.unwrapped.state = np.array(s, dtype=...)`, `env.step(np.array([a], np.float32))`); we
/// reproduce both exactly.
#[test]
fn mountain_car_should_step_float64_and_float32_states_with_their_own_roundings() {
    let start = [-0.6284582058854159f64, -0.04460692976183436];
    let a = [-0.23326224f32];
    let gym_f64_state = [-0.6726415157318115f64, -0.04418328404426575];
    let gym_f32_state = [-0.6726415157318115f64, -0.044183287769556046];

    let mut wide = start;
    mbrl_gpu::env::mountain_car::step(&mut wide, StateWidth::F64, &a);
    assert_eq!(wide, gym_f64_state);
    let mut narrow = [start[0] as f32 as f64, start[1] as f32 as f64];
    mbrl_gpu::env::mountain_car::step(&mut narrow, StateWidth::F32, &a);
    assert_eq!(narrow, gym_f32_state);

    // `NativeEnv` holds an f64 state as float64 and an f32 state as float32 ...
    let mut env = NativeEnv::new(EnvId::MountainCar, 1);
    env.set_state_f64(&start).unwrap();
    env.step(&a).unwrap();
    assert_eq!(env.state_f64(), &gym_f64_state[..]);
    env.set_state(&[start[0] as f32, start[1] as f32]).unwrap();
    env.step(&a).unwrap();
    assert_eq!(env.state_f64(), &gym_f32_state[..]);
    // ... and `EnvId::step_state` works on float32 states.
    let mut next = [0.0f32; 2];
    EnvId::MountainCar.step_state(&[start[0] as f32, start[1] as f32], &a, &mut next);
    assert_eq!([f64::from(next[0]), f64::from(next[1])], gym_f32_state);
}
