// mlp.cuh — the ensemble-MLP tile engine shared by ensemble.cu (forward, NLL backward) and
// rollout.cu (the fused trajectory-sampling rollout). Prepended after common.cuh.
//
// Shapes follow src/backend/mod.rs: flat parameters, for l in 0..=L: W_l [E, fan_in, fan_out]
// then b_l [E, fan_out]; then (probabilistic) max_logvar [D], min_logvar [D].
//
// Tiling (why these numbers):
// - A block of 256 threads (8 warps) owns a tile of TILE_ROWS = 32 rows of one member and runs
//   the *whole network* on it: the activations of the tile never leave shared memory (two
//   ping-pong buffers of 32 × ld floats, ld ≥ the widest layer). For PETS' 200-wide networks
//   that is 58 KB, so an H100 SM (228 KB) keeps three such blocks resident, 24 warps.
// - Each layer is a [32 × K] · [K × N] product. Weights are staged through shared memory in
//   chunks of TILE_KC = 16 input rows × TILE_NT = 128 output columns (8 KB, coalesced 512 B
//   rows from global/L2, where the whole ensemble lives: 5 × 200 × 200 × 4 B = 0.8 MB).
// - Every thread accumulates a 4 × 4 register tile: rows ty + 8i (ty = warp), columns
//   tx·4 + j (tx = lane). Activation reads are warp broadcasts, weight reads are one
//   conflict-free 16-byte load per lane: 5 shared loads per 16 FMAs.
// - ld ≡ 4 (mod 32) so that the tensor-core path's fragment loads (8 rows × 4 columns per
//   warp) hit 32 distinct banks.
// - MBRL_TENSOR_CORES (CUDA only, sm_80+): the same tile product on mma.sync.m16n8k8 TF32
//   tensor cores, warp w computing rows 16·(w&1).. and columns 32·(w>>1).. of each 128-column
//   chunk; the staging, epilogue and shared layout are unchanged. TF32 keeps 10 mantissa
//   bits, so it is opt-in (CudaOptions::tensor_cores) and off in parity runs.
// - MBRL_BF16_WEIGHTS: weights are read from a bf16 copy (u16, converted with a shift while
//   staging, so OpenCL C can do it); biases, bounds and all accumulation stay f32.

#define TILE_ROWS 32
#define TILE_THREADS 256
#define TILE_KC 16
#define TILE_NT 128
#define TILE_RPT 4
#define TILE_CPT 4

// Identical to src/backend/cuda/params.rs `MlpShape`.
typedef struct {
  u32 ensemble, in_dim, out_dim, hidden;
  u32 num_layers, activation, probabilistic, rows;
  // Row stride of the shared activation tiles (≥ every layer's width, ≡ 4 mod 32).
  u32 ld;
  u32 pad0, pad1, pad2;
} MlpShape;

#define ACT_SILU 0
#define ACT_RELU 1
#define ACT_TANH 2
#define ACT_NONE (-1)

#ifdef MBRL_BF16_WEIGHTS
typedef u16 wtype;
DEVFN float load_w(GLOBAL const wtype* w, u32 i) { return AS_F32(((u32)w[i]) << 16); }
#else
typedef float wtype;
DEVFN float load_w(GLOBAL const wtype* w, u32 i) { return w[i]; }
#endif

DEVFN int mlp_head_dim(MlpShape s) { return s.probabilistic ? 2 * (int)s.out_dim : (int)s.out_dim; }
DEVFN int mlp_fan_in(MlpShape s, int l) { return l == 0 ? (int)s.in_dim : (int)s.hidden; }
DEVFN int mlp_fan_out(MlpShape s, int l) {
  return l == (int)s.num_layers ? mlp_head_dim(s) : (int)s.hidden;
}
DEVFN u32 mlp_weight_off(MlpShape s, int l) {
  u32 off = 0u;
  for (int i = 0; i < l; ++i) {
    u32 fi = (u32)mlp_fan_in(s, i), fo = (u32)mlp_fan_out(s, i);
    off += s.ensemble * fi * fo + s.ensemble * fo;
  }
  return off;
}
DEVFN u32 mlp_bias_off(MlpShape s, int l) {
  return mlp_weight_off(s, l) + s.ensemble * (u32)mlp_fan_in(s, l) * (u32)mlp_fan_out(s, l);
}
// Offset of max_logvar (min_logvar follows at + out_dim).
DEVFN u32 mlp_bounds_off(MlpShape s) { return mlp_weight_off(s, (int)s.num_layers + 1); }

// exp-based helpers, as src/backend/cpu/mod.rs defines them.
DEVFN float sigmoid_f(float x) { return 1.0f / (1.0f + EXPF(-x)); }
DEVFN float softplus_f(float x) {
  float ax = x < 0.0f ? -x : x;
  return (x > 0.0f ? x : 0.0f) + LOG1PF(EXPF(-ax));
}

DEVFN float act_fwd(int a, float z) {
  if (a == ACT_SILU) return z / (1.0f + EXPF(-z));
  if (a == ACT_RELU) return z > 0.0f ? z : 0.0f;
  return TANHF(z);
}

DEVFN float act_grad(int a, float z) {
  if (a == ACT_SILU) {
    float s = sigmoid_f(z);
    return s * (1.0f + z * (1.0f - s));
  }
  if (a == ACT_RELU) return z > 0.0f ? 1.0f : 0.0f;
  float t = TANHF(z);
  return 1.0f - t * t;
}

// Soft-bounded log-variance (PETS appendix A.1):
//   lv1 = max − softplus(max − raw),  lv = min + softplus(lv1 − min)
DEVFN float bounded_logvar(float raw, float hi, float lo) {
  float lv1 = hi - softplus_f(hi - raw);
  return lo + softplus_f(lv1 - lo);
}

// Epilogue of one output element: bias, optional pre-activation store, activation.
DEVFN void gemm_store(float v, int s, int c, SMEM float* out, int ld, GLOBAL const float* P,
                      u32 b_off, int has_bias, int act, GLOBAL float* zout, int store_z,
                      u32 z_base, int z_ld) {
  if (has_bias) v += P[b_off + (u32)c];
  if (store_z) zout[z_base + (u32)s * (u32)z_ld + (u32)c] = v;
  if (act >= 0) v = act_fwd(act, v);
  out[s * ld + c] = v;
}

#if MBRL_CUDA && defined(MBRL_TENSOR_CORES)
DEVFN u32 to_tf32(float x) {
  u32 r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}
DEVFN void mma_tf32(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif

// out[s][c] = epilogue( Σ_k in[s][k] · B(k, c) ) for slots s ∈ [s0, s1) and c ∈ [0, N), where
// B(k, c) = W[w_off + k·ldw + c], or W[w_off + c·ldw + k] when `trans` (Wᵀ, for the backward
// data path). `in` and `out` are distinct shared tiles of TILE_ROWS × ld; `ws` holds
// TILE_KC × TILE_NT floats. Every thread of the block must call (it synchronises).
DEVFN void tile_gemm(SMEM const float* in, SMEM float* out, int ld, GLOBAL const wtype* W,
                     u32 w_off, int ldw, int trans, int K, int N, GLOBAL const float* P,
                     u32 b_off, int has_bias, int act, GLOBAL float* zout, int store_z,
                     u32 z_base, int z_ld, int s0, int s1, SMEM float* ws) {
  const int lane = LID & 31;
  const int warp = LID >> 5;
  const int cnt = s1 - s0;
  for (int c0 = 0; c0 < N; c0 += TILE_NT) {
#if MBRL_CUDA && defined(MBRL_TENSOR_CORES)
    // Warp tile: 16 rows (absolute slots mb..mb+15) × 32 columns as four n8 tiles.
    const int mb = (warp & 1) * 16;
    const int nb = (warp >> 1) * 32;
    const int g = lane >> 2, t = lane & 3;
    float acc[4][4];
    UNROLL
    for (int q = 0; q < 4; ++q) {
      UNROLL
      for (int r = 0; r < 4; ++r) acc[q][r] = 0.0f;
    }
#else
    float acc[TILE_RPT][TILE_CPT];
    UNROLL
    for (int i = 0; i < TILE_RPT; ++i) {
      UNROLL
      for (int j = 0; j < TILE_CPT; ++j) acc[i][j] = 0.0f;
    }
#endif
    for (int k0 = 0; k0 < K; k0 += TILE_KC) {
      const int kc = imin(TILE_KC, K - k0);
      SYNC();
      for (int e = LID; e < TILE_KC * TILE_NT; e += TILE_THREADS) {
        int kk, cc;
        if (trans) {
          kk = e % TILE_KC;
          cc = e / TILE_KC;
        } else {
          kk = e / TILE_NT;
          cc = e % TILE_NT;
        }
        const int k = k0 + kk, c = c0 + cc;
        float v = 0.0f;
        if (k < K && c < N)
          v = load_w(W, w_off + (trans ? (u32)c * (u32)ldw + (u32)k : (u32)k * (u32)ldw + (u32)c));
        ws[kk * TILE_NT + cc] = v;
      }
      SYNC();
#if MBRL_CUDA && defined(MBRL_TENSOR_CORES)
      UNROLL
      for (int ks = 0; ks < TILE_KC; ks += 8) {
        if (ks < kc) {
          // Columns k ≥ kc of `in` may hold stale values: mask them (ws is zero there).
          const int ka = k0 + ks + t, kb = ka + 4;
          const int okA = ks + t < kc, okB = ks + t + 4 < kc;
          const u32 a0 = to_tf32(okA ? in[(mb + g) * ld + ka] : 0.0f);
          const u32 a1 = to_tf32(okA ? in[(mb + g + 8) * ld + ka] : 0.0f);
          const u32 a2 = to_tf32(okB ? in[(mb + g) * ld + kb] : 0.0f);
          const u32 a3 = to_tf32(okB ? in[(mb + g + 8) * ld + kb] : 0.0f);
          UNROLL
          for (int q = 0; q < 4; ++q) {
            const int col = nb + q * 8 + g;
            const u32 b0 = to_tf32(ws[(ks + t) * TILE_NT + col]);
            const u32 b1 = to_tf32(ws[(ks + t + 4) * TILE_NT + col]);
            mma_tf32(acc[q], a0, a1, a2, a3, b0, b1);
          }
        }
      }
#else
      if (warp < cnt) {
        for (int kk = 0; kk < kc; ++kk) {
          float b[TILE_CPT];
          UNROLL
          for (int j = 0; j < TILE_CPT; ++j) b[j] = ws[kk * TILE_NT + lane * TILE_CPT + j];
          UNROLL
          for (int i = 0; i < TILE_RPT; ++i) {
            if (warp + 8 * i < cnt) {
              const float a = in[(s0 + warp + 8 * i) * ld + k0 + kk];
              UNROLL
              for (int j = 0; j < TILE_CPT; ++j) acc[i][j] += a * b[j];
            }
          }
        }
      }
#endif
    }
#if MBRL_CUDA && defined(MBRL_TENSOR_CORES)
    UNROLL
    for (int q = 0; q < 4; ++q) {
      UNROLL
      for (int r = 0; r < 4; ++r) {
        const int s = mb + g + (r >= 2 ? 8 : 0);
        const int c = c0 + nb + q * 8 + 2 * t + (r & 1);
        if (s >= s0 && s < s1 && c < N)
          gemm_store(acc[q][r], s, c, out, ld, P, b_off, has_bias, act, zout, store_z, z_base, z_ld);
      }
    }
#else
    UNROLL
    for (int i = 0; i < TILE_RPT; ++i) {
      const int r = warp + 8 * i;
      if (r < cnt) {
        UNROLL
        for (int j = 0; j < TILE_CPT; ++j) {
          const int c = c0 + lane * TILE_CPT + j;
          if (c < N)
            gemm_store(acc[i][j], s0 + r, c, out, ld, P, b_off, has_bias, act, zout, store_z,
                       z_base, z_ld);
        }
      }
    }
#endif
  }
  SYNC();
}

// Layer l of member m on slots [s0, s1): out = act(in · W_l[m] + b_l[m]) (no activation on
// the head). With store_z, hidden pre-activations go to zout[z_base + s·hidden + c].
DEVFN void mlp_layer(MlpShape s, GLOBAL const float* P, GLOBAL const wtype* Wt, int l, int m,
                     SMEM const float* in, SMEM float* out, SMEM float* ws, int s0, int s1,
                     GLOBAL float* zout, int store_z, u32 z_base) {
  const int fi = mlp_fan_in(s, l), fo = mlp_fan_out(s, l);
  const int hidden_layer = l < (int)s.num_layers;
  const u32 w_off = mlp_weight_off(s, l) + (u32)m * (u32)fi * (u32)fo;
  const u32 b_off = mlp_weight_off(s, l) + s.ensemble * (u32)fi * (u32)fo + (u32)m * (u32)fo;
  tile_gemm(in, out, (int)s.ld, Wt, w_off, fo, 0, fi, fo, P, b_off, 1,
            hidden_layer ? (int)s.activation : ACT_NONE, zout, store_z && hidden_layer, z_base,
            (int)s.hidden, s0, s1, ws);
}

// Dynamic shared memory of the forward tile: two activation tiles and the weight stage.
DEVFN int mlp_tile_floats(MlpShape s) { return 2 * TILE_ROWS * (int)s.ld + TILE_KC * TILE_NT; }
