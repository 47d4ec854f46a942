// optim.wgsl — Adam (Kingma & Ba 2015, Algorithm 1) over the flat parameter vector. Twin of
// src/backend/cpu/optim.rs: torch.optim.Adam's form, bias corrections folded into the step
// size, coupled L2 living in the loss.
//
// Elementwise and bandwidth-bound (4 reads, 3 writes per parameter), so the shape is the
// plain one that saturates memory on any GPU: one thread per parameter, 256-thread
// workgroups (8 NVIDIA warps / 4 AMD wave64s), a 2-D grid past 65535 workgroups. The bias
// corrections 1 − βᵗ are recomputed per thread with the same square-and-multiply loop as
// Rust's `powi` (compiler-builtins' __powisf2), so they are bit-identical to the CPU's.

struct AdamParams {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> ap: AdamParams;

@group(1) @binding(0) var<storage, read_write> adam_w: array<f32>;
@group(1) @binding(1) var<storage, read> adam_g: array<f32>;
@group(1) @binding(2) var<storage, read_write> adam_m: array<f32>;
@group(1) @binding(3) var<storage, read_write> adam_v: array<f32>;

// a^b for b ≥ 1 by binary exponentiation, in the order of compiler-builtins' __powisf2.
fn powi_f(base: f32, exponent: u32) -> f32 {
    var a = base;
    var b = exponent;
    var r = 1.0;
    loop {
        if ((b & 1u) != 0u) {
            r = r * a;
        }
        b = b / 2u;
        if (b == 0u) {
            break;
        }
        a = a * a;
    }
    return r;
}

fn adam_flush(x: f32) -> f32 {
    return select(x, 0.0, abs(x) < 1.17549435e-38);
}

@compute @workgroup_size(256)
fn adam_step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let i = flat_index(wg, nwg, li);
    if (i >= ap.len) {
        return;
    }
    let t = max(ap.step, 1u);
    let bc1 = 1.0 - powi_f(ap.beta1, t);
    let bc2 = 1.0 - powi_f(ap.beta2, t);
    let step = ap.lr / bc1;
    let bc2_sqrt = sqrt(bc2);
    let g = adam_g[i];
    // Moments below the smallest normal float become zero (src/backend/cpu/optim.rs `flush`).
    let m = adam_flush(ap.beta1 * adam_m[i] + (1.0 - ap.beta1) * g);
    let v = adam_flush(ap.beta2 * adam_v[i] + (1.0 - ap.beta2) * g * g);
    adam_m[i] = m;
    adam_v[i] = v;
    adam_w[i] = adam_w[i] - step * m / (sqrt(v) / bc2_sqrt + ap.eps);
}
