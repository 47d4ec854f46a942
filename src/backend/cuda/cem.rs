//! Host side of `kernels/cem.cu`: population sampling, and the CEM update as a rank kernel
//! (elite indices into scratch) followed by the elementwise mean/variance update.
use super::host::{Arg, KernelHost, Launch};
use super::source::{KernelFile, Program};
use super::{stride_blocks, CudaBackend, DeviceBuf};
use crate::backend::{check, EliteParams, InitParams, SampleParams, UpdateParams};
use crate::{Error, Result};

impl<H: KernelHost> CudaBackend<H> {
    pub(super) fn init(
        &self,
        p: &InitParams,
        lower: &DeviceBuf<H::Mem>,
        upper: &DeviceBuf<H::Mem>,
        prev: &DeviceBuf<H::Mem>,
        mean: &mut DeviceBuf<H::Mem>,
        var: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::init(
            p,
            [lower.len(), upper.len(), prev.len(), mean.len(), var.len()],
        )?;
        let len = p.len as usize;
        if len == 0 {
            return Ok(());
        }
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Cem),
            entry: "cem_init",
            grid: [stride_blocks(len).min(4096), 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(p)),
                Arg::Mem(&lower.mem),
                Arg::Mem(&upper.mem),
                Arg::Mem(&prev.mem),
                Arg::Mem(&mean.mem),
                Arg::Mem(&var.mem),
            ],
        })
    }

    pub(super) fn sample(
        &self,
        p: &SampleParams,
        mean: &DeviceBuf<H::Mem>,
        var: &DeviceBuf<H::Mem>,
        lower: &DeviceBuf<H::Mem>,
        upper: &DeviceBuf<H::Mem>,
        out: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::sample(
            p,
            [mean.len(), var.len(), lower.len(), upper.len(), out.len()],
        )?;
        let len = p.len as usize;
        let total = p.population as usize * len;
        if total == 0 {
            return Ok(());
        }
        if total >= u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "a population of {total} values exceeds the 32-bit Philox element counter"
            )));
        }
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Cem),
            entry: "cem_sample",
            grid: [stride_blocks(total).min(4096), 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(p)),
                Arg::Mem(&mean.mem),
                Arg::Mem(&var.mem),
                Arg::Mem(&lower.mem),
                Arg::Mem(&upper.mem),
                Arg::Mem(&out.mem),
            ],
        })
    }

    pub(super) fn update(
        &self,
        p: &UpdateParams,
        population: &DeviceBuf<H::Mem>,
        returns: &DeviceBuf<H::Mem>,
        mean: &mut DeviceBuf<H::Mem>,
        var: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::update(p, [population.len(), returns.len(), mean.len(), var.len()])?;
        let len = p.len as usize;
        let mut sc = self.scratch();
        self.ensure(&mut sc.elite_idx, p.num_elites as usize)?;
        let idx = &sc.elite_idx.as_ref().expect("ensured").0;
        let program = Program::plain(KernelFile::Cem);
        let pb = bytemuck::bytes_of(p);
        self.host.launch(&Launch {
            program,
            entry: "cem_rank",
            grid: [(p.population as usize).div_ceil(256) as u32, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[Arg::Pod(pb), Arg::Mem(&returns.mem), Arg::Mem(idx)],
        })?;
        if len == 0 {
            return Ok(());
        }
        self.host.launch(&Launch {
            program,
            entry: "cem_update",
            grid: [len.div_ceil(256) as u32, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(pb),
                Arg::Mem(&population.mem),
                Arg::Mem(idx),
                Arg::Mem(&mean.mem),
                Arg::Mem(&var.mem),
            ],
        })
    }

    pub(super) fn select(
        &self,
        p: &EliteParams,
        population: &DeviceBuf<H::Mem>,
        returns: &DeviceBuf<H::Mem>,
        elites: &mut DeviceBuf<H::Mem>,
        elite_returns: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::select(
            p,
            [
                population.len(),
                returns.len(),
                elites.len(),
                elite_returns.len(),
            ],
        )?;
        let mut sc = self.scratch();
        self.ensure(&mut sc.elite_idx, p.num_elites as usize)?;
        let idx = &sc.elite_idx.as_ref().expect("ensured").0;
        let program = Program::plain(KernelFile::Cem);
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
        self.host.launch(&Launch {
            program,
            entry: "cem_rank",
            grid: [(p.population as usize).div_ceil(256) as u32, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(&up)),
                Arg::Mem(&returns.mem),
                Arg::Mem(idx),
            ],
        })?;
        let total = p.num_elites as usize * p.len as usize;
        if total == 0 {
            return Ok(());
        }
        self.host.launch(&Launch {
            program,
            entry: "cem_gather",
            grid: [stride_blocks(total).min(4096), 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(p)),
                Arg::Mem(&population.mem),
                Arg::Mem(&returns.mem),
                Arg::Mem(idx),
                Arg::Mem(&elites.mem),
                Arg::Mem(&elite_returns.mem),
            ],
        })
    }

    pub(super) fn keep(
        &self,
        p: &EliteParams,
        elites: &DeviceBuf<H::Mem>,
        mean: &DeviceBuf<H::Mem>,
        population: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::keep(p, [elites.len(), mean.len(), population.len()])?;
        let total = p.num_elites as usize * p.len as usize;
        if total == 0 {
            return Ok(());
        }
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Cem),
            entry: "cem_keep",
            grid: [stride_blocks(total).min(4096), 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(p)),
                Arg::Mem(&elites.mem),
                Arg::Mem(&mean.mem),
                Arg::Mem(&population.mem),
            ],
        })
    }
}
