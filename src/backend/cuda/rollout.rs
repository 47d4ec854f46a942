//! Host side of `kernels/rollout.cu`: the fused model rollout (one launch for the whole
//! horizon, then the particle reduction) and the true-dynamics rollout.
use super::host::{Arg, KernelHost, Launch};
use super::params::{rollout_words, MlpShape, TILE_ROWS, TILE_THREADS};
use super::source::KernelFile;
use super::{CudaBackend, DeviceBuf};
use crate::backend::{check, EnsembleShape, RolloutParams};
use crate::{Error, Result};

impl<H: KernelHost> CudaBackend<H> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn model_rollout(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &DeviceBuf<H::Mem>,
        norm: &DeviceBuf<H::Mem>,
        start: &DeviceBuf<H::Mem>,
        actions: &DeviceBuf<H::Mem>,
        returns: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        let lens = [
            params.len(),
            norm.len(),
            start.len(),
            actions.len(),
            returns.len(),
        ];
        check::rollout(p, shape, lens)?;
        shape.validate()?;
        let (od, ad) = (p.obs_dim as usize, p.act_dim as usize);
        let (np, h) = (p.population as usize, p.horizon as usize);
        let rows = np * p.particles as usize;
        if rows == 0 {
            return Ok(());
        }
        // Row and noise indices are checked above; the action index (c·H + t)·A is u32 too.
        if np * h * ad >= u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{np} candidates × {h} steps × {ad} actions exceed the kernels' 32-bit indexing"
            )));
        }
        let ms = MlpShape::new(shape, TILE_ROWS);
        let shared = self.check_shared("the rollout", 4 * rollout_words(&ms, od))?;
        let mut sc = self.scratch();
        let sc = &mut *sc;
        self.pack_weights(
            &mut sc.bf16,
            &mut sc.bf16_source,
            params,
            shape.layout().total,
        )?;
        self.ensure(&mut sc.row_returns, rows)?;
        let row_returns = &sc.row_returns.as_ref().expect("ensured").0;
        let wt = match &sc.bf16 {
            Some((m, _)) if self.options.bf16_weights => m,
            _ => &params.mem,
        };
        let pb = bytemuck::bytes_of(p);
        self.host.launch(&Launch {
            program: self.mlp_program(KernelFile::Rollout),
            entry: "rollout",
            grid: [rows.div_ceil(TILE_ROWS) as u32, 1, 1],
            block: TILE_THREADS,
            dynamic_shared: Some(shared),
            args: &[
                Arg::Pod(pb),
                Arg::Pod(bytemuck::bytes_of(&ms)),
                Arg::Mem(&params.mem),
                Arg::Mem(wt),
                Arg::Mem(&norm.mem),
                Arg::Mem(&start.mem),
                Arg::Mem(&actions.mem),
                Arg::Mem(row_returns),
            ],
        })?;
        self.host.launch(&Launch {
            program: self.mlp_program(KernelFile::Rollout),
            entry: "rollout_reduce",
            grid: [np.div_ceil(256) as u32, 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[Arg::Pod(pb), Arg::Mem(row_returns), Arg::Mem(&returns.mem)],
        })
    }

    pub(super) fn true_rollout(
        &self,
        p: &RolloutParams,
        start: &DeviceBuf<H::Mem>,
        actions: &DeviceBuf<H::Mem>,
        returns: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::rollout_true(p, [start.len(), actions.len(), returns.len()])?;
        let np = p.population as usize;
        if np == 0 {
            return Ok(());
        }
        self.host.launch(&Launch {
            program: self.mlp_program(KernelFile::Rollout),
            entry: "rollout_true",
            grid: [np.div_ceil(128) as u32, 1, 1],
            block: 128,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(p)),
                Arg::Mem(&start.mem),
                Arg::Mem(&actions.mem),
                Arg::Mem(&returns.mem),
            ],
        })
    }
}
