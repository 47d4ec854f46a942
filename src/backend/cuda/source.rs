//! Kernel sources and their compilation.
//!
//! `kernels/*.cu` are embedded in the library. A [`Program`] is one kernel file in one variant
//! (bf16 weights, tensor cores); its text is the variant's `#define`s, then `common.cuh`, then
//! `mlp.cuh` for the files that run the ensemble MLP, then the file itself. The same text is
//! compiled by NVRTC for CUDA and by an OpenCL C compiler (PoCL in the parity tests), so no
//! `#include` is needed at compile time.
//!
//! NVRTC output (PTX) is cached on disk under `$XDG_CACHE_HOME/mbrl-gpu/ptx` (or
//! `~/.cache/mbrl-gpu/ptx`), keyed by a hash of the source and the target architecture; a
//! second process on the same machine loads the PTX without compiling.
use crate::backend::Activation;
use crate::{Error, Result};
use std::path::PathBuf;

pub const COMMON: &str = include_str!("../../../kernels/common.cuh");
pub const MLP: &str = include_str!("../../../kernels/mlp.cuh");
pub const ENSEMBLE: &str = include_str!("../../../kernels/ensemble.cu");
pub const OPTIM: &str = include_str!("../../../kernels/optim.cu");
pub const CEM: &str = include_str!("../../../kernels/cem.cu");
pub const MPPI: &str = include_str!("../../../kernels/mppi.cu");
pub const ROLLOUT: &str = include_str!("../../../kernels/rollout.cu");
pub const SAC: &str = include_str!("../../../kernels/sac.cu");

/// One `.cu` file of `kernels/`; the stems mirror `src/backend/cpu/` and `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFile {
    Ensemble,
    Optim,
    Cem,
    Mppi,
    Rollout,
    Sac,
}

impl KernelFile {
    pub const ALL: [KernelFile; 6] = [
        KernelFile::Ensemble,
        KernelFile::Optim,
        KernelFile::Cem,
        KernelFile::Mppi,
        KernelFile::Rollout,
        KernelFile::Sac,
    ];

    /// File stem, as in `src/backend/cpu/<stem>.rs`.
    pub fn stem(self) -> &'static str {
        match self {
            KernelFile::Ensemble => "ensemble",
            KernelFile::Optim => "optim",
            KernelFile::Cem => "cem",
            KernelFile::Mppi => "mppi",
            KernelFile::Rollout => "rollout",
            KernelFile::Sac => "sac",
        }
    }

    /// Every entry point (`KERNEL` function) of the file.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            KernelFile::Ensemble => &[
                "ensemble_forward",
                "ensemble_nll_backward",
                "ensemble_nll_weight_grad",
                "ensemble_nll_finish",
                "ensemble_pack_bf16",
            ],
            KernelFile::Optim => &["adam_step"],
            KernelFile::Cem => &[
                "cem_init",
                "cem_sample",
                "cem_rank",
                "cem_update",
                "cem_gather",
                "cem_keep",
            ],
            KernelFile::Mppi => &["mppi_sample", "mppi_cost", "mppi_update"],
            KernelFile::Rollout => &[
                "rollout_group",
                "rollout",
                "rollout_reduce",
                "rollout_true",
                "rollout_value",
                "branch_route",
                "branch_step",
                "path_step",
                "path_model_back",
            ],
            KernelFile::Sac => &[
                "sac_squash",
                "sac_critic_grad",
                "sac_actor_grad",
                "sac_squash_backward",
                "polyak",
                "sac_noise",
                "sac_minibatch",
                "path_squash",
                "path_terminal",
                "path_actor_back",
                "path_accumulate",
            ],
        }
    }

    /// The entry points whose register pressure matters most (the CI compile test refuses
    /// spills in them).
    pub fn hot_entry_points(self) -> &'static [&'static str] {
        match self {
            KernelFile::Ensemble => &["ensemble_forward", "ensemble_nll_backward"],
            KernelFile::Rollout => &["rollout"],
            _ => &[],
        }
    }

    fn text(self) -> &'static str {
        match self {
            KernelFile::Ensemble => ENSEMBLE,
            KernelFile::Optim => OPTIM,
            KernelFile::Cem => CEM,
            KernelFile::Mppi => MPPI,
            KernelFile::Rollout => ROLLOUT,
            KernelFile::Sac => SAC,
        }
    }

    fn uses_mlp(self) -> bool {
        matches!(self, KernelFile::Ensemble | KernelFile::Rollout)
    }
}

/// A kernel file in one compile-time variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Program {
    pub file: KernelFile,
    /// Weights read from a bf16 copy (`MBRL_BF16_WEIGHTS`).
    pub bf16_weights: bool,
    /// TF32 `mma.sync` tile products (`MBRL_TENSOR_CORES`, CUDA sm_80+; OpenCL C emulates
    /// the TF32 rounding and the fragment layout, so PoCL checks the indexing).
    pub tensor_cores: bool,
    /// Debug counters of the tile engine (`MBRL_COUNTERS`): staged weight chunks, rows they
    /// served, issued and useful multiply-adds ([`super::KernelCounters`]).
    pub counters: bool,
    /// The hidden activation compiled in (`MBRL_ACT`); `None`: chosen at run time from the
    /// shape (the programs that serve every network: the gradient kernels, the others).
    pub activation: Option<Activation>,
}

impl Program {
    pub fn plain(file: KernelFile) -> Self {
        Program {
            file,
            bf16_weights: false,
            tensor_cores: false,
            counters: false,
            activation: None,
        }
    }

    /// Short name for file names and messages, e.g. `rollout+bf16`.
    pub fn label(&self) -> String {
        let mut s = self.file.stem().to_string();
        if self.bf16_weights {
            s.push_str("+bf16");
        }
        if self.tensor_cores {
            s.push_str("+tc");
        }
        if self.counters {
            s.push_str("+ctr");
        }
        match self.activation {
            Some(Activation::Silu) => s.push_str("+silu"),
            Some(Activation::Relu) => s.push_str("+relu"),
            Some(Activation::Tanh) => s.push_str("+tanh"),
            None => {}
        }
        s
    }
}

/// The complete source text of a program (defines, headers, file), for NVRTC or OpenCL C.
pub fn source(program: &Program) -> String {
    let f = program.file;
    let mut s = String::with_capacity(COMMON.len() + MLP.len() + f.text().len() + 256);
    s.push_str(&format!("// mbrl-gpu kernel program {}\n", program.label()));
    if program.bf16_weights {
        s.push_str("#define MBRL_BF16_WEIGHTS 1\n");
    }
    if program.tensor_cores {
        s.push_str("#define MBRL_TENSOR_CORES 1\n");
    }
    if program.counters {
        s.push_str("#define MBRL_COUNTERS 1\n");
    }
    if let Some(a) = program.activation {
        s.push_str(&format!("#define MBRL_ACT {}\n", a.code()));
    }
    s.push_str(COMMON);
    if f.uses_mlp() {
        s.push_str(MLP);
    }
    s.push_str(f.text());
    s
}

/// FNV-1a, 64 bits: a stable hash for cache keys (not for security).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Whether libnvrtc can be loaded (it is opened at run time; the build needs no toolkit).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its known names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compile a program to PTX for a virtual architecture such as `compute_90`.
pub fn compile_ptx(program: &Program, arch: &str) -> Result<String> {
    if !nvrtc_present() {
        return Err(Error::Unavailable(
            "NVRTC (libnvrtc.so) could not be loaded: install the nvidia-cuda-nvrtc wheel or a \
             CUDA toolkit and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        name: Some(format!("{}.cu", program.label())),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    };
    let src = source(program);
    let ptx = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(&src, opts))
        .map_err(|_| Error::Unavailable("NVRTC panicked while compiling the kernels".into()))?;
    match ptx {
        Ok(p) => Ok(p.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => Err(Error::Invalid(format!(
            "NVRTC failed to compile {} for {arch}:\n{}",
            program.label(),
            log.to_string_lossy()
        ))),
        Err(e) => Err(Error::Invalid(format!(
            "NVRTC failed on {} for {arch}: {e:?}",
            program.label()
        ))),
    }
}

/// The on-disk PTX cache folder, if a home or XDG cache folder is known.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("mbrl-gpu").join("ptx"))
}

/// PTX for `program` on a device of compute capability `cc`: from the disk cache when a
/// previous process compiled the same source for the same architecture, else compiled by
/// NVRTC and stored (written to a temporary file and renamed, so a reader never sees a torn
/// file). A cache that cannot be written is skipped silently: it only saves time.
pub fn ptx_for(program: &Program, cc: (i32, i32)) -> Result<String> {
    let arch = format!("compute_{}{}", cc.0, cc.1);
    let src = source(program);
    let key = fnv1a64(format!("{arch}\0{src}").as_bytes());
    let name = format!("{}-{arch}-{key:016x}.ptx", program.label());
    let dir = cache_dir();
    if let Some(d) = &dir {
        if let Ok(text) = std::fs::read_to_string(d.join(&name)) {
            if text.contains(".entry") {
                return Ok(text);
            }
        }
    }
    let ptx = compile_ptx(program, &arch)?;
    if let Some(d) = dir {
        if std::fs::create_dir_all(&d).is_ok() {
            let tmp = d.join(format!("{name}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, &ptx).is_ok() && std::fs::rename(&tmp, d.join(&name)).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    Ok(ptx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_should_carry_their_variant_and_headers() {
        let p = Program {
            file: KernelFile::Rollout,
            bf16_weights: true,
            tensor_cores: false,
            counters: false,
            activation: Some(Activation::Relu),
        };
        let s = source(&p);
        assert!(s.contains("#define MBRL_ACT 1"));
        assert_eq!(p.label(), "rollout+bf16+relu");
        assert!(s.contains("#define MBRL_BF16_WEIGHTS 1"));
        assert!(!s.contains("#define MBRL_TENSOR_CORES"));
        let (c, m, r) = (
            s.find("philox4x32_10").unwrap(),
            s.find("DEVFN void tile_gemm").unwrap(),
            s.find("KERNEL BOUNDS_MIN(256, 3) void rollout(").unwrap(),
        );
        assert!(c < m && m < r, "common.cuh, then mlp.cuh, then the file");
        assert!(!source(&Program::plain(KernelFile::Cem)).contains("tile_gemm"));
    }

    #[test]
    fn the_cache_hash_should_be_fnv1a() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
