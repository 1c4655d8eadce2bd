//! Compressed images from the command line: `convert -c` with QEMU's
//! compression types (QEMU reads the result) and with the seed compress
//! format, `create --compress-format`, `io -c "write -c"`, and the errors.

mod tools;

use std::path::Path;

use serde_json::Value;
use tools::*;

/// A raw source: text-like runs (compressible), random blocks (not),
/// zeros, and a size that is not a multiple of the cluster size.
fn make_source(dir: &Path, name: &str, size: usize) -> Vec<u8> {
    let mut rng = Rng::new(size as u64);
    let mut bytes = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let len = (4096 + rng.below(200_000) as usize).min(size - at);
        match rng.below(4) {
            0 => {}
            1 => bytes[at..at + len]
                .iter_mut()
                .for_each(|b| *b = rng.next() as u8),
            _ => {
                let alphabet = 2 + rng.below(30);
                bytes[at..at + len]
                    .iter_mut()
                    .for_each(|b| *b = b'a' + rng.below(alphabet) as u8);
            }
        }
        at += len;
    }
    std::fs::write(dir.join(name), &bytes).unwrap();
    bytes
}

fn our_info(dir: &Path, file: &str) -> Value {
    let text = ok("qcow2 info", &qcow2(dir, &["info", "--output=json", file]));
    serde_json::from_str(&text).expect("qcow2 info prints JSON")
}

fn compressed_share(dir: &Path, file: &str) -> f64 {
    let text = ok(
        "qemu-img check",
        &qemu_img(dir, &["check", "--output=json", file]),
    );
    let json: Value = serde_json::from_str(&text).unwrap();
    json["compressed-clusters"].as_f64().unwrap_or(0.0)
}

#[test]
fn convert_c_with_qemu_compression_types_reads_back_in_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut src = make_source(d, "src.raw", (6 << 20) + 12345);
    // The image rounds the virtual size up to 512 bytes; the tail is zeros.
    src.resize(src.len().div_ceil(512) * 512, 0);
    for (ty, cluster) in [
        ("zlib", "4k"),
        ("zlib", "64k"),
        ("zstd", "64k"),
        ("zstd", "2M"),
    ] {
        let out = format!("out-{ty}-{cluster}.qcow2");
        let opts = format!("compression_type={ty},cluster_size={cluster}");
        ok(
            "convert -c",
            &qcow2(
                d,
                &["convert", "-c", "-O", "qcow2", "-o", &opts, "src.raw", &out],
            ),
        );
        assert_clean(d, &out);
        ok(
            "qemu-img compare",
            &qemu_img(d, &["compare", "-f", "raw", "-F", "qcow2", "src.raw", &out]),
        );
        assert!(
            compressed_share(d, &out) > 0.0,
            "{out}: no compressed cluster"
        );
        let info = info(d, &out);
        assert_eq!(info["format-specific"]["data"]["compression-type"], ty);
        assert_same_bytes(&qemu_raw(d, &out), &src, &out);
    }
}

#[test]
fn convert_c_matches_single_threaded_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_source(d, "src.raw", 5 << 20);
    for threads in ["1", "2"] {
        let out = format!("t{threads}.qcow2");
        ok(
            "convert",
            &qcow2(
                d,
                &[
                    "convert",
                    "-c",
                    "--threads",
                    threads,
                    "-O",
                    "qcow2",
                    "src.raw",
                    &out,
                ],
            ),
        );
    }
    // Writes happen in guest order whatever the threads: same bytes.
    let one = std::fs::read(d.join("t1.qcow2")).unwrap();
    let two = std::fs::read(d.join("t2.qcow2")).unwrap();
    assert!(one == two, "thread count changed the output");
}

#[test]
fn convert_without_c_uses_the_pipeline_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_source(d, "src.raw", 3 << 20);
    ok(
        "convert",
        &qcow2(
            d,
            &["convert", "-p", "-O", "qcow2", "src.raw", "plain.qcow2"],
        ),
    );
    assert_clean(d, "plain.qcow2");
    assert_eq!(compressed_share(d, "plain.qcow2"), 0.0);
    ok(
        "compare",
        &qemu_img(d, &["compare", "src.raw", "plain.qcow2"]),
    );
}

#[test]
fn seed_compress_format_round_trips_with_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_source(d, "src.raw", 4 << 20);
    for (spec, name, level) in [
        ("zlib", "zlib", 0),
        ("zstd:7", "zstd", 7),
        ("brotli:3", "brotli", 3),
    ] {
        let out = format!("seed-{name}.qcow2");
        ok(
            "convert --compress-format",
            &qcow2(
                d,
                &[
                    "convert",
                    "-c",
                    "--compress-format",
                    spec,
                    "-O",
                    "qcow2",
                    "src.raw",
                    &out,
                ],
            ),
        );
        let check = qcow2(d, &["check", &out]);
        assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
        ok("compare", &qcow2(d, &["compare", "src.raw", &out]));
        let info = our_info(d, &out);
        let cf = &info["format-specific"]["data"]["compress-format"];
        assert_eq!(cf["name"], name, "{info}");
        assert_eq!(cf["level"], level, "{info}");
    }
}

#[test]
fn create_takes_the_compress_format_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let line = ok(
        "create",
        &qcow2(
            d,
            &["create", "--compress-format", "zstd:19", "a.qcow2", "1M"],
        ),
    );
    assert!(
        line.contains("compress_format=zstd compress_level=19"),
        "{line}"
    );
    ok(
        "create",
        &qcow2(
            d,
            &[
                "create",
                "-o",
                "compress_format=brotli,compress_level=5",
                "b.qcow2",
                "1M",
            ],
        ),
    );
    for (file, name, level) in [("a.qcow2", "zstd", 19), ("b.qcow2", "brotli", 5)] {
        let info = our_info(d, file);
        let cf = &info["format-specific"]["data"]["compress-format"];
        assert_eq!(
            (cf["name"].as_str(), cf["level"].as_u64()),
            (Some(name), Some(level))
        );
    }
    // Later compressed writes use that codec: the image stays readable.
    ok(
        "io write -c",
        &qcow2(d, &["io", "-c", "write -c -P 0x5a 0 128k", "b.qcow2"]),
    );
    let read = ok(
        "io read",
        &qcow2(d, &["io", "-c", "read -P 0x5a 0 128k", "b.qcow2"]),
    );
    assert!(read.contains("read 131072/131072"), "{read}");
}

#[test]
fn bad_compress_formats_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = qcow2(d, &["create", "--compress-format", "lz4", "x.qcow2", "1M"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lz4"), "{err}");
    assert!(!d.join("x.qcow2").exists(), "a refused image was created");
    let out = qcow2(
        d,
        &["create", "--compress-format", "zlib:12", "x.qcow2", "1M"],
    );
    assert_eq!(out.status.code(), Some(1));
    let out = qcow2(
        d,
        &[
            "create",
            "-o",
            "compression_type=zstd,compress_format=zstd",
            "x.qcow2",
            "1M",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let out = qcow2(d, &["create", "-o", "compress_level=3", "x.qcow2", "1M"]);
    assert_eq!(out.status.code(), Some(1));
    make_source(d, "src.raw", 1 << 20);
    let out = qcow2(d, &["convert", "-c", "-O", "raw", "src.raw", "x.raw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qcow2 destination"));
}

#[test]
fn io_write_c_is_read_by_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        "create",
        &qemu_img(
            d,
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "compression_type=zstd",
                "a.qcow2",
                "1M",
            ],
        ),
    );
    ok(
        "io",
        &qcow2(
            d,
            &[
                "io",
                "-c",
                "write -c -P 0x21 0 256k",
                "-c",
                "write -c -P 0x22 256k 64k",
                "a.qcow2",
            ],
        ),
    );
    assert_clean(d, "a.qcow2");
    assert!(compressed_share(d, "a.qcow2") > 0.0);
    ok(
        "qemu-io",
        &qemu_io(
            d,
            &[
                "-c",
                "read -P 0x21 0 256k",
                "-c",
                "read -P 0x22 256k 64k",
                "a.qcow2",
            ],
        ),
    );
    let out = qcow2(d, &["io", "-c", "write -c 512 64k", "a.qcow2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

#[test]
fn amend_changes_the_level_and_the_format_of_an_empty_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cf = |file: &str| {
        let info = our_info(d, file);
        let cf = info["format-specific"]["data"]["compress-format"].clone();
        (cf["name"].as_str().map(String::from), cf["level"].as_u64())
    };
    ok(
        "create",
        &qcow2(
            d,
            &["create", "--compress-format", "zstd:3", "a.qcow2", "1M"],
        ),
    );
    ok(
        "io",
        &qcow2(d, &["io", "-c", "write -c -P 0x31 0 192k", "a.qcow2"]),
    );
    ok(
        "amend level",
        &qcow2(d, &["amend", "-o", "compress_level=12", "a.qcow2"]),
    );
    assert_eq!(cf("a.qcow2"), (Some("zstd".into()), Some(12)));
    ok(
        "io",
        &qcow2(d, &["io", "-c", "write -c -P 0x32 192k 64k", "a.qcow2"]),
    );
    let read = ok(
        "io read",
        &qcow2(
            d,
            &[
                "io",
                "-c",
                "read -P 0x31 0 192k",
                "-c",
                "read -P 0x32 192k 64k",
                "a.qcow2",
            ],
        ),
    );
    assert!(!read.contains("failed"), "{read}");
    // The format decides how the compressed clusters decode: refused.
    let out = qcow2(d, &["amend", "-o", "compress_format=brotli", "a.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("compressed with zstd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cf("a.qcow2"), (Some("zstd".into()), Some(12)));
    // A QEMU image without compressed clusters may switch to a seed format.
    ok(
        "create",
        &qemu_img(
            d,
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "compression_type=zstd",
                "b.qcow2",
                "1M",
            ],
        ),
    );
    let out = qcow2(d, &["amend", "-o", "compress_level=3", "b.qcow2"]);
    assert_eq!(out.status.code(), Some(1), "a level without a format");
    ok(
        "amend format",
        &qcow2(
            d,
            &[
                "amend",
                "-o",
                "compress_format=brotli,compress_level=4",
                "b.qcow2",
            ],
        ),
    );
    assert_eq!(cf("b.qcow2"), (Some("brotli".into()), Some(4)));
    let info = our_info(d, "b.qcow2");
    assert_eq!(info["format-specific"]["data"]["compression-type"], "zlib");
    ok(
        "io",
        &qcow2(
            d,
            &[
                "io",
                "-c",
                "write -c -P 0x33 0 64k",
                "-c",
                "read -P 0x33 0 64k",
                "b.qcow2",
            ],
        ),
    );
    let check = qcow2(d, &["check", "b.qcow2"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
}
