//! `zstd` decompression on hostile input: no panic, no write beyond the
//! cluster, always terminates (libFuzzer's -timeout catches hangs). A
//! compress/decompress round trip of the same bytes rides along.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qcow2_codec::{Codec, CompressOutcome, Zstd};

/// Bytes after the cluster that must keep their fill value.
const GUARD: usize = 64;
const FILL: u8 = 0xA5;
/// Highest level tried in the round trip; slower ones starve the fuzzer.
const LEVEL_CAP: u8 = 12;

fuzz_target!(|data: &[u8]| {
    let Some((&select, input)) = data.split_first() else {
        return;
    };
    // 512 B .. 2 MiB, every qcow2 cluster size.
    let cluster = 512usize << (select % 13);
    let codec = Zstd::new(0).expect("default level");
    let mut buf = vec![FILL; cluster + GUARD];
    let (out, guard) = buf.split_at_mut(cluster);
    let _ = codec.decompress(input, out);
    assert!(guard.iter().all(|&b| b == FILL), "write past the cluster");

    // The input as a cluster of its own length must survive a round trip.
    let level = 1 + (select / 13) % LEVEL_CAP.min(Zstd::MAX_LEVEL);
    let codec = Zstd::new(level).expect("level in range");
    let mut packed = vec![0; input.len()];
    if let Ok(CompressOutcome::Compressed(n)) = codec.compress(input, &mut packed) {
        let mut back = vec![0; input.len()];
        codec
            .decompress(&packed[..n], &mut back)
            .expect("our own stream decodes");
        assert!(back == input, "round trip differs");
    }
});
