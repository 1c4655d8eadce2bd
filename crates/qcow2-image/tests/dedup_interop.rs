//! Deduplication through the engine, checked with the real QEMU tools:
//! QEMU opens a dedup image read-only (bit 1 is its corrupt bit), reads the
//! right bytes and finds no corruption (the table clusters are leaks to
//! it); after `disable_dedup` the image is plain qcow2 that QEMU writes.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use qcow2_image::{ConvertOptions, CreateOptions, Image, RawBacking};
use qcow2_io::FileStorage;

const CS: u64 = 65536;

/// A raw disk with repeated, zero and unique clusters.
fn raw_source(path: &Path) -> Vec<u8> {
    let mut rng = common::Rng::new(7);
    let block: Vec<u8> = (0..8 * CS).map(|_| rng.next() as u8).collect();
    let mut disk = Vec::new();
    disk.extend_from_slice(&block);
    disk.extend_from_slice(&vec![0u8; 3 * CS as usize]);
    disk.extend_from_slice(&block);
    disk.extend_from_slice(&block[..3 * CS as usize]);
    disk.extend((0..5 * CS).map(|_| rng.next() as u8));
    disk.extend_from_slice(&block);
    std::fs::write(path, &disk).unwrap();
    disk
}

fn convert(src: &Path, dst: &Path, compress: bool, threads: usize) {
    let size = std::fs::metadata(src).unwrap().len();
    let mut o = CreateOptions::new(size);
    o.dedup = true;
    let image = Image::create_path(dst, &o).unwrap();
    let source = RawBacking::new(Arc::new(FileStorage::open(src, false).unwrap())).unwrap();
    let options = ConvertOptions {
        compress,
        threads: Some(threads),
    };
    image.convert_from(&source, &options, &mut |_| {}).unwrap();
    image.close().unwrap();
}

fn qemu_check_json(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "qemu-img check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn get(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(|x| x.as_u64()).unwrap_or(0)
}

fn table_clusters(path: &Path) -> u64 {
    let storage = FileStorage::open(path, false).unwrap();
    let area = qcow2_image::read_header_area(&storage).unwrap();
    qcow2_dedup::table_ranges(&storage, &area)
        .unwrap()
        .iter()
        .map(|(_, len)| len.div_ceil(CS))
        .sum()
}

fn verify_clean(path: &Path) -> qcow2_dedup::DedupStats {
    let storage = FileStorage::open(path, false).unwrap();
    let area = qcow2_image::read_header_area(&storage).unwrap();
    let v = qcow2_dedup::verify(&storage, &area).unwrap();
    let bad: Vec<_> = v
        .findings
        .iter()
        .filter(|f| f.severity == qcow2_dedup::Severity::Corruption)
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    let hook = qcow2_image::DedupTableReferences;
    let report = qcow2_alloc::check::check(&storage, &[&hook]).unwrap();
    assert_eq!(
        (report.corruptions, report.leaks, report.check_errors),
        (0, 0, 0),
        "{:?}",
        report.findings
    );
    v.stats
}

#[test]
fn qemu_reads_a_dedup_image_read_only_and_writes_it_after_dedup_off() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let disk = raw_source(&src);
    for compress in [false, true] {
        let dst = dir.path().join(format!("dedup-{compress}.qcow2"));
        convert(&src, &dst, compress, 2);
        let stats = verify_clean(&dst);
        assert!(stats.shared_clusters >= 8, "{stats:?}");
        let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
        common::run("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", s, d]);
        let json = qemu_check_json(&dst);
        assert_eq!(get(&json, "corruptions"), 0, "{json}");
        assert_eq!(get(&json, "check-errors"), 0, "{json}");
        assert_eq!(get(&json, "leaks"), table_clusters(&dst), "{json}");
        // QEMU sees bit 1 as its corrupt bit: writes are refused.
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 1 0 4k", d])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() || text.contains("read-only") || text.contains("corrupt"),
            "qemu-io wrote to a dedup image: {text}"
        );
        let converted = dir.path().join("back.raw");
        common::run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                d,
                converted.to_str().unwrap(),
            ],
        );
        assert_eq!(std::fs::read(&converted).unwrap(), disk);
        // Dedup off: plain qcow2, clean for QEMU, writable by QEMU.
        let image = Image::open_path(&dst, true).unwrap();
        image.disable_dedup().unwrap();
        image.close().unwrap();
        common::assert_qemu_check_clean(&dst);
        common::run("qemu-io", &["-f", "qcow2", "-c", "write -P 9 0 64k", d]);
        common::assert_qemu_check_clean(&dst);
        common::assert_qemu_reads_pattern(&dst, 0, 65536, 9);
    }
}

#[test]
fn output_does_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    raw_source(&src);
    for compress in [false, true] {
        let one = dir.path().join(format!("one-{compress}.qcow2"));
        let two = dir.path().join(format!("two-{compress}.qcow2"));
        convert(&src, &one, compress, 1);
        convert(&src, &two, compress, 3);
        assert!(
            std::fs::read(&one).unwrap() == std::fs::read(&two).unwrap(),
            "compress={compress}: outputs differ between 1 and 3 threads"
        );
    }
}

#[test]
fn overwrites_discards_and_offline_dedup_keep_the_table_right() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.qcow2");
    let mut o = CreateOptions::new(64 * CS);
    o.dedup = true;
    let image = Image::create_path(&path, &o).unwrap();
    let a: Vec<u8> = (0..4 * CS).map(|i| (i * 7 % 251) as u8).collect();
    image.write_at(&a, 0).unwrap();
    image.write_at(&a, 8 * CS).unwrap(); // hits on private clusters
    image.write_at(&a, 16 * CS).unwrap(); // hits on shared clusters
    image.write_at(&[5u8; 1000], 8 * CS + 10).unwrap(); // shared: copied first
    image.write_at(&[6u8; 3000], 100).unwrap(); // shared: copied first
    image.discard(16 * CS, 4 * CS).unwrap(); // some survivors keep one referrer
    image.write_zeroes(CS, CS, true).unwrap();
    image.write_at(&vec![0u8; CS as usize], 2 * CS).unwrap(); // zero cluster
    image.resize(40 * CS).unwrap();
    image.close().unwrap();
    let stats = verify_clean(&path);
    assert!(stats.indexed_clusters > 0);
    let json = qemu_check_json(&path);
    assert_eq!(get(&json, "corruptions"), 0, "{json}");
    assert_eq!(get(&json, "leaks"), table_clusters(&path), "{json}");
    let image = Image::open_path(&path, false).unwrap();
    let mut got = vec![0u8; CS as usize];
    image.read_at(&mut got, 3 * CS).unwrap();
    assert_eq!(got, a[3 * CS as usize..]);
    image.read_at(&mut got, 2 * CS).unwrap();
    assert!(got.iter().all(|&b| b == 0));
    drop(image);

    // Offline dedup of a plain image merges the duplicates.
    let plain = dir.path().join("plain.qcow2");
    let image = Image::create_path(&plain, &CreateOptions::new(64 * CS)).unwrap();
    for at in [0, 10, 20] {
        image.write_at(&a, at * CS).unwrap();
    }
    let report = image.enable_dedup(true, &mut |_, _| {}).unwrap();
    assert_eq!(report.merged, 8, "{report:?}");
    image.close().unwrap();
    let stats = verify_clean(&plain);
    assert_eq!(stats.bytes_saved, 8 * CS, "{stats:?}");
    common::run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            plain.to_str().unwrap(),
            plain.to_str().unwrap(),
        ],
    );
    let image = Image::open_path(&plain, false).unwrap();
    for at in [0u64, 10, 20] {
        let mut back = vec![0u8; a.len()];
        image.read_at(&mut back, at * CS).unwrap();
        assert_eq!(back, a);
    }
}

#[test]
fn a_stale_table_is_rebuilt_on_a_writable_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.qcow2");
    let mut o = CreateOptions::new(16 * CS);
    o.dedup = true;
    let image = Image::create_path(&path, &o).unwrap();
    let a = vec![3u8; 2 * CS as usize];
    image.write_at(&a, 0).unwrap();
    image.close().unwrap();
    // Another tool clears bit 1 and writes over the data: the table is stale.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[79] &= !2;
    std::fs::write(&path, &bytes).unwrap();
    common::run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 4 0 128k",
            path.to_str().unwrap(),
        ],
    );
    let image = Image::open_path(&path, true).unwrap();
    assert!(image.dedup_enabled());
    image.write_at(&a, 4 * CS).unwrap();
    image.close().unwrap();
    verify_clean(&path);
    common::assert_qemu_reads_pattern(&path, 0, 2 * CS, 4);
    common::assert_qemu_reads_pattern(&path, 4 * CS, 2 * CS, 3);
}
