//! One error type for the library: every variant carries a sentence a user can act on.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input the user gave us (data, arguments, files) is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
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

/// `bail!`-style helper for invalid input.
#[macro_export]
macro_rules! invalid {
    ($($t:tt)*) => { $crate::Error::Invalid(format!($($t)*)) };
}
