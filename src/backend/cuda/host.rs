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
pub const MAX_POD_BYTES: usize = 144;

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
    /// Copy `src` into words `offset .. offset + src.len()` of `dst`.
    fn upload(&self, dst: &mut Self::Mem, offset: usize, src: &[u32]) -> Result<()>;
    /// Copy words `offset .. offset + dst.len()` of `src` to the host, after all issued work.
    fn download(&self, src: &Self::Mem, offset: usize, dst: &mut [u32]) -> Result<()>;
    /// Issue one kernel launch.
    fn launch(&self, launch: &Launch<'_, Self::Mem>) -> Result<()>;
    /// The most dynamic shared memory one block may use, in bytes.
    fn max_dynamic_shared(&self) -> usize;
    /// Whether the device runs the TF32 `mma.sync` tile products (compute capability ≥ 8.0),
    /// which planning then uses by default ([`super::CudaOptions::fp32_planning`]).
    fn has_tensor_cores(&self) -> bool {
        false
    }
}

/// Versions of buffer contents: every new buffer and every mutation through the backend takes
/// the next number, so equal versions mean the same buffer with the same contents.
static NEXT_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_version() -> u64 {
    NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A buffer of f32 values resident on the device: the backend's `Buf`.
pub struct DeviceBuf<M> {
    pub(crate) mem: M,
    len: usize,
    version: u64,
}

impl<M> DeviceBuf<M> {
    pub(crate) fn new(mem: M, len: usize) -> Self {
        DeviceBuf {
            mem,
            len,
            version: next_version(),
        }
    }
    /// The version of the contents (see [`DeviceBuf::touch`]).
    pub fn version(&self) -> u64 {
        self.version
    }
    /// Marks the contents changed: every backend operation calls it on each buffer it may
    /// write, before issuing the work, so that caches derived from a buffer (the bf16 weight
    /// packing) know when to rebuild.
    pub(crate) fn touch(&mut self) {
        self.version = next_version();
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

/// What a [`CountingHost`] saw: the host-side cost of the work it forwarded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// Kernel launches per entry point.
    pub launches: std::collections::BTreeMap<&'static str, u64>,
    pub uploads: u64,
    pub upload_bytes: u64,
    pub downloads: u64,
    /// Downloads issued after a launch (since the previous download): each makes the host
    /// wait for the device's queued work. A download right after another waits for nothing.
    pub syncs: u64,
    pub download_bytes: u64,
    pub allocations: u64,
    pub allocation_bytes: u64,
}

impl HostCounts {
    pub fn total_launches(&self) -> u64 {
        self.launches.values().sum()
    }

    /// What happened between `earlier` and `self` (both from the same host).
    pub fn since(&self, earlier: &HostCounts) -> HostCounts {
        let launches = self
            .launches
            .iter()
            .map(|(k, v)| (*k, v - earlier.launches.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        HostCounts {
            launches,
            uploads: self.uploads - earlier.uploads,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            downloads: self.downloads - earlier.downloads,
            syncs: self.syncs - earlier.syncs,
            download_bytes: self.download_bytes - earlier.download_bytes,
            allocations: self.allocations - earlier.allocations,
            allocation_bytes: self.allocation_bytes - earlier.allocation_bytes,
        }
    }
}

impl std::fmt::Display for HostCounts {
    /// One line: launches (and per entry), copies with their bytes, allocations.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per: Vec<String> = self
            .launches
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        write!(
            f,
            "{} launches ({}); {} uploads ({} B); {} downloads ({} B, {} synchronisations); {} \
             allocations ({} B)",
            self.total_launches(),
            per.join(", "),
            self.uploads,
            self.upload_bytes,
            self.downloads,
            self.download_bytes,
            self.syncs,
            self.allocations,
            self.allocation_bytes
        )
    }
}

/// A [`KernelHost`] that forwards everything to `H` and counts launches, copies and
/// allocations, so that the host code's cost per planning step (launches, synchronisations,
/// bytes moved, weight packs) is a number tests can pin, on PoCL as on a GPU.
pub struct CountingHost<H> {
    inner: H,
    /// The counts, and whether a launch was issued since the last download.
    counts: std::sync::Mutex<(HostCounts, bool)>,
}

impl<H: KernelHost> CountingHost<H> {
    pub fn new(inner: H) -> Self {
        CountingHost {
            inner,
            counts: Default::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> HostCounts {
        self.lock().0.clone()
    }

    pub fn inner(&self) -> &H {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HostCounts, bool)> {
        // Counting never panics while holding the lock; a poisoned lock still holds counts.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<H: KernelHost> KernelHost for CountingHost<H> {
    type Mem = H::Mem;

    fn device_name(&self) -> String {
        self.inner.device_name()
    }

    fn alloc_zeroed(&self, words: usize) -> Result<Self::Mem> {
        let m = self.inner.alloc_zeroed(words)?;
        let c = &mut self.lock().0;
        c.allocations += 1;
        c.allocation_bytes += 4 * words as u64;
        Ok(m)
    }

    fn upload(&self, dst: &mut Self::Mem, offset: usize, src: &[u32]) -> Result<()> {
        self.inner.upload(dst, offset, src)?;
        let c = &mut self.lock().0;
        c.uploads += 1;
        c.upload_bytes += 4 * src.len() as u64;
        Ok(())
    }

    fn download(&self, src: &Self::Mem, offset: usize, dst: &mut [u32]) -> Result<()> {
        self.inner.download(src, offset, dst)?;
        let (c, launched) = &mut *self.lock();
        c.downloads += 1;
        c.download_bytes += 4 * dst.len() as u64;
        if std::mem::take(launched) {
            c.syncs += 1;
        }
        Ok(())
    }

    fn launch(&self, launch: &Launch<'_, Self::Mem>) -> Result<()> {
        self.inner.launch(launch)?;
        let (c, launched) = &mut *self.lock();
        *c.launches.entry(launch.entry).or_insert(0) += 1;
        *launched = true;
        Ok(())
    }

    fn max_dynamic_shared(&self) -> usize {
        self.inner.max_dynamic_shared()
    }

    fn has_tensor_cores(&self) -> bool {
        self.inner.has_tensor_cores()
    }
}
