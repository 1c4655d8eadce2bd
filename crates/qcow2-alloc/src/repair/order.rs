//! Changing the refcount width (`qemu-img amend -o refcount_bits=N`): the
//! refcounts are computed from every reference, written as a new refcount
//! table and blocks of the new width after the end of the file, flushed,
//! and only then does one header write switch the table location and
//! refcount_order together. A crash leaves either the old structure (with
//! the new clusters leaked) or the new one in use; the old table and
//! blocks are not counted by the new structure, so they are free.

use qcow2_format::tables::RefcountOrder;
use qcow2_io::Storage;

use crate::check::image::Image;
use crate::check::walk::walk;
use crate::check::{CheckError, CheckReport, CheckResult, ExtraReferences};

use super::{header, rebuild};

/// Where a refcount width change put the new structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderChange {
    /// The refcount_order before the change.
    pub old_order: u32,
    /// The refcount_order now in the header.
    pub new_order: u32,
    /// Offset of the new refcount table.
    pub table_offset: u64,
    /// Its length in clusters.
    pub table_clusters: u32,
    /// Number of refcount blocks written.
    pub blocks: u64,
}

/// Rewrites the refcount structure of the version 3 image in `storage`
/// with entries `1 << order.get()` bits wide and points the header at it.
///
/// The refcounts written are the ones the references imply (stale stored
/// refcounts, leaks included, are not carried over). Nothing is written
/// when the change is refused: a version 2 image (whose width is fixed at
/// 16 bits), references that a check counts as corruptions, or a cluster
/// whose refcount the new width cannot hold (a cluster shared by
/// snapshots with 1-bit refcounts, for instance). The same width as now
/// still rewrites the structure.
pub fn change_refcount_order(
    storage: &dyn Storage,
    order: RefcountOrder,
    extra: &[&dyn ExtraReferences],
) -> CheckResult<OrderChange> {
    let img = Image::open(storage)?;
    let old_order = img.order.get();
    if img.area.header.version < 3 && order.get() != old_order {
        return Err(CheckError::Rebuild {
            reason: format!(
                "a version 2 image has {}-bit refcounts only",
                1u32 << old_order
            ),
        });
    }
    let mut scratch = CheckReport::default();
    let map = walk(&img, &mut scratch, extra, false)?.map;
    if scratch.corruptions > 0 || scratch.check_errors > 0 {
        return Err(CheckError::Rebuild {
            reason: format!(
                "the image references are inconsistent ({} corruptions, {} check errors); repair it first",
                scratch.corruptions, scratch.check_errors
            ),
        });
    }
    let max = order.max_refcount();
    if let Some(cluster) = (0..map.len()).find(|&c| map.get(c) > max) {
        return Err(CheckError::Rebuild {
            reason: format!(
                "the cluster at offset {:#x} has a refcount of {}, more than {}-bit refcounts can hold",
                cluster * img.cluster_size(),
                map.get(cluster),
                order.bits()
            ),
        });
    }
    let placed = rebuild::place(&img, &map, order)?;
    if img.area.header.version < 3 {
        // Version 2 has no refcount_order field (and the width is unchanged).
        header::point_at_reftable(&img, placed.table_offset, placed.table_clusters)?;
    } else {
        header::point_at_reftable_with_order(
            &img,
            placed.table_offset,
            placed.table_clusters,
            order.get(),
        )?;
    }
    Ok(OrderChange {
        old_order,
        new_order: order.get(),
        table_offset: placed.table_offset,
        table_clusters: placed.table_clusters,
        blocks: placed.blocks,
    })
}
