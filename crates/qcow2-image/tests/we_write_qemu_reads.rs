//! We write, QEMU reads: after our writes, zero writes, discards and
//! resizes, `qemu-img check` is clean and `qemu-io` sees our data.

mod common;

use common::{assert_qemu_check_clean, assert_qemu_reads_pattern, run, Rng};
use qcow2_image::{CreateOptions, Image};

/// One configuration of the matrix.
struct Config {
    cluster_size: u64,
    refcount_bits: u32,
    version: u32,
    extended_l2: bool,
}

const MATRIX: &[Config] = &[
    Config {
        cluster_size: 65536,
        refcount_bits: 16,
        version: 3,
        extended_l2: false,
    },
    Config {
        cluster_size: 512,
        refcount_bits: 16,
        version: 3,
        extended_l2: false,
    },
    Config {
        cluster_size: 4096,
        refcount_bits: 1,
        version: 3,
        extended_l2: false,
    },
    Config {
        cluster_size: 65536,
        refcount_bits: 64,
        version: 3,
        extended_l2: false,
    },
    Config {
        cluster_size: 65536,
        refcount_bits: 16,
        version: 2,
        extended_l2: false,
    },
    Config {
        cluster_size: 65536,
        refcount_bits: 16,
        version: 3,
        extended_l2: true,
    },
    Config {
        cluster_size: 2 << 20,
        refcount_bits: 16,
        version: 3,
        extended_l2: false,
    },
    Config {
        cluster_size: 16384,
        refcount_bits: 8,
        version: 3,
        extended_l2: true,
    },
];

fn options(config: &Config, size: u64) -> CreateOptions {
    let mut o = CreateOptions::new(size);
    o.cluster_size = config.cluster_size;
    o.refcount_bits = config.refcount_bits;
    o.version = config.version;
    o.extended_l2 = config.extended_l2;
    o
}

#[test]
fn random_writes_are_clean_and_readable_by_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for (n, config) in MATRIX.iter().enumerate() {
        let path = dir.path().join(format!("w{n}.qcow2"));
        let size = 64 << 20;
        let image = Image::create_path(&path, &options(config, size)).unwrap();
        let mut rng = Rng::new(n as u64 + 7);
        let mut model = vec![0u8; size as usize];
        for i in 0..40u64 {
            let len = 1 + rng.below(3 * config.cluster_size.min(1 << 20));
            let offset = rng.below(size - len);
            let pattern = (i % 250 + 1) as u8;
            image
                .write_at(&vec![pattern; len as usize], offset)
                .unwrap();
            model[offset as usize..(offset + len) as usize].fill(pattern);
        }
        // Zero writes and discards in their own region, then a final write
        // region that nothing overlaps, checked by qemu-io.
        let region = size - (8 << 20);
        image.write_at(&vec![0x5a; 4 << 20], region).unwrap();
        image.write_zeroes(region + 1000, 300_000, false).unwrap();
        image
            .write_zeroes(region + (1 << 20), 1 << 20, true)
            .unwrap();
        image.discard(region + (2 << 20), 1 << 20).unwrap();
        let r = region as usize;
        model[r..r + (4 << 20)].fill(0x5a);
        model[r + 1000..r + 301_000].fill(0);
        model[r + (1 << 20)..r + (2 << 20)].fill(0);
        // A discard drops whole allocation units only (clusters, or
        // subclusters with extended L2), which then read as zeros.
        let unit = if config.extended_l2 {
            config.cluster_size / 32
        } else {
            config.cluster_size
        };
        let (d_start, d_end) = (region + (2 << 20), region + (3 << 20));
        let (u_start, u_end) = (d_start.div_ceil(unit) * unit, d_end / unit * unit);
        if u_start < u_end {
            model[u_start as usize..u_end as usize].fill(0);
        }
        image.close().unwrap();
        assert_qemu_check_clean(&path);
        assert_qemu_reads_pattern(&path, region, 1000, 0x5a);
        assert_qemu_reads_pattern(&path, region + 1000, 300_000, 0);
        assert_qemu_reads_pattern(&path, region + (1 << 20), 1 << 20, 0);
        assert_qemu_reads_pattern(
            &path,
            u_start.max(d_start),
            u_end.saturating_sub(u_start).max(1),
            if u_start < u_end { 0 } else { 0x5a },
        );
        assert_qemu_reads_pattern(&path, region + (3 << 20), 1 << 20, 0x5a);
        // The whole guest content agrees with what we read ourselves.
        let raw = dir.path().join(format!("w{n}.raw"));
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                path.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );
        let qemu_bytes = std::fs::read(&raw).unwrap();
        let ours = Image::open_path(&path, false).unwrap();
        let mut buf = vec![0u8; size as usize];
        ours.read_at(&mut buf, 0).unwrap();
        let diff = |a: &[u8]| a.iter().zip(&model).position(|(x, y)| x != y);
        assert!(
            qemu_bytes == model,
            "config {n}: qemu reads other data than we wrote, first at {:?} (ours differ at {:?})",
            diff(&qemu_bytes),
            diff(&buf)
        );
        assert!(buf == model, "config {n}: we read other data than we wrote");
    }
}

#[test]
fn partial_writes_over_a_backing_file_copy_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let base = p("base.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "8M"],
    );
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x77 0 8M",
            base.to_str().unwrap(),
        ],
    );
    for extended in [false, true] {
        let top = p(&format!("top-{extended}.qcow2"));
        let mut o = CreateOptions::new(8 << 20);
        o.extended_l2 = extended;
        o.backing_file = Some("base.qcow2".into());
        o.backing_format = Some("qcow2".into());
        let image = Image::create_path(&top, &o).unwrap();
        // Unaligned writes inside clusters and subclusters, one spanning two
        // clusters, and a zero write that must hide the backing data.
        image.write_at(&[0x01; 100], 1000).unwrap();
        image.write_at(&[0x02; 70_000], 130_000).unwrap();
        image.write_zeroes(1 << 20, 65536, false).unwrap();
        image.write_zeroes((2 << 20) + 512, 1024, false).unwrap();
        image.close().unwrap();
        assert_qemu_check_clean(&top);
        let mut model = vec![0x77u8; 8 << 20];
        model[1000..1100].fill(0x01);
        model[130_000..200_000].fill(0x02);
        model[1 << 20..(1 << 20) + 65536].fill(0);
        model[(2 << 20) + 512..(2 << 20) + 1536].fill(0);
        let raw = p("top.raw");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                top.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );
        let got = std::fs::read(&raw).unwrap();
        let diff = got.iter().zip(&model).position(|(a, b)| a != b);
        assert!(
            diff.is_none(),
            "extended={extended}: first difference at {diff:?}"
        );
    }
}
