//! `mbrl-gpu`: a thin command line over the library. Parse, pick a backend, call the library.
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mbrl_gpu::algo::pets::{self, PetsConfig};
use mbrl_gpu::backend::{
    self, Activation, AnyBackend, Backend, BackendChoice, Precision, Propagation,
};
use mbrl_gpu::bench::BenchResult;
use mbrl_gpu::env::EnvId;
use mbrl_gpu::io::run::{Mode, RunDir};
use mbrl_gpu::model::{train, Ensemble, ModelConfig, TrainConfig};
use mbrl_gpu::plan::{mpc::latency_stats, Mpc, Optimizer, PlannerConfig, TsConfig};
use mbrl_gpu::{invalid, io, with_backend, Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A line on stdout; a closed stdout or a full disk is an error the user sees, not a panic.
macro_rules! out {
    ($($t:tt)*) => {
        stdout_line(format_args!($($t)*))?
    };
}

/// Whether file descriptor 1 was closed when the program started (`cmd >&-`). Rust's
/// runtime reopens a closed descriptor 1 on /dev/null before `main`, which would turn lost
/// output into a silent success; so this is recorded by a constructor that runs earlier.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static RECORD_CLOSED_STDOUT: extern "C" fn() = {
    extern "C" fn record() {
        // SAFETY: F_GETFD only queries the descriptor's flags.
        let closed = unsafe { libc::fcntl(1, libc::F_GETFD) } == -1;
        STDOUT_CLOSED.store(closed, std::sync::atomic::Ordering::Relaxed);
    }
    record
};

fn stdout_line(args: std::fmt::Arguments) -> Result<()> {
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::io(
            "standard output",
            std::io::Error::from_raw_os_error(libc::EBADF),
        ));
    }
    writeln!(std::io::stdout().lock(), "{args}").map_err(|e| Error::io("standard output", e))
}

/// A line on stderr; nothing to do if stderr itself is gone.
macro_rules! note {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

/// The policy-learning commands (`sac`, `mbpo`, `eval`).
#[path = "cli/rl.rs"]
mod rl;
#[path = "cli/serve.rs"]
mod serve_cli;

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
    /// Python interpreter of the Gymnasium bridge (`--env gym:ID`) [default: $MBRL_GPU_PYTHON,
    /// else python3 from PATH].
    #[arg(long, global = true, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Module to import before gymnasium.make, for an environment registered by your own
    /// package: `--env gym:MyEnv-v0 --gym-module my_pkg` is `--env gym:my_pkg:MyEnv-v0`.
    #[arg(long, global = true, value_name = "MODULE")]
    gym_module: Option<String>,
    /// Longest wait in seconds for any one answer of the Gymnasium worker; a worker that
    /// hangs is stopped and the run ends with an error [default: $MBRL_GPU_GYM_TIMEOUT, else
    /// 120].
    #[arg(long, global = true, value_name = "SECONDS")]
    gym_timeout: Option<String>,
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
    /// A planning service for controllers (protocol: docs/serve_protocol.md): observations
    /// in, actions out before a deadline, over loopback TCP or a Unix socket.
    Serve(serve_cli::ServeArgs),
    /// SAC (soft actor-critic, automatic temperature) on a native environment.
    Sac(rl::SacArgs),
    /// MBPO: SAC on short branched rollouts of a probabilistic ensemble.
    Mbpo(rl::MbpoArgs),
    /// MAAC: MBPO's loop with the actor learning from gradients backpropagated through
    /// H-step model paths and the critic at the horizon.
    Maac(rl::MbpoArgs),
    /// Lemma 4.1 measured: a short MAAC run per horizon H, then its model-path gradient
    /// against the gradient through the true dynamics (cosine, relative error, return).
    MaacHorizons(rl::HorizonArgs),
    /// SVG(∞): value gradients backpropagated along real trajectories through the model.
    Svg(rl::MbpoArgs),
    /// Run a saved policy (policy.safetensors) deterministically; returns per episode.
    Eval(rl::EvalArgs),
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
    /// Environment name (see `mbrl-gpu envs`) [default: the --config file's, else cartpole].
    #[arg(long)]
    env: Option<String>,
    /// Preset to start from: quick (minutes on a laptop CPU), cartpole (mbrl-lib
    /// pets_cartpole), pendulum [default: the --config file's, else quick].
    #[arg(long)]
    preset: Option<String>,
    /// Trials after the random one [default: the preset's]. With --resume, extends the run
    /// to this many trials.
    #[arg(long)]
    trials: Option<usize>,
    /// Seed of model initialisation, training, planning and environment resets [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Arithmetic of the planning rollouts (planner.precision): f32, or bf16 products with
    /// f32 sums (AMX tiles on CPUs that have them) [default: the preset's, f32].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// TOML settings applied over the preset, e.g. the config.toml a run wrote.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Change one setting, after the preset and --config: --set planner.horizon=30
    /// --set model.hidden=256 (repeatable; --print-config shows every key).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Run directory (config.toml, metrics.csv, timings.csv, model.safetensors,
    /// transitions.safetensors, learning_curve.svg, checkpoint.json) [default:
    /// runs/pets-ENV-PRESET-sSEED]. An existing run there is never overwritten without
    /// --force.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace the run in --out if there is one (the files a run writes are removed first).
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Continue the interrupted run in DIR from its last completed trial, with the settings
    /// of its config.toml; the result equals an uninterrupted run on the same backend.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["env", "preset", "seed", "config", "sets", "out", "precision"]
    )]
    resume: Option<PathBuf>,
}

#[derive(Args)]
struct PlanArgs {
    /// Environment name (see `mbrl-gpu envs`).
    #[arg(long)]
    env: String,
    /// Planning horizon (steps).
    #[arg(long, default_value_t = 30)]
    horizon: usize,
    /// Trained ensemble: a checkpoint of `model fit`, or a `pets` run directory (its
    /// model.safetensors).
    #[arg(long, conflicts_with = "true_dynamics")]
    model: Option<PathBuf>,
    /// Plan with the environment's own dynamics instead of a model.
    #[arg(long)]
    true_dynamics: bool,
    /// Episodes to run.
    #[arg(long, default_value_t = 1)]
    episodes: usize,
    /// Steps per episode at most (default: the environment's episode length).
    #[arg(long)]
    steps: Option<usize>,
    /// Candidate action sequences per CEM iteration.
    #[arg(long, default_value_t = 350)]
    population: usize,
    /// Elites per CEM iteration (default: 10 % of the population).
    #[arg(long)]
    elites: Option<usize>,
    /// Trajectory-sampling particles per candidate (model planning only) [default: 20].
    #[arg(long, conflicts_with = "true_dynamics")]
    particles: Option<usize>,
    /// CEM iterations per action.
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// How particles move through the ensemble (model planning only) [default: ts1].
    #[arg(long, value_enum, conflicts_with = "true_dynamics")]
    propagation: Option<Propagation>,
    /// Shooting method.
    #[arg(long, value_enum, default_value_t = Optimizer::Cem)]
    optimizer: Optimizer,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Close each model path with a learned value, as LOOP and TD-MPC do: a run directory
    /// of `sac`, `mbpo` or `maac` (its policy.safetensors and critic.safetensors). A path
    /// then scores Σ γ^t r_t + γ^H·min Q(s_H, ā(s_H)) with the agent's γ and deterministic
    /// action ā, so a short horizon sees past its end. On a device backend the actor and
    /// critics run there, on the rollout's final states.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "true_dynamics")]
    terminal_value: Option<PathBuf>,
    /// Arithmetic of the model rollouts: f32, or bf16 products with f32 sums (AMX tiles on
    /// CPUs that have them).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Seed of the planner's sampling and of the episodes' resets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend to run on.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// One JSON object with returns, median_ms, p99_ms.
    #[arg(long)]
    json: bool,
}

/// MPPI's and iCEM's own settings (`plan`, `serve`).
#[derive(Args, Clone)]
struct SamplingArgs {
    /// MPPI temperature λ [default: 1].
    #[arg(long)]
    lambda: Option<f32>,
    /// MPPI noise covariance: one value per action dimension (a diagonal) or act_dim² values
    /// (a full matrix, row-major), comma-separated [default: diag((high − low)²/16)].
    #[arg(long, value_delimiter = ',')]
    noise_covariance: Option<Vec<f32>>,
    /// iCEM coloured-noise exponent β [default: 2].
    #[arg(long)]
    beta: Option<f32>,
    /// iCEM population decay factor γ [default: 1.25].
    #[arg(long)]
    population_decay: Option<f32>,
    /// iCEM fraction of elites kept between iterations and steps [default: 0.3].
    #[arg(long)]
    keep_elites: Option<f32>,
}

impl SamplingArgs {
    fn apply(&self, cfg: &mut PlannerConfig) {
        if let Some(v) = self.lambda {
            cfg.lambda = v;
        }
        if let Some(v) = &self.noise_covariance {
            cfg.noise_covariance.clone_from(v);
        }
        if let Some(v) = self.beta {
            cfg.colored_noise_exponent = v;
        }
        if let Some(v) = self.population_decay {
            cfg.population_decay_factor = v;
        }
        if let Some(v) = self.keep_elites {
            cfg.keep_elite_frac = v;
        }
    }
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
    /// Output checkpoint (safetensors; written atomically). An existing file is replaced
    /// only with --force, and never the --data file.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
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
    /// Maximum epochs (at least 1).
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
    /// Checkpoint written by `model fit`, or a `pets` run directory (its model.safetensors).
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
    /// SAC gradient steps (batch 256, 2×256) and MBPO env steps (mbpo_cartpole values).
    Policy(BenchArgs),
    /// Environment steps per second for 1, 8 and 64 copies: native, through the Gymnasium
    /// bridge, and Gymnasium's own SyncVectorEnv (same interpreter, same run).
    Env(EnvBenchArgs),
    /// `serve` in a closed loop with the Python client over loopback: round-trip p50/p99 and
    /// deadline misses, with true dynamics and with a learned ensemble.
    Serve(serve_cli::ServeBenchArgs),
    /// The CPU's arithmetic ceilings on all threads: f32 GEMM, f32 FMA issue and (with
    /// AVX512-BF16) `vdpbf16ps` issue, from register-only loops.
    Cpu(CpuBenchArgs),
    /// What each CUDA kernel costs a GPU, read without one: NVRTC + `ptxas -v` per program
    /// variant for sm_80 and sm_90 (registers, shared memory, stack, spills, resident blocks
    /// per SM; the rollout's at mbrl-lib's cart-pole model).
    Kernels(KernelBenchArgs),
}

#[derive(Args)]
struct KernelBenchArgs {
    /// One JSON object per kernel per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CpuBenchArgs {
    /// One JSON object per benchmark per line.
    #[arg(long)]
    json: bool,
    /// Timed repetitions per figure (medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

#[derive(Args)]
struct EnvBenchArgs {
    /// One JSON object per benchmark per line.
    #[arg(long)]
    json: bool,
    /// Timed repetitions (of 100 batched steps) per figure (medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Native environment with a Gymnasium counterpart (pendulum, mountain-car, or a MuJoCo
    /// task: halfcheetah, hopper, walker2d, ant, inverted-pendulum).
    #[arg(long, default_value = "pendulum")]
    env: String,
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
    /// `bench policy`: only the groups whose row names contain this text (sac_update,
    /// maac_path, mbpo_env_step); `bench plan`: only the model planning rows whose names
    /// contain it (cartpole, half_cheetah, small); the GEMM peak is always measured.
    #[arg(long)]
    only: Option<String>,
    /// `bench plan`: only the true-dynamics Pendulum-v1 rows (K = 1000, T = 30) of this
    /// optimizer, e.g. mppi (next to pytorch_mppi: scripts/bench_mppi_peer.sh).
    #[arg(long, value_enum)]
    optimizer: Option<Optimizer>,
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
    let mut cli = Cli::parse();
    if let Err(e) = bridge_options(&mut cli) {
        note!("error: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            note!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The Gymnasium bridge's flags: the interpreter and timeout reach the worker through the
/// environment variables it reads (set here, before any other thread exists), and
/// `--gym-module` is written into the command's environment name, so that a run's
/// config.toml names the module and `--resume` imports it again.
fn bridge_options(cli: &mut Cli) -> Result<()> {
    use mbrl_gpu::env::gym;
    if let Some(p) = &cli.python {
        std::env::set_var(gym::PYTHON_VAR, p);
    }
    if let Some(t) = &cli.gym_timeout {
        if gym::parse_timeout(t).is_none() {
            return Err(invalid!(
                "--gym-timeout {t}: give a number of seconds between 0.01 and 86400"
            ));
        }
        std::env::set_var(gym::TIMEOUT_VAR, t);
    }
    let Some(m) = cli.gym_module.clone() else {
        return Ok(());
    };
    let env: Option<&mut String> = match &mut cli.cmd {
        Cmd::Sac(a) => a.env_mut(),
        Cmd::Mbpo(a) | Cmd::Maac(a) | Cmd::Svg(a) => a.env_mut(),
        Cmd::Eval(a) => Some(a.env_mut()),
        Cmd::Pets(a) => a.env.as_mut(),
        Cmd::Plan(a) => Some(&mut a.env),
        _ => None,
    };
    let Some(env) = env else {
        return Err(invalid!(
            "--gym-module {m} needs a command run with --env gym:ID"
        ));
    };
    let id = match env.strip_prefix("gym:") {
        Some(id) if !id.contains(':') => id.to_string(),
        _ => {
            return Err(invalid!(
                "--gym-module {m} needs --env gym:ID without a module (got --env {env})"
            ))
        }
    };
    *env = format!("gym:{m}:{id}");
    // Checked now, so that a bad module name is named as the flag.
    mbrl_gpu::env::EnvName::parse(env).map_err(|e| invalid!("--gym-module {m}: {e}"))?;
    Ok(())
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
                out!("{:<5} {:<11} {}", a.backend, mark, a.detail);
            }
            let (chosen, _) = backend::resolve(BackendChoice::Auto)?;
            out!("--backend auto picks: {chosen}");
            Ok(())
        }
        Cmd::Model(ModelCmd::Fit(a)) => fit(a),
        Cmd::Model(ModelCmd::Predict(a)) => predict(a),
        Cmd::Bench(BenchCmd::Model(a)) => {
            if !a.json {
                note!("measuring (ensemble forward, training epoch; GEMM peak on the cpu)...");
            }
            let be = pick_backend(a.backend)?;
            let rs = with_backend!(&be, |b| mbrl_gpu::bench::model_benches(b, a.reps))?;
            print_bench(&rs, a.json)
        }
        Cmd::Bench(BenchCmd::Plan(a)) => {
            if !a.json {
                note!("measuring (cart-pole and half-cheetah planning steps; GEMM peak on the cpu)...");
            }
            let be = pick_backend(a.backend)?;
            let mut rs = match a.optimizer {
                Some(_) => vec![],
                None => with_backend!(&be, |b| mbrl_gpu::bench::plan_benches(
                    b,
                    a.reps,
                    a.only.as_deref()
                ))?,
            };
            if a.only.is_none() || a.optimizer.is_some() {
                rs.extend(with_backend!(&be, |b| mbrl_gpu::bench::true_plan_benches(
                    b,
                    a.reps,
                    a.optimizer
                ))?);
            }
            print_bench(&rs, a.json)
        }
        Cmd::Bench(BenchCmd::Policy(a)) => {
            if !a.json {
                note!("measuring (SAC gradient steps, MAAC path gradients, one MBPO epoch; GEMM peak on the cpu)...");
            }
            let be = pick_backend(a.backend)?;
            let rs = with_backend!(&be, |b| mbrl_gpu::bench::policy_benches(
                b,
                a.reps,
                a.only.as_deref()
            ))?;
            print_bench(&rs, a.json)
        }
        Cmd::Bench(BenchCmd::Env(a)) => {
            let env = mbrl_gpu::env::EnvName::parse(&a.env)?;
            if a.reps == 0 || a.reps > 10_000 {
                return Err(invalid!("--reps {}: give 1 to 10000", a.reps));
            }
            let opts = mbrl_gpu::env::gym::GymOptions::from_env()?;
            let python = std::process::Command::new(&opts.python)
                .args(["-c", "import gymnasium"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !python {
                note!(
                    "{:?} cannot import gymnasium: measuring the native environment only",
                    opts.python
                );
            }
            let rs = mbrl_gpu::bench::env_benches(&env, a.reps, python.then_some(&opts))?;
            print_bench(&rs, a.json)
        }
        Cmd::Pets(a) => run_pets(a),
        Cmd::Plan(a) => run_plan(a),
        Cmd::Serve(a) => serve_cli::run(a),
        Cmd::Bench(BenchCmd::Serve(a)) => serve_cli::bench(a),
        Cmd::Bench(BenchCmd::Cpu(a)) => {
            if !a.json {
                note!(
                    "measuring (f32 GEMM, f32 FMA and bf16 dot-product ceilings on all threads)..."
                );
            }
            print_bench(&mbrl_gpu::bench::cpu_peaks(a.reps), a.json)
        }
        Cmd::Bench(BenchCmd::Kernels(a)) => bench_kernels(&a),
        Cmd::Sac(a) => rl::run_sac(a),
        Cmd::Mbpo(a) => rl::run_mbpo(a),
        Cmd::Maac(a) => rl::run_maac(a),
        Cmd::MaacHorizons(a) => rl::run_horizons(a),
        Cmd::Svg(a) => rl::run_svg(a),
        Cmd::Eval(a) => rl::run_eval(a),
        Cmd::Envs => {
            // The MuJoCo tasks' specifications are known in every build; only a build with
            // the feature steps them, so the line says which this binary is.
            let mujoco = if cfg!(feature = "mujoco") {
                ""
            } else {
                " [this build lacks the cargo feature `mujoco`: cargo build --release --features mujoco]"
            };
            let specs = EnvId::ALL
                .iter()
                .map(|id| (id.spec(), ""))
                .chain(mbrl_gpu::env::mujoco::MujocoTask::ALL.map(|t| (t.spec(), mujoco)));
            for (s, note) in specs {
                out!(
                    "{:<17} obs {}  act {} in {}  state {}  {} steps  {}{note}",
                    s.name,
                    s.obs_dim,
                    s.act_dim,
                    fmt_bounds(&s.act_low, &s.act_high),
                    s.state_dim,
                    s.max_episode_steps,
                    s.description
                );
            }
            out!(
                "gym:ID            any Gymnasium environment with Box spaces, through the Python \
                 bridge (gym:MODULE:ID or --gym-module to import your package first)"
            );
            Ok(())
        }
        Cmd::Env(EnvCmd::Replay(a)) => replay(a),
    }
}

/// A line above the progress bar, or on stderr when the bar is hidden (output is not a
/// terminal, e.g. a CI log), where indicatif would drop it.
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        note!("{line}");
    } else {
        pb.println(line);
    }
}

/// An action box: `[lo, hi]` when every dimension has the same bounds, else one
/// `[lo, hi]` per dimension.
fn fmt_bounds(low: &[f32], high: &[f32]) -> String {
    let same = |v: &[f32]| v.windows(2).all(|w| w[0] == w[1]);
    match (low.first(), high.first()) {
        (Some(l), Some(h)) if same(low) && same(high) => format!("[{l}, {h}]"),
        _ => low
            .iter()
            .zip(high)
            .map(|(l, h)| format!("[{l}, {h}]"))
            .collect::<Vec<_>>()
            .join(" × "),
    }
}

fn bench_kernels(a: &KernelBenchArgs) -> Result<()> {
    use mbrl_gpu::backend::cuda::{ptxas, source};
    if !source::nvrtc_present() {
        return Err(Error::Unavailable(
            "NVRTC (libnvrtc.so.13) could not be loaded: install the nvidia-cuda-nvrtc wheel \
             (scripts/test.sh puts it under .tools/cuda) and put its lib folder on \
             LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let tool = ptxas::ptxas_path()?;
    // A private scratch folder for the PTX and cubins, removed when done.
    let dir = std::env::temp_dir().join(format!("mbrl-gpu-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| invalid!("creating {}: {e}", dir.display()))?;
    let result = kernel_table(a, &tool, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn kernel_table(a: &KernelBenchArgs, tool: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    use mbrl_gpu::backend::cuda::ptxas;
    let model = ptxas::cartpole_model();
    if !a.json {
        out!(
            "{:<18} {:<6} {:<24} {:>5} {:>8} {:>7} {:>7} {:>12}",
            "program",
            "arch",
            "kernel",
            "regs",
            "smem B",
            "stack B",
            "spill B",
            "blocks/SM"
        );
    }
    for program in ptxas::programs(false) {
        for sm in [80, 90] {
            let (_, reports) = ptxas::assemble(&program, sm, tool, dir)?;
            for r in reports {
                // Blocks of 256 threads (every MLP kernel's size), with the dynamic shared
                // memory the host gives the cart-pole model.
                let dyn_smem = ptxas::dynamic_smem(&r.name, &model, 4);
                let blocks = r.blocks_per_sm(256, dyn_smem);
                if a.json {
                    let mut v = serde_json::to_value(&r).map_err(|e| invalid!("JSON: {e}"))?;
                    v["blocks_per_sm"] = blocks.into();
                    v["dynamic_smem"] = dyn_smem.into();
                    out!("{v}");
                } else {
                    out!(
                        "{:<18} sm_{:<3} {:<24} {:>5} {:>8} {:>7} {:>7} {:>12}",
                        r.program,
                        r.sm,
                        r.name,
                        r.registers,
                        r.smem,
                        r.stack,
                        r.spill_stores + r.spill_loads,
                        if dyn_smem > 0 {
                            format!("{blocks} (+{dyn_smem} B)")
                        } else {
                            blocks.to_string()
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_bench(rs: &[BenchResult], json: bool) -> Result<()> {
    for r in rs {
        if json {
            out!(
                "{}",
                serde_json::to_string(r).map_err(|e| invalid!("JSON: {e}"))?
            );
        } else {
            let peak = if r.peak_gflops > 0.0 {
                let fma = if r.fma_ceiling_gflops > 0.0 {
                    format!("  FMA ceiling {:>5.1} %", 100.0 * r.fraction_of_fma_ceiling)
                } else {
                    String::new()
                };
                format!(
                    "peak {:>7.1}  ({:>5.1} %){fma}",
                    r.peak_gflops,
                    100.0 * r.fraction_of_peak
                )
            } else {
                "peak not measured on this backend".into()
            };
            out!(
                "{:<38} {:<5} median {:>9.3} ms  {:>7.1} GFLOP/s  {peak}  {}",
                r.name,
                r.backend,
                r.median_ms,
                r.gflops,
                r.note
            );
        }
    }
    Ok(())
}

/// The settings `pets` flags stand for, so errors name what the user typed.
fn pets_flag(key: &str) -> Option<String> {
    match key {
        "trials" => Some("--trials".into()),
        "seed" => Some("--seed".into()),
        "planner.precision" => Some("--precision".into()),
        k => Some(format!("--set {k}")),
    }
}

/// A new run's configuration: the preset, then --config, then the flags, then --set.
fn resolve_pets_config(a: &PetsArgs) -> Result<PetsConfig> {
    let mut flags = vec![];
    if let Some(seed) = a.seed {
        flags.push(("seed", rl::int_flag("--seed", seed)?));
    }
    if let Some(t) = a.trials {
        flags.push(("trials", rl::int_flag("--trials", t as u64)?));
    }
    if let Some(p) = a.precision {
        let v = toml::Value::try_from(p).map_err(|e| invalid!("--precision: {e}"))?;
        flags.push(("planner.precision", v));
    }
    let src = rl::Sources {
        config: &a.config,
        sets: &a.sets,
        env: &a.env,
        preset: &a.preset,
        defaults: ("cartpole", &|_| "quick".into()),
        flags,
    };
    rl::resolve(src, PetsConfig::preset)
}

fn run_pets(a: PetsArgs) -> Result<()> {
    let (cfg, dir) = match &a.resume {
        Some(dir) => {
            let mut cfg: PetsConfig = rl::resume_config(dir, "pets")?;
            if let Some(t) = a.trials {
                cfg.trials = t;
            }
            (cfg, dir.clone())
        }
        None => {
            let cfg = resolve_pets_config(&a)?;
            let dir = a.out.clone().unwrap_or_else(|| {
                PathBuf::from(format!(
                    "runs/pets-{}-{}-s{}",
                    cfg.env, cfg.preset, cfg.seed
                ))
            });
            (cfg, dir)
        }
    };
    cfg.validate().map_err(|e| e.rename_setting(pets_flag))?;
    let text = io::config::to_toml(&cfg)?;
    if a.print_config {
        out!("{}", text.trim_end());
        return Ok(());
    }
    let mode = match (&a.resume, a.force) {
        (Some(_), _) => Mode::Resume,
        (None, true) => Mode::Force,
        (None, false) => Mode::New,
    };
    let be = pick_backend_for(a.backend, cfg.planner.precision)?;
    cfg.train
        .check_backend(be.name())
        .map_err(|e| e.in_section("train"))?;
    // Checked before any work: the directory is free (or resumable) and writable.
    let run_dir = RunDir::open(&dir, mode, &text)?;
    if mode == Mode::Resume {
        // A grown --trials is remembered for the next resume.
        run_dir.write(io::run::CONFIG, text.as_bytes())?;
    }
    with_backend!(&be, |b| pets_on(b, &cfg, &run_dir))
}

fn pets_on<B: Backend>(be: &B, cfg: &PetsConfig, dir: &RunDir) -> Result<()> {
    let out = dir.path();
    note!(
        "PETS on {} (preset {}): {} trials of {} steps, {} members {}x{}, CEM {}x{} over {} steps, {} particles {:?}; writing {}",
        cfg.env,
        cfg.preset,
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
    let (mut already_done, mut done) = (false, 0);
    let (_, reports) = pets::run(be, cfg, Some(dir), |ev| match ev {
        pets::Event::Resumed {
            trials,
            transitions,
        } => {
            already_done = trials > cfg.trials;
            done = trials - 1;
            say(
                &pb,
                format!(
                    "resuming {} after trial {} ({transitions} transitions)",
                    out.display(),
                    trials - 1
                ),
            );
        }
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
    if already_done {
        note!(
            "the run had already finished its {done} trials; pass --trials N (more than \
             {done}) with --resume to extend it"
        );
    }
    let last = reports.last().map_or(f64::NAN, |r| r.ret);
    let best = reports
        .iter()
        .skip(1)
        .map(|r| r.ret)
        .fold(f64::NEG_INFINITY, f64::max);
    out!(
        "final return {last:.2} (best MPC trial {best:.2}); run directory {}",
        out.display()
    );
    Ok(())
}

/// The settings `plan` flags stand for, so errors name the flag the user typed.
fn plan_flag(key: &str) -> Option<String> {
    let flag = match key {
        "horizon" | "planner.horizon" => "--horizon",
        "population" | "planner.population" => "--population",
        "num_elites" | "planner.num_elites" => "--elites",
        "iterations" | "planner.iterations" => "--iterations",
        "particles" => "--particles",
        "lambda" => "--lambda",
        "noise_covariance" => "--noise-covariance",
        "colored_noise_exponent" => "--beta",
        "population_decay_factor" => "--population-decay",
        "keep_elite_frac" => "--keep-elites",
        "model.hidden" | "model.ensemble_size" => "--model",
        _ => return None,
    };
    Some(flag.into())
}

fn run_plan(a: PlanArgs) -> Result<()> {
    let env = mbrl_gpu::env::EnvName::parse(&a.env)?;
    if a.true_dynamics && env.mujoco().is_none() {
        env.require_native("--true-dynamics")?;
    }
    let spec = env.spec()?;
    if a.episodes == 0 {
        return Err(invalid!("--episodes must be at least 1"));
    }
    if a.steps == Some(0) {
        return Err(invalid!("--steps must be at least 1"));
    }
    let mut cfg = PlannerConfig {
        optimizer: a.optimizer,
        horizon: a.horizon,
        population: a.population,
        num_elites: a.elites.unwrap_or((a.population / 10).max(1)),
        iterations: a.iterations,
        precision: a.precision,
        ..PlannerConfig::pets_cartpole()
    };
    if a.optimizer == Optimizer::Mppi {
        // pytorch_mppi's nominal update has no smoothing.
        cfg.alpha = 0.0;
    }
    a.sampling.apply(&mut cfg);
    let ts = TsConfig {
        particles: a.particles.unwrap_or(20),
        propagation: a.propagation.unwrap_or(Propagation::Ts1),
    };
    if ts.particles == 0 {
        return Err(invalid!("--particles must be at least 1"));
    }
    cfg.validate().map_err(|e| e.rename_setting(plan_flag))?;
    let model = match (&a.model, a.true_dynamics) {
        (Some(path), false) => Some(load_plan_model(path, &env, &spec)?),
        (None, true) => None,
        _ => return Err(invalid!("give either --model PATH or --true-dynamics")),
    };
    let particles = if model.is_some() { ts.particles } else { 1 };
    mbrl_gpu::limits::check_planning(
        model.as_ref().map(|m| &m.config),
        &cfg,
        spec.act_dim,
        spec.obs_dim.max(spec.state_dim),
        particles,
    )
    .map_err(|e| e.rename_setting(plan_flag))?;
    let terminal = terminal_value_flag(a.terminal_value.as_deref(), &env, &spec)?;
    let be = pick_backend_for(a.backend, a.precision)?;
    with_backend!(&be, |b| plan_on(
        b,
        &a,
        &env,
        cfg,
        ts,
        model.as_ref(),
        terminal.clone()
    ))
}

/// The critic of `--terminal-value RUN_DIR`, if given, for planning on `env`.
fn terminal_value_flag(
    dir: Option<&Path>,
    env: &mbrl_gpu::env::EnvName,
    spec: &mbrl_gpu::env::EnvSpec,
) -> Result<Option<mbrl_gpu::backend::TerminalValue>> {
    dir.map(|d| {
        mbrl_gpu::policy::checkpoint::load_terminal_value(
            "--terminal-value",
            d,
            &env.to_string(),
            spec.obs_dim,
            spec.act_dim,
        )
    })
    .transpose()
}

/// A trained ensemble for planning on `env`: its dimensions must be the environment's, and
/// it must have learned the reward where the environment has no reward function here.
fn load_plan_model(
    path: &Path,
    env: &mbrl_gpu::env::EnvName,
    spec: &mbrl_gpu::env::EnvSpec,
) -> Result<Ensemble> {
    let model = io::checkpoint::load(path)?;
    let (mo, ma) = (model.config.obs_dim, model.config.act_dim);
    if (mo, ma) != (spec.obs_dim, spec.act_dim) {
        return Err(Error::Shape(format!(
            "--model {} was trained on {mo} observation and {ma} action values, but \
             {} has {} and {}: it belongs to another environment",
            path.display(),
            env,
            spec.obs_dim,
            spec.act_dim
        )));
    }
    if !mbrl_gpu::env::task::has_reward(env.task_code()) && !model.config.learn_reward {
        return Err(invalid!(
            "--model {}: {env} has no reward function from observations here, so \
             planning needs a model that learned the reward (model.learn_reward)",
            path.display()
        ));
    }
    Ok(model)
}

fn plan_on<B: Backend>(
    be: &B,
    a: &PlanArgs,
    env: &mbrl_gpu::env::EnvName,
    cfg: PlannerConfig,
    ts: TsConfig,
    model: Option<&Ensemble>,
    terminal: Option<mbrl_gpu::backend::TerminalValue>,
) -> Result<()> {
    let mut envs = env.open(1)?;
    let spec = envs.spec().clone();
    let mut mpc = match model {
        Some(m) => Mpc::with_model_task(
            be,
            m,
            env.task_code(),
            &spec.act_low,
            &spec.act_high,
            cfg,
            ts,
            a.seed,
        )?,
        #[cfg(feature = "mujoco")]
        None if env.mujoco().is_some() => {
            Mpc::with_mujoco(be, env.mujoco().expect("checked"), cfg, a.seed)?
        }
        None => Mpc::with_true_dynamics(be, env.require_native("--true-dynamics")?, cfg, a.seed)?,
    };
    if terminal.is_some() {
        mpc.set_terminal_value(terminal)?;
    }
    let steps = a.steps.unwrap_or(spec.max_episode_steps);
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
            note!("episode {ep}: return {ret:.2}");
        }
        returns.push(ret);
    }
    let lat = mpc.take_latencies();
    let (med, p99) = latency_stats(&lat);
    let evals =
        mpc.rows_per_action() as f64 * lat.len() as f64 / lat.iter().sum::<f64>().max(1e-12);
    if a.json {
        out!(
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
        out!(
            "returns {:?}; per action median {med:.2} ms, p99 {p99:.2} ms; {evals:.3e} model evaluations/s",
            returns.iter().map(|r| (r * 100.0).round() / 100.0).collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn replay(a: ReplayArgs) -> Result<()> {
    let env = mbrl_gpu::env::EnvName::parse(&a.env)?.require_native("env replay")?;
    let text = io::json::read_text(&a.input)?;
    let inp = io::json::parse_replay_input(&text)
        .map_err(|e| invalid!("--input {}: {e}", a.input.display()))?;
    for step in mbrl_gpu::env::replay_f64(env, &inp.state, &inp.actions)? {
        out!(
            "{}",
            serde_json::to_string(&step).map_err(|e| invalid!("JSON: {e}"))?
        );
    }
    Ok(())
}

fn pick_backend(choice: BackendChoice) -> Result<AnyBackend> {
    pick_backend_for(choice, Precision::F32)
}

/// The backend, built to plan in `precision`.
fn pick_backend_for(choice: BackendChoice, precision: Precision) -> Result<AnyBackend> {
    let (b, skipped) = AnyBackend::with_precision(choice, precision)?;
    for s in skipped {
        note!("backend: passed over {s}");
    }
    let arith = match (precision, b.name()) {
        (Precision::F32, _) if b.planning_on_tensor_cores() => {
            " (TF32 tensor cores in planning; MBRL_GPU_FP32_PLANNING=1 keeps f32)".into()
        }
        (Precision::F32, _) => String::new(),
        (Precision::Bf16, "cpu") => format!(" (planning {})", mbrl_gpu::bf16::describe()),
        (Precision::Bf16, _) => " (bf16 weights in planning)".into(),
    };
    note!("backend: {}{arith}", b.name());
    Ok(b)
}

/// The settings `model fit` flags stand for, so errors name the flag the user typed.
fn fit_flag(key: &str) -> Option<String> {
    let key = key.strip_prefix("model.").unwrap_or(key);
    let key = key.strip_prefix("train.").unwrap_or(key);
    let flag = match key {
        "hidden" => "--hidden",
        "num_layers" => "--layers",
        "ensemble_size" => "--ensemble",
        "num_elites" => "--elites",
        "batch_size" => "--batch-size",
        "lr" => "--lr",
        "epochs" => "--epochs",
        "holdout_ratio" => "--holdout",
        "weight_decay" => "--weight-decay",
        "patience" => "--patience",
        _ => return None,
    };
    Some(flag.into())
}

/// Before any work: `--out` may be written (its directory exists and is writable), is not
/// the data it is trained from, and replaces an existing file only with --force.
fn check_fit_out(out: &Path, data: &Path, force: bool) -> Result<()> {
    if let Ok(m) = std::fs::metadata(out) {
        if m.is_dir() {
            return Err(invalid!(
                "--out {} is a directory; name a file",
                out.display()
            ));
        }
        let same = match (std::fs::canonicalize(out), std::fs::canonicalize(data)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(invalid!(
                "--out {} is the --data file; writing the model there would destroy the data",
                out.display()
            ));
        }
        if !force {
            return Err(invalid!(
                "--out {} already exists; pass --force to replace it",
                out.display()
            ));
        }
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(invalid!(
            "--out {}: the directory {} does not exist",
            out.display(),
            dir.display()
        ));
    }
    let probe = dir.join(format!(".mbrl-gpu-write-test.tmp-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        invalid!(
            "--out {}: cannot write in {}: {e}",
            out.display(),
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn fit(a: FitArgs) -> Result<()> {
    check_fit_out(&a.out, &a.data, a.force)?;
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
    let tc = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay.clone(),
        holdout_ratio: a.holdout,
        patience: a.patience,
        seed: a.seed,
        ..TrainConfig::default()
    };
    cfg.validate()
        .and_then(|()| tc.validate())
        .and_then(|()| mbrl_gpu::limits::check_model(&cfg, a.batch_size))
        .map_err(|e| e.rename_setting(fit_flag))?;
    let be = pick_backend(a.backend)?;
    with_backend!(&be, |b| fit_on(b, &a, data, cfg, tc))
}

fn fit_on<B: Backend>(
    be: &B,
    a: &FitArgs,
    data: mbrl_gpu::model::Transitions,
    cfg: ModelConfig,
    tc: TrainConfig,
) -> Result<()> {
    let mut model = Ensemble::new(cfg, a.seed)?;
    note!(
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
    let report = train::train(be, &mut model, &data, &tc, |r| {
        let mean_mse = r.eval_mse.iter().sum::<f64>() / r.eval_mse.len().max(1) as f64;
        let which = if r.on_holdout { "holdout" } else { "training" };
        if r.eval_mse.is_empty() {
            say(
                &pb,
                format!(
                    "epoch {:>4}  training loss {:>10.5}",
                    r.epoch + 1,
                    r.train_loss
                ),
            );
        } else {
            say(
                &pb,
                format!(
                    "epoch {:>4}  training loss {:>10.5}  {which} mse {:>10.6}",
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
    let which = if report.holdout_rows > 0 {
        format!("holdout ({} rows) mse", report.holdout_rows)
    } else {
        "no holdout set: training mse".to_string()
    };
    note!(
        "{} epochs; {which} per member {:?}; elites {:?}; wrote {}",
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

fn predict(a: PredictArgs) -> Result<()> {
    let model = io::checkpoint::load(&a.model)?;
    let text = io::json::read_text(&a.input)?;
    let inp = io::json::parse_predict_input(&text)
        .map_err(|e| invalid!("--input {}: {e}", a.input.display()))?;
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
    if let Some(i) = mean.iter().chain(&var).position(|v| !v.is_finite()) {
        let i = i % mean.len();
        let (m, r) = (i / (rows * o), (i / o) % rows);
        return Err(invalid!(
            "member {m} predicts a non-finite value for row {r}: the input is too far outside \
             the range the model was trained on to give a number (no output written)"
        ));
    }
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
    out!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "obs_dim": od,
            "learn_reward": model.config.learn_reward,
            "members": members
        }))
        .map_err(|e| invalid!("JSON: {e}"))?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fmt_bounds;

    #[test]
    fn bounds_should_print_once_when_every_dimension_shares_them() {
        assert_eq!(fmt_bounds(&[-1.0; 6], &[1.0; 6]), "[-1, 1]");
        assert_eq!(fmt_bounds(&[-2.0], &[2.0]), "[-2, 2]");
        assert_eq!(
            fmt_bounds(&[-1.0, -0.5], &[1.0, 1.0]),
            "[-1, 1] × [-0.5, 1]"
        );
        assert_eq!(fmt_bounds(&[], &[]), "");
    }
}
