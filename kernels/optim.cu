// optim.cu — Adam (Kingma & Ba 2015, Algorithm 1) over the flat parameter vector; the twin of
// src/backend/cpu/optim.rs and shaders/optim.wgsl. Compiled after common.cuh.
//
// Entry point: adam_step, grid-stride over `len` with blocks of 256 threads and a grid sized
// to a few waves of the device. The kernel is bandwidth-bound (4 loads, 3 stores per
// element); consecutive threads touch consecutive elements, so every access is a full
// coalesced transaction. The bias corrections are computed once on the host with the CPU's
// own expressions (`lr / (1 − β₁ᵗ)`, `√(1 − β₂ᵗ)`) and every product is rounded separately
// (FMUL), so the update is bit-identical to the specification.

// Identical to src/backend/mod.rs `AdamParams`.
typedef struct {
  float lr, beta1, beta2, eps;
  u32 step, len;
  u32 pad[2];
} AdamParams;

DEVFN float adam_flush(float x) { return FABSF(x) < 1.17549435e-38f ? 0.0f : x; }

KERNEL BOUNDS(256) void adam_step(AdamParams p, float step_size, float bc2_sqrt, GLOBAL float* w,
                                  GLOBAL const float* g, GLOBAL float* m, GLOBAL float* v) {
  const u32 stride = 256u * (u32)NGRP_X;
  const float c1 = 1.0f - p.beta1, c2 = 1.0f - p.beta2;
  for (u32 i = (u32)GRP_X * 256u + (u32)LID; i < p.len; i += stride) {
    const float gi = g[i];
    // Moments below the smallest normal float become zero (src/backend/cpu/optim.rs `flush`).
    const float mi = adam_flush(FMUL(p.beta1, m[i]) + FMUL(c1, gi));
    const float vi = adam_flush(FMUL(p.beta2, v[i]) + FMUL(FMUL(c2, gi), gi));
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] - FMUL(step_size, mi) / (SQRTF(vi) / bc2_sqrt + p.eps);
  }
}
