//! Every codec, every level class, every content kind and cluster size.

mod common;

use common::{cluster, compress, sector_pad, Kind, CLUSTER_SIZES, KINDS};
use qcow2_codec::{Codec, Registry};

/// Lowest, default and highest level of every registered codec.
fn level_classes() -> Vec<(String, u8)> {
    let registry = Registry::builtin();
    let mut out = Vec::new();
    for info in registry.iter() {
        for level in [1, 0, info.levels().max()] {
            out.push((info.name().to_owned(), level));
        }
    }
    out
}

fn roundtrip(codec: &dyn Codec, kind: Kind, size: usize) {
    let data = cluster(kind, size);
    let Some(stream) = compress(codec, &data) else {
        assert!(
            !matches!(kind, Kind::Zeros | Kind::Text),
            "{codec:?} found no gain on {kind:?} x {size}"
        );
        return;
    };
    if kind == Kind::Zeros {
        assert!(
            stream.len() <= size / 4,
            "{codec:?}: zeros -> {} bytes",
            stream.len()
        );
    }
    let mut back = vec![0xAA; size];
    codec.decompress(&stream, &mut back).unwrap_or_else(|e| {
        panic!("{codec:?} {kind:?} x {size}: {e}");
    });
    assert!(back == data, "{codec:?} {kind:?} x {size}: data differs");

    // Sector slack after the stream, zeros or garbage, is ignored.
    let garbage = cluster(Kind::Random, 1024);
    for fill in [&[0u8][..], &garbage[..]] {
        let mut back = vec![0x55; size];
        codec
            .decompress(&sector_pad(&stream, fill), &mut back)
            .unwrap_or_else(|e| panic!("{codec:?} {kind:?} x {size} with slack: {e}"));
        assert!(
            back == data,
            "{codec:?} {kind:?} x {size} with slack: data differs"
        );
    }
}

/// Lowest, default and highest level of `name`, on every kind and size.
fn check_codec(name: &str) {
    let registry = Registry::builtin();
    let max = registry.info(name).unwrap().levels().max();
    for level in [1, 0, max] {
        let codec = registry.by_name(name, level).unwrap();
        for &size in &CLUSTER_SIZES {
            // The slowest settings (brotli quality 11, zstd 22) on 2 MiB of
            // every kind would dominate the suite; they get zeros and text.
            for kind in KINDS {
                if level == max && size > 512 * 1024 && matches!(kind, Kind::Binary | Kind::Random)
                {
                    continue;
                }
                roundtrip(codec.as_ref(), kind, size);
            }
        }
    }
}

#[test]
fn zlib_round_trips() {
    check_codec("zlib");
}

#[test]
fn zstd_round_trips() {
    check_codec("zstd");
}

#[test]
fn brotli_round_trips() {
    check_codec("brotli");
}

#[test]
fn state_is_reusable_after_a_no_gain_cluster() {
    // An incompressible cluster stops the encoder half-way; the next cluster
    // on the same thread must still compress and round-trip.
    let registry = Registry::builtin();
    let zlib_levels = (1..=9).map(|l| ("zlib".to_owned(), l));
    for (name, level) in level_classes().into_iter().chain(zlib_levels) {
        let codec = registry.by_name(&name, level).unwrap();
        for size in [4096, 512 * 1024] {
            assert!(compress(codec.as_ref(), &cluster(Kind::Random, size)).is_none());
            roundtrip(codec.as_ref(), Kind::Text, size);
        }
    }
}

#[test]
fn random_data_is_reported_as_no_gain() {
    let registry = Registry::builtin();
    for (name, level) in level_classes() {
        let codec = registry.by_name(&name, level).unwrap();
        let data = cluster(Kind::Random, 65536);
        assert!(compress(codec.as_ref(), &data).is_none(), "{name}:{level}");
    }
}

#[test]
fn output_buffer_too_small_is_no_gain() {
    let registry = Registry::builtin();
    for info in registry.iter() {
        let codec = info.build(0).unwrap();
        let data = cluster(Kind::Text, 65536);
        let full = compress(codec.as_ref(), &data).expect("text compresses");
        let mut small = vec![0; full.len() / 2];
        let outcome = codec.compress(&data, &mut small).unwrap();
        assert_eq!(
            outcome,
            qcow2_codec::CompressOutcome::NoGain,
            "{}",
            info.name()
        );
    }
}

#[test]
fn empty_input_is_no_gain() {
    for info in Registry::builtin().iter() {
        let codec = info.build(0).unwrap();
        let mut out = vec![0; 64];
        assert_eq!(
            codec.compress(&[], &mut out).unwrap(),
            qcow2_codec::CompressOutcome::NoGain
        );
    }
}

#[test]
fn codecs_are_shared_across_threads() {
    let registry = Registry::builtin();
    let codecs: Vec<_> = registry.iter().map(|i| i.build(0).unwrap()).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let codecs = &codecs;
            s.spawn(move || {
                for round in 0..8 {
                    let kind = KINDS[(t + round) % 3];
                    let data = cluster(kind, 4096 << (round % 3));
                    for codec in codecs {
                        let stream = compress(codec.as_ref(), &data).unwrap();
                        let mut back = vec![0; data.len()];
                        codec.decompress(&stream, &mut back).unwrap();
                        assert!(back == data);
                    }
                }
            });
        }
    });
}

/// A disk-like byte stream: runs of random letters from alphabets of 2 to
/// 31 symbols, random bytes and zeros, of 4 KiB to 200 KiB each.
fn mixed_disk(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = common::Rng::new(seed);
    let mut bytes = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let len = (4096 + (rng.next_u64() % 200_000) as usize).min(size - at);
        match rng.next_u64() % 4 {
            0 => {}
            1 => rng.fill(&mut bytes[at..at + len]),
            _ => {
                let alphabet = 2 + rng.next_u64() % 30;
                for b in &mut bytes[at..at + len] {
                    *b = b'a' + (rng.next_u64() % alphabet) as u8;
                }
            }
        }
        at += len;
    }
    bytes
}

#[test]
fn zlib_state_survives_streams_stopped_half_way() {
    // zlib-rs 0.6.8 panicked ("buf.len() must fit in remaining()") in a
    // stream following some that ran out of room half-way, at level 6 on
    // 4 KiB clusters of such a disk.
    let registry = Registry::builtin();
    let disk = mixed_disk(6 << 20, 7);
    for level in 1..=9 {
        let codec = registry.by_name("zlib", level).unwrap();
        for size in [4096, 65536] {
            for chunk in disk.chunks_exact(size) {
                if let Some(stream) = compress(codec.as_ref(), chunk) {
                    let mut back = vec![0; size];
                    codec.decompress(&stream, &mut back).expect("decompress");
                    assert!(back == chunk, "zlib:{level} x {size} round trip");
                }
            }
        }
    }
}
