//! `serve`: the planning service's command line; the service is `mbrl_gpu::serve`.
use super::{load_plan_model, pick_backend_for, plan_flag, SamplingArgs};
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
    /// Trained ensemble to plan with (from `pets --out` or `model fit`).
    #[arg(long, conflicts_with = "true_dynamics")]
    model: Option<PathBuf>,
    /// Plan with the native environment's own dynamics (observations are mapped back to
    /// its state).
    #[arg(long)]
    true_dynamics: bool,
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
            ServeDynamics::Model {
                model,
                task: env.task_code(),
                ts: TsConfig {
                    particles: a.particles,
                    propagation: a.propagation,
                },
                data,
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
