//! The SAC stages that sit between the dense-layer engine's products (the specification of
//! `shaders/sac.wgsl` and `kernels/sac.cu`): the squashed-Gaussian sample and its backward,
//! the critics' TD-target gradient, the actor's min-Q gradient with the temperature's, and
//! Polyak averaging. The per-row arithmetic is `policy::sac`'s own (`squash_row`), so the
//! device path and the CPU agent share one definition.
use crate::backend::{sac_stats, SacParams};
use crate::policy::sac::{squash_row, Squash};

fn squash_of(p: &SacParams, sb: &[f32]) -> Squash<f32> {
    let a = p.act_dim as usize;
    Squash {
        scale: sb[..a].to_vec(),
        bias: sb[a..2 * a].to_vec(),
    }
}

/// See [`crate::backend::Backend::sac_squash`].
#[allow(clippy::too_many_arguments)]
pub fn squash(
    p: &SacParams,
    head: &[f32],
    eps: &[f32],
    obs: &[f32],
    sb: &[f32],
    act_in: &[f32],
    logp: &mut [f32],
    x: &mut [f32],
) {
    let (b, o, a) = (p.rows as usize, p.obs_dim as usize, p.act_dim as usize);
    let sq = squash_of(p, sb);
    let w = o + a;
    let mut act = vec![0.0f32; a];
    for r in 0..b {
        if p.given == 0 {
            logp[r] = squash_row(
                &head[r * 2 * a..(r + 1) * 2 * a],
                &eps[r * a..(r + 1) * a],
                &sq,
                &mut act,
                None,
            );
        } else {
            act.copy_from_slice(&act_in[r * a..(r + 1) * a]);
        }
        for m in 0..2 {
            let row = &mut x[(m * b + r) * w..(m * b + r + 1) * w];
            row[..o].copy_from_slice(&obs[r * o..(r + 1) * o]);
            row[o..].copy_from_slice(&act);
        }
    }
}

/// See [`crate::backend::Backend::sac_critic_grad`]; the expressions of
/// `policy::sac::critic_loss`.
#[allow(clippy::too_many_arguments)]
pub fn critic_grad(
    p: &SacParams,
    q_next: &[f32],
    logp_next: &[f32],
    reward: &[f32],
    mask: &[f32],
    log_alpha: f32,
    q: &[f32],
    dq: &mut [f32],
    stats: &mut [f32],
) {
    let b = p.rows as usize;
    let alpha = log_alpha.exp();
    let inv_b = 1.0 / b as f32;
    let (mut loss, mut q_sum) = (0.0f32, 0.0f32);
    for i in 0..2 * b {
        let r = i % b;
        let v = q_next[r].min(q_next[b + r]) - alpha * logp_next[r];
        let y = reward[r] + p.gamma * mask[r] * v;
        let diff = q[i] - y;
        loss += diff * diff * inv_b;
        q_sum += q[i];
        dq[i] = 2.0 * diff * inv_b;
    }
    stats[sac_stats::CRITIC_LOSS] += loss;
    stats[sac_stats::Q_MEAN] += q_sum * inv_b * 0.5;
}

/// See [`crate::backend::Backend::sac_actor_grad`]; the expressions of
/// `policy::sac::{actor_loss, min_q_input_grad}` and the temperature's.
pub fn actor_grad(
    p: &SacParams,
    q: &[f32],
    logp: &[f32],
    log_alpha: f32,
    dq: &mut [f32],
    alpha_grad: &mut [f32],
    stats: &mut [f32],
) {
    let b = p.rows as usize;
    let alpha = log_alpha.exp();
    let inv_b = 1.0 / b as f32;
    let mut loss = 0.0f32;
    for r in 0..b {
        let (q1, q2) = (q[r], q[b + r]);
        loss += (alpha * logp[r] - q1.min(q2)) * inv_b;
        let c = -inv_b;
        (dq[r], dq[b + r]) = if q1 < q2 {
            (c, 0.0)
        } else if q2 < q1 {
            (0.0, c)
        } else {
            (0.5 * c, 0.5 * c)
        };
    }
    let logp_mean = logp[..b].iter().sum::<f32>() * inv_b;
    let h = p.target_entropy;
    alpha_grad[0] = -(logp_mean + h);
    stats[sac_stats::ACTOR_LOSS] += loss;
    stats[sac_stats::ALPHA_LOSS] += -log_alpha * (logp_mean + h);
    stats[sac_stats::ENTROPY] += -logp_mean;
    stats[sac_stats::COUNT] += 1.0;
    stats[sac_stats::ALPHA_BEFORE] += alpha;
}

/// See [`crate::backend::Backend::sac_squash_backward`].
pub fn squash_backward(
    p: &SacParams,
    head: &[f32],
    eps: &[f32],
    sb: &[f32],
    dx: &[f32],
    log_alpha: f32,
    d_head: &mut [f32],
) {
    let (b, o, a) = (p.rows as usize, p.obs_dim as usize, p.act_dim as usize);
    let sq = squash_of(p, sb);
    let w = o + a;
    let g_logp = log_alpha.exp() * (1.0 / b as f32);
    let mut g_a = vec![0.0f32; a];
    let mut scratch = vec![0.0f32; a];
    for r in 0..b {
        for (j, g) in g_a.iter_mut().enumerate() {
            *g = dx[r * w + o + j] + dx[(b + r) * w + o + j];
        }
        squash_row(
            &head[r * 2 * a..(r + 1) * 2 * a],
            &eps[r * a..(r + 1) * a],
            &sq,
            &mut scratch,
            Some((&g_a, g_logp, &mut d_head[r * 2 * a..(r + 1) * 2 * a])),
        );
    }
}

fn seed(p: &SacParams) -> u64 {
    p.seed_lo as u64 | (p.seed_hi as u64) << 32
}

/// See [`crate::backend::Backend::sac_noise`].
pub fn noise(p: &SacParams, eps_next: &mut [f32], eps_pi: &mut [f32]) {
    let n = p.rows as usize * p.act_dim as usize;
    let mut eps = vec![0.0f32; 2 * n];
    crate::rng::normals(seed(p), p.stream, 0, p.step, &mut eps);
    eps_next[..n].copy_from_slice(&eps[..n]);
    eps_pi[..n].copy_from_slice(&eps[n..]);
}

/// See [`crate::backend::Backend::sac_minibatch`]; `Replay::sample`'s draws.
#[allow(clippy::too_many_arguments)]
pub fn minibatch(
    p: &SacParams,
    ring: &[f32],
    obs: &mut [f32],
    act: &mut [f32],
    reward: &mut [f32],
    next_obs: &mut [f32],
    mask: &mut [f32],
) {
    let (o, a) = (p.obs_dim as usize, p.act_dim as usize);
    let w = p.replay_width();
    for r in 0..p.rows as usize {
        let s = crate::rng::below(seed(p), p.stream, r as u32, p.step, p.len) as usize;
        let row = &ring[s * w..(s + 1) * w];
        obs[r * o..(r + 1) * o].copy_from_slice(&row[..o]);
        act[r * a..(r + 1) * a].copy_from_slice(&row[o..o + a]);
        reward[r] = row[o + a];
        next_obs[r * o..(r + 1) * o].copy_from_slice(&row[o + a + 1..2 * o + a + 1]);
        mask[r] = 1.0 - row[2 * o + a + 1];
    }
}

/// θ̄ ← τ·θ + (1 − τ)·θ̄ (`policy::sac::polyak`).
pub fn polyak(p: &SacParams, target: &mut [f32], online: &[f32]) {
    let n = p.len as usize;
    crate::policy::sac::polyak(&mut target[..n], &online[..n], p.tau);
}
