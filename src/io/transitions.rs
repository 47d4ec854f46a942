//! Collected transitions in safetensors, as a run directory keeps them for `--resume` and as
//! other tools read them:
//!
//! | tensor     | shape           | meaning                                   |
//! |------------|-----------------|-------------------------------------------|
//! | `obs`      | [N, obs_dim]    | observation before the action             |
//! | `act`      | [N, act_dim]    | action applied                            |
//! | `next_obs` | [N, obs_dim]    | observation after it                      |
//! | `reward`   | [N]             | reward (absent when rewards were not kept) |
//!
//! All f32, little-endian. Metadata: `format` = `mbrl-gpu/transitions/1`.
use crate::model::Transitions;
use crate::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

pub const FORMAT: &str = "mbrl-gpu/transitions/1";

/// More transitions than any run collects (a billion floats per array at obs_dim 1): the
/// bound keeps a crafted header from asking for absurd allocations.
pub const MAX_VALUES: usize = 1 << 30;

/// A tensor read back: its shape and values.
type Tensor = (Vec<usize>, Vec<f32>);

pub fn to_bytes(t: &Transitions) -> Result<Vec<u8>> {
    t.validate()?;
    let n = t.len();
    let mut parts: Vec<(&str, Vec<usize>, &[f32])> = vec![
        ("obs", vec![n, t.obs_dim], &t.obs),
        ("act", vec![n, t.act_dim], &t.act),
        ("next_obs", vec![n, t.obs_dim], &t.next_obs),
    ];
    if t.has_reward() {
        parts.push(("reward", vec![n], &t.reward));
    }
    let views: Vec<(String, TensorView<'_>)> = parts
        .iter()
        .map(|(name, shape, v)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(v))
                .map(|tv| (name.to_string(), tv))
                .map_err(|e| crate::invalid!("building tensor {name}: {e}"))
        })
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), FORMAT.to_string())]);
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| crate::invalid!("serialising transitions: {e}"))?;
    Ok(super::canonical_safetensors(bytes))
}

pub fn save(t: &Transitions, path: &Path) -> Result<()> {
    super::atomic_write(path, &to_bytes(t)?)
}

/// Parse and validate: format tag, the four tensors' dtype and shapes agreeing with each
/// other, every value finite.
pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Transitions, String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a readable safetensors file ({e})"))?;
    match header.metadata().as_ref().and_then(|m| m.get("format")) {
        Some(f) if f == FORMAT => {}
        Some(f) => return Err(format!("format is {f:?}, expected {FORMAT:?}")),
        None => return Err("no `format` metadata: not an mbrl-gpu transitions file".into()),
    }
    for name in st.names() {
        if !["obs", "act", "next_obs", "reward"].contains(&name) {
            return Err(format!("unexpected tensor {name:?}"));
        }
    }
    let get = |name: &str, rank: usize| -> std::result::Result<Option<Tensor>, String> {
        let t = match st.tensor(name) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        if t.dtype() != Dtype::F32 {
            return Err(format!(
                "tensor {name:?} has dtype {:?}, expected F32",
                t.dtype()
            ));
        }
        if t.shape().len() != rank {
            return Err(format!(
                "tensor {name:?} has shape {:?}, expected rank {rank}",
                t.shape()
            ));
        }
        let len = t.data().len() / 4;
        if len > MAX_VALUES {
            return Err(format!(
                "tensor {name:?} holds {len} values, more than {MAX_VALUES}"
            ));
        }
        let vals: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Some((t.shape().to_vec(), vals)))
    };
    let missing = |n: &str| format!("missing tensor {n:?}");
    let (so, obs) = get("obs", 2)?.ok_or_else(|| missing("obs"))?;
    let (sa, act) = get("act", 2)?.ok_or_else(|| missing("act"))?;
    let (sn, next_obs) = get("next_obs", 2)?.ok_or_else(|| missing("next_obs"))?;
    let reward = get("reward", 1)?;
    let n = so[0];
    if sa[0] != n || sn != so || reward.as_ref().is_some_and(|(s, _)| s[0] != n) {
        return Err(format!(
            "tensor shapes disagree: obs {so:?}, act {sa:?}, next_obs {sn:?}, reward {:?}",
            reward.as_ref().map(|(s, _)| s.clone())
        ));
    }
    let t = Transitions {
        obs_dim: so[1],
        act_dim: sa[1],
        obs,
        act,
        next_obs,
        reward: reward.map(|(_, v)| v).unwrap_or_default(),
    };
    t.validate().map_err(|e| e.to_string())?;
    Ok(t)
}

pub fn load(path: &Path) -> Result<Transitions> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes).map_err(|msg| crate::invalid!("transitions {}: {msg}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_should_round_trip_bit_for_bit_and_deterministically() {
        let mut t = Transitions::new(2, 1);
        t.push(&[1.0, -0.0], &[0.5], &[1.5, 1e-40], Some(-3.25));
        t.push(&[f32::MAX, 2.0], &[-0.5], &[0.1, 0.2], Some(7.0));
        let b = to_bytes(&t).unwrap();
        assert_eq!(
            b,
            to_bytes(&t).unwrap(),
            "the bytes depend only on the data"
        );
        let back = from_bytes(&b).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.obs), bits(&t.obs));
        assert_eq!(bits(&back.next_obs), bits(&t.next_obs));
        assert_eq!(back.reward, t.reward);
        let e = from_bytes(&b[..b.len() - 3]).unwrap_err();
        assert!(e.contains("safetensors"), "{e}");
    }
}
