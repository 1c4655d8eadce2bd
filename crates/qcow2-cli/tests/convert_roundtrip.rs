//! `qcow2 convert` and `qcow2 io -c "read -P"` on images QEMU wrote, over
//! cluster sizes, refcount widths, versions, extended L2, compressed
//! clusters and backing files: the raw output equals `qemu-img convert`'s,
//! the qcow2 output passes `qemu-img check`, equals the source per
//! `qemu-img compare`, and leaves zero clusters unallocated.

mod tools;

use std::path::Path;

use serde_json::Value;
use tools::*;

const SIZE: u64 = 8 << 20;

/// Writes QEMU makes to every source: (pattern, offset, length), in order.
fn writes(cluster: u64) -> Vec<(u8, u64, u64)> {
    vec![
        (0x11, 0, cluster * 3),
        (0x22, cluster + 100, 3000),
        (0x33, SIZE / 2 - 1000, 70_000),
        (0x44, SIZE - cluster, cluster),
        (0x55, 5 << 20, 1 << 20),
    ]
}

/// What the source reads as after `writes` and the zero/discard commands
/// below, byte for byte, on top of `base` (the backing file's bytes).
fn expected(cluster: u64, mut base: Vec<u8>) -> Vec<u8> {
    base.resize(SIZE as usize, 0);
    for (p, off, len) in writes(cluster) {
        base[off as usize..(off + len) as usize].fill(p);
    }
    // "write -z 5M+4k 8k"
    base[(5 << 20) + 4096..(5 << 20) + 4096 + 8192].fill(0);
    base
}

fn qemu_io_cmds(dir: &Path, file: &str, fmt: &str, commands: &[String]) {
    let mut args = vec!["-f", fmt];
    for c in commands {
        args.extend(["-c", c.as_str()]);
    }
    args.push(file);
    ok(&format!("qemu-io {commands:?}"), &qemu_io(dir, &args));
}

/// Makes `src.qcow2` with `opts` (and a backing file when asked) and
/// QEMU's writes; returns its expected guest bytes.
fn make_source(dir: &Path, opts: &str, backing: Option<&str>) -> Vec<u8> {
    let mut base = Vec::new();
    let mut args = vec!["create", "-f", "qcow2", "-o", opts];
    match backing {
        Some("qcow2") => {
            ok(
                "base",
                &qemu_img(dir, &["create", "-f", "qcow2", "base.qcow2", "6M"]),
            );
            qemu_io_cmds(dir, "base.qcow2", "qcow2", &["write -P 0x66 1M 3M".into()]);
            base = vec![0u8; 6 << 20];
            base[1 << 20..4 << 20].fill(0x66);
            args.extend(["-b", "base.qcow2", "-F", "qcow2"]);
        }
        Some(_) => {
            base = (0..(3u32 << 20)).map(|i| (i % 241) as u8).collect();
            std::fs::write(dir.join("base.raw"), &base).unwrap();
            args.extend(["-b", "base.raw", "-F", "raw"]);
        }
        None => {}
    }
    let size = SIZE.to_string();
    args.extend(["src.qcow2", &size]);
    ok("qemu-img create", &qemu_img(dir, &args));
    let cluster = info(dir, "src.qcow2")["cluster-size"].as_u64().unwrap();
    let mut commands: Vec<String> = writes(cluster)
        .iter()
        .map(|(p, off, len)| format!("write -P {p} {off} {len}"))
        .collect();
    commands.push(format!("write -z {} 8k", (5 << 20) + 4096));
    qemu_io_cmds(dir, "src.qcow2", "qcow2", &commands);
    expected(cluster, base)
}

/// Every check of this file on `src.qcow2`.
fn check_conversions(dir: &Path, expect: &[u8], context: &str) {
    // QEMU agrees with our model of the source.
    assert_same_bytes(
        &qemu_raw(dir, "src.qcow2"),
        expect,
        &format!("{context}: qemu"),
    );
    // Our raw output.
    ok(
        "convert raw",
        &qcow2(dir, &["convert", "-O", "raw", "src.qcow2", "ours.raw"]),
    );
    let ours = std::fs::read(dir.join("ours.raw")).unwrap();
    assert_same_bytes(&ours, expect, &format!("{context}: qcow2 convert -O raw"));
    // Pattern reads through our io command.
    let cluster = info(dir, "src.qcow2")["cluster-size"].as_u64().unwrap();
    let last = writes(cluster).into_iter().last().unwrap();
    let read = format!("read -P {} {} 4096", last.0, last.1);
    let zero = format!("read -P 0 {} 8k", (5 << 20) + 4096);
    ok(
        &format!("{context}: io"),
        &qcow2(dir, &["io", "-c", &read, "-c", &zero, "src.qcow2"]),
    );
    let wrong = format!("read -P 0x77 {} 512", last.1);
    let out = qcow2(dir, &["io", "-c", &wrong, "src.qcow2"]);
    assert_eq!(out.status.code(), Some(1), "{context}: wrong pattern fails");
    assert!(stdout(&out).contains(&format!(
        "Pattern verification failed at offset {}, 512 bytes",
        last.1
    )));
    // Our qcow2 output.
    ok(
        "convert qcow2",
        &qcow2(dir, &["convert", "-O", "qcow2", "src.qcow2", "ours.qcow2"]),
    );
    assert_clean(dir, "ours.qcow2");
    ok(
        &format!("{context}: qemu-img compare"),
        &qemu_img(dir, &["compare", "src.qcow2", "ours.qcow2"]),
    );
    assert_zero_clusters_unallocated(dir, "ours.qcow2", expect);
}

/// Every range `qemu-img map` calls data holds a non-zero byte in each of
/// its clusters.
fn assert_zero_clusters_unallocated(dir: &Path, file: &str, content: &[u8]) {
    let cluster = info(dir, file)["cluster-size"].as_u64().unwrap() as usize;
    let map = ok(
        "qemu-img map",
        &qemu_img(dir, &["map", "--output=json", file]),
    );
    let entries: Vec<Value> = serde_json::from_str(&map).unwrap();
    for e in entries.iter().filter(|e| e["data"] == true) {
        let start = e["start"].as_u64().unwrap() as usize;
        let end = start + e["length"].as_u64().unwrap() as usize;
        for c in (start..end).step_by(cluster) {
            let piece = &content[c..(c + cluster).min(content.len())];
            assert!(
                piece.iter().any(|&b| b != 0),
                "{file}: all-zero cluster at {c} was written"
            );
        }
    }
}

#[test]
fn layouts_qemu_wrote() {
    let cases = [
        "cluster_size=512",
        "cluster_size=4k",
        "cluster_size=64k",
        "cluster_size=2M",
        "cluster_size=4k,refcount_bits=1",
        "refcount_bits=64",
        "compat=0.10",
        "compat=0.10,cluster_size=16k",
        "extended_l2=on",
        "extended_l2=on,cluster_size=16k,lazy_refcounts=on",
    ];
    for opts in cases {
        let dir = tempfile::tempdir().unwrap();
        let expect = make_source(dir.path(), opts, None);
        check_conversions(dir.path(), &expect, opts);
    }
}

#[test]
fn backing_files() {
    for (backing, opts) in [
        ("qcow2", "cluster_size=64k"),
        ("raw", "cluster_size=4k"),
        ("qcow2", "compat=0.10"),
        ("qcow2", "extended_l2=on"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let expect = make_source(dir.path(), opts, Some(backing));
        check_conversions(dir.path(), &expect, &format!("{backing} backing, {opts}"));
    }
}

#[test]
fn compressed_sources() {
    for codec in ["zlib", "zstd"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let expect = make_source(d, "cluster_size=64k", None);
        std::fs::rename(d.join("src.qcow2"), d.join("plain.qcow2")).unwrap();
        ok(
            "qemu-img convert -c",
            &qemu_img(
                d,
                &[
                    "convert",
                    "-c",
                    "-O",
                    "qcow2",
                    "-o",
                    &format!("compression_type={codec}"),
                    "plain.qcow2",
                    "src.qcow2",
                ],
            ),
        );
        check_conversions(d, &expect, codec);
    }
}

#[test]
fn raw_sources_and_output_options() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = Rng::new(7);
    let mut content = vec![0u8; 3 << 20];
    for _ in 0..20 {
        let off = rng.below(content.len() as u64 - 20_000) as usize;
        let len = 1 + rng.below(20_000) as usize;
        let byte = 1 + rng.below(255) as u8;
        content[off..off + len].fill(byte);
    }
    std::fs::write(d.join("in.raw"), &content).unwrap();
    for opts in [
        "cluster_size=4k,compat=0.10",
        "extended_l2=on,refcount_bits=1",
        "cluster_size=512",
    ] {
        ok(
            "convert raw -> qcow2",
            &qcow2(
                d,
                &[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    "-o",
                    opts,
                    "in.raw",
                    "mid.qcow2",
                ],
            ),
        );
        assert_clean(d, "mid.qcow2");
        let i = info(d, "mid.qcow2");
        if opts.contains("compat=0.10") {
            assert_eq!(i["format-specific"]["data"]["compat"], "0.10");
        }
        assert_same_bytes(&qemu_raw(d, "mid.qcow2"), &content, opts);
        assert_zero_clusters_unallocated(d, "mid.qcow2", &content);
        // Back to raw, probing the qcow2 source.
        ok(
            "convert back",
            &qcow2(d, &["convert", "mid.qcow2", "out.raw"]),
        );
        assert_same_bytes(&std::fs::read(d.join("out.raw")).unwrap(), &content, opts);
    }
    // An existing destination is overwritten.
    ok(
        "overwrite",
        &qcow2(d, &["convert", "-O", "qcow2", "in.raw", "mid.qcow2"]),
    );
    assert_same_bytes(&qemu_raw(d, "mid.qcow2"), &content, "overwritten");
}

#[test]
fn progress_is_drawn_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        "create",
        &qemu_img(d, &["create", "-f", "qcow2", "a.qcow2", "16M"]),
    );
    let out = qcow2(d, &["convert", "-p", "-O", "qcow2", "a.qcow2", "b.qcow2"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success());
    assert!(
        err.contains("    (0.00/100%)\r") && err.contains("(100.00/100%)\r"),
        "{err:?}"
    );
    assert!(out.stdout.is_empty());
    let out = qcow2(
        d,
        &["convert", "-c", "-p", "-O", "qcow2", "a.qcow2", "c.qcow2"],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("(50.00/100%)\r"), "{err:?}");
    assert_clean(d, "c.qcow2");
}
