//! The command line as a user runs it.
use std::process::{Command, Output};

fn mbrl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mbrl-gpu"))
        .args(args)
        .output()
        .expect("run mbrl-gpu")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn help_should_list_the_commands() {
    let (out, _) = text(&mbrl(&["--help"]));
    for c in [
        "devices",
        "model",
        "bench",
        "pets",
        "plan",
        "envs",
        "env",
        "sac",
        "mbpo",
        "maac",
        "maac-horizons",
        "svg",
        "eval",
    ] {
        assert!(out.contains(c), "--help lacks {c}:\n{out}");
    }
}

#[test]
fn devices_should_explain_every_backend() {
    let o = mbrl(&["devices"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    for b in ["cpu", "wgpu", "cuda"] {
        assert!(out.lines().any(|l| l.starts_with(b)), "{b} missing:\n{out}");
    }
    assert!(out.contains("--backend auto picks"));
}

#[test]
fn envs_should_list_the_native_environments() {
    let (out, _) = text(&mbrl(&["envs"]));
    for e in ["cartpole", "pendulum", "mountain-car", "gym:ID"] {
        assert!(out.contains(e), "{out}");
    }
    // The MuJoCo tasks are listed in every build, and a build without the feature says so
    // on each of their lines.
    for e in [
        "halfcheetah",
        "hopper",
        "walker2d",
        "ant ",
        "inverted-pendulum",
    ] {
        let line = out.lines().find(|l| l.starts_with(e)).unwrap_or_else(|| {
            panic!("{e} not listed: {out}");
        });
        assert!(line.contains("(MuJoCo)"), "{line}");
        let says_missing = line.contains("lacks the cargo feature `mujoco`");
        assert_eq!(says_missing, !cfg!(feature = "mujoco"), "{line}");
    }
}

#[test]
fn fit_then_predict_should_work_on_a_logged_csv() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let data = mbrl_gpu::bench::synthetic_transitions(300, 2, 1, 3);
    std::fs::write(&csv, mbrl_gpu::io::csv::render(&data)).unwrap();
    let model = dir.path().join("m.safetensors");
    let o = mbrl(&[
        "model",
        "fit",
        "--data",
        csv.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--ensemble",
        "3",
        "--elites",
        "2",
        "--hidden",
        "16",
        "--layers",
        "2",
        "--epochs",
        "3",
        "--backend",
        "cpu",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let epochs = err
        .lines()
        .filter(|l| l.starts_with("epoch") && l.contains("holdout mse"));
    assert_eq!(epochs.count(), 3, "one holdout-loss line per epoch:\n{err}");
    let input = dir.path().join("in.json");
    std::fs::write(
        &input,
        r#"{"obs": [[0.1, 0.2], [0.0, -1.0]], "act": [[0.5], [-0.5]]}"#,
    )
    .unwrap();
    let o = mbrl(&[
        "model",
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members[0]["mean"].as_array().unwrap().len(), 2);
    assert_eq!(members[0]["var"][1].as_array().unwrap().len(), 2);
    assert_eq!(members.iter().filter(|m| m["elite"] == true).count(), 2);
}

#[test]
fn bad_input_should_be_one_clear_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "obs_0,act_0,next_obs_0\n1,2,3\n1,inf,3\n").unwrap();
    let out = dir.path().join("m.safetensors");
    let o = mbrl(&[
        "model",
        "fit",
        "--data",
        csv.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("line 3") && err.contains("act_0"), "{err}");
    assert!(!out.exists(), "a model was written from bad data");
    for (args, needle) in [
        (vec!["pets", "--env", "acrobot"], "cartpole"),
        (
            vec!["pets", "--env", "cartpole", "--preset", "huge"],
            "quick",
        ),
        (
            vec![
                "plan",
                "--env",
                "cartpole",
                "--true-dynamics",
                "--horizon",
                "0",
            ],
            "horizon",
        ),
        (
            vec![
                "plan",
                "--env",
                "cartpole",
                "--true-dynamics",
                "--population",
                "5",
                "--elites",
                "9",
            ],
            "elite",
        ),
        (
            vec![
                "plan",
                "--env",
                "cartpole",
                "--true-dynamics",
                "--particles",
                "0",
            ],
            "particles",
        ),
        (
            vec![
                "model",
                "predict",
                "--model",
                "/nonexistent.safetensors",
                "--input",
                "x.json",
            ],
            "nonexistent",
        ),
    ] {
        let o = mbrl(&args);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn plan_with_true_dynamics_should_print_returns_and_latency_as_json() {
    let o = mbrl(&[
        "plan",
        "--env",
        "cartpole",
        "--true-dynamics",
        "--horizon",
        "15",
        "--population",
        "60",
        "--iterations",
        "3",
        "--steps",
        "40",
        "--json",
        "--backend",
        "cpu",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["returns"][0].as_f64().unwrap(), 40.0);
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
    assert!(v["p99_ms"].as_f64().unwrap() >= v["median_ms"].as_f64().unwrap());
}

#[test]
fn env_replay_should_print_one_object_per_step_until_termination() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("r.json");
    // Pole already leaning at 0.2 rad and falling: terminates within a few steps.
    std::fs::write(
        &input,
        r#"{"state": [0.0, 0.0, 0.2, 1.0], "actions": [[1.0], [1.0], [1.0], [1.0], [1.0], [1.0]]}"#,
    )
    .unwrap();
    let o = mbrl(&[
        "env",
        "replay",
        "--env",
        "cartpole",
        "--input",
        input.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let steps: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(steps.len() < 6, "{out}");
    assert_eq!(steps.last().unwrap()["terminated"], true);
    assert!(steps[..steps.len() - 1]
        .iter()
        .all(|s| s["terminated"] == false));
    assert_eq!(steps[0]["obs"].as_array().unwrap().len(), 4);
}

#[test]
fn bench_model_json_should_have_the_documented_keys() {
    let o = mbrl(&[
        "bench",
        "model",
        "--json",
        "--reps",
        "1",
        "--backend",
        "cpu",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 2, "{out}");
    for r in &rows {
        for k in ["name", "median_ms", "gflops", "peak_gflops"] {
            assert!(!r[k].is_null(), "{k} missing in {r}");
        }
        assert!(r["peak_gflops"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bench_cpu_should_report_the_arithmetic_ceilings() {
    let o = mbrl(&["bench", "cpu", "--json", "--reps", "1"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"gemm_peak_square"), "{out}");
    // The ceilings this CPU has are all measured (the shares are of the FMA one).
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("fma") {
            assert!(names.contains(&"fma_f32_peak"), "{out}");
        }
        if std::is_x86_feature_detected!("avx512bf16") {
            assert!(names.contains(&"dpbf16_peak"), "{out}");
        }
    }
    for r in &rows {
        assert!(r["gflops"].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// `bench kernels` without ptxas says where it looked and how to get one (the table itself
/// is checked through the same library calls in tests/cuda_compile.rs).
#[test]
fn bench_kernels_without_ptxas_should_say_what_is_missing() {
    let o = Command::new(env!("CARGO_BIN_EXE_mbrl-gpu"))
        .args(["bench", "kernels"])
        .env("MBRL_CUDA_TOOLS", "/nonexistent/cuda-tools")
        .output()
        .expect("run mbrl-gpu");
    let (_, err) = text(&o);
    assert!(!o.status.success());
    // Either NVRTC is absent (no LD_LIBRARY_PATH to the wheel) or ptxas is: both are named.
    assert!(
        err.contains("no ptxas at /nonexistent/cuda-tools/bin/ptxas") || err.contains("NVRTC"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `mbrl(args)` with its stdout sent to `/dev/full`: a full disk must end in an error
/// message, not a panic.
fn mbrl_to_full_disk(args: &[&str]) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    Command::new(env!("CARGO_BIN_EXE_mbrl-gpu"))
        .args(args)
        .stdout(full)
        .output()
        .expect("run mbrl-gpu")
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let o = mbrl(args);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{args:?} succeeded: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in: {err}");
    }
    err
}

#[test]
fn print_config_should_show_the_resolved_settings_after_config_and_set() {
    let o = mbrl(&[
        "pets",
        "--preset",
        "cartpole",
        "--set",
        "planner.horizon=30",
        "--set",
        "model.hidden=256",
        "--seed",
        "4",
        "--precision",
        "bf16",
        "--print-config",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let cfg: mbrl_gpu::algo::pets::PetsConfig = toml::from_str(&out).unwrap();
    assert_eq!(cfg.planner.precision, mbrl_gpu::backend::Precision::Bf16);
    assert_eq!(
        (cfg.planner.horizon, cfg.model.hidden, cfg.seed),
        (30, 256, 4)
    );
    assert_eq!(cfg.planner.population, 350, "the rest is the preset's");
    // The printed (or a run's) config.toml, given back with --config, is the same config;
    // flags and --set still apply on top of it.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, &out).unwrap();
    let o = mbrl(&[
        "pets",
        "--config",
        f.to_str().unwrap(),
        "--set",
        "particles=7",
        "--print-config",
    ]);
    let (out2, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let back: mbrl_gpu::algo::pets::PetsConfig = toml::from_str(&out2).unwrap();
    assert_eq!(back.particles, 7);
    assert_eq!(
        mbrl_gpu::algo::pets::PetsConfig {
            particles: cfg.particles,
            ..back
        },
        cfg
    );
}

#[test]
fn settings_errors_should_name_the_setting_or_flag() {
    fails_with(
        &["pets", "--set", "planner.horizn=30", "--print-config"],
        &["planner.horizn", "horizon"],
    );
    fails_with(
        &["pets", "--set", "planner.horizon=soon", "--print-config"],
        &["planner.horizon", "integer"],
    );
    fails_with(
        &["pets", "--set", "propagation=ts9", "--print-config"],
        &["propagation", "ts1"],
    );
    fails_with(
        &["pets", "--set", "planner.num_elites=900", "--print-config"],
        &["--set planner.num_elites is 900"],
    );
    fails_with(&["pets", "--trials", "0", "--print-config"], &["--trials"]);
    fails_with(
        &[
            "pets",
            "--set",
            "planner.population=1000000000000",
            "--print-config",
        ],
        &["planner.population is too large"],
    );
    fails_with(
        &["pets", "--set", "model.hidden=4000000000", "--print-config"],
        &["model.hidden 4000000000 is too large", "of f32"],
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "\u{feff}[planner]\nhorizon = 12\nspeed = 3\n").unwrap();
    fails_with(
        &["pets", "--config", f.to_str().unwrap(), "--print-config"],
        &["planner.speed", f.to_str().unwrap()],
    );
    std::fs::write(&f, "[planner\n").unwrap();
    fails_with(
        &["pets", "--config", f.to_str().unwrap(), "--print-config"],
        &["not valid TOML"],
    );
    fails_with(
        &[
            "plan",
            "--env",
            "cartpole",
            "--true-dynamics",
            "--particles",
            "5",
        ],
        &["--true-dynamics", "--particles"],
    );
    fails_with(
        &[
            "plan",
            "--env",
            "cartpole",
            "--true-dynamics",
            "--propagation",
            "tsinf",
        ],
        &["--propagation"],
    );
    fails_with(
        &[
            "plan",
            "--env",
            "cartpole",
            "--true-dynamics",
            "--population",
            "5",
            "--elites",
            "9",
        ],
        &["--elites is 9"],
    );
    fails_with(
        &[
            "plan",
            "--env",
            "cartpole",
            "--true-dynamics",
            "--population",
            "100000000000",
            "--elites",
            "9",
        ],
        &["--population is too large"],
    );
    fails_with(
        &[
            "plan",
            "--env",
            "cartpole",
            "--true-dynamics",
            "--episodes",
            "0",
        ],
        &["--episodes"],
    );
    // `--resume` cannot be mixed with settings of a new run.
    fails_with(
        &["pets", "--resume", "x", "--seed", "3"],
        &["--resume", "--seed"],
    );
}

/// 60 synthetic transitions (obs 2, act 1) as `dir/log.csv`.
fn synthetic_csv(dir: &std::path::Path) -> std::path::PathBuf {
    let csv = dir.join("log.csv");
    let data = mbrl_gpu::bench::synthetic_transitions(60, 2, 1, 3);
    std::fs::write(&csv, mbrl_gpu::io::csv::render(&data)).unwrap();
    csv
}

#[test]
fn model_fit_should_protect_existing_files_and_name_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let csv = synthetic_csv(dir.path());
    let original = std::fs::read(&csv).unwrap();
    let c = csv.to_str().unwrap();
    let small = [
        "--hidden",
        "8",
        "--layers",
        "1",
        "--ensemble",
        "2",
        "--elites",
        "1",
    ];
    let fit = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "model",
            "fit",
            "--data",
            c,
            "--out",
            out,
            "--backend",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        // The small defaults, except where `extra` sets the flag itself.
        for kv in small.chunks(2) {
            if !extra.contains(&kv[0]) {
                v.extend(kv.iter().map(|s| s.to_string()));
            }
        }
        v
    };
    // Its own data file, even with --force.
    fails_with(&args(&fit(c, &["--force"])), &["is the --data file"]);
    assert_eq!(std::fs::read(&csv).unwrap(), original);
    let other = dir.path().join("existing.bin");
    std::fs::write(&other, b"keep me").unwrap();
    fails_with(
        &args(&fit(other.to_str().unwrap(), &["--epochs", "1"])),
        &["already exists", "--force"],
    );
    assert_eq!(std::fs::read(&other).unwrap(), b"keep me");
    let o = mbrl(&args(&fit(
        other.to_str().unwrap(),
        &["--epochs", "1", "--force"],
    )));
    assert!(o.status.success(), "{}", text(&o).1);
    // Before any training: a directory that does not exist, and settings that cannot work.
    let m = dir.path().join("m.safetensors");
    let ms = m.to_str().unwrap();
    fails_with(
        &args(&fit("/nonexistent-dir/m.safetensors", &[])),
        &["does not exist"],
    );
    fails_with(&args(&fit(ms, &["--epochs", "0"])), &["--epochs"]);
    fails_with(&args(&fit(ms, &["--elites", "5"])), &["--elites"]);
    fails_with(
        &args(&fit(ms, &["--hidden", "3000000000"])),
        &["--hidden 3000000000 is too large", "GiB of f32"],
    );
    fails_with(
        &args(&fit(ms, &["--ensemble", "100000000000"])),
        &["--ensemble"],
    );
    // Without a holdout the summary speaks of training MSE.
    let o = mbrl(&args(&fit(ms, &["--epochs", "2", "--holdout", "0"])));
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("no holdout set: training mse"), "{err}");
    assert!(!err.contains("holdout mse"), "{err}");
}

#[test]
fn non_finite_results_should_be_errors_not_null() {
    let dir = tempfile::tempdir().unwrap();
    let csv = synthetic_csv(dir.path());
    let m = dir.path().join("m.safetensors");
    let fit = [
        "model",
        "fit",
        "--data",
        csv.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        "--hidden",
        "8",
        "--layers",
        "1",
        "--ensemble",
        "2",
        "--elites",
        "1",
        "--epochs",
        "1",
        "--backend",
        "cpu",
    ];
    let o = mbrl(&fit);
    assert!(o.status.success(), "{}", text(&o).1);
    let input = dir.path().join("in.json");
    std::fs::write(&input, r#"{"obs": [[0.1, 0.2]], "act": [[3.4e38]]}"#).unwrap();
    let o = mbrl(&[
        "model",
        "predict",
        "--model",
        m.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "exit 0 with {out}");
    assert!(!out.contains("null"), "{out}");
    assert!(err.contains("non-finite") || err.contains("3.4"), "{err}");
    let replay = dir.path().join("r.json");
    std::fs::write(
        &replay,
        r#"{"state": [1e300, 0.0, 0.0, 0.0], "actions": [[1.0], [1.0]]}"#,
    )
    .unwrap();
    let o = mbrl(&[
        "env",
        "replay",
        "--env",
        "cartpole",
        "--input",
        replay.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "exit 0 with {out}");
    assert!(!out.contains("null"), "{out}");
    assert!(err.contains("non-finite") || err.contains("1e300"), "{err}");
    // A model trained for cart-pole handed to pendulum names both sizes.
    let pets = dir.path().join("pets-model.safetensors");
    let cp = mbrl_gpu::model::Ensemble::new(mbrl_gpu::model::ModelConfig::pets(4, 1), 0).unwrap();
    mbrl_gpu::io::checkpoint::save(&cp, &pets).unwrap();
    fails_with(
        &[
            "plan",
            "--env",
            "pendulum",
            "--model",
            pets.to_str().unwrap(),
            "--steps",
            "1",
        ],
        &["4 observation", "pendulum has 3"],
    );
}

#[test]
fn a_full_disk_on_stdout_should_be_an_error_message() {
    for args in [vec!["envs"], vec!["pets", "--print-config"]] {
        let o = mbrl_to_full_disk(&args);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains("standard output"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A closed stdout (`>&-`), which Rust's stdout would otherwise swallow silently.
    let o = Command::new("sh")
        .args(["-c", "exec \"$0\" envs >&-", env!("CARGO_BIN_EXE_mbrl-gpu")])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("standard output"),
        "{err}"
    );
}

#[test]
fn help_should_describe_every_option() {
    for cmd in [
        vec!["pets"],
        vec!["plan"],
        vec!["model", "fit"],
        vec!["model", "predict"],
        vec!["bench", "plan"],
        vec!["env", "replay"],
        vec!["sac"],
        vec!["mbpo"],
        vec!["maac"],
        vec!["maac-horizons"],
        vec!["svg"],
        vec!["eval"],
        vec!["bench", "policy"],
        vec!["bench", "cpu"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let (out, _) = text(&mbrl(&args));
        let lines: Vec<&str> = out.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim_start();
            if !l.starts_with("--") && !l.starts_with("-h") {
                continue;
            }
            // `--flag <VALUE>  Description`, or (long help) the description on the next,
            // further indented line.
            let same = l.split_once("  ").map(|(_, d)| d.trim()).unwrap_or("");
            let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or("");
            let desc = if same.is_empty() { next } else { same };
            assert!(
                !desc.is_empty() && !desc.starts_with('[') && !desc.starts_with('-'),
                "{cmd:?}: {l:?} has no description"
            );
        }
    }
}

/// A SAC run small enough for a test: 16-wide networks, 600 steps, a row every 200.
fn tiny_sac_args(out: &str) -> Vec<String> {
    [
        "sac",
        "--env",
        "pendulum",
        "--preset",
        "quick",
        "--steps",
        "600",
        "--set",
        "learning_starts=100",
        "--set",
        "eval_every=200",
        "--set",
        "eval_episodes=1",
        "--set",
        "sac.hidden=16",
        "--set",
        "sac.batch_size=32",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn sac_then_eval_should_write_a_run_and_replay_its_policy() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    let a = tiny_sac_args(run.to_str().unwrap());
    let o = mbrl(&args(&a));
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("final evaluation return"), "{out}");
    for f in [
        "config.toml",
        "metrics.csv",
        "timings.csv",
        "policy.safetensors",
        "critic.safetensors",
        "learning_curve.svg",
        "checkpoint.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("env_steps,eval_return,critic_loss,actor_loss,alpha"));
    assert_eq!(csv.lines().count(), 1 + 3, "{csv}");
    // The same run again is refused, nothing touched.
    let before = std::fs::read(run.join("policy.safetensors")).unwrap();
    fails_with(&args(&a), &["--force", "--resume"]);
    assert_eq!(
        before,
        std::fs::read(run.join("policy.safetensors")).unwrap()
    );
    // Resumed by another command, the run is refused by the name of that command, and
    // nothing in it changes.
    let rs = run.to_str().unwrap();
    let csv_before = std::fs::read(run.join("metrics.csv")).unwrap();
    for cmd in ["pets", "mbpo", "maac", "svg"] {
        fails_with(
            &[cmd, "--resume", rs],
            &[&format!("is not the configuration of a `{cmd}` run")],
        );
    }
    assert_eq!(csv_before, std::fs::read(run.join("metrics.csv")).unwrap());
    assert_eq!(
        before,
        std::fs::read(run.join("policy.safetensors")).unwrap()
    );
    // eval replays the saved policy deterministically: same returns twice.
    let policy = run.join("policy.safetensors");
    let e = [
        "eval",
        "--policy",
        policy.to_str().unwrap(),
        "--env",
        "pendulum",
        "--episodes",
        "2",
        "--json",
    ];
    let (o1, o2) = (mbrl(&e), mbrl(&e));
    assert!(o1.status.success(), "{}", text(&o1).1);
    assert_eq!(o1.stdout, o2.stdout);
    let v: serde_json::Value = serde_json::from_slice(&o1.stdout).unwrap();
    assert_eq!(v["returns"].as_array().unwrap().len(), 2);
    // The run directory stands for its policy.safetensors; a directory without one is named.
    let mut by_dir = e;
    by_dir[2] = run.to_str().unwrap();
    let o3 = mbrl(&by_dir);
    assert!(o3.status.success(), "{}", text(&o3).1);
    assert_eq!(o1.stdout, o3.stdout);
    fails_with(
        &[
            "eval",
            "--policy",
            t.path().to_str().unwrap(),
            "--env",
            "pendulum",
        ],
        &["without policy.safetensors"],
    );
    // A policy for another environment, a file that is not a policy, a missing file.
    fails_with(
        &[
            "eval",
            "--policy",
            policy.to_str().unwrap(),
            "--env",
            "cartpole",
        ],
        &["policy maps 3 observations", "cartpole"],
    );
    let model = run.join("critic.safetensors");
    fails_with(
        &[
            "eval",
            "--policy",
            model.to_str().unwrap(),
            "--env",
            "pendulum",
        ],
        &["critic.safetensors", "format"],
    );
    let junk = t.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\0\0\0\0\0\0\0{not json}").unwrap();
    fails_with(
        &[
            "eval",
            "--policy",
            junk.to_str().unwrap(),
            "--env",
            "pendulum",
        ],
        &["junk.safetensors"],
    );
    fails_with(
        &[
            "eval",
            "--policy",
            "/nonexistent/p.safetensors",
            "--env",
            "pendulum",
        ],
        &["/nonexistent/p.safetensors"],
    );
    fails_with(
        &[
            "eval",
            "--policy",
            policy.to_str().unwrap(),
            "--env",
            "pendulum",
            "--episodes",
            "0",
        ],
        &["--episodes"],
    );
}

#[test]
fn sac_killed_mid_run_should_resume_to_the_same_files() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let mut long = tiny_sac_args(a.to_str().unwrap());
    long[6] = "3000".into();
    assert!(mbrl(&args(&long)).status.success());
    let mut victim = long.clone();
    let n = victim.len();
    victim[n - 1] = b.to_str().unwrap().into();
    // Kill -9 once the first checkpoint is committed, then resume until done.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mbrl-gpu"))
        .args(args(&victim))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !b.join("checkpoint.json").exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let o = mbrl(&["sac", "--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    for f in [
        "metrics.csv",
        "policy.safetensors",
        "critic.safetensors",
        "learning_curve.svg",
    ] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs after kill -9 and resume"
        );
    }
    // A torn state file (a disk error, a hand edit) is refused by name, and nothing the
    // user reads is touched.
    let agent = std::fs::read_dir(b.join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("agent-"))
        .expect("an agent state file");
    let bytes = std::fs::read(&agent).unwrap();
    std::fs::write(&agent, &bytes[..bytes.len() / 2]).unwrap();
    let metrics = std::fs::read(b.join("metrics.csv")).unwrap();
    let name = agent.file_name().unwrap().to_string_lossy().into_owned();
    fails_with(
        &["sac", "--resume", b.to_str().unwrap(), "--steps", "4000"],
        &[&name, "safetensors"],
    );
    assert_eq!(metrics, std::fs::read(b.join("metrics.csv")).unwrap());
    // A PETS run directory is not a SAC run.
    let c = t.path().join("c");
    std::fs::create_dir(&c).unwrap();
    std::fs::write(c.join("config.toml"), "env = \"cartpole\"\ntrials = 3\n").unwrap();
    fails_with(&["sac", "--resume", c.to_str().unwrap()], &["config.toml"]);
}

#[test]
fn mbpo_and_sac_settings_errors_should_name_the_setting() {
    fails_with(
        &["sac", "--set", "sac.lr=-1", "--print-config"],
        &["--set sac.lr"],
    );
    fails_with(
        &["sac", "--set", "sac.gamma=2", "--print-config"],
        &["sac.gamma"],
    );
    fails_with(&["sac", "--steps", "0", "--print-config"], &["--steps"]);
    fails_with(
        &["sac", "--set", "sac.nonsense=1", "--print-config"],
        &["nonsense"],
    );
    fails_with(
        &["sac", "--preset", "fast"],
        &["unknown SAC preset", "default"],
    );
    fails_with(
        &[
            "mbpo",
            "--set",
            "rollout_schedule=[1, 15, 0, 1]",
            "--print-config",
        ],
        &["rollout_schedule"],
    );
    fails_with(
        &["mbpo", "--set", "real_data_ratio=1.5", "--print-config"],
        &["real_data_ratio"],
    );
    fails_with(
        &["mbpo", "--env", "pendulum", "--preset", "cartpole"],
        &["cartpole environment"],
    );
    // Every preset is named among the choices, the MuJoCo tasks' too (MAAC's are MBPO's).
    for cmd in ["mbpo", "maac"] {
        fails_with(
            &[cmd, "--preset", "fast", "--print-config"],
            &[
                "unknown MBPO preset",
                "quick",
                "halfcheetah",
                "inv_pendulum",
            ],
        );
    }
    fails_with(
        &["mbpo", "--set", "model.hidden=100000000", "--print-config"],
        &["model.hidden"],
    );
    let o = mbrl(&[
        "mbpo",
        "--env",
        "cartpole",
        "--preset",
        "cartpole",
        "--print-config",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for k in [
        "freq_train_model = 200",
        "effective_model_rollouts_per_step = 400",
        "rollout_schedule = [1, 15, 1, 1]",
        "num_sac_updates_per_step = 20",
        "target_update_interval = 4",
        "target_entropy = -0.05",
    ] {
        assert!(out.contains(k), "{k} missing:\n{out}");
    }
}

/// Settings that make a MAAC run of a few hundred steps finish in a second.
const TINY_MAAC: [&str; 18] = [
    "--set",
    "epoch_length=100",
    "--set",
    "freq_train_model=50",
    "--set",
    "initial_exploration_steps=100",
    "--set",
    "effective_model_rollouts_per_step=4",
    "--set",
    "num_sac_updates_per_step=2",
    "--set",
    "eval_episodes=1",
    "--set",
    "model.hidden=16",
    "--set",
    "sac.hidden=16",
    "--set",
    "sac.batch_size=32",
];

/// The Lemma 4.1 study: H = 0 is SAC's gradient, identical through model and truth; a
/// longer horizon through an untrained model is off. Run again, it continues its runs
/// (nothing to do) and writes the same table.
#[test]
fn maac_horizons_should_compare_model_and_true_gradients_and_continue() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("study");
    let mut a = vec![
        "maac-horizons",
        "--steps",
        "300",
        "--horizons",
        "0,2",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend(TINY_MAAC);
    let o = mbrl(&a);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(stdout.contains("H   2  cosine"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("horizons.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{csv}");
    // H = 0: the same gradient both ways (relative error exactly 0); the cosine of a vector
    // with itself is 1 up to the f64 rounding of dot / (|a|·|b|).
    assert_eq!((rows[0][0], rows[0][2]), (0.0, 0.0), "{csv}");
    assert!((rows[0][1] - 1.0).abs() <= 1e-12, "{csv}");
    assert!(
        rows[1][1] < 1.0 && rows[1][1] > -1.0 && rows[1][2] > 0.0,
        "{csv}"
    );
    assert!(rows.iter().all(|r| r[3] > 0.0 && r[5] < 0.0), "{csv}");
    for f in [
        "horizon_error.svg",
        "horizon_return.svg",
        "h0/model.safetensors",
        "h2/metrics.csv",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let o = mbrl(&a);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(
        std::fs::read_to_string(out.join("horizons.csv")).unwrap(),
        csv
    );
    fails_with(&["maac-horizons", "--env", "acrobot"], &["acrobot"]);
    fails_with(&["maac-horizons", "--horizons", "500"], &["--horizons"]);
}

/// MAAC and SVG(∞) as commands: a tiny run each, their policies replayed by `eval`, and
/// MBPO refusing to continue a MAAC run.
#[test]
fn maac_and_svg_should_write_runs_whose_policies_eval_replays() {
    let t = tempfile::tempdir().unwrap();
    let maac_dir = t.path().join("maac");
    let mut a = vec![
        "maac",
        "--env",
        "pendulum",
        "--preset",
        "quick",
        "--steps",
        "300",
        "--out",
        maac_dir.to_str().unwrap(),
    ];
    a.extend(TINY_MAAC);
    let o = mbrl(&a);
    assert!(o.status.success(), "{}", text(&o).1);
    let svg_dir = t.path().join("svg");
    let o = mbrl(&[
        "svg",
        "--preset",
        "quick",
        "--steps",
        "400",
        "--set",
        "eval_every=200",
        "--set",
        "eval_episodes=1",
        "--set",
        "updates_per_episode=3",
        "--set",
        "model.hidden=16",
        "--set",
        "train.epochs=3",
        "--out",
        svg_dir.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("final evaluation return"), "{out}");
    for dir in [&maac_dir, &svg_dir] {
        let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(metrics.lines().count(), 3, "{metrics}");
        let policy = dir.join("policy.safetensors");
        let o = mbrl(&[
            "eval",
            "--policy",
            policy.to_str().unwrap(),
            "--env",
            "pendulum",
            "--episodes",
            "1",
        ]);
        assert!(o.status.success(), "{}", text(&o).1);
    }
    let svg = std::fs::read_to_string(svg_dir.join("learning_curve.svg")).unwrap();
    assert!(svg.contains("SVG"), "the curve is titled by its algorithm");
    // MAAC's critic closes the planner's paths (`plan --terminal-value`); SVG(∞) has none.
    let model = maac_dir.join("model.safetensors");
    let plan = |tv: &std::path::Path| {
        mbrl(&[
            "plan",
            "--env",
            "pendulum",
            "--model",
            model.to_str().unwrap(),
            "--terminal-value",
            tv.to_str().unwrap(),
            "--horizon",
            "3",
            "--population",
            "20",
            "--iterations",
            "1",
            "--particles",
            "2",
            "--steps",
            "3",
            "--backend",
            "cpu",
        ])
    };
    let o = plan(&maac_dir);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("returns"), "{}", text(&o).0);
    for (dir, why) in [
        (svg_dir.clone(), "no critic.safetensors"),
        (maac_dir.join("policy.safetensors"), "not a directory"),
        (t.path().join("absent"), "not a directory"),
    ] {
        let o = plan(&dir);
        assert!(!o.status.success());
        let err = text(&o).1;
        assert!(err.contains(why), "{}: {err}", dir.display());
    }
    // PETS takes the same critic as a setting, kept in its config.toml.
    let pets = |tv: &std::path::Path, out: &std::path::Path| {
        mbrl(&[
            "pets",
            "--env",
            "pendulum",
            "--preset",
            "quick",
            "--trials",
            "1",
            "--backend",
            "cpu",
            "--set",
            "trial_length=8",
            "--set",
            "model.hidden=16",
            "--set",
            "train.epochs=2",
            "--set",
            "planner.population=20",
            "--set",
            "planner.num_elites=4",
            "--set",
            "planner.horizon=3",
            "--set",
            "particles=2",
            "--set",
            &format!("terminal_value={}", tv.display()),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let pets_dir = t.path().join("pets");
    let o = pets(&maac_dir, &pets_dir);
    assert!(o.status.success(), "{}", text(&o).1);
    let cfg = std::fs::read_to_string(pets_dir.join("config.toml")).unwrap();
    assert!(cfg.contains("terminal_value"), "{cfg}");
    let o = pets(&svg_dir, &t.path().join("pets-svg"));
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(
        err.contains("terminal_value") && err.contains("no critic"),
        "{err}"
    );
    assert!(
        !t.path().join("pets-svg").exists(),
        "a refused critic must not leave a run directory behind"
    );
    fails_with(
        &["mbpo", "--resume", maac_dir.to_str().unwrap()],
        &["`mbrl-gpu maac` run"],
    );
    fails_with(
        &["maac", "--resume", svg_dir.to_str().unwrap()],
        &["config.toml"],
    );
}

#[test]
fn maac_and_svg_settings_errors_should_name_the_setting() {
    fails_with(
        &["maac", "--set", "maac.horizon=1000", "--print-config"],
        &["maac.horizon"],
    );
    fails_with(
        &["mbpo", "--set", "maac.horizon=3", "--print-config"],
        &["no section maac"],
    );
    fails_with(
        &["svg", "--set", "max_grad_norm=-1", "--print-config"],
        &["max_grad_norm"],
    );
    fails_with(
        &["svg", "--set", "episodes_per_update=0", "--print-config"],
        &["episodes_per_update"],
    );
    fails_with(
        &["svg", "--set", "segment_grad_norm=nan", "--print-config"],
        &["segment_grad_norm", "got NaN"],
    );
    // `none` unsets an optional setting: σ learned again, as published.
    let o = mbrl(&["svg", "--set", "fixed_log_std=none", "--print-config"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(!out.contains("fixed_log_std"), "{out}");
    fails_with(
        &["svg", "--set", "steps=none", "--print-config"],
        &["steps", "cannot be unset"],
    );
    for (kv, key) in [
        ("step_grad_norm=-0.1", "step_grad_norm"),
        ("mean_penalty=inf", "mean_penalty"),
        ("mean_penalty=1e9", "mean_penalty"),
        ("mean_limit=-2", "mean_limit"),
    ] {
        fails_with(&["svg", "--set", kv, "--print-config"], &[key]);
    }
    fails_with(&["svg", "--preset", "fast"], &["unknown SVG preset"]);
    let o = mbrl(&[
        "maac",
        "--env",
        "cartpole",
        "--preset",
        "cartpole",
        "--print-config",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("[maac]") && out.contains("horizon = 3"),
        "{out}"
    );
}

#[test]
fn a_backend_that_cannot_start_should_leave_no_run_directory() {
    // SAFETY: only tries to dlopen libcuda.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        eprintln!("skipped: this machine has a CUDA driver, so `--backend cuda` would start");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["sac", "mbpo", "svg"] {
        let out = dir.path().join(cmd);
        let o = out.to_str().unwrap();
        fails_with(
            &[cmd, "--env", "pendulum", "--backend", "cuda", "--out", o],
            &["cuda", "libcuda"],
        );
        assert!(!out.exists(), "{cmd} left {o} behind");
    }
}
