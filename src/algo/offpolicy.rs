//! What the policy-learning loops (SAC, MBPO) share: deterministic evaluation, the rows of
//! `metrics.csv`, and checkpoints that a killed run resumes from exactly.
//!
//! A checkpoint is committed at an evaluation point: the state files are written under
//! names of their own in `checkpoint/`, then `checkpoint.json` is replaced (the commit),
//! then the views a user reads (`policy.safetensors`, `critic.safetensors`, `metrics.csv`,
//! `timings.csv`, `learning_curve.svg`, and for MBPO `model.safetensors`) are rewritten
//! from the state, and finally the previous state files are removed.
use crate::backend::{Backend, Precision};
use crate::env::Env;
use crate::io::run::{RunDir, MANIFEST, STATE_DIR};
use crate::policy::device::{BranchModel, BranchSpec, DeviceReplay, DeviceSac, DeviceStats};
use crate::policy::device_path::DevicePath;
use crate::policy::sac::UpdateStats;
use crate::policy::{Replay, Sac};
use crate::{invalid, io, Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A replay buffer's transitions as the model trainer takes them.
pub(crate) fn transitions(r: &crate::policy::Replay) -> crate::model::Transitions {
    let [obs, act, reward, next_obs, _] = r.to_arrays();
    crate::model::Transitions {
        obs_dim: r.obs_dim,
        act_dim: r.act_dim,
        obs,
        act,
        next_obs,
        reward,
    }
}

/// Mean deterministic return of `episodes` evaluation episodes (the mean action,
/// `scale·tanh(μ) + bias`), on their own reset seeds, in `env` (one copy).
pub fn evaluate(agent: &mut Sac, env: &mut dyn Env, episodes: usize, seed: u64) -> Result<f64> {
    let mut total = 0.0f64;
    for ep in 0..episodes {
        let s = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0xE7A1_0000 + ep as u64);
        let mut obs = env.reset(&[s])?;
        loop {
            let a = agent.act(&obs, 1, None);
            let tr = env.step(&a)?.remove(0);
            total += tr.reward as f64;
            obs = tr.obs;
            if tr.terminated || tr.truncated {
                break;
            }
        }
    }
    Ok(total / episodes.max(1) as f64)
}

/// One row of `metrics.csv` (a function of the configuration and seed) and of
/// `timings.csv` (wall clock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub env_steps: usize,
    #[serde(with = "nan_as_null")]
    pub eval_return: f64,
    /// Means over the gradient steps since the previous row (NaN when there were none).
    #[serde(with = "nan_as_null")]
    pub critic_loss: f64,
    #[serde(with = "nan_as_null")]
    pub actor_loss: f64,
    #[serde(with = "nan_as_null")]
    pub alpha: f64,
    #[serde(with = "nan_as_null")]
    pub entropy: f64,
    #[serde(with = "nan_as_null")]
    pub q_mean: f64,
    /// Last model training loss (MBPO; NaN for SAC).
    #[serde(with = "nan_as_null")]
    pub model_loss: f64,
    /// Model rollout length k (MBPO; 0 for SAC).
    pub rollout_length: usize,
    /// Gradient steps taken so far.
    pub updates: u64,
    /// Gradient steps refused as non-finite since the previous row.
    pub diverged: u64,
    pub seconds: f64,
}

/// JSON has no NaN: non-finite numbers are stored as `null`.
pub(crate) mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_some(v)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Progress callbacks of the SAC and MBPO loops.
pub enum Event<'a> {
    /// The run continues from a checkpoint after this many env steps.
    Resumed {
        env_steps: usize,
    },
    Step {
        env_steps: usize,
    },
    Row(&'a Row),
}

/// Running means of the update statistics between two rows.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    n: u64,
    sum: UpdateStats,
    pub diverged: u64,
}

impl Stats {
    pub fn add(&mut self, s: &UpdateStats) {
        self.n += 1;
        self.sum.critic_loss += s.critic_loss;
        self.sum.actor_loss += s.actor_loss;
        self.sum.alpha += s.alpha;
        self.sum.entropy += s.entropy;
        self.sum.q_mean += s.q_mean;
    }

    /// A row from the means, and a fresh accumulator.
    pub fn take_row(&mut self, env_steps: usize, eval_return: f64, updates: u64) -> Row {
        let n = self.n as f64;
        let mean = |v: f64| if self.n == 0 { f64::NAN } else { v / n };
        let row = Row {
            env_steps,
            eval_return,
            critic_loss: mean(self.sum.critic_loss),
            actor_loss: mean(self.sum.actor_loss),
            alpha: mean(self.sum.alpha),
            entropy: mean(self.sum.entropy),
            q_mean: mean(self.sum.q_mean),
            model_loss: f64::NAN,
            rollout_length: 0,
            updates,
            diverged: self.diverged,
            seconds: 0.0,
        };
        *self = Stats::default();
        row
    }

    /// Add a device agent's statistics since its last sync.
    fn add_device(&mut self, s: &DeviceStats) {
        let n = s.updates as f64;
        self.n += s.updates;
        self.sum.critic_loss += s.critic_loss * n;
        self.sum.actor_loss += s.actor_loss * n;
        self.sum.alpha += s.alpha * n;
        self.sum.entropy += s.entropy * n;
        self.sum.q_mean += s.q_mean * n;
        self.diverged += s.diverged;
    }
}

/// Where SAC's gradient steps run. On the CPU backend, and for bf16 products (which only the
/// CPU runs), the host agent steps itself and refuses non-finite steps one at a time
/// ([`super::sac::update`]). On a device its copy there steps ([`DeviceSac`]), and the host
/// agent is refreshed from it: the actor before every action (exploration and model
/// rollouts act with the current policy), everything at evaluation points, where a
/// non-finite copy is rolled back to the last evaluation's values.
pub(crate) enum Trainer<'b, B: Backend> {
    Host,
    Device {
        sac: Box<DeviceSac<'b, B>>,
        /// Device mirrors of the replay buffers updates draw from (MBPO: real, model).
        rings: Vec<DeviceReplay<B::Buf>>,
        /// Consecutive syncs that rolled back.
        rollbacks: u32,
        /// MAAC: the elites as of the last model training, and the path buffers.
        elites: Option<Box<DeviceElites<B::Buf>>>,
        path: Option<Box<DevicePath<B::Buf>>>,
    },
}

/// The elite members on the device (`mbpo::elite_view`'s parameters, the inputs'
/// normalisation [mean, std]).
pub(crate) struct DeviceElites<Buf> {
    shape: crate::backend::EnsembleShape,
    params: Buf,
    norm: Buf,
}

impl<'b, B: Backend> Trainer<'b, B> {
    pub fn new(be: &'b B, agent: &Sac) -> Result<Self> {
        if be.name() == "cpu" || agent.cfg.precision != Precision::F32 {
            return Ok(Trainer::Host);
        }
        Ok(Trainer::Device {
            sac: Box::new(DeviceSac::new(be, agent)?),
            rings: vec![],
            rollbacks: 0,
            elites: None,
            path: None,
        })
    }

    /// MAAC: the elites of `model` (just trained) to the device for the path updates; a
    /// no-op on the host, whose path updates read the model there.
    pub fn set_path_model(&mut self, model: &crate::model::Ensemble) -> Result<()> {
        let Trainer::Device { sac, elites, .. } = self else {
            return Ok(());
        };
        let be = sac.backend();
        let (shape, params) = super::mbpo::elite_view(model);
        *elites = Some(Box::new(DeviceElites {
            shape,
            params: be.upload(&params)?,
            norm: be.upload(&model.norm())?,
        }));
        Ok(())
    }

    /// MAAC's gradient step on the device ([`DeviceSac::path_update_from`]) on the minibatch
    /// `replay.sample(seed, stream, step, rows)` through the elites last set; false on the
    /// host (or before a model exists), where the caller runs the CPU specification.
    #[allow(clippy::too_many_arguments)]
    pub fn path_update_from(
        &mut self,
        agent: &mut Sac,
        ring: usize,
        replay: &Replay,
        draw: (u64, u32, u32),
        rows: usize,
        horizon: usize,
        task: u32,
        learn_reward: bool,
    ) -> Result<bool> {
        let Trainer::Device {
            sac,
            rings,
            elites: Some(el),
            path,
            ..
        } = self
        else {
            return Ok(false);
        };
        let be = sac.backend();
        while rings.len() <= ring {
            rings.push(DeviceReplay::empty(be)?);
        }
        rings[ring].sync(be, replay)?;
        let fits = path.as_ref().is_some_and(|p| {
            let s = p.shape();
            (s.rows, s.members, s.out_dim, s.horizon)
                == (rows, el.shape.ensemble, el.shape.out_dim, horizon)
        });
        if !fits {
            let made = sac.path_buffers(rows, el.shape.ensemble, el.shape.out_dim, horizon)?;
            *path = Some(Box::new(made));
        }
        let model = BranchModel {
            shape: el.shape,
            params: &el.params,
            norm: &el.norm,
        };
        let path = path.as_mut().expect("made above");
        sac.path_update_from(&rings[ring], draw, rows, path, &model, task, learn_reward)?;
        agent.updates = sac.updates;
        Ok(true)
    }

    /// One gradient step on the minibatch `replay.sample(seed, stream, step, rows)`; on a
    /// device it is drawn there, from mirror `ring` of `replay` (updated first with the rows
    /// written since).
    #[allow(clippy::too_many_arguments)]
    pub fn update_from(
        &mut self,
        agent: &mut Sac,
        ring: usize,
        replay: &Replay,
        (seed, stream, step): (u64, u32, u32),
        rows: usize,
        stats: &mut Stats,
    ) -> Result<()> {
        match self {
            Trainer::Host => {
                let batch = replay.sample(seed, stream, step, rows);
                super::sac::update(agent, &batch, stats)
            }
            Trainer::Device { sac, rings, .. } => {
                let be = sac.backend();
                while rings.len() <= ring {
                    rings.push(DeviceReplay::empty(be)?);
                }
                rings[ring].sync(be, replay)?;
                sac.update_from(&rings[ring], seed, stream, step, rows)?;
                agent.updates = sac.updates;
                Ok(())
            }
        }
    }

    /// MBPO's branched rollout on the device ([`DeviceSac::branch`]) from the mirror of
    /// `env_data` into the mirror of `model_data` (rings 0 and 1), `model_data` brought level
    /// with it. `None` on the host, where the caller runs the CPU specification
    /// ([`super::mbpo::branched_rollout`]).
    pub fn branch(
        &mut self,
        spec: &BranchSpec,
        model: &crate::model::Ensemble,
        env_data: &Replay,
        model_data: &mut Replay,
    ) -> Result<Option<usize>> {
        let Trainer::Device { sac, rings, .. } = self else {
            return Ok(None);
        };
        let be = sac.backend();
        while rings.len() < 2 {
            rings.push(DeviceReplay::empty(be)?);
        }
        rings[0].sync(be, env_data)?;
        rings[1].sync(be, model_data)?;
        let (shape, params) = super::mbpo::elite_view(model);
        let params = be.upload(&params)?;
        let norm = be.upload(&model.norm())?;
        let view = BranchModel {
            shape,
            params: &params,
            norm: &norm,
        };
        let (start, out) = rings.split_at_mut(1);
        sac.branch(spec, &view, &start[0], &mut out[0], model_data)
            .map(Some)
    }

    /// The host agent's actor made current, before it acts.
    pub fn refresh_actor(&mut self, agent: &mut Sac) -> Result<()> {
        match self {
            Trainer::Host => Ok(()),
            Trainer::Device { sac, .. } => sac.read_actor(&mut agent.actor),
        }
    }

    /// The host agent made current (before evaluating and checkpointing), the statistics
    /// since the last sync added to `stats`. Two rollbacks in a row stop the run.
    pub fn sync(&mut self, agent: &mut Sac, stats: &mut Stats) -> Result<()> {
        let Trainer::Device { sac, rollbacks, .. } = self else {
            return Ok(());
        };
        let s = sac.sync(agent)?;
        stats.add_device(&s);
        if s.diverged == 0 {
            *rollbacks = 0;
            return Ok(());
        }
        *rollbacks += 1;
        if *rollbacks >= 2 {
            return Err(Error::Diverged(format!(
                "SAC's parameters became non-finite twice in a row on the device ({} updates \
                 rolled back last time); the last good agent is kept",
                s.diverged
            )));
        }
        Ok(())
    }
}

/// `checkpoint.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest<C, S> {
    format: String,
    config: C,
    /// Role → state file, relative to the run directory.
    files: BTreeMap<String, String>,
    rows: Vec<Row>,
    /// The loop's own counters.
    state: S,
}

/// The views a user reads, besides the metrics.
pub struct Views {
    pub policy: Vec<u8>,
    /// None for SVG(∞), which learns no critic (so no untrained critic file is written).
    pub critic: Option<Vec<u8>>,
    pub model: Option<Vec<u8>>,
    pub title: &'static str,
}

/// Commit checkpoint `rows.len() − 1`: `files` (role, bytes) are written as
/// `checkpoint/ROLE-NNNN.safetensors`, then the manifest, then the views.
pub fn commit<C: Serialize, S: Serialize>(
    dir: &RunDir,
    format: &str,
    cfg: &C,
    state: &S,
    files: Vec<(&str, Vec<u8>)>,
    rows: &[Row],
    views: &Views,
) -> Result<()> {
    let k = rows.len().saturating_sub(1);
    let mut names = BTreeMap::new();
    for (role, bytes) in files {
        let name = format!("{STATE_DIR}/{role}-{k:04}.safetensors");
        dir.write(&name, &bytes)?;
        names.insert(role.to_string(), name);
    }
    let m = Manifest {
        format: format.into(),
        config: cfg,
        files: names.clone(),
        rows: rows.to_vec(),
        state,
    };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| invalid!("manifest: {e}"))?;
    dir.write(MANIFEST, &json)?;
    write_views(dir, rows, views)?;
    let keep: Vec<&str> = names.values().map(String::as_str).collect();
    dir.prune_state(&keep)
}

/// Rewrite the views from the state: the networks before the metrics, so the metrics never
/// report a row whose policy is not on disk yet.
pub fn write_views(dir: &RunDir, rows: &[Row], v: &Views) -> Result<()> {
    dir.write("policy.safetensors", &v.policy)?;
    if let Some(c) = &v.critic {
        dir.write("critic.safetensors", c)?;
    }
    if let Some(m) = &v.model {
        dir.write("model.safetensors", m)?;
    }
    let mut csv = String::from(
        "env_steps,eval_return,critic_loss,actor_loss,alpha,entropy,q_mean,model_loss,\
         rollout_length,updates,diverged\n",
    );
    let mut times = String::from("env_steps,seconds\n");
    for r in rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            r.env_steps,
            r.eval_return,
            r.critic_loss,
            r.actor_loss,
            r.alpha,
            r.entropy,
            r.q_mean,
            r.model_loss,
            r.rollout_length,
            r.updates,
            r.diverged
        ));
        times.push_str(&format!("{},{:.3}\n", r.env_steps, r.seconds));
    }
    dir.write("metrics.csv", csv.as_bytes())?;
    dir.write("timings.csv", times.as_bytes())?;
    let points: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.env_steps as f64, r.eval_return))
        .collect();
    let svg = io::plot::learning_curve_svg(
        v.title,
        "environment steps",
        "mean evaluation return (deterministic policy)",
        &points,
    );
    dir.write("learning_curve.svg", svg.as_bytes())
}

/// A loaded checkpoint: the state files' bytes and names by role, the rows and the loop's
/// counters.
pub struct Loaded<S> {
    pub files: BTreeMap<String, Vec<u8>>,
    pub names: BTreeMap<String, String>,
    pub rows: Vec<Row>,
    pub state: S,
}

/// The run's last checkpoint, its configuration checked against `cfg` with `same`
/// (which may ignore settings a resume is allowed to change); None when none was committed.
pub fn load<C, S>(
    dir: &RunDir,
    format: &str,
    cfg: &C,
    same: impl Fn(&C, &C) -> bool,
    roles: &[&str],
) -> Result<Option<Loaded<S>>>
where
    C: Serialize + DeserializeOwned,
    S: DeserializeOwned,
{
    let Some(bytes) = dir.read(MANIFEST)? else {
        dir.prune_state(&[])?;
        return Ok(None);
    };
    let path = dir.path().join(MANIFEST);
    let bad = |msg: String| invalid!("{}: {msg}", path.display());
    let m: Manifest<C, S> = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a {format} manifest ({e})")))?;
    if m.format != format {
        return Err(bad(format!("format {:?}, expected {format:?}", m.format)));
    }
    if !same(&m.config, cfg) {
        let diff = io::config::differences(&m.config, cfg)?;
        return Err(bad(format!(
            "the run was started with other settings ({}); resume it with its own config.toml",
            diff.join(", ")
        )));
    }
    if m.rows.is_empty() {
        return Err(bad("the checkpoint holds no evaluation rows".into()));
    }
    let mut files = BTreeMap::new();
    for role in roles {
        let name = m
            .files
            .get(*role)
            .ok_or_else(|| bad(format!("no {role} state file")))?;
        // Only names of the form the writer uses: a crafted manifest cannot point elsewhere.
        let ok = name.starts_with(&format!("{STATE_DIR}/"))
            && !name[STATE_DIR.len() + 1..].contains(['/', '\\'])
            && !name.contains("..");
        if !ok {
            return Err(bad(format!("state file {name:?} is outside {STATE_DIR}/")));
        }
        let b = dir
            .read(name)?
            .ok_or_else(|| bad(format!("state file {name} is missing")))?;
        files.insert(role.to_string(), b);
    }
    let keep: Vec<&str> = m.files.values().map(String::as_str).collect();
    dir.prune_state(&keep)?;
    Ok(Some(Loaded {
        files,
        names: m.files,
        rows: m.rows,
        state: m.state,
    }))
}

impl<S> Loaded<S> {
    /// Parse the state file of `role`, naming the file in the error.
    pub fn parse<T>(
        &self,
        dir: &RunDir,
        role: &str,
        f: impl Fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<T> {
        f(&self.files[role]).map_err(|msg| crate::Error::Checkpoint {
            path: dir.path().join(&self.names[role]),
            msg,
        })
    }
}

/// A uniformly random action in the box (Philox stream RANDOM_ACTION at (element, step)).
pub fn random_action(seed: u64, low: &[f32], high: &[f32], step: u32) -> Vec<f32> {
    (0..low.len())
        .map(|j| {
            let u = crate::rng::uniform(seed, crate::rng::stream::RANDOM_ACTION, j as u32, step);
            low[j] + u * (high[j] - low[j])
        })
        .collect()
}

/// Reset seed of training episode `episode`.
pub fn episode_seed(seed: u64, episode: u64) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(episode)
}
