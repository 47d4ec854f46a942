//! CEM and random-shooting sampling and the CEM update — the specification of `cem.cu` and
//! `cem.wgsl`. Sampling follows mbrl-lib's `CEMOptimizer` (PETS appendix): the variance is
//! constrained so that ±2σ stays inside the bounds, samples are truncated normals at ±2σ.
use crate::backend::{InitParams, SampleParams, UpdateParams};
use crate::rng::{stream, truncated_normal, uniform};
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
    out[..p.population as usize * len]
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(c, cand)| {
            for (j, o) in cand.iter_mut().enumerate() {
                let (lb, ub) = (lower[j % a], upper[j % a]);
                let element = (c * len + j) as u32;
                *o = if p.dist == 1 {
                    lb + uniform(seed, stream::CEM_SAMPLE, element, p.step) * (ub - lb)
                } else {
                    let m = mean[j];
                    // ((m − lb)/2)² and ((ub − m)/2)²: the largest variance whose ±2σ interval
                    // still fits inside the bounds.
                    let cv = var[j]
                        .min(((m - lb) * 0.5).powi(2))
                        .min(((ub - m) * 0.5).powi(2));
                    let z = truncated_normal(seed, stream::CEM_SAMPLE, element, p.step);
                    (m + z * cv.sqrt()).clamp(lb, ub)
                };
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

#[cfg(test)]
mod tests {
    use super::*;

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
            _pad: 0,
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
