// rollout.wgsl — fused trajectory sampling (PETS §4.2: TS1, TS∞, expectation) and planning
// with the native environments' true dynamics. Twin of src/backend/cpu/rollout.rs; the
// reward, termination and dynamics below mirror src/env/{cartpole,pendulum,mountain_car}.rs.
//
// Rows r = c·particles + k. One rollout is recorded by src/backend/wgpu/rollout.rs as a single
// compute pass, with no host round-trip: rollout_init, then per horizon step t
//     rollout_group   (once, before the steps: H tables under TS1)   rows → member-sorted slots
//     rollout_gather  model inputs [state, action_t], normalised, in slot order
//     gemm × (layers + 1)   ensemble.wgsl's GEMM in grouped mode: one member per 64-row tile
//     rollout_step    next state = state + μ + σ·ε, reward, termination, return
// and rollout_reduce (mean over particles). Per-step parameters come from a table of uniform
// blocks selected by dynamic offset, so nothing is written between the dispatches.
//
// Why sort rows by member: a tile of the GEMM then reads one member's weights, which it
// stages in workgroup memory once for 64 rows — the same reuse a dense GEMM gets. Without
// it every row would fetch its own member's weights (hidden² loads per row and layer).
// Slots are padded to 64 rows, so there are at most ⌈rows/64⌉ + elites tiles.
//
// rollout_group builds a slot table per 256-thread workgroup: it histograms the members
// with workgroup atomics and scatters rows, 2·⌈rows/256⌉ Philox draws per thread (80 for
// 10⁴ rows). TS1 needs one table per step: one dispatch of H workgroups builds them all
// before the steps (they were H single-workgroup dispatches, one per step, in series). The other kernels are one thread per row / position, 256-thread workgroups.
//
// Rewards and terminations are those of src/env/task.rs by task code: the native
// environments (0–2) and half-cheetah's planning reward (3). The environments' dynamics run
// in f32 here, where the CPU widens to f64 and rounds once per step: the results differ by a
// few ULPs per step (see the tolerances in tests/wgpu_parity.rs). Every native environment
// has one action dimension; their reward and dynamics read action component 0.

struct RolloutParams {
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    population: u32,
    particles: u32,
    horizon: u32,
    obs_dim: u32,
    act_dim: u32,
    propagation: u32,
    env: u32,
    learn_reward: u32,
    num_elites: u32,
    // [MAX_ELITES] u32, as vec4s: uniform arrays need a 16-byte stride.
    elites: array<vec4<u32>, 4>,
}

struct RolloutStep {
    p: RolloutParams,
    // Horizon step of this dispatch.
    t: u32,
    // population · particles.
    rows: u32,
    // Slot-ordered positions (a multiple of 64) and their 64-row tiles.
    positions: u32,
    tiles: u32,
    // Expectation: positions of elite slot s start at s · slot_stride.
    slot_stride: u32,
    in_dim: u32,
    out_dim: u32,
    head_dim: u32,
    probabilistic: u32,
    max_off: u32,
    min_off: u32,
    state_dim: u32,
    // The slot table this step reads: TS1 draws members anew each step, and all H tables
    // are built by one rollout_group dispatch of H workgroups; TS∞ and expectation use 0.
    table: u32,
    // The rewards' discount γ (1 without a terminal value: γ^t·r = r exactly);
    // rollout_value: γ^H.
    gamma: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> rs: RolloutStep;

@group(1) @binding(0) var<storage, read> ro_start: array<f32>;
@group(1) @binding(1) var<storage, read_write> ro_state: array<f32>;
@group(1) @binding(2) var<storage, read_write> ro_ret: array<f32>;
@group(1) @binding(3) var<storage, read_write> ro_flags: array<u32>;
@group(1) @binding(4) var<storage, read_write> grp_perm: array<u32>;
@group(1) @binding(5) var<storage, read_write> grp_inv: array<u32>;
@group(1) @binding(6) var<storage, read_write> grp_tiles: array<u32>;
@group(1) @binding(7) var<storage, read> gat_perm: array<u32>;
@group(1) @binding(8) var<storage, read> stp_inv: array<u32>;
@group(1) @binding(9) var<storage, read> ro_actions: array<f32>;
@group(1) @binding(10) var<storage, read> ro_norm: array<f32>;
@group(1) @binding(11) var<storage, read_write> gat_xn: array<f32>;
@group(1) @binding(12) var<storage, read> stp_head: array<f32>;
@group(1) @binding(13) var<storage, read> stp_params: array<f32>;
@group(1) @binding(14) var<storage, read_write> ro_returns: array<f32>;
@group(1) @binding(23) var<storage, read> val_q: array<f32>;

const TILE_ROWS: u32 = 64u;
const FLAG_ALIVE: u32 = 1u;
const FLAG_BAD: u32 = 2u;

const ENV_CARTPOLE: u32 = 0u;
const ENV_PENDULUM: u32 = 1u;

// ---------------------------------------------------------------------------------------
// Native environments in f32 (src/env/*.rs).
// ---------------------------------------------------------------------------------------

// Cart-pole terminates when |x| > 2.4 or |θ| > 12° in f64. Both thresholds round *up* to
// f32 (2.4000001, 0.20943952), so for an f32 value, x ≤ 2.4 (f64) ⇔ x < f32(2.4).
const CP_X_LIMIT: f32 = 2.4;
const CP_THETA_LIMIT: f32 = 0.2094395160675049;

fn mc_terminated(nx: vec4<f32>) -> bool {
    // np.float32 >= 0.45 compares in float32 (NEP 50).
    return !is_nan_f(nx.x) && !is_nan_f(nx.y) && nx.x >= 0.45 && nx.y >= 0.0;
}

fn env_terminated(env: u32, nx: vec4<f32>) -> bool {
    switch env {
        case 0u: {
            if (!is_finite_f(nx.x) || !is_finite_f(nx.z)) {
                return true;
            }
            let alive = nx.x > -CP_X_LIMIT && nx.x < CP_X_LIMIT && nx.z > -CP_THETA_LIMIT
                && nx.z < CP_THETA_LIMIT;
            return !alive;
        }
        case 1u: {
            return false;
        }
        default: {
            return mc_terminated(nx);
        }
    }
}

// Planning reward of (obs, action a, next_obs).
fn env_reward(env: u32, obs: vec4<f32>, a: f32, nx: vec4<f32>) -> f32 {
    switch env {
        case 0u: {
            return 1.0;
        }
        case 1u: {
            // angle_normalize(atan2(sin, cos))² = atan2(sin, cos)² on [-π, π].
            let th = atan2_f(obs.y, obs.x);
            let u = clamp(a, -2.0, 2.0);
            return -(th * th + 0.1 * (obs.z * obs.z) + 0.001 * (u * u));
        }
        default: {
            let base = select(0.0, 100.0, mc_terminated(nx));
            return base - a * a * 0.1;
        }
    }
}

fn env_observe(env: u32, s: vec4<f32>) -> vec4<f32> {
    if (env == ENV_PENDULUM) {
        return vec4<f32>(cos_f(s.x), sin_f(s.x), s.y, 0.0);
    }
    return s;
}

// One step of the true dynamics on the internal state.
fn env_step(env: u32, s: vec4<f32>, a: f32) -> vec4<f32> {
    switch env {
        case 0u: {
            // CartPole-v1's explicit Euler step, force = 10 N · a (unclipped).
            let force = a * 10.0;
            let ct = cos_f(s.z);
            let st = sin_f(s.z);
            let temp = (force + 0.05 * (s.w * s.w) * st) / 1.1;
            let thacc = (9.8 * st - ct * temp) / (0.5 * (4.0 / 3.0 - 0.1 * (ct * ct) / 1.1));
            let xacc = temp - 0.05 * thacc * ct / 1.1;
            return vec4<f32>(s.x + 0.02 * s.y, s.y + 0.02 * xacc, s.z + 0.02 * s.w,
                             s.w + 0.02 * thacc);
        }
        case 1u: {
            // Pendulum-v1: torque clipped to ±2, speed to ±8, dt = 0.05.
            let u = clamp(a, -2.0, 2.0);
            let accel = 15.0 * sin_f(s.x) + 3.0 * u;
            let thdot = clamp(s.y + accel * 0.05, -8.0, 8.0);
            return vec4<f32>(s.x + thdot * 0.05, thdot, 0.0, 0.0);
        }
        default: {
            // MountainCarContinuous-v0 on a float32 state: force clipped to ±1; an
            // in-range force keeps float32 (a · 0.0015f), a clipped one is a Python float.
            let gravity = 0.0025 * cos_f(3.0 * s.x);
            var dv = a * 0.0015 - gravity;
            if (a < -1.0) {
                dv = -0.0015 - gravity;
            } else if (a > 1.0) {
                dv = 0.0015 - gravity;
            }
            var vel = s.y + dv;
            if (vel > 0.07) {
                vel = 0.07;
            }
            if (vel < -0.07) {
                vel = -0.07;
            }
            var pos = s.x + vel;
            if (pos > 0.6) {
                pos = 0.6;
            }
            if (pos < -1.2) {
                pos = -1.2;
            }
            if (pos == -1.2 && vel < 0.0) {
                vel = 0.0;
            }
            return vec4<f32>(pos, vel, 0.0, 0.0);
        }
    }
}

// Task codes beyond the native environments (src/env/task.rs).
const TASK_HALF_CHEETAH: u32 = 3u;
// A task without a reward function (env::task::NONE): the model learns the reward.
const TASK_NONE: u32 = 0xFFFFu;
// MuJoCo v5 tasks (src/env/task.rs): termination functions; the inverted pendulum's reward.
const TASK_HOPPER: u32 = 4u;
const TASK_WALKER2D: u32 = 5u;
const TASK_ANT: u32 = 6u;
const TASK_INVERTED_PENDULUM: u32 = 7u;
// The shaped planning reward of the inverted pendulum (src/env/task.rs): the task's
// termination, 1 − W·(x² + (θ/0.2)²) while alive.
const TASK_INVERTED_PENDULUM_CENTRED: u32 = 8u;
const CENTRED_WEIGHT: f32 = 0.5;

// Planning reward of a transition under task `code`: the native environment's, or
// mbrl-lib's half-cheetah reward next_obs[0] − 0.1·‖a‖². `s` and `nx` hold the first four
// observation components, the action (`ad` values) is read from ro_actions at `abase`.
fn task_reward(code: u32, s: vec4<f32>, abase: u32, ad: u32, nx: vec4<f32>) -> f32 {
    if (code == TASK_HALF_CHEETAH) {
        var sq = 0.0;
        for (var i = 0u; i < ad; i++) {
            let a = ro_actions[abase + i];
            sq = sq + a * a;
        }
        return nx.x - 0.1 * sq;
    }
    if (code == TASK_INVERTED_PENDULUM) {
        return select(0.0, 1.0, abs(nx.y) <= 0.2);
    }
    if (code == TASK_INVERTED_PENDULUM_CENTRED) {
        let th = nx.y / 0.2;
        return select(0.0, 1.0 - CENTRED_WEIGHT * (nx.x * nx.x + th * th), abs(nx.y) <= 0.2);
    }
    return env_reward(code, s, ro_actions[abase], nx);
}

// `big`: some |next_obs[j]| >= 100 for j >= 1 (the hopper's state-range check). A non-finite
// component makes the row's return −∞ whatever this says.
fn task_terminated(code: u32, nx: vec4<f32>, big: bool) -> bool {
    switch code {
        case TASK_HALF_CHEETAH, TASK_NONE: {
            return false;
        }
        case TASK_HOPPER: {
            return !(!big && nx.x > 0.7 && abs(nx.y) < 0.2);
        }
        case TASK_WALKER2D: {
            return !(nx.x > 0.8 && nx.x < 2.0 && nx.y > -1.0 && nx.y < 1.0);
        }
        case TASK_ANT: {
            return !(nx.x >= 0.2 && nx.x <= 1.0);
        }
        case TASK_INVERTED_PENDULUM, TASK_INVERTED_PENDULUM_CENTRED: {
            return !(abs(nx.y) <= 0.2);
        }
        default: {
            return env_terminated(code, nx);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Trajectory sampling through the learned ensemble.
// ---------------------------------------------------------------------------------------

fn ro_seed() -> vec2<u32> {
    return vec2<u32>(rs.p.seed_lo, rs.p.seed_hi);
}

fn elite(s: u32) -> u32 {
    return rs.p.elites[s / 4u][s % 4u];
}

// Elite slot of a row in slot table g: Philox `below` of stream TS_MEMBER at (row,
// step·horizon + g) for TS1 (table g is step g's), at (row, step·horizon) for TS∞.
fn member_slot(row: u32, g: u32) -> u32 {
    var coord = rs.p.step * rs.p.horizon;
    if (rs.p.propagation == 0u) {
        coord = coord + g;
    }
    return rng_below(ro_seed(), STREAM_TS_MEMBER, row, coord, rs.p.num_elites);
}

@compute @workgroup_size(256)
fn rollout_init(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let r = flat_index(wg, nwg, li);
    if (r >= rs.rows) {
        return;
    }
    let od = rs.p.obs_dim;
    for (var j = 0u; j < od; j++) {
        ro_state[r * od + j] = ro_start[j];
    }
    ro_ret[r] = 0.0;
    ro_flags[r] = FLAG_ALIVE;
}

var<workgroup> grp_count: array<atomic<u32>, 16>;
var<workgroup> grp_base: array<u32, 17>;

// Rows → positions grouped by elite slot, each slot padded to a whole 64-row tile, for slot
// table g = the workgroup's x index: grp_perm[g·positions + position] = row (NONE for
// padding), grp_inv[g·rows + row] = position, and grp_tiles[g·tiles + tile] = the member
// whose weights the tile uses (NONE past the last tile). Under TS1 one dispatch of H
// workgroups builds every step's table at once (the draws do not depend on the states), so
// the H groupings run side by side instead of one single-workgroup dispatch per step.
@compute @workgroup_size(256)
fn rollout_group(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = rs.rows;
    let slots = rs.p.num_elites;
    let g = wg.x;
    let pb = g * rs.positions;
    let ib = g * n;
    let tb = g * rs.tiles;
    if (rs.p.propagation == 2u) {
        // Expectation: every row under every elite, slot s at [s·stride, s·stride + n).
        for (var p = li; p < rs.positions; p += 256u) {
            let s = p / rs.slot_stride;
            let r = p % rs.slot_stride;
            grp_perm[pb + p] = select(NONE, r, s < slots && r < n);
        }
        for (var t = li; t < rs.tiles; t += 256u) {
            let s = t * TILE_ROWS / rs.slot_stride;
            grp_tiles[tb + t] = select(NONE, elite(min(s, 15u)), s < slots);
        }
        return;
    }
    if (li < 16u) {
        atomicStore(&grp_count[li], 0u);
    }
    for (var p = li; p < rs.positions; p += 256u) {
        grp_perm[pb + p] = NONE;
    }
    workgroupBarrier();
    for (var r = li; r < n; r += 256u) {
        atomicAdd(&grp_count[member_slot(r, g)], 1u);
    }
    workgroupBarrier();
    if (li == 0u) {
        var acc = 0u;
        for (var s = 0u; s < slots; s++) {
            grp_base[s] = acc;
            acc += (atomicLoad(&grp_count[s]) + TILE_ROWS - 1u) / TILE_ROWS * TILE_ROWS;
        }
        grp_base[slots] = acc;
    }
    workgroupBarrier();
    for (var t = li; t < rs.tiles; t += 256u) {
        let p0 = t * TILE_ROWS;
        var m = NONE;
        for (var s = 0u; s < slots; s++) {
            if (p0 >= grp_base[s] && p0 < grp_base[s + 1u]) {
                m = elite(s);
            }
        }
        grp_tiles[tb + t] = m;
    }
    if (li < 16u) {
        atomicStore(&grp_count[li], 0u);
    }
    // The NONE fill above must land before the scatter overwrites it.
    storageBarrier();
    workgroupBarrier();
    for (var r = li; r < n; r += 256u) {
        let s = member_slot(r, g);
        let p = grp_base[s] + atomicAdd(&grp_count[s], 1u);
        grp_perm[pb + p] = r;
        grp_inv[ib + r] = p;
    }
}

// Model input of each position: ([state, action_t] − μ_in) / σ_in (zeros for padding).
@compute @workgroup_size(256)
fn rollout_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let p = flat_index(wg, nwg, li);
    if (p >= rs.positions) {
        return;
    }
    let di = rs.in_dim;
    let od = rs.p.obs_dim;
    let ad = rs.p.act_dim;
    let row = gat_perm[rs.table * rs.positions + p];
    if (row == NONE) {
        for (var j = 0u; j < di; j++) {
            gat_xn[p * di + j] = 0.0;
        }
        return;
    }
    let c = row / rs.p.particles;
    let abase = (c * rs.p.horizon + rs.t) * ad;
    for (var j = 0u; j < od; j++) {
        gat_xn[p * di + j] = (ro_state[row * od + j] - ro_norm[j]) / ro_norm[di + j];
    }
    for (var j = 0u; j < ad; j++) {
        gat_xn[p * di + od + j] = (ro_actions[abase + j] - ro_norm[od + j]) / ro_norm[di + od + j];
    }
}

// Next state, reward, termination and the running return of each row, from the head the
// GEMMs left in stp_head [positions, head_dim]. The state is updated in place; the first
// four components before and after are kept for the reward and termination functions.
@compute @workgroup_size(256)
fn rollout_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let r = flat_index(wg, nwg, li);
    if (r >= rs.rows) {
        return;
    }
    let od = rs.p.obs_dim;
    let dout = rs.out_dim;
    let h = rs.head_dim;
    let expectation = rs.p.propagation == 2u;
    let inv_elites = 1.0 / f32(rs.p.num_elites);
    var p = 0u;
    if (!expectation) {
        p = stp_inv[rs.table * rs.rows + r];
    }
    let coord = rs.p.step * rs.p.horizon + rs.t;
    var s4 = vec4<f32>(0.0);
    var n4 = vec4<f32>(0.0);
    var rew = 0.0;
    var bad = false;
    var big = false;
    for (var j = 0u; j < dout; j++) {
        var d: f32;
        if (expectation) {
            // Mean over elites of each member's mean prediction, summed in elite order.
            var acc = 0.0;
            for (var e = 0u; e < rs.p.num_elites; e++) {
                acc = acc + stp_head[(e * rs.slot_stride + r) * h + j];
            }
            d = acc * inv_elites;
        } else {
            // PETS eq. 2: a sample of the predicted Gaussian over the state change.
            d = stp_head[p * h + j];
            if (rs.probabilistic != 0u) {
                let lv = soft_logvar(stp_head[p * h + dout + j], stp_params[rs.max_off + j],
                                     stp_params[rs.min_off + j]);
                let z = rng_normal(ro_seed(), STREAM_TS_NOISE, r * dout + j, coord);
                d = d + exp_f(0.5 * lv) * z;
            }
        }
        if (j < od) {
            let sj = ro_state[r * od + j];
            let nj = sj + d;
            if (j < 4u) {
                s4[j] = sj;
                n4[j] = nj;
            }
            bad = bad || !is_finite_f(nj);
            big = big || (j >= 1u && abs(nj) >= 100.0);
            ro_state[r * od + j] = nj;
        } else {
            rew = d;
        }
    }
    let c = r / rs.p.particles;
    if (rs.p.learn_reward == 0u) {
        rew = task_reward(rs.p.env, s4, (c * rs.p.horizon + rs.t) * rs.p.act_dim, rs.p.act_dim, n4);
    }
    bad = bad || !is_finite_f(rew);
    var flags = ro_flags[r];
    if (bad) {
        flags = flags | FLAG_BAD;
    }
    if ((flags & FLAG_ALIVE) != 0u) {
        // γ^t as the CPU forms it: a running product from 1.
        var disc = 1.0;
        for (var i = 0u; i < rs.t; i++) {
            disc = disc * rs.gamma;
        }
        ro_ret[r] = ro_ret[r] + disc * rew;
        if (task_terminated(rs.p.env, n4, big)) {
            flags = flags & ~FLAG_ALIVE;
        }
    }
    ro_flags[r] = flags;
}

// Closes each live row's path with γ^H·min(Q₁, Q₂)(s_H, ā(s_H)) (val_q [2, rows], from the
// dense-layer engine on the final states); a non-finite value marks the row bad, as a
// non-finite step does. rs.gamma holds γ^H here.
@compute @workgroup_size(256)
fn rollout_value(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let r = flat_index(wg, nwg, li);
    if (r >= rs.rows) {
        return;
    }
    let f = ro_flags[r];
    if ((f & FLAG_BAD) != 0u || (f & FLAG_ALIVE) == 0u) {
        return;
    }
    // Rust's f32::min: the other operand where one is NaN.
    let a = val_q[r];
    let b = val_q[rs.rows + r];
    var v = min(a, b);
    if (is_nan_f(a)) {
        v = b;
    } else if (is_nan_f(b)) {
        v = a;
    }
    if (!is_finite_f(v)) {
        ro_flags[r] = f | FLAG_BAD;
        return;
    }
    ro_ret[r] = ro_ret[r] + rs.gamma * v;
}

// Mean over each candidate's particles; −∞ if any particle left the finite numbers.
@compute @workgroup_size(256)
fn rollout_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let c = flat_index(wg, nwg, li);
    if (c >= rs.p.population) {
        return;
    }
    let k = rs.p.particles;
    var sum = 0.0;
    var dead = false;
    for (var q = 0u; q < k; q++) {
        let r = c * k + q;
        var v = ro_ret[r];
        if ((ro_flags[r] & FLAG_BAD) != 0u) {
            v = neg_inf();
        }
        dead = dead || is_neg_inf(v);
        sum = sum + v;
    }
    ro_returns[c] = select(sum / f32(k), neg_inf(), dead);
}

// ---------------------------------------------------------------------------------------
// Planning with the true simulator: one thread per candidate runs the whole horizon.
// ---------------------------------------------------------------------------------------

@compute @workgroup_size(256)
fn rollout_true(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let c = flat_index(wg, nwg, li);
    if (c >= rs.p.population) {
        return;
    }
    let env = rs.p.env;
    let h = rs.p.horizon;
    let od = rs.p.obs_dim;
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < rs.state_dim; j++) {
        s[j] = ro_start[j];
    }
    var o = env_observe(env, s);
    var total = 0.0;
    var bad = false;
    for (var t = 0u; t < h; t++) {
        let a = ro_actions[(c * h + t) * rs.p.act_dim];
        let ns = env_step(env, s, a);
        let no = env_observe(env, ns);
        let r = env_reward(env, o, a, no);
        bad = bad || !is_finite_f(r);
        for (var j = 0u; j < od; j++) {
            bad = bad || !is_finite_f(no[j]);
        }
        total = total + r;
        if (env_terminated(env, no)) {
            break;
        }
        s = ns;
        o = no;
    }
    ro_returns[c] = select(total, neg_inf(), bad);
}

// ---------------------------------------------------------------------------------------
// MBPO's branched rollout (src/algo/mbpo.rs), one step at a time: the twin of
// branch_route / branch_step in src/backend/cpu/rollout.rs and kernels/rollout.cu. The
// policy's actions and the model's predictions come from ensemble.wgsl and sac.wgsl between
// the two kernels (src/policy/device.rs composes them). Both run as one workgroup: ranks
// within a member and the ring's append order come from a workgroup-wide exclusive scan
// over contiguous row chunks, one chunk per invocation, so the ring holds the CPU's rows in
// the CPU's order. The model input (obs, action per row) is bound as ro_actions, which the
// task reward reads.
// ---------------------------------------------------------------------------------------

// Identical to src/backend/mod.rs `BranchParams`.
struct BranchParams {
    rows: u32,
    obs_dim: u32,
    act_dim: u32,
    out_dim: u32,
    members: u32,
    per: u32,
    task: u32,
    learn_reward: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    capacity: u32,
    base: u32,
    member_stream: u32,
    noise_stream: u32,
    fresh: u32,
}

@group(0) @binding(1) var<uniform> bp: BranchParams;

@group(1) @binding(15) var<storage, read_write> br_route: array<f32>;
@group(1) @binding(16) var<storage, read_write> br_xg: array<f32>;
@group(1) @binding(17) var<storage, read> br_mean: array<f32>;
@group(1) @binding(18) var<storage, read> br_logvar: array<f32>;
@group(1) @binding(19) var<storage, read_write> br_obs: array<f32>;
@group(1) @binding(20) var<storage, read_write> br_stopped: array<f32>;
@group(1) @binding(21) var<storage, read_write> br_count: array<f32>;
@group(1) @binding(22) var<storage, read_write> br_ring: array<f32>;

// src/backend/mod.rs MAX_ELITES.
const BRANCH_MAX_MEMBERS: u32 = 16u;

// br_counts[m·256 + t]: rows of invocation t's chunk drawing member m, then their first rank.
var<workgroup> br_counts: array<u32, 4096>;
var<workgroup> br_first: array<u32, 256>;

fn br_seed() -> vec2<u32> {
    return vec2<u32>(bp.seed_lo, bp.seed_hi);
}

fn br_member(r: u32) -> u32 {
    return rng_below(br_seed(), bp.member_stream, r, bp.step, bp.members);
}

// Rows [first, end) of invocation t.
fn br_chunk(t: u32) -> vec2<u32> {
    let c = (bp.rows + 255u) / 256u;
    let r0 = min(t * c, bp.rows);
    return vec2<u32>(r0, min(r0 + c, bp.rows));
}

@compute @workgroup_size(256)
fn branch_route(@builtin(local_invocation_index) t: u32) {
    let ch = br_chunk(t);
    let din = bp.obs_dim + bp.act_dim;
    for (var m = 0u; m < BRANCH_MAX_MEMBERS; m++) {
        br_counts[m * 256u + t] = 0u;
    }
    for (var r = ch.x; r < ch.y; r++) {
        let m = br_member(r);
        br_counts[m * 256u + t] = br_counts[m * 256u + t] + 1u;
    }
    workgroupBarrier();
    if (t < bp.members) {
        var acc = 0u;
        for (var i = 0u; i < 256u; i++) {
            let v = br_counts[t * 256u + i];
            br_counts[t * 256u + i] = acc;
            acc += v;
        }
    }
    workgroupBarrier();
    for (var r = ch.x; r < ch.y; r++) {
        let m = br_member(r);
        let q = br_counts[m * 256u + t];
        br_counts[m * 256u + t] = q + 1u;
        if (q >= bp.per) {
            br_route[r] = bitcast<f32>(NONE);
            continue;
        }
        let slot = m * bp.per + q;
        br_route[r] = bitcast<f32>(slot);
        for (var j = 0u; j < din; j++) {
            br_xg[slot * din + j] = ro_actions[r * din + j];
        }
    }
}

// Output j of row r's Gaussian sample (PETS eq. 2): μ + exp(½·log σ²)·ε.
fn br_sample(slot: u32, r: u32, j: u32) -> f32 {
    let i = slot * bp.out_dim + j;
    let z = rng_normal(br_seed(), bp.noise_stream, r * bp.out_dim + j, bp.step);
    return br_mean[i] + exp_f(0.5 * br_logvar[i]) * z;
}

struct BranchRow {
    // Live, and the transition is finite: it goes into the ring.
    record: bool,
    term: bool,
    reward: f32,
}

fn br_row(r: u32) -> BranchRow {
    var b = BranchRow(false, false, 0.0);
    let slot = bitcast<u32>(br_route[r]);
    // A fresh rollout's rows all start live (br_stopped holds an earlier rollout's flags).
    if ((bp.fresh == 0u && br_stopped[r] != 0.0) || slot >= bp.members * bp.per) {
        return b;
    }
    let od = bp.obs_dim;
    let din = od + bp.act_dim;
    var s4 = vec4<f32>(0.0);
    var n4 = vec4<f32>(0.0);
    var finite = true;
    var big = false;
    for (var j = 0u; j < od; j++) {
        let s = br_obs[r * od + j];
        let n = s + br_sample(slot, r, j);
        if (j < 4u) {
            s4[j] = s;
            n4[j] = n;
        }
        finite = finite && is_finite_f(n);
        big = big || (j >= 1u && abs(n) >= 100.0);
    }
    if (bp.learn_reward != 0u) {
        b.reward = br_sample(slot, r, od);
    } else {
        b.reward = task_reward(bp.task, s4, r * din + od, bp.act_dim, n4);
    }
    b.record = finite && is_finite_f(b.reward);
    b.term = b.record && task_terminated(bp.task, n4, big);
    return b;
}

@compute @workgroup_size(256)
fn branch_step(@builtin(local_invocation_index) t: u32) {
    let ch = br_chunk(t);
    let od = bp.obs_dim;
    let ad = bp.act_dim;
    let din = od + ad;
    let w = 2u * od + ad + 2u;
    var mine = 0u;
    for (var r = ch.x; r < ch.y; r++) {
        if (br_row(r).record) {
            mine += 1u;
        }
    }
    br_first[t] = mine;
    workgroupBarrier();
    if (t == 0u) {
        var acc = select(bitcast<u32>(br_count[0]), 0u, bp.fresh != 0u);
        for (var i = 0u; i < 256u; i++) {
            let v = br_first[i];
            br_first[i] = acc;
            acc += v;
        }
    }
    workgroupBarrier();
    var n = br_first[t];
    for (var r = ch.x; r < ch.y; r++) {
        let b = br_row(r);
        let live = b.record && !b.term;
        let slot = bitcast<u32>(br_route[r]);
        var base = 0u;
        if (b.record) {
            // (base + n) mod capacity without overflowing 32 bits: base < capacity.
            let k = (bp.base + n % bp.capacity) % bp.capacity;
            base = k * w;
            for (var j = 0u; j < ad; j++) {
                br_ring[base + od + j] = ro_actions[r * din + od + j];
            }
            br_ring[base + din] = b.reward;
            br_ring[base + w - 1u] = select(0.0, 1.0, b.term);
            n += 1u;
        }
        for (var j = 0u; j < od; j++) {
            let s = br_obs[r * od + j];
            var next = 0.0;
            if (b.record) {
                next = s + br_sample(slot, r, j);
                br_ring[base + j] = s;
                br_ring[base + din + 1u + j] = next;
            }
            br_obs[r * od + j] = select(0.0, next, live);
        }
        br_stopped[r] = select(1.0, 0.0, live);
    }
    if (t == 255u) {
        br_count[0] = bitcast<f32>(n);
    }
}

// ---------------------------------------------------------------------------------------
// The path gradient's model stages (path_step, path_model_back of
// src/backend/cpu/rollout.rs; see `PathParams` in src/backend/mod.rs for the noise, tape and
// back buffers): path_step one thread per row, path_model_back one per grouped slot.
// Member tables hold u32 bits; a slot or row out of range is treated as empty. The rewards
// and their gradients are env::task::reward_vjp's (checked on the host: a task without one
// learns its reward).
// ---------------------------------------------------------------------------------------

@group(0) @binding(2) var<uniform> pp: PathParams;

@group(1) @binding(24) var<storage, read> pst_mean: array<f32>;
@group(1) @binding(25) var<storage, read> pst_logvar: array<f32>;
@group(1) @binding(26) var<storage, read> pth_noise: array<f32>;
@group(1) @binding(27) var<storage, read_write> pst_tape: array<f32>;
@group(1) @binding(28) var<storage, read_write> pst_state: array<f32>;

@group(1) @binding(29) var<storage, read> pmb_tape: array<f32>;
@group(1) @binding(30) var<storage, read_write> pmb_back: array<f32>;
@group(1) @binding(31) var<storage, read_write> pmb_xg: array<f32>;
@group(1) @binding(32) var<storage, read_write> pmb_dmean: array<f32>;
@group(1) @binding(33) var<storage, read_write> pmb_dlogvar: array<f32>;

const TASK_MOUNTAIN_CAR: u32 = 2u;

// σ·ξ of output j at slot offset i (0 for a deterministic model, whose log-variance buffer
// is never read).
fn pst_sigma_xi(i: u32, j: u32, tr: u32) -> f32 {
    if (pp.probabilistic == 0u) {
        return 0.0;
    }
    return exp_f(0.5 * pst_logvar[i + j]) * pth_noise[pp.n_xi + tr * pp.out_dim + j];
}

// reward_vjp's reward of (s, a at tape offset abase, next): `s` and `nx` hold the first four
// components.
fn path_reward(code: u32, s: vec4<f32>, abase: u32, ad: u32, nx: vec4<f32>) -> f32 {
    switch code {
        case ENV_CARTPOLE, ENV_PENDULUM, TASK_MOUNTAIN_CAR: {
            return env_reward(code, s, pst_tape[abase], nx);
        }
        case TASK_HALF_CHEETAH: {
            var sq = 0.0;
            for (var i = 0u; i < ad; i++) {
                let a = pst_tape[abase + i];
                sq = sq + a * a;
            }
            return nx.x - 0.1 * sq;
        }
        case TASK_INVERTED_PENDULUM: {
            return select(0.0, 1.0, abs(nx.y) <= 0.2);
        }
        default: {
            return bitcast<f32>(0x7fc00000u);
        }
    }
}

// Per row alive at t: s_{t+1} = s_t + μ + σ·ξ_t at its slot, its reward and flags; a dead
// row, or one whose next state or reward is not finite, gets zeros and both flags 0.
@compute @workgroup_size(256)
fn path_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let r = flat_index(wg, nwg, li);
    let b = pp.rows;
    if (r >= b) {
        return;
    }
    let o = pp.obs_dim;
    let a = pp.act_dim;
    let d = pp.out_dim;
    let tr = pp.t * b + r;
    let slot = bitcast<u32>(pth_noise[pp.n_slot + tr]);
    let has_slot = slot < pp.members * pp.per;
    let i = slot * d;
    if (has_slot && pp.probabilistic != 0u) {
        for (var j = 0u; j < d; j++) {
            pst_tape[pp.t_logvar + tr * d + j] = pst_logvar[i + j];
        }
    }
    let s_at = pp.t_states + tr * o;
    let n_at = pp.t_states + (tr + b) * o;
    var counted = has_slot && pst_tape[pp.t_alive + tr] != 0.0;
    var reward = 0.0;
    var s4 = vec4<f32>(0.0);
    var n4 = vec4<f32>(0.0);
    var big = false;
    if (counted) {
        var finite = true;
        for (var j = 0u; j < o; j++) {
            let s = pst_tape[s_at + j];
            let n = s + pst_mean[i + j] + pst_sigma_xi(i, j, tr);
            pst_tape[n_at + j] = n;
            if (j < 4u) {
                s4[j] = s;
                n4[j] = n;
            }
            finite = finite && is_finite_f(n);
            big = big || (j >= 1u && abs(n) >= 100.0);
        }
        if (pp.learn_reward != 0u) {
            reward = pst_mean[i + o] + pst_sigma_xi(i, o, tr);
        } else {
            reward = path_reward(pp.task, s4, pp.t_act + tr * a, a, n4);
        }
        // Stops here, unrewarded; zeros keep the later passes finite.
        counted = finite && is_finite_f(reward);
    }
    let alive = counted && !task_terminated(pp.task, n4, big);
    if (!counted) {
        reward = 0.0;
    }
    for (var j = 0u; j < o; j++) {
        var n = 0.0;
        if (counted) {
            n = pst_tape[n_at + j];
        }
        pst_tape[n_at + j] = n;
        pst_state[r * o + j] = n;
    }
    pst_tape[pp.t_counted + tr] = select(0.0, 1.0, counted);
    pst_tape[pp.t_reward + tr] = reward;
    pst_tape[pp.t_alive + tr + b] = select(0.0, 1.0, alive);
}

// d_mean (and d_logvar) at slot i from ∂/∂s_{t+1} (and a learned reward's weight): put
// leaves a zero upstream gradient's entries at zero (0·∞ would be NaN).
fn pmb_put(i: u32, j: u32, g: f32, tr: u32) {
    if (g == 0.0) {
        return;
    }
    let d = pp.out_dim;
    pmb_dmean[i * d + j] = g;
    if (pp.probabilistic != 0u) {
        // ∂(σ·ξ)/∂ log σ² = ½·σ·ξ.
        let lv = pmb_tape[pp.t_logvar + tr * d + j];
        pmb_dlogvar[i * d + j] = g * 0.5 * exp_f(0.5 * lv) * pth_noise[pp.n_xi + tr * d + j];
    }
}

// Per grouped slot i: [s_t, a_t] of its row again, the reward's gradients of a counted row
// (env::task::reward_vjp, weighted by w·γ^t) and ∂/∂(μ, log σ²) of the row's step.
@compute @workgroup_size(256)
fn path_model_back(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= pp.members * pp.per) {
        return;
    }
    let b = pp.rows;
    let o = pp.obs_dim;
    let a = pp.act_dim;
    let d = pp.out_dim;
    let din = o + a;
    for (var j = 0u; j < d; j++) {
        pmb_dmean[i * d + j] = 0.0;
        if (pp.probabilistic != 0u) {
            pmb_dlogvar[i * d + j] = 0.0;
        }
    }
    let r = bitcast<u32>(pth_noise[pp.n_rowof + pp.t * pp.grouped + i]);
    if (r >= b) {
        for (var j = 0u; j < din; j++) {
            pmb_xg[i * din + j] = 0.0;
        }
        return;
    }
    let tr = pp.t * b + r;
    let s_at = pp.t_states + tr * o;
    let a_at = pp.t_act + tr * a;
    for (var j = 0u; j < o; j++) {
        pmb_xg[i * din + j] = pmb_tape[s_at + j];
    }
    for (var j = 0u; j < a; j++) {
        pmb_xg[i * din + o + j] = pmb_tape[a_at + j];
    }
    let counted = pmb_tape[pp.t_counted + tr] != 0.0;
    let learned = pp.learn_reward != 0u;
    let c = pp.w * pp.disc;
    // back: g_s [B, O] (∂/∂s_{t+1}), the reward's ∂/∂s_t [B, O], its ∂/∂a_t [B, A].
    let gn = r * o;
    let gs = b * o + r * o;
    let ga = 2u * b * o + r * a;
    for (var j = 0u; j < o; j++) {
        pmb_back[gs + j] = 0.0;
        if (!counted) {
            pmb_back[gn + j] = 0.0;
        }
    }
    for (var j = 0u; j < a; j++) {
        pmb_back[ga + j] = 0.0;
    }
    if (counted && !learned) {
        switch pp.task {
            case ENV_PENDULUM: {
                let x = pmb_tape[s_at];
                let y = pmb_tape[s_at + 1u];
                let td = pmb_tape[s_at + 2u];
                let th = atan2_f(y, x);
                let rho2 = x * x + y * y;
                // ∂r/∂θ = −2θ.
                pmb_back[gs] = pmb_back[gs] + c * -2.0 * th * (-y / rho2);
                pmb_back[gs + 1u] = pmb_back[gs + 1u] + c * -2.0 * th * (x / rho2);
                pmb_back[gs + 2u] = pmb_back[gs + 2u] + c * -0.2 * td;
                let a0 = pmb_tape[a_at];
                if (a0 > -2.0 && a0 < 2.0) {
                    pmb_back[ga] = pmb_back[ga] + c * -0.002 * a0;
                }
            }
            case TASK_MOUNTAIN_CAR: {
                pmb_back[ga] = pmb_back[ga] + c * -0.2 * pmb_tape[a_at];
            }
            case TASK_HALF_CHEETAH: {
                pmb_back[gn] = pmb_back[gn] + c;
                for (var j = 0u; j < a; j++) {
                    pmb_back[ga + j] = pmb_back[ga + j] + c * -0.2 * pmb_tape[a_at + j];
                }
            }
            default: {}
        }
    }
    for (var j = 0u; j < o; j++) {
        pmb_put(i, j, pmb_back[gn + j], tr);
    }
    if (learned) {
        pmb_put(i, o, select(0.0, c, counted), tr);
    }
}
