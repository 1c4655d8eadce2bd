//! Transient I/O errors (QEMU's iotest 026 with blkdebug `once=on`, and its
//! `l2_load` and `refblock_load` events): one read, write or flush fails
//! and the same open image goes on being used. The operation that met the
//! error fails with it; what came before it stays written, the operations
//! after a read error succeed, and after the final flush the image has
//! leaks at most (our check and `qemu-img check`) and reads back what the
//! successful operations wrote, with the failed operation's range holding
//! its old or its new bytes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::Rng;
use qcow2_image::{BackingMode, CreateOptions, Image, ImageError, OpenOptions};
use qcow2_io::{Effect, Fault, FaultStorage, MemoryStorage, Storage, Trigger, WriteKind};

const CS: u64 = 4096;
const SIZE: u64 = 16 << 20;
/// Guest bytes one L2 table maps with 4 KiB clusters.
const TABLE_SPAN: u64 = 2 << 20;

#[derive(Clone, Debug)]
enum Op {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64, seed: u8 },
    Compressed { cluster: u64, seed: u8 },
    Zero { offset: u64, len: u64 },
    Discard { offset: u64, len: u64 },
    Flush,
}

impl Op {
    /// The guest range the operation changes, and its bytes after it.
    fn effect(&self) -> Option<(u64, Vec<u8>)> {
        match *self {
            Op::Write { offset, len, seed } => Some((offset, pattern(len, seed))),
            Op::Compressed { cluster, seed } => Some((cluster * CS, pattern(CS, seed))),
            Op::Zero { offset, len } | Op::Discard { offset, len } => {
                Some((offset, vec![0; len as usize]))
            }
            Op::Read { .. } | Op::Flush => None,
        }
    }

    /// Runs the operation; a read returns what it read.
    fn run(&self, image: &Image) -> Result<Option<Vec<u8>>, ImageError> {
        match *self {
            Op::Read { offset, len } => {
                let mut buf = vec![0u8; len as usize];
                image.read_at(&mut buf, offset)?;
                return Ok(Some(buf));
            }
            Op::Write { offset, len, seed } => image.write_at(&pattern(len, seed), offset)?,
            Op::Compressed { cluster, seed } => {
                image.write_compressed(&pattern(CS, seed), cluster * CS)?
            }
            Op::Zero { offset, len } => image.write_zeroes(offset, len, false)?,
            Op::Discard { offset, len } => image.discard(offset, len)?,
            Op::Flush => image.flush()?,
        }
        Ok(None)
    }
}

/// Text-like bytes, so compressed writes compress.
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i / 7 + u64::from(seed)) % 23) as u8)
        .collect()
}

/// An image with data under every L2 table and a compressed cluster,
/// flushed and closed: every table and refcount block must be loaded again.
/// With `dedup`, writes are deduplicated (the seed extension).
fn prepared(dedup: bool) -> Vec<u8> {
    let storage = Arc::new(MemoryStorage::new());
    let mut options = CreateOptions::new(SIZE);
    options.cluster_size = CS;
    options.dedup = dedup;
    let image = Image::create(storage.clone(), &options, BackingMode::Ignore).unwrap();
    for t in 0..SIZE / TABLE_SPAN {
        image
            .write_at(&pattern(64 << 10, t as u8), t * TABLE_SPAN)
            .unwrap();
    }
    image
        .write_compressed(&pattern(CS, 99), 3 * TABLE_SPAN + (512 << 10))
        .unwrap();
    image.close().unwrap();
    storage.to_vec()
}

/// The guest disk `prepared` holds.
fn prepared_disk() -> Vec<u8> {
    let mut disk = vec![0u8; SIZE as usize];
    for t in 0..SIZE / TABLE_SPAN {
        let at = (t * TABLE_SPAN) as usize;
        disk[at..at + (64 << 10)].copy_from_slice(&pattern(64 << 10, t as u8));
    }
    let at = (3 * TABLE_SPAN + (512 << 10)) as usize;
    disk[at..at + CS as usize].copy_from_slice(&pattern(CS, 99));
    disk
}

/// Operations over every table: in-place and fresh writes, partial
/// clusters, a write over the compressed cluster, compressed writes, zero
/// writes, discards and reads, with flushes between. Some whole-cluster
/// writes repeat one content in every table, so a deduplicated image shares
/// clusters that later writes copy and release.
fn workload() -> Vec<Op> {
    let mut rng = Rng::new(26);
    let mut ops = Vec::new();
    for step in 0..40u64 {
        let table = rng.below(SIZE / TABLE_SPAN);
        let base = table * TABLE_SPAN;
        let op = match step % 8 {
            0 => Op::Read {
                offset: base + rng.below(96 << 10),
                len: 1 + rng.below(16 << 10),
            },
            1 => Op::Write {
                offset: base + rng.below(60 << 10),
                len: 1 + rng.below(4 << 10),
                seed: step as u8,
            },
            2 => Op::Write {
                offset: base + (1 << 20) + rng.below(64) * CS + rng.below(CS),
                len: 1 + rng.below(3 * CS),
                seed: step as u8,
            },
            3 => Op::Compressed {
                cluster: (base + (1536 << 10)) / CS + rng.below(64),
                seed: step as u8,
            },
            4 => Op::Zero {
                offset: base + rng.below(16) * CS,
                len: (1 + rng.below(4)) * CS,
            },
            5 => Op::Discard {
                offset: base + (16 + rng.below(8)) * CS,
                len: CS,
            },
            6 if step == 6 => Op::Write {
                offset: 3 * TABLE_SPAN + (512 << 10) + 100,
                len: 300,
                seed: 7,
            },
            // Over the clusters zero writes, discards and partial writes
            // of other steps touch.
            6 | 7 if step % 3 == 0 => Op::Write {
                offset: base + 8 * CS,
                len: 12 * CS,
                seed: 1,
            },
            _ => Op::Flush,
        };
        ops.push(op);
    }
    ops.push(Op::Flush);
    ops
}

fn writable() -> OpenOptions {
    OpenOptions {
        writable: true,
        backing: BackingMode::Ignore,
    }
}

/// What a faulted run must read back: `disk` where nothing failed, and for
/// the bytes an uncertain operation touched, any of the values in `maybe`
/// (the bytes before it and what it wrote).
struct Expected {
    disk: Vec<u8>,
    maybe: HashMap<u64, Vec<u8>>,
}

impl Expected {
    /// Whether `got` is what the guest range at `at` may read.
    fn allows(&self, at: u64, got: &[u8]) -> bool {
        got.iter().enumerate().all(|(k, &g)| {
            let pos = at + k as u64;
            g == self.disk[pos as usize] || self.maybe.get(&pos).is_some_and(|v| v.contains(&g))
        })
    }

    /// A write that succeeded: its bytes are certain from now on.
    fn write(&mut self, at: u64, new: &[u8]) {
        for (k, &b) in new.iter().enumerate() {
            let pos = at + k as u64;
            self.disk[pos as usize] = b;
            self.maybe.remove(&pos);
        }
    }

    /// A write that may or may not have landed, byte by byte.
    fn uncertain(&mut self, at: u64, old: &[u8], new: &[u8]) {
        for (k, (&o, &n)) in old.iter().zip(new).enumerate() {
            let values = self.maybe.entry(at + k as u64).or_default();
            values.extend([o, n]);
        }
    }
}

type Faulted = Arc<FaultStorage<MemoryStorage>>;

/// Runs the workload with `fault` armed after the open.
///
/// Only the operation that meets the fault may fail with it. After a read
/// fault every later operation must succeed. After a write or flush fault
/// the image may refuse everything that changes it (it is poisoned), and
/// what was written since the last flush that succeeded may or may not be
/// there. Every read returns what it may.
fn run_with(bytes: &[u8], fault: Option<Fault>) -> Result<(Faulted, Expected), String> {
    let storage = Arc::new(FaultStorage::new(MemoryStorage::from_bytes(bytes.to_vec())));
    let image = Image::open(storage.clone() as Arc<dyn Storage>, writable()).unwrap();
    if let Some(f) = fault {
        storage.arm(f);
    }
    let read_fault = matches!(fault.map(|f| f.trigger), Some(Trigger::Read(_)));
    let mut want = Expected {
        disk: prepared_disk(),
        maybe: HashMap::new(),
    };
    // Writes since the last flush that succeeded: (offset, old, new).
    let mut unflushed: Vec<(u64, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut poisoned = false;
    for (i, op) in workload().iter().enumerate() {
        let fired_before = storage.fired();
        let effect = op.effect().map(|(at, new)| {
            let old = want.disk[at as usize..at as usize + new.len()].to_vec();
            (at, old, new)
        });
        match op.run(&image) {
            Ok(read) => {
                if let (Some(buf), Op::Read { offset, .. }) = (read, op) {
                    if !want.allows(*offset, &buf) {
                        return Err(format!("op {i} {op:?} read other bytes"));
                    }
                }
                if let Some((at, old, new)) = effect {
                    if poisoned {
                        return Err(format!("op {i} {op:?} changed a poisoned image"));
                    }
                    want.write(at, &new);
                    unflushed.push((at, old, new));
                }
                if matches!(op, Op::Flush) {
                    unflushed.clear();
                }
            }
            Err(e) if !fired_before && storage.fired() => {
                if let Some((at, old, new)) = &effect {
                    want.uncertain(*at, old, new);
                }
                if !read_fault {
                    poisoned = true;
                    for (at, old, new) in unflushed.drain(..) {
                        want.uncertain(at, &old, &new);
                    }
                }
                eprintln!("op {i} {op:?} met the fault: {e}");
            }
            Err(ImageError::Poisoned) if poisoned => {}
            Err(e) => return Err(format!("op {i} {op:?} failed: {e}")),
        }
    }
    let fired_before = storage.fired();
    match image.close() {
        Ok(()) => {}
        Err(_) if poisoned => {}
        Err(_) if !fired_before && storage.fired() => {
            // The fault hit the final flush.
            for (at, old, new) in unflushed.drain(..) {
                want.uncertain(at, &old, &new);
            }
        }
        Err(e) => return Err(format!("close: {e}")),
    }
    Ok((storage, want))
}

/// The image left in `storage` has leaks at most and reads back `want`.
fn verify(storage: &FaultStorage<MemoryStorage>, want: &Expected, what: &str) {
    let bytes = storage.inner().to_vec();
    let report = qcow2_alloc::check::check(&MemoryStorage::from_bytes(bytes.clone()), &[])
        .unwrap_or_else(|e| panic!("{what}: check: {e}"));
    assert_eq!(report.corruptions, 0, "{what}: {:#?}", report.findings);
    // qemu-img check: clean (0) or leaks only (3).
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let qemu = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(file.path())
        .output()
        .expect("run qemu-img check");
    assert!(
        matches!(qemu.status.code(), Some(0 | 3)),
        "{what}: qemu-img check: {}",
        String::from_utf8_lossy(&qemu.stdout)
    );
    let memory = MemoryStorage::from_bytes(bytes);
    let area = qcow2_image::read_header_area(&memory).unwrap();
    if area.dedup().is_some() {
        // DD-LIVE and DD-DIGEST: a failed flush must not leave an entry
        // for a freed cluster or for other data.
        let v = qcow2_dedup::verify(&memory, &area).unwrap();
        let bad: Vec<_> = v
            .findings
            .iter()
            .filter(|f| f.severity == qcow2_dedup::Severity::Corruption)
            .collect();
        assert!(bad.is_empty(), "{what}: dedup table: {bad:#?}");
    }
    let image = Image::open(Arc::new(memory), OpenOptions::default()).unwrap();
    let mut got = vec![0u8; SIZE as usize];
    image.read_at(&mut got, 0).unwrap();
    assert!(
        want.allows(0, &got),
        "{what}: the disk differs from what was written"
    );
}

#[test]
fn transient_read_errors_fail_one_operation() {
    read_faults(false);
}

#[test]
fn transient_read_errors_on_a_deduplicated_image() {
    read_faults(true);
}

fn read_faults(dedup: bool) {
    let bytes = prepared(dedup);
    let (clean, want) = run_with(&bytes, None).unwrap();
    verify(&clean, &want, "no fault");
    let reads = clean.reads();
    assert!(reads > 10, "the workload reads tables and data: {reads}");
    let step = (reads / 60).max(1);
    let mut fired = 0;
    for n in (1..=reads).step_by(step as usize) {
        let fault = Fault::fail_read(n).once();
        let (storage, want) =
            run_with(&bytes, Some(fault)).unwrap_or_else(|e| panic!("{fault}: {e}"));
        fired += u64::from(storage.fired());
        verify(&storage, &want, &fault.to_string());
    }
    // The open's own reads came before the fault was armed.
    assert!(fired > 8, "{fired} of {reads} read faults fired");
}

#[test]
fn transient_write_and_flush_errors_leave_leaks_at_most() {
    write_faults(false);
}

#[test]
fn transient_write_and_flush_errors_on_a_deduplicated_image() {
    write_faults(true);
}

fn write_faults(dedup: bool) {
    let bytes = prepared(dedup);
    let (clean, _) = run_with(&bytes, None).unwrap();
    let mut faults = Vec::new();
    for kind in WriteKind::ALL {
        // The clean run's writes of each kind, a few of each.
        let n = clean.writes_of(kind);
        for k in (1..=n).step_by((n / 6).max(1) as usize) {
            for effect in [Effect::Fail, Effect::Tear] {
                faults.push(Fault::new(Trigger::WriteOf(kind, k), effect).once());
            }
        }
    }
    for k in 1..=clean.flushes() {
        faults.push(Fault::fail_flush(k).once());
    }
    assert!(faults.len() > 30, "{} faults", faults.len());
    let mut fired = 0;
    for fault in &faults {
        let (storage, want) =
            run_with(&bytes, Some(*fault)).unwrap_or_else(|e| panic!("{fault}: {e}"));
        fired += usize::from(storage.fired());
        verify(&storage, &want, &fault.to_string());
    }
    assert_eq!(
        fired,
        faults.len(),
        "every fault fires in the same workload"
    );
}

/// A read error inside the flush step that clears the dedup entries of
/// dying clusters: the next flush must still clear every one of them, or
/// the table keeps an entry for a freed cluster (DD-LIVE).
#[test]
fn a_read_fault_while_clearing_dying_dedup_entries_loses_none() {
    // Clusters far apart, so their entries sit in several level-2 dedup
    // clusters that a fresh open reads on demand.
    let clusters: Vec<u64> = (0..8).map(|k| k * (SIZE / CS / 8) + 5).collect();
    let storage = Arc::new(MemoryStorage::new());
    let mut options = CreateOptions::new(SIZE);
    options.cluster_size = CS;
    options.dedup = true;
    let image = Image::create(storage.clone(), &options, BackingMode::Ignore).unwrap();
    for (k, &c) in clusters.iter().enumerate() {
        image.write_at(&pattern(CS, k as u8), c * CS).unwrap();
    }
    image.close().unwrap();
    let bytes = storage.to_vec();
    let discard_all = |image: &Image| {
        for &c in &clusters {
            image.discard(c * CS, CS).unwrap();
        }
    };
    let clean = Arc::new(FaultStorage::new(MemoryStorage::from_bytes(bytes.clone())));
    let image = Image::open(clean.clone() as Arc<dyn Storage>, writable()).unwrap();
    discard_all(&image);
    let before = clean.reads();
    image.close().unwrap();
    let flush_reads = clean.reads() - before;
    assert!(flush_reads > 0, "the flush reads dedup table clusters");
    let mut fired = 0;
    for n in 1..=flush_reads {
        let storage = Arc::new(FaultStorage::new(MemoryStorage::from_bytes(bytes.clone())));
        let image = Image::open(storage.clone() as Arc<dyn Storage>, writable()).unwrap();
        discard_all(&image);
        storage.arm(Fault::fail_read(n).once());
        let first = image.flush();
        fired += u64::from(storage.fired());
        assert_eq!(first.is_err(), storage.fired(), "read {n}: {first:?}");
        image
            .close()
            .unwrap_or_else(|e| panic!("read {n}: the flush after the fault: {e}"));
        let memory = MemoryStorage::from_bytes(storage.inner().to_vec());
        let area = qcow2_image::read_header_area(&memory).unwrap();
        let v = qcow2_dedup::verify(&memory, &area).unwrap();
        assert!(
            v.findings
                .iter()
                .all(|f| f.severity != qcow2_dedup::Severity::Corruption),
            "read {n}: {:#?}",
            v.findings
        );
        assert_eq!(
            v.stats.indexed_clusters, 0,
            "read {n}: entries of freed clusters"
        );
    }
    assert_eq!(
        fired, flush_reads,
        "every read of the flush was failed once"
    );
}
