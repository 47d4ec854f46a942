// ensemble.cu — ensemble MLP forward and the Gaussian-NLL backward; the twin of
// src/backend/cpu/ensemble.rs (the specification) and shaders/ensemble.wgsl.
// Compiled after common.cuh and mlp.cuh (the Rust side prepends them).
//
// Entry points and launch geometry (block = 256 threads everywhere):
//   ensemble_forward          grid (⌈rows/32⌉, E): one block runs the whole network on a tile
//                             of 32 rows of one member (mlp.cuh explains the tile); writes mean
//                             and the soft-bounded log-variance.
//   ensemble_nll_backward     grid (⌈rows/32⌉, E): forward of the tile keeping the
//                             normalised input and every hidden pre-activation in global scratch,
//                             the loss and ∂L/∂head of each row, then the backward *data* path
//                             dZ_{l−1} = (dZ_l · W_lᵀ) ⊙ act′(z_{l−1}) for every layer while
//                             the tile is still in shared memory; writes each dZ_l to scratch and
//                             per-tile partial sums of the loss and of ∂L/∂(max, min logvar).
//                             With NLL_VJP in `flags` the head's upstream gradients are read
//                             from `target` (∂/∂mean) and `dlv` (∂/∂logvar) instead of formed
//                             from a loss: the vector–Jacobian product of `ensemble_vjp`; with
//                             NLL_DX the data path continues through layer 0 into
//                             dx = (dZ_0 · W_0ᵀ) / σ_in.
//   ensemble_nll_weight_grad  grid (⌈fan_out/32⌉, ⌈(fan_in+1)/32⌉, E), one launch per layer:
//                             dW_l = A_{l−1}ᵀ · dZ_l and db_l = Σ_rows dZ_l (the bias is input
//                             row fan_in, a row of ones) plus weight decay. Each block owns a
//                             32 × 32 block of the gradient and walks all rows in chunks of 32
//                             staged through shared memory, so the reduction over rows needs no
//                             atomics and is deterministic; every gradient entry is written once.
//   ensemble_nll_finish       one block: per-member losses and the log-variance-bound gradients
//                             from the per-tile partials (plus the bound penalty).
//   ensemble_pack_bf16        elementwise: round the flat parameters to bf16 (nearest even) for
//                             the MBRL_BF16_WEIGHTS variant.

// Identical to src/backend/cuda/params.rs `NllParams`. Offsets are in floats into `scratch`.
typedef struct {
  u32 ntiles;
  u32 xn_off;    // normalised inputs [E, rows, in]
  u32 z_off;     // hidden pre-activations [L][E, rows, hidden]
  u32 dz_off;    // dZ_l [E, rows, fan_out_l], layers in order
  u32 loss_off;  // per-tile loss partials [E, ntiles]
  u32 db_off;    // per-tile bound-gradient partials [E, ntiles, 2·out]
  float scale;   // 1 / (rows · out_dim)
  float logvar_penalty;
  u32 flags;     // NLL_VJP, NLL_DX
  u32 pad;
} NllParams;

#define NLL_VJP 1u
#define NLL_DX 2u

DEVFN u32 nll_dz_off(MlpShape s, NllParams q, int l) {
  u32 off = q.dz_off;
  for (int i = 0; i < l; ++i) off += s.ensemble * s.rows * (u32)mlp_fan_out(s, i);
  return off;
}

KERNEL BOUNDS(256) void ensemble_forward(MlpShape s, GLOBAL const float* P,
                                         GLOBAL const wtype* Wt, GLOBAL const float* norm,
                                         GLOBAL const float* x, GLOBAL float* mean,
                                         GLOBAL float* logvar DYN_SMEM_PARAM) {
  DYN_SMEM_DECL
  const int ld = (int)s.ld, in = (int)s.in_dim, D = (int)s.out_dim;
  const int e = GRP_Y, r0 = GRP_X * TILE_ROWS;
  const int n = imin(TILE_ROWS, (int)s.rows - r0);
  SMEM float* cur = dyn_smem;
  SMEM float* oth = dyn_smem + TILE_ROWS * ld;
  SMEM float* ws = dyn_smem + 2 * TILE_ROWS * ld;
  const u32 row0 = (u32)e * s.rows + (u32)r0;
  for (int i = LID; i < n * in; i += TILE_THREADS) {
    const int r = i / in, j = i % in;
    cur[r * ld + j] = (x[(row0 + (u32)r) * (u32)in + (u32)j] - norm[j]) / norm[in + j];
  }
  for (int l = 0; l <= (int)s.num_layers; ++l) {
    mlp_layer(s, P, Wt, l, e, cur, oth, ws, 0, n, mean, 0, 0u, NO_CTR);
    SMEM float* t = cur;
    cur = oth;
    oth = t;
  }
  const u32 bo = mlp_bounds_off(s);
  for (int i = LID; i < n * D; i += TILE_THREADS) {
    const int r = i / D, j = i % D;
    const u32 o = (row0 + (u32)r) * (u32)D + (u32)j;
    mean[o] = cur[r * ld + j];
    if (s.probabilistic)
      logvar[o] = bounded_logvar(cur[r * ld + D + j], P[bo + (u32)j], P[bo + (u32)D + (u32)j]);
  }
}

KERNEL BOUNDS(256) void ensemble_nll_backward(MlpShape s, NllParams q, GLOBAL const float* P,
                                              GLOBAL const wtype* Wt, GLOBAL const float* norm,
                                              GLOBAL const float* x, GLOBAL const float* target,
                                              GLOBAL const float* dlv_in, GLOBAL float* dx,
                                              GLOBAL float* scratch DYN_SMEM_PARAM) {
  DYN_SMEM_DECL
  const int ld = (int)s.ld, in = (int)s.in_dim, D = (int)s.out_dim, H = (int)s.hidden;
  const int L = (int)s.num_layers, hd = mlp_head_dim(s);
  const int e = GRP_Y, tile = GRP_X, r0 = tile * TILE_ROWS;
  const int n = imin(TILE_ROWS, (int)s.rows - r0);
  const u32 row0 = (u32)e * s.rows + (u32)r0;
  const u32 layer_z = s.ensemble * s.rows * s.hidden;
  SMEM float* cur = dyn_smem;
  SMEM float* oth = dyn_smem + TILE_ROWS * ld;
  SMEM float* ws = dyn_smem + 2 * TILE_ROWS * ld;
  SMEM float* red = ws + WS_FLOATS;

  // Forward, caching xn and the hidden pre-activations.
  for (int i = LID; i < n * in; i += TILE_THREADS) {
    const int r = i / in, j = i % in;
    const u32 o = (row0 + (u32)r) * (u32)in + (u32)j;
    const float v = (x[o] - norm[j]) / norm[in + j];
    cur[r * ld + j] = v;
    scratch[q.xn_off + o] = v;
  }
  for (int l = 0; l <= L; ++l) {
    mlp_layer(s, P, Wt, l, e, cur, oth, ws, 0, n, scratch, 1,
              q.z_off + (u32)l * layer_z + row0 * (u32)H, NO_CTR);
    SMEM float* t = cur;
    cur = oth;
    oth = t;
  }

  // Loss and ∂L/∂raw head (into oth); the bound-gradient contributions of (r, j) overwrite the
  // raw values of (r, j) and (r, D + j) in cur, which only this thread reads. A VJP reads the
  // upstream ∂/∂mean and ∂/∂logvar instead of forming them from the loss.
  const u32 bo = mlp_bounds_off(s);
  const int vjp = (q.flags & NLL_VJP) != 0u;
  float part = 0.0f;
  for (int i = LID; i < n * D; i += TILE_THREADS) {
    const int r = i / D, j = i % D;
    const u32 o = (row0 + (u32)r) * (u32)D + (u32)j;
    const float mu = cur[r * ld + j];
    const float diff = mu - target[o];
    if (s.probabilistic) {
      const float raw = cur[r * ld + D + j];
      const float mx = P[bo + (u32)j], mn = P[bo + (u32)D + (u32)j];
      const float lv = bounded_logvar(raw, mx, mn);
      const float inv = EXPF(-lv);
      float dmean, dlv;
      if (vjp) {
        dmean = target[o];
        dlv = dlv_in[o];
      } else {
        part += diff * diff * inv + lv;
        dmean = 2.0f * diff * inv * q.scale;
        dlv = (1.0f - diff * diff * inv) * q.scale;
      }
      // Chain rule through the soft bounds (cpu::ensemble::head_backward_row).
      const float u = mx - raw;
      const float lv1 = mx - softplus_f(u);
      const float sw = sigmoid_f(lv1 - mn);
      const float dlv1 = dlv * sw;
      const float su = sigmoid_f(u);
      oth[r * ld + j] = dmean;
      oth[r * ld + D + j] = dlv1 * su;
      cur[r * ld + j] = dlv1 * (1.0f - su);  // ∂/∂max_logvar[j]
      cur[r * ld + D + j] = dlv * (1.0f - sw);  // ∂/∂min_logvar[j]
    } else if (vjp) {
      oth[r * ld + j] = target[o];
    } else {
      part += diff * diff;
      oth[r * ld + j] = 2.0f * diff * q.scale;
    }
  }
  const float tile_loss = block_sum(part, red);
  if (LID == 0) scratch[q.loss_off + (u32)e * q.ntiles + (u32)tile] = tile_loss;
  if (s.probabilistic) {
    for (int j = LID; j < 2 * D; j += TILE_THREADS) {
      float acc = 0.0f;
      for (int r = 0; r < n; ++r) acc += cur[r * ld + j];
      scratch[q.db_off + ((u32)e * q.ntiles + (u32)tile) * (u32)(2 * D) + (u32)j] = acc;
    }
  }
  const u32 dzL = nll_dz_off(s, q, L);
  for (int i = LID; i < n * hd; i += TILE_THREADS) {
    const int r = i / hd, c = i % hd;
    scratch[dzL + (row0 + (u32)r) * (u32)hd + (u32)c] = oth[r * ld + c];
  }

  // Backward data path: dZ_{l−1} = (dZ_l · W_lᵀ) ⊙ act′(z_{l−1}).
  SMEM float* dz = oth;
  SMEM float* da = cur;
  for (int l = L; l >= 1; --l) {
    const int fi = mlp_fan_in(s, l), fo = mlp_fan_out(s, l);
    const u32 w_off = mlp_weight_off(s, l) + (u32)e * (u32)fi * (u32)fo;
    tile_gemm(dz, da, ld, Wt, w_off, fo, 1, fo, fi, P, 0u, 0, ACT_NONE, scratch, 0, 0u, 0, 0, n,
              ws, NO_CTR);
    const u32 zl = q.z_off + (u32)(l - 1) * layer_z;
    const u32 dzl = nll_dz_off(s, q, l - 1);
    for (int i = LID; i < n * H; i += TILE_THREADS) {
      const int r = i / H, c = i % H;
      const u32 o = (row0 + (u32)r) * (u32)H + (u32)c;
      const float g = da[r * ld + c] * act_grad(HIDDEN_ACT(s), scratch[zl + o]);
      da[r * ld + c] = g;
      scratch[dzl + o] = g;
    }
    SMEM float* t = dz;
    dz = da;
    da = t;
  }
  if ((q.flags & NLL_DX) != 0u) {
    // xn = (x − μ)/σ  ⇒  dx = (dZ_0 · W_0ᵀ) / σ.
    const int fo = mlp_fan_out(s, 0);
    const u32 w_off = mlp_weight_off(s, 0) + (u32)e * (u32)in * (u32)fo;
    tile_gemm(dz, da, ld, Wt, w_off, fo, 1, fo, in, P, 0u, 0, ACT_NONE, scratch, 0, 0u, 0, 0, n,
              ws, NO_CTR);
    for (int i = LID; i < n * in; i += TILE_THREADS) {
      const int r = i / in, c = i % in;
      dx[(row0 + (u32)r) * (u32)in + (u32)c] = da[r * ld + c] / norm[in + c];
    }
  }
}

KERNEL BOUNDS(256) void ensemble_nll_weight_grad(MlpShape s, NllParams q, u32 layer, float wd,
                                                 GLOBAL const float* P,
                                                 GLOBAL const float* scratch,
                                                 GLOBAL float* grad) {
  SHARED float As[32][33];
  SHARED float Ds[32][33];
  const int l = (int)layer;
  const int fi = mlp_fan_in(s, l), fo = mlp_fan_out(s, l);
  const int j0 = GRP_X * 32, k0 = GRP_Y * 32, e = GRP_Z;
  const int lane = LID & 31, warp = LID >> 5;
  const int rows = (int)s.rows, H = (int)s.hidden, in = (int)s.in_dim;
  const u32 base = (u32)e * s.rows;
  const u32 dz = nll_dz_off(s, q, l);
  const u32 zprev = q.z_off + (u32)(l - 1) * s.ensemble * s.rows * s.hidden;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int rb = 0; rb < rows; rb += 32) {
    SYNC();
    for (int i = LID; i < 32 * 32; i += TILE_THREADS) {
      const int rr = i / 32, cc = i % 32;
      const int r = rb + rr, k = k0 + cc, j = j0 + cc;
      float a = 0.0f, d = 0.0f;
      if (r < rows) {
        if (k < fi) {
          a = l == 0 ? scratch[q.xn_off + (base + (u32)r) * (u32)in + (u32)k]
                     : act_fwd(HIDDEN_ACT(s),
                               scratch[zprev + (base + (u32)r) * (u32)H + (u32)k]);
        } else if (k == fi) {
          a = 1.0f;
        }
        if (j < fo) d = scratch[dz + (base + (u32)r) * (u32)fo + (u32)j];
      }
      As[rr][cc] = a;
      Ds[rr][cc] = d;
    }
    SYNC();
    const int nr = imin(32, rows - rb);
    for (int rr = 0; rr < nr; ++rr) {
      const float d = Ds[rr][lane];
      UNROLL
      for (int i = 0; i < 4; ++i) acc[i] += As[rr][warp + 8 * i] * d;
    }
  }
  const int j = j0 + lane;
  if (j < fo) {
    const u32 w_off = mlp_weight_off(s, l) + (u32)e * (u32)fi * (u32)fo;
    const u32 b_off = mlp_bias_off(s, l) + (u32)e * (u32)fo;
    UNROLL
    for (int i = 0; i < 4; ++i) {
      const int k = k0 + warp + 8 * i;
      if (k < fi) {
        const u32 o = w_off + (u32)k * (u32)fo + (u32)j;
        float g = acc[i];
        if (wd != 0.0f) g += wd * P[o];
        grad[o] = g;
      } else if (k == fi) {
        grad[b_off + (u32)j] = acc[i];
      }
    }
  }
}

KERNEL BOUNDS(256) void ensemble_nll_finish(MlpShape s, NllParams q, GLOBAL const float* scratch,
                                            GLOBAL float* grad, GLOBAL float* losses) {
  const int E = (int)s.ensemble, D = (int)s.out_dim, T = (int)q.ntiles;
  for (int e = LID; e < E && (q.flags & NLL_VJP) == 0u; e += TILE_THREADS) {
    float acc = 0.0f;
    for (int t = 0; t < T; ++t) acc += scratch[q.loss_off + (u32)(e * T + t)];
    losses[e] = acc * q.scale;
  }
  if (s.probabilistic) {
    const u32 bo = mlp_bounds_off(s);
    for (int j = LID; j < 2 * D; j += TILE_THREADS) {
      float acc = 0.0f;
      for (int et = 0; et < E * T; ++et) acc += scratch[q.db_off + (u32)et * (u32)(2 * D) + (u32)j];
      grad[bo + (u32)j] = j < D ? acc + q.logvar_penalty : acc - q.logvar_penalty;
    }
  }
}

KERNEL BOUNDS(256) void ensemble_pack_bf16(u32 n, GLOBAL const float* src, GLOBAL u16* dst) {
  const u32 stride = (u32)TILE_THREADS * (u32)NGRP_X;
  for (u32 i = (u32)GRP_X * (u32)TILE_THREADS + (u32)LID; i < n; i += stride) {
    const u32 u = AS_U32(src[i]);
    u32 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      h = (u >> 16) | 0x40u;  // quiet NaN, as half::bf16::from_f32
    } else {
      h = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
    }
    dst[i] = (u16)h;
  }
}
