// common.wgsl — prepended to every module (see src/backend/wgpu/kernels.rs): Philox4x32-10 and
// its sample mappings, bit-exact twins of src/rng.rs, and a small f32 math library.
//
// Why a math library: WGSL only bounds its built-ins loosely (exp: 3 + 2|x| ULP, log: 2^-21
// absolute near 1, cos/sin: 2^-11 absolute, atan2: 4096 ULP), and each vendor compiles them
// differently. The functions below use only +, −, ×, ÷, round and bit casts, so they give
// the same few-ULP results on every adapter, and parity tolerances against the CPU can be
// stated once: exp_f, ln_f and cos_2pi_f are src/fastmath.rs's `exp_f32`, `ln_f32` and
// `cos_2pi_f32`, the very polynomials the CPU backend and rng.rs use (≤ 3e-7 relative), and
// sin_f/cos_f/atan_f are Cephes' single-precision polynomials (≈ 1 ULP) for the
// environments, where the CPU computes in f64.
//
// Non-finite values: WGSL lets an implementation assume no NaN or infinity, so tests for
// them (and the −∞ that marks a diverged rollout) are done on the bits, never with x != x.

// ---------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., SC'11). key = (seed_lo, seed_hi), counter =
// (element, step, stream, word3): the mapping documented in src/rng.rs.
// ---------------------------------------------------------------------------------------

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// Streams, as `rng::stream`.
const STREAM_CEM_SAMPLE: u32 = 5u;
const STREAM_TS_MEMBER: u32 = 6u;
const STREAM_TS_NOISE: u32 = 7u;
const STREAM_MPPI_SAMPLE: u32 = 23u;
const STREAM_ICEM_NOISE: u32 = 24u;

// Rejection attempts of truncated_normal, as `rng::TRUNC_ATTEMPTS`.
const TRUNC_ATTEMPTS: u32 = 16u;

// High 32 bits of the 64-bit product a·b. WGSL has no u64: split both factors into 16-bit
// halves; the middle sum (p00 >> 16) + (p10 & 0xffff) + p01 is at most 2^32 − 1, so nothing
// overflows. (The low word is the wrapping product a * b.)
fn mulhi(a: u32, b: u32) -> u32 {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p10 & 0xffffu) + p01;
    return p11 + (p10 >> 16u) + (mid >> 16u);
}

fn philox4x32_10(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = ctr;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) {
            k = k + vec2<u32>(PHILOX_W0, PHILOX_W1);
        }
        let hi0 = mulhi(PHILOX_M0, c.x);
        let lo0 = PHILOX_M0 * c.x;
        let hi1 = mulhi(PHILOX_M1, c.z);
        let lo1 = PHILOX_M1 * c.z;
        c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

fn philox_block(seed: vec2<u32>, stream: u32, element: u32, step: u32) -> vec4<u32> {
    return philox4x32_10(vec4<u32>(element, step, stream, 0u), seed);
}

// ((x >> 9) + 0.5) · 2^-23: exact in f32, strictly inside (0, 1).
fn u32_to_unit(x: u32) -> f32 {
    return (f32(x >> 9u) + 0.5) * (1.0 / 8388608.0);
}

fn rng_uniform(seed: vec2<u32>, stream: u32, element: u32, step: u32) -> f32 {
    return u32_to_unit(philox_block(seed, stream, element, step).x);
}

// ⌊word0 · n / 2^32⌋, the 64-bit multiply of rng::below.
fn rng_below(seed: vec2<u32>, stream: u32, element: u32, step: u32, n: u32) -> u32 {
    return mulhi(philox_block(seed, stream, element, step).x, n);
}

// √(−2 ln u1)·cos(2π u2) with rng.rs's own polynomials (fastmath::ln_f32, cos_2pi_f32).
fn box_muller(a: u32, b: u32) -> f32 {
    let u1 = u32_to_unit(a);
    let u2 = u32_to_unit(b);
    return sqrt(-2.0 * ln_f(u1)) * cos_2pi_f(u2);
}

// Element i uses block i / 2, words (x, y) for even i and (z, w) for odd i.
fn rng_normal(seed: vec2<u32>, stream: u32, element: u32, step: u32) -> f32 {
    let w = philox_block(seed, stream, element >> 1u, step);
    if ((element & 1u) == 0u) {
        return box_muller(w.x, w.y);
    }
    return box_muller(w.z, w.w);
}

// Standard normal truncated to [-2, 2]: attempt j reads the block with word3 = j.
fn rng_truncated_normal(seed: vec2<u32>, stream: u32, element: u32, step: u32) -> f32 {
    var z = 0.0;
    for (var attempt = 0u; attempt < TRUNC_ATTEMPTS; attempt++) {
        let w = philox4x32_10(vec4<u32>(element, step, stream, attempt), seed);
        z = box_muller(w.x, w.y);
        if (z >= -2.0 && z <= 2.0) {
            return z;
        }
    }
    return clamp(z, -2.0, 2.0);
}

// ---------------------------------------------------------------------------------------
// Bit-level classification.
// ---------------------------------------------------------------------------------------

const NEG_INF_BITS: u32 = 0xff800000u;
const NONE: u32 = 0xffffffffu;

fn is_finite_f(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn is_nan_f(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn neg_inf() -> f32 {
    return bitcast<f32>(NEG_INF_BITS);
}

fn is_neg_inf(x: f32) -> bool {
    return bitcast<u32>(x) == NEG_INF_BITS;
}

// ---------------------------------------------------------------------------------------
// f32 math (see the header for why these are not the built-ins).
// ---------------------------------------------------------------------------------------

// fastmath::exp_f32: x = n·ln2 + r, |r| ≤ ln2/2, degree-6 Taylor polynomial, 2^n in
// the exponent bits; input clamped to [-87.3, 88] so 2^n stays a normal float.
fn exp_f(x_in: f32) -> f32 {
    if (is_nan_f(x_in)) {
        return x_in;
    }
    let x = clamp(x_in, -87.3, 88.0);
    let n = round(x * 1.4426950408889634);
    let r = (x - n * 0.69314575) - n * 1.4286068e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0
        + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    return p * bitcast<f32>(u32(i32(n) + 127) << 23u);
}

// fastmath::ln_f32 for positive normal x: x = 2^e·m, m in [√½, √2),
// ln m = 2·atanh(s), s = (m − 1)/(m + 1), odd series to s^9.
fn ln_f(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    var e = i32((bits >> 23u) & 0xffu) - 127;
    var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);
    if (m > 1.4142135623730951) {
        m = m * 0.5;
        e = e + 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = s * (2.0 + s2 * (2.0 / 3.0 + s2 * (2.0 / 5.0 + s2 * (2.0 / 7.0 + s2 * (2.0 / 9.0)))));
    return f32(e) * 0.6931471805599453 + p;
}

// ln(1 + x), x ≥ 0, with Goldberg's correction (fastmath::ln_1p_f32).
fn ln1p_f(x: f32) -> f32 {
    let u = 1.0 + x;
    let d = u - 1.0;
    if (d == 0.0) {
        return x;
    }
    return ln_f(u) * (x / d);
}

fn sigmoid_f(x: f32) -> f32 {
    return 1.0 / (1.0 + exp_f(-x));
}

// ln(1 + e^x) = max(x, 0) + ln(1 + e^−|x|), never overflowing.
fn softplus_f(x: f32) -> f32 {
    return max(x, 0.0) + ln1p_f(exp_f(-abs(x)));
}

fn tanh_f(x: f32) -> f32 {
    let e = exp_f(-2.0 * abs(x));
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, x < 0.0);
}

// cos(2πu), as fastmath::cos_2pi_f32: x = u − round(u) ∈ [−½, ½], folded by
// cos(2π(½ − a)) = −cos(2πa) to a = |x| ∈ [0, ¼], then the Taylor series to y¹², y = 2πa.
fn cos_2pi_f(u: f32) -> f32 {
    let x = u - round(u);
    var a = abs(x);
    let flip = a > 0.25;
    if (flip) {
        a = 0.5 - a;
    }
    let y = 6.2831855 * a;
    let y2 = y * y;
    let c = 1.0 + y2 * (-1.0 / 2.0 + y2 * (1.0 / 24.0 + y2 * (-1.0 / 720.0 + y2 * (1.0 / 40320.0
        + y2 * (-1.0 / 3628800.0 + y2 * (1.0 / 479001600.0))))));
    return select(c, -c, flip);
}

// Cody–Waite reduction by π/2 with a three-part constant (Cephes' DP1..DP3 doubled): the
// first part has 8 significant bits, so j·PIO2_1 is exact for |j| < 2^16 (|x| < 1e5).
// Returns (quadrant j mod 4, reduced argument r in [-π/4, π/4]).
fn reduce_half_pi(x: f32) -> vec2<f32> {
    let j = round(x * 0.63661977);
    let r = ((x - j * 1.5703125) - j * 4.837512969970703e-4) - j * 7.549789954891882e-8;
    return vec2<f32>(j, r);
}

fn sin_poly(r: f32) -> f32 {
    let z = r * r;
    return ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
}

fn cos_poly(r: f32) -> f32 {
    let z = r * r;
    return ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
        - 0.5 * z + 1.0;
}

fn sin_f(x: f32) -> f32 {
    let jr = reduce_half_pi(x);
    let q = u32(i32(jr.x) & 3);
    let s = sin_poly(jr.y);
    let c = cos_poly(jr.y);
    switch q {
        case 0u: { return s; }
        case 1u: { return c; }
        case 2u: { return -s; }
        default: { return -c; }
    }
}

fn cos_f(x: f32) -> f32 {
    let jr = reduce_half_pi(x);
    let q = u32(i32(jr.x) & 3);
    let s = sin_poly(jr.y);
    let c = cos_poly(jr.y);
    switch q {
        case 0u: { return c; }
        case 1u: { return -s; }
        case 2u: { return -c; }
        default: { return s; }
    }
}

// Cephes atanf: reduction to |x| ≤ tan(π/8) and a degree-9 odd polynomial.
fn atan_f(x_in: f32) -> f32 {
    var x = abs(x_in);
    var y0 = 0.0;
    if (x > 2.414213562373095) {
        y0 = 1.5707963267948966;
        x = -1.0 / x;
    } else if (x > 0.4142135623730950) {
        y0 = 0.7853981633974483;
        x = (x - 1.0) / (x + 1.0);
    }
    let z = x * x;
    let y = y0 + ((((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
        - 3.33329491539e-1) * z * x + x);
    return select(y, -y, x_in < 0.0);
}

fn atan2_f(y: f32, x: f32) -> f32 {
    if (x > 0.0) {
        return atan_f(y / x);
    }
    if (x < 0.0) {
        let pi = select(3.1415927, -3.1415927, (bitcast<u32>(y) & 0x80000000u) != 0u);
        return atan_f(y / x) + pi;
    }
    if (y > 0.0) {
        return 1.5707964;
    }
    if (y < 0.0) {
        return -1.5707964;
    }
    return 0.0;
}

// ---------------------------------------------------------------------------------------
// The ensemble's head: soft-bounded log-variance (PETS appendix A.1, mbrl-lib GaussianMLP),
// shared by ensemble.wgsl and rollout.wgsl.
// ---------------------------------------------------------------------------------------

fn soft_logvar(raw: f32, hi: f32, lo: f32) -> f32 {
    let lv1 = hi - softplus_f(hi - raw);
    return lo + softplus_f(lv1 - lo);
}

// Hidden activation (Activation::code): 0 SiLU, 1 ReLU, 2 tanh.
fn activate(code: u32, z: f32) -> f32 {
    switch code {
        case 0u: { return z / (1.0 + exp_f(-z)); }
        case 1u: { return max(z, 0.0); }
        default: { return tanh_f(z); }
    }
}

// d act / dz at z.
fn activate_grad(code: u32, z: f32) -> f32 {
    switch code {
        case 0u: {
            let s = sigmoid_f(z);
            return s * (1.0 + z * (1.0 - s));
        }
        case 1u: { return select(0.0, 1.0, z > 0.0); }
        default: {
            let t = tanh_f(z);
            return 1.0 - t * t;
        }
    }
}

// Global invocation index of a 1-D launch of 256-wide workgroups laid out on a 2-D grid
// (the x dimension is capped at 65535 workgroups).
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + li;
}

// The path gradient's stages (sac.wgsl, rollout.wgsl): identical to src/backend/mod.rs
// `PathParams`; each module binds it as its own uniform.
struct PathParams {
    rows: u32,
    obs_dim: u32,
    act_dim: u32,
    out_dim: u32,
    members: u32,
    per: u32,
    grouped: u32,
    t: u32,
    horizon: u32,
    task: u32,
    learn_reward: u32,
    probabilistic: u32,
    terminal_value: u32,
    gamma: f32,
    disc: f32,
    w: f32,
    target_entropy: f32,
    len: u32,
    n_eps: u32,
    n_xi: u32,
    n_slot: u32,
    n_rowof: u32,
    t_states: u32,
    t_heads: u32,
    t_act: u32,
    t_logp: u32,
    t_alive: u32,
    t_counted: u32,
    t_reward: u32,
    t_logvar: u32,
    t_alpha: u32,
    t_squash: u32,
    step_grad_norm: f32,
    mean_limit: f32,
    mean_penalty: f32,
    _pad: u32,
}
