//! Adapter selection, the device, and the command recorder that batches every operation into
//! one submission until the host needs data back.
//!
//! # Ordering without round-trips
//! Operations record their dispatches into one pending command encoder; nothing is submitted
//! until `Recorder::flush` (called by `download`, and by `write` when commands are pending,
//! so that the host write lands after the work recorded before it). A CEM planning step —
//! sample, rollout, update, several iterations — is therefore one submission, and the only
//! host waits are the downloads the caller asks for.
//!
//! Kernel parameters (the `#[repr(C)]` Pod structs) are appended to a host-side staging
//! area, one 256-byte-aligned block per dispatch, and copied into a fixed uniform "arena"
//! buffer right before the submission; each dispatch selects its block by dynamic offset.
//! Blocks are never overwritten while commands that read them are pending.
use crate::Result;
use std::sync::{Arc, Mutex};

/// Bytes of the uniform arena: 16384 blocks of 256 bytes, far more than one planning step
/// (a 30-step horizon with 5 CEM iterations uses a few hundred); a larger batch is split
/// into several submissions.
const ARENA_BYTES: u64 = 4 << 20;

/// One adapter as `mbrl-gpu devices` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    /// Runs compute shaders (every Vulkan, Metal and DX12 adapter does).
    pub compute: bool,
}

impl AdapterSummary {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let compute = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
        AdapterSummary {
            name: info.name,
            backend: info.backend,
            device_type: info.device_type,
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            compute,
        }
    }

    /// A real GPU: discrete, integrated or virtualised hardware, and not one of the software
    /// rasterisers (lavapipe/llvmpipe, SwiftShader, WARP), whatever type they report.
    pub fn is_hardware(&self) -> bool {
        let name = self.name.to_lowercase();
        let software = ["llvmpipe", "lavapipe", "swiftshader", "warp", "software"]
            .iter()
            .any(|s| name.contains(s));
        matches!(
            self.device_type,
            wgpu::DeviceType::DiscreteGpu
                | wgpu::DeviceType::IntegratedGpu
                | wgpu::DeviceType::VirtualGpu
        ) && !software
    }

    /// Preference order: hardware first (discrete, integrated, virtual), then software;
    /// the native APIs before GL.
    fn rank(&self) -> (u8, u8, u8) {
        let kind = match self.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let api = match self.backend {
            wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
            _ => 1,
        };
        (u8::from(!self.is_hardware()), kind, api)
    }

    /// `name [type, API, driver …, hardware|software]`, one adapter for `mbrl-gpu devices`.
    pub fn describe(&self) -> String {
        let driver = if self.driver.is_empty() {
            String::new()
        } else {
            format!(", driver {}", self.driver)
        };
        let kind = if self.is_hardware() {
            "hardware"
        } else {
            "software"
        };
        format!(
            "{} [{:?}, {:?}{driver}, {kind}]",
            self.name, self.device_type, self.backend
        )
    }
}

/// The instance: `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`) is honoured through
/// wgpu's from-env constructor; without it, the primary APIs (Vulkan, Metal, DX12).
fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if wgpu::Backends::from_env().is_none() {
        desc.backends = wgpu::Backends::PRIMARY;
    }
    wgpu::Instance::new(desc)
}

/// Every adapter that can run compute shaders, best first.
fn ranked_adapters(inst: &wgpu::Instance) -> Vec<(wgpu::Adapter, AdapterSummary)> {
    let mut all: Vec<(wgpu::Adapter, AdapterSummary)> =
        pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .map(|a| {
                let s = AdapterSummary::of(&a);
                (a, s)
            })
            .filter(|(_, s)| s.compute)
            .collect();
    all.sort_by_key(|(_, s)| s.rank());
    all
}

/// The adapters of this machine, best first (the one `WgpuBackend::new` would pick leads).
pub fn list_adapters() -> Vec<AdapterSummary> {
    ranked_adapters(&instance())
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

/// Why there is no adapter, in one sentence.
pub fn no_adapter_reason() -> String {
    let backends = std::env::var("WGPU_BACKEND")
        .map(|v| format!("WGPU_BACKEND={v}"))
        .unwrap_or_else(|_| "Vulkan, Metal or DX12".into());
    format!(
        "no GPU adapter with compute shaders found ({backends}); install a Vulkan driver \
         (e.g. mesa-vulkan-drivers, whose lavapipe runs on the CPU) or choose --backend cpu"
    )
}

/// The device, its queue and what every operation shares.
pub(super) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    /// SHADER_F16 is enabled on the device.
    pub shader_f16: bool,
    pub limits: wgpu::Limits,
    /// Uniform blocks of the pending submission (see the module docs).
    pub arena: wgpu::Buffer,
    /// Bytes between uniform blocks (the device's dynamic-offset alignment, at least 256).
    pub block: u64,
    /// Bound where a kernel declares a buffer the current call does not use.
    pub dummy_ro: wgpu::Buffer,
    pub dummy_rw: wgpu::Buffer,
    /// First error the device reported outside an error scope.
    errors: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    /// Open the best adapter that yields a device; if it fails, the next one.
    pub fn new() -> Result<Gpu> {
        let inst = instance();
        let adapters = ranked_adapters(&inst);
        if adapters.is_empty() {
            return Err(crate::Error::Unavailable(format!(
                "wgpu: {}",
                no_adapter_reason()
            )));
        }
        let mut failures = vec![];
        for (adapter, summary) in adapters {
            match Self::open(&adapter, summary) {
                Ok(gpu) => return Ok(gpu),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(crate::Error::Unavailable(failures.join("; ")))
    }

    fn open(adapter: &wgpu::Adapter, summary: AdapterSummary) -> Result<Gpu> {
        let shader_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let required_features = if shader_f16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        let limits = adapter.limits();
        if limits.max_storage_buffers_per_shader_stage < 7 {
            return Err(crate::Error::Unavailable(format!(
                "wgpu: {} allows {} storage buffers per shader stage; the kernels need 7",
                summary.describe(),
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("mbrl-gpu"),
            required_features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            crate::Error::Unavailable(format!(
                "wgpu: could not open a device on {}: {e}",
                summary.describe()
            ))
        })?;
        let errors = Arc::new(Mutex::new(None::<String>));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let block = u64::from(limits.min_uniform_buffer_offset_alignment).max(256);
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform arena"),
            size: ARENA_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dummy = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Ok(Gpu {
            dummy_ro: dummy("unused (read)"),
            dummy_rw: dummy("unused (write)"),
            device,
            queue,
            adapter: summary,
            shader_f16,
            limits,
            arena,
            block,
            errors,
        })
    }

    /// The first uncaptured device error since the last call, as an error value.
    pub fn take_error(&self) -> Result<()> {
        let mut slot = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(msg) => Err(crate::Error::Invalid(format!(
                "wgpu device error on {}: {msg}",
                self.adapter.name
            ))),
            None => Ok(()),
        }
    }

    /// A storage buffer of `len` f32/u32 words (at least one word: bindings cannot be empty).
    pub fn storage(&self, label: &str, words: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (words.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Most workgroups one dispatch dimension may have.
    pub fn max_groups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }

    /// Grid for `n` invocations of a 256-wide 1-D kernel (see `flat_index` in common.wgsl).
    pub fn grid_1d(&self, n: usize) -> Result<[u32; 3]> {
        let groups = n.div_ceil(256);
        let max = self.max_groups() as usize;
        let x = groups.min(max).max(1);
        let y = groups.div_ceil(x).max(1);
        if y > max {
            return Err(crate::invalid!(
                "{n} elements exceed what one dispatch of this adapter can cover"
            ));
        }
        Ok([x as u32, y as u32, 1])
    }
}

/// A dispatch ready to record: kernel, parameter block, storage bind group, grid.
pub(super) struct Dispatch {
    pub kernel: Arc<super::kernels::Kernel>,
    pub offset: u32,
    pub group: wgpu::BindGroup,
    pub grid: [u32; 3],
}

/// The pending encoder and its parameter blocks.
#[derive(Default)]
pub(super) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    staged: Vec<u8>,
    /// Queue submissions so far.
    pub submits: u64,
}

impl Recorder {
    pub fn pending(&self) -> bool {
        self.encoder.is_some()
    }

    /// Make room for `blocks` parameter blocks, submitting what is pending if the arena
    /// would overflow.
    pub fn reserve(&mut self, gpu: &Gpu, blocks: usize) -> Result<()> {
        let need = blocks as u64 * gpu.block;
        if need > ARENA_BYTES {
            return Err(crate::invalid!(
                "one operation needs {blocks} parameter blocks; at most {} fit",
                ARENA_BYTES / gpu.block
            ));
        }
        if self.staged.len() as u64 + need > ARENA_BYTES {
            self.flush(gpu)?;
        }
        Ok(())
    }

    /// Stage one parameter block; returns its dynamic offset. Call [`Recorder::reserve`]
    /// first for all the blocks of an operation.
    pub fn block<T: bytemuck::Pod>(&mut self, gpu: &Gpu, value: &T) -> u32 {
        let offset = self.staged.len();
        self.staged.extend_from_slice(bytemuck::bytes_of(value));
        self.staged.resize(offset + gpu.block as usize, 0);
        offset as u32
    }

    pub fn encoder(&mut self, gpu: &Gpu) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            gpu.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("mbrl-gpu batch"),
                })
        })
    }

    /// Record `dispatches` in order as one compute pass. WebGPU orders dispatches and makes
    /// each one's writes visible to the next, so a chain of kernels needs no host sync.
    pub fn run(&mut self, gpu: &Gpu, label: &str, dispatches: &[Dispatch]) {
        let enc = self.encoder(gpu);
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: None,
        });
        for d in dispatches {
            if d.grid.contains(&0) {
                continue;
            }
            pass.set_pipeline(&d.kernel.pipeline);
            pass.set_bind_group(0, &d.kernel.uniform_group, &[d.offset]);
            pass.set_bind_group(1, &d.group, &[]);
            pass.dispatch_workgroups(d.grid[0], d.grid[1], d.grid[2]);
        }
    }

    /// Submit what is pending (without waiting for it).
    pub fn flush(&mut self, gpu: &Gpu) -> Result<()> {
        if let Some(enc) = self.encoder.take() {
            if !self.staged.is_empty() {
                gpu.queue.write_buffer(&gpu.arena, 0, &self.staged);
            }
            gpu.queue.submit([enc.finish()]);
            self.submits += 1;
        }
        self.staged.clear();
        gpu.take_error()
    }
}
