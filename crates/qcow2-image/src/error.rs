//! Errors of opening, creating, reading and writing images.

use qcow2_alloc::AllocError;
use qcow2_codec::CodecError;
use qcow2_format::{rules, FormatError, RuleId};

/// Result alias for this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// What went wrong with an image operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The storage failed.
    #[error("I/O error while {action} at byte {offset:#x}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where (host offset in the image file, or guest offset for data).
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// On-disk bytes break a rule of the format.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Refcount bookkeeping failed.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// Checking or repairing refcounts failed.
    #[error(transparent)]
    Check(#[from] qcow2_alloc::check::CheckError),
    /// The dedup table failed or breaks a rule.
    #[error(transparent)]
    Dedup(#[from] qcow2_dedup::DedupError),
    /// A compressed cluster could not be decoded or encoded.
    #[error("compressed cluster at host byte {offset:#x}: {source}")]
    Codec {
        /// Host offset of the compressed data.
        offset: u64,
        /// The codec's error.
        #[source]
        source: CodecError,
    },
    /// The image uses something this engine does not implement.
    #[error("unsupported: {what}")]
    Unsupported {
        /// The feature, named as in the spec or by qemu-img.
        what: String,
    },
    /// A write was attempted on an image opened read-only.
    #[error("the image is open read-only{}", reason.map(|r| format!(" ({r})")).unwrap_or_default())]
    ReadOnly {
        /// Why writes are refused, when not by the caller's choice.
        reason: Option<&'static str>,
    },
    /// The guest range lies beyond the virtual size.
    #[error("guest range {offset:#x}+{len:#x} is beyond the virtual size {size:#x}")]
    OutOfBounds {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The virtual disk size.
        size: u64,
    },
    /// A parameter is invalid (sizes, cluster size, options).
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which parameter.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Metadata contradicts itself (for example an L2 table beyond the end
    /// of the file or overlapping the header).
    #[error("corrupt image{} at host byte {offset:#x}: {reason}", rule.map(|r| format!(" ({r})")).unwrap_or_default())]
    Corrupt {
        /// The rule of docs/spec.md the image breaks, when one applies.
        rule: Option<RuleId>,
        /// Where.
        offset: u64,
        /// What is inconsistent.
        reason: String,
    },
    /// The backing file could not be opened or read.
    #[error("backing file {name:?}: {reason}")]
    Backing {
        /// The backing file name as stored in the image.
        name: String,
        /// What failed.
        reason: String,
    },
    /// An earlier metadata write failed; the in-memory state may be ahead of
    /// the file, so the image refuses further writes until reopened.
    #[error("an earlier write failed; reopen the image (run `qcow2 check` to find leaks)")]
    Poisoned,
}

impl ImageError {
    /// The rule of docs/spec.md behind this error, when there is one.
    pub fn rule(&self) -> Option<RuleId> {
        match self {
            Self::Format(e) => Some(e.rule),
            Self::Alloc(qcow2_alloc::AllocError::Format(e)) => Some(e.rule),
            Self::Codec { .. } => Some(rules::CMP_DECODE),
            Self::Corrupt { rule, .. } => *rule,
            _ => None,
        }
    }

    /// Whether the storage failed a read. Nothing on disk changed then, and
    /// every metadata change in memory is whole before the next read, so
    /// the image need not refuse later writes (QEMU carries on too).
    pub fn is_read_failure(&self) -> bool {
        let action = match self {
            Self::Io { action, .. }
            | Self::Alloc(AllocError::Io { action, .. })
            | Self::Dedup(qcow2_dedup::DedupError::Io { action, .. }) => action,
            _ => return false,
        };
        action.starts_with("reading")
    }

    /// Wraps an I/O error with what was being done and where.
    pub fn io(action: &'static str, offset: u64, source: std::io::Error) -> Self {
        Self::Io {
            action,
            offset,
            source,
        }
    }
}
