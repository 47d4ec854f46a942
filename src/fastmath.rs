//! Branch-free f32 transcendental functions. Rust's `f32::exp/ln/cos` call libm one value at
//! a time; these are plain arithmetic and bit operations, so loops over them vectorise (the
//! CPU backend's SiLU, softplus and the Philox normal samples). Each states its accuracy and
//! is tested against f64 libm below.

/// Branch-free f32 exp: x = n·ln2 + r with |r| ≤ ln2/2, exp(r) by a degree-6 Taylor
/// polynomial (truncation error < 2e-8 relative on that interval), 2ⁿ assembled in the
/// exponent bits. n is rounded with the 1.5·2²³ "magic number" so that the float→int step is
/// plain bit arithmetic and the loop vectorises (a saturating `as i32` does not). Inputs are
/// clamped to [-87.3, 88.0], where n ∈ [-126, 127] keeps 2ⁿ a normal finite f32; NaN
/// propagates. Relative error ≤ 3e-7 (tested below).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in few bits and a correction (Cody–Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer in the low bits
    let x = x.clamp(-87.3, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // t's low mantissa bits hold n + 0x40_0000; rebias to the exponent field.
    let bits = (t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23;
    p * f32::from_bits(bits)
}

/// Branch-free natural log of a positive normal f32: x = 2ᵉ·m with m ∈ [√½, √2), then
/// ln m = 2·atanh(s), s = (m−1)/(m+1), |s| ≤ 0.172, by its odd series to s⁹ (next term
/// < 3e-10 relative). Relative error ≤ 3e-7 (tested below).
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = s * (2.0 + s2 * (2.0 / 3.0 + s2 * (2.0 / 5.0 + s2 * (2.0 / 7.0 + s2 * (2.0 / 9.0)))));
    e as f32 * std::f32::consts::LN_2 + p
}

/// ln(1 + x) for x ≥ 0 (NaN propagates): ln(u)·x/(u − 1) with u = 1 + x recovers the digits
/// that rounding 1 + x loses (Goldberg's trick); x itself when u rounds to 1.
#[inline(always)]
pub fn ln_1p_f32(x: f32) -> f32 {
    let u = 1.0 + x;
    let d = u - 1.0;
    if d == 0.0 {
        x
    } else {
        ln_f32(u) * (x / d)
    }
}

/// cos(2πu), branch-free: x = u − round(u) ∈ [−½, ½], folded by cos(2π(½−a)) = −cos(2πa) to
/// a = |x| ∈ [0, ¼], i.e. y = 2πa ∈ [0, π/2], where the Taylor series to y¹² has truncation
/// error (π/2)¹⁴/14! < 6e-9. Absolute error ≤ 2e-7 (tested below).
#[inline(always)]
pub fn cos_2pi_f32(u: f32) -> f32 {
    let x = u - u.round_ties_even();
    let a = x.abs();
    let flip = a > 0.25;
    let a = if flip { 0.5 - a } else { a };
    let y = std::f32::consts::TAU * a;
    let y2 = y * y;
    let c = 1.0
        + y2 * (-1.0 / 2.0
            + y2 * (1.0 / 24.0
                + y2 * (-1.0 / 720.0
                    + y2 * (1.0 / 40_320.0
                        + y2 * (-1.0 / 3_628_800.0 + y2 * (1.0 / 479_001_600.0))))));
    if flip {
        -c
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_should_be_accurate_to_a_few_ulps() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp_f32(x) as f64) - (x as f64).exp()).abs() / (x as f64).exp();
            worst = worst.max(rel);
            x += 0.013;
        }
        // 3e-7 ≈ 2.5 ulp of f32: the polynomial's 2e-8 plus rounding in Horner's scheme.
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-1000.0) >= 0.0 && exp_f32(-1000.0) < 1e-37);
        assert!(exp_f32(1000.0).is_finite());
    }

    #[test]
    fn fast_logs_should_be_accurate() {
        let mut worst = 0.0f64;
        let mut x = 1e-30f32;
        while x < 1e30 {
            let rel =
                ((ln_f32(x) as f64) - (x as f64).ln()).abs() / (x as f64).ln().abs().max(1e-3);
            worst = worst.max(rel);
            x *= 1.37;
        }
        assert!(worst < 3e-7, "ln worst relative error {worst}");
        let mut worst = 0.0f64;
        let mut y = 1e-12f32;
        while y <= 1.0 {
            let want = (y as f64).ln_1p();
            worst = worst.max(((ln_1p_f32(y) as f64) - want).abs() / want);
            y *= 1.11;
        }
        // The quotient x/d adds one rounding on top of ln's error.
        assert!(worst < 5e-7, "ln_1p worst relative error {worst}");
        assert!(ln_1p_f32(f32::NAN).is_nan());
    }

    #[test]
    fn fast_cos_should_be_accurate() {
        let mut worst = 0.0f64;
        let mut u = -1.0f32;
        while u < 2.0 {
            let want = (std::f64::consts::TAU * u as f64).cos();
            worst = worst.max((cos_2pi_f32(u) as f64 - want).abs());
            u += 1.7e-4;
        }
        assert!(worst < 2e-7, "cos worst absolute error {worst}");
    }
}
