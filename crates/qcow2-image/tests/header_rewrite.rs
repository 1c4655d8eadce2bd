//! Header rewrites (resize, autoclear clearing) keep what they do not
//! understand: unknown extensions, compression_type, feature bits.

mod common;

use std::sync::Arc;

use common::{assert_qemu_check_clean, run};
use qcow2_format::extensions::Extension;
use qcow2_format::HeaderArea;
use qcow2_image::{CreateOptions, Image};
use qcow2_io::{FileStorage, Storage, WriteKind};

fn area_of(path: &std::path::Path) -> HeaderArea {
    let bytes = std::fs::read(path).unwrap();
    let cs = 1usize << u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    HeaderArea::parse(&bytes[..cs.min(bytes.len())]).unwrap()
}

const UNKNOWN: u32 = 0x1234_5678;

#[test]
fn resize_keeps_unknown_extensions_and_compression_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.qcow2");
    let mut options = CreateOptions::new(1 << 20);
    options.compression_type = 1;
    options.cluster_size = 512; // growth to 64 MiB moves the L1 table
    std::fs::write(dir.path().join("base.raw"), vec![0u8; 1 << 20]).unwrap();
    options.backing_file = Some("base.raw".into());
    options.backing_format = Some("raw".into());
    Image::create(
        Arc::new(FileStorage::create(&path, false).unwrap()),
        &options,
        qcow2_image::BackingMode::Ignore,
    )
    .unwrap()
    .close()
    .unwrap();
    // Add an extension we do not know, as a newer tool might.
    let mut area = area_of(&path);
    area.chain.extensions.insert(
        0,
        Extension::Unknown {
            kind: UNKNOWN,
            data: b"keep me".to_vec(),
        },
    );
    let storage = FileStorage::open(&path, true).unwrap();
    storage
        .write_at(&area.to_bytes().unwrap(), 0, WriteKind::Header)
        .unwrap();
    drop(storage);
    let before = area_of(&path);

    let storage: Arc<dyn Storage> = Arc::new(FileStorage::open(&path, true).unwrap());
    let image = Image::open(
        storage,
        qcow2_image::OpenOptions {
            writable: true,
            backing: qcow2_image::BackingMode::Ignore,
        },
    )
    .unwrap();
    image.write_at(&[9u8; 5000], 300_000).unwrap();
    image.resize(64 << 20).unwrap();
    image.write_at(&[8u8; 512], (64 << 20) - 512).unwrap();
    image.close().unwrap();

    let after = area_of(&path);
    assert_eq!(after.header.size, 64 << 20);
    assert_ne!(
        after.header.l1_table_offset, before.header.l1_table_offset,
        "L1 moved"
    );
    assert_eq!(after.header.compression_type, 1);
    assert_eq!(
        after.header.incompatible_features,
        before.header.incompatible_features
    );
    assert_eq!(
        after.header.compatible_features,
        before.header.compatible_features
    );
    assert_eq!(after.chain.extensions, before.chain.extensions);
    assert!(after
        .chain
        .extensions
        .iter()
        .any(|e| matches!(e, Extension::Unknown { kind: UNKNOWN, data } if data == b"keep me")));
    assert_eq!(after.backing_file, before.backing_file);
    assert_qemu_check_clean(&path);
}

#[test]
fn images_with_persistent_bitmaps_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.qcow2");
    let p = path.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", p, "4M"]);
    run("qemu-img", &["bitmap", "--add", p, "b0"]);
    let before = std::fs::read(&path).unwrap();
    let err = Image::open_path(&path, true).unwrap_err();
    assert!(err.to_string().contains("bitmaps"), "{err}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file is untouched"
    );
    // Reading stays possible.
    let image = Image::open_path(&path, false).unwrap();
    let mut buf = [1u8; 512];
    image.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0u8; 512]);
    assert_qemu_check_clean(&path);
}

#[test]
fn writable_open_clears_unknown_autoclear_bits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path.to_str().unwrap(), "4M"],
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[88..96].copy_from_slice(&(1u64 << 40).to_be_bytes()); // autoclear_features
    std::fs::write(&path, &bytes).unwrap();
    let image = Image::open_path(&path, true).unwrap();
    image.write_at(&[1u8; 4096], 0).unwrap();
    image.close().unwrap();
    let after = area_of(&path);
    assert_eq!(
        after.header.autoclear_features, 0,
        "a bit we do not maintain is cleared"
    );
    assert_qemu_check_clean(&path);
}
