//! `qcow2 create` against `qemu-img create`: the same "Formatting" line,
//! images `qemu-img check` finds clean, and `qemu-img info` showing the
//! requested options exactly as on an image qemu-img made itself.

mod tools;

use serde_json::Value;
use tools::*;

/// Option lists and sizes covering every creation option.
const CASES: &[(&str, &str)] = &[
    ("", "1M"),
    ("cluster_size=512", "3M"),
    ("cluster_size=4k,refcount_bits=1", "1G"),
    ("cluster_size=2M,refcount_bits=64", "100M"),
    ("compat=0.10", "10M"),
    ("compat=v2,cluster_size=16k", "10M"),
    ("compat=v3,lazy_refcounts=on,refcount_bits=8", "10M"),
    ("extended_l2=on,cluster_size=32k", "5M"),
    ("compression_type=zstd", "1M"),
    ("preallocation=metadata", "3M"),
    (
        "preallocation=metadata,cluster_size=4k,refcount_bits=2",
        "1M",
    ),
    ("preallocation=off,compat=1.1", "1000"),
];

#[test]
fn options_match_qemu_img_create() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    for (i, (opts, size)) in CASES.iter().enumerate() {
        let ours = format!("ours{i}.qcow2");
        let theirs = format!("theirs{i}.qcow2");
        let mut our_args = vec!["create", "-f", "qcow2"];
        let mut their_args = vec!["create", "-f", "qcow2"];
        if !opts.is_empty() {
            our_args.extend(["-o", opts]);
            their_args.extend(["-o", opts]);
        }
        our_args.extend([ours.as_str(), size]);
        their_args.extend([theirs.as_str(), size]);
        let our_line = ok("qcow2 create", &qcow2(dir, &our_args));
        let their_line = ok("qemu-img create", &qemu_img(dir, &their_args));
        assert_eq!(
            our_line.replace(&ours, "F"),
            their_line.replace(&theirs, "F"),
            "Formatting line for -o {opts:?}"
        );
        assert_clean(dir, &ours);
        let (a, b) = (info(dir, &ours), info(dir, &theirs));
        for key in ["virtual-size", "cluster-size", "format-specific"] {
            assert_eq!(a[key], b[key], "{key} for -o {opts:?}");
        }
        if opts.contains("preallocation=metadata") {
            let map = ok(
                "qemu-img map",
                &qemu_img(dir, &["map", "--output=json", &ours]),
            );
            let entries: Vec<Value> = serde_json::from_str(&map).unwrap();
            assert!(
                entries
                    .iter()
                    .all(|e| e["data"] == true && e["offset"].is_u64()),
                "preallocated image maps every cluster: {map}"
            );
        }
    }
}

#[test]
fn backing_files_and_inherited_size() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    ok(
        "qemu-img create",
        &qemu_img(dir, &["create", "-f", "qcow2", "base.qcow2", "3M"]),
    );
    ok(
        "qemu-io",
        &qemu_io(dir, &["-c", "write -P 0x5a 64k 128k", "base.qcow2"]),
    );
    let raw: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(dir.join("base.raw"), &raw).unwrap();

    // Size taken from the backing file, format probed and recorded.
    ok(
        "create",
        &qcow2(dir, &["create", "-b", "base.qcow2", "top.qcow2"]),
    );
    assert_clean(dir, "top.qcow2");
    let top = info(dir, "top.qcow2");
    assert_eq!(top["virtual-size"], 3 << 20);
    assert_eq!(top["backing-filename"], "base.qcow2");
    assert_eq!(top["backing-filename-format"], "qcow2");
    ok(
        "qemu-io read through our top",
        &qemu_io(
            dir,
            &[
                "-c",
                "read -P 0x5a 64k 128k",
                "-c",
                "read -P 0 0 64k",
                "top.qcow2",
            ],
        ),
    );

    // Raw backing, explicit format and size, and a probed raw backing.
    ok(
        "create",
        &qcow2(
            dir,
            &[
                "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "r1.qcow2", "4M",
            ],
        ),
    );
    ok(
        "create",
        &qcow2(dir, &["create", "-b", "base.raw", "r2.qcow2"]),
    );
    for file in ["r1.qcow2", "r2.qcow2"] {
        assert_clean(dir, file);
        let i = info(dir, file);
        assert_eq!(i["backing-filename-format"], "raw", "{file}");
        let bytes = qemu_raw(dir, file);
        assert_same_bytes(&bytes[..raw.len()], &raw, file);
    }
    assert_eq!(info(dir, "r1.qcow2")["virtual-size"], 4 << 20);
    assert_eq!(info(dir, "r2.qcow2")["virtual-size"], 2 << 20);

    // -o backing_file=..., and -u with a backing file that does not exist.
    ok(
        "create",
        &qcow2(
            dir,
            &[
                "create",
                "-o",
                "backing_file=base.qcow2,backing_fmt=qcow2",
                "o.qcow2",
            ],
        ),
    );
    assert_eq!(info(dir, "o.qcow2")["virtual-size"], 3 << 20);
    ok(
        "create -u",
        &qcow2(
            dir,
            &[
                "create",
                "-u",
                "-b",
                "missing.qcow2",
                "-F",
                "qcow2",
                "u.qcow2",
                "1M",
            ],
        ),
    );
    let u = info(dir, "u.qcow2");
    assert_eq!(u["backing-filename"], "missing.qcow2");
    assert_eq!(u["virtual-size"], 1 << 20);
}

#[test]
fn invalid_requests_fail_with_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let cases: &[&[&str]] = &[
        &["create", "-o", "cluster_size=3000", "a.qcow2", "1M"],
        &["create", "-o", "cluster_size=4M", "a.qcow2", "1M"],
        &[
            "create",
            "-o",
            "compat=0.10,refcount_bits=1",
            "a.qcow2",
            "1M",
        ],
        &[
            "create",
            "-o",
            "compat=0.10,extended_l2=on",
            "a.qcow2",
            "1M",
        ],
        &[
            "create",
            "-o",
            "extended_l2=on,cluster_size=4k",
            "a.qcow2",
            "1M",
        ],
        // iotest 287: zstd needs version 3 (HDR-V2-FEATURES).
        &[
            "create",
            "-o",
            "compat=0.10,compression_type=zstd",
            "a.qcow2",
            "1M",
        ],
        // iotest 112: widths that are no power of two up to 64, and v2 with
        // anything but 16 bits.
        &["create", "-o", "refcount_bits=0", "a.qcow2", "1M"],
        &["create", "-o", "refcount_bits=128", "a.qcow2", "1M"],
        &["create", "-o", "refcount_bits=42", "a.qcow2", "1M"],
        &[
            "create",
            "-o",
            "compat=0.10,refcount_bits=64",
            "a.qcow2",
            "1M",
        ],
        &["create", "-o", "nonsense=1", "a.qcow2", "1M"],
        &["create", "a.qcow2"],
        &["create", "a.qcow2", "1x"],
        &["create", "-b", "missing.qcow2", "a.qcow2"],
        &["create", "-u", "-b", "missing.qcow2", "a.qcow2"],
    ];
    for args in cases {
        let out = qcow2(dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        assert!(!out.stderr.is_empty(), "{args:?} explains the failure");
    }
}

#[test]
fn raw_images_are_sparse_files_of_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let out = ok(
        "create raw",
        &qcow2(dir, &["create", "-f", "raw", "d.raw", "64M"]),
    );
    assert_eq!(out, "Formatting 'd.raw', fmt=raw size=67108864\n");
    let i = info(dir, "d.raw");
    assert_eq!(i["format"], "raw");
    assert_eq!(i["virtual-size"], 64 << 20);
}
