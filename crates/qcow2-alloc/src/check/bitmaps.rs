//! Persistent dirty bitmaps: the directory and every bitmap table and data
//! cluster they reference are refcounted metadata.

use qcow2_format::rules;
use qcow2_format::tables::bitmap_data::{check_tail, entry_notes};
use qcow2_format::tables::bitmap_directory::{
    check_entries, decode_table_entry, parse_directory_partial, BitmapEntry, TABLE_ENTRY_OFFSET,
};

use super::error::CheckResult;
use super::image::Image;
use super::refmap::role;
use super::refs::{Counter, Ref};
use super::report::FindingKind;
use super::tables::for_each_entry;

const fn bitmap_ref(what: &'static str) -> Ref {
    Ref {
        role: role::OTHER,
        rule: rules::EXT_BITMAPS,
        what,
    }
}

/// Counts the bitmap directory, the bitmap tables and their data clusters,
/// and reports every BMP-* rule they break.
pub(crate) fn count(img: &Image<'_>, counter: &mut Counter<'_>) -> CheckResult<()> {
    let Some((dir, size, nb)) = img.bitmaps else {
        return Ok(());
    };
    if nb == 0 {
        return Ok(());
    }
    // Only the part inside the file can be read and counted.
    let in_file = img.file_len.saturating_sub(dir).min(size);
    if in_file < size {
        counter.report.corruption(
            Some(dir),
            rules::BMP_DIRECTORY,
            format!(
                "the bitmap directory ({size} bytes at {dir:#x}) runs past the end of the file ({:#x})",
                img.file_len
            ),
        );
    }
    counter.add(None, dir, in_file, bitmap_ref("bitmap directory"), 1);
    let buf = img.read_in_file(dir, in_file, "reading the bitmap directory")?;
    let (entries, error) = parse_directory_partial(&buf, dir, nb);
    if let Some(e) = error {
        // The tables of the entries framed before it are still counted.
        counter
            .report
            .corruption(Some(e.offset), e.rule, e.kind.to_string());
    }
    for e in check_entries(&entries, img.geo, img.area.header.size) {
        counter
            .report
            .corruption(Some(e.offset), e.rule, e.kind.to_string());
    }
    let cs = img.cluster_size();
    let size = img.area.header.size;
    for entry in &entries {
        for note in entry_notes(entry) {
            counter.report.record(
                FindingKind::Note,
                Some(note.offset),
                Some(note.rule),
                note.kind.to_string(),
                1,
            );
        }
    }
    for entry in &entries {
        let offset = entry.table_offset.get();
        if offset == 0 || !img.geo.is_aligned(offset) {
            // Reported above (BMP-TABLE); a table there cannot be trusted.
            continue;
        }
        let entries = u64::from(entry.table_size);
        counter.add(
            Some(entry.at),
            offset,
            entries * 8,
            bitmap_ref("bitmap table"),
            1,
        );
        for_each_entry(img, offset, entries, "reading a bitmap table", |i, raw| {
            let entry_at = offset + i * 8;
            match decode_table_entry(raw, entry_at, img.geo) {
                Ok(Some(data)) => {
                    counter.add(
                        Some(entry_at),
                        data.get(),
                        cs,
                        bitmap_ref("bitmap data cluster"),
                        1,
                    );
                    tail(img, counter, entry, size, i, data.get());
                }
                Ok(None) => {}
                Err(e) => {
                    counter
                        .report
                        .corruption(Some(entry_at), e.rule, e.kind.to_string());
                    // An aligned cluster is still where the entry points:
                    // count it, so one bad bit does not also read as a leak.
                    let data = raw & TABLE_ENTRY_OFFSET;
                    if data != 0 && img.geo.is_aligned(data) {
                        counter.add(
                            Some(entry_at),
                            data,
                            cs,
                            bitmap_ref("bitmap data cluster"),
                            1,
                        );
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Reports set bits past the end of bitmap `entry` when its table entry
/// `index` holds the last bits (BMP-DATA-TAIL); a cluster outside the file
/// is reported by the refcount walk instead.
fn tail(
    img: &Image<'_>,
    counter: &mut Counter<'_>,
    entry: &BitmapEntry,
    size: u64,
    index: u64,
    data: u64,
) {
    let cs = img.cluster_size();
    let last = qcow2_format::tables::bitmap_data::valid_bits(size, entry.granularity())
        .saturating_sub(1)
        / (cs * 8);
    if index != last || data.saturating_add(cs) > img.file_len {
        return;
    }
    if let Ok(cluster) = img.read_in_file(data, cs, "reading a bitmap data cluster") {
        if let Some(e) = check_tail(entry, size, img.geo, index, &cluster, data) {
            counter
                .report
                .corruption(Some(e.offset), e.rule, e.kind.to_string());
        }
    }
}
