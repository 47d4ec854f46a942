//! `serve`: the planning service's command line; the service is `mbrl_gpu::serve`.
use super::{load_plan_model, pick_backend_for, plan_flag, terminal_value_flag, SamplingArgs};
use clap::Args;
use mbrl_gpu::backend::{BackendChoice, Precision, Propagation};
use mbrl_gpu::env::EnvName;
use mbrl_gpu::model::{TrainConfig, Transitions};
use mbrl_gpu::plan::{Optimizer, PlannerConfig, TsConfig};
use mbrl_gpu::serve::{Address, ServeConfig, ServeDynamics, Server};
use mbrl_gpu::{invalid, io, with_backend, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Environment whose spaces (and reward, termination or true dynamics) are served.
    #[arg(long, default_value = "pendulum")]
    env: String,
    /// Trained ensemble to plan with: a checkpoint of `model fit`, or a `pets` run
    /// directory (its model.safetensors).
    #[arg(long, conflicts_with = "true_dynamics")]
    model: Option<PathBuf>,
    /// Plan with the native environment's own dynamics (observations are mapped back to
    /// its state).
    #[arg(long)]
    true_dynamics: bool,
    /// Close each model path with the critic of a `sac`/`mbpo`/`maac` run directory
    /// (γ^H·min Q at the policy's action), so a short horizon plans like a long one; on
    /// a device backend its networks run there.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "true_dynamics")]
    terminal_value: Option<PathBuf>,
    /// HOST:PORT (loopback unless --allow-remote) or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:5555")]
    listen: String,
    /// Accept a non-loopback --listen address (the protocol has no authentication).
    #[arg(long)]
    allow_remote: bool,
    /// Default deadline of a request, in ms (a request may give its own).
    #[arg(long, default_value_t = 20.0)]
    deadline_ms: f32,
    /// Connections served at once; more are refused with a "busy" error.
    #[arg(long, default_value_t = 8)]
    max_clients: usize,
    /// A frame must arrive whole within this many ms of its first byte.
    #[arg(long, default_value_t = 5000)]
    frame_timeout_ms: u64,
    /// A connection idle for this many seconds between frames is closed.
    #[arg(long, default_value_t = 600)]
    idle_timeout_s: u64,
    /// Refit the model after this many transitions received with ADD (0: never learn).
    #[arg(long, default_value_t = 200)]
    refit_every: usize,
    /// Transitions the dataset holds at most (ADD beyond it is refused).
    #[arg(long, default_value_t = 1_000_000)]
    max_transitions: usize,
    /// Epochs of each refit.
    #[arg(long, default_value_t = 20)]
    refit_epochs: usize,
    /// Transitions (CSV, as `model fit` reads) the model was trained on: refits use them
    /// together with the new ones.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where refitted models are saved (atomically); without it they live in memory only.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Save every this many refits (and at shutdown).
    #[arg(long, default_value_t = 1)]
    save_every: usize,
    /// Shooting method.
    #[arg(long, value_enum, default_value_t = Optimizer::Cem)]
    optimizer: Optimizer,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Planning horizon.
    #[arg(long, default_value_t = 30)]
    horizon: usize,
    /// Candidates per iteration.
    #[arg(long, default_value_t = 350)]
    population: usize,
    /// Elites per iteration (CEM, iCEM) [default: 10 % of the population].
    #[arg(long)]
    elites: Option<usize>,
    /// Iterations per action (stopped early by the deadline).
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Trajectory-sampling particles per candidate (model planning only).
    #[arg(long, default_value_t = 20)]
    particles: usize,
    /// How particles move through the ensemble (model planning only).
    #[arg(long, value_enum, default_value_t = Propagation::Ts1)]
    propagation: Propagation,
    /// Seed of the planners (connection i uses seed + i) and of the refits.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Backend to plan on.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let env = EnvName::parse(&a.env)?;
    let spec = env.spec()?;
    let address = Address::parse(&a.listen, a.allow_remote)?;
    let mut planner = PlannerConfig {
        optimizer: a.optimizer,
        horizon: a.horizon,
        population: a.population,
        num_elites: a.elites.unwrap_or((a.population / 10).max(1)),
        iterations: a.iterations,
        precision: Precision::F32,
        ..PlannerConfig::pets_cartpole()
    };
    if a.optimizer == Optimizer::Mppi {
        planner.alpha = 0.0;
    }
    a.sampling.apply(&mut planner);
    planner
        .validate()
        .map_err(|e| e.rename_setting(plan_flag))?;
    if a.particles == 0 {
        return Err(invalid!("--particles must be at least 1"));
    }
    if a.save_every == 0 {
        return Err(invalid!("--save-every must be at least 1"));
    }
    let dynamics = match (&a.model, a.true_dynamics) {
        (Some(path), false) => {
            let model = load_plan_model(path, &env, &spec)?;
            if let Some(s) = &a.save {
                if s == path {
                    return Err(invalid!(
                        "--save {} would overwrite --model; save refits elsewhere",
                        s.display()
                    ));
                }
            }
            let data = match &a.data {
                Some(p) => {
                    let d = io::csv::read(p)?;
                    if (d.obs_dim, d.act_dim) != (spec.obs_dim, spec.act_dim) {
                        return Err(invalid!(
                            "--data {} has {} observation and {} action columns; {env} has {} and {}",
                            p.display(),
                            d.obs_dim,
                            d.act_dim,
                            spec.obs_dim,
                            spec.act_dim
                        ));
                    }
                    d
                }
                None => Transitions::new(spec.obs_dim, spec.act_dim),
            };
            let terminal = terminal_value_flag(a.terminal_value.as_deref(), &env, &spec)?;
            ServeDynamics::Model {
                model,
                task: env.task_code(),
                ts: TsConfig {
                    particles: a.particles,
                    propagation: a.propagation,
                },
                data,
                terminal,
            }
        }
        (None, true) => ServeDynamics::True(env.require_native("serve --true-dynamics")?),
        _ => return Err(invalid!("give either --model PATH or --true-dynamics")),
    };
    let train = TrainConfig {
        epochs: a.refit_epochs,
        seed: a.seed,
        ..TrainConfig::default()
    };
    train.validate()?;
    let cfg = ServeConfig {
        env_name: env.name(),
        spec,
        planner,
        dynamics,
        deadline_ms: a.deadline_ms,
        max_clients: a.max_clients,
        frame_timeout: Duration::from_millis(a.frame_timeout_ms.max(1)),
        idle_timeout: Duration::from_secs(a.idle_timeout_s.max(1)),
        refit_every: a.refit_every,
        max_transitions: a.max_transitions,
        train,
        save_every: a.save_every,
        save: a.save.clone(),
        seed: a.seed,
    };
    let be = pick_backend_for(a.backend, Precision::F32)?;
    let server = Server::bind(&address, cfg)?;
    let shown = server
        .local_addr()
        .map_or(a.listen.clone(), |x| x.to_string());
    // One line on stderr that scripts can wait for.
    let _ = writeln!(
        std::io::stderr(),
        "serve: listening on {shown} ({} backend, {:?}, deadline {} ms)",
        be.name(),
        a.optimizer,
        a.deadline_ms
    );
    let summary = with_backend!(&be, |b| server.run(b))?;
    let _ = writeln!(
        std::io::stderr(),
        "serve: stopped after {} connections, {} actions, {} refits, {} saves",
        summary.connections,
        summary.actions,
        summary.refits,
        summary.saves
    );
    Ok(())
}

#[derive(Args)]
pub struct ServeBenchArgs {
    /// Seconds of closed loop per configuration.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Control rate of the loop.
    #[arg(long, default_value_t = 50.0)]
    rate_hz: f64,
    /// The server's deadline per action (ms).
    #[arg(long, default_value_t = 10.0)]
    deadline_ms: f32,
    /// One JSON object per configuration per line.
    #[arg(long)]
    json: bool,
    /// Only the configurations whose name contains this text (true, model).
    #[arg(long)]
    only: Option<String>,
}

/// The Python client and its closed-loop example, compiled in so that `bench serve` runs the
/// client users run, from an installed binary as from a checkout.
const CLIENT_PY: &str = include_str!("../../python/mbrl_gpu/client.py");
const INIT_PY: &str = include_str!("../../python/mbrl_gpu/__init__.py");
const CLOSED_LOOP_PY: &str = include_str!("../../python/examples/closed_loop.py");

/// `bench serve`: the service in a closed loop at `--rate-hz` over loopback with the Python
/// client (Gymnasium's Pendulum-v1 when the interpreter has Gymnasium), once planning with
/// the true dynamics (MPPI, K = 1000, T = 30) and once with a learned 5-member 3×64 ensemble
/// (trained here on 5 000 random-action transitions; CEM with 4 TS1 particles). Reports the
/// round trip's p50 and p99 and the answers later than the deadline.
pub fn bench(a: ServeBenchArgs) -> Result<()> {
    use mbrl_gpu::env::{Env, EnvId, NativeEnv};
    use mbrl_gpu::model::{Ensemble, ModelConfig};
    if !(a.seconds > 0.0 && a.rate_hz > 0.0 && a.deadline_ms > 0.0) {
        return Err(invalid!(
            "--seconds, --rate-hz and --deadline-ms must be positive"
        ));
    }
    let python = std::env::var(mbrl_gpu::env::gym::PYTHON_VAR).unwrap_or_else(|_| "python3".into());
    let dir = std::env::temp_dir().join(format!("mbrl-gpu-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("mbrl_gpu")).map_err(|e| mbrl_gpu::Error::io(&dir, e))?;
    std::fs::create_dir_all(dir.join("examples")).map_err(|e| mbrl_gpu::Error::io(&dir, e))?;
    for (rel, text) in [
        ("mbrl_gpu/__init__.py", INIT_PY),
        ("mbrl_gpu/client.py", CLIENT_PY),
        ("examples/closed_loop.py", CLOSED_LOOP_PY),
    ] {
        let p = dir.join(rel);
        std::fs::write(&p, text).map_err(|e| mbrl_gpu::Error::io(&p, e))?;
    }
    let env = EnvId::Pendulum;
    let spec = env.spec();
    let mut configs: Vec<(&str, PlannerConfig, ServeDynamics)> = vec![];
    if a.only
        .as_deref()
        .is_none_or(|o| "true_dynamics_mppi".contains(o))
    {
        let cfg = PlannerConfig {
            optimizer: Optimizer::Mppi,
            horizon: 30,
            population: 1000,
            iterations: 1,
            alpha: 0.0,
            noise_covariance: vec![1.0],
            ..PlannerConfig::pets_cartpole()
        };
        configs.push(("true_dynamics_mppi", cfg, ServeDynamics::True(env)));
    }
    if a.only
        .as_deref()
        .is_none_or(|o| "model_5x3x64_cem".contains(o))
    {
        let mut mc = ModelConfig::pets(spec.obs_dim, spec.act_dim);
        mc.ensemble_size = 5;
        mc.num_elites = 5;
        mc.hidden = 64;
        mc.num_layers = 3;
        let mut model = Ensemble::new(mc, 0)?;
        let mut data = Transitions::new(spec.obs_dim, spec.act_dim);
        let mut e = NativeEnv::new(env, 1);
        let mut obs = e.reset(&[0])?;
        for i in 0..5000u32 {
            let u = 4.0 * mbrl_gpu::rng::uniform(0, mbrl_gpu::rng::stream::DATA, i, 0) - 2.0;
            let tr = e.step(&[u])?.remove(0);
            data.push(&obs, &[u], &tr.obs, None);
            obs = if tr.truncated {
                e.reset(&[u64::from(i)])?
            } else {
                tr.obs
            };
        }
        let tc = TrainConfig {
            epochs: 30,
            ..TrainConfig::default()
        };
        let cpu = mbrl_gpu::backend::cpu::CpuBackend::new();
        mbrl_gpu::model::train::train(&cpu, &mut model, &data, &tc, |_| {})?;
        let cfg = PlannerConfig {
            optimizer: Optimizer::Cem,
            horizon: 15,
            population: 200,
            num_elites: 20,
            iterations: 3,
            ..PlannerConfig::pets_cartpole()
        };
        let dynamics = ServeDynamics::Model {
            model,
            task: env.code(),
            ts: TsConfig {
                particles: 4,
                propagation: Propagation::Ts1,
            },
            data: Transitions::new(spec.obs_dim, spec.act_dim),
            terminal: None,
        };
        configs.push(("model_5x3x64_cem", cfg, dynamics));
    }
    let be = mbrl_gpu::backend::cpu::CpuBackend::new();
    for (name, planner, dynamics) in configs {
        let cfg = ServeConfig {
            env_name: "pendulum".into(),
            spec: spec.clone(),
            planner: planner.clone(),
            dynamics,
            deadline_ms: a.deadline_ms,
            max_clients: 2,
            frame_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            refit_every: 0,
            max_transitions: 0,
            train: TrainConfig::default(),
            save_every: 1,
            save: None,
            seed: 0,
        };
        let server = Server::bind(&Address::parse("127.0.0.1:0", false)?, cfg)?;
        let addr = server.local_addr().expect("tcp");
        let stop = server.stopper();
        let report = std::thread::scope(|s| -> Result<serde_json::Value> {
            let h = s.spawn(|| server.run(&be));
            // The compiled-in client first on the path, before any installed copy.
            let out = std::process::Command::new(&python)
                .env("PYTHONPATH", &dir)
                .arg(dir.join("examples/closed_loop.py"))
                .args(["--address", &addr.to_string(), "--json"])
                .args(["--seconds", &a.seconds.to_string()])
                .args(["--rate-hz", &a.rate_hz.to_string()])
                .output();
            stop();
            h.join().expect("server thread")?;
            let out = out.map_err(|e| invalid!("cannot run {python}: {e}"))?;
            if !out.status.success() {
                return Err(invalid!(
                    "the Python closed loop failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str(text.lines().last().unwrap_or(""))
                .map_err(|e| invalid!("the Python closed loop printed no report: {e}"))
        })?;
        let row = serde_json::json!({
            "name": format!("serve_{name}"),
            "p50_ms": report["p50_ms"],
            "p99_ms": report["p99_ms"],
            "max_ms": report["max_ms"],
            "deadline_ms": a.deadline_ms,
            "deadline_misses": report["deadline_misses"],
            "deadline_cuts": report["deadline_cuts"],
            "late_ticks": report["late_ticks"],
            "n": report["n"],
            "rate_hz": a.rate_hz,
            "seconds": a.seconds,
            "plan_p50_ms": report["plan_p50_ms"],
            "mean_return": report["mean_return"],
            "env": report["env"],
            "threads": rayon::current_num_threads(),
            "planner": planner,
        });
        if a.json {
            println!("{row}");
        } else {
            println!(
                "{:<28} round trip p50 {:>7.3} ms  p99 {:>7.3} ms  misses {} of {} (deadline {} ms, {} cut short)  mean return {}",
                row["name"].as_str().unwrap_or(""),
                row["p50_ms"].as_f64().unwrap_or(f64::NAN),
                row["p99_ms"].as_f64().unwrap_or(f64::NAN),
                row["deadline_misses"],
                row["n"],
                a.deadline_ms,
                row["deadline_cuts"],
                row["mean_return"]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
