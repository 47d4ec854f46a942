//! Learning: small fixed-seed runs that must reach a stated return.
use mbrl_gpu::algo::pets::{run, PetsConfig};
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::env::EnvId;

#[test]
fn pets_quick_should_balance_the_cartpole_within_five_trials() {
    let cfg = PetsConfig::preset(EnvId::CartPole, "quick").unwrap();
    assert_eq!(cfg.trials, 5);
    let dir = tempfile::tempdir().unwrap();
    let (_, reports) = run(&CpuBackend::new(), &cfg, Some(dir.path()), |_| {}).unwrap();
    let returns: Vec<f64> = reports.iter().map(|r| r.ret).collect();
    eprintln!("returns per trial (0 = random): {returns:?}");
    // 200 is the episode cap; the issue asks for ≥ 190 within 5 trials.
    assert!(
        returns[1..].iter().any(|r| *r >= 190.0),
        "no MPC trial reached 190: {returns:?}"
    );
    // The run directory a user plots from.
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    assert!(csv.starts_with("trial,env_steps,return"));
    assert_eq!(csv.lines().count(), 1 + 6);
    for f in ["config.toml", "model.safetensors", "learning_curve.svg"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let back: PetsConfig =
        toml::from_str(&std::fs::read_to_string(dir.path().join("config.toml")).unwrap()).unwrap();
    assert_eq!(back, cfg);
}
