//! The cold-metadata part of `bench engine`: random-like 4 KiB reads over
//! a large sparse image whose L2 tables do not fit either engine's cache,
//! so most requests first load an L2 table; ours with 1 and 2 threads
//! against `qemu-img bench` at depth 1 and 2, on the same request sequence.

use qcow2_image::CreateOptions;

use super::writes::{offset_of, timed_requests};
use super::*;

/// 1 TiB virtual, 64 KiB clusters: 2048 L2 tables of 64 KiB (128 MiB),
/// four times the 32 MiB L2 cache of ours and of QEMU (its Linux default).
const SIZE: u64 = 1 << 40;
const CLUSTER: u64 = 64 * 1024;
/// One data cluster every this many bytes: every L2 table is allocated.
const DATA_EVERY: u64 = 64 << 20;
const BS: u64 = 4096;
/// Blocks between two requests: a prime above the blocks one L2 table
/// maps (131072), so consecutive requests use different tables and a pass
/// over the disk (about 900 requests) meets more tables than either cache
/// holds before it comes back to one; below the 2 GiB step `qemu-img
/// bench` accepts.
const STEP_BLOCKS: u64 = 300_007;
const IMAGE: &str = "cold-metadata.qcow2";

pub(crate) struct ColdRow {
    pub(crate) ops: u64,
    /// Ours with 1 and 2 threads, seconds.
    pub(crate) ours: [f64; 2],
    /// `qemu-img bench` at depth 1 and 2, seconds.
    pub(crate) qemu: [f64; 2],
}

/// The byte the data cluster at `offset` holds.
fn data_byte(offset: u64) -> u8 {
    (offset / DATA_EVERY % 251) as u8 + 1
}

/// Makes the sparse image once (cached with the corpus).
fn ensure_image(work: &Path) -> Result<PathBuf, String> {
    let path = work.join(IMAGE);
    if path.exists() {
        return Ok(path);
    }
    println!("cold reads: writing a {} GiB sparse image", SIZE >> 30);
    let partial = work.join(format!("{IMAGE}.part"));
    let mut options = CreateOptions::new(SIZE);
    options.cluster_size = CLUSTER;
    let image = Image::create_path(&partial, &options)
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    for k in 0..SIZE / DATA_EVERY {
        let offset = k * DATA_EVERY;
        image
            .write_at(&vec![data_byte(offset); CLUSTER as usize], offset)
            .map_err(|e| format!("write at {offset}: {e}"))?;
    }
    image
        .close()
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    fs::rename(&partial, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// What a read at `offset` must return: the data cluster's byte, or zeros.
fn expected(offset: u64) -> u8 {
    if offset % DATA_EVERY < CLUSTER {
        data_byte(offset)
    } else {
        0
    }
}

fn ours(image: &Image, ops: u64, threads: u64) -> Result<f64, String> {
    let step = STEP_BLOCKS * BS;
    let read = |buf: &mut [u8], i: u64| {
        let offset = offset_of(i, step, BS, SIZE);
        image
            .read_at(buf, offset)
            .map_err(|e| format!("read at {offset}: {e}"))?;
        std::hint::black_box(&buf);
        Ok(())
    };
    timed_requests(&read, BS, ops, threads)
}

/// Our reads return what the image holds, at every data cluster of the
/// sequence's first requests and in the holes between.
fn verify(image: &Image, ops: u64) -> Result<(), String> {
    let mut buf = vec![0u8; BS as usize];
    let step = STEP_BLOCKS * BS;
    let data = (0..SIZE / DATA_EVERY).step_by(97).map(|k| k * DATA_EVERY);
    let sequence = (0..ops.min(5000)).map(|i| offset_of(i, step, BS, SIZE));
    for offset in data.chain(sequence) {
        image
            .read_at(&mut buf, offset)
            .map_err(|e| format!("read at {offset}: {e}"))?;
        if buf.iter().any(|&b| b != expected(offset)) {
            return Err(format!("the read at {offset} returned other bytes"));
        }
    }
    Ok(())
}

/// Measures the row; `quick` makes an eighth of the requests.
pub(crate) fn cold_part(work: &Path, reps: usize, quick: bool) -> Result<ColdRow, String> {
    let path = ensure_image(work)?;
    warm(&path)?;
    let ops = if quick { 25_000 } else { 200_000 };
    let image = Image::open_path(&path, false).map_err(|e| format!("{}: {e}", path.display()))?;
    verify(&image, ops)?;
    let mut row = ColdRow {
        ops,
        ours: [0.0; 2],
        qemu: [0.0; 2],
    };
    for (k, threads) in [1u64, 2].into_iter().enumerate() {
        // A fresh open each run: every run starts with an empty cache.
        row.ours[k] = best_of(reps, || {
            let image =
                Image::open_path(&path, false).map_err(|e| format!("{}: {e}", path.display()))?;
            ours(&image, ops, threads)
        })?;
        row.qemu[k] = best_of(reps, || {
            qemu_reads(&path, BS, ops, threads as u32, STEP_BLOCKS * BS)
        })?;
    }
    eprintln!(
        "  cold reads: ours 1T {}, 2T {}; qemu-img -d1 {}, -d2 {}",
        fmt_rate(BS, ops, row.ours[0]),
        fmt_rate(BS, ops, row.ours[1]),
        fmt_rate(BS, ops, row.qemu[0]),
        fmt_rate(BS, ops, row.qemu[1]),
    );
    Ok(row)
}

pub(crate) fn cold_section(row: &ColdRow, machine: &Machine, reps: usize) -> String {
    let vs = [row.qemu[0] / row.ours[0], row.qemu[1] / row.ours[1]];
    format!(
        "## Cold-metadata reads\n\n\
         Random-like 4 KiB reads over a large sparse image whose L2 tables do not fit the \
         cache, measured in one run of `cargo run --release -p xtask -- bench engine` \
         (alone: `--only cold --doc yes`).\n\n\
         - **Machine:** {cpus} CPUs ({cpu}), Linux {kernel}, {rustc}, release build, best of \
         {reps}; {qemu}.\n\
         - **Date:** {date}.\n\
         - **Image:** {tib} TiB virtual, 64 KiB clusters, one 64 KiB data cluster every {every} \
         MiB, written by our engine: all {tables} L2 tables are allocated ({l2_mib} MiB of \
         them), four times the 32 MiB L2 cache of ours and of QEMU (its Linux default, \
         which `qemu-img bench` uses). The file sits in the page cache.\n\
         - **Requests:** {ops} reads of 4 KiB, request i at block i x {step} (wrapping), a \
         prime larger than the 131072 blocks one L2 table maps, so each request needs another \
         table than the last, and one pass over the disk (about 900 requests) meets more \
         tables than either cache holds before it comes back to one: nearly every request \
         loads an L2 table in both engines. Ours: `Image::read_at` \
         on a fresh open (empty cache) with 1 and 2 threads (thread t makes requests t, t + 2, \
         ...); qemu-img: `qemu-img bench -f qcow2 -t writeback -i threads -d D -c {ops} -s \
         4096 -S {step_bytes}` with D = 1 and 2. Our reads are checked against the data before \
         the runs.\n\n\
         | ops | ours, 1 thread | ours, 2 threads | ours 2T/1T | qemu-img bench -d 1 | \
         qemu-img bench -d 2 | ours 1T / qemu -d 1 | ours 2T / qemu -d 2 |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {ops} | {o1} | {o2} | {scaling:.2}x | {q1} | {q2} | {v1:.2} | {v2:.2} |\n\n\
         ### Goals\n\n\
         - cold-metadata random 4 KiB reads against qemu-img bench at the same depth: \
         {v1:.2}x at depth 1, {v2:.2}x at depth 2 (goal >= 1.00x): {verdict}\n",
        cpus = machine.cpus,
        cpu = machine.cpu_model,
        kernel = machine.kernel,
        rustc = machine.rustc,
        qemu = machine.qemu,
        date = machine.date,
        tib = SIZE >> 40,
        every = DATA_EVERY >> 20,
        tables = SIZE / (CLUSTER * (CLUSTER / 8)),
        l2_mib = (SIZE / (CLUSTER / 8)) >> 20,
        ops = row.ops,
        step = STEP_BLOCKS,
        step_bytes = STEP_BLOCKS * BS,
        o1 = fmt_rate(BS, row.ops, row.ours[0]),
        o2 = fmt_rate(BS, row.ops, row.ours[1]),
        scaling = row.ours[0] / row.ours[1],
        q1 = fmt_rate(BS, row.ops, row.qemu[0]),
        q2 = fmt_rate(BS, row.ops, row.qemu[1]),
        v1 = vs[0],
        v2 = vs[1],
        verdict = verdict(vs[0] >= 1.0 && vs[1] >= 1.0),
    )
}
