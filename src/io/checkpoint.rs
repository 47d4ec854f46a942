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

/// Serialise to safetensors bytes. Refuses what [`from_bytes`] would refuse: a model holding
/// a non-finite value, or elites that are not `num_elites` distinct members.
pub fn to_bytes(model: &Ensemble) -> Result<Vec<u8>> {
    if !model.is_finite() {
        return Err(crate::invalid!(
            "refusing to save a model with non-finite parameters"
        ));
    }
    model.config.validate()?;
    check_elites(&model.elites, &model.config)
        .map_err(|e| crate::invalid!("refusing to save the model: {e}"))?;
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
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| crate::invalid!("serialising checkpoint: {e}"))?;
    Ok(super::canonical_safetensors(bytes))
}

/// Write atomically (temporary file + rename).
pub fn save(model: &Ensemble, path: &Path) -> Result<()> {
    let bytes = to_bytes(model)?;
    super::atomic_write(path, &bytes)
}

/// Largest file [`load`] reads: the biggest model [`ModelConfig::validate`] allows, 2^31 f32
/// parameters (8 GiB), plus the `safetensors` crate's 100 MB header limit and a normaliser
/// of at most 2 × 2^17 values. Anything larger cannot be a valid checkpoint, and reading it
/// whole could exhaust memory before any check runs.
const MAX_FILE_BYTES: u64 = (4 << 31) + 100_000_000 + 8 * (1 << 17) + 8;

/// An ensemble from its safetensors file, or from the run directory holding
/// `model.safetensors`.
pub fn load(path: &Path) -> Result<Ensemble> {
    let path = &super::file_or_in_dir(path, "model.safetensors")?;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!(
                "{len} bytes is larger than any checkpoint can be ({MAX_FILE_BYTES} bytes)"
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes).map_err(|msg| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    })
}

/// Longest `elites` metadata accepted, in bytes. A list of at most 1024 member indices
/// (the cap of [`ModelConfig::validate`]) is under 6 KiB compact; 64 KiB leaves room for
/// any whitespace a hand edit adds while keeping a hostile header from turning its
/// 100 MB limit into a 400 MB `Vec<usize>`.
const MAX_ELITES_JSON: usize = 64 << 10;

/// Parse and validate: format tag, config (sizes bounded by [`ModelConfig::validate`]),
/// elites, every expected tensor's dtype and shape and no unexpected or repeated tensor —
/// all from the header, before anything is allocated from it — then finite values and a
/// positive normaliser scale. Any byte string gives `Ok` or `Err`, never a panic.
pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Ensemble, String> {
    // Checks the header length against the file, the JSON, every tensor's byte size
    // (dtype × shape, overflow-checked) and that the data offsets tile the rest of the file.
    let (header_len, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let header_json = bytes
        .get(8..8 + header_len)
        .ok_or("not a readable safetensors file (header length)")?;
    check_unique_keys(header_json)?;
    let data = &bytes[8 + header_len..];
    let meta = header
        .metadata()
        .as_ref()
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
    let elites_json = meta.get("elites").ok_or("no `elites` metadata")?;
    if elites_json.len() > MAX_ELITES_JSON {
        return Err(format!(
            "elites metadata is {} bytes long; a list of member indices needs far fewer",
            elites_json.len()
        ));
    }
    let elites: Vec<usize> =
        serde_json::from_str(elites_json).map_err(|e| format!("elites metadata: {e}"))?;
    check_elites(&elites, &cfg)?;

    // Every tensor against the plan, from the header alone.
    let plan = tensor_plan(&cfg);
    let mut names: Vec<String> = header.tensors().into_keys().collect();
    names.sort();
    for name in &names {
        if !plan.iter().any(|(n, _, _)| n == name) {
            return Err(format!("unexpected tensor {name:?}"));
        }
    }
    let mut expected_bytes = 0usize;
    for (name, shape, _) in &plan {
        let info = header
            .info(name)
            .ok_or_else(|| format!("missing tensor {name:?}"))?;
        if info.dtype != Dtype::F32 {
            return Err(format!(
                "tensor {name:?} has dtype {:?}, expected F32",
                info.dtype
            ));
        }
        if info.shape != *shape {
            return Err(format!(
                "tensor {name:?} has shape {:?}, the config implies {shape:?}",
                info.shape
            ));
        }
        // Cannot overflow: the sizes are bounded by `ModelConfig::validate`.
        expected_bytes += 4 * shape.iter().product::<usize>();
    }
    if data.len() != expected_bytes {
        return Err(format!(
            "tensor data is {} bytes, the config implies {expected_bytes}",
            data.len()
        ));
    }

    // Only now allocate: the file holds every value the model needs, so the allocation is
    // no larger than the file.
    let in_dim = cfg.in_dim();
    let mut model = Ensemble {
        params: vec![0.0; cfg.shape().layout().total],
        input_mean: vec![0.0; in_dim],
        input_std: vec![0.0; in_dim],
        elites,
        config: cfg,
    };
    for (name, shape, src) in plan {
        let info = header.info(&name).ok_or("tensor vanished")?;
        let (start, end) = info.data_offsets;
        let raw = data
            .get(start..end)
            .ok_or_else(|| format!("tensor {name:?} lies outside the file"))?;
        let len: usize = shape.iter().product();
        let dst: &mut [f32] = match src {
            Source::Param(off) => model
                .params
                .get_mut(off..off + len)
                .ok_or("tensor plan outside the parameter layout")?,
            Source::InputMean => &mut model.input_mean,
            Source::InputStd => &mut model.input_std,
        };
        if raw.len() != 4 * dst.len() {
            return Err(format!(
                "tensor {name:?} holds {} bytes, expected {}",
                raw.len(),
                4 * dst.len()
            ));
        }
        for (i, (d, b)) in dst.iter_mut().zip(raw.chunks_exact(4)).enumerate() {
            let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !v.is_finite() {
                return Err(format!("tensor {name:?} holds {v} at flat index {i}"));
            }
            *d = v;
        }
    }
    if let Some(i) = model.input_std.iter().position(|s| *s <= 0.0) {
        return Err(format!(
            "input_std must be positive, column {i} is {}",
            model.input_std[i]
        ));
    }
    Ok(model)
}

/// Elites as [`crate::model::train`] writes them: `num_elites` distinct member indices,
/// best first. Anything else was not written by us and would make planning sample a member
/// twice or index out of the ensemble.
fn check_elites(elites: &[usize], cfg: &ModelConfig) -> std::result::Result<(), String> {
    if elites.len() != cfg.num_elites {
        return Err(format!(
            "elites metadata lists {} members, the config's num_elites is {}",
            elites.len(),
            cfg.num_elites
        ));
    }
    if let Some(&m) = elites.iter().find(|&&m| m >= cfg.ensemble_size) {
        return Err(format!(
            "elite {m} is not a member index of a {}-member ensemble",
            cfg.ensemble_size
        ));
    }
    let mut seen = vec![false; cfg.ensemble_size];
    for &m in elites {
        if std::mem::replace(&mut seen[m], true) {
            return Err(format!("elites metadata lists member {m} twice"));
        }
    }
    Ok(())
}

/// Refuses a header naming a tensor (or a metadata key) twice. JSON allows it, and the
/// `safetensors` crate keeps the last one silently, while another reader may keep the first:
/// the same file would then load as two different models.
fn check_unique_keys(header: &[u8]) -> std::result::Result<(), String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::collections::HashSet;
    use std::fmt;

    /// Top level: tensor names and `__metadata__`, whose keys are checked in turn.
    struct Keys {
        nested: bool,
    }
    impl<'de> Visitor<'de> for Keys {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !self.nested && key == "__metadata__" {
                    map.next_value_seed(KeysSeed)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
                if !seen.insert(key.clone()) {
                    let what = if self.nested {
                        "metadata key"
                    } else {
                        "tensor"
                    };
                    return Err(serde::de::Error::custom(format!(
                        "{what} {key:?} appears twice"
                    )));
                }
            }
            Ok(())
        }
    }
    struct KeysSeed;
    impl<'de> serde::de::DeserializeSeed<'de> for KeysSeed {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_map(Keys { nested: true })
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    de.deserialize_map(Keys { nested: false })
        .map_err(|e| format!("safetensors header: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Activation;

    fn cfg() -> ModelConfig {
        ModelConfig {
            obs_dim: 3,
            act_dim: 2,
            ensemble_size: 4,
            hidden: 5,
            num_layers: 2,
            activation: Activation::Silu,
            probabilistic: true,
            learn_reward: true,
            num_elites: 2,
        }
    }

    #[test]
    fn config_limits_should_name_the_field_and_the_value() {
        for (field, c, max) in [
            (
                "obs_dim",
                ModelConfig {
                    obs_dim: 65537,
                    ..cfg()
                },
                65536,
            ),
            (
                "act_dim",
                ModelConfig {
                    act_dim: usize::MAX,
                    ..cfg()
                },
                65536,
            ),
            (
                "ensemble_size",
                ModelConfig {
                    ensemble_size: 1025,
                    ..cfg()
                },
                1024,
            ),
            (
                "hidden",
                ModelConfig {
                    hidden: 1 << 62,
                    ..cfg()
                },
                65536,
            ),
            (
                "num_layers",
                ModelConfig {
                    num_layers: 65,
                    ..cfg()
                },
                64,
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            // Over its cap, or (when the cap alone would allow an absurd product) over the
            // parameter limit, with the memory that would take.
            assert!(
                e.starts_with(field)
                    && (e.ends_with(&format!("at most {max} is supported"))
                        || e.contains("is too large: the ensemble would hold")),
                "{e}"
            );
        }
        let at_caps = ModelConfig {
            obs_dim: 65536,
            act_dim: 65536,
            hidden: 1,
            num_layers: 64,
            ..cfg()
        };
        assert!(at_caps.validate().is_ok());
    }

    /// The parameter count in the error is the one `ParamLayout` would allocate, and the cap
    /// sits exactly at 2^31.
    #[test]
    fn config_parameter_count_should_match_the_layout() {
        for probabilistic in [true, false] {
            for layers in [0, 1, 3] {
                // 1024 × ~2048² × layers: over the cap for layers ≥ 1, and still countable
                // by the unchecked layout on a 64-bit host.
                let c = ModelConfig {
                    ensemble_size: 1024,
                    hidden: 2048,
                    num_layers: layers,
                    obs_dim: 700,
                    probabilistic,
                    ..cfg()
                };
                let total = c.shape().layout().total;
                match c.validate() {
                    Ok(()) => assert!(total <= 1 << 31, "{total}"),
                    Err(e) => {
                        let e = e.to_string();
                        assert!(total > 1 << 31, "{e}");
                        assert!(
                            e.contains(&format!(
                                " is too large: the ensemble would hold {total} parameters"
                            )),
                            "{e}"
                        );
                    }
                }
            }
        }
        // 4 210 692 parameters per member here (plus 4 log-variance bounds): 510 members fit
        // under 2^31, 511 do not.
        let over = ModelConfig {
            ensemble_size: 511,
            hidden: 2048,
            num_layers: 2,
            obs_dim: 1,
            act_dim: 1,
            ..cfg()
        };
        assert!(over.shape().layout().total > 1 << 31);
        assert!(over.validate().is_err());
        let under = ModelConfig {
            ensemble_size: 510,
            ..over.clone()
        };
        assert!(under.shape().layout().total <= 1 << 31);
        assert!(under.validate().is_ok());
    }

    #[test]
    fn checkpoints_should_round_trip_and_never_be_written_with_bad_elites() {
        let mut m = Ensemble::new(cfg(), 3).unwrap();
        m.elites = vec![3, 1];
        let back = from_bytes(&to_bytes(&m).unwrap()).unwrap();
        assert_eq!(
            (back.params, back.elites),
            (m.params.clone(), m.elites.clone())
        );
        // The saver refuses what the loader would (the corpus checks the loader's messages).
        m.elites = vec![1, 1];
        let e = to_bytes(&m).unwrap_err().to_string();
        assert_eq!(
            e,
            "refusing to save the model: elites metadata lists member 1 twice"
        );
        m.elites = vec![1];
        assert!(to_bytes(&m).is_err());
    }
}
