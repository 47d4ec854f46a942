//! Ensemble MLP forward and hand-written backward — the specification of `ensemble.cu` and
//! `ensemble.wgsl`.
//!
//! Shapes (E members, B rows, D = out_dim, H = hidden):
//! - inputs `x` [E, B, in], raw; normalised here: `xn = (x − μ_in) / σ_in`;
//! - layer l: `z_l = a_{l−1} · W_l + b_l`, hidden `a_l = act(z_l)`, head `raw = z_L` [E, B, 2D];
//! - mean = raw[.., :D]; log-variance soft-bounded (PETS appendix A.1, mbrl-lib GaussianMLP):
//!   `lv₁ = max − softplus(max − raw[.., D:])`, `lv = min + softplus(lv₁ − min)`.
//!
//! Work is split into tasks of (member, row chunk); every task runs the whole network on its
//! rows with single-threaded GEMMs, so there is no synchronisation between layers. Task output
//! regions tile each `[E, B, ·]` buffer in order, which lets us hand each task a disjoint
//! `&mut` slice without unsafe code.
use super::{sigmoid, softplus, Real};
use crate::backend::{Activation, EnsembleShape, LossConfig, ParamLayout};
use crate::bf16::{chain, ChainScratch, Packed};
use crate::linalg::{matmul, View};
use rayon::prelude::*;

/// Rows per task at most: keeps a task's activations (2 × rows × H floats) inside L2.
/// Measured on the 2-core Zen 5 (bench model): 128–1024 are within noise of each other for
/// the forward; 256 was best for the training epoch (39.4 ms vs 41.6 ms at 512).
const MAX_CHUNK_ROWS: usize = 256;

#[derive(Clone, Copy, Debug)]
struct Task {
    e: usize,
    r0: usize,
    nr: usize,
}

/// Split E members × `rows` rows into tasks. Chunks per member are chosen so the task count is
/// a multiple of the thread count (E = 7 on 2 threads gives 14 tasks, not 7 unbalanced ones).
fn tasks(e: usize, rows: usize) -> Vec<Task> {
    let t = rayon::current_num_threads().max(1);
    let base = t / gcd(e, t);
    let mut chunks = base * rows.div_ceil(base * MAX_CHUNK_ROWS).max(1);
    chunks = chunks.clamp(1, rows.max(1));
    let mut per = rows.div_ceil(chunks).max(1);
    // Large chunks in whole panels of the fused kernel's feature-major layout (1000 rows as
    // 256 + 256 + 256 + 232, not 4 × 250 with a partial panel in each).
    if per >= 4 * crate::dense::FM_ROWS {
        per = per.next_multiple_of(crate::dense::FM_ROWS);
    }
    let mut out = Vec::with_capacity(e * chunks);
    for m in 0..e {
        let mut r0 = 0;
        while r0 < rows {
            let nr = per.min(rows - r0);
            out.push(Task { e: m, r0, nr });
            r0 += nr;
        }
    }
    out
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Split `buf` ([E, rows, width]) into one disjoint slice per task, in task order.
fn split<'a, T>(mut buf: &'a mut [T], ts: &[Task], rows: usize, width: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ts.len());
    let mut pos = 0;
    for t in ts {
        let start = (t.e * rows + t.r0) * width;
        let (_, rest) = std::mem::take(&mut buf).split_at_mut(start - pos);
        let (mine, rest) = rest.split_at_mut(t.nr * width);
        out.push(mine);
        buf = rest;
        pos = start + t.nr * width;
    }
    out
}

fn rows_of<'a, T>(buf: &'a [T], t: &Task, rows: usize, width: usize) -> &'a [T] {
    let start = (t.e * rows + t.r0) * width;
    &buf[start..start + t.nr * width]
}

/// Scratch memory reused across calls. `Default` is empty; buffers grow on first use.
#[derive(Default)]
pub struct Workspace<T> {
    /// Per task: two ping-pong activation buffers for inference.
    scratch: Vec<[Vec<T>; 2]>,
    /// Training cache: `inputs[l]` is layer l's input [E, B, fan_in]; `pre[l]` the
    /// activation's derivative at hidden layer l's pre-activation, act'(z_l) [E, B, H];
    /// `head` the raw head output [E, B, head_dim].
    inputs: Vec<Vec<T>>,
    pre: Vec<Vec<T>>,
    head: Vec<T>,
    d_head: Vec<T>,
    /// The backward's dz of every layer below the head, [E, B, fan_out] each.
    dz: Vec<Vec<T>>,
    /// Per member, the f32 weights packed for the fused kernel by [`forward`], repacked in
    /// place (fresh allocations of a few hundred KiB per call cost page faults that made the
    /// fused forward slower than the plain GEMM on SAC's small batches) when the parameters
    /// differ from `packed_from`.
    packed: Vec<Vec<crate::dense::PackedF32>>,
    /// The shape and the parameters' bits `packed` was made from: the same model forwarded
    /// again (evaluation, MBPO's rollouts, the server) skips the copy, which was 4.5 % of
    /// `bench model`'s forward; comparing is a read of the parameters where packing is a
    /// read and a write.
    packed_from: (Option<EnsembleShape>, Vec<u32>),
    /// Training products (the hidden layers' forward with cache, and the backward) in bf16
    /// with f32 sums ([`crate::bf16::matmul_views`], on AMX tiles where present). Only f32
    /// runs them; the f64 gradient checks ignore it.
    pub bf16_training: bool,
}

/// The arithmetic of a layer product: the f32 (f64) specification, or bf16 operands with f32
/// sums ([`crate::bf16::matmul_views`]), optionally reusing B's tile layout from the thread's
/// previous product with the same B view and generation (see
/// [`crate::bf16::matmul_views_reusing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Products {
    F32,
    Bf16,
    Bf16Reusing(u64),
}

impl Products {
    fn bf16(self) -> bool {
        self != Products::F32
    }

    /// bf16 products whose B operands keep their values until the next call of this: a
    /// pass over the cached forward or backward, where the weights are fixed.
    fn bf16_pass(bf16: bool) -> Self {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if bf16 {
            let g = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Products::Bf16Reusing(g + 1)
        } else {
            Products::F32
        }
    }
}

/// `dst = a · b`, in bf16 products when asked and `T` is f32, else the f32 (f64) GEMM.
fn mm<T: Real>(dst: &mut [T], a: View<'_, T>, b: View<'_, T>, products: Products) {
    if products.bf16() {
        if let (Some(ad), Some(bd)) = (T::f32_slice(a.data), T::f32_slice(b.data)) {
            thread_local! {
                static SCRATCH: std::cell::RefCell<crate::bf16::TrainScratch> =
                    std::cell::RefCell::default();
            }
            let d = T::f32_slice_mut(dst).expect("f32 like its operands");
            let (av, bv) = (a.with_data(ad), b.with_data(bd));
            SCRATCH.with_borrow_mut(|s| match products {
                Products::Bf16Reusing(g) => crate::bf16::matmul_views_reusing(d, av, bv, s, g),
                _ => crate::bf16::matmul_views(d, av, bv, s),
            });
            return;
        }
    }
    matmul(dst, a, b, false);
}

fn grow<T: Real>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::zero());
    }
}

#[inline(always)]
pub(crate) fn act<T: Real>(a: Activation, z: T) -> T {
    match a {
        Activation::Silu => z / (T::one() + (-z).exp_fast()),
        Activation::Relu => z.max(T::zero()),
        Activation::Tanh => z.tanh(),
    }
}

/// With z = v + b (`b` added to every row of `z`, [rows × b.len()]): `out = act(z)` and, in
/// place, `z ← act'(z)`. The forward keeps the derivative rather than the pre-activation,
/// so the backward is one multiply (for SiLU both come from one σ); the bias is added in
/// the same pass over the product.
///
/// With `fast` (bf16 training, whose products are only good to 2⁻⁸ anyway) f32 runs
/// [`crate::dense::bias_act_grad`] where AVX-512 is present: 16 lanes with the inference
/// layer's exp and reciprocal, within 2e-6 of act and 4e-6 of act' (its test), where this
/// scalar loop, the specification that f32 training follows bit for bit, vectorises at 8
/// lanes with a true division (12 % of a bf16 training epoch).
fn bias_activate_with_grad<T: Real>(
    a: Activation,
    z: &mut [T],
    b: &[T],
    out: &mut [T],
    fast: bool,
) {
    if fast {
        if let (Some(bf), Some(of)) = (T::f32_slice(b), T::f32_slice_mut(out)) {
            let zf = T::f32_slice_mut(z).expect("f32 like its bias");
            if crate::dense::bias_act_grad(a, zf, bf, of) {
                return;
            }
        }
    }
    macro_rules! go {
        (|$x:ident, $o:ident, $v:ident| $body:expr) => {
            for (orow, zrow) in out
                .chunks_exact_mut(b.len())
                .zip(z.chunks_exact_mut(b.len()))
            {
                for (($o, $v), bb) in orow.iter_mut().zip(zrow.iter_mut()).zip(b) {
                    let $x = *$v + *bb;
                    $body
                }
            }
        };
    }
    match a {
        Activation::Silu => go!(|x, o, v| {
            let s = T::one() / (T::one() + (-x).exp_fast());
            *o = x * s;
            *v = s * (T::one() + x * (T::one() - s));
        }),
        Activation::Relu => go!(|x, o, v| {
            *o = act(Activation::Relu, x);
            *v = act_grad(Activation::Relu, x);
        }),
        Activation::Tanh => go!(|x, o, v| {
            let t = x.tanh();
            *o = t;
            *v = T::one() - t * t;
        }),
    }
}

/// d act / dz at z.
#[inline(always)]
fn act_grad<T: Real>(a: Activation, z: T) -> T {
    match a {
        // d/dz z·σ(z) = σ(z)·(1 + z·(1 − σ(z)))
        Activation::Silu => {
            let s = sigmoid(z);
            s * (T::one() + z * (T::one() - s))
        }
        Activation::Relu => {
            if z > T::zero() {
                T::one()
            } else {
                T::zero()
            }
        }
        Activation::Tanh => {
            let t = z.tanh();
            T::one() - t * t
        }
    }
}

/// `dst[nr × fan_out] = act(src[nr × fan_in] · W + b)` (no activation for the head). The
/// bias and activation run as one pass over the GEMM's output while it is still in cache;
/// with `pre` given, the pre-activation is kept there for the backward pass.
#[allow(clippy::too_many_arguments)]
fn linear<T: Real>(
    dst: &mut [T],
    pre: Option<&mut [T]>,
    src: &[T],
    params: &[T],
    lay: &ParamLayout,
    l: usize,
    e: usize,
    nr: usize,
    activation: Option<Activation>,
    products: Products,
) {
    let lo = lay.layers[l];
    let (fi, fo) = (lo.fan_in, lo.fan_out);
    let w = &params[lo.weight + e * fi * fo..lo.weight + (e + 1) * fi * fo];
    let b = &params[lo.bias + e * fo..lo.bias + (e + 1) * fo];
    let src = View::rm(&src[..nr * fi], nr, fi);
    let w = View::rm(w, fi, fo);
    match (pre, activation) {
        (None, a) => {
            let dst = &mut dst[..nr * fo];
            if products.bf16() {
                mm(dst, src, w, products);
                bias_act(dst, b, a);
            } else if !T::dense_layer(dst, src.data, nr, w.data, fi, fo, b, a) {
                matmul(dst, src, w, false);
                bias_act(dst, b, a);
            }
        }
        (Some(pre), a) => {
            let pre = &mut pre[..nr * fo];
            mm(pre, src, w, products);
            match a {
                Some(a) => bias_activate_with_grad(a, pre, b, &mut dst[..nr * fo], products.bf16()),
                None => {
                    for row in pre.chunks_exact_mut(fo) {
                        row.iter_mut().zip(b).for_each(|(v, bb)| *v += *bb);
                    }
                    dst[..nr * fo].copy_from_slice(pre)
                }
            }
        }
    }
}

/// `v ← act(v + b)` over the rows of a layer's product (no activation for the head), one
/// pass while the product is still in cache.
fn bias_act<T: Real>(dst: &mut [T], b: &[T], activation: Option<Activation>) {
    let fo = b.len();
    macro_rules! go {
        ($k:expr) => {
            for row in dst.chunks_exact_mut(fo) {
                row.iter_mut()
                    .zip(b)
                    .for_each(|(v, bb)| *v = act($k, *v + *bb));
            }
        };
    }
    match activation {
        None => {
            for row in dst.chunks_exact_mut(fo) {
                row.iter_mut().zip(b).for_each(|(v, bb)| *v += *bb);
            }
        }
        Some(Activation::Silu) => go!(Activation::Silu),
        Some(Activation::Relu) => go!(Activation::Relu),
        Some(Activation::Tanh) => go!(Activation::Tanh),
    }
}

fn normalise<T: Real>(dst: &mut [T], x: &[T], mean: &[T], std: &[T], nr: usize) {
    let d = mean.len();
    for (o, i) in dst[..nr * d].chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        for j in 0..d {
            o[j] = (i[j] - mean[j]) / std[j];
        }
    }
}

/// Split the head output into mean and bounded log-variance.
pub(crate) fn head_out<T: Real>(
    shape: &EnsembleShape,
    params: &[T],
    lay: &ParamLayout,
    raw: &[T],
    nr: usize,
    mean: &mut [T],
    logvar: &mut [T],
) {
    let (d, hd) = (shape.out_dim, shape.head_dim());
    for r in 0..nr {
        let src = &raw[r * hd..(r + 1) * hd];
        mean[r * d..(r + 1) * d].copy_from_slice(&src[..d]);
        if shape.probabilistic {
            logvar[r * d..(r + 1) * d].copy_from_slice(&src[d..]);
        }
    }
    if !shape.probabilistic {
        return;
    }
    // The soft bounds over the contiguous [nr × d] block, in chunks of 16·d values whose
    // bounds repeat with period d, so the loop runs over plain slices and vectorises.
    let mx = &params[lay.max_logvar..lay.max_logvar + d];
    let mn = &params[lay.min_logvar..lay.min_logvar + d];
    const LANES: usize = 16;
    let mut hi = [T::zero(); 16 * 64];
    let mut lo = [T::zero(); 16 * 64];
    let period = LANES * d;
    if period > hi.len() {
        // Wide heads: one row at a time.
        for row in logvar[..nr * d].chunks_exact_mut(d) {
            for ((o, h), l) in row.iter_mut().zip(mx).zip(mn) {
                *o = bound_logvar(*o, *h, *l);
            }
        }
        return;
    }
    for k in 0..period {
        hi[k] = mx[k % d];
        lo[k] = mn[k % d];
    }
    for chunk in logvar[..nr * d].chunks_mut(period) {
        let (h, l) = (&hi[..period], &lo[..period]);
        // f32 with a fused kernel (AVX-512 or AVX2): the same bounds 16 or 8 lanes at a time
        // (`dense::bound_logvar`).
        if let (Some(c), Some(h), Some(l)) =
            (T::f32_slice_mut(chunk), T::f32_slice(h), T::f32_slice(l))
        {
            if crate::dense::bound_logvar(c, h, l) {
                continue;
            }
        }
        for ((o, h), l) in chunk.iter_mut().zip(h).zip(l) {
            *o = bound_logvar(*o, *h, *l);
        }
    }
}

/// PETS's soft bounds of the log-variance: max − softplus(max − raw), then
/// min + softplus(· − min).
#[inline(always)]
fn bound_logvar<T: Real>(raw: T, hi: T, lo: T) -> T {
    let lv1 = hi - softplus(hi - raw);
    lo + softplus(lv1 - lo)
}

/// Inference forward pass: `x` [E, rows, in] → `mean`, `logvar` [E, rows, out].
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    shape: &EnsembleShape,
    params: &[T],
    in_mean: &[T],
    in_std: &[T],
    x: &[T],
    rows: usize,
    mean: &mut [T],
    logvar: &mut [T],
    ws: &mut Workspace<T>,
) {
    let lay = shape.layout();
    let ts = tasks(shape.ensemble, rows);
    let width = max_width(shape);
    if ws.scratch.len() < ts.len() {
        ws.scratch.resize_with(ts.len(), Default::default);
    }
    let d = shape.out_dim;
    let means = split(mean, &ts, rows, d);
    let lv_width = if shape.probabilistic { d } else { 0 };
    let lvs = split(logvar, &ts, rows, lv_width);
    // In f32 with a fused kernel (AVX-512 or AVX2): every member's weights packed once for the fused kernel (not in
    // the bf16 training mode, whose products go through the tiles).
    let bf16 = ws.bf16_training;
    let packed: &[Vec<crate::dense::PackedF32>] = match T::f32_slice(params) {
        Some(p) if crate::dense::fused_available() && !bf16 => {
            let bits: &[u32] = bytemuck::cast_slice(p);
            let (from_shape, from_bits) = &mut ws.packed_from;
            if *from_shape != Some(*shape) || from_bits[..] != *bits {
                ws.packed.resize_with(shape.ensemble, Vec::new);
                ws.packed[..shape.ensemble]
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(e, pk)| repack_member_f32(shape, p, e, pk));
                *from_shape = Some(*shape);
                from_bits.clear();
                from_bits.extend_from_slice(bits);
            }
            &ws.packed[..shape.ensemble]
        }
        _ => &[],
    };
    ts.par_iter()
        .zip(ws.scratch.par_iter_mut())
        .zip(means.into_par_iter().zip(lvs.into_par_iter()))
        .for_each(|((t, scr), (m_out, lv_out))| {
            let [a, b] = scr;
            // Room for the fused path's feature-major blocks (≥ nr × width).
            grow(a, crate::dense::fm_len(t.nr, width));
            grow(b, crate::dense::fm_len(t.nr, width));
            let x = rows_of(x, t, rows, shape.in_dim);
            if let Some(pk) = packed.get(t.e) {
                // f32 with weights packed once above for the fused kernel.
                fn f<T: Real>(s: &[T]) -> &[f32] {
                    T::f32_slice(s).expect("f32 was checked when packing")
                }
                let (p, m, s) = (f(params), f(in_mean), f(in_std));
                let (a, b) = (T::f32_slice_mut(a), T::f32_slice_mut(b));
                let (a, b) = (a.expect("f32"), b.expect("f32"));
                let raw = member_forward_packed(shape, &lay, p, pk, m, s, t.e, f(x), t.nr, a, b);
                let (mo, lo) = (T::f32_slice_mut(m_out), T::f32_slice_mut(lv_out));
                head_out(
                    shape,
                    p,
                    &lay,
                    raw,
                    t.nr,
                    mo.expect("f32"),
                    lo.expect("f32"),
                );
            } else {
                let raw = member_forward(
                    shape, &lay, params, in_mean, in_std, t.e, x, t.nr, a, b, bf16,
                );
                head_out(shape, params, &lay, raw, t.nr, m_out, lv_out);
            }
        });
}

/// Member `e`'s network on `nr` raw input rows `x` [nr, in], single-threaded, using the two
/// scratch buffers (each ≥ nr × max width). Returns the raw head output [nr, head_dim],
/// which lives in one of the scratch buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn member_forward<'s, T: Real>(
    shape: &EnsembleShape,
    lay: &ParamLayout,
    params: &[T],
    in_mean: &[T],
    in_std: &[T],
    e: usize,
    x: &[T],
    nr: usize,
    mut a: &'s mut [T],
    mut b: &'s mut [T],
    bf16: bool,
) -> &'s [T] {
    normalise(a, x, in_mean, in_std, nr);
    for l in 0..lay.layers.len() {
        let activation = (l < shape.num_layers).then_some(shape.activation);
        // The head (a few columns) stays f32 either way.
        let products = if bf16 && l < shape.num_layers {
            Products::Bf16
        } else {
            Products::F32
        };
        linear(b, None, a, params, lay, l, e, nr, activation, products);
        std::mem::swap(&mut a, &mut b);
    }
    &a[..nr * shape.head_dim()]
}

/// [`member_forward`] in f32 with the member's weights already packed for the fused kernel
/// of [`crate::dense`] ([`crate::dense::PackedF32::feature_major`]): the activations kept
/// feature-major between the layers ([`crate::dense::layer_fm`]), the same sums in the same
/// order as the unpacked call. `a` and `b` hold at least [`crate::dense::fm_len`]`(nr, max
/// width)` values; the raw head output comes back row-major.
#[allow(clippy::too_many_arguments)]
pub(crate) fn member_forward_packed<'s>(
    shape: &EnsembleShape,
    lay: &ParamLayout,
    params: &[f32],
    packed: &[crate::dense::PackedF32],
    in_mean: &[f32],
    in_std: &[f32],
    e: usize,
    x: &[f32],
    nr: usize,
    a: &'s mut [f32],
    b: &'s mut [f32],
) -> &'s [f32] {
    normalise_fm(a, b, x, in_mean, in_std, nr);
    let (head, out) = member_layers_fm(shape, lay, params, packed, e, nr, 0, a, b);
    let hd = shape.head_dim();
    crate::dense::from_fm(out, head, nr, hd, 0, hd);
    &out[..nr * hd]
}

/// The normalised model input of `nr` rows of `x`, feature-major in `dst`
/// ([`crate::dense::fm_len`]`(nr, in_dim)`), through `tmp` (`nr × in_dim`): what the fused
/// chain reads, shared by every member where the rows are the same (the planners'
/// expectation over members).
pub(crate) fn normalise_fm(
    dst: &mut [f32],
    tmp: &mut [f32],
    x: &[f32],
    in_mean: &[f32],
    in_std: &[f32],
    nr: usize,
) {
    normalise(tmp, x, in_mean, in_std, nr);
    crate::dense::to_fm(dst, tmp, nr, in_mean.len());
}

/// Member `e`'s layers `first..` on feature-major activations ([`crate::dense::layer_fm`]),
/// the input to layer `first` in `a`. Returns the raw head output, feature-major
/// ([`crate::dense::fm_len`]`(nr, head_dim)` values), and the other buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn member_layers_fm<'s>(
    shape: &EnsembleShape,
    lay: &ParamLayout,
    params: &[f32],
    packed: &[crate::dense::PackedF32],
    e: usize,
    nr: usize,
    first: usize,
    mut a: &'s mut [f32],
    mut b: &'s mut [f32],
) -> (&'s mut [f32], &'s mut [f32]) {
    for l in first..lay.layers.len() {
        layer_fm_of(shape, lay, params, packed, e, l, nr, b, a);
        std::mem::swap(&mut a, &mut b);
    }
    (a, b)
}

/// Layer `l` of member `e` on feature-major activations, `src` to `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_fm_of(
    shape: &EnsembleShape,
    lay: &ParamLayout,
    params: &[f32],
    packed: &[crate::dense::PackedF32],
    e: usize,
    l: usize,
    nr: usize,
    dst: &mut [f32],
    src: &[f32],
) {
    let lo = &lay.layers[l];
    let activation = (l < shape.num_layers).then_some(shape.activation);
    let bias = &params[lo.bias + e * lo.fan_out..][..lo.fan_out];
    let fused = crate::dense::layer_fm(dst, src, nr, &packed[l], bias, activation);
    assert!(fused, "f32 weights were packed for the fused kernel");
}

/// Member `e`'s weights packed for the fused f32 kernel, one panel set per layer.
pub(crate) fn pack_member_f32(
    shape: &EnsembleShape,
    params: &[f32],
    e: usize,
) -> Vec<crate::dense::PackedF32> {
    shape
        .layout()
        .layers
        .iter()
        .map(|lo| {
            let (fi, fo) = (lo.fan_in, lo.fan_out);
            crate::dense::PackedF32::feature_major(
                &params[lo.weight + e * fi * fo..][..fi * fo],
                fi,
                fo,
            )
        })
        .collect()
}

/// [`pack_member_f32`] into `out`, reusing its memory.
fn repack_member_f32(
    shape: &EnsembleShape,
    params: &[f32],
    e: usize,
    out: &mut Vec<crate::dense::PackedF32>,
) {
    let lay = shape.layout();
    out.resize_with(lay.layers.len(), || {
        crate::dense::PackedF32::feature_major(&[], 0, 0)
    });
    for (pk, lo) in out.iter_mut().zip(&lay.layers) {
        let (fi, fo) = (lo.fan_in, lo.fan_out);
        pk.repack(&params[lo.weight + e * fi * fo..][..fi * fo], fi, fo);
    }
}

/// Member `e`'s weights packed for bf16 products, one [`Packed`] per layer (head last).
pub(crate) fn pack_member(shape: &EnsembleShape, params: &[f32], e: usize) -> Vec<Packed> {
    let lay = shape.layout();
    lay.layers
        .iter()
        .map(|lo| {
            let (fi, fo) = (lo.fan_in, lo.fan_out);
            Packed::new(&params[lo.weight + e * fi * fo..][..fi * fo], fi, fo)
        })
        .collect()
}

/// [`member_forward`] with every layer's product in bf16 with f32 sums ([`crate::bf16`]):
/// layer inputs and weights rounded to bf16; normaliser, bias, activation and head in f32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn member_forward_bf16<'s>(
    shape: &EnsembleShape,
    lay: &ParamLayout,
    params: &[f32],
    packed: &[Packed],
    in_mean: &[f32],
    in_std: &[f32],
    e: usize,
    x: &[f32],
    nr: usize,
    a: &'s mut [f32],
    b: &'s mut [f32],
    scratch: &mut ChainScratch,
) -> &'s [f32] {
    normalise(b, x, in_mean, in_std, nr);
    // On the stack: this runs once per member group and horizon step (ModelConfig caps the
    // hidden layers at 64, so at most 65 linear layers).
    let mut biases: [&[f32]; 65] = [&[]; 65];
    let nl = lay.layers.len();
    assert!(nl <= biases.len(), "{nl} layers");
    for (b, lo) in biases.iter_mut().zip(&lay.layers) {
        *b = &params[lo.bias + e * lo.fan_out..][..lo.fan_out];
    }
    let biases = &biases[..nl];
    let hd = shape.head_dim();
    chain(
        b,
        nr,
        packed,
        biases,
        shape.activation,
        &mut a[..nr * hd],
        scratch,
    );
    &a[..nr * hd]
}

/// (max_logvar, min_logvar) of a probabilistic ensemble; empty slices otherwise.
fn logvar_bounds<'p, T>(
    shape: &EnsembleShape,
    lay: &ParamLayout,
    params: &'p [T],
) -> (&'p [T], &'p [T]) {
    if !shape.probabilistic {
        return (&params[0..0], &params[0..0]);
    }
    let d = shape.out_dim;
    (
        &params[lay.max_logvar..lay.max_logvar + d],
        &params[lay.min_logvar..lay.min_logvar + d],
    )
}

/// Widest activation any layer of `shape` produces or consumes.
pub(crate) fn max_width(shape: &EnsembleShape) -> usize {
    shape.hidden.max(shape.head_dim()).max(shape.in_dim)
}

/// Forward pass that keeps every layer's input and pre-activation for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn forward_cached<T: Real>(
    shape: &EnsembleShape,
    params: &[T],
    in_mean: &[T],
    in_std: &[T],
    x: &[T],
    rows: usize,
    mean: &mut [T],
    logvar: &mut [T],
    ws: &mut Workspace<T>,
) {
    let lay = shape.layout();
    let ts = tasks(shape.ensemble, rows);
    let e = shape.ensemble;
    let nl = lay.layers.len();
    // The weights are fixed through this pass: a thread reuses their tile layout.
    let products = Products::bf16_pass(ws.bf16_training);
    ws.inputs.resize_with(nl, Vec::new);
    ws.pre.resize_with(shape.num_layers, Vec::new);
    for (l, lo) in lay.layers.iter().enumerate() {
        grow(&mut ws.inputs[l], e * rows * lo.fan_in);
        if l < shape.num_layers {
            grow(&mut ws.pre[l], e * rows * lo.fan_out);
        }
    }
    grow(&mut ws.head, e * rows * shape.head_dim());
    // Per-task slices of every cached buffer.
    let mut ins: Vec<Vec<&mut [T]>> = ws
        .inputs
        .iter_mut()
        .zip(&lay.layers)
        .map(|(b, lo)| split(b, &ts, rows, lo.fan_in))
        .collect();
    let mut pres: Vec<Vec<&mut [T]>> = ws
        .pre
        .iter_mut()
        .map(|b| split(b, &ts, rows, shape.hidden))
        .collect();
    let heads = split(&mut ws.head, &ts, rows, shape.head_dim());
    let d = shape.out_dim;
    let means = split(mean, &ts, rows, d);
    let lvs = split(logvar, &ts, rows, if shape.probabilistic { d } else { 0 });
    // Regroup per task.
    type Slices<'s, T> = Vec<&'s mut [T]>;
    let mut per_task: Vec<(Slices<T>, Slices<T>)> = (0..ts.len())
        .map(|_| (Vec::with_capacity(nl), Vec::with_capacity(nl)))
        .collect();
    for layer in ins.iter_mut() {
        for (i, s) in layer.drain(..).enumerate() {
            per_task[i].0.push(s);
        }
    }
    for layer in pres.iter_mut() {
        for (i, s) in layer.drain(..).enumerate() {
            per_task[i].1.push(s);
        }
    }
    ts.par_iter()
        .zip(per_task.into_par_iter())
        .zip(heads.into_par_iter())
        .zip(means.into_par_iter().zip(lvs.into_par_iter()))
        .for_each(|(((t, (mut inp, mut pre)), head), (m_out, lv_out))| {
            normalise(
                inp[0],
                rows_of(x, t, rows, shape.in_dim),
                in_mean,
                in_std,
                t.nr,
            );
            for l in 0..shape.num_layers {
                let (lo, hi) = inp.split_at_mut(l + 1);
                linear(
                    hi[0],
                    Some(&mut *pre[l]),
                    lo[l],
                    params,
                    &lay,
                    l,
                    t.e,
                    t.nr,
                    Some(shape.activation),
                    products,
                );
            }
            linear(
                head,
                None,
                inp[nl - 1],
                params,
                &lay,
                nl - 1,
                t.e,
                t.nr,
                None,
                Products::F32,
            );
            head_out(shape, params, &lay, head, t.nr, m_out, lv_out);
        });
}

/// Backward pass from `d_head` (gradient w.r.t. the raw head output, already in the workspace)
/// through the cached activations. Writes the parameter gradient (overwriting `grad`, flat
/// layout) if given, and, if given, the gradient w.r.t. the raw inputs `dx` [E, rows, in].
/// Without `grad` the weight products are skipped (SAC's actor step needs the critics' input
/// gradient only).
///
/// Two phases. First, per task (a member's block of rows), the chain dz_l → da = dz_l·W_lᵀ →
/// dz_{l−1} = da ⊙ act'(z_{l−1}), every layer's dz kept in the workspace. Then each weight
/// gradient dW_l = a_lᵀ·dz_l and db_l = Σ_rows dz_l is one product over all of the member's
/// rows, written straight into `grad`: no per-task partial gradients to store and add, and
/// sums that do not depend on how the rows were split among threads (the same model from a
/// fixed seed on 2 cores and on 64).
fn backward_from_head<T: Real>(
    shape: &EnsembleShape,
    params: &[T],
    in_std: &[T],
    rows: usize,
    grad: Option<&mut [T]>,
    dx: Option<&mut [T]>,
    ws: &mut Workspace<T>,
) {
    let lay = shape.layout();
    let ts = tasks(shape.ensemble, rows);
    let nl = lay.layers.len();
    let e = shape.ensemble;
    let width = max_width(shape);
    if ws.scratch.len() < ts.len() {
        ws.scratch.resize_with(ts.len(), Default::default);
    }
    let want_dx = dx.is_some();
    let products = Products::bf16_pass(ws.bf16_training);
    // dz of every layer below the head ([E, rows, fan_out]); the head's is `d_head`.
    ws.dz.resize_with(nl - 1, Vec::new);
    for (l, lo) in lay.layers[..nl - 1].iter().enumerate() {
        grow(&mut ws.dz[l], e * rows * lo.fan_out);
    }
    let mut dx_store: Vec<T> = Vec::new();
    let dx_buf: &mut [T] = match dx {
        Some(d) => d,
        None => &mut dx_store,
    };
    let dxs = split(dx_buf, &ts, rows, if want_dx { shape.in_dim } else { 0 });
    let mut per_task: Vec<Vec<&mut [T]>> = (0..ts.len()).map(|_| Vec::with_capacity(nl)).collect();
    for (buf, lo) in ws.dz.iter_mut().zip(&lay.layers) {
        for (i, sl) in split(buf, &ts, rows, lo.fan_out).into_iter().enumerate() {
            per_task[i].push(sl);
        }
    }
    let pre = &ws.pre;
    let d_head = &ws.d_head;
    let hd = shape.head_dim();
    // The lowest layer whose input gradient is needed: layer 0's only for `dx`.
    let lowest = if want_dx { 0 } else { 1 };
    ts.par_iter()
        .zip(ws.scratch.par_iter_mut())
        .zip(per_task.into_par_iter())
        .zip(dxs.into_par_iter())
        .for_each(|(((t, scr), mut dzs), dx_out)| {
            let da = &mut scr[0];
            grow(da, t.nr * width);
            for l in (lowest..nl).rev() {
                let lo = lay.layers[l];
                let (fi, fo) = (lo.fan_in, lo.fan_out);
                let (below, here) = dzs.split_at_mut(l.min(nl - 1));
                let dz: &[T] = if l == nl - 1 {
                    rows_of(d_head, t, rows, hd)
                } else {
                    &here[0][..t.nr * fo]
                };
                // da = dz · Wᵀ
                let w = &params[lo.weight + t.e * fi * fo..lo.weight + (t.e + 1) * fi * fo];
                mm(
                    &mut da[..t.nr * fi],
                    View::rm(dz, t.nr, fo),
                    View::rm_t(w, fi, fo),
                    products,
                );
                if l > 0 {
                    // pre holds act'(z) (see bias_activate_with_grad): dz = da ⊙ act'(z).
                    let g = rows_of(&pre[l - 1], t, rows, fi);
                    let d = &mut below[l - 1][..t.nr * fi];
                    for ((d, a), gg) in d.iter_mut().zip(&da[..t.nr * fi]).zip(g) {
                        *d = *a * *gg;
                    }
                } else {
                    // xn = (x − μ)/σ  ⇒  dx = dxn / σ
                    let d = shape.in_dim;
                    for (o, i) in dx_out.chunks_exact_mut(d).zip(da.chunks_exact(d)) {
                        for j in 0..d {
                            o[j] = i[j] / in_std[j];
                        }
                    }
                }
            }
        });
    if let Some(grad) = grad {
        weight_grads(shape, rows, grad, ws, None);
    }
}

/// An optimiser's update of one block: (parameters, gradient, first moments, second moments).
pub(crate) type BlockUpdate<'a, T> = &'a (dyn Fn(&mut [T], &[T], &mut [T], &mut [T]) + Sync);

/// Decay and Adam, applied by [`weight_grads`] to each block of the gradient as soon as it
/// is made (while it is in cache), instead of in passes over the whole gradient after it.
pub(crate) struct AdamFuse<'a, T> {
    /// Parameters and moments, flat layout like the gradient.
    pub params: &'a mut [T],
    pub m: &'a mut [T],
    pub v: &'a mut [T],
    /// L2 coefficient of each layer's weights (head last), added to their gradient first.
    pub decay: &'a [T],
    /// The update: (w, g, m, v) of one block.
    pub update: BlockUpdate<'a, T>,
}

/// The second phase of [`backward_from_head`]: each (layer, member) weight gradient
/// dW = aᵀ·dz and db = Σ_rows dz as one product over all of the member's rows, from the
/// layer inputs and dz kept in the workspace, written into `grad` (every layer's W and b;
/// the log-variance bounds are the caller's). With `fuse`, each job then adds the weight
/// decay to its block and applies the update to the same block of parameters and moments.
fn weight_grads<T: Real>(
    shape: &EnsembleShape,
    rows: usize,
    grad: &mut [T],
    ws: &Workspace<T>,
    fuse: Option<AdamFuse<'_, T>>,
) {
    let lay = shape.layout();
    let nl = lay.layers.len();
    let e = shape.ensemble;
    let hd = shape.head_dim();
    let products = if ws.bf16_training {
        Products::Bf16
    } else {
        Products::F32
    };
    // The weight gradients: jobs of (layer, member, block of the weight's rows), the rows
    // split only as far as needed to give every thread a share of each layer (a single
    // member's network, SAC's actor, would otherwise leave one thread idle on its one
    // 256 × 256 product). Every block packs all of dz again for the tile unit, so no more
    // blocks than that: three per member made SAC's step 5 % slower than two. Each job
    // writes its own block of dW; the block starting at row 0 also writes db.
    let threads = rayon::current_num_threads().max(1);
    let splits = threads.div_ceil(e);
    struct Job {
        l: usize,
        m: usize,
        i0: usize,
        ni: usize,
    }
    let mut jobs = Vec::new();
    for (l, lo) in lay.layers.iter().enumerate() {
        let fi = lo.fan_in;
        let block = fi.div_ceil(splits).div_ceil(32) * 32;
        for m in 0..e {
            for i0 in (0..fi).step_by(block.max(1)) {
                jobs.push(Job {
                    l,
                    m,
                    i0,
                    ni: block.min(fi - i0),
                });
            }
        }
    }
    // Each job's spans of the flat layout: dW rows i0..i0 + ni of (layer, member) and, for
    // the first block, db of (layer, member). The gradient, and with `fuse` the parameters
    // and moments, are carved into those disjoint slices.
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(2 * jobs.len());
    for job in &jobs {
        let lo = lay.layers[job.l];
        let (fi, fo) = (lo.fan_in, lo.fan_out);
        spans.push((lo.weight + (job.m * fi + job.i0) * fo, job.ni * fo));
        spans.push(if job.i0 == 0 {
            (lo.bias + job.m * fo, fo)
        } else {
            (0, 0)
        });
    }
    type Pair<'s, T> = (&'s mut [T], Option<&'s mut [T]>);
    let grads = carve_pairs(grad, &spans);
    type Fused<'s, T> = Option<(Pair<'s, T>, Pair<'s, T>, Pair<'s, T>)>;
    type Step<'s, T> = Option<(&'s [T], BlockUpdate<'s, T>)>;
    let (fused, step): (Vec<Fused<T>>, Step<T>) = match fuse {
        Some(f) => {
            let p = carve_pairs(f.params, &spans);
            let (m, v) = (carve_pairs(f.m, &spans), carve_pairs(f.v, &spans));
            let z = p
                .into_iter()
                .zip(m)
                .zip(v)
                .map(|((p, m), v)| Some((p, m, v)));
            (z.collect(), Some((f.decay, f.update)))
        }
        None => ((0..jobs.len()).map(|_| None).collect(), None),
    };
    let inputs = &ws.inputs;
    let dz_bufs = &ws.dz;
    let d_head = &ws.d_head;
    jobs.par_iter()
        .zip(grads.into_par_iter().zip(fused.into_par_iter()))
        .for_each(|(job, ((gw, mut gb), fused))| {
            let lo = lay.layers[job.l];
            let (fi, fo) = (lo.fan_in, lo.fan_out);
            let a_in = &inputs[job.l][job.m * rows * fi..(job.m + 1) * rows * fi];
            let dz = if job.l == nl - 1 {
                &d_head[job.m * rows * hd..(job.m + 1) * rows * hd]
            } else {
                &dz_bufs[job.l][job.m * rows * fo..(job.m + 1) * rows * fo]
            };
            // dW[i0..i0 + ni] = (a_in[:, i0..i0 + ni])ᵀ · dz
            let a_t = View {
                data: &a_in[job.i0..],
                rows: job.ni,
                cols: rows,
                rs: 1,
                cs: fi,
            };
            mm(gw, a_t, View::rm(dz, rows, fo), products);
            if let Some(gb) = gb.as_deref_mut() {
                gb.iter_mut().for_each(|g| *g = T::zero());
                for row in dz.chunks_exact(fo) {
                    for (g, v) in gb.iter_mut().zip(row) {
                        *g += *v;
                    }
                }
            }
            if let (Some(((pw, pb), (mw, mb), (vw, vb))), Some((decay, update))) = (fused, step) {
                let wd = decay[job.l];
                if wd != T::zero() {
                    for (g, w) in gw.iter_mut().zip(pw.iter()) {
                        *g += wd * *w;
                    }
                }
                update(pw, gw, mw, vw);
                if let (Some(pb), Some(gb), Some(mb), Some(vb)) = (pb, gb, mb, vb) {
                    update(pb, gb, mb, vb);
                }
            }
        });
}

/// `buf` carved into the disjoint slices `spans` names, in pairs (span 2j, span 2j + 1) =
/// (always present, present unless of length 0). Spans may come in any order.
fn carve_pairs<'a, T>(
    buf: &'a mut [T],
    spans: &[(usize, usize)],
) -> Vec<(&'a mut [T], Option<&'a mut [T]>)> {
    let mut order: Vec<usize> = (0..spans.len())
        .filter(|&i| spans[i].1 > 0 || i % 2 == 0)
        .collect();
    order.sort_by_key(|&i| spans[i].0);
    let mut out: Vec<Option<&'a mut [T]>> = (0..spans.len()).map(|_| None).collect();
    let (mut rest, mut base) = (buf, 0);
    for i in order {
        let (start, len) = spans[i];
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - base);
        let (mine, tail) = tail.split_at_mut(len);
        out[i] = Some(mine);
        (rest, base) = (tail, start + len);
    }
    let mut it = out.into_iter();
    let mut pairs = Vec::with_capacity(spans.len() / 2);
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        pairs.push((a.expect("the first span of a pair is always carved"), b));
    }
    pairs
}

/// Chain rule through the soft log-variance bounds for one row: from d mean / d lv to
/// d raw, accumulating d max_logvar / d min_logvar into `db` = [d max (D), d min (D)].
#[inline]
#[allow(clippy::too_many_arguments)]
fn head_backward_row<T: Real>(
    d: usize,
    raw: &[T],
    mx: &[T],
    mn: &[T],
    dmean: impl Fn(usize) -> T,
    dlv: impl Fn(usize) -> T,
    draw: &mut [T],
    db: &mut [T],
) {
    for (j, g) in draw[..d].iter_mut().enumerate() {
        *g = dmean(j);
    }
    if mx.is_empty() {
        return;
    }
    for j in 0..d {
        let r = raw[d + j];
        let u = mx[j] - r; // lv₁ = max − softplus(u)
        let lv1 = mx[j] - softplus(u);
        let w = lv1 - mn[j]; // lv = min + softplus(w)
        let g = dlv(j);
        let sw = sigmoid(w);
        let dlv1 = g * sw;
        db[d + j] += g * (T::one() - sw);
        let su = sigmoid(u);
        draw[d + j] = dlv1 * su;
        db[j] += dlv1 * (T::one() - su);
    }
}

/// Forward, Gaussian NLL (or MSE) loss and backward: `grad` ← ∂L/∂params (see
/// [`LossConfig`]); `losses[e]` ← member e's data term.
#[allow(clippy::too_many_arguments)]
pub fn nll_backward<T: Real>(
    shape: &EnsembleShape,
    loss: &LossConfig,
    params: &[T],
    in_mean: &[T],
    in_std: &[T],
    x: &[T],
    target: &[T],
    rows: usize,
    grad: &mut [T],
    losses: &mut [T],
    ws: &mut Workspace<T>,
) {
    let db = nll_dz(shape, params, in_mean, in_std, x, target, rows, losses, ws);
    weight_grads(shape, rows, grad, ws, None);
    add_weight_decay(shape, loss, params, grad);
    bound_grads(shape, loss, grad, &db);
}

/// [`nll_backward`] and then Adam on the whole gradient ([`super::optim::adam`]), the two
/// fused: each weight gradient's block gets its decay and its update as soon as it is made,
/// while it is in cache, rather than in three more passes over the gradient, parameters and
/// moments (the PETS ensemble's 860k parameters are 14 MB with the moments and gradient,
/// and those passes were a sixth of a bf16 training epoch). Every value it writes is the
/// bits the two calls write (a test checks it).
#[allow(clippy::too_many_arguments)]
pub fn nll_adam_step(
    shape: &EnsembleShape,
    loss: &LossConfig,
    params: &mut [f32],
    in_mean: &[f32],
    in_std: &[f32],
    x: &[f32],
    target: &[f32],
    rows: usize,
    grad: &mut [f32],
    losses: &mut [f32],
    adam: &crate::backend::AdamParams,
    m: &mut [f32],
    v: &mut [f32],
    ws: &mut Workspace<f32>,
) {
    let db = nll_dz(shape, params, in_mean, in_std, x, target, rows, losses, ws);
    let step = super::optim::AdamStep::new(adam);
    let update = |w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| step.apply(w, g, m, v);
    let fuse = AdamFuse {
        params: &mut *params,
        m: &mut *m,
        v: &mut *v,
        decay: &loss.weight_decay,
        update: &update,
    };
    weight_grads(shape, rows, grad, ws, Some(fuse));
    bound_grads(shape, loss, grad, &db);
    let lay = shape.layout();
    let (b0, b1) = (lay.max_logvar, lay.total);
    step.apply(
        &mut params[b0..b1],
        &grad[b0..b1],
        &mut m[b0..b1],
        &mut v[b0..b1],
    );
}

/// The forward, the loss (`losses`), the head's gradient and the backward's dz chain of
/// [`nll_backward`], everything but the weight gradients; returns the log-variance bounds'
/// gradient from the data terms ([d max (D), d min (D)]).
#[allow(clippy::too_many_arguments)]
fn nll_dz<T: Real>(
    shape: &EnsembleShape,
    params: &[T],
    in_mean: &[T],
    in_std: &[T],
    x: &[T],
    target: &[T],
    rows: usize,
    losses: &mut [T],
    ws: &mut Workspace<T>,
) -> Vec<T> {
    let e = shape.ensemble;
    let d = shape.out_dim;
    let mut mean = vec![T::zero(); e * rows * d];
    let mut lv = vec![T::zero(); if shape.probabilistic { e * rows * d } else { 0 }];
    forward_cached(
        shape, params, in_mean, in_std, x, rows, &mut mean, &mut lv, ws,
    );
    let lay = shape.layout();
    let hd = shape.head_dim();
    grow(&mut ws.d_head, e * rows * hd);
    let scale = T::one() / T::c((rows * d) as f64);
    let (mx, mn) = logvar_bounds(shape, &lay, params);
    // Loss and d head, member by member (elementwise, cheap next to the GEMMs).
    let mut db = vec![T::zero(); 2 * d];
    let head = &ws.head;
    let per_member: Vec<(T, Vec<T>)> = ws.d_head[..e * rows * hd]
        .par_chunks_mut(rows * hd)
        .enumerate()
        .map(|(m, dh)| {
            let mut sum = T::zero();
            let mut dbm = vec![T::zero(); 2 * d];
            for r in 0..rows {
                let i = (m * rows + r) * d;
                let mu = &mean[i..i + d];
                let y = &target[i..i + d];
                let raw = &head[(m * rows + r) * hd..(m * rows + r + 1) * hd];
                if shape.probabilistic {
                    let lvr = &lv[i..i + d];
                    for j in 0..d {
                        let diff = mu[j] - y[j];
                        sum += diff * diff * (-lvr[j]).exp() + lvr[j];
                    }
                    head_backward_row(
                        d,
                        raw,
                        mx,
                        mn,
                        |j| T::c(2.0) * (mu[j] - y[j]) * (-lvr[j]).exp() * scale,
                        |j| {
                            let diff = mu[j] - y[j];
                            (T::one() - diff * diff * (-lvr[j]).exp()) * scale
                        },
                        &mut dh[r * hd..(r + 1) * hd],
                        &mut dbm,
                    );
                } else {
                    for j in 0..d {
                        let diff = mu[j] - y[j];
                        sum += diff * diff;
                        dh[r * hd + j] = T::c(2.0) * diff * scale;
                    }
                }
            }
            (sum * scale, dbm)
        })
        .collect();
    for (m, (l, dbm)) in per_member.into_iter().enumerate() {
        losses[m] = l;
        for (a, b) in db.iter_mut().zip(dbm) {
            *a += b;
        }
    }
    backward_from_head(shape, params, in_std, rows, None, None, ws);
    db
}

/// Regulariser: L2 weight decay ½·wd_l·‖W_l‖², added to the weights' gradient.
fn add_weight_decay<T: Real>(
    shape: &EnsembleShape,
    loss: &LossConfig,
    params: &[T],
    grad: &mut [T],
) {
    let lay = shape.layout();
    let e = shape.ensemble;
    for (l, lo) in lay.layers.iter().enumerate() {
        let wd = T::c(loss.weight_decay[l] as f64);
        if wd == T::zero() {
            continue;
        }
        // In blocks on all threads: a 7-member 4×200 ensemble has 860k weights, and this pass
        // ran serially after every minibatch's backward.
        const BLOCK: usize = super::PAR_BLOCK;
        let n = e * lo.fan_in * lo.fan_out;
        grad[lo.weight..lo.weight + n]
            .par_chunks_mut(BLOCK)
            .zip(params[lo.weight..lo.weight + n].par_chunks(BLOCK))
            .for_each(|(g, w)| {
                for (g, w) in g.iter_mut().zip(w) {
                    *g += wd * *w;
                }
            });
    }
}

/// The log-variance bounds' gradient: the data terms' `db` plus the 0.01·(Σmax − Σmin)
/// bound penalty.
fn bound_grads<T: Real>(shape: &EnsembleShape, loss: &LossConfig, grad: &mut [T], db: &[T]) {
    if shape.probabilistic {
        let lay = shape.layout();
        let d = shape.out_dim;
        let pen = T::c(loss.logvar_penalty as f64);
        for j in 0..d {
            grad[lay.max_logvar + j] = db[j] + pen;
            grad[lay.min_logvar + j] = db[d + j] - pen;
        }
    }
}

/// The full loss of [`LossConfig`] (data terms summed over members plus regularisers), for
/// reporting and for gradient checks.
pub fn total_loss<T: Real>(
    shape: &EnsembleShape,
    loss: &LossConfig,
    params: &[T],
    losses: &[T],
) -> T {
    let lay = shape.layout();
    let mut l: T = losses.iter().copied().sum();
    for (i, lo) in lay.layers.iter().enumerate() {
        let n = shape.ensemble * lo.fan_in * lo.fan_out;
        let sq: T = params[lo.weight..lo.weight + n]
            .iter()
            .map(|w| *w * *w)
            .sum();
        l += T::c(0.5 * loss.weight_decay[i] as f64) * sq;
    }
    if shape.probabilistic {
        let d = shape.out_dim;
        let smax: T = params[lay.max_logvar..lay.max_logvar + d]
            .iter()
            .copied()
            .sum();
        let smin: T = params[lay.min_logvar..lay.min_logvar + d]
            .iter()
            .copied()
            .sum();
        l += T::c(loss.logvar_penalty as f64) * (smax - smin);
    }
    l
}

/// Vector–Jacobian product of the forward pass: given upstream gradients on the predicted
/// mean and log-variance [E, rows, out], the gradient w.r.t. the parameters (flat layout) and
/// w.r.t. the raw inputs `x` [E, rows, in] (what path-gradient methods backpropagate through).
#[allow(clippy::too_many_arguments)]
pub fn vjp<T: Real>(
    shape: &EnsembleShape,
    params: &[T],
    in_mean: &[T],
    in_std: &[T],
    x: &[T],
    rows: usize,
    d_mean: &[T],
    d_logvar: &[T],
    grad: &mut [T],
    dx: &mut [T],
    ws: &mut Workspace<T>,
) {
    let e = shape.ensemble;
    let d = shape.out_dim;
    let mut mean = vec![T::zero(); e * rows * d];
    let mut lv = vec![T::zero(); if shape.probabilistic { e * rows * d } else { 0 }];
    forward_cached(
        shape, params, in_mean, in_std, x, rows, &mut mean, &mut lv, ws,
    );
    backward(
        shape,
        params,
        in_std,
        rows,
        d_mean,
        d_logvar,
        Some(grad),
        Some(dx),
        ws,
    );
}

/// The backward half of [`vjp`], after a [`forward_cached`] on the same workspace: from
/// upstream gradients on mean and log-variance [E, rows, out] to the parameter gradient
/// (overwriting `grad`, flat layout) if asked, and, if asked, the raw-input gradient `dx`
/// [E, rows, in]. Split from the forward so that a loss can be formed from the outputs
/// first (the SAC critics and actor, [`crate::policy::sac`]).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    shape: &EnsembleShape,
    params: &[T],
    in_std: &[T],
    rows: usize,
    d_mean: &[T],
    d_logvar: &[T],
    mut grad: Option<&mut [T]>,
    dx: Option<&mut [T]>,
    ws: &mut Workspace<T>,
) {
    let e = shape.ensemble;
    let d = shape.out_dim;
    let dx = match dx {
        Some(dx) if !shape.probabilistic && grad.is_none() => {
            return backward_input_rows(shape, params, in_std, rows, d_mean, dx, ws);
        }
        dx => dx,
    };
    let hd = shape.head_dim();
    let lay = shape.layout();
    grow(&mut ws.d_head, e * rows * hd);
    let mut db = vec![T::zero(); 2 * d];
    if shape.probabilistic {
        let (mx, mn) = logvar_bounds(shape, &lay, params);
        for i in 0..e * rows {
            let raw = &ws.head[i * hd..(i + 1) * hd];
            head_backward_row(
                d,
                raw,
                mx,
                mn,
                |j| d_mean[i * d + j],
                |j| d_logvar[i * d + j],
                &mut ws.d_head[i * hd..(i + 1) * hd],
                &mut db,
            );
        }
    } else {
        // The head is the mean itself.
        ws.d_head[..e * rows * d].copy_from_slice(&d_mean[..e * rows * d]);
    }
    backward_from_head(shape, params, in_std, rows, grad.as_deref_mut(), dx, ws);
    if let (true, Some(grad)) = (shape.probabilistic, grad) {
        for j in 0..d {
            grad[lay.max_logvar + j] = db[j];
            grad[lay.min_logvar + j] = db[d + j];
        }
    }
}

/// [`backward`]'s raw-input gradient alone for a deterministic network (no log-variance
/// head), through the rows whose upstream gradient `d_mean` [E, rows, out] is not zero; the
/// other rows' `dx` [E, rows, in] is 0, which the full chain would also give (with finite
/// parameters). The gradient of min(Q₁, Q₂) reaches one of SAC's twin critics per row, so
/// the actor step's input gradient runs one critic's chain per row instead of both: half of
/// its largest backward product. The selected rows are cut into one task per thread's
/// share, whatever the members' counts.
fn backward_input_rows<T: Real>(
    shape: &EnsembleShape,
    params: &[T],
    in_std: &[T],
    rows: usize,
    d_mean: &[T],
    dx: &mut [T],
    ws: &mut Workspace<T>,
) {
    assert!(
        !shape.probabilistic,
        "a deterministic network's input gradient"
    );
    let (e, di, d) = (shape.ensemble, shape.in_dim, shape.out_dim);
    assert!(d_mean.len() >= e * rows * d && dx.len() >= e * rows * di);
    // Per member, the rows that carry an upstream gradient.
    let sel: Vec<Vec<u32>> = d_mean[..e * rows * d]
        .chunks_exact(rows * d)
        .map(|member| {
            (0..rows as u32)
                .filter(|&r| {
                    let r = r as usize;
                    member[r * d..(r + 1) * d].iter().any(|v| *v != T::zero())
                })
                .collect()
        })
        .collect();
    let lay = shape.layout();
    let nl = lay.layers.len();
    let width = max_width(shape);
    let total: usize = sel.iter().map(Vec::len).sum();
    let per = total.div_ceil(rayon::current_num_threads().max(1)).max(1);
    // (member, its selected rows) per task.
    let tasks: Vec<(usize, &[u32])> = sel
        .iter()
        .enumerate()
        .flat_map(|(m, s)| s.chunks(per).map(move |c| (m, c)))
        .collect();
    if ws.scratch.len() < tasks.len() {
        ws.scratch.resize_with(tasks.len(), Default::default);
    }
    let products = Products::bf16_pass(ws.bf16_training);
    let pre = &ws.pre;
    let grads: Vec<Vec<T>> = tasks
        .par_iter()
        .zip(ws.scratch.par_iter_mut())
        .map(|(&(m, rs), scr)| {
            let nr = rs.len();
            let [da, dz] = scr;
            grow(da, nr * width);
            grow(dz, nr * width);
            for (q, &r) in rs.iter().enumerate() {
                let src = (m * rows + r as usize) * d;
                dz[q * d..(q + 1) * d].copy_from_slice(&d_mean[src..src + d]);
            }
            let mut out = vec![T::zero(); nr * di];
            for l in (0..nl).rev() {
                let lo = lay.layers[l];
                let (fi, fo) = (lo.fan_in, lo.fan_out);
                // da = dz · Wᵀ
                let w = &params[lo.weight + m * fi * fo..lo.weight + (m + 1) * fi * fo];
                mm(
                    &mut da[..nr * fi],
                    View::rm(&dz[..nr * fo], nr, fo),
                    View::rm_t(w, fi, fo),
                    products,
                );
                if l > 0 {
                    // dz = da ⊙ act'(z), act'(z) of the selected rows (`pre`).
                    let g = &pre[l - 1];
                    for (q, &r) in rs.iter().enumerate() {
                        let g = &g[(m * rows + r as usize) * fi..][..fi];
                        let a = &da[q * fi..(q + 1) * fi];
                        for ((z, a), gg) in dz[q * fi..(q + 1) * fi].iter_mut().zip(a).zip(g) {
                            *z = *a * *gg;
                        }
                    }
                } else {
                    // xn = (x − μ)/σ  ⇒  dx = dxn / σ
                    for (o, i) in out.chunks_exact_mut(di).zip(da.chunks_exact(di)) {
                        for j in 0..di {
                            o[j] = i[j] / in_std[j];
                        }
                    }
                }
            }
            out
        })
        .collect();
    dx[..e * rows * di].fill(T::zero());
    for (&(m, rs), g) in tasks.iter().zip(&grads) {
        for (&r, row) in rs.iter().zip(g.chunks_exact(di)) {
            let at = (m * rows + r as usize) * di;
            dx[at..at + di].copy_from_slice(row);
        }
    }
}

/// Initial parameters as mbrl-lib's `truncated_normal_init`: weights from a normal with
/// std 1/(2·√fan_in) truncated at ±2 std, biases 0, max_logvar 0.5, min_logvar −10
/// (PETS appendix A.1). Drawn from Philox stream INIT_WEIGHTS.
pub fn init_params(shape: &EnsembleShape, seed: u64) -> Vec<f32> {
    let lay = shape.layout();
    let mut p = vec![0.0f32; lay.total];
    let mut g = crate::rng::Philox::new(seed, crate::rng::stream::INIT_WEIGHTS, 0);
    for lo in &lay.layers {
        let std = 1.0 / (2.0 * (lo.fan_in as f32).sqrt());
        let n = shape.ensemble * lo.fan_in * lo.fan_out;
        for w in &mut p[lo.weight..lo.weight + n] {
            *w = g.truncated_normal() * std;
        }
    }
    if shape.probabilistic {
        let d = shape.out_dim;
        p[lay.max_logvar..lay.max_logvar + d].fill(0.5);
        p[lay.min_logvar..lay.min_logvar + d].fill(-10.0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// n standard normals of Philox (seed, stream, counter k).
    fn normals(n: usize, seed: u64, stream: u32, k: u32) -> Vec<f32> {
        (0..n)
            .map(|i| crate::rng::normal(seed, stream, k, i as u32))
            .collect()
    }

    #[test]
    fn tasks_should_tile_every_row_of_every_member_once() {
        for (e, rows) in [(7, 1000), (3, 7), (1, 1), (5, 2049), (7, 0)] {
            let ts = tasks(e, rows);
            let mut seen = vec![0u8; e * rows];
            for t in &ts {
                for r in t.r0..t.r0 + t.nr {
                    seen[t.e * rows + r] += 1;
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "e={e} rows={rows}");
        }
    }

    /// The inference forward keeps its packed weights between calls while the parameters'
    /// bits are unchanged: a weight or a bias changed in place (the same buffer, as an
    /// optimiser step leaves it) must reach the next output exactly as a fresh workspace
    /// computes it, and restoring the value must give the first output back.
    #[test]
    fn the_forward_should_repack_when_the_parameters_change_in_place() {
        let shape = EnsembleShape {
            ensemble: 3,
            in_dim: 5,
            out_dim: 4,
            hidden: 37,
            num_layers: 2,
            activation: Activation::Silu,
            probabilistic: true,
        };
        let mut params = init_params(&shape, 4);
        let (m, s) = (vec![0.1f32; 5], vec![1.5f32; 5]);
        let rows = 150;
        let x = normals(3 * rows * 5, 9, 1, 0);
        let run = |params: &[f32], ws: &mut Workspace<f32>| {
            let (mut mean, mut lv) = (vec![f32::NAN; 3 * rows * 4], vec![f32::NAN; 3 * rows * 4]);
            forward(&shape, params, &m, &s, &x, rows, &mut mean, &mut lv, ws);
            assert!(mean.iter().chain(&lv).all(|v| v.is_finite()));
            (mean, lv)
        };
        let bits = |v: &(Vec<f32>, Vec<f32>)| -> Vec<u32> {
            v.0.iter().chain(&v.1).map(|x| x.to_bits()).collect()
        };
        let mut ws = Workspace::default();
        let first = run(&params, &mut ws);
        let lay = shape.layout();
        // Member 2's first-layer weight (0, 0) and member 1's head bias 3.
        let wi = lay.layers[0].weight + 2 * 5 * 37;
        let bi = lay.layers[2].bias + shape.head_dim() + 3;
        for (i, delta) in [(wi, 0.25f32), (bi, -0.5)] {
            let old = params[i];
            params[i] += delta;
            let changed = run(&params, &mut ws);
            let fresh = run(&params, &mut Workspace::default());
            assert_eq!(
                bits(&changed),
                bits(&fresh),
                "parameter {i} changed in place"
            );
            assert_ne!(bits(&changed), bits(&first), "parameter {i} had no effect");
            params[i] = old;
            assert_eq!(
                bits(&run(&params, &mut ws)),
                bits(&first),
                "parameter {i} restored"
            );
        }
    }

    /// The fused training step writes the bits that the backward and Adam write as two
    /// calls: parameters, moments, gradient and losses, over three steps (so the moments are
    /// not zero), with weight decay, for a probabilistic and a deterministic ensemble, in f32
    /// and with bf16 products.
    #[test]
    fn the_fused_training_step_should_equal_backward_then_adam() {
        use crate::backend::{cpu::CpuBackend, AdamParams, Backend, LossConfig, Precision};
        use crate::model::ModelConfig;
        let be = CpuBackend::new();
        for (probabilistic, ensemble, rows) in [(true, 3usize, 70usize), (false, 1, 33)] {
            let mut mc = ModelConfig::pets(4, 2);
            mc.ensemble_size = ensemble;
            mc.num_elites = 1;
            mc.probabilistic = probabilistic;
            let shape = mc.shape();
            let total = shape.layout().total;
            let x = normals(ensemble * rows * shape.in_dim, 6, 3, 1);
            let y = normals(ensemble * rows * shape.out_dim, 6, 3, 2);
            let mut norm = vec![0.2f32; shape.in_dim];
            norm.extend(vec![0.9f32; shape.in_dim]);
            for precision in [Precision::F32, Precision::Bf16] {
                let loss = LossConfig {
                    logvar_penalty: 0.01,
                    weight_decay: (0..=shape.num_layers)
                        .map(|l| 1e-3 * (l + 1) as f32)
                        .collect(),
                    precision,
                };
                let start = init_params(&shape, 11);
                let mut two = (start.clone(), vec![0.0; total], vec![0.0; total]);
                let mut one = two.clone();
                let (mut g2, mut g1) = (vec![f32::NAN; total], vec![f32::NAN; total]);
                let (mut l2, mut l1) = (vec![f32::NAN; ensemble], vec![f32::NAN; ensemble]);
                for step in 1..=3 {
                    let ap = AdamParams::torch(1e-2, step, total);
                    be.ensemble_nll_backward(
                        &shape, &loss, &two.0, &norm, &x, &y, rows, &mut g2, &mut l2,
                    )
                    .unwrap();
                    be.adam_step(&ap, &mut two.0, &g2, &mut two.1, &mut two.2)
                        .unwrap();
                    be.ensemble_nll_adam_step(
                        &shape, &loss, &mut one.0, &norm, &x, &y, rows, &mut g1, &mut l1, &ap,
                        &mut one.1, &mut one.2,
                    )
                    .unwrap();
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let what = format!("{probabilistic} E {ensemble} {precision:?} step {step}");
                    assert_eq!(bits(&g1), bits(&g2), "gradient, {what}");
                    assert_eq!(bits(&l1), bits(&l2), "losses, {what}");
                    assert_eq!(bits(&one.0), bits(&two.0), "parameters, {what}");
                    assert_eq!(bits(&one.1), bits(&two.1), "first moments, {what}");
                    assert_eq!(bits(&one.2), bits(&two.2), "second moments, {what}");
                }
                assert_ne!(one.0, start, "the parameters moved");
            }
        }
    }

    /// The fused step refuses what the two calls would not do together, naming the problem
    /// and writing nothing: an Adam step over part of the parameters, and short moments.
    #[test]
    fn the_fused_training_step_should_refuse_mismatched_buffers() {
        use crate::backend::{cpu::CpuBackend, AdamParams, Backend, LossConfig, Precision};
        use crate::model::ModelConfig;
        let be = CpuBackend::new();
        let mc = ModelConfig::pets(4, 2);
        let shape = mc.shape();
        let total = shape.layout().total;
        let rows = 8;
        let x = normals(shape.ensemble * rows * shape.in_dim, 2, 3, 1);
        let y = normals(shape.ensemble * rows * shape.out_dim, 2, 3, 2);
        let mut norm = vec![0.0f32; shape.in_dim];
        norm.extend(vec![1.0f32; shape.in_dim]);
        let loss = LossConfig {
            logvar_penalty: 0.01,
            weight_decay: vec![1e-4; shape.num_layers + 1],
            precision: Precision::F32,
        };
        let start = init_params(&shape, 1);
        for (adam_len, moments) in [(total - 1, total), (total, total - 1)] {
            let mut p = start.clone();
            let (mut m, mut v) = (vec![0.0f32; moments], vec![0.0f32; moments]);
            let mut g = vec![0.0f32; total];
            let mut l = vec![0.0f32; shape.ensemble];
            let ap = AdamParams::torch(1e-3, 1, adam_len);
            let err = be
                .ensemble_nll_adam_step(
                    &shape, &loss, &mut p, &norm, &x, &y, rows, &mut g, &mut l, &ap, &mut m, &mut v,
                )
                .expect_err("mismatched buffers must be refused");
            let msg = err.to_string();
            assert!(
                msg.contains(&total.to_string()) || msg.contains(&(total - 1).to_string()),
                "{msg}"
            );
            assert_eq!(p, start, "nothing written: {msg}");
        }
    }

    /// The rows of a minibatch are split among threads (`tasks`), but every weight gradient
    /// is one product over all of a member's rows: the loss and gradient are the same bits
    /// on 1, 2 and 3 threads, in f32 and with bf16 products, for one member (whose weight
    /// products are split by rows of W instead) and for several.
    #[test]
    fn the_gradient_should_not_depend_on_the_thread_count() {
        use crate::backend::{LossConfig, Precision};
        use crate::model::ModelConfig;
        for (ensemble, rows) in [(3usize, 300usize), (1, 97)] {
            let mut mc = ModelConfig::pets(5, 2);
            mc.ensemble_size = ensemble;
            mc.num_elites = 1;
            let shape = mc.shape();
            let params = init_params(&shape, 3);
            let loss = LossConfig {
                logvar_penalty: 0.01,
                weight_decay: vec![1e-4; shape.num_layers + 1],
                precision: Precision::F32,
            };
            let x = normals(ensemble * rows * shape.in_dim, 4, 9, 1);
            let y = normals(ensemble * rows * shape.out_dim, 4, 9, 2);
            let (mean, std) = (vec![0.1f32; shape.in_dim], vec![1.3f32; shape.in_dim]);
            for bf16 in [false, true] {
                let run = |threads: usize| -> (Vec<f32>, Vec<f32>) {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| {
                        let mut ws = Workspace::<f32> {
                            bf16_training: bf16,
                            ..Default::default()
                        };
                        let mut grad = vec![f32::NAN; params.len()];
                        let mut losses = vec![f32::NAN; ensemble];
                        nll_backward(
                            &shape,
                            &loss,
                            &params,
                            &mean,
                            &std,
                            &x,
                            &y,
                            rows,
                            &mut grad,
                            &mut losses,
                            &mut ws,
                        );
                        (grad, losses)
                    })
                };
                let one = run(1);
                assert!(one.0.iter().all(|v| v.is_finite()), "every entry written");
                for threads in [2, 3] {
                    let other = run(threads);
                    let same = |a: &[f32], b: &[f32]| {
                        a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
                    };
                    assert!(
                        same(&one.0, &other.0) && same(&one.1, &other.1),
                        "E {ensemble}, {rows} rows, bf16 {bf16}: 1 vs {threads} threads"
                    );
                }
            }
        }
    }

    /// The input gradient alone (which runs only the rows with an upstream gradient) equals
    /// the full chain's, with the other rows' upstream gradient zeroed, at awkward sizes (3 members, 37 rows, widths 13 and
    /// 5), with members that take no row, one row or all of them, on 1 and 2 threads; the
    /// rows left out read exactly 0 in a poisoned output.
    #[test]
    fn the_input_gradient_of_selected_rows_should_equal_the_masked_full_backward() {
        let shape = EnsembleShape {
            ensemble: 3,
            in_dim: 5,
            out_dim: 2,
            hidden: 13,
            num_layers: 2,
            activation: Activation::Silu,
            probabilistic: false,
        };
        let rows = 37;
        let params: Vec<f64> = init_params(&shape, 4).iter().map(|&v| v as f64).collect();
        let x: Vec<f64> = normals(3 * rows * 5, 8, 3, 1)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let up: Vec<f64> = normals(3 * rows * 2, 8, 3, 2)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let (mean, std) = (vec![0.1f64; 5], vec![1.7f64; 5]);
        for sel in [
            vec![
                (0..rows as u32).step_by(3).collect(),
                vec![],
                (5..37).collect(),
            ],
            vec![vec![36], (0..rows as u32).collect(), vec![1, 2, 30]],
        ] {
            let mut masked = vec![0.0f64; up.len()];
            for (m, s) in sel.iter().enumerate() {
                for &r in s {
                    let at = (m * rows + r as usize) * 2;
                    masked[at..at + 2].copy_from_slice(&up[at..at + 2]);
                }
            }
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let (want, got) = pool.install(|| {
                    let mut ws = Workspace::default();
                    let mut out = vec![0.0f64; 3 * rows * 2];
                    forward_cached(
                        &shape,
                        &params,
                        &mean,
                        &std,
                        &x,
                        rows,
                        &mut out,
                        &mut [],
                        &mut ws,
                    );
                    // dx after the cached forward, with or without the parameter gradient.
                    let mut dx = |grad: Option<&mut [f64]>| {
                        let mut dx = vec![f64::NAN; 3 * rows * 5];
                        backward(
                            &shape,
                            &params,
                            &std,
                            rows,
                            &masked,
                            &[],
                            grad,
                            Some(&mut dx),
                            &mut ws,
                        );
                        dx
                    };
                    // With the parameter gradient asked every row runs the full chain; the
                    // input gradient alone runs the selected rows only.
                    let want = dx(Some(&mut vec![f64::NAN; params.len()]));
                    let got = dx(None);
                    (want, got)
                });
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-12 * w.abs().max(1e-3),
                        "{threads} threads, element {i}: {g} vs {w}"
                    );
                }
                let nonzero = got.iter().filter(|v| **v != 0.0).count();
                let selected: usize = sel.iter().map(Vec::len).sum();
                assert_eq!(
                    nonzero,
                    selected * 5,
                    "exactly the selected rows carry a gradient"
                );
            }
        }
    }
}
