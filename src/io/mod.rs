//! Files: safetensors checkpoints, transition CSVs, atomic writes.
pub mod checkpoint;
pub mod config;
pub mod csv;
pub mod json;
pub mod plot;
pub mod run;
pub mod transitions;

use crate::{Error, Result};
use std::io::Write;
use std::path::Path;

/// `path` itself, or `path/file` when `path` is a directory that holds `file`: every flag
/// that reads a checkpoint (`--model`, `--policy`) also takes the run directory that wrote
/// it, which is what users have at hand after `pets`, `sac`, `mbpo`, `maac` or `svg`.
pub fn file_or_in_dir(path: &Path, file: &str) -> Result<std::path::PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let f = path.join(file);
    if f.is_file() {
        Ok(f)
    } else {
        Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!(
                "a directory without {file}; give the file itself or the run directory that \
                 wrote it"
            ),
        })
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory, fsync it, then
/// rename over `path`: readers see the old file or the new one, never a torn one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| crate::invalid!("{} is not a file path", path.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// The same safetensors file with its JSON header's keys sorted. `safetensors` keeps the
/// metadata in a `HashMap`, whose order changes from process to process; sorted, a file's
/// bytes depend only on its content, so a resumed run's files equal an uninterrupted run's
/// and checksums mean something. The header keeps its length (same keys, same values), so
/// the data offsets stay valid. Bytes that do not parse are returned unchanged.
pub fn canonical_safetensors(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8usize.saturating_add(len)) else {
        return bytes;
    };
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(header) else {
        return bytes;
    };
    map.sort_keys();
    if let Some(serde_json::Value::Object(meta)) = map.get_mut("__metadata__") {
        meta.sort_keys();
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(map)).expect("JSON value");
    if text.len() > len {
        return bytes;
    }
    // safetensors pads the header with spaces to an 8-byte boundary.
    text.resize(len, b' ');
    bytes[8..8 + len].copy_from_slice(&text);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_should_stand_for_its_checkpoint_file() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("model.safetensors");
        std::fs::write(&f, b"x").unwrap();
        // A file (present or not) is itself; a directory is its file, or an error naming both.
        assert_eq!(file_or_in_dir(&f, "model.safetensors").unwrap(), f);
        let missing = t.path().join("nope.safetensors");
        assert_eq!(file_or_in_dir(&missing, "x").unwrap(), missing);
        assert_eq!(file_or_in_dir(t.path(), "model.safetensors").unwrap(), f);
        let e = file_or_in_dir(t.path(), "policy.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("without policy.safetensors"), "{e}");
        assert!(e.contains(&t.path().display().to_string()), "{e}");
    }
}
