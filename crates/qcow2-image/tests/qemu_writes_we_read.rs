//! QEMU writes, we read: images made and filled by qemu-img and qemu-io read
//! back through our engine exactly as `qemu-img convert -O raw` sees them.

mod common;

use std::path::Path;

use common::run;
use qcow2_image::Image;

/// Our reading of every guest byte must equal QEMU's.
fn assert_same_content(dir: &Path, image: &Path) {
    let raw = dir.join("expected.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let expected = std::fs::read(&raw).unwrap();
    let ours = Image::open_path(image, false).unwrap();
    assert_eq!(ours.size(), expected.len() as u64);
    let mut buf = vec![0u8; expected.len()];
    // Odd-sized reads cross cluster and subcluster boundaries.
    let step = 1_000_003usize;
    let mut pos = 0;
    while pos < buf.len() {
        let n = step.min(buf.len() - pos);
        ours.read_at(&mut buf[pos..pos + n], pos as u64).unwrap();
        pos += n;
    }
    let first_diff = buf.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        first_diff.is_none(),
        "{}: first difference at {first_diff:?}",
        image.display()
    );
}

fn qemu_io(image: &Path, commands: &[String]) {
    let mut args = vec!["-f".to_string(), "qcow2".to_string()];
    for c in commands {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(image.to_str().unwrap().to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run("qemu-io", &refs);
}

/// Pattern writes, partial clusters, zero writes (with and without unmap)
/// and discards spread over the disk.
fn fill_commands(cluster: u64) -> Vec<String> {
    vec![
        format!("write -P 0x11 0 {}", cluster * 3),
        format!("write -P 0x22 {} 777", cluster + 100),
        format!("write -P 0x33 {} {}", 5 << 20, cluster * 2 + 512),
        format!("write -z {} {}", cluster, cluster),
        format!("write -z -u {} {}", 5 << 20, cluster),
        format!("discard {} {}", 0, cluster),
        format!("write -P 0x44 {} 4096", (12 << 20) - 4096),
    ]
}

#[test]
fn option_matrix_reads_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[&str] = &[
        "cluster_size=65536",
        "cluster_size=512",
        "cluster_size=4096,refcount_bits=1",
        "cluster_size=2097152,refcount_bits=64",
        "compat=0.10",
        "extended_l2=on,cluster_size=65536",
        "extended_l2=on,cluster_size=16384",
        "compression_type=zstd",
    ];
    for (i, opts) in cases.iter().enumerate() {
        let image = dir.path().join(format!("m{i}.qcow2"));
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                opts,
                image.to_str().unwrap(),
                "12M",
            ],
        );
        let cluster: u64 = opts
            .split(',')
            .find_map(|o| o.strip_prefix("cluster_size="))
            .map_or(65536, |v| v.parse().unwrap());
        qemu_io(&image, &fill_commands(cluster.min(1 << 20)));
        assert_same_content(dir.path(), &image);
    }
}

#[test]
fn backing_chains_read_through() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // raw <- qcow2 <- qcow2 (extended L2 on top, so subclusters fall through)
    run(
        "qemu-img",
        &["create", "-q", "-f", "raw", &p("base.raw"), "8M"],
    );
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xaa 0 8M", &p("base.raw")],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            &p("mid.qcow2"),
        ],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xbb 65536 100000",
            "-c",
            "write -z 3M 1M",
            &p("mid.qcow2"),
        ],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            &p("top.qcow2"),
            "10M",
        ],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xcc 70000 5000",
            "-c",
            "write -P 0xdd 7M 2M",
            &p("top.qcow2"),
        ],
    );
    assert_same_content(dir.path(), Path::new(&p("top.qcow2")));
}

#[test]
fn compressed_clusters_read_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // Compressible but varied content.
    let mut raw = Vec::with_capacity(6 << 20);
    for i in 0..(6u32 << 20) / 4 {
        raw.extend_from_slice(&(i / 97).to_le_bytes());
    }
    raw[1 << 20..2 << 20].fill(0);
    std::fs::write(p("src.raw"), &raw).unwrap();
    for (i, kind) in ["zlib", "zstd"].iter().enumerate() {
        for cluster in ["4096", "65536", "2097152"] {
            let out = p(&format!("c{i}-{cluster}.qcow2"));
            let opts = format!("compression_type={kind},cluster_size={cluster}");
            run(
                "qemu-img",
                &[
                    "convert",
                    "-c",
                    "-O",
                    "qcow2",
                    "-o",
                    &opts,
                    &p("src.raw"),
                    &out,
                ],
            );
            assert_same_content(dir.path(), Path::new(&out));
        }
    }
}

#[test]
fn writes_to_compressed_and_snapshot_clusters_copy_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let mut raw = vec![0u8; 4 << 20];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = (i / 1000) as u8;
    }
    std::fs::write(p("src.raw"), &raw).unwrap();
    run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", &p("src.raw"), &p("c.qcow2")],
    );
    run("qemu-img", &["snapshot", "-c", "snap1", &p("c.qcow2")]);
    let image = Image::open_path(Path::new(&p("c.qcow2")), true).unwrap();
    image.write_at(&[0xee; 3000], 70_000).unwrap();
    image.write_at(&[0xef; 65536], 131_072).unwrap();
    image.close().unwrap();
    raw[70_000..73_000].fill(0xee);
    raw[131_072..196_608].fill(0xef);
    common::assert_qemu_check_clean(Path::new(&p("c.qcow2")));
    run(
        "qemu-img",
        &["convert", "-O", "raw", &p("c.qcow2"), &p("out.raw")],
    );
    assert!(
        std::fs::read(p("out.raw")).unwrap() == raw,
        "active layer content"
    );
    // The snapshot still holds the original data.
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            "-l",
            "snap1",
            &p("c.qcow2"),
            &p("snap.raw"),
        ],
    );
    let snap = std::fs::read(p("snap.raw")).unwrap();
    assert!(snap[70_000..73_000]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((70_000 + i) / 1000) as u8));
}

#[test]
fn dirty_image_is_repaired_on_writable_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dirty.qcow2");
    let p = path.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            p,
            "16M",
        ],
    );
    // qemu-io's `abort` crashes after the write: the dirty bit stays set and
    // the refcounts of the new clusters were never written.
    let status = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x61 0 1M", "-c", "abort", p])
        .output()
        .unwrap()
        .status;
    assert!(!status.success(), "qemu-io abort should crash");
    let before = qcow2_format::Header::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert!(
        before.incompatible_features & 1 != 0,
        "the dirty bit is set"
    );
    // iotest 039: a read-only open of the stale image reads the data and
    // changes nothing, the dirty bit included.
    let bytes = std::fs::read(&path).unwrap();
    {
        let image = Image::open_path(&path, false).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        image.read_at(&mut buf, 0).unwrap();
        assert!(
            buf.iter().all(|&b| b == 0x61),
            "read-only read of the dirty image"
        );
        image.close().unwrap();
    }
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "a read-only open changed the dirty image"
    );
    let image = Image::open_path(&path, true).unwrap();
    image.write_at(&[0x62; 4096], 2 << 20).unwrap();
    image.close().unwrap();
    let after = qcow2_format::Header::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        after.incompatible_features & 1,
        0,
        "the dirty bit is cleared"
    );
    common::assert_qemu_check_clean(&path);
    common::assert_qemu_reads_pattern(&path, 0, 1 << 20, 0x61);
    common::assert_qemu_reads_pattern(&path, 2 << 20, 4096, 0x62);
}

/// EXT-FRAMING's tolerances, which QEMU has too: the extension area may end
/// inside an entry's padding, and with no end marker. The backing file name
/// is moved right after the five bytes of the backing format ("qcow2"), so
/// the area ends there. QEMU and we both still find the backing file and
/// read through it.
#[test]
fn extension_area_ending_inside_padding_without_end_marker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.qcow2");
    let top = d.join("top.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x42 0 64k",
            base.to_str().unwrap(),
        ],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            top.to_str().unwrap(),
        ],
    );
    let mut bytes = std::fs::read(&top).unwrap();
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    let header_length = be32(&bytes, 100) as usize;
    // The first extension is the backing format, "qcow2".
    assert_eq!(
        be32(&bytes, header_length),
        0xe279_2aca,
        "backing format first"
    );
    assert_eq!(be32(&bytes, header_length + 4), 5);
    let name_at = u64::from_be_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let name_len = be32(&bytes, 16) as usize;
    let name = bytes[name_at..name_at + name_len].to_vec();
    let new_at = header_length + 8 + 5;
    bytes[new_at..name_at + name_len].fill(0);
    bytes[new_at..new_at + name_len].copy_from_slice(&name);
    bytes[8..16].copy_from_slice(&(new_at as u64).to_be_bytes());
    std::fs::write(&top, &bytes).unwrap();

    let info = run(
        "qemu-img",
        &["info", "--output=json", top.to_str().unwrap()],
    );
    assert!(
        info.contains("\"backing-filename\": \"base.qcow2\""),
        "{info}"
    );
    assert!(
        info.contains("\"backing-filename-format\": \"qcow2\""),
        "{info}"
    );
    let image = Image::open_path(&top, false).expect("we open it too");
    let mut buf = vec![0u8; 65536];
    image.read_at(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0x42),
        "read through the backing file"
    );
    assert_same_content(d, &top);
}
