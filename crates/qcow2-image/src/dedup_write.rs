//! The image-level side of deduplication: hashing outside the locks,
//! enabling and dropping the table, the offline pass that indexes (and
//! optionally merges) the clusters already in an image.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use qcow2_alloc::check::{CheckResult, ExtraReferences, ImageView, References};
use qcow2_dedup::{hash_cluster, is_zero, DedupTable, Digest, DigestIndex};
use qcow2_format::rules;
use qcow2_format::{ClusterIndex, HostOffset};
use qcow2_io::Storage;
use rayon::prelude::*;

use crate::dedup::{set_dedup_extension, DedupState, TableAlloc};
use crate::error::{ImageError, Result};
use crate::image::Image;
use crate::meta::{sync, Meta};

/// Guest clusters hashed per batch of the offline pass.
const PASS_BATCH: u64 = 512;
/// Batches between two flushes of the offline pass (crash safety points).
const PASS_FLUSH_EVERY: u64 = 16;
/// Clusters whose last reference a hit dropped that may wait for a flush
/// at least; more wait as the image grows (1/64 of its clusters), so flushes
/// stay rare on large images while few freed copies are left behind.
const MIN_PENDING_FREES: u64 = 32;

/// Digests of the whole clusters a write covers, computed before any lock
/// is taken.
#[derive(Clone, Debug)]
pub(crate) struct Hashed {
    /// Guest cluster of the first digest.
    pub first: u64,
    /// `None` for an all-zero cluster.
    pub digests: Vec<Option<Digest>>,
}

impl Hashed {
    /// The digest of guest cluster `cluster`: outer `None` when the write
    /// does not cover it whole.
    pub fn get(&self, cluster: u64) -> Option<Option<Digest>> {
        let i = cluster.checked_sub(self.first)?;
        self.digests.get(i as usize).copied()
    }
}

/// A cluster written by copy on write, to hash once the locks are gone.
#[derive(Debug)]
pub(crate) struct CowResult {
    pub guest: u64,
    pub host: HostOffset,
    pub data: Vec<u8>,
}

/// A guest cluster, its host offset, its data and digest (none if zero).
type ReadCluster = (u64, HostOffset, Vec<u8>, Option<Digest>);

/// What the offline dedup pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupPassReport {
    /// Data clusters looked at.
    pub clusters: u64,
    /// Guest clusters now sharing another cluster's copy.
    pub merged: u64,
    /// Clusters newly indexed.
    pub indexed: u64,
}

/// Counts the dedup table's clusters for a refcount check or repair
/// (without it they would be leaks, and `check -r leaks` would free them).
#[derive(Clone, Copy, Debug, Default)]
pub struct DedupTableReferences;

impl ExtraReferences for DedupTableReferences {
    fn name(&self) -> &str {
        "dedup table"
    }

    fn add_references(
        &self,
        image: &ImageView<'_>,
        refs: &mut References<'_, '_>,
    ) -> CheckResult<()> {
        let ranges = qcow2_dedup::table_ranges(image.storage, image.area).map_err(|e| {
            qcow2_alloc::check::CheckError::Extra {
                name: "dedup table".into(),
                message: e.to_string(),
            }
        })?;
        for (offset, len) in ranges {
            refs.add(offset, len, "dedup table", rules::DD_REFCOUNT);
        }
        Ok(())
    }
}

/// Loads the dedup table of a deduplicated image and builds its index on
/// all cores.
pub(crate) fn load_state(storage: &dyn Storage, meta: &Meta) -> Result<DedupState> {
    let ext = *meta.area.dedup().ok_or_else(|| ImageError::Corrupt {
        rule: Some(rules::DD_PRESENCE),
        offset: 0,
        reason: "bit 1 is set but there is no dedup extension".into(),
    })?;
    let file_len = storage
        .len()
        .map_err(|e| ImageError::io("reading the file length", 0, e))?;
    let table = DedupTable::load(storage, ext, meta.layout.geometry, file_len)?;
    let entries = table.entries(storage)?;
    let index = DigestIndex::build(entries.into_iter().map(|(p, e)| (e.hash, p)));
    Ok(DedupState {
        table,
        index,
        verify: false,
        pending: Default::default(),
        unwritten: Default::default(),
    })
}

/// How a write to an indexed cluster that only one guest cluster maps is
/// kept from leaving a dedup entry that disagrees with the data after a
/// crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DedupOverwrite {
    /// The new data goes to a fresh cluster and the old one is freed at the
    /// next flush (its entry cleared durably before its refcount drops):
    /// no flush on the write path. Faster in `cargo xtask bench dedup`.
    #[default]
    WriteElsewhere,
    /// The entry is cleared and made durable (a flush of the dedup table),
    /// then the data is written in place: no new cluster, no fragmentation,
    /// but flushes on every first overwrite of an indexed cluster.
    ClearFirst,
}

impl Image {
    /// Chooses how writes overwrite indexed clusters (see
    /// [`DedupOverwrite`]).
    pub fn set_dedup_overwrite(&self, mode: DedupOverwrite) {
        self.lock_meta().dedup_overwrite = mode;
    }

    /// Whether writes are deduplicated (a deduplicated image open for
    /// writing).
    pub fn dedup_enabled(&self) -> bool {
        self.dedup_on.load(Ordering::Acquire)
    }

    /// Compares the bytes of every dedup hit before sharing a cluster
    /// (`dedup_verify=on`), instead of trusting the SHA-256 digest alone.
    pub fn set_dedup_verify(&self, verify: bool) {
        if let Some(state) = self.lock_meta().dedup.as_mut() {
            state.verify = verify;
        }
    }

    /// Indexed clusters and the bytes the in-memory index takes, when
    /// dedup is on.
    pub fn dedup_index_stats(&self) -> Option<(usize, usize)> {
        self.lock_meta()
            .dedup
            .as_ref()
            .map(|s| (s.index.len(), s.index.memory_bytes()))
    }

    /// Digests of the whole clusters in `data` (written at `offset`), or
    /// `None` when dedup is off.
    pub(crate) fn hash_for_write(&self, data: &[u8], offset: u64) -> Option<Hashed> {
        if !self.dedup_enabled() {
            return None;
        }
        let cs = self.layout.cluster_size();
        let start = offset.div_ceil(cs) * cs;
        let end = (offset + data.len() as u64) / cs * cs;
        if start >= end {
            return None;
        }
        let slice = &data[(start - offset) as usize..(end - offset) as usize];
        let digests = if slice.len() as u64 > cs {
            qcow2_dedup::hash_clusters(slice, cs as usize)
        } else {
            vec![(!is_zero(slice)).then(|| hash_cluster(slice))]
        };
        Some(Hashed {
            first: start / cs,
            digests,
        })
    }

    /// Hashes the copy-on-write results of a write (no lock held) and
    /// deduplicates or indexes each.
    pub(crate) fn settle_cow(&self, results: Vec<CowResult>) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let digests: Vec<Option<Digest>> = results
            .iter()
            .map(|r| (!is_zero(&r.data)).then(|| hash_cluster(&r.data)))
            .collect();
        let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
        let mut meta = self.lock_meta();
        self.guarded(&mut meta, |meta| {
            for (r, d) in results.iter().zip(digests) {
                if let Some(d) = d {
                    self.settle(meta, r.guest, r.host, &d, &r.data, true)?;
                }
            }
            Ok(())
        })
    }

    /// Guest cluster `guest` holds `data` (digest `d`) at `host`: share
    /// another copy when `merge` finds one, otherwise index `host`.
    /// Returns 1 when merged, 2 when indexed, 0 when nothing changed.
    fn settle(
        &self,
        meta: &mut Meta,
        guest: u64,
        host: HostOffset,
        d: &Digest,
        data: &[u8],
        merge: bool,
    ) -> Result<u8> {
        let storage = &*self.storage;
        let mapping = meta.mapping(storage, guest)?;
        let p = self.layout.geometry.host_cluster(host);
        if meta.data_cluster(mapping) != Some(p) {
            return Ok(0);
        }
        if merge && meta.dedup_hit(storage, guest, mapping, d, data)? {
            return Ok(1);
        }
        let indexed = meta.dedup_entry(storage, p)?.is_some();
        if !indexed && meta.refcounts.get(storage, p)? >= 1 {
            meta.dedup_index(storage, p, *d, guest)?;
            return Ok(2);
        }
        Ok(0)
    }

    /// Creates an empty dedup table, points the header at it and sets
    /// incompatible bit 1 (the seed's deduplication bit). A table already
    /// there is left for the caller to reclaim (`repair` of leaks).
    pub(crate) fn enable_dedup_locked(&self, meta: &mut Meta) -> Result<()> {
        let storage = &*self.storage;
        if self.layout.extended {
            return Err(ImageError::Unsupported {
                what: "deduplication with extended L2 entries".into(),
            });
        }
        if !self.layout.v3() {
            return Err(ImageError::InvalidArgument {
                what: "dedup",
                reason: "deduplication needs version 3 (compat=1.1)".into(),
            });
        }
        if meta.area.header.nb_snapshots > 0 {
            return Err(ImageError::Unsupported {
                what: "deduplicating an image with snapshots".into(),
            });
        }
        meta.flush(storage)?;
        let file_len = storage
            .len()
            .map_err(|e| ImageError::io("reading the file length", 0, e))?;
        let clusters = file_len.div_ceil(self.layout.cluster_size()) + 64;
        let table = DedupTable::create(
            storage,
            &mut TableAlloc(&mut meta.refcounts),
            self.layout.geometry,
            clusters,
        )?;
        meta.commit_refcounts(storage)?;
        sync(storage)?;
        set_dedup_extension(meta, Some(table.extension()));
        meta.dedup = Some(DedupState {
            table,
            index: DigestIndex::new(),
            verify: false,
            pending: Default::default(),
            unwritten: Default::default(),
        });
        meta.flush(storage)?;
        self.dedup_on.store(true, Ordering::Release);
        Ok(())
    }

    /// Turns deduplication on for an image that has no dedup table: an
    /// empty table is created and every data cluster already there is
    /// indexed; with `merge`, clusters with the same content are merged
    /// into one shared copy (offline deduplication). `progress` gets
    /// (clusters done, clusters total).
    pub fn enable_dedup(
        &self,
        merge: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<DedupPassReport> {
        self.check_writable()?;
        if !self.dedup_enabled() {
            let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
            let mut meta = self.lock_meta();
            self.guarded(&mut meta, |meta| self.enable_dedup_locked(meta))?;
        }
        self.dedup_pass(merge, progress)
    }

    /// Drops the dedup table and clears bit 1: a plain qcow2 image that
    /// QEMU can write; shared clusters stay shared with their refcounts.
    pub fn disable_dedup(&self) -> Result<()> {
        self.check_writable()?;
        let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
        let mut meta = self.lock_meta();
        self.guarded(&mut meta, |meta| {
            let storage = &*self.storage;
            meta.flush(storage)?;
            let Some(state) = meta.dedup.take() else {
                return Ok(());
            };
            self.dedup_on.store(false, Ordering::Release);
            set_dedup_extension(meta, None);
            meta.flush(storage)?;
            for (offset, clusters) in state.table.clusters() {
                let first = self.layout.geometry.host_cluster(offset);
                meta.refcounts.release(first, clusters);
            }
            meta.flush(storage)
        })
    }

    /// Whether enough clusters wait to be freed (hits on private clusters
    /// free the old copy at the next flush) that a flush should let later
    /// allocations reuse them instead of growing the file.
    fn too_many_pending(&self, meta: &mut Meta) -> Result<bool> {
        let Some(state) = meta.dedup.as_ref() else {
            return Ok(false);
        };
        let pending = state.pending.len() as u64;
        if pending < MIN_PENDING_FREES {
            return Ok(false);
        }
        let file_clusters = self
            .storage
            .len()
            .map_err(|e| ImageError::io("reading the file length", 0, e))?
            / self.layout.cluster_size();
        Ok(pending >= (file_clusters / 64).max(MIN_PENDING_FREES))
    }

    /// Flushes a deduplicating image when enough copies made redundant by
    /// hits wait to be freed (see [`MIN_PENDING_FREES`]).
    pub(crate) fn reclaim_dedup_copies(&self) -> Result<()> {
        if !self.dedup_enabled() {
            return Ok(());
        }
        let due = {
            let mut meta = self.lock_meta();
            self.too_many_pending(&mut meta)?
        };
        if due {
            self.flush()?;
        }
        Ok(())
    }

    /// Indexes every uncompressed data cluster of the image (guest order),
    /// merging duplicates when `merge`: data is read and hashed on all
    /// cores without the locks, decisions are taken under them, and the
    /// image is flushed every few batches.
    pub fn dedup_pass(
        &self,
        merge: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<DedupPassReport> {
        let cs = self.layout.cluster_size();
        let total = self.size().div_ceil(cs);
        let mut report = DedupPassReport::default();
        let mut batch_no = 0u64;
        let mut next = 0u64;
        while next < total {
            let end = (next + PASS_BATCH).min(total);
            let mut batch: Vec<(u64, HostOffset)> = Vec::new();
            {
                let mut meta = self.lock_meta();
                for g in next..end {
                    let m = meta.mapping(&*self.storage, g)?;
                    if let Some(p) = meta.data_cluster(m) {
                        batch.push((g, HostOffset(p.get() * cs)));
                    }
                }
            }
            let hashed: Vec<Result<ReadCluster>> = batch
                .par_iter()
                .map(|&(g, h)| {
                    let mut data = vec![0u8; cs as usize];
                    self.storage
                        .read_at(&mut data, h.get())
                        .map_err(|e| ImageError::io("reading guest data", h.get(), e))?;
                    let d = (!is_zero(&data)).then(|| hash_cluster(&data));
                    Ok((g, h, data, d))
                })
                .collect();
            {
                let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
                let mut meta = self.lock_meta();
                self.guarded(&mut meta, |meta| {
                    for item in hashed {
                        let (g, h, data, d) = item?;
                        report.clusters += 1;
                        let Some(d) = d else { continue };
                        match self.settle(meta, g, h, &d, &data, merge)? {
                            1 => report.merged += 1,
                            2 => report.indexed += 1,
                            _ => {}
                        }
                    }
                    batch_no += 1;
                    if batch_no % PASS_FLUSH_EVERY == 0 || self.too_many_pending(meta)? {
                        meta.flush(&*self.storage)?;
                    }
                    Ok(())
                })?;
            }
            next = end;
            progress(next, total);
        }
        self.flush()?;
        Ok(report)
    }

    /// The digest in the entry of the cluster guest cluster `guest` maps
    /// whole, if it has one.
    pub(crate) fn indexed_digest_of(&self, guest: u64) -> Result<Option<Digest>> {
        let mut meta = self.lock_meta();
        let storage = &*self.storage;
        let mapping = meta.mapping(storage, guest)?;
        let Some(p) = meta.data_cluster(mapping) else {
            return Ok(None);
        };
        Ok(meta.dedup_entry(storage, p)?.map(|e| e.hash))
    }

    /// Whether host cluster `p` holds an entry (tests and tools).
    pub fn dedup_entry_of(&self, p: u64) -> Result<Option<Digest>> {
        let mut meta = self.lock_meta();
        Ok(meta
            .dedup_entry(&*self.storage, ClusterIndex(p))?
            .map(|e| e.hash))
    }
}

/// Rebuilds the dedup table of the image on `storage` from scratch (`check
/// -r all`): the table is marked stale (bit 1 cleared), and a writable open
/// then indexes the data afresh and reclaims the old table's clusters.
pub fn rebuild_dedup(storage: std::sync::Arc<dyn Storage>) -> Result<()> {
    let mut area = crate::image::read_area(&*storage)?;
    if area.dedup().is_none() {
        return Ok(());
    }
    let old_len = area.to_bytes()?.len();
    area.header.incompatible_features &= !qcow2_format::features::INCOMPAT_BIT1;
    let mut bytes = area.to_bytes()?;
    bytes.resize(bytes.len().max(old_len), 0);
    storage
        .write_at(&bytes, 0, qcow2_io::WriteKind::Header)
        .map_err(|e| ImageError::io("writing the header", 0, e))?;
    sync(&*storage)?;
    let image = Image::open(
        storage,
        crate::options::OpenOptions {
            writable: true,
            backing: crate::options::BackingMode::Ignore,
        },
    )?;
    image.close()
}
