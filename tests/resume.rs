//! Runs that are never lost: a run stopped after trial k, or killed with SIGKILL at any
//! moment, continues with `--resume` and ends with the same files, bit for bit, as an
//! uninterrupted run with the same seed on the CPU backend.
use mbrl_gpu::algo::pets::{run, PetsConfig};
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::env::EnvId;
use mbrl_gpu::io::run::{Mode, RunDir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A PETS run small enough to repeat 20 times in a test, with every part of the loop in it:
/// the random trial, retraining inside a trial (`train_every`), CEM with TS1 particles.
const TINY: &[&str] = &[
    "--set",
    "trial_length=40",
    "--set",
    "model.hidden=16",
    "--set",
    "model.num_layers=2",
    "--set",
    "model.ensemble_size=3",
    "--set",
    "model.num_elites=2",
    "--set",
    "planner.population=30",
    "--set",
    "planner.num_elites=5",
    "--set",
    "planner.iterations=2",
    "--set",
    "planner.horizon=8",
    "--set",
    "particles=4",
    "--set",
    "train.epochs=5",
    "--set",
    "train.batch_size=16",
    "--set",
    "train_every=20",
];

fn tiny_config(trials: usize) -> PetsConfig {
    let mut c = PetsConfig::preset(&EnvId::CartPole.into(), "quick").unwrap();
    c.trials = trials;
    c.trial_length = 40;
    c.model.hidden = 16;
    c.model.num_layers = 2;
    c.model.ensemble_size = 3;
    c.model.num_elites = 2;
    c.planner.population = 30;
    c.planner.num_elites = 5;
    c.planner.iterations = 2;
    c.planner.horizon = 8;
    c.particles = 4;
    c.train.epochs = 5;
    c.train.batch_size = 16;
    c.train_every = 20;
    c
}

/// The files whose bytes must not depend on interruptions (timings.csv holds wall-clock
/// seconds and is left out on purpose).
const SAME_FILES: [&str; 3] = ["metrics.csv", "model.safetensors", "learning_curve.svg"];

fn assert_same_run(reference: &Path, other: &Path, what: &str) {
    for f in SAME_FILES {
        let a = std::fs::read(reference.join(f)).unwrap();
        let b = std::fs::read(other.join(f)).unwrap_or_else(|e| panic!("{what}: {f}: {e}"));
        assert!(a == b, "{what}: {f} differs from the uninterrupted run");
    }
    // The collected transitions too, through the manifest.
    let state = |d: &Path| {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("checkpoint.json")).unwrap()).unwrap();
        std::fs::read(d.join(m["transitions"].as_str().unwrap())).unwrap()
    };
    assert!(
        state(reference) == state(other),
        "{what}: transitions differ"
    );
}

#[test]
fn a_run_stopped_after_trial_k_should_resume_to_the_uninterrupted_result() {
    let be = CpuBackend::new();
    let t = tempfile::tempdir().unwrap();
    let full = t.path().join("full");
    let cfg = tiny_config(3);
    let toml = toml::to_string(&cfg).unwrap();
    let dir = RunDir::open(&full, Mode::New, &toml).unwrap();
    let (_, want) = run(&be, &cfg, Some(&dir), |_| {}).unwrap();
    drop(dir);
    for k in [0, 2] {
        let part = t.path().join(format!("stopped-after-{k}"));
        // A run configured for k trials stops exactly where a kill after trial k would.
        let short = PetsConfig {
            trials: k.max(1),
            ..cfg.clone()
        };
        let dir = RunDir::open(&part, Mode::New, &toml::to_string(&short).unwrap()).unwrap();
        if k == 0 {
            // No configuration stops after the random trial (at least one MPC trial is
            // required), so the run is interrupted where trial 1 would start.
            let stop = std::cell::Cell::new(false);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&be, &cfg, Some(&dir), |ev| {
                    if let mbrl_gpu::algo::pets::Event::TrialStart { trial: 1, .. } = ev {
                        stop.set(true);
                        panic!("stop after trial 0");
                    }
                })
            }));
            assert!(r.is_err() && stop.get());
        } else {
            run(&be, &short, Some(&dir), |_| {}).unwrap();
        }
        drop(dir);
        let dir = RunDir::open(&part, Mode::Resume, "").unwrap();
        let mut resumed_at = None;
        let (_, got) = run(&be, &cfg, Some(&dir), |ev| {
            if let mbrl_gpu::algo::pets::Event::Resumed { trials, .. } = ev {
                resumed_at = Some(trials);
            }
        })
        .unwrap();
        assert_eq!(resumed_at, Some(k.max(1) + 1 - usize::from(k == 0)));
        let strip = |r: &[mbrl_gpu::algo::pets::TrialReport]| {
            r.iter()
                .map(|x| {
                    (
                        x.trial,
                        x.env_steps,
                        x.ret.to_bits(),
                        x.train_loss.to_bits(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&got), strip(&want), "after trial {k}");
        assert_same_run(&full, &part, &format!("stopped after trial {k}"));
    }
}

#[test]
fn resume_should_refuse_a_checkpoint_of_other_settings() {
    let be = CpuBackend::new();
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("run");
    let cfg = tiny_config(1);
    let dir = RunDir::open(&p, Mode::New, &toml::to_string(&cfg).unwrap()).unwrap();
    run(&be, &cfg, Some(&dir), |_| {}).unwrap();
    let other = PetsConfig {
        seed: 5,
        ..tiny_config(2)
    };
    let e = run(&be, &other, Some(&dir), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("seed: 0 → 5"), "{e}");
    // A manifest pointing outside the run directory is refused.
    let m = p.join("checkpoint.json");
    let text = std::fs::read_to_string(&m).unwrap();
    let evil = text.replace("checkpoint/model-0001", "../../etc/model-0001");
    std::fs::write(&m, evil).unwrap();
    let e = run(&be, &tiny_config(2), Some(&dir), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside"), "{e}");
    std::fs::write(&m, "{ not json").unwrap();
    let e = run(&be, &tiny_config(2), Some(&dir), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoint.json"), "{e}");
}

fn pets_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mbrl-gpu"));
    c.arg("pets").args(args).args(["--backend", "cpu"]);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn finish(c: &mut Command, what: &str) {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Philox is overkill for picking kill times; a fixed-seed xorshift keeps them repeatable.
fn xorshift(s: &mut u64) -> f64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn kill_9_at_random_moments_should_always_leave_a_resumable_run() {
    let t = tempfile::tempdir().unwrap();
    let reference = t.path().join("reference");
    let mut args = vec!["--trials", "4"];
    args.extend_from_slice(TINY);
    // Longer trials than TINY's, so that the kills spread over a few hundred milliseconds.
    args.extend_from_slice(&["--set", "trial_length=80"]);
    let t0 = Instant::now();
    finish(
        pets_cmd(&args).args(["--out", reference.to_str().unwrap()]),
        "reference run",
    );
    let span = t0.elapsed().as_secs_f64();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut killed, mut before_start) = (0, 0);
    for i in 0..20 {
        let dir = t.path().join(format!("killed-{i}"));
        let d = dir.to_str().unwrap();
        let mut child = pets_cmd(&args).args(["--out", d]).spawn().unwrap();
        let at = Duration::from_secs_f64(span * (0.02 + 0.9 * xorshift(&mut seed)));
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        if !dir.exists() {
            // Killed before the run directory appeared: nothing was started or lost.
            before_start += 1;
            finish(pets_cmd(&args).args(["--out", d]), "fresh start");
        } else {
            finish(
                &mut pets_cmd(&["--resume", d]),
                &format!("resume after a kill at {at:?}"),
            );
        }
        assert_same_run(&reference, &dir, &format!("kill {i} at {at:?}"));
        // No temporary file survives the resumed run.
        for sub in [dir.clone(), dir.join("checkpoint")] {
            for e in std::fs::read_dir(&sub).unwrap() {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!n.contains(".tmp-"), "{n} left in {}", sub.display());
            }
        }
    }
    eprintln!(
        "{killed} of 20 runs killed mid-run ({before_start} before the directory existed); \
         reference run {span:.2} s"
    );
    // The kill times are spread over the reference run's duration; on a loaded machine some
    // runs are faster than it and finish first (the resume then has nothing to do, which is
    // checked too), but a good share of the kills must land inside a run for the test to
    // mean anything (here typically 10–17 of 20).
    assert!(killed >= 5, "too few kills landed inside a run: {killed}");
}

#[test]
fn cli_should_refuse_to_overwrite_a_run_and_resume_it_instead() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("run");
    let ds = d.to_str().unwrap();
    let mut args = vec!["--trials", "1"];
    args.extend_from_slice(TINY);
    finish(pets_cmd(&args).args(["--out", ds]), "first run");
    let before = std::fs::read(d.join("metrics.csv")).unwrap();
    let o = pets_cmd(&args)
        .args(["--out", ds, "--seed", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--resume") && err.contains("--force"));
    assert_eq!(std::fs::read(d.join("metrics.csv")).unwrap(), before);
    // Extending a finished run by one trial equals running two trials at once.
    finish(&mut pets_cmd(&["--resume", ds, "--trials", "2"]), "extend");
    let two = t.path().join("two");
    let mut args2 = vec!["--trials", "2"];
    args2.extend_from_slice(TINY);
    finish(
        pets_cmd(&args2).args(["--out", two.to_str().unwrap()]),
        "two",
    );
    assert_same_run(&two, &d, "extended run");
    // --force replaces it.
    finish(pets_cmd(&args).args(["--out", ds, "--force"]), "force");
    assert_eq!(std::fs::read(d.join("metrics.csv")).unwrap(), before);
}
