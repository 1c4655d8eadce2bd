//! `qcow2 info` against `qemu-img info` on every golden image and on mutations qemu-img reads.

mod common;

use std::path::Path;

use common::*;
use qcow2_format::extensions::Extension;
use qcow2_format::features;

/// The ways a test names an image: bare, `./`-prefixed and absolute, which give different
/// `filename` and `full-backing-filename` values in qemu-img.
fn path_variants(dir: &Path, file: &str) -> [String; 3] {
    [
        file.to_string(),
        format!("./{file}"),
        dir.join(file).to_string_lossy().into_owned(),
    ]
}

/// Compares both JSON outputs and the human prefix for `file` in `dir`, returning differences.
fn compare(dir: &Path, file: &str) -> Vec<String> {
    let mut diffs = Vec::new();
    for path in path_variants(dir, file) {
        let (qemu, ours) = info_json(dir, &path);
        diffs.extend(
            json_differences(&qemu, &ours)
                .into_iter()
                .map(|d| format!("{path} (json): {d}")),
        );
        let expected = qemu_human_prefix(dir, &path);
        let human = stdout_ok("qcow2", &qcow2(dir, &["info", &path]));
        if !human.starts_with(&expected) {
            diffs.push(format!(
                "{path} (human): {}",
                first_line_difference(&expected, &human)
            ));
        }
    }
    diffs
}

/// The first line where `ours` departs from `expected`, for a readable failure.
fn first_line_difference(expected: &str, ours: &str) -> String {
    let mut ours_lines = ours.lines();
    for (n, want) in expected.lines().enumerate() {
        let got = ours_lines.next();
        if got != Some(want) {
            return format!("line {}: qemu-img {want:?}, ours {got:?}", n + 1);
        }
    }
    "qemu-img's lines are a prefix of ours except for the final newline".to_string()
}

#[test]
fn every_golden_image_matches_qemu_img() {
    let dir = golden_dir();
    let mut diffs = Vec::new();
    for image in manifest() {
        let (qemu, _) = info_json(&dir, &image.file);
        if qemu["virtual-size"].as_u64() != Some(image.virtual_size) {
            diffs.push(format!(
                "{}: manifest virtual_size {} but qemu-img says {}",
                image.name, image.virtual_size, qemu["virtual-size"]
            ));
        }
        diffs.extend(
            compare(&dir, &image.file)
                .into_iter()
                .map(|d| format!("{}: {d}", image.name)),
        );
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// A change to a header area.
type Edit = fn(&mut qcow2_format::HeaderArea);

/// Header states qemu-img still opens: dirty, corrupt, an unknown extension it skips.
#[test]
fn flag_and_extension_mutations_match_qemu_img() {
    let dir = scratch("info_mutations");
    let golden = golden_dir();
    let mutations: [(&str, &str, Edit); 5] = [
        ("dirty.qcow2", "default.qcow2", |a| {
            a.header.incompatible_features |= features::INCOMPAT_DIRTY
        }),
        ("corrupt.qcow2", "default.qcow2", |a| {
            a.header.incompatible_features |= features::INCOMPAT_BIT1
        }),
        ("dirty-corrupt-lazy.qcow2", "lazy-refcounts.qcow2", |a| {
            a.header.incompatible_features |= features::INCOMPAT_DIRTY | features::INCOMPAT_BIT1
        }),
        ("unknown-ext.qcow2", "default.qcow2", |a| {
            a.chain.extensions.push(Extension::Unknown {
                kind: 0x1234_5678,
                data: vec![7; 5],
            })
        }),
        ("stale-bitmaps.qcow2", "bitmaps.qcow2", |a| {
            a.header.autoclear_features &= !features::AUTOCLEAR_BITMAPS
        }),
    ];
    let mut diffs = Vec::new();
    for (name, source, edit) in mutations {
        rewrite_area(&golden.join(source), &dir.join(name), edit);
        diffs.extend(
            compare(&dir, name)
                .into_iter()
                .map(|d| format!("{name}: {d}")),
        );
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Virtual sizes around unit boundaries, where qemu-img's "%0.3g" rounding shows.
#[test]
fn sizes_print_like_qemu_img() {
    let dir = scratch("info_sizes");
    let sizes: [u64; 10] = [
        0,
        512,
        999 << 10,
        1000 << 10,
        1_023_488,
        1_048_064,
        5_000_192,
        1 << 30,
        1 << 40,
        1 << 45,
    ];
    let mut diffs = Vec::new();
    for size in sizes {
        let file = format!("size-{size}.qcow2");
        let out = qemu_img(&dir, &["create", "-f", "qcow2", &file, &size.to_string()]);
        stdout_ok("qemu-img create", &out);
        diffs.extend(compare(&dir, &file));
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
