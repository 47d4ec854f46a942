//! CEM sampling and update on the device (`shaders/cem.wgsl`); the specification is
//! `backend/cpu/cem.rs`. The update ranks the population on the device (`cem_rank`), then
//! averages the elites (`cem_update`): two dispatches, no host round-trip.
use super::device::Dispatch;
use super::{kernels, word, WgpuBackend, WgpuBuf};
use crate::backend::check;
use crate::backend::{InitParams, SampleParams, UpdateParams};
use crate::Result;

pub(super) fn init(
    be: &WgpuBackend,
    p: &InitParams,
    lower: &WgpuBuf,
    upper: &WgpuBuf,
    prev: &WgpuBuf,
    mean: &mut WgpuBuf,
    var: &mut WgpuBuf,
) -> Result<()> {
    check::init(p, [lower.len, upper.len, prev.len, mean.len, var.len])?;
    let len = p.len as usize;
    word("plan length", len)?;
    if len == 0 {
        return Ok(());
    }
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let k = st.cache.get(gpu, &kernels::CEM_INIT)?;
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(gpu, p);
    let d = Dispatch {
        group: k.bind(
            gpu,
            &[&lower.buf, &upper.buf, &prev.buf, &mean.buf, &var.buf],
        ),
        kernel: k,
        offset,
        grid: gpu.grid_1d(len)?,
    };
    st.rec.run(gpu, "cem_init", &[d]);
    Ok(())
}

pub(super) fn sample(
    be: &WgpuBackend,
    p: &SampleParams,
    mean: &WgpuBuf,
    var: &WgpuBuf,
    lower: &WgpuBuf,
    upper: &WgpuBuf,
    out: &mut WgpuBuf,
) -> Result<()> {
    check::sample(p, [mean.len, var.len, lower.len, upper.len, out.len])?;
    let total = p.population as usize * p.len as usize;
    word("population × length", total)?;
    if total == 0 {
        return Ok(());
    }
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let k = st.cache.get(gpu, &kernels::CEM_SAMPLE)?;
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(gpu, p);
    let d = Dispatch {
        group: k.bind(
            gpu,
            &[&mean.buf, &var.buf, &lower.buf, &upper.buf, &out.buf],
        ),
        kernel: k,
        offset,
        grid: gpu.grid_1d(total)?,
    };
    st.rec.run(gpu, "cem_sample", &[d]);
    Ok(())
}

pub(super) fn update(
    be: &WgpuBackend,
    p: &UpdateParams,
    population: &WgpuBuf,
    returns: &WgpuBuf,
    mean: &mut WgpuBuf,
    var: &mut WgpuBuf,
) -> Result<()> {
    check::update(p, [population.len, returns.len, mean.len, var.len])?;
    let (np, len) = (p.population as usize, p.len as usize);
    word("population × length", np * len)?;
    let gpu = &be.gpu;
    if np.div_ceil(256) > gpu.max_groups() as usize {
        return Err(crate::invalid!(
            "a population of {np} exceeds one ranking dispatch on this adapter"
        ));
    }
    let mut st = be.lock();
    let st = &mut *st;
    let rank = st.cache.get(gpu, &kernels::CEM_RANK)?;
    let upd = st.cache.get(gpu, &kernels::CEM_UPDATE)?;
    let elites = st.ws.get(gpu, "cem elites", 0, p.num_elites as usize);
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(gpu, p);
    let ds = [
        Dispatch {
            group: rank.bind(gpu, &[&returns.buf, &elites]),
            kernel: rank,
            offset,
            grid: [np.div_ceil(256) as u32, 1, 1],
        },
        Dispatch {
            group: upd.bind(gpu, &[&population.buf, &elites, &mean.buf, &var.buf]),
            kernel: upd,
            offset,
            grid: gpu.grid_1d(len)?,
        },
    ];
    st.rec.run(gpu, "cem_update", &ds);
    Ok(())
}
