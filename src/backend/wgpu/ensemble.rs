//! Ensemble forward and NLL backward on the device (`shaders/ensemble.wgsl`); the
//! specification is `backend/cpu/ensemble.rs`. Every product is the one strided GEMM kernel
//! (see the shader's header); this file sets its strides.
use super::device::{Dispatch, Gpu};
use super::kernels::{self, Kernel};
use super::params::{epi, ConvertParams, GemmParams, HeadParams, NormParams, ReduceParams};
use super::{word, State, WgpuBackend, WgpuBuf};
use crate::backend::{check, EnsembleShape, LayerOffsets, LossConfig};
use crate::Result;
use std::sync::Arc;

/// GEMM output tile (ensemble.wgsl's BM × BN).
pub(super) const TILE_M: usize = 64;
pub(super) const TILE_N: usize = 32;

/// Widest activation any layer produces or consumes.
pub(super) fn max_width(shape: &EnsembleShape) -> usize {
    shape.hidden.max(shape.head_dim()).max(shape.in_dim)
}

/// Checks shared by forward and backward: the shape is valid and every index fits a u32.
fn check_shape(shape: &EnsembleShape, rows: usize) -> Result<()> {
    shape.validate()?;
    let widest = max_width(shape);
    word(
        "ensemble activations",
        shape.num_layers.max(1) * shape.ensemble * rows.max(1) * widest,
    )?;
    word("parameters", shape.layout().total)?;
    Ok(())
}

/// Forward GEMM parameters of layer `lo`, batched over members: rows of width fan_in in,
/// rows of width fan_out out, bias from the flat parameters.
pub(super) fn layer_gemm(lo: &LayerOffsets, rows: usize, epilogue: u32, act: u32) -> GemmParams {
    let (fi, fo) = (lo.fan_in as u32, lo.fan_out as u32);
    let r = rows as u32;
    GemmParams {
        m: r,
        n: fo,
        k: fi,
        grouped: 0,
        a_off: 0,
        a_rs: fi,
        a_cs: 1,
        a_bs: r * fi,
        b_off: lo.weight as u32,
        b_rs: fo,
        b_cs: 1,
        b_bs: fi * fo,
        c_off: 0,
        c_rs: fo,
        c_bs: r * fo,
        p_off: 0,
        x_off: lo.bias as u32,
        x_rs: 0,
        x_bs: fo,
        epilogue,
        activation: act,
        scale: 0.0,
        tiles_off: 0,
        _pad: 0,
    }
}

/// Workgroups of a GEMM over an m × n output per batch.
pub(super) fn gemm_grid(gpu: &Gpu, m: usize, n: usize, batches: usize) -> Result<[u32; 3]> {
    let (gx, gy) = (n.div_ceil(TILE_N), m.div_ceil(TILE_M));
    let max = gpu.max_groups() as usize;
    if gx > max || gy > max || batches > max {
        return Err(crate::invalid!(
            "a {m} × {n} product over {batches} members exceeds one dispatch of this adapter"
        ));
    }
    Ok([gx as u32, gy as u32, batches as u32])
}

/// The weight operand forward GEMMs read: the f32 parameters, or (f16 mode) a half copy
/// converted at the start of this submission. Returns the GEMM kernel to use with it.
pub(super) fn weights_for_forward(
    be: &WgpuBackend,
    st: &mut State,
    params: &WgpuBuf,
    total: usize,
    out: &mut Vec<Dispatch>,
) -> Result<(Arc<Kernel>, wgpu::Buffer)> {
    let gpu = &be.gpu;
    if !be.f16_weights {
        return Ok((st.cache.get(gpu, &kernels::GEMM)?, params.buf.clone()));
    }
    let conv = st.cache.get(gpu, &kernels::WEIGHTS_CONVERT_F16)?;
    // f16 words: two per 32-bit word, rounded up.
    let half = st.ws.get(gpu, "f16 weights", 0, total.div_ceil(2));
    let offset = st.rec.block(
        gpu,
        &ConvertParams {
            len: total as u32,
            _pad: [0; 3],
        },
    );
    out.push(Dispatch {
        group: conv.bind(gpu, &[&params.buf, &half]),
        kernel: conv,
        offset,
        grid: gpu.grid_1d(total)?,
    });
    Ok((st.cache.get(gpu, &kernels::GEMM_F16)?, half))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    be: &WgpuBackend,
    shape: &EnsembleShape,
    params: &WgpuBuf,
    norm: &WgpuBuf,
    x: &WgpuBuf,
    rows: usize,
    mean: &mut WgpuBuf,
    logvar: &mut WgpuBuf,
) -> Result<()> {
    let (e, i, o) = (shape.ensemble, shape.in_dim, shape.out_dim);
    check::forward(
        shape,
        rows,
        [params.len, norm.len, x.len, mean.len, logvar.len],
    )?;
    check_shape(shape, rows)?;
    let lay = shape.layout();
    if rows == 0 {
        return Ok(());
    }
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let nl = lay.layers.len();
    st.rec.reserve(gpu, nl + 3)?;
    let mut ds = Vec::with_capacity(nl + 3);
    let (gemm, weights) = weights_for_forward(be, st, params, lay.total, &mut ds)?;
    let normalize = st.cache.get(gpu, &kernels::NORMALIZE)?;
    let split = st.cache.get(gpu, &kernels::HEAD_SPLIT)?;
    let width = max_width(shape);
    let bufs = [
        st.ws.get(gpu, "forward ping", 0, e * rows * width),
        st.ws.get(gpu, "forward pong", 0, e * rows * width),
    ];
    let count = e * rows;
    ds.push(normalize_dispatch(
        gpu, st, normalize, x, norm, &bufs[0], count, i,
    )?);
    let act = shape.activation.code();
    for (l, lo) in lay.layers.iter().enumerate() {
        let hidden = l < shape.num_layers;
        let p = layer_gemm(
            lo,
            rows,
            if hidden { epi::BIAS_ACT } else { epi::BIAS },
            act,
        );
        let offset = st.rec.block(gpu, &p);
        let (src, dst) = (&bufs[l % 2], &bufs[(l + 1) % 2]);
        ds.push(Dispatch {
            group: gemm.bind(
                gpu,
                &[
                    src,
                    &weights,
                    dst,
                    &params.buf,
                    &gpu.dummy_rw,
                    &gpu.dummy_ro,
                ],
            ),
            kernel: gemm.clone(),
            offset,
            grid: gemm_grid(gpu, rows, lo.fan_out, e)?,
        });
    }
    let raw = &bufs[nl % 2];
    let offset = st.rec.block(
        gpu,
        &HeadParams {
            count: count as u32,
            out_dim: o as u32,
            head_dim: shape.head_dim() as u32,
            probabilistic: u32::from(shape.probabilistic),
            max_off: lay.max_logvar as u32,
            min_off: lay.min_logvar as u32,
            scale: 0.0,
            _pad: 0,
        },
    );
    ds.push(Dispatch {
        group: split.bind(gpu, &[raw, &params.buf, &mean.buf, &logvar.buf]),
        kernel: split,
        offset,
        grid: gpu.grid_1d(count * o)?,
    });
    st.rec.run(gpu, "ensemble_forward", &ds);
    Ok(())
}

/// `normalize` over `count` rows of `in_dim` inputs into `out`: the first dispatch of both
/// the forward and the NLL backward.
#[allow(clippy::too_many_arguments)]
fn normalize_dispatch(
    gpu: &Gpu,
    st: &mut State,
    k: Arc<Kernel>,
    x: &WgpuBuf,
    norm: &WgpuBuf,
    out: &wgpu::Buffer,
    count: usize,
    in_dim: usize,
) -> Result<Dispatch> {
    let offset = st.rec.block(
        gpu,
        &NormParams {
            count: count as u32,
            in_dim: in_dim as u32,
            _pad: [0; 2],
        },
    );
    Ok(Dispatch {
        group: k.bind(gpu, &[&x.buf, &norm.buf, out]),
        kernel: k,
        offset,
        grid: gpu.grid_1d(count * in_dim)?,
    })
}

/// Column sums as `reduce_rows` computes them: out[b, c] = scale·Σ_r in[b, r, c] + add.
#[allow(clippy::too_many_arguments)]
fn reduce_dispatch(
    gpu: &Gpu,
    st: &mut State,
    k: &Arc<Kernel>,
    input: &wgpu::Buffer,
    output: &wgpu::Buffer,
    p: ReduceParams,
    batches: usize,
) -> Result<Dispatch> {
    let cols_per = (p.cols as usize).next_power_of_two().min(32);
    let p = ReduceParams {
        cols_per: cols_per as u32,
        ..p
    };
    let gx = (p.cols as usize).div_ceil(cols_per);
    let max = gpu.max_groups() as usize;
    if gx > max || batches > max {
        return Err(crate::invalid!(
            "a reduction of {batches} × {} is too large",
            p.cols
        ));
    }
    let offset = st.rec.block(gpu, &p);
    Ok(Dispatch {
        group: k.bind(gpu, &[input, output]),
        kernel: k.clone(),
        offset,
        grid: [gx as u32, batches as u32, 1],
    })
}

/// What a cached forward keeps for the backward: every layer's input (`acts[0]` = the
/// normalised x), the hidden pre-activations (layer l at l·E·rows·H) and the raw head.
struct Cached {
    acts: Vec<wgpu::Buffer>,
    pre: wgpu::Buffer,
    head: wgpu::Buffer,
}

/// Dispatches of the forward that keeps what the backward reads (f32 weights: the backward's
/// products must see the parameters they differentiate).
#[allow(clippy::too_many_arguments)]
fn forward_cached(
    gpu: &Gpu,
    st: &mut State,
    gemm: &Arc<Kernel>,
    shape: &EnsembleShape,
    params: &WgpuBuf,
    norm: &WgpuBuf,
    x: &WgpuBuf,
    rows: usize,
    ds: &mut Vec<Dispatch>,
) -> Result<Cached> {
    let lay = shape.layout();
    let count = shape.ensemble * rows;
    let h = shape.hidden;
    let normalize = st.cache.get(gpu, &kernels::NORMALIZE)?;
    let acts: Vec<wgpu::Buffer> = lay
        .layers
        .iter()
        .enumerate()
        .map(|(l, lo)| st.ws.get(gpu, "layer input", l, count * lo.fan_in))
        .collect();
    let pre = st
        .ws
        .get(gpu, "pre-activations", 0, shape.num_layers * count * h);
    let head = st.ws.get(gpu, "head", 0, count * shape.head_dim());
    ds.push(normalize_dispatch(
        gpu,
        st,
        normalize,
        x,
        norm,
        &acts[0],
        count,
        shape.in_dim,
    )?);
    let act = shape.activation.code();
    for (l, lo) in lay.layers.iter().enumerate() {
        let hidden = l < shape.num_layers;
        let mut p = layer_gemm(
            lo,
            rows,
            if hidden { epi::BIAS_ACT_PRE } else { epi::BIAS },
            act,
        );
        p.p_off = (l * count * h) as u32;
        let offset = st.rec.block(gpu, &p);
        let dst = if hidden { &acts[l + 1] } else { &head };
        let pre_buf = if hidden { &pre } else { &gpu.dummy_rw };
        ds.push(Dispatch {
            group: gemm.bind(
                gpu,
                &[
                    &acts[l],
                    &params.buf,
                    dst,
                    &params.buf,
                    pre_buf,
                    &gpu.dummy_ro,
                ],
            ),
            kernel: gemm.clone(),
            offset,
            grid: gemm_grid(gpu, rows, lo.fan_out, shape.ensemble)?,
        });
    }
    Ok(Cached { acts, pre, head })
}

/// The head's parameters for `nll_head`, `vjp_head` and `head_split`.
fn head_params(shape: &EnsembleShape, rows: usize, scale: f32) -> HeadParams {
    let lay = shape.layout();
    HeadParams {
        count: (shape.ensemble * rows) as u32,
        out_dim: shape.out_dim as u32,
        head_dim: shape.head_dim() as u32,
        probabilistic: u32::from(shape.probabilistic),
        max_off: lay.max_logvar as u32,
        min_off: lay.min_logvar as u32,
        scale,
        _pad: 0,
    }
}

/// d max_logvar = Σ_rows bound terms + penalty, d min_logvar = Σ − penalty, into `grad`.
#[allow(clippy::too_many_arguments)]
fn bounds_grad_dispatch(
    gpu: &Gpu,
    st: &mut State,
    reduce: &Arc<Kernel>,
    shape: &EnsembleShape,
    rows: usize,
    row_db: &wgpu::Buffer,
    grad: &wgpu::Buffer,
    penalty: f32,
) -> Result<Dispatch> {
    let d = shape.out_dim;
    reduce_dispatch(
        gpu,
        st,
        reduce,
        row_db,
        grad,
        ReduceParams {
            rows: (shape.ensemble * rows) as u32,
            cols: (2 * d) as u32,
            in_off: 0,
            in_rs: (2 * d) as u32,
            in_bs: 0,
            out_off: shape.layout().max_logvar as u32,
            out_bs: 0,
            split: d as u32,
            scale: 1.0,
            add_lo: penalty,
            add_hi: -penalty,
            cols_per: 1,
        },
        1,
    )
}

/// Dispatches of the backward from `d_head` (∂/∂raw head [E, rows, head]) through the cached
/// layers, head first: with `grad`, dW = aᵀ·dz (+ wd·W) and db = Σ_rows dz; dz' = (dz·Wᵀ) ⊙
/// act'(z'); with `dx`, the raw-input gradient (dz₀·W₀ᵀ) / σ_in.
#[allow(clippy::too_many_arguments)]
fn backward_layers(
    gpu: &Gpu,
    st: &mut State,
    gemm: &Arc<Kernel>,
    shape: &EnsembleShape,
    params: &WgpuBuf,
    norm: &WgpuBuf,
    rows: usize,
    cached: &Cached,
    d_head: &wgpu::Buffer,
    weight_decay: &[f32],
    grad: Option<&wgpu::Buffer>,
    dx: Option<&wgpu::Buffer>,
    ds: &mut Vec<Dispatch>,
) -> Result<()> {
    let lay = shape.layout();
    let (e, h) = (shape.ensemble, shape.hidden);
    let count = e * rows;
    let reduce = st.cache.get(gpu, &kernels::REDUCE_ROWS)?;
    let dz = [
        st.ws.get(gpu, "dz", 0, count * h),
        st.ws.get(gpu, "dz", 1, count * h),
    ];
    let act = shape.activation.code();
    let r = rows as u32;
    let mut cur: &wgpu::Buffer = d_head;
    for l in (0..lay.layers.len()).rev() {
        let lo = lay.layers[l];
        let (fi, fo) = (lo.fan_in as u32, lo.fan_out as u32);
        if let Some(grad) = grad {
            let wd = weight_decay.get(l).copied().unwrap_or(0.0);
            let p = GemmParams {
                m: fi,
                n: fo,
                k: r,
                a_off: 0,
                a_rs: 1,
                a_cs: fi,
                a_bs: r * fi,
                b_off: 0,
                b_rs: fo,
                b_cs: 1,
                b_bs: r * fo,
                c_off: lo.weight as u32,
                c_rs: fo,
                c_bs: fi * fo,
                x_off: lo.weight as u32,
                x_rs: fo,
                x_bs: fi * fo,
                epilogue: if wd == 0.0 { epi::STORE } else { epi::DECAY },
                scale: wd,
                ..Default::default()
            };
            let offset = st.rec.block(gpu, &p);
            ds.push(Dispatch {
                group: gemm.bind(
                    gpu,
                    &[
                        &cached.acts[l],
                        cur,
                        grad,
                        &params.buf,
                        &gpu.dummy_rw,
                        &gpu.dummy_ro,
                    ],
                ),
                kernel: gemm.clone(),
                offset,
                grid: gemm_grid(gpu, lo.fan_in, lo.fan_out, e)?,
            });
            ds.push(reduce_dispatch(
                gpu,
                st,
                &reduce,
                cur,
                grad,
                ReduceParams {
                    rows: r,
                    cols: fo,
                    in_off: 0,
                    in_rs: fo,
                    in_bs: r * fo,
                    out_off: lo.bias as u32,
                    out_bs: fo,
                    split: 0,
                    scale: 1.0,
                    add_lo: 0.0,
                    add_hi: 0.0,
                    cols_per: 1,
                },
                e,
            )?);
        }
        // dz' = (dz·Wᵀ) ⊙ act'(z') below the first layer; at the first, dx = (dz·Wᵀ) / σ.
        let (next, x, x_off, x_rs, x_bs, epilogue) = if l > 0 {
            let x_off = ((l - 1) * count * h) as u32;
            (&dz[l % 2], &cached.pre, x_off, fi, r * fi, epi::ACT_GRAD)
        } else if let Some(dx) = dx {
            (dx, &norm.buf, fi, 0, 0, epi::DIV)
        } else {
            break;
        };
        let p = GemmParams {
            m: r,
            n: fi,
            k: fo,
            a_off: 0,
            a_rs: fo,
            a_cs: 1,
            a_bs: r * fo,
            b_off: lo.weight as u32,
            b_rs: 1,
            b_cs: fo,
            b_bs: fi * fo,
            c_off: 0,
            c_rs: fi,
            c_bs: r * fi,
            x_off,
            x_rs,
            x_bs,
            epilogue,
            activation: act,
            ..Default::default()
        };
        let offset = st.rec.block(gpu, &p);
        ds.push(Dispatch {
            group: gemm.bind(
                gpu,
                &[cur, &params.buf, next, x, &gpu.dummy_rw, &gpu.dummy_ro],
            ),
            kernel: gemm.clone(),
            offset,
            grid: gemm_grid(gpu, rows, lo.fan_in, e)?,
        });
        cur = next;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn nll_backward(
    be: &WgpuBackend,
    shape: &EnsembleShape,
    loss: &LossConfig,
    params: &WgpuBuf,
    norm: &WgpuBuf,
    x: &WgpuBuf,
    target: &WgpuBuf,
    rows: usize,
    grad: &mut WgpuBuf,
    losses: &mut WgpuBuf,
) -> Result<()> {
    let (e, d) = (shape.ensemble, shape.out_dim);
    check::nll_backward(
        shape,
        loss,
        rows,
        [
            params.len, norm.len, x.len, target.len, grad.len, losses.len,
        ],
    )?;
    check_shape(shape, rows)?;
    let nl = shape.num_layers + 1;
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let count = e * rows;
    let gemm = st.cache.get(gpu, &kernels::GEMM)?;
    let nll = st.cache.get(gpu, &kernels::NLL_HEAD)?;
    let reduce = st.cache.get(gpu, &kernels::REDUCE_ROWS)?;
    let dhead = st.ws.get(gpu, "d head", 0, count * shape.head_dim());
    let row_loss = st.ws.get(gpu, "row loss", 0, count);
    let row_db = if shape.probabilistic {
        st.ws.get(gpu, "row d-bounds", 0, count * 2 * d)
    } else {
        gpu.dummy_rw.clone()
    };
    // Blocks: normalize, nl forward GEMMs, nll head, 2 reductions, and per layer dW, db, dz.
    st.rec.reserve(gpu, 4 + 4 * nl)?;
    let mut ds = Vec::with_capacity(4 + 4 * nl);
    let cached = forward_cached(gpu, st, &gemm, shape, params, norm, x, rows, &mut ds)?;
    // Loss terms and d head.
    let scale = 1.0 / (rows * d) as f32;
    let offset = st.rec.block(gpu, &head_params(shape, rows, scale));
    ds.push(Dispatch {
        group: nll.bind(
            gpu,
            &[
                &cached.head,
                &params.buf,
                &target.buf,
                &dhead,
                &row_loss,
                &row_db,
            ],
        ),
        kernel: nll,
        offset,
        grid: gpu.grid_1d(count)?,
    });
    // losses[e] = Σ_rows row_loss / (rows·D).
    ds.push(reduce_dispatch(
        gpu,
        st,
        &reduce,
        &row_loss,
        &losses.buf,
        ReduceParams {
            rows: rows as u32,
            cols: 1,
            in_off: 0,
            in_rs: 1,
            in_bs: rows as u32,
            out_off: 0,
            out_bs: 1,
            split: 1,
            scale,
            add_lo: 0.0,
            add_hi: 0.0,
            cols_per: 1,
        },
        e,
    )?);
    if shape.probabilistic {
        ds.push(bounds_grad_dispatch(
            gpu,
            st,
            &reduce,
            shape,
            rows,
            &row_db,
            &grad.buf,
            loss.logvar_penalty,
        )?);
    }
    backward_layers(
        gpu,
        st,
        &gemm,
        shape,
        params,
        norm,
        rows,
        &cached,
        &dhead,
        &loss.weight_decay,
        Some(&grad.buf),
        None,
        &mut ds,
    )?;
    st.rec.run(gpu, "ensemble_nll_backward", &ds);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn vjp(
    be: &WgpuBackend,
    shape: &EnsembleShape,
    params: &WgpuBuf,
    norm: &WgpuBuf,
    x: &WgpuBuf,
    rows: usize,
    d_mean: &WgpuBuf,
    d_logvar: &WgpuBuf,
    grad: Option<&mut WgpuBuf>,
    dx: Option<&mut WgpuBuf>,
) -> Result<()> {
    let (e, d) = (shape.ensemble, shape.out_dim);
    check::vjp(
        shape,
        rows,
        [params.len, norm.len, x.len, d_mean.len, d_logvar.len],
        grad.as_ref().map(|g| g.len),
        dx.as_ref().map(|g| g.len),
    )?;
    check_shape(shape, rows)?;
    if rows == 0 {
        if let Some(g) = grad {
            let zeros = vec![0.0f32; g.len];
            crate::backend::Backend::write(be, g, &zeros)?;
        }
        return Ok(());
    }
    if grad.is_none() && dx.is_none() {
        return Ok(());
    }
    let nl = shape.num_layers + 1;
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let count = e * rows;
    let gemm = st.cache.get(gpu, &kernels::GEMM)?;
    // Blocks: normalize, nl forward GEMMs, the head, its reduction, per layer dW, db, dz.
    st.rec.reserve(gpu, 4 + 4 * nl)?;
    let mut ds = Vec::with_capacity(4 + 4 * nl);
    let cached = forward_cached(gpu, st, &gemm, shape, params, norm, x, rows, &mut ds)?;
    let grad = grad.map(|g| &g.buf);
    // A deterministic head is the mean itself; a probabilistic one goes through the bounds.
    let dhead = if shape.probabilistic {
        let head = st.cache.get(gpu, &kernels::VJP_HEAD)?;
        let reduce = st.cache.get(gpu, &kernels::REDUCE_ROWS)?;
        let dhead = st.ws.get(gpu, "d head", 0, count * shape.head_dim());
        let row_db = st.ws.get(gpu, "row d-bounds", 0, count * 2 * d);
        let offset = st.rec.block(gpu, &head_params(shape, rows, 1.0));
        ds.push(Dispatch {
            group: head.bind(
                gpu,
                &[
                    &cached.head,
                    &params.buf,
                    &d_mean.buf,
                    &d_logvar.buf,
                    &dhead,
                    &row_db,
                ],
            ),
            kernel: head,
            offset,
            grid: gpu.grid_1d(count)?,
        });
        if let Some(g) = grad {
            ds.push(bounds_grad_dispatch(
                gpu, st, &reduce, shape, rows, &row_db, g, 0.0,
            )?);
        }
        dhead
    } else {
        d_mean.buf.clone()
    };
    backward_layers(
        gpu,
        st,
        &gemm,
        shape,
        params,
        norm,
        rows,
        &cached,
        &dhead,
        &[],
        grad,
        dx.map(|d| &d.buf),
        &mut ds,
    )?;
    st.rec.run(gpu, "ensemble_vjp", &ds);
    Ok(())
}
