//! Corrupt, truncated and mis-sized inputs give typed errors, never panics.

mod common;

use common::{cluster, compress, Kind, Rng};
use qcow2_codec::{Codec, CodecError, Registry, MAX_CLUSTER_SIZE};

fn codecs() -> Vec<std::sync::Arc<dyn Codec>> {
    Registry::builtin()
        .iter()
        .map(|i| i.build(0).unwrap())
        .collect()
}

fn text_stream(codec: &dyn Codec, size: usize) -> (Vec<u8>, Vec<u8>) {
    let data = cluster(Kind::Text, size);
    let stream = compress(codec, &data).expect("text compresses");
    (data, stream)
}

#[test]
fn truncated_streams_are_errors() {
    for codec in codecs() {
        let (_, stream) = text_stream(codec.as_ref(), 65536);
        for cut in [0, 1, 7, stream.len() / 2, stream.len() * 9 / 10] {
            let mut out = vec![0; 65536];
            let err = codec
                .decompress(&stream[..cut], &mut out)
                .expect_err(&format!("{} accepted a stream cut at {cut}", codec.name()));
            assert!(
                matches!(
                    err,
                    CodecError::Truncated { .. } | CodecError::Corrupt { .. }
                ),
                "{}: {err:?}",
                codec.name()
            );
            assert!(err.to_string().starts_with(codec.name()), "{err}");
        }
    }
}

#[test]
fn a_stream_shorter_than_the_cluster_is_truncated() {
    for codec in codecs() {
        let (_, stream) = text_stream(codec.as_ref(), 4096);
        let mut out = vec![0; 8192];
        let err = codec.decompress(&stream, &mut out).unwrap_err();
        assert_eq!(
            err,
            CodecError::Truncated {
                codec: codec.name(),
                expected: 8192,
                got: 4096
            }
        );
    }
}

#[test]
fn a_stream_longer_than_the_cluster_is_too_much_output() {
    for codec in codecs() {
        let (_, stream) = text_stream(codec.as_ref(), 8192);
        let mut out = vec![0; 4096];
        let err = codec.decompress(&stream, &mut out).unwrap_err();
        assert_eq!(
            err,
            CodecError::TooMuchOutput {
                codec: codec.name(),
                expected: 4096
            }
        );
    }
}

#[test]
fn random_bytes_are_errors() {
    let mut rng = Rng::new(99);
    for codec in codecs() {
        for len in [1, 2, 16, 511, 4096, 70000] {
            let mut garbage = vec![0; len];
            rng.fill(&mut garbage);
            let mut out = vec![0; 65536];
            assert!(
                codec.decompress(&garbage, &mut out).is_err(),
                "{} decoded {len} random bytes",
                codec.name()
            );
        }
    }
}

#[test]
fn empty_and_zero_inputs_are_errors() {
    for codec in codecs() {
        let mut out = vec![0; 4096];
        for input in [&[][..], &[0u8; 512][..]] {
            assert!(
                codec.decompress(input, &mut out).is_err(),
                "{}",
                codec.name()
            );
        }
    }
}

#[test]
fn bit_flips_never_panic_and_never_overrun() {
    let mut rng = Rng::new(5);
    for codec in codecs() {
        let (data, stream) = text_stream(codec.as_ref(), 16384);
        let mut failures = 0;
        for _ in 0..300 {
            let mut bad = stream.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bad.len());
                bad[at] ^= 1 << rng.below(8);
            }
            // A guard after the cluster must stay untouched.
            let mut buf = vec![0xC5; data.len() + 64];
            let (out, guard) = buf.split_at_mut(data.len());
            match codec.decompress(&bad, out) {
                Ok(()) => {}
                Err(e) => {
                    failures += 1;
                    assert!(e.to_string().starts_with(codec.name()));
                }
            }
            assert!(guard.iter().all(|&b| b == 0xC5));
        }
        // Flipped bits must be noticed most of the time (deflate has no
        // checksum, so some flips in literals decode to other data).
        assert!(failures > 100, "{}: only {failures} errors", codec.name());
    }
}

#[test]
fn mis_sized_buffers_are_rejected() {
    for codec in codecs() {
        let mut empty: [u8; 0] = [];
        assert!(matches!(
            codec.decompress(&[1, 2, 3], &mut empty),
            Err(CodecError::BadClusterSize { len: 0, .. })
        ));
        let mut huge = vec![0; MAX_CLUSTER_SIZE + 1];
        assert!(matches!(
            codec.decompress(&[1, 2, 3], &mut huge),
            Err(CodecError::BadClusterSize { .. })
        ));
        let input = vec![0; MAX_CLUSTER_SIZE + 1];
        let mut out = vec![0; 1024];
        assert!(matches!(
            codec.compress(&input, &mut out),
            Err(CodecError::InputTooLarge { .. })
        ));
    }
}

#[test]
fn zlib_reserved_block_type_is_corrupt() {
    let codec = Registry::builtin().by_name("zlib", 0).unwrap();
    let mut out = vec![0; 4096];
    // BFINAL = 1, BTYPE = 3 (reserved).
    let err = codec.decompress(&[0x07, 0, 0, 0], &mut out).unwrap_err();
    assert!(
        matches!(err, CodecError::Corrupt { codec: "zlib", .. }),
        "{err:?}"
    );
}

/// Brotli-encodes `data` with the non-standard large-window extension.
fn brotli_large_window(data: &[u8]) -> Vec<u8> {
    use brotli::enc::encode::{BrotliEncoderOperation, BrotliEncoderParameter as P};
    let mut enc =
        brotli::enc::encode::BrotliEncoderStateStruct::new(brotli::enc::StandardAlloc::default());
    for (p, v) in [
        (P::BROTLI_PARAM_LARGE_WINDOW, 1),
        (P::BROTLI_PARAM_LGWIN, 26),
    ] {
        assert!(enc.set_parameter(p, v));
    }
    let mut out = vec![0; data.len() + 1024];
    let (mut avail_in, mut in_pos, mut avail_out, mut out_pos) = (data.len(), 0, out.len(), 0);
    let ok = enc.compress_stream(
        BrotliEncoderOperation::BROTLI_OPERATION_FINISH,
        &mut avail_in,
        data,
        &mut in_pos,
        &mut avail_out,
        &mut out,
        &mut out_pos,
        &mut None,
        &mut |_, _, _, _| (),
    );
    assert!(ok && enc.is_finished());
    out.truncate(out_pos);
    out
}

#[test]
fn brotli_rejects_large_window_streams() {
    // Large windows (up to 1 GiB) are a non-standard extension; accepting
    // them would let a hostile cluster ask for a huge ring buffer.
    let data = cluster(Kind::Text, 4096);
    let stream = brotli_large_window(&data);
    // The stream is valid for a decoder that allows large windows...
    let mut reference = Vec::new();
    brotli_decompressor::BrotliDecompress(&mut &stream[..], &mut reference).unwrap();
    assert!(reference == data);
    // ...and refused by ours.
    let codec = Registry::builtin().by_name("brotli", 0).unwrap();
    let mut out = vec![0; data.len()];
    let err = codec.decompress(&stream, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Corrupt {
                codec: "brotli",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("WINDOW"), "{err}");
}
