//! The CUDA kernels *executed* in CI, without a GPU: `kernels/*.cu` are built as OpenCL C and
//! run by PoCL (a real OpenCL implementation on the CPU, with true work-group barriers),
//! driven by the very host code of the CUDA backend (`CudaBackend<H>` is generic over the
//! runtime; here the runtime is an OpenCL queue). Every op is compared with the CPU
//! specification on awkward sizes (E = 3, 37 rows, hidden 13 and 200, population 37,
//! horizon 7, 3 particles: no multiple of any tile), with the device's outputs poisoned first
//! (a NaN with a payload no arithmetic produces) and the CPU reference's pre-filled with a
//! different, finite sentinel, so that an element neither side writes cannot compare equal;
//! each tolerance is stated with the reason for it. Philox bits, uniforms and integers agree
//! exactly; Adam and the CEM update are bit-identical by construction.
//!
//! Where a GPU is present (`libcuda` loads and a device exists), the same checks also run on
//! `CudaBackend` itself; without one that test says it skipped (no GPU is not a CI failure).
//!
//! Without libOpenCL or a PoCL platform the PoCL tests say they skipped and why, except under
//! `CI=true`, where that is a failure (`scripts/test.sh` installs pocl-opencl-icd).
use mbrl_gpu::backend::cpu::CpuBackend;
use mbrl_gpu::backend::cuda::source::{self, KernelFile, Program};
use mbrl_gpu::backend::cuda::{Arg, CudaBackend, CudaOptions, KernelHost, Launch};
use mbrl_gpu::backend::{
    Activation, AdamParams, Backend, EnsembleShape, InitParams, LossConfig, Propagation,
    RolloutParams, SampleParams, UpdateParams, MAX_ELITES,
};
use mbrl_gpu::env::EnvId;
use mbrl_gpu::rng::Philox;
use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::device::{Device, CL_DEVICE_TYPE_ALL};
use opencl3::kernel::Kernel;
use opencl3::memory::{Buffer, ClMem, CL_MEM_READ_WRITE};
use opencl3::types::{cl_mem, CL_BLOCKING};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

mod common;
use common::{poisoned, rollout_on, POISON, REF_FILL};

// ---------------------------------------------------------------------------------------
// The OpenCL runtime as a KernelHost
// ---------------------------------------------------------------------------------------

/// OpenCL C build options: 1.2 (what the kernels are written against) and IEEE division and
/// square root (OpenCL otherwise allows 2.5 ulp), as CUDA's defaults give.
const CL_OPTIONS: &str = "-cl-std=CL1.2 -cl-fp32-correctly-rounded-divide-sqrt";

struct Ocl {
    context: Context,
    queue: CommandQueue,
    device: Device,
    name: String,
    local_mem: usize,
    programs: Mutex<HashMap<String, Arc<opencl3::program::Program>>>,
    kernels: Mutex<HashMap<(String, &'static str), Kernel>>,
}

/// A shared handle, so that every test reuses the programs PoCL has already compiled.
#[derive(Clone)]
struct PoclHost(Arc<Ocl>);

struct ClBuf(Buffer<u32>);

impl Ocl {
    fn open() -> Result<Ocl, String> {
        if !opencl3::platform::get_platforms().is_ok_and(|p| !p.is_empty()) {
            return Err(
                "no OpenCL platform: libOpenCL.so.1 is missing or no ICD (PoCL) is \
                        installed (apt-get install pocl-opencl-icd)"
                    .into(),
            );
        }
        let platforms = opencl3::platform::get_platforms().map_err(|e| format!("{e}"))?;
        let mut found = None;
        for p in &platforms {
            let pname = p.name().unwrap_or_default();
            if pname.to_lowercase().contains("portable") || pname.to_lowercase().contains("pocl") {
                if let Ok(ids) = p.get_devices(CL_DEVICE_TYPE_ALL) {
                    if let Some(id) = ids.first() {
                        found = Some(Device::new(*id));
                    }
                }
            }
        }
        let device = found.ok_or("OpenCL is installed but there is no PoCL platform")?;
        let context = Context::from_device(&device).map_err(|e| format!("context: {e}"))?;
        #[allow(deprecated)]
        let queue = CommandQueue::create_default(&context, 0).map_err(|e| format!("queue: {e}"))?;
        let name = format!(
            "{} on PoCL ({})",
            device.name().unwrap_or_default(),
            device.version().unwrap_or_default()
        );
        let local_mem = device.local_mem_size().unwrap_or(32 * 1024) as usize;
        Ok(Ocl {
            context,
            queue,
            device,
            name,
            local_mem,
            programs: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
        })
    }

    /// Build (once) a program from its full source text.
    fn program(&self, key: &str, src: &str) -> Arc<opencl3::program::Program> {
        let mut progs = self.programs.lock().unwrap();
        if let Some(p) = progs.get(key) {
            return p.clone();
        }
        let mut p = opencl3::program::Program::create_from_source(&self.context, src)
            .expect("create program");
        if let Err(e) = p.build(&[self.device.id()], CL_OPTIONS) {
            let log = p.get_build_log(self.device.id()).unwrap_or_default();
            panic!("OpenCL C build of {key} failed ({e}):\n{log}");
        }
        let p = Arc::new(p);
        progs.insert(key.to_string(), p.clone());
        p
    }
}

/// PoCL, or None after printing why it is skipped (a failure under CI=true).
fn pocl() -> Option<PoclHost> {
    static OCL: OnceLock<Result<Arc<Ocl>, String>> = OnceLock::new();
    let r = OCL.get_or_init(|| {
        std::panic::catch_unwind(Ocl::open)
            .unwrap_or_else(|_| Err("the OpenCL loader panicked".into()))
            .map(Arc::new)
    });
    match r {
        Ok(o) => Some(PoclHost(o.clone())),
        Err(why) => {
            skip(why);
            None
        }
    }
}

fn skip(why: &str) {
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("CI=true but {why}");
    }
    eprintln!("skipped: {why}");
}

impl KernelHost for PoclHost {
    type Mem = ClBuf;

    fn device_name(&self) -> String {
        self.0.name.clone()
    }

    fn alloc_zeroed(&self, words: usize) -> mbrl_gpu::Result<ClBuf> {
        let n = words.max(1);
        // SAFETY: no host pointer; the buffer is filled below before any use.
        let mut b = unsafe {
            Buffer::<u32>::create(&self.0.context, CL_MEM_READ_WRITE, n, std::ptr::null_mut())
        }
        .map_err(|e| mbrl_gpu::Error::Unavailable(format!("clCreateBuffer: {e}")))?;
        let zeros = vec![0u32; n];
        // SAFETY: blocking write of n words into an n-word buffer.
        unsafe {
            self.0
                .queue
                .enqueue_write_buffer(&mut b, CL_BLOCKING, 0, &zeros, &[])
        }
        .map_err(|e| mbrl_gpu::Error::Unavailable(format!("write: {e}")))?;
        Ok(ClBuf(b))
    }

    fn upload(&self, dst: &mut ClBuf, offset: usize, src: &[u32]) -> mbrl_gpu::Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: blocking write within the buffer (the backend checks lengths).
        unsafe {
            self.0
                .queue
                .enqueue_write_buffer(&mut dst.0, CL_BLOCKING, 4 * offset, src, &[])
        }
        .map(|_| ())
        .map_err(|e| mbrl_gpu::Error::Unavailable(format!("write: {e}")))
    }

    fn download(&self, src: &ClBuf, offset: usize, dst: &mut [u32]) -> mbrl_gpu::Result<()> {
        if !dst.is_empty() {
            // SAFETY: blocking read within the buffer (the backend checks the range); the
            // queue is in order.
            unsafe {
                self.0
                    .queue
                    .enqueue_read_buffer(&src.0, CL_BLOCKING, 4 * offset, dst, &[])
            }
            .map_err(|e| mbrl_gpu::Error::Unavailable(format!("read: {e}")))?;
        }
        self.0
            .queue
            .finish()
            .map_err(|e| mbrl_gpu::Error::Unavailable(format!("finish: {e}")))
    }

    fn launch(&self, l: &Launch<'_, ClBuf>) -> mbrl_gpu::Result<()> {
        let key = l.program.label();
        let prog = self.0.program(&key, &source::source(&l.program));
        let mut kernels = self.0.kernels.lock().unwrap();
        let k = kernels
            .entry((key, l.entry))
            .or_insert_with(|| Kernel::create(&prog, l.entry).expect("kernel"));
        let mut i = 0u32;
        // SAFETY: argument sizes follow the kernel's parameter list; OpenCL checks each size
        // against the compiled signature and reports a mismatch as an error.
        unsafe {
            for a in l.args {
                let r = match a {
                    Arg::Mem(m) => {
                        let h: cl_mem = m.0.get();
                        k.set_arg(i, &h)
                    }
                    Arg::U32(v) => k.set_arg(i, v),
                    Arg::F32(v) => k.set_arg(i, v),
                    Arg::Pod(bytes) => opencl3::kernel::set_kernel_arg(
                        k.get(),
                        i,
                        bytes.len(),
                        bytes.as_ptr() as *const std::ffi::c_void,
                    )
                    .map_err(opencl3::error_codes::ClError),
                };
                r.unwrap_or_else(|e| panic!("{}: argument {i}: {e}", l.entry));
                i += 1;
            }
            if let Some(bytes) = l.dynamic_shared {
                k.set_arg_local_buffer(i, bytes as usize)
                    .unwrap_or_else(|e| panic!("{}: local memory argument: {e}", l.entry));
            }
            let global = [
                l.grid[0] as usize * l.block as usize,
                l.grid[1] as usize,
                l.grid[2] as usize,
            ];
            let local = [l.block as usize, 1, 1];
            self.0
                .queue
                .enqueue_nd_range_kernel(
                    k.get(),
                    3,
                    std::ptr::null(),
                    global.as_ptr(),
                    local.as_ptr(),
                    &[],
                )
                .map_err(|e| mbrl_gpu::Error::Invalid(format!("{}: enqueue: {e}", l.entry)))?;
        }
        Ok(())
    }

    fn max_dynamic_shared(&self) -> usize {
        self.0.local_mem
    }
}

fn pocl_backend(options: CudaOptions) -> Option<CudaBackend<PoclHost>> {
    pocl().map(|h| CudaBackend::with_host(h, options))
}

// ---------------------------------------------------------------------------------------
// Comparison helpers
// ---------------------------------------------------------------------------------------

/// A CPU reference output, pre-filled with [`REF_FILL`].
fn unwritten(n: usize) -> Vec<f32> {
    vec![REF_FILL; n]
}

/// |got − want| ≤ atol + rtol·|want| where the reference is finite (and the device value must
/// be finite there); a reference NaN must be met by a computed NaN and infinities must match
/// exactly. An element still holding the device poison or the reference fill fails. Returns
/// the worst error (for the log).
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() != POISON,
            "{what}[{i}]: the device never wrote this element (want {w})"
        );
        assert!(
            *w != REF_FILL,
            "{what}[{i}]: the CPU reference never wrote this element"
        );
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: got {g}, want NaN");
            continue;
        }
        if w.is_infinite() {
            assert_eq!(g, w, "{what}[{i}]");
            continue;
        }
        assert!(g.is_finite(), "{what}[{i}]: got {g}, want {w}");
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w} (|Δ| = {err:e} > {atol:e} + {rtol:e}·|want|)"
        );
        worst = worst.max(err);
    }
    worst
}

#[track_caller]
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}[{i}]: got {g}, want {w} (bits differ)"
        );
    }
}

fn uniforms(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut g = Philox::new(seed, 99, 0);
    (0..n).map(|_| lo + (hi - lo) * g.uniform()).collect()
}

fn normals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut g = Philox::new(seed, 98, 0);
    (0..n).map(|_| scale * g.normal()).collect()
}

/// Parameters with every tensor random (biases and log-variance bounds too, so that the soft
/// bounds are exercised on both sides).
fn random_params(shape: &EnsembleShape, seed: u64) -> Vec<f32> {
    let mut p = mbrl_gpu::backend::cpu::ensemble::init_params(shape, seed);
    let lay = shape.layout();
    let noise = normals(seed ^ 0xb1a5, p.len(), 0.1);
    for lo in &lay.layers {
        let nb = shape.ensemble * lo.fan_out;
        for (k, v) in p[lo.bias..lo.bias + nb].iter_mut().enumerate() {
            *v = noise[lo.bias + k];
        }
    }
    if shape.probabilistic {
        let d = shape.out_dim;
        for j in 0..d {
            p[lay.max_logvar + j] = 0.5 + noise[j];
            p[lay.min_logvar + j] = -3.0 + noise[d + j];
        }
    }
    p
}

fn norm_stats(in_dim: usize, seed: u64) -> Vec<f32> {
    let mut v = uniforms(seed, in_dim, -0.5, 0.5);
    v.extend(uniforms(seed + 1, in_dim, 0.5, 2.0));
    v
}

fn shapes() -> Vec<EnsembleShape> {
    let mut v = vec![];
    for (hidden, layers) in [(13, 2), (200, 3), (13, 1)] {
        for activation in [Activation::Silu, Activation::Relu, Activation::Tanh] {
            for probabilistic in [true, false] {
                if hidden == 200 && activation != Activation::Silu {
                    continue; // the wide network once per head type is enough
                }
                v.push(EnsembleShape {
                    ensemble: 3,
                    in_dim: 5,
                    out_dim: 4,
                    hidden,
                    num_layers: layers,
                    activation,
                    probabilistic,
                });
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// Checks, generic over the backend under test (PoCL here, a real GPU where present)
// ---------------------------------------------------------------------------------------

const ROWS: usize = 37;

/// Forward: mean and log-variance, to tol·(1 + |ref|). For f32 weights tol = 5e-6: sums of
/// up to 200 products accumulated in another order (the CPU's GEMM uses FMAs and its own
/// blocking), and exp/log1p from the device's math library instead of the CPU's polynomials
/// (≤ 3e-7 relative each), through up to four layers: a few ulps per layer on values of order
/// one. PoCL shows 2.4e-7 at worst; the margin is for CUDA, which contracts the tile products
/// into FMAs.
fn check_forward<B: Backend>(b: &B, label: &str, tol: f32) {
    let cpu = CpuBackend::new();
    for (si, shape) in shapes().iter().enumerate() {
        let params = random_params(shape, 10 + si as u64);
        let norm = norm_stats(shape.in_dim, 20 + si as u64);
        let x = normals(30 + si as u64, shape.ensemble * ROWS * shape.in_dim, 1.5);
        let n_out = shape.ensemble * ROWS * shape.out_dim;
        let (mut cm, mut cl) = (unwritten(n_out), unwritten(n_out));
        cpu.ensemble_forward(shape, &params, &norm, &x, ROWS, &mut cm, &mut cl)
            .unwrap();
        let (dp, dn, dx) = (
            b.upload(&params).unwrap(),
            b.upload(&norm).unwrap(),
            b.upload(&x).unwrap(),
        );
        let (mut dm, mut dl) = (poisoned(b, n_out), poisoned(b, n_out));
        b.ensemble_forward(shape, &dp, &dn, &dx, ROWS, &mut dm, &mut dl)
            .unwrap();
        let (gm, gl) = (b.download(&dm).unwrap(), b.download(&dl).unwrap());
        let what = format!("{label} forward {shape:?}");
        let e1 = assert_close(&format!("{what} mean"), &gm, &cm, tol, tol);
        if shape.probabilistic {
            let e2 = assert_close(&format!("{what} logvar"), &gl, &cl, tol, tol);
            eprintln!(
                "{label} forward h={} {:?}: mean {e1:e}, logvar {e2:e}",
                shape.hidden, shape.activation
            );
        } else {
            // Deterministic heads leave logvar untouched: still the poison, bit for bit.
            assert!(
                gl.iter().all(|v| v.to_bits() == POISON),
                "{what}: logvar was written"
            );
        }
    }
}

/// NLL backward: gradient and per-member losses. Tolerances: the loss 5e-6 relative (a sum of
/// 37·4 terms per member in another order, on top of the forward's rounding); each gradient
/// tensor 1e-5 of its own largest entry, since its entries are sums over the 37 rows of
/// products that cancel (a small entry is the difference of large ones, so a relative bound
/// per entry would be meaningless). PoCL shows 4e-7 and 3e-7.
fn check_nll<B: Backend>(b: &B, label: &str) {
    let cpu = CpuBackend::new();
    for (si, shape) in shapes().iter().enumerate() {
        let params = random_params(shape, 40 + si as u64);
        let norm = norm_stats(shape.in_dim, 50 + si as u64);
        let x = normals(60 + si as u64, shape.ensemble * ROWS * shape.in_dim, 1.5);
        let target = normals(70 + si as u64, shape.ensemble * ROWS * shape.out_dim, 1.0);
        let loss = LossConfig {
            logvar_penalty: 0.01,
            weight_decay: (0..=shape.num_layers)
                .map(|l| if l == 1 { 0.0 } else { 2.5e-3 * (l + 1) as f32 })
                .collect(),
            precision: mbrl_gpu::backend::Precision::F32,
        };
        let total = shape.layout().total;
        let (mut cg, mut cls) = (unwritten(total), unwritten(shape.ensemble));
        cpu.ensemble_nll_backward(
            shape, &loss, &params, &norm, &x, &target, ROWS, &mut cg, &mut cls,
        )
        .unwrap();
        let (dp, dn, dx, dt) = (
            b.upload(&params).unwrap(),
            b.upload(&norm).unwrap(),
            b.upload(&x).unwrap(),
            b.upload(&target).unwrap(),
        );
        let (mut dg, mut dls) = (poisoned(b, total), poisoned(b, shape.ensemble));
        b.ensemble_nll_backward(shape, &loss, &dp, &dn, &dx, &dt, ROWS, &mut dg, &mut dls)
            .unwrap();
        let (gg, gls) = (b.download(&dg).unwrap(), b.download(&dls).unwrap());
        let what = format!("{label} nll {shape:?}");
        let el = assert_close(&format!("{what} losses"), &gls, &cls, 1e-6, 5e-6);
        let lay = shape.layout();
        let mut worst = 0.0f32;
        let mut ranges: Vec<(String, usize, usize)> = vec![];
        for (l, lo) in lay.layers.iter().enumerate() {
            let nw = shape.ensemble * lo.fan_in * lo.fan_out;
            ranges.push((format!("W{l}"), lo.weight, lo.weight + nw));
            ranges.push((
                format!("b{l}"),
                lo.bias,
                lo.bias + shape.ensemble * lo.fan_out,
            ));
        }
        if shape.probabilistic {
            ranges.push((
                "max_logvar".into(),
                lay.max_logvar,
                lay.max_logvar + shape.out_dim,
            ));
            ranges.push((
                "min_logvar".into(),
                lay.min_logvar,
                lay.min_logvar + shape.out_dim,
            ));
        }
        for (name, a, z) in ranges {
            let scale = cg[a..z].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let e = assert_close(
                &format!("{what} grad {name}"),
                &gg[a..z],
                &cg[a..z],
                1e-5 * scale + 1e-9,
                0.0,
            );
            worst = worst.max(e / scale.max(1e-30));
        }
        eprintln!(
            "{label} nll h={} {:?} prob={}: losses {el:e}, grad (relative to tensor max) {worst:e}",
            shape.hidden, shape.activation, shape.probabilistic
        );
    }
}

/// Adam: bit-identical (same IEEE operations in the same order, bias corrections from the
/// host, no contraction).
fn check_adam<B: Backend>(b: &B, label: &str) {
    let cpu = CpuBackend::new();
    let n = 1037;
    let mut w = normals(1, n, 1.0);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut dw, mut dm, mut dv) = (
        b.upload(&w).unwrap(),
        b.upload(&m).unwrap(),
        b.upload(&v).unwrap(),
    );
    for step in 1..=4u32 {
        let mut g = normals(100 + step as u64, n, 0.3);
        if step == 4 {
            // Dead units (zero gradient) whose moments decay across the smallest normal
            // float: the first half of them become zero, on every backend alike.
            for i in 0..16 {
                let x = 1.17e-38 * (1.0 + i as f32 / 1000.0);
                (m[i], v[i], g[i]) = (x, x, 0.0);
            }
            b.write(&mut dm, &m).unwrap();
            b.write(&mut dv, &v).unwrap();
        }
        let p = AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
            len: n as u32,
            _pad: [0; 2],
        };
        cpu.adam_step(&p, &mut w, &g, &mut m, &mut v).unwrap();
        let dg = b.upload(&g).unwrap();
        b.adam_step(&p, &mut dw, &dg, &mut dm, &mut dv).unwrap();
    }
    assert_bits(
        &format!("{label} adam params"),
        &b.download(&dw).unwrap(),
        &w,
    );
    assert_bits(&format!("{label} adam m"), &b.download(&dm).unwrap(), &m);
    assert_bits(&format!("{label} adam v"), &b.download(&dv).unwrap(), &v);
    assert!(m[..16].contains(&0.0) && m[..16].iter().all(|x| *x == 0.0 || x.is_normal()));
}

/// CEM sampling. Uniform (random shooting): bit-identical (exact Philox bits, exact unit map,
/// one product and one sum rounded alike). Truncated normal: 2e-6 absolute, since Box–Muller's
/// ln/sqrt/cos come from different math libraries (≤ a few ulps of values ≤ 2) scaled by
/// σ ≤ 1; and the variance constraint and clamping must agree exactly.
fn check_init<B: Backend>(b: &B, label: &str) {
    let cpu = CpuBackend::new();
    // 13 steps of 3 action dimensions: 39 elements.
    let prev = normals(8, 39, 1.0);
    let (lo, hi) = (vec![-1.0f32, -2.0, 0.0], vec![1.0f32, 0.5, 3.0]);
    for shift in [0u32, 1] {
        let p = InitParams {
            len: 39,
            act_dim: 3,
            shift,
            _pad: 0,
        };
        let (wm, wv) = init_on(&cpu, &p, &lo, &hi, &prev);
        let (gm, gv) = init_on(b, &p, &lo, &hi, &prev);
        // Copies, a midpoint and (ub − lb)²/16: one rounding each, the same everywhere.
        assert_bits(&format!("{label} cem_init mean, shift {shift}"), &gm, &wm);
        assert_bits(&format!("{label} cem_init var, shift {shift}"), &gv, &wv);
    }
}

fn init_on<B: Backend>(
    b: &B,
    p: &InitParams,
    lo: &[f32],
    hi: &[f32],
    prev: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (l, h, pr) = (
        b.upload(lo).unwrap(),
        b.upload(hi).unwrap(),
        b.upload(prev).unwrap(),
    );
    let (mut m, mut v) = (poisoned(b, p.len as usize), poisoned(b, p.len as usize));
    b.cem_init(p, &l, &h, &pr, &mut m, &mut v).unwrap();
    (b.download(&m).unwrap(), b.download(&v).unwrap())
}

fn check_sample<B: Backend>(b: &B, label: &str) {
    let cpu = CpuBackend::new();
    let (pop, h, a) = (37usize, 7usize, 2usize);
    let len = h * a;
    let mut mean = uniforms(3, len, -0.9, 0.9);
    mean[0] = -0.99; // near the lower bound: the variance is constrained
    let mut var = uniforms(4, len, 0.0, 1.0);
    var[1] = 0.0; // zero variance: every sample is the mean
    let (lo, hi) = (vec![-1.0f32, -2.0], vec![1.0f32, 0.5]);
    let (dmean, dvar, dlo, dhi) = (
        b.upload(&mean).unwrap(),
        b.upload(&var).unwrap(),
        b.upload(&lo).unwrap(),
        b.upload(&hi).unwrap(),
    );
    for dist in [0u32, 1] {
        let p = SampleParams {
            seed_lo: 0xdead_beef,
            seed_hi: 7,
            step: 3 + dist,
            population: pop as u32,
            len: len as u32,
            act_dim: a as u32,
            dist,
            beta: 0.0,
        };
        let mut want = unwritten(pop * len);
        cpu.cem_sample(&p, &mean, &var, &lo, &hi, &mut want)
            .unwrap();
        let mut out = poisoned(b, pop * len);
        b.cem_sample(&p, &dmean, &dvar, &dlo, &dhi, &mut out)
            .unwrap();
        let got = b.download(&out).unwrap();
        if dist == 1 {
            assert_bits(&format!("{label} uniform samples"), &got, &want);
        } else {
            let e = assert_close(
                &format!("{label} truncated-normal samples"),
                &got,
                &want,
                2e-6,
                0.0,
            );
            eprintln!("{label} cem_sample truncated normal: worst {e:e}");
        }
    }
}

/// CEM update: bit-identical (elites in the CPU's order, sums in that order, every product
/// rounded separately). Returns with ties, NaN and −∞ exercise the ranking rules.
fn check_update<B: Backend>(b: &B, label: &str) {
    let cpu = CpuBackend::new();
    let (pop, len) = (37usize, 14usize);
    let population = uniforms(5, pop * len, -1.0, 1.0);
    let mut returns = uniforms(6, pop, -10.0, 10.0);
    returns[3] = f32::NAN;
    returns[4] = f32::NEG_INFINITY;
    returns[10] = returns[20];
    returns[11] = returns[20];
    returns[30] = 1e9;
    returns[31] = -0.0;
    returns[32] = 0.0;
    let (dpop, dret) = (b.upload(&population).unwrap(), b.upload(&returns).unwrap());
    for (k, alpha) in [(5u32, 0.1f32), (37, 0.0), (1, 0.5), (12, 0.25)] {
        let p = UpdateParams {
            population: pop as u32,
            len: len as u32,
            num_elites: k,
            _pad: 0,
            alpha,
            min_var: 1e-3,
            _pad2: [0; 2],
        };
        let (mut m, mut v) = (uniforms(7, len, -0.5, 0.5), uniforms(8, len, 0.0, 0.5));
        let (mut dm, mut dv) = (b.upload(&m).unwrap(), b.upload(&v).unwrap());
        cpu.cem_update(&p, &population, &returns, &mut m, &mut v)
            .unwrap();
        b.cem_update(&p, &dpop, &dret, &mut dm, &mut dv).unwrap();
        assert_bits(
            &format!("{label} update mean k={k}"),
            &b.download(&dm).unwrap(),
            &m,
        );
        assert_bits(
            &format!("{label} update var k={k}"),
            &b.download(&dv).unwrap(),
            &v,
        );
    }
    // Same ties with all returns equal: the lowest indices win.
    let flat = vec![1.0f32; pop];
    let p = UpdateParams {
        population: pop as u32,
        len: len as u32,
        num_elites: 3,
        _pad: 0,
        alpha: 0.0,
        min_var: 0.0,
        _pad2: [0; 2],
    };
    let (mut m, mut v) = (vec![0.0f32; len], vec![0.0f32; len]);
    let (mut dm, mut dv) = (b.upload(&m).unwrap(), b.upload(&v).unwrap());
    cpu.cem_update(&p, &population, &flat, &mut m, &mut v)
        .unwrap();
    b.cem_update(&p, &dpop, &b.upload(&flat).unwrap(), &mut dm, &mut dv)
        .unwrap();
    assert_bits(
        &format!("{label} update ties"),
        &b.download(&dm).unwrap(),
        &m,
    );
}

fn rollout_params(
    env: EnvId,
    prop: Propagation,
    learn_reward: bool,
    elites: &[u32],
) -> RolloutParams {
    let spec = env.spec();
    let mut e = [0u32; MAX_ELITES];
    e[..elites.len()].copy_from_slice(elites);
    RolloutParams {
        seed_lo: 0x1234_5678,
        seed_hi: 42,
        step: 5,
        population: 37,
        particles: 3,
        horizon: 7,
        obs_dim: spec.obs_dim as u32,
        act_dim: spec.act_dim as u32,
        propagation: prop as u32,
        env: env.code(),
        learn_reward: learn_reward as u32,
        num_elites: elites.len() as u32,
        elites: e,
    }
}

/// Model rollout returns. Tolerance 2e-5·(1 + |ref|): seven steps of the forward's rounding
/// (≤ 5e-6) fed back through the state, plus Box–Muller noise that differs by a few ulps,
/// summed over at most seven rewards of order one to ten (PoCL: 7.6e-6 on pendulum returns of
/// about −70, i.e. 1e-7 relative). Termination decisions and −∞ must agree exactly (no
/// candidate here comes within that tolerance of a threshold).
fn check_rollout<B: Backend>(b: &B, label: &str, hidden: usize) {
    let cpu = CpuBackend::new();
    for env in EnvId::ALL {
        let spec = env.spec();
        for learn_reward in [false, true] {
            for prop in [
                Propagation::Ts1,
                Propagation::TsInf,
                Propagation::Expectation,
            ] {
                for probabilistic in [true, false] {
                    if !probabilistic && prop != Propagation::TsInf {
                        continue;
                    }
                    let shape = EnsembleShape {
                        ensemble: 5,
                        in_dim: spec.obs_dim + spec.act_dim,
                        out_dim: spec.obs_dim + learn_reward as usize,
                        hidden,
                        num_layers: 2,
                        activation: Activation::Silu,
                        probabilistic,
                    };
                    let elites: &[u32] = if prop == Propagation::Expectation {
                        &[2, 4, 2]
                    } else {
                        &[4, 1, 3]
                    };
                    let p = rollout_params(env, prop, learn_reward, elites);
                    let seed = 200 + env.code() as u64 * 10 + prop as u64;
                    let mut params = random_params(&shape, seed);
                    // Small steps keep the particles inside the interesting region for seven
                    // steps (cart-pole's pole falls past 12° within a few of them).
                    let head = shape.layout().layers[shape.num_layers];
                    let scale = if env == EnvId::CartPole { 0.02 } else { 0.3 };
                    for w in &mut params[head.weight..head.bias + shape.ensemble * head.fan_out] {
                        *w *= scale;
                    }
                    let norm = norm_stats(shape.in_dim, seed + 1);
                    let mut start = vec![0.0f32; spec.obs_dim];
                    let mut state = vec![0.0f32; spec.state_dim];
                    env.reset_state(seed, &mut state);
                    env.observe(&state, &mut start);
                    let n_act = (p.population * p.horizon) as usize * spec.act_dim;
                    let actions = uniforms(
                        seed + 2,
                        n_act,
                        spec.act_low[0] * 1.2,
                        spec.act_high[0] * 1.2,
                    );
                    let mut want = unwritten(p.population as usize);
                    cpu.rollout(&p, &shape, &params, &norm, &start, &actions, &mut want)
                        .unwrap();
                    let (dp, dn, ds, da) = (
                        b.upload(&params).unwrap(),
                        b.upload(&norm).unwrap(),
                        b.upload(&start).unwrap(),
                        b.upload(&actions).unwrap(),
                    );
                    let mut out = poisoned(b, p.population as usize);
                    b.rollout(&p, &shape, &dp, &dn, &ds, &da, &mut out).unwrap();
                    let got = b.download(&out).unwrap();
                    let what = format!(
                        "{label} rollout {} {prop:?} learn_reward={learn_reward} prob={probabilistic} hidden={hidden}",
                        spec.name
                    );
                    let e = assert_close(&what, &got, &want, 2e-5, 2e-5);
                    let mut distinct: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                    distinct.sort_unstable();
                    distinct.dedup();
                    eprintln!(
                        "{what}: worst {e:e}; {} distinct returns, e.g. {:?}",
                        distinct.len(),
                        &want[..3]
                    );
                }
            }
        }
    }
}

/// The MuJoCo tasks' termination functions (and the inverted pendulum's reward) inside the
/// model rollout, against the CPU, from starts near the thresholds. Tolerance as above.
fn check_rollout_mujoco_tasks<B: Backend>(b: &B, label: &str) {
    let cpu = CpuBackend::new();
    for c in common::mujoco_task_cases() {
        let shape = c.shape(5);
        let mut p = rollout_params(
            EnvId::Pendulum,
            Propagation::Ts1,
            c.learn_reward,
            &[4, 1, 3],
        );
        (p.env, p.obs_dim, p.act_dim) = (c.code, c.obs_dim as u32, c.act_dim as u32);
        let seed = 400 + c.code as u64;
        let mut params = random_params(&shape, seed);
        let head = shape.layout().layers[shape.num_layers];
        for w in &mut params[head.weight..head.bias + shape.ensemble * head.fan_out] {
            *w *= 0.05;
        }
        let norm = norm_stats(shape.in_dim, seed + 1);
        let actions = uniforms(
            seed + 2,
            (p.population * p.horizon) as usize * c.act_dim,
            -1.0,
            1.0,
        );
        let mut want = unwritten(p.population as usize);
        cpu.rollout(&p, &shape, &params, &norm, &c.start, &actions, &mut want)
            .unwrap();
        let mut out = poisoned(b, p.population as usize);
        b.rollout(
            &p,
            &shape,
            &b.upload(&params).unwrap(),
            &b.upload(&norm).unwrap(),
            &b.upload(&c.start).unwrap(),
            &b.upload(&actions).unwrap(),
            &mut out,
        )
        .unwrap();
        let got = b.download(&out).unwrap();
        let what = format!("{label} rollout task {}", c.name);
        let e = assert_close(&what, &got, &want, 2e-5, 2e-5);
        let mut distinct: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() > 1,
            "{what}: termination not exercised: {want:?}"
        );
        eprintln!("{what}: worst {e:e}; {} distinct returns", distinct.len());
    }
}

/// A model whose predictions overflow: every candidate's return is −∞ on both backends, and
/// the poison is overwritten.
fn check_rollout_divergence<B: Backend>(b: &B, label: &str) {
    let env = EnvId::MountainCar;
    let spec = env.spec();
    let shape = EnsembleShape {
        ensemble: 2,
        in_dim: spec.obs_dim + spec.act_dim,
        out_dim: spec.obs_dim,
        hidden: 13,
        num_layers: 1,
        activation: Activation::Relu,
        probabilistic: false,
    };
    let mut params = random_params(&shape, 300);
    let head = shape.layout().layers[1];
    for w in &mut params[head.weight..head.bias] {
        *w *= 1e37;
    }
    let p = rollout_params(env, Propagation::Ts1, false, &[0, 1]);
    let c = RolloutCase {
        norm: norm_stats(shape.in_dim, 301),
        start: vec![-0.5f32, 0.0],
        actions: uniforms(302, (p.population * p.horizon) as usize, -1.0, 1.0),
        p,
        shape,
        params,
    };
    let (got, want) = (run_case(b, &c), run_case(&CpuBackend::new(), &c));
    let dead = want.iter().filter(|v| **v == f32::NEG_INFINITY).count();
    assert!(
        dead > 0,
        "the diverging model should send some candidates to -inf: {want:?}"
    );
    assert_close(
        &format!("{label} diverging rollout"),
        &got,
        &want,
        2e-5,
        2e-5,
    );
}

/// True-dynamics rollout. Tolerance 1e-5·(1 + |ref|): the f64 dynamics round to the same f32
/// states unless a libm's sin/cos/atan2 differ in the last of 53 bits right at an f32
/// rounding boundary; the sums of f32 rewards then agree to their last bits.
fn check_rollout_true<B: Backend>(b: &B, label: &str) {
    let cpu = CpuBackend::new();
    for env in EnvId::ALL {
        let spec = env.spec();
        let mut p = rollout_params(env, Propagation::TsInf, false, &[0]);
        p.horizon = 25;
        p.particles = 1;
        let mut state = vec![0.0f32; spec.state_dim];
        env.reset_state(9, &mut state);
        if env == EnvId::MountainCar {
            state = vec![0.3, 0.04]; // near the goal: some candidates reach it
        }
        let n_act = (p.population * p.horizon) as usize * spec.act_dim;
        let actions = uniforms(
            11 + env.code() as u64,
            n_act,
            spec.act_low[0] * 1.5,
            spec.act_high[0] * 1.5,
        );
        let mut want = unwritten(p.population as usize);
        cpu.rollout_true(&p, &state, &actions, &mut want).unwrap();
        let mut out = poisoned(b, p.population as usize);
        b.rollout_true(
            &p,
            &b.upload(&state).unwrap(),
            &b.upload(&actions).unwrap(),
            &mut out,
        )
        .unwrap();
        let got = b.download(&out).unwrap();
        let e = assert_close(
            &format!("{label} rollout_true {}", spec.name),
            &got,
            &want,
            1e-5,
            1e-5,
        );
        eprintln!(
            "{label} rollout_true {}: worst {e:e}, returns {:?}",
            spec.name,
            &want[..4]
        );
    }
}

/// One planning step as the planner runs it: CEM iterations of sample → rollout → update on
/// device buffers, then the first action of the mean. The elites must be the same candidates
/// as on the CPU, so the mean agrees to the sampling tolerance: 1e-5 (PoCL: 3e-8).
fn check_planning<B: Backend>(b: &B, label: &str) {
    let cpu = CpuBackend::new();
    let env = EnvId::Pendulum;
    let spec = env.spec();
    let shape = EnsembleShape {
        ensemble: 5,
        in_dim: spec.obs_dim + spec.act_dim,
        out_dim: spec.obs_dim,
        hidden: 200,
        num_layers: 3,
        activation: Activation::Silu,
        probabilistic: true,
    };
    let params = random_params(&shape, 77);
    let norm = norm_stats(shape.in_dim, 78);
    let mut state = vec![0.0f32; spec.state_dim];
    env.reset_state(5, &mut state);
    let mut obs = vec![0.0f32; spec.obs_dim];
    env.observe(&state, &mut obs);
    let (pop, h, a) = (37u32, 7u32, 1u32);
    let len = (h * a) as usize;
    let mut rp = rollout_params(env, Propagation::TsInf, false, &[0, 2, 3]);
    rp.population = pop;
    rp.horizon = h;
    let (lo, hi) = (spec.act_low.clone(), spec.act_high.clone());
    let params_for = |it: u32| {
        let sp = SampleParams {
            seed_lo: 1,
            seed_hi: 2,
            step: it,
            population: pop,
            len: len as u32,
            act_dim: a,
            dist: 0,
            beta: 0.0,
        };
        let up = UpdateParams {
            population: pop,
            len: len as u32,
            num_elites: 5,
            _pad: 0,
            alpha: 0.1,
            min_var: 1e-4,
            _pad2: [0; 2],
        };
        let mut r = rp;
        r.step = it;
        (sp, up, r)
    };
    // CPU.
    let (mut cm, mut cv) = (vec![0.0f32; len], vec![1.0f32; len]);
    let mut popu = vec![0.0f32; pop as usize * len];
    let mut ret = vec![0.0f32; pop as usize];
    for it in 0..4 {
        let (sp, up, r) = params_for(it);
        cpu.cem_sample(&sp, &cm, &cv, &lo, &hi, &mut popu).unwrap();
        cpu.rollout(&r, &shape, &params, &norm, &obs, &popu, &mut ret)
            .unwrap();
        cpu.cem_update(&up, &popu, &ret, &mut cm, &mut cv).unwrap();
    }
    // Device: everything stays on the device; one observation up, the mean down at the end.
    let dp = b.upload(&params).unwrap();
    let dn = b.upload(&norm).unwrap();
    let dobs = b.upload(&obs).unwrap();
    let (dlo, dhi) = (b.upload(&lo).unwrap(), b.upload(&hi).unwrap());
    let mut dm = b.upload(&vec![0.0f32; len]).unwrap();
    let mut dv = b.upload(&vec![1.0f32; len]).unwrap();
    let mut dpop = poisoned(b, pop as usize * len);
    let mut dret = poisoned(b, pop as usize);
    for it in 0..4 {
        let (sp, up, r) = params_for(it);
        b.cem_sample(&sp, &dm, &dv, &dlo, &dhi, &mut dpop).unwrap();
        b.rollout(&r, &shape, &dp, &dn, &dobs, &dpop, &mut dret)
            .unwrap();
        b.cem_update(&up, &dpop, &dret, &mut dm, &mut dv).unwrap();
    }
    let gm = b.download(&dm).unwrap();
    assert!(
        cm.iter().any(|v| v.abs() > 1e-3),
        "the mean never moved: {cm:?}"
    );
    assert_close(&format!("{label} planned mean"), &gm, &cm, 1e-5, 0.0);
    eprintln!(
        "{label} planning: first action cpu {} device {}",
        cm[0], gm[0]
    );
}

/// Undersized buffers and bad codes are errors, never panics.
fn check_errors<B: Backend>(b: &B) {
    let shape = shapes()[0];
    let params = b.upload(&random_params(&shape, 1)).unwrap();
    let norm = b.upload(&norm_stats(shape.in_dim, 1)).unwrap();
    let x = b.upload(&[0.0; 10]).unwrap();
    let (mut m, mut l) = (b.zeros(1).unwrap(), b.zeros(1).unwrap());
    let e = b.ensemble_forward(&shape, &params, &norm, &x, ROWS, &mut m, &mut l);
    assert!(matches!(e, Err(mbrl_gpu::Error::Shape(_))), "{e:?}");
    let mut p = rollout_params(EnvId::CartPole, Propagation::Ts1, false, &[0]);
    p.env = 99;
    let s = b.zeros(4).unwrap();
    let mut r = b.zeros(37).unwrap();
    assert!(b.rollout_true(&p, &s, &s, &mut r).is_err());
    let mut buf = b.zeros(3).unwrap();
    assert!(b.write(&mut buf, &[1.0, 2.0]).is_err());
    common::sac::misuse_is_refused(b);
    common::branch::misuse_is_refused(b);
    common::value::misuse_is_refused(b);
}

// ---------------------------------------------------------------------------------------
// Tests on PoCL
// ---------------------------------------------------------------------------------------

/// Philox4x32-10 of common.cuh against src/rng.rs: the 128-bit blocks (including Random123's
/// known-answer counters), uniforms and integers bit for bit; normals and truncated normals to
/// 2e-6 absolute (|z| ≤ ~5.6: a few ulps of the device's ln/sqrt/cospi against the CPU's
/// polynomials, ≤ 3e-7 relative each).
#[test]
fn philox_on_pocl_should_give_the_cpu_bits() {
    let Some(host) = pocl() else { return };
    let probe = r#"
KERNEL void philox_probe(u32 n, GLOBAL const u32* ctr, GLOBAL const u32* key,
                         GLOBAL u32* blocks, GLOBAL float* uni, GLOBAL u32* below,
                         GLOBAL float* nrm, GLOBAL float* tn) {
  const u32 i = (u32)GRP_X * 64u + (u32)LID;
  if (i >= n) return;
  const u32 e = ctr[4 * i], s = ctr[4 * i + 1], st = ctr[4 * i + 2], w3 = ctr[4 * i + 3];
  const u32 k0 = key[2 * i], k1 = key[2 * i + 1];
  Philox4 b = philox4x32_10(e, s, st, w3, k0, k1);
  blocks[4 * i] = b.x; blocks[4 * i + 1] = b.y; blocks[4 * i + 2] = b.z; blocks[4 * i + 3] = b.w;
  uni[i] = philox_uniform(k0, k1, st, e, s);
  below[i] = philox_below(k0, k1, st, e, s, 1u + i % 13u);
  nrm[i] = philox_normal(k0, k1, st, e, s);
  tn[i] = philox_truncated_normal(k0, k1, st, e, s);
}
"#;
    let src = format!("{}{}", source::COMMON, probe);
    let ocl = &host.0;
    let prog = ocl.program("philox_probe", &src);
    let n = 1000usize;
    let mut ctr = vec![0u32; 4 * n];
    let mut key = vec![0u32; 2 * n];
    let mut g = Philox::new(3, 1, 0);
    for i in 0..n {
        for j in 0..4 {
            ctr[4 * i + j] = (g.uniform() * 4.0e9) as u32;
        }
        ctr[4 * i + 2] %= 16; // realistic stream numbers too
        key[2 * i] = (g.uniform() * 4.0e9) as u32;
        key[2 * i + 1] = (g.uniform() * 4.0e9) as u32;
    }
    // Random123 known-answer counters and keys.
    ctr[..12].copy_from_slice(&[
        0,
        0,
        0,
        0,
        u32::MAX,
        u32::MAX,
        u32::MAX,
        u32::MAX,
        0x243f_6a88,
        0x85a3_08d3,
        0x1319_8a2e,
        0x0370_7344,
    ]);
    key[..6].copy_from_slice(&[0, 0, u32::MAX, u32::MAX, 0xa409_3822, 0x299f_31d0]);
    let buf = |v: &[u32]| {
        let mut m = host.alloc_zeroed(v.len()).unwrap();
        host.upload(&mut m, 0, v).unwrap();
        m
    };
    let (dc, dk) = (buf(&ctr), buf(&key));
    let (db, du, dbl, dnr, dtn) = (
        buf(&vec![0; 4 * n]),
        buf(&vec![0; n]),
        buf(&vec![0; n]),
        buf(&vec![0; n]),
        buf(&vec![0; n]),
    );
    let k = Kernel::create(&prog, "philox_probe").unwrap();
    // SAFETY: arguments match philox_probe's parameter list.
    unsafe {
        let nn = n as u32;
        k.set_arg(0, &nn).unwrap();
        for (i, m) in [&dc, &dk, &db, &du, &dbl, &dnr, &dtn].iter().enumerate() {
            k.set_arg(1 + i as u32, &m.0.get()).unwrap();
        }
        let global = [n.div_ceil(64) * 64];
        let local = [64usize];
        ocl.queue
            .enqueue_nd_range_kernel(
                k.get(),
                1,
                std::ptr::null(),
                global.as_ptr(),
                local.as_ptr(),
                &[],
            )
            .unwrap();
    }
    let read = |m: &ClBuf, len: usize| {
        let mut v = vec![0u32; len];
        host.download(m, 0, &mut v).unwrap();
        v
    };
    let blocks = read(&db, 4 * n);
    let (uni, below, nrm, tn) = (read(&du, n), read(&dbl, n), read(&dnr, n), read(&dtn, n));
    let mut worst = 0.0f32;
    for i in 0..n {
        let c = [ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3]];
        let kk = [key[2 * i], key[2 * i + 1]];
        assert_eq!(
            &blocks[4 * i..4 * i + 4],
            &mbrl_gpu::rng::philox4x32_10(c, kk),
            "block {i}"
        );
        let seed = kk[0] as u64 | (kk[1] as u64) << 32;
        let (e, s, st) = (c[0], c[1], c[2]);
        assert_eq!(
            uni[i],
            mbrl_gpu::rng::uniform(seed, st, e, s).to_bits(),
            "uniform {i}"
        );
        assert_eq!(
            below[i],
            mbrl_gpu::rng::below(seed, st, e, s, 1 + i as u32 % 13),
            "below {i}"
        );
        let (zn, zt) = (f32::from_bits(nrm[i]), f32::from_bits(tn[i]));
        let (wn, wt) = (
            mbrl_gpu::rng::normal(seed, st, e, s),
            mbrl_gpu::rng::truncated_normal(seed, st, e, s),
        );
        assert!((zn - wn).abs() <= 2e-6, "normal {i}: {zn} vs {wn}");
        assert!(
            (zt - wt).abs() <= 2e-6,
            "truncated normal {i}: {zt} vs {wt}"
        );
        worst = worst.max((zn - wn).abs()).max((zt - wt).abs());
    }
    assert_eq!(
        &blocks[..4],
        &[0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
        "Random123 known answer"
    );
    eprintln!("philox on PoCL: blocks, uniforms, integers exact; normals worst {worst:e}");
}

#[test]
fn ensemble_forward_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    check_forward(&b, "pocl", 5e-6);
}

#[test]
fn ensemble_nll_backward_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    check_nll(&b, "pocl");
}

#[test]
fn ensemble_vjp_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    for c in common::dense::vjp(&b, "pocl") {
        let worst = assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
        eprintln!("{}: worst {worst:e}", c.what);
    }
}

#[test]
fn sac_steps_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    for c in common::sac::step(&b, "pocl") {
        let worst = assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
        eprintln!("{}: worst {worst:e}", c.what);
    }
}

#[test]
fn branched_rollouts_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    common::branch::no_room_is_refused(&b);
    for c in common::branch::parity(&b, "pocl") {
        let worst = assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
        eprintln!("{}: worst {worst:e}", c.what);
    }
}

#[test]
fn path_gradients_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    common::path::cases_are_meaningful();
    for c in common::path::parity(&b, "pocl") {
        let worst = assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
        eprintln!("{}: worst {worst:e}", c.what);
    }
}

#[test]
fn rollouts_closed_by_a_terminal_value_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    for c in common::value::parity(&b, "pocl") {
        let worst = assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
        eprintln!("{}: worst {worst:e}", c.what);
    }
}

#[test]
fn adam_on_pocl_should_match_the_cpu_bit_for_bit() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    check_adam(&b, "pocl");
}

#[test]
fn cem_sample_and_update_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    check_init(&b, "pocl");
    check_sample(&b, "pocl");
    check_update(&b, "pocl");
}

#[test]
fn icem_and_mppi_ops_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    use common::planners;
    let cases = [
        planners::colored_sample(&b, "pocl"),
        planners::elite_memory(&b, "pocl"),
        planners::mppi(&b, "pocl"),
        planners::mpc_steps(&b, "pocl"),
    ];
    for c in cases.iter().flatten() {
        let worst = assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
        eprintln!("{}: worst {worst:e}", c.what);
    }
}

#[test]
fn rollout_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    check_rollout(&b, "pocl", 13);
    check_rollout_divergence(&b, "pocl");
    check_rollout_mujoco_tasks(&b, "pocl");
}

#[test]
fn rollout_true_on_pocl_should_match_the_cpu() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    check_rollout_true(&b, "pocl");
}

#[test]
fn a_planning_step_on_pocl_should_pick_the_cpus_first_action() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    check_planning(&b, "pocl");
}

#[test]
fn bad_arguments_on_pocl_should_be_errors_not_panics() {
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    check_errors(&b);
}

/// Weights with each matrix entry rounded to bf16.
fn bf16_rounded(shape: &EnsembleShape, params: &[f32]) -> Vec<f32> {
    let mut p = params.to_vec();
    for lo in &shape.layout().layers {
        for w in &mut p[lo.weight..lo.bias] {
            *w = half::bf16::from_f32(*w).to_f32();
        }
    }
    p
}

/// bf16 weights, f32 accumulation (the portable path: u16 storage, shift conversion).
/// - The packing kernel rounds exactly as `half::bf16::from_f32` (nearest even, NaN quiet).
/// - Against the CPU run on bf16-rounded weights, the forward and the rollout agree to the f32
///   tolerances above: the kernel multiplies the very same weight values and accumulates in
///   f32, so only summation order and math libraries differ.
/// - Against the CPU in full f32, the error is what the rounding costs: each weight moves by
///   ≤ 2⁻⁹ ≈ 2e-3 relative, so a layer's output moves by ≤ 2⁻⁹·Σ|a·w|, and for these
///   networks Σ|a·w| is within a small factor of |a·w|'s sum; through up to four layers and the
///   soft bounds the means and log-variances stay within 5e-3·(1 + |ref|) (PoCL: 1.3e-3).
#[test]
fn bf16_weights_on_pocl_should_match_the_cpu_within_the_stated_tolerance() {
    let Some(host) = pocl() else { return };
    // Packing bits.
    let mut vals = normals(5, 4093, 3.0);
    vals.extend([
        f32::NAN,
        f32::INFINITY,
        -0.0,
        1.0 + f32::EPSILON,
        3.4e38,
        1e-40,
    ]);
    let mut src = host.alloc_zeroed(vals.len()).unwrap();
    host.upload(&mut src, 0, bytemuck::cast_slice(&vals))
        .unwrap();
    let dst = host.alloc_zeroed(vals.len().div_ceil(2)).unwrap();
    host.launch(&Launch {
        program: Program::plain(KernelFile::Ensemble),
        entry: "ensemble_pack_bf16",
        grid: [4, 1, 1],
        block: 256,
        dynamic_shared: None,
        args: &[Arg::U32(vals.len() as u32), Arg::Mem(&src), Arg::Mem(&dst)],
    })
    .unwrap();
    let mut words = vec![0u32; vals.len().div_ceil(2)];
    host.download(&dst, 0, &mut words).unwrap();
    let halves: &[u16] = bytemuck::cast_slice(&words);
    for (i, v) in vals.iter().enumerate() {
        assert_eq!(halves[i], half::bf16::from_f32(*v).to_bits(), "bf16 of {v}");
    }

    let b = CudaBackend::with_host(
        host,
        CudaOptions {
            bf16_weights: true,
            tensor_cores: false,
            ..CudaOptions::default()
        },
    );
    let cpu = CpuBackend::new();
    for shape in shapes().iter().filter(|s| s.activation == Activation::Silu) {
        let params = random_params(shape, 90);
        let rounded = bf16_rounded(shape, &params);
        let norm = norm_stats(shape.in_dim, 91);
        let x = normals(92, shape.ensemble * ROWS * shape.in_dim, 1.5);
        let n_out = shape.ensemble * ROWS * shape.out_dim;
        let run_cpu = |p: &Vec<f32>| {
            let (mut m, mut l) = (unwritten(n_out), unwritten(n_out));
            cpu.ensemble_forward(shape, p, &norm, &x, ROWS, &mut m, &mut l)
                .unwrap();
            (m, l)
        };
        let (rm, rl) = run_cpu(&rounded);
        let (fm, fl) = run_cpu(&params);
        let (mut dm, mut dl) = (poisoned(&b, n_out), poisoned(&b, n_out));
        b.ensemble_forward(
            shape,
            &b.upload(&params).unwrap(),
            &b.upload(&norm).unwrap(),
            &b.upload(&x).unwrap(),
            ROWS,
            &mut dm,
            &mut dl,
        )
        .unwrap();
        let (gm, gl) = (b.download(&dm).unwrap(), b.download(&dl).unwrap());
        assert_close("bf16 mean vs rounded", &gm, &rm, 5e-6, 5e-6);
        let e = assert_close("bf16 mean vs f32", &gm, &fm, 5e-3, 5e-3);
        if shape.probabilistic {
            assert_close("bf16 logvar vs rounded", &gl, &rl, 5e-6, 5e-6);
            assert_close("bf16 logvar vs f32", &gl, &fl, 5e-3, 5e-3);
        }
        eprintln!("bf16 forward h={}: worst vs f32 {e:e}", shape.hidden);
    }
    // The fused rollout with bf16 weights against the CPU on rounded weights.
    let env = EnvId::Pendulum;
    let spec = env.spec();
    let shape = EnsembleShape {
        ensemble: 5,
        in_dim: spec.obs_dim + spec.act_dim,
        out_dim: spec.obs_dim,
        hidden: 13,
        num_layers: 2,
        activation: Activation::Silu,
        probabilistic: true,
    };
    let p = rollout_params(env, Propagation::Ts1, false, &[4, 1, 3]);
    let params = random_params(&shape, 93);
    let rounded = bf16_rounded(&shape, &params);
    let norm = norm_stats(shape.in_dim, 94);
    let start = vec![0.6f32, 0.8, 0.1];
    let actions = uniforms(95, (p.population * p.horizon) as usize, -2.0, 2.0);
    let mut want = unwritten(p.population as usize);
    cpu.rollout(&p, &shape, &rounded, &norm, &start, &actions, &mut want)
        .unwrap();
    let mut out = poisoned(&b, p.population as usize);
    b.rollout(
        &p,
        &shape,
        &b.upload(&params).unwrap(),
        &b.upload(&norm).unwrap(),
        &b.upload(&start).unwrap(),
        &b.upload(&actions).unwrap(),
        &mut out,
    )
    .unwrap();
    assert_close(
        "bf16 rollout vs rounded",
        &b.download(&out).unwrap(),
        &want,
        2e-5,
        2e-5,
    );
}

// ---------------------------------------------------------------------------------------
// The same checks on a real GPU, where there is one
// ---------------------------------------------------------------------------------------

#[test]
fn cuda_device_should_match_the_cpu_when_present() {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        eprintln!("skipped: no CUDA driver library on this machine (not a failure: CI has no GPU)");
        return;
    }
    // The f32 specification first: planning would take TF32 tensor cores by default.
    let b = match CudaBackend::with_options(CudaOptions {
        fp32_planning: true,
        ..CudaOptions::default()
    }) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: {e} (not a failure: CI has no GPU)");
            return;
        }
    };
    eprintln!("CUDA parity on {}", b.device_name());
    check_forward(&b, "cuda", 5e-6);
    check_nll(&b, "cuda");
    for c in common::dense::vjp(&b, "cuda")
        .into_iter()
        .chain(common::sac::step(&b, "cuda"))
        .chain(common::branch::parity(&b, "cuda"))
        .chain(common::value::parity(&b, "cuda"))
    {
        let worst = assert_close(&c.what, &c.got, &c.want, c.atol, c.rtol);
        eprintln!("{}: worst {worst:e}", c.what);
    }
    check_adam(&b, "cuda");
    check_init(&b, "cuda");
    check_sample(&b, "cuda");
    check_update(&b, "cuda");
    check_rollout(&b, "cuda", 13);
    check_rollout(&b, "cuda", 200);
    check_rollout_divergence(&b, "cuda");
    check_rollout_mujoco_tasks(&b, "cuda");
    check_rollout_true(&b, "cuda");
    check_planning(&b, "cuda");
    check_errors(&b);
    // The TF32 tensor-core tile products: inputs keep 10 mantissa bits, so each product is off
    // by ≤ 2⁻¹¹ relative and a 200-term sum by ≤ 2⁻¹¹·Σ|a·w|; through four layers 2e-2·(1 + |ref|).
    match CudaBackend::with_options(CudaOptions {
        tensor_cores: true,
        ..CudaOptions::default()
    }) {
        Ok(tc) => check_forward(&tc, "cuda tf32", 2e-2),
        Err(e) => eprintln!("tensor cores not checked: {e}"),
    }
    // The default backend plans on TF32 where the device has tensor cores: one planning
    // step's first action within 5e-2 of the f32 plan (the same elites up to near-ties).
    let default = CudaBackend::new().expect("the device was usable above");
    eprintln!(
        "default planning on {}: tensor cores {}",
        default.device_name(),
        default.planning_tensor_cores()
    );
    check_tf32_cartpole_rollout(&default, "cuda default planning");
}

#[test]
fn mpc_steps_on_pocl_should_match_the_cpu() {
    use mbrl_gpu::plan::Mpc;
    let Some(b) = pocl_backend(CudaOptions::default()) else {
        return;
    };
    let c = common::mpc_case();
    let cpu = CpuBackend::new();
    let mut on_cpu =
        Mpc::with_model(&cpu, &c.model, c.env, c.planner.clone(), c.ts, c.seed).unwrap();
    let mut on_dev = Mpc::with_model(&b, &c.model, c.env, c.planner, c.ts, c.seed).unwrap();
    // Three consecutive steps exercise cem_init's warm start on the device.
    for (i, o) in c.observations.iter().enumerate() {
        let a = on_dev.act(&b, o, &[]).unwrap();
        let d = on_cpu.act(&cpu, o, &[]).unwrap();
        // Same elites (returns agree to ~1e-5 relative), so the means differ by rounding.
        assert_close(&format!("mpc action, step {i}"), &a, &d, 1e-4, 0.0);
    }
}

/// The host code's cost per planning step, counted on PoCL through the production host code
/// (`CountingHost`): one upload (the observation), one download (the plan — the step's
/// only synchronisation), no allocation after the first step, and a fixed number of
/// launches per CEM, MPPI and iCEM iteration. The counts are printed; a change that adds
/// launches, copies or synchronisations to a step fails here.
#[test]
fn mpc_step_host_costs_on_pocl_should_stay_fixed() {
    use mbrl_gpu::backend::cuda::host::CountingHost;
    use mbrl_gpu::plan::{Mpc, Optimizer, PlannerConfig, TsConfig};
    let Some(h) = pocl() else { return };
    let c = common::mpc_case();
    let b = CudaBackend::with_host(CountingHost::new(h), CudaOptions::default());
    let it = c.planner.iterations as u64;
    for opt in [Optimizer::Cem, Optimizer::Mppi, Optimizer::Icem] {
        let cfg = PlannerConfig {
            optimizer: opt,
            ..c.planner.clone()
        };
        let mut mpc = Mpc::with_model(&b, &c.model, c.env, cfg, c.ts, c.seed).unwrap();
        for (i, o) in c.observations.iter().enumerate() {
            let before = b.host().counts();
            mpc.act(&b, o, &[]).unwrap();
            let d = b.host().counts().since(&before);
            eprintln!("{opt:?} step {i}: {d}");
            assert_eq!(d.uploads, 1, "{opt:?} step {i}: {d}");
            assert_eq!(d.upload_bytes, 4 * o.len() as u64, "{opt:?} step {i}: {d}");
            assert_eq!((d.downloads, d.syncs), (1, 1), "{opt:?} step {i}: {d}");
            // The whole plan (H × A values): its first action is executed and the host
            // keeps it as the fallback of the next step.
            let plan_bytes = 4 * c.planner.horizon as u64;
            assert_eq!(d.download_bytes, plan_bytes, "{opt:?} step {i}: {d}");
            if i > 0 {
                assert_eq!(d.allocations, 0, "{opt:?} step {i}: {d}");
            }
            // cem_init, then per iteration: sample, the rollout (the slot table that groups
            // rows by member, the TS∞ rollout, its particle reduction), then rank and update (CEM) or costs and weighted update (MPPI). iCEM's iteration
            // also selects the elites (rank, gather) and ranks them again in the update of
            // the elite memory; the kept elites enter every iteration but the first of the
            // first step (cem_keep), and the best sequence is copied out at the end (rank,
            // update).
            let expected = match opt {
                Optimizer::Cem | Optimizer::Mppi => 1 + 6 * it,
                Optimizer::Icem => 1 + 8 * it + 2 + if i == 0 { it - 1 } else { it },
                Optimizer::RandomShooting => unreachable!(),
            };
            assert_eq!(d.total_launches(), expected, "{opt:?} step {i}: {d}");
        }
    }
    // TS1 regroups the rows every step: one rollout launch per step of the horizon, and one
    // slot-table launch per iteration that groups all H steps.
    let mut mpc = Mpc::with_model(
        &b,
        &c.model,
        c.env,
        c.planner.clone(),
        TsConfig {
            propagation: Propagation::Ts1,
            ..c.ts
        },
        c.seed,
    )
    .unwrap();
    let before = b.host().counts();
    mpc.act(&b, &c.observations[0], &[]).unwrap();
    let d = b.host().counts().since(&before);
    let h = c.planner.horizon as u64;
    assert_eq!(d.launches.get("rollout"), Some(&(it * h)), "TS1: {d}");
    assert_eq!(d.launches.get("rollout_group"), Some(&it), "TS1: {d}");
    assert_eq!(d.total_launches(), 1 + (5 + h) * it, "TS1: {d}");
    assert_eq!((d.downloads, d.syncs), (1, 1), "TS1: {d}");
    // With bf16 weights, the weights are packed once per model update: on the first step,
    // not again while the parameters keep their version; a write to them packs again.
    let b = CudaBackend::with_host(
        CountingHost::new(pocl().expect("PoCL was found above")),
        CudaOptions {
            bf16_weights: true,
            tensor_cores: false,
            ..CudaOptions::default()
        },
    );
    let cfg = PlannerConfig {
        precision: b.planning_precision(),
        ..c.planner.clone()
    };
    let mut mpc = Mpc::with_model(&b, &c.model, c.env, cfg, c.ts, c.seed).unwrap();
    for (i, o) in c.observations.iter().enumerate() {
        let before = b.host().counts();
        mpc.act(&b, o, &[]).unwrap();
        let d = b.host().counts().since(&before);
        eprintln!("Cem, bf16 weights, step {i}: {d}");
        let packs = d.launches.get("ensemble_pack_bf16").copied().unwrap_or(0);
        assert_eq!(packs, u64::from(i == 0), "step {i}: {d}");
        assert_eq!(d.total_launches(), 1 + 6 * it + packs, "step {i}: {d}");
    }
    let before = b.host().counts();
    mpc.update_model(&b, &c.model).unwrap();
    mpc.act(&b, &c.observations[0], &[]).unwrap();
    let d = b.host().counts().since(&before);
    assert_eq!(
        d.launches.get("ensemble_pack_bf16"),
        Some(&1),
        "after a model update: {d}"
    );
}

/// A planning step closed by a terminal value costs the host what a plain one does after the
/// first: one upload (the observation), one download, one synchronisation, no allocation;
/// the value's networks are uploaded once. Per iteration, four launches more: the actor's
/// forward, its squash, the critics' forward and rollout_value.
#[test]
fn mpc_steps_with_a_terminal_value_on_pocl_should_upload_only_the_observation() {
    use mbrl_gpu::backend::cuda::host::CountingHost;
    use mbrl_gpu::backend::TerminalValue;
    use mbrl_gpu::plan::Mpc;
    use mbrl_gpu::policy::sac::{CriticValue, Sac, SacConfig};
    let Some(h) = pocl() else { return };
    let c = common::mpc_case();
    let b = CudaBackend::with_host(CountingHost::new(h), CudaOptions::default());
    let it = c.planner.iterations as u64;
    let cfg = SacConfig {
        hidden: 16,
        ..SacConfig::default()
    };
    let agent = Sac::new(cfg, 3, &[-2.0], &[2.0], 1).unwrap();
    let tv = TerminalValue {
        gamma: 0.95,
        value: std::sync::Arc::new(CriticValue::from_agent(&agent)),
    };
    let mut mpc = Mpc::with_model(&b, &c.model, c.env, c.planner.clone(), c.ts, c.seed).unwrap();
    mpc.set_terminal_value(Some(tv)).unwrap();
    for (i, o) in c.observations.iter().enumerate() {
        let before = b.host().counts();
        mpc.act(&b, o, &[]).unwrap();
        let d = b.host().counts().since(&before);
        eprintln!("valued step {i}: {d}");
        assert_eq!((d.downloads, d.syncs), (1, 1), "step {i}: {d}");
        assert_eq!(d.total_launches(), 1 + 10 * it, "step {i}: {d}");
        assert_eq!(d.launches.get("rollout_value"), Some(&it), "step {i}: {d}");
        if i > 0 {
            assert_eq!((d.uploads, d.allocations), (1, 0), "step {i}: {d}");
        }
    }
}

/// Per-output bound on |computed − exact| of the ensemble forward, from an f64 forward that
/// carries Σ|a·w| and the input errors through the layers. A layer z = b + Σ_k a_k·w_k with
/// inputs known to ±Ea_k, operands rounded to `u` (TF32: 2⁻¹¹; f32 operands: 0) and summed in
/// f32 in any order is off by at most
///   Σ_k |w_k|·Ea_k + (2u + u²)·Σ_k (|a_k| + Ea_k)|w_k| + γ(K+1)·(Σ_k (|a_k| + Ea_k)|w_k| + |b|),
/// γ(n) = n·2⁻²⁴ / (1 − n·2⁻²⁴) (Higham, Accuracy and Stability, §3.1); the activation adds its
/// Lipschitz constant (SiLU 1.1, ReLU and tanh 1) times that, plus 8 ulps of its value for the
/// libm calls; the soft log-variance bounds are 1-Lipschitz in the raw head output. Returns
/// (mean bounds, logvar bounds) for rows × members in the forward's output order.
fn forward_error_bounds(
    shape: &EnsembleShape,
    params: &[f32],
    norm: &[f32],
    x: &[f32],
    rows: usize,
    u: f64,
) -> (Vec<f64>, Vec<f64>) {
    let ulp = 2f64.powi(-24);
    let gamma = |n: usize| n as f64 * ulp / (1.0 - n as f64 * ulp);
    let lay = shape.layout();
    let (din, d) = (shape.in_dim, shape.out_dim);
    let lip = match shape.activation {
        Activation::Silu => 1.1,
        Activation::Relu | Activation::Tanh => 1.0,
    };
    let act = |z: f64| match shape.activation {
        Activation::Silu => z / (1.0 + (-z).exp()),
        Activation::Relu => z.max(0.0),
        Activation::Tanh => z.tanh(),
    };
    let (mut mb, mut lb) = (
        vec![0.0; shape.ensemble * rows * d],
        vec![0.0; shape.ensemble * rows * d],
    );
    for e in 0..shape.ensemble {
        for r in 0..rows {
            let row = &x[(e * rows + r) * din..(e * rows + r + 1) * din];
            // The normalised input as both sides compute it (one f32 rounding each way).
            let mut a: Vec<f64> = (0..din)
                .map(|j| ((row[j] - norm[j]) / norm[din + j]) as f64)
                .collect();
            let mut ea: Vec<f64> = a.iter().map(|v| 2.0 * ulp * v.abs()).collect();
            for (l, lo) in lay.layers.iter().enumerate() {
                let (fi, fo) = (lo.fan_in, lo.fan_out);
                let w = |k: usize, j: usize| params[lo.weight + e * fi * fo + k * fo + j] as f64;
                let mut z = vec![0.0; fo];
                let mut ez = vec![0.0; fo];
                for j in 0..fo {
                    let bias = params[lo.bias + e * fo + j] as f64;
                    let (mut sum, mut prop, mut mag) = (bias, 0.0, 0.0);
                    for k in 0..fi {
                        sum += a[k] * w(k, j);
                        prop += w(k, j).abs() * ea[k];
                        mag += (a[k].abs() + ea[k]) * w(k, j).abs();
                    }
                    z[j] = sum;
                    ez[j] = prop + (2.0 * u + u * u) * mag + gamma(fi + 1) * (mag + bias.abs());
                }
                if l < shape.num_layers {
                    a = z.iter().map(|&v| act(v)).collect();
                    ea = ez
                        .iter()
                        .zip(&a)
                        .map(|(e, v)| lip * e + 8.0 * ulp * v.abs())
                        .collect();
                } else {
                    for j in 0..d {
                        let o = (e * rows + r) * d + j;
                        mb[o] = ez[j];
                        if shape.probabilistic {
                            let (hi, lo) = (
                                params[lay.max_logvar + j] as f64,
                                params[lay.min_logvar + j] as f64,
                            );
                            lb[o] = ez[d + j] + 8.0 * ulp * (hi.abs() + lo.abs() + z[d + j].abs());
                        }
                    }
                }
            }
        }
    }
    (mb, lb)
}

/// The TF32 tensor-core tile products (`CudaOptions::tensor_cores`) on PoCL, where the
/// rounding and the mma's fragment layout are emulated (mlp.cuh): every output of the
/// ensemble forward lies within the TF32 bound of `forward_error_bounds` plus the f32
/// bound of the CPU result, on awkward sizes (37 rows: a second tile of 5; widths 13 and
/// 200: partial n8 tiles and chunks), and the products really are TF32 (some output differs
/// from the f32 result by more than f32 rounding could). The cart-pole configuration's
/// rollout on these products serves the same full tiles, with issued / useful ≤ 1.15 (the
/// mma's k8 steps pad the 5-wide input layer to 8).
#[test]
fn tensor_core_products_on_pocl_should_stay_within_the_tf32_bound() {
    let Some(b) = pocl_backend(CudaOptions {
        tensor_cores: true,
        counters: true,
        ..CudaOptions::default()
    }) else {
        return;
    };
    let plain = pocl_backend(CudaOptions::default()).expect("PoCL was found above");
    let cpu = CpuBackend::new();
    let rows = 37;
    let shapes = [
        (5, 4, 200, 4, Activation::Silu, true),
        (7, 3, 13, 2, Activation::Tanh, false),
        (4, 9, 64, 3, Activation::Relu, true),
        (6, 5, 50, 1, Activation::Relu, true),
    ];
    for (si, &(din, dout, hidden, layers, activation, probabilistic)) in shapes.iter().enumerate() {
        let shape = EnsembleShape {
            ensemble: 3,
            in_dim: din,
            out_dim: dout,
            hidden,
            num_layers: layers,
            activation,
            probabilistic,
        };
        let params = random_params(&shape, 300 + si as u64);
        let norm = norm_stats(din, 310 + si as u64);
        let x = normals(320 + si as u64, shape.ensemble * rows * din, 1.5);
        let n = shape.ensemble * rows * dout;
        let (mut cm, mut cl) = (unwritten(n), unwritten(n));
        cpu.ensemble_forward(&shape, &params, &norm, &x, rows, &mut cm, &mut cl)
            .unwrap();
        let (dp, dn, dx) = (
            b.upload(&params).unwrap(),
            b.upload(&norm).unwrap(),
            b.upload(&x).unwrap(),
        );
        let (mut dm, mut dl) = (poisoned(&b, n), poisoned(&b, n));
        b.ensemble_forward(&shape, &dp, &dn, &dx, rows, &mut dm, &mut dl)
            .unwrap();
        let (gm, gl) = (b.download(&dm).unwrap(), b.download(&dl).unwrap());
        // The same forward on the f32 tile products, to tell TF32's rounding from f32's.
        let (pp, pn, px) = (
            plain.upload(&params).unwrap(),
            plain.upload(&norm).unwrap(),
            plain.upload(&x).unwrap(),
        );
        let (mut pm, mut pl) = (poisoned(&plain, n), poisoned(&plain, n));
        plain
            .ensemble_forward(&shape, &pp, &pn, &px, rows, &mut pm, &mut pl)
            .unwrap();
        let (fm32, fl32) = (plain.download(&pm).unwrap(), plain.download(&pl).unwrap());
        let (tm, tl) = forward_error_bounds(&shape, &params, &norm, &x, rows, 2f64.powi(-11));
        let (fm, fl) = forward_error_bounds(&shape, &params, &norm, &x, rows, 0.0);
        let mut outputs = vec![(&gm, &cm, &tm, &fm, &fm32, "mean")];
        if probabilistic {
            outputs.push((&gl, &cl, &tl, &fl, &fl32, "logvar"));
        }
        for (got, want, tb, fb, f32_dev, what) in outputs {
            let (mut worst_ratio, mut worst_rel, mut worst_f32) = (0.0f64, 0.0f64, 0.0f64);
            for i in 0..n {
                let diff = (got[i] as f64 - want[i] as f64).abs();
                let bound = tb[i] + fb[i];
                assert!(
                    diff <= bound,
                    "{shape:?} {what}[{i}]: TF32 {} vs f32 {}: |diff| {diff:e} above the bound \
                     {bound:e}",
                    got[i],
                    want[i]
                );
                worst_ratio = worst_ratio.max(diff / bound);
                worst_rel = worst_rel.max(diff / (1.0 + want[i].abs() as f64));
                let d32 = (f32_dev[i] as f64 - want[i] as f64).abs();
                worst_f32 = worst_f32.max(d32 / (1.0 + want[i].abs() as f64));
            }
            eprintln!(
                "tf32 forward {layers} × {hidden} {activation:?} {what}: worst |diff| / bound \
                 {worst_ratio:.2e}, worst |diff| / (1 + |f32|) {worst_rel:.2e} (f32 tiles: \
                 {worst_f32:.2e})"
            );
            assert!(
                worst_rel > 10.0 * worst_f32.max(1e-7),
                "{shape:?} {what}: as close to the CPU as the f32 tiles: TF32 not in use?"
            );
        }
    }
    // The rollout on tensor cores at the cart-pole configuration, with the counters.
    b.reset_kernel_counters().unwrap();
    check_tf32_cartpole_rollout(&b, "PoCL tf32");
    let c = b.kernel_counters().unwrap().expect("counting");
    eprintln!(
        "tf32 rollout at the cart-pole configuration: {:.2} rows per staged chunk, issued / \
         useful {:.3}",
        c.rows_per_stage(),
        c.issued_per_useful()
    );
    assert!(c.rows_per_stage() >= 31.0, "{c:?}");
    assert!(c.issued_per_useful() <= 1.15, "{c:?}");
}

/// `c` on `b` (the CPU reference or a device), through `common::rollout_on`.
fn run_case<B: Backend>(b: &B, c: &RolloutCase) -> Vec<f32> {
    rollout_on(b, &c.p, &c.shape, &c.params, &c.norm, &c.start, &c.actions)
}

/// A model rollout's inputs on the host.
struct RolloutCase {
    p: RolloutParams,
    shape: EnsembleShape,
    params: Vec<f32>,
    norm: Vec<f32>,
    start: Vec<f32>,
    actions: Vec<f32>,
}

/// mbrl-lib's cart-pole configuration: 5 members of 4 × 200 SiLU, 350 candidates × 20
/// particles (two steps of the 15: the kernels' figures are per layer product), a head
/// scaled down so that the particles stay alive, actions uniform in [−1, 1].
fn cartpole_configuration(prop: Propagation, elites: &[u32], learn_reward: bool) -> RolloutCase {
    let env = EnvId::CartPole;
    let spec = env.spec();
    let shape = EnsembleShape {
        ensemble: 5,
        in_dim: spec.obs_dim + spec.act_dim,
        out_dim: spec.obs_dim + learn_reward as usize,
        hidden: 200,
        num_layers: 4,
        activation: Activation::Silu,
        probabilistic: true,
    };
    let mut p = rollout_params(env, prop, learn_reward, elites);
    p.population = 350;
    p.particles = 20;
    p.horizon = 2;
    let mut params = random_params(&shape, 77);
    let head = shape.layout().layers[shape.num_layers];
    for w in &mut params[head.weight..head.bias + shape.ensemble * head.fan_out] {
        *w *= 0.02;
    }
    let mut state = vec![0.0f32; spec.state_dim];
    let mut start = vec![0.0f32; spec.obs_dim];
    env.reset_state(79, &mut state);
    env.observe(&state, &mut start);
    RolloutCase {
        norm: norm_stats(shape.in_dim, 78),
        actions: uniforms(
            80,
            (p.population * p.horizon) as usize * spec.act_dim,
            -1.0,
            1.0,
        ),
        p,
        shape,
        params,
        start,
    }
}

/// A TS∞ rollout at mbrl-lib's cart-pole configuration (5 × 4×200, 350 × 20 rows, two
/// steps) on a backend planning with TF32 products, against the f32 CPU: cart-pole returns
/// count the steps alive, and TF32 may move a particle across the angle threshold, not more
/// than a few of a candidate's 20 (mean ≤ 0.25 steps off).
fn check_tf32_cartpole_rollout<B: Backend>(b: &B, label: &str) {
    let c = cartpole_configuration(Propagation::TsInf, &[0, 1, 2, 3, 4], false);
    let (got, want) = (run_case(b, &c), run_case(&CpuBackend::new(), &c));
    let e = assert_close(
        &format!("{label} cart-pole rollout"),
        &got,
        &want,
        0.25,
        0.0,
    );
    eprintln!("{label} cart-pole rollout: worst return difference {e}");
}

/// Issue 9's efficiency goals at mbrl-lib's cart-pole configuration (5 members of 4 × 200
/// SiLU, 350 candidates × 20 particles; two steps of the 15 suffice, the figures are per
/// layer product), from the tile engine's debug counters on PoCL: rows served per staged
/// weight chunk ≥ 31 of the 32 a tile holds (the rows of one member fill whole tiles but the
/// last: 7000 / 5 members ≈ 1400 rows = 43.75 tiles), issued / useful multiply-adds ≤ 1.15
/// (200-wide layers as a 128- and a 72-column chunk). Before rows were grouped by member
/// across the population a tile of 32 consecutive rows held ≈ 5 members (≈ 6.4 rows per
/// staged chunk) and every chunk was 128 columns wide (1.47). The returns still match the
/// CPU (tolerance of `check_rollout`), here with many tiles per member and a repeated elite.
#[test]
fn rollout_tiles_should_serve_full_tiles_of_one_member() {
    let Some(b) = pocl_backend(CudaOptions {
        counters: true,
        ..CudaOptions::default()
    }) else {
        return;
    };
    // Cart-pole's reward is 1 per step; a learned reward makes the returns depend on every
    // layer's arithmetic (the repeated-elite case).
    for (prop, elites, learn_reward) in [
        (Propagation::TsInf, &[0u32, 1, 2, 3, 4][..], false),
        (Propagation::Ts1, &[0, 1, 2, 3, 4][..], false),
        (Propagation::Ts1, &[3, 0, 3, 1][..], true),
        (Propagation::Expectation, &[0, 1, 2, 3, 4][..], false),
    ] {
        let c = cartpole_configuration(prop, elites, learn_reward);
        let want = run_case(&CpuBackend::new(), &c);
        b.reset_kernel_counters().unwrap();
        let got = run_case(&b, &c);
        let (p, shape) = (c.p, c.shape);
        let what = format!("cart-pole configuration {prop:?} elites {elites:?}");
        let e = assert_close(&what, &got, &want, 2e-5, 2e-5);
        let mut distinct: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        eprintln!("{what}: {} distinct returns", distinct.len());
        let k = b.kernel_counters().unwrap().expect("a counting backend");
        let (rows, ratio) = (k.rows_per_stage(), k.issued_per_useful());
        eprintln!(
            "{what}: worst {e:e}; {rows:.2} rows per staged weight chunk, issued / useful \
             multiply-adds {ratio:.3} ({k:?})"
        );
        // Every row's every layer product, counted once: rows × steps × (members per row)
        // × Σ fan_in · fan_out.
        let per_row: usize = shape
            .layout()
            .layers
            .iter()
            .map(|l| l.fan_in * l.fan_out)
            .sum();
        let members = if prop == Propagation::Expectation {
            elites.len()
        } else {
            1
        };
        let rows_total = (p.population * p.particles * p.horizon) as usize;
        assert_eq!(
            k.useful_macs,
            (rows_total * members * per_row) as u64,
            "{what}"
        );
        assert!(
            rows >= 31.0,
            "{what}: {rows:.2} rows per staged weight chunk"
        );
        assert!(ratio <= 1.15, "{what}: issued / useful {ratio:.3}");
    }
    // Without the debug variant there is nothing to read.
    let plain = pocl_backend(CudaOptions::default()).expect("PoCL was found above");
    assert_eq!(plain.kernel_counters().unwrap(), None);
}

/// The bf16 packing follows its source: after a `write` or an Adam step on the parameter
/// buffer, the forward through the packed weights equals a forward from a fresh upload of
/// the new parameters (bit for bit: the same device arithmetic), not the old ones.
#[test]
fn bf16_packs_should_follow_parameter_writes() {
    use mbrl_gpu::backend::AdamParams;
    use mbrl_gpu::model::{Ensemble, ModelConfig};
    let Some(b) = pocl_backend(CudaOptions {
        bf16_weights: true,
        tensor_cores: false,
        ..CudaOptions::default()
    }) else {
        return;
    };
    let mut cfg = ModelConfig::pets(3, 1);
    cfg.hidden = 24;
    cfg.num_layers = 2;
    let (m1, m2) = (
        Ensemble::new(cfg.clone(), 1).unwrap(),
        Ensemble::new(cfg, 2).unwrap(),
    );
    let shape = m1.shape();
    let rows = 9;
    let x: Vec<f32> = (0..shape.ensemble * rows * shape.in_dim)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
        .collect();
    let (norm, xb) = (b.upload(&m1.norm()).unwrap(), b.upload(&x).unwrap());
    let n = shape.ensemble * rows * shape.out_dim;
    let forward = |params: &<CudaBackend<PoclHost> as Backend>::Buf| {
        let (mut mean, mut logvar) = (b.zeros(n).unwrap(), b.zeros(n).unwrap());
        b.ensemble_forward(&shape, params, &norm, &xb, rows, &mut mean, &mut logvar)
            .unwrap();
        b.download(&mean).unwrap()
    };
    let mut params = b.upload(&m1.params).unwrap();
    let first = forward(&params);
    b.write(&mut params, &m2.params).unwrap();
    let after_write = forward(&params);
    assert_ne!(after_write, first, "the written parameters must be used");
    assert_eq!(after_write, forward(&b.upload(&m2.params).unwrap()));
    let grad = b.upload(&vec![0.5f32; m2.params.len()]).unwrap();
    let (mut m, mut v) = (
        b.zeros(m2.params.len()).unwrap(),
        b.zeros(m2.params.len()).unwrap(),
    );
    let p = AdamParams {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 1,
        len: m2.params.len() as u32,
        _pad: [0; 2],
    };
    b.adam_step(&p, &mut params, &grad, &mut m, &mut v).unwrap();
    let after_adam = forward(&params);
    assert_ne!(
        after_adam, after_write,
        "the updated parameters must be used"
    );
    let stepped = b.download(&params).unwrap();
    assert_eq!(after_adam, forward(&b.upload(&stepped).unwrap()));
}

/// Training keeps each minibatch's losses on the device until its epoch ends: the host waits
/// for the device a fixed number of times per epoch (the epoch's losses, then the evaluation),
/// however many minibatches the epoch has.
#[test]
fn training_should_synchronise_per_epoch_not_per_minibatch() {
    use mbrl_gpu::backend::cuda::host::CountingHost;
    use mbrl_gpu::model::train::{train, TrainConfig};
    use mbrl_gpu::model::{Ensemble, ModelConfig, Transitions};
    let Some(h) = pocl() else { return };
    let b = CudaBackend::with_host(CountingHost::new(h), CudaOptions::default());
    let mut data = Transitions::new(3, 1);
    let mut g = Philox::new(3, 0, 0);
    for _ in 0..96 {
        let o: Vec<f32> = (0..3).map(|_| g.normal()).collect();
        let a = [g.normal()];
        let n: Vec<f32> = o.iter().map(|v| 0.9 * v + 0.1 * a[0]).collect();
        data.push(&o, &a, &n, None);
    }
    let mut cfg = ModelConfig::pets(3, 1);
    cfg.hidden = 16;
    cfg.num_layers = 2;
    let syncs = |batch_size: usize| {
        let mut model = Ensemble::new(cfg.clone(), 5).unwrap();
        let tc = TrainConfig {
            epochs: 3,
            batch_size,
            holdout_ratio: 0.25,
            patience: Some(10),
            ..TrainConfig::default()
        };
        let before = b.host().counts();
        train(&b, &mut model, &data, &tc, |_| {}).unwrap();
        let d = b.host().counts().since(&before);
        eprintln!("batch {batch_size}: {d}");
        d
    };
    let (few, many) = (syncs(36), syncs(8));
    let steps = |d: &mbrl_gpu::backend::cuda::host::HostCounts| d.launches["adam_step"];
    assert!(steps(&many) >= 3 * steps(&few), "{few} / {many}");
    // The holdout evaluation before the first epoch, then per epoch: the losses (after the
    // epoch's last step; the parameters read after them wait for nothing) and the evaluation.
    assert_eq!(few.syncs, many.syncs, "{few} / {many}");
    assert_eq!(many.syncs, 1 + 2 * 3, "{many}");
}

/// What a SAC update on the device costs the host, counted on PoCL through the production host
/// code: no upload, download or allocation once the replay mirror is current, and a fixed
/// number of launches.
#[test]
fn sac_update_host_costs_on_pocl_should_stay_fixed() {
    use mbrl_gpu::backend::cuda::host::CountingHost;
    use mbrl_gpu::policy::device::{DeviceReplay, DeviceSac};
    use mbrl_gpu::policy::sac::{Sac, SacConfig};
    use mbrl_gpu::policy::Replay;
    let Some(h) = pocl() else { return };
    let b = CudaBackend::with_host(CountingHost::new(h), CudaOptions::default());
    let cfg = SacConfig {
        hidden: 16,
        batch_size: 32,
        ..SacConfig::default()
    };
    let agent = Sac::new(cfg, 3, &[-2.0], &[2.0], 1).unwrap();
    let mut replay = Replay::new(3, 1, 100);
    for i in 0..50 {
        let v = i as f32 * 0.01;
        replay.push(&[v, -v, 0.5], &[v], v, &[v, v, v], i % 9 == 4);
    }
    let mut dev = DeviceSac::new(&b, &agent).unwrap();
    let mut ring = DeviceReplay::empty(&b).unwrap();
    ring.sync(&b, &replay).unwrap();
    dev.update_from(&ring, 1, 2, 0, 32).unwrap();
    for k in 1..4u32 {
        let before = b.host().counts();
        ring.sync(&b, &replay).unwrap();
        dev.update_from(&ring, 1, 2, k, 32).unwrap();
        let d = b.host().counts().since(&before);
        eprintln!("update {k}: {d}");
        assert_eq!(
            (d.uploads, d.downloads, d.allocations),
            (0, 0, 0),
            "update {k}: {d}"
        );
        // minibatch and noise (2); critics: actor forward at s', squash, target forward,
        // the batch's critic input, critic forward, TD gradient, the VJP with weight
        // gradients (backward + 3 layers' weight gradients + finish = 5), Adam (12 so far);
        // actor: forward, squash, critic forward, min-Q gradient, the input-only VJP (1),
        // squash backward, the actor's VJP (5), Adam; temperature Adam; Polyak (every update
        // at the default interval 1).
        assert_eq!(d.total_launches(), 2 + 12 + 12 + 1 + 1, "update {k}: {d}");
    }
    // A new transition costs one ranged upload of one packed row.
    replay.push(&[0.1, 0.2, 0.3], &[0.4], 0.5, &[0.6, 0.7, 0.8], false);
    let before = b.host().counts();
    ring.sync(&b, &replay).unwrap();
    let d = b.host().counts().since(&before);
    assert_eq!((d.uploads, d.upload_bytes), (1, 4 * 9), "{d}");
}

/// What a branched rollout on the device costs the host, counted on PoCL through the
/// production host code: no upload at all (start states and noise are drawn on the device,
/// the first step ignores the stop flags), the count and then only the added rows read back
/// for the host's copy of D_model (two reads where they wrap the ring), the minibatch draw
/// of the start states and six launches per step; a second rollout allocates nothing.
#[test]
fn a_branched_rollout_on_pocl_should_upload_nothing() {
    use mbrl_gpu::backend::cuda::host::CountingHost;
    let Some(h) = pocl() else { return };
    let b = CudaBackend::with_host(CountingHost::new(h), CudaOptions::default());
    let c = common::branch::case(EnvId::Pendulum, false, true);
    let mut out = c.model_data.clone();
    let mut dev = common::branch::OnDevice::new(&b, &c, &out);
    let width = out.packed_width() as u64;
    for (batch, name) in [(0, "first"), (1, "second")] {
        let spec = common::branch::spec(&c, batch);
        let before = b.host().counts();
        let start = out.written() % out.capacity();
        let n = dev.branch(&spec, &mut out).unwrap();
        let d = b.host().counts().since(&before);
        eprintln!("{name} rollout of {} rows × {} steps: {d}", spec.rows, c.k);
        assert_eq!(n, spec.rows * c.k);
        assert_eq!(d.total_launches(), 1 + 6 * c.k as u64, "{d}");
        // The count, then the added rows only (a second read where they wrap the ring).
        let wraps = start + n > out.capacity();
        assert_eq!(d.uploads, 0, "{d}");
        assert_eq!(d.downloads, 2 + wraps as u64, "{d}");
        assert_eq!(d.download_bytes, 4 + 4 * width * n as u64, "{d}");
        if batch == 1 {
            assert_eq!(
                d.allocations, 0,
                "the second rollout reuses the first's buffers: {d}"
            );
        }
    }
}
