//! zstd reading rules: no length prefix, several frames, slack after the
//! cluster, and errors on short or long streams.

mod common;

use common::{cluster, Kind};
use qcow2_codec::{Codec, CodecError, Zstd};
use zstd_safe::{CCtx, CParameter};

fn frame(data: &[u8], with_size: bool) -> Vec<u8> {
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::ContentSizeFlag(with_size))
        .unwrap();
    let mut out = vec![0; zstd_safe::compress_bound(data.len())];
    let n = cctx.compress2(&mut out[..], data).unwrap();
    out.truncate(n);
    out
}

/// A skippable frame (magic 0x184D2A50) carrying `payload`.
fn skippable(payload: &[u8]) -> Vec<u8> {
    let mut out = 0x184D_2A50u32.to_le_bytes().to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn several_frames_fill_one_cluster() {
    let data = cluster(Kind::Text, 65536);
    let mut stream = frame(&data[..10000], true);
    stream.extend(skippable(b"ignored"));
    stream.extend(frame(&[], true));
    stream.extend(frame(&data[10000..], false));
    stream.extend([0; 300]);
    let mut out = vec![0; data.len()];
    Zstd::new(0).unwrap().decompress(&stream, &mut out).unwrap();
    assert!(out == data);
}

#[test]
fn anything_after_a_full_cluster_is_ignored() {
    let data = cluster(Kind::Binary, 4096);
    let mut stream = frame(&data, true);
    stream.extend(b"leftovers of the next cluster, not a frame");
    let mut out = vec![0; data.len()];
    Zstd::new(0).unwrap().decompress(&stream, &mut out).unwrap();
    assert!(out == data);
}

#[test]
fn frames_that_stop_short_are_truncated() {
    let data = cluster(Kind::Text, 4096);
    let mut stream = frame(&data[..1000], true);
    stream.extend([0; 100]);
    let mut out = vec![0; data.len()];
    let err = Zstd::new(0)
        .unwrap()
        .decompress(&stream, &mut out)
        .unwrap_err();
    assert_eq!(
        err,
        CodecError::Truncated {
            codec: "zstd",
            expected: 4096,
            got: 1000
        }
    );
}

#[test]
fn overflow_is_caught_with_and_without_a_declared_size() {
    let data = cluster(Kind::Text, 8192);
    for with_size in [true, false] {
        let stream = frame(&data, with_size);
        let mut out = vec![0; 4096];
        let err = Zstd::new(0)
            .unwrap()
            .decompress(&stream, &mut out)
            .unwrap_err();
        assert_eq!(
            err,
            CodecError::TooMuchOutput {
                codec: "zstd",
                expected: 4096
            },
            "content size flag {with_size}"
        );
    }
}

#[test]
fn bad_magic_is_corrupt() {
    let mut out = vec![0; 4096];
    let err = Zstd::new(0)
        .unwrap()
        .decompress(b"not zstd at all", &mut out)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Corrupt {
                codec: "zstd",
                produced: 0,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn our_frames_carry_no_length_prefix() {
    // A cluster starts directly with the zstd magic number, as QEMU writes it.
    let data = cluster(Kind::Text, 4096);
    let mut out = vec![0; 4096];
    let codec = Zstd::new(0).unwrap();
    let qcow2_codec::CompressOutcome::Compressed(n) = codec.compress(&data, &mut out).unwrap()
    else {
        panic!("text must compress");
    };
    assert_eq!(out[..4], 0xFD2F_B528u32.to_le_bytes());
    assert_eq!(zstd_safe::find_frame_compressed_size(&out[..n]), Ok(n));
}
