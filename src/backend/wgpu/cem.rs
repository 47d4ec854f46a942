//! CEM sampling and update on the device (`shaders/cem.wgsl`); the specification is
//! `backend/cpu/cem.rs`. The update ranks the population on the device (`cem_rank`), then
//! averages the elites (`cem_update`): two dispatches, no host round-trip.
use super::device::Dispatch;
use super::{kernels, word, WgpuBackend, WgpuBuf};
use crate::backend::check;
use crate::backend::{EliteParams, InitParams, SampleParams, UpdateParams};
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

pub(super) fn select(
    be: &WgpuBackend,
    p: &EliteParams,
    population: &WgpuBuf,
    returns: &WgpuBuf,
    elites: &mut WgpuBuf,
    elite_returns: &mut WgpuBuf,
) -> Result<()> {
    check::select(
        p,
        [population.len, returns.len, elites.len, elite_returns.len],
    )?;
    let (np, total) = (
        p.population as usize,
        p.num_elites as usize * p.len as usize,
    );
    word("population × length", np * p.len as usize)?;
    let gpu = &be.gpu;
    if np.div_ceil(256) > gpu.max_groups() as usize {
        return Err(crate::invalid!(
            "a population of {np} exceeds one ranking dispatch on this adapter"
        ));
    }
    // cem_rank reads only the population size and elite count of an UpdateParams.
    let up = UpdateParams {
        population: p.population,
        len: p.len,
        num_elites: p.num_elites,
        _pad: 0,
        alpha: 0.0,
        min_var: 0.0,
        _pad2: [0; 2],
    };
    let mut st = be.lock();
    let st = &mut *st;
    let rank = st.cache.get(gpu, &kernels::CEM_RANK)?;
    let gather = st.cache.get(gpu, &kernels::CEM_GATHER)?;
    let idx = st.ws.get(gpu, "cem elites", 0, p.num_elites as usize);
    st.rec.reserve(gpu, 2)?;
    let rank_offset = st.rec.block(gpu, &up);
    let offset = st.rec.block(gpu, p);
    let ds = [
        Dispatch {
            group: rank.bind(gpu, &[&returns.buf, &idx]),
            kernel: rank,
            offset: rank_offset,
            grid: [np.div_ceil(256) as u32, 1, 1],
        },
        Dispatch {
            group: gather.bind(
                gpu,
                &[
                    &population.buf,
                    &returns.buf,
                    &idx,
                    &elites.buf,
                    &elite_returns.buf,
                ],
            ),
            kernel: gather,
            offset,
            grid: gpu.grid_1d(total)?,
        },
    ];
    st.rec.run(gpu, "cem_select", &ds);
    Ok(())
}

pub(super) fn keep(
    be: &WgpuBackend,
    p: &EliteParams,
    elites: &WgpuBuf,
    mean: &WgpuBuf,
    population: &mut WgpuBuf,
) -> Result<()> {
    check::keep(p, [elites.len, mean.len, population.len])?;
    let total = p.num_elites as usize * p.len as usize;
    word("population × length", population.len)?;
    if total == 0 {
        return Ok(());
    }
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let k = st.cache.get(gpu, &kernels::CEM_KEEP)?;
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(gpu, p);
    let d = Dispatch {
        group: k.bind(gpu, &[&elites.buf, &mean.buf, &population.buf]),
        kernel: k,
        offset,
        grid: gpu.grid_1d(total)?,
    };
    st.rec.run(gpu, "cem_keep", &[d]);
    Ok(())
}
