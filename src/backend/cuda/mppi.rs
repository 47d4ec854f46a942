//! Host side of `kernels/mppi.cu`: sampling, then the update as a cost kernel (one thread per
//! candidate, costs into scratch) followed by the weighted average (one thread per element).
use super::host::{Arg, KernelHost, Launch};
use super::source::{KernelFile, Program};
use super::{stride_blocks, CudaBackend, DeviceBuf};
use crate::backend::{check, MppiParams};
use crate::Result;

impl<H: KernelHost> CudaBackend<H> {
    pub(super) fn mppi_sample_op(
        &self,
        p: &MppiParams,
        mean: &DeviceBuf<H::Mem>,
        chol: &DeviceBuf<H::Mem>,
        lower: &DeviceBuf<H::Mem>,
        upper: &DeviceBuf<H::Mem>,
        out: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::mppi_sample(
            p,
            [mean.len(), chol.len(), lower.len(), upper.len(), out.len()],
        )?;
        let total = p.population as usize * p.len as usize;
        if total == 0 {
            return Ok(());
        }
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Mppi),
            entry: "mppi_sample",
            grid: [stride_blocks(total).min(4096), 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(p)),
                Arg::Mem(&mean.mem),
                Arg::Mem(&chol.mem),
                Arg::Mem(&lower.mem),
                Arg::Mem(&upper.mem),
                Arg::Mem(&out.mem),
            ],
        })
    }

    pub(super) fn mppi_update_op(
        &self,
        p: &MppiParams,
        population: &DeviceBuf<H::Mem>,
        returns: &DeviceBuf<H::Mem>,
        precision: &DeviceBuf<H::Mem>,
        mean: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::mppi_update(
            p,
            [population.len(), returns.len(), precision.len(), mean.len()],
        )?;
        let len = p.len as usize;
        if len == 0 {
            return Ok(());
        }
        let mut sc = self.scratch();
        self.ensure(&mut sc.mppi_costs, p.population as usize)?;
        let costs = &sc.mppi_costs.as_ref().expect("ensured").0;
        let program = Program::plain(KernelFile::Mppi);
        let pb = bytemuck::bytes_of(p);
        self.host.launch(&Launch {
            program,
            entry: "mppi_cost",
            grid: [(p.population as usize).div_ceil(256) as u32, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(pb),
                Arg::Mem(&population.mem),
                Arg::Mem(&returns.mem),
                Arg::Mem(&precision.mem),
                Arg::Mem(&mean.mem),
                Arg::Mem(costs),
            ],
        })?;
        self.host.launch(&Launch {
            program,
            entry: "mppi_update",
            grid: [len.div_ceil(256) as u32, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(pb),
                Arg::Mem(&population.mem),
                Arg::Mem(costs),
                Arg::Mem(&mean.mem),
            ],
        })
    }
}
