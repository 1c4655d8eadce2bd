//! Online deduplication: the dedup state of an open image and the metadata
//! steps of a dedup hit, kept crash safe against QEMU's COPIED rule.
//!
//! `qemu-img check` calls a cluster whose refcount is 1 but whose L2 entry
//! lacks COPIED (or the reverse) corrupt, so a cluster never changes
//! between private and shared in place:
//! - a hit on a private cluster `p` (one referrer `A`) writes the data to a
//!   fresh cluster `q` with refcount 2 and maps both `A` and the writer to
//!   it, then lets `p` go; a crash in between leaves leaks only. When `A`'s
//!   mapping has not reached the disk yet (its L2 table was not written
//!   since `p` was allocated, the usual case in a convert), `p` turns
//!   shared in place: the refcount of 2 is durable before either entry;
//! - a shared cluster about to keep a single referrer is copied to a fresh
//!   private cluster for that referrer before its refcount drops
//!   ([`Meta::relocate_survivors`]).
//!
//! Entries are written only after the data they describe is durable and
//! are cleared before the refcount of their cluster drops to zero. New data
//! for an indexed cluster goes to a fresh cluster (the old one is freed at
//! the next flush), or with [`crate::DedupOverwrite::ClearFirst`] the entry
//! is cleared durably before the cluster is overwritten in place.

use std::collections::{HashMap, HashSet};

use qcow2_alloc::Refcounts;
use qcow2_dedup::{ClusterAllocator, DedupTable, Digest, DigestIndex};
use qcow2_format::extensions::{Dedup, Extension};
use qcow2_format::features as feat;
use qcow2_format::tables::dedup_table::DedupEntry;
use qcow2_format::tables::l2::HostCluster;
use qcow2_format::tables::l2_extended::ExtendedL2Mapping;
use qcow2_format::{ClusterIndex, GuestOffset, HostOffset};
use qcow2_io::{Storage, WriteKind};

use crate::error::{ImageError, Result};
use crate::meta::{sync, Meta};

/// The dedup table and index of an image open for writing.
#[derive(Debug)]
pub(crate) struct DedupState {
    pub table: DedupTable,
    pub index: DigestIndex,
    /// Compare the bytes of every hit (`dedup_verify=on`).
    pub verify: bool,
    /// References to uncompressed data clusters queued for release since
    /// the last flush, by cluster.
    pub pending: HashMap<u64, u64>,
    /// Freshly allocated clusters whose one referrer sits in an L2 table
    /// not written since (by L1 index): no COPIED entry for them is on
    /// disk yet, so a hit may make them shared in place.
    pub unwritten: HashMap<u64, HashSet<u64>>,
}

/// Takes table clusters from the image's refcounts.
pub(crate) struct TableAlloc<'a>(pub &'a mut Refcounts);

impl ClusterAllocator for TableAlloc<'_> {
    fn allocate(
        &mut self,
        storage: &dyn Storage,
        clusters: u64,
    ) -> qcow2_dedup::Result<HostOffset> {
        self.0
            .allocate(storage, clusters)
            .map_err(|e| qcow2_dedup::DedupError::Alloc(e.to_string()))
    }
}

/// Points the header area at `table` (or drops the extension with `None`)
/// and sets or clears incompatible bit 1 to match.
pub(crate) fn set_dedup_extension(meta: &mut Meta, table: Option<Dedup>) {
    let exts = &mut meta.area.chain.extensions;
    exts.retain(|e| !matches!(e, Extension::Dedup(_)));
    match table {
        Some(d) => {
            exts.push(Extension::Dedup(d));
            meta.area.header.incompatible_features |= feat::INCOMPAT_BIT1;
        }
        None => meta.area.header.incompatible_features &= !feat::INCOMPAT_BIT1,
    }
    meta.header_dirty = true;
}

fn whole(layout: &crate::layout::Layout, host: HostOffset) -> ExtendedL2Mapping {
    ExtendedL2Mapping::Allocated {
        host: HostCluster {
            offset: host,
            copied: false,
        },
        allocated: layout.all(),
        zero: 0,
    }
}

impl Meta {
    /// The host cluster of a whole, uncompressed data mapping.
    pub fn data_cluster(&self, mapping: ExtendedL2Mapping) -> Option<ClusterIndex> {
        match mapping {
            ExtendedL2Mapping::Allocated {
                host, allocated, ..
            } if allocated == self.layout.all() => {
                Some(self.layout.geometry.host_cluster(host.offset))
            }
            _ => None,
        }
    }

    /// Refcount of `p` once the queued releases are applied.
    fn effective_refcount(&mut self, storage: &dyn Storage, p: ClusterIndex) -> Result<u64> {
        let pending = self
            .dedup
            .as_ref()
            .and_then(|d| d.pending.get(&p.get()).copied())
            .unwrap_or(0);
        Ok(self.refcounts.get(storage, p)?.saturating_sub(pending))
    }

    /// An indexed cluster holding `data` (digest `digest`), confirmed
    /// against the full digest in the table (and the bytes with verify).
    pub fn dedup_find(
        &mut self,
        storage: &dyn Storage,
        digest: &Digest,
        data: &[u8],
    ) -> Result<Option<(ClusterIndex, DedupEntry)>> {
        let Some(state) = self.dedup.as_mut() else {
            return Ok(None);
        };
        let cs = self.layout.cluster_size();
        for p in state.index.candidates(digest) {
            let Some(entry) = state.table.get(storage, p)? else {
                continue;
            };
            if &entry.hash != digest {
                continue;
            }
            if state.verify {
                let mut stored = vec![0u8; cs as usize];
                storage
                    .read_at(&mut stored, p.get() * cs)
                    .map_err(|e| ImageError::io("reading a dedup candidate", p.get() * cs, e))?;
                if stored != data {
                    continue;
                }
            }
            return Ok(Some((p, entry)));
        }
        Ok(None)
    }

    /// Records that `p` holds data with `digest`, first written by guest
    /// cluster `guest`. Durable with the next flush, after the data.
    pub fn dedup_index(
        &mut self,
        storage: &dyn Storage,
        p: ClusterIndex,
        digest: Digest,
        guest: u64,
    ) -> Result<()> {
        let cs = self.layout.cluster_size();
        let Some(state) = self.dedup.as_mut() else {
            return Ok(());
        };
        if p.get() > qcow2_dedup::MAX_INDEXED_CLUSTER {
            return Ok(());
        }
        let entry = DedupEntry {
            hash: digest,
            guest_offset: GuestOffset(guest * cs),
        };
        state.table.set(
            storage,
            &mut TableAlloc(&mut self.refcounts),
            p,
            Some(entry),
        )?;
        state.index.insert(&digest, p);
        Ok(())
    }

    /// Forgets `p`'s entry (in memory; written with the next table write).
    /// Returns whether it had one.
    pub fn dedup_unindex(&mut self, storage: &dyn Storage, p: ClusterIndex) -> Result<bool> {
        let Some(state) = self.dedup.as_mut() else {
            return Ok(false);
        };
        let Some(entry) = state.table.get(storage, p)? else {
            return Ok(false);
        };
        state
            .table
            .set(storage, &mut TableAlloc(&mut self.refcounts), p, None)?;
        state.index.remove(&entry.hash, p);
        Ok(true)
    }

    /// The dedup entry of host cluster `p` (`None` too when dedup is off).
    pub fn dedup_entry(
        &mut self,
        storage: &dyn Storage,
        p: ClusterIndex,
    ) -> Result<Option<DedupEntry>> {
        match self.dedup.as_mut() {
            Some(state) => Ok(state.table.get(storage, p)?),
            None => Ok(None),
        }
    }

    /// Whether a write to private cluster `p` must go to a fresh cluster
    /// instead: `p` is indexed and the image writes elsewhere.
    pub fn overwrite_elsewhere(&mut self, storage: &dyn Storage, p: ClusterIndex) -> Result<bool> {
        if self.dedup_overwrite != crate::dedup_write::DedupOverwrite::WriteElsewhere {
            return Ok(false);
        }
        Ok(self.dedup_entry(storage, p)?.is_some())
    }

    /// Before `p` is overwritten in place: its entry, if any, is cleared
    /// and durable, so no crash leaves an entry that disagrees with it.
    pub fn dedup_forget_durably(&mut self, storage: &dyn Storage, p: ClusterIndex) -> Result<()> {
        if !self.dedup_unindex(storage, p)? {
            return Ok(());
        }
        self.write_dedup_clears(storage)
    }

    /// Makes every cleared entry durable (new entries keep waiting):
    /// copies of the changed level-2 clusters, their refcounts, then the
    /// level-1 table the header names.
    pub fn write_dedup_clears(&mut self, storage: &dyn Storage) -> Result<()> {
        let Some(state) = self.dedup.as_mut() else {
            return Ok(());
        };
        if !state
            .table
            .stage_clears(storage, &mut TableAlloc(&mut self.refcounts))?
        {
            return Ok(());
        }
        self.commit_refcounts(storage)?;
        if let Some(state) = self.dedup.as_mut() {
            state.table.write_named_l1(storage)?;
        }
        sync(storage)
    }

    /// Maps guest cluster `guest` (now `old`) to an indexed cluster holding
    /// the same `data`, if there is one; false when the write must store
    /// the data itself.
    pub fn dedup_hit(
        &mut self,
        storage: &dyn Storage,
        guest: u64,
        old: ExtendedL2Mapping,
        digest: &Digest,
        data: &[u8],
    ) -> Result<bool> {
        let Some((p, entry)) = self.dedup_find(storage, digest, data)? else {
            return Ok(false);
        };
        if self.data_cluster(old) == Some(p) {
            return Ok(true);
        }
        let refs = self.effective_refcount(storage, p)?;
        let stored = self.refcounts.get(storage, p)?;
        let max = self.refcounts.order().max_refcount();
        if refs == 0 || stored >= max {
            return Ok(false);
        }
        let layout = self.layout;
        let cs = layout.cluster_size();
        if refs >= 2 {
            // Already shared: every reference has COPIED clear.
            self.refcounts.add_ref(storage, p)?;
            self.set_mapping(storage, guest, whole(&layout, HostOffset(p.get() * cs)))?;
            return self.release_mapping(old).map(|()| true);
        }
        let first = entry.guest_offset.get() / cs;
        let first_old = self.mapping(storage, first)?;
        if first == guest || self.data_cluster(first_old) != Some(p) || max < 2 {
            return Ok(false);
        }
        if self.referrer_unwritten(first, p) {
            self.refcounts.add_ref(storage, p)?;
            let shared = whole(&layout, HostOffset(p.get() * cs));
            self.set_mapping(storage, first, shared)?;
            self.set_mapping(storage, guest, shared)?;
            return self.release_mapping(old).map(|()| true);
        }
        // Private to a referrer the disk may know: both move to a fresh
        // shared copy.
        let q = self.allocate(storage, 1)?;
        storage
            .write_at(data, q.get(), WriteKind::Data)
            .map_err(|e| ImageError::io("writing guest data", q.get(), e))?;
        let qc = layout.geometry.host_cluster(q);
        self.refcounts.add_ref(storage, qc)?;
        self.dedup_unindex(storage, p)?;
        self.set_mapping(storage, first, whole(&layout, q))?;
        self.release_mapping(first_old)?;
        self.set_mapping(storage, guest, whole(&layout, q))?;
        self.release_mapping(old)?;
        self.dedup_index(storage, qc, *digest, first)?;
        Ok(true)
    }

    /// Notes that fresh cluster `p` was just mapped by guest cluster
    /// `guest` alone, in an L2 table the disk does not have that way yet.
    pub fn note_unwritten_referrer(&mut self, guest: u64, p: ClusterIndex) {
        let l1_index = guest / self.layout.l2_entries();
        if let Some(state) = self.dedup.as_mut() {
            state.unwritten.entry(l1_index).or_default().insert(p.get());
        }
    }

    /// Whether guest cluster `guest`'s mapping to `p` has not been written
    /// since `p` was allocated.
    fn referrer_unwritten(&self, guest: u64, p: ClusterIndex) -> bool {
        let l1_index = guest / self.layout.l2_entries();
        self.dedup
            .as_ref()
            .and_then(|d| d.unwritten.get(&l1_index))
            .is_some_and(|set| set.contains(&p.get()))
    }

    /// The L2 table of `l1_index` is on disk now (or dropped): what it
    /// maps may be known there.
    pub fn l2_table_written(&mut self, l1_index: u64) {
        if let Some(state) = self.dedup.as_mut() {
            state.unwritten.remove(&l1_index);
        }
    }

    /// Queues the release of a data cluster reference (bookkeeping for the
    /// flush steps below).
    pub fn dedup_note_release(&mut self, p: ClusterIndex) {
        if let Some(state) = self.dedup.as_mut() {
            *state.pending.entry(p.get()).or_default() += 1;
        }
    }

    /// Shared clusters about to keep a single referrer get copied to a
    /// private cluster for it first (see the module text).
    pub fn relocate_survivors(&mut self, storage: &dyn Storage) -> Result<()> {
        let Some(state) = self.dedup.as_ref() else {
            return Ok(());
        };
        let candidates: Vec<(u64, u64)> = state.pending.iter().map(|(&p, &n)| (p, n)).collect();
        let mut survivors = HashSet::new();
        for (p, n) in candidates {
            if self.refcounts.get(storage, ClusterIndex(p))? == n + 1 {
                survivors.insert(p);
            }
        }
        if survivors.is_empty() {
            return Ok(());
        }
        let referrers = self.find_referrers(storage, &survivors)?;
        let layout = self.layout;
        let cs = layout.cluster_size();
        let mut data = vec![0u8; cs as usize];
        for (p, guest) in referrers {
            let pc = ClusterIndex(p);
            let old = self.mapping(storage, guest)?;
            storage
                .read_at(&mut data, p * cs)
                .map_err(|e| ImageError::io("reading a shared cluster", p * cs, e))?;
            let entry = self.dedup_entry(storage, pc)?;
            let r = self.allocate(storage, 1)?;
            storage
                .write_at(&data, r.get(), WriteKind::Data)
                .map_err(|e| ImageError::io("writing guest data", r.get(), e))?;
            let private = ExtendedL2Mapping::Allocated {
                host: HostCluster {
                    offset: r,
                    copied: true,
                },
                allocated: layout.all(),
                zero: 0,
            };
            self.set_mapping(storage, guest, private)?;
            self.release_mapping(old)?;
            if let Some(e) = entry {
                self.dedup_unindex(storage, pc)?;
                let rc = layout.geometry.host_cluster(r);
                self.dedup_index(storage, rc, e.hash, guest)?;
            }
        }
        Ok(())
    }

    /// The guest cluster of the active table that maps each of `clusters`.
    fn find_referrers(
        &mut self,
        storage: &dyn Storage,
        clusters: &HashSet<u64>,
    ) -> Result<Vec<(u64, u64)>> {
        let per = self.layout.l2_entries();
        let mut found = Vec::new();
        for l1_index in 0..self.l1.len() as u64 {
            if self.l1[l1_index as usize] == 0 {
                continue;
            }
            for i in 0..per {
                let guest = l1_index * per + i;
                let mapping = self.mapping(storage, guest)?;
                if let Some(p) = self.data_cluster(mapping) {
                    if clusters.contains(&p.get()) {
                        found.push((p.get(), guest));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Before the L2 tables that drop references are written: entries of
    /// clusters whose refcount will reach zero are cleared, durably, so no
    /// crash leaves an entry for an unreferenced (leaked, later freed)
    /// cluster.
    pub fn clear_dying_entries(&mut self, storage: &dyn Storage) -> Result<()> {
        let Some(state) = self.dedup.as_mut() else {
            return Ok(());
        };
        let pending: Vec<(u64, u64)> = state.pending.iter().map(|(&p, &n)| (p, n)).collect();
        for (p, n) in pending {
            let pc = ClusterIndex(p);
            if self.refcounts.get(storage, pc)? <= n {
                self.dedup_unindex(storage, pc)?;
            }
            // Only once handled: a read failure above leaves the rest
            // queued for the next flush, so no dying entry is forgotten.
            if let Some(state) = self.dedup.as_mut() {
                state.pending.remove(&p);
            }
        }
        self.write_dedup_clears(storage)
    }

    /// Writes the changed level-2 dedup clusters (copies of those the disk
    /// names) once the L2 tables are durable; returns whether the level-1
    /// dedup table must then be written (after the copies and their
    /// refcounts are durable).
    pub fn stage_dedup(&mut self, storage: &dyn Storage) -> Result<bool> {
        match self.dedup.as_mut() {
            Some(state) => {
                state
                    .table
                    .stage_all(storage, &mut TableAlloc(&mut self.refcounts))?;
                Ok(state.table.l1_dirty())
            }
            None => Ok(false),
        }
    }

    /// Writes the level-1 dedup table (once its level-2 clusters and their
    /// refcounts are durable) and points the header at it when it moved.
    pub fn write_dedup_l1(&mut self, storage: &dyn Storage) -> Result<()> {
        let Some(state) = self.dedup.as_mut() else {
            return Ok(());
        };
        state.table.write_l1(storage)?;
        if state.table.moved() {
            let ext = state.table.extension();
            set_dedup_extension(self, Some(ext));
        }
        Ok(())
    }

    /// Once the level-1 table and header are durable: the replaced level-1
    /// tables and level-2 clusters are released.
    pub fn release_replaced_dedup_l1(&mut self) {
        let Some(state) = self.dedup.as_mut() else {
            return;
        };
        let mut old = state.table.take_replaced();
        old.extend(state.table.take_released());
        for (offset, clusters) in old {
            let first = self.layout.geometry.host_cluster(offset);
            self.refcounts.release(first, clusters);
        }
    }
}
