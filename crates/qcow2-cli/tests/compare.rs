//! `qcow2 compare` against `qemu-img compare`: the same stdout and exit
//! status for identical, different, differently sized, strict-mode and
//! unreadable image pairs, qcow2 and raw.

mod tools;

use std::path::Path;

use tools::*;

fn setup(dir: &Path) {
    let img = |args: &[&str]| {
        ok(&format!("qemu-img {args:?}"), &qemu_img(dir, args));
    };
    let io = |file: &str, commands: &[&str]| {
        let mut args = Vec::new();
        for c in commands {
            args.extend(["-c", *c]);
        }
        args.push(file);
        ok(&format!("qemu-io {commands:?}"), &qemu_io(dir, &args));
    };
    img(&["create", "-f", "qcow2", "base.qcow2", "4M"]);
    io("base.qcow2", &["write -P 0x11 0 1M", "write -P 0x22 3M 4k"]);
    img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
    ]);
    io("top.qcow2", &["write -P 0x33 512k 64k"]);
    img(&["convert", "-O", "qcow2", "top.qcow2", "flat.qcow2"]);
    img(&["convert", "-O", "raw", "top.qcow2", "flat.raw"]);
    img(&["convert", "-c", "-O", "qcow2", "top.qcow2", "packed.qcow2"]);
    // One byte differs at an odd offset.
    img(&["convert", "-O", "qcow2", "top.qcow2", "onebyte.qcow2"]);
    io("onebyte.qcow2", &["write -P 0x99 1234567 1"]);
    // Larger, zeros beyond; larger with data beyond.
    img(&["convert", "-O", "qcow2", "top.qcow2", "bigger.qcow2"]);
    img(&["resize", "bigger.qcow2", "6M"]);
    img(&[
        "convert",
        "-O",
        "qcow2",
        "bigger.qcow2",
        "bigger-data.qcow2",
    ]);
    io("bigger-data.qcow2", &["write -P 1 5000000 1"]);
    // Same content, different allocation: written zeros vs unallocated.
    img(&["create", "-f", "qcow2", "empty.qcow2", "4M"]);
    img(&["create", "-f", "qcow2", "zeros.qcow2", "4M"]);
    io("zeros.qcow2", &["write -P 0 1M 64k", "write -P 0 3M 1M"]);
}

#[test]
fn same_verdicts_as_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let cases: &[&[&str]] = &[
        &["top.qcow2", "top.qcow2"],
        &["top.qcow2", "flat.qcow2"],
        &["flat.qcow2", "top.qcow2"],
        &["top.qcow2", "flat.raw"],
        &["-f", "raw", "-F", "qcow2", "flat.raw", "top.qcow2"],
        &["packed.qcow2", "top.qcow2"],
        &["top.qcow2", "base.qcow2"],
        &["top.qcow2", "onebyte.qcow2"],
        &["onebyte.qcow2", "flat.raw"],
        &["top.qcow2", "bigger.qcow2"],
        &["bigger.qcow2", "top.qcow2"],
        &["top.qcow2", "bigger-data.qcow2"],
        &["bigger-data.qcow2", "top.qcow2"],
        &["onebyte.qcow2", "bigger.qcow2"],
        &["-s", "top.qcow2", "bigger.qcow2"],
        &["-s", "empty.qcow2", "zeros.qcow2"],
        &["-s", "zeros.qcow2", "empty.qcow2"],
        &["empty.qcow2", "zeros.qcow2"],
        &["-q", "top.qcow2", "onebyte.qcow2"],
    ];
    for args in cases {
        let mut full = vec!["compare"];
        full.extend(*args);
        let ours = qcow2(d, &full);
        let theirs = qemu_img(d, &full);
        assert_eq!(
            (stdout(&ours), ours.status.code()),
            (stdout(&theirs), theirs.status.code()),
            "qcow2 (left) vs qemu-img (right) for {args:?}; our stderr: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
    }
}

#[test]
fn unreadable_images_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    std::fs::write(d.join("bad.qcow2"), b"QFI\xfbtruncated").unwrap();
    for args in [
        ["compare", "top.qcow2", "missing.qcow2"],
        ["compare", "missing.qcow2", "top.qcow2"],
        ["compare", "bad.qcow2", "top.qcow2"],
    ] {
        let ours = qcow2(d, &args);
        let theirs = qemu_img(d, &args);
        assert_eq!(theirs.status.code(), Some(2), "{args:?}");
        assert_eq!(ours.status.code(), Some(2), "{args:?}");
        assert!(
            ours.stdout.is_empty() && !ours.stderr.is_empty(),
            "{args:?}"
        );
    }
}

#[test]
fn progress_goes_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let out = qcow2(d, &["compare", "-p", "top.qcow2", "flat.qcow2"]);
    assert_eq!(stdout(&out), "Images are identical.\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("(100.00/100%)"));
}

/// qemu-img sees the holes of a sparse raw file (SEEK_HOLE) and reports
/// them as zero in strict mode; we treat a raw file as data throughout.
#[test]
fn strict_mode_on_sparse_raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let args = ["compare", "-s", "flat.raw", "flat.qcow2"];
    let ours = qcow2(d, &args);
    let theirs = qemu_img(d, &args);
    assert_eq!(
        (stdout(&ours), ours.status.code()),
        (stdout(&theirs), theirs.status.code())
    );
}
