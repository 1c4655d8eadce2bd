//! Our check against `qemu-img check` on every golden image and on images
//! qemu-img/qemu-io build with snapshots, compression, bitmaps and
//! extended L2 entries, clean and with injected faults.

mod check_support;

use check_support::*;
use qcow2_alloc::check::{CheckReport, FindingKind};
use qcow2_format::{rules, RuleId};

/// Whether a finding of `kind` under `rule` has a message containing `text`.
fn has(r: &CheckReport, kind: FindingKind, rule: RuleId, text: &str) -> bool {
    r.findings
        .iter()
        .any(|f| f.kind == kind && f.rule == Some(rule) && f.message.contains(text))
}

#[test]
fn every_golden_image_matches_qemu_img() {
    let dir = golden_dir();
    for file in golden_files() {
        let ours = assert_same_as_qemu(&dir, &file);
        assert!(ours.is_clean(), "{file}: {:#?}", ours.findings);
    }
}

/// An image with data, a snapshot, writes after it (so clusters and L2
/// tables are shared and copied), compressed clusters and a bitmap with data.
fn rich_image(dir: &std::path::Path, name: &str, opts: &str) -> std::path::PathBuf {
    let path = make_image(
        dir,
        name,
        opts,
        "64M",
        &["write -P 1 0 1M", "write -P 2 32M 64k"],
    );
    qemu_img_ok(dir, &["bitmap", "--add", name, "b0"]);
    qemu_io(dir, name, &["write -P 7 8M 64k"]);
    qemu_img_ok(dir, &["snapshot", "-c", "s1", name]);
    qemu_io(
        dir,
        name,
        &[
            "write -P 3 64k 64k",
            "write -c -P 4 16M 64k",
            "write -c -P 5 20M 128k",
            "write -z 48M 1M",
        ],
    );
    qemu_img_ok(dir, &["snapshot", "-c", "s2", name]);
    qemu_io(dir, name, &["discard 0 64k", "write -P 6 40M 8k"]);
    path
}

#[test]
fn rich_images_match_qemu_img() {
    let dir = scratch();
    for (name, opts) in [
        ("rich.qcow2", ""),
        ("rich-v2.qcow2", "compat=0.10"),
        ("rich-512.qcow2", "cluster_size=512"),
        ("rich-ext.qcow2", "extended_l2=on"),
        ("rich-rc1.qcow2", "refcount_bits=1"),
        ("rich-rc4.qcow2", "refcount_bits=4"),
        ("rich-rc64.qcow2", "refcount_bits=64,cluster_size=4k"),
        ("rich-zstd.qcow2", "compression_type=zstd"),
    ] {
        // compat=0.10 has no bitmaps and 1-bit refcounts allow no
        // snapshot: build those without.
        let path = if opts == "compat=0.10" {
            let p = make_image(dir.path(), name, opts, "64M", &["write -P 1 0 1M"]);
            qemu_img_ok(dir.path(), &["snapshot", "-c", "s1", name]);
            qemu_io(
                dir.path(),
                name,
                &["write -c -P 4 16M 64k", "write -P 2 0 64k"],
            );
            p
        } else if opts == "refcount_bits=1" {
            make_image(
                dir.path(),
                name,
                opts,
                "64M",
                &["write -P 1 0 1M", "write -c -P 4 16M 128k"],
            )
        } else {
            rich_image(dir.path(), name, opts)
        };
        let ours = assert_same_as_qemu(dir.path(), name);
        assert!(ours.is_clean(), "{}: {:#?}", path.display(), ours.findings);
    }
}

#[test]
fn rich_image_counts_compressed_and_shared_clusters() {
    let dir = scratch();
    rich_image(dir.path(), "rich.qcow2", "");
    let ours = assert_same_as_qemu(dir.path(), "rich.qcow2");
    assert!(ours.compressed_clusters >= 2, "{ours:#?}");
    assert!(ours.fragmented_clusters >= ours.compressed_clusters);
}

/// Applies `fault` to a copy of a rich image and compares both checks.
fn faulty(name: &str, fault: impl FnOnce(&std::path::Path)) -> qcow2_alloc::check::CheckReport {
    let dir = scratch();
    let path = rich_image(dir.path(), name, "");
    fault(&path);
    let ours = assert_same_as_qemu(dir.path(), name);
    assert!(!ours.is_clean(), "{name}: the fault went unnoticed");
    ours
}

#[test]
fn injected_faults_are_counted_like_qemu_img() {
    // A leak: the header cluster's refcount bumped.
    let r = faulty("leak.qcow2", |p| set_refcount(p, 0, 2));
    assert_eq!((r.leaks, r.corruptions), (1, 0));
    assert!(
        has(
            &r,
            FindingKind::Leak,
            rules::RC_MATCH,
            "cluster 0 refcount=2 reference=1"
        ),
        "{:#?}",
        r.findings
    );
    // An allocated but unreferenced cluster appended to the file.
    let r = faulty("append.qcow2", |p| {
        let end = std::fs::metadata(p).unwrap().len().next_multiple_of(65536);
        poke(p, end, &[0u8; 65536]);
        set_refcount(p, end / 65536, 1);
    });
    assert_eq!((r.leaks, r.corruptions), (1, 0));
    // Refcount too low on a data cluster, and 0 on an L2 table.
    let r = faulty("low.qcow2", |p| {
        let data = host_of(p, 32 << 20);
        set_refcount(p, data / 65536, 0);
    });
    assert!(r.corruptions >= 1);
    assert!(
        has(
            &r,
            FindingKind::Corruption,
            rules::RC_MATCH,
            " refcount=0 reference="
        ),
        "{:#?}",
        r.findings
    );
    faulty("l2zero.qcow2", |p| set_refcount(p, first_l2(p) / 65536, 0));
    // A COPIED flag cleared on a data cluster with refcount 1.
    let r = faulty("copied.qcow2", |p| {
        let l2 = first_l2(p);
        let entry = peek_u64(p, l2 + 640 * 8);
        assert_ne!(
            entry & (1 << 63),
            0,
            "guest cluster 640 (40M) should be COPIED"
        );
        poke_u64(p, l2 + 640 * 8, entry & !(1 << 63));
    });
    assert!(
        has(
            &r,
            FindingKind::Corruption,
            rules::L2_COPIED,
            "OFLAG_COPIED data cluster"
        ),
        "{:#?}",
        r.findings
    );
    // A data cluster pointing past the end of the file, and a misaligned one.
    faulty("beyond.qcow2", |p| {
        poke_u64(p, first_l2(p) + 100 * 8, (1 << 63) | (1 << 40))
    });
    faulty("misaligned.qcow2", |p| {
        let l2 = first_l2(p);
        let entry = peek_u64(p, l2 + 640 * 8);
        poke_u64(p, l2 + 640 * 8, entry + 512);
    });
    // Reserved bits in an L1 entry and in an L2 entry.
    faulty("reserved.qcow2", |p| {
        let l1 = header(p).l1_table_offset.get();
        poke_u64(p, l1, peek_u64(p, l1) | 2);
        let l2 = first_l2(p);
        poke_u64(p, l2 + 640 * 8, peek_u64(p, l2 + 640 * 8) | 2);
    });
    // An L2 table that is also a data cluster (overlapping metadata).
    let r = faulty("overlap.qcow2", |p| {
        let l2 = first_l2(p);
        let entry = peek_u64(p, l2 + 640 * 8);
        poke_u64(p, l2 + 640 * 8, (entry & (1 << 63)) | l2);
    });
    assert!(
        r.findings.iter().any(|f| f.rule == Some(rules::RC_OVERLAP)
            && f.message.contains("an L2 table and a data cluster")),
        "{:#?}",
        r.findings
    );
    // Broken refcount table entries.
    faulty("rt-misaligned.qcow2", |p| {
        let rt = header(p).refcount_table_offset.get();
        poke_u64(p, rt, peek_u64(p, rt) + 4096);
    });
    faulty("rt-reserved.qcow2", |p| {
        let rt = header(p).refcount_table_offset.get();
        poke_u64(p, rt, peek_u64(p, rt) | 1);
    });
    faulty("rt-beyond.qcow2", |p| {
        let rt = header(p).refcount_table_offset.get();
        poke_u64(p, rt, 1 << 40);
    });
    let r = faulty("rt-on-l1.qcow2", |p| {
        let h = header(p);
        poke_u64(p, h.refcount_table_offset.get(), h.l1_table_offset.get());
    });
    assert!(
        has(
            &r,
            FindingKind::Corruption,
            rules::RC_OVERLAP,
            "is referenced 2 times; it is also used as an L1 table"
        ),
        "{:#?}",
        r.findings
    );
    faulty("reftable-beyond.qcow2", |p| poke_u64(p, 48, 1 << 32));
}

/// iotest 138: with 512-byte clusters, a data cluster at 32 PiB (2^55) is a
/// cluster index that is a multiple of 2^32. The check counts it in 64 bits,
/// reports it as past the end of the file with the numbers qemu-img has, and
/// the engine reads it as zeros, as qemu-io does (the file has no bytes
/// there), instead of reading some other cluster.
#[test]
fn data_cluster_at_32_pib_with_512_byte_clusters() {
    let dir = scratch();
    let path = make_image(
        dir.path(),
        "i138.qcow2",
        "cluster_size=512",
        "1M",
        &["write 0 512"],
    );
    poke_u64(&path, first_l2(&path), (1 << 63) | (1 << 55));
    let ours = assert_same_as_qemu(dir.path(), "i138.qcow2");
    assert!(
        ours.findings
            .iter()
            .any(|f| f.rule == Some(rules::L2_ENTRY)
                && f.message.contains("past the end of the file")),
        "{:#?}",
        ours.findings
    );
    let storage = std::sync::Arc::new(qcow2_io::FileStorage::open(&path, false).unwrap());
    let image = qcow2_image::Image::open(storage, qcow2_image::OpenOptions::default()).unwrap();
    let mut buf = [0xffu8; 512];
    image.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0u8; 512]);
    qemu_io(dir.path(), "i138.qcow2", &["read -P 0 0 512"]);
    drop(image);

    // A write to that guest cluster is refused without growing the file
    // to 32 PiB (qemu-io fails it too, with EFBIG).
    let before = std::fs::read(&path).unwrap();
    let storage = std::sync::Arc::new(qcow2_io::FileStorage::open(&path, true).unwrap());
    let writable = qcow2_image::OpenOptions {
        writable: true,
        backing: qcow2_image::BackingMode::Ignore,
    };
    let image = qcow2_image::Image::open(storage, writable).unwrap();
    let err = image.write_at(&[7u8; 512], 0).unwrap_err();
    assert_eq!(err.rule(), Some(rules::L2_ENTRY), "{err}");
    drop(image);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(after.len(), before.len(), "the file did not grow");

    // `-r all` leaves what qemu-img's leaves: the leak and the COPIED flag
    // fixed, the entry past the end still counted as one corruption.
    std::fs::write(&path, &before).unwrap();
    let theirs = copy(&path, dir.path(), "i138-qemu.qcow2");
    let storage = qcow2_io::FileStorage::open(&path, true).unwrap();
    let done = qcow2_alloc::repair::repair(&storage, qcow2_alloc::repair::RepairMode::All, &[])
        .expect("repair runs");
    drop(storage);
    let qemu_repair = run(
        dir.path(),
        "qemu-img",
        &[
            "check",
            "-r",
            "all",
            "-f",
            "qcow2",
            &theirs.to_string_lossy(),
        ],
    );
    assert_eq!(
        qemu_repair.status.code(),
        Some(2),
        "qemu-img leaves an error"
    );
    let (qemu_after, _) = qemu_check(dir.path(), "i138-qemu.qcow2", &[]);
    let mut ours_after = numbers(&done.final_report());
    ours_after.retain(|key, _| !key.ends_with("-fixed"));
    assert_eq!(ours_after, qemu_after, "after -r all");
    assert_eq!(done.final_report().corruptions, 1);
    assert_eq!(done.final_report().leaks, 0);
}

/// iotest 112 at the top of the 64-bit width: a data cluster whose
/// refcount has the MSb set, or is u64::MAX, with COPIED clear. Both tools
/// count it alike; a write through it copies the cluster (it is shared as
/// far as anyone can tell) and leaves the old one and its count alone.
#[test]
fn sixty_four_bit_refcounts_at_the_msb_and_the_maximum() {
    for (name, value) in [("msb", 1u64 << 63), ("max", u64::MAX)] {
        let dir = scratch();
        let file = format!("i112-{name}.qcow2");
        let path = make_image(
            dir.path(),
            &file,
            "refcount_bits=64",
            "1M",
            &["write -P 0x11 0 64k"],
        );
        let host = host_of(&path, 0);
        let l2 = first_l2(&path);
        poke_u64(&path, l2, peek_u64(&path, l2) & !(1 << 63));
        set_refcount(&path, host / 65536, value);
        let ours = assert_same_as_qemu(dir.path(), &file);
        assert!(ours.leaks > 0, "{name}: {:#?}", ours.findings);

        let storage = std::sync::Arc::new(qcow2_io::FileStorage::open(&path, true).unwrap());
        let writable = qcow2_image::OpenOptions {
            writable: true,
            backing: qcow2_image::BackingMode::Ignore,
        };
        let image = qcow2_image::Image::open(storage, writable).unwrap();
        image.write_at(&[0x22u8; 512], 512).unwrap();
        image.close().unwrap();
        assert_ne!(
            host_of(&path, 0),
            host,
            "{name}: the write copied the cluster"
        );
        assert_eq!(
            refcount(&path, host / 65536),
            value - 1,
            "{name}: one reference dropped"
        );
        let old = peek_u64(&path, host);
        assert_eq!(
            old, 0x1111_1111_1111_1111,
            "{name}: the old cluster is untouched"
        );
        qemu_io(
            dir.path(),
            &file,
            &[
                "read -P 0x11 0 512",
                "read -P 0x22 512 512",
                "read -P 0x11 1024 63k",
            ],
        );
        assert_same_as_qemu(dir.path(), &file);
    }
}

/// iotest 112: with refcount_bits=1 a cluster can hold one reference; two
/// L2 entries naming one data cluster need a refcount of 2. Our check
/// counts it as qemu-img does, and repair cannot fix what the width cannot
/// hold.
#[test]
fn more_references_than_the_refcount_width_holds() {
    let dir = scratch();
    let path = make_image(
        dir.path(),
        "i112.qcow2",
        "refcount_bits=1",
        "1M",
        &["write -P 0x11 0 64k"],
    );
    let l2 = first_l2(&path);
    let entry = peek_u64(&path, l2);
    // Guest cluster 1 shares guest cluster 0's host cluster; a shared
    // cluster has COPIED clear in both entries.
    poke_u64(&path, l2, entry & !(1 << 63));
    poke_u64(&path, l2 + 8, entry & !(1 << 63));
    let ours = assert_same_as_qemu(dir.path(), "i112.qcow2");
    assert!(ours.corruptions > 0, "{:#?}", ours.findings);
    assert!(
        ours.findings
            .iter()
            .any(|f| f.rule == Some(rules::RC_MATCH)),
        "{:#?}",
        ours.findings
    );
}
