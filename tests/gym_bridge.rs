//! The Gymnasium bridge (`--env gym:ID`) against real Gymnasium: step-for-step parity with
//! the native environments, and what each failure gives (a crashed, hung or lying worker,
//! missing Python or Gymnasium, unsupported spaces).
//!
//! Needs a Python with Gymnasium: `MBRL_GPU_PYTHON` (scripts/test.sh installs one into
//! `.tools/gym` and sets it). Without one the tests print why and pass, except under `CI=true`,
//! where a missing interpreter is a failure.
use mbrl_gpu::env::gym::{GymEnv, GymId, GymOptions};
use mbrl_gpu::env::{Env, EnvError, EnvId, NativeEnv};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "common/tiny.rs"]
mod tiny;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The interpreter with Gymnasium, or None (skip) outside CI.
fn python() -> Option<OsString> {
    static PY: OnceLock<Result<OsString, String>> = OnceLock::new();
    let r = PY.get_or_init(|| {
        let py = std::env::var_os("MBRL_GPU_PYTHON")
            .or_else(|| {
                let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/gym/bin/python");
                p.exists().then(|| p.into_os_string())
            })
            .unwrap_or_else(|| "python3".into());
        let ok = std::process::Command::new(&py)
            .args(["-c", "import gymnasium, numpy"])
            .output();
        match ok {
            Ok(o) if o.status.success() => Ok(py),
            Ok(o) => Err(format!(
                "{py:?} cannot import gymnasium: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("{py:?}: {e}")),
        }
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(why) if in_ci() => panic!("CI=true and no Python with Gymnasium: {why}"),
        Err(why) => {
            eprintln!("skipped: no Python with Gymnasium ({why}); scripts/test.sh installs one");
            None
        }
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gym_envs")
}

fn opts(py: &OsString, timeout_s: f64, vars: &[(&str, &str)]) -> GymOptions {
    let mut v: Vec<(OsString, OsString)> = vec![("PYTHONPATH".into(), fixtures().into_os_string())];
    v.extend(
        vars.iter()
            .map(|(k, x)| (OsString::from(k), OsString::from(x))),
    );
    GymOptions {
        python: py.clone(),
        timeout: Duration::from_secs_f64(timeout_s),
        vars: v,
    }
}

fn gym(name: &str) -> GymId {
    GymId::parse(name).unwrap().unwrap()
}

fn test_env(name: &str) -> GymId {
    gym(&format!("gym:mbrl_test_envs:MbrlTest/{name}-v0"))
}

fn message(e: EnvError) -> String {
    e.to_string()
}

/// Actions from a fixed generator, about a fifth outside the bounds (Gymnasium clips them
/// where the environment does).
fn actions(n: usize, low: f32, high: f32, seed: u64) -> Vec<f32> {
    let mut g = mbrl_gpu::rng::Philox::new(seed, 7, 0);
    (0..n)
        .map(|_| {
            let u = g.uniform() * 1.4 - 0.2;
            low + (high - low) * u
        })
        .collect()
}

/// The bridge's Pendulum-v1 and MountainCarContinuous-v0, started from the states Gymnasium
/// reset to (read back through STATE), step for step against the native environments with
/// the same actions: identical observations, rewards and flags, bit for bit.
#[test]
fn bridge_should_reproduce_native_trajectories_step_for_step() {
    let Some(py) = python() else { return };
    for (name, id, steps) in [
        ("gym:Pendulum-v1", EnvId::Pendulum, 200),
        ("gym:MountainCarContinuous-v0", EnvId::MountainCar, 999),
    ] {
        let copies = 3;
        let mut g = GymEnv::open(&gym(name), copies, &opts(&py, 60.0, &[])).unwrap();
        assert_eq!(g.spec().obs_dim, id.obs_dim());
        assert_eq!(g.spec().act_dim, id.act_dim());
        assert_eq!(g.spec().act_low, id.spec().act_low);
        assert_eq!(g.spec().act_high, id.spec().act_high);
        assert_eq!(g.spec().max_episode_steps, id.spec().max_episode_steps);
        let seeds = [11u64, 12, 13];
        let obs0 = g.reset(&seeds).unwrap();
        let state = g.unwrapped_state().unwrap();
        assert_eq!(state.len(), copies * id.state_dim());
        let mut native = NativeEnv::new(id, copies);
        native.set_state_f64(&state).unwrap();
        let mut want = vec![0.0f32; copies * id.obs_dim()];
        for (s, o) in state
            .chunks_exact(id.state_dim())
            .zip(want.chunks_exact_mut(id.obs_dim()))
        {
            id.observe_f64(s, o);
        }
        assert_eq!(obs0, want, "{name}: reset observations");
        let (lo, hi) = (id.spec().act_low[0], id.spec().act_high[0]);
        let mut truncated = false;
        for t in 0..steps {
            let a = actions(copies, lo, hi, t as u64);
            let got = g.step(&a).unwrap();
            let exp = native.step(&a).unwrap();
            for (c, (x, y)) in got.iter().zip(&exp).enumerate() {
                assert_eq!(x.obs, y.obs, "{name} step {t} copy {c}: observation");
                assert_eq!(
                    x.reward.to_bits(),
                    y.reward.to_bits(),
                    "{name} step {t} copy {c}: reward {} vs {}",
                    x.reward,
                    y.reward
                );
                assert_eq!(x.terminated, y.terminated, "{name} step {t} copy {c}");
                assert_eq!(x.truncated, y.truncated, "{name} step {t} copy {c}");
                truncated |= x.truncated;
            }
        }
        assert!(truncated, "{name}: the time limit was reached");
        // The same seeds start the same episodes again; another seed another one.
        assert_eq!(g.reset(&seeds).unwrap(), obs0);
        assert_ne!(
            g.reset(&[99, 12, 13]).unwrap()[..id.obs_dim()],
            obs0[..id.obs_dim()]
        );
        let v = g.versions();
        eprintln!(
            "{name}: Python {}, Gymnasium {}, NumPy {}",
            v.python, v.gymnasium, v.numpy
        );
    }
}

#[test]
fn a_killed_worker_should_be_named_and_stay_failed() {
    let Some(py) = python() else { return };
    let mut g = GymEnv::open(&gym("gym:Pendulum-v1"), 2, &opts(&py, 30.0, &[])).unwrap();
    g.reset(&[1, 2]).unwrap();
    for _ in 0..5 {
        g.step(&[0.5, -0.5]).unwrap();
    }
    // SAFETY: sends SIGKILL to the worker this test started.
    unsafe { libc::kill(g.worker_pid() as i32, 9) };
    let e = message(g.step(&[0.5, -0.5]).unwrap_err());
    assert!(e.starts_with("gym:Pendulum-v1: the worker "), "{e}");
    assert!(e.contains("during STEP"), "{e}");
    assert!(
        e.contains("signal: 9") || e.contains("closed its output"),
        "{e}"
    );
    let again = message(g.reset(&[1, 2]).unwrap_err());
    assert!(again.contains("no longer usable"), "{again}");
}

#[test]
fn a_worker_that_exits_mid_episode_should_show_its_last_words() {
    let Some(py) = python() else { return };
    let flag = tempfile::NamedTempFile::new().unwrap();
    let path = flag.path().to_str().unwrap().to_string();
    let o = opts(
        &py,
        30.0,
        &[("MBRL_TEST_CRASH_AT", "7"), ("MBRL_TEST_CRASH_FILE", &path)],
    );
    let mut g = GymEnv::open(&test_env("Crashing"), 1, &o).unwrap();
    g.reset(&[0]).unwrap();
    let mut err = None;
    for t in 0..20 {
        match g.step(&[0.1]) {
            Ok(_) => assert!(t < 6, "the worker should have died at step 7"),
            Err(e) => {
                err = Some((t, message(e)));
                break;
            }
        }
    }
    let (t, e) = err.expect("an error");
    assert_eq!(t, 6);
    assert!(e.contains("exited (exit status: 9) during STEP"), "{e}");
    assert!(e.contains("crashing on purpose"), "{e}");
}

#[test]
fn a_hanging_worker_should_time_out_and_be_stopped() {
    let Some(py) = python() else { return };
    let mut g = GymEnv::open(&test_env("Hanging"), 1, &opts(&py, 1.0, &[])).unwrap();
    g.reset(&[0]).unwrap();
    g.step(&[0.0]).unwrap();
    g.step(&[0.0]).unwrap();
    let t0 = Instant::now();
    let e = message(g.step(&[0.0]).unwrap_err());
    let waited = t0.elapsed();
    assert!(e.contains("did not answer STEP within 1.000 s"), "{e}");
    assert!(e.contains("stopped"), "{e}");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    let pid = g.worker_pid() as i32;
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the hung worker {pid} was killed and reaped");
}

#[test]
fn a_non_finite_observation_should_be_refused_with_its_place() {
    let Some(py) = python() else { return };
    let mut g = GymEnv::open(&test_env("NanObs"), 2, &opts(&py, 30.0, &[])).unwrap();
    g.reset(&[0, 1]).unwrap();
    for _ in 0..4 {
        g.step(&[0.0, 0.0]).unwrap();
    }
    let e = message(g.step(&[0.0, 0.0]).unwrap_err());
    assert!(
        e.contains("non-finite observation value NaN") && e.contains("copy 0, component 1"),
        "{e}"
    );
}

/// What the environment prints to stdout, or reads from stdin, does not reach the protocol.
#[test]
fn an_environment_that_prints_should_not_break_the_protocol() {
    let Some(py) = python() else { return };
    let mut g = GymEnv::open(&test_env("Chatty"), 2, &opts(&py, 30.0, &[])).unwrap();
    let obs = g.reset(&[5, 6]).unwrap();
    assert_eq!(obs.len(), 6);
    for _ in 0..10 {
        assert_eq!(g.step(&[1.0, -1.0]).unwrap().len(), 2);
    }
}

#[test]
fn spaces_should_be_checked_and_flattened() {
    let Some(py) = python() else { return };
    let o = opts(&py, 30.0, &[]);
    let e = message(GymEnv::open(&gym("gym:CartPole-v1"), 1, &o).err().unwrap());
    assert!(
        e.contains("Discrete action space") && e.contains("only Box spaces"),
        "{e}"
    );
    let e = message(GymEnv::open(&test_env("Unbounded"), 1, &o).err().unwrap());
    assert!(e.contains("finite bounds"), "{e}");
    let mut g = GymEnv::open(&test_env("Grid"), 1, &o).unwrap();
    assert_eq!(g.spec().obs_dim, 6);
    let obs = g.reset(&[3]).unwrap();
    assert_eq!(
        obs[3..],
        obs[..3].iter().map(|v| -v).collect::<Vec<_>>()[..]
    );
    let e = message(GymEnv::open(&gym("gym:NoSuchEnv-v0"), 1, &o).err().unwrap());
    assert!(e.contains("gymnasium.make('NoSuchEnv-v0') failed"), "{e}");
    let e = message(
        GymEnv::open(&gym("gym:no_such_pkg:X-v0"), 1, &o)
            .err()
            .unwrap(),
    );
    assert!(
        e.contains("import no_such_pkg failed: ModuleNotFoundError"),
        "{e}"
    );
    // Wrong sizes and non-finite actions are refused before they reach the worker.
    let mut g = GymEnv::open(&gym("gym:Pendulum-v1"), 2, &o).unwrap();
    assert!(matches!(g.step(&[0.0, 0.0]), Err(EnvError::NotReset)));
    g.reset(&[1, 2]).unwrap();
    assert!(matches!(
        g.step(&[0.0]),
        Err(EnvError::WrongLength { expected: 2, .. })
    ));
    assert!(matches!(
        g.step(&[0.0, f32::NAN]),
        Err(EnvError::NonFinite { row: 1, .. })
    ));
    assert!(g.set_state(&[0.0; 4]).is_err());
    g.step(&[0.0, 0.0]).unwrap();
}

#[test]
fn missing_python_or_gymnasium_should_say_what_to_install() {
    let o = GymOptions {
        python: "/nonexistent/python3".into(),
        timeout: Duration::from_secs(5),
        vars: vec![],
    };
    let e = message(GymEnv::open(&gym("gym:Pendulum-v1"), 1, &o).err().unwrap());
    assert!(e.contains("\"/nonexistent/python3\" not found"), "{e}");
    assert!(e.contains("--python PATH"), "{e}");
    let Some(py) = python() else { return };
    // The same interpreter without its site-packages: no NumPy, no Gymnasium.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("python-without-site");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {:?} -S \"$@\"\n", py.to_str().unwrap()),
    )
    .unwrap();
    set_executable(&wrapper);
    let o = GymOptions {
        python: wrapper.into_os_string(),
        timeout: Duration::from_secs(30),
        vars: vec![],
    };
    let e = message(GymEnv::open(&gym("gym:Pendulum-v1"), 1, &o).err().unwrap());
    assert!(e.contains("cannot import gymnasium and numpy"), "{e}");
    assert!(e.contains("-m pip install gymnasium"), "{e}");
}

fn set_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A "worker" that writes garbage, or greets and then says nothing: a protocol error and a
/// timeout, each named, never a hang or a huge allocation. Needs no Gymnasium.
#[test]
fn a_peer_that_lies_or_stalls_should_get_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(
        &garbage,
        "#!/bin/sh\nprintf 'this is not a frame at all'\nsleep 30\n",
    )
    .unwrap();
    set_executable(&garbage);
    let o = GymOptions {
        python: garbage.into_os_string(),
        timeout: Duration::from_secs(5),
        vars: vec![],
    };
    let t0 = Instant::now();
    let e = message(GymEnv::open(&gym("gym:Pendulum-v1"), 1, &o).err().unwrap());
    assert!(
        e.contains("protocol error") && e.contains("a frame of"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // A correct greeting (tag, magic, version 1, three empty strings), then silence.
    let stall = dir.path().join("stall");
    std::fs::write(
        &stall,
        "#!/bin/sh\nprintf '\\017\\000\\000\\000\\110MBGW\\001\\000\\000\\000\\000\\000\\000\\000\\000\\000'\nsleep 30\n",
    )
    .unwrap();
    set_executable(&stall);
    let o = GymOptions {
        python: stall.into_os_string(),
        timeout: Duration::from_millis(500),
        vars: vec![],
    };
    let e = message(GymEnv::open(&gym("gym:Pendulum-v1"), 1, &o).err().unwrap());
    assert!(e.contains("did not answer MAKE within 0.500 s"), "{e}");

    // A greeting of another protocol version.
    let v2 = dir.path().join("v2");
    std::fs::write(
        &v2,
        "#!/bin/sh\nprintf '\\017\\000\\000\\000\\110MBGW\\002\\000\\000\\000\\000\\000\\000\\000\\000\\000'\nsleep 30\n",
    )
    .unwrap();
    set_executable(&v2);
    let o = GymOptions {
        python: v2.into_os_string(),
        timeout: Duration::from_secs(5),
        vars: vec![],
    };
    let e = message(GymEnv::open(&gym("gym:Pendulum-v1"), 1, &o).err().unwrap());
    assert!(e.contains("protocol version 2"), "{e}");
}

// ---- the command line ------------------------------------------------------------------

fn mbrl(py: &OsString, args: &[&str], vars: &[(&str, &str)]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mbrl-gpu"))
        .args(args)
        .env("MBRL_GPU_PYTHON", py)
        .env("PYTHONPATH", fixtures())
        .envs(vars.iter().copied())
        .output()
        .expect("run mbrl-gpu");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn sac_args<'a>(env: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "sac",
        "--env",
        env,
        "--preset",
        "quick",
        "--steps",
        steps,
        "--set",
        "eval_every=400",
        "--set",
        "eval_episodes=1",
        "--set",
        "learning_starts=200",
        "--out",
        out,
    ]
}

/// A worker that dies mid-run ends the run with an error naming it; the run directory keeps
/// the last checkpoint, and `--resume` (with a healthy worker) ends exactly as an
/// uninterrupted run does. `--gym-module` is written into config.toml's `env`.
#[test]
fn a_run_whose_worker_dies_should_keep_its_checkpoint_and_resume() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let flag = dir.path().join("crash-once");
    std::fs::write(&flag, "").unwrap();
    let crash = [
        ("MBRL_TEST_CRASH_AT", "500"),
        ("MBRL_TEST_CRASH_FILE", flag.to_str().unwrap()),
    ];
    let mut args = sac_args("gym:MbrlTest/Crashing-v0", a, "800");
    args.extend(["--gym-module", "mbrl_test_envs"]);
    let (ok, _, err) = mbrl(&py, &args, &crash);
    assert!(!ok, "{err}");
    assert!(
        err.contains("error: gym:mbrl_test_envs:MbrlTest/Crashing-v0: the worker exited"),
        "{err}"
    );
    assert!(err.contains("crashing on purpose"), "{err}");
    let config = std::fs::read_to_string(format!("{a}/config.toml")).unwrap();
    assert!(
        config.contains("env = \"gym:mbrl_test_envs:MbrlTest/Crashing-v0\""),
        "{config}"
    );
    let metrics = std::fs::read_to_string(format!("{a}/metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        2,
        "header and the 400-step row:\n{metrics}"
    );
    let (ok, _, err) = mbrl(&py, &["sac", "--resume", a], &crash);
    assert!(ok, "{err}");
    assert!(err.contains("resuming"), "{err}");
    let mut args = sac_args("gym:mbrl_test_envs:MbrlTest/Crashing-v0", b, "800");
    args.truncate(args.len());
    let (ok, _, err) = mbrl(&py, &args, &[]);
    assert!(ok, "{err}");
    for f in ["metrics.csv", "policy.safetensors", "critic.safetensors"] {
        let x = std::fs::read(format!("{a}/{f}")).unwrap();
        let y = std::fs::read(format!("{b}/{f}")).unwrap();
        assert!(x == y, "{f} differs after the crash and resume");
    }
    let (ok, out, err) = mbrl(
        &py,
        &[
            "eval",
            "--policy",
            &format!("{a}/policy.safetensors"),
            "--env",
            "gym:Pendulum-v1",
            "--episodes",
            "2",
            "--json",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"env\":\"gym:Pendulum-v1\""), "{out}");
}

/// MBPO and PETS on a Gymnasium environment without a native counterpart learn the reward
/// (the presets say so, and turning it off is refused by its key); on gym:Pendulum-v1 they
/// use the native reward function. The runs are tiny: this checks the plumbing.
#[test]
fn model_based_runs_should_work_through_the_bridge() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let grid = "gym:mbrl_test_envs:MbrlTest/Grid-v0";
    let (ok, toml, err) = mbrl(&py, &["mbpo", "--env", grid, "--print-config"], &[]);
    assert!(ok, "{err}");
    assert!(
        toml.contains("preset = \"quick\"") && toml.contains("obs_dim = 6"),
        "{toml}"
    );
    assert!(toml.contains("learn_reward = true"), "{toml}");
    let (ok, _, err) = mbrl(
        &py,
        &[
            "mbpo",
            "--env",
            grid,
            "--set",
            "model.learn_reward=false",
            "--print-config",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("model.learn_reward") && err.contains("no reward function"),
        "{err}"
    );
    let mbpo = |env: &str, o: &str| {
        let mut args = vec!["mbpo", "--env", env, "--out", o];
        args.extend(tiny::TINY_MBPO);
        mbrl(&py, &args, &[])
    };
    for (env, o) in [
        (grid, out("mbpo-grid")),
        ("gym:Pendulum-v1", out("mbpo-pend")),
    ] {
        let (ok, _, err) = mbpo(env, &o);
        assert!(ok, "{env}: {err}");
        let m = std::fs::read_to_string(format!("{o}/metrics.csv")).unwrap();
        // The header and the row of the epoch after the 200 exploration steps.
        assert_eq!(m.lines().count(), 2, "{env}:\n{m}");
        assert!(m.lines().nth(1).unwrap().starts_with("400,"), "{env}:\n{m}");
    }
    let pets = |env: &str, o: &str| {
        mbrl(
            &py,
            &[
                "pets",
                "--env",
                env,
                "--preset",
                "quick",
                "--trials",
                "1",
                "--set",
                "trial_length=30",
                "--set",
                "train.epochs=3",
                "--set",
                "planner.population=20",
                "--set",
                "planner.num_elites=4",
                "--set",
                "planner.horizon=5",
                "--out",
                o,
            ],
            &[],
        )
    };
    for env in [grid, "gym:Pendulum-v1"] {
        let o = out(&format!("pets-{}", env.len()));
        let (ok, _, err) = pets(env, &o);
        assert!(ok, "{env}: {err}");
        let m = std::fs::read_to_string(format!("{o}/metrics.csv")).unwrap();
        assert_eq!(m.lines().count(), 3, "{env}:\n{m}");
        let c = std::fs::read_to_string(format!("{o}/config.toml")).unwrap();
        let learned = env == grid;
        assert!(
            c.contains(&format!("learn_reward = {learned}")),
            "{env}:\n{c}"
        );
    }
    let (ok, _, err) = mbrl(&py, &["plan", "--env", grid, "--true-dynamics"], &[]);
    assert!(
        !ok && err.contains("--true-dynamics needs a native environment"),
        "{err}"
    );
}

#[test]
fn bridge_flags_should_be_checked() {
    let Some(py) = python() else { return };
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "sac",
                "--env",
                "gym:Pendulum-v1",
                "--gym-timeout",
                "0",
                "--print-config",
            ],
            "--gym-timeout 0",
        ),
        (
            &[
                "sac",
                "--env",
                "pendulum",
                "--gym-module",
                "x",
                "--print-config",
            ],
            "--gym-module x needs --env gym:ID",
        ),
        (
            &["devices", "--gym-module", "x"],
            "--gym-module x needs a command",
        ),
        (
            &[
                "sac",
                "--env",
                "gym:Pendulum-v1",
                "--gym-module",
                "9x",
                "--print-config",
            ],
            "not a Python module name",
        ),
    ];
    for (args, want) in cases {
        let (ok, _, err) = mbrl(&py, args, &[]);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }
    let (ok, _, err) = mbrl(
        &py,
        &[
            "sac",
            "--env",
            "gym:Pendulum-v1",
            "--print-config",
            "--python",
            "/nope/py",
        ],
        &[],
    );
    assert!(!ok && err.contains("\"/nope/py\" not found"), "{err}");
}

/// `bench env --json`: native, bridge and Gymnasium rows for 1, 8 and 64 copies, each with
/// a positive median and its steps per second.
#[test]
fn bench_env_should_measure_all_three_ways() {
    let Some(py) = python() else { return };
    let (ok, out, err) = mbrl(&py, &["bench", "env", "--reps", "1", "--json"], &[]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for way in ["native", "bridge", "gymnasium_sync_vector"] {
        for n in [1, 8, 64] {
            let want = format!("env_step_pendulum_{way}_n{n}");
            assert!(names.contains(&want.as_str()), "{want} missing: {names:?}");
        }
    }
    for r in &rows {
        assert!(r["median_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["note"].as_str().unwrap().ends_with("env steps/s"), "{r}");
    }
}

/// `env::np_random` (what the native MuJoCo resets draw from) against the installed NumPy:
/// `Generator(PCG64(seed))`'s raw words, `standard_normal` and `uniform` streams bit for bit,
/// for one- and two-word seeds, long enough that the ziggurat's rejection and tail branches
/// are taken many times.
#[test]
fn numpy_generator_streams_should_match_bit_for_bit() {
    use mbrl_gpu::env::np_random::Pcg64;
    let Some(py) = python() else { return };
    const N: usize = 200_000;
    let seeds: [u64; 5] = [0, 1, 1000, (1 << 32) + 5, u64::MAX];
    let script = format!(
        "import sys, numpy as np\n\
         for s in {seeds:?}:\n\
         \x20   g = np.random.Generator(np.random.PCG64(s))\n\
         \x20   raw = g.bit_generator.random_raw(5)\n\
         \x20   n = g.standard_normal({N})\n\
         \x20   u = g.uniform(-0.1, 0.1, 1000)\n\
         \x20   print(raw.astype('<u8').tobytes().hex(), n.astype('<f8').tobytes().hex(),\n\
         \x20         u.astype('<f8').tobytes().hex())\n"
    );
    let out = std::process::Command::new(&py)
        .args(["-c", &script])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let words = |hex: &str| -> Vec<u64> {
        (0..hex.len() / 16)
            .map(|i| {
                let b: Vec<u8> = (0..8)
                    .map(|j| {
                        u8::from_str_radix(&hex[i * 16 + 2 * j..i * 16 + 2 * j + 2], 16).unwrap()
                    })
                    .collect();
                u64::from_le_bytes(b.try_into().unwrap())
            })
            .collect()
    };
    let mut tails = 0;
    for (line, seed) in text.lines().zip(seeds) {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 3);
        let mut g = Pcg64::new(seed);
        let raw: Vec<u64> = (0..5).map(|_| g.next_u64()).collect();
        assert_eq!(raw, words(parts[0]), "seed {seed}: raw words");
        for (i, want) in words(parts[1]).into_iter().enumerate() {
            let x = g.standard_normal();
            assert!(
                x.to_bits() == want,
                "seed {seed}: standard_normal {i} is {x:e}, NumPy's {:e}",
                f64::from_bits(want)
            );
            tails += usize::from(x.abs() > 3.654_152_885_361_009);
        }
        for (i, want) in words(parts[2]).into_iter().enumerate() {
            let x = g.uniform(-0.1, 0.1);
            assert!(x.to_bits() == want, "seed {seed}: uniform {i}");
        }
    }
    assert_eq!(text.lines().count(), seeds.len());
    // The tail beyond r has probability 2.6e-4: about 260 of the 1,000,000 draws.
    assert!(tails > 100, "only {tails} tail draws were compared");
    eprintln!(
        "{} normals equal to NumPy's ({tails} from the tail)",
        N * seeds.len()
    );
}
