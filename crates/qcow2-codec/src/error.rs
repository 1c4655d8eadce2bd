//! Typed errors for codec calls and registry look-ups.

use thiserror::Error;

/// Why compressing or decompressing one cluster failed.
///
/// Every variant names the codec so that a message read far from the call
/// site (a log line, a `check` report) still says which format was involved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input to `compress` is larger than the largest qcow2 cluster.
    #[error("{codec}: input of {len} bytes is larger than the largest cluster ({max} bytes)")]
    InputTooLarge {
        /// Codec name.
        codec: &'static str,
        /// Length of the input that was passed.
        len: usize,
        /// Largest accepted input.
        max: usize,
    },
    /// The output buffer given to `decompress` is not a plausible cluster.
    #[error("{codec}: output buffer of {len} bytes is not a cluster size (1..={max} bytes)")]
    BadClusterSize {
        /// Codec name.
        codec: &'static str,
        /// Length of the output buffer that was passed.
        len: usize,
        /// Largest accepted cluster size.
        max: usize,
    },
    /// The compressed stream ended before a whole cluster was produced.
    #[error("{codec}: compressed data ends after {got} of {expected} cluster bytes")]
    Truncated {
        /// Codec name.
        codec: &'static str,
        /// Cluster size, the number of bytes the stream had to produce.
        expected: usize,
        /// Bytes produced before the stream (or the input) ended.
        got: usize,
    },
    /// The compressed stream would produce more than one cluster.
    #[error("{codec}: compressed data decodes to more than the {expected}-byte cluster")]
    TooMuchOutput {
        /// Codec name.
        codec: &'static str,
        /// Cluster size.
        expected: usize,
    },
    /// The compressed stream is malformed.
    #[error("{codec}: corrupt compressed data after {produced} output bytes: {reason}")]
    Corrupt {
        /// Codec name.
        codec: &'static str,
        /// Cluster bytes produced before the error was detected.
        produced: usize,
        /// What the decoder reported.
        reason: String,
    },
    /// The compression library failed for a reason other than the input.
    #[error("{codec}: compression library failed: {reason}")]
    Backend {
        /// Codec name.
        codec: &'static str,
        /// What the library reported.
        reason: String,
    },
}

/// Why a codec could not be looked up or registered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No codec is registered under this name.
    #[error("unknown compression format {name:?} (registered: {known})")]
    UnknownName {
        /// The name that was asked for.
        name: String,
        /// Comma-separated registered names, for the message.
        known: String,
    },
    /// No codec is registered for this QEMU `compression_type` header value.
    #[error("unknown QEMU compression type {value} (registered: {known})")]
    UnknownQemuType {
        /// The header byte that was asked for.
        value: u8,
        /// Comma-separated `value=name` pairs, for the message.
        known: String,
    },
    /// The level byte is above the codec's maximum.
    #[error("{codec}: compression level {level} is out of range (0 = default, 1..={max})")]
    LevelOutOfRange {
        /// Codec name.
        codec: String,
        /// The level that was asked for.
        level: u8,
        /// The codec's highest level.
        max: u8,
    },
    /// The name cannot be stored in the 16-byte, NUL-padded header field.
    #[error("invalid codec name {name:?}: must be 1..=16 bytes of printable ASCII")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The level description is inconsistent (maximum 0 or default above it).
    #[error("{codec}: invalid level range: default {default}, maximum {max}")]
    InvalidLevels {
        /// Codec name.
        codec: String,
        /// Declared default level.
        default: u8,
        /// Declared maximum level.
        max: u8,
    },
    /// Another codec already uses this name.
    #[error("a codec named {name:?} is already registered")]
    DuplicateName {
        /// The contested name.
        name: String,
    },
    /// Another codec already claims this QEMU `compression_type` value.
    #[error("QEMU compression type {value} is already claimed by {existing:?}")]
    DuplicateQemuType {
        /// The contested header value.
        value: u8,
        /// Name of the codec that holds it.
        existing: String,
    },
}
