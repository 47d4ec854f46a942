//! Learning: small fixed-seed runs that must reach a stated return.
use mbrl_gpu::algo::pets::{run, PetsConfig};
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::env::EnvId;
use mbrl_gpu::io::run::{Mode, RunDir};

/// The README's main command (`pets --env cartpole`, preset quick) on two seeds: the final
/// trial must balance the pole (a run that learned and then forgot fails too).
#[test]
fn pets_quick_should_balance_the_cartpole_within_five_trials() {
    for seed in [0, 1] {
        pets_quick_on_seed(seed);
    }
}

fn pets_quick_on_seed(seed: u64) {
    let mut cfg = PetsConfig::preset(&EnvId::CartPole.into(), "quick").unwrap();
    cfg.seed = seed;
    assert_eq!(cfg.trials, 5);
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("run");
    let dir = RunDir::open(&path, Mode::New, &toml::to_string(&cfg).unwrap()).unwrap();
    let (_, reports) = run(&CpuBackend::new(), &cfg, Some(&dir), |_| {}).unwrap();
    let returns: Vec<f64> = reports.iter().map(|r| r.ret).collect();
    eprintln!("seed {seed}: returns per trial (0 = random): {returns:?}");
    // 200 is the episode cap; the issue asks for ≥ 190 by the fifth trial.
    assert!(
        *returns.last().unwrap() >= 190.0,
        "seed {seed}: the final trial did not reach 190: {returns:?}"
    );
    // The run directory a user plots from.
    let csv = std::fs::read_to_string(path.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("trial,env_steps,return"));
    assert_eq!(csv.lines().count(), 1 + 6);
    for f in ["config.toml", "model.safetensors", "learning_curve.svg"] {
        assert!(path.join(f).exists(), "{f} missing");
    }
    let back: PetsConfig =
        toml::from_str(&std::fs::read_to_string(path.join("config.toml")).unwrap()).unwrap();
    assert_eq!(back, cfg);
}
