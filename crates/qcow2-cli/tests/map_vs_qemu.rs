//! `qcow2 map` against `qemu-img map`: byte-identical JSON and human
//! output on images QEMU wrote (backing chains, zero clusters, compressed
//! clusters, extended L2 subclusters, discarded ranges, windows).

mod tools;

use std::path::Path;

use tools::*;

fn qemu_img_ok(dir: &Path, args: &[&str]) {
    ok(&format!("qemu-img {args:?}"), &qemu_img(dir, args));
}

fn qemu_io_ok(dir: &Path, file: &str, commands: &[&str]) {
    let mut args = Vec::new();
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(file);
    ok(&format!("qemu-io {commands:?}"), &qemu_io(dir, &args));
}

/// Asserts both tools print the same map (stdout and success) for `extra`
/// arguments, in JSON and, unless `json_only`, in human form.
fn same_map(dir: &Path, file: &str, extra: &[&str], json_only: bool) {
    let outputs: &[&str] = if json_only {
        &["--output=json"]
    } else {
        &["--output=json", "--output=human"]
    };
    for output in outputs {
        let mut args = vec!["map", *output];
        args.extend(extra);
        args.push(file);
        let theirs = qemu_img(dir, &args);
        let ours = qcow2(dir, &args);
        assert_eq!(
            (stdout(&ours), ours.status.success()),
            (stdout(&theirs), theirs.status.success()),
            "qcow2 (left) vs qemu-img (right): {args:?}; our stderr: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
    }
}

#[test]
fn data_zero_and_discarded_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    for (name, opts) in [
        ("v3.qcow2", "cluster_size=64k"),
        ("v2.qcow2", "compat=0.10,cluster_size=4k"),
        ("small.qcow2", "cluster_size=512,refcount_bits=1"),
    ] {
        qemu_img_ok(dir, &["create", "-f", "qcow2", "-o", opts, name, "4M"]);
        qemu_io_ok(
            dir,
            name,
            &[
                "write -P 0x11 0 192k",
                "write -P 0x22 1M 8k",
                "write -P 0x33 3000 5000",
                "write -z 2M 128k",
                "write -z -u 64k 64k",
                "discard 1M 4k",
                "write -P 0x44 4190208 4096",
            ],
        );
        same_map(dir, name, &[], false);
        same_map(
            dir,
            name,
            &["--start-offset", "5000", "--max-length", "1M"],
            false,
        );
        same_map(dir, name, &["--start-offset", "8M"], true);
    }
}

#[test]
fn backing_chains() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir(dir.join("sub")).unwrap();
    qemu_img_ok(dir, &["create", "-f", "qcow2", "sub/base.qcow2", "4M"]);
    qemu_io_ok(
        dir,
        "sub/base.qcow2",
        &["write -P 1 0 1M", "write -z 2M 64k"],
    );
    qemu_img_ok(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "sub/mid.qcow2",
        ],
    );
    qemu_io_ok(
        dir,
        "sub/mid.qcow2",
        &["write -P 2 512k 128k", "write -z -u 64k 64k"],
    );
    qemu_img_ok(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "sub/mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    qemu_io_ok(
        dir,
        "top.qcow2",
        &["write -P 3 3M 64k", "discard 0 64k", "write -z 3200k 64k"],
    );
    for file in ["top.qcow2", "sub/mid.qcow2", "sub/base.qcow2"] {
        same_map(dir, file, &[], false);
    }
    same_map(dir, "top.qcow2", &["-s", "100k", "-l", "3M"], false);
    // An absolute path changes the names in the File column.
    let absolute = dir.join("top.qcow2").display().to_string();
    same_map(dir, &absolute, &[], false);
}

/// Beyond the end of a shorter backing file, QEMU reports the range as
/// unallocated at the depth of the image whose backing file ended (0 here).
#[test]
fn range_beyond_a_short_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    qemu_img_ok(dir, &["create", "-f", "qcow2", "short.qcow2", "1M"]);
    qemu_io_ok(dir, "short.qcow2", &["write -P 9 960k 64k"]);
    qemu_img_ok(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "short.qcow2",
            "-F",
            "qcow2",
            "long.qcow2",
            "2M",
        ],
    );
    same_map(dir, "long.qcow2", &[], false);
}

#[test]
fn raw_backing_without_holes() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 13) as u8 + 1).collect();
    std::fs::write(dir.join("base.raw"), bytes).unwrap();
    qemu_img_ok(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    qemu_io_ok(dir, "top.qcow2", &["write -P 5 128k 64k"]);
    same_map(dir, "top.qcow2", &[], false);
}

#[test]
fn compressed_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    qemu_img_ok(dir, &["create", "-f", "qcow2", "plain.qcow2", "2M"]);
    qemu_io_ok(
        dir,
        "plain.qcow2",
        &["write -P 7 0 640k", "write -P 8 1M 64k"],
    );
    for codec in ["zlib", "zstd"] {
        let name = format!("{codec}.qcow2");
        qemu_img_ok(
            dir,
            &[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={codec}"),
                "plain.qcow2",
                &name,
            ],
        );
        // Overwrite one compressed cluster, so data and compressed mix.
        qemu_io_ok(dir, &name, &["write -P 9 128k 64k"]);
        // The human form fails on both (compressed clusters have no offset).
        same_map(dir, &name, &[], false);
    }
}

#[test]
fn extended_l2_subclusters() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    qemu_img_ok(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
            "e.qcow2",
            "2M",
        ],
    );
    // Whole clusters of data, zero subclusters in unallocated clusters.
    qemu_io_ok(
        dir,
        "e.qcow2",
        &[
            "write -P 1 0 128k",
            "write -z 256k 2k",
            "write -z 300k 8k",
            "write -z -u 64k 64k",
        ],
    );
    same_map(dir, "e.qcow2", &[], false);
}

/// QEMU reports the host offset of zero clusters that keep their
/// allocation (`write -z` without `-u` on written clusters).
#[test]
fn preallocated_zero_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    qemu_img_ok(dir, &["create", "-f", "qcow2", "p.qcow2", "1M"]);
    qemu_io_ok(dir, "p.qcow2", &["write -P 1 0 128k", "write -z 0 64k"]);
    same_map(dir, "p.qcow2", &[], false);
}

/// QEMU also reports the host offset of unallocated subclusters inside an
/// allocated cluster.
#[test]
fn partial_subclusters() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    qemu_img_ok(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "e.qcow2",
            "1M",
        ],
    );
    qemu_io_ok(dir, "e.qcow2", &["write -P 1 4k 8k"]);
    same_map(dir, "e.qcow2", &[], false);
}

/// QEMU finds holes in raw files (SEEK_HOLE) and reports them as zero.
#[test]
fn raw_backing_with_holes() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    qemu_img_ok(dir, &["create", "-f", "raw", "base.raw", "1M"]);
    qemu_io_ok(dir, "base.raw", &["write -P 3 0 64k"]);
    qemu_img_ok(
        dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    same_map(dir, "top.qcow2", &[], false);
}
