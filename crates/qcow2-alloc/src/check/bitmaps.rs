//! Persistent dirty bitmaps: the directory and every bitmap table and data
//! cluster they reference are refcounted metadata.

use qcow2_format::rules;

use super::error::CheckResult;
use super::image::{be16, be32, be64, Image};
use super::refmap::role;
use super::refs::{Counter, Ref};
use super::tables::for_each_entry;

/// Fixed part of a bitmap directory entry.
const ENTRY_FIXED: usize = 24;
/// Bits of a bitmap table entry that must be zero.
const TABLE_RESERVED: u64 = 0xff00_0000_0000_01fe;
/// Bits of a bitmap table entry holding the data cluster offset.
const TABLE_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 0: with offset 0, the whole range reads as ones.
const ALL_ONES: u64 = 1;

const fn bitmap_ref(what: &'static str) -> Ref {
    Ref {
        role: role::OTHER,
        rule: rules::EXT_BITMAPS,
        what,
    }
}

/// Counts the bitmap directory, the bitmap tables and their data clusters.
pub(crate) fn count(img: &Image<'_>, counter: &mut Counter<'_>) -> CheckResult<()> {
    let Some((dir, size, nb)) = img.bitmaps else {
        return Ok(());
    };
    if nb == 0 {
        return Ok(());
    }
    counter.add(None, dir, size, bitmap_ref("bitmap directory"), 1);
    let buf = img.read_in_file(dir, size, "reading the bitmap directory")?;
    let mut tables = Vec::new();
    let mut pos = 0usize;
    for k in 0..nb {
        let at = dir + pos as u64;
        let name_len = usize::from(be16(&buf, pos + 18));
        let extra = be32(&buf, pos + 20) as usize;
        let end = (pos + ENTRY_FIXED + extra + name_len).next_multiple_of(8);
        if end > buf.len() {
            counter.report.corruption(
                Some(at),
                rules::EXT_BITMAPS,
                format!("bitmap directory entry {k} runs past the directory ({size} bytes)"),
            );
            return Ok(());
        }
        tables.push((at, be64(&buf, pos), be32(&buf, pos + 8)));
        pos = end;
    }
    let cs = img.cluster_size();
    for (at, offset, entries) in tables {
        if !img.geo.is_aligned(offset) {
            counter.report.corruption(
                Some(at),
                rules::EXT_BITMAPS,
                format!("bitmap table offset {offset:#x} is not cluster aligned"),
            );
            continue;
        }
        counter.add(
            Some(at),
            offset,
            u64::from(entries) * 8,
            bitmap_ref("bitmap table"),
            1,
        );
        for_each_entry(
            img,
            offset,
            entries.into(),
            "reading a bitmap table",
            |i, raw| {
                let data = raw & TABLE_OFFSET;
                let entry_at = offset + i * 8;
                if raw & TABLE_RESERVED != 0
                    || (data != 0 && raw & ALL_ONES != 0)
                    || !img.geo.is_aligned(data)
                {
                    counter.report.corruption(
                        Some(entry_at),
                        rules::EXT_BITMAPS,
                        format!("bitmap table entry {raw:#x} is invalid"),
                    );
                } else if data != 0 {
                    counter.add(
                        Some(entry_at),
                        data,
                        cs,
                        bitmap_ref("bitmap data cluster"),
                        1,
                    );
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}
