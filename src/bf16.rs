//! bf16 products with f32 accumulation for the CPU planner: weights and layer inputs rounded
//! to bfloat16 (8 significant bits), every product summed in f32.
//!
//! On CPUs with Intel AMX (Sapphire Rapids and later; `amx-tile` + `amx-bf16`, and the
//! kernel's permission for tile data) the products run on the tile unit (`tdpbf16ps`: a
//! 16×16 f32 tile += a 16×32 bf16 tile · a 32×16 bf16 tile in one instruction), which has
//! many times the multiply-add rate of AVX-512 f32 FMAs. Everywhere else the same numbers are
//! computed with the f32 GEMM on bf16-rounded operands, so the bf16 mode gives the same
//! results up to summation order on any x86-64; detection is at run time.
//!
//! Accuracy (checked in the tests): with u = 2⁻⁸ (bf16's unit roundoff, round to nearest
//! even), each rounded operand carries a relative error ≤ u, so a product a·w carries
//! ≤ 2u + u², and the f32 sum of K products adds ≤ γ_K = K·2⁻²⁴/(1 − K·2⁻²⁴) of Σ|a·w|:
//!
//! |ŷ − y| ≤ (2u + u² + γ_K) · Σ_k |a_k·w_k|  (+ 2⁻¹²⁶·K for the tile unit's flush of
//! subnormals to zero).
use crate::backend::Activation;
/// bf16's unit roundoff (8 significant bits, round to nearest even).
pub const UNIT_ROUNDOFF: f64 = 1.0 / 256.0;

/// Round to the nearest bf16 (ties to even), as bits, exactly as the hardware's
/// `vcvtneps2bf16` does: NaN stays NaN (made quiet), and a subnormal input becomes zero of
/// its sign (the instruction treats subnormals as zero whatever MXCSR says; the tile unit
/// and `vdpbf16ps` would read a subnormal bf16 as zero anyway, so this changes no product
/// above 2⁻¹²⁶ of a weight). One definition for the scalar code and every vector path.
#[inline(always)]
pub fn to_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x40;
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16 and widened back to f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    f32::from_bits((to_bits(x) as u32) << 16)
}

/// Tile geometry: a tile row holds 64 bytes (32 bf16 or 16 f32), a tile 16 rows.
pub const TILE_M: usize = 16;
pub const TILE_N: usize = 16;
pub const TILE_K: usize = 32;

/// Which unit computes the bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX512-BF16 dot products (`vdpbf16ps`: two bf16 products per f32 lane), for CPUs
    /// with bf16 vector instructions but no AMX (AMD Zen 4/5, Intel Cooper Lake).
    Avx512Bf16,
    /// bf16-rounded operands through the f32 GEMM.
    Portable,
}

impl Path {
    /// The path bf16 planning uses here: AMX where present, else the portable one.
    /// `MBRL_BF16_PATH=amx|avx512bf16|portable` chooses one explicitly (if available).
    ///
    /// The AVX512-BF16 path is not chosen by itself: on the 2-core Xeon we measure on,
    /// `vdpbf16ps` issues at the rate of the f32 FMAs it replaces (two products per lane,
    /// one port), and the cart-pole planning step took 792 ms against 532 ms in f32. It is
    /// here, tested, to be measured on CPUs with bf16 vectors but no AMX (AMD Zen 4/5).
    pub fn best() -> Self {
        static BEST: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let asked = std::env::var("MBRL_BF16_PATH").ok();
            let asked = match asked.as_deref() {
                Some("amx") => Some(Path::Amx),
                Some("avx512bf16") => Some(Path::Avx512Bf16),
                Some("portable") => Some(Path::Portable),
                _ => None,
            };
            match asked {
                Some(p) if p.available() => p,
                _ if amx::available() => Path::Amx,
                _ => Path::Portable,
            }
        })
    }

    pub fn available(self) -> bool {
        match self {
            Path::Amx => amx::available(),
            Path::Avx512Bf16 => avx512::available(),
            Path::Portable => true,
        }
    }
}

/// A weight matrix W [k, n] (row-major, `y = x·W`) prepared once per model update: on AMX in
/// the tile unit's pair-interleaved layout, with AVX512-BF16 in 32-column panels of k-pairs,
/// elsewhere as bf16-rounded f32.
#[derive(Clone, Debug, Default)]
pub struct Packed {
    pub k: usize,
    pub n: usize,
    /// AMX: blocks of 16 (k-pairs) × 32 (16 columns × 2) bf16, ordered by column block,
    /// then k block; zero beyond k and n.
    tiles: Vec<u16>,
    /// AVX512-BF16: panels of 32 columns; within a panel, for each pair of k rows, the 32
    /// columns' (W[2p][c], W[2p+1][c]) pairs; zero beyond k and n.
    pairs: Vec<u16>,
    /// Portable: W rounded to bf16, row-major [k, n].
    rounded: Vec<f32>,
}

impl Packed {
    /// k padded to whole tiles.
    pub fn kp(&self) -> usize {
        self.k.div_ceil(TILE_K) * TILE_K
    }
    /// n padded to whole tiles.
    pub fn np(&self) -> usize {
        self.n.div_ceil(TILE_N) * TILE_N
    }

    /// Packed for the fastest path this CPU offers ([`Path::best`]).
    pub fn new(w: &[f32], k: usize, n: usize) -> Self {
        Self::for_path(w, k, n, Path::best())
    }

    /// k rounded up to whole pairs (the AVX512-BF16 layout's row length of bf16 inputs).
    fn k2(&self) -> usize {
        self.k.div_ceil(2) * 2
    }

    /// Packed for `path`, which must be available here.
    pub fn for_path(w: &[f32], k: usize, n: usize, path: Path) -> Self {
        assert_eq!(w.len(), k * n, "weight matrix size");
        assert!(path.available(), "{path:?} is not available here");
        let mut p = Packed {
            k,
            n,
            ..Default::default()
        };
        if path == Path::Avx512Bf16 {
            let (kp, np) = (k.div_ceil(2), n.div_ceil(32));
            p.pairs = vec![0u16; np * kp * 64];
            for pn in 0..np {
                for pr in 0..kp {
                    for c in 0..32 {
                        for j in 0..2 {
                            let (r, col) = (2 * pr + j, pn * 32 + c);
                            if r < k && col < n {
                                p.pairs[((pn * kp + pr) * 32 + c) * 2 + j] =
                                    to_bits(w[r * n + col]);
                            }
                        }
                    }
                }
            }
        } else if path == Path::Amx {
            let (kb, nb) = (p.kp() / TILE_K, p.np() / TILE_N);
            p.tiles = vec![0u16; kb * nb * TILE_K * TILE_N];
            for jb in 0..nb {
                for ib in 0..kb {
                    let block = &mut p.tiles[(jb * kb + ib) * TILE_K * TILE_N..][..TILE_K * TILE_N];
                    for kk in 0..TILE_K / 2 {
                        for c in 0..TILE_N {
                            for pair in 0..2 {
                                let (r, col) = (ib * TILE_K + 2 * kk + pair, jb * TILE_N + c);
                                if r < k && col < n {
                                    block[kk * 2 * TILE_N + 2 * c + pair] = to_bits(w[r * n + col]);
                                }
                            }
                        }
                    }
                }
            }
        } else {
            p.rounded = w.iter().map(|&v| round(v)).collect();
        }
        p
    }
}

/// Scratch for [`matmul`]: the bf16 input and the f32 product, grown as needed.
#[derive(Default)]
pub struct Scratch {
    a: Vec<u16>,
    a_f32: Vec<f32>,
}

/// `dst[m × n] = round_bf16(src[m × k]) · W` (f32 result, row-major, `dst` of length ≥ m·n).
pub fn matmul(dst: &mut [f32], src: &[f32], m: usize, w: &Packed, s: &mut Scratch) {
    let (k, n) = (w.k, w.n);
    assert!(src.len() >= m * k && dst.len() >= m * n, "matmul sizes");
    if m == 0 || n == 0 {
        return;
    }
    if !w.pairs.is_empty() {
        let k2 = w.k2();
        if s.a.len() < m * k2 {
            s.a.resize(m * k2, 0);
        }
        for r in 0..m {
            let row = &mut s.a[r * k2..(r + 1) * k2];
            for (d, v) in row.iter_mut().zip(&src[r * k..(r + 1) * k]) {
                *d = to_bits(*v);
            }
            row[k..].fill(0);
        }
        // SAFETY: AVX512-BF16 was available when `w` was packed; `s.a` holds m rows of k2
        // bf16 values, `dst` m rows of n.
        unsafe { avx512::dot_gemm(&s.a, k2, w, dst, n, m) };
        return;
    }
    if !w.tiles.is_empty() {
        let kp = w.kp();
        let mp = m.div_ceil(TILE_M) * TILE_M;
        if s.a.len() < mp * kp {
            s.a.resize(mp * kp, 0);
        }
        for r in 0..mp {
            let row = &mut s.a[r * kp..(r + 1) * kp];
            if r < m {
                for (d, v) in row.iter_mut().zip(&src[r * k..(r + 1) * k]) {
                    *d = to_bits(*v);
                }
                row[k..].fill(0);
            } else {
                // Padding rows: finite, so nothing undefined reaches the tile unit.
                row.fill(0);
            }
        }
        // SAFETY: `available()` held when `w` was packed; `s.a` holds mp·kp inputs, the
        // weights kp/32 × np/16 blocks, and `dst` m rows of n outputs.
        unsafe { amx::gemm_into(&s.a, kp, &w.tiles, dst, n, m, n, kp / TILE_K) };
    } else {
        if s.a_f32.len() < m * k {
            s.a_f32.resize(m * k, 0.0);
        }
        for (d, v) in s.a_f32[..m * k].iter_mut().zip(&src[..m * k]) {
            *d = round(*v);
        }
        crate::linalg::matmul(
            &mut dst[..m * n],
            crate::linalg::View::rm(&s.a_f32[..m * k], m, k),
            crate::linalg::View::rm(&w.rounded, k, n),
            false,
        );
    }
}

/// Scratch of [`matmul_views`]: both operands in the tile unit's layouts and the product.
#[derive(Default)]
pub struct TrainScratch {
    a: Vec<u16>,
    b: Vec<u16>,
    /// What `b` holds, for [`matmul_views_reusing`]: the B view (data address and length,
    /// shape, strides) and the caller's generation.
    b_key: Option<(usize, usize, [usize; 4], u64)>,
    /// Row-major copies of strided operands.
    ta: Vec<f32>,
    tb: Vec<f32>,
    portable: Scratch,
}

/// The view's elements row-major: the view's own data when it already is, else a copy in
/// `buf` made in 16 × 16 blocks (both sides of a transpose stay in cache).
fn dense_view<'a>(v: crate::linalg::View<'a, f32>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if v.cs == 1 && v.rs == v.cols {
        return &v.data[..v.rows * v.cols];
    }
    // Every element below is written, so the buffer only grows and is never cleared.
    let len = v.rows * v.cols;
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let buf = &mut buf[..len];
    #[cfg(target_arch = "x86_64")]
    if amx::available() && v.rs == 1 {
        // A transpose (the training products' Xᵀ and Wᵀ): 16 × 16 blocks through registers.
        // SAFETY: AMX CPUs have AVX-512F; every (i, j) < (rows, cols) addresses inside
        // `v.data` (checked by the caller).
        unsafe { avx512::transpose_dense(v.data, v.cs, v.rows, v.cols, buf) };
        return buf;
    }
    #[cfg(target_arch = "x86_64")]
    if amx::available() && v.cs < (1 << 26) {
        // SAFETY: AMX CPUs have AVX-512F; every (i, j) < (rows, cols) addresses inside
        // `v.data` (checked by the caller), and 16·cs fits the gather's i32 indices.
        unsafe { avx512::gather_dense(v.data, v.rs, v.cs, v.rows, v.cols, buf) };
        return buf;
    }
    const B: usize = 16;
    for i0 in (0..v.rows).step_by(B) {
        for j0 in (0..v.cols).step_by(B) {
            for i in i0..(i0 + B).min(v.rows) {
                for j in j0..(j0 + B).min(v.cols) {
                    buf[i * v.cols + j] = v.data[i * v.rs + j * v.cs];
                }
            }
        }
    }
    buf
}

/// `dst[i] = to_bits(src[i])`.
fn round_row(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if amx::available() {
        // SAFETY: `amx::available` checked AVX-512F/BW/BF16 with AMX.
        unsafe { avx512::round_row(src, dst) };
        return;
    }
    for (d, v) in dst.iter_mut().zip(src) {
        *d = to_bits(*v);
    }
}

/// `dst[m × n] = round_bf16(a) · round_bf16(b)`, f32 sums, for strided views: the training
/// products of the bf16 mode, whose operands all change every call (activations, gradients,
/// freshly updated weights), so both are laid out here, straight from the views (a
/// transpose costs no extra pass). On AMX the product runs on the tiles, written into `dst`
/// directly when m and n are multiples of 16; elsewhere through [`matmul`].
pub fn matmul_views(
    dst: &mut [f32],
    a: crate::linalg::View<'_, f32>,
    b: crate::linalg::View<'_, f32>,
    s: &mut TrainScratch,
) {
    matmul_views_with(dst, a, b, s, None)
}

/// [`matmul_views`], keeping the tile layout of B in `s` for the next call: a call with the
/// same B view (same data address, length, shape and strides) and the same `generation`
/// skips laying B out again. The caller promises that B's values have not changed while
/// `generation` has not: the training forward and backward take a new one per call, within
/// which the weights are constant, so the two row blocks of a member that one thread runs
/// in turn share one layout of its weights.
pub fn matmul_views_reusing(
    dst: &mut [f32],
    a: crate::linalg::View<'_, f32>,
    b: crate::linalg::View<'_, f32>,
    s: &mut TrainScratch,
    generation: u64,
) {
    matmul_views_with(dst, a, b, s, Some(generation))
}

fn matmul_views_with(
    dst: &mut [f32],
    a: crate::linalg::View<'_, f32>,
    b: crate::linalg::View<'_, f32>,
    s: &mut TrainScratch,
    generation: Option<u64>,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(dst.len() >= m * n, "destination too small");
    let last = |v: &crate::linalg::View<'_, f32>| {
        (v.rows > 0 && v.cols > 0).then(|| (v.rows - 1) * v.rs + (v.cols - 1) * v.cs)
    };
    for v in [&a, &b] {
        if let Some(l) = last(v) {
            assert!(l < v.data.len(), "matrix view out of bounds");
        }
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst[..m * n].fill(0.0);
        return;
    }
    if Path::best() != Path::Amx {
        // Row-major operands, then the portable/vector path of `matmul`.
        s.b_key = None;
        let w = Packed::new(dense_view(b, &mut s.tb), k, n);
        matmul(dst, dense_view(a, &mut s.ta), m, &w, &mut s.portable);
        return;
    }
    let (mp, kp, np) = (
        m.div_ceil(TILE_M) * TILE_M,
        k.div_ceil(TILE_K) * TILE_K,
        n.div_ceil(TILE_N) * TILE_N,
    );
    let (kb, nb) = (kp / TILE_K, np / TILE_N);
    // A: [mp × kp] bf16, zero beyond m and k (only the padding is cleared). A transposed A
    // (a weight gradient's Xᵀ) is transposed and rounded in one pass; other strided
    // operands are first copied row-major (a blocked transpose), so that the packings read
    // rows: 16 values at a time, rounded and stored by vector code.
    if s.a.len() < mp * kp {
        s.a.resize(mp * kp, 0);
    }
    if a.rs == 1 && a.cs != 1 {
        // SAFETY: `amx::available` checked AVX-512F/BW/BF16; the view was bounds-checked above; `s.a`
        // holds mp·kp ≥ m·kp values.
        unsafe { avx512::transpose_round(a.data, a.cs, m, k, &mut s.a, kp) };
    } else {
        let a = dense_view(a, &mut s.ta);
        for i in 0..m {
            let row = &mut s.a[i * kp..][..kp];
            round_row(&a[i * k..][..k], &mut row[..k]);
            row[k..].fill(0);
        }
    }
    s.a[m * kp..mp * kp].fill(0);
    // B: blocks of 32 k-rows × 16 columns with k-pairs interleaved (see `Packed`): lane c
    // of a block row holds the pair (B[2p][c], B[2p+1][c]) as one 32-bit word, zero beyond
    // k and n. Row-major and transposed views are packed straight from their data.
    let key = generation.map(|g| {
        let view = [b.rows, b.cols, b.rs, b.cs];
        (b.data.as_ptr() as usize, b.data.len(), view, g)
    });
    if key.is_some() && key == s.b_key {
        // SAFETY: as below; B's layout is the one the previous call made.
        unsafe { amx::gemm_into(&s.a, kp, &s.b, dst, n, m, n, kb) };
        return;
    }
    s.b_key = key;
    if s.b.len() < kb * nb * TILE_K * TILE_N {
        s.b.resize(kb * nb * TILE_K * TILE_N, 0);
    }
    let b = if b.cs == 1 || b.rs == 1 {
        b
    } else {
        let d = dense_view(b, &mut s.tb);
        crate::linalg::View::rm(d, k, n)
    };
    // Blocks in the order that reads B's memory in long runs: row-major B 32 rows at a
    // time across all its columns (walking one 16-column strip down all k rows instead
    // strided 64-byte reads past the prefetchers: a weight matrix just updated by Adam comes
    // from L3), a transposed B one strip of 16 stored rows at a time.
    let order = |q: usize| {
        if b.cs == 1 {
            (q / nb, q % nb)
        } else {
            (q % kb, q / kb)
        }
    };
    for (ib, jb) in (0..kb * nb).map(order) {
        let cols = TILE_N.min(n - jb * TILE_N);
        let rows = TILE_K.min(k - ib * TILE_K);
        let block = &mut s.b[(jb * kb + ib) * TILE_K * TILE_N..][..TILE_K * TILE_N];
        let (r0, c0) = (ib * TILE_K, jb * TILE_N);
        // SAFETY: AVX-512F/BW/BF16 (checked with AMX); (r0 + rows − 1, c0 + cols − 1) is inside the
        // view, whose last element was bounds-checked above; the block holds 512 values.
        unsafe {
            if b.cs == 1 {
                avx512::pack_rows_block(b.data, b.rs, r0, c0, rows, cols, block);
            } else {
                avx512::pack_cols_block(b.data, b.cs, r0, c0, rows, cols, block);
            }
        }
    }
    // SAFETY: AMX is available (Path::best); `s.a` holds mp·kp bf16 inputs, `s.b` kb·nb
    // blocks; `dst` holds m rows of n (checked above), mp = m rounded up to 16.
    unsafe { amx::gemm_into(&s.a, kp, &s.b, dst, n, m, n, kb) };
}

/// Scratch for [`chain`]: two bf16 layer inputs and (AVX512-BF16 path) the f32 product.
#[derive(Default)]
pub struct ChainScratch {
    a: [Vec<u16>; 2],
    c: Vec<f32>,
    /// The layer's bias padded with zeros to its tile columns (AMX starts from it).
    bias: Vec<f32>,
    portable: Scratch,
    f32s: [Vec<f32>; 2],
}

/// A whole MLP with bf16 products: `x` [m × layers[0].k] (f32, already normalised) through
/// every layer, `act(z + bias)` after each but the last, into `out` [m × last n] (f32, head
/// bias added). On AMX the epilogue of each layer reads the f32 tile product and writes the
/// next layer's bf16 input directly, one pass per layer; elsewhere it is
/// [`matmul`] + bias + activation on f32 buffers.
pub fn chain(
    x: &[f32],
    m: usize,
    layers: &[Packed],
    biases: &[&[f32]],
    activation: Activation,
    out: &mut [f32],
    s: &mut ChainScratch,
) {
    match activation {
        Activation::Silu => chain_with(x, m, layers, biases, activation, out, s),
        Activation::Relu => chain_with(x, m, layers, biases, activation, out, s),
        Activation::Tanh => chain_with(x, m, layers, biases, activation, out, s),
    }
}

#[inline(always)]
fn chain_with(
    x: &[f32],
    m: usize,
    layers: &[Packed],
    biases: &[&[f32]],
    activation: Activation,
    out: &mut [f32],
    s: &mut ChainScratch,
) {
    let act = |z: f32| crate::backend::cpu::ensemble::act(activation, z);
    let last = layers.len() - 1;
    let n_out = layers[last].n;
    assert!(
        x.len() >= m * layers[0].k && out.len() >= m * n_out,
        "chain sizes"
    );
    if m == 0 {
        return;
    }
    if !layers[0].pairs.is_empty() {
        chain_dot(x, m, layers, biases, activation, out, s);
        return;
    }
    if layers[0].tiles.is_empty() {
        // Portable path: the same roundings through the f32 GEMM.
        let w = layers.iter().map(|l| l.n.max(l.k)).max().unwrap_or(0);
        for b in &mut s.f32s {
            if b.len() < m * w {
                b.resize(m * w, 0.0);
            }
        }
        let [a, b] = &mut s.f32s;
        a[..m * layers[0].k].copy_from_slice(&x[..m * layers[0].k]);
        for (l, (w, bias)) in layers.iter().zip(biases).enumerate() {
            let n = w.n;
            if l == last {
                matmul(out, a, m, w, &mut s.portable);
                for row in out[..m * n].chunks_exact_mut(n) {
                    row.iter_mut().zip(*bias).for_each(|(v, bb)| *v += *bb);
                }
            } else {
                matmul(b, a, m, w, &mut s.portable);
                for row in b[..m * n].chunks_exact_mut(n) {
                    row.iter_mut()
                        .zip(*bias)
                        .for_each(|(v, bb)| *v = act(*v + *bb));
                }
                std::mem::swap(a, b);
            }
        }
        return;
    }
    let mp = m.div_ceil(TILE_M) * TILE_M;
    let kmax = layers.iter().map(|l| l.kp()).max().unwrap_or(0);
    for a in &mut s.a {
        if a.len() < mp * kmax {
            a.resize(mp * kmax, 0);
        }
    }
    let (k0, kp0) = (layers[0].k, layers[0].kp());
    {
        let a = &mut s.a[0];
        if avx512::available() {
            // SAFETY: AVX-512 F/BW/BF16 were detected; `x` holds m rows of k0, `a` mp ≥ m rows of
            // kp0 ≥ k0.
            unsafe { avx512::round_rows_padded(x, m, k0, a, kp0) };
        } else {
            for r in 0..m {
                let row = &mut a[r * kp0..(r + 1) * kp0];
                for (d, v) in row.iter_mut().zip(&x[r * k0..(r + 1) * k0]) {
                    *d = to_bits(*v);
                }
                row[k0..].fill(0);
            }
        }
        a[m * kp0..mp * kp0].fill(0);
    }
    for (l, (w, bias)) in layers.iter().zip(biases).enumerate() {
        let (n, np, kp) = (w.n, w.np(), w.kp());
        let (cur, next) = if l % 2 == 0 {
            let [a, b] = &mut s.a;
            (&*a, b)
        } else {
            let [a, b] = &mut s.a;
            (&*b, a)
        };
        // Each block of up to 32 × 32 of the product goes through its epilogue while it is
        // in L1 (a product stored whole and read back was a second pass over memory).
        let kn = if l == last { 0 } else { layers[l + 1].kp() };
        let vector = avx512::available();
        // The product starts from the bias (the accumulator tiles are loaded with it), so
        // the epilogue only applies the activation: the bias's add was one of a 64-wide
        // layer's dozen vector operations per 16 values.
        s.bias.clear();
        s.bias.extend_from_slice(&bias[..n]);
        s.bias.resize(np, 0.0);
        const BC: usize = amx::BLOCK_COLS;
        let epilogue = |r0: usize, c0: usize, blk: &[f32]| {
            let (rows, cols) = (m.saturating_sub(r0).min(32), n.saturating_sub(c0).min(BC));
            if rows == 0 || cols == 0 {
                return;
            }
            if l == last {
                for r in 0..rows {
                    out[(r0 + r) * n + c0..][..cols].copy_from_slice(&blk[r * BC..][..cols]);
                }
            } else if vector {
                // The next layer's input: act(c) rounded to bf16.
                // SAFETY: AVX-512 F/BW/VL/DQ/BF16 were detected; `blk` holds 32 rows of BC,
                // `next` from row r0, column c0 holds rows − 1 rows of kn ≥ n plus cols.
                unsafe {
                    avx512::bias_act_bf16(
                        blk,
                        BC,
                        None,
                        &mut next[r0 * kn + c0..],
                        kn,
                        rows,
                        cols,
                        activation,
                    );
                }
            } else {
                for r in 0..rows {
                    let dst = &mut next[(r0 + r) * kn + c0..][..cols];
                    for (d, v) in dst.iter_mut().zip(&blk[r * BC..]) {
                        *d = to_bits(act(*v));
                    }
                }
            }
        };
        // SAFETY: AMX was available when the layers were packed; `cur` holds mp rows of kp,
        // the packed weights kp/32 × np/16 blocks, `s.bias` np values.
        unsafe {
            amx::gemm_blocks(
                cur,
                kp,
                &w.tiles,
                &s.bias,
                mp,
                np / TILE_N,
                kp / TILE_K,
                epilogue,
            )
        };
        if l != last {
            // Zero in the padding columns (rows past m stay as they are: rows never mix in a
            // product).
            for r in (0..m).filter(|_| kn > n) {
                next[r * kn + n..(r + 1) * kn].fill(0);
            }
            if l == 0 {
                // Padding rows of the next input must be finite too (they were zeroed for
                // the first layer only).
                for r in m..mp {
                    next[r * kn..(r + 1) * kn].fill(0);
                }
            }
        }
    }
}

/// [`chain`] on the AVX512-BF16 path: each layer's f32 product into `s.c`, then the epilogue
/// writes the next layer's bf16 input (the same vector epilogue as on AMX).
fn chain_dot(
    x: &[f32],
    m: usize,
    layers: &[Packed],
    biases: &[&[f32]],
    activation: Activation,
    out: &mut [f32],
    s: &mut ChainScratch,
) {
    let last = layers.len() - 1;
    let kmax = layers.iter().map(|l| l.k2()).max().unwrap_or(0);
    let nmax = layers.iter().map(|l| l.n).max().unwrap_or(0);
    for a in &mut s.a {
        if a.len() < m * kmax {
            a.resize(m * kmax, 0);
        }
    }
    if s.c.len() < m * nmax {
        s.c.resize(m * nmax, 0.0);
    }
    let (k0, k20) = (layers[0].k, layers[0].k2());
    for r in 0..m {
        let row = &mut s.a[0][r * k20..(r + 1) * k20];
        for (d, v) in row.iter_mut().zip(&x[r * k0..(r + 1) * k0]) {
            *d = to_bits(*v);
        }
        row[k0..].fill(0);
    }
    for (l, (w, bias)) in layers.iter().zip(biases).enumerate() {
        let (n, k2) = (w.n, w.k2());
        let [a0, a1] = &mut s.a;
        let (cur, next) = if l % 2 == 0 { (&*a0, a1) } else { (&*a1, a0) };
        // SAFETY: AVX512-BF16 was available when the layers were packed; `cur` holds m rows
        // of k2 bf16 inputs, `s.c` m rows of n.
        unsafe { avx512::dot_gemm(cur, k2, w, &mut s.c, n, m) };
        if l == last {
            for r in 0..m {
                let c = &s.c[r * n..(r + 1) * n];
                for ((o, v), bb) in out[r * n..(r + 1) * n].iter_mut().zip(c).zip(*bias) {
                    *o = *v + *bb;
                }
            }
        } else {
            let kn = layers[l + 1].k2();
            // SAFETY: AVX-512 F/BW/VL/BF16 are available (this path requires them).
            unsafe { avx512::bias_act_bf16(&s.c, n, Some(bias), next, kn, m, n, activation) };
            for r in (0..m).filter(|_| kn > n) {
                next[r * kn + n..(r + 1) * kn].fill(0);
            }
        }
    }
}

/// The epilogue of a hidden layer in 512-bit vectors: bias, activation and the rounding to
/// bf16 (`vcvtneps2bf16`, round to nearest even like [`to_bits`]), 16 values at a time.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::backend::Activation;
    use crate::dense::act_avx512 as act;
    use std::arch::x86_64::*;

    /// 16 values rounded as [`super::to_bits`] does, by the conversion instruction that
    /// defines it (`vcvtneps2bf16`: one operation where the integer rounding took seven).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn cvt16(x: __m512) -> __m256i {
        std::mem::transmute(_mm512_cvtneps_pbh(x))
    }

    /// `dst[i] = to_bits(src[i])` over the shorter of the two.
    ///
    /// # Safety
    /// AVX-512F, BW and BF16 must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_row(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            let v = cvt16(_mm512_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, v);
            i += 16;
        }
        for j in i..n {
            dst[j] = super::to_bits(src[j]);
        }
    }

    /// `dst[r·ld + j] = to_bits(x[r·k + j])` for j < k and 0 for k ≤ j < ld, r < m: a
    /// planning step's first-layer input (k = observation + action, a few values a row)
    /// rounded and padded to the tile width, 16 values per masked load and store.
    ///
    /// # Safety
    /// AVX-512F, BW and BF16 must be available; `x` holds m·k values, `dst` m·ld, ld ≥ k.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_rows_padded(x: &[f32], m: usize, k: usize, dst: &mut [u16], ld: usize) {
        assert!(x.len() >= m * k && dst.len() >= m * ld && ld >= k);
        for r in 0..m {
            let (src, out) = (x.as_ptr().add(r * k), dst.as_mut_ptr().add(r * ld));
            for c in (0..ld).step_by(16) {
                let left = ld - c;
                let valid = k.saturating_sub(c).min(16);
                let load: __mmask16 = if valid == 16 { !0 } else { (1 << valid) - 1 };
                let store: __mmask16 = if left >= 16 { !0 } else { (1 << left) - 1 };
                let v = cvt16(_mm512_maskz_loadu_ps(load, src.add(c)));
                _mm256_mask_storeu_epi16(out.add(c) as *mut i16, store, v);
            }
        }
    }

    /// `out[i·cols + j] = data[i·rs + j·cs]`, 16 columns per gather (a transpose reads each
    /// source line 16 times in a row, from L1).
    ///
    /// # Safety
    /// AVX-512F must be available; every (i, j) must address inside `data`; `15·cs` must
    /// fit an i32; `out` holds rows·cols values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gather_dense(
        data: &[f32],
        rs: usize,
        cs: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) {
        assert!(out.len() >= rows * cols);
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(cs as i32),
        );
        for i in 0..rows {
            let row = &mut out[i * cols..(i + 1) * cols];
            let mut j = 0;
            while j + 16 <= cols {
                let base = data.as_ptr().add(i * rs + j * cs);
                let v = _mm512_i32gather_ps::<4>(idx, base);
                _mm512_storeu_ps(row.as_mut_ptr().add(j), v);
                j += 16;
            }
            for jj in j..cols {
                row[jj] = data[i * rs + jj * cs];
            }
        }
    }

    /// `out[i·cols + j] = data[i + j·cs]`: a transpose, in 16 × 16 blocks that are loaded as
    /// 16 source rows, transposed in registers (unpack, then 128-bit lane shuffles) and
    /// stored as 16 output rows. An element gather reads 16 cache lines per vector and was a
    /// fifth of a bf16 SAC step; this reads and writes whole vectors. Partial blocks at the
    /// edges are copied element by element.
    ///
    /// # Safety
    /// AVX-512F must be available; every (i, j) < (rows, cols) must address inside `data`;
    /// `out` holds rows·cols values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose_dense(
        data: &[f32],
        cs: usize,
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) {
        assert!(out.len() >= rows * cols);
        let dst = out.as_mut_ptr();
        transpose_blocks(
            data,
            cs,
            rows,
            cols,
            |i0, j0, t| {
                for (q, v) in t.iter().enumerate() {
                    _mm512_storeu_ps(dst.add((i0 + q) * cols + j0), *v);
                }
            },
            |i, j| *dst.add(i * cols + j) = data[i + j * cs],
        );
    }

    /// `out[i·ld + j] = to_bits(data[i + j·cs])` for i < rows, j < cols, and 0 for
    /// cols ≤ j < ld: [`transpose_dense`] and the rounding of the tile operand in one pass
    /// (the f32 transpose is never stored).
    ///
    /// # Safety
    /// AVX-512F, BW and BF16 must be available; every (i, j) < (rows, cols) must address
    /// inside `data`; `out` holds rows·ld values, ld ≥ cols.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn transpose_round(
        data: &[f32],
        cs: usize,
        rows: usize,
        cols: usize,
        out: &mut [u16],
        ld: usize,
    ) {
        assert!(ld >= cols && out.len() >= rows * ld);
        let dst = out.as_mut_ptr();
        transpose_blocks(
            data,
            cs,
            rows,
            cols,
            |i0, j0, t| {
                for (q, v) in t.iter().enumerate() {
                    _mm256_storeu_si256(dst.add((i0 + q) * ld + j0) as *mut __m256i, cvt16(*v));
                }
            },
            |i, j| *dst.add(i * ld + j) = super::to_bits(data[i + j * cs]),
        );
        for i in 0..rows {
            out[i * ld + cols..(i + 1) * ld].fill(0);
        }
    }

    /// The walk both transposes share over (i, j) < (rows, cols) of `data[i + j·cs]`: each
    /// full 16 × 16 block is loaded as 16 source lines, transposed in registers and handed
    /// to `block(i0, j0, rows i0..i0 + 16 of the transpose)`; the ragged edges go element by
    /// element to `edge(i, j)`.
    ///
    /// # Safety
    /// AVX-512F must be available; what `block` and `edge` write must be theirs to write.
    #[inline(always)]
    unsafe fn transpose_blocks(
        data: &[f32],
        cs: usize,
        rows: usize,
        cols: usize,
        mut block: impl FnMut(usize, usize, &[__m512; 16]),
        mut edge: impl FnMut(usize, usize),
    ) {
        assert!(rows == 0 || cols == 0 || (rows - 1) + (cols - 1) * cs < data.len());
        let (fi, fj) = (rows / 16 * 16, cols / 16 * 16);
        let src = data.as_ptr();
        for i0 in (0..fi).step_by(16) {
            for j0 in (0..fj).step_by(16) {
                // r[c] = source line j0 + c: column j0 + c of the output, rows i0..i0 + 16.
                let mut r = [_mm512_setzero_ps(); 16];
                for (c, v) in r.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(src.add(i0 + (j0 + c) * cs));
                }
                block(i0, j0, &transpose16(r));
            }
        }
        for i in 0..rows {
            for j in if i < fi { fj } else { 0 }..cols {
                edge(i, j);
            }
        }
    }

    /// The transpose of the 16 × 16 matrix whose rows are `r`: (rᵀ)[q][c] = r[c][q].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs: t[2p] lane L = (r[2p][4L], r[2p+1][4L], r[2p][4L+1], r[2p+1][4L+1]),
        // t[2p+1] the same for 4L+2 and 4L+3.
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // Quads: u[4g + m] lane L = (r[4g][4L+m], r[4g+1][4L+m], r[4g+2][4L+m], r[4g+3][4L+m]).
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            u[4 * g] = _mm512_shuffle_ps::<0x44>(a, c);
            u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
            u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(b, d);
            u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(b, d);
        }
        // Output row 4L + m = lane L of u[m], u[4 + m], u[8 + m], u[12 + m], in that order.
        let mut o = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            let (u0, u1, u2, u3) = (u[m], u[4 + m], u[8 + m], u[12 + m]);
            // x = (u0.L0, u0.L2, u1.L0, u1.L2), y = (u0.L1, u0.L3, u1.L1, u1.L3); z, w alike.
            let x = _mm512_shuffle_f32x4::<0x88>(u0, u1);
            let y = _mm512_shuffle_f32x4::<0xDD>(u0, u1);
            let z = _mm512_shuffle_f32x4::<0x88>(u2, u3);
            let w = _mm512_shuffle_f32x4::<0xDD>(u2, u3);
            o[m] = _mm512_shuffle_f32x4::<0x88>(x, z);
            o[8 + m] = _mm512_shuffle_f32x4::<0xDD>(x, z);
            o[4 + m] = _mm512_shuffle_f32x4::<0x88>(y, w);
            o[12 + m] = _mm512_shuffle_f32x4::<0xDD>(y, w);
        }
        o
    }

    /// The hidden activation of a layer whose output is rounded to bf16 next (half an ulp
    /// is 2⁻⁹ ≈ 2e-3 of the value): SiLU's σ through a short exp2 and the 14-bit reciprocal
    /// estimate, relative error ≤ 1e-4 (see [`sigmoid_lo`]), in 10 vector operations where
    /// the f32 epilogue's takes 19 (the epilogue was half of a small model's bf16 planning
    /// step). Tanh and ReLU are [`act`]'s: tanh's small values would not keep a relative bound
    /// through 2σ(2z) − 1.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn act_to_bf16(a: Activation, z: __m512) -> __m512 {
        match a {
            Activation::Silu => _mm512_mul_ps(z, sigmoid_lo(z)),
            _ => act(a, z),
        }
    }

    /// σ(z) = 1 / (1 + 2^t), t = −z·log₂e = ⌊t⌋ + f with 0 ≤ f < 1: f by `vreduceps`
    /// (t − ⌊t⌋, exact, one operation), 2^f by a degree-4 polynomial fitted for relative
    /// error on [0, 1) (≤ 2.7e-6), ⌊t⌋ applied by `vscalefps` (which floors its exponent
    /// operand itself), and the reciprocal's 14-bit estimate (≤ 2⁻¹⁴ ≈ 6.1e-5); with the
    /// roundings, ≤ 1e-4 relative. A large |z| needs no clamp: 2^t overflows to +inf, whose
    /// reciprocal estimate is 0 (σ → 0), or underflows to 0 (σ → 1).
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn sigmoid_lo(z: __m512) -> __m512 {
        let t = _mm512_mul_ps(z, _mm512_set1_ps(-std::f32::consts::LOG2_E));
        // imm8: keep 0 fraction bits, round down, suppress the precision exception.
        let f = _mm512_reduce_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
        let mut p = _mm512_set1_ps(0.013_534_08);
        for c in [0.052_011_38, 0.241_443_01, 0.693_003_7, 1.000_002_6] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        let e = _mm512_scalef_ps(p, t);
        _mm512_rcp14_ps(_mm512_add_ps(_mm512_set1_ps(1.0), e))
    }

    /// One AMX B block (see [`super::Packed`]) of a view with unit column stride: block row
    /// p, lane c = to_bits(B[r0 + 2p][c0 + c]) | to_bits(B[r0 + 2p + 1][c0 + c]) << 16,
    /// where B[r][c] = data[r·rs + c], and 0 outside `rows` × `cols`.
    ///
    /// # Safety
    /// AVX-512F, BW and BF16 must be available; every B[r0 + i][c0 + j] with i < rows ≤ 32
    /// and j < cols ≤ 16 must address inside `data`; `block` holds 512 values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_rows_block(
        data: &[f32],
        rs: usize,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        block: &mut [u16],
    ) {
        assert!(rows <= 32 && cols <= 16 && block.len() >= 512);
        // Masked-off lanes are neither read nor able to fault; they load as 0.
        let mask: __mmask16 = if cols == 16 { !0 } else { (1 << cols) - 1 };
        let src = data.as_ptr().add(c0);
        let load = |r: usize| {
            if r < rows {
                _mm512_maskz_loadu_ps(mask, src.add((r0 + r) * rs))
            } else {
                _mm512_setzero_ps()
            }
        };
        // `vcvtne2ps2bf16` puts row 2p + 1's 16 values in words 16..32 and row 2p's in
        // 0..16; one word permutation interleaves them into the pairs.
        let pairs = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        for p in 0..16 {
            let both: __m512i =
                std::mem::transmute(_mm512_cvtne2ps_pbh(load(2 * p + 1), load(2 * p)));
            let w = _mm512_permutexvar_epi16(pairs, both);
            _mm512_storeu_si512(block.as_mut_ptr().add(32 * p) as *mut __m512i, w);
        }
    }

    /// [`pack_rows_block`] for a view with unit row stride (a transpose, B[r][c] =
    /// data[r + c·cs], e.g. Wᵀ): column c's 32 k-values are contiguous, so they are loaded,
    /// rounded and paired as one 16-word vector, and the 16 columns' vectors are transposed
    /// in registers into the block's 16 rows.
    ///
    /// # Safety
    /// As [`pack_rows_block`], with B[r][c] = data[r + c·cs].
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_cols_block(
        data: &[f32],
        cs: usize,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        block: &mut [u16],
    ) {
        assert!(rows <= 32 && cols <= 16 && block.len() >= 512);
        let m0: __mmask16 = if rows >= 16 { !0 } else { (1 << rows) - 1 };
        let m1: __mmask16 = match rows {
            32 => !0,
            r if r > 16 => (1 << (r - 16)) - 1,
            _ => 0,
        };
        let mut v = [_mm512_setzero_ps(); 16];
        for (c, v) in v.iter_mut().enumerate().take(cols) {
            let src = data.as_ptr().add(r0 + (c0 + c) * cs);
            let lo = cvt16(_mm512_maskz_loadu_ps(m0, src));
            let hi = cvt16(_mm512_maskz_loadu_ps(m1, src.add(16)));
            // 32 bf16 in k order: word p = (k = 2p, k = 2p + 1), little-endian.
            *v = _mm512_castsi512_ps(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi));
        }
        for (p, row) in transpose16(v).iter().enumerate() {
            _mm512_storeu_ps(block.as_mut_ptr().add(32 * p) as *mut f32, *row);
        }
    }

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512bf16")
        })
    }

    /// C [m × n] (f32, row stride `cs`) = A [m × k2] (bf16 pairs, row stride `a_stride`) ·
    /// W in `vdpbf16ps`: 12 rows × 32 columns of f32 accumulators, each step adding the
    /// products of one k-pair (the row's pair broadcast to every lane).
    ///
    /// # Safety
    /// [`available`] must hold; `w` packed for [`super::Path::Avx512Bf16`]; `a` m rows of
    /// `a_stride` ≥ k2, `c` m rows of `cs` ≥ n.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn dot_gemm(
        a: &[u16],
        a_stride: usize,
        w: &super::Packed,
        c: &mut [f32],
        cs: usize,
        m: usize,
    ) {
        let (n, kp) = (w.n, w.k.div_ceil(2));
        debug_assert!(a_stride.is_multiple_of(2) && a_stride >= 2 * kp && cs >= n);
        debug_assert!(m == 0 || (a.len() >= (m - 1) * a_stride + 2 * kp));
        for p in 0..n.div_ceil(32) {
            let b = w.pairs.as_ptr().add(p * kp * 64);
            let mut r = 0;
            while r + 12 <= m {
                dot_rows::<12>(a, a_stride, b, kp, c, cs, n, r, p);
                r += 12;
            }
            match m - r {
                0 => {}
                1 => dot_rows::<1>(a, a_stride, b, kp, c, cs, n, r, p),
                2 => dot_rows::<2>(a, a_stride, b, kp, c, cs, n, r, p),
                3 => dot_rows::<3>(a, a_stride, b, kp, c, cs, n, r, p),
                4 => dot_rows::<4>(a, a_stride, b, kp, c, cs, n, r, p),
                5 => dot_rows::<5>(a, a_stride, b, kp, c, cs, n, r, p),
                6 => dot_rows::<6>(a, a_stride, b, kp, c, cs, n, r, p),
                7 => dot_rows::<7>(a, a_stride, b, kp, c, cs, n, r, p),
                8 => dot_rows::<8>(a, a_stride, b, kp, c, cs, n, r, p),
                9 => dot_rows::<9>(a, a_stride, b, kp, c, cs, n, r, p),
                10 => dot_rows::<10>(a, a_stride, b, kp, c, cs, n, r, p),
                _ => dot_rows::<11>(a, a_stride, b, kp, c, cs, n, r, p),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn dot_rows<const R: usize>(
        a: &[u16],
        a_stride: usize,
        b: *const u16,
        kp: usize,
        c: &mut [f32],
        cs: usize,
        n: usize,
        r0: usize,
        p: usize,
    ) {
        let a = a.as_ptr().add(r0 * a_stride);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for pr in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(pr * 64).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(pr * 64 + 32).cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let pair = (a.add(i * a_stride + 2 * pr) as *const i32).read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
        }
        let c0 = p * 32;
        let cols = (n - c0).min(32);
        for h in 0..cols.div_ceil(16) {
            let left = cols - 16 * h;
            let mask: __mmask16 = if left >= 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            for (i, acc) in acc.iter().enumerate() {
                let d = c.as_mut_ptr().add((r0 + i) * cs + c0 + 16 * h);
                _mm512_mask_storeu_ps(d, mask, acc[h]);
            }
        }
    }

    /// `dst[r·ds + j] = bf16(act(c[r·cs + j] + bias[j]))` for r < m, j < n (no bias where
    /// `bias` is None: the AMX products start from it): all rows of a layer in one call, 32
    /// values per iteration where the row allows, rounded by one `vcvtne2ps2bf16`.
    ///
    /// # Safety
    /// [`available`] must hold; `c` must hold m rows of stride cs ≥ n, `dst` m rows of
    /// stride ds ≥ n, `bias` n values.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
    pub unsafe fn bias_act_bf16(
        c: &[f32],
        cs: usize,
        bias: Option<&[f32]>,
        dst: &mut [u16],
        ds: usize,
        m: usize,
        n: usize,
        a: Activation,
    ) {
        // One loop per activation, so its constants stay in registers across the rows.
        match a {
            Activation::Silu => act_rows::<0>(c, cs, bias, dst, ds, m, n),
            Activation::Relu => act_rows::<1>(c, cs, bias, dst, ds, m, n),
            Activation::Tanh => act_rows::<2>(c, cs, bias, dst, ds, m, n),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
    unsafe fn act_rows<const ACT: u8>(
        c: &[f32],
        cs: usize,
        bias: Option<&[f32]>,
        dst: &mut [u16],
        ds: usize,
        m: usize,
        n: usize,
    ) {
        let a = match ACT {
            0 => Activation::Silu,
            1 => Activation::Relu,
            _ => Activation::Tanh,
        };
        debug_assert!(m == 0 || (c.len() >= (m - 1) * cs + n && dst.len() >= (m - 1) * ds + n));
        debug_assert!(bias.is_none_or(|b| b.len() >= n));
        let (cp, dp) = (c.as_ptr(), dst.as_mut_ptr());
        let bp = bias.map(|b| b.as_ptr());
        let load = |r: *const f32, j: usize, mask: __mmask16| {
            let v = _mm512_maskz_loadu_ps(mask, r.add(j));
            match bp {
                Some(b) => _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, b.add(j))),
                None => v,
            }
        };
        for r in 0..m {
            let (cr, dr) = (cp.add(r * cs), dp.add(r * ds));
            let mut j = 0;
            while j + 32 <= n {
                let y0 = act_to_bf16(a, load(cr, j, !0));
                let y1 = act_to_bf16(a, load(cr, j + 16, !0));
                // Lanes 0..16 from the second operand.
                let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(y1, y0));
                _mm512_storeu_si512(dr.add(j).cast(), h);
                j += 32;
            }
            while j < n {
                let left = n - j;
                let mask: __mmask16 = if left >= 16 {
                    0xffff
                } else {
                    (1u16 << left) - 1
                };
                let h: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(act_to_bf16(a, load(cr, j, mask))));
                _mm256_mask_storeu_epi16(dr.add(j) as *mut i16, mask, h);
                j += 16;
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub fn available() -> bool {
        false
    }
    pub unsafe fn dot_gemm(
        _: &[u16],
        _: usize,
        _: &super::Packed,
        _: &mut [f32],
        _: usize,
        _: usize,
    ) {
        unreachable!("no AVX-512 off x86-64")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn bias_act_bf16(
        _: &[f32],
        _: usize,
        _: Option<&[f32]>,
        _: &mut [u16],
        _: usize,
        _: usize,
        _: usize,
        _: crate::backend::Activation,
    ) {
        unreachable!("no AVX-512 off x86-64")
    }
    pub unsafe fn round_rows_padded(_: &[f32], _: usize, _: usize, _: &mut [u16], _: usize) {
        unreachable!("no AVX-512 off x86-64")
    }
}

/// How bf16 products run on this CPU, for messages and benchmark rows.
pub fn describe() -> &'static str {
    match Path::best() {
        Path::Amx => "bf16 on AMX tiles",
        Path::Avx512Bf16 => "bf16 with AVX512-BF16 vdpbf16ps",
        Path::Portable if avx512::available() => {
            "bf16 emulated in f32 (no AMX here; AVX512-BF16 with MBRL_BF16_PATH=avx512bf16)"
        }
        Path::Portable => "bf16 emulated in f32 (no AMX or AVX512-BF16 here)",
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    /// Tile configuration (palette 1): eight tiles of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    static CONFIG: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// AMX-TILE and AMX-BF16 in CPUID leaf 7, and Linux's permission to use tile data
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, process-wide). The variable
    /// `MBRL_NO_AMX=1` turns the tile path off (to measure or test the portable one).
    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            if std::env::var_os("MBRL_NO_AMX").is_some_and(|v| v != "0") {
                return false;
            }
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (tile, bf16) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 22 & 1 == 1);
            // The operands are laid out by AVX-512 code with `vcvtneps2bf16`; every CPU with
            // AMX has it, but a hypervisor may hide it.
            let vector =
                is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16");
            if !(tile && bf16 && vector) {
                return false;
            }
            permission()
        })
    }

    #[cfg(target_os = "linux")]
    fn permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call that only changes this process's permissions.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn permission() -> bool {
        false
    }

    /// Starts the accumulators tmm0..tmm3 of a block (those its shape uses): zero, or every
    /// row the bias (16 values from `bias`, the second tile column's from `bias + 16`),
    /// loaded with a row stride of 0, so the products add to it and no epilogue adds it.
    /// The tile configuration must be loaded; `bias`, when not null, must hold 16 (two
    /// columns: 32) readable values.
    #[inline(always)]
    unsafe fn tile_init(bias: *const f32, two_rows: bool, two_cols: bool) {
        if bias.is_null() {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            return;
        }
        // Every row of tile `$t` from the 16 values at `$p`.
        macro_rules! bias_rows {
            ($t:literal, $p:expr) => {
                asm!(
                    concat!("tileloadd ", $t, ", [{b} + {zero}*1]"),
                    b = in(reg) $p,
                    zero = in(reg) 0usize,
                    options(nostack, readonly),
                )
            };
        }
        bias_rows!("tmm0", bias);
        if two_cols {
            bias_rows!("tmm1", bias.add(16));
        }
        if two_rows {
            bias_rows!("tmm2", bias);
            if two_cols {
                bias_rows!("tmm3", bias.add(16));
            }
        }
    }

    /// One block of up to 2 × 2 tiles of C += A·B, A from `a0` (byte stride `asb`, second
    /// tile row 16 rows on), B the column blocks at `b0` and `b0 + kb·512`, added to the
    /// accumulators tmm0..tmm3 (those the block's shape uses; [`tile_init`] starts them)
    /// for [`tile_store`]. The tile configuration must be loaded.
    #[inline(always)]
    unsafe fn tile_compute(
        a0: *const u16,
        asb: usize,
        b0: *const u16,
        kb: usize,
        two_rows: bool,
        two_cols: bool,
    ) {
        match (two_rows, two_cols) {
            (true, true) => asm!(
                "2:",
                "tileloadd tmm4, [{a0} + {asb}*1]",
                "tileloadd tmm5, [{a1} + {asb}*1]",
                "tileloadd tmm6, [{b0} + {bsb}*1]",
                "tileloadd tmm7, [{b1} + {bsb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 64", "add {a1}, 64", "add {b0}, 1024", "add {b1}, 1024",
                "dec {k}", "jnz 2b",
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a0.add(asb / 2 * 16) => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b0.add(kb * 512) => _,
                k = inout(reg) kb => _,
                asb = in(reg) asb,
                bsb = in(reg) 64usize,
                options(nostack, readonly),
            ),
            (true, false) => asm!(
                "2:",
                "tileloadd tmm4, [{a0} + {asb}*1]",
                "tileloadd tmm5, [{a1} + {asb}*1]",
                "tileloadd tmm6, [{b0} + {bsb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "add {a0}, 64", "add {a1}, 64", "add {b0}, 1024",
                "dec {k}", "jnz 2b",
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a0.add(asb / 2 * 16) => _,
                b0 = inout(reg) b0 => _,
                k = inout(reg) kb => _,
                asb = in(reg) asb,
                bsb = in(reg) 64usize,
                options(nostack, readonly),
            ),
            (false, true) => asm!(
                "2:",
                "tileloadd tmm4, [{a0} + {asb}*1]",
                "tileloadd tmm6, [{b0} + {bsb}*1]",
                "tileloadd tmm7, [{b1} + {bsb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "add {a0}, 64", "add {b0}, 1024", "add {b1}, 1024",
                "dec {k}", "jnz 2b",
                a0 = inout(reg) a0 => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b0.add(kb * 512) => _,
                k = inout(reg) kb => _,
                asb = in(reg) asb,
                bsb = in(reg) 64usize,
                options(nostack, readonly),
            ),
            (false, false) => asm!(
                "2:",
                "tileloadd tmm4, [{a0} + {asb}*1]",
                "tileloadd tmm6, [{b0} + {bsb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "add {a0}, 64", "add {b0}, 1024",
                "dec {k}", "jnz 2b",
                a0 = inout(reg) a0 => _,
                b0 = inout(reg) b0 => _,
                k = inout(reg) kb => _,
                asb = in(reg) asb,
                bsb = in(reg) 64usize,
                options(nostack, readonly),
            ),
        }
    }

    /// Stores the accumulators [`tile_compute`] left: the block's rows from `c0` (the second
    /// 16 from `c1`), byte stride `csb`, the second tile column 64 bytes on.
    #[inline(always)]
    unsafe fn tile_store(c0: *mut f32, c1: *mut f32, csb: usize, two_rows: bool, two_cols: bool) {
        asm!(
            "tilestored [{c0} + {csb}*1], tmm0",
            c0 = in(reg) c0,
            csb = in(reg) csb,
            options(nostack),
        );
        if two_cols {
            asm!(
                "tilestored [{c0} + {csb}*1 + 64], tmm1",
                c0 = in(reg) c0,
                csb = in(reg) csb,
                options(nostack),
            );
        }
        if two_rows {
            asm!(
                "tilestored [{c1} + {csb}*1], tmm2",
                c1 = in(reg) c1,
                csb = in(reg) csb,
                options(nostack),
            );
            if two_cols {
                asm!(
                    "tilestored [{c1} + {csb}*1 + 64], tmm3",
                    c1 = in(reg) c1,
                    csb = in(reg) csb,
                    options(nostack),
                );
            }
        }
    }

    /// Columns of the blocks [`gemm_blocks`] hands to its epilogue (its row stride).
    pub const BLOCK_COLS: usize = 32;

    /// C = bias + A [mp × 32·kb] (bf16, row stride `a_stride` elements) · B (`nb` packed
    /// column blocks; `bias` holds nb·16 values, 0 past the real columns), in 2×2 blocks of
    /// 16×16 tiles, without storing C: each block of up to 32 × 32
    /// (row stride 32, rows and columns counted from (r0, c0); the caller clips them to its
    /// m × n) is handed to `epilogue(r0, c0, block)` while it is in L1.
    ///
    /// Software-pipelined: the next block's tile products are issued before this block's
    /// epilogue runs, so the tile unit works while the vector units run the epilogue (for
    /// 64-wide layers the epilogue is longer than the products, and in series the two
    /// alternated idling).
    ///
    /// # Safety
    /// AMX must be available (see [`available`]); `a` must hold mp·a_stride elements, mp a
    /// multiple of 16, `b` kb·nb·512; `epilogue` must not use the tile registers.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_blocks(
        a: &[u16],
        a_stride: usize,
        b: &[u16],
        bias: &[f32],
        mp: usize,
        nb: usize,
        kb: usize,
        mut epilogue: impl FnMut(usize, usize, &[f32]),
    ) {
        assert!(mp.is_multiple_of(16) && a.len() >= mp * a_stride && a_stride >= kb * 32);
        assert!(b.len() >= kb * nb * 512);
        assert!(bias.len() >= nb * 16);
        if mp == 0 || nb == 0 {
            return;
        }
        let (mb, asb) = (mp / 16, a_stride * 2);
        let mut blk = [0.0f32; 32 * BLOCK_COLS];
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        // Blocks in row-major order of (row pair, column pair).
        let ncp = nb.div_ceil(2);
        let count = mb.div_ceil(2) * ncp;
        let at = |q: usize| {
            let (i, j) = (q / ncp * 2, q % ncp * 2);
            (i, j, i + 1 < mb, j + 1 < nb)
        };
        let issue = |q: usize| {
            let (i, j, two_rows, two_cols) = at(q);
            tile_init(bias.as_ptr().add(j * 16), two_rows, two_cols);
            tile_compute(
                a.as_ptr().add(i * 16 * a_stride),
                asb,
                b.as_ptr().add(j * kb * 512),
                kb,
                two_rows,
                two_cols,
            );
        };
        issue(0);
        for q in 0..count {
            let (i, j, two_rows, two_cols) = at(q);
            let e = blk.as_mut_ptr();
            tile_store(
                e,
                e.add(16 * BLOCK_COLS),
                4 * BLOCK_COLS,
                two_rows,
                two_cols,
            );
            if q + 1 < count {
                issue(q + 1);
            }
            epilogue(i * 16, j * 16, &blk);
        }
        // Back to the initial state (see `gemm_into`).
        asm!("tilerelease", options(nostack, nomem));
    }

    /// C [m × n] (f32, row stride `c_stride`) = A · B as [`gemm_blocks`] computes it, stored:
    /// blocks inside C in place, the ragged right and bottom ones through a 32 × 32 buffer,
    /// so a caller needs no padded product to copy out of (nor to clear).
    ///
    /// # Safety
    /// AMX must be available; `a` must hold m.div_ceil(16)·16 rows of `a_stride` ≥ 32·kb
    /// elements, `b` kb·n.div_ceil(16)·512 and `c` (m − 1)·c_stride + n elements.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_into(
        a: &[u16],
        a_stride: usize,
        b: &[u16],
        c: &mut [f32],
        c_stride: usize,
        m: usize,
        n: usize,
        kb: usize,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let (mb, nb) = (m.div_ceil(16), n.div_ceil(16));
        assert!(a.len() >= mb * 16 * a_stride && a_stride >= kb * 32);
        assert!(b.len() >= kb * nb * 512 && c_stride >= n && c.len() >= (m - 1) * c_stride + n);
        let asb = a_stride * 2;
        let mut edge = [0.0f32; 32 * 32];
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        for i in (0..mb).step_by(2) {
            let a0 = a.as_ptr().add(i * 16 * a_stride);
            let (two_rows, r0) = (i + 1 < mb, i * 16);
            let rows = (m - r0).min(if two_rows { 32 } else { 16 });
            for j in (0..nb).step_by(2) {
                let b0 = b.as_ptr().add(j * kb * 512);
                let (two_cols, c0) = (j + 1 < nb, j * 16);
                let cols = (n - c0).min(if two_cols { 32 } else { 16 });
                let full = rows == if two_rows { 32 } else { 16 }
                    && cols == if two_cols { 32 } else { 16 };
                if full {
                    let c00 = c.as_mut_ptr().add(r0 * c_stride + c0);
                    let c10 = c00.wrapping_add(16 * c_stride);
                    tile_init(std::ptr::null(), two_rows, two_cols);
                    tile_compute(a0, asb, b0, kb, two_rows, two_cols);
                    tile_store(c00, c10, c_stride * 4, two_rows, two_cols);
                } else {
                    let e = edge.as_mut_ptr();
                    tile_init(std::ptr::null(), two_rows, two_cols);
                    tile_compute(a0, asb, b0, kb, two_rows, two_cols);
                    tile_store(e, e.add(16 * 32), 128, two_rows, two_cols);
                    for r in 0..rows {
                        c[(r0 + r) * c_stride + c0..][..cols]
                            .copy_from_slice(&edge[r * 32..][..cols]);
                    }
                }
            }
        }
        // Back to the initial state, so a context switch need not save 8 KiB of tiles.
        asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub const BLOCK_COLS: usize = 32;
    pub fn available() -> bool {
        false
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_into(
        _: &[u16],
        _: usize,
        _: &[u16],
        _: &mut [f32],
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) {
        unreachable!("no AMX off x86-64")
    }
    pub unsafe fn gemm_blocks(
        _: &[u16],
        _: usize,
        _: &[u16],
        _: &[f32],
        _: usize,
        _: usize,
        _: usize,
        _: impl FnMut(usize, usize, &[f32]),
    ) {
        unreachable!("no AMX off x86-64")
    }
}

/// The bound of the module documentation for one output: (2u + u² + γ_K)·Σ|a·w| + K·2⁻¹²⁶.
pub fn error_bound(sum_abs: f64, k: usize) -> f64 {
    let u = UNIT_ROUNDOFF;
    let kf = k as f64 * f64::from(f32::EPSILON) / 2.0;
    let gamma = kf / (1.0 - kf);
    (2.0 * u + u * u + gamma) * sum_abs + k as f64 * f64::from(f32::MIN_POSITIVE)
}

/// The training products, row-major and transposed operands, awkward and tile-exact sizes,
/// within [`error_bound`] of the f64 product of the unrounded operands.
#[test]
fn matmul_views_should_stay_within_the_bf16_bound() {
    use crate::linalg::View;
    let mut s = TrainScratch::default();
    for (m, k, n) in [
        (37, 45, 19),
        (256, 256, 256),
        (16, 4, 1),
        (5, 1, 33),
        (128, 256, 16),
        (128, 200, 200),
        (33, 200, 17),
        (40, 23, 256),
        (31, 64, 48),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 997) as f32 / 400.0 - 1.2)
            .collect();
        // The same matrices as transposes of their transposed copies.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        // And as rows of a wider matrix (row strides k + 5 and n + 3) whose padding is NaN,
        // so that a read outside the view shows in the product.
        let wide = |x: &[f32], r: usize, c: usize, pad: usize| -> Vec<f32> {
            (0..r * (c + pad))
                .map(|i| {
                    let (row, col) = (i / (c + pad), i % (c + pad));
                    if col < c {
                        x[row * c + col]
                    } else {
                        f32::NAN
                    }
                })
                .collect()
        };
        let (aw, bw) = (wide(&a, m, k, 5), wide(&b, k, n, 3));
        let padded = |data, rows, cols, pad| View {
            data,
            rows,
            cols,
            rs: cols + pad,
            cs: 1,
        };
        for (av, bv) in [
            (View::rm(&a, m, k), View::rm(&b, k, n)),
            (View::rm_t(&at, k, m), View::rm_t(&bt, n, k)),
            (padded(&aw[..], m, k, 5), padded(&bw[..], k, n, 3)),
        ] {
            let mut dst = vec![f32::NAN; m * n];
            matmul_views(&mut dst, av, bv, &mut s);
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut sum_abs) = (0.0f64, 0.0f64);
                    for kk in 0..k {
                        let p = a[i * k + kk] as f64 * b[kk * n + j] as f64;
                        exact += p;
                        sum_abs += p.abs();
                    }
                    let err = (dst[i * n + j] as f64 - exact).abs();
                    assert!(
                        err <= error_bound(sum_abs, k),
                        "({m},{k},{n}) [{i},{j}]: {} vs {exact}",
                        dst[i * n + j]
                    );
                }
            }
        }
    }
}

/// B's tile layout is reused only for the same view in the same generation: a repeat gives
/// the fresh product's bits; new values of B under a new generation, and another view in
/// the same generation, are laid out again (a stale layout would give the old product).
#[test]
fn a_reused_b_layout_should_follow_the_view_and_generation() {
    use crate::linalg::View;
    let (m, k, n) = (37, 45, 29);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b1: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
    let b2: Vec<f32> = b1.iter().map(|v| v * 0.5 + 1.0).collect();
    let fresh = |b: &[f32]| {
        let mut c = vec![f32::NAN; m * n];
        matmul_views(
            &mut c,
            View::rm(&a, m, k),
            View::rm(b, k, n),
            &mut TrainScratch::default(),
        );
        c
    };
    let (want1, want2) = (fresh(&b1), fresh(&b2));
    assert_ne!(want1, want2);
    let mut s = TrainScratch::default();
    let mut b = b1.clone();
    let mut run = |b: &[f32], g: u64| {
        let mut c = vec![f32::NAN; m * n];
        matmul_views_reusing(&mut c, View::rm(&a, m, k), View::rm(b, k, n), &mut s, g);
        c
    };
    assert_eq!(run(&b, 1), want1);
    assert_eq!(run(&b, 1), want1, "reused");
    b.copy_from_slice(&b2);
    assert_eq!(run(&b, 2), want2, "new values, new generation");
    assert_eq!(run(&b1, 2), want1, "another view, same generation");
    assert_eq!(run(&b, 2), want2, "back to the first view");
}

/// The register transpose against the definition, element for element, at block-exact and
/// ragged sizes and a source line longer than the rows read.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_register_transpose_should_move_every_element() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("skipped: no AVX-512F on this CPU");
        return;
    }
    for (rows, cols, cs) in [
        (16, 16, 16),
        (256, 256, 256),
        (37, 45, 40),
        (16, 33, 17),
        (5, 3, 9),
    ] {
        let data: Vec<f32> = (0..rows + (cols - 1) * cs).map(|v| v as f32).collect();
        let mut out = vec![f32::NAN; rows * cols];
        // SAFETY: AVX-512F checked above; the largest index read is rows − 1 + (cols − 1)·cs.
        unsafe { avx512::transpose_dense(&data, cs, rows, cols, &mut out) };
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(
                    out[i * cols + j],
                    data[i + j * cs],
                    "({rows},{cols},{cs}) [{i},{j}]"
                );
            }
        }
        if std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
        {
            // Rounded to bf16 on the way, into rows of a wider stride with zeros after.
            let ld = cols + 7;
            let scaled: Vec<f32> = data.iter().map(|v| v * 1.001 - 3.7).collect();
            let mut b = vec![0xFFFFu16; rows * ld];
            // SAFETY: AVX-512F/BW/BF16 checked; as above; `b` holds rows·ld values.
            unsafe { avx512::transpose_round(&scaled, cs, rows, cols, &mut b, ld) };
            for i in 0..rows {
                for j in 0..ld {
                    let want = if j < cols {
                        to_bits(scaled[i + j * cs])
                    } else {
                        0
                    };
                    assert_eq!(
                        b[i * ld + j],
                        want,
                        "({rows},{cols},{cs}) [{i},{j}] rounded"
                    );
                }
            }
        }
    }
}

/// The first layer's input rounding: every value as `to_bits`, zeros to the tile width,
/// over a poisoned buffer, for row widths below, at and above one vector.
#[cfg(target_arch = "x86_64")]
#[test]
fn padded_row_rounding_should_round_every_value_and_zero_the_rest() {
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16"))
    {
        eprintln!("skipped: no AVX-512F/BW/BF16 on this CPU");
        return;
    }
    for (m, k, ld) in [
        (5, 4, 32),
        (3, 16, 32),
        (4, 17, 32),
        (2, 33, 64),
        (1, 32, 32),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| i as f32 * 1.37 - 9.1).collect();
        let mut dst = vec![0xFFFFu16; m * ld + 5];
        // SAFETY: AVX-512F/BW/BF16 checked above; `x` holds m·k values, `dst` more than m·ld.
        unsafe { avx512::round_rows_padded(&x, m, k, &mut dst, ld) };
        for r in 0..m {
            for j in 0..ld {
                let want = if j < k { to_bits(x[r * k + j]) } else { 0 };
                assert_eq!(dst[r * ld + j], want, "({m},{k},{ld}) [{r},{j}]");
            }
        }
        assert!(
            dst[m * ld..].iter().all(|v| *v == 0xFFFF),
            "wrote past m rows"
        );
    }
}

/// The bf16 epilogue's SiLU against f64 over a dense grid and far tails: within 1e-4 of the
/// value, plus 1e-36 below z ≈ −88, where 2^t overflows and σ is taken as 0 (the true value
/// is at most |z|·2⁻¹²⁸ ≤ 3e-37 there); the tails at their limits, NaN kept.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_short_silu_should_stay_within_its_stated_bound() {
    use std::arch::x86_64::*;
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq"))
    {
        eprintln!("skipped: no AVX-512F and DQ on this CPU");
        return;
    }
    let mut zs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 0.005).collect();
    zs.extend([
        -1e30, -500.0, -88.0, -87.0, 87.0, 89.0, 500.0, 1e30, 0.0, -0.0,
    ]);
    for chunk in zs.chunks(16) {
        let mut z = [0.0f32; 16];
        z[..chunk.len()].copy_from_slice(chunk);
        let mut y = [0.0f32; 16];
        // SAFETY: AVX-512F checked above; 16 values in and out.
        unsafe {
            let v = avx512::act_to_bf16(Activation::Silu, _mm512_loadu_ps(z.as_ptr()));
            _mm512_storeu_ps(y.as_mut_ptr(), v);
        }
        for (zv, yv) in z.iter().zip(y) {
            let x = *zv as f64;
            let want = x / (1.0 + (-x).exp());
            let err = (yv as f64 - want).abs();
            assert!(
                err <= 1e-4 * want.abs() + 1e-36,
                "silu({zv}) = {yv}, want {want}"
            );
        }
    }
    let mut y = [0.0f32; 16];
    // SAFETY: as above.
    unsafe {
        let v = avx512::act_to_bf16(Activation::Silu, _mm512_set1_ps(f32::NAN));
        _mm512_storeu_ps(y.as_mut_ptr(), v);
    }
    assert!(y.iter().all(|v| v.is_nan()));
}

/// `to_bits` is the conversion instruction's definition: the same bits as `vcvtneps2bf16`
/// for a million patterns spread over all 2³² (every exponent, both signs, subnormals, ±0,
/// ±∞, NaNs with payloads) and for the ties and the boundaries around the smallest normal.
#[cfg(target_arch = "x86_64")]
#[test]
fn to_bits_should_equal_the_conversion_instruction() {
    use std::arch::x86_64::*;
    if !std::arch::is_x86_feature_detected!("avx512bf16") {
        eprintln!("skipped: no AVX512-BF16 on this CPU");
        return;
    }
    let mut bits: Vec<u32> = (0..1u64 << 20)
        .map(|i| (i * 4093 + (i >> 7)) as u32)
        .collect();
    bits.extend([
        0x0000_0000,
        0x8000_0000,
        0x0000_0001,
        0x007f_ffff,
        0x807f_ffff,
        0x0080_0000,
        0x0080_7fff,
        0x0080_8000,
        0x0081_8000,
        0x7f7f_ffff,
        0x7f80_0000,
        0xff80_0000,
        0x7f80_0001,
        0x7fc0_0000,
        0xffff_ffff,
        0x3f80_8000,
        0x3f81_8000,
    ]);
    while !bits.len().is_multiple_of(16) {
        bits.push(0x3f80_0000);
    }
    for chunk in bits.chunks(16) {
        let x: Vec<f32> = chunk.iter().map(|b| f32::from_bits(*b)).collect();
        let mut hw = [0u16; 16];
        // SAFETY: AVX512-BF16 (with AVX-512F) was detected; 16 values in, 16 out.
        unsafe {
            let v: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr())));
            _mm256_storeu_si256(hw.as_mut_ptr() as *mut __m256i, v);
        }
        for (v, h) in x.iter().zip(hw) {
            assert_eq!(to_bits(*v), h, "{:#010x}", v.to_bits());
        }
    }
}

#[test]
fn to_bits_should_round_to_nearest_even() {
    assert_eq!(to_bits(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
    assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
    assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert_eq!(to_bits(-2.0), 0xc000);
    assert!(round(f32::NAN).is_nan());
    assert_eq!(round(f32::INFINITY), f32::INFINITY);
    for x in [0.1f32, -3.7, 1e-3, 12345.6] {
        assert_eq!(round(x), half::bf16::from_f32(x).to_f32(), "{x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::ensemble::member_forward_bf16;
    use crate::backend::{Activation, EnsembleShape};
    use crate::rng::normal;

    fn randn(n: usize, stream: u32, scale: f32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| scale * normal(11, stream, i, 0))
            .collect()
    }

    /// Every output within the rounding bound of the module documentation, against the
    /// f64 product of the unrounded f32 operands.
    fn check_matmul(path: Path, m: usize, k: usize, n: usize) {
        let a = randn(m * k, 1, 1.0);
        let w = randn(k * n, 2, 0.3);
        let packed = Packed::for_path(&w, k, n, path);
        let mut dst = vec![f32::NAN; m * n];
        matmul(&mut dst, &a, m, &packed, &mut Scratch::default());
        let mut worst = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut sum_abs) = (0.0f64, 0.0f64);
                for kk in 0..k {
                    let p = a[i * k + kk] as f64 * w[kk * n + j] as f64;
                    exact += p;
                    sum_abs += p.abs();
                }
                let err = (dst[i * n + j] as f64 - exact).abs();
                let bound = error_bound(sum_abs, k);
                assert!(
                    err <= bound,
                    "{path:?} {m}x{k}x{n} [{i},{j}]: {} vs {exact} (|Δ| {err:e} > {bound:e})",
                    dst[i * n + j]
                );
                worst = worst.max(err / bound);
            }
        }
        eprintln!("{path:?} {m}x{k}x{n}: worst error {worst:.3} of the bound");
    }

    #[test]
    fn bf16_products_should_stay_within_the_rounding_bound() {
        // Sizes off every tile multiple, one row, one column, and the PETS layer shapes.
        let sizes = [
            (1, 5, 8),
            (37, 45, 23),
            (17, 33, 17),
            (33, 200, 200),
            (64, 64, 64),
            (3, 1, 1),
        ];
        let amx_here = Path::Amx.available();
        let cpu_has_amx = std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.contains(" amx_bf16") && c.contains(" amx_tile"));
        if cpu_has_amx && std::env::var_os("MBRL_NO_AMX").is_none() {
            assert!(
                amx_here,
                "the CPU lists AMX but the tile path could not be enabled"
            );
        }
        let vnni_here = Path::Avx512Bf16.available();
        if cpu_has_amx {
            assert!(vnni_here, "an AMX CPU without usable AVX512-BF16");
        }
        for &(m, k, n) in &sizes {
            for path in [Path::Portable, Path::Avx512Bf16, Path::Amx] {
                if path.available() {
                    check_matmul(path, m, k, n);
                }
            }
        }
        for path in [Path::Avx512Bf16, Path::Amx] {
            if !path.available() {
                eprintln!("{path:?} is not available on this CPU: not checked");
            }
        }
    }

    /// A whole member network in bf16 against an f64 forward pass, with the error carried
    /// through the layers: e_out ≤ L·(Σ|w|·e_in + bound(Σ|a·w|)) + f32 epilogue rounding,
    /// L = max |act'| (1.1 for SiLU, 1 for tanh and ReLU), for each activation's epilogue.
    #[test]
    fn a_bf16_member_network_should_stay_within_the_propagated_bound() {
        for (activation, lip) in [
            (Activation::Silu, 1.1f64),
            (Activation::Tanh, 1.0),
            (Activation::Relu, 1.0),
        ] {
            for path in [Path::Portable, Path::Avx512Bf16, Path::Amx] {
                if !path.available() {
                    continue;
                }
                let shape = EnsembleShape {
                    ensemble: 2,
                    in_dim: 7,
                    out_dim: 5,
                    hidden: 45,
                    num_layers: 3,
                    activation,
                    probabilistic: true,
                };
                let lay = shape.layout();
                let params = randn(lay.total, 3, 0.25);
                // 37 rows: two row blocks of the tile product, the second a single tile.
                let rows = 37;
                let x = randn(rows * shape.in_dim, 4, 1.5);
                let (mean, std) = (vec![0.1f32; 7], vec![1.3f32; 7]);
                let e = 1;
                let packed: Vec<Packed> = lay
                    .layers
                    .iter()
                    .map(|lo| {
                        let (fi, fo) = (lo.fan_in, lo.fan_out);
                        let w = &params[lo.weight + e * fi * fo..][..fi * fo];
                        Packed::for_path(w, fi, fo, path)
                    })
                    .collect();
                let w = crate::backend::cpu::ensemble::max_width(&shape);
                let (mut a, mut b) = (vec![f32::NAN; rows * w], vec![f32::NAN; rows * w]);
                let got = member_forward_bf16(
                    &shape,
                    &lay,
                    &params,
                    &packed,
                    &mean,
                    &std,
                    e,
                    &x,
                    rows,
                    &mut a,
                    &mut b,
                    &mut ChainScratch::default(),
                )
                .to_vec();
                let act = |z: f64| match activation {
                    Activation::Silu => z / (1.0 + (-z).exp()),
                    Activation::Tanh => z.tanh(),
                    Activation::Relu => z.max(0.0),
                };
                let (mut sq_err, mut sq_ref) = (0.0f64, 0.0f64);
                for r in 0..rows {
                    // Exact values and error bounds of the current layer's input.
                    let mut h: Vec<f64> = (0..shape.in_dim)
                        .map(|j| (x[r * 7 + j] as f64 - 0.1) / 1.3f32 as f64)
                        .collect();
                    // The normaliser is f32 arithmetic in both: two roundings.
                    let mut err: Vec<f64> = h.iter().map(|v| v.abs() * 2.0 * 6e-8).collect();
                    for (l, lo) in lay.layers.iter().enumerate() {
                        let (fi, fo) = (lo.fan_in, lo.fan_out);
                        let wt = &params[lo.weight + e * fi * fo..][..fi * fo];
                        let bias = &params[lo.bias + e * fo..][..fo];
                        let last = l + 1 == lay.layers.len();
                        let mut nh = vec![0.0; fo];
                        let mut ne = vec![0.0; fo];
                        for j in 0..fo {
                            let (mut z, mut sum_abs, mut carried) = (bias[j] as f64, 0.0, 0.0);
                            for kk in 0..fi {
                                let wv = wt[kk * fo + j] as f64;
                                z += h[kk] * wv;
                                // Σ|a·w| over the computed inputs, which may exceed the
                                // exact ones by their error.
                                sum_abs += (h[kk].abs() + err[kk]) * wv.abs();
                                carried += err[kk] * wv.abs();
                            }
                            let pre = carried + error_bound(sum_abs, fi) + 6e-8 * z.abs();
                            if last {
                                nh[j] = z;
                                ne[j] = pre;
                            } else {
                                nh[j] = act(z);
                                // The epilogue's activation: 1e-4 relative (SiLU's short σ
                                // before the bf16 rounding, `act_to_bf16`), else a few ulps.
                                let own = if activation == Activation::Silu {
                                    1e-4
                                } else {
                                    1e-6
                                };
                                ne[j] = lip * pre + own * nh[j].abs() + 1e-30;
                            }
                        }
                        h = nh;
                        err = ne;
                    }
                    for j in 0..shape.head_dim() {
                        let g = got[r * shape.head_dim() + j] as f64;
                        assert!(
                            (g - h[j]).abs() <= err[j],
                            "{activation:?} {path:?} row {r} out {j}: {g} vs {} (bound {:e})",
                            h[j],
                            err[j]
                        );
                        sq_err += (g - h[j]).powi(2);
                        sq_ref += h[j].powi(2);
                    }
                }
                // The bound above is a worst case: errors carried as if they all aligned
                // (Σ|w|·e_in grows about 10× a layer here), loose enough to pass a dropped
                // bias. Typical errors are smaller: roundings of relative 2⁻⁹ that do not
                // align. Every path and activation measured 4.2–4.9e-3 relative RMS, and
                // the AMX path with its accumulators started from zero instead of the bias
                // 0.47: 2 % keeps a 4× margin over the first and fails the second.
                let rel_rms = (sq_err / sq_ref).sqrt();
                assert!(
                    rel_rms <= 2e-2,
                    "{activation:?} {path:?}: relative RMS error {rel_rms:e}"
                );
            }
        }
    }
}
