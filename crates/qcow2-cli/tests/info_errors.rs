//! Invalid and hostile files: exit code 1 and a one-line error naming the rule, never a panic.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use qcow2_format::extensions::Extension;
use qcow2_format::{features, rules, RuleId};

/// Asserts our one-line failure, and that QEMU cannot open the file either.
///
/// The oracle is `qemu-img check` (exit 1, "Could not open") rather than `qemu-img info`,
/// because info skips some open-time checks: it shows an image with incompatible bit 2
/// and no data file extension, which QEMU refuses to open for I/O.
fn assert_rejected(dir: &Path, file: &str, rule: Option<RuleId>) -> Vec<String> {
    let mut problems = Vec::new();
    let out = qcow2(dir, &["info", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) {
        problems.push(format!(
            "{file}: exit status {:?}, expected 1",
            out.status.code()
        ));
    }
    if stderr.trim_end().lines().count() != 1 || stderr.contains("panicked") {
        problems.push(format!("{file}: expected a one-line error, got {stderr:?}"));
    }
    if !out.stdout.is_empty() {
        problems.push(format!("{file}: printed a report although it failed"));
    }
    if let Some(rule) = rule {
        if !stderr.contains(&format!("{rule} at byte 0x")) {
            problems.push(format!(
                "{file}: error does not name {rule} and its offset: {stderr:?}"
            ));
        }
    }
    let qemu = qemu_img(dir, &["check", "-f", "qcow2", file]);
    if qemu.status.code() != Some(1)
        || !String::from_utf8_lossy(&qemu.stderr).contains("Could not open")
    {
        problems.push(format!(
            "{file}: QEMU opens it, so it is not an invalid image"
        ));
    }
    problems
}

fn poke(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + value.len()].copy_from_slice(value);
    b
}

#[test]
fn invalid_headers_exit_1_naming_the_rule() {
    let dir = scratch("info_errors");
    let default = fs::read(golden_dir().join("default.qcow2")).expect("golden default image");
    let incompat = |bits: u64| poke(&default, 72, &bits.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, RuleId)> = vec![
        ("empty.qcow2", Vec::new(), rules::HDR_LENGTH),
        (
            "garbage.qcow2",
            b"this is not a disk image\n".repeat(200),
            rules::HDR_MAGIC,
        ),
        (
            "short-header.qcow2",
            default[..100].to_vec(),
            rules::HDR_LENGTH,
        ),
        (
            "version.qcow2",
            poke(&default, 4, &4u32.to_be_bytes()),
            rules::HDR_VERSION,
        ),
        (
            "cluster-bits.qcow2",
            poke(&default, 20, &40u32.to_be_bytes()),
            rules::HDR_CLUSTER_BITS,
        ),
        (
            "l1-offset.qcow2",
            poke(&default, 40, &0x30001u64.to_be_bytes()),
            rules::HDR_L1_OFFSET,
        ),
        (
            "backing-offset.qcow2",
            poke(
                &poke(&default, 8, &0x20000u64.to_be_bytes()),
                16,
                &10u32.to_be_bytes(),
            ),
            rules::HDR_BACKING_FILE,
        ),
        (
            "unknown-incompat.qcow2",
            incompat(1 << 5),
            rules::FEAT_INCOMPAT_UNKNOWN,
        ),
        (
            "bit2-alone.qcow2",
            incompat(features::INCOMPAT_BIT2),
            rules::FEAT_BIT2,
        ),
        // The feature name table follows the 112-byte header; give it an impossible length.
        (
            "ext-framing.qcow2",
            poke(&default, 116, &0xffff_0000u32.to_be_bytes()),
            rules::EXT_FRAMING,
        ),
    ];
    let mut problems = Vec::new();
    for (file, bytes, rule) in cases {
        fs::write(dir.join(file), bytes).expect("write case");
        problems.extend(assert_rejected(&dir, file, Some(rule)));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn bitmap_directory_past_the_end_exits_1() {
    let dir = scratch("info_errors_bitmaps");
    rewrite_area(
        &golden_dir().join("bitmaps.qcow2"),
        &dir.join("bitmaps-eof.qcow2"),
        |area| {
            for ext in &mut area.chain.extensions {
                if let Extension::Bitmaps(b) = ext {
                    b.bitmap_directory_offset = 0x1000_0000u64.into();
                }
            }
        },
    );
    let problems = assert_rejected(&dir, "bitmaps-eof.qcow2", Some(rules::EXT_BITMAPS));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn unreadable_paths_exit_1() {
    let dir = scratch("info_errors_paths");
    fs::create_dir_all(dir.join("a-directory")).expect("create directory");
    let mut problems = assert_rejected(&dir, "does-not-exist.qcow2", None);
    problems.extend(assert_rejected(&dir, "a-directory", None));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
