//! Every zlib stream we write must decode with QEMU's 4 KiB window: no
//! back-reference may reach further than 4096 bytes. An independent decoder
//! (`common::deflate_scan`) reports the longest distance each stream uses.

mod common;

use common::deflate_scan::inflate;
use common::{cluster, compress, Kind, Rng};
use qcow2_codec::{Codec, Zlib};
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Status};

/// QEMU inflates with window bits 12.
const QEMU_WINDOW: usize = 4096;

/// Data whose best matches lie 4 KiB..32 KiB back: random blocks repeated.
fn far_repeats(len: usize) -> Vec<u8> {
    let mut rng = Rng::new(7);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut block = vec![0; 5000 + rng.below(20_000)];
        rng.fill(&mut block);
        out.extend_from_slice(&block);
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

#[test]
fn every_level_decodes_with_a_4k_window() {
    for level in 1..=Zlib::MAX_LEVEL {
        let codec = Zlib::new(level).unwrap();
        for size in [512, 4096, 65536, 2 * 1024 * 1024] {
            // The bit-by-bit checker is slow on 2 MiB: level classes only.
            if size > 65536 && ![1, Zlib::DEFAULT_LEVEL, Zlib::MAX_LEVEL].contains(&level) {
                continue;
            }
            let inputs = [
                cluster(Kind::Text, size),
                cluster(Kind::Binary, size),
                cluster(Kind::Zeros, size),
                far_repeats(size),
            ];
            for data in inputs {
                let Some(stream) = compress(&codec, &data) else {
                    continue;
                };
                let (back, max_dist) =
                    inflate(&stream).unwrap_or_else(|e| panic!("level {level} size {size}: {e}"));
                assert!(back == data, "level {level} size {size}: data differs");
                assert!(
                    max_dist <= QEMU_WINDOW,
                    "level {level} size {size}: distance {max_dist}"
                );
            }
        }
    }
}

#[test]
fn the_window_check_rejects_a_32k_window_stream() {
    // Guards the test above: a stream that does use far matches must fail.
    let data = far_repeats(65536);
    let mut deflate = Deflate::new_with_config(DeflateConfig {
        level: 6,
        window_bits: -15,
        ..DeflateConfig::default()
    });
    let mut stream = vec![0; 70000];
    let status = deflate
        .compress(&data, &mut stream, DeflateFlush::Finish)
        .unwrap();
    assert_eq!(status, Status::StreamEnd);
    stream.truncate(deflate.total_out() as usize);
    let (back, max_dist) = inflate(&stream).unwrap();
    assert!(back == data);
    assert!(max_dist > QEMU_WINDOW, "distance {max_dist}");
    // Our decoder accepts any window.
    let mut back = vec![0; data.len()];
    Zlib::new(0)
        .unwrap()
        .decompress(&stream, &mut back)
        .unwrap();
    assert!(back == data);
}
