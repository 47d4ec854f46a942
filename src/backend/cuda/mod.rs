//! The CUDA backend: `kernels/*.cu` compiled at run time by NVRTC and launched through the
//! driver API (cudarc, libraries opened at run time: the build needs no CUDA toolkit).
//!
//! - [`availability`] says in one sentence why CUDA cannot be used here, or which device is
//!   there; [`CudaBackend::new`] never panics (a missing driver, device or NVRTC is an error).
//! - Buffers live on the device ([`DeviceBuf`]); scratch memory (training caches, per-row
//!   returns, elite indices, bf16 weights) is allocated once and grown, never per call. A
//!   planning step uploads one observation and downloads the result. Rollouts group rows by
//!   ensemble member across the population first (`rollout_group`), so each tile of rows
//!   runs on one member's weights; under TS∞ the horizon loop then runs inside one rollout
//!   launch, so a CEM iteration is six launches (sample, group, rollout, particle reduction,
//!   rank, update) on one stream; under TS1 the rows regroup every step, one rollout launch
//!   per step.
//! - The host code is generic over [`KernelHost`]: [`CudaDriver`] on a GPU, and in the parity
//!   tests an OpenCL queue on PoCL, which builds the same kernel text as OpenCL C and runs it
//!   on the CPU. Everything above the launch (checks, scratch layout, launch geometry, launch
//!   order) is therefore exercised in CI even though CI has no GPU.
//! - Optional: weights stored in bf16 with f32 accumulation ([`CudaOptions::bf16_weights`]),
//!   and TF32 tensor-core tile products ([`CudaOptions::tensor_cores`], sm_80+).
mod cem;
mod driver;
mod ensemble;
pub mod host;
mod mppi;
mod optim;
pub mod params;
pub mod ptxas;
mod rollout;
mod sac;
pub mod source;

pub use driver::CudaDriver;
pub use host::{Arg, DeviceBuf, KernelHost, Launch};

use super::{
    AdamParams, Availability, Backend, BranchParams, EliteParams, EnsembleShape, InitParams,
    LossConfig, MppiParams, PathParams, RolloutParams, SacParams, SampleParams, UpdateParams,
};
use crate::{Error, Result};
use std::sync::Mutex;

/// Compile-time variants of the kernels the backend uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Store a bf16 copy of the weights (rounded to nearest even once per model update: the
    /// copy is remade when the parameter buffer's version changes) and read the
    /// MLP weights from it; biases, bounds and all accumulation stay f32. Halves the weight
    /// traffic; tests/cuda_pocl.rs states the resulting tolerance.
    pub bf16_weights: bool,
    /// TF32 `mma.sync` tensor-core tile products in every MLP kernel, training included
    /// (CUDA, compute capability ≥ 8.0). TF32 keeps 10 mantissa bits, so results differ
    /// from the f32 specification at the 1e-4 to 1e-3 level.
    pub tensor_cores: bool,
    /// Keep planning rollouts on f32 CUDA cores. By default (false) they run on TF32 tensor
    /// cores wherever the device has them (sm_80+; [`KernelHost::has_tensor_cores`]), as
    /// PyTorch's `allow_tf32` does for convolutions; training stays f32 unless
    /// `tensor_cores`. The CLI sets this from `MBRL_GPU_FP32_PLANNING=1`.
    pub fp32_planning: bool,
    /// Debug counters in the tile engine (`MBRL_COUNTERS`): weight chunks staged, the rows
    /// they served, multiply-adds issued and useful, read with
    /// [`CudaBackend::kernel_counters`]. Costs a few global atomics per staged chunk.
    pub counters: bool,
}

/// What the tile engine's debug counters saw (a backend built with
/// [`CudaOptions::counters`]): the efficiency issue 9 asks to make visible without a GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Weight chunks (TILE_KC × up to TILE_NT) staged into shared memory.
    pub weight_stages: u64,
    /// Rows the tile products served, summed over the staged chunks.
    pub rows_served: u64,
    /// Multiply-adds issued (32 lanes for every issuing warp instruction).
    pub issued_macs: u64,
    /// Multiply-adds the products needed (rows × K × N).
    pub useful_macs: u64,
}

impl KernelCounters {
    /// Rows served per staged weight chunk (at most TILE_ROWS = 32).
    pub fn rows_per_stage(&self) -> f64 {
        self.rows_served as f64 / self.weight_stages.max(1) as f64
    }
    /// Issued over useful multiply-adds (1 is perfect).
    pub fn issued_per_useful(&self) -> f64 {
        self.issued_macs as f64 / self.useful_macs.max(1) as f64
    }
}

/// Words of the counter buffer: four 64-bit counters (CTR_COUNT in mlp.cuh).
const COUNTER_WORDS: usize = 8;

/// Scratch allocations, grown on demand and kept between calls.
struct Scratch<M> {
    nll: Option<(M, usize)>,
    row_returns: Option<(M, usize)>,
    elite_idx: Option<(M, usize)>,
    mppi_costs: Option<(M, usize)>,
    bf16: Option<(M, usize)>,
    /// The version of the parameters `bf16` was packed from ([`DeviceBuf::version`]).
    bf16_source: Option<u64>,
    /// The rollout's slot tables (rollout_group): rows per slot, member per block.
    slot_rows: Option<(M, usize)>,
    block_member: Option<(M, usize)>,
    /// TS1's per-row states and flags between the per-step launches.
    row_state: Option<(M, usize)>,
    row_flags: Option<(M, usize)>,
    /// The tile engine's counters (always allocated, written only by `counters` programs).
    counters: Option<(M, usize)>,
}

impl<M> Default for Scratch<M> {
    fn default() -> Self {
        Scratch {
            nll: None,
            row_returns: None,
            elite_idx: None,
            mppi_costs: None,
            bf16: None,
            bf16_source: None,
            slot_rows: None,
            block_member: None,
            row_state: None,
            row_flags: None,
            counters: None,
        }
    }
}

/// The CUDA backend, generic over the runtime that executes its kernels (the CUDA driver by
/// default; the parity tests plug in OpenCL).
pub struct CudaBackend<H: KernelHost = CudaDriver> {
    host: H,
    options: CudaOptions,
    scratch: Mutex<Scratch<H::Mem>>,
    /// The device copy of the last terminal value planned with.
    value: Mutex<Option<super::value::DeviceValue<DeviceBuf<H::Mem>>>>,
}

/// One sentence: why CUDA is unavailable here, or which device will be used.
pub fn availability() -> Availability {
    let (available, detail) = match probe() {
        Ok(d) => (true, d),
        Err(why) => (false, why),
    };
    Availability {
        backend: "cuda",
        available,
        detail,
    }
}

/// Oldest compute capability NVRTC 13 compiles for.
const MIN_CC: (i32, i32) = (7, 5);

fn probe() -> std::result::Result<String, String> {
    // SAFETY: only tries to dlopen libcuda by its known names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(
            "no NVIDIA driver library (libcuda.so) could be loaded, so there is no CUDA device"
                .into(),
        );
    }
    let found = std::panic::catch_unwind(|| -> std::result::Result<_, String> {
        use cudarc::driver::result;
        use cudarc::driver::sys::CUdevice_attribute as A;
        result::init().map_err(|e| format!("the CUDA driver failed to initialise ({e:?})"))?;
        let n = result::device::get_count()
            .map_err(|e| format!("the CUDA driver could not count devices ({e:?})"))?;
        if n == 0 {
            return Err("the NVIDIA driver is installed but reports no CUDA device".into());
        }
        let dev = result::device::get(0).map_err(|e| format!("device 0 is unusable ({e:?})"))?;
        let name = result::device::get_name(dev).unwrap_or_else(|_| "CUDA device 0".into());
        // SAFETY: `dev` is a valid device handle from the driver.
        let cc = unsafe {
            (
                result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                    .unwrap_or(0),
                result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                    .unwrap_or(0),
            )
        };
        Ok((n, name, cc))
    })
    .map_err(|_| {
        "the NVIDIA driver library lacks functions this build needs (it is probably older than \
         CUDA 13)"
            .to_string()
    })??;
    let (n, name, cc) = found;
    if cc < MIN_CC {
        return Err(format!(
            "{name} has compute capability {}.{}, older than the {}.{} NVRTC 13 compiles for",
            cc.0, cc.1, MIN_CC.0, MIN_CC.1
        ));
    }
    if !source::nvrtc_present() {
        return Err(format!(
            "{name} is present but NVRTC (libnvrtc.so.13) could not be loaded to compile the \
             kernels: install the nvidia-cuda-nvrtc wheel or a CUDA 13 toolkit and put its lib \
             folder on LD_LIBRARY_PATH"
        ));
    }
    Ok(format!(
        "{name} (compute capability {}.{}{}), kernels compiled by NVRTC on first use",
        cc.0,
        cc.1,
        if n > 1 {
            format!(", device 0 of {n}")
        } else {
            String::new()
        }
    ))
}

impl CudaBackend<CudaDriver> {
    /// The CUDA backend on device 0 with default options (f32 weights, no tensor cores).
    pub fn new() -> Result<Self> {
        Self::with_options(CudaOptions::default())
    }

    /// The CUDA backend on device 0 with the given kernel variants.
    pub fn with_options(options: CudaOptions) -> Result<Self> {
        probe().map_err(Error::Unavailable)?;
        let driver = std::panic::catch_unwind(|| CudaDriver::new(0)).map_err(|_| {
            Error::Unavailable("the CUDA driver panicked while creating a context".into())
        })??;
        if options.tensor_cores && driver.compute_capability() < (8, 0) {
            return Err(Error::Unavailable(format!(
                "tensor-core kernels need compute capability 8.0, {} has {}.{}",
                driver.device_name(),
                driver.compute_capability().0,
                driver.compute_capability().1
            )));
        }
        Ok(Self::with_host(driver, options))
    }
}

impl<H: KernelHost> CudaBackend<H> {
    /// The backend on any [`KernelHost`] (the parity tests pass an OpenCL queue).
    pub fn with_host(host: H, options: CudaOptions) -> Self {
        CudaBackend {
            host,
            options,
            scratch: Mutex::new(Scratch::default()),
            value: Mutex::new(None),
        }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn options(&self) -> CudaOptions {
        self.options
    }

    /// Whether planning rollouts run on TF32 tensor cores: asked for everywhere
    /// (`tensor_cores`), or by default where the device has them (unless `fp32_planning`).
    pub fn planning_tensor_cores(&self) -> bool {
        self.options.tensor_cores || (!self.options.fp32_planning && self.host.has_tensor_cores())
    }

    /// The device, in words.
    pub fn device_name(&self) -> String {
        self.host.device_name()
    }

    /// The tile engine's counters since the last [`Self::reset_kernel_counters`]; `None`
    /// unless the backend was built with [`CudaOptions::counters`]. Waits for the device.
    pub fn kernel_counters(&self) -> Result<Option<KernelCounters>> {
        if !self.options.counters {
            return Ok(None);
        }
        let mut sc = self.scratch();
        self.ensure(&mut sc.counters, COUNTER_WORDS)?;
        let mut w = [0u32; COUNTER_WORDS];
        self.host
            .download(&sc.counters.as_ref().expect("ensured").0, 0, &mut w)?;
        let c = |i: usize| u64::from(w[2 * i]) | (u64::from(w[2 * i + 1]) << 32);
        Ok(Some(KernelCounters {
            weight_stages: c(0),
            rows_served: c(1),
            issued_macs: c(2),
            useful_macs: c(3),
        }))
    }

    /// Zero the tile engine's counters.
    pub fn reset_kernel_counters(&self) -> Result<()> {
        let mut sc = self.scratch();
        self.ensure(&mut sc.counters, COUNTER_WORDS)?;
        self.host.upload(
            &mut sc.counters.as_mut().expect("ensured").0,
            0,
            &[0; COUNTER_WORDS],
        )
    }

    fn scratch(&self) -> std::sync::MutexGuard<'_, Scratch<H::Mem>> {
        self.scratch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `slot` hold at least `words` words (contents are not preserved).
    fn ensure(&self, slot: &mut Option<(H::Mem, usize)>, words: usize) -> Result<()> {
        if slot.as_ref().is_none_or(|(_, cap)| *cap < words) {
            let cap = words.max(1).next_power_of_two();
            *slot = Some((self.host.alloc_zeroed(cap)?, cap));
        }
        Ok(())
    }

    fn check_shared(&self, what: &str, bytes: usize) -> Result<u32> {
        let max = self.host.max_dynamic_shared();
        if bytes > max {
            return Err(Error::Invalid(format!(
                "{what} needs {bytes} bytes of shared memory per block, {} allows {max}: the \
                 network is too wide for the fused kernels",
                self.host.device_name()
            )));
        }
        Ok(bytes as u32)
    }
}

/// The allocation of a scratch slot after [`CudaBackend::ensure`].
fn ensured<M>(slot: &Option<(M, usize)>) -> &M {
    &slot.as_ref().expect("ensured before use").0
}

/// Blocks for a grid-stride loop over `n` elements with 256-thread blocks.
pub(crate) fn stride_blocks(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65_535) as u32
}

impl<H: KernelHost> Backend for CudaBackend<H> {
    type Buf = DeviceBuf<H::Mem>;

    fn name(&self) -> &'static str {
        "cuda"
    }
    fn planning_precision(&self) -> crate::backend::Precision {
        if self.options.bf16_weights {
            crate::backend::Precision::Bf16
        } else {
            crate::backend::Precision::F32
        }
    }

    fn upload(&self, host: &[f32]) -> Result<Self::Buf> {
        let mut mem = self.host.alloc_zeroed(host.len())?;
        self.host.upload(&mut mem, 0, bytemuck::cast_slice(host))?;
        Ok(DeviceBuf::new(mem, host.len()))
    }

    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.download_at(buf, 0, buf.len())
    }

    fn download_at(&self, buf: &Self::Buf, offset: usize, len: usize) -> Result<Vec<f32>> {
        super::check::read_at(buf.len(), offset, len)?;
        let mut out = vec![0u32; len];
        self.host.download(&buf.mem, offset, &mut out)?;
        Ok(out.into_iter().map(f32::from_bits).collect())
    }

    fn zeros(&self, len: usize) -> Result<Self::Buf> {
        Ok(DeviceBuf::new(self.host.alloc_zeroed(len)?, len))
    }

    fn write(&self, buf: &mut Self::Buf, host: &[f32]) -> Result<()> {
        super::check::write(buf.len(), host.len())?;
        self.write_at(buf, 0, host)
    }

    fn write_at(&self, buf: &mut Self::Buf, offset: usize, host: &[f32]) -> Result<()> {
        super::check::write_at(buf.len(), offset, host.len())?;
        buf.touch();
        self.host
            .upload(&mut buf.mem, offset, bytemuck::cast_slice(host))
    }

    fn ensemble_forward(
        &self,
        shape: &EnsembleShape,
        params: &Self::Buf,
        norm: &Self::Buf,
        x: &Self::Buf,
        rows: usize,
        mean: &mut Self::Buf,
        logvar: &mut Self::Buf,
    ) -> Result<()> {
        mean.touch();
        logvar.touch();
        self.forward(shape, params, norm, x, rows, mean, logvar)
    }

    fn ensemble_nll_backward(
        &self,
        shape: &EnsembleShape,
        loss: &LossConfig,
        params: &Self::Buf,
        norm: &Self::Buf,
        x: &Self::Buf,
        target: &Self::Buf,
        rows: usize,
        grad: &mut Self::Buf,
        losses: &mut Self::Buf,
    ) -> Result<()> {
        crate::backend::check::f32_training(loss, "cuda")?;
        grad.touch();
        losses.touch();
        self.nll_backward(shape, loss, params, norm, x, target, rows, grad, losses)
    }

    fn ensemble_vjp(
        &self,
        shape: &EnsembleShape,
        params: &Self::Buf,
        norm: &Self::Buf,
        x: &Self::Buf,
        rows: usize,
        d_mean: &Self::Buf,
        d_logvar: &Self::Buf,
        mut grad: Option<&mut Self::Buf>,
        mut dx: Option<&mut Self::Buf>,
    ) -> Result<()> {
        if let Some(g) = grad.as_deref_mut() {
            g.touch();
        }
        if let Some(d) = dx.as_deref_mut() {
            d.touch();
        }
        self.vjp(shape, params, norm, x, rows, d_mean, d_logvar, grad, dx)
    }

    fn cem_init(
        &self,
        p: &InitParams,
        lower: &Self::Buf,
        upper: &Self::Buf,
        prev: &Self::Buf,
        mean: &mut Self::Buf,
        var: &mut Self::Buf,
    ) -> Result<()> {
        mean.touch();
        var.touch();
        self.init(p, lower, upper, prev, mean, var)
    }

    fn cem_sample(
        &self,
        p: &SampleParams,
        mean: &Self::Buf,
        var: &Self::Buf,
        lower: &Self::Buf,
        upper: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        out.touch();
        self.sample(p, mean, var, lower, upper, out)
    }

    fn cem_update(
        &self,
        p: &UpdateParams,
        population: &Self::Buf,
        returns: &Self::Buf,
        mean: &mut Self::Buf,
        var: &mut Self::Buf,
    ) -> Result<()> {
        mean.touch();
        var.touch();
        self.update(p, population, returns, mean, var)
    }

    fn cem_select(
        &self,
        p: &EliteParams,
        population: &Self::Buf,
        returns: &Self::Buf,
        elites: &mut Self::Buf,
        elite_returns: &mut Self::Buf,
    ) -> Result<()> {
        elites.touch();
        elite_returns.touch();
        self.select(p, population, returns, elites, elite_returns)
    }

    fn cem_keep(
        &self,
        p: &EliteParams,
        elites: &Self::Buf,
        mean: &Self::Buf,
        population: &mut Self::Buf,
    ) -> Result<()> {
        population.touch();
        self.keep(p, elites, mean, population)
    }

    fn mppi_sample(
        &self,
        p: &MppiParams,
        mean: &Self::Buf,
        chol: &Self::Buf,
        lower: &Self::Buf,
        upper: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        out.touch();
        self.mppi_sample_op(p, mean, chol, lower, upper, out)
    }

    fn mppi_update(
        &self,
        p: &MppiParams,
        population: &Self::Buf,
        returns: &Self::Buf,
        precision: &Self::Buf,
        mean: &mut Self::Buf,
    ) -> Result<()> {
        mean.touch();
        self.mppi_update_op(p, population, returns, precision, mean)
    }

    fn rollout(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &Self::Buf,
        norm: &Self::Buf,
        start: &Self::Buf,
        actions: &Self::Buf,
        returns: &mut Self::Buf,
    ) -> Result<()> {
        returns.touch();
        self.model_rollout(p, shape, params, norm, start, actions, None, returns)
    }

    fn rollout_with_value(
        &self,
        p: &RolloutParams,
        shape: &EnsembleShape,
        params: &Self::Buf,
        norm: &Self::Buf,
        start: &Self::Buf,
        actions: &Self::Buf,
        value: &super::TerminalValue,
        returns: &mut Self::Buf,
    ) -> Result<()> {
        super::value::check(value, p.obs_dim)?;
        returns.touch();
        let mut slot = self.value.lock().unwrap_or_else(|e| e.into_inner());
        let dv = super::value::DeviceValue::cached(self, &mut slot, value, p.obs_dim as usize)?;
        let v = Some((dv, value.gamma));
        self.model_rollout(p, shape, params, norm, start, actions, v, returns)
    }

    fn rollout_true(
        &self,
        p: &RolloutParams,
        start: &Self::Buf,
        actions: &Self::Buf,
        returns: &mut Self::Buf,
    ) -> Result<()> {
        returns.touch();
        self.true_rollout(p, start, actions, returns)
    }

    fn sac_squash(
        &self,
        p: &SacParams,
        head: &Self::Buf,
        eps: &Self::Buf,
        obs: &Self::Buf,
        sb: &Self::Buf,
        act_in: &Self::Buf,
        logp: &mut Self::Buf,
        x: &mut Self::Buf,
    ) -> Result<()> {
        if p.given == 0 {
            logp.touch();
        }
        x.touch();
        self.squash(p, head, eps, obs, sb, act_in, logp, x)
    }

    fn sac_critic_grad(
        &self,
        p: &SacParams,
        q_next: &Self::Buf,
        logp_next: &Self::Buf,
        reward: &Self::Buf,
        mask: &Self::Buf,
        log_alpha: &Self::Buf,
        q: &Self::Buf,
        dq: &mut Self::Buf,
        stats: &mut Self::Buf,
    ) -> Result<()> {
        dq.touch();
        stats.touch();
        self.critic_grad(
            p,
            [q_next, logp_next, reward, mask, log_alpha, q, dq, stats],
        )
    }

    fn sac_actor_grad(
        &self,
        p: &SacParams,
        q: &Self::Buf,
        logp: &Self::Buf,
        log_alpha: &Self::Buf,
        dq: &mut Self::Buf,
        alpha_grad: &mut Self::Buf,
        stats: &mut Self::Buf,
    ) -> Result<()> {
        dq.touch();
        alpha_grad.touch();
        stats.touch();
        self.actor_grad(p, [q, logp, log_alpha, dq, alpha_grad, stats])
    }

    fn sac_squash_backward(
        &self,
        p: &SacParams,
        head: &Self::Buf,
        eps: &Self::Buf,
        sb: &Self::Buf,
        dx: &Self::Buf,
        log_alpha: &Self::Buf,
        d_head: &mut Self::Buf,
    ) -> Result<()> {
        d_head.touch();
        self.squash_backward(p, [head, eps, sb, dx, log_alpha, d_head])
    }

    fn sac_noise(
        &self,
        p: &SacParams,
        eps_next: &mut Self::Buf,
        eps_pi: &mut Self::Buf,
    ) -> Result<()> {
        eps_next.touch();
        eps_pi.touch();
        self.noise(p, [eps_next, eps_pi])
    }

    fn branch_route(
        &self,
        p: &BranchParams,
        x: &Self::Buf,
        route: &mut Self::Buf,
        xg: &mut Self::Buf,
    ) -> Result<()> {
        route.touch();
        xg.touch();
        self.route(p, [x, route, xg])
    }

    fn branch_step(
        &self,
        p: &BranchParams,
        route: &Self::Buf,
        mean: &Self::Buf,
        logvar: &Self::Buf,
        x: &Self::Buf,
        obs: &mut Self::Buf,
        stopped: &mut Self::Buf,
        count: &mut Self::Buf,
        ring: &mut Self::Buf,
    ) -> Result<()> {
        for b in [&mut *obs, &mut *stopped, &mut *count, &mut *ring] {
            b.touch();
        }
        self.branch(p, [route, mean, logvar, x, obs, stopped, count, ring])
    }

    fn sac_minibatch(
        &self,
        p: &SacParams,
        ring: &Self::Buf,
        obs: &mut Self::Buf,
        act: &mut Self::Buf,
        reward: &mut Self::Buf,
        next_obs: &mut Self::Buf,
        mask: &mut Self::Buf,
    ) -> Result<()> {
        for b in [
            &mut *obs,
            &mut *act,
            &mut *reward,
            &mut *next_obs,
            &mut *mask,
        ] {
            b.touch();
        }
        self.minibatch(p, [ring, obs, act, reward, next_obs, mask])
    }

    fn path_squash(
        &self,
        p: &PathParams,
        head: &Self::Buf,
        obs: &Self::Buf,
        noise: &Self::Buf,
        tape: &mut Self::Buf,
        x: &mut Self::Buf,
    ) -> Result<()> {
        tape.touch();
        x.touch();
        self.path_squash_on(p, [head, obs, noise, tape, x])
    }

    fn path_step(
        &self,
        p: &PathParams,
        mean: &Self::Buf,
        logvar: &Self::Buf,
        noise: &Self::Buf,
        tape: &mut Self::Buf,
        state: &mut Self::Buf,
    ) -> Result<()> {
        tape.touch();
        state.touch();
        self.path_step_on(p, [mean, logvar, noise, tape, state])
    }

    fn path_terminal(
        &self,
        p: &PathParams,
        q: &Self::Buf,
        log_alpha: &Self::Buf,
        tape: &mut Self::Buf,
        dq: &mut Self::Buf,
        alpha_grad: &mut Self::Buf,
        report: &mut Self::Buf,
        stats: &mut Self::Buf,
    ) -> Result<()> {
        for b in [
            &mut *tape,
            &mut *dq,
            &mut *alpha_grad,
            &mut *report,
            &mut *stats,
        ] {
            b.touch();
        }
        self.path_terminal_on(p, [q, log_alpha, tape, dq, alpha_grad, report, stats])
    }

    fn path_model_back(
        &self,
        p: &PathParams,
        noise: &Self::Buf,
        tape: &Self::Buf,
        back: &mut Self::Buf,
        xg: &mut Self::Buf,
        d_mean: &mut Self::Buf,
        d_logvar: &mut Self::Buf,
    ) -> Result<()> {
        for b in [&mut *back, &mut *xg, &mut *d_mean, &mut *d_logvar] {
            b.touch();
        }
        self.path_model_back_on(p, [noise, tape, back, xg, d_mean, d_logvar])
    }

    fn path_actor_back(
        &self,
        p: &PathParams,
        noise: &Self::Buf,
        tape: &Self::Buf,
        dx: &Self::Buf,
        back: &mut Self::Buf,
        d_head: &mut Self::Buf,
        state: &mut Self::Buf,
    ) -> Result<()> {
        for b in [&mut *back, &mut *d_head, &mut *state] {
            b.touch();
        }
        self.path_actor_back_on(p, [noise, tape, dx, back, d_head, state])
    }

    fn path_accumulate(
        &self,
        p: &PathParams,
        g_step: &Self::Buf,
        ds: &Self::Buf,
        grad: &mut Self::Buf,
        back: &mut Self::Buf,
    ) -> Result<()> {
        grad.touch();
        back.touch();
        self.path_accumulate_on(p, [g_step, ds, grad, back])
    }

    fn polyak(&self, p: &SacParams, target: &mut Self::Buf, online: &Self::Buf) -> Result<()> {
        target.touch();
        self.polyak_avg(p, target, online)
    }

    fn adam_step(
        &self,
        p: &AdamParams,
        params: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()> {
        params.touch();
        m.touch();
        v.touch();
        self.adam(p, params, grad, m, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_should_explain_itself_in_one_sentence_without_panicking() {
        let a = availability();
        assert_eq!(a.backend, "cuda");
        assert!(
            !a.detail.is_empty() && !a.detail.contains('\n'),
            "{}",
            a.detail
        );
        match CudaBackend::new() {
            Ok(b) => assert!(
                a.available,
                "{} works but was reported absent",
                b.device_name()
            ),
            Err(e) => assert!(!a.available || matches!(e, Error::Unavailable(_)), "{e}"),
        }
    }

    /// A host that runs nothing and records which program variant each launch used.
    struct Recorder {
        tensor_cores: bool,
        seen: Mutex<Vec<(&'static str, String)>>,
    }

    impl KernelHost for Recorder {
        type Mem = Vec<u32>;
        fn device_name(&self) -> String {
            "recorder".into()
        }
        fn alloc_zeroed(&self, words: usize) -> Result<Vec<u32>> {
            Ok(vec![0; words.max(1)])
        }
        fn upload(&self, dst: &mut Vec<u32>, offset: usize, src: &[u32]) -> Result<()> {
            dst[offset..offset + src.len()].copy_from_slice(src);
            Ok(())
        }
        fn download(&self, src: &Vec<u32>, offset: usize, dst: &mut [u32]) -> Result<()> {
            dst.copy_from_slice(&src[offset..offset + dst.len()]);
            Ok(())
        }
        fn launch(&self, l: &Launch<'_, Vec<u32>>) -> Result<()> {
            let mut seen = self.seen.lock().unwrap();
            seen.push((l.entry, l.program.label()));
            Ok(())
        }
        fn max_dynamic_shared(&self) -> usize {
            227 * 1024
        }
        fn has_tensor_cores(&self) -> bool {
            self.tensor_cores
        }
    }

    /// A pendulum rollout's parameters and a small ReLU ensemble for the recording host.
    fn recorded_case(
        propagation: crate::backend::Propagation,
        population: u32,
        horizon: u32,
        probabilistic: bool,
    ) -> (RolloutParams, EnsembleShape) {
        let mut elites = [0u32; crate::backend::MAX_ELITES];
        elites[1] = 1;
        let p = RolloutParams {
            seed_lo: 1,
            seed_hi: 2,
            step: 0,
            population,
            particles: 20,
            horizon,
            obs_dim: 3,
            act_dim: 1,
            propagation: propagation as u32,
            env: crate::env::EnvId::Pendulum.code(),
            learn_reward: 0,
            num_elites: 2,
            elites,
        };
        let shape = EnsembleShape {
            ensemble: 2,
            in_dim: 4,
            out_dim: 3,
            hidden: 8,
            num_layers: 1,
            activation: crate::backend::Activation::Relu,
            probabilistic,
        };
        (p, shape)
    }

    fn recorder(tensor_cores: bool, options: CudaOptions) -> CudaBackend<Recorder> {
        CudaBackend::with_host(
            Recorder {
                tensor_cores,
                seen: Mutex::new(vec![]),
            },
            options,
        )
    }

    /// A TS1 rollout whose per-step slot tables would pass the kernels' 32-bit indexing is
    /// refused with a message that says what to shrink, before anything is launched.
    #[test]
    fn oversized_slot_tables_should_be_refused_before_launching() {
        let (population, horizon) = (3_000u32, 40_000u32);
        let (p, shape) =
            recorded_case(crate::backend::Propagation::Ts1, population, horizon, false);
        let b = recorder(false, CudaOptions::default());
        // Zeroed allocations are lazy: the 480 MB of actions cost no memory until touched.
        let actions = b.zeros((population * horizon) as usize).unwrap();
        let params = b.zeros(shape.layout().total).unwrap();
        let norm = b.upload(&[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]).unwrap();
        let start = b.zeros(3).unwrap();
        let mut returns = b.zeros(population as usize).unwrap();
        let e = b
            .rollout(&p, &shape, &params, &norm, &start, &actions, &mut returns)
            .unwrap_err()
            .to_string();
        assert!(e.contains("32-bit indexing") && e.contains("fewer"), "{e}");
        assert!(
            b.host().seen.lock().unwrap().is_empty(),
            "launched before refusing"
        );
    }

    /// Planning takes TF32 tensor cores by default where the device has them, training and
    /// prediction only when asked; `fp32_planning` keeps planning on f32.
    #[test]
    fn planning_should_default_to_tensor_cores_where_the_device_has_them() {
        let (p, shape) = recorded_case(crate::backend::Propagation::TsInf, 3, 2, true);
        let variants = |tensor_cores: bool, options: CudaOptions| {
            let b = recorder(tensor_cores, options);
            let params = b.zeros(shape.layout().total).unwrap();
            let norm = b.upload(&[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]).unwrap();
            let (start, actions) = (b.zeros(3).unwrap(), b.zeros(6).unwrap());
            let mut returns = b.zeros(3).unwrap();
            b.rollout(&p, &shape, &params, &norm, &start, &actions, &mut returns)
                .unwrap();
            let x = b.zeros(2 * 5 * 4).unwrap();
            let (mut mean, mut logvar) = (b.zeros(2 * 5 * 3).unwrap(), b.zeros(2 * 5 * 3).unwrap());
            b.ensemble_forward(&shape, &params, &norm, &x, 5, &mut mean, &mut logvar)
                .unwrap();
            let seen = b.host().seen.lock().unwrap().clone();
            let of = |entry: &str| {
                seen.iter()
                    .find(|(e, _)| *e == entry)
                    .map(|(_, l)| l.clone())
                    .unwrap()
            };
            (
                b.planning_tensor_cores(),
                of("rollout"),
                of("ensemble_forward"),
            )
        };
        assert_eq!(
            variants(true, CudaOptions::default()),
            (true, "rollout+tc+relu".into(), "ensemble+relu".into())
        );
        assert_eq!(
            variants(false, CudaOptions::default()),
            (false, "rollout+relu".into(), "ensemble+relu".into())
        );
        let fp32 = CudaOptions {
            fp32_planning: true,
            ..CudaOptions::default()
        };
        assert_eq!(
            variants(true, fp32),
            (false, "rollout+relu".into(), "ensemble+relu".into())
        );
        let all = CudaOptions {
            tensor_cores: true,
            ..CudaOptions::default()
        };
        assert_eq!(
            variants(false, all),
            (true, "rollout+tc+relu".into(), "ensemble+tc+relu".into())
        );
    }
}
