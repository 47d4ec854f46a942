//! Argument checks shared by every backend, so that each op rejects the same bad input with
//! the same sentence whatever device it would have run on. Each takes buffer lengths.
use super::{
    sac_stats, AdamParams, BranchParams, EliteParams, EnsembleShape, InitParams, LossConfig,
    MppiParams, PathParams, PathShape, RolloutParams, SacParams, SampleParams, UpdateParams,
    MAX_ELITES,
};
use crate::env::{task, EnvId, EnvSpec};
use crate::{invalid, Error, Result};

/// `what` holds at least `want` values.
pub fn need(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(Error::Shape(format!(
            "{what} holds {got} values, the operation needs {want}"
        )));
    }
    Ok(())
}

/// Lengths of `ensemble_forward`'s buffers: params, norm, x, mean, logvar.
pub fn forward(shape: &EnsembleShape, rows: usize, lens: [usize; 5]) -> Result<()> {
    let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
    need("params", lens[0], shape.layout().total)?;
    need("norm", lens[1], 2 * i)?;
    need("x", lens[2], e * rows * i)?;
    need("mean", lens[3], e * rows * o)?;
    if shape.probabilistic {
        need("logvar", lens[4], e * rows * o)?;
    }
    Ok(())
}

/// A device backend's training runs in f32 only: bf16 training products
/// (`LossConfig::precision`) are the CPU backend's.
pub fn f32_training(loss: &super::LossConfig, backend: &str) -> Result<()> {
    if loss.precision != super::Precision::F32 {
        return Err(invalid!(
            "bf16 model training (train.precision = bf16) runs on the CPU backend only, not on \
             {backend}; use train.precision = f32 there"
        ));
    }
    Ok(())
}

/// Lengths of `ensemble_nll_backward`'s buffers: params, norm, x, target, grad, losses.
pub fn nll_backward(
    shape: &EnsembleShape,
    loss: &LossConfig,
    rows: usize,
    lens: [usize; 6],
) -> Result<()> {
    let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
    let total = shape.layout().total;
    need("params", lens[0], total)?;
    need("norm", lens[1], 2 * i)?;
    need("x", lens[2], e * rows * i)?;
    need("target", lens[3], e * rows * o)?;
    need("grad", lens[4], total)?;
    need("losses", lens[5], e)?;
    if rows == 0 {
        return Err(invalid!(
            "the NLL of zero rows is undefined (it is normalised by rows × outputs)"
        ));
    }
    if loss.weight_decay.len() != shape.num_layers + 1 {
        return Err(Error::Shape(format!(
            "{} weight-decay coefficients for {} linear layers",
            loss.weight_decay.len(),
            shape.num_layers + 1
        )));
    }
    Ok(())
}

/// Lengths of `ensemble_vjp`'s buffers: params, norm, x, d_mean, d_logvar, and grad and dx
/// where asked for (`None`: not written, not checked).
pub fn vjp(
    shape: &EnsembleShape,
    rows: usize,
    lens: [usize; 5],
    grad: Option<usize>,
    dx: Option<usize>,
) -> Result<()> {
    let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
    let total = shape.layout().total;
    need("params", lens[0], total)?;
    need("norm", lens[1], 2 * i)?;
    need("x", lens[2], e * rows * i)?;
    need("d_mean", lens[3], e * rows * o)?;
    if shape.probabilistic {
        need("d_logvar", lens[4], e * rows * o)?;
    }
    if let Some(g) = grad {
        need("grad", g, total)?;
    }
    if let Some(d) = dx {
        need("dx", d, e * rows * i)?;
    }
    Ok(())
}

/// Lengths of `cem_sample`'s buffers: mean, var, lower, upper, out.
pub fn sample(p: &SampleParams, lens: [usize; 5]) -> Result<()> {
    let len = p.len as usize;
    if p.act_dim == 0 || !len.is_multiple_of(p.act_dim as usize) {
        return Err(Error::Shape(format!(
            "sample length {len} is not a whole number of actions of dimension {}",
            p.act_dim
        )));
    }
    if p.dist > 2 {
        return Err(invalid!(
            "sampling distribution {} is not 0, 1 or 2",
            p.dist
        ));
    }
    if !(p.beta.is_finite() && p.beta >= 0.0) {
        return Err(invalid!(
            "the coloured-noise exponent must be finite and ≥ 0, got {}",
            p.beta
        ));
    }
    need("mean", lens[0], len)?;
    need("var", lens[1], len)?;
    need("lower bounds", lens[2], p.act_dim as usize)?;
    need("upper bounds", lens[3], p.act_dim as usize)?;
    need("population", lens[4], p.population as usize * len)?;
    if p.dist == 2 {
        // Philox elements of the noise: (c·A + a)·(H + 2) + 2f + part.
        let seqs = p.population as u64 * u64::from(p.act_dim);
        let per = (len / p.act_dim as usize) as u64 + 2;
        if seqs * per > u64::from(u32::MAX) {
            return Err(invalid!(
                "{seqs} noise sequences of {per} coefficients exceed the 32-bit Philox element counter"
            ));
        }
    }
    Ok(())
}

fn whole_actions(len: usize, act_dim: u32) -> Result<()> {
    if act_dim == 0 || !len.is_multiple_of(act_dim as usize) {
        return Err(Error::Shape(format!(
            "plan length {len} is not a whole number of actions of dimension {act_dim}"
        )));
    }
    Ok(())
}

/// Lengths of `cem_select`'s buffers: population, returns, elites, elite returns.
pub fn select(p: &EliteParams, lens: [usize; 4]) -> Result<()> {
    let len = p.len as usize;
    whole_actions(len, p.act_dim)?;
    if p.num_elites == 0 || p.num_elites > p.population {
        return Err(invalid!(
            "elite count {} must be in 1..={} (the population)",
            p.num_elites,
            p.population
        ));
    }
    need("population", lens[0], p.population as usize * len)?;
    need("returns", lens[1], p.population as usize)?;
    need("elites", lens[2], p.num_elites as usize * len)?;
    need("elite returns", lens[3], p.num_elites as usize)
}

/// Lengths of `cem_keep`'s buffers: elites, mean, population.
pub fn keep(p: &EliteParams, lens: [usize; 3]) -> Result<()> {
    let len = p.len as usize;
    whole_actions(len, p.act_dim)?;
    if p.shift > 1 {
        return Err(invalid!("shift must be 0 or 1, got {}", p.shift));
    }
    need("elites", lens[0], p.num_elites as usize * len)?;
    need("mean", lens[1], len)?;
    need(
        "population",
        lens[2],
        (p.dst_row as usize + p.num_elites as usize) * len,
    )
}

/// Lengths of `mppi_sample`'s buffers: mean, chol, lower, upper, out.
pub fn mppi_sample(p: &MppiParams, lens: [usize; 5]) -> Result<()> {
    let (len, a) = (p.len as usize, p.act_dim as usize);
    whole_actions(len, p.act_dim)?;
    need("nominal plan", lens[0], len)?;
    need("noise Cholesky factor", lens[1], a * a)?;
    need("lower bounds", lens[2], a)?;
    need("upper bounds", lens[3], a)?;
    need("population", lens[4], p.population as usize * len)?;
    if p.population as u64 * len as u64 >= u64::from(u32::MAX) {
        return Err(invalid!(
            "a population of {} values exceeds the 32-bit Philox element counter",
            p.population as u64 * len as u64
        ));
    }
    Ok(())
}

/// Lengths of `mppi_update`'s buffers: population, returns, precision, mean.
pub fn mppi_update(p: &MppiParams, lens: [usize; 4]) -> Result<()> {
    let (len, a) = (p.len as usize, p.act_dim as usize);
    whole_actions(len, p.act_dim)?;
    if !(p.lambda.is_finite() && p.lambda > 0.0) {
        return Err(invalid!(
            "the MPPI temperature λ must be finite and > 0, got {}",
            p.lambda
        ));
    }
    if !(0.0..=1.0).contains(&p.alpha) {
        return Err(invalid!("α must be in [0, 1], got {}", p.alpha));
    }
    if p.population == 0 {
        return Err(invalid!("MPPI needs at least one candidate"));
    }
    need("population", lens[0], p.population as usize * len)?;
    need("returns", lens[1], p.population as usize)?;
    need("noise precision", lens[2], a * a)?;
    need("nominal plan", lens[3], len)
}

/// Lengths of `cem_init`'s buffers: lower, upper, prev, mean, var.
pub fn init(p: &InitParams, lens: [usize; 5]) -> Result<()> {
    let len = p.len as usize;
    if p.act_dim == 0 || !len.is_multiple_of(p.act_dim as usize) {
        return Err(Error::Shape(format!(
            "plan length {len} is not a whole number of actions of dimension {}",
            p.act_dim
        )));
    }
    if p.shift > 1 {
        return Err(invalid!("shift must be 0 or 1, got {}", p.shift));
    }
    need("lower bounds", lens[0], p.act_dim as usize)?;
    need("upper bounds", lens[1], p.act_dim as usize)?;
    need("previous plan", lens[2], len)?;
    need("mean", lens[3], len)?;
    need("var", lens[4], len)
}

/// Lengths of `cem_update`'s buffers: population, returns, mean, var.
pub fn update(p: &UpdateParams, lens: [usize; 4]) -> Result<()> {
    let len = p.len as usize;
    if p.num_elites == 0 || p.num_elites > p.population {
        return Err(invalid!(
            "elite count {} must be in 1..={} (the population)",
            p.num_elites,
            p.population
        ));
    }
    need("population", lens[0], p.population as usize * len)?;
    need("returns", lens[1], p.population as usize)?;
    need("mean", lens[2], len)?;
    need("var", lens[3], len)
}

/// Checks shared by both rollouts.
fn rollout_common(p: &RolloutParams) -> Result<()> {
    if !task::has_reward(p.env) && p.learn_reward != 1 {
        return Err(invalid!(
            "task {} has no reward function of observations: the model must learn the reward",
            p.env
        ));
    }
    if !task::known(p.env) && p.env != task::NONE {
        return Err(invalid!("unknown task code {}", p.env));
    }
    if p.horizon == 0 {
        return Err(invalid!("horizon must be at least 1"));
    }
    if p.propagation > 2 {
        return Err(invalid!("unknown propagation code {}", p.propagation));
    }
    if p.num_elites as usize > MAX_ELITES {
        return Err(invalid!(
            "at most {MAX_ELITES} elites fit a rollout, got {}",
            p.num_elites
        ));
    }
    Ok(())
}

/// `rollout` through a model; lengths of params, norm, start, actions, returns.
pub fn rollout(p: &RolloutParams, shape: &EnsembleShape, lens: [usize; 5]) -> Result<()> {
    rollout_common(p)?;
    let (od, ad) = (p.obs_dim as usize, p.act_dim as usize);
    let want_out = od + p.learn_reward as usize;
    if shape.in_dim != od + ad || shape.out_dim != want_out {
        return Err(Error::Shape(format!(
            "model maps {} inputs to {} outputs; the rollout needs obs {od} + act {ad} inputs \
             and {want_out} outputs",
            shape.in_dim, shape.out_dim
        )));
    }
    let elites = &p.elites[..p.num_elites as usize];
    if elites.is_empty() || elites.iter().any(|&m| m as usize >= shape.ensemble) {
        return Err(invalid!(
            "elites {elites:?} are not members of a {}-member ensemble",
            shape.ensemble
        ));
    }
    if p.particles == 0 {
        return Err(invalid!("particles must be at least 1"));
    }
    // The task's reward and termination read the first components of the observation (all
    // of a native environment's) and of the action.
    let needed = EnvId::from_code(p.env).map_or(1, |e| e.obs_dim());
    if od < needed || ad == 0 {
        return Err(Error::Shape(format!(
            "task {} reads {needed} observation components and an action; the rollout was \
             given obs {od} and act {ad}",
            p.env
        )));
    }
    let (np, h) = (p.population as usize, p.horizon as usize);
    // Philox element indices of the noise are u32: row · out_dim + j must fit.
    let rows = np * p.particles as usize;
    if rows.saturating_mul(shape.out_dim) > u32::MAX as usize {
        return Err(invalid!(
            "{rows} rows × {} outputs exceed the 2³² noise elements a rollout can index",
            shape.out_dim
        ));
    }
    need("params", lens[0], shape.layout().total)?;
    need("norm", lens[1], 2 * shape.in_dim)?;
    need("start", lens[2], od)?;
    need("actions", lens[3], np * h * ad)?;
    need("returns", lens[4], np)
}

/// `rollout_true`; lengths of start, actions, returns. Returns the environment's spec.
pub fn rollout_true(p: &RolloutParams, lens: [usize; 3]) -> Result<EnvSpec> {
    rollout_common(p)?;
    let env = EnvId::from_code(p.env).ok_or_else(|| {
        invalid!(
            "task code {} has no native dynamics to plan with; use a learned model",
            p.env
        )
    })?;
    let spec = env.spec();
    if p.obs_dim as usize != spec.obs_dim || p.act_dim as usize != spec.act_dim {
        return Err(Error::Shape(format!(
            "{} has obs {} and act {}, the rollout was given {} and {}",
            spec.name, spec.obs_dim, spec.act_dim, p.obs_dim, p.act_dim
        )));
    }
    let (np, h) = (p.population as usize, p.horizon as usize);
    need("start state", lens[0], spec.state_dim)?;
    need("actions", lens[1], np * h * spec.act_dim)?;
    need("returns", lens[2], np)?;
    Ok(spec)
}

/// Lengths of `adam_step`'s buffers: params, grad, m, v.
pub fn adam(p: &AdamParams, lens: [usize; 4]) -> Result<()> {
    let n = p.len as usize;
    need("params", lens[0], n)?;
    need("grad", lens[1], n)?;
    need("adam m", lens[2], n)?;
    need("adam v", lens[3], n)
}

/// `write` replaces a whole buffer.
pub fn write(buf_len: usize, host_len: usize) -> Result<()> {
    if buf_len != host_len {
        return Err(Error::Shape(format!(
            "buffer of {buf_len} values written with {host_len}"
        )));
    }
    Ok(())
}

/// `write_at` stays inside the buffer.
pub fn write_at(buf_len: usize, offset: usize, host_len: usize) -> Result<()> {
    if offset.checked_add(host_len).is_none_or(|end| end > buf_len) {
        return Err(Error::Shape(format!(
            "{host_len} values written at {offset} into a buffer of {buf_len}"
        )));
    }
    Ok(())
}

/// A ranged read stays inside its buffer.
pub fn read_at(buf_len: usize, offset: usize, len: usize) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > buf_len) {
        return Err(Error::Shape(format!(
            "{len} values read at {offset} from a buffer of {buf_len}"
        )));
    }
    Ok(())
}

/// SAC stages: the sizes are sane and fit the kernels' 32-bit indices.
fn sac_sizes(p: &SacParams) -> Result<(usize, usize, usize)> {
    let (b, o, a) = (p.rows as usize, p.obs_dim as usize, p.act_dim as usize);
    if b == 0 || o == 0 || a == 0 {
        return Err(invalid!(
            "a SAC stage needs at least one row, observation and action (got {b}, {o}, {a})"
        ));
    }
    if 2 * b * (o + a) >= u32::MAX as usize {
        return Err(invalid!(
            "a SAC minibatch of {b} rows of {o} + {a} values exceeds 32-bit indexing"
        ));
    }
    Ok((b, o, a))
}

/// Lengths of `sac_squash`'s buffers: head, eps, obs, sb, act_in, logp, x.
pub fn sac_squash(p: &SacParams, lens: [usize; 7]) -> Result<()> {
    let (b, o, a) = sac_sizes(p)?;
    if p.given == 0 {
        need("actor head", lens[0], b * 2 * a)?;
        need("eps", lens[1], b * a)?;
        need("log π", lens[5], b)?;
    } else {
        need("actions", lens[4], b * a)?;
    }
    need("obs", lens[2], b * o)?;
    need("squash [scale, bias]", lens[3], 2 * a)?;
    need("critic input", lens[6], 2 * b * (o + a))
}

/// Lengths of `sac_critic_grad`'s buffers: q_next, logp_next, reward, mask, log_alpha, q,
/// dq, stats.
pub fn sac_critic_grad(p: &SacParams, lens: [usize; 8]) -> Result<()> {
    let (b, _, _) = sac_sizes(p)?;
    need("target Q", lens[0], 2 * b)?;
    need("log π(s')", lens[1], b)?;
    need("reward", lens[2], b)?;
    need("mask", lens[3], b)?;
    need("log α", lens[4], 1)?;
    need("Q", lens[5], 2 * b)?;
    need("dQ", lens[6], 2 * b)?;
    need("stats", lens[7], sac_stats::LEN)
}

/// Lengths of `sac_actor_grad`'s buffers: q, logp, log_alpha, dq, alpha_grad, stats.
pub fn sac_actor_grad(p: &SacParams, lens: [usize; 6]) -> Result<()> {
    let (b, _, _) = sac_sizes(p)?;
    need("Q", lens[0], 2 * b)?;
    need("log π", lens[1], b)?;
    need("log α", lens[2], 1)?;
    need("dQ", lens[3], 2 * b)?;
    need("α gradient", lens[4], 1)?;
    need("stats", lens[5], sac_stats::LEN)
}

/// Lengths of `sac_squash_backward`'s buffers: head, eps, sb, dx, log_alpha, d_head.
pub fn sac_squash_backward(p: &SacParams, lens: [usize; 6]) -> Result<()> {
    let (b, o, a) = sac_sizes(p)?;
    need("actor head", lens[0], b * 2 * a)?;
    need("eps", lens[1], b * a)?;
    need("squash [scale, bias]", lens[2], 2 * a)?;
    need("critic input gradient", lens[3], 2 * b * (o + a))?;
    need("log α", lens[4], 1)?;
    need("d head", lens[5], b * 2 * a)
}

/// Lengths of `sac_noise`'s buffers: eps_next, eps_pi.
pub fn sac_noise(p: &SacParams, lens: [usize; 2]) -> Result<()> {
    let (b, _, a) = sac_sizes(p)?;
    need("eps (next states)", lens[0], b * a)?;
    need("eps (policy)", lens[1], b * a)
}

/// Lengths of `sac_minibatch`'s buffers: ring, obs, act, reward, next_obs, mask.
pub fn sac_minibatch(p: &SacParams, lens: [usize; 6]) -> Result<()> {
    let (b, o, a) = sac_sizes(p)?;
    let n = p.len as usize;
    if n == 0 {
        return Err(invalid!("a minibatch from an empty replay buffer"));
    }
    let w = p.replay_width();
    if n.checked_mul(w).is_none_or(|v| v >= u32::MAX as usize) {
        return Err(invalid!(
            "a replay ring of {n} rows of {w} values exceeds 32-bit indexing"
        ));
    }
    need("replay ring", lens[0], n * w)?;
    need("obs", lens[1], b * o)?;
    need("act", lens[2], b * a)?;
    need("reward", lens[3], b)?;
    need("next obs", lens[4], b * o)?;
    need("mask", lens[5], b)
}

/// Lengths of `polyak`'s buffers: target, online.
pub fn polyak(p: &SacParams, lens: [usize; 2]) -> Result<()> {
    if !(0.0..=1.0).contains(&p.tau) {
        return Err(invalid!("Polyak τ must lie in [0, 1] (got {})", p.tau));
    }
    need("target", lens[0], p.len as usize)?;
    need("online", lens[1], p.len as usize)
}

/// Sizes of a branched-rollout step: (rows, O, A, out, members · per), refused when a
/// task without a reward function is asked for one or any index would pass 32 bits.
fn branch_sizes(p: &BranchParams) -> Result<(usize, usize, usize, usize, usize)> {
    let (b, o, a) = (p.rows as usize, p.obs_dim as usize, p.act_dim as usize);
    let d = p.out_dim as usize;
    if b == 0 || o == 0 || a == 0 || p.members == 0 || p.per == 0 {
        return Err(invalid!(
            "a branched rollout needs rows, an observation, an action and a member (got {b} \
             rows, obs {o}, act {a}, {} members of {} rows)",
            p.members,
            p.per
        ));
    }
    if p.members as usize > MAX_ELITES {
        return Err(invalid!(
            "a branched rollout routes rows among at most {MAX_ELITES} members (got {})",
            p.members
        ));
    }
    if d != o + p.learn_reward as usize {
        return Err(Error::Shape(format!(
            "the model predicts {d} values; a branched rollout over obs {o} needs {}",
            o + p.learn_reward as usize
        )));
    }
    if p.learn_reward == 0 {
        let needed = match EnvId::from_code(p.task) {
            Some(e) => e.obs_dim(),
            None if p.task == task::NONE => {
                return Err(invalid!(
                    "this task has no reward function: the model must learn the reward \
                     (model.learn_reward = true)"
                ))
            }
            None => 2,
        };
        if o < needed {
            return Err(Error::Shape(format!(
                "task {} reads {needed} observation components; the rollout has {o}",
                p.task
            )));
        }
    }
    let slots = p.members as usize * p.per as usize;
    let big = [b * (o + a), slots * (o + a), slots * d, b * d];
    if big.iter().any(|&v| v >= u32::MAX as usize) {
        return Err(invalid!(
            "a branched rollout of {b} rows over {} members exceeds 32-bit indexing",
            p.members
        ));
    }
    Ok((b, o, a, d, slots))
}

/// Lengths of `branch_route`'s buffers: x, route, grouped x.
pub fn branch_route(p: &BranchParams, lens: [usize; 3]) -> Result<()> {
    let (b, o, a, _, slots) = branch_sizes(p)?;
    need("model input", lens[0], b * (o + a))?;
    need("route", lens[1], b)?;
    need("grouped model input", lens[2], slots * (o + a))
}

/// Lengths of `branch_step`'s buffers: route, mean, logvar, x, obs, stopped, count, ring.
pub fn branch_step(p: &BranchParams, lens: [usize; 8]) -> Result<()> {
    let (b, o, a, d, slots) = branch_sizes(p)?;
    let (cap, w) = (p.capacity as usize, p.replay_width());
    if cap < b || p.base as usize >= cap {
        return Err(invalid!(
            "a replay ring of {cap} rows cannot take a step of {b} rollouts from slot {}",
            p.base
        ));
    }
    if cap.checked_mul(w).is_none_or(|v| v >= u32::MAX as usize) {
        return Err(invalid!(
            "a replay ring of {cap} rows of {w} values exceeds 32-bit indexing"
        ));
    }
    need("route", lens[0], b)?;
    need("mean", lens[1], slots * d)?;
    need("logvar", lens[2], slots * d)?;
    need("model input", lens[3], b * (o + a))?;
    need("obs", lens[4], b * o)?;
    need("stopped", lens[5], b)?;
    need("count", lens[6], 1)?;
    need("replay ring", lens[7], cap * w)
}

/// Sizes of a path-gradient stage: (B, O, A, D, grouped rows used at this step), refused
/// when the sizes are empty, the task has no reward function the path can differentiate,
/// the offsets are not [`PathParams::new`]'s or an index would pass 32 bits.
fn path_sizes(p: &PathParams) -> Result<(usize, usize, usize, usize, usize)> {
    let (b, o, a, d) = (
        p.rows as usize,
        p.obs_dim as usize,
        p.act_dim as usize,
        p.out_dim as usize,
    );
    let (e, h) = (p.members as usize, p.horizon as usize);
    if b == 0 || o == 0 || a == 0 || e == 0 || p.per == 0 {
        return Err(invalid!(
            "a path gradient needs rows, an observation, an action and a member (got {b} rows, \
             obs {o}, act {a}, {e} members of {} rows)",
            p.per
        ));
    }
    if p.t > p.horizon {
        return Err(invalid!(
            "path step {} lies past the horizon {}",
            p.t,
            p.horizon
        ));
    }
    let want_d = o + usize::from(p.learn_reward != 0);
    if d != want_d {
        return Err(invalid!(
            "a model for {o} observations {} predicts {want_d} values, not {d}",
            if p.learn_reward != 0 {
                "and a reward"
            } else {
                "without a reward"
            }
        ));
    }
    if p.learn_reward == 0 && !path_reward_known(p.task) {
        return Err(invalid!(
            "task {} has no reward gradient: learn the reward (model.learn_reward = true)",
            p.task
        ));
    }
    let big = |v: Option<usize>| v.is_none_or(|v| v >= u32::MAX as usize);
    if big(e
        .checked_mul(b)
        .and_then(|g| g.checked_mul(h.max(1) * (o + a + d + 1))))
        || big(b
            .checked_mul(h + 1)
            .and_then(|n| n.checked_mul(3 * o + 4 * a + 4 + d)))
    {
        return Err(invalid!(
            "a path of {b} rows over {h} steps exceeds 32-bit indexing"
        ));
    }
    let used = e * p.per as usize;
    if used > e * b || p.grouped as usize != e * b {
        return Err(invalid!(
            "a grouped batch of {e} members of {} rows does not fit {} slots",
            p.per,
            p.grouped
        ));
    }
    let layout = PathParams::new(PathShape {
        rows: b,
        obs_dim: o,
        act_dim: a,
        out_dim: d,
        members: e,
        horizon: h,
    });
    let offsets = |q: &PathParams| {
        [
            q.n_eps,
            q.n_xi,
            q.n_slot,
            q.n_rowof,
            q.t_states,
            q.t_heads,
            q.t_act,
            q.t_logp,
            q.t_alive,
            q.t_counted,
            q.t_reward,
            q.t_logvar,
            q.t_alpha,
            q.t_squash,
        ]
    };
    if offsets(p) != offsets(&layout) {
        return Err(invalid!(
            "the path buffers' offsets are not PathParams::new's for these sizes"
        ));
    }
    Ok((b, o, a, d, used))
}

/// Tasks whose reward `env::task::reward_vjp` differentiates.
pub fn path_reward_known(code: u32) -> bool {
    EnvId::from_code(code).is_some()
        || code == task::HALF_CHEETAH
        || code == task::INVERTED_PENDULUM
}

/// The member tables of the noise buffer (CPU only: it reads them): every slot below
/// members·per, each used slot naming the row routed to it.
pub fn path_tables(p: &PathParams, noise: &[f32]) -> Result<()> {
    let (b, g, t) = (p.rows as usize, p.grouped as usize, p.t as usize);
    if t >= p.horizon as usize {
        return Ok(());
    }
    let used = (p.members * p.per) as usize;
    let slots = &noise[p.n_slot as usize + t * b..][..b];
    let table = &noise[p.n_rowof as usize + t * g..][..used];
    let filled = table
        .iter()
        .filter(|v| v.to_bits() != crate::backend::cpu::sac::EMPTY_SLOT)
        .count();
    if filled != b {
        return Err(invalid!(
            "path step {t}: the grouped batch holds {filled} rows, not the path's {b}"
        ));
    }
    for (r, s) in slots.iter().enumerate() {
        let s = s.to_bits() as usize;
        if s >= used || table[s].to_bits() as usize != r {
            return Err(invalid!(
                "path step {t}: row {r}'s member slot {s} is not a slot of the grouped batch \
                 that holds it"
            ));
        }
    }
    Ok(())
}

/// Lengths of `path_squash`'s buffers: head, obs, noise, tape, x.
pub fn path_squash(p: &PathParams, lens: [usize; 5]) -> Result<()> {
    let (b, o, a, _, used) = path_sizes(p)?;
    need("actor head", lens[0], b * 2 * a)?;
    if p.t == 0 {
        need("start states", lens[1], b * o)?;
    }
    need("path noise", lens[2], p.noise_len())?;
    need("path tape", lens[3], p.tape_len())?;
    let rows = if p.t < p.horizon { used } else { 2 * b };
    need("model or critic input", lens[4], rows * (o + a))
}

/// Lengths of `path_step`'s buffers: mean, logvar, noise, tape, state.
pub fn path_step(p: &PathParams, lens: [usize; 5]) -> Result<()> {
    let (b, o, _, d, used) = path_sizes(p)?;
    if p.t >= p.horizon {
        return Err(invalid!("path_step runs before the horizon (t < H)"));
    }
    need("model mean", lens[0], used * d)?;
    if p.probabilistic != 0 {
        need("model log-variance", lens[1], used * d)?;
    }
    need("path noise", lens[2], p.noise_len())?;
    need("path tape", lens[3], p.tape_len())?;
    need("next states", lens[4], b * o)
}

/// Lengths of `path_terminal`'s buffers: q, log_alpha, tape, dq, alpha_grad, report, stats.
pub fn path_terminal(p: &PathParams, lens: [usize; 7]) -> Result<()> {
    let (b, ..) = path_sizes(p)?;
    if p.terminal_value != 0 {
        need("Q", lens[0], 2 * b)?;
        need("dQ", lens[3], 2 * b)?;
    }
    need("log α", lens[1], 1)?;
    need("path tape", lens[2], p.tape_len())?;
    need("α gradient", lens[4], 1)?;
    need("path report", lens[5], super::path_report::LEN)?;
    need("stats", lens[6], sac_stats::LEN)
}

/// Lengths of `path_model_back`'s buffers: noise, tape, back, xg, d_mean, d_logvar.
pub fn path_model_back(p: &PathParams, lens: [usize; 6]) -> Result<()> {
    let (_, o, a, d, used) = path_sizes(p)?;
    if p.t >= p.horizon {
        return Err(invalid!("path_model_back runs before the horizon (t < H)"));
    }
    need("path noise", lens[0], p.noise_len())?;
    need("path tape", lens[1], p.tape_len())?;
    need("path gradients", lens[2], p.back_len())?;
    need("model input", lens[3], used * (o + a))?;
    need("d mean", lens[4], used * d)?;
    if p.probabilistic != 0 {
        need("d log-variance", lens[5], used * d)?;
    }
    Ok(())
}

/// Lengths of `path_actor_back`'s buffers: noise, tape, dx, back, d_head, state.
pub fn path_actor_back(p: &PathParams, lens: [usize; 6]) -> Result<()> {
    let (b, o, a, _, used) = path_sizes(p)?;
    need("path noise", lens[0], p.noise_len())?;
    need("path tape", lens[1], p.tape_len())?;
    if p.t < p.horizon {
        need("model input gradient", lens[2], used * (o + a))?;
    } else if p.terminal_value != 0 {
        need("critic input gradient", lens[2], 2 * b * (o + a))?;
    }
    need("path gradients", lens[3], p.back_len())?;
    need("d head", lens[4], b * 2 * a)?;
    need("states", lens[5], b * o)
}

/// Lengths of `path_accumulate`'s buffers: g_step, ds, grad, back.
pub fn path_accumulate(p: &PathParams, lens: [usize; 4]) -> Result<()> {
    let (b, o, ..) = path_sizes(p)?;
    need("step gradient", lens[0], p.len as usize)?;
    need("state gradient", lens[1], b * o)?;
    need("gradient", lens[2], p.len as usize)?;
    need("path gradients", lens[3], p.back_len())
}
