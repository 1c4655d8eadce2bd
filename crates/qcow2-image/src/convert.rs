//! The parallel convert pipeline: copy a source disk into an image.
//!
//! The source is taken in windows of whole clusters. While the calling
//! side writes one window in guest order, the workers read, zero-check and
//! (optionally) compress the next, so at most two windows are in memory:
//! a few MiB per worker whatever the disk size. Windows the source reports
//! as holding no data are skipped without reading.

use qcow2_dedup::is_zero;
use rayon::prelude::*;

use crate::backing::BackingSource;
use crate::convert_repeat::RepeatFinder;
use crate::error::{ImageError, Result};
use crate::image::Image;
use crate::status::ExtentKind;

/// Bytes of source data per worker in one window.
const WINDOW_BYTES_PER_WORKER: u64 = 2 << 20;
/// Plain runs are cut at multiples of this many guest bytes (or of the
/// cluster size, if larger), so the layout of the output does not depend on
/// the window size, hence not on the thread count.
const RUN_ALIGN: u64 = 1 << 20;
/// Source bytes between two write-back hints: the disk then works while
/// the workers compress, instead of all at the final flush.
pub(crate) const WRITEBACK_EVERY: u64 = 32 << 20;

/// How [`Image::convert_from`] copies.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Store clusters compressed (when that saves space) with the image's
    /// codec.
    pub compress: bool,
    /// Worker threads; `None` uses rayon's global pool (one per core).
    pub threads: Option<usize>,
}

/// What a convert wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Clusters stored compressed.
    pub compressed: u64,
    /// Clusters stored uncompressed.
    pub plain: u64,
    /// Clusters skipped because they read as zeros.
    pub zero: u64,
    /// Clusters that share a copy already written (deduplicated image).
    pub deduplicated: u64,
}

/// What became of one cluster of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Zero,
    Plain,
    /// Compressed; the stream is this long.
    Compressed(usize),
    /// Not compressed: its digest matched a stream already written (the
    /// writer confirms the match, or compresses the cluster itself).
    Repeat,
}

/// One window: its clusters' source bytes and what to store for each.
struct Window {
    /// Guest offset of the first cluster.
    start: u64,
    /// Bytes of the disk the window covers (the last window may be short).
    len: u64,
    input: Vec<u8>,
    streams: Vec<Vec<u8>>,
    outcomes: Vec<Outcome>,
    /// Digests of the non-zero clusters when the image deduplicates.
    digests: Vec<Option<qcow2_dedup::Digest>>,
    /// An earlier guest cluster with the same bytes, found instead of a
    /// digest (see [`RepeatFinder`]).
    same_as: Vec<Option<u64>>,
}

impl Window {
    fn new() -> Self {
        Self {
            start: 0,
            len: 0,
            input: Vec::new(),
            streams: Vec::new(),
            outcomes: Vec::new(),
            digests: Vec::new(),
            same_as: Vec::new(),
        }
    }
}

impl Image {
    /// Copies every non-zero cluster of `source` into this image, which
    /// must read as zeros to begin with (a new image without a backing
    /// file) and be at least as large (a raw source of an odd size is
    /// rounded up to 512 bytes by the image; the tail reads as zeros). `progress` gets the bytes done
    /// after each window.
    ///
    /// Reading, zero detection and compression run on worker threads;
    /// writes happen in guest order, so compressed streams pack tightly.
    pub fn convert_from(
        &self,
        source: &dyn BackingSource,
        options: &ConvertOptions,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<ConvertStats> {
        self.convert_with(source, options, progress, true)
    }

    /// [`Image::convert_from`], with the cheap repeat search on or off (off
    /// only in tests, to compare with hashing every cluster).
    fn convert_with(
        &self,
        source: &dyn BackingSource,
        options: &ConvertOptions,
        progress: &mut (dyn FnMut(u64) + Send),
        find_repeats: bool,
    ) -> Result<ConvertStats> {
        self.check_writable()?;
        if source.size() > self.size() {
            return Err(ImageError::InvalidArgument {
                what: "convert source",
                reason: format!(
                    "its size {} exceeds the image's {}",
                    source.size(),
                    self.size()
                ),
            });
        }
        if options.compress && self.codec.is_none() {
            return Err(ImageError::Unsupported {
                what: "compressed writes with this image's codec".into(),
            });
        }
        with_threads(options.threads, || {
            self.run_pipeline(source, options, progress, find_repeats)
        })
    }

    fn run_pipeline(
        &self,
        source: &dyn BackingSource,
        options: &ConvertOptions,
        progress: &mut (dyn FnMut(u64) + Send),
        find_repeats: bool,
    ) -> Result<ConvertStats> {
        let cs = self.cluster_size();
        let size = self.size();
        let workers = rayon::current_num_threads() as u64;
        let clusters_per_window = ((WINDOW_BYTES_PER_WORKER * workers) / cs).max(workers);
        let window_bytes = clusters_per_window * cs;
        let mut stats = ConvertStats::default();
        let share = std::sync::Mutex::new(crate::convert_dedup::CompressedShare::default());
        let repeats = (find_repeats && self.dedup_enabled() && !options.compress)
            .then(|| RepeatFinder::new(size.div_ceil(cs), cs as usize));
        let (mut filling, mut draining) = (Window::new(), Window::new());
        let mut next = 0u64;
        let mut hinted = 0u64;
        loop {
            let more = next < size;
            let start = next;
            next = next.saturating_add(window_bytes).min(size);
            let (filled, written) = rayon::join(
                || {
                    if more {
                        let shared = Shared {
                            compressed: &share,
                            repeats: repeats.as_ref(),
                        };
                        self.fill(source, options, &mut filling, start, next - start, shared)
                    } else {
                        Ok(())
                    }
                },
                || self.drain(&draining, &mut stats, &share),
            );
            written?;
            filled?;
            if draining.len > 0 {
                let done = draining.start + draining.len;
                if done - hinted >= WRITEBACK_EVERY {
                    // A failed hint changes nothing: the final flush still
                    // writes everything.
                    let _ = self.storage.start_writeback();
                    hinted = done;
                }
                self.reclaim_dedup_copies()?;
                progress(done);
            }
            if !more {
                return Ok(stats);
            }
            std::mem::swap(&mut filling, &mut draining);
        }
    }

    /// Reads, zero-checks and compresses the window `[start, start + len)`.
    fn fill(
        &self,
        source: &dyn BackingSource,
        options: &ConvertOptions,
        window: &mut Window,
        start: u64,
        len: u64,
        shared: Shared<'_>,
    ) -> Result<()> {
        let cs = self.cluster_size() as usize;
        let count = (len as usize).div_ceil(cs);
        window.start = start;
        window.len = len;
        window.outcomes.clear();
        window.outcomes.resize(count, Outcome::Zero);
        window.digests.clear();
        window.digests.resize(count, None);
        window.same_as.clear();
        window.same_as.resize(count, None);
        if !has_data(source, start, len)? {
            return Ok(());
        }
        window.input.resize(count * cs, 0);
        // One look-up per window: a qcow2 source takes its metadata lock.
        let source_size = source.size();
        if window.streams.len() < count {
            window.streams.resize_with(count, Vec::new);
        }
        let dedup = self.dedup_enabled();
        window
            .input
            .par_chunks_mut(cs)
            .zip(window.streams.par_iter_mut())
            .zip(window.outcomes.par_iter_mut())
            .zip(window.digests.par_iter_mut())
            .zip(window.same_as.par_iter_mut())
            .enumerate()
            .try_for_each(|(i, ((((chunk, stream), outcome), digest), same_as))| {
                let offset = start + (i * cs) as u64;
                let valid = ((start + len - offset) as usize).min(cs);
                let readable = (source_size.saturating_sub(offset) as usize).min(valid);
                source.read_at(&mut chunk[..readable], offset)?;
                chunk[readable..].fill(0);
                let zero = is_zero(chunk);
                if dedup && !zero {
                    *same_as = match shared.repeats {
                        Some(r) => r.earlier_copy(source, offset / cs as u64, chunk)?,
                        None => None,
                    };
                    if same_as.is_none() {
                        *digest = Some(qcow2_dedup::hash_cluster(chunk));
                    }
                }
                *outcome = if zero {
                    Outcome::Zero
                } else if !options.compress {
                    Outcome::Plain
                } else if digest.is_some_and(|d| lock(shared.compressed).known(&d)) {
                    // Likely a repeat of a stream already written: the
                    // writer decides, so this only saves work.
                    Outcome::Repeat
                } else {
                    match self.compress_cluster(&chunk[..valid], stream)? {
                        Some(n) => Outcome::Compressed(n),
                        None => Outcome::Plain,
                    }
                };
                Ok(())
            })
    }

    /// Writes a filled window in guest order; runs of plain clusters go
    /// out in one write (cut at [`RUN_ALIGN`] boundaries).
    fn drain(
        &self,
        window: &Window,
        stats: &mut ConvertStats,
        share: &std::sync::Mutex<crate::convert_dedup::CompressedShare>,
    ) -> Result<()> {
        let cs = self.cluster_size() as usize;
        let per_run = (RUN_ALIGN / cs as u64).max(1);

        let valid = |i: usize| ((window.len as usize) - i * cs).min(cs);
        let mut i = 0;
        while i < window.outcomes.len() {
            let offset = window.start + (i * cs) as u64;
            match window.outcomes[i] {
                Outcome::Zero => {
                    stats.zero += 1;
                    i += 1;
                }
                Outcome::Compressed(_) | Outcome::Repeat => {
                    let data = &window.input[i * cs..i * cs + valid(i)];
                    let digest = window.digests[i];
                    let found = match &digest {
                        Some(d) => lock(share).find(self, d, data)?,
                        None => None,
                    };
                    let shared = match found {
                        Some(desc) => self.share_compressed(desc, offset)?,
                        None => false,
                    };
                    if shared {
                        stats.deduplicated += 1;
                        i += 1;
                        continue;
                    }
                    let mut own = Vec::new();
                    let stream = match window.outcomes[i] {
                        Outcome::Compressed(n) => Some(&window.streams[i][..n]),
                        _ => self.compress_cluster(data, &mut own)?.map(|n| &own[..n]),
                    };
                    match stream {
                        Some(stream) => {
                            let desc = self.store_compressed_stream(stream, offset)?;
                            if let Some(d) = &digest {
                                lock(share).add(d, desc);
                            }
                            stats.compressed += 1;
                        }
                        None => {
                            let hashed = digest.map(|d| crate::dedup_write::Hashed {
                                first: offset / cs as u64,
                                digests: vec![Some(d)],
                            });
                            self.write_hashed(data, offset, hashed.as_ref())?;
                            stats.plain += 1;
                        }
                    }
                    i += 1;
                }
                Outcome::Plain => {
                    let first = i;
                    let first_cluster = offset / cs as u64;
                    while i < window.outcomes.len()
                        && window.outcomes[i] == Outcome::Plain
                        && (i == first || (first_cluster + (i - first) as u64) % per_run != 0)
                    {
                        i += 1;
                    }
                    let end = (i - 1) * cs + valid(i - 1);
                    let data = &window.input[first * cs..end];
                    if self.dedup_enabled() {
                        let hashed = crate::dedup_write::Hashed {
                            first: first_cluster,
                            digests: self.resolve_repeats(window, first..i)?,
                        };
                        self.write_hashed(data, offset, Some(&hashed))?;
                    } else {
                        self.write_at(data, offset)?;
                    }
                    stats.plain += (i - first) as u64;
                }
            }
        }
        Ok(())
    }

    /// The digests of clusters `range` of a window, each repeat's taken
    /// from the entry of the copy written for its earlier cluster (hashed
    /// here if that has none, say when it is in this very run), so the
    /// writer decides as if every cluster had been hashed.
    fn resolve_repeats(
        &self,
        window: &Window,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<Option<qcow2_dedup::Digest>>> {
        let cs = self.cluster_size() as usize;
        let mut digests = window.digests[range.clone()].to_vec();
        for (i, digest) in range.zip(digests.iter_mut()) {
            if let Some(g) = window.same_as[i] {
                *digest = Some(match self.indexed_digest_of(g)? {
                    Some(d) => d,
                    None => qcow2_dedup::hash_cluster(&window.input[i * cs..(i + 1) * cs]),
                });
            }
        }
        Ok(digests)
    }
}

/// What the workers of one convert share.
#[derive(Clone, Copy)]
struct Shared<'a> {
    compressed: &'a std::sync::Mutex<crate::convert_dedup::CompressedShare>,
    repeats: Option<&'a RepeatFinder>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether any part of the range may hold non-zero bytes.
/// Runs `work` on rayon's global pool, or on a pool of `threads` workers.
pub(crate) fn with_threads<T: Send>(
    threads: Option<usize>,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    match threads {
        None => work(),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| ImageError::InvalidArgument {
                what: "threads",
                reason: e.to_string(),
            })?
            .install(work),
    }
}

pub(crate) fn has_data(source: &dyn BackingSource, start: u64, len: u64) -> Result<bool> {
    Ok(source
        .block_status(start, len)?
        .iter()
        .any(|e| matches!(e.kind, ExtentKind::Data { .. } | ExtentKind::Compressed)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use qcow2_dedup::is_zero;
    use qcow2_io::MemoryStorage;

    use super::ConvertOptions;
    use crate::backing::RawBacking;
    use crate::options::{BackingMode, CreateOptions};
    use crate::Image;

    const CS: usize = 65536;

    /// 20 MiB: a 3 MiB block three times at 64 KiB-aligned offsets (so
    /// repeats lie in other windows, and some in the same run), zeros and
    /// unique clusters between.
    fn repeating_disk() -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        let block = noise(3 << 20);
        let mut disk = vec![0u8; 20 << 20];
        for (i, at) in [0, (7 << 20) + CS, (14 << 20) + 2 * CS]
            .into_iter()
            .enumerate()
        {
            disk[at..at + block.len()].copy_from_slice(&block);
            let unique = noise(5 * CS);
            let tail = at + block.len() + i * CS;
            disk[tail..tail + unique.len()].copy_from_slice(&unique);
        }
        // A repeat inside one run: cluster 50 equals unique cluster 49.
        let (a, b) = disk.split_at_mut(50 * CS);
        b[..CS].copy_from_slice(&a[49 * CS..]);
        disk
    }

    fn convert(disk: &[u8], threads: usize, find_repeats: bool) -> (Vec<u8>, Vec<u8>) {
        let storage = Arc::new(MemoryStorage::new());
        let mut options = CreateOptions::new(disk.len() as u64);
        options.dedup = true;
        let image = Image::create(storage.clone(), &options, BackingMode::Ignore).unwrap();
        let source = RawBacking::new(Arc::new(MemoryStorage::from_bytes(disk.to_vec()))).unwrap();
        let options = ConvertOptions {
            compress: false,
            threads: Some(threads),
        };
        image
            .convert_with(&source, &options, &mut |_| {}, find_repeats)
            .unwrap();
        // 48 block clusters and 15 unique ones, one of them twice.
        assert_eq!(image.dedup_index_stats().map(|s| s.0), Some(62));
        let mut guest = vec![0u8; disk.len()];
        image.read_at(&mut guest, 0).unwrap();
        image.close().unwrap();
        (storage.to_vec(), guest)
    }

    #[test]
    fn finding_repeats_without_hashing_them_changes_no_byte_of_the_output() {
        let disk = repeating_disk();
        let (hashed, guest) = convert(&disk, 2, false);
        assert!(guest == disk, "the hashed convert reads back wrong");
        for threads in [1, 2, 3] {
            let (found, guest) = convert(&disk, threads, true);
            assert!(guest == disk, "{threads} threads: reads back wrong");
            assert!(
                found == hashed,
                "{threads} threads: output differs from hashing every cluster"
            );
        }
    }

    #[test]
    fn zero_detection_sees_every_byte() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[7] = 1;
        assert!(!is_zero(&v));
    }
}
