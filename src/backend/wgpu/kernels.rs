//! WGSL modules, the kernels (entry points) each operation uses, and the pipeline cache.
//!
//! Every module is `common.wgsl` plus one op-family file from `shaders/`; the ensemble
//! module is built twice, with f32 weights and (where the device has SHADER_F16) with f16
//! weights. A kernel's pipeline and layouts are created the first time it is used and kept
//! for the life of the backend.
use super::device::Gpu;
use crate::Result;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const ENSEMBLE: &str = include_str!("../../../shaders/ensemble.wgsl");
const OPTIM: &str = include_str!("../../../shaders/optim.wgsl");
const CEM: &str = include_str!("../../../shaders/cem.wgsl");
const MPPI: &str = include_str!("../../../shaders/mppi.wgsl");
const ROLLOUT: &str = include_str!("../../../shaders/rollout.wgsl");
const RNG: &str = include_str!("../../../shaders/rng.wgsl");
const SAC: &str = include_str!("../../../shaders/sac.wgsl");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Module {
    Ensemble,
    /// The ensemble module with `WeightT = f16` (GEMM weights in half precision).
    EnsembleF16,
    Optim,
    Cem,
    Mppi,
    Rollout,
    Rng,
    Sac,
}

impl Module {
    fn source(self) -> String {
        let (prelude, body) = match self {
            Module::Ensemble => ("alias WeightT = f32;\n", ENSEMBLE),
            Module::EnsembleF16 => ("enable f16;\nalias WeightT = f16;\n", ENSEMBLE),
            Module::Optim => ("", OPTIM),
            Module::Cem => ("", CEM),
            Module::Mppi => ("", MPPI),
            Module::Rollout => ("", ROLLOUT),
            Module::Rng => ("", RNG),
            Module::Sac => ("", SAC),
        };
        format!("{prelude}{COMMON}\n{body}")
    }

    fn name(self) -> &'static str {
        match self {
            Module::Ensemble => "ensemble.wgsl",
            Module::EnsembleF16 => "ensemble.wgsl (f16 weights)",
            Module::Optim => "optim.wgsl",
            Module::Cem => "cem.wgsl",
            Module::Mppi => "mppi.wgsl",
            Module::Rollout => "rollout.wgsl",
            Module::Rng => "rng.wgsl",
            Module::Sac => "sac.wgsl",
        }
    }
}

const RO: bool = true;
const RW: bool = false;

/// An entry point and its interface: the group-0 uniform (binding, bytes) and the group-1
/// storage bindings (binding, read-only) in the order operations pass their buffers.
pub(super) struct Spec {
    pub module: Module,
    pub entry: &'static str,
    pub uniform: (u32, usize),
    pub storage: &'static [(u32, bool)],
}

use super::params::*;
use crate::backend::{
    AdamParams, BranchParams, EliteParams, InitParams, MppiParams, PathParams, SacParams,
    SampleParams, UpdateParams,
};
use std::mem::size_of;

// ensemble.wgsl
pub(super) const GEMM: Spec = Spec {
    module: Module::Ensemble,
    entry: "gemm",
    uniform: (0, size_of::<GemmParams>()),
    // a, b (weights or dz), c, x (bias / weights / pre-activation), pre, tile members
    storage: &[(0, RO), (1, RO), (2, RW), (3, RO), (4, RW), (5, RO)],
};
pub(super) const GEMM_F16: Spec = Spec {
    module: Module::EnsembleF16,
    ..GEMM
};
pub(super) const NORMALIZE: Spec = Spec {
    module: Module::Ensemble,
    entry: "normalize",
    uniform: (1, size_of::<NormParams>()),
    // x, [mean, std], out
    storage: &[(6, RO), (7, RO), (8, RW)],
};
pub(super) const HEAD_SPLIT: Spec = Spec {
    module: Module::Ensemble,
    entry: "head_split",
    uniform: (2, size_of::<HeadParams>()),
    // raw head, params, mean, logvar
    storage: &[(9, RO), (10, RO), (11, RW), (12, RW)],
};
pub(super) const NLL_HEAD: Spec = Spec {
    module: Module::Ensemble,
    entry: "nll_head",
    uniform: (2, size_of::<HeadParams>()),
    // raw head, params, target, d head, row loss, row d-bounds
    storage: &[(9, RO), (10, RO), (13, RO), (14, RW), (15, RW), (16, RW)],
};
pub(super) const VJP_HEAD: Spec = Spec {
    module: Module::Ensemble,
    entry: "vjp_head",
    uniform: (2, size_of::<HeadParams>()),
    // raw head, params, d mean, d logvar, d head, row d-bounds
    storage: &[(9, RO), (10, RO), (21, RO), (22, RO), (14, RW), (16, RW)],
};
pub(super) const REDUCE_ROWS: Spec = Spec {
    module: Module::Ensemble,
    entry: "reduce_rows",
    uniform: (3, size_of::<ReduceParams>()),
    storage: &[(17, RO), (18, RW)],
};
pub(super) const WEIGHTS_CONVERT_F16: Spec = Spec {
    module: Module::EnsembleF16,
    entry: "weights_convert",
    uniform: (4, size_of::<ConvertParams>()),
    storage: &[(19, RO), (20, RW)],
};

// sac.wgsl
pub(super) const SAC_SQUASH: Spec = Spec {
    module: Module::Sac,
    entry: "sac_squash",
    uniform: (0, size_of::<SacParams>()),
    // head, eps, obs, [scale, bias], given actions, log π, critic input
    storage: &[
        (0, RO),
        (1, RO),
        (2, RO),
        (3, RO),
        (4, RO),
        (5, RW),
        (6, RW),
    ],
};
pub(super) const SAC_CRITIC_GRAD: Spec = Spec {
    module: Module::Sac,
    entry: "sac_critic_grad",
    uniform: (0, size_of::<SacParams>()),
    // target Q, log π(s'), reward, mask, log α, Q, dQ, stats
    storage: &[
        (7, RO),
        (8, RO),
        (9, RO),
        (10, RO),
        (11, RO),
        (12, RO),
        (13, RW),
        (14, RW),
    ],
};
pub(super) const SAC_ACTOR_GRAD: Spec = Spec {
    module: Module::Sac,
    entry: "sac_actor_grad",
    uniform: (0, size_of::<SacParams>()),
    // Q, log π, log α, dQ, α gradient, stats
    storage: &[(12, RO), (8, RO), (11, RO), (13, RW), (15, RW), (14, RW)],
};
pub(super) const SAC_SQUASH_BACKWARD: Spec = Spec {
    module: Module::Sac,
    entry: "sac_squash_backward",
    uniform: (0, size_of::<SacParams>()),
    // head, eps, [scale, bias], critic input gradient, log α, d head
    storage: &[(0, RO), (1, RO), (3, RO), (16, RO), (11, RO), (17, RW)],
};
pub(super) const SAC_NOISE: Spec = Spec {
    module: Module::Sac,
    entry: "sac_noise",
    uniform: (0, size_of::<SacParams>()),
    // eps (next states), eps (policy)
    storage: &[(20, RW), (21, RW)],
};
pub(super) const SAC_MINIBATCH: Spec = Spec {
    module: Module::Sac,
    entry: "sac_minibatch",
    uniform: (0, size_of::<SacParams>()),
    // ring, obs, act, reward, next obs, mask
    storage: &[(22, RO), (23, RW), (24, RW), (25, RW), (26, RW), (27, RW)],
};
pub(super) const POLYAK: Spec = Spec {
    module: Module::Sac,
    entry: "polyak",
    uniform: (0, size_of::<SacParams>()),
    // target, online
    storage: &[(18, RW), (19, RO)],
};

pub(super) const PATH_SQUASH: Spec = Spec {
    module: Module::Sac,
    entry: "path_squash",
    uniform: (1, size_of::<PathParams>()),
    // head, start states, noise, tape, model or critic input
    storage: &[(28, RO), (29, RO), (30, RO), (31, RW), (32, RW)],
};
pub(super) const PATH_TERMINAL: Spec = Spec {
    module: Module::Sac,
    entry: "path_terminal",
    uniform: (1, size_of::<PathParams>()),
    // Q, log α, tape, dQ, α gradient, report, statistics
    storage: &[
        (33, RO),
        (34, RO),
        (31, RW),
        (35, RW),
        (36, RW),
        (37, RW),
        (14, RW),
    ],
};
pub(super) const PATH_ACTOR_BACK: Spec = Spec {
    module: Module::Sac,
    entry: "path_actor_back",
    uniform: (1, size_of::<PathParams>()),
    // noise, tape, input gradient, back, d head, states
    storage: &[(30, RO), (38, RO), (39, RO), (40, RW), (41, RW), (42, RW)],
};
pub(super) const PATH_ACCUMULATE: Spec = Spec {
    module: Module::Sac,
    entry: "path_accumulate",
    uniform: (1, size_of::<PathParams>()),
    // step gradient, state gradient, gradient, back
    storage: &[(43, RO), (44, RO), (45, RW), (40, RW)],
};

// optim.wgsl
pub(super) const ADAM_STEP: Spec = Spec {
    module: Module::Optim,
    entry: "adam_step",
    uniform: (0, size_of::<AdamParams>()),
    // params, grad, m, v
    storage: &[(0, RW), (1, RO), (2, RW), (3, RW)],
};

// cem.wgsl
pub(super) const CEM_SAMPLE: Spec = Spec {
    module: Module::Cem,
    entry: "cem_sample",
    uniform: (0, size_of::<SampleParams>()),
    // mean, var, lower, upper, population
    storage: &[(0, RO), (1, RO), (2, RO), (3, RO), (4, RW)],
};
pub(super) const CEM_INIT: Spec = Spec {
    module: Module::Cem,
    entry: "cem_init",
    uniform: (2, size_of::<InitParams>()),
    // lower, upper, previous plan, mean, var
    storage: &[(2, RO), (3, RO), (11, RO), (12, RW), (13, RW)],
};
pub(super) const CEM_RANK: Spec = Spec {
    module: Module::Cem,
    entry: "cem_rank",
    uniform: (1, size_of::<UpdateParams>()),
    // returns, elite indices
    storage: &[(5, RO), (6, RW)],
};
pub(super) const CEM_UPDATE: Spec = Spec {
    module: Module::Cem,
    entry: "cem_update",
    uniform: (1, size_of::<UpdateParams>()),
    // population, elite indices, mean, var
    storage: &[(7, RO), (8, RO), (9, RW), (10, RW)],
};
pub(super) const CEM_GATHER: Spec = Spec {
    module: Module::Cem,
    entry: "cem_gather",
    uniform: (3, size_of::<EliteParams>()),
    // population, returns, elite indices, elites, elite returns
    storage: &[(14, RO), (15, RO), (16, RO), (17, RW), (18, RW)],
};
pub(super) const CEM_KEEP: Spec = Spec {
    module: Module::Cem,
    entry: "cem_keep",
    uniform: (3, size_of::<EliteParams>()),
    // elites, mean, population
    storage: &[(19, RO), (20, RO), (21, RW)],
};

// mppi.wgsl
pub(super) const MPPI_SAMPLE: Spec = Spec {
    module: Module::Mppi,
    entry: "mppi_sample",
    uniform: (0, size_of::<MppiParams>()),
    // nominal, Cholesky factor, lower, upper, population
    storage: &[(0, RO), (1, RO), (2, RO), (3, RO), (4, RW)],
};
pub(super) const MPPI_COST: Spec = Spec {
    module: Module::Mppi,
    entry: "mppi_cost",
    uniform: (0, size_of::<MppiParams>()),
    // population, returns, precision, nominal, costs
    storage: &[(5, RO), (6, RO), (7, RO), (8, RO), (9, RW)],
};
pub(super) const MPPI_UPDATE: Spec = Spec {
    module: Module::Mppi,
    entry: "mppi_update",
    uniform: (0, size_of::<MppiParams>()),
    // population, costs, nominal
    storage: &[(10, RO), (11, RO), (12, RW)],
};

// rollout.wgsl
pub(super) const ROLLOUT_INIT: Spec = Spec {
    module: Module::Rollout,
    entry: "rollout_init",
    uniform: (0, size_of::<RolloutStep>()),
    // start, state, row returns, row flags
    storage: &[(0, RO), (1, RW), (2, RW), (3, RW)],
};
pub(super) const ROLLOUT_GROUP: Spec = Spec {
    module: Module::Rollout,
    entry: "rollout_group",
    uniform: (0, size_of::<RolloutStep>()),
    // perm, inverse perm, tile members
    storage: &[(4, RW), (5, RW), (6, RW)],
};
pub(super) const ROLLOUT_GATHER: Spec = Spec {
    module: Module::Rollout,
    entry: "rollout_gather",
    uniform: (0, size_of::<RolloutStep>()),
    // state, perm, actions, norm, model input
    storage: &[(1, RW), (7, RO), (9, RO), (10, RO), (11, RW)],
};
pub(super) const ROLLOUT_STEP: Spec = Spec {
    module: Module::Rollout,
    entry: "rollout_step",
    uniform: (0, size_of::<RolloutStep>()),
    // state, row returns, row flags, inverse perm, actions, head, params
    storage: &[
        (1, RW),
        (2, RW),
        (3, RW),
        (8, RO),
        (9, RO),
        (12, RO),
        (13, RO),
    ],
};
pub(super) const ROLLOUT_VALUE: Spec = Spec {
    module: Module::Rollout,
    entry: "rollout_value",
    uniform: (0, size_of::<RolloutStep>()),
    // row returns, row flags, critics' values
    storage: &[(2, RW), (3, RW), (23, RO)],
};
pub(super) const ROLLOUT_REDUCE: Spec = Spec {
    module: Module::Rollout,
    entry: "rollout_reduce",
    uniform: (0, size_of::<RolloutStep>()),
    // row returns, row flags, returns
    storage: &[(2, RW), (3, RW), (14, RW)],
};
pub(super) const ROLLOUT_TRUE: Spec = Spec {
    module: Module::Rollout,
    entry: "rollout_true",
    uniform: (0, size_of::<RolloutStep>()),
    // start, actions, returns
    storage: &[(0, RO), (9, RO), (14, RW)],
};

pub(super) const BRANCH_ROUTE: Spec = Spec {
    module: Module::Rollout,
    entry: "branch_route",
    uniform: (1, size_of::<BranchParams>()),
    // model input (bound as the actions), route, grouped model input
    storage: &[(9, RO), (15, RW), (16, RW)],
};
pub(super) const BRANCH_STEP: Spec = Spec {
    module: Module::Rollout,
    entry: "branch_step",
    uniform: (1, size_of::<BranchParams>()),
    // route, mean, logvar, model input (bound as the actions), obs, stopped, count, ring
    storage: &[
        (15, RW),
        (17, RO),
        (18, RO),
        (9, RO),
        (19, RW),
        (20, RW),
        (21, RW),
        (22, RW),
    ],
};

pub(super) const PATH_STEP: Spec = Spec {
    module: Module::Rollout,
    entry: "path_step",
    uniform: (2, size_of::<PathParams>()),
    // mean, logvar, noise, tape, next states
    storage: &[(24, RO), (25, RO), (26, RO), (27, RW), (28, RW)],
};
pub(super) const PATH_MODEL_BACK: Spec = Spec {
    module: Module::Rollout,
    entry: "path_model_back",
    uniform: (2, size_of::<PathParams>()),
    // noise, tape, back, grouped model input, d mean, d logvar
    storage: &[(26, RO), (29, RO), (30, RW), (31, RW), (32, RW), (33, RW)],
};

// rng.wgsl
pub(super) const RNG_PHILOX: Spec = Spec {
    module: Module::Rng,
    entry: "rng_philox",
    uniform: (0, size_of::<RngParams>()),
    storage: &[(0, RW)],
};
pub(super) const RNG_SAMPLE: Spec = Spec {
    module: Module::Rng,
    entry: "rng_sample",
    uniform: (0, size_of::<RngParams>()),
    storage: &[(0, RW), (1, RW)],
};

/// A compiled entry point with its layouts.
pub(super) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub storage_layout: wgpu::BindGroupLayout,
    /// Group 0: the uniform arena, bound once with a dynamic offset.
    pub uniform_group: wgpu::BindGroup,
    pub storage: &'static [(u32, bool)],
    pub entry: &'static str,
}

impl Kernel {
    /// Group 1 with `buffers` in the order of the kernel's storage bindings.
    pub fn bind(&self, gpu: &Gpu, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        assert_eq!(
            buffers.len(),
            self.storage.len(),
            "{}: {} buffers for {} bindings",
            self.entry,
            buffers.len(),
            self.storage.len()
        );
        let entries: Vec<wgpu::BindGroupEntry> = self
            .storage
            .iter()
            .zip(buffers)
            .map(|(&(binding, _), buf)| wgpu::BindGroupEntry {
                binding,
                resource: buf.as_entire_binding(),
            })
            .collect();
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.entry),
            layout: &self.storage_layout,
            entries: &entries,
        })
    }
}

/// Compiled modules and kernels, created on first use.
#[derive(Default)]
pub(super) struct Cache {
    modules: HashMap<Module, wgpu::ShaderModule>,
    kernels: HashMap<(Module, &'static str), Arc<Kernel>>,
}

impl Cache {
    pub fn get(&mut self, gpu: &Gpu, spec: &Spec) -> Result<Arc<Kernel>> {
        if let Some(k) = self.kernels.get(&(spec.module, spec.entry)) {
            return Ok(k.clone());
        }
        if spec.module == Module::EnsembleF16 && !gpu.shader_f16 {
            return Err(crate::Error::Unavailable(format!(
                "wgpu: {} lacks SHADER_F16, so weights cannot be stored in f16",
                gpu.adapter.name
            )));
        }
        let module = match self.modules.get(&spec.module) {
            Some(m) => m.clone(),
            None => {
                let m = compile(gpu, spec.module)?;
                self.modules.insert(spec.module, m.clone());
                m
            }
        };
        let k = Arc::new(build(gpu, &module, spec)?);
        self.kernels.insert((spec.module, spec.entry), k.clone());
        Ok(k)
    }
}

fn compile(gpu: &Gpu, module: Module) -> Result<wgpu::ShaderModule> {
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let m = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(module.name()),
            source: wgpu::ShaderSource::Wgsl(module.source().into()),
        });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(crate::Error::Unavailable(format!(
            "wgpu: {} does not compile on {}: {e}",
            module.name(),
            gpu.adapter.name
        )));
    }
    Ok(m)
}

fn build(gpu: &Gpu, module: &wgpu::ShaderModule, spec: &Spec) -> Result<Kernel> {
    let dev = &gpu.device;
    let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
    let (ubind, usize_) = spec.uniform;
    let usize_ = (usize_ as u64).next_multiple_of(16);
    let uniform_layout = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(spec.entry),
        entries: &[wgpu::BindGroupLayoutEntry {
            binding: ubind,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: NonZeroU64::new(usize_),
            },
            count: None,
        }],
    });
    let storage: Vec<wgpu::BindGroupLayoutEntry> = spec
        .storage
        .iter()
        .map(|&(binding, read_only)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let storage_layout = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(spec.entry),
        entries: &storage,
    });
    let layout = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(spec.entry),
        bind_group_layouts: &[Some(&uniform_layout), Some(&storage_layout)],
        immediate_size: 0,
    });
    let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(spec.entry),
        layout: Some(&layout),
        module,
        entry_point: Some(spec.entry),
        compilation_options: Default::default(),
        cache: None,
    });
    let uniform_group = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(spec.entry),
        layout: &uniform_layout,
        entries: &[wgpu::BindGroupEntry {
            binding: ubind,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &gpu.arena,
                offset: 0,
                size: NonZeroU64::new(usize_),
            }),
        }],
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(crate::Error::Unavailable(format!(
            "wgpu: kernel {} of {} cannot be built on {}: {e}",
            spec.entry,
            spec.module.name(),
            gpu.adapter.name
        )));
    }
    Ok(Kernel {
        pipeline,
        storage_layout,
        uniform_group,
        storage: spec.storage,
        entry: spec.entry,
    })
}
