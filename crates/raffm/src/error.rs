//! The library's typed error. Every variant that concerns a file names it, so a binary can
//! print one line that tells the user which file is wrong and how.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a read or write.
    // The cause is in the message and deliberately not a `source`: anyhow's one-line
    // format (`{:#}`) would print it twice.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A file exists but its contents are not what we need (bad JSON, truncated
    /// safetensors, a tensor whose shape disagrees with `config.json`, ...).
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// `config.json` names an architecture we do not implement.
    #[error("{}: unknown model_type `{model_type}` (supported: bert, roberta, xlm-roberta, camembert, distilbert)", path.display())]
    UnknownModelType { path: PathBuf, model_type: String },
    /// An argument or a combination of inputs that cannot work, not tied to one file.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            cause: source,
        }
    }

    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}
