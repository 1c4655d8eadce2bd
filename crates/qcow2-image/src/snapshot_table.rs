//! The snapshot table of an image file, read as far as its entries reach.

use qcow2_format::header::Header;
use qcow2_format::tables::snapshot::{self, SnapshotContext, SnapshotEntry};
use qcow2_io::Storage;

use crate::error::{ImageError, Result};

/// The header's snapshots (none when `nb_snapshots` is 0).
pub(crate) fn read(storage: &dyn Storage, h: &Header) -> Result<Vec<SnapshotEntry>> {
    if h.nb_snapshots == 0 {
        return Ok(Vec::new());
    }
    let offset = h.snapshots_offset.get();
    let file_len = storage
        .len()
        .map_err(|e| ImageError::io("reading the file length", 0, e))?;
    let ctx = SnapshotContext {
        geometry: h.geometry()?,
        version: h.version,
    };
    snapshot::read_table(
        h.nb_snapshots,
        &ctx,
        offset,
        file_len.saturating_sub(offset),
        |len| {
            let mut buf = vec![0u8; len as usize];
            storage
                .read_at(&mut buf, offset)
                .map_err(|e| ImageError::io("reading the snapshot table", offset, e))?;
            Ok(buf)
        },
    )
}
