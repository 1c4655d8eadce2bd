//! `zlib`: raw deflate, the stream QEMU writes for `compression_type` 0.
//!
//! Encoding uses our own deflate encoder (`crate::deflate`), limited to the
//! 4 KiB window QEMU inflates with: at equal output size it is faster than
//! zlib-rs, whose middle levels give up about 2% of output for speed
//! (`docs/benchmarks.md`). Level `L` in `1..=9` picks a search effort from
//! greedy parsing with short chains (1) to long lazy searches (9); the
//! default (level byte 0) is [`Zlib::DEFAULT_LEVEL`].
//!
//! Decoding uses zlib-rs with the full 32 KiB window, so streams from any
//! raw-deflate writer are accepted.

use std::cell::RefCell;

use zlib_rs::{Inflate, InflateFlush, Status};

use crate::codec::{check_compress_args, check_decompress_args, Codec, CompressOutcome};
use crate::deflate::{Effort, Encoder};
use crate::error::{CodecError, RegistryError};
use crate::level::LevelSpec;
use crate::state::with_thread_state;

const NAME: &str = "zlib";
const DECODE_WINDOW_BITS: u8 = 15;

/// Search effort per level 1..=9 (chain depth, good, lazy, nice), measured
/// on 64 KiB clusters of a filesystem image (`docs/benchmarks.md`).
const EFFORTS: [Effort; Zlib::MAX_LEVEL as usize] = [
    Effort::new(2, 4, 0, 16),
    Effort::new(4, 4, 0, 16),
    Effort::new(6, 4, 4, 32),
    Effort::new(8, 4, 8, 32),
    Effort::new(12, 8, 12, 48),
    Effort::new(16, 8, 16, 64),
    Effort::new(64, 16, 32, 128),
    Effort::new(256, 32, 128, 258),
    Effort::new(1024, 32, 258, 258),
];

/// Raw-deflate codec compatible with QEMU's zlib compression type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zlib {
    level: u8,
}

impl Zlib {
    /// Name in the compress format extension.
    pub const NAME: &'static str = NAME;
    /// Highest level (the longest search).
    pub const MAX_LEVEL: u8 = 9;
    /// Level used for level byte 0: the fastest whose output stays within
    /// 2% of QEMU's (system zlib level 6) on a filesystem image.
    pub const DEFAULT_LEVEL: u8 = 5;

    /// The level range: `1..=9`, default [`Zlib::DEFAULT_LEVEL`].
    pub const fn levels() -> LevelSpec {
        LevelSpec::from_const(Self::MAX_LEVEL, Self::DEFAULT_LEVEL)
    }

    /// A zlib codec at header level `level` (0 = default).
    pub fn new(level: u8) -> Result<Self, RegistryError> {
        Ok(Self {
            level: Self::levels().resolve(NAME, level)?,
        })
    }
}

/// This thread's encoder and inflate state.
#[derive(Default)]
struct ZlibState {
    encoder: Option<Box<Encoder>>,
    inflate: Option<Inflate>,
}

thread_local! {
    static STATE: RefCell<ZlibState> = RefCell::default();
}

impl Codec for Zlib {
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
        let effort = EFFORTS[usize::from(self.level - 1)];
        with_thread_state(&STATE, |state| {
            let encoder = state.encoder.get_or_insert_with(Box::default);
            Ok(
                match encoder.compress(input, &mut output[..limit], effort) {
                    Some(written) => CompressOutcome::Compressed(written),
                    None => CompressOutcome::NoGain,
                },
            )
        })
    }

    fn decompress(&self, input: &[u8], cluster: &mut [u8]) -> Result<(), CodecError> {
        check_decompress_args(NAME, cluster)?;
        with_thread_state(&STATE, |state| {
            let inflate = state
                .inflate
                .get_or_insert_with(|| Inflate::new(false, DECODE_WINDOW_BITS));
            // reset() restores the default configuration: raw, 32 KiB window.
            inflate.reset(false);
            inflate_cluster(inflate, input, cluster)
        })
    }
}

fn inflate_cluster(
    inflate: &mut Inflate,
    input: &[u8],
    cluster: &mut [u8],
) -> Result<(), CodecError> {
    let expected = cluster.len();
    let status = inflate
        .decompress(input, cluster, InflateFlush::NoFlush)
        .map_err(|e| CodecError::Corrupt {
            codec: NAME,
            produced: inflate.total_out() as usize,
            reason: inflate.error_message().unwrap_or(e.as_str()).to_owned(),
        })?;
    let got = inflate.total_out() as usize;
    if got < expected {
        // The stream ended, or the input ran out, before the cluster was full.
        return Err(CodecError::Truncated {
            codec: NAME,
            expected,
            got,
        });
    }
    if status == Status::StreamEnd {
        return Ok(());
    }
    // The cluster is full but the end of the stream was not seen. Like QEMU,
    // accept that (the rest is slack or an end-of-block code), unless the
    // stream would go on producing data.
    let consumed = (inflate.total_in() as usize).min(input.len());
    let mut probe = [0u8; 1];
    match inflate.decompress(&input[consumed..], &mut probe, InflateFlush::NoFlush) {
        Ok(_) if inflate.total_out() as usize > expected => Err(CodecError::TooMuchOutput {
            codec: NAME,
            expected,
        }),
        _ => Ok(()),
    }
}

/// Registry entry: QEMU `compression_type` 0.
pub(crate) fn registration() -> crate::registry::CodecInfo {
    crate::registry::CodecInfo::builtin(NAME, Some(0), Zlib::levels(), |level| {
        std::sync::Arc::new(Zlib { level })
    })
}
