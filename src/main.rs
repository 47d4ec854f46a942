//! `mbrl-gpu`: a thin command line over the library. Parse, pick a backend, call the library.
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mbrl_gpu::algo::pets::{self, PetsConfig};
use mbrl_gpu::backend::{self, Activation, AnyBackend, Backend, BackendChoice, Propagation};
use mbrl_gpu::bench::BenchResult;
use mbrl_gpu::env::{Env, EnvId, NativeEnv};
use mbrl_gpu::model::{train, Ensemble, ModelConfig, TrainConfig};
use mbrl_gpu::plan::{mpc::latency_stats, Mpc, Optimizer, PlannerConfig, TsConfig};
use mbrl_gpu::{invalid, io, with_backend, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mbrl-gpu",
    version,
    about = "Model-based RL with fused device kernels: probabilistic ensembles, trajectory \
             sampling, CEM/MPC",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Which backends exist on this machine, and why the missing ones are missing.
    Devices,
    /// Fit, inspect and query dynamics models.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Throughput benchmarks, with the machine's GEMM peak measured in the same run.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// PETS: probabilistic ensemble + trajectory sampling + CEM/MPC, trial after trial.
    Pets(PetsArgs),
    /// MPC episodes with a trained model or the true dynamics; returns and latency.
    Plan(PlanArgs),
    /// The native environments and their spaces.
    Envs,
    /// Environment tools.
    #[command(subcommand)]
    Env(EnvCmd),
}

#[derive(Subcommand)]
enum EnvCmd {
    /// Replay actions from a state: prints one JSON object per step (obs, reward,
    /// terminated), stopping at the first termination.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// Environment name (see `mbrl-gpu envs`).
    #[arg(long)]
    env: String,
    /// JSON {"state": [...], "actions": [[...], ...]}; the state is Gymnasium's
    /// `env.unwrapped.state`.
    #[arg(long)]
    input: PathBuf,
}

#[derive(Args)]
struct PetsArgs {
    /// Environment name (see `mbrl-gpu envs`).
    #[arg(long, default_value = "cartpole")]
    env: String,
    /// quick (minutes on a laptop CPU), cartpole (mbrl-lib pets_cartpole), pendulum.
    #[arg(long, default_value = "quick")]
    preset: String,
    /// Trials after the random one (default: the preset's).
    #[arg(long)]
    trials: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Run directory (config.toml, metrics.csv, model.safetensors, learning_curve.svg).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct PlanArgs {
    /// Environment name (see `mbrl-gpu envs`).
    #[arg(long)]
    env: String,
    /// Planning horizon.
    #[arg(long, default_value_t = 30)]
    horizon: usize,
    /// Trained ensemble (from `pets --out` or `model fit`).
    #[arg(long, conflicts_with = "true_dynamics")]
    model: Option<PathBuf>,
    /// Plan with the environment's own dynamics instead of a model.
    #[arg(long)]
    true_dynamics: bool,
    #[arg(long, default_value_t = 1)]
    episodes: usize,
    /// Steps per episode at most (default: the environment's episode length).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 350)]
    population: usize,
    /// Elites per CEM iteration (default: 10 % of the population).
    #[arg(long)]
    elites: Option<usize>,
    #[arg(long, default_value_t = 20)]
    particles: usize,
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    #[arg(long, value_enum, default_value_t = Propagation::Ts1)]
    propagation: Propagation,
    #[arg(long, value_enum, default_value_t = Optimizer::Cem)]
    optimizer: Optimizer,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// One JSON object with returns, median_ms, p99_ms.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Fit a probabilistic ensemble to logged transitions (CSV with obs_i, act_j, next_obs_i
    /// and optionally reward columns).
    Fit(FitArgs),
    /// Predict next observations with every member; prints JSON.
    Predict(PredictArgs),
}

#[derive(Args)]
struct FitArgs {
    /// Transition CSV: header obs_0..obs_{n-1}, act_0..act_{m-1}, next_obs_0..next_obs_{n-1}[, reward].
    #[arg(long)]
    data: PathBuf,
    /// Output checkpoint (safetensors; written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Ensemble members.
    #[arg(long, default_value_t = 7)]
    ensemble: usize,
    /// Elite members kept for prediction (best holdout MSE).
    #[arg(long, default_value_t = 5)]
    elites: usize,
    /// Hidden width.
    #[arg(long, default_value_t = 200)]
    hidden: usize,
    /// Hidden layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Hidden activation.
    #[arg(long, value_enum, default_value_t = Activation::Silu)]
    activation: Activation,
    /// Mean-only members trained with MSE instead of Gaussian NLL.
    #[arg(long)]
    deterministic: bool,
    /// Also predict the CSV's reward column.
    #[arg(long)]
    learn_reward: bool,
    /// Maximum epochs.
    #[arg(long, default_value_t = 50)]
    epochs: usize,
    /// Rows per member per minibatch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 7.5e-4)]
    lr: f32,
    /// L2 weight decay (one value, or one per linear layer separated by commas).
    #[arg(long, value_delimiter = ',', default_value = "3e-5")]
    weight_decay: Vec<f32>,
    /// Fraction of transitions held out for early stopping and elite selection.
    #[arg(long, default_value_t = 0.1)]
    holdout: f32,
    /// Stop after this many epochs without holdout improvement.
    #[arg(long)]
    patience: Option<usize>,
    /// Seed of initialisation, bootstrap and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend to train on.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

#[derive(Args)]
struct PredictArgs {
    /// Checkpoint written by `model fit`.
    #[arg(long)]
    model: PathBuf,
    /// JSON file {"obs": [[...], ...], "act": [[...], ...]}.
    #[arg(long)]
    input: PathBuf,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Ensemble forward (half-cheetah sizes) and one training epoch (cart-pole sizes).
    Model(BenchArgs),
    /// One planning step at mbrl-lib's cart-pole configuration and at half-cheetah sizes.
    Plan(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// One JSON object per benchmark per line.
    #[arg(long)]
    json: bool,
    /// Timed repetitions per figure (medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Backend to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns a closed pipe (`| head`) into a panic on the next
    // print; the default action ends the process quietly as command-line tools do.
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Mesa's implicit device-select Vulkan layer prints XDG_RUNTIME_DIR errors on headless
    // machines while wgpu enumerates adapters; wgpu ranks adapters itself, so turn it off
    // unless the user chose otherwise. Set before any other thread exists.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Devices => {
            for a in backend::probe_all() {
                let mark = if a.available {
                    "available"
                } else {
                    "unavailable"
                };
                println!("{:<5} {:<11} {}", a.backend, mark, a.detail);
            }
            let (chosen, _) = backend::resolve(BackendChoice::Auto)?;
            println!("--backend auto picks: {chosen}");
            Ok(())
        }
        Cmd::Model(ModelCmd::Fit(a)) => fit(a),
        Cmd::Model(ModelCmd::Predict(a)) => predict(a),
        Cmd::Bench(BenchCmd::Model(a)) => {
            if !a.json {
                eprintln!("measuring (ensemble forward, training epoch; GEMM peak on the cpu)...");
            }
            let be = pick_backend(a.backend)?;
            let rs = with_backend!(&be, |b| mbrl_gpu::bench::model_benches(b, a.reps))?;
            print_bench(&rs, a.json);
            Ok(())
        }
        Cmd::Bench(BenchCmd::Plan(a)) => {
            if !a.json {
                eprintln!("measuring (cart-pole and half-cheetah planning steps; GEMM peak on the cpu)...");
            }
            let be = pick_backend(a.backend)?;
            let rs = with_backend!(&be, |b| mbrl_gpu::bench::plan_benches(b, a.reps))?;
            print_bench(&rs, a.json);
            Ok(())
        }
        Cmd::Pets(a) => {
            let be = pick_backend(a.backend)?;
            with_backend!(&be, |b| run_pets(b, a))
        }
        Cmd::Plan(a) => {
            let be = pick_backend(a.backend)?;
            with_backend!(&be, |b| run_plan(b, a))
        }
        Cmd::Envs => {
            for id in EnvId::ALL {
                let s = id.spec();
                println!(
                    "{:<13} obs {}  act {} in [{}, {}]  state {}  {} steps  {}",
                    s.name,
                    s.obs_dim,
                    s.act_dim,
                    fmt_vec(&s.act_low),
                    fmt_vec(&s.act_high),
                    s.state_dim,
                    s.max_episode_steps,
                    s.description
                );
            }
            Ok(())
        }
        Cmd::Env(EnvCmd::Replay(a)) => replay(a),
    }
}

/// A line above the progress bar, or on stderr when the bar is hidden (output is not a
/// terminal, e.g. a CI log), where indicatif would drop it.
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn fmt_vec(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    parts.join(",")
}

fn print_bench(rs: &[BenchResult], json: bool) {
    for r in rs {
        if json {
            println!("{}", serde_json::to_string(r).expect("json"));
        } else {
            let peak = if r.peak_gflops > 0.0 {
                format!(
                    "peak {:>7.1}  ({:>5.1} %)",
                    r.peak_gflops,
                    100.0 * r.fraction_of_peak
                )
            } else {
                "peak not measured on this backend".into()
            };
            println!(
                "{:<38} {:<5} median {:>9.3} ms  {:>7.1} GFLOP/s  {peak}  {}",
                r.name, r.backend, r.median_ms, r.gflops, r.note
            );
        }
    }
}

fn run_pets<B: Backend>(be: &B, a: PetsArgs) -> Result<()> {
    let env = EnvId::parse(&a.env)?;
    let mut cfg = PetsConfig::preset(env, &a.preset)?;
    cfg.seed = a.seed;
    if let Some(t) = a.trials {
        cfg.trials = t;
    }
    let out = a.out.unwrap_or_else(|| {
        PathBuf::from(format!("runs/pets-{}-{}-s{}", env.name(), a.preset, a.seed))
    });
    eprintln!(
        "PETS on {} (preset {}): {} trials of {} steps, {} members {}x{}, CEM {}x{} over {} steps, {} particles {:?}; writing {}",
        env.name(),
        a.preset,
        cfg.trials,
        cfg.trial_length,
        cfg.model.ensemble_size,
        cfg.model.num_layers,
        cfg.model.hidden,
        cfg.planner.population,
        cfg.planner.iterations,
        cfg.planner.horizon,
        cfg.particles,
        cfg.propagation,
        out.display()
    );
    let pb = ProgressBar::new(cfg.trial_length as u64);
    pb.set_style(
        ProgressStyle::with_template("trial {msg} {bar:30} {pos}/{len} steps [{elapsed}]")
            .expect("template"),
    );
    let (_, reports) = pets::run(be, &cfg, Some(&out), |ev| match ev {
        pets::Event::TrialStart { trial, steps } => {
            pb.reset();
            pb.set_length(steps as u64);
            pb.set_message(if trial == 0 {
                "0 (random)".to_string()
            } else {
                trial.to_string()
            });
        }
        pets::Event::Step { .. } => pb.inc(1),
        pets::Event::TrialEnd(r) => {
            say(&pb, format!(
                "trial {:>2}  return {:>8.2}  steps {:>4}  env steps {:>5}  train {:>6.2} s  plan {:>7.1} ms/action (p99 {:.1})  {:>6.1} s",
                r.trial, r.ret, r.steps, r.env_steps, r.train_seconds, r.plan_ms_median, r.plan_ms_p99, r.seconds
            ));
        }
    })?;
    pb.finish_and_clear();
    let last = reports.last().map_or(f64::NAN, |r| r.ret);
    let best = reports
        .iter()
        .skip(1)
        .map(|r| r.ret)
        .fold(f64::NEG_INFINITY, f64::max);
    println!(
        "final return {last:.2} (best MPC trial {best:.2}); run directory {}",
        out.display()
    );
    Ok(())
}

fn run_plan<B: Backend>(be: &B, a: PlanArgs) -> Result<()> {
    let env = EnvId::parse(&a.env)?;
    if a.particles == 0 {
        return Err(invalid!("--particles must be at least 1"));
    }
    let spec = env.spec();
    let cfg = PlannerConfig {
        optimizer: a.optimizer,
        horizon: a.horizon,
        population: a.population,
        num_elites: a.elites.unwrap_or((a.population / 10).max(1)),
        iterations: a.iterations,
        ..PlannerConfig::pets_cartpole()
    };
    let ts = TsConfig {
        particles: a.particles,
        propagation: a.propagation,
    };
    let mut mpc = match (&a.model, a.true_dynamics) {
        (Some(path), false) => {
            let model = io::checkpoint::load(path)?;
            Mpc::with_model(be, &model, env, cfg, ts, a.seed)?
        }
        (None, true) => Mpc::with_true_dynamics(be, env, cfg, a.seed)?,
        _ => return Err(invalid!("give either --model PATH or --true-dynamics")),
    };
    let steps = a.steps.unwrap_or(spec.max_episode_steps);
    let mut envs = NativeEnv::new(env, 1);
    let mut returns = vec![];
    let t0 = std::time::Instant::now();
    for ep in 0..a.episodes {
        let mut obs = envs.reset(&[a.seed.wrapping_add(ep as u64)])?;
        mpc.reset(be)?;
        let mut ret = 0.0f64;
        for _ in 0..steps {
            let act = mpc.act(be, &obs, envs.state())?;
            let tr = envs.step(&act)?.remove(0);
            ret += tr.reward as f64;
            obs = tr.obs;
            if tr.terminated || tr.truncated {
                break;
            }
        }
        if !a.json {
            eprintln!("episode {ep}: return {ret:.2}");
        }
        returns.push(ret);
    }
    let lat = mpc.take_latencies();
    let (med, p99) = latency_stats(&lat);
    let evals =
        mpc.rows_per_action() as f64 * lat.len() as f64 / lat.iter().sum::<f64>().max(1e-12);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "env": env.name(),
                "returns": returns,
                "median_ms": med,
                "p99_ms": p99,
                "actions": lat.len(),
                "model_evals_per_s": evals,
                "seconds": t0.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!(
            "returns {:?}; per action median {med:.2} ms, p99 {p99:.2} ms; {evals:.3e} model evaluations/s",
            returns.iter().map(|r| (r * 100.0).round() / 100.0).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct ReplayInput {
    state: Vec<f64>,
    actions: Vec<Vec<f32>>,
}

fn replay(a: ReplayArgs) -> Result<()> {
    let env = EnvId::parse(&a.env)?;
    let text = std::fs::read_to_string(&a.input).map_err(|e| mbrl_gpu::Error::io(&a.input, e))?;
    let inp: ReplayInput = serde_json::from_str(&text).map_err(|e| {
        invalid!(
            "{}: expected {{\"state\": [...], \"actions\": [[...], ...]}}: {e}",
            a.input.display()
        )
    })?;
    for step in mbrl_gpu::env::replay_f64(env, &inp.state, &inp.actions)? {
        println!("{}", serde_json::to_string(&step).expect("json"));
    }
    Ok(())
}

fn pick_backend(choice: BackendChoice) -> Result<AnyBackend> {
    let (b, skipped) = AnyBackend::new(choice)?;
    for s in skipped {
        eprintln!("backend: passed over {s}");
    }
    eprintln!("backend: {}", b.name());
    Ok(b)
}

fn fit(a: FitArgs) -> Result<()> {
    let be = pick_backend(a.backend)?;
    with_backend!(&be, |b| fit_on(b, a))
}

fn fit_on<B: Backend>(be: &B, a: FitArgs) -> Result<()> {
    let data = io::csv::read(&a.data)?;
    let cfg = ModelConfig {
        obs_dim: data.obs_dim,
        act_dim: data.act_dim,
        ensemble_size: a.ensemble,
        hidden: a.hidden,
        num_layers: a.layers,
        activation: a.activation,
        probabilistic: !a.deterministic,
        learn_reward: a.learn_reward,
        num_elites: a.elites,
    };
    let mut model = Ensemble::new(cfg, a.seed)?;
    let tc = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        holdout_ratio: a.holdout,
        patience: a.patience,
        seed: a.seed,
        ..TrainConfig::default()
    };
    eprintln!(
        "fitting {} members ({}x{} {:?}) on {} transitions (obs {}, act {})",
        a.ensemble,
        a.layers,
        a.hidden,
        a.activation,
        data.len(),
        data.obs_dim,
        data.act_dim
    );
    let pb = ProgressBar::new(a.epochs as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} epochs {msg} [{elapsed}<{eta}]")
            .expect("template"),
    );
    let which = if a.holdout > 0.0 { "holdout" } else { "train" };
    let report = train::train(be, &mut model, &data, &tc, |r| {
        let mean_mse = r.eval_mse.iter().sum::<f64>() / r.eval_mse.len().max(1) as f64;
        if r.eval_mse.is_empty() {
            say(
                &pb,
                format!(
                    "epoch {:>4}  train loss {:>10.5}",
                    r.epoch + 1,
                    r.train_loss
                ),
            );
        } else {
            say(
                &pb,
                format!(
                    "epoch {:>4}  train loss {:>10.5}  {which} mse {:>10.6}",
                    r.epoch + 1,
                    r.train_loss,
                    mean_mse
                ),
            );
        }
        pb.set_message(format!("loss {:.4}", r.train_loss));
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    io::checkpoint::save(&model, &a.out)?;
    eprintln!(
        "{} epochs; {which} mse per member {:?}; elites {:?}; wrote {}",
        report.epochs_run,
        report
            .best_eval_mse
            .iter()
            .map(|v| format!("{v:.3e}"))
            .collect::<Vec<_>>(),
        report.elites,
        a.out.display()
    );
    Ok(())
}

#[derive(serde::Deserialize)]
struct PredictInput {
    obs: Vec<Vec<f32>>,
    act: Vec<Vec<f32>>,
}

fn predict(a: PredictArgs) -> Result<()> {
    let model = io::checkpoint::load(&a.model)?;
    let text = std::fs::read_to_string(&a.input).map_err(|e| mbrl_gpu::Error::io(&a.input, e))?;
    let inp: PredictInput = serde_json::from_str(&text).map_err(|e| {
        invalid!(
            "{}: expected {{\"obs\": [[...]], \"act\": [[...]]}}: {e}",
            a.input.display()
        )
    })?;
    let (od, ad) = (model.config.obs_dim, model.config.act_dim);
    if inp.obs.len() != inp.act.len() {
        return Err(invalid!(
            "{} observations but {} actions",
            inp.obs.len(),
            inp.act.len()
        ));
    }
    for (i, (o, u)) in inp.obs.iter().zip(&inp.act).enumerate() {
        if o.len() != od || u.len() != ad {
            return Err(mbrl_gpu::Error::Shape(format!(
                "row {i}: obs has {} values and act {}, the model expects {od} and {ad}",
                o.len(),
                u.len()
            )));
        }
    }
    let obs: Vec<f32> = inp.obs.concat();
    let act: Vec<f32> = inp.act.concat();
    let rows = inp.obs.len();
    let (mean, var) = model.predict(&obs, &act)?;
    let o = model.config.out_dim();
    let members: Vec<serde_json::Value> = (0..model.config.ensemble_size)
        .map(|m| {
            let rows_of = |v: &[f32]| -> Vec<Vec<f32>> {
                (0..rows)
                    .map(|r| v[(m * rows + r) * o..(m * rows + r + 1) * o].to_vec())
                    .collect()
            };
            serde_json::json!({
                "member": m,
                "elite": model.elites.contains(&m),
                "mean": rows_of(&mean),
                "var": rows_of(&var),
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "obs_dim": od,
            "learn_reward": model.config.learn_reward,
            "members": members
        }))
        .expect("json")
    );
    Ok(())
}
