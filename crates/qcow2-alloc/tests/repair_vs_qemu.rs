//! Repair (`-r leaks`, `-r all`, rebuild) against qemu-img: the repaired
//! image must be clean for `qemu-img check` and hold the same data.

mod check_support;

use std::fs;
use std::path::{Path, PathBuf};

use check_support::*;
use qcow2_alloc::check::{CheckError, FindingKind};
use qcow2_alloc::repair::{repair, RepairMode, RepairReport};
use qcow2_format::rules;
use qcow2_io::FileStorage;

const CS: u64 = 65536;

fn our_repair(path: &Path, mode: RepairMode) -> Result<RepairReport, CheckError> {
    let storage = FileStorage::open(path, true).expect("open read-write");
    repair(&storage, mode, &[])
}

/// An image with data, a snapshot and writes after it; returns (image,
/// pristine copy).
fn image(dir: &Path, name: &str, opts: &str) -> (PathBuf, PathBuf) {
    let path = make_image(
        dir,
        name,
        opts,
        "64M",
        &["write -P 1 0 1M", "write -P 2 32M 64k"],
    );
    if !opts.contains("refcount_bits=1") {
        qemu_img_ok(dir, &["snapshot", "-c", "s1", name]);
    }
    qemu_io(
        dir,
        name,
        &[
            "write -P 3 64k 64k",
            "write -c -P 4 16M 64k",
            "write -P 6 40M 8k",
        ],
    );
    let pristine = copy(&path, dir, &format!("pristine-{name}"));
    (path, pristine)
}

/// Asserts the repaired `path` is clean for both tools and holds the same
/// guest data as `pristine`.
fn assert_repaired(path: &Path, pristine: &Path, done: &RepairReport) {
    let last = done.final_report();
    assert!(last.is_clean(), "{}: {:#?}", path.display(), last.findings);
    assert!(our_check(path).is_clean());
    assert!(
        qemu_clean(path),
        "qemu-img check is not clean on {}",
        path.display()
    );
    assert!(
        same_content(path, pristine),
        "data changed in {}",
        path.display()
    );
}

#[test]
fn leaks_are_fixed_like_qemu_img() {
    for opts in [
        "",
        "refcount_bits=1",
        "refcount_bits=4",
        "refcount_bits=64",
        "compat=0.10",
        "cluster_size=4k",
    ] {
        let dir = scratch();
        let (path, pristine) = image(dir.path(), "leak.qcow2", opts);
        let cs = 1u64 << header(&path).cluster_bits;
        // An allocated but unreferenced cluster after the end of the file...
        let end = fs::metadata(&path).unwrap().len().next_multiple_of(cs);
        poke(&path, end, &vec![0u8; cs as usize]);
        set_refcount(&path, end / cs, 1);
        // ...and, where the width allows, a bumped refcount.
        if opts != "refcount_bits=1" {
            set_refcount(&path, 0, 3);
        }
        copy(&path, dir.path(), "twin.qcow2");
        let (before, status) = qemu_check(dir.path(), "leak.qcow2", &[]);
        assert_eq!(status, 3, "{opts}: qemu-img sees leaks only");
        assert_eq!(numbers(&our_check(&path)), before, "{opts}");
        let (qemu_fixed, qemu_status) = qemu_check(dir.path(), "twin.qcow2", &["-r", "leaks"]);
        assert_eq!(qemu_status, 0);
        let done = our_repair(&path, RepairMode::Leaks).expect("repair completes");
        assert_eq!(
            numbers(&done.final_report()),
            qemu_fixed,
            "{opts}: -r leaks output"
        );
        assert_eq!(done.leaks_fixed(), before["leaks"]);
        let repaired: Vec<_> = done
            .repair_pass
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::Repaired)
            .collect();
        assert_eq!(
            repaired.len() as u64,
            before["leaks"],
            "{opts}: {repaired:#?}"
        );
        assert!(
            repaired.iter().all(|f| f.rule == Some(rules::RC_MATCH)),
            "{opts}: {repaired:#?}"
        );
        assert_repaired(&path, &pristine, &done);
    }
}

#[test]
fn too_low_refcount_is_fixed_by_all_only() {
    let dir = scratch();
    let (path, pristine) = image(dir.path(), "low.qcow2", "");
    // Guest 32M is shared with the snapshot: refcount 2, lowered to 1.
    let cluster = host_of(&path, 32 << 20) / CS;
    assert_eq!(refcount(&path, cluster), 2);
    set_refcount(&path, cluster, 1);
    let twin = copy(&path, dir.path(), "twin.qcow2");
    copy(&path, dir.path(), "twin-leaks.qcow2");
    let (qemu_leaks_only, status) = qemu_check(dir.path(), "twin-leaks.qcow2", &["-r", "leaks"]);
    assert_eq!(status, 2);
    let bytes = fs::read(&path).unwrap();
    let leaks_only = our_repair(&path, RepairMode::Leaks).expect("repair completes");
    assert_eq!(numbers(&leaks_only.final_report()), qemu_leaks_only);
    assert!(leaks_only.final_report().corruptions >= 1);
    assert!(leaks_only.recheck.is_none());
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "-r leaks must not touch a corruption"
    );
    let (qemu_fixed, _) = qemu_check(
        dir.path(),
        twin.file_name().unwrap().to_str().unwrap(),
        &["-r", "all"],
    );
    let done = our_repair(&path, RepairMode::All).expect("repair completes");
    assert_eq!(numbers(&done.final_report()), qemu_fixed);
    assert_eq!(done.corruptions_fixed(), 1);
    assert!(
        done.repair_pass
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::Repaired
                && f.rule == Some(rules::RC_MATCH)
                && f.message == format!("cluster {cluster} refcount=1 reference=2")),
        "{:#?}",
        done.repair_pass.findings
    );
    assert!(!done.repair_pass.rebuilt);
    assert_eq!(refcount(&path, cluster), 2);
    assert_repaired(&path, &pristine, &done);
}

#[test]
fn zero_refcount_needs_a_rebuild() {
    for (what, opts) in [
        ("data", ""),
        ("l2", ""),
        ("data", "extended_l2=on"),
        ("data", "cluster_size=512"),
        ("l2", "refcount_bits=64"),
    ] {
        let dir = scratch();
        let (path, pristine) = image(dir.path(), "zero.qcow2", opts);
        let cs = 1u64 << header(&path).cluster_bits;
        let cluster = if what == "l2" {
            first_l2(&path) / cs
        } else {
            header(&path).l1_table_offset.get() / cs
        };
        set_refcount(&path, cluster, 0);
        let (found, status) = qemu_check(dir.path(), "zero.qcow2", &[]);
        assert_eq!(status, 2);
        assert_eq!(numbers(&our_check(&path)), found, "{what} {opts}");
        let bytes = fs::read(&path).unwrap();
        assert!(matches!(
            our_repair(&path, RepairMode::Leaks),
            Err(CheckError::RebuildNeeded)
        ));
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "a failed -r leaks must not write"
        );
        let first_cluster = bytes[..cs as usize].to_vec();
        let done = our_repair(&path, RepairMode::All).expect("rebuild completes");
        assert!(done.repair_pass.rebuilt);
        assert!(done.corruptions_fixed() >= 1);
        assert_repaired(&path, &pristine, &done);
        assert_eq!(raw_content(&path), raw_content(&pristine));
        // The header changed in the refcount table fields only.
        let after = fs::read(&path).unwrap();
        for (i, (a, b)) in first_cluster.iter().zip(&after[..cs as usize]).enumerate() {
            assert!(a == b || (48..60).contains(&i), "header byte {i} changed");
        }
    }
}

/// A named fault applied to an image file.
type Fault = (&'static str, fn(&Path));

#[test]
fn broken_refcount_table_is_rebuilt() {
    let faults: [Fault; 5] = [
        ("misaligned", |p| {
            let rt = header(p).refcount_table_offset.get();
            poke_u64(p, rt, peek_u64(p, rt) + 4096);
        }),
        ("reserved bits", |p| {
            let rt = header(p).refcount_table_offset.get();
            poke_u64(p, rt, peek_u64(p, rt) | 1);
        }),
        ("beyond the end", |p| {
            let rt = header(p).refcount_table_offset.get();
            poke_u64(p, rt, 1 << 40);
        }),
        ("on the L1 table", |p| {
            let h = header(p);
            poke_u64(p, h.refcount_table_offset.get(), h.l1_table_offset.get());
        }),
        ("table beyond the end", |p| poke_u64(p, 48, 1 << 32)),
    ];
    for (name, fault) in faults {
        let dir = scratch();
        let (path, pristine) = image(dir.path(), "broken.qcow2", "");
        fault(&path);
        assert!(!qemu_clean(&path), "{name}: qemu-img should see the fault");
        let done = our_repair(&path, RepairMode::All).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(done.repair_pass.rebuilt, "{name}");
        assert_repaired(&path, &pristine, &done);
        assert_eq!(raw_content(&path), raw_content(&pristine), "{name}");
    }
}

/// iotest 108: no refcount table at all, and refcount table entries that
/// cover only free clusters but name blocks far past the end of the file,
/// at offsets where a signed or an unsigned 64-bit sum overflows.
#[test]
fn missing_table_and_entries_past_the_end_are_repaired() {
    let faults: [Fault; 3] = [
        ("no refcount table", |p| {
            poke_u64(p, 48, 0);
            poke(p, 56, &0u32.to_be_bytes());
        }),
        ("entry 1 at 0x7fff_ffff_ffff_0000", |p| {
            let rt = header(p).refcount_table_offset.get();
            poke_u64(p, rt + 8, 0x7fff_ffff_ffff_0000);
        }),
        ("entry 1 at 0xffff_ffff_ffff_0000", |p| {
            let rt = header(p).refcount_table_offset.get();
            poke_u64(p, rt + 8, 0xffff_ffff_ffff_0000);
        }),
    ];
    for (name, fault) in faults {
        let dir = scratch();
        let (path, pristine) = image(dir.path(), "table.qcow2", "");
        fault(&path);
        assert!(!qemu_clean(&path), "{name}: qemu-img should see the fault");
        // Without a table our check stops at the header (HDR-REFTABLE-*);
        // otherwise it reports the entry.
        let storage = FileStorage::open(&path, false).unwrap();
        let seen = qcow2_alloc::check::check(&storage, &[]).map_or(true, |r| !r.is_clean());
        drop(storage);
        assert!(seen, "{name}: our check should see it");
        let done = our_repair(&path, RepairMode::All).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_repaired(&path, &pristine, &done);
        assert_eq!(raw_content(&path), raw_content(&pristine), "{name}");
    }
}

/// iotest 108: a data cluster referenced beyond the coverage of every
/// refcount block. With 512-byte clusters the one block covers host
/// clusters 0..256, and qemu-io fills all of them; guest cluster 248 is
/// then pointed at host cluster 256, the first past the coverage, which is
/// where a rebuild that forgot the reference would put the new block.
/// Both repairs must keep that cluster's data.
#[test]
fn a_cluster_beyond_the_refcount_coverage_survives_the_rebuild() {
    const CS: u64 = 512;
    let dir = scratch();
    let path = make_image(
        dir.path(),
        "i108.qcow2",
        "cluster_size=512",
        "1M",
        &["write -P 0x11 0 126976"],
    );
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        256 * CS,
        "every covered cluster used"
    );
    let mut bytes = fs::read(&path).unwrap();
    bytes.resize(257 * CS as usize, 0x22);
    fs::write(&path, &bytes).unwrap();
    let l1 = header(&path).l1_table_offset.get();
    let l2 = peek_u64(&path, l1 + 3 * 8) & 0x00ff_ffff_ffff_fe00;
    poke_u64(&path, l2 + 56 * 8, (1 << 63) | (256 * CS));
    let (before, _) = qemu_check(dir.path(), "i108.qcow2", &[]);
    assert!(before["corruptions"] > 0, "{before:?}");
    assert!(!our_check(&path).is_clean());
    let theirs = copy(&path, dir.path(), "i108-qemu.qcow2");
    let want = raw_content(&path);
    assert!(want[248 * CS as usize..249 * CS as usize]
        .iter()
        .all(|&b| b == 0x22));

    let done = our_repair(&path, RepairMode::All).expect("repair");
    assert!(
        done.final_report().is_clean(),
        "{:#?}",
        done.final_report().findings
    );
    assert!(qemu_clean(&path), "qemu-img check after our repair");
    assert_eq!(raw_content(&path), want, "guest data after our repair");

    qemu_img_ok(dir.path(), &["check", "-q", "-r", "all", "i108-qemu.qcow2"]);
    assert!(
        our_check(&theirs).is_clean(),
        "our check after qemu-img's repair"
    );
    assert_eq!(
        raw_content(&theirs),
        want,
        "guest data after qemu-img's repair"
    );
}

#[test]
fn copied_flags_are_fixed() {
    let dir = scratch();
    let (path, pristine) = image(dir.path(), "copied.qcow2", "");
    let l2 = first_l2(&path);
    let at = l2 + 640 * 8;
    let entry = peek_u64(&path, at);
    assert_ne!(entry & (1 << 63), 0);
    poke_u64(&path, at, entry & !(1 << 63));
    let l1 = header(&path).l1_table_offset.get();
    poke_u64(&path, l1, peek_u64(&path, l1) ^ (1 << 63));
    let twin = copy(&path, dir.path(), "twin.qcow2");
    let (qemu_fixed, _) = qemu_check(
        dir.path(),
        twin.file_name().unwrap().to_str().unwrap(),
        &["-r", "all"],
    );
    let done = our_repair(&path, RepairMode::All).expect("repair completes");
    assert_eq!(numbers(&done.final_report()), qemu_fixed);
    assert_eq!(done.corruptions_fixed(), 2);
    assert_eq!(peek_u64(&path, at), entry);
    assert_repaired(&path, &pristine, &done);
}

#[test]
fn repair_clears_the_dirty_bit() {
    let dir = scratch();
    let (path, pristine) = image(dir.path(), "dirty.qcow2", "lazy_refcounts=on");
    // What a crash with lazy refcounts leaves: the dirty bit and a refcount
    // that was not raised.
    poke_u64(&path, 72, header(&path).incompatible_features | 1);
    set_refcount(&path, host_of(&path, 32 << 20) / CS, 1);
    let done = our_repair(&path, RepairMode::All).expect("repair completes");
    assert_eq!(
        header(&path).incompatible_features & 1,
        0,
        "dirty bit cleared"
    );
    assert_repaired(&path, &pristine, &done);
}

#[test]
fn clean_image_is_left_alone() {
    let dir = scratch();
    let (path, _) = image(dir.path(), "clean.qcow2", "");
    let bytes = fs::read(&path).unwrap();
    for mode in [RepairMode::Leaks, RepairMode::All] {
        let done = our_repair(&path, mode).expect("repair completes");
        assert!(done.recheck.is_none());
        assert!(done.final_report().is_clean());
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }
}
