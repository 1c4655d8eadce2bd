//! Helpers shared by the integration tests: golden images, both tools, image mutation.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qcow2_format::HeaderArea;
use serde_json::Value;

/// One image of `conformance/golden/qemu/manifest.json`.
#[derive(Debug)]
pub struct GoldenImage {
    /// Stable name.
    pub name: String,
    /// File name inside the golden directory.
    pub file: String,
    /// Virtual size the manifest records.
    pub virtual_size: u64,
}

/// The qemu goldens written out in full (they are stored as sparse hex),
/// absolute; written once per test process.
pub fn golden_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-qemu");
        qcow2_conformance::corpus::materialize_golden(&dst)
            .unwrap_or_else(|e| panic!("writing the golden images out: {e}"))
    })
    .clone()
}

/// Every image of the manifest.
pub fn manifest() -> Vec<GoldenImage> {
    let path = golden_dir().join("manifest.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let entries = manifest["images"].as_array().expect("an \"images\" list");
    let images: Vec<GoldenImage> = entries
        .iter()
        .map(|e| GoldenImage {
            name: e["name"].as_str().expect("name").to_string(),
            file: e["file"].as_str().expect("file").to_string(),
            virtual_size: e["virtual_size"].as_u64().expect("virtual_size"),
        })
        .collect();
    assert!(!images.is_empty(), "manifest.json lists no images");
    images
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}

/// Runs `qemu-img ARGS` in `dir`. Fails the test, rather than skipping it, when qemu-img is missing.
pub fn qemu_img(dir: &Path, args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("qemu-img is required for these tests (install qemu-utils): {e}")
        })
}

/// Runs our `qcow2 ARGS` in `dir`.
pub fn qcow2(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qcow2"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the qcow2 binary")
}

/// Stdout of a run that must succeed, as text.
pub fn stdout_ok(tool: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{tool} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// `info --output=json FILE` from both tools, run in `dir`: (qemu-img's, ours).
pub fn info_json(dir: &Path, file: &str) -> (Value, Value) {
    let parse = |tool: &str, out: Output| -> Value {
        serde_json::from_str(&stdout_ok(tool, &out))
            .unwrap_or_else(|e| panic!("{tool} printed invalid JSON: {e}"))
    };
    let qemu = parse(
        "qemu-img",
        qemu_img(dir, &["info", "-f", "qcow2", "--output=json", file]),
    );
    let ours = parse("qcow2", qcow2(dir, &["info", "--output=json", file]));
    (qemu, ours)
}

/// Top-level keys both tools print, compared value for value.
pub const TOP_KEYS: &[&str] = &[
    "virtual-size",
    "filename",
    "cluster-size",
    "format",
    "actual-size",
    "encrypted",
    "dirty-flag",
    "backing-filename",
    "full-backing-filename",
    "backing-filename-format",
];

/// Keys of `format-specific.data` that qemu-img prints for qcow2.
pub const QEMU_DATA_KEYS: &[&str] = &[
    "compat",
    "compression-type",
    "lazy-refcounts",
    "bitmaps",
    "refcount-bits",
    "data-file",
    "data-file-raw",
    "corrupt",
    "extended-l2",
    "encrypt",
];

/// Differences between qemu-img's JSON and ours, restricted to what both know; empty when they agree.
pub fn json_differences(qemu: &Value, ours: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    for key in TOP_KEYS {
        if qemu.get(key) != ours.get(key) {
            diffs.push(format!(
                "{key}: qemu-img {:?}, ours {:?}",
                qemu.get(key),
                ours.get(key)
            ));
        }
    }
    let (qs, os) = (&qemu["format-specific"], &ours["format-specific"]);
    if qs["type"] != os["type"] {
        diffs.push(format!(
            "format-specific.type: qemu-img {}, ours {}",
            qs["type"], os["type"]
        ));
    }
    let qdata = qs["data"].as_object().cloned().unwrap_or_default();
    // Every key qemu-img prints must be ours too, with the same value...
    for (key, value) in &qdata {
        if os["data"].get(key) != Some(value) {
            diffs.push(format!(
                "data.{key}: qemu-img {value}, ours {:?}",
                os["data"].get(key)
            ));
        }
    }
    // ...and we must not print a qemu-img key it omits (e.g. lazy-refcounts for compat 0.10).
    for key in QEMU_DATA_KEYS {
        if os["data"].get(key).is_some() && !qdata.contains_key(*key) {
            diffs.push(format!("data.{key}: printed by us but omitted by qemu-img"));
        }
    }
    diffs
}

/// `qemu-img info FILE` up to its "Child node" section, which describes the protocol layer we do not model.
pub fn qemu_human_prefix(dir: &Path, file: &str) -> String {
    let text = stdout_ok("qemu-img", &qemu_img(dir, &["info", "-f", "qcow2", file]));
    let cut = text.find("Child node").unwrap_or(text.len());
    text[..cut].to_string()
}

/// Copies `src` to `dst`, rewriting its header area through `edit`.
///
/// The new area is zero padded over the old one, so stale bytes never survive.
pub fn rewrite_area(src: &Path, dst: &Path, edit: impl FnOnce(&mut HeaderArea)) {
    let mut bytes = fs::read(src).expect("read source image");
    let mut area = HeaderArea::parse(&bytes).expect("source image parses");
    let cluster = 1usize << area.header.cluster_bits;
    edit(&mut area);
    let new = area.to_bytes().expect("edited area serializes");
    let end = cluster.min(bytes.len());
    assert!(
        new.len() <= end,
        "edited area does not fit the first cluster"
    );
    bytes[..new.len()].copy_from_slice(&new);
    bytes[new.len()..end].fill(0);
    fs::write(dst, bytes).expect("write edited image");
}

/// The `--image-opts` an encrypted golden opens with in qemu-img, with the
/// secret `cargo xtask golden` made it with.
pub fn encrypted_image_opts(file: &str) -> String {
    format!("driver=qcow2,file.filename={file},encrypt.key-secret=sec0")
}

/// The arguments that name `file` (in `dir`) to a qemu-img command: with
/// its key when the image is encrypted (ours reads no encrypted data, but
/// qemu-img opens nothing encrypted without it).
pub fn qemu_file_args(dir: &Path, file: &str) -> Vec<String> {
    let header = fs::read(dir.join(file)).unwrap_or_default();
    if header.get(32..36) != Some(&[0, 0, 0, 0]) {
        vec![
            "--object".into(),
            "secret,id=sec0,data=golden".into(),
            "--image-opts".into(),
            encrypted_image_opts(file),
        ]
    } else {
        vec!["-f".into(), "qcow2".into(), file.into()]
    }
}
