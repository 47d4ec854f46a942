//! SAC and MBPO: short fixed-seed learning runs that fail when learning is broken, and
//! resumed runs that must end byte for byte as uninterrupted ones.
use mbrl_gpu::algo::mbpo::{self, MbpoConfig};
use mbrl_gpu::algo::offpolicy;
use mbrl_gpu::algo::sac::{self, SacRunConfig};
use mbrl_gpu::algo::svg::{self, SvgConfig};
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::env::EnvId;
use mbrl_gpu::io::run::{Mode, RunDir};
use std::path::Path;

#[path = "common/mbpo.rs"]
mod mbpo_fixture;
use mbpo_fixture::tiny_mbpo;

fn open(path: &Path, mode: Mode, text: &str) -> RunDir {
    RunDir::open(path, mode, text).unwrap()
}

/// The evaluation returns of a learning run's rows, printed; fails unless the best of them
/// reaches `goal` and, with `first_below`, the first (an untrained policy's) is below it.
fn returns_reaching(
    what: &str,
    rows: &[offpolicy::Row],
    goal: f64,
    first_below: Option<f64>,
) -> Vec<f64> {
    let returns: Vec<f64> = rows.iter().map(|r| r.eval_return).collect();
    eprintln!("{what} returns at each evaluation: {returns:?}");
    let best = returns.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        best >= goal,
        "{what} did not learn (goal {goal}): {returns:?}"
    );
    if let Some(first) = first_below {
        assert!(
            returns[0] < first,
            "{what}: the first evaluation should fail: {returns:?}"
        );
    }
    returns
}

/// SAC with the default networks (2×256, batch 256, lr 3e-4) on Pendulum-v1 for 5,000 steps:
/// a random policy scores about −1,200 to −1,500; a learning SAC passes −400 by then (the
/// full run, 10,000 steps, is in the README).
#[test]
fn sac_should_learn_to_swing_up_the_pendulum() {
    let mut cfg = SacRunConfig::preset(&EnvId::Pendulum.into(), "default").unwrap();
    cfg.steps = 5_000;
    cfg.eval_episodes = 5;
    let (_, rows) = sac::run(&CpuBackend::new(), &cfg, None, |_| {}).unwrap();
    returns_reaching("SAC pendulum", &rows, -400.0, Some(-900.0));
    for r in &rows[1..] {
        assert!(
            r.critic_loss.is_finite() && r.alpha > 0.0 && r.diverged == 0,
            "{r:?}"
        );
    }
}

/// MBPO's `quick` preset (5 × 3×64 ensemble, 10,000 rollouts per training, 128-wide SAC)
/// on the cart-pole for 1,000 steps: the policy must learn to balance (a random one scores
/// 20–40; it reaches 195 at 1,000 steps). The full presets' figures are in the README.
#[test]
fn mbpo_quick_should_learn_to_balance_the_cartpole() {
    let mut cfg = MbpoConfig::preset(&EnvId::CartPole.into(), "quick").unwrap();
    cfg.steps = 1_000;
    let (_, rows) = mbpo::run(&CpuBackend::new(), &cfg, None, |_| {}).unwrap();
    returns_reaching("MBPO quick cart-pole", &rows, 150.0, None);
    assert!(rows
        .iter()
        .all(|r| r.model_loss.is_finite() && r.diverged == 0));
}

fn tiny_sac(steps: usize) -> SacRunConfig {
    let mut c = SacRunConfig::preset(&EnvId::Pendulum.into(), "quick").unwrap();
    c.steps = steps;
    c.learning_starts = 100;
    c.eval_every = 200;
    c.eval_episodes = 1;
    c.sac.hidden = 16;
    c.sac.batch_size = 32;
    c
}

/// Files of a finished run that must not depend on whether it was interrupted
/// (`checkpoint.json` and `timings.csv` hold wall-clock seconds).
const SAME: [&str; 4] = [
    "metrics.csv",
    "policy.safetensors",
    "critic.safetensors",
    "learning_curve.svg",
];

fn assert_same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between the runs");
    }
}

#[test]
fn sac_resumed_should_equal_uninterrupted() {
    let t = tempfile::tempdir().unwrap();
    let full = tiny_sac(600);
    let text = toml::to_string(&full).unwrap();
    let a = t.path().join("a");
    sac::run(
        &CpuBackend::new(),
        &full,
        Some(&open(&a, Mode::New, &text)),
        |_| {},
    )
    .unwrap();
    // Stopped after 400 steps (a checkpoint at an episode end), then continued to 600.
    let b = t.path().join("b");
    let part = tiny_sac(400);
    sac::run(
        &CpuBackend::new(),
        &part,
        Some(&open(&b, Mode::New, &text)),
        |_| {},
    )
    .unwrap();
    let mut resumed = false;
    sac::run(
        &CpuBackend::new(),
        &full,
        Some(&open(&b, Mode::Resume, &text)),
        |e| {
            if let sac::Event::Resumed { env_steps } = e {
                assert_eq!(env_steps, 400);
                resumed = true;
            }
        },
    )
    .unwrap();
    assert!(resumed);
    assert_same_files(&a, &b, &SAME);
    // Resuming with other settings is refused, naming the setting.
    let mut other = full.clone();
    other.sac.lr = 0.5;
    let Err(e) = sac::run(
        &CpuBackend::new(),
        &other,
        Some(&open(&b, Mode::Resume, &text)),
        |_| {},
    ) else {
        panic!("resumed with another learning rate");
    };
    assert!(e.to_string().contains("sac.lr"), "{e}");
}

#[test]
fn mbpo_resumed_should_equal_uninterrupted() {
    let t = tempfile::tempdir().unwrap();
    let be = CpuBackend::new();
    let full = tiny_mbpo(500);
    let text = toml::to_string(&full).unwrap();
    let a = t.path().join("a");
    let (_, rows) = mbpo::run(&be, &full, Some(&open(&a, Mode::New, &text)), |_| {}).unwrap();
    // Rollout lengths follow the schedule [1, 3, 1, 3] over the epochs.
    let ks: Vec<usize> = rows.iter().map(|r| r.rollout_length).collect();
    assert_eq!(ks, vec![1, 2, 3, 3]);
    assert!(rows.iter().all(|r| r.model_loss.is_finite()));
    let b = t.path().join("b");
    mbpo::run(
        &be,
        &tiny_mbpo(300),
        Some(&open(&b, Mode::New, &text)),
        |_| {},
    )
    .unwrap();
    mbpo::run(&be, &full, Some(&open(&b, Mode::Resume, &text)), |_| {}).unwrap();
    let mut files = SAME.to_vec();
    files.push("model.safetensors");
    assert_same_files(&a, &b, &files);
}

/// MBPO's branched rollouts: every stored transition is finite, terminated rows stop, and
/// the counts follow the batch size and length (cart-pole terminates, so fewer than
/// rows × k transitions are stored once the model has learned to predict falls).
#[test]
fn branched_rollouts_should_store_finite_transitions_and_stop_terminated_rows() {
    let be = CpuBackend::new();
    let mut cfg = tiny_mbpo(300);
    cfg.env = "cartpole".into();
    cfg.model.obs_dim = 4;
    let spec = EnvId::CartPole.spec();
    let mut agent = mbrl_gpu::policy::Sac::new(
        cfg.sac.clone(),
        spec.obs_dim,
        &spec.act_low,
        &spec.act_high,
        0,
    )
    .unwrap();
    let mut model = mbrl_gpu::model::Ensemble::new(cfg.model.clone(), 0).unwrap();
    // Start states far out: the pole past its limit, so every row terminates at once when the
    // model predicts (roughly) no change.
    let mut env_data = mbrl_gpu::policy::Replay::new(4, 1, 100);
    for i in 0..100 {
        let s = [0.0, 0.0, 0.5 + i as f32 * 1e-3, 0.0];
        env_data.push(&s, &[0.0], 1.0, &s, true);
    }
    model.fit_normaliser(&[0.1; 5 * 10]);
    let mut out = mbrl_gpu::policy::Replay::new(4, 1, 10_000);
    let rows = cfg.rollout_batch();
    let added =
        mbpo::branched_rollout(&be, &cfg, &mut agent, &model, &env_data, 0, 3, &mut out).unwrap();
    assert!(
        added >= rows && added < 3 * rows,
        "added {added} of {rows} rows × 3"
    );
    let [obs, act, rew, next, term] = out.to_arrays();
    assert!(obs
        .iter()
        .chain(&act)
        .chain(&rew)
        .chain(&next)
        .all(|v| v.is_finite()));
    assert!(act.iter().all(|a| (-1.0..=1.0).contains(a)));
    assert!(term.iter().filter(|t| **t == 1.0).count() > 0);
}

/// MAAC (MBPO's loop with path-gradient actor steps) resumes exactly too, and its path
/// steps change the run: the same configuration without `[maac]` ends elsewhere.
#[test]
fn maac_resumed_should_equal_uninterrupted_and_differ_from_mbpo() {
    let t = tempfile::tempdir().unwrap();
    let be = CpuBackend::new();
    let maac = |steps| {
        let mut c = tiny_mbpo(steps);
        c.maac = Some(mbpo::MaacSettings { horizon: 2 });
        c
    };
    let full = maac(400);
    let text = toml::to_string(&full).unwrap();
    let a = t.path().join("a");
    let (agent, rows) = mbpo::run(&be, &full, Some(&open(&a, Mode::New, &text)), |_| {}).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.actor_loss.is_finite() && r.diverged == 0));
    let b = t.path().join("b");
    mbpo::run(&be, &maac(200), Some(&open(&b, Mode::New, &text)), |_| {}).unwrap();
    mbpo::run(&be, &full, Some(&open(&b, Mode::Resume, &text)), |_| {}).unwrap();
    let mut files = SAME.to_vec();
    files.push("model.safetensors");
    assert_same_files(&a, &b, &files);
    let (plain, _) = mbpo::run(&be, &tiny_mbpo(400), None, |_| {}).unwrap();
    assert_ne!(
        agent.actor, plain.actor,
        "the path steps made no difference"
    );
}

/// MAAC's `quick` preset on the cart-pole: path-gradient actor steps through 3 model steps
/// must balance it within 800 steps (a random policy scores 20–40; it reaches 191 at 600
/// and 200 at 800).
#[test]
fn maac_quick_should_learn_to_balance_the_cartpole() {
    let mut cfg = MbpoConfig::maac_preset(&EnvId::CartPole.into(), "quick").unwrap();
    cfg.steps = 800;
    let (_, rows) = mbpo::run(&CpuBackend::new(), &cfg, None, |_| {}).unwrap();
    returns_reaching("MAAC quick cart-pole", &rows, 150.0, None);
    assert!(rows
        .iter()
        .all(|r| r.actor_loss.is_finite() && r.diverged == 0));
}

/// SVG(∞)'s default preset on Pendulum-v1 for 8,000 steps, seed 0 (issue 11: half of the way
/// from the initial policy's return to −200). Seed 0's initial policy returns −1446 on its
/// evaluation episodes, so half of the way is −823; in the README's runs every seed of 0–6
/// passed its own half-way mark by 8,000 steps (seed 0 from 4,000 on: −460, −394, −296, …).
/// A policy that does not learn stays between −1,200 and −1,500 (the published setting,
/// `segment_grad_norm = 0` with a learned σ, is at best −852 by then on this seed).
#[test]
fn svg_should_get_half_of_the_way_to_swinging_up_the_pendulum() {
    let mut cfg = SvgConfig::preset(&EnvId::Pendulum.into(), "default").unwrap();
    cfg.steps = 8_000;
    let (_, rows) = svg::run(&CpuBackend::new(), &cfg, None, |_| {}).unwrap();
    // The policy of 1,000 steps does not swing up yet.
    returns_reaching("SVG(∞) pendulum", &rows, -823.0, Some(-900.0));
    assert!(rows.iter().all(|r| r.diverged == 0), "{rows:?}");
}

fn tiny_svg(steps: usize) -> SvgConfig {
    let mut c = SvgConfig::preset(&EnvId::Pendulum.into(), "quick").unwrap();
    c.steps = steps;
    c.eval_every = 200;
    c.eval_episodes = 1;
    c.updates_per_episode = 3;
    c.episodes_per_update = 2;
    c.window = 50;
    c.model.hidden = 16;
    c.train.epochs = 3;
    c.train.patience = None;
    c.policy.hidden = 16;
    c
}

/// SVG(∞) resumes exactly (its episodes are read back from the saved data by index, and
/// the buffer grows with a longer --steps), and its policy steps change the policy.
#[test]
fn svg_resumed_should_equal_uninterrupted() {
    let t = tempfile::tempdir().unwrap();
    let be = CpuBackend::new();
    let full = tiny_svg(600);
    let text = toml::to_string(&full).unwrap();
    let a = t.path().join("a");
    let (agent, rows) = svg::run(&be, &full, Some(&open(&a, Mode::New, &text)), |_| {}).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|r| r.actor_loss.is_finite() && r.model_loss.is_finite()));
    let b = t.path().join("b");
    svg::run(
        &be,
        &tiny_svg(400),
        Some(&open(&b, Mode::New, &text)),
        |_| {},
    )
    .unwrap();
    svg::run(&be, &full, Some(&open(&b, Mode::Resume, &text)), |_| {}).unwrap();
    // SVG(∞) learns no critic, so it writes none.
    let mut files: Vec<&str> = SAME
        .iter()
        .copied()
        .filter(|f| *f != "critic.safetensors")
        .collect();
    files.push("model.safetensors");
    assert_same_files(&a, &b, &files);
    assert!(!a.join("critic.safetensors").exists());
    let fresh =
        mbrl_gpu::policy::Sac::new(full.policy.clone(), 3, &[-2.0], &[2.0], full.seed).unwrap();
    assert_ne!(agent.actor, fresh.actor, "no policy step was taken");
}
