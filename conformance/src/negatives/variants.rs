//! Negatives for the variants of clauses that a second audit of every rule
//! still found unbroken: the extended-L2 size bound, version 2 with version
//! 3 features, dirty and stale images, the data file's mapping, the wrong
//! codec, and the cluster kinds RC-MATCH counts beyond the first batch.

use qcow2_format::extensions::{self as ext, CompressFormat, Extension};
use qcow2_format::features::*;
use qcow2_format::rules::*;
use qcow2_format::HeaderArea;

use super::clauses::{area, ext_at, raw};
use super::{case, named, CaseInput, NegativeCase};
use crate::corpus::TestImage;
use crate::mutate::{append_counted, edit_area, get_u64, put_u32, put_u64, set_refcount};

const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;

/// The file offset of the first L2 table of `b`.
fn first_l2(b: &[u8]) -> Result<usize, String> {
    let l1 = area(b)?.header.l1_table_offset.get() as usize;
    match get_u64(b, l1) & OFFSET {
        0 => Err("L1 entry 0 is empty".into()),
        l2 => Ok(l2 as usize),
    }
}

/// A version 2 header area of `compat-0.10` with `edit` applied: what a
/// writer would be asked to produce.
fn v2_area(images: &[TestImage], edit: impl FnOnce(&mut HeaderArea)) -> Result<CaseInput, String> {
    let mut a = area(&named(images, "compat-0.10")?)?;
    edit(&mut a);
    Ok(CaseInput::Area(Box::new(a)))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    let mut all = header_cases();
    all.extend(table_cases());
    all
}

fn header_cases() -> Vec<NegativeCase> {
    vec![
        case(HDR_SIZE, "extended L2, 16 KiB clusters: 65 TiB", |i| {
            raw(i, "extended-l2-16k", |b| {
                // 1,024 entries of 16 KiB per table, 4,194,304 tables: 64 TiB.
                put_u64(b, 24, 65 << 40);
                Ok(())
            })
        }),
        case(
            HDR_V2_FEATURES,
            "version 2 with extended L2 (writer)",
            |i| {
                v2_area(i, |a| {
                    a.header.incompatible_features |= INCOMPAT_EXTENDED_L2
                })
            },
        ),
        case(
            HDR_V2_FEATURES,
            "version 2 with compression type zstd (writer)",
            |i| {
                v2_area(i, |a| {
                    a.header.incompatible_features |= INCOMPAT_COMPRESSION_TYPE;
                    a.header.compression_type = 1;
                })
            },
        ),
        case(
            HDR_V2_FEATURES,
            "version 2 with an external data file (writer)",
            |i| {
                v2_area(i, |a| {
                    a.header.incompatible_features |= INCOMPAT_BIT2;
                    a.chain
                        .extensions
                        .push(Extension::ExternalDataFile("d.raw".into()));
                })
            },
        ),
        case(
            HDR_V2_FEATURES,
            "version 2 with deduplication (writer)",
            |i| {
                let dedup = area(&named(i, "seed-dedup")?)?
                    .chain
                    .find(ext::DEDUP)
                    .ok_or("seed-dedup has no dedup extension")?
                    .1
                    .clone();
                v2_area(i, |a| {
                    a.header.incompatible_features |= INCOMPAT_BIT1;
                    a.chain.extensions.push(dedup);
                })
            },
        ),
        case(
            HDR_V2_FEATURES,
            "version 2 with a compress format (writer)",
            |i| {
                let cf = CompressFormat::new("zlib", 0).map_err(|e| e.to_string())?;
                v2_area(i, |a| {
                    a.header.incompatible_features |= INCOMPAT_BIT2;
                    a.chain.extensions.push(Extension::CompressFormat(cf));
                })
            },
        ),
        case(
            HDR_V2_FEATURES,
            "version 2 file carrying an external data file name",
            |i| {
                edit_area(&named(i, "compat-0.10")?, |a| {
                    a.chain
                        .extensions
                        .push(Extension::ExternalDataFile("d.raw".into()))
                })
                .map(CaseInput::Bytes)
            },
        ),
        case(FEAT_DIRTY, "dirty bit over a stale refcount", |i| {
            raw(i, "data-v3", |b| {
                // What a crash with lazy refcounts leaves: the dirty bit and
                // a cluster whose refcount was never raised.
                let incompatible = get_u64(b, 72) | INCOMPAT_DIRTY;
                put_u64(b, 72, incompatible);
                let data = get_u64(b, first_l2(b)?) & OFFSET;
                let bits = area(b)?.header.cluster_bits;
                set_refcount(b, data >> bits, 0)
            })
        }),
        case(DD_LENGTH, "dedup extension of 16 bytes, bit 1 clear", |i| {
            raw(i, "seed-dedup", |b| {
                let at = ext_at(b, qcow2_format::extensions::DEDUP)?;
                put_u32(b, at - 4, 16);
                let incompatible = get_u64(b, 72) & !INCOMPAT_BIT1;
                put_u64(b, 72, incompatible);
                Ok(())
            })
        }),
        case(
            DD_STALE,
            "stale table with a wrong digest (not verified)",
            |i| {
                raw(i, "seed-dedup", |b| {
                    let l2 = super::clauses::dedup_tables(b)?.1 as usize;
                    let cs = 1usize << area(b)?.header.cluster_bits;
                    let entry = (l2..l2 + cs - 40)
                        .step_by(40)
                        .find(|&e| b[e..e + 32].iter().any(|&x| x != 0))
                        .ok_or("no dedup entry")?;
                    b[entry] ^= 1;
                    let incompatible = get_u64(b, 72) & !INCOMPAT_BIT1;
                    put_u64(b, 72, incompatible);
                    Ok(())
                })
            },
        ),
    ]
}

fn table_cases() -> Vec<NegativeCase> {
    vec![
        case(
            L2_COPIED,
            "COPIED clear on a preallocated zero cluster",
            |i| {
                raw(i, "data-v3", |b| {
                    let l2 = first_l2(b)?;
                    let e = get_u64(b, l2);
                    if e & OFFSET == 0 {
                        return Err("guest cluster 0 has no host cluster".into());
                    }
                    put_u64(b, l2, (e | 1) & !(1 << 63));
                    Ok(())
                })
            },
        ),
        case(CMP_DECODE, "zstd streams read as zlib", |i| {
            edit_area(&named(i, "compressed-zstd")?, |a| {
                a.header.incompatible_features &= !INCOMPAT_COMPRESSION_TYPE;
                a.header.compression_type = 0;
            })
            .map(CaseInput::Bytes)
        }),
        case(RC_MATCH, "refcount 0 for a bitmap table", |i| {
            raw(i, "bitmaps", |b| {
                let bits = area(b)?.header.cluster_bits;
                let table = bitmap_table(b, 1)?;
                set_refcount(b, table >> bits, 0)
            })
        }),
        case(RC_MATCH, "refcount 0 for a bitmap data cluster", |i| {
            raw(i, "bitmaps", |b| {
                let bits = area(b)?.header.cluster_bits;
                let table = bitmap_table(b, 0)?;
                let data = get_u64(b, table as usize) & OFFSET;
                if data == 0 {
                    return Err("b0 has no data cluster".into());
                }
                set_refcount(b, data >> bits, 0)
            })
        }),
        case(RC_MATCH, "refcount 0 for a preallocated cluster", |i| {
            raw(i, "prealloc-metadata", |b| {
                let bits = area(b)?.header.cluster_bits;
                let l2 = first_l2(b)?;
                let e = get_u64(b, l2);
                if e & OFFSET == 0 {
                    return Err("guest cluster 0 is not preallocated".into());
                }
                set_refcount(b, (e & OFFSET) >> bits, 0)?;
                // COPIED agrees with a refcount of 0 only when clear.
                put_u64(b, l2, e & !(1 << 63));
                Ok(())
            })
        }),
        case(
            SNAP_ENTRY,
            "a snapshot in an image with an external data file",
            |i| {
                raw(i, "data-file-raw", |b| {
                    let cs = 1u64 << area(b)?.header.cluster_bits;
                    let l1 = append_counted(b, cs, &[0; 8])?;
                    let mut entry = vec![0u8; 40];
                    put_u64(&mut entry, 0, l1);
                    put_u32(&mut entry, 8, 1);
                    put_u32(&mut entry, 12, 0x0001_0001);
                    put_u32(&mut entry, 36, 16);
                    let mut extra = vec![0u8; 16];
                    put_u64(&mut extra, 8, area(b)?.header.size);
                    entry.extend_from_slice(&extra);
                    entry.extend_from_slice(b"1a");
                    entry.resize(entry.len().div_ceil(8) * 8, 0);
                    let at = append_counted(b, cs, &entry)?;
                    put_u32(b, 60, 1);
                    put_u64(b, 64, at);
                    Ok(())
                })
            },
        ),
    ]
}

/// The file offset of bitmap `k`'s table in the bitmaps golden.
fn bitmap_table(b: &[u8], k: usize) -> Result<u64, String> {
    let a = area(b)?;
    let Some((_, Extension::Bitmaps(bm))) = a.chain.find(ext::BITMAPS) else {
        return Err("no bitmaps extension".into());
    };
    let at = bm.bitmap_directory_offset.get();
    let dir = b
        .get(at as usize..(at + bm.bitmap_directory_size.get()) as usize)
        .ok_or("directory past the end")?;
    let entries =
        qcow2_format::tables::bitmap_directory::parse_directory(dir, at, bm.nb_bitmaps.get())
            .map_err(|e| e.to_string())?;
    Ok(entries.get(k).ok_or("too few bitmaps")?.table_offset.get())
}
