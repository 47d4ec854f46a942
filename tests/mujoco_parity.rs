//! The native MuJoCo tasks (feature `mujoco`) against trajectories recorded from Gymnasium v5
//! with MuJoCo 3.17.0 (`scripts/record_mujoco.py` → `tests/fixtures/mujoco/*.json`): from
//! `reset(seed)` (NumPy's PCG64 stream for the recorded seed) and with the recorded actions,
//! the reset state and every observation, reward and termination flag equal Gymnasium's bit
//! for bit (f64). Also: the termination functions on
//! observations (`env::task`) against the simulator's own flags, batched copies against one
//! copy.
//!
//! Needs the MuJoCo models of the installed Gymnasium (found through `MBRL_GPU_PYTHON`, or
//! `MBRL_GPU_MUJOCO_ASSETS`); `scripts/test.sh` sets both up and builds with the feature.
#![cfg(feature = "mujoco")]

use mbrl_gpu::env::mujoco::{MujocoEnv, MujocoTask};
use mbrl_gpu::env::{task, Env};
use serde::Deserialize;

#[path = "common/tiny.rs"]
mod tiny;

#[derive(Deserialize)]
struct Fixture {
    source: String,
    recorded_with: serde_json::Value,
    episodes: Vec<Episode>,
}

#[derive(Deserialize)]
struct Episode {
    seed: u64,
    qpos: Vec<String>,
    qvel: Vec<String>,
    reset_obs: Vec<String>,
    actions: Vec<Vec<String>>,
    obs: Vec<Vec<String>>,
    rewards: Vec<String>,
    terminated: Vec<bool>,
}

fn f64s(v: &[String]) -> Vec<f64> {
    v.iter()
        .map(|h| f64::from_bits(u64::from_str_radix(h, 16).expect("hex bits")))
        .collect()
}

fn f32s(v: &[String]) -> Vec<f32> {
    v.iter()
        .map(|h| f32::from_bits(u32::from_str_radix(h, 16).expect("hex bits")))
        .collect()
}

fn fixture(task: MujocoTask) -> Fixture {
    let path = format!(
        "{}/tests/fixtures/mujoco/{}.json",
        env!("CARGO_MANIFEST_DIR"),
        task.name()
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect("fixture JSON")
}

#[test]
fn every_task_should_replay_gymnasium_bit_for_bit() {
    for t in MujocoTask::ALL {
        let fx = fixture(t);
        assert_eq!(fx.source, t.info().gym_id);
        let mut env = MujocoEnv::new(t, 1).unwrap();
        let mut steps = 0;
        for (e, ep) in fx.episodes.iter().enumerate() {
            // reset(seed) draws Gymnasium's noise from NumPy's generator: the recorded
            // (qpos, qvel) bit for bit, and with them the recorded first observation.
            let mut start = f64s(&ep.qpos);
            start.extend(f64s(&ep.qvel));
            let drawn = env.reset_states_f64(&[ep.seed]);
            for (i, (x, y)) in drawn.iter().zip(&start).enumerate() {
                assert!(
                    x.to_bits() == y.to_bits(),
                    "{} episode {e} (seed {}): reset state {i} is {x:e}, Gymnasium's {y:e}",
                    t.name(),
                    ep.seed
                );
            }
            assert_eq!(drawn.len(), start.len());
            let obs32 = env.reset(&[ep.seed]).unwrap();
            let want: Vec<f32> = f64s(&ep.reset_obs).iter().map(|v| *v as f32).collect();
            assert_eq!(
                obs32,
                want,
                "{} episode {e}: reset(seed) observation",
                t.name()
            );
            assert_eq!(
                env.observations_f64(),
                f64s(&ep.reset_obs),
                "{} episode {e} (seed {}): reset observation",
                t.name(),
                ep.seed
            );
            for (k, a) in ep.actions.iter().enumerate() {
                let got = env.step_f64(&f32s(a)).unwrap().remove(0);
                let want_obs = f64s(&ep.obs[k]);
                let want_r = f64s(std::slice::from_ref(&ep.rewards[k]))[0];
                let ctx = format!("{} episode {e} step {k}", t.name());
                assert_eq!(got.obs.len(), want_obs.len(), "{ctx}");
                for (i, (x, y)) in got.obs.iter().zip(&want_obs).enumerate() {
                    assert!(
                        x.to_bits() == y.to_bits(),
                        "{ctx}: observation {i} is {x:e}, Gymnasium's {y:e}"
                    );
                }
                assert!(
                    got.reward.to_bits() == want_r.to_bits(),
                    "{ctx}: reward {:e}, Gymnasium's {want_r:e}",
                    got.reward
                );
                assert_eq!(got.terminated, ep.terminated[k], "{ctx}: terminated");
                // The termination function on observations agrees with the simulator's.
                let obs32: Vec<f32> = got.obs.iter().map(|v| *v as f32).collect();
                assert_eq!(
                    task::terminated(t.task_code(), &obs32),
                    got.terminated,
                    "{ctx}: task::terminated"
                );
                if task::has_reward(t.task_code()) {
                    let r = task::reward(t.task_code(), &obs32, &f32s(a), &obs32);
                    assert_eq!(f64::from(r), got.reward, "{ctx}: task::reward");
                }
                steps += 1;
            }
        }
        eprintln!(
            "{}: {steps} steps equal to Gymnasium's ({})",
            t.name(),
            fx.recorded_with
        );
    }
}

/// Copies are independent: four copies stepped together (on rayon's threads) equal each copy
/// stepped alone.
#[test]
fn batched_copies_should_equal_single_copies() {
    for t in [MujocoTask::HalfCheetah, MujocoTask::Ant] {
        let ad = t.info().act_dim;
        let seeds = [3u64, 4, 5, 6];
        let mut batch = MujocoEnv::new(t, seeds.len()).unwrap();
        let obs = batch.reset(&seeds).unwrap();
        let acts: Vec<Vec<f32>> = (0..20)
            .map(|s| {
                (0..seeds.len() * ad)
                    .map(|i| mbrl_gpu::rng::uniform(1, 2, i as u32, s) * 2.0 - 1.0)
                    .collect()
            })
            .collect();
        let mut together = vec![];
        for a in &acts {
            together.push(batch.step(a).unwrap());
        }
        for (c, seed) in seeds.iter().enumerate() {
            let mut one = MujocoEnv::new(t, 1).unwrap();
            let o = one.reset(&[*seed]).unwrap();
            let od = t.info().obs_dim;
            assert_eq!(
                o[..],
                obs[c * od..(c + 1) * od],
                "{} copy {c} reset",
                t.name()
            );
            for (s, a) in acts.iter().enumerate() {
                let tr = one.step(&a[c * ad..(c + 1) * ad]).unwrap().remove(0);
                assert_eq!(tr, together[s][c], "{} copy {c} step {s}", t.name());
            }
        }
    }
}

/// Reset noise stays inside Gymnasium's ranges around the initial state, differs by seed and
/// repeats for a seed; bad input is an error, not a panic.
#[test]
fn resets_and_bad_input() {
    let mut env = MujocoEnv::new(MujocoTask::Hopper, 2).unwrap();
    let a = env.reset(&[1, 2]).unwrap();
    let b = env.reset(&[1, 2]).unwrap();
    assert_eq!(a, b);
    assert_ne!(a[..11], a[11..]);
    let s = env.state().to_vec();
    // Hopper: qpos0 = [0, 1.25, 0, 0, 0, 0], noise uniform ±0.005 on qpos and qvel.
    let init = [
        0.0f32, 1.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    for c in 0..2 {
        for (i, x) in s[c * 12..(c + 1) * 12].iter().enumerate() {
            assert!(
                (x - init[i]).abs() <= 0.005 + 1e-6,
                "copy {c} state {i}: {x}"
            );
        }
    }
    assert!(env.step(&[0.0; 5]).is_err());
    assert!(env.step(&[0.0, 0.0, f32::NAN, 0.0, 0.0, 0.0]).is_err());
    assert!(env.set_state_f64(&[f64::INFINITY; 24]).is_err());
    assert!(env.set_state_f64(&[0.0; 3]).is_err());
    assert!(MujocoEnv::new(MujocoTask::Ant, 0).is_err());
    let t = env.step(&[0.0; 6]).unwrap();
    assert!(t.iter().all(|t| t.obs.iter().all(|v| v.is_finite())));
}

// ---- the command line on the native MuJoCo tasks ----------------------------------------

fn mbrl(args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mbrl-gpu"))
        .args(args)
        .output()
        .expect("run mbrl-gpu");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn rows(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// SAC, MBPO (with the hopper's termination function on model states) and PETS run on the
/// native tasks; presets and their checks name the task.
#[test]
fn run_commands_should_work_on_the_mujoco_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n);
    let o = out("sac");
    let (ok, _, err) = mbrl(&[
        "sac",
        "--env",
        "halfcheetah",
        "--preset",
        "quick",
        "--steps",
        "300",
        "--set",
        "eval_every=300",
        "--set",
        "eval_episodes=1",
        "--set",
        "learning_starts=100",
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(rows(&o).len(), 1);
    let o = out("mbpo");
    let mut args = vec!["mbpo", "--env", "hopper", "--out", o.to_str().unwrap()];
    args.extend(tiny::TINY_MBPO);
    let (ok, _, err) = mbrl(&args);
    assert!(ok, "{err}");
    assert_eq!(rows(&o).len(), 1);
    let (ok, toml, err) = mbrl(&["mbpo", "--env", "ant", "--print-config"]);
    assert!(ok, "{err}");
    assert!(
        toml.contains("preset = \"ant\"") && toml.contains("steps = 300000"),
        "{toml}"
    );
    let (ok, _, err) = mbrl(&[
        "pets",
        "--env",
        "walker2d",
        "--preset",
        "hopper",
        "--print-config",
    ]);
    assert!(!ok && err.contains("use `quick`"), "{err}");
    let (ok, _, err) = mbrl(&[
        "pets",
        "--env",
        "hopper",
        "--set",
        "model.learn_reward=false",
        "--print-config",
    ]);
    assert!(!ok && err.contains("model.learn_reward"), "{err}");
}

/// PETS on InvertedPendulum-v5 learns: after the random trial (a few steps per episode), the
/// first MPC trial keeps the pole up ten times as long (seed 0, `quick`: 51 steps; 99 before
/// resets followed NumPy's stream). A broken model, planner or termination function stays
/// near the random policy's few steps.
#[test]
fn pets_should_learn_to_balance_the_inverted_pendulum() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = mbrl(&[
        "pets",
        "--env",
        "inverted-pendulum",
        "--trials",
        "1",
        "--set",
        "trial_length=300",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let r = rows(dir.path());
    let ret = |row: &str| row.split(',').nth(2).unwrap().parse::<f64>().unwrap();
    assert!(ret(&r[0]) < 20.0, "the random trial: {r:?}");
    assert!(
        ret(&r[1]) >= 30.0,
        "the first MPC trial should balance: {r:?}"
    );
}

/// `bench env --env halfcheetah`: native, bridge and Gymnasium rows.
#[test]
fn bench_env_should_measure_the_native_half_cheetah() {
    let (ok, out, err) = mbrl(&[
        "bench",
        "env",
        "--env",
        "halfcheetah",
        "--reps",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    for way in ["native", "bridge", "gymnasium_sync_vector"] {
        assert!(
            out.contains(&format!("env_step_halfcheetah_{way}_n64")),
            "{way}: {out}"
        );
    }
}

/// The planner's simulator rollouts return what stepping the environment gives: the sum of
/// the rewards up to and including the terminating step, from the same start.
#[test]
fn rollout_returns_should_equal_stepping_the_environment() {
    use mbrl_gpu::env::mujoco::Rollouts;
    for t in [MujocoTask::Hopper, MujocoTask::HalfCheetah] {
        let (ad, h, pop) = (t.info().act_dim, 40usize, 9usize);
        let mut env = MujocoEnv::new(t, 1).unwrap();
        env.reset(&[7]).unwrap();
        let start: Vec<f64> = env.state().iter().map(|v| f64::from(*v)).collect();
        let actions: Vec<f32> = (0..pop * h * ad)
            .map(|i| mbrl_gpu::rng::uniform(9, 4, i as u32, 0) * 2.4 - 1.2)
            .collect();
        let mut got = vec![0.0f32; pop];
        Rollouts::new(t)
            .unwrap()
            .returns(&start, &actions, h, &mut got)
            .unwrap();
        let mut terminated = 0;
        for (c, seq) in actions.chunks_exact(h * ad).enumerate() {
            env.set_state_f64(&start).unwrap();
            let mut total = 0.0f64;
            for a in seq.chunks_exact(ad) {
                let s = env.step_f64(a).unwrap().remove(0);
                total += s.reward;
                if s.terminated {
                    terminated += 1;
                    break;
                }
            }
            assert_eq!(got[c], total as f32, "{} candidate {c}", t.name());
        }
        if t == MujocoTask::Hopper {
            assert!(terminated > 0, "hopper: termination not exercised");
        }
    }
}

/// `plan --true-dynamics` on the inverted pendulum keeps the pole up for the whole episode
/// (a random policy lasts a few steps).
#[test]
fn true_dynamics_planning_should_balance_the_inverted_pendulum() {
    let (ok, out, err) = mbrl(&[
        "plan",
        "--env",
        "inverted-pendulum",
        "--true-dynamics",
        "--horizon",
        "20",
        "--population",
        "100",
        "--iterations",
        "3",
        "--steps",
        "200",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["returns"][0].as_f64(), Some(200.0), "{out}");
}
