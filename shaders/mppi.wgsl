// mppi.wgsl — MPPI sampling and update; twin of src/backend/cpu/mppi.rs (Williams et al. 2017
// as pytorch_mppi and MPPI-Generic implement it) and kernels/mppi.cu.
//
// mppi_sample: one thread per population element; the correlated noise of element (c, t, a)
// is Σ_{b ≤ a} L[a, b]·z(c·len + t·A + b), each z a pure function of its Philox coordinates.
// mppi_cost: one thread per candidate: S_c = −R_c + λ Σ_t U_tᵀ Σ⁻¹ (V_{c,t} − U_t), +∞ where
// not finite.
// mppi_update: one thread per plan element: the least cost (every thread reads all costs),
// then Σ_c w_c V_{c,j} and Σ_c w_c in candidate order (the CPU adds the numerator in
// 128-candidate partial sums: a rounding difference of a few ULP).

struct MppiParams {
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    population: u32,
    len: u32,
    act_dim: u32,
    lambda: f32,
    alpha: f32,
}

@group(0) @binding(0) var<uniform> mp: MppiParams;

@group(1) @binding(0) var<storage, read> smp_mean: array<f32>;
@group(1) @binding(1) var<storage, read> smp_chol: array<f32>;
@group(1) @binding(2) var<storage, read> smp_lower: array<f32>;
@group(1) @binding(3) var<storage, read> smp_upper: array<f32>;
@group(1) @binding(4) var<storage, read_write> smp_out: array<f32>;

@group(1) @binding(5) var<storage, read> cost_population: array<f32>;
@group(1) @binding(6) var<storage, read> cost_returns: array<f32>;
@group(1) @binding(7) var<storage, read> cost_precision: array<f32>;
@group(1) @binding(8) var<storage, read> cost_mean: array<f32>;
@group(1) @binding(9) var<storage, read_write> cost_out: array<f32>;

@group(1) @binding(10) var<storage, read> upd_population: array<f32>;
@group(1) @binding(11) var<storage, read> upd_costs: array<f32>;
@group(1) @binding(12) var<storage, read_write> upd_mean: array<f32>;

const POS_INF_BITS: u32 = 0x7f800000u;

@compute @workgroup_size(256)
fn mppi_sample(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= mp.population * mp.len) {
        return;
    }
    let A = mp.act_dim;
    let c = i / mp.len;
    let j = i % mp.len;
    let t = j / A;
    let d = j % A;
    let seed = vec2<u32>(mp.seed_lo, mp.seed_hi);
    var eps = 0.0;
    for (var b = 0u; b <= d; b++) {
        let z = rng_normal(seed, STREAM_MPPI_SAMPLE, c * mp.len + t * A + b, mp.step);
        eps = eps + smp_chol[d * A + b] * z;
    }
    smp_out[i] = clamp(smp_mean[j] + eps, smp_lower[d], smp_upper[d]);
}

@compute @workgroup_size(256)
fn mppi_cost(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let c = flat_index(wg, nwg, li);
    if (c >= mp.population) {
        return;
    }
    let A = mp.act_dim;
    let base = c * mp.len;
    var quad = 0.0;
    for (var t = 0u; t < mp.len / A; t++) {
        for (var d = 0u; d < A; d++) {
            var pe = 0.0;
            for (var b = 0u; b < A; b++) {
                pe = pe + cost_precision[d * A + b]
                    * (cost_population[base + t * A + b] - cost_mean[t * A + b]);
            }
            quad = quad + cost_mean[t * A + d] * pe;
        }
    }
    let s = -cost_returns[c] + mp.lambda * quad;
    cost_out[c] = select(bitcast<f32>(POS_INF_BITS), s, is_finite_f(s));
}

@compute @workgroup_size(256)
fn mppi_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let j = flat_index(wg, nwg, li);
    if (j >= mp.len) {
        return;
    }
    var lo = bitcast<f32>(POS_INF_BITS);
    for (var c = 0u; c < mp.population; c++) {
        lo = min(lo, upd_costs[c]);
    }
    if (!is_finite_f(lo)) {
        return;
    }
    var num = 0.0;
    var den = 0.0;
    for (var c = 0u; c < mp.population; c++) {
        let s = upd_costs[c];
        var w = 0.0;
        if (is_finite_f(s)) {
            w = exp(-(s - lo) / mp.lambda);
        }
        num = num + w * upd_population[c * mp.len + j];
        den = den + w;
    }
    upd_mean[j] = mp.alpha * upd_mean[j] + (1.0 - mp.alpha) * (num / den);
}
