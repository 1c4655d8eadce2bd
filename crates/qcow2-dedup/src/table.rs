//! The on-disk dedup table of an open image: the level-1 table in memory,
//! level-2 dedup clusters in a bounded write-back cache.
//!
//! A level-2 dedup cluster that the durable level-1 table names is never
//! rewritten in place: its 40-byte entries straddle 512-byte sectors, so a
//! torn write could leave a half-written entry. Changed clusters are
//! written to fresh clusters and the level-1 entry (8 bytes, one sector) is
//! switched; the caller releases the old cluster once that is durable
//! ([`DedupTable::take_released`]).
//!
//! Ordering is the caller's: [`DedupTable::stage_clears`] writes copies
//! holding only the cleared entries (before the references to the freed
//! clusters drop), [`DedupTable::stage_all`] copies holding every change
//! (once the data and the L2 entries that map it are durable); after each,
//! the caller makes the copies and their refcounts durable and writes the
//! level-1 table ([`DedupTable::write_named_l1`], [`DedupTable::write_l1`]).
//! A grown level-1 table is written whole at a new place and only used once
//! the header names it ([`DedupTable::take_replaced`]).

use std::collections::HashMap;

use qcow2_format::extensions::Dedup;
use qcow2_format::rules;
use qcow2_format::tables::dedup_table::{self, DedupEntry, DedupIndex};
use qcow2_format::{ClusterGeometry, ClusterIndex, HostOffset};
use qcow2_io::{Storage, WriteKind};
use rayon::prelude::*;

use crate::error::{DedupError, Result};

/// Most level-1 entries a table may have (DD-L1-SIZE: a 32 MiB table).
pub const MAX_L1_ENTRIES: u64 = 4 << 20;
/// Bytes of level-2 dedup clusters kept in memory.
const CACHE_BYTES: u64 = 16 << 20;

/// Where the embedding image takes clusters for the table from.
pub trait ClusterAllocator {
    /// Allocates `clusters` contiguous clusters (refcount 1, made durable by
    /// the caller before anything names them) and returns the first.
    fn allocate(&mut self, storage: &dyn Storage, clusters: u64) -> Result<HostOffset>;
}

#[derive(Debug)]
struct Slot {
    offset: HostOffset,
    data: Vec<u8>,
    /// What the storage holds at `offset` while the slot is dirty, when
    /// the durable level-1 table names it (`None`: a new cluster).
    disk: Option<Vec<u8>>,
    /// The durable level-1 table names `offset`: never write it in place.
    named: bool,
    dirty: bool,
    last_use: u64,
}

/// The dedup table of an image open for writing.
#[derive(Debug)]
pub struct DedupTable {
    geometry: ClusterGeometry,
    l1_offset: HostOffset,
    l1: Vec<Option<HostOffset>>,
    l1_dirty: bool,
    /// The level-1 table the header still names after a growth.
    replaced: Option<(HostOffset, u64)>,
    /// Tables grown past before the header ever named them.
    orphans: Vec<(HostOffset, u64)>,
    /// The level-1 table as the header names it on disk: its location and
    /// entries (what a crash would find).
    disk_l1_offset: HostOffset,
    disk_l1: Vec<Option<HostOffset>>,
    /// Level-2 clusters replaced by copies, to release once the level-1
    /// table that no longer names them is durable.
    released: Vec<(HostOffset, u64)>,
    cache: HashMap<u64, Slot>,
    max_cached: usize,
    clock: u64,
}

fn l1_clusters(entries: u64, geometry: ClusterGeometry) -> u64 {
    (entries * 8).div_ceil(geometry.cluster_size()).max(1)
}

impl DedupTable {
    /// Loads the table the extension `ext` names, checking that it fits the
    /// rules and the file (`file_len`).
    pub fn load(
        storage: &dyn Storage,
        ext: Dedup,
        geometry: ClusterGeometry,
        file_len: u64,
    ) -> Result<Self> {
        let size = u64::from(ext.l1_size);
        let offset = ext.l1_offset.get();
        if size == 0 || size > MAX_L1_ENTRIES {
            return Err(DedupError::Table {
                rule: if size == 0 {
                    rules::DD_PRESENCE
                } else {
                    rules::DD_L1_SIZE
                },
                offset,
                reason: format!("the level-1 dedup table has {size} entries"),
            });
        }
        if offset == 0 || !geometry.is_aligned(offset) || offset + size * 8 > file_len {
            return Err(DedupError::Table {
                rule: rules::DD_L1_OFFSET,
                offset,
                reason: format!(
                    "a level-1 dedup table of {size} entries at {offset:#x} is misaligned or \
                     outside the {file_len}-byte file"
                ),
            });
        }
        let mut buf = vec![0u8; (size * 8) as usize];
        storage
            .read_at(&mut buf, offset)
            .map_err(|e| DedupError::io("reading the level-1 dedup table", offset, e))?;
        let l1 = dedup_table::decode_l1_table(&buf, geometry, offset)?;
        for (i, entry) in l1.iter().enumerate() {
            if let Some(l2) = entry {
                if l2.get() + geometry.cluster_size() > file_len {
                    return Err(DedupError::Table {
                        rule: rules::DD_L1_ENTRY,
                        offset: offset + 8 * i as u64,
                        reason: format!("level-2 dedup cluster {l2} is outside the file"),
                    });
                }
            }
        }
        Ok(Self::with_l1(geometry, ext.l1_offset, l1))
    }

    /// Creates an empty table that covers `host_clusters` physical clusters
    /// (at least one level-1 entry); the caller then writes the extension
    /// ([`DedupTable::extension`]) once the table is durable.
    pub fn create(
        storage: &dyn Storage,
        alloc: &mut dyn ClusterAllocator,
        geometry: ClusterGeometry,
        host_clusters: u64,
    ) -> Result<Self> {
        let entries = dedup_table::l1_entries_for(host_clusters, geometry).max(1);
        let clusters = l1_clusters(entries, geometry);
        let offset = alloc.allocate(storage, clusters)?;
        storage
            .write_zeroes(
                offset.get(),
                clusters * geometry.cluster_size(),
                WriteKind::DedupTable,
            )
            .map_err(|e| DedupError::io("writing the level-1 dedup table", offset.get(), e))?;
        Ok(Self::with_l1(
            geometry,
            offset,
            vec![None; entries as usize],
        ))
    }

    fn with_l1(
        geometry: ClusterGeometry,
        l1_offset: HostOffset,
        l1: Vec<Option<HostOffset>>,
    ) -> Self {
        Self {
            geometry,
            l1_offset,
            l1: l1.clone(),
            l1_dirty: false,
            replaced: None,
            orphans: Vec::new(),
            disk_l1_offset: l1_offset,
            disk_l1: l1.clone(),
            released: Vec::new(),
            cache: HashMap::new(),
            max_cached: (CACHE_BYTES / geometry.cluster_size()).max(8) as usize,
            clock: 0,
        }
    }

    /// The extension that names this table.
    pub fn extension(&self) -> Dedup {
        Dedup {
            l1_offset: self.l1_offset,
            l1_size: self.l1.len() as u32,
        }
    }

    /// Physical clusters the level-1 table covers now.
    pub fn covered_clusters(&self) -> u64 {
        self.l1.len() as u64 * dedup_table::entries_per_l2(self.geometry)
    }

    /// Every cluster the table occupies: the level-1 table's and the
    /// level-2 dedup clusters, as (first cluster offset, cluster count).
    pub fn clusters(&self) -> Vec<(HostOffset, u64)> {
        let mut out = vec![(
            self.l1_offset,
            l1_clusters(self.l1.len() as u64, self.geometry),
        )];
        out.extend(self.l1.iter().flatten().map(|&o| (o, 1)));
        out
    }

    /// The entry of physical cluster `p` (`None` = no hash).
    pub fn get(&mut self, storage: &dyn Storage, p: ClusterIndex) -> Result<Option<DedupEntry>> {
        let geometry = self.geometry;
        let at = DedupIndex::of(p, geometry);
        let Some(slot) = self.slot(storage, at.l1)? else {
            return Ok(None);
        };
        let base = slot.offset.get();
        Ok(dedup_table::decode_l2_entry_at(
            &slot.data, at.l2, geometry, base,
        )?)
    }

    /// Sets (or with `None` clears) the entry of physical cluster `p`,
    /// growing the level-1 table and allocating a level-2 dedup cluster
    /// when needed. No entry reaches the storage before the write calls.
    pub fn set(
        &mut self,
        storage: &dyn Storage,
        alloc: &mut dyn ClusterAllocator,
        p: ClusterIndex,
        entry: Option<DedupEntry>,
    ) -> Result<()> {
        let at = DedupIndex::of(p, self.geometry);
        if at.l1 >= self.l1.len() as u64 {
            if entry.is_none() {
                return Ok(());
            }
            self.grow(storage, alloc, at.l1 + 1)?;
        }
        if self.l1[at.l1 as usize].is_none() {
            if entry.is_none() {
                return Ok(());
            }
            let offset = alloc.allocate(storage, 1)?;
            self.make_room(storage)?;
            self.cache.insert(
                at.l1,
                Slot {
                    offset,
                    data: vec![0; self.geometry.cluster_size() as usize],
                    disk: None,
                    named: false,
                    dirty: true,
                    last_use: self.clock,
                },
            );
            self.l1[at.l1 as usize] = Some(offset);
            self.l1_dirty = true;
        }
        let geometry = self.geometry;
        let slot = self
            .slot(storage, at.l1)?
            .ok_or_else(|| DedupError::Alloc("level-2 dedup cluster vanished".into()))?;
        if !slot.dirty && slot.named {
            slot.disk = Some(slot.data.clone());
        }
        dedup_table::encode_l2_entry_at(&mut slot.data, at.l2, entry, geometry)?;
        slot.dirty = true;
        Ok(())
    }

    /// Writes, for every dirty level-2 cluster the durable level-1 table
    /// names and that has cleared entries, a copy of the stored cluster
    /// with those entries zeroed (new entries keep waiting), and points the
    /// on-disk image of the level-1 table at the copies. Returns whether
    /// anything was written; if so, the caller makes the copies and their
    /// refcounts durable, then calls [`DedupTable::write_named_l1`].
    pub fn stage_clears(
        &mut self,
        storage: &dyn Storage,
        alloc: &mut dyn ClusterAllocator,
    ) -> Result<bool> {
        let n = dedup_table::entries_per_l2(self.geometry) as usize;
        let size = dedup_table::DEDUP_ENTRY_SIZE;
        let mut keys: Vec<u64> = self.cache.keys().copied().collect();
        keys.sort_unstable();
        let mut wrote = false;
        for k in keys {
            let Some(slot) = self.cache.get_mut(&k) else {
                continue;
            };
            if !slot.dirty || !slot.named {
                continue;
            }
            let Some(disk) = slot.disk.as_mut() else {
                continue;
            };
            let mut changed = false;
            for i in 0..n {
                let r = i * size..(i + 1) * size;
                let now_empty = slot.data[r.clone()].iter().all(|&b| b == 0);
                if now_empty && disk[r.clone()].iter().any(|&b| b != 0) {
                    disk[r].fill(0);
                    changed = true;
                }
            }
            if !changed {
                continue;
            }
            let copy = alloc.allocate(storage, 1)?;
            storage
                .write_at(disk, copy.get(), WriteKind::DedupTable)
                .map_err(|e| DedupError::io("writing a level-2 dedup cluster", copy.get(), e))?;
            self.released.push((slot.offset, 1));
            slot.offset = copy;
            self.l1[k as usize] = Some(copy);
            if let Some(e) = self.disk_l1.get_mut(k as usize) {
                *e = Some(copy);
            }
            self.l1_dirty = true;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Writes the on-disk image of the level-1 table (as changed by
    /// [`DedupTable::stage_clears`]) where the header names it.
    pub fn write_named_l1(&mut self, storage: &dyn Storage) -> Result<()> {
        let bytes = dedup_table::encode_l1_table(&self.disk_l1, self.geometry)?;
        let at = self.disk_l1_offset.get();
        storage
            .write_at(&bytes, at, WriteKind::DedupTable)
            .map_err(|e| DedupError::io("writing the level-1 dedup table", at, e))
    }

    /// Whether anything waits to be written.
    pub fn is_dirty(&self) -> bool {
        self.l1_dirty || self.cache.values().any(|s| s.dirty)
    }

    /// Whether the level-1 table waits to be written.
    pub fn l1_dirty(&self) -> bool {
        self.l1_dirty
    }

    /// Writes every dirty level-2 dedup cluster: in place when nothing
    /// durable names it yet, otherwise to a fresh copy that the level-1
    /// table will name. Call once the data the entries describe and the L2
    /// entries that map it are durable; then make the writes and their
    /// refcounts durable and call [`DedupTable::write_l1`].
    pub fn stage_all(
        &mut self,
        storage: &dyn Storage,
        alloc: &mut dyn ClusterAllocator,
    ) -> Result<()> {
        let mut keys: Vec<u64> = self
            .cache
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(&k, _)| k)
            .collect();
        keys.sort_unstable();
        for k in keys {
            let named = self.cache.get(&k).is_some_and(|s| s.named);
            let target = if named {
                alloc.allocate(storage, 1)?
            } else {
                match self.cache.get(&k) {
                    Some(s) => s.offset,
                    None => continue,
                }
            };
            let Some(slot) = self.cache.get_mut(&k) else {
                continue;
            };
            storage
                .write_at(&slot.data, target.get(), WriteKind::DedupTable)
                .map_err(|e| DedupError::io("writing a level-2 dedup cluster", target.get(), e))?;
            if named {
                self.released.push((slot.offset, 1));
                slot.offset = target;
                slot.named = false;
                self.l1[k as usize] = Some(target);
                self.l1_dirty = true;
            }
            slot.dirty = false;
            slot.disk = None;
        }
        Ok(())
    }

    /// Writes the level-1 table if it changed (whole, at its current place).
    /// Call once the level-2 clusters it names are durable. When it grew,
    /// the header must then be pointed at it (see
    /// [`DedupTable::take_replaced`]); otherwise it is now what the disk
    /// holds.
    pub fn write_l1(&mut self, storage: &dyn Storage) -> Result<()> {
        if !self.l1_dirty {
            return Ok(());
        }
        let bytes = dedup_table::encode_l1_table(&self.l1, self.geometry)?;
        storage
            .write_at(&bytes, self.l1_offset.get(), WriteKind::DedupTable)
            .map_err(|e| {
                DedupError::io("writing the level-1 dedup table", self.l1_offset.get(), e)
            })?;
        self.l1_dirty = false;
        if self.replaced.is_none() {
            self.now_named();
        }
        Ok(())
    }

    /// The level-1 table in memory is the durable one.
    fn now_named(&mut self) {
        self.disk_l1 = self.l1.clone();
        self.disk_l1_offset = self.l1_offset;
        for slot in self.cache.values_mut() {
            slot.named = true;
        }
    }

    /// Level-2 clusters replaced by copies; release them once the level-1
    /// table written after the copies is durable (and named by the header).
    pub fn take_released(&mut self) -> Vec<(HostOffset, u64)> {
        std::mem::take(&mut self.released)
    }

    /// Whether the header still names an older level-1 table.
    pub fn moved(&self) -> bool {
        self.replaced.is_some()
    }

    /// Once the header names the current level-1 table: the old tables'
    /// clusters (first offset, count), for the caller to release.
    pub fn take_replaced(&mut self) -> Vec<(HostOffset, u64)> {
        if self.replaced.is_some() && !self.l1_dirty {
            self.now_named();
        }
        let mut out: Vec<_> = self.replaced.take().into_iter().collect();
        out.append(&mut self.orphans);
        out
    }

    fn grow(
        &mut self,
        storage: &dyn Storage,
        alloc: &mut dyn ClusterAllocator,
        min_entries: u64,
    ) -> Result<()> {
        let entries = min_entries.max(self.l1.len() as u64 * 3 / 2);
        if entries > MAX_L1_ENTRIES {
            return Err(DedupError::Table {
                rule: rules::DD_L1_SIZE,
                offset: self.l1_offset.get(),
                reason: format!("the level-1 dedup table would need {entries} entries"),
            });
        }
        let clusters = l1_clusters(entries, self.geometry);
        let offset = alloc.allocate(storage, clusters)?;
        storage
            .write_zeroes(
                offset.get(),
                clusters * self.geometry.cluster_size(),
                WriteKind::DedupTable,
            )
            .map_err(|e| DedupError::io("writing the level-1 dedup table", offset.get(), e))?;
        let old = (
            self.l1_offset,
            l1_clusters(self.l1.len() as u64, self.geometry),
        );
        // A second growth before the header moved: the middle table was
        // never named by the header and goes with the first.
        match self.replaced {
            None => self.replaced = Some(old),
            Some(_) => self.orphans.push(old),
        }
        self.l1.resize(entries as usize, None);
        self.l1_offset = offset;
        self.l1_dirty = true;
        Ok(())
    }

    fn slot(&mut self, storage: &dyn Storage, l1_index: u64) -> Result<Option<&mut Slot>> {
        let Some(Some(offset)) = self.l1.get(l1_index as usize).copied() else {
            return Ok(None);
        };
        self.clock += 1;
        if !self.cache.contains_key(&l1_index) {
            self.make_room(storage)?;
            let mut data = vec![0u8; self.geometry.cluster_size() as usize];
            storage
                .read_at(&mut data, offset.get())
                .map_err(|e| DedupError::io("reading a level-2 dedup cluster", offset.get(), e))?;
            self.cache.insert(
                l1_index,
                Slot {
                    offset,
                    data,
                    disk: None,
                    named: true,
                    dirty: false,
                    last_use: 0,
                },
            );
        }
        let clock = self.clock;
        let slot = self.cache.get_mut(&l1_index);
        if let Some(s) = slot {
            s.last_use = clock;
            return Ok(Some(s));
        }
        Ok(None)
    }

    fn make_room(&mut self, storage: &dyn Storage) -> Result<()> {
        if self.cache.len() < self.max_cached {
            return Ok(());
        }
        // Only clean clusters are evicted: a dirty entry may describe a
        // cluster whose mapping is not durable yet, and only the image's
        // ordered flush knows when it is. Dirty clusters are bounded by
        // what one flush interval changes.
        let victim = self
            .cache
            .iter()
            .filter(|(_, s)| !s.dirty)
            .min_by_key(|(_, s)| s.last_use)
            .map(|(&k, _)| k);
        if let Some(k) = victim {
            self.cache.remove(&k);
        }
        let _ = storage;
        Ok(())
    }

    /// Every non-empty entry as stored (write the table first), read on
    /// all cores: (physical cluster, entry).
    pub fn entries(&self, storage: &dyn Storage) -> Result<Vec<(ClusterIndex, DedupEntry)>> {
        let n = dedup_table::entries_per_l2(self.geometry);
        let geometry = self.geometry;
        let per_l2: Vec<Result<Vec<(ClusterIndex, DedupEntry)>>> = self
            .l1
            .par_iter()
            .enumerate()
            .filter_map(|(k, e)| e.map(|o| (k as u64, o)))
            .map(|(k, offset)| {
                let mut data = vec![0u8; geometry.cluster_size() as usize];
                storage.read_at(&mut data, offset.get()).map_err(|e| {
                    DedupError::io("reading a level-2 dedup cluster", offset.get(), e)
                })?;
                let decoded = dedup_table::decode_l2_cluster(&data, geometry, offset.get())?;
                Ok(decoded
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, e)| e.map(|e| (ClusterIndex(k * n + i as u64), e)))
                    .collect())
            })
            .collect();
        let mut out = Vec::new();
        for part in per_l2 {
            out.extend(part?);
        }
        Ok(out)
    }
}
