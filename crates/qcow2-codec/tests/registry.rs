//! Look-ups by name and QEMU type, level resolution, downstream codecs.

use std::sync::Arc;

use qcow2_codec::{
    check_compress_args, check_decompress_args, Brotli, Codec, CodecError, CodecInfo,
    CompressOutcome, LevelSpec, Registry, RegistryError, Zlib, Zstd,
};

#[test]
fn builtin_names_and_default_levels() {
    let registry = Registry::builtin();
    let names: Vec<_> = registry.iter().map(CodecInfo::name).collect();
    assert_eq!(names, ["zlib", "zstd", "brotli"]);
    for (name, default, max) in [
        ("zlib", Zlib::DEFAULT_LEVEL, 9),
        ("zstd", Zstd::DEFAULT_LEVEL, 22),
        ("brotli", Brotli::DEFAULT_LEVEL, 12),
    ] {
        let codec = registry.by_name(name, 0).unwrap();
        assert_eq!((codec.name(), codec.level()), (name, default));
        assert_eq!(registry.by_name(name, 1).unwrap().level(), 1);
        assert_eq!(registry.by_name(name, max).unwrap().level(), max);
        let err = registry.by_name(name, max + 1).unwrap_err();
        assert_eq!(
            err,
            RegistryError::LevelOutOfRange {
                codec: name.to_owned(),
                level: max + 1,
                max
            }
        );
        assert!(err.to_string().contains(&format!("1..={max}")), "{err}");
    }
}

#[test]
fn brotli_level_is_quality_plus_one() {
    assert_eq!(Brotli::new(1).unwrap().quality(), 0);
    assert_eq!(Brotli::new(12).unwrap().quality(), 11);
}

#[test]
fn qemu_compression_types() {
    let registry = Registry::builtin();
    assert_eq!(registry.by_qemu_type(0).unwrap().name(), "zlib");
    assert_eq!(registry.by_qemu_type(1).unwrap().name(), "zstd");
    let err = registry.by_qemu_type(2).unwrap_err();
    assert!(matches!(
        err,
        RegistryError::UnknownQemuType { value: 2, .. }
    ));
    assert!(err.to_string().contains("0=zlib, 1=zstd"), "{err}");
}

#[test]
fn unknown_names_are_named_in_the_error() {
    let registry = Registry::builtin();
    for name in ["lz4", "ZLIB", "zlib ", ""] {
        let err = registry.by_name(name, 0).unwrap_err();
        assert!(matches!(&err, RegistryError::UnknownName { name: n, .. } if n == name));
        assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        assert!(err.to_string().contains("zlib, zstd, brotli"), "{err}");
    }
}

/// A toy downstream codec: run-length pairs (count, byte).
#[derive(Debug)]
struct Rle;

impl Codec for Rle {
    fn name(&self) -> &'static str {
        "rle"
    }

    fn level(&self) -> u8 {
        1
    }

    fn compress(&self, input: &[u8], output: &mut [u8]) -> Result<CompressOutcome, CodecError> {
        let Some(limit) = check_compress_args("rle", input, output)? else {
            return Ok(CompressOutcome::NoGain);
        };
        let mut n = 0;
        for run in input.chunk_by(|a, b| a == b) {
            for part in run.chunks(255) {
                if n + 2 > limit {
                    return Ok(CompressOutcome::NoGain);
                }
                output[n] = part.len() as u8;
                output[n + 1] = part[0];
                n += 2;
            }
        }
        Ok(CompressOutcome::Compressed(n))
    }

    fn decompress(&self, input: &[u8], cluster: &mut [u8]) -> Result<(), CodecError> {
        check_decompress_args("rle", cluster)?;
        let mut at = 0;
        for pair in input.chunks_exact(2) {
            if at == cluster.len() {
                break;
            }
            let end = at + usize::from(pair[0]);
            if end > cluster.len() {
                return Err(CodecError::TooMuchOutput {
                    codec: "rle",
                    expected: cluster.len(),
                });
            }
            cluster[at..end].fill(pair[1]);
            at = end;
        }
        if at < cluster.len() {
            return Err(CodecError::Truncated {
                codec: "rle",
                expected: cluster.len(),
                got: at,
            });
        }
        Ok(())
    }
}

fn rle_info() -> CodecInfo {
    CodecInfo::new("rle", LevelSpec::new("rle", 1, 1).unwrap(), |_| {
        Arc::new(Rle)
    })
    .unwrap()
}

#[test]
fn a_downstream_codec_can_be_registered_and_used() {
    let mut registry = Registry::builtin();
    registry.register(rle_info()).unwrap();
    let codec = registry.by_name("rle", 0).unwrap();
    let data = [[7u8; 300], [0u8; 300]].concat();
    let mut out = vec![0; data.len()];
    let CompressOutcome::Compressed(n) = codec.compress(&data, &mut out).unwrap() else {
        panic!("runs compress");
    };
    let mut back = vec![0; data.len()];
    codec.decompress(&out[..n], &mut back).unwrap();
    assert_eq!(back, data);
    assert!(matches!(
        registry.by_name("rle", 2),
        Err(RegistryError::LevelOutOfRange { max: 1, .. })
    ));
}

#[test]
fn duplicates_are_refused() {
    let mut registry = Registry::builtin();
    registry.register(rle_info()).unwrap();
    assert_eq!(
        registry.register(rle_info()).unwrap_err(),
        RegistryError::DuplicateName { name: "rle".into() }
    );
    let mut empty = Registry::empty();
    empty.register(rle_info().with_qemu_type(1)).unwrap();
    let zstd_again = Registry::builtin().info("zstd").unwrap().clone();
    assert_eq!(
        empty.register(zstd_again).unwrap_err(),
        RegistryError::DuplicateQemuType {
            value: 1,
            existing: "rle".into()
        }
    );
}

#[test]
fn names_must_fit_the_header_field() {
    let levels = LevelSpec::new("x", 1, 1).unwrap();
    for bad in ["", "seventeen-bytes!!", "has space", "naïve", "nul\0"] {
        let err = CodecInfo::new(bad, levels, |_| Arc::new(Rle)).unwrap_err();
        assert!(matches!(err, RegistryError::InvalidName { .. }), "{bad:?}");
    }
    assert!(CodecInfo::new("sixteen-bytes-ok", levels, |_| Arc::new(Rle)).is_ok());
}

#[test]
fn level_specs_are_validated() {
    assert!(LevelSpec::new("x", 0, 0).is_err());
    assert!(LevelSpec::new("x", 3, 0).is_err());
    assert!(LevelSpec::new("x", 3, 4).is_err());
    let spec = LevelSpec::new("x", 3, 2).unwrap();
    assert_eq!((spec.max(), spec.default_level()), (3, 2));
    assert_eq!(spec.resolve("x", 0), Ok(2));
    assert_eq!(spec.resolve("x", 3), Ok(3));
    assert!(spec.resolve("x", 4).is_err());
}

#[test]
fn codecs_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn Codec>();
    assert_send_sync::<Registry>();
    assert_send_sync::<CodecInfo>();
}
