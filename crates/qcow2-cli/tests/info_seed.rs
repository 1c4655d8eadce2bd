//! Images with the seed extensions, which qemu-img cannot read: built here from a golden image.

mod common;

use std::path::Path;

use common::*;
use qcow2_format::extensions::{CompressFormat, Dedup, Extension};
use qcow2_format::{features, rules, HostOffset};
use serde_json::{json, Value};

fn our_json(dir: &Path, file: &str) -> Value {
    let out = qcow2(dir, &["info", "--output=json", file]);
    serde_json::from_str(&stdout_ok("qcow2", &out)).expect("valid JSON")
}

fn note_rules(info: &Value) -> Vec<String> {
    let notes = info["format-specific"]["data"]["notes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    notes
        .iter()
        .map(|n| n["rule"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Everything except the seed keys must still read as qemu-img reads the golden source.
fn assert_same_as_source(dir: &Path, file: &str, source: &str, ours: &Value) {
    let (qemu, _) = info_json(&golden_dir(), source);
    let mut ours = ours.clone();
    // The file differs by name, and by allocation only if the file system chose so.
    for key in ["filename", "actual-size"] {
        ours[key] = qemu[key].clone();
    }
    let diffs = json_differences(&qemu, &ours);
    assert!(
        diffs.is_empty(),
        "{file} (from {source}, in {}): {}",
        dir.display(),
        diffs.join("\n")
    );
}

#[test]
fn compress_format_extension_is_reported() {
    let dir = scratch("info_seed_compress");
    rewrite_area(
        &golden_dir().join("default.qcow2"),
        &dir.join("zstd3.qcow2"),
        |area| {
            area.chain.extensions.push(Extension::CompressFormat(
                CompressFormat::new("zstd", 3).expect("valid name"),
            ));
            area.header.incompatible_features |= features::INCOMPAT_BIT2;
        },
    );
    let info = our_json(&dir, "zstd3.qcow2");
    let data = &info["format-specific"]["data"];
    assert_eq!(
        data["compress-format"],
        json!({"name": "zstd", "level": 3, "extra-data-size": 0})
    );
    // Bit 2 means compress format here, not an external data file.
    assert_eq!(data.get("data-file-raw"), None);
    assert_eq!(data.get("notes"), None);
    assert_same_as_source(&dir, "zstd3.qcow2", "default.qcow2", &info);

    let human = stdout_ok("qcow2", &qcow2(&dir, &["info", "zstd3.qcow2"]));
    assert!(
        human.contains("    compress format:\n        name: zstd\n        level: 3\n"),
        "{human}"
    );
    assert!(
        human.contains("incompatible features: compress format\n"),
        "{human}"
    );
}

#[test]
fn compress_format_extra_data_is_noted() {
    let dir = scratch("info_seed_extra");
    rewrite_area(
        &golden_dir().join("compat-1.1.qcow2"),
        &dir.join("extra.qcow2"),
        |area| {
            let mut cf = CompressFormat::new("brotli", 0).expect("valid name");
            cf.extra_data = vec![1, 2, 3, 4, 5];
            area.chain.extensions.push(Extension::CompressFormat(cf));
            area.header.incompatible_features |= features::INCOMPAT_BIT2;
        },
    );
    let info = our_json(&dir, "extra.qcow2");
    let data = &info["format-specific"]["data"];
    assert_eq!(
        data["compress-format"],
        json!({"name": "brotli", "level": 0, "extra-data-size": 5})
    );
    assert_eq!(note_rules(&info), [rules::CF_EXTRA_DATA.as_str()]);
}

#[test]
fn dedup_extension_is_reported_and_bit_1_is_not_corrupt() {
    let dir = scratch("info_seed_dedup");
    let dedup = Dedup {
        l1_offset: HostOffset(0x50000),
        l1_size: 4,
    };
    let with_dedup = |bit1: bool| {
        move |area: &mut qcow2_format::HeaderArea| {
            area.chain.extensions.push(Extension::Dedup(dedup));
            if bit1 {
                area.header.incompatible_features |= features::INCOMPAT_BIT1;
            }
        }
    };
    rewrite_area(
        &golden_dir().join("default.qcow2"),
        &dir.join("dedup.qcow2"),
        with_dedup(true),
    );
    rewrite_area(
        &golden_dir().join("default.qcow2"),
        &dir.join("stale.qcow2"),
        with_dedup(false),
    );

    let info = our_json(&dir, "dedup.qcow2");
    let data = &info["format-specific"]["data"];
    assert_eq!(
        data["dedup"],
        json!({"table-offset": 0x50000, "table-size": 4})
    );
    assert_eq!(data["corrupt"], json!(false));
    assert_eq!(data.get("read-only-reason"), None);
    assert_eq!(data.get("notes"), None);
    assert_same_as_source(&dir, "dedup.qcow2", "default.qcow2", &info);

    let stale = our_json(&dir, "stale.qcow2");
    assert_eq!(note_rules(&stale), [rules::DD_STALE.as_str()]);
}

#[test]
fn corrupt_bit_gives_a_read_only_reason() {
    let dir = scratch("info_seed_corrupt");
    rewrite_area(
        &golden_dir().join("default.qcow2"),
        &dir.join("corrupt.qcow2"),
        |area| {
            area.header.incompatible_features |= features::INCOMPAT_BIT1;
        },
    );
    let info = our_json(&dir, "corrupt.qcow2");
    let data = &info["format-specific"]["data"];
    assert_eq!(
        data["read-only-reason"],
        json!(rules::FEAT_CORRUPT.as_str())
    );
    assert_eq!(note_rules(&info), [rules::FEAT_CORRUPT.as_str()]);
    let human = stdout_ok("qcow2", &qcow2(&dir, &["info", "corrupt.qcow2"]));
    assert!(
        human.contains(&format!("read-only: yes ({})", rules::FEAT_CORRUPT)),
        "{human}"
    );
}

/// Collects every object key in `value`, at any depth.
fn keys(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn every_emitted_key_is_documented_in_help() {
    let dir = scratch("info_seed_help");
    let golden = golden_dir();
    rewrite_area(
        &golden.join("backing-qcow2.qcow2"),
        &dir.join("seeds.qcow2"),
        |area| {
            let mut cf = CompressFormat::new("zstd", 1).expect("valid name");
            cf.extra_data = vec![9; 3];
            area.chain.extensions.push(Extension::CompressFormat(cf));
            area.chain.extensions.push(Extension::Dedup(Dedup {
                l1_offset: HostOffset(0x50000),
                l1_size: 1,
            }));
            area.header.incompatible_features |=
                features::INCOMPAT_BIT1 | features::INCOMPAT_BIT2 | features::INCOMPAT_DIRTY;
        },
    );
    rewrite_area(
        &golden.join("default.qcow2"),
        &dir.join("corrupt.qcow2"),
        |area| {
            area.header.incompatible_features |= features::INCOMPAT_BIT1;
        },
    );
    let mut emitted = Vec::new();
    for file in ["seeds.qcow2", "corrupt.qcow2"] {
        keys(&our_json(&dir, file), &mut emitted);
    }
    for file in ["bitmaps.qcow2", "data-file-raw.qcow2"] {
        keys(&our_json(&golden, file), &mut emitted);
    }
    let help = stdout_ok("qcow2 info --help", &qcow2(&dir, &["info", "--help"]));
    assert!(
        help.contains("qemu-img info --output=json"),
        "--help must say the keys follow qemu-img"
    );
    let undocumented: Vec<&String> = emitted
        .iter()
        .filter(|k| !help.contains(k.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from `info --help`: {undocumented:?}"
    );
}
