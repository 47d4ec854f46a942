//! MPPI sampling and update on the device (`shaders/mppi.wgsl`); the specification is
//! `backend/cpu/mppi.rs`. The update is two dispatches: costs per candidate into a workspace,
//! then the weighted average per plan element, with no host round-trip.
use super::device::Dispatch;
use super::{kernels, word, WgpuBackend, WgpuBuf};
use crate::backend::{check, MppiParams};
use crate::Result;

pub(super) fn sample(
    be: &WgpuBackend,
    p: &MppiParams,
    mean: &WgpuBuf,
    chol: &WgpuBuf,
    lower: &WgpuBuf,
    upper: &WgpuBuf,
    out: &mut WgpuBuf,
) -> Result<()> {
    check::mppi_sample(p, [mean.len, chol.len, lower.len, upper.len, out.len])?;
    let total = p.population as usize * p.len as usize;
    word("population × length", total)?;
    if total == 0 {
        return Ok(());
    }
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let k = st.cache.get(gpu, &kernels::MPPI_SAMPLE)?;
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(gpu, p);
    let d = Dispatch {
        group: k.bind(
            gpu,
            &[&mean.buf, &chol.buf, &lower.buf, &upper.buf, &out.buf],
        ),
        kernel: k,
        offset,
        grid: gpu.grid_1d(total)?,
    };
    st.rec.run(gpu, "mppi_sample", &[d]);
    Ok(())
}

pub(super) fn update(
    be: &WgpuBackend,
    p: &MppiParams,
    population: &WgpuBuf,
    returns: &WgpuBuf,
    precision: &WgpuBuf,
    mean: &mut WgpuBuf,
) -> Result<()> {
    check::mppi_update(p, [population.len, returns.len, precision.len, mean.len])?;
    let (np, len) = (p.population as usize, p.len as usize);
    word("population × length", np * len)?;
    if len == 0 {
        return Ok(());
    }
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let cost = st.cache.get(gpu, &kernels::MPPI_COST)?;
    let upd = st.cache.get(gpu, &kernels::MPPI_UPDATE)?;
    let costs = st.ws.get(gpu, "mppi costs", 0, np);
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(gpu, p);
    let ds = [
        Dispatch {
            group: cost.bind(
                gpu,
                &[
                    &population.buf,
                    &returns.buf,
                    &precision.buf,
                    &mean.buf,
                    &costs,
                ],
            ),
            kernel: cost,
            offset,
            grid: gpu.grid_1d(np)?,
        },
        Dispatch {
            group: upd.bind(gpu, &[&population.buf, &costs, &mean.buf]),
            kernel: upd,
            offset,
            grid: gpu.grid_1d(len)?,
        },
    ];
    st.rec.run(gpu, "mppi_update", &ds);
    Ok(())
}
