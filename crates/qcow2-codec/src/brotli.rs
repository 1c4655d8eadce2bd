//! `brotli`: a raw Brotli stream (RFC 7932), no framing.
//!
//! Level mapping: level `L` in `1..=12` is Brotli quality `L - 1` (0..=11).
//! The default (level byte 0) is level 6 = quality 5, which measured as the
//! best balance of speed and ratio on 64 KiB clusters (see
//! `docs/benchmarks.md`); quality 11 is an order of magnitude slower.
//!
//! The encoder window is the smallest that covers the cluster, except that
//! qualities 5 and 6 get at least a 128 KiB window (see `encoder_window`).
//! A reader's ring buffer is thus at most the larger of the cluster and
//! 128 KiB, and the decoder sizes it to the stream's last meta-block anyway.
//! The decoder rejects large-window streams (a non-standard extension),
//! which bounds what a hostile stream can make it allocate to the standard
//! 16 MiB window.
//!
//! The `brotli` crates cannot reset an encoder or decoder for a new stream,
//! so each cluster builds fresh state; every buffer of that state comes from
//! a per-thread pool (`crate::pool`) and goes back to it, so after the first
//! clusters on a thread the big buffers are reused rather than allocated.

use brotli::enc::encode::{
    BrotliEncoderOperation, BrotliEncoderParameter, BrotliEncoderStateStruct,
};
use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState};

use crate::codec::{check_compress_args, check_decompress_args, Codec, CompressOutcome};
use crate::error::{CodecError, RegistryError};
use crate::level::LevelSpec;
use crate::pool::PoolAlloc;

const NAME: &str = "brotli";
/// Smallest and largest standard window exponents.
const MIN_LGWIN: u32 = 10;
const MAX_LGWIN: u32 = 24;
/// Smallest window exponent given to the encoder at qualities 5 and 6.
const MIN_LGWIN_Q5_Q6: u32 = 17;

/// Brotli codec (seed format only; QEMU has no brotli type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Brotli {
    level: u8,
}

impl Brotli {
    /// Name in the compress format extension.
    pub const NAME: &'static str = NAME;
    /// Highest level (quality 11).
    pub const MAX_LEVEL: u8 = 12;
    /// Level used for level byte 0 (quality 5).
    pub const DEFAULT_LEVEL: u8 = 6;

    /// The level range: `1..=12`, default 6.
    pub const fn levels() -> LevelSpec {
        LevelSpec::from_const(Self::MAX_LEVEL, Self::DEFAULT_LEVEL)
    }

    /// A brotli codec at header level `level` (0 = default).
    pub fn new(level: u8) -> Result<Self, RegistryError> {
        Ok(Self {
            level: Self::levels().resolve(NAME, level)?,
        })
    }

    /// Brotli quality for this level.
    pub fn quality(&self) -> u32 {
        u32::from(self.level) - 1
    }
}

/// Smallest window exponent whose window (2^lgwin - 16 bytes) covers `len`.
fn window_for(len: usize) -> u32 {
    let mut lgwin = MIN_LGWIN;
    while lgwin < MAX_LGWIN && (1usize << lgwin) - 16 < len {
        lgwin += 1;
    }
    lgwin
}

/// Window exponent for encoding `len` bytes at `quality`.
///
/// At qualities 5 to 8 with a window of 64 KiB or less, the `brotli` crate
/// selects a hasher it does not implement and falls back to one with a
/// 32 MiB table, so clusters of 32 KiB or less compressed at 0.3 to 2 MB/s at
/// the default level. From a 128 KiB window on it uses the hasher sized for
/// the quality: at qualities 5 and 6 (1 and 2 MiB tables) that measured 4 to
/// 20 times as fast on 512-byte to 32 KiB clusters, with 1-2% smaller
/// output. At qualities 7 and 8 the proper tables (8 and 16 MiB) cost more
/// than the fallback on 512-byte clusters, so those keep the smallest
/// window. A window larger than the stream costs a reader nothing: the
/// decoder sizes its ring buffer to the stream's last meta-block.
fn encoder_window(len: usize, quality: u32) -> u32 {
    let lgwin = window_for(len);
    if (5..=6).contains(&quality) {
        lgwin.max(MIN_LGWIN_Q5_Q6)
    } else {
        lgwin
    }
}

impl Codec for Brotli {
    fn name(&self) -> &'static str {
        NAME
    }

    fn level(&self) -> u8 {
        self.level
    }

    fn compress(&self, input: &[u8], output: &mut [u8]) -> Result<CompressOutcome, CodecError> {
        let Some(limit) = check_compress_args(NAME, input, output)? else {
            return Ok(CompressOutcome::NoGain);
        };
        let backend = |reason: &str| CodecError::Backend {
            codec: NAME,
            reason: reason.to_owned(),
        };
        // The crate's encoder cannot be reset for a new stream, so each
        // cluster gets a fresh one; its buffers come from (and go back to)
        // this thread's pool.
        let mut enc = BrotliEncoderStateStruct::new(PoolAlloc::for_input(input.len()));
        let params = [
            (BrotliEncoderParameter::BROTLI_PARAM_QUALITY, self.quality()),
            (
                BrotliEncoderParameter::BROTLI_PARAM_LGWIN,
                encoder_window(input.len(), self.quality()),
            ),
            (
                BrotliEncoderParameter::BROTLI_PARAM_SIZE_HINT,
                input.len() as u32,
            ),
        ];
        for (param, value) in params {
            if !enc.set_parameter(param, value) {
                return Err(backend("rejected an encoder parameter"));
            }
        }
        let out = &mut output[..limit];
        let (mut avail_in, mut in_pos) = (input.len(), 0);
        let (mut avail_out, mut out_pos) = (out.len(), 0);
        let mut total_out = None;
        // FINISH runs until the stream is complete or the output is full;
        // the bound only guards against an encoder that stops progressing.
        for _ in 0..64 {
            let ok = enc.compress_stream(
                BrotliEncoderOperation::BROTLI_OPERATION_FINISH,
                &mut avail_in,
                input,
                &mut in_pos,
                &mut avail_out,
                out,
                &mut out_pos,
                &mut total_out,
                &mut |_, _, _, _| (),
            );
            if !ok {
                return Err(backend("encoder failed"));
            }
            if enc.is_finished() {
                return Ok(CompressOutcome::Compressed(out_pos));
            }
            if avail_out == 0 {
                return Ok(CompressOutcome::NoGain);
            }
        }
        Err(backend("encoder made no progress"))
    }

    fn decompress(&self, input: &[u8], cluster: &mut [u8]) -> Result<(), CodecError> {
        check_decompress_args(NAME, cluster)?;
        let expected = cluster.len();
        // As for the encoder: fresh state, pooled buffers.
        let alloc = PoolAlloc::for_input(expected);
        let mut state = BrotliState::new_strict(alloc, alloc, alloc);
        let (mut avail_in, mut in_pos) = (input.len(), 0);
        let (mut avail_out, mut out_pos) = (expected, 0);
        let mut total_out = 0;
        // One call runs until the stream ends, the input runs out, the
        // cluster is full, or the data is found corrupt.
        let result = BrotliDecompressStream(
            &mut avail_in,
            &mut in_pos,
            input,
            &mut avail_out,
            &mut out_pos,
            cluster,
            &mut total_out,
            &mut state,
        );
        match result {
            BrotliResult::ResultSuccess | BrotliResult::NeedsMoreInput if out_pos == expected => {
                Ok(())
            }
            BrotliResult::ResultSuccess | BrotliResult::NeedsMoreInput => {
                Err(CodecError::Truncated {
                    codec: NAME,
                    expected,
                    got: out_pos,
                })
            }
            BrotliResult::NeedsMoreOutput => Err(CodecError::TooMuchOutput {
                codec: NAME,
                expected,
            }),
            BrotliResult::ResultFailure => Err(CodecError::Corrupt {
                codec: NAME,
                produced: out_pos,
                reason: format!("{:?}", state.error_code),
            }),
        }
    }
}

/// Registry entry (no QEMU type).
pub(crate) fn registration() -> crate::registry::CodecInfo {
    crate::registry::CodecInfo::builtin(NAME, None, Brotli::levels(), |level| {
        std::sync::Arc::new(Brotli { level })
    })
}

#[cfg(test)]
mod tests {
    use super::{encoder_window, window_for};

    #[test]
    fn window_is_the_smallest_that_covers_the_cluster() {
        assert_eq!(window_for(0), 10);
        assert_eq!(window_for(1008), 10);
        assert_eq!(window_for(1009), 11);
        assert_eq!(window_for(65536), 17);
        assert_eq!(window_for(2 * 1024 * 1024), 22);
        assert_eq!(window_for(usize::MAX), 24);
    }

    #[test]
    fn qualities_5_and_6_get_at_least_a_128k_window() {
        for quality in 0..=11 {
            let small = encoder_window(4096, quality);
            let expected = if (5..=6).contains(&quality) { 17 } else { 13 };
            assert_eq!(small, expected, "quality {quality}");
            assert_eq!(encoder_window(2 * 1024 * 1024, quality), 22);
        }
    }
}
