//! One error type for the library: every variant carries a sentence a user can act on.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input the user gave us (data, arguments, files) is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// A setting has a value that cannot work. `key` is the setting's dotted name in the
    /// configuration (`planner.num_elites`); a front end may rename it to its own flag
    /// (`--elites`) with [`Error::rename_setting`]. The message follows the name.
    #[error("{key} {msg}")]
    Setting { key: String, msg: String },
    /// Shapes of buffers or data disagree.
    #[error("dimension mismatch: {0}")]
    Shape(String),
    /// Training produced a non-finite loss or gradient; the parameters were left at their last
    /// finite values.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// A backend is not available on this machine; the message says why.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Env(#[from] crate::env::EnvError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl Error {
    /// Prefix a setting's key with the section it sits in (`horizon` → `planner.horizon`).
    pub fn in_section(self, section: &str) -> Self {
        match self {
            Error::Setting { key, msg } => Error::Setting {
                key: format!("{section}.{key}"),
                msg,
            },
            e => e,
        }
    }

    /// Show a setting under the name the user typed: `rename` maps a dotted key to a
    /// command-line flag, or returns None to keep the key.
    pub fn rename_setting(self, rename: impl Fn(&str) -> Option<String>) -> Self {
        match self {
            Error::Setting { key, msg } => Error::Setting {
                key: rename(&key).unwrap_or(key),
                msg,
            },
            e => e,
        }
    }
}

/// An [`Error::Setting`]: `setting!("horizon", "must be at least 1, got {}", h)`.
#[macro_export]
macro_rules! setting {
    ($key:expr, $($t:tt)*) => {
        $crate::Error::Setting { key: $key.to_string(), msg: format!($($t)*) }
    };
}

/// `bail!`-style helper for invalid input.
#[macro_export]
macro_rules! invalid {
    ($($t:tt)*) => { $crate::Error::Invalid(format!($($t)*)) };
}
