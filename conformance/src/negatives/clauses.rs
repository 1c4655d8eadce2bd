//! Negatives for the clauses that the per-structure files leave unbroken:
//! the other bound of a range, the variant of a rule with extended L2 or
//! version 2, and every kind of cluster RC-MATCH says is counted.

use qcow2_format::extensions::{self as ext, Extension};
use qcow2_format::features::*;
use qcow2_format::rules::*;
use qcow2_format::HeaderArea;

use super::{case, named, CaseInput, NegativeCase};
use crate::corpus::TestImage;
use crate::mutate::{edit_area, get_refcount, get_u64, put_u32, put_u64, set_refcount};

pub(super) fn area(bytes: &[u8]) -> Result<HeaderArea, String> {
    HeaderArea::parse(bytes).map_err(|e| e.to_string())
}

/// Golden `name` with `edit` applied to its raw bytes.
pub(super) fn raw(
    images: &[TestImage],
    name: &str,
    edit: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<CaseInput, String> {
    let mut b = named(images, name)?;
    edit(&mut b)?;
    Ok(CaseInput::Bytes(b))
}

/// Golden `name` with its header area edited and written back.
fn edited(
    images: &[TestImage],
    name: &str,
    edit: impl FnOnce(&mut HeaderArea),
) -> Result<CaseInput, String> {
    edit_area(&named(images, name)?, edit).map(CaseInput::Bytes)
}

/// Golden `name` with the extension of type `kind` replaced by raw `data`.
fn ext_data(
    images: &[TestImage],
    name: &str,
    kind: u32,
    data: Vec<u8>,
) -> Result<CaseInput, String> {
    let b = named(images, name)?;
    if area(&b)?.chain.find(kind).is_none() {
        return Err(format!("{name} has no extension {kind:#x}"));
    }
    edit_area(&b, |a| {
        for e in &mut a.chain.extensions {
            if e.kind() == kind {
                *e = Extension::Unknown {
                    kind,
                    data: data.clone(),
                };
            }
        }
    })
    .map(CaseInput::Bytes)
}

/// Golden `name` with the stored refcount of the cluster at `offset(b)`
/// set to `value` (`offset` must name a cluster that COPIED does not judge).
pub(super) fn refcount(
    images: &[TestImage],
    name: &str,
    value: u64,
    offset: impl FnOnce(&[u8]) -> Result<u64, String>,
) -> Result<CaseInput, String> {
    raw(images, name, |b| {
        let cluster = offset(b)? >> area(b)?.header.cluster_bits;
        if get_refcount(b, cluster)? == value {
            return Err(format!("cluster {cluster} already has refcount {value}"));
        }
        set_refcount(b, cluster, value)
    })
}

/// The bitmaps extension's data offset in the bitmaps golden.
fn bitmaps_data(b: &[u8]) -> Result<usize, String> {
    ext_at(b, ext::BITMAPS)
}

/// The host offset of the first compressed stream of `b`.
fn compressed_host(b: &[u8]) -> Result<u64, String> {
    let a = area(b)?;
    let l2 = get_u64(b, a.header.l1_table_offset.get() as usize) & 0x00ff_ffff_ffff_fe00;
    let entry = get_u64(b, l2 as usize);
    if entry & (1 << 62) == 0 {
        return Err("guest cluster 0 is not compressed".into());
    }
    let x = 62 - (a.header.cluster_bits - 8);
    Ok(entry & ((1 << x) - 1))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    let mut all = header_cases();
    all.extend(extension_cases());
    all.extend(table_cases());
    all.extend(more_cases());
    all
}

fn header_cases() -> Vec<NegativeCase> {
    vec![
        case(HDR_LENGTH, "version 2 file of 64 bytes", |i| {
            raw(i, "compat-0.10", |b| {
                b.truncate(64);
                Ok(())
            })
        }),
        case(
            HDR_BACKING_FILE,
            "backing_file_size 0 with an offset",
            |i| {
                raw(i, "backing-qcow2", |b| {
                    put_u32(b, 16, 0);
                    Ok(())
                })
            },
        ),
        case(
            HDR_BACKING_FILE,
            "backing_file_offset inside the header",
            |i| {
                raw(i, "backing-qcow2", |b| {
                    put_u64(b, 8, 64);
                    Ok(())
                })
            },
        ),
        case(HDR_L1_OFFSET, "misaligned L1 offset with l1_size 0", |i| {
            raw(i, "size-0", |b| {
                if area(b)?.header.l1_size != 0 {
                    return Err("size-0 has L1 entries".into());
                }
                let at = get_u64(b, 40);
                put_u64(b, 40, at + 512);
                Ok(())
            })
        }),
        case(HDR_L1_SIZE, "extended L2: l1_size 2 for 1 GiB", |i| {
            raw(i, "extended-l2-64k", |b| {
                // 4096 extended entries of 64 KiB: 256 MiB per L2 table.
                put_u32(b, 36, 2);
                Ok(())
            })
        }),
        case(
            HDR_COMPRESSION_TYPE,
            "compression type bit with a 104-byte header",
            |i| {
                raw(i, "default", |b| {
                    put_u32(b, 100, 104);
                    b[104..112].fill(0);
                    let incompatible = get_u64(b, 72) | INCOMPAT_COMPRESSION_TYPE;
                    put_u64(b, 72, incompatible);
                    Ok(())
                })
            },
        ),
        case(
            FEAT_BIT2,
            "bit 2 with a data file and a compress format",
            |i| {
                edited(i, "seed-cf-zlib-default", |a| {
                    a.chain
                        .extensions
                        .push(Extension::ExternalDataFile("d.raw".into()))
                })
            },
        ),
        case(
            FEAT_RAW_DATA,
            "autoclear bit 1 with bit 2 meaning compress format",
            |i| {
                edited(i, "seed-cf-zlib-default", |a| {
                    a.header.autoclear_features |= AUTOCLEAR_DATA_FILE_RAW
                })
            },
        ),
    ]
}

fn extension_cases() -> Vec<NegativeCase> {
    vec![
        case(EXT_BACKING_FORMAT, "backing format of 16 bytes", |i| {
            ext_data(
                i,
                "backing-qcow2",
                ext::BACKING_FORMAT,
                b"qcow2qcow2qcow2q".to_vec(),
            )
        }),
        case(EXT_BACKING_FORMAT, "backing format with a NUL", |i| {
            ext_data(
                i,
                "backing-qcow2",
                ext::BACKING_FORMAT,
                b"qcow\x002".to_vec(),
            )
        }),
        case(EXT_DATA_FILE, "empty data file name", |i| {
            ext_data(i, "data-file", ext::EXTERNAL_DATA_FILE, Vec::new())
        }),
        case(EXT_FEATURE_TABLE, "feature table entry for bit 64", |i| {
            raw(i, "default", |b| {
                let a = area(b)?;
                let (k, _) = a.chain.find(ext::FEATURE_TABLE).ok_or("no feature table")?;
                let at = a.chain.data_offsets(a.header.header_length.into())[k] as usize;
                b[at + 1] = 64;
                Ok(())
            })
        }),
        case(EXT_BITMAPS, "bitmaps extension reserved field 1", |i| {
            raw(i, "bitmaps", |b| {
                let at = bitmaps_data(b)?;
                put_u32(b, at + 4, 1);
                Ok(())
            })
        }),
        case(EXT_BITMAPS, "nb_bitmaps 65536", |i| {
            raw(i, "bitmaps", |b| {
                let at = bitmaps_data(b)?;
                put_u32(b, at, 65536);
                Ok(())
            })
        }),
        case(EXT_BITMAPS, "bitmap_directory_size 0", |i| {
            raw(i, "bitmaps", |b| {
                let at = bitmaps_data(b)?;
                put_u64(b, at + 8, 0);
                Ok(())
            })
        }),
        case(EXT_BITMAPS, "bitmap_directory_offset off by 512", |i| {
            raw(i, "bitmaps", |b| {
                let at = bitmaps_data(b)?;
                let dir = get_u64(b, at + 16);
                put_u64(b, at + 16, dir + 512);
                Ok(())
            })
        }),
        case(CF_NAME, "compress format name with byte 0x01", |i| {
            raw(i, "seed-cf-zlib-default", |b| {
                let a = area(b)?;
                let (k, _) = a
                    .chain
                    .find(ext::COMPRESS_FORMAT)
                    .ok_or("no compress format extension")?;
                let at = a.chain.data_offsets(a.header.header_length.into())[k] as usize;
                b[at + 1] = 0x01;
                Ok(())
            })
        }),
        case(EXT_BITMAPS, "bitmap_directory_size 67,107,841", |i| {
            raw(i, "bitmaps", |b| {
                let at = bitmaps_data(b)?;
                put_u64(b, at + 8, 67_107_841);
                Ok(())
            })
        }),
        case(EXT_BITMAPS, "bitmap_directory_offset 0", |i| {
            raw(i, "bitmaps", |b| {
                let at = bitmaps_data(b)?;
                put_u64(b, at + 16, 0);
                Ok(())
            })
        }),
        case(CF_NAME, "compress format name with byte 0x7f", |i| {
            raw(i, "seed-cf-zlib-default", |b| {
                let at = ext_at(b, ext::COMPRESS_FORMAT)?;
                b[at + 1] = 0x7f;
                Ok(())
            })
        }),
        case(CF_KNOWN, "compress format name ZLIB", |i| {
            edited(i, "seed-cf-zlib-default", |a| {
                for e in &mut a.chain.extensions {
                    if let Extension::CompressFormat(c) = e {
                        c.name = "ZLIB".into();
                    }
                }
            })
        }),
    ]
}

fn table_cases() -> Vec<NegativeCase> {
    vec![
        case(L2_ENTRY, "extended entry with reserved bit 57", |i| {
            raw(i, "data-extended-l2", |b| {
                let l1 = area(b)?.header.l1_table_offset.get() as usize;
                let l2 = (get_u64(b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
                let e = get_u64(b, l2);
                put_u64(b, l2, e | 1 << 57);
                Ok(())
            })
        }),
        case(
            L2_EXTENDED,
            "compressed cluster with a subcluster bitmap",
            |i| {
                raw(i, "compressed-extended-l2", |b| {
                    let l1 = area(b)?.header.l1_table_offset.get() as usize;
                    let l2 = (get_u64(b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
                    if get_u64(b, l2) & 1 << 62 == 0 || get_u64(b, l2 + 8) != 0 {
                        return Err("guest cluster 0 is not compressed with a zero bitmap".into());
                    }
                    put_u64(b, l2 + 8, 1);
                    Ok(())
                })
            },
        ),
        case(L2_ZERO_FLAG, "zero flag in an extended entry", |i| {
            raw(i, "data-extended-l2", |b| {
                let l1 = area(b)?.header.l1_table_offset.get() as usize;
                let l2 = (get_u64(b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
                let e = get_u64(b, l2);
                put_u64(b, l2, e | 1);
                Ok(())
            })
        }),
        case(
            RC_TABLE_ENTRY,
            "refcount table entry 1 past the end of the file",
            |i| {
                raw(i, "default", |b| {
                    let rt = area(b)?.header.refcount_table_offset.get() as usize;
                    put_u64(b, rt + 8, 1 << 40);
                    Ok(())
                })
            },
        ),
        case(RC_MATCH, "refcount 0 for a compressed cluster", |i| {
            refcount(i, "compressed-zlib", 0, compressed_host)
        }),
        case(RC_MATCH, "refcount 0 for the refcount block", |i| {
            refcount(i, "default", 0, |b| {
                let rt = area(b)?.header.refcount_table_offset.get() as usize;
                Ok(get_u64(b, rt))
            })
        }),
        case(RC_MATCH, "refcount 0 for the snapshot table", |i| {
            refcount(i, "snapshot", 0, |b| {
                Ok(area(b)?.header.snapshots_offset.get())
            })
        }),
        case(RC_MATCH, "refcount 0 for the bitmap directory", |i| {
            refcount(i, "bitmaps", 0, |b| {
                let at = bitmaps_data(b)?;
                Ok(get_u64(b, at + 16))
            })
        }),
        case(RC_MATCH, "refcount 0 for a LUKS area cluster", |i| {
            refcount(i, "luks", 0, |b| {
                let a = area(b)?;
                a.chain
                    .extensions
                    .iter()
                    .find_map(|e| match e {
                        Extension::FullDiskEncryption(f) => Some(f.offset.get() + 65536),
                        _ => None,
                    })
                    .ok_or_else(|| "no LUKS area".to_string())
            })
        }),
        case(
            RC_MATCH,
            "refcount 3 for a cluster a snapshot shares",
            |i| {
                refcount(i, "snapshot", 3, |b| {
                    // Guest 64 KiB, written before the snapshot and not since.
                    let a = area(b)?;
                    let l2 =
                        get_u64(b, a.header.l1_table_offset.get() as usize) & 0x00ff_ffff_ffff_fe00;
                    Ok(get_u64(b, l2 as usize + 16 * 8) & 0x00ff_ffff_ffff_fe00)
                })
            },
        ),
        case(
            BMP_TABLE_ENTRY,
            "empty bitmap table entry with bit 1",
            |i| {
                raw(i, "bitmaps", |b| {
                    let dir = get_u64(b, bitmaps_data(b)? + 16) as usize;
                    // Entry 1 (b1): its table is the first u64 of the entry.
                    let first = 24 + usize::from(u16::from_be_bytes([b[dir + 18], b[dir + 19]]));
                    let entry1 = dir + first.next_multiple_of(8);
                    let table = get_u64(b, entry1) as usize;
                    if get_u64(b, table) != 0 {
                        return Err("b1's first table entry is not empty".into());
                    }
                    put_u64(b, table, 2);
                    Ok(())
                })
            },
        ),
    ]
}

/// Offset of the data of extension `kind` in `b`.
pub(super) fn ext_at(b: &[u8], kind: u32) -> Result<usize, String> {
    let a = area(b)?;
    let (k, _) = a
        .chain
        .find(kind)
        .ok_or_else(|| format!("no extension {kind:#x}"))?;
    Ok(a.chain.data_offsets(a.header.header_length.into())[k] as usize)
}

/// The dedup L1 table and its first level-2 cluster in the dedup seed image.
pub(super) fn dedup_tables(b: &[u8]) -> Result<(usize, u64), String> {
    let d = *area(b)?.dedup().ok_or("no dedup extension")?;
    let l1 = d.l1_offset.get() as usize;
    let l2 = (0..d.l1_size as usize)
        .map(|k| get_u64(b, l1 + 8 * k))
        .find(|&e| e != 0)
        .ok_or("empty dedup L1")?;
    Ok((l1, l2))
}

fn more_cases() -> Vec<NegativeCase> {
    vec![
        case(
            HDR_SNAPSHOTS,
            "snapshots_offset off by 8 with one snapshot",
            |i| {
                raw(i, "snapshot", |b| {
                    if area(b)?.header.nb_snapshots == 0 {
                        return Err("the snapshot golden has no snapshot".into());
                    }
                    let at = get_u64(b, 64);
                    put_u64(b, 64, at + 8);
                    Ok(())
                })
            },
        ),
        case(L1_ENTRY, "snapshot L1 entry with reserved bit 60", |i| {
            raw(i, "snapshot", |b| {
                let at = area(b)?.header.snapshots_offset.get() as usize;
                let l1 = get_u64(b, at) as usize;
                let e = get_u64(b, l1);
                put_u64(b, l1, e | 1 << 60);
                Ok(())
            })
        }),
        case(L2_COPIED, "COPIED clear with an external data file", |i| {
            raw(i, "data-file-raw", |b| {
                let l1 = area(b)?.header.l1_table_offset.get() as usize;
                let l2 = (get_u64(b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
                let e = get_u64(b, l2 + 8);
                if e & 1 << 63 == 0 {
                    return Err("entry 1 has no COPIED flag".into());
                }
                put_u64(b, l2 + 8, e & !(1 << 63));
                Ok(())
            })
        }),
        case(
            L2_ENTRY,
            "external data file cluster away from its guest offset",
            |i| {
                raw(i, "data-file-raw", |b| {
                    let cs = area(b)?.header.geometry().map_err(|e| e.to_string())?;
                    let cs = cs.cluster_size();
                    let l1 = area(b)?.header.l1_table_offset.get() as usize;
                    let l2 = (get_u64(b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
                    let e = get_u64(b, l2 + 8);
                    if e & 0x00ff_ffff_ffff_fe00 != cs {
                        return Err("guest cluster 1 is not at data file offset 1".into());
                    }
                    // Guest cluster 1 claims the data file's cluster 2.
                    put_u64(b, l2 + 8, (e & !0x00ff_ffff_ffff_fe00) | (2 * cs));
                    Ok(())
                })
            },
        ),
        case(
            EXT_BITMAPS,
            "bitmaps extension of 16 bytes, autoclear bit 0 clear",
            |i| {
                raw(i, "bitmaps", |b| {
                    let at = bitmaps_data(b)?;
                    put_u32(b, at - 4, 16);
                    let autoclear = get_u64(b, 88) & !AUTOCLEAR_BITMAPS;
                    put_u64(b, 88, autoclear);
                    Ok(())
                })
            },
        ),
        case(
            EXT_FEATURE_TABLE,
            "feature name with a byte after its NUL",
            |i| {
                raw(i, "default", |b| {
                    let at = ext_at(b, ext::FEATURE_TABLE)?;
                    // Entry 0's name ("dirty bit") leaves its last bytes zero.
                    b[at + 47] = b'x';
                    Ok(())
                })
            },
        ),
        case(DD_L1_ENTRY, "dedup L1 entry with bit 60", |i| {
            raw(i, "seed-dedup", |b| {
                let (l1, l2) = dedup_tables(b)?;
                put_u64(b, l1, l2 | 1 << 60);
                // Nothing names the level-2 cluster any more.
                crate::mutate::adjust_refcount(b, l2, -1)
            })
        }),
        case(
            DD_ENTRY,
            "dedup entry with an all-zero digest and a guest offset",
            |i| {
                raw(i, crate::engine_images::DEDUP_WRITES, |b| {
                    let (_, l2) = dedup_tables(b)?;
                    let l2 = l2 as usize;
                    let cs = 1usize << area(b)?.header.cluster_bits;
                    let entry = (l2..l2 + cs - 40)
                        .step_by(40)
                        .find(|&e| get_u64(b, e + 32) != 0)
                        .ok_or("no dedup entry with a non-zero guest offset")?;
                    b[entry..entry + 32].fill(0);
                    Ok(())
                })
            },
        ),
    ]
}
