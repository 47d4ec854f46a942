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
//   that is 52 KB (+ 17 KB of weight stage), so an H100 SM (228 KB) keeps three such blocks
//   resident, 24 warps.
// - Each layer is a [32 × K] · [K × N] product. Weights are staged through shared memory in
//   chunks of TILE_KC = 16 input rows × up to TILE_NT = 128 output columns (coalesced rows
//   from global/L2, where the whole ensemble lives: 5 × 200 × 200 × 4 B = 0.8 MB), double
//   buffered: on CUDA with f32 weights the next chunk is copied with cp.async while the
//   current one is multiplied, and one barrier per chunk both publishes a chunk and retires
//   the buffer the next copy overwrites (before: a synchronous copy between two barriers).
//   That is the tensor-core path (the default for planning on sm_80+, where cp.async
//   exists). bf16 weights are converted while staging, which cp.async cannot do: they keep
//   a synchronous copy, into the same two buffers; OpenCL C (PoCL) runs that too, so the
//   buffer alternation is checked there. The CUDA-core path keeps one buffer and two
//   barriers per chunk: double buffering pushed its rollout past 80 registers (spills).
// - Every thread accumulates a 4 × 4 register tile: rows rg + 8i, columns cg·4 + j, where a
//   chunk of w ≤ 128 output columns has g = ⌈w/4⌉ column groups and thread LID is
//   (rg, cg) = (LID / g, LID % g); threads from 8g on sit the chunk out, so whole warps are
//   idle and issue nothing. A 200-wide layer is a 128-column chunk on all 8 warps, then a
//   72-column chunk on 4.5 warps (5 issue), instead of two full 128-column chunks: issued /
//   useful multiply-adds 1.04 rather than 1.28, and the 10-wide head of the cart-pole model
//   runs on one warp. With g = 32 a warp is one row group: activation reads are warp
//   broadcasts, weight reads one conflict-free 16-byte load per lane; a warp spanning two row
//   groups reads two rows, which sit 4, 12, 20 or 28 banks apart (ld ≡ 4 mod 8).
// - MBRL_COUNTERS (a debug variant, CudaOptions::counters): thread 0 adds per staged weight
//   chunk the rows it served, and the multiply-adds issued (32 lanes per issuing warp) and
//   useful, to 64-bit counters in global memory (ctr; null: not counted). The CUDA host reads
//   them back as KernelCounters; tests/cuda_pocl.rs holds them to the goals.
// - ld ≡ 4 (mod 8) so that the tensor-core path's A-fragment loads (8 rows × 4 columns per
//   warp) hit 32 distinct banks; the weight stage's row stride is WS_LD = TILE_NT + 8 ≡ 8
//   (mod 32) so that its B-fragment loads (4 rows × 8 columns) do too (a stride of 128 put
//   the 4 rows in one bank: a 4-way conflict on every B load).
// - MBRL_TENSOR_CORES: the same tile product on mma.m16n8k8 TF32 tensor cores, warp w
//   computing rows 16·(w&1).. and columns 32·(w>>1).. of each chunk (warps with no rows or
//   no columns there sit it out); the staging, epilogue and shared layout are unchanged.
//   TF32 keeps 10 mantissa bits. On CUDA (sm_80+) it is cvt.rna.tf32 and mma.sync; in
//   OpenCL C (PoCL) both are emulated: the rounding bit for bit, and the product from the
//   PTX ISA's fragment layout (§ "Matrix Fragments for mma.m16n8k8": a_i of lane 4g + t
//   holds A[g + 8·(i&1)][t + 4·(i>>1)], b_i holds B[t + 4i][g], c_i is D[g + 8·(i>>1)]
//   [2t + (i&1)]), where lane L reads the operands that lanes 4·row + (k&3) load, through
//   the same fragment-load functions. So the fragment indexing is checked on PoCL against
//   the CPU; only the hardware's summation order is not.
// - MBRL_BF16_WEIGHTS: weights are read from a bf16 copy (u16, converted with a shift while
//   staging, so OpenCL C can do it); biases, bounds and all accumulation stay f32.

#define TILE_ROWS 32
#define TILE_THREADS 256
#define TILE_KC 16
#define TILE_NT 128
// Row stride of the weight stage (≡ 8 mod 32: conflict-free B fragments).
#define WS_LD (TILE_NT + 8)
// The double-buffered weight stage, in floats.
#define WS_FLOATS (2 * TILE_KC * WS_LD)
#define TILE_RPT 4
#define TILE_CPT 4

// Identical to src/backend/cuda/params.rs `MlpShape`.
typedef struct {
  u32 ensemble, in_dim, out_dim, hidden;
  u32 num_layers, activation, probabilistic, rows;
  // Row stride of the shared activation tiles (≥ every layer's width, ≡ 4 mod 8).
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

// MBRL_ACT: the hidden activation fixed at compile time (the program variant of the
// network's activation, src/backend/cuda/source.rs): the epilogue's choice among SiLU, ReLU
// and tanh folds away. Without it (programs that serve any network), the runtime code.
#ifdef MBRL_ACT
#define HIDDEN_ACT(s) MBRL_ACT
#define ACT_OF(a) MBRL_ACT
#else
#define HIDDEN_ACT(s) ((int)(s).activation)
#define ACT_OF(a) (a)
#endif

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
  // act is ACT_NONE (the head, the backward's products) or the hidden activation.
  if (act >= 0) v = act_fwd(ACT_OF(act), v);
  out[s * ld + c] = v;
}

#ifdef MBRL_TENSOR_CORES
// f32 → TF32 bits, rounded to nearest with ties away from zero (cvt.rna.tf32.f32).
DEVFN u32 to_tf32(float x) {
#if MBRL_CUDA
  u32 r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#else
  const u32 u = AS_U32(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf and NaN unchanged
  return (u + 0x1000u) & 0xffffe000u;
#endif
}
// Fragment loads of the tile product (see the header), as functions of the lane so that the
// emulation can evaluate them for the lanes whose registers a real mma would read.
// A: rows mb.. of `in`, columns k0 + ks..; columns ≥ kc may hold stale values: masked.
DEVFN float tc_a(SMEM const float* in, int ld, int mb, int k0, int ks, int kc, int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  const int row = mb + g + 8 * (i & 1), k = ks + t + 4 * (i >> 1);
  return k < kc ? in[row * ld + k0 + k] : 0.0f;
}
// B: rows ks.. of the weight stage, columns nb + 8q.. (zero beyond N).
DEVFN float tc_b(SMEM const float* ws, int ks, int col0, int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return ws[(ks + t + 4 * i) * WS_LD + col0 + g];
}
#if MBRL_CUDA
DEVFN void mma_tf32(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#else
// D = A·B + C for this lane's four accumulators, reading A[row][k] and B[k][col] from the
// lanes that hold them in a real mma.sync.
DEVFN void mma_tf32_emulated(float* c, SMEM const float* in, int ld, int mb, int k0, int ks,
                             int kc, SMEM const float* ws, int col0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  for (int r = 0; r < 4; ++r) {
    const int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
    float d = 0.0f;
    for (int k = 0; k < 8; ++k) {
      const float a = AS_F32(to_tf32(tc_a(in, ld, mb, k0, ks, kc, 4 * (row & 7) + (k & 3),
                                          (row >> 3) + 2 * (k >> 2))));
      const float b = AS_F32(to_tf32(tc_b(ws, ks, col0, 4 * col + (k & 3), k >> 2)));
      d += a * b;
    }
    c[r] += d;
  }
}
#endif
#endif

// The counter pointer of launches that count nothing.
#define NO_CTR ((GLOBAL u32*)0)

#ifdef MBRL_COUNTERS
#if MBRL_CUDA
#define ATOMIC_ADD_U32(p, v) atomicAdd((p), (v))
#else
#define ATOMIC_ADD_U32(p, v) atomic_add((volatile GLOBAL u32*)(p), (v))
#endif
#define CTR_STAGES 0
#define CTR_ROWS 1
#define CTR_ISSUED 2
#define CTR_USEFUL 3
#define CTR_COUNT 4
// Counter i is the 64-bit sum of words 2i (low) and 2i+1 (high); the carry out of the low
// word is detected from the value the atomic returns.
DEVFN void ctr_add(GLOBAL u32* ctr, int i, u64 v) {
  const u32 lo = (u32)v;
  u32 hi = (u32)(v >> 32);
  const u32 old = ATOMIC_ADD_U32(ctr + 2 * i, lo);
  if (old + lo < old) hi += 1u;
  if (hi) ATOMIC_ADD_U32(ctr + 2 * i + 1, hi);
}
#endif

// Weight staging: chunk (k0, c0) of B into `buf` (TILE_KC rows × wcols columns, zero
// beyond K and N). With cp.async each thread issues 4-byte asynchronous copies (src-size 0
// zero-fills) and commits them as one group; stage_wait() waits for the thread's groups.
#if MBRL_CUDA && defined(MBRL_TENSOR_CORES) && !defined(MBRL_BF16_WEIGHTS) && \
    (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
#define MBRL_ASYNC_STAGE 1
DEVFN void stage_copy(SMEM float* dst, GLOBAL const float* src, int ok) {
  const u32 d = (u32)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src),
               "r"(ok ? 4 : 0));
}
DEVFN void stage_commit() { asm volatile("cp.async.commit_group;\n" ::); }
DEVFN void stage_wait() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
#else
DEVFN void stage_commit() {}
DEVFN void stage_wait() {}
#endif

DEVFN void stage_one(SMEM float* buf, GLOBAL const wtype* W, u32 w_off, int ldw, int trans,
                     int K, int N, int k0, int c0, int kk, int cc) {
  const int k = k0 + kk, c = c0 + cc;
  const int ok = k < K && c < N;
  const u32 i = ok ? w_off + (trans ? (u32)c * (u32)ldw + (u32)k : (u32)k * (u32)ldw + (u32)c)
                   : w_off;
#ifdef MBRL_ASYNC_STAGE
  stage_copy(&buf[kk * WS_LD + cc], W + i, ok);
#else
  buf[kk * WS_LD + cc] = ok ? load_w(W, i) : 0.0f;
#endif
}

// Thread → element maps with constant divisors (a runtime division by the chunk width cost
// the rollout registers): W row-major, consecutive threads take consecutive columns of two
// rows at a time; Wᵀ, consecutive threads take consecutive k of sixteen columns at a time,
// so global reads stay coalesced either way.
DEVFN void tile_stage(SMEM float* buf, GLOBAL const wtype* W, u32 w_off, int ldw, int trans,
                      int K, int N, int k0, int c0, int wcols) {
  if (trans) {
    NOUNROLL
    for (int cc = LID / TILE_KC; cc < wcols; cc += TILE_THREADS / TILE_KC)
      stage_one(buf, W, w_off, ldw, 1, K, N, k0, c0, LID % TILE_KC, cc);
  } else if (LID % TILE_NT < wcols) {
    NOUNROLL
    for (int kk = LID / TILE_NT; kk < TILE_KC; kk += TILE_THREADS / TILE_NT)
      stage_one(buf, W, w_off, ldw, 0, K, N, k0, c0, kk, LID % TILE_NT);
  }
  stage_commit();
}

// out[s][c] = epilogue( Σ_k in[s][k] · B(k, c) ) for slots s ∈ [s0, s1) and c ∈ [0, N), where
// B(k, c) = W[w_off + k·ldw + c], or W[w_off + c·ldw + k] when `trans` (Wᵀ, for the backward
// data path). `in` and `out` are distinct shared tiles of TILE_ROWS × ld; `ws` holds
// WS_FLOATS floats (two chunk buffers). Every thread of the block must call (it synchronises).
DEVFN void tile_gemm(SMEM const float* in, SMEM float* out, int ld, GLOBAL const wtype* W,
                     u32 w_off, int ldw, int trans, int K, int N, GLOBAL const float* P,
                     u32 b_off, int has_bias, int act, GLOBAL float* zout, int store_z,
                     u32 z_base, int z_ld, int s0, int s1, SMEM float* ws, GLOBAL u32* ctr) {
  const int cnt = s1 - s0;
  for (int c0 = 0; c0 < N; c0 += TILE_NT) {
#ifdef MBRL_TENSOR_CORES
    const int lane = LID & 31;
    const int warp = LID >> 5;
    // Warp tile: 16 rows (absolute slots mb..mb+15) × 32 columns as four n8 tiles. The
    // chunk stages whole n8 tiles; a warp with no rows or columns idles, and a warp skips
    // its n8 tiles past the chunk (a 200-wide layer issues 200 columns, the 8-wide head 8).
    const int mb = (warp & 1) * 16;
    const int nb = (warp >> 1) * 32;
    const int g = lane >> 2, t = lane & 3;
    const int wcols = (imin(TILE_NT, N - c0) + 7) / 8 * 8;
    const int busy = mb < s1 && mb + 16 > s0 && nb < wcols;
    float acc[4][4];
    UNROLL
    for (int q = 0; q < 4; ++q) {
      UNROLL
      for (int r = 0; r < 4; ++r) acc[q][r] = 0.0f;
    }
#else
    // Column groups of this chunk and this thread's place in it (see the header).
    const int ng = (imin(TILE_NT, N - c0) + TILE_CPT - 1) / TILE_CPT;
    const int wcols = ng * TILE_CPT;
    const int rg = LID / ng, cg = LID % ng;
    const int active = LID < 8 * ng;
    float acc[TILE_RPT][TILE_CPT];
    UNROLL
    for (int i = 0; i < TILE_RPT; ++i) {
      UNROLL
      for (int j = 0; j < TILE_CPT; ++j) acc[i][j] = 0.0f;
    }
#endif
#ifdef MBRL_TENSOR_CORES
    // Double-buffered chunks (see the header): the barrier at the top of step i publishes
    // chunk i (every thread waited for its own copies) and retires buffer (i+1)&1, which
    // step i−1 read, so chunk i+1 is copied there while chunk i is multiplied. The barrier
    // before the first copy retires both buffers from the previous column chunk.
    const int nk = (K + TILE_KC - 1) / TILE_KC;
    SYNC();
    if (nk > 0) tile_stage(ws, W, w_off, ldw, trans, K, N, 0, c0, wcols);
    for (int ki = 0; ki < nk; ++ki) {
      const int k0 = ki * TILE_KC;
      const int kc = imin(TILE_KC, K - k0);
      SMEM float* wsb = ws + (ki & 1) * (TILE_KC * WS_LD);
      stage_wait();
      SYNC();
      if (ki + 1 < nk)
        tile_stage(ws + ((ki + 1) & 1) * (TILE_KC * WS_LD), W, w_off, ldw, trans, K, N,
                   k0 + TILE_KC, c0, wcols);
#else
    // The CUDA-core path stages synchronously into one buffer between two barriers: with a
    // second buffer in flight its 16 accumulators no longer fit the rollout's 80 registers.
    for (int k0 = 0; k0 < K; k0 += TILE_KC) {
      const int kc = imin(TILE_KC, K - k0);
      SMEM float* wsb = ws;
      SYNC();
      tile_stage(ws, W, w_off, ldw, trans, K, N, k0, c0, wcols);
      SYNC();
#endif
#ifdef MBRL_COUNTERS
      if (LID == 0 && ctr) {
        const u64 w = (u64)imin(TILE_NT, N - c0);
        ctr_add(ctr, CTR_STAGES, 1u);
        ctr_add(ctr, CTR_ROWS, (u64)cnt);
        ctr_add(ctr, CTR_USEFUL, (u64)cnt * (u64)kc * w);
#ifdef MBRL_TENSOR_CORES
        // A busy warp issues an m16n8k8 product per n8 tile inside the chunk.
        u64 issued = 0u;
        for (int wi = 0; wi < TILE_THREADS / 32; ++wi)
          if ((wi & 1) * 16 < s1 && (wi & 1) * 16 + 16 > s0)
            for (int q = 0; q < 4; ++q)
              if ((wi >> 1) * 32 + q * 8 < wcols) issued += (u64)(16 * 8 * ((kc + 7) / 8 * 8));
        ctr_add(ctr, CTR_ISSUED, issued);
#else
        // A warp issues row step i when any of its active threads has a row there: its
        // first thread's row group is the smallest.
        u64 issued = 0u;
        for (int wi = 0; wi < TILE_THREADS / 32 && 32 * wi < 8 * ng; ++wi) {
          const int rg0 = (32 * wi) / ng;
          for (int i = 0; i < TILE_RPT; ++i)
            if (rg0 + 8 * i < cnt) issued += (u64)(32 * TILE_CPT * kc);
        }
        ctr_add(ctr, CTR_ISSUED, issued);
#endif
      }
#endif
#ifdef MBRL_TENSOR_CORES
      if (busy) {
        UNROLL
        for (int ks = 0; ks < TILE_KC; ks += 8) {
          if (ks < kc) {
#if MBRL_CUDA
            const u32 a0 = to_tf32(tc_a(in, ld, mb, k0, ks, kc, lane, 0));
            const u32 a1 = to_tf32(tc_a(in, ld, mb, k0, ks, kc, lane, 1));
            const u32 a2 = to_tf32(tc_a(in, ld, mb, k0, ks, kc, lane, 2));
            const u32 a3 = to_tf32(tc_a(in, ld, mb, k0, ks, kc, lane, 3));
            UNROLL
            for (int q = 0; q < 4; ++q) {
              if (nb + q * 8 < wcols) {
                const u32 b0 = to_tf32(tc_b(wsb, ks, nb + q * 8, lane, 0));
                const u32 b1 = to_tf32(tc_b(wsb, ks, nb + q * 8, lane, 1));
                mma_tf32(acc[q], a0, a1, a2, a3, b0, b1);
              }
            }
#else
            for (int q = 0; q < 4; ++q)
              if (nb + q * 8 < wcols)
                mma_tf32_emulated(acc[q], in, ld, mb, k0, ks, kc, wsb, nb + q * 8, lane);
#endif
          }
        }
      }
#else
      if (active && rg < cnt) {
        // One base pointer per operand: rows rg + 8i of `in` sit 8·ld apart.
        SMEM const float* ap = in + (s0 + rg) * ld + k0;
        SMEM const float* bp = wsb + cg * TILE_CPT;
        for (int kk = 0; kk < kc; ++kk) {
          float b[TILE_CPT];
          UNROLL
          for (int j = 0; j < TILE_CPT; ++j) b[j] = bp[kk * WS_LD + j];
          UNROLL
          for (int i = 0; i < TILE_RPT; ++i) {
            if (rg + 8 * i < cnt) {
              const float a = ap[i * 8 * ld + kk];
              UNROLL
              for (int j = 0; j < TILE_CPT; ++j) acc[i][j] += a * b[j];
            }
          }
        }
      }
#endif
    }
#ifdef MBRL_TENSOR_CORES
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
    if (active) {
      UNROLL
      for (int i = 0; i < TILE_RPT; ++i) {
        const int r = rg + 8 * i;
        if (r < cnt) {
          UNROLL
          for (int j = 0; j < TILE_CPT; ++j) {
            const int c = c0 + cg * TILE_CPT + j;
            if (c < N)
              gemm_store(acc[i][j], s0 + r, c, out, ld, P, b_off, has_bias, act, zout, store_z,
                         z_base, z_ld);
          }
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
                     GLOBAL float* zout, int store_z, u32 z_base, GLOBAL u32* ctr) {
  const int fi = mlp_fan_in(s, l), fo = mlp_fan_out(s, l);
  const int hidden_layer = l < (int)s.num_layers;
  const u32 w_off = mlp_weight_off(s, l) + (u32)m * (u32)fi * (u32)fo;
  const u32 b_off = mlp_weight_off(s, l) + s.ensemble * (u32)fi * (u32)fo + (u32)m * (u32)fo;
  tile_gemm(in, out, (int)s.ld, Wt, w_off, fo, 0, fi, fo, P, b_off, 1,
            hidden_layer ? HIDDEN_ACT(s) : ACT_NONE, zout, store_z && hidden_layer, z_base,
            (int)s.hidden, s0, s1, ws, ctr);
}

// Dynamic shared memory of the forward tile: two activation tiles and the weight stage.
DEVFN int mlp_tile_floats(MlpShape s) { return 2 * TILE_ROWS * (int)s.ld + WS_FLOATS; }
