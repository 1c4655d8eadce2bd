//! The metadata of an open image (header, L1 table, L2 cache, refcounts)
//! and the ordered write-back that keeps the file consistent at every step.

use qcow2_alloc::Refcounts;
use qcow2_format::tables::l1::{L1Entry, L1_ENTRY_SIZE};
use qcow2_format::tables::l2_extended::ExtendedL2Mapping;
use qcow2_format::{ClusterIndex, HeaderArea, HostOffset};
use qcow2_io::{Storage, WriteKind};

use crate::error::{ImageError, Result};
use crate::l2_cache::L2Cache;
use crate::layout::Layout;
use crate::metadata_guard::MetadataGuard;

/// Everything the metadata lock protects.
#[derive(Debug)]
pub(crate) struct Meta {
    pub area: HeaderArea,
    pub layout: Layout,
    /// Raw L1 entries (native u64).
    pub l1: Vec<u64>,
    /// First and last dirty L1 index.
    pub l1_dirty: Option<(usize, usize)>,
    pub l2: L2Cache,
    pub refcounts: Refcounts,
    pub header_dirty: bool,
    /// Length of the header area last written, so a shorter rewrite clears
    /// the stale tail.
    pub header_len: usize,
    /// Set when a metadata write failed: memory may be ahead of the file.
    pub poisoned: bool,
    /// Where the next compressed stream may go: the end of the last one,
    /// inside a host cluster that still holds it. `None` = start a fresh
    /// host cluster.
    pub compressed_cursor: Option<HostOffset>,
    /// The dedup table and index, when the image is deduplicated and open
    /// for writing.
    pub dedup: Option<crate::dedup::DedupState>,
    /// Copy-on-write results of the current write, hashed after it.
    pub cow_results: Vec<crate::dedup_write::CowResult>,
    /// How an indexed, private cluster is overwritten.
    pub dedup_overwrite: crate::dedup_write::DedupOverwrite,
    /// The metadata beyond header, L1 and refcounts that writes must miss.
    pub guard: MetadataGuard,
    /// The file length at open, raised by every allocation since: an L2
    /// entry naming a cluster at or past it (rounded up to a cluster) is
    /// damage, not data.
    pub file_end: u64,
}

/// Words of an L2 table read from disk, in native order.
pub(crate) fn words_from_bytes(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

impl Meta {
    pub fn size(&self) -> u64 {
        self.area.header.size
    }

    fn l1_entry(&self, l1_index: u64) -> Result<L1Entry> {
        let raw = self.l1.get(l1_index as usize).copied().unwrap_or(0);
        let at = self
            .area
            .header
            .l1_table_offset
            .get()
            .saturating_add(l1_index * L1_ENTRY_SIZE as u64);
        Ok(L1Entry::decode(raw, self.layout.geometry, at)?)
    }

    fn set_l1(&mut self, l1_index: u64, entry: L1Entry) -> Result<()> {
        let i = l1_index as usize;
        let raw = entry.encode(self.layout.geometry)?;
        self.guard.l1_changed(self.l1[i], raw);
        self.l1[i] = raw;
        self.l1_dirty = Some(match self.l1_dirty {
            None => (i, i),
            Some((a, b)) => (a.min(i), b.max(i)),
        });
        Ok(())
    }

    /// Marks L1 entry `l1_index` unused (its table is released by the caller).
    pub fn clear_l1(&mut self, l1_index: u64) -> Result<()> {
        self.set_l1(l1_index, L1Entry::UNUSED)
    }

    /// Checks that a metadata cluster lies inside the file and not on the
    /// header, so a hostile L1 entry cannot make us read or later overwrite
    /// the wrong place.
    fn check_table_offset(&self, storage: &dyn Storage, offset: HostOffset) -> Result<()> {
        // Every L2 load asks: the tracked end spares a system call per
        // load; the file may have grown past it (tables allocated by
        // another structure's writer), so only a miss asks the file.
        let len = if offset.get() < self.file_end {
            self.file_end
        } else {
            storage
                .len()
                .map_err(|e| ImageError::io("reading the file length", 0, e))?
        };
        // A table that starts inside the file is read (a short tail reads
        // as zeros, as QEMU reads it); one wholly outside is refused.
        if offset.get() == 0 || offset.get() >= len {
            return Err(ImageError::Corrupt {
                rule: Some(qcow2_format::rules::L1_ENTRY),
                offset: offset.get(),
                reason: format!("L2 table at {:#x} is outside the file", offset.get()),
            });
        }
        Ok(())
    }

    /// Loads the L2 table of `l1_index` into the cache; `false` when the L1
    /// entry is unused.
    fn load_l2(&mut self, storage: &dyn Storage, l1_index: u64) -> Result<bool> {
        if self.l2.contains(l1_index) {
            return Ok(true);
        }
        let Some(offset) = self.l1_entry(l1_index)?.l2_table else {
            return Ok(false);
        };
        self.check_table_offset(storage, offset)?;
        self.make_room(storage)?;
        let mut bytes = vec![0u8; self.layout.cluster_size() as usize];
        storage
            .read_at(&mut bytes, offset.get())
            .map_err(|e| ImageError::io("reading an L2 table", offset.get(), e))?;
        self.l2
            .insert(l1_index, offset, words_from_bytes(&bytes), false);
        Ok(true)
    }

    /// Evicts one table when the cache is full, writing it first if dirty
    /// (after the refcounts it relies on).
    fn make_room(&mut self, storage: &dyn Storage) -> Result<()> {
        let Some(victim) = self.l2.victim() else {
            return Ok(());
        };
        if self.l2.get(victim).is_some_and(|s| s.dirty) {
            // Also reached from reads: a failure here must stop later
            // writes and flushes from trusting the cache.
            let written = self
                .commit_refcounts(storage)
                .and_then(|()| self.write_l2(storage, victim));
            if written.is_err() {
                self.poisoned = true;
            }
            written?;
        }
        self.l2.remove(victim);
        self.l2_table_written(victim);
        Ok(())
    }

    /// The mapping of guest cluster `cluster`.
    pub fn mapping(&mut self, storage: &dyn Storage, cluster: u64) -> Result<ExtendedL2Mapping> {
        let per = self.layout.l2_entries();
        let (l1_index, l2_index) = (cluster / per, cluster % per);
        if !self.load_l2(storage, l1_index)? {
            return Ok(ExtendedL2Mapping::Unallocated { zero: 0 });
        }
        let layout = self.layout;
        let slot = self.l2.get(l1_index).ok_or(ImageError::Poisoned)?;
        layout.decode(&slot.words, l2_index as usize, slot.offset.get())
    }

    /// Sets the mapping of guest cluster `cluster`, allocating or copying
    /// its L2 table first when needed.
    pub fn set_mapping(
        &mut self,
        storage: &dyn Storage,
        cluster: u64,
        mapping: ExtendedL2Mapping,
    ) -> Result<()> {
        let per = self.layout.l2_entries();
        let (l1_index, l2_index) = (cluster / per, cluster % per);
        self.writable_l2(storage, l1_index)?;
        let layout = self.layout;
        let slot = self.l2.get(l1_index).ok_or(ImageError::Poisoned)?;
        layout.encode(&mut slot.words, l2_index as usize, mapping)?;
        slot.dirty = true;
        Ok(())
    }

    /// Makes the L2 table of `l1_index` private to the active L1 table:
    /// allocated if unused, copied if shared with a snapshot.
    fn writable_l2(&mut self, storage: &dyn Storage, l1_index: u64) -> Result<()> {
        let entry = self.l1_entry(l1_index)?;
        let words_per_table = (self.layout.cluster_size() / 8) as usize;
        let Some(old) = entry.l2_table else {
            self.make_room(storage)?;
            let offset = self.allocate(storage, 1)?;
            self.l2
                .insert(l1_index, offset, vec![0; words_per_table], true);
            return self.set_l1(
                l1_index,
                L1Entry {
                    l2_table: Some(offset),
                    copied: true,
                },
            );
        };
        if entry.copied {
            self.load_l2(storage, l1_index)?;
            return Ok(());
        }
        let cluster = self.layout.geometry.host_cluster(old);
        let refcount = self.refcounts.get(storage, cluster)?;
        self.load_l2(storage, l1_index)?;
        if refcount > 1 {
            // Shared with a snapshot: the copy references the same data
            // clusters, whose refcounts already count both paths.
            let offset = self.allocate(storage, 1)?;
            let slot = self.l2.get(l1_index).ok_or(ImageError::Poisoned)?;
            slot.offset = offset;
            slot.dirty = true;
            self.refcounts.release(cluster, 1);
        }
        let l2_table = self.l2.get(l1_index).map(|s| s.offset);
        self.set_l1(
            l1_index,
            L1Entry {
                l2_table,
                copied: true,
            },
        )
    }

    /// Whether the data cluster at `host` may be written in place: its
    /// refcount is one.
    pub fn is_private(
        &mut self,
        storage: &dyn Storage,
        host: HostOffset,
        copied: bool,
    ) -> Result<bool> {
        if copied {
            return Ok(true);
        }
        let cluster = self.layout.geometry.host_cluster(host);
        Ok(self.refcounts.get(storage, cluster)? == 1)
    }

    /// Refuses to write over metadata (the header, the L1 and refcount
    /// structures, and what [`MetadataGuard`] holds): a hostile or damaged
    /// L2 entry, or a table whose refcount is 0, must not turn a write into
    /// metadata corruption. `host` is the start of the cluster to write.
    pub fn check_data_target(&self, host: HostOffset) -> Result<()> {
        let cs = self.layout.cluster_size();
        let h = &self.area.header;
        let l1_end = h.l1_table_offset.get() + u64::from(h.l1_size) * L1_ENTRY_SIZE as u64;
        let rt = self.refcounts.location();
        let rt_end = rt.offset.get() + u64::from(rt.clusters) * cs;
        let start = host.get();
        let overlaps = |a: u64, b: u64| a < b && start < b && a < start + cs;
        let what = if start < cs {
            Some("the header")
        } else if overlaps(h.l1_table_offset.get(), l1_end) {
            Some("the L1 table")
        } else if overlaps(rt.offset.get(), rt_end) {
            Some("the refcount table")
        } else if self.refcounts.is_block(host) {
            Some("a refcount block")
        } else {
            self.guard.overlap(start, cs)
        };
        match what {
            None => Ok(()),
            Some(what) => Err(ImageError::Corrupt {
                rule: Some(qcow2_format::rules::RC_OVERLAP),
                offset: start,
                reason: format!(
                    "a cluster to be written at {start:#x} overlaps {what}; write refused"
                ),
            }),
        }
    }

    /// Allocates `count` clusters for data or a table, refusing a run that
    /// lies on metadata (a structure whose refcount says it is free).
    pub fn allocate(&mut self, storage: &dyn Storage, count: u64) -> Result<HostOffset> {
        let offset = self.refcounts.allocate(storage, count)?;
        let cs = self.layout.cluster_size();
        for i in 0..count {
            self.check_data_target(HostOffset(offset.get() + i * cs))?;
        }
        self.file_end = self.file_end.max(offset.get() + count * cs);
        Ok(offset)
    }

    /// Refuses an in-place write to a data cluster that starts past the end
    /// of the file (L2-ENTRY), which would otherwise grow the file to
    /// wherever a damaged entry points.
    pub fn check_in_file(&self, host: HostOffset) -> Result<()> {
        let end = self.file_end.next_multiple_of(self.layout.cluster_size());
        if host.get() >= end {
            return Err(ImageError::Corrupt {
                rule: Some(qcow2_format::rules::L2_ENTRY),
                offset: host.get(),
                reason: format!(
                    "the data cluster at {:#x} lies past the end of the file ({end:#x}); write refused",
                    host.get()
                ),
            });
        }
        Ok(())
    }

    /// Unmaps guest cluster `cluster` (unallocated, no zero flag) and queues
    /// dropping what it referenced; nothing happens when it already is.
    pub fn unmap(
        &mut self,
        storage: &dyn Storage,
        cluster: u64,
        old: ExtendedL2Mapping,
    ) -> Result<()> {
        let none = ExtendedL2Mapping::Unallocated { zero: 0 };
        if old != none {
            self.set_mapping(storage, cluster, none)?;
            self.release_mapping(old)?;
        }
        Ok(())
    }

    /// Queues dropping the references `mapping` holds.
    pub fn release_mapping(&mut self, mapping: ExtendedL2Mapping) -> Result<()> {
        match mapping {
            ExtendedL2Mapping::Unallocated { .. } => {}
            ExtendedL2Mapping::Allocated { host, .. } => {
                let cluster = self.layout.geometry.host_cluster(host.offset);
                self.refcounts.release(cluster, 1);
                self.dedup_note_release(cluster);
            }
            ExtendedL2Mapping::Compressed(d) => {
                let (first, count) =
                    d.host_clusters(self.layout.geometry)
                        .ok_or_else(|| ImageError::Corrupt {
                            rule: Some(qcow2_format::rules::CMP_DESCRIPTOR),
                            offset: d.host_offset.get(),
                            reason: "compressed descriptor overflows".into(),
                        })?;
                if let Some(cursor) = self.compressed_cursor {
                    let at = self.layout.geometry.host_cluster(cursor).get();
                    if (first.get()..first.get() + count).contains(&at) {
                        // The cluster may be freed and reused: stop packing
                        // into it.
                        self.compressed_cursor = None;
                    }
                }
                self.refcounts.release(first, count);
            }
        }
        Ok(())
    }

    fn write_l2(&mut self, storage: &dyn Storage, l1_index: u64) -> Result<()> {
        let Some(slot) = self.l2.get(l1_index) else {
            return Ok(());
        };
        let bytes = words_to_bytes(&slot.words);
        let offset = slot.offset.get();
        storage
            .write_at(&bytes, offset, WriteKind::L2)
            .map_err(|e| ImageError::io("writing an L2 table", offset, e))?;
        if let Some(slot) = self.l2.get(l1_index) {
            slot.dirty = false;
        }
        self.l2_table_written(l1_index);
        Ok(())
    }

    /// Writes the refcount increments made so far and makes them durable;
    /// moves the header to a grown refcount table.
    pub fn commit_refcounts(&mut self, storage: &dyn Storage) -> Result<()> {
        let moved = self.refcounts.flush(storage)?;
        sync(storage)?;
        if let Some(location) = moved {
            self.area.header.refcount_table_offset = location.offset;
            self.area.header.refcount_table_clusters = location.clusters;
            self.write_header(storage)?;
            sync(storage)?;
            self.refcounts.header_updated();
        }
        Ok(())
    }

    /// Marks the image corrupt on disk (incompatible bit 1, QEMU's corrupt
    /// bit) after a write was refused because it would land on metadata, so
    /// that no later writer trusts the tables before a repair; as QEMU does.
    /// Bit 1 means deduplication when the dedup extension is present, so a
    /// deduplicated image is only poisoned in memory.
    pub fn mark_corrupt(&mut self, storage: &dyn Storage) -> Result<()> {
        if self.area.dedup().is_some() {
            return Ok(());
        }
        self.area.header.incompatible_features |= qcow2_format::features::INCOMPAT_BIT1;
        self.write_header(storage)?;
        sync(storage)
    }

    pub fn write_header(&mut self, storage: &dyn Storage) -> Result<()> {
        let mut bytes = self.area.to_bytes()?;
        let len = bytes.len();
        if bytes.len() < self.header_len {
            bytes.resize(self.header_len, 0);
        }
        storage
            .write_at(&bytes, 0, WriteKind::Header)
            .map_err(|e| ImageError::io("writing the header", 0, e))?;
        self.header_len = len;
        self.header_dirty = false;
        Ok(())
    }

    fn write_l1(&mut self, storage: &dyn Storage) -> Result<()> {
        let Some((first, last)) = self.l1_dirty else {
            return Ok(());
        };
        let bytes = words_to_bytes(&self.l1[first..=last]);
        let offset = self.area.header.l1_table_offset.get() + (first * L1_ENTRY_SIZE) as u64;
        storage
            .write_at(&bytes, offset, WriteKind::L1)
            .map_err(|e| ImageError::io("writing the L1 table", offset, e))?;
        self.l1_dirty = None;
        Ok(())
    }

    /// Writes everything back in the order that keeps the file consistent
    /// at each step: refcount increments, L2 tables, L1 table and header,
    /// then the refcount decrements of dropped references.
    ///
    /// With dedup: shared clusters about to keep one referrer are copied
    /// first; dedup entries go out after the L2 tables are durable (level-2
    /// dedup clusters the disk names are copied, never rewritten), and the
    /// level-1 dedup table after the level-2 clusters it names;
    /// entries of clusters about to be freed are cleared durably before the
    /// decrements.
    pub fn flush(&mut self, storage: &dyn Storage) -> Result<()> {
        self.relocate_survivors(storage)?;
        self.clear_dying_entries(storage)?;
        self.commit_refcounts(storage)?;
        let dirty = self.l2.dirty();
        for l1_index in &dirty {
            self.write_l2(storage, *l1_index)?;
        }
        let dedup_dirty = self.dedup.as_ref().is_some_and(|d| d.table.is_dirty());
        if !dirty.is_empty() && (self.l1_dirty.is_some() || self.header_dirty || dedup_dirty) {
            sync(storage)?;
        }
        // Entries only once the L2 entries that map their clusters are
        // durable: a crash must not leave an entry for an unreferenced
        // cluster, which a leak repair could free and reuse.
        let dedup_l1 = self.stage_dedup(storage)?;
        if dedup_l1 {
            self.commit_refcounts(storage)?;
        }
        self.write_l1(storage)?;
        if dedup_l1 {
            self.write_dedup_l1(storage)?;
        }
        if self.header_dirty {
            sync(storage)?;
            self.write_header(storage)?;
        }
        sync(storage)?;
        self.release_replaced_dedup_l1();
        if self.refcounts.has_pending_releases() {
            self.refcounts.apply_releases(storage)?;
            sync(storage)?;
        }
        Ok(())
    }

    /// Replaces the L1 table by `entries` at a new place (growth), keeping
    /// the old one until the header points at the new one.
    pub fn replace_l1(
        &mut self,
        storage: &dyn Storage,
        entries: Vec<u64>,
        size: u64,
    ) -> Result<()> {
        self.flush(storage)?;
        let cs = self.layout.cluster_size();
        let bytes_len = (entries.len() * L1_ENTRY_SIZE) as u64;
        let clusters = bytes_len.div_ceil(cs).max(1);
        let offset = self.allocate(storage, clusters)?;
        self.commit_refcounts(storage)?;
        let mut bytes = words_to_bytes(&entries);
        bytes.resize((clusters * cs) as usize, 0);
        storage
            .write_at(&bytes, offset.get(), WriteKind::L1)
            .map_err(|e| ImageError::io("writing the L1 table", offset.get(), e))?;
        sync(storage)?;
        let old_offset = self.area.header.l1_table_offset;
        let old_clusters =
            (u64::from(self.area.header.l1_size) * L1_ENTRY_SIZE as u64).div_ceil(cs);
        self.area.header.l1_table_offset = offset;
        self.area.header.l1_size = entries.len() as u32;
        self.area.header.size = size;
        self.write_header(storage)?;
        sync(storage)?;
        self.guard.reset_l1(&entries);
        self.l1 = entries;
        if old_clusters > 0 && old_offset.get() != 0 {
            let first: ClusterIndex = self.layout.geometry.host_cluster(old_offset);
            self.refcounts.release(first, old_clusters);
        }
        self.flush(storage)
    }
}

pub(crate) fn sync(storage: &dyn Storage) -> Result<()> {
    storage
        .flush()
        .map_err(|e| ImageError::io("flushing the image file", 0, e))
}
