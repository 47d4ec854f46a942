//! Host side of `kernels/sac.cu`: the SAC stages, one launch each.
use super::host::{Arg, KernelHost, Launch};
use super::source::{KernelFile, Program};
use super::{stride_blocks, CudaBackend, DeviceBuf};
use crate::backend::{check, PathParams, SacParams};
use crate::Result;

impl<H: KernelHost> CudaBackend<H> {
    /// One launch of a `sac.cu` entry with the parameter block first, then `bufs`.
    fn sac_launch(
        &self,
        entry: &'static str,
        p: &SacParams,
        grid: u32,
        bufs: &[&DeviceBuf<H::Mem>],
    ) -> Result<()> {
        let mut args = vec![Arg::Pod(bytemuck::bytes_of(p))];
        args.extend(bufs.iter().map(|b| Arg::Mem(&b.mem)));
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Sac),
            entry,
            grid: [grid, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &args,
        })
    }

    fn row_blocks(p: &SacParams) -> u32 {
        (p.rows as usize).div_ceil(256) as u32
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn squash(
        &self,
        p: &SacParams,
        head: &DeviceBuf<H::Mem>,
        eps: &DeviceBuf<H::Mem>,
        obs: &DeviceBuf<H::Mem>,
        sb: &DeviceBuf<H::Mem>,
        act_in: &DeviceBuf<H::Mem>,
        logp: &DeviceBuf<H::Mem>,
        x: &DeviceBuf<H::Mem>,
    ) -> Result<()> {
        let all = [head, eps, obs, sb, act_in, logp, x];
        check::sac_squash(p, all.map(|b| b.len()))?;
        self.sac_launch("sac_squash", p, Self::row_blocks(p), &all)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn critic_grad(&self, p: &SacParams, all: [&DeviceBuf<H::Mem>; 8]) -> Result<()> {
        check::sac_critic_grad(p, all.map(|b| b.len()))?;
        self.sac_launch("sac_critic_grad", p, 1, &all)
    }

    pub(super) fn actor_grad(&self, p: &SacParams, all: [&DeviceBuf<H::Mem>; 6]) -> Result<()> {
        check::sac_actor_grad(p, all.map(|b| b.len()))?;
        self.sac_launch("sac_actor_grad", p, 1, &all)
    }

    pub(super) fn squash_backward(
        &self,
        p: &SacParams,
        all: [&DeviceBuf<H::Mem>; 6],
    ) -> Result<()> {
        check::sac_squash_backward(p, all.map(|b| b.len()))?;
        self.sac_launch("sac_squash_backward", p, Self::row_blocks(p), &all)
    }

    pub(super) fn noise(&self, p: &SacParams, all: [&DeviceBuf<H::Mem>; 2]) -> Result<()> {
        check::sac_noise(p, all.map(|b| b.len()))?;
        let blocks = (p.rows as usize * p.act_dim as usize).div_ceil(256) as u32;
        self.sac_launch("sac_noise", p, blocks, &all)
    }

    pub(super) fn minibatch(&self, p: &SacParams, all: [&DeviceBuf<H::Mem>; 6]) -> Result<()> {
        check::sac_minibatch(p, all.map(|b| b.len()))?;
        self.sac_launch("sac_minibatch", p, Self::row_blocks(p), &all)
    }

    pub(super) fn polyak_avg(
        &self,
        p: &SacParams,
        target: &DeviceBuf<H::Mem>,
        online: &DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::polyak(p, [target.len(), online.len()])?;
        let n = p.len as usize;
        if n == 0 {
            return Ok(());
        }
        let grid = stride_blocks(n).min(2048);
        self.sac_launch("polyak", p, grid, &[target, online])
    }
}

/// The path gradient's policy stages (`path_squash`, `path_terminal`, `path_actor_back`,
/// `path_accumulate`), see `kernels/sac.cu`. The member tables are not checked on the host
/// (they live on the device); the kernels take an entry out of range as an empty slot.
impl<H: KernelHost> CudaBackend<H> {
    /// One launch of a path entry of `program` on `grid` blocks of 256 threads, the
    /// parameter block first, then `bufs` (none launched for an empty grid).
    pub(super) fn path_launch(
        &self,
        program: KernelFile,
        entry: &'static str,
        p: &PathParams,
        grid: usize,
        bufs: &[&DeviceBuf<H::Mem>],
    ) -> Result<()> {
        if grid == 0 {
            return Ok(());
        }
        let mut args = vec![Arg::Pod(bytemuck::bytes_of(p))];
        args.extend(bufs.iter().map(|b| Arg::Mem(&b.mem)));
        self.host.launch(&Launch {
            program: Program::plain(program),
            entry,
            grid: [
                u32::try_from(grid)
                    .map_err(|_| crate::Error::Invalid(format!("{entry}: {grid} blocks")))?,
                1,
                1,
            ],
            block: 256,
            dynamic_shared: None,
            args: &args,
        })
    }

    /// Blocks of a thread per grouped slot (t < H) or per row.
    pub(super) fn path_slot_blocks(p: &PathParams) -> usize {
        (p.members as usize * p.per as usize).div_ceil(256)
    }

    pub(super) fn path_row_blocks(p: &PathParams) -> usize {
        (p.rows as usize).div_ceil(256)
    }

    pub(super) fn path_squash_on(
        &self,
        p: &PathParams,
        all: [&DeviceBuf<H::Mem>; 5],
    ) -> Result<()> {
        check::path_squash(p, all.map(|b| b.len()))?;
        let grid = if p.t < p.horizon {
            Self::path_slot_blocks(p)
        } else {
            Self::path_row_blocks(p)
        };
        self.path_launch(KernelFile::Sac, "path_squash", p, grid, &all)
    }

    pub(super) fn path_terminal_on(
        &self,
        p: &PathParams,
        all: [&DeviceBuf<H::Mem>; 7],
    ) -> Result<()> {
        check::path_terminal(p, all.map(|b| b.len()))?;
        self.path_launch(KernelFile::Sac, "path_terminal", p, 1, &all)
    }

    pub(super) fn path_actor_back_on(
        &self,
        p: &PathParams,
        all: [&DeviceBuf<H::Mem>; 6],
    ) -> Result<()> {
        check::path_actor_back(p, all.map(|b| b.len()))?;
        self.path_launch(
            KernelFile::Sac,
            "path_actor_back",
            p,
            Self::path_row_blocks(p),
            &all,
        )
    }

    pub(super) fn path_accumulate_on(
        &self,
        p: &PathParams,
        all: [&DeviceBuf<H::Mem>; 4],
    ) -> Result<()> {
        check::path_accumulate(p, all.map(|b| b.len()))?;
        let n = (p.len as usize).max(p.rows as usize * p.obs_dim as usize);
        let grid = if n == 0 {
            0
        } else if p.step_grad_norm > 0.0 {
            // One block: the step's norm is a sum over all of g_step (sac.cu).
            1
        } else {
            stride_blocks(n).min(2048) as usize
        };
        self.path_launch(KernelFile::Sac, "path_accumulate", p, grid, &all)
    }
}
