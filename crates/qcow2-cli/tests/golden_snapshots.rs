//! Snapshots of `qcow2 info`, `check` and `map` JSON for every golden image
//! (made by qemu-img, or by our writer), so that any change of what the CLI
//! prints is a reviewed change (`cargo insta review`, or `INSTA_UPDATE=always`
//! and a look at the diff).
//!
//! The commands run inside the golden directory on the bare file name, so
//! paths are stable; `actual-size` (the host file system's allocation) and
//! absolute backing paths are replaced by a marker.

mod tools;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn golden_dirs() -> [PathBuf; 2] {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/golden");
    [root.join("qemu"), root.join("writer")]
}

/// `qcow2 ARGS FILE --output=json` in `dir`: exit code and parsed output
/// (or the error text of a refusal).
fn json(dir: &Path, args: &[&str], file: &str) -> Value {
    let out = tools::qcow2(dir, &[args, &["--output=json", file]].concat());
    // A refused image is snapshotted by its exit code and error text.
    let output = match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(v) => redact(v),
        Err(_) => serde_json::json!({ "stderr": String::from_utf8_lossy(&out.stderr) }),
    };
    serde_json::json!({ "exit": out.status.code(), "output": output })
}

fn redact(mut v: Value) -> Value {
    match &mut v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let machine_dependent = key == "actual-size"
                    || (key.contains("filename")
                        && value.as_str().is_some_and(|s| s.starts_with('/')));
                if machine_dependent {
                    *value = Value::String("[machine-dependent]".into());
                } else {
                    *value = redact(value.take());
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = redact(item.take());
            }
        }
        _ => {}
    }
    v
}

#[test]
fn info_check_and_map_json_of_every_golden_image() {
    let mut seen = 0;
    for dir in golden_dirs() {
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".qcow2"))
            .collect();
        files.sort();
        let origin = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in files {
            let stem = file.trim_end_matches(".qcow2");
            for (command, args) in [
                ("info", &["info"][..]),
                ("check", &["check"][..]),
                ("map", &["map"][..]),
            ] {
                let value = json(&dir, args, &file);
                insta::assert_json_snapshot!(format!("{origin}-{stem}-{command}"), value);
            }
            seen += 1;
        }
    }
    assert!(seen >= 40, "only {seen} golden images");
}
