// mppi.cu — MPPI sampling and update; the twin of src/backend/cpu/mppi.rs and
// shaders/mppi.wgsl. Compiled after common.cuh.
//
// Entry points (block = 256 threads):
//   mppi_sample  grid-stride over P·len elements: the correlated noise of element
//                (c, t, a) is Σ_{b ≤ a} L[a, b]·z(c·len + t·A + b), each z a pure function of
//                its Philox coordinates, so a thread draws the a + 1 normals it needs itself.
//   mppi_cost    one thread per candidate: S_c = −R_c + λ Σ_t U_tᵀ Σ⁻¹ (V_{c,t} − U_t),
//                +∞ where not finite.
//   mppi_update  one thread per plan element j: the least cost (every thread reads all P
//                costs; P·len reads in all, a few hundred kilobytes for P = 1000, H = 30),
//                then Σ_c w_c V_{c,j} and Σ_c w_c in candidate order (the CPU adds the
//                numerator in 128-candidate partial sums): the results differ from the CPU's
//                by exp and by rounding, a few ULP.

// Identical to src/backend/mod.rs `MppiParams`.
typedef struct {
  u32 seed_lo, seed_hi, step, population;
  u32 len, act_dim;
  float lambda, alpha;
} MppiParams;

KERNEL BOUNDS(256) void mppi_sample(MppiParams p, GLOBAL const float* mean,
                                    GLOBAL const float* chol, GLOBAL const float* lower,
                                    GLOBAL const float* upper, GLOBAL float* out) {
  const u32 total = p.population * p.len;
  const u32 stride = 256u * (u32)NGRP_X;
  const u32 A = p.act_dim;
  for (u32 i = (u32)GRP_X * 256u + (u32)LID; i < total; i += stride) {
    const u32 c = i / p.len, j = i % p.len;
    const u32 t = j / A, d = j % A;
    float eps = 0.0f;
    for (u32 b = 0u; b <= d; ++b) {
      const float z =
          philox_normal(p.seed_lo, p.seed_hi, STREAM_MPPI_SAMPLE, c * p.len + t * A + b, p.step);
      eps += FMUL(chol[d * A + b], z);
    }
    out[i] = clamp_f32(mean[j] + eps, lower[d], upper[d]);
  }
}

KERNEL BOUNDS(256) void mppi_cost(MppiParams p, GLOBAL const float* population,
                                  GLOBAL const float* returns, GLOBAL const float* precision,
                                  GLOBAL const float* mean, GLOBAL float* costs) {
  const u32 c = (u32)GRP_X * 256u + (u32)LID;
  if (c >= p.population) return;
  const u32 A = p.act_dim;
  GLOBAL const float* v = population + c * p.len;
  float quad = 0.0f;
  for (u32 t = 0u; t < p.len / A; ++t) {
    for (u32 d = 0u; d < A; ++d) {
      float pe = 0.0f;
      for (u32 b = 0u; b < A; ++b) pe += FMUL(precision[d * A + b], v[t * A + b] - mean[t * A + b]);
      quad += FMUL(mean[t * A + d], pe);
    }
  }
  const float s = -returns[c] + FMUL(p.lambda, quad);
  costs[c] = finite_f32(s) ? s : AS_F32(0x7f800000u);
}

KERNEL BOUNDS(256) void mppi_update(MppiParams p, GLOBAL const float* population,
                                    GLOBAL const float* costs, GLOBAL float* mean) {
  const u32 j = (u32)GRP_X * 256u + (u32)LID;
  if (j >= p.len) return;
  float lo = AS_F32(0x7f800000u);
  for (u32 c = 0u; c < p.population; ++c) lo = costs[c] < lo ? costs[c] : lo;
  if (!finite_f32(lo)) return;
  float num = 0.0f, den = 0.0f;
  for (u32 c = 0u; c < p.population; ++c) {
    const float s = costs[c];
    const float w = finite_f32(s) ? EXPF(-(s - lo) / p.lambda) : 0.0f;
    num += FMUL(w, population[c * p.len + j]);
    den += w;
  }
  mean[j] = FMUL(p.alpha, mean[j]) + FMUL(1.0f - p.alpha, num / den);
}
