//! Run directories: never overwritten silently, one writer at a time, and resumable.
//!
//! A run directory is created with its `config.toml` already inside (built under a temporary
//! name beside it and renamed into place), so a kill at any moment leaves either no directory
//! or one that `--resume` accepts. While a process writes to it, it holds an exclusive lock
//! on `.lock`; at every start the temporary files (`.NAME.tmp-PID`) that a killed writer left
//! are removed.
//!
//! Checkpoints go through one manifest, `checkpoint.json`: the state files of trial k are
//! written first under names of their own (`checkpoint/model-000k.safetensors`, …), then the
//! manifest is replaced atomically to point at them; that rename is the commit. The files a
//! user reads (`model.safetensors`, `metrics.csv`, …) are views rewritten after each commit,
//! the model before the metrics that report it, and rebuilt from the manifest on resume.
use super::atomic_write;
use crate::{invalid, Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The manifest: the commit point of a run's checkpoints.
pub const MANIFEST: &str = "checkpoint.json";
/// The folder of checkpointed state files named by the manifest.
pub const STATE_DIR: &str = "checkpoint";
/// The resolved configuration of the run.
pub const CONFIG: &str = "config.toml";
const LOCK: &str = ".lock";

/// How to open a run directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new run: the directory must not exist or be empty.
    New,
    /// A new run replacing an existing one: the files a run writes are removed first (other
    /// files in the directory are left alone).
    Force,
    /// Continue the run in the directory from its last checkpoint.
    Resume,
}

/// An open run directory, locked against other writers for as long as this value lives.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

/// True for `.NAME.tmp-PID`, the temporary names of [`atomic_write`].
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Entries of `dir` other than the lock file and stale temporaries.
fn meaningful_entries(dir: &Path) -> Result<Vec<String>> {
    let mut v = vec![];
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != LOCK && !is_temp_name(&name) {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

impl RunDir {
    /// Open `path` for a run whose resolved configuration is `config_toml` (written as
    /// `config.toml`; on resume the caller passes the text it read from there). The
    /// directory is checked for writability here, before any work starts.
    pub fn open(path: &Path, mode: Mode, config_toml: &str) -> Result<Self> {
        if path.as_os_str().is_empty() {
            return Err(invalid!("--out: the run directory path is empty"));
        }
        let exists = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() || (m.file_type().is_symlink() && path.is_dir()) => true,
            Ok(_) => {
                return Err(invalid!(
                    "{} exists and is not a directory; choose another --out",
                    path.display()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(path, e)),
        };
        match mode {
            Mode::Resume => {
                if !exists {
                    return Err(invalid!(
                        "--resume {}: no such run directory (nothing was started there)",
                        path.display()
                    ));
                }
                let dir = Self::lock(path)?;
                if !path.join(CONFIG).is_file() {
                    return Err(invalid!(
                        "--resume {}: no {CONFIG} there, so it holds no run to continue",
                        path.display()
                    ));
                }
                dir.remove_stale_temporaries()?;
                Ok(dir)
            }
            Mode::New | Mode::Force => {
                if !exists {
                    Self::create_with_config(path, config_toml)?;
                    let dir = Self::lock(path)?;
                    dir.remove_stale_temporaries()?;
                    return Ok(dir);
                }
                let dir = Self::lock(path)?;
                let entries = meaningful_entries(path)?;
                if !entries.is_empty() && mode == Mode::New {
                    let shown: Vec<&str> = entries.iter().take(6).map(String::as_str).collect();
                    let what = if path.join(CONFIG).is_file() {
                        "already holds a run"
                    } else {
                        "is not empty"
                    };
                    return Err(invalid!(
                        "{} {what} ({}{}); pass --resume {} to continue it, --force to \
                         replace it, or choose another --out",
                        path.display(),
                        shown.join(", "),
                        if entries.len() > shown.len() {
                            ", …"
                        } else {
                            ""
                        },
                        path.display()
                    ));
                }
                dir.remove_stale_temporaries()?;
                if mode == Mode::Force {
                    dir.remove_run_files()?;
                }
                atomic_write(&path.join(CONFIG), config_toml.as_bytes())?;
                Ok(dir)
            }
        }
    }

    /// Create `path` with `config.toml` inside in one rename, so that the directory never
    /// exists without its configuration.
    fn create_with_config(path: &Path, config_toml: &str) -> Result<()> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let name = path
            .file_name()
            .ok_or_else(|| invalid!("{} is not a directory name", path.display()))?
            .to_string_lossy()
            .into_owned();
        // Temporary directories a killed creator of this same run left behind.
        if let Ok(rd) = std::fs::read_dir(&parent) {
            let prefix = format!(".{name}.tmp-");
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) && is_temp_name(&n) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir(&tmp)?;
            std::fs::write(tmp.join(CONFIG), config_toml)?;
            File::open(tmp.join(CONFIG))?.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(path, e));
        }
        Ok(())
    }

    /// Take the exclusive lock, which also proves the directory writable.
    fn lock(path: &Path) -> Result<Self> {
        let lock_path = path.join(LOCK);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| invalid!("cannot write to run directory {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // A lock can be held for a moment by a process this one forked (between fork and
            // exec the child shares the descriptor), so a busy lock is retried for a second
            // before it is taken as another writer.
            let mut tries = 0;
            let r = loop {
                // SAFETY: flock on a descriptor this function owns; it is released when the
                // file is closed, including when the process is killed.
                let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                if r == 0 || tries == 20 {
                    break r;
                }
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            if r != 0 {
                return Err(invalid!(
                    "another mbrl-gpu process is writing to run directory {}; wait for it or \
                     choose another --out",
                    path.display()
                ));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            _lock: f,
        })
    }

    fn remove_stale_temporaries(&self) -> Result<()> {
        for dir in [self.path.clone(), self.path.join(STATE_DIR)] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if is_temp_name(&e.file_name().to_string_lossy()) {
                    std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
                }
            }
        }
        Ok(())
    }

    /// The files and folders a run writes (other files are the user's and stay).
    fn remove_run_files(&self) -> Result<()> {
        for name in [
            CONFIG,
            MANIFEST,
            "metrics.csv",
            "timings.csv",
            "model.safetensors",
            "transitions.safetensors",
            "learning_curve.svg",
        ] {
            let p = self.path.join(name);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(p, e)),
            }
        }
        let state = self.path.join(STATE_DIR);
        if state.is_dir() {
            std::fs::remove_dir_all(&state).map_err(|e| Error::io(state, e))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `name` (relative to the run directory) atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.path.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        atomic_write(&p, bytes)
    }

    /// Read `name`, or None when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path.join(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    /// Remove state files that the manifest no longer names (an older checkpoint, or the
    /// files of one whose commit a kill prevented).
    pub fn prune_state(&self, keep: &[&str]) -> Result<()> {
        let dir = self.path.join(STATE_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let rel = format!("{STATE_DIR}/{}", e.file_name().to_string_lossy());
            if !keep.contains(&rel.as_str()) && e.path().is_file() {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_should_be_recognised_exactly() {
        assert!(is_temp_name(".metrics.csv.tmp-123"));
        assert!(!is_temp_name("metrics.csv.tmp-123"));
        assert!(!is_temp_name(".metrics.csv.tmp-"));
        assert!(!is_temp_name(".metrics.csv.tmp-12a"));
        assert!(!is_temp_name(".lock"));
    }

    #[test]
    fn a_run_directory_should_refuse_to_be_overwritten_and_locked_twice() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("run");
        let d = RunDir::open(&p, Mode::New, "a = 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(p.join(CONFIG)).unwrap(), "a = 1\n");
        // A second writer while the first holds the lock.
        let e = RunDir::open(&p, Mode::Resume, "").unwrap_err().to_string();
        assert!(e.contains("another mbrl-gpu process"), "{e}");
        drop(d);
        let e = RunDir::open(&p, Mode::New, "a = 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already holds a run") && e.contains("--resume"),
            "{e}"
        );
        std::fs::write(p.join(".metrics.csv.tmp-999999"), "torn").unwrap();
        std::fs::write(p.join("notes.txt"), "mine").unwrap();
        let d = RunDir::open(&p, Mode::Force, "a = 3\n").unwrap();
        assert!(!p.join(".metrics.csv.tmp-999999").exists());
        assert_eq!(
            std::fs::read_to_string(p.join("notes.txt")).unwrap(),
            "mine"
        );
        assert_eq!(std::fs::read_to_string(p.join(CONFIG)).unwrap(), "a = 3\n");
        drop(d);
        let e = RunDir::open(&t.path().join("none"), Mode::Resume, "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such run directory"), "{e}");
        std::fs::write(t.path().join("file"), "x").unwrap();
        let e = RunDir::open(&t.path().join("file"), Mode::New, "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
