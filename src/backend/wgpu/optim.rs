//! Adam on the device (`shaders/optim.wgsl`); the specification is `backend/cpu/optim.rs`.
use super::device::Dispatch;
use super::{kernels, word, WgpuBackend, WgpuBuf};
use crate::backend::check;
use crate::backend::AdamParams;
use crate::Result;

pub(super) fn adam(
    be: &WgpuBackend,
    p: &AdamParams,
    params: &mut WgpuBuf,
    grad: &WgpuBuf,
    m: &mut WgpuBuf,
    v: &mut WgpuBuf,
) -> Result<()> {
    check::adam(p, [params.len, grad.len, m.len, v.len])?;
    let n = p.len as usize;
    word("parameter count", n)?;
    if n == 0 {
        return Ok(());
    }
    let gpu = &be.gpu;
    let mut st = be.lock();
    let st = &mut *st;
    let k = st.cache.get(gpu, &kernels::ADAM_STEP)?;
    st.rec.reserve(gpu, 1)?;
    let offset = st.rec.block(gpu, p);
    let d = Dispatch {
        group: k.bind(gpu, &[&params.buf, &grad.buf, &m.buf, &v.buf]),
        kernel: k,
        offset,
        grid: gpu.grid_1d(n)?,
    };
    st.rec.run(gpu, "adam_step", &[d]);
    Ok(())
}
