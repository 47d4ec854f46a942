//! The f32 dense layer of the CPU backend, fused: `dst = act(src · W + b)` in one pass, the
//! bias and activation applied to the accumulators while they are still in registers.
//!
//! On CPUs with AVX-512 (detected at run time) the product runs in a register-blocked
//! micro-kernel: 12 rows × 32 columns of accumulators (24 zmm registers), one pass over k per
//! block, each step two 16-wide weight loads and 16 FMAs with the row values broadcast from
//! memory. The weights are packed once into panels of 32 columns (k-major, zero-padded), so
//! the loads are contiguous. Each output is Σₖ a·w summed in k order with FMA, then + b.
//! On CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 2/3, Intel before Skylake-X) the same
//! layouts run in an 8-lane micro-kernel of 6 × 16 accumulators (12 of the 16 ymm registers),
//! summing in the same order. Elsewhere the layer falls back to the `gemm` crate and a
//! separate bias/activation pass.
use crate::backend::Activation;

/// Which register-blocked kernel the fused layer runs on, chosen once at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// AVX-512F/DQ: 12 × 32 accumulators (`MBRL_NO_AVX512=1` skips it).
    Avx512,
    /// AVX2 + FMA: 6 × 16 accumulators (`MBRL_NO_AVX2=1` skips it).
    Avx2,
}

impl Simd {
    /// Whether this CPU (and the environment's opt-outs) allows the kernel.
    pub fn supported(self) -> bool {
        match self {
            Simd::Avx512 => avx512::available(),
            Simd::Avx2 => avx2::available(),
        }
    }
}

/// The widest fused kernel this process uses, None where only the fallback runs.
pub fn simd() -> Option<Simd> {
    [Simd::Avx512, Simd::Avx2]
        .into_iter()
        .find(|s| s.supported())
}

/// Where a layer's weights are read from: panel p's weight vectors for step kk are at
/// `base + p·panel + kk·step` (packed: `panel` = k·32, `step` = 32; row-major W [k, n]:
/// `panel` = 32, `step` = n); `padded` when every panel is readable to its full width (zero
/// or unused past column n), so only the stores need masks.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Weights {
    base: *const f32,
    k: usize,
    n: usize,
    panel: usize,
    step: usize,
    padded: bool,
}

impl Weights {
    fn packed(w: &PackedF32) -> Self {
        Self {
            base: w.panels.as_ptr(),
            k: w.k,
            n: w.n,
            panel: w.k * PANEL,
            step: PANEL,
            padded: true,
        }
    }

    fn row_major(w: &[f32], k: usize, n: usize) -> Self {
        Self {
            base: w.as_ptr(),
            k,
            n,
            panel: PANEL,
            step: n,
            padded: false,
        }
    }
}

/// Columns per packed panel (two 16-wide vectors).
const PANEL: usize = 32;
/// Rows per register block: 12 × 2 accumulators + 2 weight vectors + 1 broadcast fit the 32
/// zmm registers.
const MR: usize = 12;

/// W [k, n] packed into panels of `width` columns: panel p holds, for each k, columns
/// width·p..width·(p+1) (zero beyond n), contiguous. Width 32 for [`layer`] (two weight
/// vectors per k), 12 for [`layer_fm`] (the 12 weights a step broadcasts, one cache line).
#[derive(Clone, Debug)]
pub struct PackedF32 {
    pub k: usize,
    pub n: usize,
    width: usize,
    panels: Vec<f32>,
    /// Row-major W for the fallback path.
    plain: Vec<f32>,
}

/// Empty, packed for [`layer`] (row-major activations) once filled by [`PackedF32::repack`].
impl Default for PackedF32 {
    fn default() -> Self {
        Self {
            k: 0,
            n: 0,
            width: PANEL,
            panels: Vec::new(),
            plain: Vec::new(),
        }
    }
}

impl PackedF32 {
    /// Packed for [`layer`] (row-major activations).
    pub fn new(w: &[f32], k: usize, n: usize) -> Self {
        let mut p = Self::default();
        p.repack(w, k, n);
        p
    }

    /// Packed for [`layer_fm`] (feature-major activations).
    pub fn feature_major(w: &[f32], k: usize, n: usize) -> Self {
        let mut p = Self {
            width: MR,
            ..Self::default()
        };
        p.repack(w, k, n);
        p
    }

    /// Pack `w` [k, n] into this value, reusing its memory and keeping its layout (a default
    /// value packs for [`layer`]).
    pub fn repack(&mut self, w: &[f32], k: usize, n: usize) {
        assert_eq!(w.len(), k * n, "weight matrix size");
        let same_shape = (self.k, self.n) == (k, n);
        (self.k, self.n) = (k, n);
        if simd().is_none() {
            self.panels.clear();
            self.plain.clear();
            self.plain.extend_from_slice(w);
            return;
        }
        let width = self.width;
        let np = n.div_ceil(width);
        // Refilled in place when the shape is unchanged (the forward repacks every call): the
        // copy below writes the same cells each time, so the padding past column n is still
        // zero, and zeroing the whole buffer first would be a second pass over it.
        if !same_shape || self.panels.len() != np * k * width {
            self.panels.clear();
            self.panels.resize(np * k * width, 0.0);
        }
        for p in 0..np {
            let cols = width.min(n - p * width);
            for kk in 0..k {
                self.panels[(p * k + kk) * width..][..cols]
                    .copy_from_slice(&w[kk * n + p * width..][..cols]);
            }
        }
    }

    /// Whether a register-blocked kernel runs (AVX-512 or AVX2 present).
    pub fn fused(&self) -> bool {
        !self.panels.is_empty()
    }
}

/// Batch rows per panel of the feature-major layout.
pub const FM_ROWS: usize = PANEL;

/// Floats a feature-major block of `m` rows × `width` features takes: panels of 32 rows,
/// [⌈m/32⌉][width][32], the rows past m of the last panel unused.
pub fn fm_len(m: usize, width: usize) -> usize {
    m.div_ceil(FM_ROWS) * FM_ROWS * width
}

/// Row-major `x` [m, d] into the feature-major `dst` ([`fm_len`]`(m, d)`).
pub fn to_fm(dst: &mut [f32], x: &[f32], m: usize, d: usize) {
    assert!(x.len() >= m * d && dst.len() >= fm_len(m, d), "to_fm sizes");
    for (q, panel) in dst
        .chunks_exact_mut(FM_ROWS * d)
        .take(m.div_ceil(FM_ROWS))
        .enumerate()
    {
        let rows = FM_ROWS.min(m - q * FM_ROWS);
        let x = &x[q * FM_ROWS * d..][..rows * d];
        for (j, col) in panel.chunks_exact_mut(FM_ROWS).enumerate() {
            for (r, v) in col[..rows].iter_mut().enumerate() {
                *v = x[r * d + j];
            }
        }
    }
}

/// Features j0..j0+d of the feature-major `src` (`m` rows × `width` features) into the
/// row-major `dst` [m, d].
pub fn from_fm(dst: &mut [f32], src: &[f32], m: usize, width: usize, j0: usize, d: usize) {
    assert!(
        j0 + d <= width && dst.len() >= m * d && src.len() >= fm_len(m, width),
        "from_fm sizes"
    );
    for (q, panel) in src
        .chunks_exact(FM_ROWS * width)
        .take(m.div_ceil(FM_ROWS))
        .enumerate()
    {
        let rows = FM_ROWS.min(m - q * FM_ROWS);
        let dst = &mut dst[q * FM_ROWS * d..][..rows * d];
        let panel = &panel[j0 * FM_ROWS..][..d * FM_ROWS];
        // Row by row: contiguous stores, the loads 32 apart (in L1).
        for (r, row) in dst.chunks_exact_mut(d).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = panel[j * FM_ROWS + r];
            }
        }
    }
}

/// [`layer`] on feature-major activations (see [`fm_len`]): `dst` [m, n] = act(`src` [m, k] ·
/// W + b), W packed by [`PackedF32::feature_major`]. The same sums in the same order as
/// [`layer`] (Σₖ in k order with FMA, then + b), so the same bits; the batch rows run along
/// the vector lanes, so a layer's width costs no padding (200 = 16·12 + 8 features, where
/// [`layer`] pays 13 vectors for 12.5 and a half-empty last panel). Returns false, doing
/// nothing, where the fused kernel is not available (`w.fused()` false).
pub fn layer_fm(
    dst: &mut [f32],
    src: &[f32],
    m: usize,
    w: &PackedF32,
    bias: &[f32],
    act: Option<Activation>,
) -> bool {
    if !w.fused() {
        return false;
    }
    assert_eq!(w.width, MR, "weights packed for the row-major layer");
    let (k, n) = (w.k, w.n);
    assert!(
        src.len() >= fm_len(m, k) && dst.len() >= fm_len(m, n) && bias.len() >= n,
        "layer sizes"
    );
    if m == 0 || n == 0 {
        return true;
    }
    layer_fm_on(
        simd().expect("packed without a kernel"),
        dst,
        src,
        m,
        w,
        bias,
        act,
    );
    true
}

/// [`layer_fm`] on the kernel `s` (checked supported), sizes checked by the caller.
fn layer_fm_on(
    s: Simd,
    dst: &mut [f32],
    src: &[f32],
    m: usize,
    w: &PackedF32,
    bias: &[f32],
    act: Option<Activation>,
) {
    assert!(s.supported(), "{s:?} not available");
    // SAFETY: the kernel's instructions were detected above; the caller checked the sizes.
    unsafe {
        match s {
            Simd::Avx512 => avx512::layer_fm(dst, src, m, w, bias, act),
            Simd::Avx2 => avx2::layer_fm(dst, src, m, w, bias, act),
        }
    }
}

/// Whether a fused kernel runs here (AVX-512F, or AVX2 + FMA; see [`Simd`]).
pub fn fused_available() -> bool {
    simd().is_some()
}

/// The bf16 training forward's epilogue on AVX-512: with x = z + b (`b` added to every
/// row of `z`), `out = act(x)` and `z ← act'(x)` in one pass, 16 lanes at a time with the
/// inference layer's σ and Newton reciprocal (the compiler's own vectorisation of the
/// scalar specification stays at 8 lanes and divides). SiLU within (6e-7 + 8e-8·|x|)
/// relative of act and twice that of act' (the test below), far inside the 2⁻⁸ of the bf16
/// products that follow; f32 training keeps the scalar loop, bit for bit. Returns false, doing nothing, where AVX-512F is not
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

/// PETS's soft bounds of the log-variance over a block of values, in place: with h, l the
/// bounds of each value (`hi`, `lo` of the same length as `lv`), lv ← l + softplus(h −
/// softplus(h − lv) − l), the specification's `bound_logvar`, 16 (AVX-512) or 8 (AVX2)
/// lanes at a time with the kernels' softplus (the compiler's vectorisation of the scalar
/// form runs 8 lanes without fused multiply-adds: it was 5 % of the ensemble forward).
/// Returns false, doing nothing, where no fused kernel is available.
pub fn bound_logvar(lv: &mut [f32], hi: &[f32], lo: &[f32]) -> bool {
    let Some(s) = simd() else {
        return false;
    };
    bound_logvar_on(s, lv, hi, lo);
    true
}

fn bound_logvar_on(s: Simd, lv: &mut [f32], hi: &[f32], lo: &[f32]) {
    assert!(s.supported(), "{s:?} not available");
    assert!(
        hi.len() >= lv.len() && lo.len() >= lv.len(),
        "bound lengths"
    );
    // SAFETY: the kernel's instructions were detected above; lengths checked above.
    unsafe {
        match s {
            Simd::Avx512 => avx512::bound_logvar(lv, hi, lo),
            Simd::Avx2 => avx2::bound_logvar(lv, hi, lo),
        }
    }
}

/// [`layer`] with row-major weights W [k, n], read in place by the same kernel (the same
/// sums in the same order as the packed call, so the same bits): for callers whose weights
/// change between calls, where packing would cost a pass over them each time. Returns false,
/// doing nothing, where the fused kernel is not available.
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
    let Some(s) = simd() else {
        return false;
    };
    assert!(
        w.len() >= k * n && src.len() >= m * k && dst.len() >= m * n && bias.len() >= n,
        "layer sizes"
    );
    if m == 0 || n == 0 {
        return true;
    }
    // The kernels' loads past column n of a row-major W are masked off.
    layer_on(s, dst, src, m, Weights::row_major(w, k, n), bias, act);
    true
}

/// The row-major layer on the kernel `s` (checked supported), sizes checked by the caller.
fn layer_on(
    s: Simd,
    dst: &mut [f32],
    src: &[f32],
    m: usize,
    w: Weights,
    bias: &[f32],
    act: Option<Activation>,
) {
    assert!(s.supported(), "{s:?} not available");
    // SAFETY: the kernel's instructions were detected above; the caller checked the sizes
    // and that `w` describes k × n readable weights.
    unsafe {
        match s {
            Simd::Avx512 => avx512::layer(dst, src, m, w, bias, act),
            Simd::Avx2 => avx2::layer(dst, src, m, w, bias, act),
        }
    }
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
        assert_eq!(w.width, PANEL, "weights packed for the feature-major layer");
        let s = simd().expect("packed without a kernel");
        layer_on(s, dst, src, m, Weights::packed(w), bias, act);
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
/// `f::<ACT>(args)` with the activation as the kernels' const parameter (0 none, 1 SiLU,
/// 2 ReLU, 3 tanh), so each epilogue is compiled without a branch (both kernels' modules).
macro_rules! by_activation {
    ($act:expr, $f:ident($($arg:expr),*)) => {
        match $act {
            None => $f::<0>($($arg),*),
            Some(Activation::Silu) => $f::<1>($($arg),*),
            Some(Activation::Relu) => $f::<2>($($arg),*),
            Some(Activation::Tanh) => $f::<3>($($arg),*),
        }
    };
}

/// A kernel module's two entry points, `layer` (row-major) and `layer_fm` (feature-major),
/// each dispatching the activation to its module's `layer_with` / `layer_fm_with`, compiled
/// with the module's target features.
#[cfg(target_arch = "x86_64")]
macro_rules! entry_points {
    ($features:literal) => {
        #[target_feature(enable = $features)]
        pub(super) unsafe fn layer(
            dst: &mut [f32],
            src: &[f32],
            m: usize,
            w: Weights,
            bias: &[f32],
            act: Option<Activation>,
        ) {
            by_activation!(act, layer_with(dst, src, m, w, bias))
        }

        #[target_feature(enable = $features)]
        pub(super) unsafe fn layer_fm(
            dst: &mut [f32],
            src: &[f32],
            m: usize,
            w: &PackedF32,
            bias: &[f32],
            act: Option<Activation>,
        ) {
            by_activation!(act, layer_fm_with(dst, src, m, w, bias))
        }
    };
}

/// Whether the environment leaves a kernel on: `var` unset or "0".
#[cfg(target_arch = "x86_64")]
fn allowed(var: &str) -> bool {
    std::env::var_os(var).is_none_or(|v| v == "0")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedF32, Weights, MR, PANEL};
    use crate::backend::Activation;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            super::allowed("MBRL_NO_AVX512")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512dq")
        })
    }

    entry_points!("avx512f,avx512dq");

    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn layer_with<const ACT: u8>(
        dst: &mut [f32],
        src: &[f32],
        m: usize,
        w: Weights,
        bias: &[f32],
    ) {
        let (k, n) = (w.k, w.n);
        assert!(src.len() >= m * k && dst.len() >= m * n && bias.len() >= n);
        // Panel by panel, all rows: the panel (k × 32 weights) stays in L1 while the rows
        // stream past it.
        for p in 0..n.div_ceil(PANEL) {
            let mut r = 0;
            while r < m {
                let rows = MR.min(m - r);
                let a = src.as_ptr().add(r * k);
                let d = dst.as_mut_ptr().add(r * n + p * PANEL);
                let b = bias.as_ptr().add(p * PANEL);
                block::<ACT, false>(rows, a, k, d, n, w, p, b);
                r += rows;
            }
        }
    }

    /// See [`super::layer_fm`]: the roles of [`layer_with`] swapped. The 12 values a step
    /// broadcasts are 12 output features' weights (one 12-wide panel of W, k-major, one
    /// cache line per step), the two vectors are 32 batch rows of one input feature (a
    /// panel of the activations, contiguous), and the accumulators hold 12 features × 32
    /// rows of the output panel.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn layer_fm_with<const ACT: u8>(
        dst: &mut [f32],
        src: &[f32],
        m: usize,
        w: &PackedF32,
        bias: &[f32],
    ) {
        let (k, n) = (w.k, w.n);
        assert!(src.len() >= super::fm_len(m, k) && dst.len() >= super::fm_len(m, n));
        assert!(bias.len() >= n && w.panels.len() >= n.div_ceil(MR) * k * MR);
        // Activation panel by panel (k × 32 values, in L1), the weight panels streaming past.
        for q in 0..m.div_ceil(PANEL) {
            let x = Weights {
                base: src.as_ptr().add(q * PANEL * k),
                k,
                n: PANEL.min(m - q * PANEL),
                panel: 0,
                step: PANEL,
                padded: true,
            };
            let mut j = 0;
            while j < n {
                let feats = MR.min(n - j);
                let a = w.panels.as_ptr().add(j * k);
                let d = dst.as_mut_ptr().add((q * n + j) * PANEL);
                block::<ACT, true>(feats, a, MR, d, PANEL, x, 0, bias.as_ptr().add(j));
                j += feats;
            }
        }
    }

    /// One register block of `r` ≤ 12 rows, dispatched to its compiled size.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const ACT: u8, const FM: bool>(
        r: usize,
        a: *const f32,
        sa: usize,
        d: *mut f32,
        sd: usize,
        w: Weights,
        p: usize,
        b: *const f32,
    ) {
        match r {
            12 => rows::<12, ACT, FM>(a, sa, d, sd, w, p, b),
            1 => rows::<1, ACT, FM>(a, sa, d, sd, w, p, b),
            2 => rows::<2, ACT, FM>(a, sa, d, sd, w, p, b),
            3 => rows::<3, ACT, FM>(a, sa, d, sd, w, p, b),
            4 => rows::<4, ACT, FM>(a, sa, d, sd, w, p, b),
            5 => rows::<5, ACT, FM>(a, sa, d, sd, w, p, b),
            6 => rows::<6, ACT, FM>(a, sa, d, sd, w, p, b),
            7 => rows::<7, ACT, FM>(a, sa, d, sd, w, p, b),
            8 => rows::<8, ACT, FM>(a, sa, d, sd, w, p, b),
            9 => rows::<9, ACT, FM>(a, sa, d, sd, w, p, b),
            10 => rows::<10, ACT, FM>(a, sa, d, sd, w, p, b),
            _ => rows::<11, ACT, FM>(a, sa, d, sd, w, p, b),
        }
    }

    /// R × 2 accumulators: out(i, c) = act(Σₖ a(i, k)·w(k, c) + bias) for i < R and the
    /// (up to) 32 columns c of panel p of `w`. Row-major ([`layer_with`], FM false): a(i, k)
    /// at `a + i·sa + k`, out(i, c) at `d + i·sd + c`, the bias a vector over c. Feature-major
    /// ([`layer_fm_with`], FM true): a(i, k) at `a + k·sa + i` (a 12-wide weight panel), out
    /// at the same place, the bias one value per i.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn rows<const R: usize, const ACT: u8, const FM: bool>(
        a: *const f32,
        sa: usize,
        d: *mut f32,
        sd: usize,
        w: Weights,
        p: usize,
        bias: *const f32,
    ) {
        let k = w.k;
        let (si, sk) = if FM { (1, sa) } else { (sa, 1) };
        let cols = (w.n - p * PANEL).min(PANEL);
        let mask = |h: usize| -> __mmask16 {
            let left = cols.saturating_sub(16 * h);
            if left >= 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            }
        };
        let (m0, m1) = (mask(0), mask(1));
        let b = w.base.add(p * w.panel);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if cols > 16 {
            for kk in 0..k {
                let b0 = _mm512_maskz_loadu_ps(m0, b.add(kk * w.step));
                let b1 = _mm512_maskz_loadu_ps(m1, b.add(kk * w.step + 16));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(i * si + kk * sk));
                    acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                }
            }
        } else {
            // A last panel of at most 16 columns: half the work.
            for kk in 0..k {
                let b0 = _mm512_maskz_loadu_ps(m0, b.add(kk * w.step));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(i * si + kk * sk));
                    acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                }
            }
        }
        for h in 0..cols.div_ceil(16) {
            let mask = mask(h);
            let bv = (!FM).then(|| _mm512_maskz_loadu_ps(mask, bias.add(16 * h)));
            for (i, acc) in acc.iter().enumerate() {
                let bv = bv.unwrap_or_else(|| _mm512_set1_ps(*bias.add(i)));
                let z = _mm512_add_ps(acc[h], bv);
                let y = match ACT {
                    0 => z,
                    1 => act(Activation::Silu, z),
                    2 => act(Activation::Relu, z),
                    _ => act(Activation::Tanh, z),
                };
                _mm512_mask_storeu_ps(d.add(i * sd + 16 * h), mask, y);
            }
        }
    }

    /// e^x with the reduction and polynomial of [`crate::fastmath::exp_f32`] (relative error
    /// ≤ 3e-7), 2ⁿ applied by `vscalefps`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
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

    /// σ(z) = 1 / (1 + 2^t), t = −z·log₂e clamped to ±126, in 13 vector operations where
    /// e^−z by [`exp`] and the reciprocal took 18 (the epilogue is a fifth of a 64-wide
    /// layer's work): t = ⌊t⌋ + f with f ∈ [0, 1) by `vreduceps` (exact, one operation), 2^f by
    /// a degree-5 polynomial fitted for relative error on [0, 1) (1.6e-7 evaluated in f32),
    /// ⌊t⌋ applied by `vscalefps` (which floors its exponent operand itself), and the
    /// reciprocal as in [`recip`]. The roundings of t and of log₂e cost |z|·7.3e-8 relative in
    /// 2^t, which reaches σ as (1 − σ) times that: ≤ 3.5e-8 absolute in z·σ(z) (at z ≈ −2.4;
    /// up to 6e-6 relative where σ < 1e-20). The clamp keeps 2^t finite
    /// and normal (1 + 2^126 has a finite reciprocal; 2⁻¹²⁶ vanishes beside 1); it is one
    /// `vrangeps` (the smaller magnitude of t and 126, with t's sign); NaN propagates.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn sigmoid(z: __m512) -> __m512 {
        let t = _mm512_mul_ps(z, _mm512_set1_ps(-std::f32::consts::LOG2_E));
        let t = _mm512_range_ps::<0b0010>(t, _mm512_set1_ps(126.0));
        // imm8: keep 0 fraction bits, round down, suppress the precision exception.
        let f = _mm512_reduce_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
        let mut p = _mm512_set1_ps(0.001_877_567_8);
        for c in [
            0.008_989_342,
            0.055_826_34,
            0.240_153_6,
            0.693_153_1,
            0.999_999_94,
        ] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        recip(_mm512_add_ps(_mm512_set1_ps(1.0), _mm512_scalef_ps(p, t)))
    }

    /// ln(1 + y) for y ∈ [0, 1]: 2·atanh(s) with s = y / (2 + y) ∈ [0, ⅓], by its odd series to
    /// s¹³ (the next term is < 2e-9 of the sum); relative error ≤ 4e-7 with the reciprocal's
    /// and the roundings' few ulps (tested through [`softplus`]).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn ln_1p_unit(y: __m512) -> __m512 {
        let s = _mm512_mul_ps(y, recip(_mm512_add_ps(y, _mm512_set1_ps(2.0))));
        let s2 = _mm512_mul_ps(s, s);
        let mut p = _mm512_set1_ps(2.0 / 13.0);
        for c in [2.0 / 11.0, 2.0 / 9.0, 2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0, 2.0] {
            p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(c));
        }
        _mm512_mul_ps(p, s)
    }

    /// softplus(x) = max(x, 0) + ln(1 + e^−|x|), as the specification's [`crate::backend::cpu::softplus`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn softplus(x: __m512) -> __m512 {
        let neg_abs = _mm512_or_ps(x, _mm512_set1_ps(-0.0));
        let l = ln_1p_unit(exp(neg_abs));
        _mm512_add_ps(_mm512_max_ps(x, _mm512_setzero_ps()), l)
    }

    /// See [`super::bound_logvar`].
    ///
    /// # Safety
    /// AVX-512F/DQ must be available; `hi` and `lo` hold at least `lv.len()` values.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn bound_logvar(lv: &mut [f32], hi: &[f32], lo: &[f32]) {
        for c in (0..lv.len()).step_by(16) {
            let left = lv.len() - c;
            let mask: __mmask16 = if left >= 16 { !0 } else { (1 << left) - 1 };
            let x = _mm512_maskz_loadu_ps(mask, lv.as_ptr().add(c));
            let h = _mm512_maskz_loadu_ps(mask, hi.as_ptr().add(c));
            let l = _mm512_maskz_loadu_ps(mask, lo.as_ptr().add(c));
            let lv1 = _mm512_sub_ps(h, softplus(_mm512_sub_ps(h, x)));
            let y = _mm512_add_ps(l, softplus(_mm512_sub_ps(lv1, l)));
            _mm512_mask_storeu_ps(lv.as_mut_ptr().add(c), mask, y);
        }
    }

    /// 1/d from the 14-bit estimate and one Newton step (relative error ≈ 2⁻²⁸).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn recip(d: __m512) -> __m512 {
        let r = _mm512_rcp14_ps(d);
        _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)))
    }

    /// See [`super::bias_act_grad`]; σ and 1/d as in [`act`].
    ///
    /// # Safety
    /// AVX-512F must be available; `z` and `out` hold the same whole number of rows of
    /// `b.len()` values.
    #[target_feature(enable = "avx512f,avx512dq")]
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
                        let s = sigmoid(x);
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
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn act(a: Activation, z: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        match a {
            // z·σ(z)
            Activation::Silu => _mm512_mul_ps(z, sigmoid(z)),
            Activation::Relu => _mm512_max_ps(z, _mm512_setzero_ps()),
            // tanh z = 1 − 2 / (1 + e^{2z})
            Activation::Tanh => {
                let e = exp(_mm512_add_ps(z, z));
                _mm512_fnmadd_ps(_mm512_set1_ps(2.0), recip(_mm512_add_ps(one, e)), one)
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The fused layer on AVX2 + FMA: 8-lane vectors and 16 ymm registers, so register
    //! blocks of 6 rows × 16 columns (12 accumulators, 2 weight vectors, 1 broadcast), the
    //! 32-wide panels of the packing run as two halves. Each output is Σₖ a·w summed in k
    //! order with FMA, then + b, as the AVX-512 kernel sums it: the same bits before the
    //! activation, whose σ and e^x differ from the AVX-512 ones by a few ulps.
    use super::{PackedF32, Weights, MR, PANEL};
    use crate::backend::Activation;
    use std::arch::x86_64::*;

    /// Rows (outputs broadcast from) per register block.
    const RB: usize = 6;
    /// Columns (vector lanes) per register block: two 8-wide vectors.
    const CB: usize = 16;

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            super::allowed("MBRL_NO_AVX2")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
        })
    }

    entry_points!("avx2,fma");

    /// Half-panel by half-panel (k × 16 weights, in L1), all rows streaming past.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn layer_with<const ACT: u8>(
        dst: &mut [f32],
        src: &[f32],
        m: usize,
        w: Weights,
        bias: &[f32],
    ) {
        let (k, n) = (w.k, w.n);
        assert!(src.len() >= m * k && dst.len() >= m * n && bias.len() >= n);
        for c0 in (0..n).step_by(CB) {
            let b = w.base.add(c0 / PANEL * w.panel + c0 % PANEL);
            let cols = CB.min(n - c0);
            let mut r = 0;
            while r < m {
                let rows = RB.min(m - r);
                block::<ACT, false>(
                    rows,
                    src.as_ptr().add(r * k),
                    k,
                    dst.as_mut_ptr().add(r * n + c0),
                    n,
                    (b, w.step, k),
                    cols,
                    w.padded,
                    bias.as_ptr().add(c0),
                );
                r += rows;
            }
        }
    }

    /// See [`super::layer_fm`]: the roles swapped as in the AVX-512 kernel. The 6 values a
    /// step broadcasts are 6 output features' weights (half of a 12-wide panel), the two
    /// vectors are 16 batch rows of one input feature (half a panel of the activations).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn layer_fm_with<const ACT: u8>(
        dst: &mut [f32],
        src: &[f32],
        m: usize,
        w: &PackedF32,
        bias: &[f32],
    ) {
        let (k, n) = (w.k, w.n);
        assert!(src.len() >= super::fm_len(m, k) && dst.len() >= super::fm_len(m, n));
        assert!(bias.len() >= n && w.panels.len() >= n.div_ceil(MR) * k * MR);
        for q in 0..m.div_ceil(PANEL) {
            let x = src.as_ptr().add(q * PANEL * k);
            let valid = PANEL.min(m - q * PANEL);
            let mut j = 0;
            while j < n {
                let feats = RB.min(n - j);
                // Feature j is column j mod 12 of weight panel ⌊j / 12⌋.
                let a = w.panels.as_ptr().add(j / MR * MR * k + j % MR);
                for r0 in (0..valid).step_by(CB) {
                    // The activation panel holds 32 rows whatever m is: loads past the
                    // valid rows stay inside it (their lanes are never stored).
                    block::<ACT, true>(
                        feats,
                        a,
                        MR,
                        dst.as_mut_ptr().add((q * n + j) * PANEL + r0),
                        PANEL,
                        (x.add(r0), PANEL, k),
                        CB.min(valid - r0),
                        true,
                        bias.as_ptr().add(j),
                    );
                }
                j += feats;
            }
        }
    }

    /// One register block of `r` ≤ 6 rows, dispatched to its compiled size.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const ACT: u8, const FM: bool>(
        r: usize,
        a: *const f32,
        sa: usize,
        d: *mut f32,
        sd: usize,
        w: (*const f32, usize, usize),
        cols: usize,
        padded: bool,
        b: *const f32,
    ) {
        match r {
            6 => rows::<6, ACT, FM>(a, sa, d, sd, w, cols, padded, b),
            1 => rows::<1, ACT, FM>(a, sa, d, sd, w, cols, padded, b),
            2 => rows::<2, ACT, FM>(a, sa, d, sd, w, cols, padded, b),
            3 => rows::<3, ACT, FM>(a, sa, d, sd, w, cols, padded, b),
            4 => rows::<4, ACT, FM>(a, sa, d, sd, w, cols, padded, b),
            _ => rows::<5, ACT, FM>(a, sa, d, sd, w, cols, padded, b),
        }
    }

    /// Lanes i < n set.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mask(n: usize) -> __m256i {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes)
    }

    /// R × 2 accumulators: out(i, c) = act(Σₖ a(i, k)·w(k, c) + bias) for i < R and the
    /// `cols` ≤ 16 columns c at `w` = (base, step, k). Row-major (FM false): a(i, k) at
    /// `a + i·sa + k`, out(i, c) at `d + i·sd + c`, the bias a vector over c. Feature-major
    /// (FM true): a(i, k) at `a + k·sa + i`, the bias one value per i. Loads of w are
    /// masked past `cols` unless `padded` (then 16 columns are readable); stores always are.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const R: usize, const ACT: u8, const FM: bool>(
        a: *const f32,
        sa: usize,
        d: *mut f32,
        sd: usize,
        (b, step, k): (*const f32, usize, usize),
        cols: usize,
        padded: bool,
        bias: *const f32,
    ) {
        let (si, sk) = if FM { (1, sa) } else { (sa, 1) };
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(8)));
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let plain = padded || cols == CB;
        if cols > 8 && plain {
            for kk in 0..k {
                let b0 = _mm256_loadu_ps(b.add(kk * step));
                let b1 = _mm256_loadu_ps(b.add(kk * step + 8));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(i * si + kk * sk));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
        } else if cols > 8 {
            for kk in 0..k {
                let b0 = _mm256_loadu_ps(b.add(kk * step));
                let b1 = _mm256_maskload_ps(b.add(kk * step + 8), m1);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(i * si + kk * sk));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
        } else {
            // At most 8 columns: half the work.
            for kk in 0..k {
                let b0 = if padded || cols == 8 {
                    _mm256_loadu_ps(b.add(kk * step))
                } else {
                    _mm256_maskload_ps(b.add(kk * step), m0)
                };
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(i * si + kk * sk));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                }
            }
        }
        for h in 0..cols.div_ceil(8) {
            let (mask, full) = (if h == 0 { m0 } else { m1 }, cols >= 8 * (h + 1));
            let bv = (!FM).then(|| _mm256_maskload_ps(bias.add(8 * h), mask));
            for (i, acc) in acc.iter().enumerate() {
                let bv = bv.unwrap_or_else(|| _mm256_set1_ps(*bias.add(i)));
                let z = _mm256_add_ps(acc[h], bv);
                let y = if ACT == 2 {
                    act(Activation::Relu, z)
                } else {
                    z
                };
                let p = d.add(i * sd + 8 * h);
                if full {
                    _mm256_storeu_ps(p, y);
                } else {
                    _mm256_maskstore_ps(p, mask, y);
                }
            }
        }
        // SiLU and tanh in a second pass over the block just stored (in L1): applied to
        // the accumulators in registers, their constants and temporaries did not fit beside
        // them in the 16 ymm registers, and a 64 × 64 SiLU layer took 144 µs per 1000 rows
        // (median of five runs on a Zen 3, bimodal: 117–176) where this takes 124 (no
        // activation: 93–103). ReLU, one instruction, stays in the first.
        if ACT == 1 || ACT == 3 {
            for h in 0..cols.div_ceil(8) {
                let (mask, full) = (if h == 0 { m0 } else { m1 }, cols >= 8 * (h + 1));
                for i in 0..R {
                    let p = d.add(i * sd + 8 * h);
                    let z = if full {
                        _mm256_loadu_ps(p)
                    } else {
                        _mm256_maskload_ps(p, mask)
                    };
                    let y = if ACT == 1 {
                        act(Activation::Silu, z)
                    } else {
                        act(Activation::Tanh, z)
                    };
                    if full {
                        _mm256_storeu_ps(p, y);
                    } else {
                        _mm256_maskstore_ps(p, mask, y);
                    }
                }
            }
        }
    }

    /// e^x with the clamp, reduction and polynomial of the AVX-512 `exp` (relative error
    /// ≤ 3e-7); 2ⁿ is built in the exponent field, n ∈ [−126, 127] after the clamp, so it
    /// is always normal. NaN propagates (the clamps take x second).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_set1_ps(88.0),
            _mm256_max_ps(_mm256_set1_ps(-87.3), x),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        _mm256_mul_ps(p, pow2(n))
    }

    /// 2ⁿ for integral n ∈ [−126, 127], exactly, through the exponent field.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pow2(n: __m256) -> __m256 {
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
    }

    /// σ(z) = 1 / (1 + 2^t), t = −z·log₂e clamped to ±126, as the AVX-512 `sigmoid`: t =
    /// ⌊t⌋ + f, 2^f by the same degree-5 polynomial, 2^⌊t⌋ in the exponent field; f = t − ⌊t⌋
    /// rounds (by ≤ 2⁻²⁵, 2e-8 relative in 2^f) only for −1 < t < 0. The reciprocal is a
    /// division: the 12-bit estimate with a Newton step stays within the same bound but,
    /// with the other operations it took, was 5–20 % slower on 64-wide and k = 4 layers on
    /// a Zen 3 (README, the Zen 3 section).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn sigmoid(z: __m256) -> __m256 {
        let t = _mm256_mul_ps(z, _mm256_set1_ps(-std::f32::consts::LOG2_E));
        let t = _mm256_min_ps(
            _mm256_set1_ps(126.0),
            _mm256_max_ps(_mm256_set1_ps(-126.0), t),
        );
        let fl = _mm256_floor_ps(t);
        let f = _mm256_sub_ps(t, fl);
        let mut p = _mm256_set1_ps(0.001_877_567_8);
        for c in [
            0.008_989_342,
            0.055_826_34,
            0.240_153_6,
            0.693_153_1,
            0.999_999_94,
        ] {
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
        }
        let one = _mm256_set1_ps(1.0);
        _mm256_div_ps(one, _mm256_fmadd_ps(p, pow2(fl), one))
    }

    /// The hidden activations, 8 lanes at a time (see the AVX-512 `act`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn act(a: Activation, z: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        match a {
            Activation::Silu => _mm256_mul_ps(z, sigmoid(z)),
            Activation::Relu => _mm256_max_ps(z, _mm256_setzero_ps()),
            // tanh z = 1 − 2 / (1 + e^{2z})
            Activation::Tanh => {
                let e = exp(_mm256_add_ps(z, z));
                let r = _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(one, e));
                _mm256_sub_ps(one, r)
            }
        }
    }

    /// ln(1 + y) for y ∈ [0, 1], as the AVX-512 `ln_1p_unit` (2·atanh(y / (2 + y)) by its odd
    /// series), the quotient by division.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn ln_1p_unit(y: __m256) -> __m256 {
        let s = _mm256_div_ps(y, _mm256_add_ps(y, _mm256_set1_ps(2.0)));
        let s2 = _mm256_mul_ps(s, s);
        let mut p = _mm256_set1_ps(2.0 / 13.0);
        for c in [2.0 / 11.0, 2.0 / 9.0, 2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0, 2.0] {
            p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(c));
        }
        _mm256_mul_ps(p, s)
    }

    /// softplus(x) = max(x, 0) + ln(1 + e^−|x|).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softplus(x: __m256) -> __m256 {
        let neg_abs = _mm256_or_ps(x, _mm256_set1_ps(-0.0));
        let l = ln_1p_unit(exp(neg_abs));
        _mm256_add_ps(_mm256_max_ps(x, _mm256_setzero_ps()), l)
    }

    /// See [`super::bound_logvar`].
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `hi` and `lo` hold at least `lv.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bound_logvar(lv: &mut [f32], hi: &[f32], lo: &[f32]) {
        for c in (0..lv.len()).step_by(8) {
            let m = mask(lv.len() - c);
            let x = _mm256_maskload_ps(lv.as_ptr().add(c), m);
            let h = _mm256_maskload_ps(hi.as_ptr().add(c), m);
            let l = _mm256_maskload_ps(lo.as_ptr().add(c), m);
            let lv1 = _mm256_sub_ps(h, softplus(_mm256_sub_ps(h, x)));
            let y = _mm256_add_ps(l, softplus(_mm256_sub_ps(lv1, l)));
            _mm256_maskstore_ps(lv.as_mut_ptr().add(c), m, y);
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
    pub unsafe fn bound_logvar(_: &mut [f32], _: &[f32], _: &[f32]) {
        unreachable!("no AVX-512 off x86-64")
    }
    pub unsafe fn layer(
        _: &mut [f32],
        _: &[f32],
        _: usize,
        _: super::Weights,
        _: &[f32],
        _: Option<crate::backend::Activation>,
    ) {
        unreachable!("no AVX-512 off x86-64")
    }
    pub unsafe fn layer_fm(
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

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    pub fn available() -> bool {
        false
    }
    pub unsafe fn bound_logvar(_: &mut [f32], _: &[f32], _: &[f32]) {
        unreachable!("no AVX2 off x86-64")
    }
    pub unsafe fn layer(
        _: &mut [f32],
        _: &[f32],
        _: usize,
        _: super::Weights,
        _: &[f32],
        _: Option<crate::backend::Activation>,
    ) {
        unreachable!("no AVX2 off x86-64")
    }
    pub unsafe fn layer_fm(
        _: &mut [f32],
        _: &[f32],
        _: usize,
        _: &super::PackedF32,
        _: &[f32],
        _: Option<crate::backend::Activation>,
    ) {
        unreachable!("no AVX2 off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::act as act_avx512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::normal;

    /// Every fused kernel this CPU runs (both on an AVX-512 machine).
    fn kernels() -> Vec<Simd> {
        [Simd::Avx512, Simd::Avx2]
            .into_iter()
            .filter(|s| s.supported())
            .collect()
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

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
            (70, 24, 25),
            (33, 3, 13),
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
                let pf = PackedF32::feature_major(&w, k, n);
                let mut af = vec![f32::NAN; fm_len(m, k)];
                to_fm(&mut af, &a, m, k);
                let mut outs = vec![dst];
                for s in kernels() {
                    let mut packed = vec![f32::NAN; m * n];
                    layer_on(s, &mut packed, &a, m, Weights::packed(&p), &b, act);
                    // Row-major weights read in place (masked past column n): the same sums in
                    // the same order, so the same bits.
                    let mut rm = vec![f32::NAN; m * n];
                    layer_on(s, &mut rm, &a, m, Weights::row_major(&w, k, n), &b, act);
                    assert!(
                        same_bits(&rm, &packed),
                        "{s:?} {m}x{k}x{n} {act:?}: row-major and packed differ"
                    );
                    // Feature-major activations (batch rows along the lanes): the same sums in
                    // the same order again. The unused rows of the last panel are poisoned and
                    // must not leak into the rows read back, nor be written.
                    let mut df = vec![f32::NAN; fm_len(m, n)];
                    layer_fm_on(s, &mut df, &af, m, &pf, &b, act);
                    let mut back = vec![f32::NAN; m * n];
                    from_fm(&mut back, &df, m, n, 0, n);
                    assert!(
                        same_bits(&back, &packed),
                        "{s:?} {m}x{k}x{n} {act:?}: feature-major and packed differ"
                    );
                    for (q, panel) in df.chunks(FM_ROWS * n).enumerate() {
                        for (r, v) in panel.iter().enumerate() {
                            let row = q * FM_ROWS + r % FM_ROWS;
                            assert!(row < m || v.is_nan(), "{s:?}: unused row {row} written");
                        }
                    }
                    outs.push(packed);
                }
                for dst in &outs {
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
        }
        if kernels().is_empty() {
            eprintln!("no AVX-512 or AVX2 here: only the fallback path was checked");
        }
    }

    /// σ against f64 over a dense grid, the clamp's edges and beyond: relative error within
    /// the polynomial's 1.6e-7 and the reciprocal's and roundings' few ulps, plus t's own
    /// rounding and log₂e's (|z|·7.3e-8 relative in 2^t, scaled by 1 − σ); below z ≈ −87.3 the clamp holds
    /// σ at 2⁻¹²⁶ (as the old e^−z clamp did); NaN stays NaN.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_f32_sigmoid_should_stay_within_its_stated_bound() {
        if kernels().is_empty() {
            eprintln!("skipped: no AVX-512F/DQ or AVX2 on this CPU");
            return;
        }
        let mut zs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 5e-4).collect();
        zs.extend([
            -1e30, -500.0, -88.0, -87.4, 87.4, 88.0, 500.0, 1e30, 1e-30, -1e-30,
        ]);
        zs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
            0.0,
            -0.0,
        ]);
        for k in kernels() {
            for (&z, &s) in zs.iter().zip(&map(k, Fun::Sigmoid, &zs)) {
                let want = 1.0 / (1.0 + (-(z as f64)).exp());
                let zc = f64::from(z).clamp(-87.4, 87.4);
                let bound = want * (4e-7 + (1.0 - want) * zc.abs() * 8e-8) + 1.2e-38;
                assert!(
                    (s as f64 - want).abs() <= bound,
                    "{k:?} z {z}: {s} vs {want} (bound {bound:e})"
                );
            }
            let s = map(k, Fun::Silu, &[f32::NAN; 16]);
            assert!(s.iter().all(|v| v.is_nan()), "{k:?} SiLU(NaN) = {s:?}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    enum Fun {
        Sigmoid,
        Silu,
        Softplus,
    }

    #[cfg(target_arch = "x86_64")]
    /// One of the kernels' vector functions over `xs`, lane by lane.
    fn map(k: Simd, f: Fun, xs: &[f32]) -> Vec<f32> {
        use std::arch::x86_64::*;
        assert!(k.supported());
        let w = match k {
            Simd::Avx512 => 16,
            Simd::Avx2 => 8,
        };
        let mut out = vec![0.0f32; xs.len()];
        for (c, o) in xs.chunks(w).zip(out.chunks_mut(w)) {
            let (mut x, mut y) = ([0.0f32; 16], [0.0f32; 16]);
            x[..c.len()].copy_from_slice(c);
            // SAFETY: the kernel's instructions were checked above; both arrays hold 16 values.
            unsafe {
                match k {
                    Simd::Avx512 => {
                        let v = _mm512_loadu_ps(x.as_ptr());
                        let v = match f {
                            Fun::Sigmoid => avx512::sigmoid(v),
                            Fun::Silu => avx512::act(Activation::Silu, v),
                            Fun::Softplus => avx512::softplus(v),
                        };
                        _mm512_storeu_ps(y.as_mut_ptr(), v);
                    }
                    Simd::Avx2 => {
                        let v = _mm256_loadu_ps(x.as_ptr());
                        let v = match f {
                            Fun::Sigmoid => avx2::sigmoid(v),
                            Fun::Silu => avx2::act(Activation::Silu, v),
                            Fun::Softplus => avx2::softplus(v),
                        };
                        _mm256_storeu_ps(y.as_mut_ptr(), v);
                    }
                }
            }
            o.copy_from_slice(&y[..c.len()]);
        }
        out
    }

    /// The log-variance bounds against the f64 specification at lengths around the vector
    /// width, over raw values far inside, near and far outside the bounds: each softplus is
    /// within a few e-7 of its output's magnitude, and the sums add a few ulps of |h| and |l|.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_logvar_bounds_should_match_the_f64_specification() {
        if kernels().is_empty() {
            eprintln!("skipped: no AVX-512F/DQ or AVX2 on this CPU");
            return;
        }
        let sp = crate::backend::cpu::softplus::<f64>;
        // softplus itself over a dense grid (through ln(1 + y) at every y in (0, 1]); e^x is
        // held at e^−87.3 ≈ 1.2e-38 below, as the scalar specification holds it.
        let xs: Vec<f32> = (-400_000..=400_000).map(|i| i as f32 * 2.5e-4).collect();
        for k in kernels() {
            for (&x, &y) in xs.iter().zip(&map(k, Fun::Softplus, &xs)) {
                let want = sp(x as f64);
                assert!(
                    (y as f64 - want).abs() <= 8e-7 * want + 1.3e-38,
                    "{k:?} softplus({x}) = {y} vs {want}"
                );
            }
        }
        for len in [1, 15, 16, 17, 40, 257] {
            let raw: Vec<f32> = (0..len)
                .map(|i| 12.0 * normal(5, 1, i as u32, 0) - 4.0)
                .collect();
            let hi: Vec<f32> = (0..len)
                .map(|i| 0.5 + 0.3 * normal(5, 2, i as u32, 0))
                .collect();
            let lo: Vec<f32> = (0..len)
                .map(|i| -10.0 + normal(5, 3, i as u32, 0))
                .collect();
            for k in kernels() {
                let mut got = raw.clone();
                bound_logvar_on(k, &mut got, &hi, &lo);
                for i in 0..len {
                    let (x, h, l) = (raw[i] as f64, hi[i] as f64, lo[i] as f64);
                    let lv1 = h - sp(h - x);
                    let want = l + sp(lv1 - l);
                    let bound = 1e-6 * (1.0 + x.abs().min(h.abs() + l.abs()) + h.abs() + l.abs());
                    assert!(
                        (got[i] as f64 - want).abs() <= bound,
                        "{k:?} len {len} [{i}] raw {x} in [{l}, {h}]: {} vs {want}",
                        got[i]
                    );
                }
            }
        }
    }

    /// The training epilogue against f64 at x = z + b (the f32 sum, as the kernel forms it):
    /// act(x) and act'(x) within the errors of σ (see `sigmoid`), exp (3e-7) and the
    /// reciprocal (2⁻²⁸) carried through a few roundings, bounded by the magnitudes of the terms that are summed.
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
                            // σ's relative error (see `sigmoid`) and a few roundings.
                            let e = 6e-7 + 8e-8 * x.abs();
                            (x * s, g, e * (x * s).abs(), 2.0 * e * mag)
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
