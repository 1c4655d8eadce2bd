//! The live refcount structures of an open image and the cluster allocator.
//!
//! Ordering (design §4) is kept by the shape of the API rather than by the
//! caller's discipline:
//! - increments (allocations, new references) only touch the cached blocks;
//!   [`Refcounts::flush`] writes them before the caller writes any table that
//!   references the clusters;
//! - decrements are queued by [`Refcounts::release`] and applied by
//!   [`Refcounts::apply_releases`], which the caller runs only after the
//!   tables that dropped the references are durable. A released cluster
//!   therefore cannot be reused while a durable reference to it may remain.

use std::collections::{HashMap, HashSet};

use qcow2_format::header::MAX_REFTABLE_BYTES;
use qcow2_format::tables::refcount::{self, RefcountBlock, RefcountOrder, RefcountTableEntry};
use qcow2_format::{ClusterGeometry, ClusterIndex, Header, HostOffset};
use qcow2_io::{Storage, WriteKind};

use crate::error::{AllocError, Result};

/// Host offsets must fit in the 56 bits L1/L2 entries can hold.
const MAX_HOST_OFFSET: u64 = 1 << 56;

/// A refcount block held in memory.
#[derive(Debug)]
struct CachedBlock {
    offset: HostOffset,
    data: Vec<u8>,
    dirty: bool,
    last_use: u64,
}

/// Where the refcount table lives; the header must carry these values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLocation {
    /// Offset of the refcount table.
    pub offset: HostOffset,
    /// Its length in clusters.
    pub clusters: u32,
}

/// Refcount table and a cache of refcount blocks of one image, with the
/// cluster allocator built on them.
#[derive(Debug)]
pub struct Refcounts {
    geometry: ClusterGeometry,
    order: RefcountOrder,
    per_block: u64,
    location: TableLocation,
    /// Block offsets by table index (`None` = no block: all refcounts 0).
    table: Vec<Option<HostOffset>>,
    /// The same offsets as a set, so a data write can be checked against
    /// them without scanning the table.
    block_offsets: HashSet<HostOffset>,
    table_dirty: bool,
    /// The table the header still points at after a growth, freed once the
    /// header has been rewritten.
    replaced_table: Option<TableLocation>,
    blocks: HashMap<u64, CachedBlock>,
    max_cached_blocks: usize,
    clock: u64,
    pending_releases: Vec<(ClusterIndex, u64)>,
    /// No cluster below this index is free (a hint, never a promise).
    free_cursor: u64,
    /// Built without a table: refuses to allocate.
    detached: bool,
}

impl Refcounts {
    /// Loads the refcount table named by `header`; blocks are read on demand.
    pub fn load(storage: &dyn Storage, header: &Header) -> Result<Self> {
        let geometry = header.geometry()?;
        let order = RefcountOrder::new(header.refcount_order).ok_or(AllocError::Full {
            clusters: 0,
            reason: "refcount_order above 6",
        })?;
        let location = TableLocation {
            offset: header.refcount_table_offset,
            clusters: header.refcount_table_clusters,
        };
        let bytes = u64::from(location.clusters) * geometry.cluster_size();
        if bytes > MAX_REFTABLE_BYTES {
            return Err(AllocError::Full {
                clusters: u64::from(location.clusters),
                reason: "refcount table larger than 8 MiB",
            });
        }
        let mut buf = vec![0u8; bytes as usize];
        read(
            storage,
            &mut buf,
            location.offset.get(),
            "reading the refcount table",
        )?;
        let table = refcount::decode_table(&buf, geometry, location.offset.get())?
            .into_iter()
            .map(|e| e.block)
            .collect();
        Ok(Self::with_table(geometry, order, location, table))
    }

    /// Writes the refcount structures of a new image: the table at cluster
    /// 1 and one block at cluster 2, with clusters 0 (header), 1 and 2
    /// counted once. The caller writes the header.
    pub fn format(
        storage: &dyn Storage,
        geometry: ClusterGeometry,
        order: RefcountOrder,
    ) -> Result<Self> {
        let cs = geometry.cluster_size();
        let table_offset = HostOffset(cs);
        let block_offset = HostOffset(2 * cs);
        let location = TableLocation {
            offset: table_offset,
            clusters: 1,
        };
        let mut table = vec![None; (cs / 8) as usize];
        table[0] = Some(block_offset);
        let mut this = Self::with_table(geometry, order, location, table);
        this.table_dirty = true;
        this.blocks.insert(
            0,
            CachedBlock {
                offset: block_offset,
                data: vec![0; cs as usize],
                dirty: true,
                last_use: 0,
            },
        );
        for cluster in 0..3 {
            this.set(storage, ClusterIndex(cluster), 1)?;
        }
        this.flush(storage)?;
        Ok(this)
    }

    /// Refcounts with no table, for an image opened read-only whose
    /// refcount structures could not be loaded; every allocation fails.
    pub fn detached(geometry: ClusterGeometry, refcount_order: u32) -> Self {
        let order = RefcountOrder::new(refcount_order).unwrap_or(RefcountOrder::DEFAULT);
        let location = TableLocation {
            offset: HostOffset(0),
            clusters: 0,
        };
        let mut this = Self::with_table(geometry, order, location, Vec::new());
        this.detached = true;
        this
    }

    fn with_table(
        geometry: ClusterGeometry,
        order: RefcountOrder,
        location: TableLocation,
        table: Vec<Option<HostOffset>>,
    ) -> Self {
        // About 32 MiB of cached blocks, and never fewer than 16.
        let max_cached_blocks = ((32u64 << 20) / geometry.cluster_size()).max(16) as usize;
        let block_offsets = table.iter().flatten().copied().collect();
        Self {
            geometry,
            order,
            per_block: order.entries_per_block(geometry),
            location,
            table,
            block_offsets,
            table_dirty: false,
            replaced_table: None,
            blocks: HashMap::new(),
            max_cached_blocks,
            clock: 0,
            pending_releases: Vec::new(),
            free_cursor: 0,
            detached: false,
        }
    }

    /// Where the refcount table is now (changes when it grows).
    pub fn location(&self) -> TableLocation {
        self.location
    }

    /// Whether a refcount block lives at `offset` (a data write there
    /// would corrupt the refcounts).
    pub fn is_block(&self, offset: HostOffset) -> bool {
        self.block_offsets.contains(&offset)
    }

    /// The refcount width.
    pub fn order(&self) -> RefcountOrder {
        self.order
    }

    /// The refcount of a host cluster (0 for clusters no block covers).
    pub fn get(&mut self, storage: &dyn Storage, cluster: ClusterIndex) -> Result<u64> {
        let (index, entry) = self.order.locate(cluster, self.geometry);
        let order = self.order;
        match self.block(storage, index)? {
            Some(block) => Ok(RefcountBlock::new(&block.data[..], order, 0).get(entry)?),
            None => Ok(0),
        }
    }

    /// Adds one reference to an allocated cluster (a shared cluster: a
    /// snapshot, a deduplicated or packed compressed cluster).
    pub fn add_ref(&mut self, storage: &dyn Storage, cluster: ClusterIndex) -> Result<u64> {
        let value = self.get(storage, cluster)?;
        let max = self.order.max_refcount();
        if value >= max {
            return Err(AllocError::RefcountOverflow {
                cluster: cluster.get(),
                value: i128::from(value) + 1,
                max,
            });
        }
        self.set(storage, cluster, value + 1)?;
        Ok(value + 1)
    }

    /// Queues dropping `count` references to `clusters` consecutive host
    /// clusters from `first`; see [`Refcounts::apply_releases`].
    pub fn release(&mut self, first: ClusterIndex, clusters: u64) {
        if clusters > 0 {
            self.pending_releases.push((first, clusters));
        }
    }

    /// Whether releases wait for [`Refcounts::apply_releases`].
    pub fn has_pending_releases(&self) -> bool {
        !self.pending_releases.is_empty() || self.replaced_table.is_some()
    }

    /// Allocates `count` contiguous free clusters, sets their refcount to 1
    /// and returns the offset of the first. Creates refcount blocks and grows
    /// the refcount table as needed.
    pub fn allocate(&mut self, storage: &dyn Storage, count: u64) -> Result<HostOffset> {
        if count == 0 || self.detached {
            return Err(AllocError::Full {
                clusters: count,
                reason: if self.detached {
                    "refcount structures were not loaded"
                } else {
                    "empty allocation"
                },
            });
        }
        loop {
            let start = self.find_free_run(storage, self.free_cursor, count)?;
            let missing = self.missing_blocks(start, count);
            if let Some(&last) = missing.last() {
                if last >= self.table.len() as u64 {
                    self.grow_table(storage, last + 1)?;
                } else {
                    // The run is free and every block covering it is about
                    // to exist, so its first clusters can hold the blocks.
                    self.install_blocks(storage, &missing, start)?;
                }
                continue;
            }
            for c in start..start + count {
                self.set(storage, ClusterIndex(c), 1)?;
            }
            // Gaps skipped as too small are left behind until a release
            // moves the cursor back: rescanning them on every request would
            // make long runs of allocations quadratic.
            self.free_cursor = start + count;
            return self.offset_of(start);
        }
    }

    /// Writes every dirty block, then the table if it changed (after a
    /// storage flush, so new blocks are durable before the table names
    /// them), so that all increments made so far are on the storage (not
    /// yet flushed: the caller flushes the storage before writing
    /// references).
    ///
    /// Returns the new table location when the table moved; the caller must
    /// then make it durable, point the header at it, and call
    /// [`Refcounts::header_updated`].
    pub fn flush(&mut self, storage: &dyn Storage) -> Result<Option<TableLocation>> {
        let mut dirty: Vec<u64> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(&i, _)| i)
            .collect();
        dirty.sort_unstable();
        for index in dirty {
            self.write_block(storage, index)?;
        }
        if !self.table_dirty {
            return Ok(None);
        }
        // The table may point at blocks installed since the last flush
        // (written above or evicted earlier): they must be durable before
        // the entries that reference them, or a crash can leave an entry
        // naming a cluster that never received its block.
        storage
            .flush()
            .map_err(|e| AllocError::io("flushing the image file", 0, e))?;
        let entries: Vec<RefcountTableEntry> = self
            .table
            .iter()
            .map(|&block| RefcountTableEntry { block })
            .collect();
        let bytes = refcount::encode_table(&entries, self.geometry)?;
        let offset = self.location.offset.get();
        storage
            .write_at(&bytes, offset, WriteKind::RefcountTable)
            .map_err(|e| AllocError::io("writing the refcount table", offset, e))?;
        self.table_dirty = false;
        Ok(self.replaced_table.map(|_| self.location))
    }

    /// Records that the header now points at the current table: the old
    /// table's clusters are queued for release.
    pub fn header_updated(&mut self) {
        if let Some(old) = self.replaced_table.take() {
            let first = self.geometry.host_cluster(old.offset);
            self.release(first, u64::from(old.clusters));
        }
    }

    /// Applies queued releases and writes the blocks they change. Call only
    /// once the tables that dropped the references are durable. Returns the
    /// clusters whose refcount reached zero, so the caller may discard them.
    pub fn apply_releases(&mut self, storage: &dyn Storage) -> Result<Vec<(ClusterIndex, u64)>> {
        let pending = std::mem::take(&mut self.pending_releases);
        let mut freed: Vec<(ClusterIndex, u64)> = Vec::new();
        for (first, count) in pending {
            for c in first.get()..first.get() + count {
                let cluster = ClusterIndex(c);
                let value = self.get(storage, cluster)?;
                if value == 0 {
                    return Err(AllocError::RefcountOverflow {
                        cluster: c,
                        value: -1,
                        max: self.order.max_refcount(),
                    });
                }
                self.set(storage, cluster, value - 1)?;
                if value == 1 {
                    self.free_cursor = self.free_cursor.min(c);
                    match freed.last_mut() {
                        Some((start, n)) if start.get() + *n == c => *n += 1,
                        _ => freed.push((cluster, 1)),
                    }
                }
            }
        }
        self.flush(storage)?;
        Ok(freed)
    }

    /// Sets a refcount; the block covering `cluster` must exist.
    fn set(&mut self, storage: &dyn Storage, cluster: ClusterIndex, value: u64) -> Result<()> {
        let (index, entry) = self.order.locate(cluster, self.geometry);
        let order = self.order;
        let block = self.block(storage, index)?.ok_or(AllocError::Full {
            clusters: 1,
            reason: "no refcount block covers the cluster",
        })?;
        let offset = block.offset.get();
        RefcountBlock::new(&mut block.data[..], order, offset)
            .set(entry, value)
            .map_err(|_| AllocError::RefcountOverflow {
                cluster: cluster.get(),
                value: i128::from(value),
                max: order.max_refcount(),
            })?;
        block.dirty = true;
        Ok(())
    }

    /// The cached block for table index `index`, reading it if needed.
    fn block(&mut self, storage: &dyn Storage, index: u64) -> Result<Option<&mut CachedBlock>> {
        let Some(&Some(offset)) = self.table.get(index as usize) else {
            return Ok(None);
        };
        self.clock += 1;
        if !self.blocks.contains_key(&index) {
            self.make_room(storage)?;
            let mut data = vec![0u8; self.geometry.cluster_size() as usize];
            read(storage, &mut data, offset.get(), "reading a refcount block")?;
            self.blocks.insert(
                index,
                CachedBlock {
                    offset,
                    data,
                    dirty: false,
                    last_use: 0,
                },
            );
        }
        let clock = self.clock;
        let block = self.blocks.get_mut(&index);
        if let Some(b) = block {
            b.last_use = clock;
            return Ok(Some(b));
        }
        Ok(None)
    }

    /// Evicts the least recently used block when the cache is full. A dirty
    /// block is written first; it only holds increments, which may reach
    /// the disk at any time.
    fn make_room(&mut self, storage: &dyn Storage) -> Result<()> {
        if self.blocks.len() < self.max_cached_blocks {
            return Ok(());
        }
        let victim = self
            .blocks
            .iter()
            .min_by_key(|(_, b)| (b.dirty, b.last_use))
            .map(|(&i, _)| i);
        if let Some(index) = victim {
            self.write_block(storage, index)?;
            self.blocks.remove(&index);
        }
        Ok(())
    }

    fn write_block(&mut self, storage: &dyn Storage, index: u64) -> Result<()> {
        if let Some(block) = self.blocks.get_mut(&index) {
            if block.dirty {
                let offset = block.offset.get();
                storage
                    .write_at(&block.data, offset, WriteKind::RefcountBlock)
                    .map_err(|e| AllocError::io("writing a refcount block", offset, e))?;
                block.dirty = false;
            }
        }
        Ok(())
    }

    /// First index at or after `from` that starts `count` clusters of
    /// refcount 0.
    fn find_free_run(&mut self, storage: &dyn Storage, from: u64, count: u64) -> Result<u64> {
        let limit = MAX_HOST_OFFSET >> self.geometry.cluster_bits();
        let mut start = from;
        let mut c = from;
        while c < start + count {
            if start + count > limit {
                return Err(AllocError::Full {
                    clusters: count,
                    reason: "host offsets would exceed 2^56",
                });
            }
            let (index, _) = self.order.locate(ClusterIndex(c), self.geometry);
            if self.table.get(index as usize).copied().flatten().is_none() {
                // No block: the whole block range is free.
                c = (index + 1) * self.per_block;
                continue;
            }
            if self.get(storage, ClusterIndex(c))? != 0 {
                start = c + 1;
            }
            c += 1;
        }
        Ok(start)
    }

    /// The table indices among those covering `count` clusters from `start`
    /// that have no block, in order.
    fn missing_blocks(&self, start: u64, count: u64) -> Vec<u64> {
        let first = start / self.per_block;
        let last = (start + count - 1) / self.per_block;
        (first..=last)
            .filter(|&i| self.table.get(i as usize).copied().flatten().is_none())
            .collect()
    }

    /// Creates zeroed blocks for table `indices` at consecutive free host
    /// clusters from `at`, all inside a free run whose covering blocks are
    /// exactly these and existing ones, so each block's own refcount has a
    /// home.
    fn install_blocks(&mut self, storage: &dyn Storage, indices: &[u64], at: u64) -> Result<()> {
        for (i, &index) in indices.iter().enumerate() {
            let offset = self.offset_of(at + i as u64)?;
            self.make_room(storage)?;
            self.set_table_entry(index, offset);
            self.insert_zeroed_block(index, offset);
        }
        for i in 0..indices.len() as u64 {
            self.set(storage, ClusterIndex(at + i), 1)?;
        }
        Ok(())
    }

    /// Points table entry `index` (within the table) at a new block.
    fn set_table_entry(&mut self, index: u64, offset: HostOffset) {
        self.table[index as usize] = Some(offset);
        self.block_offsets.insert(offset);
        self.table_dirty = true;
    }

    /// Caches a new, all-zero block for table index `index` at `offset`.
    fn insert_zeroed_block(&mut self, index: u64, offset: HostOffset) {
        let block = CachedBlock {
            offset,
            data: vec![0; self.geometry.cluster_size() as usize],
            dirty: true,
            last_use: self.clock,
        };
        self.blocks.insert(index, block);
    }

    /// Replaces the table by a larger one of at least `min_entries` entries,
    /// placed with any blocks it needs in fresh clusters that describe
    /// themselves. The old table is freed after the header moves.
    fn grow_table(&mut self, storage: &dyn Storage, min_entries: u64) -> Result<()> {
        let per_cluster = self.geometry.cluster_size() / 8;
        let mut entries = min_entries.max(self.table.len() as u64 * 3 / 2);
        let (start, table_clusters, new_blocks) = loop {
            let table_clusters = entries.div_ceil(per_cluster);
            let mut extra = 0;
            let start = loop {
                let start =
                    self.find_free_run(storage, self.free_cursor, table_clusters + extra)?;
                let span = table_clusters + extra;
                let needed = self.blocks_missing_in(start, span);
                if needed <= extra {
                    break start;
                }
                extra = needed;
            };
            let end = start + table_clusters + extra;
            let last_index = (end - 1) / self.per_block;
            if last_index < entries {
                break (start, table_clusters, extra);
            }
            entries = last_index + 1;
        };
        if table_clusters * self.geometry.cluster_size() > MAX_REFTABLE_BYTES {
            return Err(AllocError::Full {
                clusters: table_clusters,
                reason: "refcount table would exceed 8 MiB",
            });
        }
        let old = self.location;
        let mut table = std::mem::take(&mut self.table);
        table.resize((table_clusters * per_cluster) as usize, None);
        self.table = table;
        // Blocks for the new range go right after the table.
        let mut next = start + table_clusters;
        let first = start / self.per_block;
        let last = (start + table_clusters + new_blocks - 1) / self.per_block;
        let mut placed = Vec::new();
        for index in first..=last {
            if self.table[index as usize].is_none() {
                let offset = self.offset_of(next)?;
                self.set_table_entry(index, offset);
                self.insert_zeroed_block(index, offset);
                placed.push(next);
                next += 1;
            }
        }
        for c in start..start + table_clusters {
            self.set(storage, ClusterIndex(c), 1)?;
        }
        for c in placed {
            self.set(storage, ClusterIndex(c), 1)?;
        }
        self.location = TableLocation {
            offset: self.offset_of(start)?,
            clusters: u32::try_from(table_clusters).map_err(|_| AllocError::Full {
                clusters: table_clusters,
                reason: "refcount table too large",
            })?,
        };
        self.table_dirty = true;
        // A second growth before the header moved: the intermediate table
        // was never referenced and is simply released.
        match self.replaced_table {
            None => self.replaced_table = Some(old),
            Some(_) => {
                let first = self.geometry.host_cluster(old.offset);
                self.release(first, u64::from(old.clusters));
            }
        }
        Ok(())
    }

    /// How many table indices covering `span` clusters from `start` lack a
    /// block, counting indices at or beyond the current table as missing.
    fn blocks_missing_in(&self, start: u64, span: u64) -> u64 {
        let first = start / self.per_block;
        let last = (start + span.max(1) - 1) / self.per_block;
        (first..=last)
            .filter(|&i| self.table.get(i as usize).copied().flatten().is_none())
            .count() as u64
    }

    fn offset_of(&self, cluster: u64) -> Result<HostOffset> {
        self.geometry
            .cluster_start(ClusterIndex(cluster))
            .filter(|o| o.get() < MAX_HOST_OFFSET)
            .ok_or(AllocError::Full {
                clusters: 1,
                reason: "host offsets would exceed 2^56",
            })
    }
}

fn read(storage: &dyn Storage, buf: &mut [u8], offset: u64, action: &'static str) -> Result<()> {
    storage
        .read_at(buf, offset)
        .map_err(|e| AllocError::io(action, offset, e))
}
