//! Ensemble checkpoints in safetensors with PyTorch-style names, readable from Python:
//!
//! | tensor              | shape          | meaning                                  |
//! |---------------------|----------------|------------------------------------------|
//! | `layers.{i}.weight` | [E, in_i, out_i] | layer i, `y = x @ W + b` (head last)    |
//! | `layers.{i}.bias`   | [E, 1, out_i]  |                                          |
//! | `max_logvar`        | [1, out]       | soft upper bound of the log-variance     |
//! | `min_logvar`        | [1, out]       | soft lower bound                         |
//! | `input_mean`        | [1, in]        | normaliser: `xn = (x − mean) / std`      |
//! | `input_std`         | [1, in]        |                                          |
//!
//! All f32. Metadata: `format` = `mbrl-gpu/ensemble/1`, `config` = the [`ModelConfig`] as
//! JSON, `elites` = JSON list of elite member indices.
use crate::model::{Ensemble, ModelConfig};
use crate::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

pub const FORMAT: &str = "mbrl-gpu/ensemble/1";

/// (name, shape, offset into the flat params or None for normaliser tensors).
fn tensor_plan(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, Source)> {
    let shape = cfg.shape();
    let lay = shape.layout();
    let e = shape.ensemble;
    let mut v = Vec::new();
    for (i, lo) in lay.layers.iter().enumerate() {
        v.push((
            format!("layers.{i}.weight"),
            vec![e, lo.fan_in, lo.fan_out],
            Source::Param(lo.weight),
        ));
        v.push((
            format!("layers.{i}.bias"),
            vec![e, 1, lo.fan_out],
            Source::Param(lo.bias),
        ));
    }
    if shape.probabilistic {
        v.push((
            "max_logvar".into(),
            vec![1, shape.out_dim],
            Source::Param(lay.max_logvar),
        ));
        v.push((
            "min_logvar".into(),
            vec![1, shape.out_dim],
            Source::Param(lay.min_logvar),
        ));
    }
    v.push((
        "input_mean".into(),
        vec![1, shape.in_dim],
        Source::InputMean,
    ));
    v.push(("input_std".into(), vec![1, shape.in_dim], Source::InputStd));
    v
}

#[derive(Clone, Copy)]
enum Source {
    Param(usize),
    InputMean,
    InputStd,
}

fn slice(m: &Ensemble, src: Source, len: usize) -> &[f32] {
    match src {
        Source::Param(off) => &m.params[off..off + len],
        Source::InputMean => &m.input_mean,
        Source::InputStd => &m.input_std,
    }
}

/// Serialise to safetensors bytes. Refuses a model holding a non-finite value.
pub fn to_bytes(model: &Ensemble) -> Result<Vec<u8>> {
    if !model.is_finite() {
        return Err(crate::invalid!(
            "refusing to save a model with non-finite parameters"
        ));
    }
    let plan = tensor_plan(&model.config);
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = plan
        .into_iter()
        .map(|(name, shape, src)| {
            let len: usize = shape.iter().product();
            let bytes = bytemuck::cast_slice::<f32, u8>(slice(model, src, len)).to_vec();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| crate::invalid!("building tensor {n}: {e}"))
        })
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert(
        "config".to_string(),
        serde_json::to_string(&model.config).expect("config serialises"),
    );
    meta.insert(
        "elites".to_string(),
        serde_json::to_string(&model.elites).expect("elites serialise"),
    );
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| crate::invalid!("serialising checkpoint: {e}"))
}

/// Write atomically (temporary file + rename).
pub fn save(model: &Ensemble, path: &Path) -> Result<()> {
    let bytes = to_bytes(model)?;
    super::atomic_write(path, &bytes)
}

pub fn load(path: &Path) -> Result<Ensemble> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes).map_err(|msg| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    })
}

/// Parse and validate: format tag, config, every expected tensor with its dtype and shape,
/// no unexpected tensors, finite values, elites in range.
pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Ensemble, String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or("no metadata: not an mbrl-gpu ensemble checkpoint")?;
    match meta.get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => return Err(format!("format is {f:?}, expected {FORMAT:?}")),
        None => return Err("no `format` metadata: not an mbrl-gpu ensemble checkpoint".into()),
    }
    let cfg: ModelConfig = serde_json::from_str(meta.get("config").ok_or("no `config` metadata")?)
        .map_err(|e| format!("config metadata is not a valid model config: {e}"))?;
    cfg.validate()
        .map_err(|e| format!("config metadata: {e}"))?;
    let elites: Vec<usize> =
        serde_json::from_str(meta.get("elites").ok_or("no `elites` metadata")?)
            .map_err(|e| format!("elites metadata: {e}"))?;
    if elites.is_empty() || elites.iter().any(|&m| m >= cfg.ensemble_size) {
        return Err(format!(
            "elites {elites:?} are not member indices of a {}-member ensemble",
            cfg.ensemble_size
        ));
    }
    let mut model = Ensemble::new(cfg.clone(), 0).map_err(|e| e.to_string())?;
    model.elites = elites;
    let plan = tensor_plan(&cfg);
    let expected: Vec<&str> = plan.iter().map(|(n, _, _)| n.as_str()).collect();
    for name in st.names() {
        if !expected.contains(&name) {
            return Err(format!("unexpected tensor {name:?}"));
        }
    }
    for (name, shape, src) in plan {
        let t = st
            .tensor(&name)
            .map_err(|_| format!("missing tensor {name:?}"))?;
        if t.dtype() != Dtype::F32 {
            return Err(format!(
                "tensor {name:?} has dtype {:?}, expected F32",
                t.dtype()
            ));
        }
        if t.shape() != shape.as_slice() {
            return Err(format!(
                "tensor {name:?} has shape {:?}, the config implies {shape:?}",
                t.shape()
            ));
        }
        let vals: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "tensor {name:?} holds {} at flat index {i}",
                vals[i]
            ));
        }
        let dst: &mut [f32] = match src {
            Source::Param(off) => &mut model.params[off..off + vals.len()],
            Source::InputMean => &mut model.input_mean,
            Source::InputStd => &mut model.input_std,
        };
        dst.copy_from_slice(&vals);
    }
    if model.input_std.iter().any(|s| *s <= 0.0) {
        return Err("input_std must be positive".into());
    }
    Ok(model)
}
