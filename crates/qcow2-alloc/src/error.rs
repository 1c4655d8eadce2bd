//! Errors of refcount bookkeeping, allocation, check and repair.

use qcow2_format::FormatError;

/// Result alias for this crate.
pub type Result<T, E = AllocError> = std::result::Result<T, E>;

/// What went wrong while reading or updating refcount structures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// The storage failed.
    #[error("I/O error while {action} at byte {offset:#x}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// On-disk bytes break a rule of the format.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A refcount would go below zero or above the largest value the
    /// refcount width can hold.
    #[error("refcount of host cluster {cluster} would become {value} (allowed 0..={max})")]
    RefcountOverflow {
        /// Host cluster index.
        cluster: u64,
        /// The value it would take (negative as i128 for underflow).
        value: i128,
        /// Largest value the refcount width holds.
        max: u64,
    },
    /// Allocation would exceed what the image can address.
    #[error("image full: cannot allocate {clusters} clusters ({reason})")]
    Full {
        /// Clusters requested.
        clusters: u64,
        /// Which limit was hit.
        reason: &'static str,
    },
}

impl AllocError {
    /// Wraps an I/O error with what was being done and where.
    pub fn io(action: &'static str, offset: u64, source: std::io::Error) -> Self {
        Self::Io {
            action,
            offset,
            source,
        }
    }
}
