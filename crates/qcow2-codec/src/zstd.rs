//! `zstd`: Zstandard frames, the stream QEMU writes for `compression_type` 1.
//!
//! Level mapping: level `L` in `1..=22` is zstd level `L` (the library's
//! negative "fast" levels are not exposed). The default (level byte 0) is
//! zstd level 3, the library's and QEMU's default.
//!
//! A cluster is one frame with no length prefix. Reading follows QEMU: frames
//! are decoded one after another until exactly one cluster has been
//! produced; whatever follows (sector-rounding slack, zeros or leftovers of
//! the next cluster) is ignored. Each frame is decoded straight into the
//! cluster buffer, so a hostile frame header cannot make the decoder
//! allocate a window buffer.

use std::cell::RefCell;

use zstd_safe::{CCtx, DCtx};

use crate::codec::{check_compress_args, check_decompress_args, Codec, CompressOutcome};
use crate::error::{CodecError, RegistryError};
use crate::level::LevelSpec;
use crate::state::with_thread_state;

const NAME: &str = "zstd";

/// Zstandard codec compatible with QEMU's zstd compression type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zstd {
    level: u8,
}

impl Zstd {
    /// Name in the compress format extension.
    pub const NAME: &'static str = NAME;
    /// Highest level (zstd level 22).
    pub const MAX_LEVEL: u8 = 22;
    /// Level used for level byte 0 (zstd level 3).
    pub const DEFAULT_LEVEL: u8 = 3;

    /// The level range: `1..=22`, default 3.
    pub const fn levels() -> LevelSpec {
        LevelSpec::from_const(Self::MAX_LEVEL, Self::DEFAULT_LEVEL)
    }

    /// A zstd codec at header level `level` (0 = default).
    pub fn new(level: u8) -> Result<Self, RegistryError> {
        Ok(Self {
            level: Self::levels().resolve(NAME, level)?,
        })
    }
}

/// This thread's zstd contexts, created on first use and reused after.
#[derive(Default)]
struct ZstdState {
    cctx: Option<CCtx<'static>>,
    dctx: Option<DCtx<'static>>,
}

thread_local! {
    static STATE: RefCell<ZstdState> = RefCell::default();
}

fn no_context() -> CodecError {
    CodecError::Backend {
        codec: NAME,
        reason: "cannot allocate a zstd context".to_owned(),
    }
}

impl Codec for Zstd {
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
        with_thread_state(&STATE, |state| {
            let cctx = match &mut state.cctx {
                Some(cctx) => cctx,
                empty => empty.insert(CCtx::try_create().ok_or_else(no_context)?),
            };
            match cctx.compress(&mut output[..limit], input, i32::from(self.level)) {
                Ok(n) => Ok(CompressOutcome::Compressed(n)),
                // Too little room: the only failure expected below the bound.
                Err(_) if limit < zstd_safe::compress_bound(input.len()) => {
                    Ok(CompressOutcome::NoGain)
                }
                Err(code) => Err(CodecError::Backend {
                    codec: NAME,
                    reason: zstd_safe::get_error_name(code).to_owned(),
                }),
            }
        })
    }

    fn decompress(&self, input: &[u8], cluster: &mut [u8]) -> Result<(), CodecError> {
        check_decompress_args(NAME, cluster)?;
        with_thread_state(&STATE, |state| {
            let dctx = match &mut state.dctx {
                Some(dctx) => dctx,
                empty => empty.insert(DCtx::try_create().ok_or_else(no_context)?),
            };
            decode_frames(dctx, input, cluster)
        })
    }
}

/// Decodes whole frames into `cluster` until it is full.
///
/// Every iteration consumes at least one frame header, so the loop ends on
/// any input.
fn decode_frames(dctx: &mut DCtx<'_>, input: &[u8], cluster: &mut [u8]) -> Result<(), CodecError> {
    let expected = cluster.len();
    let (mut read, mut written) = (0, 0);
    while written < expected {
        let rest = &input[read..];
        // Frames never start with a zero byte: only padding is left.
        if rest.iter().all(|&b| b == 0) {
            return Err(CodecError::Truncated {
                codec: NAME,
                expected,
                got: written,
            });
        }
        let corrupt = |code| CodecError::Corrupt {
            codec: NAME,
            produced: written,
            reason: zstd_safe::get_error_name(code).to_owned(),
        };
        let frame_len = zstd_safe::find_frame_compressed_size(rest).map_err(corrupt)?;
        let frame = &rest[..frame_len.min(rest.len())];
        let room = expected - written;
        if let Ok(Some(size)) = zstd_safe::get_frame_content_size(frame) {
            if size > room as u64 {
                return Err(CodecError::TooMuchOutput {
                    codec: NAME,
                    expected,
                });
            }
        }
        let produced = dctx
            .decompress(&mut cluster[written..], frame)
            .map_err(|code| {
                // A frame without a declared size only shows overflow here.
                if zstd_safe::get_error_name(code) == DST_TOO_SMALL {
                    CodecError::TooMuchOutput {
                        codec: NAME,
                        expected,
                    }
                } else {
                    corrupt(code)
                }
            })?;
        written += produced.min(room);
        read += frame.len().max(1);
    }
    Ok(())
}

/// zstd's message for `ZSTD_error_dstSize_tooSmall`; the safe wrapper does
/// not expose error codes, only their names.
const DST_TOO_SMALL: &str = "Destination buffer is too small";

/// Registry entry: QEMU `compression_type` 1.
pub(crate) fn registration() -> crate::registry::CodecInfo {
    crate::registry::CodecInfo::builtin(NAME, Some(1), Zstd::levels(), |level| {
        std::sync::Arc::new(Zstd { level })
    })
}
