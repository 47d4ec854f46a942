//! The f32 dense layer of the CPU backend, fused: `dst = act(src · W + b)` in one pass, the
//! bias and activation applied to the accumulators while they are still in registers.
//!
//! On CPUs with AVX-512 (detected at run time) the product runs in a register-blocked
//! micro-kernel: 12 rows × 32 columns of accumulators (24 zmm registers), one pass over k per
//! block, each step two 16-wide weight loads and 16 FMAs with the row values broadcast from
//! memory. The weights are packed once into panels of 32 columns (k-major, zero-padded), so
//! the loads are contiguous. Each output is Σₖ a·w summed in k order with FMA, then + b.
//! Elsewhere the layer falls back to the `gemm` crate and a separate bias/activation pass.
use crate::backend::Activation;

/// Columns per packed panel (two 16-wide vectors).
const PANEL: usize = 32;
/// Rows per register block: 12 × 2 accumulators + 2 weight vectors + 1 broadcast fit the 32
/// zmm registers.
const MR: usize = 12;

/// W [k, n] packed into panels of 32 columns: panel p holds, for each k, columns
/// 32p..32p+32 (zero beyond n), contiguous.
#[derive(Clone, Debug, Default)]
pub struct PackedF32 {
    pub k: usize,
    pub n: usize,
    panels: Vec<f32>,
    /// Row-major W for the fallback path.
    plain: Vec<f32>,
}

impl PackedF32 {
    pub fn new(w: &[f32], k: usize, n: usize) -> Self {
        let mut p = Self::default();
        p.repack(w, k, n);
        p
    }

    /// Pack `w` [k, n] into this value, reusing its memory.
    pub fn repack(&mut self, w: &[f32], k: usize, n: usize) {
        assert_eq!(w.len(), k * n, "weight matrix size");
        (self.k, self.n) = (k, n);
        if !avx512::available() {
            self.panels.clear();
            self.plain.clear();
            self.plain.extend_from_slice(w);
            return;
        }
        let np = n.div_ceil(PANEL);
        self.panels.clear();
        self.panels.resize(np * k * PANEL, 0.0);
        for p in 0..np {
            let cols = PANEL.min(n - p * PANEL);
            for kk in 0..k {
                self.panels[(p * k + kk) * PANEL..][..cols]
                    .copy_from_slice(&w[kk * n + p * PANEL..][..cols]);
            }
        }
    }

    /// Whether the register-blocked kernel runs (AVX-512 present).
    pub fn fused(&self) -> bool {
        !self.panels.is_empty()
    }
}

/// Whether the fused kernel runs here (AVX-512F present, `MBRL_NO_AVX512` unset).
pub fn fused_available() -> bool {
    avx512::available()
}

/// The bf16 training forward's epilogue on AVX-512: with x = z + b (`b` added to every
/// row of `z`), `out = act(x)` and `z ← act'(x)` in one pass, 16 lanes at a time with the
/// inference layer's exp and Newton reciprocal (the compiler's own vectorisation of the
/// scalar specification stays at 8 lanes and divides). Within 2e-6 of act and 4e-6 of act'
/// (the test below), far inside the 2⁻⁸ of the bf16 products that follow; f32 training
/// keeps the scalar loop, bit for bit. Returns false, doing nothing, where AVX-512F is not
/// available.
pub fn bias_act_grad(a: Activation, z: &mut [f32], b: &[f32], out: &mut [f32]) -> bool {
    if !avx512::available() || b.is_empty() {
        return false;
    }
    assert!(z.len() == out.len() && z.len().is_multiple_of(b.len()));
    // SAFETY: AVX-512F checked; the lengths were checked above.
    unsafe { avx512::bias_act_grad(a, z, b, out) };
    true
}

/// [`layer`] with row-major weights, packed on the way into a per-thread buffer (for
/// callers that do not keep packed weights). Returns false, doing nothing, where the fused
/// kernel is not available.
#[allow(clippy::too_many_arguments)]
pub fn layer_unpacked(
    dst: &mut [f32],
    src: &[f32],
    m: usize,
    w: &[f32],
    k: usize,
    n: usize,
    bias: &[f32],
    act: Option<Activation>,
) -> bool {
    if !avx512::available() {
        return false;
    }
    thread_local! {
        static PACKED: std::cell::RefCell<PackedF32> = std::cell::RefCell::default();
    }
    PACKED.with_borrow_mut(|p| {
        p.repack(w, k, n);
        layer(dst, src, m, p, bias, act);
    });
    true
}

/// `dst[r·n + j] = act(Σₖ src[r·k + k'] · W[k'][j] + b[j])` for r < m (row-major, dense),
/// no activation when `act` is None.
pub fn layer(
    dst: &mut [f32],
    src: &[f32],
    m: usize,
    w: &PackedF32,
    bias: &[f32],
    act: Option<Activation>,
) {
    let (k, n) = (w.k, w.n);
    assert!(
        src.len() >= m * k && dst.len() >= m * n && bias.len() >= n,
        "layer sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if w.fused() {
        // SAFETY: AVX-512F was detected when `w` was packed; sizes checked above.
        unsafe { avx512::layer(dst, src, m, w, bias, act) };
        return;
    }
    crate::linalg::matmul(
        &mut dst[..m * n],
        crate::linalg::View::rm(&src[..m * k], m, k),
        crate::linalg::View::rm(&w.plain, k, n),
        false,
    );
    for row in dst[..m * n].chunks_exact_mut(n) {
        for (v, b) in row.iter_mut().zip(bias) {
            let z = *v + *b;
            *v = match act {
                Some(a) => crate::backend::cpu::ensemble::act(a, z),
                None => z,
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedF32, MR, PANEL};
    use crate::backend::Activation;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::env::var_os("MBRL_NO_AVX512").is_none_or(|v| v == "0")
                && is_x86_feature_detected!("avx512f")
        })
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn layer(
        dst: &mut [f32],
        src: &[f32],
        m: usize,
        w: &PackedF32,
        bias: &[f32],
        act: Option<Activation>,
    ) {
        match act {
            None => layer_with::<0>(dst, src, m, w, bias),
            Some(Activation::Silu) => layer_with::<1>(dst, src, m, w, bias),
            Some(Activation::Relu) => layer_with::<2>(dst, src, m, w, bias),
            Some(Activation::Tanh) => layer_with::<3>(dst, src, m, w, bias),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn layer_with<const ACT: u8>(
        dst: &mut [f32],
        src: &[f32],
        m: usize,
        w: &PackedF32,
        bias: &[f32],
    ) {
        let (k, n) = (w.k, w.n);
        // Panel by panel, all rows: the panel (k × 32 weights) stays in L1 while the rows
        // stream past it.
        for p in 0..n.div_ceil(PANEL) {
            let mut r = 0;
            while r + MR <= m {
                rows::<MR, ACT>(dst, src, r, k, n, w, bias, p);
                r += MR;
            }
            match m - r {
                0 => {}
                1 => rows::<1, ACT>(dst, src, r, k, n, w, bias, p),
                2 => rows::<2, ACT>(dst, src, r, k, n, w, bias, p),
                3 => rows::<3, ACT>(dst, src, r, k, n, w, bias, p),
                4 => rows::<4, ACT>(dst, src, r, k, n, w, bias, p),
                5 => rows::<5, ACT>(dst, src, r, k, n, w, bias, p),
                6 => rows::<6, ACT>(dst, src, r, k, n, w, bias, p),
                7 => rows::<7, ACT>(dst, src, r, k, n, w, bias, p),
                8 => rows::<8, ACT>(dst, src, r, k, n, w, bias, p),
                9 => rows::<9, ACT>(dst, src, r, k, n, w, bias, p),
                10 => rows::<10, ACT>(dst, src, r, k, n, w, bias, p),
                _ => rows::<11, ACT>(dst, src, r, k, n, w, bias, p),
            }
        }
    }

    /// Rows r0..r0+R of panel p of the layer, as R × 2 accumulators.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize, const ACT: u8>(
        dst: &mut [f32],
        src: &[f32],
        r0: usize,
        k: usize,
        n: usize,
        w: &PackedF32,
        bias: &[f32],
        p: usize,
    ) {
        let a = src.as_ptr().add(r0 * k);
        let d = dst.as_mut_ptr().add(r0 * n);
        {
            let c0 = p * PANEL;
            let cols = (n - c0).min(PANEL);
            let b = w.panels.as_ptr().add(p * k * PANEL);
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            if cols > 16 {
                for kk in 0..k {
                    let b0 = _mm512_loadu_ps(b.add(kk * PANEL));
                    let b1 = _mm512_loadu_ps(b.add(kk * PANEL + 16));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*a.add(i * k + kk));
                        acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                    }
                }
            } else {
                // A last panel of at most 16 columns: half the work.
                for kk in 0..k {
                    let b0 = _mm512_loadu_ps(b.add(kk * PANEL));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*a.add(i * k + kk));
                        acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                    }
                }
            }
            let halves = cols.div_ceil(16);
            for h in 0..halves {
                let left = cols - 16 * h;
                let mask: __mmask16 = if left >= 16 {
                    0xffff
                } else {
                    (1u16 << left) - 1
                };
                let bv = _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(c0 + 16 * h));
                for (i, acc) in acc.iter().enumerate() {
                    let z = _mm512_add_ps(acc[h], bv);
                    let y = match ACT {
                        0 => z,
                        1 => act(Activation::Silu, z),
                        2 => act(Activation::Relu, z),
                        _ => act(Activation::Tanh, z),
                    };
                    _mm512_mask_storeu_ps(d.add(i * n + c0 + 16 * h), mask, y);
                }
            }
        }
    }

    /// e^x with the reduction and polynomial of [`crate::fastmath::exp_f32`] (relative error
    /// ≤ 3e-7), 2ⁿ applied by `vscalefps`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
            _mm512_set1_ps(88.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// 1/d from the 14-bit estimate and one Newton step (relative error ≈ 2⁻²⁸).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn recip(d: __m512) -> __m512 {
        let r = _mm512_rcp14_ps(d);
        _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)))
    }

    /// See [`super::bias_act_grad`]; σ and 1/d as in [`act`].
    ///
    /// # Safety
    /// AVX-512F must be available; `z` and `out` hold the same whole number of rows of
    /// `b.len()` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn bias_act_grad(a: Activation, z: &mut [f32], b: &[f32], out: &mut [f32]) {
        let n = b.len();
        let (one, zero) = (_mm512_set1_ps(1.0), _mm512_setzero_ps());
        for (zr, or) in z.chunks_exact_mut(n).zip(out.chunks_exact_mut(n)) {
            for c in (0..n).step_by(16) {
                let mask: __mmask16 = if n - c >= 16 { !0 } else { (1 << (n - c)) - 1 };
                let x = _mm512_add_ps(
                    _mm512_maskz_loadu_ps(mask, zr.as_ptr().add(c)),
                    _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c)),
                );
                let (o, g) = match a {
                    // z·σ and σ·(1 + z·(1 − σ))
                    Activation::Silu => {
                        let s = recip(_mm512_add_ps(one, exp(_mm512_sub_ps(zero, x))));
                        let g = _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one));
                        (_mm512_mul_ps(x, s), g)
                    }
                    Activation::Relu => {
                        let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, zero);
                        (_mm512_max_ps(x, zero), _mm512_maskz_mov_ps(pos, one))
                    }
                    Activation::Tanh => {
                        let t = act(Activation::Tanh, x);
                        (t, _mm512_fnmadd_ps(t, t, one))
                    }
                };
                _mm512_mask_storeu_ps(or.as_mut_ptr().add(c), mask, o);
                _mm512_mask_storeu_ps(zr.as_mut_ptr().add(c), mask, g);
            }
        }
    }

    /// The hidden activations of [`crate::backend::cpu::ensemble`], 16 lanes at a time.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn act(a: Activation, z: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        match a {
            // z·σ(z), σ(z) = 1 / (1 + e^−z)
            Activation::Silu => {
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), z));
                _mm512_mul_ps(z, recip(_mm512_add_ps(one, e)))
            }
            Activation::Relu => _mm512_max_ps(z, _mm512_setzero_ps()),
            // tanh z = 1 − 2 / (1 + e^{2z})
            Activation::Tanh => {
                let e = exp(_mm512_add_ps(z, z));
                _mm512_fnmadd_ps(_mm512_set1_ps(2.0), recip(_mm512_add_ps(one, e)), one)
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub fn available() -> bool {
        false
    }
    pub unsafe fn bias_act_grad(
        _: crate::backend::Activation,
        _: &mut [f32],
        _: &[f32],
        _: &mut [f32],
    ) {
        unreachable!("no AVX-512 off x86-64")
    }
    pub unsafe fn layer(
        _: &mut [f32],
        _: &[f32],
        _: usize,
        _: &super::PackedF32,
        _: &[f32],
        _: Option<crate::backend::Activation>,
    ) {
        unreachable!("no AVX-512 off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::act as act_avx512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::normal;

    /// Against an f64 reference: |Δ| ≤ γ_k·(Σ|a·w| + |b|) for the sum, then the activation's
    /// slope times that plus its own error (3e-7 relative for exp, 2⁻²⁸ for the reciprocal).
    #[test]
    fn fused_layers_should_match_an_f64_reference_at_awkward_sizes() {
        for (m, k, n) in [
            (1, 5, 8),
            (7, 13, 33),
            (9, 200, 200),
            (17, 64, 64),
            (3, 1, 1),
        ] {
            for act in [
                None,
                Some(Activation::Silu),
                Some(Activation::Tanh),
                Some(Activation::Relu),
            ] {
                let a: Vec<f32> = (0..m * k).map(|i| normal(1, 1, i as u32, 0)).collect();
                let w: Vec<f32> = (0..k * n)
                    .map(|i| 0.3 * normal(1, 2, i as u32, 0))
                    .collect();
                let b: Vec<f32> = (0..n).map(|i| 0.1 * normal(1, 3, i as u32, 0)).collect();
                let p = PackedF32::new(&w, k, n);
                let mut dst = vec![f32::NAN; m * n];
                layer(&mut dst, &a, m, &p, &b, act);
                let eps = f64::from(f32::EPSILON) / 2.0;
                let gamma = (k + 1) as f64 * eps / (1.0 - (k + 1) as f64 * eps);
                for i in 0..m {
                    for j in 0..n {
                        let (mut z, mut s) = (b[j] as f64, (b[j] as f64).abs());
                        for kk in 0..k {
                            let t = a[i * k + kk] as f64 * w[kk * n + j] as f64;
                            z += t;
                            s += t.abs();
                        }
                        let (want, bound) = match act {
                            None => (z, gamma * s),
                            Some(Activation::Relu) => (z.max(0.0), gamma * s),
                            Some(Activation::Silu) => {
                                let y = z / (1.0 + (-z).exp());
                                (y, 1.1 * gamma * s + 1e-6 * y.abs() + 1e-30)
                            }
                            Some(Activation::Tanh) => {
                                let y = z.tanh();
                                (y, gamma * s + 1e-6 + 1e-30)
                            }
                        };
                        let got = dst[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= bound,
                            "{m}x{k}x{n} {act:?} [{i},{j}]: {got} vs {want} (bound {bound:e})"
                        );
                    }
                }
            }
        }
        if !avx512::available() {
            eprintln!("no AVX-512 here: only the fallback path was checked");
        }
    }

    /// The training epilogue against f64 at x = z + b (the f32 sum, as the kernel forms it):
    /// act(x) and act'(x) within the errors of exp (3e-7) and the reciprocal (2⁻²⁸) carried
    /// through a few roundings, bounded by the magnitudes of the terms that are summed.
    #[test]
    fn the_bias_activation_epilogue_should_match_an_f64_reference() {
        if !avx512::available() {
            eprintln!("skipped: no AVX-512F on this CPU (the scalar loop runs instead)");
            return;
        }
        for n in [1, 15, 16, 17, 200] {
            let rows = 3;
            for a in [Activation::Silu, Activation::Tanh, Activation::Relu] {
                let z0: Vec<f32> = (0..rows * n)
                    .map(|i| 4.0 * normal(2, 1, i as u32, 0))
                    .collect();
                let b: Vec<f32> = (0..n).map(|i| normal(2, 2, i as u32, 0)).collect();
                let (mut z, mut out) = (z0.clone(), vec![f32::NAN; rows * n]);
                assert!(bias_act_grad(a, &mut z, &b, &mut out));
                for i in 0..rows * n {
                    let x = (z0[i] + b[i % n]) as f64;
                    let (y, g, by, bg) = match a {
                        Activation::Silu => {
                            let s = 1.0 / (1.0 + (-x).exp());
                            let g = s * (1.0 + x * (1.0 - s));
                            let mag = s * (1.0 + x.abs() * (1.0 - s));
                            (x * s, g, 2e-6 * (x * s).abs(), 4e-6 * mag)
                        }
                        Activation::Tanh => {
                            let t = x.tanh();
                            (t, 1.0 - t * t, 1e-6, 3e-6)
                        }
                        Activation::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }, 0.0, 0.0),
                    };
                    let (go, gg) = (out[i] as f64, z[i] as f64);
                    assert!(
                        (go - y).abs() <= by + 1e-30 && (gg - g).abs() <= bg + 1e-30,
                        "n {n} {a:?} [{i}] x {x}: act {go} vs {y}, slope {gg} vs {g}"
                    );
                }
            }
        }
    }
}
