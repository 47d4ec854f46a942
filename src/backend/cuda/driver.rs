//! [`KernelHost`] on the CUDA driver API through cudarc: one context, one stream, programs
//! compiled by NVRTC on first use for the device's compute capability (PTX cached on disk).
use super::host::{Arg, KernelHost, Launch, MAX_POD_BYTES};
use super::source::{ptx_for, Program};
use crate::{Error, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A parameter block by value: the driver copies as many bytes as the kernel's parameter
/// declares from the pointer it is given, so one MAX_POD_BYTES carrier serves every block.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct PodArg([u8; MAX_POD_BYTES]);

// SAFETY: plain bytes, passed by value to kernels whose parameter is a C struct of u32/f32.
unsafe impl DeviceRepr for PodArg {}

fn driver_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Unavailable(format!("CUDA driver error while {what}: {e:?}"))
}

/// A kernel: its program and entry point.
type FunctionKey = (Program, &'static str);

/// The CUDA driver as a [`KernelHost`].
pub struct CudaDriver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cc: (i32, i32),
    name: String,
    max_shared_optin: usize,
    modules: Mutex<HashMap<Program, Arc<CudaModule>>>,
    /// Loaded functions and the dynamic shared memory they were opened up to.
    functions: Mutex<HashMap<FunctionKey, (CudaFunction, u32)>>,
}

impl CudaDriver {
    /// Context and stream on device `ordinal`. The caller has checked that libcuda loads.
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("creating a context", e))?;
        // One stream: every buffer is used in issue order, so cudarc's per-buffer events
        // (for cross-stream safety) would only add work to each launch.
        // SAFETY: no buffer of this context is ever used on a second stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating a stream", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| driver_err("reading the compute capability", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unnamed CUDA device".into());
        let max_shared_optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .unwrap_or(48 * 1024)
            .max(48 * 1024) as usize;
        Ok(CudaDriver {
            ctx,
            stream,
            cc,
            name,
            max_shared_optin,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    fn module(&self, program: Program) -> Result<Arc<CudaModule>> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mods.get(&program) {
            return Ok(m.clone());
        }
        let ptx = ptx_for(&program, self.cc)?;
        let m = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| {
                Error::Unavailable(format!(
                    "the CUDA driver could not load the PTX of {} for compute_{}{} ({e:?}); a \
                     driver older than the NVRTC that compiled it rejects newer PTX: update \
                     the NVIDIA driver or use an NVRTC no newer than the driver",
                    program.label(),
                    self.cc.0,
                    self.cc.1
                ))
            })?;
        mods.insert(program, m.clone());
        Ok(m)
    }

    fn function(&self, program: Program, entry: &'static str, shared: u32) -> Result<CudaFunction> {
        let mut fns = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((f, opened)) = fns.get_mut(&(program, entry)) {
            if shared > *opened {
                open_shared(f, shared)?;
                *opened = shared;
            }
            return Ok(f.clone());
        }
        let f = self
            .module(program)?
            .load_function(entry)
            .map_err(|e| driver_err(&format!("loading kernel {entry}"), e))?;
        if shared > 48 * 1024 {
            open_shared(&f, shared)?;
        }
        fns.insert((program, entry), (f.clone(), shared.max(48 * 1024)));
        Ok(f)
    }
}

/// Kernels asking for more than 48 KB of dynamic shared memory must opt in.
fn open_shared(f: &CudaFunction, bytes: u32) -> Result<()> {
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(|e| driver_err("raising the shared-memory limit of a kernel", e))
}

impl KernelHost for CudaDriver {
    type Mem = CudaSlice<u32>;

    fn device_name(&self) -> String {
        format!(
            "{} (compute capability {}.{})",
            self.name, self.cc.0, self.cc.1
        )
    }

    fn alloc_zeroed(&self, words: usize) -> Result<CudaSlice<u32>> {
        self.stream
            .alloc_zeros::<u32>(words.max(1))
            .map_err(|e| driver_err("allocating device memory", e))
    }

    fn upload(&self, dst: &mut CudaSlice<u32>, offset: usize, src: &[u32]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut view = dst.slice_mut(offset..offset + src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| driver_err("copying to the device", e))
    }

    fn download(&self, src: &CudaSlice<u32>, offset: usize, dst: &mut [u32]) -> Result<()> {
        if !dst.is_empty() {
            let view = src.slice(offset..offset + dst.len());
            self.stream
                .memcpy_dtoh(&view, dst)
                .map_err(|e| driver_err("copying from the device", e))?;
        }
        self.stream
            .synchronize()
            .map_err(|e| driver_err("waiting for the device", e))
    }

    fn launch(&self, l: &Launch<'_, CudaSlice<u32>>) -> Result<()> {
        let shared = l.dynamic_shared.unwrap_or(0);
        let f = self.function(l.program, l.entry, shared)?;
        // Storage for by-value arguments, filled before any reference is taken.
        let mut pods = Vec::new();
        let mut words = Vec::new();
        for a in l.args {
            match a {
                Arg::Pod(bytes) => {
                    assert!(bytes.len() <= MAX_POD_BYTES, "parameter block too large");
                    let mut p = PodArg([0; MAX_POD_BYTES]);
                    p.0[..bytes.len()].copy_from_slice(bytes);
                    pods.push(p);
                }
                Arg::U32(v) => words.push(*v),
                Arg::F32(v) => words.push(v.to_bits()),
                Arg::Mem(_) => {}
            }
        }
        let mut b = self.stream.launch_builder(&f);
        let (mut ip, mut iw) = (0, 0);
        for a in l.args {
            match a {
                Arg::Mem(m) => {
                    b.arg(*m);
                }
                Arg::Pod(_) => {
                    b.arg(&pods[ip]);
                    ip += 1;
                }
                // A u32 and an f32 are both 4 bytes passed by value: the bits are what count.
                Arg::U32(_) | Arg::F32(_) => {
                    b.arg(&words[iw]);
                    iw += 1;
                }
            }
        }
        let cfg = LaunchConfig {
            grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
            block_dim: (l.block, 1, 1),
            shared_mem_bytes: shared,
        };
        // SAFETY: the argument list matches the kernel's parameter list (kernels/*.cu; the
        // PoCL parity tests run the same lists through OpenCL, which checks their sizes), and
        // every buffer outlives the launch (the backend holds them; the stream is in order).
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| driver_err(&format!("launching {}", l.entry), e))
    }

    fn max_dynamic_shared(&self) -> usize {
        self.max_shared_optin
    }

    fn has_tensor_cores(&self) -> bool {
        self.cc >= (8, 0)
    }
}
