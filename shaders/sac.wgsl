// sac.wgsl — the SAC stages between the dense-layer engine's products; twin of
// src/backend/cpu/sac.rs (which calls policy::sac's squash_row, the specification) and
// kernels/sac.cu.
//
// Shapes: a SAC minibatch is small (B = 256 rows of a few dozen values), so the row-wise
// stages run one thread per row, and the two stages that also reduce over the batch
// (the critic's TD gradient, the actor's min-Q gradient with the temperature's) run in one
// workgroup that strides the rows and sums its lanes in a fixed tree: deterministic, and a
// single dispatch each. Transcendentals are common.wgsl's (exp_f, ln_f, tanh_f), within a
// few ULP of the CPU's.

struct SacParams {
    rows: u32,
    obs_dim: u32,
    act_dim: u32,
    given: u32,
    gamma: f32,
    target_entropy: f32,
    tau: f32,
    len: u32,
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,
    step: u32,
}

@group(0) @binding(0) var<uniform> sp: SacParams;

@group(1) @binding(0) var<storage, read> sq_head: array<f32>;
@group(1) @binding(1) var<storage, read> sq_eps: array<f32>;
@group(1) @binding(2) var<storage, read> sq_obs: array<f32>;
@group(1) @binding(3) var<storage, read> sq_sb: array<f32>;
@group(1) @binding(4) var<storage, read> sq_act: array<f32>;
@group(1) @binding(5) var<storage, read_write> sq_logp: array<f32>;
@group(1) @binding(6) var<storage, read_write> sq_x: array<f32>;

@group(1) @binding(7) var<storage, read> cg_qnext: array<f32>;
@group(1) @binding(8) var<storage, read> cg_logp: array<f32>;
@group(1) @binding(9) var<storage, read> cg_reward: array<f32>;
@group(1) @binding(10) var<storage, read> cg_mask: array<f32>;
@group(1) @binding(11) var<storage, read> cg_log_alpha: array<f32>;
@group(1) @binding(12) var<storage, read> cg_q: array<f32>;
@group(1) @binding(13) var<storage, read_write> cg_dq: array<f32>;
@group(1) @binding(14) var<storage, read_write> cg_stats: array<f32>;
@group(1) @binding(15) var<storage, read_write> ag_alpha_grad: array<f32>;

@group(1) @binding(16) var<storage, read> sb_dx: array<f32>;
@group(1) @binding(17) var<storage, read_write> sb_dhead: array<f32>;

@group(1) @binding(18) var<storage, read_write> pk_target: array<f32>;
@group(1) @binding(19) var<storage, read> pk_online: array<f32>;

@group(1) @binding(20) var<storage, read_write> nz_next: array<f32>;
@group(1) @binding(21) var<storage, read_write> nz_pi: array<f32>;

@group(1) @binding(22) var<storage, read> mb_ring: array<f32>;
@group(1) @binding(23) var<storage, read_write> mb_obs: array<f32>;
@group(1) @binding(24) var<storage, read_write> mb_act: array<f32>;
@group(1) @binding(25) var<storage, read_write> mb_reward: array<f32>;
@group(1) @binding(26) var<storage, read_write> mb_next: array<f32>;
@group(1) @binding(27) var<storage, read_write> mb_mask: array<f32>;

// policy::sac::{LOG_STD_MIN, LOG_STD_MAX, TANH_EPS} and ½·ln 2π.
const LOG_STD_MIN: f32 = -20.0;
const LOG_STD_MAX: f32 = 2.0;
const TANH_EPS: f32 = 1e-6;
const HALF_LN_2PI: f32 = 0.9189385332046727;

// squash_row's shared terms of row r, action j.
struct SquashTerms {
    raw: f32,   // the head's log σ before the clamp
    ls: f32,    // log σ, clamped to [LOG_STD_MIN, LOG_STD_MAX]
    sigma: f32,
    e: f32,     // ε
    t: f32,     // tanh(μ + σ·ε)
    scale: f32,
    det: f32,   // scale·(1 − t²) + TANH_EPS
}

// The terms of one action from its head (μ, raw log σ), ε and the squash's scale.
fn squash_core(mu: f32, raw: f32, e: f32, scale: f32) -> SquashTerms {
    var q: SquashTerms;
    q.raw = raw;
    q.ls = min(max(q.raw, LOG_STD_MIN), LOG_STD_MAX);
    q.sigma = exp_f(q.ls);
    q.e = e;
    q.t = tanh_f(mu + q.sigma * q.e);
    q.scale = scale;
    q.det = q.scale * (1.0 - q.t * q.t) + TANH_EPS;
    return q;
}

fn squash_terms(r: u32, j: u32) -> SquashTerms {
    let a = sp.act_dim;
    return squash_core(sq_head[r * 2u * a + j], sq_head[r * 2u * a + a + j], sq_eps[r * a + j],
                       sq_sb[j]);
}

// One action's term of log π.
fn squash_logp(q: SquashTerms) -> f32 {
    return -0.5 * q.e * q.e - q.ls - HALF_LN_2PI - ln_f(q.det);
}

// squash_row's backward of one action: (∂/∂μ, ∂/∂raw log σ) from the action's gradient
// g_a and log π's g_logp.
fn squash_grad(q: SquashTerms, g_a: f32, g_logp: f32) -> vec2<f32> {
    let omt = 1.0 - q.t * q.t;
    let du = g_a * q.scale * omt + g_logp * 2.0 * q.t * q.scale * omt / q.det;
    var dls = 0.0;
    if (q.raw >= LOG_STD_MIN && q.raw <= LOG_STD_MAX) {
        dls = du * q.sigma * q.e - g_logp;
    }
    return vec2<f32>(du, dls);
}

// One row of squash_row (forward): the action into sq_x's two critic rows, log π returned.
fn squash_forward(r: u32) -> f32 {
    let a = sp.act_dim;
    let o = sp.obs_dim;
    let w = o + a;
    var logp = 0.0;
    for (var j = 0u; j < a; j++) {
        let q = squash_terms(r, j);
        let act = q.scale * q.t + sq_sb[a + j];
        sq_x[r * w + o + j] = act;
        sq_x[(sp.rows + r) * w + o + j] = act;
        logp = logp + squash_logp(q);
    }
    return logp;
}

// Per row: the critics' input [obs, action] twice, and log π of a sampled action.
@compute @workgroup_size(64)
fn sac_squash(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let r = wg.x * 64u + li;
    if (r >= sp.rows) {
        return;
    }
    let a = sp.act_dim;
    let o = sp.obs_dim;
    let w = o + a;
    for (var j = 0u; j < o; j++) {
        let v = sq_obs[r * o + j];
        sq_x[r * w + j] = v;
        sq_x[(sp.rows + r) * w + j] = v;
    }
    if (sp.given != 0u) {
        for (var j = 0u; j < a; j++) {
            let v = sq_act[r * a + j];
            sq_x[r * w + o + j] = v;
            sq_x[(sp.rows + r) * w + o + j] = v;
        }
    } else {
        sq_logp[r] = squash_forward(r);
    }
}

var<workgroup> red: array<f32, 512>;

// Sums of the lanes' two values over the workgroup (a fixed tree), into red[0] and red[256].
fn sum2(li: u32, v: vec2<f32>) {
    red[li] = v.x;
    red[256u + li] = v.y;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s / 2u) {
        if (li < s) {
            red[li] = red[li] + red[li + s];
            red[256u + li] = red[256u + li] + red[256u + li + s];
        }
        workgroupBarrier();
    }
}

// One workgroup: the TD target, dQ and the critic loss (policy::sac::critic_loss).
@compute @workgroup_size(256)
fn sac_critic_grad(@builtin(local_invocation_index) li: u32) {
    let b = sp.rows;
    let alpha = exp_f(cg_log_alpha[0]);
    let inv_b = 1.0 / f32(b);
    var loss = 0.0;
    var q_sum = 0.0;
    for (var i = li; i < 2u * b; i += 256u) {
        let r = i % b;
        let v = min(cg_qnext[r], cg_qnext[b + r]) - alpha * cg_logp[r];
        let y = cg_reward[r] + sp.gamma * cg_mask[r] * v;
        let diff = cg_q[i] - y;
        loss = loss + diff * diff * inv_b;
        q_sum = q_sum + cg_q[i];
        cg_dq[i] = 2.0 * diff * inv_b;
    }
    sum2(li, vec2<f32>(loss, q_sum));
    if (li == 0u) {
        cg_stats[0] = cg_stats[0] + red[0];
        cg_stats[1] = cg_stats[1] + red[256] * inv_b * 0.5;
    }
}

// One workgroup: dQ of the actor loss at the sampled actions (−1/B on the smaller critic,
// half each on a tie), the temperature's gradient and the statistics.
@compute @workgroup_size(256)
fn sac_actor_grad(@builtin(local_invocation_index) li: u32) {
    let b = sp.rows;
    let log_alpha = cg_log_alpha[0];
    let alpha = exp_f(log_alpha);
    let inv_b = 1.0 / f32(b);
    var loss = 0.0;
    var logp_sum = 0.0;
    for (var r = li; r < b; r += 256u) {
        let q1 = cg_q[r];
        let q2 = cg_q[b + r];
        loss = loss + (alpha * cg_logp[r] - min(q1, q2)) * inv_b;
        logp_sum = logp_sum + cg_logp[r];
        let c = -inv_b;
        var d1 = 0.5 * c;
        var d2 = 0.5 * c;
        if (q1 < q2) {
            d1 = c;
            d2 = 0.0;
        } else if (q2 < q1) {
            d1 = 0.0;
            d2 = c;
        }
        cg_dq[r] = d1;
        cg_dq[b + r] = d2;
    }
    sum2(li, vec2<f32>(loss, logp_sum));
    if (li == 0u) {
        let logp_mean = red[256] * inv_b;
        let h = sp.target_entropy;
        ag_alpha_grad[0] = -(logp_mean + h);
        cg_stats[2] = cg_stats[2] + red[0];
        cg_stats[3] = cg_stats[3] + (-log_alpha * (logp_mean + h));
        cg_stats[4] = cg_stats[4] - logp_mean;
        cg_stats[5] = cg_stats[5] + 1.0;
        cg_stats[6] = cg_stats[6] + alpha;
    }
}

// Per row: squash_row's backward from the critics' action-input gradients (both critics)
// and α/B on log π to the actor's raw head.
@compute @workgroup_size(64)
fn sac_squash_backward(@builtin(workgroup_id) wg: vec3<u32>,
                       @builtin(local_invocation_index) li: u32) {
    let r = wg.x * 64u + li;
    if (r >= sp.rows) {
        return;
    }
    let a = sp.act_dim;
    let o = sp.obs_dim;
    let w = o + a;
    let g_logp = exp_f(cg_log_alpha[0]) * (1.0 / f32(sp.rows));
    for (var j = 0u; j < a; j++) {
        let g_a = sb_dx[r * w + o + j] + sb_dx[(sp.rows + r) * w + o + j];
        let g = squash_grad(squash_terms(r, j), g_a, g_logp);
        sb_dhead[r * 2u * a + j] = g.x;
        sb_dhead[r * 2u * a + a + j] = g.y;
    }
}

// θ̄ ← θ̄ + τ·(θ − θ̄), elementwise.
@compute @workgroup_size(256)
fn polyak(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= sp.len) {
        return;
    }
    let t = pk_target[i];
    pk_target[i] = t + sp.tau * (pk_online[i] - t);
}

// SAC's noise of one update: element i < B·A of eps_next and B·A + i of eps_pi.
@compute @workgroup_size(256)
fn sac_noise(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    let n = sp.rows * sp.act_dim;
    if (i >= n) {
        return;
    }
    let seed = vec2<u32>(sp.seed_lo, sp.seed_hi);
    nz_next[i] = rng_normal(seed, sp.stream, i, sp.step);
    nz_pi[i] = rng_normal(seed, sp.stream, n + i, sp.step);
}

// Per row b: the replay slot below(len) of (stream, b, step), unpacked.
@compute @workgroup_size(64)
fn sac_minibatch(@builtin(workgroup_id) wg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let r = wg.x * 64u + li;
    if (r >= sp.rows) {
        return;
    }
    let o = sp.obs_dim;
    let a = sp.act_dim;
    let w = 2u * o + a + 2u;
    let s = rng_below(vec2<u32>(sp.seed_lo, sp.seed_hi), sp.stream, r, sp.step, sp.len);
    let base = s * w;
    for (var j = 0u; j < o; j++) {
        mb_obs[r * o + j] = mb_ring[base + j];
        mb_next[r * o + j] = mb_ring[base + o + a + 1u + j];
    }
    for (var j = 0u; j < a; j++) {
        mb_act[r * a + j] = mb_ring[base + o + j];
    }
    mb_reward[r] = mb_ring[base + o + a];
    mb_mask[r] = 1.0 - mb_ring[base + 2u * o + a + 1u];
}

// ---------------------------------------------------------------------------------------
// The path gradient's policy stages (path_squash, path_terminal, path_actor_back,
// path_accumulate of src/backend/cpu/sac.rs; see `PathParams` in src/backend/mod.rs for the
// noise, tape and back buffers). Row-wise stages run one thread per row (or grouped slot)
// on 256-wide workgroups laid out by flat_index; path_terminal sums in one workgroup.
// Member tables hold u32 bits; a slot or row out of range is treated as empty.
// ---------------------------------------------------------------------------------------

@group(0) @binding(1) var<uniform> pp: PathParams;

@group(1) @binding(28) var<storage, read> ps_head: array<f32>;
@group(1) @binding(29) var<storage, read> ps_obs: array<f32>;
@group(1) @binding(30) var<storage, read> pt_noise: array<f32>;
@group(1) @binding(31) var<storage, read_write> pt_tape: array<f32>;
@group(1) @binding(32) var<storage, read_write> ps_x: array<f32>;

@group(1) @binding(33) var<storage, read> pq_q: array<f32>;
@group(1) @binding(34) var<storage, read> pq_log_alpha: array<f32>;
@group(1) @binding(35) var<storage, read_write> pq_dq: array<f32>;
@group(1) @binding(36) var<storage, read_write> pq_alpha_grad: array<f32>;
@group(1) @binding(37) var<storage, read_write> pq_report: array<f32>;

@group(1) @binding(38) var<storage, read> pb_tape: array<f32>;
@group(1) @binding(39) var<storage, read> pb_dx: array<f32>;
@group(1) @binding(40) var<storage, read_write> pb_back: array<f32>;
@group(1) @binding(41) var<storage, read_write> pb_dhead: array<f32>;
@group(1) @binding(42) var<storage, read_write> pb_state: array<f32>;

@group(1) @binding(43) var<storage, read> pa_gstep: array<f32>;
@group(1) @binding(44) var<storage, read> pa_ds: array<f32>;
@group(1) @binding(45) var<storage, read_write> pa_grad: array<f32>;

// Action j of row r at step pp.t in path_squash: from the actor's head and ε_t.
fn ps_terms(r: u32, j: u32) -> SquashTerms {
    let a = pp.act_dim;
    return squash_core(ps_head[r * 2u * a + j], ps_head[r * 2u * a + a + j],
                       pt_noise[pp.n_eps + (pp.t * pp.rows + r) * a + j], pt_tape[pp.t_squash + j]);
}

fn ps_action(r: u32, j: u32) -> f32 {
    let q = ps_terms(r, j);
    return q.scale * q.t + pt_tape[pp.t_squash + pp.act_dim + j];
}

// Row r of the step's states: the start states at t = 0 (path_squash writes them to the tape
// in the same dispatch, so they are read from where they come from), the tape's after.
fn ps_state(r: u32, j: u32) -> f32 {
    let o = pp.obs_dim;
    if (pp.t == 0u) {
        return ps_obs[r * o + j];
    }
    return pt_tape[pp.t_states + (pp.t * pp.rows + r) * o + j];
}

// [s_t, a_t] of row r into row i of ps_x.
fn ps_row(r: u32, i: u32) {
    let o = pp.obs_dim;
    let w = o + pp.act_dim;
    for (var j = 0u; j < o; j++) {
        ps_x[i * w + j] = ps_state(r, j);
    }
    for (var j = 0u; j < pp.act_dim; j++) {
        ps_x[i * w + o + j] = ps_action(r, j);
    }
}

// Invocation k: row k's action, log π and head into the tape (at t = 0 also s₀ and alive₀),
// and at t < H grouped slot k of the model input (the action recomputed from the same
// head and noise, so no invocation waits on another); at t = H row k's two critic rows.
@compute @workgroup_size(256)
fn path_squash(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let k = flat_index(wg, nwg, li);
    let b = pp.rows;
    let o = pp.obs_dim;
    let a = pp.act_dim;
    let t = pp.t;
    if (k < b) {
        let tr = t * b + k;
        var logp = 0.0;
        for (var j = 0u; j < a; j++) {
            let q = ps_terms(k, j);
            pt_tape[pp.t_act + tr * a + j] = q.scale * q.t + pt_tape[pp.t_squash + a + j];
            logp = logp + squash_logp(q);
        }
        for (var j = 0u; j < 2u * a; j++) {
            pt_tape[pp.t_heads + tr * 2u * a + j] = ps_head[k * 2u * a + j];
        }
        pt_tape[pp.t_logp + tr] = logp;
        if (t == 0u) {
            for (var j = 0u; j < o; j++) {
                pt_tape[pp.t_states + k * o + j] = ps_obs[k * o + j];
            }
            pt_tape[pp.t_alive + k] = 1.0;
        }
        if (t >= pp.horizon) {
            ps_row(k, k);
            ps_row(k, b + k);
        }
    }
    if (t < pp.horizon && k < pp.members * pp.per) {
        let r = bitcast<u32>(pt_noise[pp.n_rowof + t * pp.grouped + k]);
        if (r < b) {
            ps_row(r, k);
        } else {
            let w = o + a;
            for (var j = 0u; j < w; j++) {
                ps_x[k * w + j] = 0.0;
            }
        }
    }
}

var<workgroup> pq_red: array<f32, 1280>;

// One workgroup: lane li sums the path objective's terms of rows li, li + 256, … (each row
// over t in order, γ^t formed as the CPU forms it), writes their ∂/∂Q, and the lanes' sums
// meet in a fixed tree.
@compute @workgroup_size(256)
fn path_terminal(@builtin(local_invocation_index) li: u32) {
    let b = pp.rows;
    let h = pp.horizon;
    let alpha = exp_f(pq_log_alpha[0]);
    var j_sum = 0.0;
    var r_sum = 0.0;
    var r_n = 0.0;
    var alive = 0.0;
    var logp0 = 0.0;
    for (var r = li; r < b; r += 256u) {
        var disc = 1.0;
        for (var t = 0u; t < h; t++) {
            let tr = t * b + r;
            if (pt_tape[pp.t_alive + tr] != 0.0) {
                j_sum = j_sum - disc * alpha * pt_tape[pp.t_logp + tr];
                if (pt_tape[pp.t_counted + tr] != 0.0) {
                    let rew = pt_tape[pp.t_reward + tr];
                    j_sum = j_sum + disc * rew;
                    r_sum = r_sum + rew;
                    r_n = r_n + 1.0;
                }
            }
            disc = disc * pp.gamma;
        }
        logp0 = logp0 + pt_tape[pp.t_logp + r];
        let live = pt_tape[pp.t_alive + h * b + r] != 0.0;
        if (live) {
            alive = alive + 1.0;
        }
        if (pp.terminal_value != 0u) {
            let q1 = pq_q[r];
            let q2 = pq_q[b + r];
            if (live) {
                j_sum = j_sum + disc * (min(q1, q2) - alpha * pt_tape[pp.t_logp + h * b + r]);
            }
            let c = select(0.0, pp.w * disc, live);
            var d1 = c * 0.5;
            var d2 = c * 0.5;
            if (q1 < q2) {
                d1 = c;
                d2 = 0.0;
            } else if (q2 < q1) {
                d1 = 0.0;
                d2 = c;
            }
            pq_dq[r] = d1;
            pq_dq[b + r] = d2;
        }
    }
    pq_red[li] = j_sum;
    pq_red[256u + li] = r_sum;
    pq_red[512u + li] = r_n;
    pq_red[768u + li] = alive;
    pq_red[1024u + li] = logp0;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s / 2u) {
        if (li < s) {
            for (var v = 0u; v < 5u; v++) {
                pq_red[v * 256u + li] = pq_red[v * 256u + li] + pq_red[v * 256u + li + s];
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        let inv_b = 1.0 / f32(b);
        let logp_mean = pq_red[1024] / f32(b);
        pq_report[0] = -pq_red[0] * inv_b;
        pq_report[1] = logp_mean;
        pq_report[2] = select(0.0, pq_red[256] / pq_red[512], pq_red[512] > 0.0);
        pq_report[3] = pq_red[768] * inv_b;
        pq_alpha_grad[0] = -(logp_mean + pp.target_entropy);
        pt_tape[pp.t_alpha] = alpha;
        // sac_actor_grad's statistics, with the path loss as the actor's.
        let h_bar = pp.target_entropy;
        cg_stats[2] = cg_stats[2] + pq_report[0];
        cg_stats[3] = cg_stats[3] + (-pq_log_alpha[0] * (logp_mean + h_bar));
        cg_stats[4] = cg_stats[4] - logp_mean;
        cg_stats[5] = cg_stats[5] + 1.0;
        cg_stats[6] = cg_stats[6] + alpha;
    }
}

// Per row: the gradients on s_t and a_t (from the critics at t = H, else from the model's
// input gradient at the row's slot, the identity path and the reward's terms), then
// squash_row's backward with −α·w·γ^t on log π of an alive row.
@compute @workgroup_size(256)
fn path_actor_back(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let r = flat_index(wg, nwg, li);
    let b = pp.rows;
    if (r >= b) {
        return;
    }
    let o = pp.obs_dim;
    let a = pp.act_dim;
    let w = o + a;
    let t = pp.t;
    let h = pp.horizon;
    let tr = t * b + r;
    var slot = NONE;
    if (t < h) {
        slot = bitcast<u32>(pt_noise[pp.n_slot + tr]);
    }
    let has_slot = slot < pp.members * pp.per;
    let critics = t >= h && pp.terminal_value != 0u;
    for (var j = 0u; j < o; j++) {
        var g = 0.0;
        if (critics) {
            g = pb_dx[r * w + j] + pb_dx[(b + r) * w + j];
        } else if (t < h) {
            // s_{t+1} = s_t + Δ: the identity path, the model's input gradient, and the
            // reward's own ∂r/∂s_t.
            var src = 0.0;
            if (has_slot) {
                src = pb_dx[slot * w + j];
            }
            g = (pb_back[r * o + j] + src) + pb_back[b * o + r * o + j];
        }
        pb_back[r * o + j] = g;
        pb_state[r * o + j] = pb_tape[pp.t_states + tr * o + j];
    }
    let alpha = pb_tape[pp.t_alpha];
    let live = pb_tape[pp.t_alive + tr] != 0.0;
    var g_logp = 0.0;
    let counts = live && (t < h || pp.terminal_value != 0u);
    if (counts) {
        g_logp = -alpha * pp.w * pp.disc;
    }
    let hd = pp.t_heads + tr * 2u * a;
    for (var j = 0u; j < a; j++) {
        var g_a = 0.0;
        if (critics) {
            g_a = pb_dx[r * w + o + j] + pb_dx[(b + r) * w + o + j];
        } else if (t < h) {
            var src = 0.0;
            if (has_slot) {
                src = pb_dx[slot * w + o + j];
            }
            g_a = src + pb_back[2u * b * o + r * a + j];
        }
        let q = squash_core(pb_tape[hd + j], pb_tape[hd + a + j],
                            pt_noise[pp.n_eps + tr * a + j], pb_tape[pp.t_squash + j]);
        let g = squash_grad(q, g_a, g_logp);
        var d_mu = g.x;
        // The mean penalty λ·max(0, |μ| − m)² of a counted row: −w·λ·2·excess·sign μ.
        let mu = pb_tape[hd + j];
        let excess = abs(mu) - pp.mean_limit;
        if (counts && pp.mean_penalty > 0.0 && excess > 0.0) {
            d_mu = d_mu - pp.w * (pp.mean_penalty * 2.0 * excess * sign(mu));
        }
        pb_dhead[r * 2u * a + j] = d_mu;
        pb_dhead[r * 2u * a + a + j] = g.y;
    }
}

// Element i: grad[i] ← (0 at t = H, else grad[i]) + k·g_step[i] (i < len), and
// g_s[i] += ds[i] (i < B·O); k = min(1, step_grad_norm / |g_step|) with the clip, else 1.
fn path_accumulate_at(i: u32, k: f32) {
    if (i < pp.len) {
        var g = 0.0;
        if (pp.t != pp.horizon) {
            g = pa_grad[i];
        }
        pa_grad[i] = g + k * pa_gstep[i];
    }
    if (i < pp.rows * pp.obs_dim) {
        pb_back[i] = pb_back[i] + pa_ds[i];
    }
}

// A thread per element; with step_grad_norm > 0 the host dispatches one workgroup, which
// sums |g_step|² (a fixed tree) and then strides over the elements.
@compute @workgroup_size(256)
fn path_accumulate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    if (pp.step_grad_norm > 0.0) {
        var ss = 0.0;
        for (var i = li; i < pp.len; i += 256u) {
            ss = ss + pa_gstep[i] * pa_gstep[i];
        }
        sum2(li, vec2<f32>(ss, 0.0));
        let norm = sqrt(red[0]);
        var k = 1.0;
        if (norm > pp.step_grad_norm) {
            k = pp.step_grad_norm / norm;
        }
        for (var i = li; i < max(pp.len, pp.rows * pp.obs_dim); i += 256u) {
            path_accumulate_at(i, k);
        }
        return;
    }
    path_accumulate_at(flat_index(wg, nwg, li), 1.0);
}
