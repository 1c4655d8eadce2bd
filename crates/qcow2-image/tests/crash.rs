//! Crash tests (design §4, after QEMU's iotest 026): every workload is run
//! once cleanly to count its metadata writes and flushes, then again with
//! each of those events (a sample when there are many) failing or torn.
//! Every disk the crash may leave, with all, none or a random subset of the
//! unflushed writes landed, must pass `qemu-img check` and the engine's
//! check with leaks at most, and must read back everything flushed before
//! the crash that no later step touched.

mod common;
#[path = "common/crash_helpers.rs"]
mod crash_helpers;

use std::sync::Arc;

use common::Rng;
use crash_helpers::{
    assert_no_failures, crash_workload, make_backing, qemu_check, Caps, Op, Summary, Survivors,
    VolatileStorage, Workload,
};
use qcow2_image::{BackingMode, CreateOptions, Image};
use qcow2_io::{Effect, Fault, FaultStorage, Trigger, WriteKind};

fn options(size: u64, cluster_size: u64) -> CreateOptions {
    let mut o = CreateOptions::new(size);
    o.cluster_size = cluster_size;
    o
}

fn run(w: &Workload, caps: Caps) -> Summary {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = crash_workload(w, caps, dir.path());
    assert!(summary.faults > 0, "{}: no fault was tried", w.name);
    assert_no_failures(&summary);
    summary
}

/// `refcount_table_clusters` of a header.
fn refcount_table_clusters(image: &[u8]) -> u32 {
    u32::from_be_bytes([image[56], image[57], image[58], image[59]])
}

/// Random writes of whole runs and partial clusters, with overwrites, over
/// `size` bytes; a flush every `flush_every` steps and at the end.
fn random_writes(
    seed: u64,
    size: u64,
    cs: u64,
    count: usize,
    max_len: u64,
    flush_every: usize,
) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut ops = Vec::new();
    let mut done: Vec<(u64, u64)> = Vec::new();
    for i in 0..count {
        let (offset, len) = match rng.below(4) {
            // Whole clusters.
            0 | 1 => {
                let clusters = 1 + rng.below(max_len / cs);
                let start = rng.below(size / cs - clusters) * cs;
                (start, clusters * cs)
            }
            // Part of a cluster (copy on write of the rest).
            2 => {
                let len = 1 + rng.below(cs - 1);
                let start = rng.below(size - len);
                (start, len)
            }
            // Over an earlier write (in place), unaligned.
            _ => match done.get(rng.below(done.len() as u64) as usize) {
                Some(&(a, l)) => {
                    let start = a + rng.below(l);
                    (start, (1 + rng.below(cs * 2)).min(size - start))
                }
                None => (0, cs),
            },
        };
        done.push((offset, len));
        ops.push(Op::Write {
            offset,
            len,
            seed: seed * 1000 + i as u64,
        });
        if (i + 1) % flush_every == 0 {
            ops.push(Op::Flush);
        }
    }
    ops.push(Op::Flush);
    ops
}

/// (a) A fresh image with small clusters: writes allocate L2 tables and
/// clusters, including partial-cluster copy on write, with flushes between.
#[test]
fn crash_fresh_image_allocations() {
    let w = Workload::new(
        "alloc",
        options(64 << 20, 4096),
        None,
        random_writes(1, 64 << 20, 4096, 48, 40 << 10, 8),
    );
    run(&w, Caps::default());
}

/// Scattered 64 KiB writes over a large disk of 512-byte clusters until the
/// refcount table must grow (more than once for wide refcounts).
fn growth_ops(size: u64, chunk: u64, total: u64, flush_every: usize) -> Vec<Op> {
    let mut rng = Rng::new(total ^ size);
    let mut ops = Vec::new();
    let stride = size / (total / chunk);
    for i in 0..total / chunk {
        // Mostly whole runs, with a partial write now and then.
        let base = i * stride + rng.below(stride - chunk) / 512 * 512;
        let (offset, len) = if i % 5 == 4 {
            (base + 100, chunk - 300)
        } else {
            (base, chunk)
        };
        ops.push(Op::Write {
            offset,
            len,
            seed: 500 + i,
        });
        if (i as usize + 1) % flush_every == 0 {
            ops.push(Op::Flush);
        }
    }
    ops.push(Op::Flush);
    ops
}

/// (b) Refcount table growth with 512-byte clusters and 64-bit refcounts:
/// one table cluster covers 2 MiB of file; the workload writes 3.5 MiB, so
/// the table moves to a new place, two clusters long, and the old one is
/// freed.
#[test]
fn crash_refcount_table_growth_64bit() {
    let mut o = options(1 << 30, 512);
    o.refcount_bits = 64;
    let w = Workload::new(
        "growth64",
        o,
        None,
        growth_ops(1 << 30, 64 << 10, 7 << 19, 8),
    );
    let summary = run(&w, Caps::default());
    let clusters = refcount_table_clusters(&summary.clean_image);
    assert!(clusters >= 2, "the refcount table did not grow: {clusters}");
}

/// (b) Refcount table growth with 16-bit refcounts: one table cluster covers
/// 8 MiB of file, the workload writes 9 MiB. Takes about a minute in a
/// debug build; the 64-bit case covers the same code paths faster.
#[test]
#[ignore = "slow: run with --ignored for the longer sweep"]
fn crash_refcount_table_growth_16bit() {
    let o = options(256 << 20, 512);
    let w = Workload::new(
        "growth16",
        o,
        None,
        growth_ops(256 << 20, 256 << 10, 9 << 20, 6),
    );
    let summary = run(
        &w,
        Caps {
            metadata: 16,
            data: 4,
            flushes: 24,
            random_subsets: 2,
        },
    );
    assert!(refcount_table_clusters(&summary.clean_image) >= 2);
}

/// (b) One-bit refcounts: new refcount blocks (4096 clusters each) but no
/// table growth.
#[test]
fn crash_refcount_bits_1() {
    let mut o = options(64 << 20, 512);
    o.refcount_bits = 1;
    let w = Workload::new("bits1", o, None, growth_ops(64 << 20, 32 << 10, 2 << 20, 8));
    run(&w, Caps::default());
}

/// (c) Overwrites, discards and zero writes (unmapping and not), a growth
/// that moves the L1 table, and a shrink that drops L2 tables.
#[test]
fn crash_overwrite_discard_zero_resize() {
    let cs = 4096;
    let mib = 1 << 20;
    let mut ops = vec![
        Op::Write {
            offset: 0,
            len: 3 * mib,
            seed: 1,
        },
        Op::Write {
            offset: 5 * mib + 123,
            len: 70_000,
            seed: 2,
        },
        Op::Write {
            offset: 12 * mib,
            len: 256 << 10,
            seed: 3,
        },
        Op::Flush,
        // In place, partial and whole clusters.
        Op::Write {
            offset: 1000,
            len: 5000,
            seed: 4,
        },
        Op::Write {
            offset: mib,
            len: 64 << 10,
            seed: 5,
        },
        Op::Discard {
            offset: 2 * mib,
            len: 512 << 10,
        },
        Op::Zero {
            offset: 12 * mib + 100,
            len: 100_000,
            unmap: true,
        },
        Op::Zero {
            offset: 5 * mib,
            len: 40_000,
            unmap: false,
        },
        Op::Flush,
        // Reuse of freed clusters.
        Op::Write {
            offset: 9 * mib + 77,
            len: 600 << 10,
            seed: 6,
        },
        Op::Discard {
            offset: 0,
            len: 256 << 10,
        },
        Op::Write {
            offset: 2 * mib + 4096,
            len: 8192,
            seed: 7,
        },
        Op::Flush,
        // Growth: the L1 table (8 entries) moves to 4 clusters.
        Op::Resize(4 << 30),
        Op::Flush,
        Op::Write {
            offset: (4 << 30) - 3 * cs - 7,
            len: 3 * cs + 7,
            seed: 8,
        },
        Op::Write {
            offset: 3 << 30,
            len: 100 << 10,
            seed: 9,
        },
        Op::Flush,
        // Shrink: data and L2 tables beyond 10 MiB go.
        Op::Resize(10 * mib),
        Op::Flush,
        Op::Write {
            offset: 8 * mib,
            len: 2 * mib,
            seed: 10,
        },
        Op::Zero {
            offset: 0,
            len: mib,
            unmap: true,
        },
        Op::Flush,
    ];
    ops.push(Op::Flush);
    let w = Workload::new("mixed", options(16 * mib, cs), None, ops);
    run(&w, Caps::default());
}

/// (d) Extended L2 entries: subcluster-sized and unaligned writes, zero
/// writes and discards of subclusters.
#[test]
fn crash_extended_l2_subclusters() {
    let cs: u64 = 65536;
    let sub = cs / 32;
    let mut o = options(64 << 20, cs);
    o.extended_l2 = true;
    let ops = vec![
        Op::Write {
            offset: 0,
            len: sub,
            seed: 1,
        },
        Op::Write {
            offset: 3 * sub + 100,
            len: 500,
            seed: 2,
        },
        Op::Write {
            offset: cs * 10 - sub,
            len: 3 * sub,
            seed: 3,
        },
        Op::Write {
            offset: (40 << 20) + 17,
            len: cs * 3,
            seed: 4,
        },
        Op::Flush,
        Op::Write {
            offset: 5 * sub + 1,
            len: 2 * sub,
            seed: 5,
        },
        Op::Zero {
            offset: 0,
            len: 2 * sub,
            unmap: false,
        },
        Op::Discard {
            offset: cs * 10,
            len: sub,
        },
        Op::Zero {
            offset: (40 << 20) + cs + 300,
            len: 5 * sub,
            unmap: true,
        },
        Op::Flush,
        Op::Write {
            offset: 20 * sub,
            len: 7000,
            seed: 6,
        },
        Op::Write {
            offset: (40 << 20) + cs + 2 * sub,
            len: sub,
            seed: 7,
        },
        Op::Discard {
            offset: (40 << 20) + 2 * cs,
            len: cs,
        },
        Op::Write {
            offset: 30 << 20,
            len: 6 * cs,
            seed: 8,
        },
        Op::Flush,
    ];
    let w = Workload::new("extended", o, None, ops);
    run(&w, Caps::default());
}

fn backing_ops(cs: u64) -> Vec<Op> {
    vec![
        // Partial writes copy the rest of the cluster from the backing file.
        Op::Write {
            offset: 100,
            len: 1000,
            seed: 1,
        },
        Op::Write {
            offset: 5 * cs + 3000,
            len: cs,
            seed: 2,
        },
        Op::Write {
            offset: 20 * cs,
            len: 4 * cs,
            seed: 3,
        },
        Op::Flush,
        Op::Write {
            offset: 40 * cs - 10,
            len: 20,
            seed: 4,
        },
        Op::Discard {
            offset: 20 * cs,
            len: cs,
        },
        Op::Zero {
            offset: 30 * cs + 10,
            len: cs,
            unmap: false,
        },
        Op::Flush,
        // Past the end of the backing file.
        Op::Write {
            offset: (6 << 20) + 5,
            len: 2 * cs,
            seed: 5,
        },
        Op::Write {
            offset: 2 * cs + 77,
            len: 3 * cs,
            seed: 6,
        },
        Op::Flush,
    ]
}

/// (e) An overlay on a qcow2 backing file (both made by the engine): partial
/// writes copy from the backing file.
#[test]
fn crash_backing_file_copy_on_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cs = 65536;
    let backing = make_backing(&dir.path().join("base.qcow2"), &options(4 << 20, cs), 77);
    let w = Workload::new(
        "backing",
        options(8 << 20, cs),
        Some(backing),
        backing_ops(cs),
    );
    run(&w, Caps::default());
}

/// (e) The same with extended L2 entries in the overlay: untouched
/// subclusters keep reading from the backing file.
#[test]
fn crash_backing_file_extended_l2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cs = 32768;
    let backing = make_backing(&dir.path().join("base.qcow2"), &options(4 << 20, 4096), 78);
    let mut o = options(8 << 20, cs);
    o.extended_l2 = true;
    let w = Workload::new("backing-ext", o, Some(backing), backing_ops(cs));
    run(&w, Caps::default());
}

/// Image creation itself: a crash before the header is written leaves no
/// image; after it, a consistent one. (Only the disk with every write landed
/// is checked: creation makes nothing durable until its final flush.)
#[test]
fn crash_during_creation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("create.qcow2");
    let mut o = options(32 << 20, 4096);
    o.refcount_bits = 8;
    // Returns whether the storage had died when `close` returned success
    // (the flush of `Drop` after it may still meet the fault).
    let workload = |storage: Arc<FaultStorage<VolatileStorage>>| -> qcow2_image::Result<bool> {
        let image = Image::create(storage.clone(), &o, BackingMode::Ignore)?;
        image.write_at(&[0x5a; 10000], 12345)?;
        // `flush` rather than `close`, whose `Drop` flushes a second time.
        image.flush()?;
        Ok(storage.fired())
    };
    let clean = Arc::new(FaultStorage::new(VolatileStorage::new(Vec::new())));
    workload(clean.clone()).expect("clean creation");
    let mut faults = Vec::new();
    for kind in WriteKind::ALL {
        for n in 1..=clean.writes_of(kind) {
            faults.push(Fault::new(Trigger::WriteOf(kind, n), Effect::Fail));
            faults.push(Fault::new(Trigger::WriteOf(kind, n), Effect::Tear));
        }
    }
    for n in 1..=clean.flushes() {
        faults.push(Fault::fail_flush(n));
    }
    let mut failures = Vec::new();
    for fault in &faults {
        let storage = Arc::new(FaultStorage::with_fault(
            VolatileStorage::new(Vec::new()),
            *fault,
        ));
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| workload(storage.clone())));
        match result {
            Err(_) => failures.push(format!("{fault}: the engine panicked")),
            Ok(Ok(true)) => failures.push(format!("{fault}: succeeded on a dead storage")),
            Ok(Ok(false) | Err(_)) => {}
        }
        let bytes = storage.inner().crash_image(Survivors::All);
        if bytes.len() < 4 || &bytes[..4] != b"QFI\xfb" {
            continue;
        }
        std::fs::write(&path, &bytes).expect("write image");
        if let Err(e) = qemu_check(&path) {
            failures.push(format!("{fault}: {e}"));
        }
    }
    eprintln!(
        "crash create: {} faults, {} failures",
        faults.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
