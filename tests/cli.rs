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
    for c in ["devices", "model", "bench", "pets", "plan", "envs", "env"] {
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
    for e in ["cartpole", "pendulum", "mountain-car"] {
        assert!(out.contains(e), "{out}");
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
