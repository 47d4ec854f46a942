//! Adam (Kingma & Ba 2015, Algorithm 1) over a flat parameter vector — the specification of
//! `optim.cu` / `optim.wgsl`. Matches `torch.optim.Adam` (bias corrections folded into the
//! step size the same way), with L2 weight decay applied through the loss instead.
use crate::backend::AdamParams;
use rayon::prelude::*;

use super::PAR_BLOCK as CHUNK;

pub fn adam(p: &AdamParams, params: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
    let step = AdamStep::new(p);
    params
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((w, g), (m, v))| step.apply(w, g, m, v));
}

/// One Adam step's constants, applied to any block of the parameters: [`adam`] runs it on
/// all of them, the CPU training step on each weight gradient's block as it is made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamStep {
    beta1: f32,
    beta2: f32,
    eps: f32,
    step: f32,
    bc2_sqrt: f32,
}

impl AdamStep {
    pub(crate) fn new(p: &AdamParams) -> Self {
        let t = p.step.max(1) as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        AdamStep {
            beta1: p.beta1,
            beta2: p.beta2,
            eps: p.eps,
            step: p.lr / bc1,
            bc2_sqrt: bc2.sqrt(),
        }
    }

    /// The update of Algorithm 1 on `w` with gradient `g` and moments `m`, `v` (all the same
    /// length).
    #[inline]
    pub(crate) fn apply(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let (b1, b2) = (self.beta1, self.beta2);
        // Zipped iterators (no index bounds checks) so the loop vectorises.
        for (((w, g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = flush(b1 * *m + (1.0 - b1) * g);
            *v = flush(b2 * *v + (1.0 - b2) * g * g);
            *w -= self.step * *m / (v.sqrt() / self.bc2_sqrt + self.eps);
        }
    }
}

/// A moment below f32's smallest normal number becomes zero. A parameter whose gradient has
/// stopped (a dead ReLU unit) has its first moment decay by β₁ = 0.9 per step through the
/// subnormal range, where every x86 multiply costs a microcode assist (~100 cycles): with
/// such units an Adam step took 11× as long (200,000 parameters, 2026-12-02), and in MBPO
/// runs SAC's Adam grew to a fifth of the CPU time. The step it drops is below 2⁻¹²⁶·lr/ε
/// (≈ 4e-34 at lr 3e-4), far under any parameter's rounding; the device kernels do the same.
#[inline(always)]
fn flush(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moments that decay into the subnormal range become zero; normal ones are Adam's.
    #[test]
    fn subnormal_moments_should_become_zero() {
        let p = AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 5,
            len: 3,
            _pad: [0; 2],
        };
        // A dead unit (zero gradient) with moments just above the normal range, and one
        // with ordinary moments.
        let mut w = vec![0.5f32, 0.5, 0.5];
        let g = vec![0.0f32, 0.0, 0.25];
        let mut m = vec![1.2e-38f32, 1e-3, 1e-3];
        let mut v = vec![1.176e-38f32, 1e-6, 1e-6];
        adam(&p, &mut w, &g, &mut m, &mut v);
        assert_eq!((m[0], v[0]), (0.0, 0.0));
        assert_eq!(w[0], 0.5);
        let want_m = 0.9f32 * 1e-3;
        assert_eq!(m[1], want_m);
        assert_eq!(m[2], 0.9f32 * 1e-3 + (1.0 - 0.9f32) * 0.25);
        assert!(m.iter().chain(&v).all(|x| *x == 0.0 || x.is_normal()));
    }

    /// Two steps against values worked by hand from Algorithm 1.
    #[test]
    fn adam_should_follow_the_bias_corrected_update() {
        let mut w = vec![1.0f32, -2.0];
        let g = vec![0.5f32, -1.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        let mut p = AdamParams {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 1,
            len: 2,
            _pad: [0; 2],
        };
        adam(&p, &mut w, &g, &mut m, &mut v);
        // Step 1: m̂ = g, v̂ = g², update = lr·sign(g) (up to eps).
        assert!(
            (w[0] - 0.9).abs() < 1e-6 && (w[1] + 1.9).abs() < 1e-6,
            "{w:?}"
        );
        p.step = 2;
        adam(&p, &mut w, &g, &mut m, &mut v);
        // Constant gradient: m̂ = g, v̂ = g² again, so another lr·sign(g).
        assert!(
            (w[0] - 0.8).abs() < 1e-5 && (w[1] + 1.8).abs() < 1e-5,
            "{w:?}"
        );
    }
}
