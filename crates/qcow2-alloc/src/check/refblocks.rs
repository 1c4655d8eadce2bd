//! The refcount table and its blocks, as references: each block must be
//! referenced exactly once, be aligned and lie inside the image.

use qcow2_format::rules;

use super::report::FindingKind;
use qcow2_format::tables::refcount::RC_TABLE_RESERVED_MASK;

use super::error::CheckResult;
use super::image::Image;
use super::refmap::role;
use super::refs::{Counter, Ref};
use super::tables::for_each_entry;

/// What the refcount table entries say about the need to rebuild.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RefblockHealth {
    /// An entry is unusable (reserved bits, misaligned, overlapping).
    pub broken: bool,
    /// A block lies past the end of the image.
    pub outside: bool,
}

/// Counts the refcount table itself.
pub(crate) fn count_table(img: &Image<'_>, counter: &mut Counter<'_>) {
    let h = &img.area.header;
    let len = u64::from(h.refcount_table_clusters) * img.cluster_size();
    let table = Ref {
        role: role::REFTABLE,
        rule: rules::HDR_REFTABLE_OFFSET,
        what: "refcount table",
    };
    counter.add(Some(48), h.refcount_table_offset.get(), len, table, 1);
}

/// Counts every refcount block and checks it is referenced only from its
/// table entry. Must run after every other reference has been counted.
pub(crate) fn count_blocks(
    img: &Image<'_>,
    counter: &mut Counter<'_>,
) -> CheckResult<RefblockHealth> {
    let h = &img.area.header;
    let table_at = h.refcount_table_offset.get();
    let entries = u64::from(h.refcount_table_clusters) * img.cluster_size() / 8;
    let cs = img.cluster_size();
    let mut health = RefblockHealth::default();
    let block = Ref {
        role: role::REFBLOCK,
        rule: rules::RC_TABLE_ENTRY,
        what: "refcount block",
    };
    for_each_entry(
        img,
        table_at,
        entries,
        "reading the refcount table",
        |i, raw| {
            let at = table_at + i * 8;
            if raw & RC_TABLE_RESERVED_MASK != 0 {
                counter.report.corruption(
                    Some(at),
                    rules::RC_TABLE_ENTRY,
                    format!("refcount table entry {i} ({raw:#x}) has reserved bits set"),
                );
                health.broken = true;
                return Ok(());
            }
            if !img.geo.is_aligned(raw) {
                counter.report.corruption(
                Some(at),
                rules::RC_TABLE_ENTRY,
                format!("refcount block {i} at {raw:#x} is not cluster aligned; refcount table entry corrupted"),
            );
                health.broken = true;
                return Ok(());
            }
            let cluster = raw / cs;
            if cluster >= counter.map.len() {
                counter.report.corruption(
                    Some(at),
                    rules::RC_TABLE_ENTRY,
                    format!(
                        "refcount block {i} at {raw:#x} is outside the image (file length {:#x})",
                        img.file_len
                    ),
                );
                health.outside = true;
                return Ok(());
            }
            counter.add(Some(at), raw, cs, block, 1);
            if raw + cs > img.file_len {
                // QEMU reads the missing bytes as zeros and does not count it.
                counter.report.record(
                    FindingKind::Note,
                    Some(at),
                    Some(rules::RC_BLOCK),
                    format!(
                        "refcount block {i} at {raw:#x} is cut short by the end of the file ({:#x}); the missing refcounts read as 0",
                        img.file_len
                    ),
                    1,
                );
            }
            let n = counter.map.get(cluster);
            if n != 1 {
                // Two table entries naming one block break the table; a
                // block that is also another structure is an overlap.
                let others = counter.map.roles(cluster) & !role::REFBLOCK;
                let (rule, also) = if others == 0 {
                    (rules::RC_TABLE_ENTRY, "another refcount block".to_string())
                } else {
                    (rules::RC_OVERLAP, role::names(others))
                };
                counter.report.corruption(
                    Some(at),
                    rule,
                    format!("refcount block {i} at {raw:#x} is referenced {n} times; it is also used as {also}"),
                );
                health.broken = true;
            }
            Ok(())
        },
    )?;
    Ok(health)
}
