//! BMP-DATA and BMP-AUTO on the qemu-made `bitmaps` golden: the bits QEMU
//! stored, decoded with the spec's formula by the suite, against the
//! writes its recorded commands made while each bitmap was enabled.

use std::collections::BTreeSet;

use qcow2_format::extensions::{self as ext, Extension};
use qcow2_format::rules::{BMP_AUTO, BMP_DATA};
use qcow2_format::tables::bitmap_directory::{parse_directory, BitmapEntry, FLAG_AUTO};
use qcow2_format::HeaderArea;
use qcow2_image::BackingMode;

use super::guest_model::{commands, guest_disk, qemu_io_line, range_of, Until};
use super::{duty, golden, open, read_all, seen, DutyCase};
use crate::case_report::CaseKind::{Negative, Positive};
use crate::mutate::get_u64;

/// Bits 9-55 of a bitmap table entry; bit 0 without a cluster: all ones.
const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;

/// The directory entries of `bytes` and its cluster size.
fn directory(bytes: &[u8]) -> Result<(Vec<BitmapEntry>, u64, u64), String> {
    let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let Some((_, Extension::Bitmaps(b))) = area.chain.find(ext::BITMAPS) else {
        return Err("no bitmaps extension".into());
    };
    let at = b.bitmap_directory_offset.get();
    let dir = bytes
        .get(at as usize..(at + b.bitmap_directory_size.get()) as usize)
        .ok_or("the directory lies past the end of the file")?;
    let entries = parse_directory(dir, at, b.nb_bitmaps.get()).map_err(|e| e.to_string())?;
    Ok((entries, 1 << area.header.cluster_bits, area.header.size))
}

/// The set bits of bitmap `e`, by the spec's formula: data byte i lies in
/// the cluster of table entry i / cluster_size at i mod cluster_size, and
/// bit k of the bitmap is bit k mod 8 (from the least significant) of data
/// byte k / 8.
fn set_bits(bytes: &[u8], e: &BitmapEntry, cs: u64, size: u64) -> Result<BTreeSet<u64>, String> {
    let g = e.granularity();
    let bits = size.div_ceil(g);
    let mut out = BTreeSet::new();
    for k in 0..bits {
        let byte = k / 8;
        let entry_at = (e.table_offset.get() + 8 * (byte / cs)) as usize;
        let entry = get_u64(bytes, entry_at);
        let set = match entry & OFFSET {
            0 => entry & 1 != 0,
            data => {
                let at = (data + byte % cs) as usize;
                let b = *bytes
                    .get(at)
                    .ok_or("bitmap data past the end of the file")?;
                b >> (k % 8) & 1 != 0
            }
        };
        if set {
            out.insert(k);
        }
    }
    Ok(out)
}

/// For each bitmap of the golden, by name: the granules (bit numbers) the
/// recorded qemu-io commands wrote while it was enabled.
fn recorded_bits(entries: &[BitmapEntry]) -> Result<Vec<(String, BTreeSet<u64>)>, String> {
    let cmds = commands("bitmaps")?;
    entries
        .iter()
        .map(|e| {
            let name = e.name_text();
            let added = cmds
                .iter()
                .position(|c| {
                    c.starts_with(&["bitmap".into(), "--add".into()]) && c.last() == Some(&name)
                })
                .ok_or_else(|| format!("no recorded command adds bitmap {name:?}"))?;
            let disabled = cmds[added].iter().any(|w| w == "--disable");
            let mut bits = BTreeSet::new();
            for line in cmds[added + 1..].iter().filter_map(|c| qemu_io_line(c)) {
                let (offset, len) = range_of(line)?;
                if !disabled && len > 0 {
                    let g = e.granularity();
                    bits.extend(offset / g..=(offset + len - 1) / g);
                }
            }
            Ok((name, bits))
        })
        .collect()
}

/// Every bitmap holds exactly the bits of the writes made while it was
/// enabled.
fn compare_layout(bytes: &[u8]) -> Result<String, String> {
    let (entries, cs, size) = directory(bytes)?;
    let want = recorded_bits(&entries)?;
    for (e, (name, bits)) in entries.iter().zip(&want) {
        let got = set_bits(bytes, e, cs, size)?;
        if &got != bits {
            return Err(format!(
                "bitmap {name:?} has bits {got:?} set, the recorded writes make {bits:?}"
            ));
        }
    }
    Ok(format!(
        "{} bitmaps hold exactly the recorded writes' bits",
        entries.len()
    ))
}

/// Every granule whose content changed since the bitmaps were added has
/// its bit set in every auto (enabled) bitmap.
fn compare_recording(bytes: &[u8]) -> Result<String, String> {
    let (entries, cs, size) = directory(bytes)?;
    let before = guest_disk("bitmaps", Until::BitmapAdd)?;
    let (image, _) = open(bytes, false, BackingMode::Ignore)?;
    let now = read_all(&image)?;
    let recorded = recorded_bits(&entries)?;
    let mut checked = 0;
    for (e, (name, kept)) in entries.iter().zip(&recorded) {
        let bits = set_bits(bytes, e, cs, size)?;
        if e.flags & FLAG_AUTO == 0 {
            // A disabled bitmap changes no more: it holds what it held.
            if &bits != kept {
                return Err(format!(
                    "disabled bitmap {name:?} has bits {bits:?}, it held {kept:?}"
                ));
            }
            continue;
        }
        let g = e.granularity() as usize;
        for (k, (a, b)) in now.chunks(g).zip(before.chunks(g)).enumerate() {
            if a != b && !bits.contains(&(k as u64)) {
                return Err(format!(
                    "guest bytes {:#x}.. changed while bitmap {:?} was enabled, but its bit {k} is clear",
                    k * g,
                    e.name_text()
                ));
            }
        }
        checked += 1;
    }
    if checked == 0 {
        return Err("no auto bitmap to check".into());
    }
    Ok(format!(
        "{checked} enabled bitmaps record every changed granule; the disabled ones are unchanged"
    ))
}

/// The file offset of bitmap `k`'s table.
fn table_of(bytes: &[u8], k: usize) -> Result<usize, String> {
    let (entries, _, _) = directory(bytes)?;
    let e = entries.get(k).ok_or("too few bitmaps")?;
    Ok(e.table_offset.get() as usize)
}

/// The data cluster of bitmap 0 and the golden's bytes.
fn first_data(bytes: &[u8]) -> Result<usize, String> {
    let (entries, _, _) = directory(bytes)?;
    let e = entries.first().ok_or("no bitmap")?;
    match get_u64(bytes, e.table_offset.get() as usize) & OFFSET {
        0 => Err("bitmap 0 has no data cluster".into()),
        data => Ok(data as usize),
    }
}

pub(super) fn cases() -> Vec<DutyCase> {
    vec![
        duty(
            BMP_DATA,
            Positive,
            "bits of the bitmaps golden against its recorded writes",
            "bitmaps",
            |i| compare_layout(&golden(i, "bitmaps")?),
        ),
        duty(
            BMP_DATA,
            Negative,
            "bit 0 stored as the most significant bit of its byte",
            "bitmaps",
            |i| {
                let mut b = golden(i, "bitmaps")?;
                let data = first_data(&b)?;
                if b[data] != 1 {
                    return Err(format!(
                        "bitmap 0's first data byte is {:#x}, not 1",
                        b[data]
                    ));
                }
                b[data] = 0x80;
                seen(compare_layout(&b))
            },
        ),
        duty(
            BMP_AUTO,
            Positive,
            "the enabled bitmap recorded QEMU's write",
            "bitmaps",
            |i| compare_recording(&golden(i, "bitmaps")?),
        ),
        duty(
            BMP_AUTO,
            Positive,
            "the engine, which does not record writes, refuses to write a bitmap image",
            "bitmaps",
            |i| match open(&golden(i, "bitmaps")?, true, BackingMode::Ignore) {
                Ok(_) => {
                    Err("the engine opened an image with an enabled bitmap for writing".into())
                }
                Err(e) => Ok(format!("refused: {e}")),
            },
        ),
        duty(
            BMP_DATA,
            Negative,
            "an empty table entry reading as all ones",
            "bitmaps",
            |i| {
                let mut b = golden(i, "bitmaps")?;
                let table = table_of(&b, 1)?;
                if get_u64(&b, table) != 0 {
                    return Err("b1's first table entry is not empty".into());
                }
                crate::mutate::put_u64(&mut b, table, 1);
                seen(compare_layout(&b))
            },
        ),
        duty(
            BMP_AUTO,
            Negative,
            "a writer that records a write in a disabled bitmap",
            "bitmaps",
            |i| {
                let mut b = golden(i, "bitmaps")?;
                let table = table_of(&b, 1)?;
                // b1 has no data cluster: give it one with bit 0 set.
                let cs = 1u64
                    << HeaderArea::parse(&b)
                        .map_err(|e| e.to_string())?
                        .header
                        .cluster_bits;
                let mut data = vec![0u8; cs as usize];
                data[0] = 1;
                let at = crate::mutate::append_counted(&mut b, cs, &data)?;
                crate::mutate::put_u64(&mut b, table, at);
                seen(compare_recording(&b))
            },
        ),
        duty(
            BMP_AUTO,
            Negative,
            "a writer that kept autoclear bit 0 but did not record its write",
            "bitmaps",
            |i| {
                let mut b = golden(i, "bitmaps")?;
                let data = first_data(&b)?;
                b[data] = 0;
                seen(compare_recording(&b))
            },
        ),
    ]
}
