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

#[path = "crash_checks.rs"]
mod checks;
#[path = "crash_loop.rs"]
mod crash_loop;
#[path = "crash_volatile.rs"]
mod volatile;

pub use checks::*;
pub use crash_loop::*;
pub use volatile::*;

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
    /// How later writes overwrite indexed clusters (no I/O of its own).
    Overwrite(qcow2_image::DedupOverwrite),
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
            Op::Flush | Op::Dedup { .. } | Op::RebuildDedup | Op::Overwrite(_) => None,
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
            Op::Overwrite(mode) => {
                image.set_dedup_overwrite(mode);
                Ok(())
            }
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
