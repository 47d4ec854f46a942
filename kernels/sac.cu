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
//   path_squash, path_terminal, path_actor_back, path_accumulate: the path gradient's policy
//                        stages (MAAC, SVG), listed with their grids at the end of the file.
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

// Action j of one row of a actions: `hd` the row's head [μ, log σ_raw], `eps` its ε.
DEVFN SquashTerms squash_terms_row(u32 a, GLOBAL const float* hd, GLOBAL const float* eps,
                                   GLOBAL const float* sb, u32 j) {
  SquashTerms q;
  q.raw = hd[a + j];
  q.ls = clamp_f32(q.raw, SAC_LOG_STD_MIN, SAC_LOG_STD_MAX);
  q.sigma = EXPF(q.ls);
  q.e = eps[j];
  q.t = TANHF(hd[j] + FMUL(q.sigma, q.e));
  q.scale = sb[j];
  q.det = FMUL(q.scale, 1.0f - FMUL(q.t, q.t)) + SAC_TANH_EPS;
  return q;
}

DEVFN SquashTerms squash_terms(SacParams p, GLOBAL const float* head, GLOBAL const float* eps,
                               GLOBAL const float* sb, u32 r, u32 j) {
  const u32 a = p.act_dim;
  return squash_terms_row(a, head + r * 2u * a, eps + r * a, sb, j);
}

// log π's term of action j (squash_row's order).
DEVFN float squash_logp_term(SquashTerms q) {
  return FMUL(FMUL(-0.5f, q.e), q.e) - q.ls - SAC_HALF_LN_2PI - LOGF(q.det);
}

// squash_row's backward for action j: writes ∂/∂μ_j and ∂/∂log σ_raw_j of
// g_a·a_j + g_logp·log π into the row's d_head `dh`.
DEVFN void squash_back_term(SquashTerms q, float g_a, float g_logp, GLOBAL float* dh, u32 a,
                            u32 j) {
  const float omt = 1.0f - FMUL(q.t, q.t);
  const float du = FMUL(FMUL(g_a, q.scale), omt) +
                   FMUL(FMUL(FMUL(FMUL(g_logp, 2.0f), q.t), q.scale), omt) / q.det;
  dh[j] = du;
  const int inside = q.raw >= SAC_LOG_STD_MIN && q.raw <= SAC_LOG_STD_MAX;
  dh[a + j] = inside ? FMUL(FMUL(du, q.sigma), q.e) - g_logp : 0.0f;
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
    lp += squash_logp_term(q);
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
    squash_back_term(q, g_a, g_logp, d_head + r * 2u * a, a, j);
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

// ---- The path gradient's policy stages (src/backend/cpu/sac.rs `path_*`, the specification;
// `PathParams` in common.cuh lays out the noise, tape and back buffers) --------------------
//   path_squash      t < H: grid ⌈members·per/256⌉, a thread per grouped slot (the row the
//                    inverse table puts there: its squash into the tape and its model input;
//                    zeros for an empty slot); t = H: grid ⌈B/256⌉, a thread per row (its
//                    squash and both critic rows).
//   path_terminal    one block: J, the report and α's gradient summed with block_sum
//                    (deterministic), ∂loss/∂Q per row.
//   path_actor_back  grid ⌈B/256⌉, a thread per row: g_s, g_a and squash_row's backward.
//   path_accumulate  grid-stride over max(len, B·O).
// A table entry out of range (a row ≥ B, a slot ≥ members·per) is taken as empty: nothing
// is read through it.

#define PATH_EMPTY_SLOT 0xffffffffu

// Row r's squashed action and log π at step p.t into the tape (with its head; at t = 0 also
// s₀ and alive₀).
DEVFN void path_squash_row(PathParams p, GLOBAL const float* head, GLOBAL const float* obs,
                           GLOBAL const float* noise, GLOBAL float* tape, u32 r) {
  const u32 a = p.act_dim, o = p.obs_dim, tr = p.t * p.rows + r;
  GLOBAL const float* hd = head + r * 2u * a;
  GLOBAL const float* eps = noise + p.n_eps + tr * a;
  GLOBAL const float* sb = tape + p.t_squash;
  GLOBAL float* th = tape + p.t_heads + tr * 2u * a;
  for (u32 j = 0; j < 2u * a; ++j) th[j] = hd[j];
  float lp = 0.0f;
  for (u32 j = 0; j < a; ++j) {
    const SquashTerms q = squash_terms_row(a, hd, eps, sb, j);
    tape[p.t_act + tr * a + j] = FMUL(q.scale, q.t) + sb[a + j];
    lp += squash_logp_term(q);
  }
  tape[p.t_logp + tr] = lp;
  if (p.t == 0u) {
    for (u32 j = 0; j < o; ++j) tape[p.t_states + r * o + j] = obs[r * o + j];
    tape[p.t_alive + r] = 1.0f;
  }
}

// [s_t, a_t] of row r into row i of x.
DEVFN void path_input_row(PathParams p, GLOBAL const float* tape, GLOBAL float* x, u32 r,
                          u32 i) {
  const u32 a = p.act_dim, o = p.obs_dim, w = o + a, tr = p.t * p.rows + r;
  for (u32 j = 0; j < o; ++j) x[i * w + j] = tape[p.t_states + tr * o + j];
  for (u32 j = 0; j < a; ++j) x[i * w + o + j] = tape[p.t_act + tr * a + j];
}

KERNEL BOUNDS(256) void path_squash(PathParams p, GLOBAL const float* head,
                                    GLOBAL const float* obs, GLOBAL const float* noise,
                                    GLOBAL float* tape, GLOBAL float* x) {
  const u32 i = (u32)GRP_X * 256u + (u32)LID;
  if (p.t < p.horizon) {
    if (i >= p.members * p.per) return;
    const u32 r = AS_U32(noise[p.n_rowof + p.t * p.grouped + i]);
    if (r >= p.rows) {
      const u32 w = p.obs_dim + p.act_dim;
      for (u32 j = 0; j < w; ++j) x[i * w + j] = 0.0f;
      return;
    }
    path_squash_row(p, head, obs, noise, tape, r);
    path_input_row(p, tape, x, r, i);
  } else {
    if (i >= p.rows) return;
    path_squash_row(p, head, obs, noise, tape, i);
    path_input_row(p, tape, x, i, i);
    path_input_row(p, tape, x, i, p.rows + i);
  }
}

KERNEL BOUNDS(256) void path_terminal(PathParams p, GLOBAL const float* q,
                                      GLOBAL const float* log_alpha, GLOBAL float* tape,
                                      GLOBAL float* dq, GLOBAL float* alpha_grad,
                                      GLOBAL float* report, GLOBAL float* stats) {
  SHARED float red[BLOCK_REDUCE_THREADS];
  const u32 b = p.rows, h = p.horizon;
  const float alpha = EXPF(log_alpha[0]);
  float disc_h = 1.0f;
  for (u32 t = 0; t < h; ++t) disc_h = FMUL(disc_h, p.gamma);
  const float c_end = FMUL(p.w, disc_h);
  float j = 0.0f, r_sum = 0.0f, r_n = 0.0f, n_alive = 0.0f, lp_sum = 0.0f;
  for (u32 r = (u32)LID; r < b; r += 256u) {
    float disc = 1.0f;
    for (u32 t = 0; t < h; ++t) {
      const u32 tr = t * b + r;
      if (tape[p.t_alive + tr] != 0.0f) {
        j -= FMUL(FMUL(disc, alpha), tape[p.t_logp + tr]);
        if (tape[p.t_counted + tr] != 0.0f) {
          const float rew = tape[p.t_reward + tr];
          j += FMUL(disc, rew);
          r_sum += rew;
          r_n += 1.0f;
        }
      }
      disc = FMUL(disc, p.gamma);
    }
    const int live = tape[p.t_alive + h * b + r] != 0.0f;
    n_alive += live ? 1.0f : 0.0f;
    lp_sum += tape[p.t_logp + r];
    if (p.terminal_value != 0u) {
      const float q1 = q[r], q2 = q[b + r];
      if (live) j += FMUL(disc, min_f32(q1, q2) - FMUL(alpha, tape[p.t_logp + h * b + r]));
      const float c = live ? c_end : 0.0f;
      dq[r] = q1 < q2 ? c : (q2 < q1 ? 0.0f : FMUL(c, 0.5f));
      dq[b + r] = q2 < q1 ? c : (q1 < q2 ? 0.0f : FMUL(c, 0.5f));
    }
  }
  j = block_sum(j, red);
  r_sum = block_sum(r_sum, red);
  r_n = block_sum(r_n, red);
  n_alive = block_sum(n_alive, red);
  lp_sum = block_sum(lp_sum, red);
  if (LID == 0) {
    const float inv_b = 1.0f / (float)b;
    const float lp_mean = lp_sum / (float)b;
    report[0] = FMUL(-j, inv_b);
    report[1] = lp_mean;
    report[2] = r_n > 0.0f ? r_sum / r_n : 0.0f;
    report[3] = FMUL(n_alive, inv_b);
    alpha_grad[0] = -(lp_mean + p.target_entropy);
    tape[p.t_alpha] = alpha;
    // sac_actor_grad's statistics, with the path loss as the actor's.
    stats[2] += report[0];
    stats[3] += FMUL(-log_alpha[0], lp_mean + p.target_entropy);
    stats[4] -= lp_mean;
    stats[5] += 1.0f;
    stats[6] += alpha;
  }
}

KERNEL BOUNDS(256) void path_actor_back(PathParams p, GLOBAL const float* noise,
                                        GLOBAL const float* tape, GLOBAL const float* dx,
                                        GLOBAL float* back, GLOBAL float* d_head,
                                        GLOBAL float* state) {
  const u32 r = (u32)GRP_X * 256u + (u32)LID;
  const u32 b = p.rows;
  if (r >= b) return;
  const u32 o = p.obs_dim, a = p.act_dim, w = o + a, t = p.t, tr = t * b + r;
  const int last = t >= p.horizon, value = p.terminal_value != 0u;
  GLOBAL float* gs = back + r * o;
  GLOBAL const float* g_sr = back + b * o + r * o;
  GLOBAL const float* g_ar = back + 2u * b * o + r * a;
  // The model's input gradient at the row's slot (t < H), or the critics' rows (t = H).
  u32 slot = PATH_EMPTY_SLOT;
  if (!last) slot = AS_U32(noise[p.n_slot + tr]);
  const int has_slot = !last && slot < p.members * p.per;
  for (u32 j = 0; j < o; ++j) {
    if (last) {
      gs[j] = value ? dx[r * w + j] + dx[(b + r) * w + j] : 0.0f;
    } else {
      // s_{t+1} = s_t + Δ: the identity path, the model's input gradient, and the reward's
      // own ∂r/∂s_t.
      const float src = has_slot ? dx[slot * w + j] : 0.0f;
      gs[j] = (gs[j] + src) + g_sr[j];
    }
  }
  const float alpha = tape[p.t_alpha];
  const int live = tape[p.t_alive + tr] != 0.0f;
  const int counts = live && (!last || value);
  const float g_logp = counts ? FMUL(FMUL(-alpha, p.w), p.disc) : 0.0f;
  GLOBAL const float* hd = tape + p.t_heads + tr * 2u * a;
  GLOBAL const float* eps = noise + p.n_eps + tr * a;
  GLOBAL const float* sb = tape + p.t_squash;
  for (u32 j = 0; j < a; ++j) {
    float g_a;
    if (last) {
      g_a = value ? dx[r * w + o + j] + dx[(b + r) * w + o + j] : 0.0f;
    } else {
      g_a = (has_slot ? dx[slot * w + o + j] : 0.0f) + g_ar[j];
    }
    const SquashTerms q = squash_terms_row(a, hd, eps, sb, j);
    squash_back_term(q, g_a, g_logp, d_head + r * 2u * a, a, j);
    // The mean penalty λ·max(0, |μ| − m)² of a counted row: −w·λ·2·excess·sign μ.
    const float mu = hd[j], excess = FABSF(mu) - p.mean_limit;
    if (counts && p.mean_penalty > 0.0f && excess > 0.0f) {
      const float v = FMUL(FMUL(FMUL(p.mean_penalty, 2.0f), excess), mu > 0.0f ? 1.0f : -1.0f);
      d_head[r * 2u * a + j] -= FMUL(p.w, v);
    }
  }
  for (u32 j = 0; j < o; ++j) state[r * o + j] = tape[p.t_states + tr * o + j];
}

// With step_grad_norm > 0 the host launches one block: it sums |g_step|² (block_sum,
// deterministic) and scales g_step by k = min(1, step_grad_norm / |g_step|).
KERNEL BOUNDS(256) void path_accumulate(PathParams p, GLOBAL const float* g_step,
                                        GLOBAL const float* ds, GLOBAL float* grad,
                                        GLOBAL float* back) {
  SHARED float red[BLOCK_REDUCE_THREADS];
  const u32 n = p.rows * p.obs_dim, m = p.len > n ? p.len : n;
  const int first = p.t == p.horizon;
  const u32 stride = 256u * (u32)NGRP_X;
  float k = 1.0f;
  if (p.step_grad_norm > 0.0f) {
    float ss = 0.0f;
    for (u32 i = (u32)LID; i < p.len; i += 256u) ss += FMUL(g_step[i], g_step[i]);
    const float norm = SQRTF(block_sum(ss, red));
    if (norm > p.step_grad_norm) k = p.step_grad_norm / norm;
  }
  for (u32 i = (u32)GRP_X * 256u + (u32)LID; i < m; i += stride) {
    if (i < p.len) grad[i] = (first ? 0.0f : grad[i]) + FMUL(k, g_step[i]);
    if (i < n) back[i] += ds[i];
  }
}
