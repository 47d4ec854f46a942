//! The SAC stages that sit between the dense-layer engine's products (the specification of
//! `shaders/sac.wgsl` and `kernels/sac.cu`): the squashed-Gaussian sample and its backward,
//! the critics' TD-target gradient, the actor's min-Q gradient with the temperature's, and
//! Polyak averaging. The per-row arithmetic is `policy::sac`'s own (`squash_row`), so the
//! device path and the CPU agent share one definition.
use crate::backend::{path_report, sac_stats, PathParams, SacParams};
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

// ---- The path gradient's policy stages (`policy::path::path_loss` split at the dense
// products; see `PathParams` for the buffers) --------------------------------------------

/// A slot of an inverse table that holds no row.
pub const EMPTY_SLOT: u32 = u32::MAX;

fn path_squash_of(p: &PathParams, tape: &[f32]) -> Squash<f32> {
    let (a, at) = (p.act_dim as usize, p.t_squash as usize);
    Squash {
        scale: tape[at..at + a].to_vec(),
        bias: tape[at + a..at + 2 * a].to_vec(),
    }
}

/// See [`crate::backend::Backend::path_squash`].
pub fn path_squash(
    p: &PathParams,
    head: &[f32],
    obs: &[f32],
    noise: &[f32],
    tape: &mut [f32],
    x: &mut [f32],
) {
    let (b, o, a, t) = (
        p.rows as usize,
        p.obs_dim as usize,
        p.act_dim as usize,
        p.t as usize,
    );
    let sq = path_squash_of(p, tape);
    let s0 = p.t_states as usize + t * b * o;
    if t == 0 {
        tape[s0..s0 + b * o].copy_from_slice(&obs[..b * o]);
        tape[p.t_alive as usize..][..b].fill(1.0);
    }
    let mut act = vec![0.0f32; a];
    for r in 0..b {
        let hd = &head[r * 2 * a..(r + 1) * 2 * a];
        let eps = &noise[p.n_eps as usize + (t * b + r) * a..][..a];
        let logp = squash_row(hd, eps, &sq, &mut act, None);
        tape[p.t_heads as usize + (t * b + r) * 2 * a..][..2 * a].copy_from_slice(hd);
        tape[p.t_act as usize + (t * b + r) * a..][..a].copy_from_slice(&act);
        tape[p.t_logp as usize + t * b + r] = logp;
    }
    let w = o + a;
    let row = |tape: &[f32], r: usize, dst: &mut [f32]| {
        dst[..o].copy_from_slice(&tape[s0 + r * o..][..o]);
        dst[o..].copy_from_slice(&tape[p.t_act as usize + (t * b + r) * a..][..a]);
    };
    if t < p.horizon as usize {
        let table = &noise[p.n_rowof as usize + t * p.grouped as usize..];
        for i in 0..(p.members * p.per) as usize {
            let dst = &mut x[i * w..(i + 1) * w];
            match table[i].to_bits() {
                EMPTY_SLOT => dst.fill(0.0),
                r => row(tape, r as usize, dst),
            }
        }
    } else {
        for r in 0..b {
            for m in 0..2 {
                row(tape, r, &mut x[(m * b + r) * w..(m * b + r + 1) * w]);
            }
        }
    }
}

/// See [`crate::backend::Backend::path_terminal`]; the sums of `path_loss` in its order.
#[allow(clippy::too_many_arguments)]
pub fn path_terminal(
    p: &PathParams,
    q: &[f32],
    log_alpha: f32,
    tape: &mut [f32],
    dq: &mut [f32],
    alpha_grad: &mut [f32],
    report: &mut [f32],
    stats: &mut [f32],
) {
    let (b, h) = (p.rows as usize, p.horizon as usize);
    let alpha = log_alpha.exp();
    let flag = |tape: &[f32], at: u32, i: usize| tape[at as usize + i] != 0.0;
    let (mut j, mut r_sum, mut r_n) = (0.0f32, 0.0f32, 0usize);
    let mut disc = 1.0f32;
    for t in 0..h {
        for r in 0..b {
            if !flag(tape, p.t_alive, t * b + r) {
                continue;
            }
            j -= disc * alpha * tape[p.t_logp as usize + t * b + r];
            if flag(tape, p.t_counted, t * b + r) {
                let rew = tape[p.t_reward as usize + t * b + r];
                j += disc * rew;
                r_sum += rew;
                r_n += 1;
            }
        }
        disc *= p.gamma;
    }
    let c_end = p.w * disc;
    let mut alive = 0usize;
    for r in 0..b {
        let live = flag(tape, p.t_alive, h * b + r);
        alive += usize::from(live);
        if p.terminal_value == 0 {
            continue;
        }
        let (q1, q2) = (q[r], q[b + r]);
        if live {
            j += disc * (q1.min(q2) - alpha * tape[p.t_logp as usize + h * b + r]);
        }
        let c = if live { c_end } else { 0.0 };
        (dq[r], dq[b + r]) = if q1 < q2 {
            (c, 0.0)
        } else if q2 < q1 {
            (0.0, c)
        } else {
            (c * 0.5, c * 0.5)
        };
    }
    let inv_b = 1.0 / b as f32;
    let logp_mean = tape[p.t_logp as usize..][..b].iter().sum::<f32>() / b as f32;
    report[path_report::LOSS] = -j * inv_b;
    report[path_report::LOGP_MEAN] = logp_mean;
    report[path_report::REWARD_MEAN] = if r_n > 0 { r_sum / r_n as f32 } else { 0.0 };
    report[path_report::ALIVE] = alive as f32 * inv_b;
    alpha_grad[0] = -(logp_mean + p.target_entropy);
    tape[p.t_alpha as usize] = alpha;
    let h_bar = p.target_entropy;
    stats[sac_stats::ACTOR_LOSS] += report[path_report::LOSS];
    stats[sac_stats::ALPHA_LOSS] += -log_alpha * (logp_mean + h_bar);
    stats[sac_stats::ENTROPY] += -logp_mean;
    stats[sac_stats::COUNT] += 1.0;
    stats[sac_stats::ALPHA_BEFORE] += alpha;
}

/// See [`crate::backend::Backend::path_actor_back`]; `path_loss`'s `actor_step` before the
/// actor's VJP.
#[allow(clippy::too_many_arguments)]
pub fn path_actor_back(
    p: &PathParams,
    noise: &[f32],
    tape: &[f32],
    dx: &[f32],
    back: &mut [f32],
    d_head: &mut [f32],
    state: &mut [f32],
) {
    let (b, o, a, t) = (
        p.rows as usize,
        p.obs_dim as usize,
        p.act_dim as usize,
        p.t as usize,
    );
    let h = p.horizon as usize;
    let sq = path_squash_of(p, tape);
    let alpha = tape[p.t_alpha as usize];
    let w = o + a;
    let (mut g_a, mut scratch) = (vec![0.0f32; a], vec![0.0f32; a]);
    for r in 0..b {
        let (g_s, rest) = back.split_at_mut(b * o);
        let (g_sr, g_ar) = rest.split_at(b * o);
        let gs = &mut g_s[r * o..(r + 1) * o];
        if t == h {
            if p.terminal_value != 0 {
                let (r1, r2) = (&dx[r * w..][..w], &dx[(b + r) * w..][..w]);
                for jx in 0..o {
                    gs[jx] = r1[jx] + r2[jx];
                }
                for jx in 0..a {
                    g_a[jx] = r1[o + jx] + r2[o + jx];
                }
            } else {
                gs.fill(0.0);
                g_a.fill(0.0);
            }
        } else {
            let slot = noise[p.n_slot as usize + t * b + r].to_bits() as usize;
            let src = &dx[slot * w..][..w];
            for jx in 0..o {
                // s_{t+1} = s_t + Δ: the identity path, the model's input gradient, and the
                // reward's own ∂r/∂s_t.
                gs[jx] = (gs[jx] + src[jx]) + g_sr[r * o + jx];
            }
            for jx in 0..a {
                g_a[jx] = src[o + jx] + g_ar[r * a + jx];
            }
        }
        let live = tape[p.t_alive as usize + t * b + r] != 0.0;
        let counts = live && (t < h || p.terminal_value != 0);
        let g_logp = if counts { -alpha * p.w * p.disc } else { 0.0 };
        let head = &tape[p.t_heads as usize + (t * b + r) * 2 * a..][..2 * a];
        squash_row(
            head,
            &noise[p.n_eps as usize + (t * b + r) * a..][..a],
            &sq,
            &mut scratch,
            Some((&g_a, g_logp, &mut d_head[r * 2 * a..(r + 1) * 2 * a])),
        );
        if counts && p.mean_penalty > 0.0 {
            for (j, mu) in head[..a].iter().enumerate() {
                let excess = mu.abs() - p.mean_limit;
                if excess > 0.0 {
                    // −w·λ·2·excess·sign μ, as `path_loss` adds it.
                    d_head[r * 2 * a + j] -= p.w * (p.mean_penalty * 2.0 * excess * mu.signum());
                }
            }
        }
        state[r * o..(r + 1) * o]
            .copy_from_slice(&tape[p.t_states as usize + (t * b + r) * o..][..o]);
    }
}

/// See [`crate::backend::Backend::path_accumulate`].
pub fn path_accumulate(
    p: &PathParams,
    g_step: &[f32],
    ds: &[f32],
    grad: &mut [f32],
    back: &mut [f32],
) {
    let first = p.t == p.horizon;
    let mut k = 1.0f32;
    if p.step_grad_norm > 0.0 {
        let norm = g_step[..p.len as usize]
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt();
        if norm > p.step_grad_norm {
            k = p.step_grad_norm / norm;
        }
    }
    for (g, d) in grad[..p.len as usize].iter_mut().zip(g_step) {
        *g = if first { 0.0 } else { *g } + k * *d;
    }
    let n = (p.rows * p.obs_dim) as usize;
    for (g, d) in back[..n].iter_mut().zip(&ds[..n]) {
        *g += *d;
    }
}
