//! SAC files in safetensors.
//!
//! The policy and critic files use the parameter names of pranz24's PyTorch SAC (the one
//! mbrl-lib's MBPO runs), with PyTorch's `[out, in]` weight layout, so
//! `GaussianPolicy(obs_dim, act_dim, hidden).load_state_dict(safetensors.torch.load_file(..))`
//! loads a policy trained here:
//!
//! | file | tensor | shape |
//! |---|---|---|
//! | `policy.safetensors` | `linear{i}.weight`, `linear{i}.bias`, i = 1..L | [H, in], [H] |
//! | | `mean_linear.weight`, `mean_linear.bias` | [A, H], [A] |
//! | | `log_std_linear.weight`, `log_std_linear.bias` | [A, H], [A] |
//! | `critic.safetensors` | `linear{i}.*`, i = 1..L+1 (Q₁), L+2..2L+2 (Q₂) | [out, in], [out] |
//!
//! (L = `num_layers`, 2 in pranz24.) Metadata: `format`, `config` (the [`SacConfig`] JSON),
//! `obs_dim`, `action_low`, `action_high` (JSON lists; `action_scale`/`action_bias` of
//! pranz24 are (high − low)/2 and (high + low)/2).
//!
//! `agent.safetensors` (format `mbrl-gpu/sac-agent/1`) is the whole training state for
//! `--resume`: the flat parameter vectors of actor, critics and target critics, log α, and
//! the three Adam states, in this crate's own layout.
use super::sac::{AdamState, Nets, Sac, SacConfig};
use crate::backend::EnsembleShape;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

pub const POLICY_FORMAT: &str = "mbrl-gpu/sac-policy/1";
pub const CRITIC_FORMAT: &str = "mbrl-gpu/sac-critic/1";
pub const AGENT_FORMAT: &str = "mbrl-gpu/sac-agent/1";

/// Largest file read: 2^30 f32 values is far above any SAC network this crate trains.
const MAX_FILE_BYTES: u64 = 4 << 30;

type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

fn serialize(tensors: &Named, meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(v))
                .map(|t| (n.clone(), t))
                .map_err(|e| crate::invalid!("building tensor {n}: {e}"))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| crate::invalid!("serialising: {e}"))?;
    Ok(crate::io::canonical_safetensors(bytes))
}

/// Member `e`'s layer `l` in PyTorch layout: (weight [out, in], bias [out]) for output
/// columns `cols` of the layer.
fn torch_layer(
    shape: &EnsembleShape,
    params: &[f32],
    l: usize,
    e: usize,
    cols: std::ops::Range<usize>,
) -> (Vec<f32>, Vec<f32>) {
    let lo = shape.layout().layers[l];
    let (fi, fo) = (lo.fan_in, lo.fan_out);
    let w = &params[lo.weight + e * fi * fo..][..fi * fo];
    let b = &params[lo.bias + e * fo..][..fo];
    let mut wt = Vec::with_capacity(cols.len() * fi);
    for c in cols.clone() {
        wt.extend((0..fi).map(|k| w[k * fo + c]));
    }
    (wt, b[cols].to_vec())
}

/// Inverse of [`torch_layer`]: write a PyTorch-layout layer into the flat parameters.
fn set_torch_layer(
    shape: &EnsembleShape,
    params: &mut [f32],
    l: usize,
    e: usize,
    cols: std::ops::Range<usize>,
    wt: &[f32],
    b: &[f32],
) {
    let lo = shape.layout().layers[l];
    let (fi, fo) = (lo.fan_in, lo.fan_out);
    for (r, c) in cols.enumerate() {
        for k in 0..fi {
            params[lo.weight + e * fi * fo + k * fo + c] = wt[r * fi + k];
        }
        params[lo.bias + e * fo + c] = b[r];
    }
}

/// (name, shape, member, layer, columns) of every tensor of the policy file.
fn policy_plan(nets: &Nets) -> Vec<(String, Vec<usize>, usize, std::ops::Range<usize>)> {
    let s = &nets.actor;
    let a = nets.act_dim;
    let mut v = vec![];
    for (l, (fi, fo)) in s.layer_dims().into_iter().enumerate() {
        if l < s.num_layers {
            v.push((format!("linear{}", l + 1), vec![fo, fi], l, 0..fo));
        } else {
            v.push(("mean_linear".into(), vec![a, fi], l, 0..a));
            v.push(("log_std_linear".into(), vec![a, fi], l, a..2 * a));
        }
    }
    v
}

fn meta(sac: &Sac, format: &str) -> HashMap<String, String> {
    let low: Vec<f32> = (0..sac.nets.act_dim)
        .map(|j| sac.squash.bias[j] - sac.squash.scale[j])
        .collect();
    let high: Vec<f32> = (0..sac.nets.act_dim)
        .map(|j| sac.squash.bias[j] + sac.squash.scale[j])
        .collect();
    HashMap::from([
        ("format".into(), format.into()),
        (
            "config".into(),
            serde_json::to_string(&sac.cfg).expect("config serialises"),
        ),
        ("obs_dim".into(), sac.nets.obs_dim.to_string()),
        (
            "action_low".into(),
            serde_json::to_string(&low).expect("f32 list"),
        ),
        (
            "action_high".into(),
            serde_json::to_string(&high).expect("f32 list"),
        ),
    ])
}

fn refuse_non_finite(sac: &Sac) -> Result<()> {
    if !sac.is_finite() {
        return Err(crate::invalid!(
            "refusing to save a SAC agent with non-finite parameters"
        ));
    }
    Ok(())
}

/// The actor in pranz24's `GaussianPolicy` names (see the module table).
pub fn policy_bytes(sac: &Sac) -> Result<Vec<u8>> {
    refuse_non_finite(sac)?;
    let mut t: Named = vec![];
    for (name, shape, l, cols) in policy_plan(&sac.nets) {
        let (w, b) = torch_layer(&sac.nets.actor, &sac.actor, l, 0, cols);
        t.push((format!("{name}.weight"), shape.clone(), w));
        t.push((format!("{name}.bias"), vec![shape[0]], b));
    }
    serialize(&t, meta(sac, POLICY_FORMAT))
}

/// The twin critics in pranz24's `QNetwork` names.
pub fn critic_bytes(sac: &Sac) -> Result<Vec<u8>> {
    refuse_non_finite(sac)?;
    let s = &sac.nets.critic;
    let per = s.num_layers + 1;
    let mut t: Named = vec![];
    for e in 0..2 {
        for (l, (fi, fo)) in s.layer_dims().into_iter().enumerate() {
            let (w, b) = torch_layer(s, &sac.critic, l, e, 0..fo);
            let i = e * per + l + 1;
            t.push((format!("linear{i}.weight"), vec![fo, fi], w));
            t.push((format!("linear{i}.bias"), vec![fo], b));
        }
    }
    serialize(&t, meta(sac, CRITIC_FORMAT))
}

/// The whole training state (see the module documentation).
pub fn agent_bytes(sac: &Sac) -> Result<Vec<u8>> {
    refuse_non_finite(sac)?;
    let flat = |n: &str, v: &[f32]| (n.to_string(), vec![v.len()], v.to_vec());
    let t: Named = vec![
        flat("actor", &sac.actor),
        flat("critic", &sac.critic),
        flat("critic_target", &sac.critic_target),
        flat("log_alpha", &[sac.log_alpha]),
        flat("actor_adam_m", &sac.actor_opt.m),
        flat("actor_adam_v", &sac.actor_opt.v),
        flat("critic_adam_m", &sac.critic_opt.m),
        flat("critic_adam_v", &sac.critic_opt.v),
        flat("alpha_adam_m", &sac.alpha_opt.m),
        flat("alpha_adam_v", &sac.alpha_opt.v),
    ];
    let mut m = meta(sac, AGENT_FORMAT);
    m.insert("updates".into(), sac.updates.to_string());
    m.insert("seed".into(), sac.seed.to_string());
    m.insert(
        "adam_steps".into(),
        serde_json::to_string(&[sac.actor_opt.step, sac.critic_opt.step, sac.alpha_opt.step])
            .expect("list"),
    );
    serialize(&t, m)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("{len} bytes is larger than any SAC file can be"),
        });
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Header checks shared by the readers: format, config, dimensions and bounds. Returns a
/// fresh agent of that shape (parameters to be overwritten) and the parsed file.
fn open<'a>(
    bytes: &'a [u8],
    format: &str,
) -> std::result::Result<(Sac, SafeTensors<'a>, HashMap<String, String>), String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or("no metadata: not an mbrl-gpu SAC file")?;
    match meta.get("format") {
        Some(f) if f == format => {}
        Some(f) => return Err(format!("format is {f:?}, expected {format:?}")),
        None => return Err("no `format` metadata: not an mbrl-gpu SAC file".into()),
    }
    let get = |k: &str| meta.get(k).ok_or(format!("no `{k}` metadata"));
    let cfg: SacConfig = serde_json::from_str(get("config")?)
        .map_err(|e| format!("config metadata is not a SAC config: {e}"))?;
    let obs_dim: usize = get("obs_dim")?
        .parse()
        .map_err(|e| format!("obs_dim metadata: {e}"))?;
    if obs_dim == 0 || obs_dim > 1 << 16 {
        return Err(format!("obs_dim metadata is {obs_dim}; expected 1..=65536"));
    }
    let low: Vec<f32> =
        serde_json::from_str(get("action_low")?).map_err(|e| format!("action_low: {e}"))?;
    let high: Vec<f32> =
        serde_json::from_str(get("action_high")?).map_err(|e| format!("action_high: {e}"))?;
    if low.len() > 1 << 16 {
        return Err("action_low metadata is longer than any action space".into());
    }
    let seed = meta.get("seed").and_then(|s| s.parse().ok()).unwrap_or(0);
    let sac = Sac::new(cfg, obs_dim, &low, &high, seed).map_err(|e| e.to_string())?;
    Ok((sac, st, meta))
}

fn tensor(st: &SafeTensors, name: &str, shape: &[usize]) -> std::result::Result<Vec<f32>, String> {
    let t = st
        .tensor(name)
        .map_err(|_| format!("missing tensor {name:?}"))?;
    if !matches!(t.dtype(), Dtype::F32 | Dtype::F64) || t.shape() != shape {
        return Err(format!(
            "tensor {name:?} is {:?} {:?}, expected F32 (or F64) {shape:?}",
            t.dtype(),
            t.shape()
        ));
    }
    // A float64 state dict (`model.double()`) is accepted and rounded to f32.
    let v: Vec<f32> = if t.dtype() == Dtype::F32 {
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    } else {
        t.data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect()
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!("tensor {name:?} holds a non-finite value at {i}"));
    }
    Ok(v)
}

fn no_extra(st: &SafeTensors, expected: usize) -> std::result::Result<(), String> {
    if st.len() != expected {
        return Err(format!(
            "{} tensors where {expected} were expected",
            st.len()
        ));
    }
    Ok(())
}

/// A policy file back into an agent whose actor holds it (critics fresh). Any byte string
/// gives `Ok` or `Err`, never a panic.
pub fn policy_from_bytes(bytes: &[u8]) -> std::result::Result<Sac, String> {
    let (mut sac, st, _) = open(bytes, POLICY_FORMAT)?;
    let plan = policy_plan(&sac.nets);
    no_extra(&st, 2 * plan.len())?;
    for (name, shape, l, cols) in plan {
        let w = tensor(&st, &format!("{name}.weight"), &shape)?;
        let b = tensor(&st, &format!("{name}.bias"), &shape[..1])?;
        set_torch_layer(&sac.nets.actor, &mut sac.actor, l, 0, cols, &w, &b);
    }
    Ok(sac)
}

/// A policy from its file, or from the run directory holding `policy.safetensors`.
pub fn load_policy(path: &Path) -> Result<Sac> {
    let path = &crate::io::file_or_in_dir(path, "policy.safetensors")?;
    policy_from_bytes(&read_file(path)?).map_err(|msg| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    })
}

/// A critic file back into an agent whose critics (and target critics) hold it (actor
/// fresh).
pub fn critic_from_bytes(bytes: &[u8]) -> std::result::Result<Sac, String> {
    let (mut sac, st, _) = open(bytes, CRITIC_FORMAT)?;
    let s = sac.nets.critic;
    let per = s.num_layers + 1;
    no_extra(&st, 2 * 2 * per)?;
    for e in 0..2 {
        for (l, (fi, fo)) in s.layer_dims().into_iter().enumerate() {
            let i = e * per + l + 1;
            let w = tensor(&st, &format!("linear{i}.weight"), &[fo, fi])?;
            let b = tensor(&st, &format!("linear{i}.bias"), &[fo])?;
            set_torch_layer(&s, &mut sac.critic, l, e, 0..fo, &w, &b);
        }
    }
    sac.critic_target = sac.critic.clone();
    Ok(sac)
}

pub fn load_critic(path: &Path) -> Result<Sac> {
    critic_from_bytes(&read_file(path)?).map_err(|msg| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    })
}

/// A planner's terminal value from the run directory `dir` of `sac`, `mbpo` or `maac`: its
/// policy (for the deterministic action) and critics, checked to belong together and to an
/// environment of `obs_dim` observations and `act_dim` actions. `what` names the flag or
/// setting in messages (`--terminal-value`, `terminal_value`).
pub fn load_terminal_value(
    what: &str,
    dir: &Path,
    env: &str,
    obs_dim: usize,
    act_dim: usize,
) -> Result<crate::backend::TerminalValue> {
    if !dir.is_dir() {
        return Err(crate::invalid!(
            "{what} {}: not a directory; give the run directory of `sac`, `mbpo` or `maac` \
             (it holds policy.safetensors and critic.safetensors)",
            dir.display()
        ));
    }
    let (pp, cp) = (
        dir.join("policy.safetensors"),
        dir.join("critic.safetensors"),
    );
    for f in [&pp, &cp] {
        if !f.is_file() {
            return Err(crate::invalid!(
                "{what} {}: no {} there; `sac`, `mbpo` and `maac` write it at their first \
                 evaluation (`svg` learns no critic)",
                dir.display(),
                f.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ));
        }
    }
    let mut agent = load_policy(&pp)?;
    let critic = load_critic(&cp)?;
    if critic.nets != agent.nets {
        let nets = |n: &Nets| {
            format!(
                "{} observations, {} actions, {}×{} {:?}",
                n.obs_dim, n.act_dim, n.critic.num_layers, n.critic.hidden, n.critic.activation
            )
        };
        return Err(Error::Shape(format!(
            "{what} {}: critic.safetensors ({}) and policy.safetensors ({}) are not of one \
             agent",
            dir.display(),
            nets(&critic.nets),
            nets(&agent.nets)
        )));
    }
    let (o, a) = (agent.nets.obs_dim, agent.nets.act_dim);
    if (o, a) != (obs_dim, act_dim) {
        return Err(Error::Shape(format!(
            "{what} {}: the agent was trained on {o} observation and {a} action values, but \
             {env} has {obs_dim} and {act_dim}: it belongs to another environment",
            dir.display()
        )));
    }
    agent.critic = critic.critic;
    let v = super::sac::CriticValue::from_agent(&agent);
    Ok(crate::backend::TerminalValue {
        gamma: v.gamma,
        value: std::sync::Arc::new(v),
    })
}

/// The whole training state back.
pub fn agent_from_bytes(bytes: &[u8]) -> std::result::Result<Sac, String> {
    let (mut sac, st, meta) = open(bytes, AGENT_FORMAT)?;
    no_extra(&st, 10)?;
    let (na, nc) = (sac.actor.len(), sac.critic.len());
    sac.actor = tensor(&st, "actor", &[na])?;
    sac.critic = tensor(&st, "critic", &[nc])?;
    sac.critic_target = tensor(&st, "critic_target", &[nc])?;
    sac.log_alpha = tensor(&st, "log_alpha", &[1])?[0];
    let steps: [u32; 3] = serde_json::from_str(meta.get("adam_steps").ok_or("no adam_steps")?)
        .map_err(|e| format!("adam_steps: {e}"))?;
    let adam = |m: &str, v: &str, n: usize, step: u32| -> std::result::Result<AdamState, String> {
        Ok(AdamState {
            m: tensor(&st, m, &[n])?,
            v: tensor(&st, v, &[n])?,
            step,
        })
    };
    sac.actor_opt = adam("actor_adam_m", "actor_adam_v", na, steps[0])?;
    sac.critic_opt = adam("critic_adam_m", "critic_adam_v", nc, steps[1])?;
    sac.alpha_opt = adam("alpha_adam_m", "alpha_adam_v", 1, steps[2])?;
    if sac
        .actor_opt
        .v
        .iter()
        .chain(&sac.critic_opt.v)
        .any(|v| *v < 0.0)
    {
        return Err("an Adam second moment is negative".into());
    }
    sac.updates = meta
        .get("updates")
        .ok_or("no updates metadata")?
        .parse()
        .map_err(|e| format!("updates metadata: {e}"))?;
    Ok(sac)
}

pub fn load_agent(path: &Path) -> Result<Sac> {
    agent_from_bytes(&read_file(path)?).map_err(|msg| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    })
}

pub const REPLAY_FORMAT: &str = "mbrl-gpu/replay/1";

/// A replay buffer: tensors `obs` [N, O], `act` [N, A], `reward` [N], `next_obs` [N, O],
/// `terminated` [N] (0/1) in insertion order; metadata `capacity` and `written` (rows ever
/// added), which fix the ring position, so a resumed run draws the same minibatches.
pub fn replay_bytes(r: &super::Replay) -> Result<Vec<u8>> {
    let [obs, act, reward, next_obs, term] = r.to_arrays();
    if [&obs, &act, &reward, &next_obs]
        .iter()
        .any(|v| v.iter().any(|x| !x.is_finite()))
    {
        return Err(crate::invalid!(
            "refusing to save a replay buffer holding non-finite values"
        ));
    }
    let n = reward.len();
    let t: Named = vec![
        ("obs".into(), vec![n, r.obs_dim], obs),
        ("act".into(), vec![n, r.act_dim], act),
        ("reward".into(), vec![n], reward),
        ("next_obs".into(), vec![n, r.obs_dim], next_obs),
        ("terminated".into(), vec![n], term),
    ];
    let meta = HashMap::from([
        ("format".to_string(), REPLAY_FORMAT.to_string()),
        ("capacity".to_string(), r.capacity().to_string()),
        ("written".to_string(), r.written().to_string()),
    ]);
    serialize(&t, meta)
}

/// A replay buffer back, checked against the dimensions the caller expects.
pub fn replay_from_bytes(
    bytes: &[u8],
    obs_dim: usize,
    act_dim: usize,
) -> std::result::Result<super::Replay, String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let meta = header.metadata().clone().ok_or("no metadata")?;
    if meta.get("format").map(String::as_str) != Some(REPLAY_FORMAT) {
        return Err(format!("format is not {REPLAY_FORMAT:?}"));
    }
    let num = |k: &str| -> std::result::Result<usize, String> {
        meta.get(k)
            .ok_or(format!("no `{k}` metadata"))?
            .parse()
            .map_err(|e| format!("{k} metadata: {e}"))
    };
    let (capacity, written) = (num("capacity")?, num("written")?);
    no_extra(&st, 5)?;
    let n = st
        .tensor("reward")
        .map_err(|_| "missing tensor \"reward\"".to_string())?
        .shape()
        .first()
        .copied()
        .unwrap_or(0);
    let arrays = [
        tensor(&st, "obs", &[n, obs_dim])?,
        tensor(&st, "act", &[n, act_dim])?,
        tensor(&st, "reward", &[n])?,
        tensor(&st, "next_obs", &[n, obs_dim])?,
        tensor(&st, "terminated", &[n])?,
    ];
    super::Replay::from_arrays(obs_dim, act_dim, capacity, written, arrays)
        .ok_or_else(|| format!("{n} rows do not fit capacity {capacity} with {written} written"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Sac {
        let cfg = SacConfig {
            hidden: 6,
            ..SacConfig::default()
        };
        let mut s = Sac::new(cfg, 3, &[-2.0, 0.0], &[2.0, 1.0], 5).unwrap();
        s.critic_target[3] = 0.25;
        s.updates = 17;
        s.actor_opt.step = 4;
        s
    }

    #[test]
    fn policy_should_round_trip_and_act_the_same() {
        let mut s = agent();
        let mut back = policy_from_bytes(&policy_bytes(&s).unwrap()).unwrap();
        assert_eq!(back.actor, s.actor);
        let obs = [0.3, -1.0, 2.0];
        assert_eq!(back.act(&obs, 1, None), s.act(&obs, 1, None));
    }

    #[test]
    fn agent_should_round_trip_whole() {
        let s = agent();
        let back = agent_from_bytes(&agent_bytes(&s).unwrap()).unwrap();
        assert_eq!(
            (
                &back.actor,
                &back.critic,
                &back.critic_target,
                back.log_alpha
            ),
            (&s.actor, &s.critic, &s.critic_target, s.log_alpha)
        );
        assert_eq!((back.updates, back.actor_opt.step), (17, 4));
        assert_eq!(back.squash, s.squash);
    }

    #[test]
    fn hostile_files_should_be_errors() {
        let s = agent();
        let good = policy_bytes(&s).unwrap();
        assert!(policy_from_bytes(b"").is_err());
        assert!(policy_from_bytes(&good[..good.len() - 3]).is_err());
        assert!(agent_from_bytes(&good).unwrap_err().contains("format"));
        // Every single-byte corruption of the header is an error or a valid agent.
        let hl = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        for i in (0..8 + hl).step_by(7) {
            let mut b = good.clone();
            b[i] ^= 0x5a;
            let _ = policy_from_bytes(&b);
        }
        let mut r = super::super::Replay::new(3, 2, 5);
        for i in 0..7 {
            r.push(&[i as f32; 3], &[0.5; 2], -1.0, &[1.0; 3], i == 6);
        }
        let back = replay_from_bytes(&replay_bytes(&r).unwrap(), 3, 2).unwrap();
        assert_eq!(back, r);
        assert!(replay_from_bytes(&replay_bytes(&r).unwrap(), 4, 2).is_err());
        let mut nan = s.clone();
        nan.actor[0] = f32::NAN;
        assert!(policy_bytes(&nan).is_err());
    }

    #[test]
    fn terminal_values_should_come_only_from_one_agents_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |sub: &str, policy: &Sac, critic: &Sac| {
            let d = dir.path().join(sub);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("policy.safetensors"), policy_bytes(policy).unwrap()).unwrap();
            std::fs::write(d.join("critic.safetensors"), critic_bytes(critic).unwrap()).unwrap();
            d
        };
        let a = agent();
        let tv = load_terminal_value("t", &write("good", &a, &a), "e", 3, 2).unwrap();
        assert_eq!(tv.gamma, a.cfg.gamma);
        assert_eq!(tv.value.obs_dim(), 3);
        let wide = Sac::new(SacConfig::default(), 3, &[-2.0, 0.0], &[2.0, 1.0], 5).unwrap();
        let e = load_terminal_value("t", &write("mixed", &a, &wide), "e", 3, 2).unwrap_err();
        assert!(e.to_string().contains("not of one agent"), "{e}");
        let e = load_terminal_value("t", &write("other", &a, &a), "e", 4, 2).unwrap_err();
        assert!(e.to_string().contains("another environment"), "{e}");
        let only = dir.path().join("only-policy");
        std::fs::create_dir_all(&only).unwrap();
        std::fs::write(only.join("policy.safetensors"), policy_bytes(&a).unwrap()).unwrap();
        let e = load_terminal_value("t", &only, "e", 3, 2).unwrap_err();
        assert!(e.to_string().contains("no critic.safetensors"), "{e}");
    }
}
