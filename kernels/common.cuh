// common.cuh — the vendor header and Philox4x32-10 shared by every kernel in kernels/.
//
// One source, two compilers. The Rust side (src/backend/cuda/source.rs) prepends this file
// (and mlp.cuh where needed) to each kernel file and hands the text either to NVRTC (CUDA
// C++) or to an OpenCL C 1.2 compiler (PoCL in CI, which *executes* the kernels on the CPU).
// The code is therefore written in the common subset: C-style, no templates or references,
// address spaces spelled through the macros below, block-level reductions through shared
// memory. Code only CUDA can express (warp shuffles, tensor-core mma.sync) sits behind
// `#if MBRL_CUDA` with a portable fallback next to it (the tensor-core product's fallback
// emulates it, see mlp.cuh).
//
// Vendor macros
//   KERNEL            entry-point qualifier (extern "C" __global__ / __kernel)
//   BOUNDS(n)         the block size the kernel is written for (__launch_bounds__ /
//                     reqd_work_group_size). CUDA also asks for at least 2 resident blocks per
//                     SM: that caps registers at 128 for 256 threads and overrides ptxas's own
//                     occupancy heuristic, which without it held the rollout to 80 registers
//                     and spilled
//   BOUNDS_MIN(n, b)  the same with at least b resident blocks: the rollout asks for 3, which
//                     caps it at 80 registers (it assembles without spills at that cap;
//                     tests/cuda_compile.rs checks both)
//   GLOBAL, SMEM      address spaces of pointers to device / shared memory
//   SHARED            declaration of a kernel-scope shared array
//   DYN_SMEM_PARAM    trailing kernel parameter of kernels that use dynamic shared memory
//   DYN_SMEM_DECL     first statement of such kernels; `dyn_smem` is then a float pointer
//   SYNC()            block barrier (also orders global memory within the block)
//   LID, GRP_X/Y/Z    thread index in the (1-D) block, block indices; NGRP_X blocks in x
//   DEVFN             device helper function
//   FMUL, DMUL        a product that must not be contracted into an FMA with a following
//                     add, where the CPU specification's rounding is reproduced exactly
//   EXPF, LOGF, ...   single-precision libm names (OpenCL's are overloaded generics)

#if defined(__OPENCL_VERSION__)
#define MBRL_CUDA 0
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
// The CPU specification never contracts a*b+c; OpenCL lets us say so for the whole program.
#pragma OPENCL FP_CONTRACT OFF
typedef uint u32;
typedef ushort u16;
typedef ulong u64;
#define KERNEL __kernel
#define BOUNDS(n) __attribute__((reqd_work_group_size(n, 1, 1)))
#define BOUNDS_MIN(n, b) __attribute__((reqd_work_group_size(n, 1, 1)))
#define GLOBAL __global
#define SMEM __local
#define SHARED __local
#define DYN_SMEM_PARAM , __local float* dyn_smem
#define DYN_SMEM_DECL
#define SYNC() barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE)
#define LID ((int)get_local_id(0))
#define GRP_X ((int)get_group_id(0))
#define GRP_Y ((int)get_group_id(1))
#define GRP_Z ((int)get_group_id(2))
#define NGRP_X ((int)get_num_groups(0))
#define DEVFN static inline
#define AS_F32(u) as_float((u32)(u))
#define AS_U32(f) as_uint((float)(f))
#define MULHI(a, b) mul_hi((u32)(a), (u32)(b))
#define FMUL(a, b) ((a) * (b))
#define DMUL(a, b) ((a) * (b))
#define EXPF(x) exp((float)(x))
#define LOGF(x) log((float)(x))
#define LOG1PF(x) log1p((float)(x))
#define SQRTF(x) sqrt((float)(x))
#define FABSF(x) fabs((float)(x))
#define COSPIF(x) cospi((float)(x))
#define TANHF(x) tanh((float)(x))
#define UNROLL
#define NOUNROLL
#else
#define MBRL_CUDA 1
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;
#define KERNEL extern "C" __global__
#define BOUNDS(n) __launch_bounds__(n, 2)
#define BOUNDS_MIN(n, b) __launch_bounds__(n, b)
#define GLOBAL
#define SMEM
#define SHARED __shared__
#define DYN_SMEM_PARAM
#define DYN_SMEM_DECL extern __shared__ float dyn_smem[];
#define SYNC() __syncthreads()
#define LID ((int)threadIdx.x)
#define GRP_X ((int)blockIdx.x)
#define GRP_Y ((int)blockIdx.y)
#define GRP_Z ((int)blockIdx.z)
#define NGRP_X ((int)gridDim.x)
#define DEVFN static __device__ __forceinline__
#define AS_F32(u) __uint_as_float((u32)(u))
#define AS_U32(f) __float_as_uint((float)(f))
#define MULHI(a, b) __umulhi((u32)(a), (u32)(b))
#define FMUL(a, b) __fmul_rn((a), (b))
#define DMUL(a, b) __dmul_rn((a), (b))
#define EXPF(x) expf(x)
#define LOGF(x) logf(x)
#define LOG1PF(x) log1pf(x)
#define SQRTF(x) sqrtf(x)
#define FABSF(x) fabsf(x)
#define COSPIF(x) cospif(x)
#define TANHF(x) tanhf(x)
#define UNROLL _Pragma("unroll")
#define NOUNROLL _Pragma("unroll 1")
#endif

#define NEG_INF_F32 AS_F32(0xff800000u)

DEVFN int imin(int a, int b) { return a < b ? a : b; }
DEVFN int imax(int a, int b) { return a > b ? a : b; }

// Finite test on the bits (neither compiler's isfinite is needed, nor fast-math-proof).
DEVFN int finite_f32(float x) { return (AS_U32(x) & 0x7f800000u) != 0x7f800000u; }

// Rust's f32::clamp: NaN passes through (fminf/fmaxf would swallow it).
DEVFN float clamp_f32(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }
DEVFN double clamp_f64(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }

// ---------------------------------------------------------------------------------------
// Philox4x32-10: bit-identical to src/rng.rs (tests/cuda_pocl.rs checks the bits).
//   key = (seed_lo, seed_hi), counter = (element, step, stream, word3)
// ---------------------------------------------------------------------------------------
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

#define STREAM_CEM_SAMPLE 5u
#define STREAM_TS_MEMBER 6u
#define STREAM_TS_NOISE 7u
#define STREAM_MPPI_SAMPLE 23u
#define STREAM_ICEM_NOISE 24u
#define TRUNC_ATTEMPTS 16u

typedef struct {
  u32 x, y, z, w;
} Philox4;

DEVFN Philox4 philox4x32_10(u32 c0, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1) {
  UNROLL
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    u32 hi0 = MULHI(PHILOX_M0, c0);
    u32 lo0 = PHILOX_M0 * c0;
    u32 hi1 = MULHI(PHILOX_M1, c2);
    u32 lo1 = PHILOX_M1 * c2;
    u32 n0 = hi1 ^ c1 ^ k0;
    u32 n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  Philox4 r;
  r.x = c0;
  r.y = c1;
  r.z = c2;
  r.w = c3;
  return r;
}

// ((x >> 9) + 0.5) * 2^-23: exact in f32, strictly inside (0, 1).
DEVFN float u32_to_unit(u32 x) { return ((float)(x >> 9) + 0.5f) * (1.0f / 8388608.0f); }

DEVFN float philox_uniform(u32 seed_lo, u32 seed_hi, u32 stream, u32 element, u32 step) {
  Philox4 b = philox4x32_10(element, step, stream, 0u, seed_lo, seed_hi);
  return u32_to_unit(b.x);
}

// Integer uniform in [0, n): high word of the 64-bit product.
DEVFN u32 philox_below(u32 seed_lo, u32 seed_hi, u32 stream, u32 element, u32 step, u32 n) {
  Philox4 b = philox4x32_10(element, step, stream, 0u, seed_lo, seed_hi);
  return MULHI(b.x, n);
}

DEVFN float box_muller(u32 a, u32 b) {
  float u1 = u32_to_unit(a);
  float u2 = u32_to_unit(b);
  // cos(2π·u2) with the product taken exactly, as src/fastmath.rs's cos_2pi_f32 does.
  return SQRTF(-2.0f * LOGF(u1)) * COSPIF(2.0f * u2);
}

// Element i uses block i/2: words (x, y) for even i, (z, w) for odd i.
DEVFN float philox_normal(u32 seed_lo, u32 seed_hi, u32 stream, u32 element, u32 step) {
  Philox4 b = philox4x32_10(element >> 1, step, stream, 0u, seed_lo, seed_hi);
  return (element & 1u) ? box_muller(b.z, b.w) : box_muller(b.x, b.y);
}

// Normal truncated to [-2, 2] by redrawing: attempt j reads word3 = j.
DEVFN float philox_truncated_normal(u32 seed_lo, u32 seed_hi, u32 stream, u32 element,
                                    u32 step) {
  float z = 0.0f;
  for (u32 attempt = 0u; attempt < TRUNC_ATTEMPTS; ++attempt) {
    Philox4 b = philox4x32_10(element, step, stream, attempt, seed_lo, seed_hi);
    z = box_muller(b.x, b.y);
    if (z >= -2.0f && z <= 2.0f) return z;
  }
  return clamp_f32(z, -2.0f, 2.0f);
}

// ---------------------------------------------------------------------------------------
// The path gradient's stages (sac.cu: path_squash, path_terminal, path_actor_back,
// path_accumulate; rollout.cu: path_step, path_model_back) share one parameter block.
// Identical to src/backend/mod.rs `PathParams` (36 words); its documentation lays out the
// noise, tape and back buffers. The tables hold u32 bits in f32 buffers (AS_U32).
// ---------------------------------------------------------------------------------------
typedef struct {
  u32 rows, obs_dim, act_dim, out_dim;
  u32 members, per, grouped, t;
  u32 horizon, task, learn_reward, probabilistic;
  u32 terminal_value;
  float gamma, disc, w, target_entropy;
  u32 len;
  u32 n_eps, n_xi, n_slot, n_rowof;
  u32 t_states, t_heads, t_act, t_logp, t_alive, t_counted, t_reward, t_logvar, t_alpha,
      t_squash;
  float step_grad_norm, mean_limit, mean_penalty;
  u32 _pad;
} PathParams;

// ---------------------------------------------------------------------------------------
// Block reductions (blocks of BLOCK_REDUCE_THREADS threads; every thread must call).
// CUDA: warp shuffles, then one shared slot per warp. Portable: a shared-memory tree.
// `scratch` holds BLOCK_REDUCE_THREADS floats. The result is returned to every thread.
// ---------------------------------------------------------------------------------------
#define BLOCK_REDUCE_THREADS 256

DEVFN float block_sum(float v, SMEM float* scratch) {
#if MBRL_CUDA
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if ((LID & 31) == 0) scratch[LID >> 5] = v;
  SYNC();
  float t = 0.0f;
  for (int w = 0; w < BLOCK_REDUCE_THREADS / 32; ++w) t += scratch[w];
  SYNC();
  return t;
#else
  scratch[LID] = v;
  SYNC();
  for (int w = BLOCK_REDUCE_THREADS / 2; w > 0; w >>= 1) {
    if (LID < w) scratch[LID] += scratch[LID + w];
    SYNC();
  }
  float t = scratch[0];
  SYNC();
  return t;
#endif
}
