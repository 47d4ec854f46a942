//! `mbrl-gpu`: a thin command line over the library. Parse, pick a backend, call the library.
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::{self, Activation, BackendChoice};
use mbrl_gpu::model::{train, Ensemble, ModelConfig, TrainConfig};
use mbrl_gpu::{invalid, io, Result};
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
}

#[derive(Args)]
struct BenchArgs {
    /// One JSON object per benchmark per line.
    #[arg(long)]
    json: bool,
    /// Timed repetitions per figure (medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

fn main() -> ExitCode {
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
                eprintln!("measuring (GEMM peak, ensemble forward, training epoch)...");
            }
            let rs = mbrl_gpu::bench::model_benches(a.reps)?;
            for r in rs {
                if a.json {
                    println!("{}", serde_json::to_string(&r).expect("json"));
                } else {
                    println!(
                        "{:<40} median {:>9.3} ms  {:>7.1} GFLOP/s  peak {:>7.1}  ({:>5.1} %)",
                        r.name,
                        r.median_ms,
                        r.gflops,
                        r.peak_gflops,
                        100.0 * r.fraction_of_peak
                    );
                }
            }
            Ok(())
        }
    }
}

fn pick_backend(choice: BackendChoice) -> Result<CpuBackend> {
    let (name, skipped) = backend::resolve(choice)?;
    for s in skipped {
        eprintln!("backend: passed over {s}");
    }
    eprintln!("backend: {name}");
    Ok(CpuBackend::new())
}

fn fit(a: FitArgs) -> Result<()> {
    let be = pick_backend(a.backend)?;
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
    let report = train::train(&be, &mut model, &data, &tc, |r| {
        let mean_mse = r.eval_mse.iter().sum::<f64>() / r.eval_mse.len().max(1) as f64;
        if r.eval_mse.is_empty() {
            pb.println(format!(
                "epoch {:>4}  train loss {:>10.5}",
                r.epoch + 1,
                r.train_loss
            ));
        } else {
            pb.println(format!(
                "epoch {:>4}  train loss {:>10.5}  {which} mse {:>10.6}",
                r.epoch + 1,
                r.train_loss,
                mean_mse
            ));
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
