//! QEMU's iotest 271 the other way round: the same writes, zero writes (with
//! and without unmap), discards and compressed writes, at subcluster and
//! cluster granularity, are run by `qcow2 io` on one copy of an image and by
//! `qemu-io` on another; afterwards every guest cluster must have the same
//! L2 entry shape in both: unallocated, allocated or compressed, and the
//! same allocation and zero bits (extended L2) or zero flag (standard).
//! Host offsets and compressed stream bytes may differ. Discards of less
//! than a cluster are left out: QEMU ignores them, we zero whole
//! subclusters, and both are valid.
//!
//! The entries are read straight from the file by this test, not through
//! the engine.

mod tools;

use std::path::Path;

use tools::*;

/// What one guest cluster's L2 entry says, without its host offset.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    /// No L2 table covers it.
    NoTable,
    /// Standard entry: allocated or not, zero flag.
    Standard { allocated: bool, zero: bool },
    /// Compressed cluster.
    Compressed,
    /// Extended entry: allocated or not, allocation and zero bitmaps.
    Extended {
        allocated: bool,
        alloc_bits: u32,
        zero_bits: u32,
    },
}

fn be(bytes: &[u8], at: u64, n: usize) -> u64 {
    let at = at as usize;
    bytes[at..at + n]
        .iter()
        .fold(0, |v, &b| (v << 8) | u64::from(b))
}

/// The shape of every guest cluster of the image at `path`.
fn shapes(path: &Path) -> Vec<Shape> {
    let bytes = std::fs::read(path).unwrap();
    let cluster_bits = be(&bytes, 20, 4);
    let cs = 1u64 << cluster_bits;
    let size = be(&bytes, 24, 8);
    let l1 = be(&bytes, 40, 8);
    let version = be(&bytes, 4, 4);
    let extended = version >= 3 && be(&bytes, 72, 8) & (1 << 4) != 0;
    let entry_len = if extended { 16 } else { 8 };
    let per_table = cs / entry_len;
    const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
    (0..size.div_ceil(cs))
        .map(|g| {
            let table = be(&bytes, l1 + g / per_table * 8, 8) & OFFSET;
            if table == 0 {
                return Shape::NoTable;
            }
            let at = table + g % per_table * entry_len;
            let word = be(&bytes, at, 8);
            if word & (1 << 62) != 0 {
                return Shape::Compressed;
            }
            let allocated = word & OFFSET != 0;
            if extended {
                let bitmap = be(&bytes, at + 8, 8);
                Shape::Extended {
                    allocated,
                    alloc_bits: bitmap as u32,
                    zero_bits: (bitmap >> 32) as u32,
                }
            } else {
                Shape::Standard {
                    allocated,
                    zero: word & 1 != 0,
                }
            }
        })
        .collect()
}

/// Fixed commands at the edges that decide the bits: part of a subcluster,
/// a whole one, across subclusters and clusters, over data, zeros and
/// compressed clusters. Offsets are for 64 KiB clusters and scale with
/// `cs`.
fn fixed_commands(cs: u64) -> Vec<String> {
    let k = cs / 64;
    let at = |n: u64| n * k;
    vec![
        format!("write -P 1 0 {}", at(4)),
        format!("write -P 2 {} {}", at(70), at(10)),
        format!("write -z {} {}", at(128), at(64)),
        format!("write -z -u {} {}", at(192), at(2)),
        format!("write -P 3 {} {}", at(256), at(64)),
        format!("write -z {} {}", at(256), at(8)),
        format!("discard {} {}", at(256), at(64)),
        format!("write -P 4 {} {}", at(320), at(64)),
        format!("write -z -u {} {}", at(320), at(64)),
        format!("write -P 5 {} {}", at(400), at(1)),
        format!("discard {} {}", at(384), at(64)),
        format!("write -z {} {}", at(448), at(3)),
        format!("write -c -P 6 {} {}", at(512), at(64)),
        format!("write -P 7 {} {}", at(512), at(2)),
        format!("write -z {} {}", at(600), at(1)),
        format!("write -P 8 {} {}", at(640), at(64)),
        format!("write -z {} {}", at(641), at(2)),
        format!("write -z {} {}", at(705), at(3)),
        format!("write -P 9 {} {}", at(770), at(1)),
        format!("write -z {} {}", at(769), at(4)),
        format!("write -P 10 {} {}", at(830), at(100)),
        format!("write -z -u {} {}", at(832), at(64)),
    ]
}

/// Seeded random commands over the whole disk: writes, zero writes with
/// and without unmap, whole-cluster discards and compressed writes.
fn random_commands(seed: u64, cs: u64, size: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let unit = cs / 32;
    let clusters = size / cs;
    // QEMU writes compressed clusters only where nothing is allocated.
    let mut touched = vec![false; clusters as usize];
    let mut commands = Vec::new();
    while commands.len() < 40 {
        let cluster = rng.below(clusters);
        let command = match rng.below(8) {
            0 => {
                let n = (1 + rng.below(2)).min(clusters - cluster);
                format!("discard {} {}", cluster * cs, n * cs)
            }
            1 if !touched[cluster as usize] => {
                format!("write -c -P {} {} {cs}", 1 + rng.below(200), cluster * cs)
            }
            1 => continue,
            kind => {
                // Byte, sector, subcluster or cluster grain.
                let grain = [1, 512, unit, cs][rng.below(4) as usize];
                let offset = rng.below(size / grain) * grain;
                let len = (grain * (1 + rng.below(3))).min(size - offset);
                for c in offset / cs..(offset + len).div_ceil(cs) {
                    touched[c as usize] = true;
                }
                match kind {
                    2 => format!("write -z {offset} {len}"),
                    3 => format!("write -z -u {offset} {len}"),
                    _ => format!("write -P {} {offset} {len}", 1 + rng.below(200)),
                }
            }
        };
        touched[cluster as usize] = true;
        commands.push(command);
    }
    commands
}

fn run_all(dir: &Path, file: &str, commands: &[String], ours: bool) {
    io_batch(dir, file, commands, ours);
}

/// Runs `commands` both ways on copies of one fresh image and compares.
fn compare(opts: &str, backing: bool, commands: &[String], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 1u64 << 20;
    let mut create = vec!["create", "-q", "-f", "qcow2", "-o", opts];
    if backing {
        ok(
            "create backing",
            &qemu_img(d, &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]),
        );
        ok(
            "fill backing",
            &qemu_io(d, &["-c", "write -P 0x99 0 768k", "b.qcow2"]),
        );
        create.extend(["-b", "b.qcow2", "-F", "qcow2"]);
    }
    let size_arg = size.to_string();
    create.extend(["theirs.qcow2", size_arg.as_str()]);
    ok("create", &qemu_img(d, &create));
    std::fs::copy(d.join("theirs.qcow2"), d.join("ours.qcow2")).unwrap();
    // qemu-io starts afresh before each compressed write: QEMU 10.0 keeps
    // appending compressed streams to a host cluster it has freed and
    // reused meanwhile (write -c, a partial write over it, a write that
    // reuses the cluster, write -c again, in one process), corrupting its
    // image. We run everything in one process.
    for batch in commands.split_inclusive(|c| c.starts_with("write -c")) {
        let (compressed, rest) = match batch.split_last() {
            Some((last, rest)) if last.starts_with("write -c") => (Some(last), rest),
            _ => (None, batch),
        };
        if !rest.is_empty() {
            run_all(d, "theirs.qcow2", rest, false);
        }
        if let Some(c) = compressed {
            run_all(d, "theirs.qcow2", std::slice::from_ref(c), false);
        }
    }
    run_all(d, "ours.qcow2", commands, true);

    let context = format!("{opts}, backing {backing}, {what}: {commands:?}");
    let (theirs, ours) = (
        shapes(&d.join("theirs.qcow2")),
        shapes(&d.join("ours.qcow2")),
    );
    for (g, (t, o)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(o, t, "guest cluster {g}, ours vs QEMU's; {context}");
    }
    let same = qemu_img(d, &["compare", "ours.qcow2", "theirs.qcow2"]);
    assert!(same.status.success(), "{}\n{context}", stdout(&same));
    assert_clean(d, "ours.qcow2");
}

const LAYOUTS: [(&str, bool); 8] = [
    ("extended_l2=on,cluster_size=64k", false),
    ("extended_l2=on,cluster_size=64k", true),
    ("extended_l2=on,cluster_size=16k", false),
    ("cluster_size=64k", false),
    ("cluster_size=64k", true),
    ("cluster_size=4k", false),
    ("compat=0.10,cluster_size=64k", false),
    ("compat=0.10,cluster_size=64k", true),
];

fn cluster_size(opts: &str) -> u64 {
    match opts.split("cluster_size=").nth(1).unwrap_or("64k") {
        "16k" => 16 << 10,
        "4k" => 4 << 10,
        _ => 64 << 10,
    }
}

#[test]
fn fixed_edges_give_qemus_entries() {
    for (opts, backing) in LAYOUTS {
        let cs = cluster_size(opts);
        compare(opts, backing, &fixed_commands(cs), "fixed commands");
    }
}

#[test]
fn random_commands_give_qemus_entries() {
    for (i, (opts, backing)) in LAYOUTS.into_iter().enumerate() {
        let cs = cluster_size(opts);
        for seed in 0..6 {
            let commands = random_commands(100 * i as u64 + seed + 1, cs, 1 << 20);
            compare(opts, backing, &commands, &format!("seed {seed}"));
        }
    }
}
