//! `sac`, `mbpo` and `eval`: the policy-learning commands.
use super::{say, stdout_line};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mbrl_gpu::algo::offpolicy::{Event, Row};
use mbrl_gpu::algo::{mbpo, sac, svg};
use mbrl_gpu::backend::{AnyBackend, BackendChoice};
use mbrl_gpu::env::{EnvId, EnvName};
use mbrl_gpu::io::config::{self as conf, Origin};
use mbrl_gpu::io::run::{Mode, RunDir};
use mbrl_gpu::{invalid, io, with_backend, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// What every run command takes.
#[derive(Args)]
pub struct RunArgs {
    /// Environment name (see `mbrl-gpu envs`) [default: the --config file's, else pendulum].
    #[arg(long)]
    env: Option<String>,
    /// Preset to start from [default: the --config file's, else the command's default].
    #[arg(long)]
    preset: Option<String>,
    /// Environment steps in all [default: the preset's]. With --resume, extends the run.
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of initialisation, minibatches, noise and environment resets [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// TOML settings applied over the preset, e.g. the config.toml a run wrote.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Change one setting, after the preset and --config: --set sac.lr=1e-3 (repeatable;
    /// --print-config shows every key).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Run directory (config.toml, metrics.csv, timings.csv, policy.safetensors,
    /// critic.safetensors, learning_curve.svg, checkpoint.json) [default:
    /// runs/CMD-ENV-PRESET-sSEED]. An existing run there is never overwritten without --force.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace the run in --out if there is one (the files a run writes are removed first).
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Continue the interrupted run in DIR from its last evaluation, with the settings of
    /// its config.toml; the result equals an uninterrupted run.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["env", "preset", "seed", "config", "sets", "out"]
    )]
    resume: Option<PathBuf>,
}

#[derive(Args)]
pub struct SacArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Backend of the gradient steps (cpu: the specification; wgpu, cuda: the agent's
    /// parameters and optimiser state live on the device, read back at evaluations).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

impl SacArgs {
    pub fn env_mut(&mut self) -> Option<&mut String> {
        self.run.env.as_mut()
    }
}

impl MbpoArgs {
    pub fn env_mut(&mut self) -> Option<&mut String> {
        self.run.env.as_mut()
    }
}

impl EvalArgs {
    pub fn env_mut(&mut self) -> &mut String {
        &mut self.env
    }
}

#[derive(Args)]
pub struct MbpoArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Backend of the model training, branched rollouts, SAC's gradient steps and the path
    /// gradients of MAAC and SVG(∞) (bf16 SAC steps run on the CPU).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

#[derive(Args)]
pub struct EvalArgs {
    /// A policy.safetensors written by `sac`, `mbpo`, `maac` or `svg`, or that run's directory.
    #[arg(long)]
    policy: PathBuf,
    /// Environment name (see `mbrl-gpu envs`).
    #[arg(long)]
    env: String,
    /// Episodes, each from its own reset seed.
    #[arg(long, default_value_t = 10)]
    episodes: usize,
    /// Seed of the episodes' resets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One JSON object with the returns and their mean.
    #[arg(long)]
    json: bool,
}

/// The settings flags stand for, so errors name what the user typed.
fn flag(key: &str) -> Option<String> {
    match key {
        "steps" => Some("--steps".into()),
        "seed" => Some("--seed".into()),
        k => Some(format!("--set {k}")),
    }
}

/// What a new run's configuration is built from, in order: the preset chosen by `env` and
/// `preset` (each from --set, else its flag, else the --config file, else the default),
/// then the --config file, then `flags` (settings given by their own flags), then --set.
pub struct Sources<'a> {
    pub config: &'a Option<PathBuf>,
    pub sets: &'a [String],
    pub env: &'a Option<String>,
    pub preset: &'a Option<String>,
    /// The environment when none is given, and the preset for an environment when none is.
    pub defaults: (&'a str, &'a dyn Fn(&EnvName) -> String),
    pub flags: Vec<(&'static str, toml::Value)>,
}

/// The configuration [`Sources`] describe, `preset` giving the base for (env, preset name).
pub fn resolve<C: Serialize + DeserializeOwned>(
    src: Sources,
    preset: impl Fn(&EnvName, &str) -> Result<C>,
) -> Result<C> {
    let mut file = match src.config {
        Some(p) => conf::read_table(p)?,
        None => Default::default(),
    };
    let sets = src
        .sets
        .iter()
        .map(|s| conf::parse_set(s))
        .collect::<Result<Vec<_>>>()?;
    let pick =
        |key: &str, flag: &Option<String>, file: &mut toml::Table| -> Result<Option<String>> {
            let from_file = match file.remove(key) {
                Some(toml::Value::String(v)) => Some(v),
                Some(v) => return Err(invalid!("--config: {key} = {v}: expected a string")),
                None => None,
            };
            let from_set = sets
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| match v {
                    toml::Value::String(s) => s.clone(),
                    v => v.to_string(),
                });
            Ok(from_set.or(flag.clone()).or(from_file))
        };
    let env = pick("env", src.env, &mut file)?.unwrap_or_else(|| src.defaults.0.into());
    let env = EnvName::parse(&env)?;
    let name = pick("preset", src.preset, &mut file)?.unwrap_or_else(|| (src.defaults.1)(&env));
    let mut table = conf::to_table(&preset(&env, &name)?)?;
    if let Some(p) = src.config {
        conf::merge::<C>(&mut table, &file, Origin::File(p))?;
    }
    for (k, v) in src.flags {
        conf::set::<C>(&mut table, k, v)?;
    }
    for (k, v) in sets {
        if k != "env" && k != "preset" {
            conf::set::<C>(&mut table, &k, v)?;
        }
    }
    conf::from_table(table)
}

/// `runs/CMD-ENV-PRESET-sSEED`, with a Gymnasium name's `:` and `/` as `-`.
pub fn default_dir(cmd: &str, env: &str, preset: &str, seed: u64) -> PathBuf {
    let env: String = env
        .chars()
        .map(|c| if c == ':' || c == '/' { '-' } else { c })
        .collect();
    PathBuf::from(format!("runs/{cmd}-{env}-{preset}-s{seed}"))
}

/// A `u64`/`usize` flag as the TOML integer it sets.
pub fn int_flag(flag: &str, v: u64) -> Result<toml::Value> {
    i64::try_from(v)
        .map(toml::Value::Integer)
        .map_err(|_| invalid!("{flag} {v}: at most {}", i64::MAX))
}

/// The configuration of the run in `dir` for `--resume`, refused by the command's name when
/// the directory holds another command's run.
pub fn resume_config<C: DeserializeOwned>(dir: &std::path::Path, cmd: &str) -> Result<C> {
    let path = dir.join(io::run::CONFIG);
    let table = conf::read_table(&path).map_err(|e| invalid!("--resume {}: {e}", dir.display()))?;
    conf::from_table(table).map_err(|e| {
        invalid!(
            "--resume: {} is not the configuration of a `{cmd}` run ({e})",
            path.display()
        )
    })
}

/// Resolve the configuration and open the run directory; None after --print-config.
fn prepare<C: Serialize + DeserializeOwned>(
    a: &RunArgs,
    cmd: &str,
    defaults: (&str, &dyn Fn(&EnvName) -> String),
    preset: impl Fn(&EnvName, &str) -> Result<C>,
    set_steps: impl Fn(&mut C, usize),
    describe: impl Fn(&C) -> (String, String, u64),
    validate: impl Fn(&C) -> Result<()>,
) -> Result<Option<(C, RunDir)>> {
    let (cfg, dir) = match &a.resume {
        Some(dir) => {
            let mut cfg: C = resume_config(dir, cmd)?;
            if let Some(s) = a.steps {
                set_steps(&mut cfg, s);
            }
            (cfg, dir.clone())
        }
        None => {
            let mut flags = vec![];
            if let Some(seed) = a.seed {
                flags.push(("seed", int_flag("--seed", seed)?));
            }
            if let Some(steps) = a.steps {
                flags.push(("steps", int_flag("--steps", steps as u64)?));
            }
            let src = Sources {
                config: &a.config,
                sets: &a.sets,
                env: &a.env,
                preset: &a.preset,
                defaults,
                flags,
            };
            let cfg = resolve(src, preset)?;
            let (env, preset, seed) = describe(&cfg);
            let dir = a
                .out
                .clone()
                .unwrap_or_else(|| default_dir(cmd, &env, &preset, seed));
            (cfg, dir)
        }
    };
    validate(&cfg).map_err(|e| e.rename_setting(flag))?;
    let text = conf::to_toml(&cfg)?;
    if a.print_config {
        out!("{}", text.trim_end());
        return Ok(None);
    }
    let mode = match (&a.resume, a.force) {
        (Some(_), _) => Mode::Resume,
        (None, true) => Mode::Force,
        (None, false) => Mode::New,
    };
    let run_dir = RunDir::open(&dir, mode, &text)?;
    if mode == Mode::Resume {
        // A grown --steps is remembered for the next resume.
        run_dir.write(io::run::CONFIG, text.as_bytes())?;
    }
    Ok(Some((cfg, run_dir)))
}

fn bar(steps: usize) -> ProgressBar {
    let pb = ProgressBar::new(steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} env steps [{elapsed}<{eta}]")
            .expect("template"),
    );
    pb
}

fn row_line(r: &Row) -> String {
    let model = if r.model_loss.is_finite() {
        format!("  model {:>8.4}  k {:>2}", r.model_loss, r.rollout_length)
    } else {
        String::new()
    };
    let diverged = if r.diverged > 0 {
        format!("  ({} updates refused as non-finite)", r.diverged)
    } else {
        String::new()
    };
    // A loss is NaN in a row whose window took no gradient step of that kind (the initial
    // exploration, SVG(∞)'s absent critic): shown as "-", never as a number.
    let (critic, actor, alpha) = (
        or_dash(r.critic_loss, 8, 4),
        or_dash(r.actor_loss, 8, 3),
        or_dash(r.alpha, 6, 4),
    );
    format!(
        "env steps {:>6}  eval return {:>9.2}  critic {critic}  actor {actor}  alpha {alpha}{model}  {:>6.1} s{diverged}",
        r.env_steps, r.eval_return, r.seconds
    )
}

/// `v` right-aligned in `width` columns with `prec` decimals, or "-" there when it is not
/// finite.
fn or_dash(v: f64, width: usize, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:>width$.prec$}")
    } else {
        format!("{:>width$}", "-")
    }
}

/// The progress bar and the lines above it, for either loop.
fn progress<'a>(pb: &'a ProgressBar, dir: &'a RunDir) -> impl FnMut(Event) + 'a {
    move |ev| match ev {
        Event::Resumed { env_steps } => {
            pb.set_position(env_steps as u64);
            let d = dir.path().display();
            say(pb, format!("resuming {d} after {env_steps} env steps"));
        }
        Event::Step { env_steps } => pb.set_position(env_steps as u64),
        Event::Row(r) => say(pb, row_line(r)),
    }
}

fn finish(pb: &ProgressBar, rows: &[Row], dir: &RunDir) -> Result<()> {
    pb.finish_and_clear();
    let last = rows.last().map_or(f64::NAN, |r| r.eval_return);
    let best = rows
        .iter()
        .map(|r| r.eval_return)
        .fold(f64::NEG_INFINITY, f64::max);
    out!(
        "final evaluation return {last:.2} (best {best:.2}); run directory {}",
        dir.path().display()
    );
    Ok(())
}

/// The model's training precision against the backend, before anything is written.
fn train_on(train: &mbrl_gpu::model::TrainConfig, be: &Option<AnyBackend>) -> Result<()> {
    match be {
        Some(b) => train
            .check_backend(b.name())
            .map_err(|e| e.in_section("train")),
        None => Ok(()),
    }
}

/// The backend, resolved before anything is written: a backend that cannot start leaves no
/// run directory behind (none at all with `--print-config`, which needs none).
fn early_backend(run: &RunArgs, choice: BackendChoice) -> Result<Option<AnyBackend>> {
    if run.print_config {
        return Ok(None);
    }
    super::pick_backend(choice).map(Some)
}

pub fn run_sac(a: SacArgs) -> Result<()> {
    let be = early_backend(&a.run, a.backend)?;
    let Some((cfg, dir)) = prepare(
        &a.run,
        "sac",
        ("pendulum", &|_| "default".into()),
        sac::SacRunConfig::preset,
        |c, s| c.steps = s,
        |c| (c.env.clone(), c.preset.clone(), c.seed),
        sac::SacRunConfig::validate,
    )?
    else {
        return Ok(());
    };
    note!(
        "SAC on {} (preset {}): {} env steps, {}x{} networks, batch {}, lr {}; writing {}",
        cfg.env,
        cfg.preset,
        cfg.steps,
        cfg.sac.num_layers,
        cfg.sac.hidden,
        cfg.sac.batch_size,
        cfg.sac.lr,
        dir.path().display()
    );
    let be = be.expect("resolved unless printing the configuration");
    let pb = bar(cfg.steps);
    let (_, rows) = with_backend!(&be, |b| sac::run(b, &cfg, Some(&dir), progress(&pb, &dir)))?;
    finish(&pb, &rows, &dir)
}

pub fn run_mbpo(a: MbpoArgs) -> Result<()> {
    run_model_based(a, false)
}

pub fn run_maac(a: MbpoArgs) -> Result<()> {
    run_model_based(a, true)
}

/// `mbpo`, or with `maac` MAAC: the same loop, whose actor learns from path gradients.
fn run_model_based(a: MbpoArgs, maac: bool) -> Result<()> {
    type Preset = fn(&EnvName, &str) -> Result<mbpo::MbpoConfig>;
    let (cmd, preset): (&str, Preset) = if maac {
        ("maac", mbpo::MbpoConfig::maac_preset)
    } else {
        ("mbpo", mbpo::MbpoConfig::preset)
    };
    let be = early_backend(&a.run, a.backend)?;
    let validate = |c: &mbpo::MbpoConfig| {
        match (maac, c.maac.is_some()) {
            (false, true) => {
                return Err(invalid!(
                    "this configuration has a [maac] section: it is a `mbrl-gpu maac` run"
                ))
            }
            (true, false) => {
                return Err(invalid!(
                    "this configuration has no [maac] section: it is a `mbrl-gpu mbpo` run"
                ))
            }
            _ => {}
        }
        c.validate()?;
        train_on(&c.train, &be)
    };
    let Some((cfg, dir)) = prepare(
        &a.run,
        cmd,
        ("pendulum", &mbpo::default_preset),
        preset,
        |c, s| c.steps = s,
        |c| (c.env.clone(), c.preset.clone(), c.seed),
        validate,
    )?
    else {
        return Ok(());
    };
    let path = match &cfg.maac {
        Some(m) => format!(", actor on {}-step model path gradients", m.horizon),
        None => String::new(),
    };
    note!(
        "{} on {} (preset {}): {} env steps, model {}x{}x{} retrained every {} steps, {} rollouts per step, {} SAC updates per step{path}; writing {}",
        cmd.to_uppercase(),
        cfg.env,
        cfg.preset,
        cfg.steps,
        cfg.model.ensemble_size,
        cfg.model.num_layers,
        cfg.model.hidden,
        cfg.freq_train_model,
        cfg.effective_model_rollouts_per_step,
        cfg.num_sac_updates_per_step,
        dir.path().display()
    );
    let be = be.expect("resolved unless printing the configuration");
    let pb = bar(cfg.steps);
    let (_, rows) = with_backend!(&be, |b| mbpo::run(b, &cfg, Some(&dir), progress(&pb, &dir)))?;
    finish(&pb, &rows, &dir)
}

pub fn run_svg(a: MbpoArgs) -> Result<()> {
    let be = early_backend(&a.run, a.backend)?;
    let Some((cfg, dir)) = prepare(
        &a.run,
        "svg",
        ("pendulum", &|_| "default".into()),
        svg::SvgConfig::preset,
        |c, s| c.steps = s,
        |c| (c.env.clone(), c.preset.clone(), c.seed),
        |c: &svg::SvgConfig| {
            c.validate()?;
            train_on(&c.train, &be)
        },
    )?
    else {
        return Ok(());
    };
    note!(
        "SVG(∞) on {} (preset {}): {} env steps, model {}x{}x{}, {} policy steps per episode on {} episodes each; writing {}",
        cfg.env,
        cfg.preset,
        cfg.steps,
        cfg.model.ensemble_size,
        cfg.model.num_layers,
        cfg.model.hidden,
        cfg.updates_per_episode,
        cfg.episodes_per_update,
        dir.path().display()
    );
    let be = be.expect("resolved unless printing the configuration");
    let pb = bar(cfg.steps);
    let (_, rows) = with_backend!(&be, |b| svg::run(b, &cfg, Some(&dir), progress(&pb, &dir)))?;
    finish(&pb, &rows, &dir)
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    let env = EnvName::parse(&a.env)?;
    if a.episodes == 0 || a.episodes > 1 << 16 {
        return Err(invalid!("--episodes {}: give 1 to 65536", a.episodes));
    }
    let mut agent = mbrl_gpu::policy::checkpoint::load_policy(&a.policy)?;
    let mut copy = env.open(1)?;
    let spec = copy.spec().clone();
    if agent.nets.obs_dim != spec.obs_dim || agent.nets.act_dim != spec.act_dim {
        return Err(invalid!(
            "{}: the policy maps {} observations to {} actions, but {} has {} and {}",
            a.policy.display(),
            agent.nets.obs_dim,
            agent.nets.act_dim,
            env,
            spec.obs_dim,
            spec.act_dim
        ));
    }
    let mut returns = vec![];
    for ep in 0..a.episodes {
        let seed = a.seed.wrapping_mul(1_000_003).wrapping_add(ep as u64);
        returns.push(mbrl_gpu::algo::offpolicy::evaluate(
            &mut agent, &mut *copy, 1, seed,
        )?);
    }
    let mean = returns.iter().sum::<f64>() / returns.len() as f64;
    if a.json {
        out!(
            "{}",
            serde_json::json!({"env": env.name(), "episodes": a.episodes, "returns": returns, "mean": mean})
        );
    } else {
        for (i, r) in returns.iter().enumerate() {
            out!("episode {i:>3}  return {r:>9.2}");
        }
        out!("mean return {mean:.2} over {} episodes", a.episodes);
    }
    Ok(())
}

#[derive(Args)]
pub struct HorizonArgs {
    /// Environment: pendulum, cartpole or mountain-car (whose true dynamics are differentiated).
    #[arg(long, default_value = "pendulum")]
    env: String,
    /// MAAC preset of every run.
    #[arg(long, default_value = "quick")]
    preset: String,
    /// Environment steps of each run.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Horizons H to compare (0 is SAC's critic gradient).
    #[arg(long, value_delimiter = ',', default_value = "0,1,3,5,10")]
    horizons: Vec<usize>,
    /// Start states of the gradient comparison.
    #[arg(long, default_value_t = 256)]
    rows: usize,
    /// Seed of every run and of the comparison's start states and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Change one setting of every run: --set sac.lr=1e-3 (repeatable; `maac --print-config`
    /// shows every key).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Study directory: one run directory h<H> per horizon (an interrupted study continues
    /// where it stopped), horizons.csv and two plots [default: runs/maac-horizons-ENV-PRESET-sSEED].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Backend of the model training, branched rollouts, SAC's gradient steps and the path
    /// gradients of MAAC and SVG(∞) (bf16 SAC steps run on the CPU).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

/// Lemma 4.1 measured: one short MAAC run per horizon, then the model-path gradient of its
/// final policy against the true-dynamics gradient.
pub fn run_horizons(a: HorizonArgs) -> Result<()> {
    let env = EnvId::parse(&a.env)?;
    if a.horizons.is_empty() || a.horizons.iter().any(|h| *h > 100) {
        return Err(invalid!(
            "--horizons: give one or more horizons of at most 100"
        ));
    }
    if a.rows == 0 || a.rows > 1 << 16 {
        return Err(invalid!("--rows {}: give 1 to 65536", a.rows));
    }
    let root = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "runs/maac-horizons-{}-{}-s{}",
            env.name(),
            a.preset,
            a.seed
        ))
    });
    let be = super::pick_backend(a.backend)?;
    let mut table = vec![];
    for &h in &a.horizons {
        let src = Sources {
            config: &None,
            sets: &a.sets,
            env: &Some(a.env.clone()),
            preset: &Some(a.preset.clone()),
            defaults: ("pendulum", &|_| "quick".into()),
            flags: vec![
                ("steps", int_flag("--steps", a.steps as u64)?),
                ("seed", int_flag("--seed", a.seed)?),
            ],
        };
        let mut cfg: mbpo::MbpoConfig = resolve(src, mbpo::MbpoConfig::maac_preset)?;
        cfg.maac = Some(mbpo::MaacSettings { horizon: h });
        cfg.validate().map_err(|e| e.rename_setting(flag))?;
        if cfg.env_name()? != EnvName::Native(env) {
            return Err(invalid!(
                "--set env: the study's environment is --env {}",
                env.name()
            ));
        }
        let dir_path = root.join(format!("h{h}"));
        let mode = if dir_path.join(io::run::CONFIG).is_file() {
            Mode::Resume
        } else {
            Mode::New
        };
        let dir = RunDir::open(&dir_path, mode, &conf::to_toml(&cfg)?)?;
        note!(
            "H = {h}: MAAC for {} env steps in {}",
            cfg.steps,
            dir.path().display()
        );
        let pb = bar(cfg.steps);
        let (agent, rows) =
            with_backend!(&be, |b| mbpo::run(b, &cfg, Some(&dir), progress(&pb, &dir)))?;
        pb.finish_and_clear();
        let model = io::checkpoint::load(&dir.path().join("model.safetensors"))?;
        let e = mbrl_gpu::algo::maac::gradient_error(&agent, &model, env, h, a.rows, a.seed)?;
        let ret = rows.last().map_or(f64::NAN, |r| r.eval_return);
        out!(
            "H {h:>3}  cosine {:>7.4}  relative error {:>8.4}  |grad model| {:>9.4e}  |grad true| {:>9.4e}  final return {ret:>9.2}",
            e.cosine,
            e.relative_error,
            e.model_norm,
            e.true_norm
        );
        table.push((e, ret));
    }
    let mut csv =
        String::from("horizon,cosine,relative_error,model_grad_norm,true_grad_norm,final_return\n");
    for (e, r) in &table {
        csv += &format!(
            "{},{},{},{},{},{}\n",
            e.horizon, e.cosine, e.relative_error, e.model_norm, e.true_norm, r
        );
    }
    let write = |name: &str, text: &str| io::atomic_write(&root.join(name), text.as_bytes());
    write("horizons.csv", &csv)?;
    let pts = |f: &dyn Fn(&(mbrl_gpu::algo::maac::GradientError, f64)) -> f64| {
        table
            .iter()
            .map(|t| (t.0.horizon as f64, f(t)))
            .collect::<Vec<_>>()
    };
    let title = format!(
        "MAAC on {}: model-path gradient error (Lemma 4.1)",
        env.name()
    );
    write(
        "horizon_error.svg",
        &io::plot::learning_curve_svg(
            &title,
            "horizon H",
            "relative gradient error",
            &pts(&|t| t.0.relative_error),
        ),
    )?;
    let title = format!(
        "MAAC on {}: final return after {} env steps",
        env.name(),
        a.steps
    );
    write(
        "horizon_return.svg",
        &io::plot::learning_curve_svg(&title, "horizon H", "evaluation return", &pts(&|t| t.1)),
    )?;
    out!(
        "wrote {}/horizons.csv, horizon_error.svg, horizon_return.svg",
        root.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_without_gradient_steps_should_show_dashes_not_nan() {
        let mut r = Row {
            env_steps: 300,
            eval_return: -1343.7,
            critic_loss: f64::NAN,
            actor_loss: f64::NAN,
            alpha: f64::NAN,
            entropy: f64::NAN,
            q_mean: f64::NAN,
            model_loss: f64::NAN,
            rollout_length: 0,
            updates: 0,
            diverged: 0,
            seconds: 0.1,
        };
        let line = row_line(&r);
        assert!(!line.contains("NaN"), "{line}");
        assert!(
            line.contains("critic        -  actor        -  alpha      -"),
            "{line}"
        );
        (r.critic_loss, r.actor_loss, r.alpha) = (1.5, -2.25, 0.2);
        let line = row_line(&r);
        assert!(
            line.contains("critic   1.5000  actor   -2.250  alpha 0.2000"),
            "{line}"
        );
    }
}
