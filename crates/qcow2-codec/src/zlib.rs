//! `zlib`: raw deflate, the stream QEMU writes for `compression_type` 0.
//!
//! Level mapping: level `L` in `1..=9` is deflate level `L` (zlib-rs). The
//! default (level byte 0) is [`Zlib::DEFAULT_LEVEL`] = 5, chosen by
//! measurement (`docs/benchmarks.md`): zlib-rs matches slightly less than
//! the system zlib at equal levels, and level 5 is the fastest whose output
//! stays within 2% of QEMU's (system zlib level 6), at over twice its speed.
//!
//! Encoding uses a 4 KiB window (window bits 12) and memLevel 9 like QEMU,
//! because QEMU inflates with that window and may fail on clusters written
//! with a larger one. Decoding uses the full 32 KiB window, so streams from
//! any raw-deflate writer are accepted.

use std::cell::RefCell;

use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush, Status};

use crate::codec::{check_compress_args, check_decompress_args, Codec, CompressOutcome};
use crate::error::{CodecError, RegistryError};
use crate::level::LevelSpec;
use crate::state::with_thread_state;

const NAME: &str = "zlib";
/// Negative: raw deflate (no zlib header); 12: QEMU's 4 KiB window.
const ENCODE_WINDOW_BITS: i32 = -12;
const DECODE_WINDOW_BITS: u8 = 15;
const MEM_LEVEL: i32 = 9;

/// Raw-deflate codec compatible with QEMU's zlib compression type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zlib {
    level: u8,
}

impl Zlib {
    /// Name in the compress format extension.
    pub const NAME: &'static str = NAME;
    /// Highest level (deflate level 9).
    pub const MAX_LEVEL: u8 = 9;
    /// Level used for level byte 0 (deflate level 5, see the module docs).
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

/// This thread's deflate states (one per level, created on first use) and
/// inflate state.
#[derive(Default)]
struct ZlibState {
    deflate: [Option<Deflate>; Zlib::MAX_LEVEL as usize],
    inflate: Option<Inflate>,
}

thread_local! {
    static STATE: RefCell<ZlibState> = RefCell::default();
}

fn new_deflate(level: u8) -> Deflate {
    Deflate::new_with_config(DeflateConfig {
        level: i32::from(level),
        window_bits: ENCODE_WINDOW_BITS,
        mem_level: MEM_LEVEL,
        ..DeflateConfig::default()
    })
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
        let slot = usize::from(self.level - 1);
        with_thread_state(&STATE, |state| {
            let cached = &mut state.deflate[slot];
            let deflate = cached.get_or_insert_with(|| new_deflate(self.level));
            // Bounding the output by the input length stops early on
            // incompressible clusters instead of finishing a useless stream.
            let result = match deflate.compress(input, &mut output[..limit], DeflateFlush::Finish) {
                Ok(Status::StreamEnd) => {
                    let written = deflate.total_out() as usize;
                    deflate.reset();
                    return Ok(CompressOutcome::Compressed(written));
                }
                Ok(Status::Ok | Status::BufError) => Ok(CompressOutcome::NoGain),
                Err(e) => Err(CodecError::Backend {
                    codec: NAME,
                    reason: deflate.error_message().unwrap_or(e.as_str()).to_owned(),
                }),
            };
            // zlib-rs 0.6's reset does not fully clear a stream stopped
            // half-way (level 1 leaves its open block, other levels their
            // pending bits), and a later stream overruns its pending buffer
            // and panics: drop that state instead. Only clusters that do
            // not compress pay for a fresh encoder.
            *cached = None;
            result
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
