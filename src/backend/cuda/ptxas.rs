//! What the compiled kernels cost a GPU, read without one: every program variant goes through
//! NVRTC and then `ptxas -v`, which assembles it for an architecture and reports registers,
//! static shared memory, stack and spills per entry point. `mbrl-gpu bench kernels` prints the
//! table; `tests/cuda_compile.rs` holds the hot kernels to their budgets.
//!
//! ptxas comes from the `nvidia-cuda-nvcc` wheel (`$MBRL_CUDA_TOOLS/bin/ptxas`, which
//! `scripts/test.sh` installs) or a CUDA toolkit on `PATH`.
use super::params::{rollout_words, MlpShape, REDUCE_FLOATS, TILE_ROWS};
use super::source::{compile_ptx, KernelFile, Program};
use crate::backend::{Activation, EnsembleShape};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What ptxas reports for one entry point of one program on one architecture.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelReport {
    pub program: String,
    pub sm: u32,
    pub name: String,
    pub registers: u32,
    /// Static shared memory, bytes (dynamic shared memory is sized at launch).
    pub smem: u32,
    pub stack: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// Shared memory per SM a block may use, in bytes, by architecture (sm_80: 164 KiB, sm_90:
/// 228 KiB); 1 KiB of it is reserved per resident block.
pub fn smem_per_sm(sm: u32) -> u32 {
    if sm >= 90 {
        228 * 1024
    } else {
        164 * 1024
    }
}

impl KernelReport {
    /// Resident blocks of `threads` threads per SM that the registers (64 K per SM,
    /// allocated per warp in units of 256) and the shared memory (static + `dynamic` bytes
    /// per block) allow, and the 2048-thread limit.
    pub fn blocks_per_sm(&self, threads: u32, dynamic: u32) -> u32 {
        let warps = threads.div_ceil(32);
        let regs_per_warp = (self.registers * 32).div_ceil(256) * 256;
        let by_regs = 65_536 / (regs_per_warp * warps).max(1);
        let by_smem = smem_per_sm(self.sm) / (self.smem + dynamic + 1024);
        let by_threads = 2048 / threads.max(1);
        by_regs.min(by_smem).min(by_threads).min(32)
    }
}

/// The ptxas to use: `$MBRL_CUDA_TOOLS/bin/ptxas`, else `ptxas` from a toolkit on `PATH`.
pub fn ptxas_path() -> Result<PathBuf> {
    if let Some(tools) = std::env::var_os("MBRL_CUDA_TOOLS") {
        let p = PathBuf::from(tools).join("bin").join("ptxas");
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Unavailable(format!(
                "MBRL_CUDA_TOOLS is set but there is no ptxas at {}",
                p.display()
            )))
        };
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ptxas"))
            .find(|p| p.is_file())
    });
    found.ok_or_else(|| {
        Error::Unavailable(
            "no ptxas: set MBRL_CUDA_TOOLS to the nvidia-cuda-nvcc wheel's nvidia/cu13 folder \
             (scripts/test.sh installs it under .tools/cuda) or put a CUDA toolkit on PATH"
                .into(),
        )
    })
}

/// Every program variant the backend can launch: each file as it serves any network, and
/// for the MLP files the f32, bf16-weight and tensor-core variants compiled for each hidden
/// activation (the debug counters' with `counters`, for SiLU).
pub fn programs(counters: bool) -> Vec<Program> {
    let mut v = vec![];
    for f in KernelFile::ALL {
        v.push(Program::plain(f));
        if !matches!(f, KernelFile::Ensemble | KernelFile::Rollout) {
            continue;
        }
        for activation in [Activation::Silu, Activation::Relu, Activation::Tanh] {
            for (bf16, tc) in [(false, false), (true, false), (false, true), (true, true)] {
                v.push(Program {
                    file: f,
                    bf16_weights: bf16,
                    tensor_cores: tc,
                    counters: false,
                    activation: Some(activation),
                });
            }
        }
        if counters {
            for tc in [false, true] {
                v.push(Program {
                    file: f,
                    bf16_weights: false,
                    tensor_cores: tc,
                    counters: true,
                    activation: Some(Activation::Silu),
                });
            }
        }
    }
    v
}

/// The number just before `unit` in `line` ("40 registers" → 40).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// The per-entry reports of a `ptxas -v` log.
pub fn parse_log(log: &str, program: &str, sm: u32) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = vec![];
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            out.push(KernelReport {
                program: program.to_string(),
                sm,
                name: rest.split('\'').next().unwrap_or("").to_string(),
                ..Default::default()
            });
        } else if let Some(r) = out.last_mut() {
            if line.contains("bytes stack frame") {
                r.stack = number_before(line, "bytes stack frame").unwrap_or(0);
                r.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                r.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                r.registers = number_before(line, "registers").unwrap_or(0);
                r.smem = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

/// A program's PTX for `compute_{sm}` and ptxas's reports for `sm_{sm}`, assembled in `dir`.
pub fn assemble(
    program: &Program,
    sm: u32,
    ptxas: &Path,
    dir: &Path,
) -> Result<(String, Vec<KernelReport>)> {
    let ptx = compile_ptx(program, &format!("compute_{sm}"))?;
    let path = dir.join(format!("{}-{sm}.ptx", program.label()));
    std::fs::write(&path, &ptx)
        .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
    let out = Command::new(ptxas)
        .arg("-v")
        .arg(format!("-arch=sm_{sm}"))
        .arg(&path)
        .arg("-o")
        .arg(dir.join(format!("{}-{sm}.cubin", program.label())))
        .output()
        .map_err(|e| Error::Unavailable(format!("running {}: {e}", ptxas.display())))?;
    let log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "ptxas failed on {} for sm_{sm}:\n{log}",
            program.label()
        )));
    }
    let reports = parse_log(&log, &program.label(), sm);
    for entry in program.file.entry_points() {
        if !reports.iter().any(|r| r.name == *entry) {
            return Err(Error::Invalid(format!(
                "{} for sm_{sm}: ptxas did not assemble entry point {entry}\n{log}",
                program.label()
            )));
        }
    }
    Ok((ptx, reports))
}

/// mbrl-lib's PETS cart-pole model (5 × 4 hidden layers of 200, 4 + 1 inputs, 4 outputs,
/// probabilistic): the size the README's occupancy figures are quoted at.
pub fn cartpole_model() -> EnsembleShape {
    EnsembleShape {
        ensemble: 5,
        in_dim: 5,
        out_dim: 4,
        hidden: 200,
        num_layers: 4,
        activation: Activation::Silu,
        probabilistic: true,
    }
}

/// Dynamic shared memory of the rollout at `shape` (observation width `obs_dim`), bytes.
pub fn rollout_dynamic_smem(shape: &EnsembleShape, obs_dim: usize) -> u32 {
    4 * rollout_words(&MlpShape::new(shape, TILE_ROWS), obs_dim) as u32
}

/// Dynamic shared memory the host gives entry point `entry` for a model of `shape` with
/// `obs_dim` observations (the sizes of src/backend/cuda/ensemble.rs and rollout.rs), bytes;
/// 0 for kernels without dynamic shared memory.
pub fn dynamic_smem(entry: &str, shape: &EnsembleShape, obs_dim: usize) -> u32 {
    let ms = MlpShape::new(shape, TILE_ROWS);
    match entry {
        "ensemble_forward" => 4 * ms.tile_floats() as u32,
        "ensemble_nll_backward" => 4 * (ms.tile_floats() + REDUCE_FLOATS) as u32,
        "rollout" => rollout_dynamic_smem(shape, obs_dim),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_reports_should_parse() {
        let log = "ptxas info    : Compiling entry function 'rollout' for 'sm_90'\n\
                   ptxas info    : Function properties for rollout\n    \
                   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
                   ptxas info    : Used 72 registers, used 1 barriers, 1024 bytes smem, 480 bytes cmem[0]\n";
        let r = &parse_log(log, "rollout", 90)[0];
        assert_eq!(
            (
                r.name.as_str(),
                r.registers,
                r.smem,
                r.stack,
                r.spill_stores,
                r.spill_loads
            ),
            ("rollout", 72, 1024, 8, 4, 12)
        );
    }

    #[test]
    fn blocks_per_sm_should_follow_the_tightest_resource() {
        let r = |registers, smem, sm| KernelReport {
            sm,
            registers,
            smem,
            ..Default::default()
        };
        // 80 registers × 256 threads = 20 480 per block: 3 blocks in 64 K.
        assert_eq!(r(80, 0, 90).blocks_per_sm(256, 0), 3);
        // 81 rounds up to 88 per thread (256 per warp): 22 528 per block, still 2.
        assert_eq!(r(81, 0, 90).blocks_per_sm(256, 0), 2);
        // 69 KB of dynamic shared memory: 3 on sm_90 (228 KiB), 2 on sm_80 (164 KiB).
        assert_eq!(r(32, 0, 90).blocks_per_sm(256, 69 * 1024), 3);
        assert_eq!(r(32, 0, 80).blocks_per_sm(256, 69 * 1024), 2);
        // Few registers, no shared memory: the 2048-thread limit.
        assert_eq!(r(16, 0, 90).blocks_per_sm(256, 0), 8);
    }
}
