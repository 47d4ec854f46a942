//! CEM, random-shooting and iCEM sampling, the CEM update and iCEM's elite memory — the
//! specification of `cem.cu` and `cem.wgsl`. CEM sampling follows mbrl-lib's `CEMOptimizer`
//! (PETS appendix): the variance is constrained so that ±2σ stays inside the bounds, samples
//! are truncated normals at ±2σ. iCEM (Pinneri et al. 2020) samples coloured noise
//! ([`colored_noise`]) and keeps a fraction of its elites ([`select`], [`keep`]).
use crate::backend::{EliteParams, InitParams, SampleParams, UpdateParams};
use crate::fastmath::{cos_2pi_f32, exp_f32, ln_f32};
use crate::rng::{normal, stream, truncated_normals, uniform};
use rayon::prelude::*;

/// Start of a planning step: `mean` = `prev` shifted by one action (or the middle of the
/// bounds), `var` = (ub − lb)²/16.
pub fn init(
    p: &InitParams,
    lower: &[f32],
    upper: &[f32],
    prev: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) {
    let (len, a) = (p.len as usize, p.act_dim as usize);
    for j in 0..len {
        let (lb, ub) = (lower[j % a], upper[j % a]);
        mean[j] = if p.shift == 1 && j + a < len {
            prev[j + a]
        } else {
            0.5 * (lb + ub)
        };
        var[j] = (ub - lb) * (ub - lb) / 16.0;
    }
}

/// Amplitude of frequency f of the coloured noise: f^(−β/2), with the DC term given the
/// amplitude of the lowest frequency (as the `colorednoise` package does, fmin = 1/H).
#[inline]
pub fn noise_amplitude(beta: f32, f: usize) -> f32 {
    exp_f32(-0.5 * beta * ln_f32(f.max(1) as f32))
}

/// One unit-variance Gaussian sequence `out` [H] with power spectrum ∝ 1/f^β: sequence `s`
/// (= candidate·act_dim + action dimension) draws its Fourier coefficients a_f, b_f as the
/// Philox normals of stream ICEM_NOISE at elements s·(H+2) + 2f and s·(H+2) + 2f + 1, and
///
/// ```text
/// x_t = ( A_0 a_0 + √2 Σ_{1 ≤ f < H/2} A_f (a_f cos 2πft/H − b_f sin 2πft/H)
///         + [H even] A_{H/2} a_{H/2} (−1)^t ) / √(A_0² + 2 Σ A_f² + [H even] A_{H/2}²)
/// ```
///
/// with A_f = [`noise_amplitude`]: the real inverse DFT of a spectrum with random phases,
/// scaled so that every x_t has variance exactly 1 (for β = 0 the x_t are independent). The
/// device kernels compute the same sum, in the same order, one element at a time.
pub fn colored_noise(seed: u64, step: u32, beta: f32, s: u32, out: &mut [f32]) {
    let h = out.len();
    let base = s.wrapping_mul(h as u32 + 2);
    let coef =
        |f: usize, part: u32| normal(seed, stream::ICEM_NOISE, base + 2 * f as u32 + part, step);
    let half = h.div_ceil(2) - 1; // frequencies with both a cosine and a sine
    let nyquist = h.is_multiple_of(2) && h >= 2;
    let a0 = noise_amplitude(beta, 0);
    let mut norm = a0 * a0;
    for f in 1..=half {
        let af = noise_amplitude(beta, f);
        norm += 2.0 * af * af;
    }
    let an = noise_amplitude(beta, h / 2);
    if nyquist {
        norm += an * an;
    }
    let inv = 1.0 / norm.sqrt();
    let c0 = a0 * coef(0, 0);
    let cn = if nyquist { an * coef(h / 2, 0) } else { 0.0 };
    let terms: Vec<(f32, f32, f32)> = (1..=half)
        .map(|f| {
            let af = std::f32::consts::SQRT_2 * noise_amplitude(beta, f);
            (af, af * coef(f, 0), af * coef(f, 1))
        })
        .collect();
    for (t, o) in out.iter_mut().enumerate() {
        let mut x = c0;
        for (i, &(_, ca, cb)) in terms.iter().enumerate() {
            let u = ((i + 1) * t % h) as f32 / h as f32;
            x += ca * cos_2pi_f32(u) - cb * cos_2pi_f32(u - 0.25);
        }
        if nyquist {
            x += if t % 2 == 0 { cn } else { -cn };
        }
        *o = x * inv;
    }
}

/// Population [P, len] from (mean, var) [len] and bounds [act_dim].
pub fn sample(
    p: &SampleParams,
    mean: &[f32],
    var: &[f32],
    lower: &[f32],
    upper: &[f32],
    out: &mut [f32],
) {
    let seed = p.seed_lo as u64 | (p.seed_hi as u64) << 32;
    let len = p.len as usize;
    let a = p.act_dim as usize;
    if p.dist == 2 {
        let h = len / a;
        out[..p.population as usize * len]
            .par_chunks_mut(len)
            .enumerate()
            .for_each(|(c, cand)| {
                let mut x = vec![0.0f32; h];
                for d in 0..a {
                    colored_noise(seed, p.step, p.beta, (c * a + d) as u32, &mut x);
                    for (t, xt) in x.iter().enumerate() {
                        let j = t * a + d;
                        cand[j] = (mean[j] + var[j].max(0.0).sqrt() * xt).clamp(lower[d], upper[d]);
                    }
                }
            });
        return;
    }
    if p.dist == 1 {
        out[..p.population as usize * len]
            .par_chunks_mut(len)
            .enumerate()
            .for_each(|(c, cand)| {
                for (j, o) in cand.iter_mut().enumerate() {
                    let (lb, ub) = (lower[j % a], upper[j % a]);
                    let element = (c * len + j) as u32;
                    *o = lb + uniform(seed, stream::CEM_SAMPLE, element, p.step) * (ub - lb);
                }
            });
        return;
    }
    // The standard deviation per position, once per call: min(var, ((m − lb)/2)²,
    // ((ub − m)/2)²) is the largest variance whose ±2σ interval still fits in the bounds.
    let sd: Vec<f32> = (0..len)
        .map(|j| {
            let (m, lb, ub) = (mean[j], lower[j % a], upper[j % a]);
            var[j]
                .min(((m - lb) * 0.5).powi(2))
                .min(((ub - m) * 0.5).powi(2))
                .sqrt()
        })
        .collect();
    out[..p.population as usize * len]
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(c, cand)| {
            // Candidate c's draws are elements c·len … c·len + len − 1, drawn in one batch.
            truncated_normals(seed, stream::CEM_SAMPLE, (c * len) as u32, p.step, cand);
            for (j, o) in cand.iter_mut().enumerate() {
                let (lb, ub) = (lower[j % a], upper[j % a]);
                *o = (mean[j] + *o * sd[j]).clamp(lb, ub);
            }
        });
}

/// Indices of the `k` highest returns, best first; NaN counts as −∞ and ties go to the lower
/// index, so every backend picks the same elites.
pub fn top_k(returns: &[f32], k: usize) -> Vec<usize> {
    let key = |i: usize| {
        let r = returns[i];
        if r.is_nan() {
            f32::NEG_INFINITY
        } else {
            r
        }
    };
    let mut idx: Vec<usize> = (0..returns.len()).collect();
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// mean ← α·mean + (1−α)·mean(elites), var ← max(α·var + (1−α)·var(elites), min_var).
pub fn update(
    p: &UpdateParams,
    population: &[f32],
    returns: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) {
    let len = p.len as usize;
    let elites = top_k(&returns[..p.population as usize], p.num_elites as usize);
    let k = elites.len().max(1) as f32;
    for j in 0..len {
        let m = elites.iter().map(|&c| population[c * len + j]).sum::<f32>() / k;
        let v = elites
            .iter()
            .map(|&c| (population[c * len + j] - m).powi(2))
            .sum::<f32>()
            / k;
        mean[j] = p.alpha * mean[j] + (1.0 - p.alpha) * m;
        var[j] = (p.alpha * var[j] + (1.0 - p.alpha) * v).max(p.min_var);
    }
}

/// iCEM: the `num_elites` best candidates (the order of [`top_k`]) and their returns.
pub fn select(
    p: &EliteParams,
    population: &[f32],
    returns: &[f32],
    elites: &mut [f32],
    elite_returns: &mut [f32],
) {
    let len = p.len as usize;
    let best = top_k(&returns[..p.population as usize], p.num_elites as usize);
    for (r, &c) in best.iter().enumerate() {
        elites[r * len..(r + 1) * len].copy_from_slice(&population[c * len..(c + 1) * len]);
        elite_returns[r] = returns[c];
    }
}

/// iCEM: elites `0..num_elites` into population rows `dst_row..`, shifted one action earlier
/// (the last action from `mean`) when `shift` is 1.
pub fn keep(p: &EliteParams, elites: &[f32], mean: &[f32], population: &mut [f32]) {
    let (len, a) = (p.len as usize, p.act_dim as usize);
    for r in 0..p.num_elites as usize {
        let dst = &mut population[(p.dst_row as usize + r) * len..][..len];
        let src = &elites[r * len..(r + 1) * len];
        for j in 0..len {
            dst[j] = if p.shift == 0 {
                src[j]
            } else if j + a < len {
                src[j + a]
            } else {
                mean[j]
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lag-k autocorrelation and variance of coloured noise over many sequences.
    fn noise_stats(beta: f32, h: usize, lag: usize) -> (f32, f32) {
        let (mut var, mut cov, mut n) = (0.0f64, 0.0f64, 0.0f64);
        let mut x = vec![0.0f32; h];
        for s in 0..4000u32 {
            colored_noise(11, 2, beta, s, &mut x);
            for t in 0..h - lag {
                var += f64::from(x[t] * x[t]);
                cov += f64::from(x[t] * x[t + lag]);
                n += 1.0;
            }
        }
        ((var / n) as f32, (cov / var) as f32)
    }

    #[test]
    fn colored_noise_should_have_unit_variance_and_its_exponent_should_set_the_correlation() {
        // β = 0: white, independent steps (the inverse DFT of a flat random spectrum).
        let (v, r) = noise_stats(0.0, 30, 1);
        assert!((v - 1.0).abs() < 0.03, "{v}");
        assert!(r.abs() < 0.03, "{r}");
        // β = 2 (Brownian-like, 1/f²): neighbouring steps strongly correlated, and the
        // correlation falling with the lag.
        let (v2, r1) = noise_stats(2.0, 30, 1);
        let (_, r5) = noise_stats(2.0, 30, 5);
        assert!((v2 - 1.0).abs() < 0.05, "{v2}");
        assert!(r1 > 0.8 && r5 < r1 && r5 > 0.2, "{r1} {r5}");
        // Odd and even horizons, and a horizon of one (a plain normal).
        for h in [1usize, 2, 7] {
            let (v, _) = noise_stats(2.5, h, 0);
            assert!((v - 1.0).abs() < 0.06, "H={h}: {v}");
        }
    }

    #[test]
    fn top_k_should_rank_nan_last_and_break_ties_by_index() {
        let r = [1.0, f32::NAN, 3.0, 3.0, f32::NEG_INFINITY, 2.0];
        assert_eq!(top_k(&r, 4), vec![2, 3, 5, 0]);
    }

    #[test]
    fn samples_should_stay_inside_bounds_and_follow_the_mean() {
        let p = SampleParams {
            seed_lo: 3,
            seed_hi: 0,
            step: 1,
            population: 2000,
            len: 4,
            act_dim: 2,
            dist: 0,
            beta: 0.0,
        };
        let mean = [0.5, -0.9, 0.0, 0.2];
        let var = [0.01, 1.0, 0.04, 0.0];
        let (lo, hi) = ([-1.0, -1.0], [1.0, 1.0]);
        let mut out = vec![f32::NAN; 8000];
        sample(&p, &mean, &var, &lo, &hi, &mut out);
        for c in 0..2000 {
            for j in 0..4 {
                let v = out[c * 4 + j];
                assert!((-1.0..=1.0).contains(&v), "{v}");
            }
        }
        let avg = |j: usize| (0..2000).map(|c| out[c * 4 + j]).sum::<f32>() / 2000.0;
        // Truncated-normal spread at σ = 0.1 gives a mean's standard error ≈ 0.002.
        assert!((avg(0) - 0.5).abs() < 0.01);
        // Element 3 has zero variance: every sample is exactly the mean.
        assert!((0..2000).all(|c| out[c * 4 + 3] == 0.2));
        // Element 1 sits near the bound: the variance is constrained to ((m−lb)/2)², so
        // samples stay within [−1, −0.8].
        assert!((0..2000).all(|c| out[c * 4 + 1] <= -0.8 + 1e-6));
    }

    #[test]
    fn init_should_shift_the_previous_plan_and_reset_the_variance() {
        let prev = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let (lo, hi) = ([-1.0, 0.0], [1.0, 4.0]);
        let (mut m, mut v) = ([f32::NAN; 6], [f32::NAN; 6]);
        let p = InitParams {
            len: 6,
            act_dim: 2,
            shift: 1,
            _pad: 0,
        };
        init(&p, &lo, &hi, &prev, &mut m, &mut v);
        assert_eq!(m, [3.0, 4.0, 5.0, 6.0, 0.0, 2.0]);
        assert_eq!(v, [0.25, 1.0, 0.25, 1.0, 0.25, 1.0]);
        init(
            &InitParams { shift: 0, ..p },
            &lo,
            &hi,
            &prev,
            &mut m,
            &mut v,
        );
        assert_eq!(m, [0.0, 2.0, 0.0, 2.0, 0.0, 2.0]);
    }

    #[test]
    fn update_should_move_toward_the_elites() {
        // Candidates 0..4 with returns 0..4; elites {4, 3}.
        let pop = [0.0, 1.0, 2.0, 3.0, 4.0];
        let ret = [0.0, 1.0, 2.0, 3.0, 4.0];
        let p = UpdateParams {
            population: 5,
            len: 1,
            num_elites: 2,
            _pad: 0,
            alpha: 0.1,
            min_var: 1e-3,
            _pad2: [0; 2],
        };
        let (mut m, mut v) = ([0.0f32], [1.0f32]);
        update(&p, &pop, &ret, &mut m, &mut v);
        assert!((m[0] - 0.9 * 3.5).abs() < 1e-6);
        assert!((v[0] - (0.1 + 0.9 * 0.25)).abs() < 1e-6);
    }
}
