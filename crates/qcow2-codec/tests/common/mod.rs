//! Test data: real text, real machine code, zeros and random bytes.
#![allow(dead_code)]

pub mod deflate_scan;

use qcow2_codec::{Codec, CompressOutcome};

/// Cluster sizes from the smallest to the largest qcow2 allows.
pub const CLUSTER_SIZES: [usize; 5] = [512, 4096, 65536, 512 * 1024, 2 * 1024 * 1024];

/// Deterministic xorshift64* generator (no dependency, reproducible).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Kinds of cluster content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
    Zeros,
    Random,
}

pub const KINDS: [Kind; 4] = [Kind::Text, Kind::Binary, Kind::Zeros, Kind::Random];

/// Repeats `source` (starting at a size-dependent offset) to fill `len` bytes.
fn tile(source: &[u8], len: usize) -> Vec<u8> {
    tile_from(source, len / 3, len)
}

/// Repeats `source` from offset `start` (wrapping) to fill `len` bytes.
fn tile_from(source: &[u8], start: usize, len: usize) -> Vec<u8> {
    source
        .iter()
        .cycle()
        .skip(start % source.len())
        .take(len)
        .copied()
        .collect()
}

/// Real content to cut many different clusters from: text or machine code.
pub fn source(kind: Kind) -> Vec<u8> {
    match kind {
        Kind::Text => text_corpus(),
        Kind::Binary => binary_corpus(),
        Kind::Zeros | Kind::Random => panic!("{kind:?} has no source"),
    }
}

/// The `index`-th `len`-byte cluster cut from `source` (wrapping around):
/// consecutive indexes give consecutive, different clusters.
pub fn cut(source: &[u8], len: usize, index: usize) -> Vec<u8> {
    tile_from(source, index.wrapping_mul(len).wrapping_add(len / 3), len)
}

/// Real text: this crate's own sources and README.
fn text_corpus() -> Vec<u8> {
    let mut text = Vec::new();
    for part in [
        include_str!("../../src/zlib.rs"),
        include_str!("../../src/zstd.rs"),
        include_str!("../../src/brotli.rs"),
        include_str!("../../src/registry.rs"),
        include_str!("../../src/codec.rs"),
        include_str!("../../README.md"),
    ] {
        text.extend_from_slice(part.as_bytes());
    }
    text
}

/// Real machine code: the running test binary.
fn binary_corpus() -> Vec<u8> {
    let exe = std::env::current_exe().expect("test binary path");
    let bytes = std::fs::read(exe).expect("read test binary");
    // Skip the ELF header region, which is mostly zeros.
    bytes[bytes.len() / 4..].to_vec()
}

/// One cluster of `kind` content.
pub fn cluster(kind: Kind, len: usize) -> Vec<u8> {
    match kind {
        Kind::Text => tile(&text_corpus(), len),
        Kind::Binary => tile(&binary_corpus(), len),
        Kind::Zeros => vec![0; len],
        Kind::Random => {
            let mut v = vec![0; len];
            Rng::new(len as u64).fill(&mut v);
            v
        }
    }
}

/// Compresses `data` with `codec`, returning the stream or `None` for no gain.
pub fn compress(codec: &dyn Codec, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0; data.len()];
    match codec.compress(data, &mut out).expect("compress") {
        CompressOutcome::Compressed(n) => {
            assert!(
                n < data.len(),
                "{codec:?}: {n} bytes is no gain on {}",
                data.len()
            );
            out.truncate(n);
            Some(out)
        }
        CompressOutcome::NoGain => None,
    }
}

/// Pads a stream to the next 512-byte boundary as a qcow2 descriptor would,
/// with `fill` bytes (zeros or leftovers of the next cluster).
pub fn sector_pad(stream: &[u8], fill: &[u8]) -> Vec<u8> {
    let mut padded = stream.to_vec();
    let target = stream.len().div_ceil(512) * 512 + 512;
    padded.extend(fill.iter().cycle().take(target - stream.len()));
    padded
}
