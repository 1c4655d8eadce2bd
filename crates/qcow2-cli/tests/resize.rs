//! `qcow2 resize` against `qemu-img resize`: the same messages and exit
//! statuses, sizes `qemu-img info` reports, clean `qemu-img check`, data
//! kept below the new end and gone beyond it.

mod tools;

use std::path::Path;

use tools::*;

fn virtual_size(dir: &Path, file: &str) -> u64 {
    info(dir, file)["virtual-size"].as_u64().unwrap()
}

#[test]
fn grow_and_shrink_over_layouts() {
    for opts in [
        "cluster_size=64k",
        "cluster_size=512",
        "compat=0.10,cluster_size=4k",
        "extended_l2=on,refcount_bits=1",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ok(
            "create",
            &qemu_img(d, &["create", "-f", "qcow2", "-o", opts, "a.qcow2", "2M"]),
        );
        ok("data", &qemu_io(d, &["-c", "write -P 7 0 2M", "a.qcow2"]));
        std::fs::copy(d.join("a.qcow2"), d.join("q.qcow2")).unwrap();
        // Growing: same output as qemu-img, old data kept, new space zero.
        for (file, tool) in [("a.qcow2", "ours"), ("q.qcow2", "qemu")] {
            let out = if tool == "ours" {
                qcow2(d, &["resize", file, "+1M"])
            } else {
                qemu_img(d, &["resize", file, "+1M"])
            };
            assert_eq!(ok(tool, &out), "Image resized.\n", "{opts}");
        }
        assert_eq!(virtual_size(d, "a.qcow2"), 3 << 20, "{opts}");
        assert_clean(d, "a.qcow2");
        ok(
            "read after grow",
            &qemu_io(
                d,
                &["-c", "read -P 7 0 2M", "-c", "read -P 0 2M 1M", "a.qcow2"],
            ),
        );
        // Shrinking needs --shrink, as in qemu-img.
        let ours = qcow2(d, &["resize", "a.qcow2", "-1536k"]);
        let theirs = qemu_img(d, &["resize", "q.qcow2", "-1536k"]);
        assert_eq!(ours.status.code(), Some(1), "{opts}");
        assert_eq!(theirs.status.code(), Some(1), "{opts}");
        assert_eq!(virtual_size(d, "a.qcow2"), 3 << 20);
        ok(
            "shrink",
            &qcow2(d, &["resize", "--shrink", "a.qcow2", "-1536k"]),
        );
        assert_eq!(virtual_size(d, "a.qcow2"), 1536 << 10, "{opts}");
        assert_clean(d, "a.qcow2");
        // Grown back by QEMU, the cut part reads as zeros.
        ok("qemu grow", &qemu_img(d, &["resize", "a.qcow2", "3M"]));
        ok(
            "read after shrink",
            &qemu_io(
                d,
                &[
                    "-c",
                    "read -P 7 0 1536k",
                    "-c",
                    "read -P 0 1536k 1536k",
                    "a.qcow2",
                ],
            ),
        );
        assert_clean(d, "a.qcow2");
    }
}

#[test]
fn growth_that_needs_a_larger_l1_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        "create",
        &qcow2(d, &["create", "-o", "cluster_size=512", "a.qcow2", "1M"]),
    );
    ok(
        "write",
        &qcow2(d, &["io", "-c", "write -P 3 1000 300k", "a.qcow2"]),
    );
    ok("grow", &qcow2(d, &["resize", "a.qcow2", "1G"]));
    assert_eq!(virtual_size(d, "a.qcow2"), 1 << 30);
    assert_clean(d, "a.qcow2");
    ok(
        "write at the far end",
        &qcow2(d, &["io", "-c", "write -P 4 1023M 1M", "a.qcow2"]),
    );
    assert_clean(d, "a.qcow2");
    ok(
        "read back",
        &qemu_io(
            d,
            &[
                "-c",
                "read -P 3 1000 300k",
                "-c",
                "read -P 4 1023M 1M",
                "a.qcow2",
            ],
        ),
    );
}

#[test]
fn invalid_sizes_and_raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok("create", &qcow2(d, &["create", "a.qcow2", "1M"]));
    for size in ["-1M", "-2M", "1x", "+"] {
        let out = qcow2(d, &["resize", "--shrink", "a.qcow2", size]);
        assert_eq!(out.status.code(), Some(1), "{size}");
    }
    assert_eq!(virtual_size(d, "a.qcow2"), 1 << 20);
    ok(
        "create raw",
        &qcow2(d, &["create", "-f", "raw", "r.raw", "1M"]),
    );
    ok(
        "grow raw",
        &qcow2(d, &["resize", "-f", "raw", "r.raw", "2M"]),
    );
    assert_eq!(std::fs::metadata(d.join("r.raw")).unwrap().len(), 2 << 20);
}
