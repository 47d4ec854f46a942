//! Host side of `kernels/ensemble.cu`: ensemble forward and the NLL backward (launch order
//! and geometry are explained in the kernel file's header).
use super::host::{Arg, KernelHost, Launch};
use super::params::{MlpShape, NllParams, REDUCE_FLOATS, TILE_ROWS, TILE_THREADS};
use super::source::{KernelFile, Program};
use super::{stride_blocks, CudaBackend, DeviceBuf};
use crate::backend::{check, Activation, EnsembleShape, LossConfig};
use crate::{Error, Result};

impl<H: KernelHost> CudaBackend<H> {
    /// The program of an MLP kernel file in the backend's variant.
    pub(super) fn mlp_program(&self, file: KernelFile, activation: Activation) -> Program {
        // Planning (the rollout) takes tensor cores by default where they exist; the
        // ensemble's training and prediction only when asked.
        let tensor_cores = match file {
            KernelFile::Rollout => self.planning_tensor_cores(),
            _ => self.options.tensor_cores,
        };
        Program {
            file,
            bf16_weights: self.options.bf16_weights,
            tensor_cores,
            counters: self.options.counters,
            activation: Some(activation),
        }
    }

    /// With bf16 weights: round `params` into the bf16 scratch copy (one elementwise launch;
    /// the parameters may have changed since the last call).
    pub(super) fn pack_weights(
        &self,
        slot: &mut Option<(H::Mem, usize)>,
        source: &mut Option<u64>,
        params: &DeviceBuf<H::Mem>,
        total: usize,
    ) -> Result<()> {
        if !self.options.bf16_weights {
            return Ok(());
        }
        // Packed once per model update: the same version is the same buffer with the same
        // contents (every write through the backend takes a new one).
        let fits = slot
            .as_ref()
            .is_some_and(|(_, cap)| *cap >= total.div_ceil(2));
        if fits && *source == Some(params.version()) {
            return Ok(());
        }
        *source = None;
        self.ensure(slot, total.div_ceil(2))?;
        let dst = &slot.as_ref().expect("ensured").0;
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Ensemble),
            entry: "ensemble_pack_bf16",
            grid: [stride_blocks(total).min(1024), 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[Arg::U32(total as u32), Arg::Mem(&params.mem), Arg::Mem(dst)],
        })?;
        *source = Some(params.version());
        Ok(())
    }

    /// Beyond the shared checks: a valid shape, and sizes the kernels' 32-bit indices reach.
    fn model_shape(&self, shape: &EnsembleShape, rows: usize) -> Result<MlpShape> {
        shape.validate()?;
        let widest = shape.in_dim.max(shape.hidden).max(shape.head_dim());
        if shape.ensemble * rows * widest >= u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{rows} rows of a {}-member ensemble exceed the kernels' 32-bit indexing",
                shape.ensemble
            )));
        }
        Ok(MlpShape::new(shape, rows))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        shape: &EnsembleShape,
        params: &DeviceBuf<H::Mem>,
        norm: &DeviceBuf<H::Mem>,
        x: &DeviceBuf<H::Mem>,
        rows: usize,
        mean: &mut DeviceBuf<H::Mem>,
        logvar: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        let lens = [params.len(), norm.len(), x.len(), mean.len(), logvar.len()];
        check::forward(shape, rows, lens)?;
        let ms = self.model_shape(shape, rows)?;
        let e = shape.ensemble;
        if rows == 0 {
            return Ok(());
        }
        let shared = self.check_shared("the ensemble forward", 4 * ms.tile_floats())?;
        let mut sc = self.scratch();
        let sc = &mut *sc;
        self.pack_weights(
            &mut sc.bf16,
            &mut sc.bf16_source,
            params,
            shape.layout().total,
        )?;
        let wt = match &sc.bf16 {
            Some((m, _)) if self.options.bf16_weights => m,
            _ => &params.mem,
        };
        self.host.launch(&Launch {
            program: self.mlp_program(KernelFile::Ensemble, shape.activation),
            entry: "ensemble_forward",
            grid: [rows.div_ceil(TILE_ROWS) as u32, e as u32, 1],
            block: TILE_THREADS,
            dynamic_shared: Some(shared),
            args: &[
                Arg::Pod(bytemuck::bytes_of(&ms)),
                Arg::Mem(&params.mem),
                Arg::Mem(wt),
                Arg::Mem(&norm.mem),
                Arg::Mem(&x.mem),
                Arg::Mem(&mean.mem),
                Arg::Mem(&logvar.mem),
            ],
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn nll_backward(
        &self,
        shape: &EnsembleShape,
        loss: &LossConfig,
        params: &DeviceBuf<H::Mem>,
        norm: &DeviceBuf<H::Mem>,
        x: &DeviceBuf<H::Mem>,
        target: &DeviceBuf<H::Mem>,
        rows: usize,
        grad: &mut DeviceBuf<H::Mem>,
        losses: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        let lens = [
            params.len(),
            norm.len(),
            x.len(),
            target.len(),
            grad.len(),
            losses.len(),
        ];
        check::nll_backward(shape, loss, rows, lens)?;
        self.backward(
            shape,
            loss.logvar_penalty,
            &loss.weight_decay,
            0,
            [params, norm, x, target, target],
            rows,
            Some(grad),
            None,
            Some(losses),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn vjp(
        &self,
        shape: &EnsembleShape,
        params: &DeviceBuf<H::Mem>,
        norm: &DeviceBuf<H::Mem>,
        x: &DeviceBuf<H::Mem>,
        rows: usize,
        d_mean: &DeviceBuf<H::Mem>,
        d_logvar: &DeviceBuf<H::Mem>,
        grad: Option<&mut DeviceBuf<H::Mem>>,
        dx: Option<&mut DeviceBuf<H::Mem>>,
    ) -> Result<()> {
        let lens = [
            params.len(),
            norm.len(),
            x.len(),
            d_mean.len(),
            d_logvar.len(),
        ];
        let (gl, dl) = (grad.as_ref().map(|g| g.len()), dx.as_ref().map(|d| d.len()));
        check::vjp(shape, rows, lens, gl, dl)?;
        if rows == 0 {
            if let Some(g) = grad {
                let zeros = vec![0.0f32; g.len()];
                crate::backend::Backend::write(self, g, &zeros)?;
            }
            return Ok(());
        }
        if grad.is_none() && dx.is_none() {
            return Ok(());
        }
        let flags = NllParams::VJP | if dx.is_some() { NllParams::DX } else { 0 };
        // A deterministic ensemble's d_logvar is never read: any buffer will do.
        let dlv = if shape.probabilistic {
            d_logvar
        } else {
            d_mean
        };
        self.backward(
            shape,
            0.0,
            &[],
            flags,
            [params, norm, x, d_mean, dlv],
            rows,
            grad,
            dx,
            None,
        )
    }

    /// `ensemble_nll_backward` (a loss's or, with [`NllParams::VJP`], given head gradients),
    /// then with `grad` the per-layer weight gradients and the bound gradients, with `losses`
    /// the members' losses. `bufs`: params, norm, x, target or ∂/∂mean, ∂/∂logvar.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        shape: &EnsembleShape,
        logvar_penalty: f32,
        weight_decay: &[f32],
        flags: u32,
        bufs: [&DeviceBuf<H::Mem>; 5],
        rows: usize,
        grad: Option<&mut DeviceBuf<H::Mem>>,
        dx: Option<&mut DeviceBuf<H::Mem>>,
        losses: Option<&mut DeviceBuf<H::Mem>>,
    ) -> Result<()> {
        let [params, norm, x, target, dlv] = bufs;
        let ms = self.model_shape(shape, rows)?;
        let e = shape.ensemble;
        let lay = shape.layout();
        let (mut q, words) = NllParams::layout(shape, rows, logvar_penalty);
        q.flags = flags;
        if words >= u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "a training batch of {rows} rows needs {words} scratch values, more than the \
                 kernels' 32-bit indexing allows"
            )));
        }
        let what = if flags & NllParams::VJP != 0 {
            "the ensemble vector–Jacobian product"
        } else {
            "the ensemble NLL backward"
        };
        let shared = self.check_shared(what, 4 * (ms.tile_floats() + REDUCE_FLOATS))?;
        let mut sc = self.scratch();
        let sc = &mut *sc;
        self.pack_weights(&mut sc.bf16, &mut sc.bf16_source, params, lay.total)?;
        self.ensure(&mut sc.nll, words.max(1))?;
        let scratch = &sc.nll.as_ref().expect("ensured").0;
        let wt = match &sc.bf16 {
            Some((m, _)) if self.options.bf16_weights => m,
            _ => &params.mem,
        };
        let msb = bytemuck::bytes_of(&ms);
        let qb = bytemuck::bytes_of(&q);
        self.host.launch(&Launch {
            program: self.mlp_program(KernelFile::Ensemble, shape.activation),
            entry: "ensemble_nll_backward",
            grid: [q.ntiles, e as u32, 1],
            block: TILE_THREADS,
            dynamic_shared: Some(shared),
            args: &[
                Arg::Pod(msb),
                Arg::Pod(qb),
                Arg::Mem(&params.mem),
                Arg::Mem(wt),
                Arg::Mem(&norm.mem),
                Arg::Mem(&x.mem),
                Arg::Mem(&target.mem),
                Arg::Mem(&dlv.mem),
                Arg::Mem(dx.as_ref().map_or(scratch, |d| &d.mem)),
                Arg::Mem(scratch),
            ],
        })?;
        let Some(grad) = grad else {
            return Ok(());
        };
        // The gradient kernels never read weights through `wt`: plain f32 program.
        let plain = Program::plain(KernelFile::Ensemble);
        for (l, lo) in lay.layers.iter().enumerate() {
            self.host.launch(&Launch {
                program: plain,
                entry: "ensemble_nll_weight_grad",
                grid: [
                    lo.fan_out.div_ceil(32) as u32,
                    (lo.fan_in + 1).div_ceil(32) as u32,
                    e as u32,
                ],
                block: TILE_THREADS,
                dynamic_shared: None,
                args: &[
                    Arg::Pod(msb),
                    Arg::Pod(qb),
                    Arg::U32(l as u32),
                    Arg::F32(weight_decay.get(l).copied().unwrap_or(0.0)),
                    Arg::Mem(&params.mem),
                    Arg::Mem(scratch),
                    Arg::Mem(&grad.mem),
                ],
            })?;
        }
        // Without losses (a VJP) the kernel writes none: the gradient stands in for the
        // pointer.
        let losses = losses.map_or(&grad.mem, |l| &l.mem);
        self.host.launch(&Launch {
            program: plain,
            entry: "ensemble_nll_finish",
            grid: [1, 1, 1],
            block: TILE_THREADS,
            dynamic_shared: None,
            args: &[
                Arg::Pod(msb),
                Arg::Pod(qb),
                Arg::Mem(scratch),
                Arg::Mem(&grad.mem),
                Arg::Mem(losses),
            ],
        })
    }
}
