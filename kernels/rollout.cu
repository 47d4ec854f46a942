// rollout.cu — fused trajectory sampling (PETS §4.2: TS1, TS∞, expectation) and planning
// with the true simulator; the twin of src/backend/cpu/rollout.rs and shaders/rollout.wgsl.
// Compiled after common.cuh and mlp.cuh (the Rust side prepends them).
//
// Entry points (block = 256 threads):
//   rollout         grid ⌈P·K/32⌉: one block owns 32 consecutive rows (row = candidate·K +
//                   particle) for the *whole horizon*, so there is one launch per rollout and
//                   the particle states never leave shared memory. Each step: draw every row's
//                   elite member (Philox, as the CPU), counting-sort the tile's rows by member
//                   (stable, members ascending: the grouping the CPU uses), then run each
//                   layer once per member present on that member's contiguous slots (mlp.cuh's
//                   tile engine, weights streamed from L2); sample the next state from the
//                   predicted Gaussian; reward, termination and finiteness per row. Writes one
//                   return per row.
//                   Why rows are not regrouped across blocks: under TS1 members change every
//                   step, and a grid-wide regrouping needs a grid barrier per step (cooperative
//                   launch, not portable). With 5 elites a 32-row tile runs ≤ 5 member passes;
//                   the FMAs of a pass are predicated per warp on the member's row count, so
//                   the arithmetic done stays ≈ the useful arithmetic and the extra cost is
//                   the re-staging of each member's weights.
//   rollout_reduce  grid ⌈P/256⌉: mean over each candidate's K particle returns (−∞ if any
//                   particle left the finite numbers), in particle order like the CPU.
//   rollout_true    grid ⌈P/128⌉ (blocks of 128): one thread per candidate steps the native
//                   environment's true dynamics in f64 exactly as src/env does.
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
  if (env == TASK_INVERTED_PENDULUM) return !(FABSF(no[1]) <= 0.2f);
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

// Dynamic shared memory of `rollout`, in 4-byte words (src/backend/cuda/rollout.rs mirrors it).
DEVFN int rollout_words(MlpShape s, RolloutParams p) {
  return mlp_tile_floats(s) + 2 * TILE_ROWS * (int)p.obs_dim + TILE_ROWS * (int)s.out_dim +
         2 * TILE_ROWS + ROLL_INTS;
}

// Model input of a slot: [state of row r, action of row r at step t], normalised.
DEVFN void rollout_inputs(RolloutParams p, MlpShape s, GLOBAL const float* norm,
                          GLOBAL const float* actions, SMEM const float* st, SMEM float* cur,
                          SMEM const int* order, int use_order, int r0, int n, int t) {
  const int in = (int)s.in_dim, od = (int)p.obs_dim, ld = (int)s.ld;
  for (int i = LID; i < n * in; i += TILE_THREADS) {
    const int sl = i / in, j = i % in;
    const int r = use_order ? order[sl] : sl;
    float v;
    if (j < od) {
      v = st[r * od + j];
    } else {
      const u32 c = (u32)(r0 + r) / p.particles;
      v = actions[(c * p.horizon + (u32)t) * p.act_dim + (u32)(j - od)];
    }
    cur[sl * ld + j] = (v - norm[j]) / norm[in + j];
  }
}

KERNEL BOUNDS_MIN(256, 3) void rollout(RolloutParams p, MlpShape s, GLOBAL const float* P,
                                GLOBAL const wtype* Wt, GLOBAL const float* norm,
                                GLOBAL const float* start, GLOBAL const float* actions,
                                GLOBAL float* row_returns DYN_SMEM_PARAM) {
  DYN_SMEM_DECL
  const int ld = (int)s.ld, D = (int)s.out_dim, od = (int)p.obs_dim, ad = (int)p.act_dim;
  const int L = (int)s.num_layers, ne = (int)p.num_elites, H = (int)p.horizon;
  const int rows = (int)(p.population * p.particles);
  const int r0 = GRP_X * TILE_ROWS;
  const int n = imin(TILE_ROWS, rows - r0);
  SMEM float* cur = dyn_smem;
  SMEM float* oth = cur + TILE_ROWS * ld;
  SMEM float* ws = oth + TILE_ROWS * ld;
  SMEM float* st = ws + TILE_KC * TILE_NT;
  SMEM float* nx = st + TILE_ROWS * od;
  SMEM float* acc = nx + TILE_ROWS * od;
  SMEM float* rew = acc + TILE_ROWS * D;
  SMEM float* ret = rew + TILE_ROWS;
  SMEM int* alive = (SMEM int*)(ret + TILE_ROWS);
  SMEM int* bad = alive + 32;
  SMEM int* member = alive + 64;
  SMEM int* order = alive + 96;
  SMEM int* seg = alive + 128;     // 17 segment starts
  SMEM int* uniq = alive + 145;    // distinct elites, ascending
  SMEM int* elist = alive + 161;   // elites in the given order
  SMEM int* meta = alive + 177;    // [0]: number of distinct elites
  const u32 bo = mlp_bounds_off(s);

  if (LID == 0) {
    // Constant indices only: a thread-indexed read would copy the parameter block to local memory.
    UNROLL
    for (int q = 0; q < 16; ++q) elist[q] = (int)p.elites[q];
  }
  for (int i = LID; i < n * od; i += TILE_THREADS) st[i] = start[i % od];
  if (LID < n) {
    alive[LID] = 1;
    bad[LID] = 0;
    ret[LID] = 0.0f;
  }
  SYNC();
  if (LID == 0) {
    int nu = 0;
    for (int q = 0; q < ne; ++q) {
      const int m = elist[q];
      int pos = 0;
      while (pos < nu && uniq[pos] < m) ++pos;
      if (pos < nu && uniq[pos] == m) continue;
      for (int k = nu; k > pos; --k) uniq[k] = uniq[k - 1];
      uniq[pos] = m;
      ++nu;
    }
    meta[0] = nu;
  }
  if (p.propagation == PROP_TSINF && LID < n)
    member[LID] = elist[philox_below(p.seed_lo, p.seed_hi, STREAM_TS_MEMBER, (u32)(r0 + LID),
                                     p.step * p.horizon, (u32)ne)];
  SYNC();
  const int nu = meta[0];

  for (int t = 0; t < H; ++t) {
    const u32 coord = p.step * p.horizon + (u32)t;
    if (p.propagation == PROP_EXPECTATION) {
      // Mean over the elites (in list order) of each member's mean prediction.
      for (int i = LID; i < n * D; i += TILE_THREADS) acc[i] = 0.0f;
      for (int q = 0; q < ne; ++q) {
        rollout_inputs(p, s, norm, actions, st, cur, order, 0, r0, n, t);
        for (int l = 0; l <= L; ++l) {
          mlp_layer(s, P, Wt, l, elist[q], cur, oth, ws, 0, n, row_returns, 0, 0u);
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
      if (p.propagation == PROP_TS1 && LID < n)
        member[LID] = elist[philox_below(p.seed_lo, p.seed_hi, STREAM_TS_MEMBER, (u32)(r0 + LID),
                                         coord, (u32)ne)];
      SYNC();
      // Stable counting sort of the tile's rows by member, members ascending: row i goes
      // after every row of a smaller member and every earlier row of its own member; the
      // segment of uniq[u] starts after every row of a smaller member. One pass over the 32
      // members per thread, in parallel.
      if (LID < n) {
        const int m = member[LID];
        int pos = 0;
        for (int j = 0; j < n; ++j) {
          const int mj = member[j];
          pos += (mj < m || (mj == m && j < LID)) ? 1 : 0;
        }
        order[pos] = LID;
      }
      if (LID <= nu) {
        int start = n;
        if (LID < nu) {
          start = 0;
          for (int j = 0; j < n; ++j) start += member[j] < uniq[LID] ? 1 : 0;
        }
        seg[LID] = start;
      }
      SYNC();
      rollout_inputs(p, s, norm, actions, st, cur, order, 1, r0, n, t);
      for (int l = 0; l <= L; ++l) {
        for (int u = 0; u < nu; ++u) {
          const int a = seg[u], b = seg[u + 1];
          if (b > a) mlp_layer(s, P, Wt, l, uniq[u], cur, oth, ws, a, b, row_returns, 0, 0u);
        }
        SMEM float* tmp = cur;
        cur = oth;
        oth = tmp;
      }
      // next = state + (μ + σ·ε) (PETS eq. 2), per (slot, output).
      for (int i = LID; i < n * D; i += TILE_THREADS) {
        const int sl = i / D, j = i % D;
        const int r = order[sl];
        const float mu = cur[sl * ld + j];
        float eps = 0.0f;
        if (s.probabilistic) {
          const float lv = bounded_logvar(cur[sl * ld + D + j], P[bo + (u32)j],
                                          P[bo + (u32)D + (u32)j]);
          const float z = philox_normal(p.seed_lo, p.seed_hi, STREAM_TS_NOISE,
                                        (u32)(r0 + r) * (u32)D + (u32)j, coord);
          eps = FMUL(EXPF(FMUL(0.5f, lv)), z);
        }
        const float d = mu + eps;
        if (j < od) {
          nx[r * od + j] = st[r * od + j] + d;
        } else {
          rew[r] = d;
        }
      }
    }
    SYNC();
    if (LID < n) {
      const int r = LID;
      const u32 c = (u32)(r0 + r) / p.particles;
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
        ret[r] += rr;
        alive[r] = !env_terminated(p.env, no, big);
      }
    }
    SYNC();
    SMEM float* tmp = st;
    st = nx;
    nx = tmp;
  }
  if (LID < n) row_returns[r0 + LID] = bad[LID] ? NEG_INF_F32 : ret[LID];
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
