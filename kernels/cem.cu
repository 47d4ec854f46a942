// cem.cu — CEM / random-shooting sampling and the CEM update; the twin of
// src/backend/cpu/cem.rs and shaders/cem.wgsl. Compiled after common.cuh.
//
// Entry points (block = 256 threads):
//   cem_init    grid-stride over the len plan elements: the warm-start shift, read from the
//               previous plan's buffer and written to another (no thread reads what another
//               writes), and the initial variance (ub − lb)²/16, so that a planning step
//               uploads only its observation.
//   cem_sample  grid-stride over P·len elements, one thread per element: element
//               c·len + j is a pure function of Philox coordinates (no state between draws),
//               so any mapping of threads gives the CPU's samples. Memory-bound; the
//               truncated normal's rejection loop almost always exits on the first attempt.
//               iCEM's coloured noise (dist 2) is the inverse DFT of its sequence's H/2 + 1
//               random Fourier coefficients: each element recomputes the coefficients it
//               needs (O(H) Philox draws) instead of sharing them, so that threads stay
//               independent; at H = 30 that is ≈ 16 blocks per element, negligible next to
//               a rollout.
//   cem_gather  iCEM's elite memory: after cem_rank, elite r's row and return copied into
//               the elite buffers (one thread per element of the K·len rows).
//   cem_keep    kept elites copied into population rows dst_row.., shifted one action
//               earlier at a new control step (last action from the mean).
//   cem_rank    grid ⌈P/256⌉: candidate i's rank is the number of candidates that beat it
//               (higher return, or equal return and lower index; NaN ranks as −∞), found by
//               comparing against all P returns staged 256 at a time through shared memory.
//               O(P²) compares spread over P threads: for P = 500 that is 250 k compares, a
//               few microseconds, and it needs no sort, no atomics and gives exactly the CPU's
//               order (Rust's total_cmp, reproduced on the bits). Ranks < num_elites are
//               scattered to elite_idx[rank].
//   cem_update  one thread per element j of the action sequence: mean and biased variance over
//               the elites in rank order (the CPU's summation order, so the result is
//               bit-identical), smoothed by α and clamped below.

// Identical to src/backend/mod.rs `SampleParams`.
typedef struct {
  u32 seed_lo, seed_hi, step, population;
  u32 len, act_dim, dist;
  float beta;
} SampleParams;

// Identical to src/backend/mod.rs `EliteParams`.
typedef struct {
  u32 population, len, act_dim, num_elites;
  u32 dst_row, shift, pad0, pad1;
} EliteParams;

// Identical to src/backend/mod.rs `InitParams`.
typedef struct {
  u32 len, act_dim, shift, pad;
} InitParams;

// Identical to src/backend/mod.rs `UpdateParams`.
typedef struct {
  u32 population, len, num_elites, pad;
  float alpha, min_var;
  u32 pad2[2];
} UpdateParams;

// Rust's f32::min / f32::max: a NaN operand yields the other one.
DEVFN float rust_min(float a, float b) {
  if (a != a) return b;
  if (b != b) return a;
  return a < b ? a : b;
}
DEVFN float rust_max(float a, float b) {
  if (a != a) return b;
  if (b != b) return a;
  return a > b ? a : b;
}

KERNEL BOUNDS(256) void cem_init(InitParams p, GLOBAL const float* lower,
                                 GLOBAL const float* upper, GLOBAL const float* prev,
                                 GLOBAL float* mean, GLOBAL float* var) {
  const u32 stride = 256u * (u32)NGRP_X;
  for (u32 j = (u32)GRP_X * 256u + (u32)LID; j < p.len; j += stride) {
    const u32 a = j % p.act_dim;
    const float lb = lower[a], ub = upper[a];
    mean[j] = (p.shift == 1u && j + p.act_dim < p.len) ? prev[j + p.act_dim]
                                                       : FMUL(0.5f, lb + ub);
    var[j] = FMUL(ub - lb, ub - lb) / 16.0f;
  }
}

// cos(2πu) for any u.
DEVFN float cos_2pi(float u) { return COSPIF(FMUL(2.0f, u)); }

// backend::cpu::cem::noise_amplitude: f^(−β/2), the DC term at the lowest frequency's.
DEVFN float noise_amplitude(float beta, u32 f) {
  return EXPF(FMUL(-0.5f * beta, LOGF((float)(f > 1u ? f : 1u))));
}

// Element t of coloured-noise sequence s of length h: backend::cpu::cem::colored_noise, the
// same sums in the same order.
DEVFN float colored_noise(u32 seed_lo, u32 seed_hi, u32 step, float beta, u32 s, u32 h,
                          u32 t) {
  const u32 base = s * (h + 2u);
  const u32 both = (h + 1u) / 2u - 1u;  // frequencies with a cosine and a sine
  const int nyquist = (h % 2u == 0u) && h >= 2u;
  const float a0 = noise_amplitude(beta, 0u);
  float norm = FMUL(a0, a0);
  for (u32 f = 1u; f <= both; ++f) {
    const float af = noise_amplitude(beta, f);
    norm += FMUL(FMUL(2.0f, af), af);
  }
  const float an = noise_amplitude(beta, h / 2u);
  if (nyquist) norm += FMUL(an, an);
  const float inv = 1.0f / SQRTF(norm);
  float x = FMUL(a0, philox_normal(seed_lo, seed_hi, STREAM_ICEM_NOISE, base, step));
  for (u32 f = 1u; f <= both; ++f) {
    const float af = FMUL(1.41421356f, noise_amplitude(beta, f));
    const float ca = FMUL(af, philox_normal(seed_lo, seed_hi, STREAM_ICEM_NOISE, base + 2u * f, step));
    const float cb =
        FMUL(af, philox_normal(seed_lo, seed_hi, STREAM_ICEM_NOISE, base + 2u * f + 1u, step));
    const float u = (float)((f * t) % h) / (float)h;
    x += FMUL(ca, cos_2pi(u)) - FMUL(cb, cos_2pi(u - 0.25f));
  }
  if (nyquist) {
    const float cn =
        FMUL(an, philox_normal(seed_lo, seed_hi, STREAM_ICEM_NOISE, base + h, step));
    x += (t % 2u == 0u) ? cn : -cn;
  }
  return FMUL(x, inv);
}

KERNEL BOUNDS(256) void cem_sample(SampleParams p, GLOBAL const float* mean,
                                   GLOBAL const float* var, GLOBAL const float* lower,
                                   GLOBAL const float* upper, GLOBAL float* out) {
  const u32 total = p.population * p.len;
  const u32 stride = 256u * (u32)NGRP_X;
  for (u32 i = (u32)GRP_X * 256u + (u32)LID; i < total; i += stride) {
    const u32 j = i % p.len;
    const u32 a = j % p.act_dim;
    const float lb = lower[a], ub = upper[a];
    float v;
    if (p.dist == 1u) {
      v = lb + FMUL(philox_uniform(p.seed_lo, p.seed_hi, STREAM_CEM_SAMPLE, i, p.step), ub - lb);
    } else if (p.dist == 2u) {
      const u32 c = i / p.len;
      const float x = colored_noise(p.seed_lo, p.seed_hi, p.step, p.beta, c * p.act_dim + a,
                                    p.len / p.act_dim, j / p.act_dim);
      v = clamp_f32(mean[j] + FMUL(SQRTF(rust_max(var[j], 0.0f)), x), lb, ub);
    } else {
      const float m = mean[j];
      // The largest variance whose ±2σ interval still fits inside the bounds.
      const float dl = FMUL(m - lb, 0.5f), du = FMUL(ub - m, 0.5f);
      const float cv = rust_min(rust_min(var[j], FMUL(dl, dl)), FMUL(du, du));
      const float z = philox_truncated_normal(p.seed_lo, p.seed_hi, STREAM_CEM_SAMPLE, i, p.step);
      v = clamp_f32(m + FMUL(z, SQRTF(cv)), lb, ub);
    }
    out[i] = v;
  }
}

// Sortable key of a return: NaN → −∞, then Rust's total_cmp order as a signed integer.
DEVFN int rank_key(float r) {
  if (r != r) r = NEG_INF_F32;
  const int b = (int)AS_U32(r);
  return b ^ ((b >> 31) & 0x7fffffff);
}

KERNEL BOUNDS(256) void cem_rank(UpdateParams p, GLOBAL const float* returns,
                                 GLOBAL u32* elite_idx) {
  SHARED int keys[256];
  const int P = (int)p.population;
  const int i = GRP_X * 256 + LID;
  const int mine = i < P ? rank_key(returns[i]) : 0;
  int rank = 0;
  for (int j0 = 0; j0 < P; j0 += 256) {
    SYNC();
    if (j0 + LID < P) keys[LID] = rank_key(returns[j0 + LID]);
    SYNC();
    const int nj = imin(256, P - j0);
    for (int jj = 0; jj < nj; ++jj) {
      const int kj = keys[jj];
      const int j = j0 + jj;
      rank += (kj > mine || (kj == mine && j < i)) ? 1 : 0;
    }
  }
  if (i < P && rank < (int)p.num_elites) elite_idx[rank] = (u32)i;
}

KERNEL BOUNDS(256) void cem_update(UpdateParams p, GLOBAL const float* population,
                                   GLOBAL const u32* elite_idx, GLOBAL float* mean,
                                   GLOBAL float* var) {
  const u32 j = (u32)GRP_X * 256u + (u32)LID;
  if (j >= p.len) return;
  const u32 k = p.num_elites;
  const float kf = (float)(k > 0u ? k : 1u);
  float m = 0.0f;
  for (u32 q = 0u; q < k; ++q) m += population[elite_idx[q] * p.len + j];
  m = m / kf;
  float v = 0.0f;
  for (u32 q = 0u; q < k; ++q) {
    const float d = population[elite_idx[q] * p.len + j] - m;
    v += FMUL(d, d);
  }
  v = v / kf;
  mean[j] = FMUL(p.alpha, mean[j]) + FMUL(1.0f - p.alpha, m);
  var[j] = rust_max(FMUL(p.alpha, var[j]) + FMUL(1.0f - p.alpha, v), p.min_var);
}

KERNEL BOUNDS(256) void cem_gather(EliteParams p, GLOBAL const float* population,
                                   GLOBAL const float* returns, GLOBAL const u32* elite_idx,
                                   GLOBAL float* elites, GLOBAL float* elite_returns) {
  const u32 total = p.num_elites * p.len;
  const u32 stride = 256u * (u32)NGRP_X;
  for (u32 i = (u32)GRP_X * 256u + (u32)LID; i < total; i += stride) {
    const u32 r = i / p.len, j = i % p.len;
    const u32 c = elite_idx[r];
    elites[i] = population[c * p.len + j];
    if (j == 0u) elite_returns[r] = returns[c];
  }
}

KERNEL BOUNDS(256) void cem_keep(EliteParams p, GLOBAL const float* elites,
                                 GLOBAL const float* mean, GLOBAL float* population) {
  const u32 total = p.num_elites * p.len;
  const u32 stride = 256u * (u32)NGRP_X;
  for (u32 i = (u32)GRP_X * 256u + (u32)LID; i < total; i += stride) {
    const u32 r = i / p.len, j = i % p.len;
    float v;
    if (p.shift == 0u) {
      v = elites[i];
    } else if (j + p.act_dim < p.len) {
      v = elites[i + p.act_dim];
    } else {
      v = mean[j];
    }
    population[(p.dst_row + r) * p.len + j] = v;
  }
}
