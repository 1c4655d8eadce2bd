//! The hand-written hex fixtures of `conformance/fixtures/` decode to the
//! values their comments state, and our writer's images hold the same bytes
//! where the seed layouts are fixed.

use std::sync::Arc;

use qcow2_conformance::engine_images::{build, compress_format_configs};
use qcow2_conformance::evaluate::{codec_max_level, evaluate};
use qcow2_conformance::fixtures;
use qcow2_format::extensions::{self as ext, Extension, ExtensionChain};
use qcow2_format::{rules, HeaderArea};
use qcow2_image::{BackingMode, ExtentKind, Image, OpenOptions};
use qcow2_io::{MemoryStorage, Storage};

/// (fixture, name, level, extra data, length counts the padding)
const COMPRESS_FORMAT: &[(&str, &str, u8, &[u8], bool)] = &[
    ("zlib-level-0", "zlib", 0, &[], false),
    ("zlib-level-1", "zlib", 1, &[], false),
    ("zlib-level-9", "zlib", 9, &[], false),
    ("zstd-level-0", "zstd", 0, &[], false),
    ("zstd-level-1", "zstd", 1, &[], false),
    ("zstd-level-19", "zstd", 19, &[], false),
    ("zstd-level-22", "zstd", 22, &[], false),
    ("brotli-level-0", "brotli", 0, &[], false),
    ("brotli-level-1", "brotli", 1, &[], false),
    ("brotli-level-12", "brotli", 12, &[], false),
    ("name-16-bytes", "0123456789abcdef", 0, &[], false),
    (
        "extra-data-length-without-padding",
        "zlib",
        0,
        &[1, 2, 3],
        false,
    ),
    (
        "extra-data-length-with-padding",
        "zlib",
        0,
        &[1, 2, 3],
        true,
    ),
];

fn compress_format_fixture(name: &str) -> Vec<u8> {
    fixtures::load("compress-format")
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .1
}

#[test]
fn every_compress_format_fixture_has_an_expectation() {
    let names: Vec<String> = fixtures::load("compress-format")
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut expected: Vec<&str> = COMPRESS_FORMAT.iter().map(|e| e.0).collect();
    expected.sort_unstable();
    assert_eq!(names, expected);
}

#[test]
fn compress_format_fixtures_decode_to_their_stated_values() {
    for &(file, name, level, extra, padded) in COMPRESS_FORMAT {
        let entry = compress_format_fixture(file);
        assert_eq!(entry.len() % 8, 0, "{file}: an entry ends on 8 bytes");
        // The entry is followed by the end of the extension area.
        let mut area = entry.clone();
        area.extend([0; 8]);
        let chain = ExtensionChain::parse(&area, 0).unwrap_or_else(|e| panic!("{file}: {e}"));
        let Some((_, Extension::CompressFormat(cf))) = chain.find(ext::COMPRESS_FORMAT) else {
            panic!("{file}: no compress format extension in {chain:?}");
        };
        assert_eq!(cf.name, name, "{file}");
        assert_eq!(cf.level, level, "{file}");
        assert_eq!(cf.extra_data, extra, "{file}");
        assert_eq!(cf.length_includes_padding, padded, "{file}");
        assert!(chain.findings.is_empty(), "{file}: {:?}", chain.findings);
        // Serializing gives the fixture back, in whichever reading it used.
        assert_eq!(chain.to_bytes()[..entry.len()], entry[..], "{file}");
        let known = cf.check_codec(8, codec_max_level);
        if name.len() == 16 {
            assert_eq!(known.unwrap_err().rule, rules::CF_KNOWN, "{file}");
        } else {
            known.unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
}

#[test]
fn a_nonzero_byte_in_counted_padding_is_refused() {
    let mut entry = compress_format_fixture("extra-data-length-with-padding");
    let last = entry.len() - 1;
    entry[last] = 0x80;
    entry.extend([0; 8]);
    let err = ExtensionChain::parse(&entry, 0).unwrap_err();
    assert_eq!(err.rule, rules::CF_LENGTH);
    assert_eq!(err.offset, last as u64);
}

#[test]
fn our_writer_stores_the_compress_format_extension_as_the_fixtures_do() {
    for cfg in compress_format_configs() {
        let (codec, level) = cfg.compress_format.unwrap();
        let image = build(&cfg).unwrap();
        let area = HeaderArea::parse(&image).unwrap();
        let (i, _) = area.chain.find(ext::COMPRESS_FORMAT).unwrap();
        let at = area.chain.data_offsets(area.header.header_length.into())[i] as usize - 8;
        let fixture = compress_format_fixture(&format!("{codec}-level-{level}"));
        assert_eq!(
            image[at..at + fixture.len()],
            fixture[..],
            "{}: extension at {at:#x}",
            cfg.name()
        );
    }
}

fn small_dedup() -> Vec<u8> {
    fixtures::load("dedup")
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "small-dedup")
        .expect("fixture small-dedup")
        .1
}

#[test]
fn the_dedup_fixture_decodes_to_its_stated_values_and_is_clean() {
    let bytes = small_dedup();
    assert_eq!(bytes.len(), 4096);
    let area = HeaderArea::parse(&bytes).unwrap();
    let d = area.dedup().expect("dedup extension");
    assert_eq!((d.l1_offset.get(), d.l1_size), (0xc00, 1));
    let assessment = area.assess(Some(&codec_max_level)).unwrap();
    assert!(assessment.features.dedup());
    let eval = evaluate(&bytes);
    assert!(eval.triggered().is_empty(), "{}", eval.describe());

    // The table entry of physical cluster 5 is the digest of what it holds
    // and names the guest cluster that maps to it.
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes(bytes.clone()));
    let entries = qcow2_dedup::DedupTable::load(&*storage, *d, assessment.geometry, 4096)
        .unwrap()
        .entries(&*storage)
        .unwrap();
    assert_eq!(entries.len(), 1);
    let (p, entry) = entries[0];
    assert_eq!(p.get(), 5);
    assert_eq!(entry.hash, qcow2_dedup::hash_cluster(&[0x5a; 512]));
    assert_eq!(entry.guest_offset.get(), 0x400);

    let image = Image::open(
        storage,
        OpenOptions {
            writable: false,
            backing: BackingMode::Ignore,
        },
    )
    .unwrap();
    let mut buf = vec![0u8; 512];
    image.read_at(&mut buf, 0x400).unwrap();
    assert_eq!(buf, [0x5a; 512]);
    let status = image.block_status(entry.guest_offset.get(), 512).unwrap();
    assert!(
        matches!(
            status[0].kind,
            ExtentKind::Data {
                offset: Some(0xa00)
            }
        ),
        "{status:?}"
    );
}

#[test]
fn our_writer_frames_the_dedup_extension_as_the_fixture_does() {
    let fixture = small_dedup();
    let (_, writer) = qcow2_conformance::engine_images::dedup_images()[0];
    let image = writer().unwrap();
    for (what, bytes) in [("fixture", &fixture), ("writer", &image)] {
        let area = HeaderArea::parse(bytes).unwrap();
        let (i, _) = area.chain.find(ext::DEDUP).unwrap();
        let at = area.chain.data_offsets(area.header.header_length.into())[i] as usize;
        // Type, length 12 (padding excluded), then 4 zero padding bytes.
        assert_eq!(
            bytes[at - 8..at],
            [0xcd, 0x8e, 0x81, 0x9b, 0, 0, 0, 12],
            "{what}"
        );
        assert_eq!(bytes[at + 12..at + 16], [0; 4], "{what}");
        assert_ne!(area.header.incompatible_features & 2, 0, "{what}: bit 1");
    }
}
