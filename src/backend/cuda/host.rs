//! What the CUDA backend needs from a device runtime: memory, copies and kernel launches.
//!
//! [`super::CudaBackend`] is written against this trait, so that the very same host code (shape
//! checks, scratch layout, launch geometry, launch order) drives the CUDA driver
//! ([`super::CudaDriver`]) on a GPU and an OpenCL queue in the parity tests, where the kernels
//! are built as OpenCL C and executed by PoCL on the CPU.
use super::source::Program;
use crate::Result;

/// One kernel argument, in the order of the kernel's parameter list.
#[derive(Clone, Copy)]
pub enum Arg<'a, M> {
    /// A device buffer (a `GLOBAL T*` parameter).
    Mem(&'a M),
    U32(u32),
    F32(f32),
    /// A `#[repr(C)]` parameter block passed by value (at most [`MAX_POD_BYTES`]).
    Pod(&'a [u8]),
}

/// Largest parameter block a kernel takes by value.
pub const MAX_POD_BYTES: usize = 128;

/// One kernel launch: 1-D blocks of `block` threads on a 3-D grid.
pub struct Launch<'a, M> {
    pub program: Program,
    pub entry: &'static str,
    pub grid: [u32; 3],
    pub block: u32,
    /// Dynamic shared memory in bytes, for the kernels declared with `DYN_SMEM_PARAM`
    /// (OpenCL passes it as a trailing `__local` argument), `None` for the others.
    pub dynamic_shared: Option<u32>,
    pub args: &'a [Arg<'a, M>],
}

/// A device runtime that can execute the programs of `kernels/`. Work is issued in order (one
/// stream / one in-order queue); `download` waits for everything issued before it.
pub trait KernelHost: Send + Sync + 'static {
    /// A device allocation of 32-bit words.
    type Mem: Send + Sync;

    /// The device, in words, for `mbrl-gpu devices` and messages.
    fn device_name(&self) -> String;
    /// A zero-filled allocation of `words` 32-bit words (at least one).
    fn alloc_zeroed(&self, words: usize) -> Result<Self::Mem>;
    /// Copy `src` into the first `src.len()` words of `dst`.
    fn upload(&self, dst: &mut Self::Mem, src: &[u32]) -> Result<()>;
    /// Copy the first `dst.len()` words of `src` to the host, after all issued work.
    fn download(&self, src: &Self::Mem, dst: &mut [u32]) -> Result<()>;
    /// Issue one kernel launch.
    fn launch(&self, launch: &Launch<'_, Self::Mem>) -> Result<()>;
    /// The most dynamic shared memory one block may use, in bytes.
    fn max_dynamic_shared(&self) -> usize;
}

/// A buffer of f32 values resident on the device: the backend's `Buf`.
pub struct DeviceBuf<M> {
    pub(crate) mem: M,
    len: usize,
}

impl<M> DeviceBuf<M> {
    pub(crate) fn new(mem: M, len: usize) -> Self {
        DeviceBuf { mem, len }
    }
    /// Number of f32 values.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The underlying allocation (for hosts and tests).
    pub fn mem(&self) -> &M {
        &self.mem
    }
}
