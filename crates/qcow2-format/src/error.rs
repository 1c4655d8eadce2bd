//! Typed errors: every violation names the spec rule it breaks and the byte offset where it was found.

use crate::rules::RuleId;

/// A violation of a qcow2 rule, found while parsing or validating on-disk bytes.
///
/// `offset` is an absolute offset in the image file when the caller passed one
/// (for example the header extension area starts at the end of the header),
/// otherwise it is relative to the start of the parsed buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule} at byte {offset:#x}: {kind}")]
pub struct FormatError {
    /// The rule from `docs/spec.md` that the input breaks.
    pub rule: RuleId,
    /// Where the offending bytes are.
    pub offset: u64,
    /// What exactly is wrong.
    pub kind: ErrorKind,
}

impl FormatError {
    /// Builds an error for `rule` at `offset`.
    pub fn new(rule: RuleId, offset: u64, kind: ErrorKind) -> Self {
        Self { rule, offset, kind }
    }
}

/// The nature of a [`FormatError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input ends before the structure does.
    #[error("truncated: {what} needs {needed} bytes but only {available} are there")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Bytes it needs.
        needed: u64,
        /// Bytes that were available.
        available: u64,
    },
    /// A field holds a value outside its allowed range.
    #[error("{field} is {value}, allowed {min}..={max}")]
    OutOfRange {
        /// Field name as in the spec.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A field does not have the one value the spec requires.
    #[error("{field} is {value:#x}, expected {expected:#x}")]
    Mismatch {
        /// Field name as in the spec.
        field: &'static str,
        /// The value found.
        value: u64,
        /// The required value.
        expected: u64,
    },
    /// An offset or size is not aligned as required.
    #[error("{field} {value:#x} is not a multiple of {alignment:#x}")]
    Misaligned {
        /// Field name as in the spec.
        field: &'static str,
        /// The value found.
        value: u64,
        /// The required alignment.
        alignment: u64,
    },
    /// Reserved bits or bytes are not zero.
    #[error("reserved bits of {field} are set: {value:#x}")]
    ReservedSet {
        /// Field name as in the spec.
        field: &'static str,
        /// The offending bits (or byte value).
        value: u64,
    },
    /// Incompatible feature bits this implementation does not know.
    #[error("unknown incompatible features: {names}")]
    UnknownIncompatible {
        /// The unknown bits.
        bits: u64,
        /// Their names from the feature name table where present, else `bit N`.
        names: String,
    },
    /// The compress format extension names a format this build cannot decode.
    #[error("unknown compression format {name:?}")]
    UnknownCompressFormat {
        /// The name from the extension.
        name: String,
    },
    /// Structures contradict each other (for example a bit without its extension).
    #[error("{0}")]
    Conflict(String),
    /// Anything else that is malformed, with a description.
    #[error("{field}: {reason}")]
    Malformed {
        /// Field or structure name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = FormatError> = core::result::Result<T, E>;
