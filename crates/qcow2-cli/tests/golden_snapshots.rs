//! Snapshots of `qcow2 info`, `check` and `map` JSON for every golden image
//! (made by qemu-img, or by our writer), so that any change of what the CLI
//! prints is a reviewed change (`cargo insta review`, or `INSTA_UPDATE=always`
//! and a look at the diff).
//!
//! The commands run inside a directory holding the images on the bare file
//! name, so paths are stable; `actual-size` (the host file system's
//! allocation) and absolute backing paths are replaced by a marker. The
//! writer's images are built afresh and pinned by structure, not bytes
//! (conformance/golden/writer/), so their host offsets, which follow from
//! compressed stream lengths, are masked too.

mod tools;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The qemu goldens written out in full, and our writer's images built now.
fn golden_dirs() -> [(PathBuf, &'static str); 2] {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let qemu = qcow2_conformance::corpus::materialize_golden(&tmp.join("snapshot-golden-qemu"))
        .unwrap_or_else(|e| panic!("writing the qemu goldens out: {e}"));
    let writer = tmp.join("snapshot-golden-writer");
    let _ = std::fs::remove_dir_all(&writer);
    std::fs::create_dir_all(&writer).unwrap();
    for (file, bytes) in qcow2_conformance::engine_images::golden_images().unwrap() {
        std::fs::write(writer.join(file), bytes).unwrap();
    }
    [(qemu, "qemu"), (writer, "writer")]
}

/// `qcow2 ARGS FILE --output=json` in `dir`: exit code and parsed output
/// (or the error text of a refusal).
fn json(dir: &Path, args: &[&str], file: &str, mask_offsets: bool) -> Value {
    let out = tools::qcow2(dir, &[args, &["--output=json", file]].concat());
    // A refused image is snapshotted by its exit code and error text.
    let output = match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(v) => redact(v, mask_offsets),
        Err(_) => serde_json::json!({ "stderr": String::from_utf8_lossy(&out.stderr) }),
    };
    serde_json::json!({ "exit": out.status.code(), "output": output })
}

/// Masks what depends on the machine, and with `mask_offsets` what depends
/// on compressed stream lengths (host offsets and where the image ends).
fn redact(mut v: Value, mask_offsets: bool) -> Value {
    match &mut v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let machine_dependent = key == "actual-size"
                    || (key.contains("filename")
                        && value.as_str().is_some_and(|s| s.starts_with('/')));
                let layout_dependent = mask_offsets
                    && matches!(
                        key.as_str(),
                        "offset" | "image-end-offset" | "fragmented-clusters"
                    );
                if machine_dependent {
                    *value = Value::String("[machine-dependent]".into());
                } else if layout_dependent {
                    *value = Value::String("[encoder-dependent]".into());
                } else {
                    *value = redact(value.take(), mask_offsets);
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = redact(item.take(), mask_offsets);
            }
        }
        _ => {}
    }
    v
}

#[test]
fn info_check_and_map_json_of_every_golden_image() {
    let mut seen = 0;
    for (dir, origin) in golden_dirs() {
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".qcow2"))
            .collect();
        files.sort();
        for file in files {
            let stem = file.trim_end_matches(".qcow2");
            for (command, args) in [
                ("info", &["info"][..]),
                ("check", &["check"][..]),
                ("map", &["map"][..]),
            ] {
                let value = json(&dir, args, &file, origin == "writer");
                insta::assert_json_snapshot!(format!("{origin}-{stem}-{command}"), value);
            }
            seen += 1;
        }
    }
    assert!(seen >= 40, "only {seen} golden images");
}
