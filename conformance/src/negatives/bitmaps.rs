//! Negative cases of the bitmap directory and tables (BMP-*), each a change
//! to the directory or a table of the qemu-made `bitmaps` golden.

use qcow2_format::extensions::{self as ext, Extension};
use qcow2_format::rules::*;
use qcow2_format::tables::bitmap_directory::{parse_directory, BitmapEntry};
use qcow2_format::HeaderArea;

use super::{case, named, CaseInput, NegativeCase};
use crate::corpus::TestImage;
use crate::mutate::{adjust_refcount, put_u32, put_u64};

/// The bitmaps golden and its directory entries.
fn bitmaps(images: &[TestImage]) -> Result<(Vec<u8>, Vec<BitmapEntry>), String> {
    let bytes = named(images, "bitmaps")?;
    let area = HeaderArea::parse(&bytes).map_err(|e| e.to_string())?;
    let Some((_, Extension::Bitmaps(b))) = area.chain.find(ext::BITMAPS) else {
        return Err("the bitmaps golden has no bitmaps extension".into());
    };
    let (at, size) = (
        b.bitmap_directory_offset.get(),
        b.bitmap_directory_size.get(),
    );
    let dir = bytes
        .get(at as usize..(at + size) as usize)
        .ok_or("directory outside the file")?;
    let entries = parse_directory(dir, at, b.nb_bitmaps.get()).map_err(|e| e.to_string())?;
    Ok((bytes, entries))
}

/// The bitmaps golden with `edit` applied to its bytes, given entry `k`.
fn edit_entry(
    images: &[TestImage],
    k: usize,
    edit: impl FnOnce(&mut Vec<u8>, &BitmapEntry) -> Result<(), String>,
) -> Result<CaseInput, String> {
    let (mut bytes, entries) = bitmaps(images)?;
    let entry = entries
        .get(k)
        .ok_or("the bitmaps golden has too few bitmaps")?;
    edit(&mut bytes, entry)?;
    Ok(CaseInput::Bytes(bytes))
}

/// Moves bitmap `k`'s table pointer to `offset`, freeing the cluster of the
/// old table (no longer located, it would otherwise leak); the bitmap must
/// have no data cluster.
fn move_table(images: &[TestImage], k: usize, offset: u64) -> Result<CaseInput, String> {
    edit_entry(images, k, |b, e| {
        put_u64(b, e.at as usize, offset);
        adjust_refcount(b, e.table_offset.get(), -1)
    })
}

/// File offset of the bitmaps extension's data.
fn extension_data_at(bytes: &[u8]) -> Result<usize, String> {
    let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let (k, _) = area
        .chain
        .find(ext::BITMAPS)
        .ok_or("no bitmaps extension")?;
    Ok(area.chain.data_offsets(area.header.header_length.into())[k] as usize)
}

/// The bitmaps golden with its bitmap_directory_size changed by `f`.
fn with_directory_size(
    images: &[TestImage],
    f: impl FnOnce(u64) -> u64,
) -> Result<CaseInput, String> {
    let mut b = named(images, "bitmaps")?;
    let data = extension_data_at(&b)?;
    let size = crate::mutate::get_u64(&b, data + 8);
    put_u64(&mut b, data + 8, f(size));
    Ok(CaseInput::Bytes(b))
}

/// The bitmaps golden with its directory written anew from the entries as
/// `edit` leaves them, and the extension's size to match: the directory
/// stays well framed, so only what `edit` broke is wrong.
fn rewrite_directory(
    images: &[TestImage],
    edit: impl FnOnce(&mut Vec<BitmapEntry>),
) -> Result<CaseInput, String> {
    let (mut b, mut entries) = bitmaps(images)?;
    let at = entries.first().ok_or("no bitmap")?.at as usize;
    edit(&mut entries);
    let dir: Vec<u8> = entries.iter().flat_map(BitmapEntry::to_bytes).collect();
    // The directory has its own cluster; a longer one must still fit it.
    let cluster = 1usize
        << HeaderArea::parse(&b)
            .map_err(|e| e.to_string())?
            .header
            .cluster_bits;
    if at % cluster + dir.len() > cluster {
        return Err("the new directory does not fit its cluster".into());
    }
    if b.len() < at + dir.len() {
        b.resize(at + dir.len(), 0);
    }
    let old_end = (at + cluster - at % cluster).min(b.len());
    b[at..old_end].fill(0);
    b[at..at + dir.len()].copy_from_slice(&dir);
    let data = extension_data_at(&b)?;
    put_u64(&mut b, data + 8, dir.len() as u64);
    Ok(CaseInput::Bytes(b))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    vec![
        case(BMP_DIRECTORY, "directory size 8 bytes too large", |i| {
            let CaseInput::Bytes(mut b) = with_directory_size(i, |size| size + 8)? else {
                return Err("not bytes".into());
            };
            // The golden's directory ends the file: 8 more bytes keep the
            // larger size inside it, so only the size is wrong.
            b.extend([0; 8]);
            Ok(CaseInput::Bytes(b))
        }),
        case(
            BMP_DIRECTORY,
            "directory running past the end of the file",
            |i| {
                let len = named(i, "bitmaps")?.len() as u64;
                with_directory_size(i, |size| size + len)
            },
        ),
        case(BMP_DIRECTORY, "non-zero padding after a name", |i| {
            edit_entry(i, 0, |b, e| {
                let end = 24 + e.extra_data.len() + e.name.len();
                if end % 8 == 0 {
                    return Err("entry 0 has no padding".into());
                }
                b[e.at as usize + end.next_multiple_of(8) - 1] = 0x55;
                Ok(())
            })
        }),
        case(BMP_NAME, "empty name (name_size 0)", |i| {
            rewrite_directory(i, |entries| entries[1].name.clear())
        }),
        case(BMP_NAME, "name of 1024 bytes", |i| {
            rewrite_directory(i, |entries| entries[1].name = vec![b'n'; 1024])
        }),
        case(BMP_NAME, "name terminated by a NUL byte", |i| {
            rewrite_directory(i, |entries| entries[1].name.push(0))
        })
        .saying(&["NUL"]),
        case(BMP_NAME, "two bitmaps with one name", |i| {
            let (_, entries) = bitmaps(i)?;
            let first = entries.first().ok_or("no bitmap")?.name.clone();
            edit_entry(i, 1, |b, e| {
                if e.name.len() != first.len() {
                    return Err("names of different lengths".into());
                }
                let at = e.at as usize + 24 + e.extra_data.len();
                b[at..at + first.len()].copy_from_slice(&first);
                Ok(())
            })
        }),
        case(BMP_FLAGS, "flag bit 5", |i| {
            edit_entry(i, 0, |b, e| {
                put_u32(b, e.at as usize + 12, e.flags | 1 << 5);
                Ok(())
            })
        }),
        case(BMP_TYPE, "type 2", |i| {
            edit_entry(i, 0, |b, e| {
                b[e.at as usize + 16] = 2;
                Ok(())
            })
        }),
        case(BMP_GRANULARITY, "granularity_bits 8", |i| {
            edit_entry(i, 0, |b, e| {
                b[e.at as usize + 17] = 8;
                Ok(())
            })
        }),
        case(BMP_GRANULARITY, "granularity_bits 32", |i| {
            edit_entry(i, 0, |b, e| {
                b[e.at as usize + 17] = 32;
                Ok(())
            })
        }),
        case(
            BMP_TABLE,
            "table one entry longer than the disk needs",
            |i| {
                edit_entry(i, 0, |b, e| {
                    put_u32(b, e.at as usize + 8, e.table_size + 1);
                    Ok(())
                })
            },
        ),
        case(BMP_TABLE, "table offset off by 512", |i| {
            let (_, entries) = bitmaps(i)?;
            let e = entries.get(1).ok_or("no second bitmap")?;
            move_table(i, 1, e.table_offset.get() + 512)
        }),
        case(BMP_TABLE, "table offset 0", |i| move_table(i, 1, 0)),
        case(BMP_TABLE_ENTRY, "table entry with reserved bit 60", |i| {
            edit_entry(i, 1, |b, e| {
                let at = e.table_offset.get() as usize;
                if crate::mutate::get_u64(b, at) != 0 {
                    return Err("the second bitmap's first table entry is not empty".into());
                }
                put_u64(b, at, 1 << 60);
                Ok(())
            })
        }),
        case(
            BMP_BIT_NO_EXT,
            "autoclear bit 0 without a bitmaps extension",
            |i| {
                crate::mutate::edit_area(&super::plain(i)?, |a| {
                    a.header.autoclear_features |= qcow2_format::features::AUTOCLEAR_BITMAPS
                })
                .map(CaseInput::Bytes)
            },
        ),
        case(BMP_TABLE_ENTRY, "bit 0 set with a data cluster", |i| {
            edit_data_entry(i, |b, at, raw| {
                put_u64(b, at, raw | 1);
                Ok(())
            })
        }),
        case(BMP_IN_USE, "bitmap b1 flagged in use", |i| {
            edit_entry(i, 1, |b, e| {
                put_u32(b, e.at as usize + 12, e.flags | 1);
                Ok(())
            })
        }),
        case(
            BMP_EXTRA_DATA,
            "8 bytes of extra data, extra_data_compatible set",
            |i| {
                rewrite_directory(i, |entries| {
                    entries[1].extra_data = vec![0xe1; 8];
                    entries[1].flags |= 4;
                })
            },
        ),
        case(
            BMP_EXTRA_DATA,
            "8 bytes of extra data, extra_data_compatible clear",
            |i| rewrite_directory(i, |entries| entries[1].extra_data = vec![0xe1; 8]),
        ),
        case(BMP_DATA_TAIL, "bit 16 set in a bitmap of 16 bits", |i| {
            edit_data_entry(i, |b, _, raw| {
                // 1 MiB at 64 KiB per bit: bits 0-15 are the disk's.
                b[raw as usize + 2] |= 1;
                Ok(())
            })
        }),
        case(BMP_DATA_TAIL, "last bit of the data cluster set", |i| {
            edit_data_entry(i, |b, _, raw| {
                let cs = 1usize
                    << HeaderArea::parse(b)
                        .map_err(|e| e.to_string())?
                        .header
                        .cluster_bits;
                b[raw as usize + cs - 1] |= 0x80;
                Ok(())
            })
        }),
        case(BMP_TABLE_ENTRY, "data cluster offset off by 512", |i| {
            edit_data_entry(i, |b, at, raw| {
                put_u64(b, at, raw + 512);
                // The entry no longer names the cluster: free it.
                adjust_refcount(b, raw, -1)
            })
        }),
    ]
}

/// Applies `edit` to the first bitmap table entry that names a data
/// cluster (`at`, its raw value).
fn edit_data_entry(
    images: &[TestImage],
    edit: impl FnOnce(&mut Vec<u8>, usize, u64) -> Result<(), String>,
) -> Result<CaseInput, String> {
    let (mut b, entries) = bitmaps(images)?;
    let found = entries.iter().find_map(|e| {
        let at = e.table_offset.get() as usize;
        (0..e.table_size as usize)
            .map(|k| (at + 8 * k, crate::mutate::get_u64(&b, at + 8 * k)))
            .find(|&(_, raw)| raw != 0)
    });
    let (at, raw) = found.ok_or("no bitmap of the golden has a data cluster")?;
    edit(&mut b, at, raw)?;
    Ok(CaseInput::Bytes(b))
}
