// cem.wgsl — CEM / random-shooting sampling and the CEM update with elite selection on the
// device. Twin of src/backend/cpu/cem.rs (mbrl-lib's CEMOptimizer, PETS appendix).
//
// cem_init: one thread per plan element: the warm-start shift (read from the previous plan's
// buffer, written to another, so no thread reads what another writes) and the initial
// variance (ub − lb)²/16; it lets a planning step upload nothing but its observation.
// cem_sample: one thread per population element, 256-thread workgroups: a pure function of
// (seed, CEM_SAMPLE, c·len + j, step), so no thread waits on another.
// cem_rank: top-k without sorting. The rank of candidate i is the number of candidates
// ordered before it (higher return, or equal return and lower index, NaN as −∞ — a total
// order, so ranks are a permutation and rank < k picks exactly the CPU's elites, best
// first). O(P²) comparisons, but P is a few hundred to a few thousand: each 256-thread
// workgroup streams the keys through workgroup memory in 256-key tiles, so a comparison is
// a shared-memory read, and the whole pass costs microseconds on a GPU.
// cem_update: one thread per sequence element, summing the elites in rank order — the
// CPU's order, so mean and variance are the same sums.
// iCEM: cem_sample's dist 2 is coloured noise, each element the inverse DFT of its
// sequence's random Fourier coefficients, recomputed per element so threads stay
// independent; cem_gather copies the ranked elites (and returns) out after cem_rank;
// cem_keep copies kept elites into the next population, shifted at a new control step.

struct SampleParams {
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    population: u32,
    len: u32,
    act_dim: u32,
    dist: u32,
    beta: f32,
}

struct EliteParams {
    population: u32,
    len: u32,
    act_dim: u32,
    num_elites: u32,
    dst_row: u32,
    shift: u32,
    _pad0: u32,
    _pad1: u32,
}

struct UpdateParams {
    population: u32,
    len: u32,
    num_elites: u32,
    _pad: u32,
    alpha: f32,
    min_var: f32,
    _pad2a: u32,
    _pad2b: u32,
}

struct InitParams {
    len: u32,
    act_dim: u32,
    shift: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> sp: SampleParams;
@group(0) @binding(1) var<uniform> up: UpdateParams;
@group(0) @binding(2) var<uniform> ip: InitParams;
@group(0) @binding(3) var<uniform> ep: EliteParams;

@group(1) @binding(0) var<storage, read> cem_mean: array<f32>;
@group(1) @binding(1) var<storage, read> cem_var: array<f32>;
@group(1) @binding(2) var<storage, read> cem_lower: array<f32>;
@group(1) @binding(3) var<storage, read> cem_upper: array<f32>;
@group(1) @binding(4) var<storage, read_write> cem_out: array<f32>;

@group(1) @binding(5) var<storage, read> upd_returns: array<f32>;
@group(1) @binding(6) var<storage, read_write> upd_elites: array<u32>;
@group(1) @binding(7) var<storage, read> upd_population: array<f32>;
@group(1) @binding(8) var<storage, read> upd_elites_r: array<u32>;
@group(1) @binding(9) var<storage, read_write> upd_mean: array<f32>;
@group(1) @binding(10) var<storage, read_write> upd_var: array<f32>;

@group(1) @binding(11) var<storage, read> init_prev: array<f32>;
@group(1) @binding(12) var<storage, read_write> init_mean: array<f32>;
@group(1) @binding(13) var<storage, read_write> init_var: array<f32>;

@group(1) @binding(14) var<storage, read> gat_population: array<f32>;
@group(1) @binding(15) var<storage, read> gat_returns: array<f32>;
@group(1) @binding(16) var<storage, read> gat_idx: array<u32>;
@group(1) @binding(17) var<storage, read_write> gat_elites: array<f32>;
@group(1) @binding(18) var<storage, read_write> gat_elite_returns: array<f32>;

@group(1) @binding(19) var<storage, read> keep_elites: array<f32>;
@group(1) @binding(20) var<storage, read> keep_mean: array<f32>;
@group(1) @binding(21) var<storage, read_write> keep_population: array<f32>;

// f^(−β/2), the DC term at the lowest frequency's (backend::cpu::cem::noise_amplitude).
fn noise_amplitude(beta: f32, f: u32) -> f32 {
    return exp_f(-0.5 * beta * ln_f(f32(max(f, 1u))));
}

// Element t of coloured-noise sequence s of length h (backend::cpu::cem::colored_noise: the
// same sums in the same order).
fn colored_noise(seed: vec2<u32>, step: u32, beta: f32, s: u32, h: u32, t: u32) -> f32 {
    let base = s * (h + 2u);
    let half = (h + 1u) / 2u - 1u;
    let nyquist = (h % 2u == 0u) && h >= 2u;
    let a0 = noise_amplitude(beta, 0u);
    var norm = a0 * a0;
    for (var f = 1u; f <= half; f++) {
        let af = noise_amplitude(beta, f);
        norm = norm + 2.0 * af * af;
    }
    let an = noise_amplitude(beta, h / 2u);
    if (nyquist) {
        norm = norm + an * an;
    }
    let inv = 1.0 / sqrt(norm);
    var x = a0 * rng_normal(seed, STREAM_ICEM_NOISE, base, step);
    for (var f = 1u; f <= half; f++) {
        let af = 1.41421356 * noise_amplitude(beta, f);
        let ca = af * rng_normal(seed, STREAM_ICEM_NOISE, base + 2u * f, step);
        let cb = af * rng_normal(seed, STREAM_ICEM_NOISE, base + 2u * f + 1u, step);
        let u = f32((f * t) % h) / f32(h);
        x = x + (ca * cos_2pi_f(u) - cb * cos_2pi_f(u - 0.25));
    }
    if (nyquist) {
        let cn = an * rng_normal(seed, STREAM_ICEM_NOISE, base + h, step);
        x = x + select(-cn, cn, t % 2u == 0u);
    }
    return x * inv;
}

@compute @workgroup_size(256)
fn cem_init(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let j = flat_index(wg, nwg, li);
    if (j >= ip.len) {
        return;
    }
    let a = j % ip.act_dim;
    let lb = cem_lower[a];
    let ub = cem_upper[a];
    if (ip.shift == 1u && j + ip.act_dim < ip.len) {
        init_mean[j] = init_prev[j + ip.act_dim];
    } else {
        init_mean[j] = 0.5 * (lb + ub);
    }
    init_var[j] = (ub - lb) * (ub - lb) / 16.0;
}

@compute @workgroup_size(256)
fn cem_sample(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li);
    if (idx >= sp.population * sp.len) {
        return;
    }
    let j = idx % sp.len;
    let a = j % sp.act_dim;
    let lb = cem_lower[a];
    let ub = cem_upper[a];
    let seed = vec2<u32>(sp.seed_lo, sp.seed_hi);
    if (sp.dist == 1u) {
        cem_out[idx] = lb + rng_uniform(seed, STREAM_CEM_SAMPLE, idx, sp.step) * (ub - lb);
        return;
    }
    if (sp.dist == 2u) {
        let c = idx / sp.len;
        let x = colored_noise(seed, sp.step, sp.beta, c * sp.act_dim + a, sp.len / sp.act_dim,
                              j / sp.act_dim);
        cem_out[idx] = clamp(cem_mean[j] + sqrt(max(cem_var[j], 0.0)) * x, lb, ub);
        return;
    }
    let m = cem_mean[j];
    // The largest variance whose ±2σ interval still fits inside the bounds.
    let dl = (m - lb) * 0.5;
    let du = (ub - m) * 0.5;
    let cv = min(min(cem_var[j], dl * dl), du * du);
    let z = rng_truncated_normal(seed, STREAM_CEM_SAMPLE, idx, sp.step);
    cem_out[idx] = clamp(m + z * sqrt(cv), lb, ub);
}

// A u32 whose unsigned order is f32's total order (as f32::total_cmp), NaN mapped to −∞.
fn order_key(r: f32) -> u32 {
    var bits = bitcast<u32>(r);
    if (is_nan_f(r)) {
        bits = NEG_INF_BITS;
    }
    if ((bits & 0x80000000u) != 0u) {
        return ~bits;
    }
    return bits | 0x80000000u;
}

var<workgroup> rank_keys: array<u32, 256>;

@compute @workgroup_size(256)
fn cem_rank(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg.x * 256u + li;
    let n = up.population;
    var key = 0u;
    if (i < n) {
        key = order_key(upd_returns[i]);
    }
    var rank = 0u;
    for (var base = 0u; base < n; base += 256u) {
        let j = base + li;
        if (j < n) {
            rank_keys[li] = order_key(upd_returns[j]);
        }
        workgroupBarrier();
        let count = min(256u, n - base);
        for (var q = 0u; q < count; q++) {
            let kq = rank_keys[q];
            let jq = base + q;
            if (kq > key || (kq == key && jq < i)) {
                rank += 1u;
            }
        }
        workgroupBarrier();
    }
    if (i < n && rank < up.num_elites) {
        upd_elites[rank] = i;
    }
}

@compute @workgroup_size(256)
fn cem_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let j = flat_index(wg, nwg, li);
    if (j >= up.len) {
        return;
    }
    let k = up.num_elites;
    let kf = f32(max(k, 1u));
    var s = 0.0;
    for (var q = 0u; q < k; q++) {
        s = s + upd_population[upd_elites_r[q] * up.len + j];
    }
    let m = s / kf;
    var s2 = 0.0;
    for (var q = 0u; q < k; q++) {
        let d = upd_population[upd_elites_r[q] * up.len + j] - m;
        s2 = s2 + d * d;
    }
    let v = s2 / kf;
    upd_mean[j] = up.alpha * upd_mean[j] + (1.0 - up.alpha) * m;
    upd_var[j] = max(up.alpha * upd_var[j] + (1.0 - up.alpha) * v, up.min_var);
}

@compute @workgroup_size(256)
fn cem_gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= ep.num_elites * ep.len) {
        return;
    }
    let r = i / ep.len;
    let j = i % ep.len;
    let c = gat_idx[r];
    gat_elites[i] = gat_population[c * ep.len + j];
    if (j == 0u) {
        gat_elite_returns[r] = gat_returns[c];
    }
}

@compute @workgroup_size(256)
fn cem_keep(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= ep.num_elites * ep.len) {
        return;
    }
    let r = i / ep.len;
    let j = i % ep.len;
    var v = keep_elites[i];
    if (ep.shift == 1u) {
        if (j + ep.act_dim < ep.len) {
            v = keep_elites[i + ep.act_dim];
        } else {
            v = keep_mean[j];
        }
    }
    keep_population[(ep.dst_row + r) * ep.len + j] = v;
}
