//! Crash tests of every dedup path: hits on private and shared clusters,
//! overwrites of shared and unshared clusters, frees, survivor relocation,
//! table growth and offline dedup. Besides the checks of `crash.rs`, every
//! crashed disk's dedup table must match its data exactly, and writing
//! every earlier pattern again after reopening must read back right (a
//! stale entry would make such a rewrite hit the wrong cluster).

mod common;
use common::Rng;
#[path = "common/crash_helpers.rs"]
mod crash_helpers;

use crash_helpers::{assert_no_failures, crash_workload, Caps, Op, Workload};
use qcow2_image::{CreateOptions, DedupOverwrite};

const CS: u64 = 4096;

fn options(size: u64, dedup: bool) -> CreateOptions {
    let mut o = CreateOptions::new(size);
    o.cluster_size = CS;
    o.dedup = dedup;
    o
}

fn caps() -> Caps {
    Caps {
        metadata: 6,
        data: 3,
        flushes: 10,
        random_subsets: 1,
    }
}

fn write(offset: u64, len: u64, seed: u64) -> Op {
    Op::Write { offset, len, seed }
}

fn run(w: &Workload) {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = crash_workload(w, caps(), dir.path());
    assert!(summary.faults > 0, "{}: no fault was tried", w.name);
    let dedup_writes = summary
        .writes
        .iter()
        .find(|(k, _)| *k == qcow2_io::WriteKind::DedupTable)
        .map_or(0, |(_, n)| *n);
    assert!(
        dedup_writes > 0,
        "{}: the dedup table was never written",
        w.name
    );
    assert_no_failures(&summary);
}

/// Hits, overwrites and frees, with indexed clusters overwritten the way
/// `mode` says.
fn online_ops(mode: DedupOverwrite) -> Vec<Op> {
    let mib = 1 << 20;
    vec![
        Op::Overwrite(mode),
        write(0, 16 * CS, 1),
        Op::Flush,
        // Hits on private clusters: both move to shared copies.
        write(mib, 16 * CS, 1),
        Op::Flush,
        // Hits on shared clusters.
        write(2 * mib, 16 * CS, 1),
        // A partial write to a shared cluster copies it first.
        write(mib + 100, 5000, 2),
        Op::Flush,
        // An indexed, unshared cluster overwritten (in place or elsewhere).
        write(3 * mib, 4 * CS, 3),
        Op::Flush,
        write(3 * mib + 300, 2000, 4),
        // Frees and shared clusters that keep one referrer.
        Op::Discard {
            offset: 0,
            len: 16 * CS,
        },
        Op::Zero {
            offset: 2 * mib,
            len: 8 * CS,
            unmap: true,
        },
        Op::Flush,
        write(2 * mib, 4 * CS, 3),
        Op::Flush,
    ]
}

#[test]
fn crash_dedup_hits_overwrites_and_frees() {
    run(&Workload::new(
        "dedup-online",
        options(8 << 20, true),
        None,
        online_ops(DedupOverwrite::WriteElsewhere),
    ));
}

#[test]
fn crash_dedup_overwrites_that_clear_the_entry_first() {
    run(&Workload::new(
        "dedup-online-clear-first",
        options(8 << 20, true),
        None,
        online_ops(DedupOverwrite::ClearFirst),
    ));
}

#[test]
fn crash_dedup_table_growth_and_shrink() {
    let mib = 1 << 20;
    // 4 KiB clusters: a level-2 dedup cluster covers 102 clusters, so 2 MiB
    // of new data grows the level-1 table several times.
    let ops = vec![
        write(0, 2 * mib, 5),
        Op::Flush,
        write(2 * mib, 2 * mib, 5),
        Op::Flush,
        Op::Resize(3 * mib),
        Op::Flush,
        write(0, mib, 6),
        Op::Flush,
    ];
    run(&Workload::new(
        "dedup-growth",
        options(4 * mib, true),
        None,
        ops,
    ));
}

#[test]
fn crash_offline_dedup_and_rebuild() {
    let mib = 1 << 20;
    let ops = vec![
        write(0, 32 * CS, 7),
        write(mib, 32 * CS, 7),
        write(2 * mib, 32 * CS, 7),
        write(3 * mib, 8 * CS, 8),
        Op::Flush,
        Op::Dedup { merge: true },
        write(3 * mib + 4 * CS, 8 * CS, 7),
        Op::Flush,
        Op::RebuildDedup,
        write(3 * mib + 16 * CS, 8 * CS, 7),
        Op::Flush,
    ];
    run(&Workload::new(
        "dedup-offline",
        options(4 * mib, false),
        None,
        ops,
    ));
}
