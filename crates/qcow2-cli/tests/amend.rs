//! `qcow2 amend` against QEMU: after every change `qemu-img check` is
//! clean, `qemu-img info` shows the new setting and `qemu-img compare`
//! finds the guest data unchanged; refused amends leave the file
//! byte-identical and name the reason; unknown header extensions survive.

mod tools;

use std::path::Path;

use qcow2_format::extensions::Extension;
use qcow2_format::HeaderArea;
use serde_json::Value;
use tools::*;

/// The `format-specific.data` object of `qemu-img info`.
fn specific(dir: &Path, file: &str) -> Value {
    info(dir, file)["format-specific"]["data"].clone()
}

/// Runs `qcow2 amend -f qcow2 -o opts file`, which must succeed, then
/// checks the image and compares it with `orig`.
fn amend_ok(dir: &Path, file: &str, opts: &str, orig: &str) {
    ok(
        &format!("amend -o {opts}"),
        &qcow2(dir, &["amend", "-f", "qcow2", "-o", opts, file]),
    );
    assert_clean(dir, file);
    let cmp = qemu_img(dir, &["compare", orig, file]);
    assert_eq!(
        cmp.status.code(),
        Some(0),
        "after -o {opts}: {}",
        stdout(&cmp)
    );
}

/// Runs an amend that must be refused: exit status 1, a message containing
/// `reason`, and the file byte-identical.
fn amend_refused(dir: &Path, file: &str, opts: &str, reason: &str) {
    let before = std::fs::read(dir.join(file)).unwrap();
    let out = qcow2(dir, &["amend", "-o", opts, file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "-o {opts} should fail: {err}");
    assert!(
        err.contains(reason),
        "-o {opts}: message {err:?} should name {reason:?}"
    );
    let after = std::fs::read(dir.join(file)).unwrap();
    assert!(before == after, "-o {opts}: refused amend changed the file");
}

fn create(dir: &Path, file: &str, opts: &str, extra: &[&str]) {
    let mut args = vec!["create", "-f", "qcow2", "-o", opts];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[file, "4M"]);
    ok("qemu-img create", &qemu_img(dir, &args));
}

fn io(dir: &Path, file: &str, cmds: &[&str]) {
    let mut args = Vec::new();
    for c in cmds {
        args.extend_from_slice(&["-c", c]);
    }
    args.push(file);
    ok("qemu-io", &qemu_io(dir, &args));
}

fn copy(dir: &Path, from: &str, to: &str) {
    std::fs::copy(dir.join(from), dir.join(to)).unwrap();
}

const DATA: &[&str] = &[
    "write -P 0x11 0 300k",
    "write -z 512k 64k",
    "write -P 0x22 1M 64k",
    "write -z 1M 64k",
    "write -P 0x33 3M 100k",
];

#[test]
fn refcount_width_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "a.qcow2", "cluster_size=4k", &[]);
    io(d, "a.qcow2", DATA);
    copy(d, "a.qcow2", "orig.qcow2");
    for bits in [1, 64, 2, 16] {
        amend_ok(d, "a.qcow2", &format!("refcount_bits={bits}"), "orig.qcow2");
        assert_eq!(specific(d, "a.qcow2")["refcount-bits"], bits, "{bits}");
    }
    // Writes through QEMU still work on the rewritten structure.
    amend_ok(d, "a.qcow2", "refcount_bits=1", "orig.qcow2");
    io(d, "a.qcow2", &["write -P 0x44 2M 64k"]);
    assert_clean(d, "a.qcow2");
}

#[test]
fn refcount_width_with_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "s.qcow2", "cluster_size=64k", &[]);
    io(d, "s.qcow2", DATA);
    ok(
        "snapshot",
        &qemu_img(d, &["snapshot", "-c", "snap1", "s.qcow2"]),
    );
    copy(d, "s.qcow2", "orig.qcow2");
    // Shared clusters have refcount 2: one bit cannot hold it.
    amend_refused(d, "s.qcow2", "refcount_bits=1", "refcount of 2");
    amend_ok(d, "s.qcow2", "refcount_bits=2", "orig.qcow2");
    assert_eq!(specific(d, "s.qcow2")["refcount-bits"], 2);
    amend_ok(d, "s.qcow2", "refcount_bits=64", "orig.qcow2");
    assert_eq!(specific(d, "s.qcow2")["refcount-bits"], 64);
}

#[test]
fn lazy_refcounts_on_off_and_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "l.qcow2", "cluster_size=64k", &[]);
    io(d, "l.qcow2", DATA);
    copy(d, "l.qcow2", "orig.qcow2");
    amend_ok(d, "l.qcow2", "lazy_refcounts=on", "orig.qcow2");
    assert_eq!(specific(d, "l.qcow2")["lazy-refcounts"], true);
    amend_ok(d, "l.qcow2", "lazy_refcounts=off", "orig.qcow2");
    assert_eq!(specific(d, "l.qcow2")["lazy-refcounts"], false);

    // A dirty image: QEMU aborted after writes with lazy refcounts on.
    create(d, "dirty.qcow2", "lazy_refcounts=on", &[]);
    let out = qemu_io(
        d,
        &["-c", "write -P 0x55 0 512k", "-c", "abort", "dirty.qcow2"],
    );
    assert!(!out.status.success());
    let check = qemu_img(d, &["check", "dirty.qcow2"]);
    assert_ne!(check.status.code(), Some(0), "the image should be dirty");
    copy(d, "dirty.qcow2", "dirty-orig.qcow2");
    amend_ok(d, "dirty.qcow2", "lazy_refcounts=off", "dirty-orig.qcow2");
    assert_eq!(specific(d, "dirty.qcow2")["lazy-refcounts"], false);
    io(d, "dirty.qcow2", &["read -P 0x55 0 512k"]);

    // iotest 061: a downgrade of a dirty image repairs it first, and the
    // version 2 result has no dirty bit to carry.
    copy(d, "dirty-orig.qcow2", "dirty-down.qcow2");
    amend_ok(d, "dirty-down.qcow2", "compat=0.10", "dirty-orig.qcow2");
    assert_eq!(specific(d, "dirty-down.qcow2")["compat"], "0.10");
    io(d, "dirty-down.qcow2", &["read -P 0x55 0 512k"]);

    // Version 2 has no lazy refcounts.
    create(d, "v2.qcow2", "compat=0.10", &[]);
    amend_refused(d, "v2.qcow2", "lazy_refcounts=on", "Lazy refcounts");
    amend_refused(d, "v2.qcow2", "refcount_bits=8", "compatibility level 1.1");
}

#[test]
fn upgrade_keeps_backing_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "base.qcow2", "cluster_size=64k", &[]);
    io(d, "base.qcow2", &["write -P 0x77 0 4M"]);
    create(
        d,
        "v2.qcow2",
        "compat=0.10",
        &["-b", "base.qcow2", "-F", "qcow2"],
    );
    io(
        d,
        "v2.qcow2",
        &["write -P 0x11 64k 300k", "write -P 0x33 3M 100k"],
    );
    copy(d, "v2.qcow2", "orig.qcow2");
    amend_ok(d, "v2.qcow2", "compat=1.1", "orig.qcow2");
    let i = info(d, "v2.qcow2");
    assert_eq!(i["format-specific"]["data"]["compat"], "1.1");
    assert_eq!(i["format-specific"]["data"]["refcount-bits"], 16);
    assert_eq!(i["backing-filename"], "base.qcow2");
    assert_eq!(i["backing-filename-format"], "qcow2");
    // Upgrade and new width together.
    copy(d, "orig.qcow2", "both.qcow2");
    amend_ok(
        d,
        "both.qcow2",
        "compat=v3,refcount_bits=4,lazy_refcounts=on",
        "orig.qcow2",
    );
    let s = specific(d, "both.qcow2");
    assert_eq!(s["compat"], "1.1");
    assert_eq!(s["refcount-bits"], 4);
    assert_eq!(s["lazy-refcounts"], true);
}

#[test]
fn downgrade_expands_zero_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "base.qcow2", "cluster_size=64k", &[]);
    io(d, "base.qcow2", &["write -P 0x77 0 4M"]);
    // With a backing file the zero clusters must hide it: allocated zeros.
    create(
        d,
        "ov.qcow2",
        "lazy_refcounts=on",
        &["-b", "base.qcow2", "-F", "qcow2"],
    );
    io(d, "ov.qcow2", DATA);
    copy(d, "ov.qcow2", "ov-orig.qcow2");
    amend_ok(d, "ov.qcow2", "compat=0.10", "ov-orig.qcow2");
    let i = info(d, "ov.qcow2");
    assert_eq!(i["format-specific"]["data"]["compat"], "0.10");
    assert_eq!(i["backing-filename"], "base.qcow2");
    io(d, "ov.qcow2", &["read -P 0 512k 64k", "read -P 0 1M 64k"]);
    // Without one they become unallocated.
    create(d, "nb.qcow2", "cluster_size=64k", &[]);
    io(d, "nb.qcow2", DATA);
    copy(d, "nb.qcow2", "nb-orig.qcow2");
    amend_ok(d, "nb.qcow2", "compat=0.10", "nb-orig.qcow2");
    assert_eq!(specific(d, "nb.qcow2")["compat"], "0.10");
    // And back up, then down with a width change to 16 in the same call.
    amend_ok(d, "nb.qcow2", "compat=1.1,refcount_bits=8", "nb-orig.qcow2");
    amend_ok(
        d,
        "nb.qcow2",
        "compat=0.10,refcount_bits=16",
        "nb-orig.qcow2",
    );
    assert_eq!(specific(d, "nb.qcow2")["compat"], "0.10");
    // No zero clusters at all.
    create(d, "plain.qcow2", "cluster_size=4k", &[]);
    io(d, "plain.qcow2", &["write -P 0x11 0 300k"]);
    copy(d, "plain.qcow2", "plain-orig.qcow2");
    amend_ok(d, "plain.qcow2", "compat=v2", "plain-orig.qcow2");
    assert_eq!(specific(d, "plain.qcow2")["compat"], "0.10");
}

#[test]
fn refusals_leave_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "a.qcow2", "refcount_bits=8", &[]);
    io(d, "a.qcow2", DATA);
    amend_refused(d, "a.qcow2", "compat=0.10", "refcount_bits=16");
    amend_refused(d, "a.qcow2", "refcount_bits=3", "power of two");
    amend_refused(d, "a.qcow2", "refcount_bits=128", "power of two");
    amend_refused(d, "a.qcow2", "compat=1.2", "compatibility level");
    amend_refused(d, "a.qcow2", "size=1G", "'size'");
    amend_refused(d, "a.qcow2", "backing_file=x", "'backing_file'");
    amend_refused(d, "a.qcow2", "encrypt.new-secret=x", "'encrypt.new-secret'");
    amend_refused(d, "a.qcow2", "foo=1", "'foo'");
    // Creation-only options, and lazy refcounts on the version 2 being set
    // in the same call (iotest 061); qemu-img refuses all three alike.
    amend_refused(d, "a.qcow2", "cluster_size=4k", "'cluster_size'");
    amend_refused(d, "a.qcow2", "preallocation=metadata", "'preallocation'");
    create(d, "l.qcow2", "compat=1.1", &[]);
    amend_refused(
        d,
        "l.qcow2",
        "compat=0.10,lazy_refcounts=on",
        "compatibility level 1.1",
    );

    create(d, "x.qcow2", "extended_l2=on", &[]);
    amend_refused(d, "x.qcow2", "compat=0.10", "extended L2 entries");

    create(d, "b.qcow2", "cluster_size=64k", &[]);
    ok(
        "bitmap",
        &qemu_img(d, &["bitmap", "--add", "b.qcow2", "bm"]),
    );
    amend_refused(d, "b.qcow2", "compat=0.10", "bitmaps");

    create(d, "z.qcow2", "compression_type=zstd", &[]);
    io(d, "z.qcow2", &["write -c -P 0x44 0 64k"]);
    amend_refused(d, "z.qcow2", "compat=0.10", "zstd");

    create(d, "s.qcow2", "cluster_size=64k", &[]);
    io(d, "s.qcow2", &["write -z 0 64k"]);
    ok(
        "snapshot",
        &qemu_img(d, &["snapshot", "-c", "zs", "s.qcow2"]),
    );
    amend_refused(d, "s.qcow2", "compat=0.10", "snapshot 'zs'");

    // zstd without compressed clusters may go: QEMU allows it too.
    create(d, "z2.qcow2", "compression_type=zstd", &[]);
    io(d, "z2.qcow2", &["write -P 0x44 0 64k"]);
    copy(d, "z2.qcow2", "z2-orig.qcow2");
    amend_ok(d, "z2.qcow2", "compat=0.10", "z2-orig.qcow2");
}

/// Adds an extension of unknown type to the image's header.
fn add_unknown_extension(path: &Path, data: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut area = HeaderArea::parse(&bytes).unwrap();
    area.chain.extensions.push(Extension::Unknown {
        kind: 0x1234_5678,
        data: data.to_vec(),
    });
    let new = area.to_bytes().unwrap();
    bytes[..new.len()].copy_from_slice(&new);
    std::fs::write(path, bytes).unwrap();
}

fn unknown_extension(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let area = HeaderArea::parse(&bytes).unwrap();
    area.chain.extensions.iter().find_map(|e| match e {
        Extension::Unknown {
            kind: 0x1234_5678,
            data,
        } => Some(data.clone()),
        _ => None,
    })
}

#[test]
fn unknown_extension_survives_every_amend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "base.qcow2", "cluster_size=64k", &[]);
    create(
        d,
        "u.qcow2",
        "cluster_size=4k",
        &["-b", "base.qcow2", "-F", "qcow2"],
    );
    io(d, "u.qcow2", DATA);
    let payload = b"opaque extension payload";
    add_unknown_extension(&d.join("u.qcow2"), payload);
    assert_clean(d, "u.qcow2");
    copy(d, "u.qcow2", "orig.qcow2");
    for opts in [
        "lazy_refcounts=on",
        "refcount_bits=1",
        "lazy_refcounts=off",
        "refcount_bits=64",
        "refcount_bits=16",
        "compat=0.10",
        "compat=1.1",
        "refcount_bits=2",
    ] {
        amend_ok(d, "u.qcow2", opts, "orig.qcow2");
        assert_eq!(
            unknown_extension(&d.join("u.qcow2")).as_deref(),
            Some(&payload[..]),
            "after -o {opts}"
        );
        assert_eq!(info(d, "u.qcow2")["backing-filename"], "base.qcow2");
    }
    // A refused amend keeps it too (and everything else).
    amend_refused(d, "u.qcow2", "compat=0.10", "refcount_bits=16");
}

/// iotest 061: a downgrade drops unknown compatible and autoclear bits,
/// which version 2 cannot hold (qemu-img does the same).
#[test]
fn downgrade_drops_unknown_compatible_and_autoclear_bits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "u.qcow2", "cluster_size=64k", &[]);
    io(d, "u.qcow2", DATA);
    // Compatible bit 42 and autoclear bit 42: unknown to both tools.
    let mut bytes = std::fs::read(d.join("u.qcow2")).unwrap();
    bytes[80 + 2] |= 0x04;
    bytes[88 + 2] |= 0x04;
    std::fs::write(d.join("u.qcow2"), &bytes).unwrap();
    copy(d, "u.qcow2", "u-orig.qcow2");
    copy(d, "u.qcow2", "u-qemu.qcow2");
    ok(
        "qemu-img amend",
        &qemu_img(
            d,
            &["amend", "-f", "qcow2", "-o", "compat=0.10", "u-qemu.qcow2"],
        ),
    );
    amend_ok(d, "u.qcow2", "compat=0.10", "u-orig.qcow2");
    // Both are version 2 (a header without feature fields) and hold the
    // same disk.
    for file in ["u.qcow2", "u-qemu.qcow2"] {
        let b = std::fs::read(d.join(file)).unwrap();
        assert_eq!(u32::from_be_bytes(b[4..8].try_into().unwrap()), 2, "{file}");
    }
    let cmp = qemu_img(d, &["compare", "u.qcow2", "u-qemu.qcow2"]);
    assert_eq!(cmp.status.code(), Some(0), "{}", stdout(&cmp));
}

/// iotest 061's fully preallocated image: zero writes without unmap keep
/// their host clusters as preallocated zero clusters, which a downgrade to
/// version 2 (no zero flag) must fill with zeros on disk.
#[test]
fn downgrade_expands_preallocated_zero_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        "qemu-img create",
        &qemu_img(
            d,
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "preallocation=full",
                "p.qcow2",
                "64M",
            ],
        ),
    );
    io(
        d,
        "p.qcow2",
        &["write -P 0x5c 0 64M", "write -z 1M 8M", "write -z 20M 100k"],
    );
    copy(d, "p.qcow2", "orig.qcow2");
    let map = qemu_img(d, &["map", "--output=json", "p.qcow2"]);
    assert!(
        stdout(&map).contains("\"zero\": true, \"data\": false, \"compressed\": false, \"offset\""),
        "preallocated zero clusters before the downgrade: {}",
        stdout(&map)
    );
    amend_ok(d, "p.qcow2", "compat=0.10", "orig.qcow2");
    assert_eq!(specific(d, "p.qcow2")["compat"], "0.10");
}
