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
    #[error("{}: unknown model_type `{model_type}` (supported: {supported})", path.display())]
    UnknownModelType {
        path: PathBuf,
        model_type: String,
        supported: &'static str,
    },
    /// No sub-model of the search space fits a budget.
    #[error("{}infeasible {budget}: {reason}", client.as_ref().map(|c| format!("client {c}: ")).unwrap_or_default())]
    Infeasible {
        client: Option<String>,
        /// The budget, in words (`budget (at most 5000000 parameters)`).
        budget: String,
        /// What the smallest candidate needs.
        reason: String,
    },
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

    /// The error, said of one client: an infeasible budget names it; other errors get it
    /// as a prefix.
    pub fn for_client(self, client: &str) -> Self {
        match self {
            Error::Infeasible { budget, reason, .. } => Error::Infeasible {
                client: Some(client.to_string()),
                budget,
                reason,
            },
            other => Error::Invalid(format!("client {client}: {other}")),
        }
    }

    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}
