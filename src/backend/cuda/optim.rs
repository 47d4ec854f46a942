//! Host side of `kernels/optim.cu`: one Adam step.
use super::host::{Arg, KernelHost, Launch};
use super::source::{KernelFile, Program};
use super::{stride_blocks, CudaBackend, DeviceBuf};
use crate::backend::{check, AdamParams};
use crate::Result;

impl<H: KernelHost> CudaBackend<H> {
    pub(super) fn adam(
        &self,
        p: &AdamParams,
        params: &mut DeviceBuf<H::Mem>,
        grad: &DeviceBuf<H::Mem>,
        m: &mut DeviceBuf<H::Mem>,
        v: &mut DeviceBuf<H::Mem>,
    ) -> Result<()> {
        check::adam(p, [params.len(), grad.len(), m.len(), v.len()])?;
        let n = p.len as usize;
        if n == 0 {
            return Ok(());
        }
        // The bias corrections exactly as src/backend/cpu/optim.rs computes them (powi on the
        // host), so that the kernel's update is bit-identical.
        let t = p.step.max(1) as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        let step_size = p.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        self.host.launch(&Launch {
            program: Program::plain(KernelFile::Optim),
            entry: "adam_step",
            // A few waves of any GPU; the kernel strides over the rest.
            grid: [stride_blocks(n).min(2048), 1, 1],
            block: 256,
            dynamic_shared: None,
            args: &[
                Arg::Pod(bytemuck::bytes_of(p)),
                Arg::F32(step_size),
                Arg::F32(bc2_sqrt),
                Arg::Mem(&params.mem),
                Arg::Mem(&grad.mem),
                Arg::Mem(&m.mem),
                Arg::Mem(&v.mem),
            ],
        })
    }
}
