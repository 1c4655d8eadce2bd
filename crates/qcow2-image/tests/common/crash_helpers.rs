//! Crash-test machinery: a storage with a volatile write cache, a model of
//! the guest content, scripted workloads, and the checks run on what
//! survives an injected fault.
//!
//! The crash model has two layers. [`FaultStorage`] decides *when* the
//! machine dies (the Nth write of a kind fails or is torn, or the Nth flush
//! fails). Under it, [`VolatileStorage`] remembers which writes were not yet
//! flushed when that happened, so a test can look at several disks the crash
//! could have left: every unflushed write landed, none did, or a random
//! subset did. A write the engine relies on being durable before another one
//! must therefore be separated from it by a flush, as on real hardware.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use qcow2_image::{BackingMode, BackingSource, CreateOptions, Image, OpenOptions};
use qcow2_io::{Effect, Fault, FaultStorage, MemoryStorage, Storage, Trigger, WriteKind};

use super::Rng;

const SECTOR: u64 = 512;

// ---------------------------------------------------------------------------
// Volatile write cache
// ---------------------------------------------------------------------------

/// A change not yet made durable by a flush.
#[derive(Clone, Debug)]
enum Pending {
    Write {
        offset: u64,
        bytes: Vec<u8>,
        kind: WriteKind,
    },
    SetLen(u64),
}

#[derive(Debug)]
struct VolatileState {
    /// What a flush has made durable.
    durable: Vec<u8>,
    /// What readers see: `durable` plus every pending change, in order.
    current: Vec<u8>,
    pending: Vec<Pending>,
}

fn apply(bytes: &mut Vec<u8>, change: &Pending) {
    match change {
        Pending::Write {
            offset,
            bytes: data,
            ..
        } => {
            if data.is_empty() {
                return;
            }
            let start = *offset as usize;
            let end = start + data.len();
            grow(bytes, end);
            bytes[start..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => {
            bytes.truncate(*len as usize);
            grow(bytes, *len as usize);
        }
    }
}

/// Extends `bytes` with zeros to `len` (`Vec::resize` is slow in debug
/// builds; a zeroed allocation is not).
fn grow(bytes: &mut Vec<u8>, len: usize) {
    if bytes.len() < len {
        bytes.extend_from_slice(&vec![0u8; len - bytes.len()]);
    }
}

/// Which unflushed changes survive the crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Survivors {
    /// Every change reached the disk (the write cache was written through).
    All,
    /// Nothing after the last completed flush reached the disk.
    None,
    /// Each unflushed change independently survived or not (seeded).
    Random(u64),
}

/// In-memory storage that keeps unflushed changes apart, so a test can
/// materialise the disk a crash would leave under several cache behaviours.
#[derive(Debug)]
pub struct VolatileStorage {
    state: Mutex<VolatileState>,
}

impl VolatileStorage {
    /// Storage whose durable content is `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            state: Mutex::new(VolatileState {
                durable: bytes.clone(),
                current: bytes,
                pending: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VolatileState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of changes not yet flushed.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// What the disk holds after a crash now, when `survivors` of the
    /// unflushed changes made it.
    pub fn crash_image(&self, survivors: Survivors) -> Vec<u8> {
        let state = self.lock();
        match survivors {
            Survivors::All => state.current.clone(),
            Survivors::None => state.durable.clone(),
            Survivors::Random(seed) => {
                let mut bytes = state.durable.clone();
                for (change, keep) in state
                    .pending
                    .iter()
                    .zip(random_mask(seed, state.pending.len()))
                {
                    if keep {
                        apply(&mut bytes, change);
                    }
                }
                bytes
            }
        }
    }

    /// The unflushed changes, in order, marked `+` when they survive under
    /// `survivors` and `-` when lost (for failure reports).
    pub fn describe_pending(&self, survivors: Survivors) -> String {
        let state = self.lock();
        let keep: Vec<bool> = match survivors {
            Survivors::All => vec![true; state.pending.len()],
            Survivors::None => vec![false; state.pending.len()],
            Survivors::Random(seed) => random_mask(seed, state.pending.len()),
        };
        let mut text = String::new();
        for (change, keep) in state.pending.iter().zip(keep) {
            let sign = if keep { '+' } else { '-' };
            match change {
                Pending::Write {
                    offset,
                    bytes,
                    kind,
                } => {
                    let _ = write!(text, " {sign}{kind:?}@{offset:#x}/{:#x}", bytes.len());
                }
                Pending::SetLen(len) => {
                    let _ = write!(text, " {sign}set_len({len:#x})");
                }
            }
        }
        text
    }

    fn push(&self, change: Pending) {
        let mut state = self.lock();
        apply(&mut state.current, &change);
        state.pending.push(change);
    }
}

impl Storage for VolatileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let state = self.lock();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let avail = state.current.len().saturating_sub(start).min(buf.len());
        if avail > 0 {
            buf[..avail].copy_from_slice(&state.current[start..start + avail]);
        }
        buf[avail..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, kind: WriteKind) -> io::Result<()> {
        self.push(Pending::Write {
            offset,
            bytes: buf.to_vec(),
            kind,
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut state = self.lock();
        let pending = std::mem::take(&mut state.pending);
        for change in &pending {
            apply(&mut state.durable, change);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.push(Pending::SetLen(len));
        Ok(())
    }
}

fn random_mask(seed: u64, len: usize) -> Vec<bool> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.below(2) == 0).collect()
}

// ---------------------------------------------------------------------------
// Guest content model
// ---------------------------------------------------------------------------

/// Guest content as 512-byte sectors; absent sectors read from `base`
/// (the backing content, zeros past its end).
#[derive(Clone, Debug)]
pub struct Model {
    sectors: HashMap<u64, Vec<u8>>,
    base: Arc<Vec<u8>>,
    pub size: u64,
}

impl Model {
    pub fn new(size: u64, base: Arc<Vec<u8>>) -> Self {
        Self {
            sectors: HashMap::new(),
            base,
            size,
        }
    }

    fn sector(&self, index: u64) -> Vec<u8> {
        if let Some(s) = self.sectors.get(&index) {
            return s.clone();
        }
        let mut s = vec![0u8; SECTOR as usize];
        let start = (index * SECTOR) as usize;
        if start < self.base.len() {
            let end = (start + SECTOR as usize).min(self.base.len());
            s[..end - start].copy_from_slice(&self.base[start..end]);
        }
        s
    }

    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        while pos < offset + len {
            let index = pos / SECTOR;
            let within = (pos % SECTOR) as usize;
            let n = ((SECTOR as usize - within) as u64).min(offset + len - pos) as usize;
            out.extend_from_slice(&self.sector(index)[within..within + n]);
            pos += n as u64;
        }
        out
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let index = pos / SECTOR;
            let within = (pos % SECTOR) as usize;
            let n = (SECTOR as usize - within).min(data.len() - done);
            let mut s = self.sector(index);
            s[within..within + n].copy_from_slice(&data[done..done + n]);
            self.sectors.insert(index, s);
            done += n;
        }
    }

    pub fn zero(&mut self, offset: u64, len: u64) {
        let mut pos = offset;
        while pos < offset + len {
            let n = (1 << 20).min(offset + len - pos);
            self.write(pos, &vec![0u8; n as usize]);
            pos += n;
        }
    }

    /// Resizes; shrinking forgets the content beyond the end (a later growth
    /// reads zeros there: workloads with resize have no backing file).
    pub fn resize(&mut self, size: u64) {
        if size < self.size {
            let first = size.div_ceil(SECTOR);
            self.sectors.retain(|&i, _| i < first);
        }
        self.size = size;
    }
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

/// One step of a workload.
#[derive(Clone, Debug)]
pub enum Op {
    /// Writes `len` pseudo-random bytes (from `seed`) at `offset`.
    Write { offset: u64, len: u64, seed: u64 },
    /// `write_zeroes`.
    Zero { offset: u64, len: u64, unmap: bool },
    /// `discard` of a range whose ends are unit (cluster or subcluster)
    /// aligned, so the whole range then reads as zeros.
    Discard { offset: u64, len: u64 },
    /// `resize` (multiples of the cluster size when shrinking).
    Resize(u64),
    /// `flush`: everything before it must survive any later crash.
    Flush,
    /// Offline deduplication (`amend -o dedup=on`): the table is built and,
    /// with `merge`, duplicate clusters are merged. Content is unchanged.
    Dedup { merge: bool },
    /// Rebuilds the dedup table from scratch: the table is dropped (bit 1
    /// cleared, its clusters freed) and a new one indexes the data.
    RebuildDedup,
}

impl Op {
    /// Guest bytes the step may change.
    fn range(&self, size: u64) -> Option<(u64, u64)> {
        match *self {
            Op::Write { offset, len, .. }
            | Op::Zero { offset, len, .. }
            | Op::Discard { offset, len } => Some((offset, offset + len)),
            Op::Resize(new) if new < size => Some((new, size)),
            Op::Resize(new) => Some((size, new)),
            Op::Flush | Op::Dedup { .. } | Op::RebuildDedup => None,
        }
    }
}

pub fn data_for(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ len);
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// A backing image for a workload: its bytes live in a file (for
/// `qemu-img check`, which opens the chain) and in memory (for the engine).
pub struct Backing {
    pub path: PathBuf,
    pub image: Arc<Image>,
    /// Its guest content.
    pub content: Arc<Vec<u8>>,
}

/// A scripted workload on an image created before any fault is armed.
pub struct Workload {
    pub name: &'static str,
    pub options: CreateOptions,
    pub backing: Option<Backing>,
    pub ops: Vec<Op>,
    /// Where the image starts: a fresh, flushed image.
    pub start: Vec<u8>,
    /// The bytes of each write step (empty for other steps), made once.
    payloads: Vec<Vec<u8>>,
}

impl Workload {
    /// Creates the starting image with the engine.
    pub fn new(
        name: &'static str,
        mut options: CreateOptions,
        backing: Option<Backing>,
        ops: Vec<Op>,
    ) -> Self {
        if let Some(b) = &backing {
            options.backing_file = Some(b.path.to_string_lossy().into_owned());
            options.backing_format = Some("qcow2".into());
            assert!(
                !ops.iter().any(|op| matches!(op, Op::Resize(_))),
                "the model does not follow backing reads across a resize"
            );
        }
        let storage = Arc::new(MemoryStorage::new());
        let mode = backing_mode(&backing);
        Image::create(storage.clone(), &options, mode)
            .expect("create the starting image")
            .close()
            .expect("close the starting image");
        let start = storage.to_vec();
        let payloads = ops
            .iter()
            .map(|op| match *op {
                Op::Write { len, seed, .. } => data_for(len, seed),
                _ => Vec::new(),
            })
            .collect();
        Self {
            name,
            options,
            backing,
            ops,
            start,
            payloads,
        }
    }

    fn base(&self) -> Arc<Vec<u8>> {
        self.backing
            .as_ref()
            .map(|b| b.content.clone())
            .unwrap_or_default()
    }

    /// Guest ranges worth reading back after a crash: everything a step
    /// touched, the backing content, and a little around each.
    fn interesting(&self) -> Vec<(u64, u64)> {
        let mut size = self.options.size;
        let mut ranges = Vec::new();
        let mut max_size = size;
        for op in &self.ops {
            if let Some((a, b)) = op.range(size) {
                // Resizes can span gigabytes: look at their edges only.
                if let Op::Resize(_) = op {
                    ranges.push((a.saturating_sub(4096), a + 4096));
                    ranges.push((b.saturating_sub(4096), b));
                } else {
                    ranges.push((a.saturating_sub(4096), b + 4096));
                }
            }
            if let Op::Resize(new) = op {
                size = *new;
                max_size = max_size.max(size);
            }
        }
        if let Some(b) = &self.backing {
            ranges.push((0, b.content.len() as u64));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in ranges {
            let b = b.min(max_size);
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ if a < b => merged.push((a, b)),
                _ => {}
            }
        }
        merged
    }
}

fn backing_mode(backing: &Option<Backing>) -> BackingMode {
    match backing {
        Some(b) => BackingMode::Provided(b.image.clone() as Arc<dyn BackingSource>),
        None => BackingMode::Ignore,
    }
}

/// Creates a qcow2 backing image at `path` with the engine, fills part of
/// it with a pattern (leaving holes), and opens it in memory.
pub fn make_backing(path: &Path, options: &CreateOptions, seed: u64) -> Backing {
    let storage = Arc::new(MemoryStorage::new());
    let image =
        Image::create(storage.clone(), options, BackingMode::Ignore).expect("create the backing");
    let size = options.size;
    let mut content = vec![0u8; size as usize];
    let chunk = 48 * 1024;
    let mut offset = 0;
    let mut i = 0;
    while offset < size {
        let len = chunk.min(size - offset);
        // Every third chunk stays a hole.
        if i % 3 != 2 {
            let data = data_for(len, seed + i);
            image.write_at(&data, offset).expect("write the backing");
            content[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        }
        offset += len;
        i += 1;
    }
    image.close().expect("close the backing");
    let bytes = storage.to_vec();
    std::fs::write(path, &bytes).expect("write the backing file");
    let reopened = Image::open(
        Arc::new(MemoryStorage::from_bytes(bytes)),
        OpenOptions::default(),
    )
    .expect("reopen the backing");
    Backing {
        path: path.to_path_buf(),
        image: Arc::new(reopened),
        content: Arc::new(content),
    }
}

/// What a run of a workload guarantees about the disk it leaves.
pub struct RunResult {
    /// Guest content at the last successful flush.
    pub stable: Model,
    /// Guest ranges a step after that flush may have changed.
    pub dirty: Vec<(u64, u64)>,
    /// Virtual sizes the disk may have after a crash now.
    pub sizes: Vec<u64>,
    /// The error that stopped the workload, if any.
    pub error: Option<String>,
    /// Whether the storage had died when the last step or `close` returned
    /// success (it may die later, in the flush of `Drop`).
    pub succeeded_dead: bool,
}

/// Opens the workload's image on `storage` and runs its steps, stopping at
/// the first error; then closes the image. `died` tells whether the
/// storage has died.
pub fn run_workload(w: &Workload, storage: Arc<dyn Storage>, died: &dyn Fn() -> bool) -> RunResult {
    let mut current = Model::new(w.options.size.div_ceil(512) * 512, w.base());
    let mut result = RunResult {
        stable: current.clone(),
        dirty: Vec::new(),
        sizes: vec![current.size],
        error: None,
        succeeded_dead: false,
    };
    let image = match Image::open(
        storage,
        OpenOptions {
            writable: true,
            backing: backing_mode(&w.backing),
        },
    ) {
        Ok(image) => image,
        Err(e) => {
            result.error = Some(format!("open: {e}"));
            return result;
        }
    };
    for (i, op) in w.ops.iter().enumerate() {
        if let Some(range) = op.range(current.size) {
            result.dirty.push(range);
        }
        let outcome = match *op {
            Op::Write { offset, .. } => {
                let data = &w.payloads[i];
                current.write(offset, data);
                image.write_at(data, offset)
            }
            Op::Zero { offset, len, unmap } => {
                current.zero(offset, len);
                image.write_zeroes(offset, len, unmap)
            }
            Op::Discard { offset, len } => {
                current.zero(offset, len);
                image.discard(offset, len)
            }
            Op::Resize(size) => {
                current.resize(size);
                result.sizes.push(size);
                image.resize(size)
            }
            Op::Flush => image.flush(),
            Op::Dedup { merge } => image.enable_dedup(merge, &mut |_, _| {}).map(|_| ()),
            Op::RebuildDedup => image
                .disable_dedup()
                .and_then(|()| image.enable_dedup(false, &mut |_, _| {}))
                .map(|_| ()),
        };
        if let Err(e) = outcome {
            result.error = Some(format!("step {i} ({op:?}): {e}"));
            return result;
        }
        if died() {
            result.succeeded_dead = true;
        }
        if let Op::Flush = op {
            result.stable = current.clone();
            result.dirty.clear();
            result.sizes = vec![current.size];
        }
    }
    // `flush` then drop rather than `close`: `close` drops the image, whose
    // `Drop` flushes once more, so a fault seen after `close` returned may
    // have fired in that second flush.
    match image.flush() {
        Ok(()) => {
            result.succeeded_dead |= died();
            result.stable = current.clone();
            result.dirty.clear();
            result.sizes = vec![current.size];
        }
        Err(e) => result.error = Some(format!("close: {e}")),
    }
    result
}

// ---------------------------------------------------------------------------
// Checks on a crashed disk
// ---------------------------------------------------------------------------

/// `qemu-img check --output=json` of `path`: `Ok(leaks)` when there is no
/// corruption and no check error, else a description.
pub fn qemu_check(path: &Path) -> Result<u64, String> {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        format!(
            "qemu-img check failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let get = |key: &str| json.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    if get("corruptions") > 0 || get("check-errors") > 0 {
        let compact: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(format!(
            "qemu-img check: {compact} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(get("leaks"))
}

/// Clusters the dedup table occupies (QEMU sees them as leaks).
pub fn dedup_table_clusters(bytes: &[u8]) -> u64 {
    let storage = MemoryStorage::from_bytes(bytes.to_vec());
    let Ok(area) = qcow2_image::read_header_area(&storage) else {
        return 0;
    };
    let cs = area
        .header
        .geometry()
        .map(|g| g.cluster_size())
        .unwrap_or(512);
    qcow2_dedup::table_ranges(&storage, &area)
        .map(|r| r.iter().map(|(_, len)| len.div_ceil(cs)).sum())
        .unwrap_or(0)
}

/// The dedup table of a crashed image must describe its data exactly
/// (digests match, entries only for live data), so no later hit can return
/// wrong data.
pub fn dedup_check(bytes: &[u8]) -> Result<(), String> {
    let storage = MemoryStorage::from_bytes(bytes.to_vec());
    let area = qcow2_image::read_header_area(&storage).map_err(|e| e.to_string())?;
    if area.dedup().is_none() {
        return Ok(());
    }
    let v = qcow2_dedup::verify(&storage, &area).map_err(|e| format!("dedup verify: {e}"))?;
    let bad: Vec<String> = v
        .findings
        .iter()
        .filter(|f| f.severity == qcow2_dedup::Severity::Corruption)
        .map(|f| format!("{}: {}", f.rule, f.message))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("dedup table: {}", bad.join("; ")))
    }
}

/// Opens the crashed image for writing, writes every payload of the
/// workload again (so dedup hits happen on whatever the crash left) and
/// reads each back: a hit on a wrong entry would return other data.
pub fn rewrite_check(w: &Workload, bytes: Vec<u8>) -> Result<(), String> {
    let image = Image::open(
        Arc::new(MemoryStorage::from_bytes(bytes)),
        OpenOptions {
            writable: true,
            backing: backing_mode(&w.backing),
        },
    )
    .map_err(|e| format!("reopen for writing: {e}"))?;
    for (i, op) in w.ops.iter().enumerate() {
        if let Op::Write { offset, .. } = *op {
            let data = &w.payloads[i];
            if offset + data.len() as u64 > image.size() {
                continue;
            }
            image
                .write_at(data, offset)
                .map_err(|e| format!("rewrite of step {i}: {e}"))?;
            let mut got = vec![0u8; data.len()];
            image
                .read_at(&mut got, offset)
                .map_err(|e| format!("read back of step {i}: {e}"))?;
            if &got != data {
                return Err(format!(
                    "step {i} rewritten after the crash reads back wrong"
                ));
            }
        }
    }
    image
        .close()
        .map_err(|e| format!("close after rewrite: {e}"))
}

/// The engine's own check: no corruption, no check error.
pub fn engine_check(bytes: &[u8]) -> Result<u64, String> {
    let storage = MemoryStorage::from_bytes(bytes.to_vec());
    let hook = qcow2_image::DedupTableReferences;
    match qcow2_alloc::check::check(&storage, &[&hook]) {
        Ok(report) if report.corruptions == 0 && report.check_errors == 0 => Ok(report.leaks),
        Ok(report) => {
            let mut text = format!(
                "engine check: {} corruptions, {} check errors, {} leaks:",
                report.corruptions, report.check_errors, report.leaks
            );
            for f in report.findings.iter().take(8) {
                let _ = write!(text, "\n    {f}");
            }
            Err(text)
        }
        Err(e) => Err(format!("engine check failed: {e}")),
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> Option<(u64, u64)> {
    let start = a.0.max(b.0);
    let end = a.1.min(b.1);
    (start < end).then_some((start, end))
}

/// The parts of `[a, b)` outside every `dirty` range.
fn clean_segments(dirty: &[(u64, u64)], a: u64, b: u64) -> Vec<(u64, u64)> {
    let mut cuts: Vec<(u64, u64)> = dirty.iter().filter_map(|&d| overlaps(d, (a, b))).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = a;
    for (s, e) in cuts {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < b {
        out.push((at, b));
    }
    out
}

/// Opens the crashed disk read-only with the engine and compares every
/// stable byte the workload may have touched with the model.
pub fn verify_content(w: &Workload, bytes: Vec<u8>, run: &RunResult) -> Result<(), String> {
    let image = Image::open(
        Arc::new(MemoryStorage::from_bytes(bytes)),
        OpenOptions {
            writable: false,
            backing: backing_mode(&w.backing),
        },
    )
    .map_err(|e| format!("engine cannot open the crashed image: {e}"))?;
    let size = image.size();
    if !run.sizes.contains(&size) {
        return Err(format!(
            "virtual size {size} after the crash; expected one of {:?}",
            run.sizes
        ));
    }
    let limit = size.min(run.stable.size);
    for (a, b) in w.interesting() {
        let Some((a, b)) = overlaps((a, b), (0, limit)) else {
            continue;
        };
        let mut pos = a;
        while pos < b {
            let n = (1u64 << 20).min(b - pos);
            let mut got = vec![0u8; n as usize];
            image
                .read_at(&mut got, pos)
                .map_err(|e| format!("engine read of {n} bytes at {pos:#x} failed: {e}"))?;
            let want = run.stable.read(pos, n);
            for (s, e) in clean_segments(&run.dirty, pos, pos + n) {
                let (s, e) = ((s - pos) as usize, (e - pos) as usize);
                if got[s..e] != want[s..e] {
                    let i = (s..e).find(|&i| got[i] != want[i]).unwrap_or(s);
                    return Err(format!(
                        "guest byte {:#x} reads {:#04x}, flushed content is {:#04x}",
                        pos + i as u64,
                        got[i],
                        want[i]
                    ));
                }
            }
            pos += n;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The crash loop
// ---------------------------------------------------------------------------

/// How many events of each class to try.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Occurrences per metadata write kind.
    pub metadata: u64,
    /// Occurrences of data writes.
    pub data: u64,
    /// Flushes.
    pub flushes: u64,
    /// Random subsets of the unflushed writes tried per crash, besides
    /// "all landed" and "none landed".
    pub random_subsets: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            metadata: 12,
            data: 4,
            flushes: 16,
            random_subsets: 2,
        }
    }
}

/// Up to `cap` ordinals from 1..=count, spread evenly, first and last
/// included.
pub fn sample(count: u64, cap: u64) -> Vec<u64> {
    if count <= cap {
        return (1..=count).collect();
    }
    let mut out: Vec<u64> = (0..cap)
        .map(|i| 1 + i * (count - 1) / (cap - 1).max(1))
        .collect();
    out.dedup();
    out
}

/// Counts of one workload's clean run.
#[derive(Debug, Default)]
pub struct Summary {
    pub writes: Vec<(WriteKind, u64)>,
    pub flushes: u64,
    pub faults: u64,
    pub disks: u64,
    pub failures: Vec<String>,
    /// Time spent re-running the workload, in `qemu-img check`, in the
    /// engine's check and reading back content.
    pub times: [Duration; 4],
    /// The image the clean run left.
    pub clean_image: Vec<u8>,
}

/// Runs `w` cleanly, then once per sampled event and effect with that
/// event broken, checking every disk the crash may leave. Returns what was
/// tried and every failure found (never panics on an engine failure).
pub fn crash_workload(w: &Workload, caps: Caps, dir: &Path) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();

    // 1. The clean run: counts events and must leave a clean image.
    let clean = Arc::new(FaultStorage::new(VolatileStorage::new(w.start.clone())));
    let run = run_workload(w, clean.clone(), &|| false);
    if let Some(e) = &run.error {
        summary
            .failures
            .push(format!("{}: clean run failed: {e}", w.name));
        return summary;
    }
    for kind in WriteKind::ALL {
        summary.writes.push((kind, clean.writes_of(kind)));
    }
    summary.flushes = clean.flushes();
    let path = dir.join(format!("{}.qcow2", w.name));
    let bytes = clean.inner().crash_image(Survivors::All);
    std::fs::write(&path, &bytes).expect("write image");
    summary.clean_image = bytes.clone();
    match qemu_check(&path) {
        Ok(leaks) if leaks == dedup_table_clusters(&bytes) => {}
        Ok(leaks) => summary
            .failures
            .push(format!("{}: clean run leaks {leaks} clusters", w.name)),
        Err(e) => summary.failures.push(format!("{}: clean run: {e}", w.name)),
    }
    if let Err(e) = verify_content(w, bytes, &run) {
        summary.failures.push(format!("{}: clean run: {e}", w.name));
    }

    // 2. The faults.
    let mut faults = Vec::new();
    for (kind, count) in summary.writes.clone() {
        let cap = if kind.is_metadata() {
            caps.metadata
        } else {
            caps.data
        };
        for n in sample(count, cap) {
            for effect in [Effect::Fail, Effect::Tear] {
                faults.push(Fault::new(Trigger::WriteOf(kind, n), effect));
            }
        }
    }
    for n in sample(summary.flushes, caps.flushes) {
        faults.push(Fault::fail_flush(n));
    }

    for fault in faults {
        summary.faults += 1;
        let storage = Arc::new(FaultStorage::with_fault(
            VolatileStorage::new(w.start.clone()),
            fault,
        ));
        let label = format!("{}: {fault}", w.name);
        let t = Instant::now();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            run_workload(w, storage.clone(), &|| storage.fired())
        }));
        summary.times[0] += t.elapsed();
        let run = match caught {
            Ok(run) => run,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                summary
                    .failures
                    .push(format!("{label}: the engine panicked: {msg}"));
                continue;
            }
        };
        if !storage.fired() {
            summary
                .failures
                .push(format!("{label}: the fault never fired"));
            continue;
        }
        match &run.error {
            None if run.succeeded_dead => summary.failures.push(format!(
                "{label}: a step succeeded although the storage had died"
            )),
            None => {}
            Some(e) if !e.contains("injected storage fault") && !e.contains("dead after") => {
                summary
                    .failures
                    .push(format!("{label}: unexpected error {e}"));
            }
            Some(_) => {}
        }
        let mut variants = vec![Survivors::All];
        if storage.inner().pending() > 0 {
            variants.push(Survivors::None);
            for i in 0..caps.random_subsets {
                variants.push(Survivors::Random(summary.faults * 7919 + i + 1));
            }
        }
        for survivors in variants {
            summary.disks += 1;
            let bytes = storage.inner().crash_image(survivors);
            let label = format!(
                "{label}, unflushed writes surviving: {survivors:?} [{} ]",
                storage.inner().describe_pending(survivors)
            );
            std::fs::write(&path, &bytes).expect("write image");
            let t = Instant::now();
            let qemu = qemu_check(&path);
            summary.times[1] += t.elapsed();
            if let Err(e) = qemu {
                summary.failures.push(format!("{label}: {e}"));
                continue;
            }
            let t = Instant::now();
            let engine = engine_check(&bytes);
            summary.times[2] += t.elapsed();
            if let Err(e) = engine {
                summary.failures.push(format!("{label}: {e}"));
            }
            if let Err(e) = dedup_check(&bytes) {
                summary.failures.push(format!("{label}: {e}"));
            }
            if dedup_table_clusters(&bytes) > 0 {
                if let Err(e) = rewrite_check(w, bytes.clone()) {
                    summary.failures.push(format!("{label}: {e}"));
                }
            }
            let t = Instant::now();
            let content = verify_content(w, bytes, &run);
            summary.times[3] += t.elapsed();
            if let Err(e) = content {
                summary.failures.push(format!("{label}: {e}"));
            }
        }
    }
    eprintln!(
        "crash {}: writes {:?}, flushes {}, {} faults, {} disks checked, {} failures, {:.1?} (run {:.1?}, qemu-img {:.1?}, check {:.1?}, read {:.1?})",
        w.name,
        summary
            .writes
            .iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>(),
        summary.flushes,
        summary.faults,
        summary.disks,
        summary.failures.len(),
        started.elapsed(),
        summary.times[0],
        summary.times[1],
        summary.times[2],
        summary.times[3],
    );
    summary
}

/// Panics listing the failures of `summary`, if any.
pub fn assert_no_failures(summary: &Summary) {
    if summary.failures.is_empty() {
        return;
    }
    let mut text = format!("{} crash failures:\n", summary.failures.len());
    for f in summary.failures.iter().take(40) {
        let _ = writeln!(text, "  {f}");
    }
    panic!("{text}");
}
