//! The per-cluster [`Codec`] trait and the argument checks every codec shares.

use crate::error::CodecError;

/// Largest qcow2 cluster (2 MiB, `cluster_bits` = 21). Inputs and output
/// buffers are bounded by it so hostile sizes never drive an allocation.
pub const MAX_CLUSTER_SIZE: usize = 2 * 1024 * 1024;

/// Result of compressing one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum CompressOutcome {
    /// The first `n` bytes of the output buffer hold the compressed stream;
    /// `n` is smaller than the input length.
    Compressed(usize),
    /// Compression would not make the cluster smaller (or the result does not
    /// fit the output buffer): store the cluster uncompressed.
    NoGain,
}

/// One compression format at one level, applied one cluster at a time.
///
/// Implementations are `Send + Sync` and keep their working state per thread,
/// so one shared instance serves every worker without locking and the hot
/// path reuses that state instead of allocating per cluster.
///
/// # Contract
///
/// * [`compress`](Codec::compress) takes at most [`MAX_CLUSTER_SIZE`] bytes
///   and writes into a caller buffer of any length. It returns
///   [`CompressOutcome::NoGain`] when the stream would not be smaller than the
///   input or does not fit the buffer; bytes in the buffer are then
///   unspecified.
/// * [`decompress`](Codec::decompress) fills `cluster` exactly. `input` may
///   carry trailing slack (qcow2 descriptors are rounded to 512-byte sectors),
///   which is ignored once the cluster is full. It fails with a typed error if
///   the stream ends early, would produce more than `cluster.len()` bytes, or
///   is malformed; it never writes outside `cluster`, never panics and always
///   terminates, whatever the input.
///
/// [`check_compress_args`] and [`check_decompress_args`] implement the shared
/// size checks for codecs defined in other crates.
pub trait Codec: Send + Sync + std::fmt::Debug {
    /// Format name as stored in the compress format header extension
    /// (`zlib`, `zstd`, `brotli`, ...).
    fn name(&self) -> &'static str;

    /// The resolved level, `1..=max` (never 0: "default" is resolved when the
    /// codec is built).
    fn level(&self) -> u8;

    /// Compresses `input` (at most one cluster) into `output`.
    fn compress(&self, input: &[u8], output: &mut [u8]) -> Result<CompressOutcome, CodecError>;

    /// Decompresses `input` into exactly `cluster.len()` bytes.
    fn decompress(&self, input: &[u8], cluster: &mut [u8]) -> Result<(), CodecError>;
}

/// Checks `compress` arguments and returns how many output bytes a stream may
/// use: fewer than the input, and no more than the buffer. `None` means no
/// stream can gain (empty input or empty buffer).
pub fn check_compress_args(
    codec: &'static str,
    input: &[u8],
    output: &[u8],
) -> Result<Option<usize>, CodecError> {
    if input.len() > MAX_CLUSTER_SIZE {
        return Err(CodecError::InputTooLarge {
            codec,
            len: input.len(),
            max: MAX_CLUSTER_SIZE,
        });
    }
    let limit = output.len().min(input.len().saturating_sub(1));
    Ok((limit > 0).then_some(limit))
}

/// Checks that a `decompress` output buffer is a plausible cluster.
pub fn check_decompress_args(codec: &'static str, cluster: &[u8]) -> Result<(), CodecError> {
    if cluster.is_empty() || cluster.len() > MAX_CLUSTER_SIZE {
        return Err(CodecError::BadClusterSize {
            codec,
            len: cluster.len(),
            max: MAX_CLUSTER_SIZE,
        });
    }
    Ok(())
}
