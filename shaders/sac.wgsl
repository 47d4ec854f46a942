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

fn squash_terms(r: u32, j: u32) -> SquashTerms {
    let a = sp.act_dim;
    var q: SquashTerms;
    q.raw = sq_head[r * 2u * a + a + j];
    q.ls = min(max(q.raw, LOG_STD_MIN), LOG_STD_MAX);
    q.sigma = exp_f(q.ls);
    q.e = sq_eps[r * a + j];
    q.t = tanh_f(sq_head[r * 2u * a + j] + q.sigma * q.e);
    q.scale = sq_sb[j];
    q.det = q.scale * (1.0 - q.t * q.t) + TANH_EPS;
    return q;
}

// One row of squash_row (forward): the action into sq_x's two critic rows, log π returned.
fn squash_forward(r: u32) -> f32 {
    let a = sp.act_dim;
    let o = sp.obs_dim;
    let w = o + a;
    var logp = 0.0;
    for (var j = 0u; j < a; j++) {
        let q = squash_terms(r, j);
        let e = q.e;
        let ls = q.ls;
        let det = q.det;
        let act = q.scale * q.t + sq_sb[a + j];
        sq_x[r * w + o + j] = act;
        sq_x[(sp.rows + r) * w + o + j] = act;
        logp = logp + (-0.5 * e * e - ls - HALF_LN_2PI - ln_f(det));
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
        let q = squash_terms(r, j);
        let omt = 1.0 - q.t * q.t;
        let du = g_a * q.scale * omt + g_logp * 2.0 * q.t * q.scale * omt / q.det;
        sb_dhead[r * 2u * a + j] = du;
        var dls = 0.0;
        if (q.raw >= LOG_STD_MIN && q.raw <= LOG_STD_MAX) {
            dls = du * q.sigma * q.e - g_logp;
        }
        sb_dhead[r * 2u * a + a + j] = dls;
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
