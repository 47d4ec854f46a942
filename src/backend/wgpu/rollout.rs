//! Trajectory sampling and true-dynamics planning on the device (`shaders/rollout.wgsl`);
//! the specification is `backend/cpu/rollout.rs`.
//!
//! The whole horizon loop of one call is recorded as one compute pass (see the shader's
//! header for the kernels): no dispatch waits on the host, and the per-step parameters are a
//! table of uniform blocks chosen by dynamic offset.
use super::device::Dispatch;
use super::ensemble::{gemm_grid, max_width, weights_for_forward, TILE_M};
use super::params::{epi, GemmParams, RolloutStep};
use super::{kernels, word, WgpuBackend, WgpuBuf};
use crate::backend::value::DeviceValue;
use crate::backend::{check, BranchParams, EnsembleShape, PathParams, RolloutParams};
use crate::Result;

fn step_block(p: &RolloutParams, t: u32) -> RolloutStep {
    RolloutStep {
        p: *p,
        t,
        rows: 0,
        positions: 0,
        tiles: 0,
        slot_stride: 1,
        in_dim: 0,
        out_dim: 0,
        head_dim: 0,
        probabilistic: 0,
        max_off: 0,
        min_off: 0,
        state_dim: 0,
        table: 0,
        gamma: 1.0,
        _pad: [0; 2],
    }
}

/// The model rollout; with `value` (the device copy of a terminal value and its γ), the
/// rewards are discounted, the rows' states, returns and flags live in the value's buffers,
/// and each live path is closed with γ^H·V(s_H) (`rollout_value`) before the particle mean.
#[allow(clippy::too_many_arguments)]
pub(super) fn rollout(
    be: &WgpuBackend,
    p: &RolloutParams,
    shape: &EnsembleShape,
    params: &WgpuBuf,
    norm: &WgpuBuf,
    start: &WgpuBuf,
    actions: &WgpuBuf,
    mut value: Option<(&mut DeviceValue<WgpuBuf>, f32)>,
    returns: &mut WgpuBuf,
) -> Result<()> {
    check::rollout(
        p,
        shape,
        [params.len, norm.len, start.len, actions.len, returns.len],
    )?;
    let od = p.obs_dim as usize;
    shape.validate()?;
    let elites = &p.elites[..p.num_elites as usize];
    let lay = shape.layout();
    let (np, h, k) = (
        p.population as usize,
        p.horizon as usize,
        p.particles as usize,
    );
    let rows = np * k;
    if rows == 0 {
        return Ok(());
    }
    let slots = elites.len();
    let expectation = p.propagation == 2;
    // Slot-ordered positions: TS pads each slot to whole tiles (≤ rows + 63 per slot);
    // expectation gives every slot all rows.
    let (positions, slot_stride) = if expectation {
        let stride = rows.next_multiple_of(TILE_M);
        (slots * stride, stride)
    } else {
        ((rows + (TILE_M - 1) * slots).next_multiple_of(TILE_M), 1)
    };
    let tiles = positions / TILE_M;
    // TS1 draws members anew every step: one slot table per step, all built up front.
    let regroup_each_step = p.propagation == 0;
    let tables = if regroup_each_step { h } else { 1 };
    word("rollout slot tables", tables * positions)?;
    let width = max_width(shape);
    let hd = shape.head_dim();
    word("rollout activations", positions * width)?;
    word("parameters", lay.total)?;
    word("noise elements", rows * shape.out_dim)?;

    let gamma = value.as_ref().map_or(1.0, |v| v.1);
    let paths = match value.as_mut() {
        Some((dv, _)) => Some(dv.paths(be, rows)?),
        None => None,
    };
    let gpu = &be.gpu;
    let mut guard = be.lock();
    let st = &mut *guard;
    let nl = lay.layers.len();
    st.rec.reserve(gpu, h + tables * nl + 1)?;
    let mut ds = Vec::with_capacity(3 + h * (nl + 3));
    let (gemm, weights) = weights_for_forward(be, st, params, lay.total, &mut ds)?;
    let init = st.cache.get(gpu, &kernels::ROLLOUT_INIT)?;
    let group = st.cache.get(gpu, &kernels::ROLLOUT_GROUP)?;
    let gather = st.cache.get(gpu, &kernels::ROLLOUT_GATHER)?;
    let stepk = st.cache.get(gpu, &kernels::ROLLOUT_STEP)?;
    let reduce = st.cache.get(gpu, &kernels::ROLLOUT_REDUCE)?;
    let (state, ret, flags) = match &paths {
        Some(ps) => (
            ps.states.buf.clone(),
            ps.returns.buf.clone(),
            ps.flags.buf.clone(),
        ),
        None => (
            st.ws.get(gpu, "rollout state", 0, rows * od),
            st.ws.get(gpu, "rollout row returns", 0, rows),
            st.ws.get(gpu, "rollout row flags", 0, rows),
        ),
    };
    let perm = st.ws.get(gpu, "rollout perm", 0, tables * positions);
    let inv = st.ws.get(gpu, "rollout inverse perm", 0, tables * rows);
    let tile_members = st.ws.get(gpu, "rollout tiles", 0, tables * tiles);
    let acts = [
        st.ws.get(gpu, "rollout activations", 0, positions * width),
        st.ws.get(gpu, "rollout activations", 1, positions * width),
    ];
    let head = &acts[nl % 2];

    // One parameter block per horizon step, then one per layer.
    let blocks: Vec<u32> = (0..h as u32)
        .map(|t| {
            let b = RolloutStep {
                rows: rows as u32,
                positions: positions as u32,
                tiles: tiles as u32,
                slot_stride: slot_stride as u32,
                in_dim: shape.in_dim as u32,
                out_dim: shape.out_dim as u32,
                head_dim: hd as u32,
                probabilistic: u32::from(shape.probabilistic),
                max_off: lay.max_logvar as u32,
                min_off: lay.min_logvar as u32,
                table: if regroup_each_step { t } else { 0 },
                gamma,
                ..step_block(p, t)
            };
            st.rec.block(gpu, &b)
        })
        .collect();
    let act = shape.activation.code();
    // One parameter block per (slot table, layer): the GEMMs of TS1's step t read table t.
    let layer_blocks: Vec<u32> = (0..tables * nl)
        .map(|i| {
            let (table, l) = (i / nl, i % nl);
            let lo = &lay.layers[l];
            let (fi, fo) = (lo.fan_in as u32, lo.fan_out as u32);
            let g = GemmParams {
                m: positions as u32,
                n: fo,
                k: fi,
                grouped: 1,
                a_rs: fi,
                a_cs: 1,
                b_off: lo.weight as u32,
                b_rs: fo,
                b_cs: 1,
                b_bs: fi * fo,
                c_rs: fo,
                x_off: lo.bias as u32,
                x_rs: 0,
                x_bs: fo,
                epilogue: if l < shape.num_layers {
                    epi::BIAS_ACT
                } else {
                    epi::BIAS
                },
                activation: act,
                tiles_off: (table * tiles) as u32,
                ..Default::default()
            };
            st.rec.block(gpu, &g)
        })
        .collect();
    let layer_groups: Vec<wgpu::BindGroup> = (0..nl)
        .map(|l| {
            gemm.bind(
                gpu,
                &[
                    &acts[l % 2],
                    &weights,
                    &acts[(l + 1) % 2],
                    &params.buf,
                    &gpu.dummy_rw,
                    &tile_members,
                ],
            )
        })
        .collect();
    let layer_grids = lay
        .layers
        .iter()
        .map(|lo| gemm_grid(gpu, positions, lo.fan_out, 1))
        .collect::<Result<Vec<_>>>()?;
    let group_bg = group.bind(gpu, &[&perm, &inv, &tile_members]);
    let gather_bg = gather.bind(gpu, &[&state, &perm, &actions.buf, &norm.buf, &acts[0]]);
    let step_bg = stepk.bind(
        gpu,
        &[&state, &ret, &flags, &inv, &actions.buf, head, &params.buf],
    );
    let rows_grid = gpu.grid_1d(rows)?;
    let pos_grid = gpu.grid_1d(positions)?;

    ds.push(Dispatch {
        group: init.bind(gpu, &[&start.buf, &state, &ret, &flags]),
        kernel: init,
        offset: blocks[0],
        grid: rows_grid,
    });
    ds.push(Dispatch {
        group: group_bg.clone(),
        kernel: group.clone(),
        offset: blocks[0],
        grid: [tables as u32, 1, 1],
    });
    for (t, &block) in blocks.iter().enumerate() {
        let table = if regroup_each_step { t } else { 0 };
        ds.push(Dispatch {
            group: gather_bg.clone(),
            kernel: gather.clone(),
            offset: block,
            grid: pos_grid,
        });
        for l in 0..nl {
            ds.push(Dispatch {
                group: layer_groups[l].clone(),
                kernel: gemm.clone(),
                offset: layer_blocks[table * nl + l],
                grid: layer_grids[l],
            });
        }
        ds.push(Dispatch {
            group: step_bg.clone(),
            kernel: stepk.clone(),
            offset: block,
            grid: rows_grid,
        });
    }
    let (reduce_group, reduce_grid) = (
        reduce.bind(gpu, &[&ret, &flags, &returns.buf]),
        gpu.grid_1d(np)?,
    );
    let Some((dv, _)) = value else {
        ds.push(Dispatch {
            group: reduce_group,
            kernel: reduce,
            offset: blocks[0],
            grid: reduce_grid,
        });
        st.rec.run(gpu, "rollout", &ds);
        return Ok(());
    };
    st.rec.run(gpu, "rollout", &ds);
    // The value's networks run as ordinary operations, which take the state lock themselves.
    drop(guard);
    dv.q(be, rows)?;
    let (q, _) = dv.closing()?;
    let mut guard = be.lock();
    let st = &mut *guard;
    let close = st.cache.get(gpu, &kernels::ROLLOUT_VALUE)?;
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(
        gpu,
        &RolloutStep {
            rows: rows as u32,
            gamma: crate::backend::value::discount(gamma, h),
            ..step_block(p, 0)
        },
    );
    // One parameter block for both: the reduce reads only `p` from it.
    let close = Dispatch {
        group: close.bind(gpu, &[&ret, &flags, &q.buf]),
        kernel: close,
        offset,
        grid: rows_grid,
    };
    let reduce = Dispatch {
        group: reduce_group,
        kernel: reduce,
        offset,
        grid: reduce_grid,
    };
    st.rec.run(gpu, "rollout value", &[close, reduce]);
    Ok(())
}

pub(super) fn rollout_true(
    be: &WgpuBackend,
    p: &RolloutParams,
    start: &WgpuBuf,
    actions: &WgpuBuf,
    returns: &mut WgpuBuf,
) -> Result<()> {
    let spec = check::rollout_true(p, [start.len, actions.len, returns.len])?;
    let (np, h) = (p.population as usize, p.horizon as usize);
    word("actions", np * h * spec.act_dim)?;
    if np == 0 {
        return Ok(());
    }
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let k = st.cache.get(gpu, &kernels::ROLLOUT_TRUE)?;
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(
        gpu,
        &RolloutStep {
            state_dim: spec.state_dim as u32,
            ..step_block(p, 0)
        },
    );
    let d = Dispatch {
        group: k.bind(gpu, &[&start.buf, &actions.buf, &returns.buf]),
        kernel: k,
        offset,
        grid: gpu.grid_1d(np)?,
    };
    st.rec.run(gpu, "rollout_true", &[d]);
    Ok(())
}

/// MBPO's TS1 routing of one branched-rollout step (`branch_route` in the shader).
pub(super) fn branch_route(
    be: &WgpuBackend,
    p: &BranchParams,
    x: &WgpuBuf,
    route: &mut WgpuBuf,
    xg: &mut WgpuBuf,
) -> Result<()> {
    check::branch_route(p, [x.len, route.len, xg.len])?;
    // One workgroup: the route's ranks come from a workgroup-wide scan (rollout.wgsl).
    let bufs = [&x.buf, &route.buf, &xg.buf];
    be.dispatch_one(&kernels::BRANCH_ROUTE, p, &bufs, [1, 1, 1])
}

/// The model's step, reward, termination and ring append of one branched-rollout step.
pub(super) fn branch_step(be: &WgpuBackend, p: &BranchParams, all: [&WgpuBuf; 8]) -> Result<()> {
    check::branch_step(p, all.map(|b| b.len))?;
    let bufs = all.map(|b| &b.buf);
    be.dispatch_one(&kernels::BRANCH_STEP, p, &bufs, [1, 1, 1])
}

/// The path gradient's model step t < H (`path_step` in the shader): one thread per row.
pub(super) fn path_step(be: &WgpuBackend, p: &PathParams, all: [&WgpuBuf; 5]) -> Result<()> {
    check::path_step(p, all.map(|b| b.len))?;
    let n = p.rows as usize;
    word("path rows", n)?;
    let grid = be.gpu.grid_1d(n)?;
    be.dispatch_one(&kernels::PATH_STEP, p, &all.map(|b| &b.buf), grid)
}

/// The reverse sweep's model stage t < H (`path_model_back`): one thread per grouped slot.
pub(super) fn path_model_back(be: &WgpuBackend, p: &PathParams, all: [&WgpuBuf; 6]) -> Result<()> {
    check::path_model_back(p, all.map(|b| b.len))?;
    let n = p.members as usize * p.per as usize;
    word("grouped path slots", n)?;
    let grid = be.gpu.grid_1d(n)?;
    be.dispatch_one(&kernels::PATH_MODEL_BACK, p, &all.map(|b| &b.buf), grid)
}
