//! Round trips and rule checks of the header area (fixed header, extension chain, backing name).

use arbitrary::{Arbitrary, Unstructured};
use qcow2_format::extensions::{CompressFormat, Dedup, Extension, ExtensionChain, FeatureName};
use qcow2_format::features::{self, FeatureKind};
use qcow2_format::{rules, Header, HeaderArea, HostOffset, RuleId};

fn base_header(version: u32) -> Header {
    let mut h = Header::new(version, 16, 1 << 30);
    h.l1_size = 2;
    h.l1_table_offset = HostOffset(0x30000);
    h.refcount_table_offset = HostOffset(0x10000);
    h.refcount_table_clusters = 1;
    h
}

fn area(version: u32, extensions: Vec<Extension>) -> HeaderArea {
    HeaderArea {
        header: base_header(version),
        chain: ExtensionChain {
            extensions,
            end_marker: true,
            ..Default::default()
        },
        backing_file: None,
    }
}

fn rule_of(result: qcow2_format::Result<impl std::fmt::Debug>) -> RuleId {
    result.expect_err("expected a rule violation").rule
}

fn roundtrip(mut a: HeaderArea) -> HeaderArea {
    let bytes = a.to_bytes().unwrap();
    let parsed = HeaderArea::parse(&bytes).unwrap();
    assert_eq!(parsed, a);
    let mut again = parsed.clone();
    assert_eq!(again.to_bytes().unwrap(), bytes, "serialize(parse(b)) == b");
    parsed
}

#[test]
fn v3_area_with_every_known_extension_roundtrips() {
    let mut a = area(
        3,
        vec![
            Extension::BackingFormat("qcow2".into()),
            Extension::FeatureTable(vec![
                FeatureName::new(FeatureKind::Incompatible, 0, "dirty bit"),
                FeatureName::new(FeatureKind::Compatible, 0, "lazy refcounts"),
            ]),
            Extension::CompressFormat(CompressFormat::new("zstd", 5).unwrap()),
            Extension::Dedup(Dedup {
                l1_offset: HostOffset(0x40000),
                l1_size: 1,
            }),
            Extension::Unknown {
                kind: 0x1234_5678,
                data: vec![1, 2, 3],
            },
        ],
    );
    a.header.incompatible_features = features::INCOMPAT_BIT1 | features::INCOMPAT_BIT2;
    a.backing_file = Some(b"base.qcow2".to_vec());
    let parsed = roundtrip(a);
    let assessment = parsed
        .assess(Some(&|name: &str| (name == "zstd").then_some(22)))
        .unwrap();
    assert!(assessment.features.dedup());
    assert!(assessment.features.compress_format());
    assert!(!assessment.features.corrupt());
    assert_eq!(assessment.read_only, None);
    assert!(assessment
        .notes
        .iter()
        .any(|n| n.rule == rules::EXT_UNKNOWN));
    assert_eq!(parsed.backing_format(), Some("qcow2"));
    assert_eq!(parsed.backing_file.as_deref(), Some(&b"base.qcow2"[..]));
}

#[test]
fn v2_area_roundtrips_and_reads_as_refcount_order_4() {
    let parsed = roundtrip(area(2, vec![Extension::BackingFormat("raw".into())]));
    assert_eq!(parsed.header.header_length, 72);
    assert_eq!(parsed.header.refcount_bits(), 16);
    parsed.assess(None).unwrap();
}

/// Found by the header fuzz target: without an end marker or extensions, the
/// backing file name starts right at the header end and must not be read as a chain.
#[test]
fn backing_name_right_after_the_header_is_not_an_extension() {
    let mut a = area(2, vec![]);
    a.chain.end_marker = false;
    a.backing_file = Some(b"base".to_vec());
    let parsed = roundtrip(a);
    assert_eq!(parsed.header.backing_file_offset, 72);
    assert!(parsed.chain.extensions.is_empty());
}

#[test]
fn bit1_without_dedup_is_corrupt_and_read_only() {
    let mut a = area(3, vec![]);
    a.header.incompatible_features = features::INCOMPAT_BIT1;
    let assessment = a.assess(None).unwrap();
    assert!(assessment.features.corrupt());
    assert_eq!(assessment.read_only, Some(rules::FEAT_CORRUPT));
}

#[test]
fn dedup_extension_without_bit1_is_stale() {
    let a = area(
        3,
        vec![Extension::Dedup(Dedup {
            l1_offset: HostOffset(0x40000),
            l1_size: 4,
        })],
    );
    let assessment = a.assess(None).unwrap();
    assert!(assessment.features.dedup_stale);
    assert!(assessment.notes.iter().any(|n| n.rule == rules::DD_STALE));
}

#[test]
fn bit2_meaning_follows_the_extension_present() {
    let mut df = area(3, vec![Extension::ExternalDataFile("data.raw".into())]);
    df.header.incompatible_features = features::INCOMPAT_BIT2;
    assert!(df.assess(None).unwrap().features.external_data_file());

    let mut neither = area(3, vec![]);
    neither.header.incompatible_features = features::INCOMPAT_BIT2;
    assert_eq!(rule_of(neither.assess(None)), rules::FEAT_BIT2);

    let mut both = area(
        3,
        vec![
            Extension::ExternalDataFile("data.raw".into()),
            Extension::CompressFormat(CompressFormat::new("zlib", 0).unwrap()),
        ],
    );
    both.header.incompatible_features = features::INCOMPAT_BIT2;
    assert_eq!(rule_of(both.assess(None)), rules::FEAT_BIT2);

    let cf_without_bit = area(
        3,
        vec![Extension::CompressFormat(
            CompressFormat::new("zlib", 0).unwrap(),
        )],
    );
    assert_eq!(rule_of(cf_without_bit.assess(None)), rules::CF_PRESENCE);
}

#[test]
fn unknown_incompatible_bit_is_refused_with_its_table_name() {
    let mut a = area(
        3,
        vec![Extension::FeatureTable(vec![FeatureName::new(
            FeatureKind::Incompatible,
            9,
            "teleport",
        )])],
    );
    a.header.incompatible_features = 1 << 9;
    let err = a.assess(None).unwrap_err();
    assert_eq!(err.rule, rules::FEAT_INCOMPAT_UNKNOWN);
    assert!(err.to_string().contains("teleport"), "{err}");
}

#[test]
fn compression_type_needs_bit3_and_excludes_compress_format() {
    let mut a = area(3, vec![]);
    a.header.compression_type = 1;
    assert_eq!(rule_of(a.assess(None)), rules::HDR_COMPRESSION_TYPE);
    a.header.incompatible_features = features::INCOMPAT_COMPRESSION_TYPE;
    a.assess(None).unwrap();

    let mut both = area(
        3,
        vec![Extension::CompressFormat(
            CompressFormat::new("zstd", 0).unwrap(),
        )],
    );
    both.header.incompatible_features =
        features::INCOMPAT_BIT2 | features::INCOMPAT_COMPRESSION_TYPE;
    both.header.compression_type = 1;
    assert_eq!(rule_of(both.assess(None)), rules::CF_CONFLICT);
}

#[test]
fn unknown_compress_format_is_named_in_the_error() {
    let mut a = area(
        3,
        vec![Extension::CompressFormat(
            CompressFormat::new("lzma", 0).unwrap(),
        )],
    );
    a.header.incompatible_features = features::INCOMPAT_BIT2;
    let err = a.assess(Some(&|_: &str| None)).unwrap_err();
    assert_eq!(err.rule, rules::CF_KNOWN);
    assert!(err.to_string().contains("lzma"), "{err}");
}

#[test]
fn extension_chain_framing_errors() {
    let mut a = area(3, vec![Extension::BackingFormat("qcow2".into())]);
    let mut bytes = a.to_bytes().unwrap();
    // "qcow2" is 5 bytes; byte 5 of the data is padding. QEMU ignores padding: reported, not refused.
    bytes[112 + 8 + 5] = 1;
    let parsed = HeaderArea::parse(&bytes).unwrap();
    let notes = parsed.assess(None).unwrap().notes;
    assert!(
        notes
            .iter()
            .any(|n| n.rule == rules::EXT_PADDING && n.offset == 112 + 8 + 5),
        "{notes:?}"
    );

    let mut dup = area(
        3,
        vec![
            Extension::BackingFormat("a".into()),
            Extension::BackingFormat("b".into()),
        ],
    );
    let bytes = dup.to_bytes().unwrap();
    assert_eq!(rule_of(HeaderArea::parse(&bytes)), rules::EXT_DUPLICATE);

    let mut long = area(
        3,
        vec![Extension::Unknown {
            kind: 7,
            data: vec![0; 16],
        }],
    );
    let mut bytes = long.to_bytes().unwrap();
    bytes[112 + 4..112 + 8].copy_from_slice(&0x0100_0000u32.to_be_bytes());
    assert_eq!(rule_of(HeaderArea::parse(&bytes)), rules::EXT_FRAMING);
}

#[test]
fn parse_never_reads_past_a_short_buffer() {
    let mut a = area(3, vec![Extension::BackingFormat("qcow2".into())]);
    let bytes = a.to_bytes().unwrap();
    for len in 0..bytes.len() {
        let _ = HeaderArea::parse(&bytes[..len]);
    }
    assert_eq!(rule_of(HeaderArea::parse(&bytes[..50])), rules::HDR_LENGTH);
}

/// A structurally valid area drawn from arbitrary bytes.
fn arbitrary_area(u: &mut Unstructured<'_>) -> arbitrary::Result<HeaderArea> {
    let version = if bool::arbitrary(u)? { 3 } else { 2 };
    let cluster_bits = u.int_in_range(9..=21)?;
    let mut h = Header::new(version, cluster_bits, u.int_in_range(0..=1u64 << 40)?);
    h.l1_size = u32::arbitrary(u)?;
    h.l1_table_offset = HostOffset(u64::arbitrary(u)?);
    h.refcount_table_offset = HostOffset(u64::arbitrary(u)?);
    h.refcount_table_clusters = u32::arbitrary(u)?;
    h.nb_snapshots = u32::arbitrary(u)?;
    h.snapshots_offset = HostOffset(u64::arbitrary(u)?);
    h.size = u64::arbitrary(u)?;
    h.crypt_method = u32::arbitrary(u)?;
    if version == 3 {
        h.incompatible_features = u64::arbitrary(u)?;
        h.compatible_features = u64::arbitrary(u)?;
        h.autoclear_features = u64::arbitrary(u)?;
        h.refcount_order = u32::arbitrary(u)?;
        h.compression_type = u8::arbitrary(u)?;
        let extra_words = u.int_in_range(0..=4usize)?;
        h.tail = (0..7 + 8 * extra_words)
            .map(|_| u8::arbitrary(u))
            .collect::<arbitrary::Result<_>>()?;
        h.header_length = 105 + h.tail.len() as u32;
    }
    let mut extensions = Vec::new();
    let mut used = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let ext = match u.int_in_range(0..=5)? {
            0 => Extension::BackingFormat(word(u)?),
            1 => Extension::ExternalDataFile(word(u)?),
            2 => {
                let extra_data: Vec<u8> = Vec::arbitrary(u)?;
                // Only a length that is not already a multiple of 8 can
                // tell the two readings apart.
                let padded = bool::arbitrary(u)? && extra_data.len() % 8 != 0;
                Extension::CompressFormat(CompressFormat {
                    name: word(u)?.chars().take(16).collect(),
                    level: u8::arbitrary(u)?,
                    extra_data,
                    length_includes_padding: padded,
                })
            }
            3 => Extension::Dedup(Dedup {
                l1_offset: HostOffset(u64::arbitrary(u)?),
                l1_size: u32::arbitrary(u)?,
            }),
            4 => Extension::FeatureTable(
                (0..u.int_in_range(0..=3)?)
                    .map(|_| {
                        Ok(FeatureName::new(
                            FeatureKind::Autoclear,
                            u.int_in_range(0..=63)?,
                            &word(u)?,
                        ))
                    })
                    .collect::<arbitrary::Result<_>>()?,
            ),
            _ => Extension::Unknown {
                kind: u.int_in_range(1..=0xffff)?,
                data: Vec::arbitrary(u)?,
            },
        };
        if !matches!(ext, Extension::Unknown { .. }) && used.contains(&ext.kind()) {
            continue;
        }
        used.push(ext.kind());
        extensions.push(ext);
    }
    let backing_file = if bool::arbitrary(u)? {
        Some(word(u)?.into_bytes())
    } else {
        None
    };
    Ok(HeaderArea {
        header: h,
        chain: ExtensionChain {
            extensions,
            end_marker: true,
            ..Default::default()
        },
        backing_file,
    })
}

fn word(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let len = u.int_in_range(1..=12)?;
    (0..len)
        .map(|_| Ok(char::from(u.int_in_range(b'a'..=b'z')?)))
        .collect()
}

#[test]
fn arbitrary_areas_roundtrip() {
    arbtest::arbtest(|u| {
        let mut a = arbitrary_area(u)?;
        if let Ok(bytes) = a.to_bytes() {
            let parsed = HeaderArea::parse(&bytes).unwrap();
            assert_eq!(parsed, a);
            let mut again = parsed;
            assert_eq!(again.to_bytes().unwrap(), bytes);
            // The assessment may accept or reject these values, but never panics.
            let _ = again.assess(Some(&|_: &str| Some(9)));
        }
        Ok(())
    })
    .budget_ms(2_000);
}

#[test]
fn arbitrary_bytes_never_panic() {
    arbtest::arbtest(|u| {
        let bytes: Vec<u8> = Vec::arbitrary(u)?;
        if let Ok(a) = HeaderArea::parse(&bytes) {
            let _ = a.assess(None);
        }
        Ok(())
    })
    .budget_ms(1_000);
}
