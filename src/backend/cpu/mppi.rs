//! MPPI sampling and the MPPI update — the specification of `kernels/mppi.cu` and
//! `shaders/mppi.wgsl`. Information-theoretic MPPI (Williams et al. 2017) in the form of
//! pytorch_mppi and MPPI-Generic: candidates are the nominal plan U plus correlated Gaussian
//! noise, clipped to the bounds; each candidate's cost is its negated return plus the
//! control-cost term λ Σ_t U_tᵀ Σ⁻¹ ε_t of the clipped noise ε = V − U; the new nominal is the
//! average of the candidates weighted by exp(−(S − min S)/λ).
use crate::backend::MppiParams;
use crate::rng::{normals, stream};
use rayon::prelude::*;

/// Population [P, len]: `V[c, t·A + a] = clip(U[t·A + a] + Σ_{b ≤ a} L[a·A + b] z_b)`.
pub fn sample(
    p: &MppiParams,
    mean: &[f32],
    chol: &[f32],
    lower: &[f32],
    upper: &[f32],
    out: &mut [f32],
) {
    let seed = p.seed_lo as u64 | (p.seed_hi as u64) << 32;
    let (len, a) = (p.len as usize, p.act_dim as usize);
    // Whole candidates in batches of about 4096 values, so that a rayon task is worth its
    // dispatch at short horizons.
    let per = len * (4096 / len.max(1)).max(1);
    if per == 0 {
        return;
    }
    out[..p.population as usize * len]
        .par_chunks_mut(per)
        .enumerate()
        .for_each(|(b, rows)| {
            let first = b * per;
            // The standard normals z of these rows at once (`normals` vectorises Philox and
            // Box–Muller): z[i] is element first + i, the element numbering of the spec.
            let mut z = vec![0.0f32; rows.len()];
            normals(seed, stream::MPPI_SAMPLE, first as u32, p.step, &mut z);
            for (j, o) in rows.iter_mut().enumerate() {
                let (k, d) = (j % len, j % a);
                let t0 = j - d; // element of this time step's first action dimension
                let mut eps = 0.0f32;
                for b in 0..=d {
                    eps += chol[d * a + b] * z[t0 + b];
                }
                *o = (mean[k] + eps).clamp(lower[d], upper[d]);
            }
        });
}

/// Cost S_c of every candidate: −R_c + λ Σ_t U_tᵀ Σ⁻¹ (V_{c,t} − U_t); +∞ where that is not
/// finite, so that the candidate gets no weight.
pub fn costs(
    p: &MppiParams,
    population: &[f32],
    returns: &[f32],
    precision: &[f32],
    mean: &[f32],
) -> Vec<f32> {
    let (len, a) = (p.len as usize, p.act_dim as usize);
    (0..p.population as usize)
        .into_par_iter()
        .with_min_len(64)
        .map(|c| {
            let v = &population[c * len..(c + 1) * len];
            let mut quad = 0.0f32;
            for t in 0..len / a {
                for d in 0..a {
                    let mut pe = 0.0f32;
                    for b in 0..a {
                        pe += precision[d * a + b] * (v[t * a + b] - mean[t * a + b]);
                    }
                    quad += mean[t * a + d] * pe;
                }
            }
            let s = -returns[c] + p.lambda * quad;
            if s.is_finite() {
                s
            } else {
                f32::INFINITY
            }
        })
        .collect()
}

/// The weight of a candidate of cost `s` when the least cost is `min`: exp(−(s − min)/λ).
#[inline]
pub fn weight(s: f32, min: f32, lambda: f32) -> f32 {
    if s.is_finite() {
        (-(s - min) / lambda).exp()
    } else {
        0.0
    }
}

/// U ← α·U + (1−α)·Σ_c w_c V_c / Σ_c w_c; U unchanged without a finite cost. Σ w is summed
/// in candidate order as the device kernels do; the numerators in 128-candidate partial sums
/// (so that the work spreads over threads), where the kernels sum each element's candidates
/// in order: a rounding difference of a few ULP.
pub fn update(
    p: &MppiParams,
    population: &[f32],
    returns: &[f32],
    precision: &[f32],
    mean: &mut [f32],
) {
    let len = p.len as usize;
    let s = costs(p, population, returns, precision, mean);
    let min = s.iter().cloned().fold(f32::INFINITY, f32::min);
    if !min.is_finite() {
        return;
    }
    let w: Vec<f32> = s.iter().map(|&sc| weight(sc, min, p.lambda)).collect();
    let den = w.iter().sum::<f32>();
    // Every element's numerator in candidate order, candidates streamed row by row (the
    // population's layout) into per-task partial sums that are added in task order: the
    // order is fixed by the population size alone, so the result does not depend on threads.
    const ROWS: usize = 128;
    let partial: Vec<Vec<f32>> = population[..w.len() * len]
        .par_chunks(ROWS * len)
        .zip(w.par_chunks(ROWS))
        .map(|(rows, ws)| {
            let mut acc = vec![0.0f32; len];
            for (row, &wc) in rows.chunks_exact(len).zip(ws) {
                for (s, v) in acc.iter_mut().zip(row) {
                    *s += wc * v;
                }
            }
            acc
        })
        .collect();
    for (j, m) in mean[..len].iter_mut().enumerate() {
        let num = partial.iter().map(|acc| acc[j]).sum::<f32>();
        *m = p.alpha * *m + (1.0 - p.alpha) * (num / den);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(population: u32, len: u32, act_dim: u32) -> MppiParams {
        MppiParams {
            seed_lo: 7,
            seed_hi: 0,
            step: 1,
            population,
            len,
            act_dim,
            lambda: 1.0,
            alpha: 0.0,
        }
    }

    #[test]
    fn samples_should_have_the_noise_covariance_and_stay_inside_bounds() {
        // Σ = [[1, 0.6], [0.6, 0.5]]: L = [[1, 0], [0.6, √0.14]].
        let p = params(20_000, 2, 2);
        let chol = [1.0, 0.0, 0.6, 0.14f32.sqrt()];
        let mean = [0.0, 0.0];
        let mut out = vec![f32::NAN; 40_000];
        sample(&p, &mean, &chol, &[-100.0; 2], &[100.0; 2], &mut out);
        let n = 20_000.0;
        let m0 = out.iter().step_by(2).sum::<f32>() / n;
        let c00 = out.iter().step_by(2).map(|x| x * x).sum::<f32>() / n;
        let c11 = out.iter().skip(1).step_by(2).map(|x| x * x).sum::<f32>() / n;
        let c01 = out.chunks(2).map(|v| v[0] * v[1]).sum::<f32>() / n;
        // Standard errors at n = 20 000: ≈ 0.007 (mean), ≈ 0.01 (second moments).
        assert!(m0.abs() < 0.03, "{m0}");
        assert!((c00 - 1.0).abs() < 0.05, "{c00}");
        assert!((c11 - 0.5).abs() < 0.03, "{c11}");
        assert!((c01 - 0.6).abs() < 0.04, "{c01}");
        let mut clipped = vec![f32::NAN; 40_000];
        sample(&p, &mean, &chol, &[-0.5; 2], &[0.5; 2], &mut clipped);
        assert!(clipped.iter().all(|v| (-0.5..=0.5).contains(v)));
    }

    #[test]
    fn update_should_weight_candidates_by_the_softmin_of_their_cost() {
        // Two candidates of one element, U = 0 so the control cost vanishes: weights
        // e^0 and e^{−(2 − 1)/λ}.
        let mut p = params(2, 1, 1);
        p.lambda = 0.5;
        let pop = [1.0, -1.0];
        let ret = [2.0, 1.0];
        let mut u = [0.0f32];
        update(&p, &pop, &ret, &[1.0], &mut u);
        let w1 = (-2.0f32).exp();
        assert!((u[0] - (1.0 - w1) / (1.0 + w1)).abs() < 1e-6, "{}", u[0]);
    }

    #[test]
    fn control_cost_should_penalise_noise_along_the_nominal() {
        // U = 1: the candidate above U pays λ·U·Σ⁻¹·ε = 1·1·2·1 = 2 more cost.
        let p = params(2, 1, 1);
        let s = costs(&p, &[2.0, 1.0], &[0.0, 0.0], &[2.0], &[1.0]);
        assert_eq!(s, vec![2.0, 0.0]);
    }

    #[test]
    fn update_should_ignore_non_finite_returns_and_keep_the_plan_without_any() {
        let p = params(3, 1, 1);
        let mut u = [0.25f32];
        update(
            &p,
            &[1.0, 5.0, -3.0],
            &[f32::NAN, 0.0, f32::NEG_INFINITY],
            &[1.0],
            &mut u,
        );
        assert_eq!(u[0], 5.0);
        let mut u = [0.25f32];
        update(&p, &[1.0, 5.0, -3.0], &[f32::NAN; 3], &[1.0], &mut u);
        assert_eq!(u[0], 0.25);
    }
}
