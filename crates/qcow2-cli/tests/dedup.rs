//! Deduplication from the command line: `convert --dedup` (alone and with
//! `-c`), `create -o dedup=on`, `amend -o dedup=on|off`, `info` and `check`
//! numbers, `check -r all` rebuilding a damaged table; QEMU reads every
//! result and writes it after `dedup=off`.

mod tools;

use std::path::Path;

use serde_json::Value;
use tools::*;

const CS: usize = 65536;

/// Eight random clusters written three times at 64 KiB-aligned offsets, a
/// zero gap and a unique tail.
fn make_source(dir: &Path) -> Vec<u8> {
    let mut rng = Rng::new(11);
    let block: Vec<u8> = (0..8 * CS).map(|_| rng.next() as u8).collect();
    let mut disk = Vec::new();
    for _ in 0..3 {
        disk.extend_from_slice(&block);
        disk.extend_from_slice(&vec![0u8; CS]);
    }
    disk.extend((0..3 * CS).map(|_| rng.next() as u8));
    std::fs::write(dir.join("src.raw"), &disk).unwrap();
    disk
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&stdout(out)).expect("JSON output")
}

#[test]
fn convert_info_check_and_amend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = make_source(d);
    for (name, extra) in [("d.qcow2", vec![]), ("dc.qcow2", vec!["-c"])] {
        let mut args = vec!["convert", "-O", "qcow2", "--dedup"];
        args.extend(extra);
        args.extend(["src.raw", name]);
        ok("convert --dedup", &qcow2(d, &args));
        assert_eq!(qemu_raw(d, name), disk, "{name}");
        let info = json(&qcow2(d, &["info", "--output=json", name]));
        let dedup = &info["format-specific"]["data"]["dedup"];
        assert_eq!(dedup["shared-clusters"], 8, "{name}: {dedup}");
        assert!(dedup["bytes-saved"].as_u64().unwrap() > 0, "{dedup}");
        let check = qcow2(d, &["check", "--output=json", name]);
        assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
        let check = json(&check);
        assert_eq!(check["dedup"]["findings"], serde_json::json!([]), "{check}");
        // QEMU opens it read-only and refuses to write.
        let qemu = qemu_img(d, &["check", "--output=json", name]);
        let qemu: Value = serde_json::from_str(&stdout(&qemu)).unwrap();
        assert_eq!(qemu.get("corruptions"), None, "{qemu}");
        let w = qemu_io(d, &["-f", "qcow2", "-c", "write -P 1 0 4k", name]);
        let text = format!("{}{}", stdout(&w), String::from_utf8_lossy(&w.stderr));
        assert!(!w.status.success() || text.contains("read-only"), "{text}");
        ok(
            "amend dedup=off",
            &qcow2(d, &["amend", "-o", "dedup=off", name]),
        );
        assert_clean(d, name);
        ok(
            "qemu-io write",
            &qemu_io(d, &["-f", "qcow2", "-c", "write -P 7 0 64k", name]),
        );
        assert_clean(d, name);
    }
    // The dedup output is smaller than the plain one: 16 of its 27 data
    // clusters are repeats; the first repeat of each block writes a shared
    // copy and frees the original, which stays a hole in an image this
    // small (it is reused by later allocations in larger ones), and the
    // table takes 2 clusters: 5 clusters saved at least.
    ok(
        "convert",
        &qcow2(d, &["convert", "-O", "qcow2", "src.raw", "plain.qcow2"]),
    );
    ok(
        "convert --dedup",
        &qcow2(
            d,
            &[
                "convert",
                "-O",
                "qcow2",
                "--dedup",
                "src.raw",
                "again.qcow2",
            ],
        ),
    );
    let size = |f: &str| std::fs::metadata(d.join(f)).unwrap().len();
    assert!(
        size("again.qcow2") + 5 * CS as u64 <= size("plain.qcow2"),
        "{} vs {}",
        size("again.qcow2"),
        size("plain.qcow2")
    );
    // Offline: amend a plain image.
    ok(
        "amend dedup=on",
        &qcow2(d, &["amend", "-p", "-o", "dedup=on", "plain.qcow2"]),
    );
    let info = json(&qcow2(d, &["info", "--output=json", "plain.qcow2"]));
    assert_eq!(
        info["format-specific"]["data"]["dedup"]["shared-clusters"],
        8
    );
    assert_eq!(qemu_raw(d, "plain.qcow2"), disk);
    let check = qcow2(d, &["check", "plain.qcow2"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
}

#[test]
fn check_reports_a_wrong_digest_and_repair_rebuilds_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = make_source(d);
    ok(
        "convert",
        &qcow2(
            d,
            &["convert", "-O", "qcow2", "--dedup", "src.raw", "d.qcow2"],
        ),
    );
    let check = json(&qcow2(d, &["check", "--output=json", "d.qcow2"]));
    let l1 = check["dedup"]["indexed-clusters"].as_u64().unwrap();
    assert!(l1 > 0);
    // Flip one digest byte of the first non-empty entry.
    let info = json(&qcow2(d, &["info", "--output=json", "d.qcow2"]));
    let table = info["format-specific"]["data"]["dedup"]["table-offset"]
        .as_u64()
        .unwrap();
    let mut bytes = std::fs::read(d.join("d.qcow2")).unwrap();
    let l2 = u64::from_be_bytes(
        bytes[table as usize..table as usize + 8]
            .try_into()
            .unwrap(),
    );
    let entry = (l2 as usize..l2 as usize + CS)
        .step_by(40)
        .find(|&at| bytes[at..at + 40].iter().any(|&b| b != 0))
        .unwrap();
    bytes[entry] ^= 0xff;
    std::fs::write(d.join("d.qcow2"), &bytes).unwrap();
    let bad = qcow2(d, &["check", "d.qcow2"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stdout(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DD-DIGEST"));
    let fixed = qcow2(d, &["check", "-r", "all", "d.qcow2"]);
    assert_eq!(
        fixed.status.code(),
        Some(0),
        "{}{}",
        stdout(&fixed),
        String::from_utf8_lossy(&fixed.stderr)
    );
    let again = qcow2(d, &["check", "d.qcow2"]);
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
    assert_eq!(qemu_raw(d, "d.qcow2"), disk);
}

#[test]
fn bad_dedup_options_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_source(d);
    let out = qcow2(d, &["convert", "--dedup", "src.raw", "out.raw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qcow2 destination"));
    let out = qcow2(
        d,
        &["create", "-o", "dedup=on,compat=0.10", "x.qcow2", "1M"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dedup"));
    let out = qcow2(d, &["create", "-o", "dedup=maybe", "y.qcow2", "1M"]);
    assert!(!out.status.success());
    ok(
        "create dedup",
        &qcow2(d, &["create", "-o", "dedup=on", "z.qcow2", "1M"]),
    );
    let info = json(&qcow2(d, &["info", "--output=json", "z.qcow2"]));
    assert_eq!(
        info["format-specific"]["data"]["dedup"]["indexed-clusters"],
        0
    );
}
