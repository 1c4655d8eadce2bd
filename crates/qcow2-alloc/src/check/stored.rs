//! The refcounts the image stores: its refcount table and blocks, read (and
//! for repair, written) one block at a time.

use std::collections::{BTreeSet, HashMap};

use qcow2_format::tables::refcount::RC_TABLE_RESERVED_MASK;
use qcow2_format::tables::RefcountBlock;
use qcow2_io::WriteKind;

use super::error::{CheckError, CheckResult};
use super::image::{be64, Image};

/// Blocks kept in memory at once.
const CACHE_BLOCKS: usize = 32;

/// A stored refcount that cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unreadable {
    /// Refcount table index.
    pub index: u64,
    /// The misaligned block offset it holds.
    pub block: u64,
}

/// Reads and updates the stored refcounts.
#[derive(Debug)]
pub(crate) struct Stored<'i, 'a> {
    img: &'i Image<'a>,
    table: Vec<u8>,
    entries: u64,
    per_block: u64,
    cache: HashMap<u64, Vec<u8>>,
    dirty: BTreeSet<u64>,
}

impl<'i, 'a> Stored<'i, 'a> {
    /// Reads the refcount table (at most 8 MiB, as the header validation
    /// guarantees; only the part inside the file).
    pub fn load(img: &'i Image<'a>) -> CheckResult<Self> {
        let h = &img.area.header;
        let entries = u64::from(h.refcount_table_clusters) * img.cluster_size() / 8;
        let table = img.read_in_file(
            h.refcount_table_offset.get(),
            entries * 8,
            "reading the refcount table",
        )?;
        Ok(Self {
            img,
            table,
            entries,
            per_block: img.order.entries_per_block(img.geo),
            cache: HashMap::new(),
            dirty: BTreeSet::new(),
        })
    }

    /// Refcounts per block.
    pub fn per_block(&self) -> u64 {
        self.per_block
    }

    /// The block offset of refcount table entry `index` (reserved bits
    /// ignored, as QEMU reads them); 0 when there is none.
    pub fn block_of(&self, index: u64) -> u64 {
        if index >= self.entries {
            return 0;
        }
        usize::try_from(index * 8).map_or(0, |at| be64(&self.table, at) & !RC_TABLE_RESERVED_MASK)
    }

    fn block(&mut self, offset: u64) -> CheckResult<&mut Vec<u8>> {
        if !self.cache.contains_key(&offset) {
            if self.cache.len() >= CACHE_BLOCKS {
                self.write_dirty()?;
                self.cache.clear();
            }
            let buf = self
                .img
                .read(offset, self.img.cluster_size(), "reading a refcount block")?;
            self.cache.insert(offset, buf);
        }
        self.cache.get_mut(&offset).ok_or(CheckError::Rebuild {
            reason: "refcount block cache lost a block".into(),
        })
    }

    /// Where the refcount of `cluster` lives: (block offset, index in it),
    /// `Ok(None)` when no block covers it.
    fn locate(&self, cluster: u64) -> Result<Option<(u64, u64)>, Unreadable> {
        let index = cluster / self.per_block;
        let block = self.block_of(index);
        if block == 0 {
            return Ok(None);
        }
        if !self.img.geo.is_aligned(block) {
            return Err(Unreadable { index, block });
        }
        Ok(Some((block, cluster % self.per_block)))
    }

    /// The stored refcount of `cluster`.
    pub fn get(&mut self, cluster: u64) -> CheckResult<Result<u64, Unreadable>> {
        let (block, i) = match self.locate(cluster) {
            Ok(Some(place)) => place,
            Ok(None) => return Ok(Ok(0)),
            Err(e) => return Ok(Err(e)),
        };
        let order = self.img.order;
        let buf = self.block(block)?;
        Ok(Ok(RefcountBlock::new(buf.as_slice(), order, block)
            .get(i)
            .unwrap_or(0)))
    }

    /// Sets the stored refcount of `cluster`, which a block must cover; the
    /// block is written by [`Stored::write_dirty`].
    pub fn set(&mut self, cluster: u64, value: u64) -> CheckResult<bool> {
        let Ok(Some((block, i))) = self.locate(cluster) else {
            return Ok(false);
        };
        let order = self.img.order;
        let buf = self.block(block)?;
        let ok = RefcountBlock::new(buf.as_mut_slice(), order, block)
            .set(i, value)
            .is_ok();
        if ok {
            self.dirty.insert(block);
        }
        Ok(ok)
    }

    /// Writes every modified block and makes the writes durable.
    pub fn write_dirty(&mut self) -> CheckResult<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        for &block in &self.dirty {
            if let Some(buf) = self.cache.get(&block) {
                self.img
                    .storage
                    .write_at(buf, block, WriteKind::RefcountBlock)
                    .map_err(|e| CheckError::io("writing a refcount block", block, e))?;
            }
        }
        self.dirty.clear();
        self.img
            .storage
            .flush()
            .map_err(|e| CheckError::io("flushing refcount blocks", 0, e))
    }
}
