// rollout.cu — fused trajectory sampling (PETS §4.2: TS1, TS∞, expectation) and planning
// with the true simulator; the twin of src/backend/cpu/rollout.rs and shaders/rollout.wgsl.
// Compiled after common.cuh and mlp.cuh (the Rust side prepends them).
//
// Entry points (block = 256 threads):
//   rollout_group   grid H (TS1) or 1 (TS∞): the slot tables that group rows by member
//                   across the whole population, each member's run padded to whole tiles.
//   rollout         one launch for the horizon (TS∞, expectation) or one per step (TS1):
//                   a block of 256 threads serves one tile of up to 32 rows of one member
//                   (TS1/TS∞) or runs every elite on its 32 rows (expectation), through
//                   mlp.cuh's tile engine with weights streamed from L2; samples the next
//                   state from the predicted Gaussian; reward, termination and finiteness per
//                   row. Why grouped across the population: a tile of 32 consecutive rows
//                   holds ≈ 5 members, and re-staging each member's weights for ≈ 6 rows
//                   made the weight traffic 5× the tile engine's design (issue 9).
//   rollout_reduce  grid ⌈P/256⌉: mean over each candidate's K particle returns (−∞ if any
//                   particle left the finite numbers), in particle order like the CPU.
//   rollout_true    grid ⌈P/128⌉ (blocks of 128): one thread per candidate steps the native
//                   environment's true dynamics in f64 exactly as src/env does.
//   branch_route, branch_step   MBPO's branched rollout, one block each (further below).
//   path_step, path_model_back  the path gradient's model stages (at the end of the file).
//
// Environments (src/env/*.rs) are mirrored statement by statement with the same f32/f64 widths;
// FMUL/DMUL keep CUDA from contracting products into FMAs where the CPU rounds twice.

// Identical to src/backend/mod.rs `RolloutParams`.
typedef struct {
  u32 seed_lo, seed_hi, step, population;
  u32 particles, horizon, obs_dim, act_dim;
  u32 propagation, env, learn_reward, num_elites;
  u32 elites[16];
} RolloutParams;

#define PROP_TS1 0u
#define PROP_TSINF 1u
#define PROP_EXPECTATION 2u

#define ENV_CARTPOLE 0u
#define ENV_PENDULUM 1u
#define ENV_MOUNTAIN_CAR 2u
#define TASK_HALF_CHEETAH 3u
// MuJoCo v5 tasks (src/env/task.rs): termination functions; the inverted pendulum's reward.
#define TASK_HOPPER 4u
#define TASK_WALKER2D 5u
#define TASK_ANT 6u
#define TASK_INVERTED_PENDULUM 7u
#define TASK_INVERTED_PENDULUM_CENTRED 8u
#define CENTRED_WEIGHT 0.5f
#define NAN_F32 AS_F32(0x7fc00000u)

#define PI_F64 3.141592653589793
#define TAU_F64 6.283185307179586

// ---- cart-pole (src/env/cartpole.rs) ----------------------------------------------------
#define CP_GRAVITY 9.8
#define CP_MASSCART 1.0
#define CP_MASSPOLE 0.1
#define CP_TOTAL_MASS (CP_MASSPOLE + CP_MASSCART)
#define CP_LENGTH 0.5
#define CP_POLEMASS_LENGTH (CP_MASSPOLE * CP_LENGTH)
#define CP_TAU 0.02
#define CP_X_THRESHOLD 2.4
#define CP_THETA_THRESHOLD (12.0 * 2.0 * PI_F64 / 360.0)

DEVFN int cartpole_terminated(const float* no) {
  const double x = (double)no[0], th = (double)no[2];
  const int alive = x >= -CP_X_THRESHOLD && x <= CP_X_THRESHOLD && th >= -CP_THETA_THRESHOLD &&
                    th <= CP_THETA_THRESHOLD;
  return !alive;
}

DEVFN void cartpole_step(const float* s, const float* a, float* ns) {
  const double x = (double)s[0], x_dot = (double)s[1], theta = (double)s[2],
               theta_dot = (double)s[3];
  const double force = (double)FMUL(a[0], 10.0f);
  const double costheta = cos(theta), sintheta = sin(theta);
  const double temp =
      (force + DMUL(DMUL(CP_POLEMASS_LENGTH, DMUL(theta_dot, theta_dot)), sintheta)) /
      CP_TOTAL_MASS;
  const double thetaacc =
      (DMUL(CP_GRAVITY, sintheta) - DMUL(costheta, temp)) /
      DMUL(CP_LENGTH, 4.0 / 3.0 - DMUL(CP_MASSPOLE, DMUL(costheta, costheta)) / CP_TOTAL_MASS);
  const double xacc = temp - DMUL(DMUL(CP_POLEMASS_LENGTH, thetaacc), costheta) / CP_TOTAL_MASS;
  ns[0] = (float)(x + DMUL(CP_TAU, x_dot));
  ns[1] = (float)(x_dot + DMUL(CP_TAU, xacc));
  ns[2] = (float)(theta + DMUL(CP_TAU, theta_dot));
  ns[3] = (float)(theta_dot + DMUL(CP_TAU, thetaacc));
}

// ---- Pendulum-v1 (src/env/pendulum.rs) ---------------------------------------------------
DEVFN double angle_normalize(double x) {
  double m = fmod(x + PI_F64, TAU_F64);
  if (m != 0.0) {
    if (m < 0.0) m += TAU_F64;
  } else {
    m = 0.0;
  }
  return m - PI_F64;
}

DEVFN double pendulum_costs(double th, double thdot, float u) {
  const double an = angle_normalize(th);
  return DMUL(an, an) + DMUL(0.1, DMUL(thdot, thdot)) + (double)FMUL(0.001f, FMUL(u, u));
}

DEVFN float pendulum_reward(const float* o, const float* a) {
  const double th = atan2((double)o[1], (double)o[0]);
  const double thdot = (double)o[2];
  return (float)(-pendulum_costs(th, thdot, clamp_f32(a[0], -2.0f, 2.0f)));
}

DEVFN void pendulum_step(const float* s, const float* a, float* ns) {
  const double th = (double)s[0], thdot = (double)s[1];
  const float u = clamp_f32(a[0], -2.0f, 2.0f);
  // 3g/(2l) = 15 exactly; 3/(m l²) · u is a float32 product (NEP 50).
  const double accel = DMUL(3.0 * 10.0 / (2.0 * 1.0), sin(th)) + (double)FMUL(3.0f, u);
  const double newthdot = clamp_f64(thdot + DMUL(accel, 0.05), -8.0, 8.0);
  ns[0] = (float)(th + DMUL(newthdot, 0.05));
  ns[1] = (float)newthdot;
}

DEVFN void pendulum_observe(const float* s, float* o) {
  const double th = (double)s[0];
  o[0] = (float)cos(th);
  o[1] = (float)sin(th);
  o[2] = s[1];
}

// ---- MountainCarContinuous-v0 (src/env/mountain_car.rs), state in float32 ----------------
DEVFN int mountain_car_terminated(const float* no) {
  return no[0] >= 0.45f && no[1] >= 0.0f;
}

DEVFN float mountain_car_reward(const float* a, const float* no) {
  const double base = mountain_car_terminated(no) ? 100.0 : 0.0;
  const double av = (double)a[0];
  return (float)(base - DMUL(DMUL(av, av), 0.1));
}

DEVFN void mountain_car_step(const float* s, const float* a, float* ns) {
  float position = s[0], velocity = s[1];
  const float av = a[0];
  // math.cos(3 * position): the product in float32, the cosine in float64.
  const double gravity = DMUL(0.0025, cos((double)FMUL(3.0f, position)));
  if (av < -1.0f || av > 1.0f) {
    // The clipped force is a Python float: force·power − gravity in float64.
    const double f = av < -1.0f ? -1.0 : 1.0;
    velocity = velocity + (float)(DMUL(f, 0.0015) - gravity);
  } else {
    velocity = velocity + (FMUL(av, 0.0015f) - (float)gravity);
  }
  if (velocity > 0.07f) velocity = 0.07f;
  if (velocity < -0.07f) velocity = -0.07f;
  position = position + velocity;
  if (position > 0.6f) position = 0.6f;
  if (position < -1.2f) position = -1.2f;
  if (position == -1.2f && velocity < 0.0f) velocity = 0.0f;
  ns[0] = position;
  ns[1] = velocity;
}

// ---- mbrl-lib's half-cheetah reward (src/env/task.rs), task code 3 -----------------------
// next_obs[0] − 0.1·Σ a², the squares summed in order in f32.
DEVFN float half_cheetah_reward(GLOBAL const float* act, int ad, const float* no) {
  float sq = 0.0f;
  for (int j = 0; j < ad; ++j) sq += FMUL(act[j], act[j]);
  return no[0] - FMUL(0.1f, sq);
}

// ---- the shaped inverted-pendulum planning reward (src/env/task.rs), task code 8 ----------
// 1 − W·(x² + (θ/0.2)²) while |θ| ≤ 0.2, else 0; in the CPU's order, without contraction.
DEVFN float inverted_pendulum_centred_reward(const float* no) {
  if (!(FABSF(no[1]) <= 0.2f)) return 0.0f;
  const float x = no[0], th = no[1] / 0.2f;
  return 1.0f - FMUL(CENTRED_WEIGHT, FMUL(x, x) + FMUL(th, th));
}

// ---- dispatch by task code ---------------------------------------------------------------
// o, no: the first four components of the observation before / after the step; act: the
// action in global memory (ad components, a: its first four).
DEVFN float env_reward(u32 env, const float* o, const float* a, GLOBAL const float* act, int ad,
                       const float* no) {
  if (env == ENV_CARTPOLE) return 1.0f;
  if (env == ENV_PENDULUM) return pendulum_reward(o, a);
  if (env == ENV_MOUNTAIN_CAR) return mountain_car_reward(a, no);
  if (env == TASK_HALF_CHEETAH) return half_cheetah_reward(act, ad, no);
  if (env == TASK_INVERTED_PENDULUM) return FABSF(no[1]) <= 0.2f ? 1.0f : 0.0f;
  if (env == TASK_INVERTED_PENDULUM_CENTRED) return inverted_pendulum_centred_reward(no);
  return NAN_F32;
}

// big: some |next_obs[j]| >= 100 for j >= 1 (the hopper's state-range check). A non-finite
// component makes the whole row's return -inf, whatever this says.
DEVFN int env_terminated(u32 env, const float* no, int big) {
  if (env == ENV_CARTPOLE) return cartpole_terminated(no);
  if (env == ENV_MOUNTAIN_CAR) return mountain_car_terminated(no);
  if (env == TASK_HOPPER) return !(!big && no[0] > 0.7f && FABSF(no[1]) < 0.2f);
  if (env == TASK_WALKER2D) return !(no[0] > 0.8f && no[0] < 2.0f && no[1] > -1.0f && no[1] < 1.0f);
  if (env == TASK_ANT) return !(no[0] >= 0.2f && no[0] <= 1.0f);
  if (env == TASK_INVERTED_PENDULUM || env == TASK_INVERTED_PENDULUM_CENTRED)
    return !(FABSF(no[1]) <= 0.2f);
  return 0;
}

DEVFN int env_state_dim(u32 env) { return env == ENV_CARTPOLE ? 4 : 2; }
DEVFN int env_obs_dim(u32 env) { return env == ENV_CARTPOLE ? 4 : (env == ENV_PENDULUM ? 3 : 2); }

DEVFN void env_step(u32 env, const float* s, const float* a, float* ns) {
  if (env == ENV_CARTPOLE) cartpole_step(s, a, ns);
  else if (env == ENV_PENDULUM) pendulum_step(s, a, ns);
  else mountain_car_step(s, a, ns);
}

DEVFN void env_observe(u32 env, const float* s, float* o) {
  if (env == ENV_PENDULUM) {
    pendulum_observe(s, o);
  } else {
    for (int j = 0; j < 4; ++j) o[j] = s[j];
  }
}

// ---- learned-model rollout ----------------------------------------------------------------
#define ROLL_INTS 192

// Identical to src/backend/cuda/params.rs `RolloutSpan`: the steps [t0, t1) one launch of
// `rollout` runs, and the blocks of its grid (the slot table's blocks per step); with a
// terminal value (`value` = 1), the rewards' discount γ, and the last launch also leaves each
// row's final state and flags for rollout_value. Without one γ = 1, and γ^t·r = r exactly.
typedef struct {
  u32 t0, t1, blocks, value;
  float gamma;
  u32 pad0, pad1, pad2;
} RolloutSpan;

// Row flags kept in global memory between the launches of a TS1 rollout.
#define ROW_ALIVE 1u
#define ROW_BAD 2u

// Dynamic shared memory of `rollout`, in 4-byte words (src/backend/cuda/params.rs mirrors it).
DEVFN int rollout_words(MlpShape s, RolloutParams p) {
  return mlp_tile_floats(s) + 2 * TILE_ROWS * (int)p.obs_dim + TILE_ROWS * (int)s.out_dim +
         2 * TILE_ROWS + ROLL_INTS;
}

// The elite drawn for `row` at Philox coordinate `coord` (the CPU's draw).
DEVFN int ts_member(RolloutParams p, SMEM const int* elist, u32 row, u32 coord) {
  return elist[philox_below(p.seed_lo, p.seed_hi, STREAM_TS_MEMBER, row, coord, p.num_elites)];
}

// The distinct elites in ascending order into uniq; returns how many. Thread 0 only.
DEVFN int distinct_elites(RolloutParams p, SMEM int* elist, SMEM int* uniq) {
  // Constant indices only: a thread-indexed read would copy the parameter block to local memory.
  UNROLL
  for (int q = 0; q < 16; ++q) elist[q] = (int)p.elites[q];
  int nu = 0;
  for (int q = 0; q < (int)p.num_elites; ++q) {
    const int m = elist[q];
    int pos = 0;
    while (pos < nu && uniq[pos] < m) ++pos;
    if (pos < nu && uniq[pos] == m) continue;
    for (int k = nu; k > pos; --k) uniq[k] = uniq[k - 1];
    uniq[pos] = m;
    ++nu;
  }
  return nu;
}

// rollout_group, grid = the number of member draws (H under TS1, 1 under TS∞), one block
// each: the slot table of draw g. Rows are counting-sorted by member (members ascending, rows
// ascending within a member) and each member's run is padded to whole tiles of TILE_ROWS
// slots, so that a block of `rollout` serves one member: every staged weight chunk serves a
// full tile of rows but the last of each member. slot_rows[(g·blocks + b)·TILE_ROWS + i] is
// the row in slot i of block b (−1: padding; a block's rows are a prefix of its slots), and
// block_member[g·blocks + b] its member (−1: an empty block, which returns at once).
// blocks = ⌈rows / TILE_ROWS⌉ + distinct elites bounds the padded total. Each of the 256
// threads counts a contiguous chunk of rows, the chunks' counts are scanned per member, and
// the threads place their rows again in the same order.
KERNEL BOUNDS(256) void rollout_group(RolloutParams p, u32 blocks, GLOBAL int* slot_rows,
                                      GLOBAL int* block_member) {
  SHARED int cnt[256 * 16];
  SHARED int elist[16];
  SHARED int uniq[16];
  SHARED int seg[17];
  SHARED int tot[16];
  SHARED int meta[1];
  const int rows = (int)(p.population * p.particles);
  const u32 coord = p.step * p.horizon + (p.propagation == PROP_TS1 ? (u32)GRP_X : 0u);
  const u32 base = (u32)GRP_X * blocks;
  if (LID == 0) meta[0] = distinct_elites(p, elist, uniq);
  for (int u = 0; u < 16; ++u) cnt[LID * 16 + u] = 0;
  SYNC();
  const int nu = meta[0];
  const int chunk = (rows + TILE_THREADS - 1) / TILE_THREADS;
  const int lo = imin(rows, LID * chunk), hi = imin(rows, lo + chunk);
  for (int r = lo; r < hi; ++r) {
    const int m = ts_member(p, elist, (u32)r, coord);
    int u = 0;
    while (uniq[u] != m) ++u;
    cnt[LID * 16 + u] += 1;
  }
  SYNC();
  // Per member: the total, and each chunk's exclusive offset within the member's run.
  if (LID < nu) {
    int run = 0;
    for (int i = 0; i < TILE_THREADS; ++i) {
      const int c = cnt[i * 16 + LID];
      cnt[i * 16 + LID] = run;
      run += c;
    }
    tot[LID] = run;
  }
  SYNC();
  if (LID == 0) {
    seg[0] = 0;
    for (int u = 0; u < nu; ++u)
      seg[u + 1] = seg[u] + (tot[u] + TILE_ROWS - 1) / TILE_ROWS * TILE_ROWS;
  }
  SYNC();
  for (int r = lo; r < hi; ++r) {
    const int m = ts_member(p, elist, (u32)r, coord);
    int u = 0;
    while (uniq[u] != m) ++u;
    const int slot = seg[u] + cnt[LID * 16 + u];
    cnt[LID * 16 + u] += 1;
    slot_rows[base * TILE_ROWS + (u32)slot] = r;
  }
  // Padding slots (disjoint from the rows' slots above) and the blocks' members.
  for (int i = LID; i < (int)blocks * TILE_ROWS; i += TILE_THREADS) {
    int u = 0;
    while (u < nu && seg[u + 1] <= i) ++u;
    if (u == nu || i >= seg[u] + tot[u]) slot_rows[base * TILE_ROWS + (u32)i] = -1;
  }
  for (int b = LID; b < (int)blocks; b += TILE_THREADS) {
    int u = 0;
    while (u < nu && seg[u + 1] <= b * TILE_ROWS) ++u;
    block_member[base + (u32)b] = u < nu ? uniq[u] : -1;
  }
}

// Model input of a slot: [state of the slot's row, its action at step t], normalised.
DEVFN void rollout_inputs(RolloutParams p, MlpShape s, GLOBAL const float* norm,
                          GLOBAL const float* actions, SMEM const float* st, SMEM float* cur,
                          SMEM const int* rowid, int n, int t) {
  const int in = (int)s.in_dim, od = (int)p.obs_dim, ld = (int)s.ld;
  for (int i = LID; i < n * in; i += TILE_THREADS) {
    const int sl = i / in, j = i % in;
    float v;
    if (j < od) {
      v = st[sl * od + j];
    } else {
      const u32 c = (u32)rowid[sl] / p.particles;
      v = actions[(c * p.horizon + (u32)t) * p.act_dim + (u32)(j - od)];
    }
    cur[sl * ld + j] = (v - norm[j]) / norm[in + j];
  }
}

// rollout: steps [sp.t0, sp.t1) of up to TILE_ROWS rows (row = candidate·K + particle).
// TS1 and TS∞: block b serves the rows of slot table entry b (rollout_group), all of one
// member, so each layer is one tile product with that member's weights. TS∞'s member is fixed
// for the horizon: one launch runs all H steps and the states never leave shared memory. TS1
// draws anew each step, and the rows regroup across the whole population through global
// memory: one launch per step, states and flags carried in `state` and `flags`. Expectation:
// block b owns rows 32b.. and runs every elite on them, one launch. Each step: the model's
// Gaussian next state (PETS eq. 2), reward, termination and finiteness per row.
KERNEL BOUNDS_MIN(256, 3) void rollout(RolloutParams p, MlpShape s, RolloutSpan sp,
                                       GLOBAL const float* P, GLOBAL const wtype* Wt,
                                       GLOBAL const float* norm, GLOBAL const float* start,
                                       GLOBAL const float* actions, GLOBAL const int* slot_rows,
                                       GLOBAL const int* block_member, GLOBAL float* state,
                                       GLOBAL u32* flags, GLOBAL float* row_returns,
                                       GLOBAL u32* ctr DYN_SMEM_PARAM) {
  DYN_SMEM_DECL
  const int ld = (int)s.ld, D = (int)s.out_dim, od = (int)p.obs_dim, ad = (int)p.act_dim;
  const int L = (int)s.num_layers, ne = (int)p.num_elites, H = (int)p.horizon;
  const int rows = (int)(p.population * p.particles);
  const int grouped = p.propagation != PROP_EXPECTATION;
  const u32 entry = (p.propagation == PROP_TS1 ? sp.t0 : 0u) * sp.blocks + (u32)GRP_X;
  const int member = grouped ? block_member[entry] : -1;
  if (grouped && member < 0) return;  // an empty block of the slot table: the whole block
  // Fixed-size arrays first, at constant offsets (no registers held for their addresses
  // across the layer products), then the tiles sized by the network.
  SMEM float* rew = dyn_smem;
  SMEM float* ret = rew + TILE_ROWS;
  SMEM int* alive = (SMEM int*)(ret + TILE_ROWS);
  SMEM int* bad = alive + 32;
  SMEM int* rowid = alive + 64;
  SMEM int* elist = alive + 96;
  SMEM float* cur = dyn_smem + 2 * TILE_ROWS + ROLL_INTS;
  SMEM float* oth = cur + TILE_ROWS * ld;
  SMEM float* ws = oth + TILE_ROWS * ld;
  SMEM float* st = ws + WS_FLOATS;
  SMEM float* nx = st + TILE_ROWS * od;
  SMEM float* acc = nx + TILE_ROWS * od;
  const u32 bo = mlp_bounds_off(s);

  if (LID == 0) {
    UNROLL
    for (int q = 0; q < 16; ++q) elist[q] = (int)p.elites[q];
  }
  if (LID < TILE_ROWS) {
    int r = GRP_X * TILE_ROWS + LID;
    if (grouped) r = slot_rows[entry * TILE_ROWS + (u32)LID];
    rowid[LID] = r < rows ? r : -1;
  }
  SYNC();
  int n = 0;
  while (n < TILE_ROWS && rowid[n] >= 0) ++n;
  for (int i = LID; i < n * od; i += TILE_THREADS) {
    const int sl = i / od, j = i % od;
    st[i] = sp.t0 == 0u ? start[j] : state[(u32)rowid[sl] * (u32)od + (u32)j];
  }
  if (LID < n) {
    const u32 f = sp.t0 == 0u ? ROW_ALIVE : flags[rowid[LID]];
    alive[LID] = (f & ROW_ALIVE) != 0u;
    bad[LID] = (f & ROW_BAD) != 0u;
    ret[LID] = sp.t0 == 0u ? 0.0f : row_returns[rowid[LID]];
  }
  SYNC();
  // γ^t as the CPU forms it: a running product from 1 (the CPU's run_tile).
  float disc = 1.0f;
  for (int t = 0; t < (int)sp.t0; ++t) disc = FMUL(disc, sp.gamma);

  for (int t = (int)sp.t0; t < (int)sp.t1; ++t) {
    const u32 coord = p.step * p.horizon + (u32)t;
    if (!grouped) {
      // Mean over the elites (in list order) of each member's mean prediction.
      for (int i = LID; i < n * D; i += TILE_THREADS) acc[i] = 0.0f;
      for (int q = 0; q < ne; ++q) {
        rollout_inputs(p, s, norm, actions, st, cur, rowid, n, t);
        for (int l = 0; l <= L; ++l) {
          mlp_layer(s, P, Wt, l, elist[q], cur, oth, ws, 0, n, row_returns, 0, 0u, ctr);
          SMEM float* tmp = cur;
          cur = oth;
          oth = tmp;
        }
        for (int i = LID; i < n * D; i += TILE_THREADS) {
          const int r = i / D, j = i % D;
          acc[i] += cur[r * ld + j];
        }
        SYNC();
      }
      const float inv = 1.0f / (float)ne;
      for (int i = LID; i < n * od; i += TILE_THREADS) {
        const int r = i / od, j = i % od;
        nx[i] = st[i] + FMUL(acc[r * D + j], inv);
      }
      if (p.learn_reward && LID < n) rew[LID] = acc[LID * D + od] * inv;
    } else {
      rollout_inputs(p, s, norm, actions, st, cur, rowid, n, t);
      for (int l = 0; l <= L; ++l) {
        mlp_layer(s, P, Wt, l, member, cur, oth, ws, 0, n, row_returns, 0, 0u, ctr);
        SMEM float* tmp = cur;
        cur = oth;
        oth = tmp;
      }
      // next = state + (μ + σ·ε) (PETS eq. 2), per (slot, output); the noise is the row's.
      for (int i = LID; i < n * D; i += TILE_THREADS) {
        const int sl = i / D, j = i % D;
        const float mu = cur[sl * ld + j];
        float eps = 0.0f;
        if (s.probabilistic) {
          const float lv = bounded_logvar(cur[sl * ld + D + j], P[bo + (u32)j],
                                          P[bo + (u32)D + (u32)j]);
          const float z = philox_normal(p.seed_lo, p.seed_hi, STREAM_TS_NOISE,
                                        (u32)rowid[sl] * (u32)D + (u32)j, coord);
          eps = FMUL(EXPF(FMUL(0.5f, lv)), z);
        }
        const float d = mu + eps;
        if (j < od) {
          nx[sl * od + j] = st[sl * od + j] + d;
        } else {
          rew[sl] = d;
        }
      }
    }
    SYNC();
    if (LID < n) {
      const int r = LID;
      const u32 c = (u32)rowid[r] / p.particles;
      GLOBAL const float* act = actions + (c * p.horizon + (u32)t) * p.act_dim;
      float o[4], a[4], no[4];
      for (int j = 0; j < 4; ++j) {
        o[j] = j < od ? st[r * od + j] : 0.0f;
        no[j] = j < od ? nx[r * od + j] : 0.0f;
        a[j] = j < ad ? act[j] : 0.0f;
      }
      const float rr = p.learn_reward ? rew[r] : env_reward(p.env, o, a, act, ad, no);
      int fin = finite_f32(rr);
      int big = 0;
      for (int j = 0; j < od; ++j) {
        fin = fin && finite_f32(nx[r * od + j]);
        big = big || (j >= 1 && FABSF(nx[r * od + j]) >= 100.0f);
      }
      if (!fin) bad[r] = 1;
      if (alive[r]) {
        ret[r] += FMUL(disc, rr);
        alive[r] = !env_terminated(p.env, no, big);
      }
    }
    disc = FMUL(disc, sp.gamma);
    SYNC();
    SMEM float* tmp = st;
    st = nx;
    nx = tmp;
  }
  if (sp.t1 == (u32)H && !sp.value) {
    if (LID < n) row_returns[rowid[LID]] = bad[LID] ? NEG_INF_F32 : ret[LID];
  } else {
    for (int i = LID; i < n * od; i += TILE_THREADS) {
      const int sl = i / od, j = i % od;
      state[(u32)rowid[sl] * (u32)od + (u32)j] = st[i];
    }
    if (LID < n) {
      flags[rowid[LID]] = (alive[LID] ? ROW_ALIVE : 0u) | (bad[LID] ? ROW_BAD : 0u);
      row_returns[rowid[LID]] = ret[LID];
    }
  }
}

// rollout_value: grid ⌈rows/256⌉. Closes each row's path with γ^H·min(Q₁, Q₂)(s_H, ā(s_H))
// (`q` [2, rows], from the dense-layer engine on the final states) where it is still alive;
// a non-finite value, like a non-finite step before it, makes the row's return −∞. Here
// sp.gamma holds γ^H as the CPU forms it.
KERNEL BOUNDS(256) void rollout_value(RolloutParams p, RolloutSpan sp, GLOBAL const u32* flags,
                                      GLOBAL const float* q, GLOBAL float* row_returns) {
  const u32 r = (u32)GRP_X * 256u + (u32)LID;
  const u32 rows = p.population * p.particles;
  if (r >= rows) return;
  const u32 f = flags[r];
  if ((f & ROW_BAD) != 0u) {
    row_returns[r] = NEG_INF_F32;
    return;
  }
  if ((f & ROW_ALIVE) == 0u) return;
  // Rust's f32::min: the other operand where one is NaN (then the sum below is checked).
  const float a = q[r], b = q[rows + r];
  const float v = a != a ? b : (b != b ? a : (b < a ? b : a));
  if (!finite_f32(v)) {
    row_returns[r] = NEG_INF_F32;
    return;
  }
  row_returns[r] += FMUL(sp.gamma, v);
}

KERNEL BOUNDS(256) void rollout_reduce(RolloutParams p, GLOBAL const float* row_returns,
                                       GLOBAL float* returns) {
  const u32 c = (u32)GRP_X * 256u + (u32)LID;
  if (c >= p.population) return;
  float sum = 0.0f;
  int dead = 0;
  for (u32 k = 0u; k < p.particles; ++k) {
    const float v = row_returns[c * p.particles + k];
    if (v == NEG_INF_F32) dead = 1;
    sum += v;
  }
  returns[c] = dead ? NEG_INF_F32 : sum / (float)p.particles;
}

// ---- planning with the true simulator -------------------------------------------------------
KERNEL BOUNDS(128) void rollout_true(RolloutParams p, GLOBAL const float* start,
                                     GLOBAL const float* actions, GLOBAL float* returns) {
  const u32 c = (u32)GRP_X * 128u + (u32)LID;
  if (c >= p.population) return;
  const int sd = env_state_dim(p.env), od = env_obs_dim(p.env), ad = (int)p.act_dim;
  float st[4], ns[4], o[4], no[4], a[4];
  for (int j = 0; j < 4; ++j) {
    st[j] = j < sd ? start[j] : 0.0f;
    ns[j] = 0.0f;
    no[j] = 0.0f;
    a[j] = 0.0f;
  }
  env_observe(p.env, st, o);
  float total = 0.0f;
  int bad = 0;
  for (u32 t = 0u; t < p.horizon; ++t) {
    GLOBAL const float* act = actions + (c * p.horizon + t) * p.act_dim;
    for (int j = 0; j < 4; ++j) a[j] = j < ad ? act[j] : 0.0f;
    env_step(p.env, st, a, ns);
    env_observe(p.env, ns, no);
    const float r = env_reward(p.env, o, a, act, ad, no);
    int fin = finite_f32(r);
    for (int j = 0; j < od; ++j) fin = fin && finite_f32(no[j]);
    bad = bad || !fin;
    total += r;
    if (env_terminated(p.env, no, 0)) break;
    for (int j = 0; j < 4; ++j) {
      st[j] = ns[j];
      o[j] = no[j];
    }
  }
  returns[c] = bad ? NEG_INF_F32 : total;
}

// ---- MBPO's branched rollout (src/algo/mbpo.rs), one step at a time ---------------------
// The policy's actions and the model's predictions come from the dense-layer engine
// (ensemble.cu) and sac.cu between these two kernels; the composition is
// src/policy/device.rs. Both kernels run as one block: branch_route ranks each row among the
// rows of its member and branch_step appends transitions in row order, and both orders come
// from a block-wide exclusive scan over contiguous row chunks (one chunk per thread), which
// keeps the ring's contents identical to the CPU's.

// Identical to src/backend/mod.rs `BranchParams`.
typedef struct {
  u32 rows, obs_dim, act_dim, out_dim;
  u32 members, per, task, learn_reward;
  u32 seed_lo, seed_hi, step, capacity;
  u32 base, member_stream, noise_stream, fresh;
} BranchParams;

// src/backend/mod.rs MAX_ELITES: the route's per-thread member counts live in shared memory.
#define BRANCH_MAX_MEMBERS 16u

DEVFN u32 min_u32(u32 a, u32 b) { return a < b ? a : b; }

DEVFN u32 branch_member(BranchParams p, u32 r) {
  return philox_below(p.seed_lo, p.seed_hi, p.member_stream, r, p.step, p.members);
}

KERNEL BOUNDS(256) void branch_route(BranchParams p, GLOBAL const float* x, GLOBAL float* route,
                                     GLOBAL float* xg) {
  // counts[m·256 + t]: rows of thread t's chunk drawing member m, then their first rank.
  SHARED u32 counts[BRANCH_MAX_MEMBERS * 256u];
  const u32 t = (u32)LID, chunk = (p.rows + 255u) / 256u;
  const u32 r0 = min_u32(t * chunk, p.rows), r1 = min_u32(r0 + chunk, p.rows);
  const u32 din = p.obs_dim + p.act_dim;
  for (u32 m = 0; m < BRANCH_MAX_MEMBERS; ++m) counts[m * 256u + t] = 0u;
  for (u32 r = r0; r < r1; ++r) counts[branch_member(p, r) * 256u + t] += 1u;
  SYNC();
  if (t < p.members) {
    u32 acc = 0u;
    for (u32 i = 0; i < 256u; ++i) {
      const u32 v = counts[t * 256u + i];
      counts[t * 256u + i] = acc;
      acc += v;
    }
  }
  SYNC();
  for (u32 r = r0; r < r1; ++r) {
    const u32 m = branch_member(p, r);
    const u32 q = counts[m * 256u + t];
    counts[m * 256u + t] = q + 1u;
    if (q >= p.per) {
      route[r] = AS_F32(0xffffffffu);
      continue;
    }
    const u32 slot = m * p.per + q;
    route[r] = AS_F32(slot);
    for (u32 j = 0; j < din; ++j) xg[slot * din + j] = x[r * din + j];
  }
}

// Output j of row r's Gaussian sample (PETS eq. 2): μ + exp(½·log σ²)·ε.
DEVFN float branch_sample(BranchParams p, GLOBAL const float* mean, GLOBAL const float* logvar,
                          u32 slot, u32 r, u32 j) {
  const u32 i = slot * p.out_dim + j;
  const float z = philox_normal(p.seed_lo, p.seed_hi, p.noise_stream, r * p.out_dim + j, p.step);
  return mean[i] + FMUL(EXPF(FMUL(0.5f, logvar[i])), z);
}

typedef struct {
  int record;  // live, and the transition is finite: it goes into the ring
  int term;
  float reward;
} BranchRow;

DEVFN BranchRow branch_row(BranchParams p, GLOBAL const float* route, GLOBAL const float* mean,
                           GLOBAL const float* logvar, GLOBAL const float* x,
                           GLOBAL const float* obs, GLOBAL const float* stopped, u32 r) {
  BranchRow b;
  b.record = 0;
  b.term = 0;
  b.reward = 0.0f;
  const u32 slot = AS_U32(route[r]);
  // A fresh rollout's rows all start live (stopped holds an earlier rollout's flags).
  if ((p.fresh == 0u && stopped[r] != 0.0f) || slot >= p.members * p.per) return b;
  const u32 od = p.obs_dim, din = od + p.act_dim;
  float o4[4] = {0.0f, 0.0f, 0.0f, 0.0f}, n4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float a4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int finite = 1, big = 0;
  for (u32 j = 0; j < od; ++j) {
    const float s = obs[r * od + j];
    const float n = s + branch_sample(p, mean, logvar, slot, r, j);
    if (j < 4u) {
      o4[j] = s;
      n4[j] = n;
    }
    finite = finite && finite_f32(n);
    big = big || (j >= 1u && FABSF(n) >= 100.0f);
  }
  GLOBAL const float* act = x + r * din + od;
  for (u32 j = 0; j < p.act_dim && j < 4u; ++j) a4[j] = act[j];
  b.reward = p.learn_reward != 0u ? branch_sample(p, mean, logvar, slot, r, od)
                                  : env_reward(p.task, o4, a4, act, (int)p.act_dim, n4);
  b.record = finite && finite_f32(b.reward);
  b.term = b.record && env_terminated(p.task, n4, big);
  return b;
}

KERNEL BOUNDS(256) void branch_step(BranchParams p, GLOBAL const float* route,
                                    GLOBAL const float* mean, GLOBAL const float* logvar,
                                    GLOBAL const float* x, GLOBAL float* obs,
                                    GLOBAL float* stopped, GLOBAL float* count,
                                    GLOBAL float* ring) {
  SHARED u32 first[256];
  const u32 t = (u32)LID, chunk = (p.rows + 255u) / 256u;
  const u32 r0 = min_u32(t * chunk, p.rows), r1 = min_u32(r0 + chunk, p.rows);
  const u32 od = p.obs_dim, ad = p.act_dim, din = od + ad, w = 2u * od + ad + 2u;
  u32 mine = 0u;
  for (u32 r = r0; r < r1; ++r)
    mine += (u32)branch_row(p, route, mean, logvar, x, obs, stopped, r).record;
  first[t] = mine;
  SYNC();
  if (t == 0u) {
    u32 acc = p.fresh != 0u ? 0u : AS_U32(count[0]);
    for (u32 i = 0; i < 256u; ++i) {
      const u32 v = first[i];
      first[i] = acc;
      acc += v;
    }
  }
  SYNC();
  u32 n = first[t];
  for (u32 r = r0; r < r1; ++r) {
    const BranchRow b = branch_row(p, route, mean, logvar, x, obs, stopped, r);
    const int live = b.record && !b.term;
    GLOBAL float* row = ring;
    if (b.record) {
      row = ring + (u32)(((u64)p.base + (u64)n) % (u64)p.capacity) * w;
      for (u32 j = 0; j < ad; ++j) row[od + j] = x[r * din + od + j];
      row[din] = b.reward;
      row[w - 1u] = b.term ? 1.0f : 0.0f;
      ++n;
    }
    const u32 slot = AS_U32(route[r]);
    for (u32 j = 0; j < od; ++j) {
      const float s = obs[r * od + j];
      float next = 0.0f;
      if (b.record) {
        next = s + branch_sample(p, mean, logvar, slot, r, j);
        row[j] = s;
        row[din + 1u + j] = next;
      }
      obs[r * od + j] = live ? next : 0.0f;
    }
    stopped[r] = live ? 0.0f : 1.0f;
  }
  if (t == 255u) count[0] = AS_F32(n);
}

// ---- The path gradient's model stages (src/backend/cpu/rollout.rs `path_step`,
// `path_model_back`, the specification; `PathParams` in common.cuh lays out the buffers) --
//   path_step        grid ⌈B/256⌉, a thread per row: s_{t+1} = s_t + μ + σ·ξ from the row's
//                    slot, reward, termination and the flags into the tape.
//   path_model_back  grid ⌈members·per/256⌉, a thread per grouped slot: the model input
//                    again, the reward's gradient terms and ∂/∂(μ, log σ²).
// A table entry out of range (a slot ≥ members·per, a row ≥ B) is taken as empty: nothing
// is read through it (path_step treats the row as stopped). A deterministic model's log σ²
// buffers are never touched.

// σ·ξ of a path output from its log σ² at `lv` (not read for a deterministic model).
DEVFN float path_sigma_xi(PathParams p, GLOBAL const float* lv, float xi) {
  return p.probabilistic != 0u ? FMUL(EXPF(FMUL(0.5f, lv[0])), xi) : 0.0f;
}

KERNEL BOUNDS(256) void path_step(PathParams p, GLOBAL const float* mean,
                                  GLOBAL const float* logvar, GLOBAL const float* noise,
                                  GLOBAL float* tape, GLOBAL float* state) {
  const u32 r = (u32)GRP_X * 256u + (u32)LID;
  const u32 b = p.rows;
  if (r >= b) return;
  const u32 o = p.obs_dim, a = p.act_dim, d = p.out_dim, tr = p.t * b + r;
  const u32 slot = AS_U32(noise[p.n_slot + tr]);
  const int has_slot = slot < p.members * p.per;
  const u32 i = has_slot ? slot * d : 0u;
  const int prob = p.probabilistic != 0u;
  if (prob) {
    for (u32 j = 0; j < d; ++j) tape[p.t_logvar + tr * d + j] = has_slot ? logvar[i + j] : 0.0f;
  }
  GLOBAL const float* s = tape + p.t_states + tr * o;
  GLOBAL const float* act = tape + p.t_act + tr * a;
  GLOBAL const float* xi = noise + p.n_xi + tr * d;
  GLOBAL float* next = tape + p.t_states + (tr + b) * o;
  float reward = 0.0f;
  int counted = has_slot && tape[p.t_alive + tr] != 0.0f;
  int big = 0;
  float o4[4] = {0.0f, 0.0f, 0.0f, 0.0f}, n4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float a4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (counted) {
    int finite = 1;
    for (u32 j = 0; j < o; ++j) {
      const float v = (s[j] + mean[i + j]) + path_sigma_xi(p, logvar + i + j, xi[j]);
      next[j] = v;
      if (j < 4u) {
        o4[j] = s[j];
        n4[j] = v;
      }
      finite = finite && finite_f32(v);
      big = big || (j >= 1u && FABSF(v) >= 100.0f);
    }
    for (u32 j = 0; j < a && j < 4u; ++j) a4[j] = act[j];
    reward = p.learn_reward != 0u ? mean[i + o] + path_sigma_xi(p, logvar + i + o, xi[o])
                                  : env_reward(p.task, o4, a4, act, (int)a, n4);
    // Stops here, unrewarded; zeros keep the later passes finite.
    counted = finite && finite_f32(reward);
  }
  const int alive = counted && !env_terminated(p.task, n4, big);
  if (!counted) {
    for (u32 j = 0; j < o; ++j) next[j] = 0.0f;
    reward = 0.0f;
  }
  tape[p.t_counted + tr] = counted ? 1.0f : 0.0f;
  tape[p.t_reward + tr] = reward;
  tape[p.t_alive + tr + b] = alive ? 1.0f : 0.0f;
  for (u32 j = 0; j < o; ++j) state[r * o + j] = next[j];
}

// w·∂r/∂(s, a, s') of the task's reward added into gs, ga and gn (src/env/task.rs
// reward_vjp; in its order of rounding): the pendulum's θ² + 0.1·θ̇² + 0.001·u², the mountain
// car's 0.1·a², the half-cheetah's next₀ − 0.1·‖a‖²; no gradient for the others.
DEVFN void path_reward_vjp(u32 task, GLOBAL const float* s, GLOBAL const float* act, u32 ad,
                           float w, GLOBAL float* gs, GLOBAL float* ga, GLOBAL float* gn) {
  if (task == ENV_PENDULUM) {
    const float x = s[0], y = s[1], td = s[2];
    const float th = (float)atan2((double)y, (double)x);
    const float rho2 = FMUL(x, x) + FMUL(y, y);
    const float g_th = FMUL(FMUL(w, -2.0f), th);
    gs[0] += FMUL(g_th, -y / rho2);
    gs[1] += FMUL(g_th, x / rho2);
    gs[2] += FMUL(FMUL(w, -0.2f), td);
    const float u = act[0];
    if (u > -2.0f && u < 2.0f) ga[0] += FMUL(FMUL(w, -0.002f), u);
  } else if (task == ENV_MOUNTAIN_CAR) {
    ga[0] += FMUL(FMUL(w, -0.2f), act[0]);
  } else if (task == TASK_HALF_CHEETAH) {
    gn[0] += w;
    for (u32 j = 0; j < ad; ++j) ga[j] += FMUL(FMUL(w, -0.2f), act[j]);
  }
}

KERNEL BOUNDS(256) void path_model_back(PathParams p, GLOBAL const float* noise,
                                        GLOBAL const float* tape, GLOBAL float* back,
                                        GLOBAL float* xg, GLOBAL float* d_mean,
                                        GLOBAL float* d_logvar) {
  const u32 i = (u32)GRP_X * 256u + (u32)LID;
  if (i >= p.members * p.per) return;
  const u32 b = p.rows, o = p.obs_dim, a = p.act_dim, d = p.out_dim, din = o + a;
  const int prob = p.probabilistic != 0u, learned = p.learn_reward != 0u;
  GLOBAL float* dm = d_mean + i * d;
  GLOBAL float* dl = d_logvar + i * d;
  for (u32 j = 0; j < d; ++j) {
    dm[j] = 0.0f;
    if (prob) dl[j] = 0.0f;
  }
  GLOBAL float* x = xg + i * din;
  const u32 r = AS_U32(noise[p.n_rowof + p.t * p.grouped + i]);
  if (r >= b) {
    for (u32 j = 0; j < din; ++j) x[j] = 0.0f;
    return;
  }
  const u32 tr = p.t * b + r;
  GLOBAL const float* s = tape + p.t_states + tr * o;
  GLOBAL const float* act = tape + p.t_act + tr * a;
  for (u32 j = 0; j < o; ++j) x[j] = s[j];
  for (u32 j = 0; j < a; ++j) x[o + j] = act[j];
  const int counted = tape[p.t_counted + tr] != 0.0f;
  const float c = FMUL(p.w, p.disc);
  GLOBAL float* g_next = back + r * o;
  GLOBAL float* gsr = back + b * o + r * o;
  GLOBAL float* gar = back + 2u * b * o + r * a;
  for (u32 j = 0; j < o; ++j) gsr[j] = 0.0f;
  for (u32 j = 0; j < a; ++j) gar[j] = 0.0f;
  if (!counted) {
    for (u32 j = 0; j < o; ++j) g_next[j] = 0.0f;
  } else if (!learned) {
    path_reward_vjp(p.task, s, act, a, c, gsr, gar, g_next);
  }
  GLOBAL const float* xi = noise + p.n_xi + tr * d;
  GLOBAL const float* lv = tape + p.t_logvar + tr * d;
  // A zero upstream gradient stays exactly zero, also where a dead row's prediction
  // overflowed (0·∞ would be NaN).
  for (u32 j = 0; j <= o; ++j) {
    float g;
    if (j < o) {
      g = g_next[j];
    } else {
      if (!learned) break;
      g = counted ? c : 0.0f;
    }
    if (g == 0.0f) continue;
    dm[j] = g;
    // ∂(σ·ξ)/∂ log σ² = ½·σ·ξ.
    if (prob) dl[j] = FMUL(FMUL(FMUL(g, 0.5f), EXPF(FMUL(0.5f, lv[j]))), xi[j]);
  }
}
