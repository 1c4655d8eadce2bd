//! With an external data file each allocated guest cluster sits at its own
//! guest offset in the data file (L2-ENTRY). The reference walk reads each
//! L2 table once whatever points at it, so it cannot know an entry's guest
//! offset; this pass reads the active L1 table's L2 tables again, with
//! their L1 index. Images with a data file have no snapshots, so the active
//! table is all there is.

use qcow2_format::tables::l1::L1_OFFSET_MASK;
use qcow2_format::tables::l2::{L2Context, L2Mapping};
use qcow2_format::GuestOffset;

use super::error::CheckResult;
use super::image::{be64, Image};
use super::report::CheckReport;
use super::tables::for_each_entry;

/// Reports every allocated cluster of the active mapping whose host offset
/// is not its guest offset; nothing without an external data file.
pub(crate) fn guest_identity(img: &Image<'_>, report: &mut CheckReport) -> CheckResult<()> {
    if !img.data_file {
        return Ok(());
    }
    let ctx = L2Context {
        geometry: img.geo,
        version: img.area.header.version,
        external_data_file: true,
    };
    let per_table = img.geo.l2_entries(img.extended_l2);
    let step = if img.extended_l2 { 16 } else { 8 };
    let cs = img.cluster_size();
    let h = &img.area.header;
    for_each_entry(
        img,
        h.l1_table_offset.get(),
        u64::from(h.l1_size),
        "reading the active L1 table",
        |l1_index, raw| {
            let l2 = raw & L1_OFFSET_MASK;
            // Misplaced tables are the walk's findings (L1-ENTRY).
            if l2 == 0 || !img.geo.is_aligned(l2) {
                return Ok(());
            }
            let Some(table) = img.read_cluster(l2, "reading an L2 table")? else {
                return Ok(());
            };
            for (i, entry) in table.chunks_exact(step).enumerate() {
                let at = l2 + (i * step) as u64;
                // Malformed entries are reported by the walk.
                let Ok(mapping) = L2Mapping::decode(be64(entry, 0), &ctx, at) else {
                    continue;
                };
                let guest = GuestOffset((l1_index * per_table + i as u64) * cs);
                if let Err(e) = mapping.check_guest_identity(guest, &ctx, at) {
                    report.corruption(Some(e.offset), e.rule, e.kind.to_string());
                }
            }
            Ok(())
        },
    )
}
