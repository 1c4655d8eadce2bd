//! `qcow2 check` against `qemu-img check`: stdout (human and JSON) and exit
//! status, on golden images and on images with leaks and corruptions,
//! checked and repaired.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use common::*;

/// (stdout, exit status) of a run.
fn outcome(out: &Output) -> (String, Option<i32>) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// Asserts both tools print the same stdout and exit alike for `args`.
fn same_as_qemu(dir: &Path, args: &[&str]) -> (String, Option<i32>) {
    let (file, options) = args.split_last().expect("a file");
    let mut qemu_args = vec!["check"];
    qemu_args.extend(options);
    let image_opts = encrypted_image_opts(file);
    let file_args = qemu_file_args(dir, file);
    qemu_args.extend(file_args.iter().map(String::as_str));
    let mut our_args = vec!["check"];
    our_args.extend(args);
    let (qemu_out, qemu_code) = outcome(&qemu_img(dir, &qemu_args));
    // qemu-img names the image by the options it was opened with.
    let qemu = (qemu_out.replace(&image_opts, file), qemu_code);
    let ours_out = qcow2(dir, &our_args);
    let ours = outcome(&ours_out);
    assert_eq!(
        ours,
        qemu,
        "qcow2 {args:?} (left) vs qemu-img (right) in {}; our stderr:\n{}",
        dir.display(),
        String::from_utf8_lossy(&ours_out.stderr)
    );
    ours
}

#[test]
fn golden_images_print_what_qemu_img_prints() {
    let dir = golden_dir();
    for image in manifest() {
        for output in ["--output=human", "--output=json"] {
            let (_, code) = same_as_qemu(&dir, &[output, &image.file]);
            assert_eq!(code, Some(0), "{}", image.file);
        }
    }
}

fn peek_u64(path: &Path, at: u64) -> u64 {
    let bytes = fs::read(path).unwrap();
    u64::from_be_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap())
}

/// Sets the 16-bit refcount of `cluster` (default images, first block).
fn set_refcount16(path: &Path, cluster: u64, value: u16) {
    let block = peek_u64(path, peek_u64(path, 48));
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&value.to_be_bytes(), block + cluster * 2)
        .unwrap();
}

/// A 4 MiB image with data, a snapshot and writes after it, in `dir`.
fn image(dir: &Path, name: &str) {
    let ok = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    ok(qemu_img(dir, &["create", "-q", "-f", "qcow2", name, "4M"]));
    let io = |cmd: &str| {
        let out = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", cmd, name])
            .current_dir(dir)
            .output()
            .expect("qemu-io is required");
        assert!(out.status.success());
    };
    io("write -P 1 0 128k");
    ok(qemu_img(dir, &["snapshot", "-c", "s1", name]));
    io("write -P 2 0 64k");
    io("write -c -P 3 1M 64k");
}

/// Builds `name` and breaks it with `fault`, then makes `copies` twins.
fn broken(dir: &Path, name: &str, fault: impl FnOnce(&Path), copies: &[&str]) {
    image(dir, name);
    fault(&dir.join(name));
    for copy in copies {
        fs::copy(dir.join(name), dir.join(copy)).unwrap();
    }
}

#[test]
fn leaks_and_corruptions_print_and_exit_like_qemu_img() {
    let dir = scratch("check-faults");
    let leak = |p: &Path| set_refcount16(p, 0, 2);
    broken(&dir, "leak.qcow2", leak, &[]);
    for output in ["--output=human", "--output=json"] {
        assert_eq!(same_as_qemu(&dir, &[output, "leak.qcow2"]).1, Some(3));
    }
    // The data cluster of guest offset 64k is shared with the snapshot.
    let low = |p: &Path| {
        let l1 = peek_u64(p, 40);
        let l2 = peek_u64(p, l1) & 0x00ff_ffff_ffff_fe00;
        let data = peek_u64(p, l2 + 8) & 0x00ff_ffff_ffff_fe00;
        set_refcount16(p, data / 65536, 1);
    };
    broken(&dir, "low.qcow2", low, &[]);
    for output in ["--output=human", "--output=json"] {
        assert_eq!(same_as_qemu(&dir, &[output, "low.qcow2"]).1, Some(2));
    }
}

#[test]
fn repairs_print_and_exit_like_qemu_img() {
    let dir = scratch("check-repairs");
    let leak = |p: &Path| set_refcount16(p, 0, 2);
    let low = |p: &Path| {
        let l1 = peek_u64(p, 40);
        let l2 = peek_u64(p, l1) & 0x00ff_ffff_ffff_fe00;
        let data = peek_u64(p, l2 + 8) & 0x00ff_ffff_ffff_fe00;
        set_refcount16(p, data / 65536, 1);
    };
    for (name, fault) in [("leak", &leak as &dyn Fn(&Path)), ("low", &low)] {
        for mode in ["leaks", "all"] {
            for output in ["human", "json"] {
                // qemu-img repairs one copy, we repair the other: same name
                // in different directories so the "filename" keys agree.
                let q = dir.join(format!("{name}-{mode}-{output}-q"));
                let o = dir.join(format!("{name}-{mode}-{output}-o"));
                fs::create_dir_all(&q).unwrap();
                fs::create_dir_all(&o).unwrap();
                broken(&q, "x.qcow2", fault, &[]);
                fs::copy(q.join("x.qcow2"), o.join("x.qcow2")).unwrap();
                let out_arg = format!("--output={output}");
                let qemu = outcome(&qemu_img(
                    &q,
                    &["check", "-f", "qcow2", "-r", mode, &out_arg, "x.qcow2"],
                ));
                let ours = outcome(&qcow2(&o, &["check", "-r", mode, &out_arg, "x.qcow2"]));
                assert_eq!(ours, qemu, "{name} -r {mode} --output={output}");
                let after = qemu_img(&o, &["check", "-f", "qcow2", "x.qcow2"]);
                assert_eq!(
                    after.status.code(),
                    qemu.1,
                    "{name} -r {mode}: qemu-img check after our repair"
                );
            }
        }
    }
}

#[test]
fn leak_repair_refuses_what_needs_a_rebuild() {
    let dir = scratch("check-rebuild");
    let zero = |p: &Path| {
        let l1 = peek_u64(p, 40);
        let l2 = peek_u64(p, l1) & 0x00ff_ffff_ffff_fe00;
        set_refcount16(p, l2 / 65536, 0);
    };
    broken(&dir, "zero.qcow2", zero, &["twin.qcow2"]);
    let qemu = qemu_img(&dir, &["check", "-f", "qcow2", "-r", "leaks", "twin.qcow2"]);
    let ours = qcow2(&dir, &["check", "-r", "leaks", "zero.qcow2"]);
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(ours.status.code(), qemu.status.code());
    assert!(ours.stdout.is_empty());
    assert!(String::from_utf8_lossy(&ours.stderr).contains("Check failed"));
    // -r all rebuilds: clean afterwards for both tools.
    let ours = qcow2(&dir, &["check", "-r", "all", "zero.qcow2"]);
    assert_eq!(
        ours.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ours.stdout).contains("Double checking the fixed image now...")
    );
    assert!(qemu_img(&dir, &["check", "-f", "qcow2", "zero.qcow2"])
        .status
        .success());
    let compare = qemu_img(
        &dir,
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "zero.qcow2",
            "twin.qcow2",
        ],
    );
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
}

#[test]
fn findings_name_offsets_and_rules() {
    let dir = scratch("check-findings");
    broken(&dir, "leak.qcow2", |p| set_refcount16(p, 0, 2), &[]);
    let out = qcow2(&dir, &["check", "leak.qcow2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Leaked cluster 0 refcount=2 reference=1 (offset 0x0, RC-MATCH)"),
        "{stderr}"
    );
}

#[test]
fn errors_and_help() {
    let dir = scratch("check-errors");
    fs::write(dir.join("junk.qcow2"), "not an image, ".repeat(20)).unwrap();
    let out = qcow2(&dir, &["check", "junk.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HDR-MAGIC"));
    let out = qcow2(&dir, &["check", "missing.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    let help = stdout_ok("qcow2", &qcow2(&dir, &["check", "--help"]));
    for needle in [
        "-r, --repair",
        "--output",
        "Exit status",
        "leaks-fixed",
        "rebuild",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
