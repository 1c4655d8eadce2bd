//! Compressed cluster writes: every codec, packing into shared host
//! clusters, overwrites, and QEMU reading what we wrote.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{assert_qemu_check_clean, assert_qemu_reads_pattern, run, Rng};
use qcow2_image::{BackingMode, CreateOptions, ExtentKind, Image, OpenOptions};
use qcow2_io::{MemoryStorage, Storage};

/// Text-like bytes: compressible, by a ratio that depends on `alphabet`.
fn text(len: usize, seed: u64, alphabet: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| b'a' + rng.below(alphabet) as u8).collect()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// Content of guest cluster `i`: mostly compressible, some random (stored
/// plain), some zeros.
fn cluster_content(i: u64, cs: usize, seed: u64) -> Vec<u8> {
    match i % 7 {
        3 => random(cs, seed ^ i),
        5 => vec![0; cs],
        _ => text(cs, seed ^ (i << 8), 2 + i % 20),
    }
}

fn engine_check_clean(storage: &dyn Storage) {
    let report = qcow2_alloc::check::check(storage, &[]).expect("check runs");
    assert_eq!(
        (report.corruptions, report.leaks, report.check_errors),
        (0, 0, 0),
        "engine check: {:?}",
        report.findings
    );
}

fn reopen(storage: &Arc<MemoryStorage>, writable: bool) -> Image {
    Image::open(
        storage.clone(),
        OpenOptions {
            writable,
            backing: BackingMode::Ignore,
        },
    )
    .expect("reopen")
}

/// Writes `count` clusters compressed, overwrites some (plain, partial,
/// compressed again), discards one, and checks content and refcounts.
fn exercise(options: &CreateOptions, count: u64) {
    let cs = options.cluster_size as usize;
    let storage = Arc::new(MemoryStorage::new());
    let image = Image::create(storage.clone(), options, BackingMode::Ignore).expect("create");
    let mut model = vec![0u8; options.size as usize];
    for i in 0..count {
        let data = cluster_content(i, cs, 11);
        image.write_compressed(&data, i * cs as u64).expect("write");
        model[i as usize * cs..(i as usize + 1) * cs].copy_from_slice(&data);
    }
    // Partial overwrite of a compressed cluster: copied out, then written.
    let patch = random(100, 5);
    let at = cs + 17;
    image.write_at(&patch, at as u64).expect("partial write");
    model[at..at + 100].copy_from_slice(&patch);
    // A compressed cluster replaced by another compressed one.
    let again = text(cs, 99, 3);
    image
        .write_compressed(&again, 2 * cs as u64)
        .expect("rewrite");
    model[2 * cs..3 * cs].copy_from_slice(&again);
    image.discard(4 * cs as u64, cs as u64).expect("discard");
    model[4 * cs..5 * cs].fill(0);
    image.close().expect("close");
    engine_check_clean(&*storage);
    let image = reopen(&storage, false);
    let mut back = vec![0u8; model.len()];
    image.read_at(&mut back, 0).expect("read");
    assert!(back == model, "content differs after compressed writes");
}

#[test]
fn every_codec_round_trips_with_overwrites() {
    let mut configs = Vec::new();
    for compression_type in [0u8, 1] {
        let mut o = CreateOptions::new(4 << 20);
        o.compression_type = compression_type;
        configs.push(o);
    }
    for (name, level) in [
        ("zlib", 0u8),
        ("zlib", 9),
        ("zstd", 0),
        ("zstd", 19),
        ("brotli", 0),
        ("brotli", 1),
    ] {
        let mut o = CreateOptions::new(4 << 20);
        o.compress_format = Some((name.to_string(), level));
        configs.push(o);
    }
    for o in &configs {
        exercise(o, 40);
    }
}

#[test]
fn small_clusters_extended_l2_and_narrow_refcounts() {
    let mut o = CreateOptions::new(1 << 20);
    o.cluster_size = 512;
    exercise(&o, 64);
    let mut o = CreateOptions::new(4 << 20);
    o.extended_l2 = true;
    o.cluster_size = 32768;
    exercise(&o, 40);
    for bits in [1, 2, 64] {
        let mut o = CreateOptions::new(1 << 20);
        o.cluster_size = 4096;
        o.refcount_bits = bits;
        exercise(&o, 64);
    }
}

#[test]
fn streams_are_packed_into_shared_host_clusters() {
    let o = CreateOptions::new(64 << 20);
    let cs = o.cluster_size as usize;
    let storage = Arc::new(MemoryStorage::new());
    let image = Image::create(storage.clone(), &o, BackingMode::Ignore).expect("create");
    let empty = storage.len().unwrap();
    let count = 200u64;
    for i in 0..count {
        image
            .write_compressed(&text(cs, i, 4), i * cs as u64)
            .expect("write");
    }
    image.close().expect("close");
    engine_check_clean(&*storage);
    // Four-letter text compresses to about a third: packed, 200 clusters
    // need well under half as many host clusters (plus one L2 table).
    let used = (storage.len().unwrap() - empty).div_ceil(cs as u64);
    assert!(
        used < count / 2,
        "{used} host clusters for {count} compressed clusters"
    );
    let image = reopen(&storage, false);
    let status = image.block_status(0, count * cs as u64).expect("status");
    assert!(status
        .iter()
        .all(|e| matches!(e.kind, ExtentKind::Compressed)));
    let mut buf = vec![0u8; cs];
    image.read_at(&mut buf, 77 * cs as u64).expect("read");
    assert_eq!(buf, text(cs, 77, 4));
}

#[test]
fn incompressible_clusters_are_stored_plain() {
    // zlib, and zstd (compression type 1, iotest 287).
    for compression_type in [0, 1] {
        let o = CreateOptions {
            compression_type,
            ..CreateOptions::new(1 << 20)
        };
        let cs = o.cluster_size as usize;
        let storage = Arc::new(MemoryStorage::new());
        let image = Image::create(storage.clone(), &o, BackingMode::Ignore).expect("create");
        let data = random(cs, 3);
        image.write_compressed(&data, 0).expect("write");
        let status = image.block_status(0, cs as u64).expect("status");
        assert!(
            matches!(status[0].kind, ExtentKind::Data { offset: Some(_) }),
            "type {compression_type}: {status:?}"
        );
        let mut back = vec![0u8; cs];
        image.read_at(&mut back, 0).expect("read");
        assert_eq!(back, data, "type {compression_type}");
        let mut stream = Vec::new();
        assert_eq!(image.compress_cluster(&data, &mut stream).unwrap(), None);
    }
}

#[test]
fn misaligned_or_partial_compressed_writes_are_refused() {
    let o = CreateOptions::new(1 << 20);
    let storage = Arc::new(MemoryStorage::new());
    let image = Image::create(storage, &o, BackingMode::Ignore).expect("create");
    let err = image.write_compressed(&[1; 65536], 512).unwrap_err();
    assert!(err.to_string().contains("aligned"), "{err}");
    let err = image.write_compressed(&[1; 4096], 0).unwrap_err();
    assert!(err.to_string().contains("whole"), "{err}");
    // The image is still usable.
    image.write_compressed(&[1; 65536], 0).expect("write");
}

#[test]
fn last_short_cluster_is_padded() {
    // 100 KiB: the second 64 KiB cluster holds 36 KiB of disk.
    let o = CreateOptions::new(100 << 10);
    let storage = Arc::new(MemoryStorage::new());
    let image = Image::create(storage.clone(), &o, BackingMode::Ignore).expect("create");
    let tail = text(36 << 10, 8, 5);
    image.write_compressed(&tail, 64 << 10).expect("write");
    let mut back = vec![0u8; 36 << 10];
    image.read_at(&mut back, 64 << 10).expect("read");
    assert_eq!(back, tail);
    image.close().expect("close");
    engine_check_clean(&*storage);
}

#[test]
fn seed_level_is_used_for_writes() {
    let mut o = CreateOptions::new(1 << 20);
    o.compress_format = Some(("zstd".into(), 19));
    let storage = Arc::new(MemoryStorage::new());
    Image::create(storage.clone(), &o, BackingMode::Ignore)
        .expect("create")
        .close()
        .expect("close");
    let image = reopen(&storage, true);
    let codec = image.codec().expect("codec");
    assert_eq!((codec.name(), codec.level()), ("zstd", 19));
    let area = image.header_area();
    let cf = area.compress_format().expect("extension");
    assert_eq!((cf.name.as_str(), cf.level), ("zstd", 19));
    assert_eq!(area.header.incompatible_features & 4, 4);
}

#[test]
fn unknown_or_conflicting_compress_formats_are_refused() {
    let storage: Arc<MemoryStorage> = Arc::new(MemoryStorage::new());
    let mut o = CreateOptions::new(1 << 20);
    o.compress_format = Some(("lz4".into(), 0));
    let err = Image::create(storage.clone(), &o, BackingMode::Ignore).unwrap_err();
    assert!(err.to_string().contains("lz4"), "{err}");
    o.compress_format = Some(("zlib".into(), 10));
    let err = Image::create(storage.clone(), &o, BackingMode::Ignore).unwrap_err();
    assert!(err.to_string().contains("highest level 9"), "{err}");
    o.compress_format = Some(("zstd".into(), 0));
    o.compression_type = 1;
    let err = Image::create(storage, &o, BackingMode::Ignore).unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
}

/// Writes a raw twin of the guest content for `qemu-img compare`.
fn write_raw(path: &Path, model: &[u8]) {
    std::fs::write(path, model).expect("write raw");
}

#[test]
fn qemu_reads_our_compressed_clusters() {
    let dir = tempfile::tempdir().unwrap();
    for compression_type in [0u8, 1] {
        for cs in [4096u64, 65536, 2 << 20] {
            let mut o = CreateOptions::new(cs * 24);
            o.cluster_size = cs;
            o.compression_type = compression_type;
            let path = dir.path().join(format!("c{compression_type}-{cs}.qcow2"));
            let image = Image::create_path(&path, &o).expect("create");
            let mut model = vec![0u8; o.size as usize];
            for i in 0..20u64 {
                let data = cluster_content(i, cs as usize, cs);
                image.write_compressed(&data, i * cs).expect("write");
                let at = (i * cs) as usize;
                model[at..at + cs as usize].copy_from_slice(&data);
            }
            // Overwrites of packed streams keep the shared refcounts right.
            image.write_at(&[7; 512], cs + 512).expect("write");
            model[cs as usize + 512..cs as usize + 1024].fill(7);
            image.discard(2 * cs, cs).expect("discard");
            model[2 * cs as usize..3 * cs as usize].fill(0);
            image.close().expect("close");
            assert_qemu_check_clean(&path);
            let raw = dir.path().join("model.raw");
            write_raw(&raw, &model);
            let p = path.to_str().unwrap();
            run(
                "qemu-img",
                &[
                    "compare",
                    "-f",
                    "qcow2",
                    "-F",
                    "raw",
                    p,
                    raw.to_str().unwrap(),
                ],
            );
            let info = run("qemu-img", &["info", "--output=json", p]);
            let want = if compression_type == 1 {
                "zstd"
            } else {
                "zlib"
            };
            assert!(
                info.contains(&format!("\"compression-type\": \"{want}\"")),
                "{info}"
            );
        }
    }
}

#[test]
fn qemu_extended_l2_compressed_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = CreateOptions::new(2 << 20);
    o.extended_l2 = true;
    o.compression_type = 1;
    let path = dir.path().join("ext.qcow2");
    let image = Image::create_path(&path, &o).expect("create");
    for i in 0..8u64 {
        image
            .write_compressed(&[0x40 + i as u8; 65536], i * 65536)
            .expect("write");
    }
    image.close().expect("close");
    assert_qemu_check_clean(&path);
    for i in 0..8u64 {
        assert_qemu_reads_pattern(&path, i * 65536, 65536, 0x40 + i as u8);
    }
}

#[test]
fn compressed_writes_above_4_gib() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = CreateOptions::new(5 << 30);
    o.preallocation = qcow2_image::Preallocation::Metadata;
    let path = dir.path().join("big.qcow2");
    let image = Image::create_path(&path, &o).expect("create");
    let cs = o.cluster_size;
    let last = o.size / cs - 8;
    for i in 0..8u64 {
        let data = vec![0x61 + i as u8; cs as usize];
        image
            .write_compressed(&data, (last + i) * cs)
            .expect("write");
    }
    image.close().expect("close");
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(
        len > 5 << 30,
        "file ends at {len:#x}: streams not above 5 GiB"
    );
    assert_qemu_check_clean(&path);
    for i in 0..8u64 {
        assert_qemu_reads_pattern(&path, (last + i) * cs, cs, 0x61 + i as u8);
    }
    let image = Image::open_path(&path, false).expect("open");
    let status = image.block_status(last * cs, 8 * cs).expect("status");
    assert!(status
        .iter()
        .all(|e| matches!(e.kind, ExtentKind::Compressed)));
}

/// QEMU's iotest 272 the other way round: qemu-io writes a compressed
/// cluster that lands above 4 GiB, in the narrowest descriptor offset field
/// (2 MiB clusters) and with 2-bit refcounts. We read it, map it as
/// compressed, and our check counts its host cluster once.
#[test]
fn qemu_compressed_cluster_above_4_gib() {
    const CS: u64 = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("above.qcow2");
    let p = path.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=2M,refcount_bits=2,preallocation=metadata",
            p,
            "5G",
        ],
    );
    // Every guest cluster is preallocated: free the last one so the
    // compressed write (which needs an unallocated cluster) may reuse its
    // host cluster, the only free one below the end of the file.
    let last = (5 << 30) - CS;
    let discard = format!("discard {last} {CS}");
    let write = format!("write -c -P 0x5a {last} {CS}");
    run("qemu-io", &["-f", "qcow2", "-c", &discard, "-c", &write, p]);

    // The descriptor of the last guest cluster (one L2 table maps it all).
    let bytes = read_range(&path, 0, 512);
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = be64(&bytes, 40);
    let l2 = be64(&read_range(&path, l1, 8), 0) & 0x00ff_ffff_ffff_fe00;
    let entry = be64(&read_range(&path, l2 + last / CS * 8, 8), 0);
    assert_ne!(entry & 1 << 62, 0, "a compressed descriptor: {entry:#x}");
    // Offset bits: 62 - (cluster_bits - 8) = 49 for 2 MiB clusters.
    let host = entry & ((1 << 49) - 1);
    assert!(
        host > 4 << 30,
        "the stream starts at {host:#x}, below 4 GiB"
    );

    let image = Image::open_path(&path, false).expect("open");
    let mut buf = vec![0u8; CS as usize];
    image.read_at(&mut buf, last).expect("read");
    assert!(buf.iter().all(|&b| b == 0x5a), "content of the stream");
    let status = image.block_status(last, CS).expect("status");
    assert!(
        status
            .iter()
            .all(|e| matches!(e.kind, ExtentKind::Compressed)),
        "{status:?}"
    );
    drop(image);
    let storage = qcow2_io::FileStorage::open(&path, false).unwrap();
    let report = qcow2_alloc::check::check(&storage, &[]).expect("check runs");
    assert!(report.is_clean(), "{report:#?}");
    assert_qemu_check_clean(&path);
}

/// `len` bytes of the file at `offset`.
fn read_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}
