// rng.wgsl — exposes common.wgsl's Philox4x32-10 and sample mappings, so that tests can
// check them against src/rng.rs bit for bit (WgpuBackend::philox_blocks / rng_samples).
// One thread per element, 256-thread workgroups; nothing here is on a hot path.

struct RngParams {
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,
    step: u32,
    count: u32,
    below_n: u32,
    word3: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> rngp: RngParams;

@group(1) @binding(0) var<storage, read_write> rng_out_bits: array<u32>;
@group(1) @binding(1) var<storage, read_write> rng_out_vals: array<f32>;

// The block at counter (i, step, stream, word3) for i < count: [count, 4] words.
@compute @workgroup_size(256)
fn rng_philox(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= rngp.count) {
        return;
    }
    let w = philox4x32_10(vec4<u32>(i, rngp.step, rngp.stream, rngp.word3),
                          vec2<u32>(rngp.seed_lo, rngp.seed_hi));
    rng_out_bits[4u * i] = w.x;
    rng_out_bits[4u * i + 1u] = w.y;
    rng_out_bits[4u * i + 2u] = w.z;
    rng_out_bits[4u * i + 3u] = w.w;
}

// Element i's uniform, normal and truncated normal ([count, 3] values) and below(n)
// ([count] words).
@compute @workgroup_size(256)
fn rng_sample(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= rngp.count) {
        return;
    }
    let seed = vec2<u32>(rngp.seed_lo, rngp.seed_hi);
    rng_out_vals[3u * i] = rng_uniform(seed, rngp.stream, i, rngp.step);
    rng_out_vals[3u * i + 1u] = rng_normal(seed, rngp.stream, i, rngp.step);
    rng_out_vals[3u * i + 2u] = rng_truncated_normal(seed, rngp.stream, i, rngp.step);
    rng_out_bits[i] = rng_below(seed, rngp.stream, i, rngp.step, rngp.below_n);
}
