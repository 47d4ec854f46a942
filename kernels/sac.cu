// sac.cu — the SAC stages between the dense-layer engine's products; twin of
// src/backend/cpu/sac.rs (which calls policy::sac's squash_row, the specification) and
// shaders/sac.wgsl. Compiled after common.cuh.
//
// Entry points (blocks of 256 threads):
//   sac_squash           grid ⌈B/256⌉, a thread per row: the critics' input [obs, action]
//                        twice, the sampled action and its log π (or the given action).
//   sac_critic_grad      one block: the TD target, dQ and the critic loss; the block strides
//                        the 2B critic rows and sums its lanes with block_sum (deterministic).
//   sac_actor_grad       one block: dQ of the actor loss at the sampled actions, the
//                        temperature's gradient and the statistics.
//   sac_squash_backward  grid ⌈B/256⌉: squash_row's backward to the actor's raw head.
//   polyak               grid-stride elementwise: θ̄ ← θ̄ + τ·(θ − θ̄).
//   sac_noise            grid ⌈B·A/256⌉: the update's ε (Philox normals, stream p.stream).
//   sac_minibatch        grid ⌈B/256⌉: row b from replay slot below(len) of (p.stream, b,
//                        p.step), unpacked from the ring's [obs, act, r, next_obs, term].
// A SAC minibatch is small (B = 256 rows of a few dozen values): these stages are a few
// microseconds each, next to the network products in ensemble.cu.

// Identical to src/backend/mod.rs `SacParams`.
typedef struct {
  u32 rows, obs_dim, act_dim, given;
  float gamma, target_entropy, tau;
  u32 len;
  u32 seed_lo, seed_hi, stream, step;
} SacParams;

// policy::sac::{LOG_STD_MIN, LOG_STD_MAX, TANH_EPS} and ½·ln 2π.
#define SAC_LOG_STD_MIN (-20.0f)
#define SAC_LOG_STD_MAX 2.0f
#define SAC_TANH_EPS 1e-6f
#define SAC_HALF_LN_2PI 0.9189385332046727f

// Rust's f32::min for finite values.
DEVFN float min_f32(float a, float b) { return b < a ? b : a; }

// squash_row's shared terms of row r, action j.
typedef struct {
  float raw;    // the head's log σ before the clamp
  float ls;     // log σ, clamped to [LOG_STD_MIN, LOG_STD_MAX]
  float sigma;
  float e;      // ε
  float t;      // tanh(μ + σ·ε)
  float scale;
  float det;    // scale·(1 − t²) + TANH_EPS
} SquashTerms;

DEVFN SquashTerms squash_terms(SacParams p, GLOBAL const float* head, GLOBAL const float* eps,
                               GLOBAL const float* sb, u32 r, u32 j) {
  const u32 a = p.act_dim;
  SquashTerms q;
  q.raw = head[r * 2u * a + a + j];
  q.ls = clamp_f32(q.raw, SAC_LOG_STD_MIN, SAC_LOG_STD_MAX);
  q.sigma = EXPF(q.ls);
  q.e = eps[r * a + j];
  q.t = TANHF(head[r * 2u * a + j] + FMUL(q.sigma, q.e));
  q.scale = sb[j];
  q.det = FMUL(q.scale, 1.0f - FMUL(q.t, q.t)) + SAC_TANH_EPS;
  return q;
}

KERNEL BOUNDS(256) void sac_squash(SacParams p, GLOBAL const float* head,
                                   GLOBAL const float* eps, GLOBAL const float* obs,
                                   GLOBAL const float* sb, GLOBAL const float* act_in,
                                   GLOBAL float* logp, GLOBAL float* x) {
  const u32 r = (u32)GRP_X * 256u + (u32)LID;
  if (r >= p.rows) return;
  const u32 a = p.act_dim, o = p.obs_dim, w = o + a;
  for (u32 j = 0; j < o; ++j) {
    const float v = obs[r * o + j];
    x[r * w + j] = v;
    x[(p.rows + r) * w + j] = v;
  }
  if (p.given != 0u) {
    for (u32 j = 0; j < a; ++j) {
      const float v = act_in[r * a + j];
      x[r * w + o + j] = v;
      x[(p.rows + r) * w + o + j] = v;
    }
    return;
  }
  float lp = 0.0f;
  for (u32 j = 0; j < a; ++j) {
    const SquashTerms q = squash_terms(p, head, eps, sb, r, j);
    const float act = FMUL(q.scale, q.t) + sb[a + j];
    x[r * w + o + j] = act;
    x[(p.rows + r) * w + o + j] = act;
    lp += FMUL(FMUL(-0.5f, q.e), q.e) - q.ls - SAC_HALF_LN_2PI - LOGF(q.det);
  }
  logp[r] = lp;
}

KERNEL BOUNDS(256) void sac_critic_grad(SacParams p, GLOBAL const float* q_next,
                                        GLOBAL const float* logp_next,
                                        GLOBAL const float* reward, GLOBAL const float* mask,
                                        GLOBAL const float* log_alpha, GLOBAL const float* q,
                                        GLOBAL float* dq, GLOBAL float* stats) {
  SHARED float red[BLOCK_REDUCE_THREADS];
  const u32 b = p.rows;
  const float alpha = EXPF(log_alpha[0]);
  const float inv_b = 1.0f / (float)b;
  float loss = 0.0f, q_sum = 0.0f;
  for (u32 i = (u32)LID; i < 2u * b; i += 256u) {
    const u32 r = i % b;
    const float v = min_f32(q_next[r], q_next[b + r]) - FMUL(alpha, logp_next[r]);
    const float y = reward[r] + FMUL(FMUL(p.gamma, mask[r]), v);
    const float diff = q[i] - y;
    loss += FMUL(FMUL(diff, diff), inv_b);
    q_sum += q[i];
    dq[i] = FMUL(FMUL(2.0f, diff), inv_b);
  }
  loss = block_sum(loss, red);
  q_sum = block_sum(q_sum, red);
  if (LID == 0) {
    stats[0] += loss;
    stats[1] += FMUL(FMUL(q_sum, inv_b), 0.5f);
  }
}

KERNEL BOUNDS(256) void sac_actor_grad(SacParams p, GLOBAL const float* q,
                                       GLOBAL const float* logp, GLOBAL const float* log_alpha,
                                       GLOBAL float* dq, GLOBAL float* alpha_grad,
                                       GLOBAL float* stats) {
  SHARED float red[BLOCK_REDUCE_THREADS];
  const u32 b = p.rows;
  const float la = log_alpha[0];
  const float alpha = EXPF(la);
  const float inv_b = 1.0f / (float)b;
  float loss = 0.0f, lp_sum = 0.0f;
  for (u32 r = (u32)LID; r < b; r += 256u) {
    const float q1 = q[r], q2 = q[b + r];
    loss += FMUL(FMUL(alpha, logp[r]) - min_f32(q1, q2), inv_b);
    lp_sum += logp[r];
    const float c = -inv_b;
    dq[r] = q1 < q2 ? c : (q2 < q1 ? 0.0f : FMUL(0.5f, c));
    dq[b + r] = q2 < q1 ? c : (q1 < q2 ? 0.0f : FMUL(0.5f, c));
  }
  loss = block_sum(loss, red);
  lp_sum = block_sum(lp_sum, red);
  if (LID == 0) {
    const float lp_mean = FMUL(lp_sum, inv_b);
    const float h = p.target_entropy;
    alpha_grad[0] = -(lp_mean + h);
    stats[2] += loss;
    stats[3] += FMUL(-la, lp_mean + h);
    stats[4] -= lp_mean;
    stats[5] += 1.0f;
    stats[6] += alpha;
  }
}

KERNEL BOUNDS(256) void sac_squash_backward(SacParams p, GLOBAL const float* head,
                                            GLOBAL const float* eps, GLOBAL const float* sb,
                                            GLOBAL const float* dx,
                                            GLOBAL const float* log_alpha,
                                            GLOBAL float* d_head) {
  const u32 r = (u32)GRP_X * 256u + (u32)LID;
  if (r >= p.rows) return;
  const u32 a = p.act_dim, o = p.obs_dim, w = o + a;
  const float g_logp = FMUL(EXPF(log_alpha[0]), 1.0f / (float)p.rows);
  for (u32 j = 0; j < a; ++j) {
    const float g_a = dx[r * w + o + j] + dx[(p.rows + r) * w + o + j];
    const SquashTerms q = squash_terms(p, head, eps, sb, r, j);
    const float omt = 1.0f - FMUL(q.t, q.t);
    const float du = FMUL(FMUL(g_a, q.scale), omt) +
                     FMUL(FMUL(FMUL(FMUL(g_logp, 2.0f), q.t), q.scale), omt) / q.det;
    d_head[r * 2u * a + j] = du;
    const int inside = q.raw >= SAC_LOG_STD_MIN && q.raw <= SAC_LOG_STD_MAX;
    d_head[r * 2u * a + a + j] = inside ? FMUL(FMUL(du, q.sigma), q.e) - g_logp : 0.0f;
  }
}

KERNEL BOUNDS(256) void polyak(SacParams p, GLOBAL float* target, GLOBAL const float* online) {
  const u32 stride = 256u * (u32)NGRP_X;
  for (u32 i = (u32)GRP_X * 256u + (u32)LID; i < p.len; i += stride) {
    const float t = target[i];
    target[i] = t + FMUL(p.tau, online[i] - t);
  }
}

KERNEL BOUNDS(256) void sac_noise(SacParams p, GLOBAL float* eps_next, GLOBAL float* eps_pi) {
  const u32 i = (u32)GRP_X * 256u + (u32)LID;
  const u32 n = p.rows * p.act_dim;
  if (i >= n) return;
  eps_next[i] = philox_normal(p.seed_lo, p.seed_hi, p.stream, i, p.step);
  eps_pi[i] = philox_normal(p.seed_lo, p.seed_hi, p.stream, n + i, p.step);
}

KERNEL BOUNDS(256) void sac_minibatch(SacParams p, GLOBAL const float* ring, GLOBAL float* obs,
                                      GLOBAL float* act, GLOBAL float* reward,
                                      GLOBAL float* next_obs, GLOBAL float* mask) {
  const u32 r = (u32)GRP_X * 256u + (u32)LID;
  if (r >= p.rows) return;
  const u32 o = p.obs_dim, a = p.act_dim, w = 2u * o + a + 2u;
  const u32 s = philox_below(p.seed_lo, p.seed_hi, p.stream, r, p.step, p.len);
  GLOBAL const float* row = ring + s * w;
  for (u32 j = 0; j < o; ++j) {
    obs[r * o + j] = row[j];
    next_obs[r * o + j] = row[o + a + 1u + j];
  }
  for (u32 j = 0; j < a; ++j) act[r * a + j] = row[o + j];
  reward[r] = row[o + a];
  mask[r] = 1.0f - row[2u * o + a + 1u];
}
