//! Why a check or repair could not complete.

use std::io;

use qcow2_format::FormatError;

/// Result alias of the check and repair modules.
pub type CheckResult<T, E = CheckError> = std::result::Result<T, E>;

/// A check or repair that could not run to the end.
///
/// Findings about the image (corruptions, leaks) are not errors: they are
/// counted in the [`CheckReport`](super::CheckReport). These are the cases
/// where `qemu-img check` says "Check failed" and exits with status 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The storage failed.
    #[error("I/O error while {action} at byte {offset:#x}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The header area is unusable, so no table can be located.
    #[error("the image header is invalid: {0}")]
    Header(#[from] FormatError),
    /// A size from the file exceeds what the check keeps in memory.
    #[error("{what} is {value}, more than the limit of {limit}")]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// An [`ExtraReferences`](super::ExtraReferences) hook failed.
    #[error("extra references from {name}: {message}")]
    Extra {
        /// The hook's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Leak repair found a refcount of 0 on a referenced cluster (or a broken
    /// refcount table entry): only rebuilding the refcount structure fixes
    /// that, which needs the repair mode that fixes all errors.
    #[error("the refcount structure must be rebuilt; repair with `-r all`")]
    RebuildNeeded,
    /// Rebuilding the refcount structure is impossible.
    #[error("cannot rebuild the refcount structure: {reason}")]
    Rebuild {
        /// Which limit was hit.
        reason: String,
    },
    /// A repair write was refused because it would overwrite other metadata.
    #[error("refusing to write {what} at byte {offset:#x}: the cluster is also used as {other}")]
    Overlap {
        /// The structure being written.
        what: &'static str,
        /// Where.
        offset: u64,
        /// What else lives in that cluster.
        other: String,
    },
}

impl CheckError {
    /// Wraps an I/O error with what was being done and where.
    pub fn io(action: &'static str, offset: u64, source: io::Error) -> Self {
        Self::Io {
            action,
            offset,
            source,
        }
    }
}
