//! The wgpu backend: the CPU specification's operations as WGSL compute kernels
//! (`shaders/*.wgsl`) on Vulkan, Metal or DX12, with buffers resident on the device.
//!
//! - [`availability`] / [`is_hardware`] / [`list_adapters`] describe the adapters for
//!   `mbrl-gpu devices` and `--backend auto` (which wants a hardware adapter, not lavapipe).
//! - [`WgpuBackend::new`] opens the best adapter (`WGPU_BACKEND` selects the API); no
//!   adapter is an [`Error::Unavailable`](crate::Error::Unavailable), never a panic.
//! - Operations record into one pending submission (see [`device`]); `download` submits
//!   and waits. A planning step is one upload, one submission, one download.
//! - [`WgpuBackend::with_f16_weights`]: forward passes and rollouts read the weights in
//!   half precision (accumulating in f32) on adapters with SHADER_F16.
//!
//! One file per op family, mirroring `backend/cpu/` and `shaders/`.
mod cem;
pub mod device;
mod ensemble;
mod kernels;
mod mppi;
mod optim;
pub mod params;
mod rollout;
mod sac;

use super::{
    AdamParams, Availability, Backend, BranchParams, EliteParams, EnsembleShape, InitParams,
    LossConfig, MppiParams, PathParams, RolloutParams, SacParams, SampleParams, UpdateParams,
};
use crate::Result;
pub use device::{list_adapters, AdapterSummary};
use device::{Dispatch, Gpu, Recorder};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Whether a wgpu adapter exists here; `detail` lists every adapter with its type and
/// whether it is hardware.
pub fn availability() -> Availability {
    let adapters = list_adapters();
    if adapters.is_empty() {
        return Availability {
            backend: "wgpu",
            available: false,
            detail: device::no_adapter_reason(),
        };
    }
    let best = &adapters[0];
    let mut detail = format!(
        "{} adapter(s); would use {}",
        adapters.len(),
        best.describe()
    );
    if !best.is_hardware() {
        detail.push_str(" — a software adapter, so `--backend auto` passes it over");
    }
    for other in &adapters[1..] {
        detail.push_str(&format!("; also {}", other.describe()));
    }
    Availability {
        backend: "wgpu",
        available: true,
        detail,
    }
}

/// The adapter [`WgpuBackend::new`] would pick is a hardware GPU (not lavapipe/llvmpipe or
/// another software rasteriser).
pub fn is_hardware() -> bool {
    list_adapters().first().is_some_and(|a| a.is_hardware())
}

/// A device buffer of `len` f32 values.
pub struct WgpuBuf {
    buf: wgpu::Buffer,
    len: usize,
}

impl WgpuBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The underlying wgpu buffer (at least 4 bytes even when empty).
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buf
    }
}

/// Scratch buffers kept between calls, by (name, index), grown on demand.
#[derive(Default)]
struct Workspace {
    bufs: HashMap<(&'static str, usize), (wgpu::Buffer, usize)>,
}

impl Workspace {
    /// A buffer of at least `words` 32-bit words. A grown buffer replaces the old one; any
    /// pending command still holding the old one keeps it alive until it has run.
    fn get(&mut self, gpu: &Gpu, name: &'static str, index: usize, words: usize) -> wgpu::Buffer {
        match self.bufs.get(&(name, index)) {
            Some((b, n)) if *n >= words => b.clone(),
            _ => {
                let b = gpu.storage(name, words);
                self.bufs.insert((name, index), (b.clone(), words));
                b
            }
        }
    }
}

struct State {
    rec: Recorder,
    cache: kernels::Cache,
    ws: Workspace,
}

/// The wgpu backend. Shareable across threads; operations serialise on an internal lock.
pub struct WgpuBackend {
    gpu: Gpu,
    state: Mutex<State>,
    f16_weights: bool,
    /// The device copy of the last terminal value planned with.
    value: Mutex<Option<super::value::DeviceValue<WgpuBuf>>>,
}

/// Samples of rng.wgsl for one (seed, stream, step), element i at index i.
#[derive(Clone, Debug, Default)]
pub struct RngSamples {
    pub uniform: Vec<f32>,
    pub normal: Vec<f32>,
    pub truncated_normal: Vec<f32>,
    pub below: Vec<u32>,
}

impl WgpuBackend {
    /// Record one dispatch of `spec` with the parameter block `p` over `bufs` (in the
    /// spec's binding order) on `grid`.
    fn dispatch_one<P: bytemuck::Pod>(
        &self,
        spec: &kernels::Spec,
        p: &P,
        bufs: &[&wgpu::Buffer],
        grid: [u32; 3],
    ) -> Result<()> {
        let gpu = &self.gpu;
        let mut st = self.lock();
        let st = &mut *st;
        let k = st.cache.get(gpu, spec)?;
        st.rec.reserve(gpu, 1)?;
        let offset = st.rec.block(gpu, p);
        let d = device::Dispatch {
            group: k.bind(gpu, bufs),
            kernel: k,
            offset,
            grid,
        };
        st.rec.run(gpu, spec.entry, &[d]);
        Ok(())
    }

    /// Open the best adapter (see [`list_adapters`]).
    pub fn new() -> Result<WgpuBackend> {
        Ok(WgpuBackend {
            gpu: Gpu::new()?,
            state: Mutex::new(State {
                rec: Recorder::default(),
                cache: kernels::Cache::default(),
                ws: Workspace::default(),
            }),
            f16_weights: false,
            value: Mutex::new(None),
        })
    }

    /// Store the ensemble's weights in f16 for forward passes and rollouts (the GEMMs still
    /// accumulate in f32; training always uses the f32 weights). Errors if the adapter lacks
    /// SHADER_F16.
    pub fn with_f16_weights(mut self, on: bool) -> Result<WgpuBackend> {
        if on && !self.gpu.shader_f16 {
            return Err(crate::Error::Unavailable(format!(
                "wgpu: {} does not offer SHADER_F16, so weights cannot be stored in f16",
                self.gpu.adapter.describe()
            )));
        }
        self.f16_weights = on;
        Ok(self)
    }

    /// Whether forward passes and rollouts read f16 weights.
    pub fn f16_weights(&self) -> bool {
        self.f16_weights
    }

    /// Whether the device has SHADER_F16 (so [`WgpuBackend::with_f16_weights`] can succeed).
    pub fn supports_f16(&self) -> bool {
        self.gpu.shader_f16
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.gpu.adapter
    }

    /// Submit pending work without waiting (downloads do this themselves).
    pub fn flush(&self) -> Result<()> {
        self.lock().rec.flush(&self.gpu)
    }

    /// Command submissions so far: work is batched until the host needs data (`download`)
    /// or overwrites a buffer pending work may read (`write`), so a CEM planning step —
    /// every iteration's sample, rollout and update — is one submission.
    pub fn submissions(&self) -> u64 {
        self.lock().rec.submits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copy `words` words of `buf` to the host, submitting everything pending first.
    fn read_back(
        &self,
        st: &mut State,
        buf: &wgpu::Buffer,
        offset: usize,
        words: usize,
    ) -> Result<Vec<u32>> {
        if words == 0 {
            st.rec.flush(&self.gpu)?;
            return Ok(vec![]);
        }
        let bytes = (words * 4) as u64;
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        st.rec.encoder(&self.gpu).copy_buffer_to_buffer(
            buf,
            (offset * 4) as u64,
            &staging,
            0,
            bytes,
        );
        st.rec.flush(&self.gpu)?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| crate::Error::Unavailable(format!("wgpu: waiting for the device: {e}")))?;
        self.gpu.take_error()?;
        rx.recv()
            .map_err(|_| crate::Error::Unavailable("wgpu: the download was dropped".into()))?
            .map_err(|e| crate::Error::Unavailable(format!("wgpu: mapping a download: {e}")))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| crate::Error::Unavailable(format!("wgpu: reading a download: {e}")))?;
        let out: Vec<u32> = bytemuck::pod_collect_to_vec(&view);
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Philox blocks at counters (i, step, stream, word3), i < count, computed by rng.wgsl.
    pub fn philox_blocks(
        &self,
        seed: u64,
        stream: u32,
        step: u32,
        word3: u32,
        count: u32,
    ) -> Result<Vec<[u32; 4]>> {
        let p = params::RngParams {
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            stream,
            step,
            count,
            below_n: 1,
            word3,
            _pad: 0,
        };
        let n = count as usize;
        let mut st = self.lock();
        let st = &mut *st;
        let k = st.cache.get(&self.gpu, &kernels::RNG_PHILOX)?;
        let bits = self.gpu.storage("philox blocks", 4 * n);
        st.rec.reserve(&self.gpu, 1)?;
        let offset = st.rec.block(&self.gpu, &p);
        let d = Dispatch {
            group: k.bind(&self.gpu, &[&bits]),
            kernel: k,
            offset,
            grid: self.gpu.grid_1d(n)?,
        };
        st.rec.run(&self.gpu, "rng_philox", &[d]);
        let w = self.read_back(st, &bits, 0, 4 * n)?;
        Ok(w.chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect())
    }

    /// Uniform, normal, truncated-normal and below(`below_n`) samples of elements
    /// 0..count at (seed, stream, step), computed by rng.wgsl.
    pub fn rng_samples(
        &self,
        seed: u64,
        stream: u32,
        step: u32,
        count: u32,
        below_n: u32,
    ) -> Result<RngSamples> {
        let p = params::RngParams {
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            stream,
            step,
            count,
            below_n,
            word3: 0,
            _pad: 0,
        };
        let n = count as usize;
        let mut st = self.lock();
        let st = &mut *st;
        let k = st.cache.get(&self.gpu, &kernels::RNG_SAMPLE)?;
        let bits = self.gpu.storage("below samples", n);
        let vals = self.gpu.storage("float samples", 3 * n);
        st.rec.reserve(&self.gpu, 1)?;
        let offset = st.rec.block(&self.gpu, &p);
        let d = Dispatch {
            group: k.bind(&self.gpu, &[&bits, &vals]),
            kernel: k,
            offset,
            grid: self.gpu.grid_1d(n)?,
        };
        st.rec.run(&self.gpu, "rng_sample", &[d]);
        let below = self.read_back(st, &bits, 0, n)?;
        let v = self.read_back(st, &vals, 0, 3 * n)?;
        let f = |k: usize| {
            v.iter()
                .skip(k)
                .step_by(3)
                .map(|b| f32::from_bits(*b))
                .collect()
        };
        Ok(RngSamples {
            uniform: f(0),
            normal: f(1),
            truncated_normal: f(2),
            below,
        })
    }
}

/// A size as the u32 the kernels index with.
fn word(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| crate::invalid!("{what} ({n}) exceeds what a kernel can index"))
}

impl Backend for WgpuBackend {
    type Buf = WgpuBuf;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn upload(&self, host: &[f32]) -> Result<WgpuBuf> {
        let buf = self.gpu.storage("buffer", host.len());
        if !host.is_empty() {
            self.gpu
                .queue
                .write_buffer(&buf, 0, bytemuck::cast_slice(host));
        }
        Ok(WgpuBuf {
            buf,
            len: host.len(),
        })
    }

    fn download(&self, buf: &WgpuBuf) -> Result<Vec<f32>> {
        self.download_at(buf, 0, buf.len)
    }

    fn download_at(&self, buf: &WgpuBuf, offset: usize, len: usize) -> Result<Vec<f32>> {
        super::check::read_at(buf.len, offset, len)?;
        let mut st = self.lock();
        let words = self.read_back(&mut st, &buf.buf, offset, len)?;
        Ok(words.into_iter().map(f32::from_bits).collect())
    }

    fn zeros(&self, len: usize) -> Result<WgpuBuf> {
        // wgpu zero-initialises new buffers.
        Ok(WgpuBuf {
            buf: self.gpu.storage("buffer", len),
            len,
        })
    }

    fn write(&self, buf: &mut WgpuBuf, host: &[f32]) -> Result<()> {
        super::check::write(buf.len, host.len())?;
        self.write_at(buf, 0, host)
    }

    fn write_at(&self, buf: &mut WgpuBuf, offset: usize, host: &[f32]) -> Result<()> {
        super::check::write_at(buf.len, offset, host.len())?;
        let mut st = self.lock();
        // Commands recorded before this write must see the old contents: submit them first
        // (the queue orders the write after them).
        if st.rec.pending() {
            st.rec.flush(&self.gpu)?;
        }
        if !host.is_empty() {
            self.gpu
                .queue
                .write_buffer(&buf.buf, 4 * offset as u64, bytemuck::cast_slice(host));
        }
        Ok(())
    }

    fn ensemble_forward(
        &self,
        shape: &EnsembleShape,
        params: &WgpuBuf,
        norm: &WgpuBuf,
        x: &WgpuBuf,
        rows: usize,
        mean: &mut WgpuBuf,
        logvar: &mut WgpuBuf,
    ) -> Result<()> {
        ensemble::forward(self, shape, params, norm, x, rows, mean, logvar)
    }

    fn ensemble_nll_backward(
        &self,
        shape: &EnsembleShape,
        loss: &LossConfig,
        params: &WgpuBuf,
        norm: &WgpuBuf,
        x: &WgpuBuf,
        target: &WgpuBuf,
        rows: usize,
        grad: &mut WgpuBuf,
        losses: &mut WgpuBuf,
    ) -> Result<()> {
        crate::backend::check::f32_training(loss, "wgpu")?;
        ensemble::nll_backward(
            self, shape, loss, params, norm, x, target, rows, grad, losses,
        )
    }

    fn ensemble_vjp(
        &self,
        shape: &EnsembleShape,
        params: &WgpuBuf,
        norm: &WgpuBuf,
        x: &WgpuBuf,
        rows: usize,
        d_mean: &WgpuBuf,
        d_logvar: &WgpuBuf,
        grad: Option<&mut WgpuBuf>,
        dx: Option<&mut WgpuBuf>,
    ) -> Result<()> {
        ensemble::vjp(
            self, shape, params, norm, x, rows, d_mean, d_logvar, grad, dx,
        )
    }

    fn cem_init(
        &self,
        p: &InitParams,
        lower: &WgpuBuf,
        upper: &WgpuBuf,
        prev: &WgpuBuf,
        mean: &mut WgpuBuf,
        var: &mut WgpuBuf,
    ) -> Result<()> {
        cem::init(self, p, lower, upper, prev, mean, var)
    }

    fn cem_sample(
        &self,
        p: &SampleParams,
        mean: &WgpuBuf,
        var: &WgpuBuf,
        lower: &WgpuBuf,
        upper: &WgpuBuf,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        cem::sample(self, p, mean, var, lower, upper, out)
    }

    fn cem_update(
        &self,
        p: &UpdateParams,
        population: &WgpuBuf,
        returns: &WgpuBuf,
        mean: &mut WgpuBuf,
        var: &mut WgpuBuf,
    ) -> Result<()> {
        cem::update(self, p, population, returns, mean, var)
    }

    fn cem_select(
        &self,
        p: &EliteParams,
        population: &WgpuBuf,
        returns: &WgpuBuf,
        elites: &mut WgpuBuf,
        elite_returns: &mut WgpuBuf,
    ) -> Result<()> {
        cem::select(self, p, population, returns, elites, elite_returns)
    }

    fn cem_keep(
        &self,
        p: &EliteParams,
        elites: &WgpuBuf,
        mean: &WgpuBuf,
        population: &mut WgpuBuf,
    ) -> Result<()> {
        cem::keep(self, p, elites, mean, population)
    }

    fn mppi_sample(
        &self,
        p: &MppiParams,
        mean: &WgpuBuf,
        chol: &WgpuBuf,
        lower: &WgpuBuf,
        upper: &WgpuBuf,
        out: &mut WgpuBuf,
    ) -> Result<()> {
        mppi::sample(self, p, mean, chol, lower, upper, out)
    }

    fn mppi_update(
        &self,
        p: &MppiParams,
        population: &WgpuBuf,
        returns: &WgpuBuf,
        precision: &WgpuBuf,
        mean: &mut WgpuBuf,
    ) -> Result<()> {
        mppi::update(self, p, population, returns, precision, mean)
    }

    fn rollout(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &WgpuBuf,
        norm: &WgpuBuf,
        start: &WgpuBuf,
        actions: &WgpuBuf,
        returns: &mut WgpuBuf,
    ) -> Result<()> {
        rollout::rollout(self, p, shape, params, norm, start, actions, None, returns)
    }

    fn rollout_with_value(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &WgpuBuf,
        norm: &WgpuBuf,
        start: &WgpuBuf,
        actions: &WgpuBuf,
        value: &super::TerminalValue,
        returns: &mut WgpuBuf,
    ) -> Result<()> {
        super::value::check(value, p.obs_dim)?;
        let mut slot = self.value.lock().unwrap_or_else(|e| e.into_inner());
        let dv = super::value::DeviceValue::cached(self, &mut slot, value, p.obs_dim as usize)?;
        let v = Some((dv, value.gamma));
        rollout::rollout(self, p, shape, params, norm, start, actions, v, returns)
    }

    fn rollout_true(
        &self,
        p: &RolloutParams,
        start: &WgpuBuf,
        actions: &WgpuBuf,
        returns: &mut WgpuBuf,
    ) -> Result<()> {
        rollout::rollout_true(self, p, start, actions, returns)
    }

    fn sac_squash(
        &self,
        p: &SacParams,
        head: &WgpuBuf,
        eps: &WgpuBuf,
        obs: &WgpuBuf,
        sb: &WgpuBuf,
        act_in: &WgpuBuf,
        logp: &mut WgpuBuf,
        x: &mut WgpuBuf,
    ) -> Result<()> {
        sac::squash(self, p, head, eps, obs, sb, act_in, logp, x)
    }

    fn sac_critic_grad(
        &self,
        p: &SacParams,
        q_next: &WgpuBuf,
        logp_next: &WgpuBuf,
        reward: &WgpuBuf,
        mask: &WgpuBuf,
        log_alpha: &WgpuBuf,
        q: &WgpuBuf,
        dq: &mut WgpuBuf,
        stats: &mut WgpuBuf,
    ) -> Result<()> {
        sac::critic_grad(
            self, p, q_next, logp_next, reward, mask, log_alpha, q, dq, stats,
        )
    }

    fn sac_actor_grad(
        &self,
        p: &SacParams,
        q: &WgpuBuf,
        logp: &WgpuBuf,
        log_alpha: &WgpuBuf,
        dq: &mut WgpuBuf,
        alpha_grad: &mut WgpuBuf,
        stats: &mut WgpuBuf,
    ) -> Result<()> {
        sac::actor_grad(self, p, q, logp, log_alpha, dq, alpha_grad, stats)
    }

    fn sac_squash_backward(
        &self,
        p: &SacParams,
        head: &WgpuBuf,
        eps: &WgpuBuf,
        sb: &WgpuBuf,
        dx: &WgpuBuf,
        log_alpha: &WgpuBuf,
        d_head: &mut WgpuBuf,
    ) -> Result<()> {
        sac::squash_backward(self, p, head, eps, sb, dx, log_alpha, d_head)
    }

    fn sac_noise(&self, p: &SacParams, eps_next: &mut WgpuBuf, eps_pi: &mut WgpuBuf) -> Result<()> {
        sac::noise(self, p, eps_next, eps_pi)
    }

    fn branch_route(
        &self,
        p: &BranchParams,
        x: &WgpuBuf,
        route: &mut WgpuBuf,
        xg: &mut WgpuBuf,
    ) -> Result<()> {
        rollout::branch_route(self, p, x, route, xg)
    }

    fn branch_step(
        &self,
        p: &BranchParams,
        route: &WgpuBuf,
        mean: &WgpuBuf,
        logvar: &WgpuBuf,
        x: &WgpuBuf,
        obs: &mut WgpuBuf,
        stopped: &mut WgpuBuf,
        count: &mut WgpuBuf,
        ring: &mut WgpuBuf,
    ) -> Result<()> {
        rollout::branch_step(
            self,
            p,
            [route, mean, logvar, x, &*obs, &*stopped, &*count, &*ring],
        )
    }

    fn sac_minibatch(
        &self,
        p: &SacParams,
        ring: &WgpuBuf,
        obs: &mut WgpuBuf,
        act: &mut WgpuBuf,
        reward: &mut WgpuBuf,
        next_obs: &mut WgpuBuf,
        mask: &mut WgpuBuf,
    ) -> Result<()> {
        sac::minibatch(self, p, ring, obs, act, reward, next_obs, mask)
    }

    fn path_squash(
        &self,
        p: &PathParams,
        head: &WgpuBuf,
        obs: &WgpuBuf,
        noise: &WgpuBuf,
        tape: &mut WgpuBuf,
        x: &mut WgpuBuf,
    ) -> Result<()> {
        sac::path_squash(self, p, [head, obs, noise, &*tape, &*x])
    }

    fn path_step(
        &self,
        p: &PathParams,
        mean: &WgpuBuf,
        logvar: &WgpuBuf,
        noise: &WgpuBuf,
        tape: &mut WgpuBuf,
        state: &mut WgpuBuf,
    ) -> Result<()> {
        rollout::path_step(self, p, [mean, logvar, noise, &*tape, &*state])
    }

    fn path_terminal(
        &self,
        p: &PathParams,
        q: &WgpuBuf,
        log_alpha: &WgpuBuf,
        tape: &mut WgpuBuf,
        dq: &mut WgpuBuf,
        alpha_grad: &mut WgpuBuf,
        report: &mut WgpuBuf,
        stats: &mut WgpuBuf,
    ) -> Result<()> {
        sac::path_terminal(
            self,
            p,
            [q, log_alpha, &*tape, &*dq, &*alpha_grad, &*report, &*stats],
        )
    }

    fn path_model_back(
        &self,
        p: &PathParams,
        noise: &WgpuBuf,
        tape: &WgpuBuf,
        back: &mut WgpuBuf,
        xg: &mut WgpuBuf,
        d_mean: &mut WgpuBuf,
        d_logvar: &mut WgpuBuf,
    ) -> Result<()> {
        rollout::path_model_back(self, p, [noise, tape, &*back, &*xg, &*d_mean, &*d_logvar])
    }

    fn path_actor_back(
        &self,
        p: &PathParams,
        noise: &WgpuBuf,
        tape: &WgpuBuf,
        dx: &WgpuBuf,
        back: &mut WgpuBuf,
        d_head: &mut WgpuBuf,
        state: &mut WgpuBuf,
    ) -> Result<()> {
        sac::path_actor_back(self, p, [noise, tape, dx, &*back, &*d_head, &*state])
    }

    fn path_accumulate(
        &self,
        p: &PathParams,
        g_step: &WgpuBuf,
        ds: &WgpuBuf,
        grad: &mut WgpuBuf,
        back: &mut WgpuBuf,
    ) -> Result<()> {
        sac::path_accumulate(self, p, [g_step, ds, &*grad, &*back])
    }

    fn polyak(&self, p: &SacParams, target: &mut WgpuBuf, online: &WgpuBuf) -> Result<()> {
        sac::polyak(self, p, target, online)
    }

    fn adam_step(
        &self,
        p: &AdamParams,
        params: &mut WgpuBuf,
        grad: &WgpuBuf,
        m: &mut WgpuBuf,
        v: &mut WgpuBuf,
    ) -> Result<()> {
        optim::adam(self, p, params, grad, m, v)
    }
}
