//! Rebuilding the refcount structure from the computed refcounts: a new
//! refcount table and new blocks, placed after everything in use, that
//! describe every referenced cluster and themselves.

use std::collections::BTreeSet;

use qcow2_format::header::MAX_REFTABLE_BYTES;
use qcow2_format::tables::{RefcountBlock, RefcountOrder};
use qcow2_io::WriteKind;

use crate::check::image::Image;
use crate::check::refmap::RefMap;
use crate::check::walk::walk;
use crate::check::{CheckError, CheckReport, CheckResult, ExtraReferences};

use super::header;

/// Host offsets must fit the 56 bits tables can hold.
const MAX_HOST_OFFSET: u64 = 1 << 56;

/// Where the new structure went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Offset of the new refcount table.
    pub table_offset: u64,
    /// Its length in clusters.
    pub table_clusters: u32,
    /// Number of refcount blocks written.
    pub blocks: u64,
}

/// The layout of a new structure starting at cluster `end`.
struct Layout {
    /// Refcount table indices that get a block, in order.
    blocks: Vec<u64>,
    /// Clusters of the table.
    table_clusters: u64,
}

impl Layout {
    fn clusters(&self) -> u64 {
        self.blocks.len() as u64 + self.table_clusters
    }
}

/// Finds the smallest layout that covers the referenced clusters and the
/// new structure itself, placed from cluster `end` on.
fn layout(
    used: &BTreeSet<u64>,
    end: u64,
    per_block: u64,
    cluster_size: u64,
) -> CheckResult<Layout> {
    let mut size = 0u64;
    // Each round can only grow the structure; it settles within a few rounds.
    for _ in 0..64 {
        let total = end + size;
        let last_index = total.saturating_sub(1) / per_block;
        let mut blocks = used.clone();
        if size > 0 {
            blocks.extend(end / per_block..=last_index);
        }
        let table_clusters = (last_index + 1).saturating_mul(8).div_ceil(cluster_size);
        let candidate = Layout {
            blocks: blocks.into_iter().collect(),
            table_clusters,
        };
        if candidate.clusters() == size {
            return Ok(candidate);
        }
        size = candidate.clusters();
    }
    Err(CheckError::Rebuild {
        reason: "the refcount structure layout does not settle".into(),
    })
}

/// Refcount table indices whose clusters have a non-zero computed refcount.
fn used_indices(map: &RefMap, per_block: u64) -> BTreeSet<u64> {
    (0..map.len().div_ceil(per_block))
        .filter(|&i| !map.all_zero(i * per_block, (i + 1) * per_block))
        .collect()
}

/// Writes a new refcount structure for `img` and points the header at it.
pub(crate) fn rebuild(img: &Image<'_>, extra: &[&dyn ExtraReferences]) -> CheckResult<Placed> {
    // The references without the old refcount structure, which becomes free.
    let mut scratch = CheckReport::default();
    let map = walk(img, &mut scratch, extra, false)?.map;
    let placed = place(img, &map, img.order)?;
    // Flushes the new blocks and table before the header names them.
    header::point_at_reftable(img, placed.table_offset, placed.table_clusters)?;
    Ok(placed)
}

/// Writes a refcount table and blocks of width `order` holding the counts
/// of `map` (capped at what `order` holds) after everything in use, and
/// describing themselves. The header is left alone: the caller points it
/// at the result once the writes are durable.
pub(crate) fn place(img: &Image<'_>, map: &RefMap, order: RefcountOrder) -> CheckResult<Placed> {
    let cs = img.cluster_size();
    let per_block = order.entries_per_block(img.geo);
    let end = img
        .geo
        .clusters_for(img.file_len)
        .max(map.highest_nonzero().map_or(0, |h| h + 1));
    let plan = layout(&used_indices(map, per_block), end, per_block, cs)?;
    let max_table = (MAX_REFTABLE_BYTES / cs).max(1);
    let structure_end = (end + plan.clusters()).saturating_mul(cs);
    if plan.table_clusters > max_table || structure_end > MAX_HOST_OFFSET {
        return Err(CheckError::Rebuild {
            reason: format!(
                "a refcount table of {} clusters ending at {structure_end:#x} exceeds the limits ({max_table} clusters, offset {MAX_HOST_OFFSET:#x})",
                plan.table_clusters
            ),
        });
    }
    let new_start = end;
    let new_end = end + plan.clusters();
    let table_offset = end * cs;
    let refcount_of = |cluster: u64| {
        if (new_start..new_end).contains(&cluster) {
            1
        } else {
            map.get(cluster).min(order.max_refcount())
        }
    };
    let mut table = vec![0u8; (plan.table_clusters * cs) as usize];
    for (k, &index) in plan.blocks.iter().enumerate() {
        let offset = (end + plan.table_clusters + k as u64) * cs;
        let mut buf = vec![0u8; cs as usize];
        let mut block = RefcountBlock::new(buf.as_mut_slice(), order, offset);
        for i in 0..per_block {
            let value = refcount_of(index * per_block + i);
            if value != 0 {
                block.set(i, value).map_err(CheckError::Header)?;
            }
        }
        img.storage
            .write_at(&buf, offset, WriteKind::RefcountBlock)
            .map_err(|e| CheckError::io("writing a rebuilt refcount block", offset, e))?;
        let at = (index * 8) as usize;
        table[at..at + 8].copy_from_slice(&offset.to_be_bytes());
    }
    img.storage
        .write_at(&table, table_offset, WriteKind::RefcountTable)
        .map_err(|e| CheckError::io("writing the rebuilt refcount table", table_offset, e))?;
    Ok(Placed {
        table_offset,
        table_clusters: plan.table_clusters as u32,
        blocks: plan.blocks.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_itself() {
        // 64 KiB clusters, 16-bit refcounts: 32768 refcounts per block.
        let used: BTreeSet<u64> = [0].into_iter().collect();
        let plan = layout(&used, 11, 32768, 65536).unwrap();
        assert_eq!(plan.blocks, vec![0]);
        assert_eq!(plan.table_clusters, 1);
        // The new clusters 11 and 12 are covered by block 0 too.
        let plan = layout(&used, 32767, 32768, 65536).unwrap();
        assert_eq!(plan.blocks, vec![0, 1]);
        assert_eq!(plan.clusters(), 3);
        // 512-byte clusters with 64-bit refcounts: 64 refcounts per block and
        // 64 entries per table cluster; a big image needs a multi-cluster table.
        let used: BTreeSet<u64> = (0..100).collect();
        let plan = layout(&used, 6400, 64, 512).unwrap();
        let last = (6400 + plan.clusters() - 1) / 64;
        assert!((0..=last).all(|i| plan.blocks.contains(&i)));
        assert_eq!(plan.blocks.len() as u64, last + 1);
        assert!(plan.table_clusters > 1);
        assert!(plan.table_clusters * 64 > last);
    }
}
