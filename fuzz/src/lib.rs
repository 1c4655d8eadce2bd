//! Checks shared by the codec fuzz targets.

use qcow2_codec::{Codec, CompressOutcome};

/// Bytes after the cluster that must keep their fill value.
const GUARD: usize = 64;
const FILL: u8 = 0xA5;

/// Decompression of hostile input never panics or writes past the cluster
/// (libFuzzer's -timeout catches hangs), and the same bytes survive a
/// compress/decompress round trip at a level drawn from the input.
///
/// `build(level)` makes the codec; `max_level` caps the levels tried, since
/// the slowest ones starve the fuzzer.
pub fn check_codec(data: &[u8], max_level: u8, build: impl Fn(u8) -> Box<dyn Codec>) {
    let Some((&select, input)) = data.split_first() else {
        return;
    };
    // 512 B .. 2 MiB, every qcow2 cluster size.
    let cluster = 512usize << (select % 13);
    let mut buf = vec![FILL; cluster + GUARD];
    let (out, guard) = buf.split_at_mut(cluster);
    let _ = build(0).decompress(input, out);
    assert!(guard.iter().all(|&b| b == FILL), "write past the cluster");

    let codec = build(1 + (select / 13) % max_level);
    let mut packed = vec![0; input.len()];
    if let Ok(CompressOutcome::Compressed(n)) = codec.compress(input, &mut packed) {
        let mut back = vec![0; input.len()];
        codec
            .decompress(&packed[..n], &mut back)
            .expect("our own stream decodes");
        assert!(back == input, "round trip differs");
    }
}
