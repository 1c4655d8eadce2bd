//! Errors of the dedup crate.

use qcow2_format::{FormatError, RuleId};

/// What went wrong with a dedup table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DedupError {
    /// The on-disk table breaks a rule of the format.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The storage failed.
    #[error("{action} at {offset:#x}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The host offset involved.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The table cannot be used as it is (out of the file, too large...).
    #[error("{rule}: {reason} (at {offset:#x})")]
    Table {
        /// The rule the table breaks.
        rule: RuleId,
        /// Host offset of the offending structure.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The allocator of the embedding image failed.
    #[error("allocating dedup table clusters: {0}")]
    Alloc(String),
}

impl DedupError {
    pub(crate) fn io(action: &'static str, offset: u64, source: std::io::Error) -> Self {
        Self::Io {
            action,
            offset,
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, DedupError>;
