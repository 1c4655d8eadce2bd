//! In-place header updates that keep every other header byte and the
//! extension area as they are: only the fields that change are written.

use qcow2_io::WriteKind;

use crate::check::image::Image;
use crate::check::{CheckError, CheckResult};

/// Byte offset of refcount_table_offset (u64) followed by
/// refcount_table_clusters (u32).
const REFTABLE_FIELDS: u64 = 48;
/// Byte offset of incompatible_features (version 3).
const INCOMPATIBLE: u64 = 72;

fn flush(img: &Image<'_>, action: &'static str) -> CheckResult<()> {
    img.storage
        .flush()
        .map_err(|e| CheckError::io(action, 0, e))
}

/// Points the header at a new refcount table, after flushing everything
/// written before (the table must be durable before the header names it),
/// and flushes the header.
pub(crate) fn point_at_reftable(img: &Image<'_>, offset: u64, clusters: u32) -> CheckResult<()> {
    flush(img, "flushing the new refcount structure")?;
    let mut fields = [0u8; 12];
    fields[..8].copy_from_slice(&offset.to_be_bytes());
    fields[8..].copy_from_slice(&clusters.to_be_bytes());
    img.storage
        .write_at(&fields, REFTABLE_FIELDS, WriteKind::Header)
        .map_err(|e| CheckError::io("writing the refcount table location", REFTABLE_FIELDS, e))?;
    flush(img, "flushing the header")
}

/// Clears the incompatible feature bits in `bits` that are set (version 3
/// images only; version 2 has no feature bits).
pub(crate) fn clear_incompatible(img: &Image<'_>, bits: u64) -> CheckResult<()> {
    let h = &img.area.header;
    if h.version < 3 || h.incompatible_features & bits == 0 {
        return Ok(());
    }
    let value = h.incompatible_features & !bits;
    img.storage
        .write_at(&value.to_be_bytes(), INCOMPATIBLE, WriteKind::Header)
        .map_err(|e| CheckError::io("clearing incompatible feature bits", INCOMPATIBLE, e))?;
    flush(img, "flushing the header")
}

/// Byte offset of refcount_order (u32, version 3).
const REFCOUNT_ORDER: u64 = 96;

/// Points the header at a new refcount table whose entries are
/// `1 << order` bits wide, after flushing everything written before, in a
/// single write of bytes 48..100 (the table location and refcount_order
/// change together), and flushes the header. Version 3 images only.
pub(crate) fn point_at_reftable_with_order(
    img: &Image<'_>,
    offset: u64,
    clusters: u32,
    order: u32,
) -> CheckResult<()> {
    flush(img, "flushing the new refcount structure")?;
    let len = REFCOUNT_ORDER + 4 - REFTABLE_FIELDS;
    let mut fields = img.read(REFTABLE_FIELDS, len, "reading the header")?;
    fields[..8].copy_from_slice(&offset.to_be_bytes());
    fields[8..12].copy_from_slice(&clusters.to_be_bytes());
    let at = (REFCOUNT_ORDER - REFTABLE_FIELDS) as usize;
    fields[at..at + 4].copy_from_slice(&order.to_be_bytes());
    img.storage
        .write_at(&fields, REFTABLE_FIELDS, WriteKind::Header)
        .map_err(|e| {
            CheckError::io(
                "writing the refcount table location and width",
                REFTABLE_FIELDS,
                e,
            )
        })?;
    flush(img, "flushing the header")
}
