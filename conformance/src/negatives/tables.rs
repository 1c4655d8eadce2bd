//! Negative cases of the tables: L1/L2 entries, compressed descriptors, refcounts, snapshots.
//!
//! Each appends a crafted table to a golden image and links it from the header or L1 table.
//! Appended clusters get a refcount of 1, so the only rule broken is the one the case names.

use qcow2_format::features::INCOMPAT_EXTENDED_L2;
use qcow2_format::rules::*;
use qcow2_format::tables::compressed::COMPRESSED_FLAG;
use qcow2_format::tables::l1::L1_COPIED;
use qcow2_format::HeaderArea;

use super::{case, pick, plain, CaseInput, NegativeCase};
use crate::mutate::{append_counted, edit_area, get_u64, put_u32, put_u64};

/// Appends one L2 table holding `entries` (raw u64 words, in order) and points L1 entry 0 at it.
pub(super) fn with_l2(mut bytes: Vec<u8>, entries: &[u64]) -> Result<Vec<u8>, String> {
    let a = HeaderArea::parse(&bytes).map_err(|e| e.to_string())?;
    let cs = 1u64 << a.header.cluster_bits;
    let mut table = vec![0u8; cs as usize];
    for (k, e) in entries.iter().enumerate() {
        put_u64(&mut table, 8 * k, *e);
    }
    let l2_at = append_counted(&mut bytes, cs, &table)?;
    if a.header.l1_size == 0 {
        return Err("base image has no L1 entries".into());
    }
    put_u64(
        &mut bytes,
        a.header.l1_table_offset.get() as usize,
        l2_at | L1_COPIED,
    );
    Ok(bytes)
}

/// Appends `n` data clusters (refcount 1 each) for crafted data entries; returns the first offset.
fn data_clusters(bytes: &mut Vec<u8>, n: usize) -> Result<u64, String> {
    let cs = header_field(bytes, |a| 1 << a.header.cluster_bits)?;
    append_counted(bytes, cs, &vec![0x5a; n * cs as usize])
}

/// Appends one data cluster (refcount 1) for crafted data entries; returns its offset.
fn data_cluster(bytes: &mut Vec<u8>) -> Result<u64, String> {
    data_clusters(bytes, 1)
}

fn header_field(bytes: &[u8], f: impl Fn(&HeaderArea) -> u64) -> Result<u64, String> {
    HeaderArea::parse(bytes)
        .map(|a| f(&a))
        .map_err(|e| e.to_string())
}

pub(super) fn cases() -> Vec<NegativeCase> {
    vec![
        case(
            L1_ENTRY,
            "L1 entry pointing 512 bytes past a cluster start",
            |i| {
                let mut b = plain(i)?;
                let l1 = header_field(&b, |a| a.header.l1_table_offset.get())?;
                // Two counted clusters, so the misplaced table's references stay in them.
                let cs = header_field(&b, |a| 1 << a.header.cluster_bits)?;
                let l2 = append_counted(&mut b, cs, &vec![0; 2 * cs as usize])?;
                put_u64(&mut b, l1 as usize, (l2 + 512) | L1_COPIED);
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(L1_ENTRY, "L1 entry with reserved bit 60", |i| {
            let b = plain(i)?;
            let mut b = with_l2(b, &[])?;
            let l1 = header_field(&b, |a| a.header.l1_table_offset.get())? as usize;
            let e = get_u64(&b, l1);
            put_u64(&mut b, l1, e | 1 << 60);
            Ok(CaseInput::Bytes(b))
        }),
        case(L1_ENTRY, "L1 entry with reserved bit 3", |i| {
            let mut b = with_l2(plain(i)?, &[])?;
            let l1 = header_field(&b, |a| a.header.l1_table_offset.get())? as usize;
            let e = get_u64(&b, l1);
            put_u64(&mut b, l1, e | 1 << 3);
            Ok(CaseInput::Bytes(b))
        }),
        case(L2_ENTRY, "L2 entry with reserved bit 4", |i| {
            let mut b = plain(i)?;
            let host = data_cluster(&mut b)?;
            with_l2(b, &[host | L1_COPIED | 1 << 4]).map(CaseInput::Bytes)
        }),
        case(L2_ENTRY, "L2 entry with an unaligned host offset", |i| {
            let mut b = plain(i)?;
            // The misaligned cluster reaches into the next one: count both.
            let host = data_clusters(&mut b, 2)? + 512;
            with_l2(b, &[host | L1_COPIED]).map(CaseInput::Bytes)
        }),
        case(L2_ENTRY, "L2 entry with reserved bit 57", |i| {
            let mut b = plain(i)?;
            let host = data_cluster(&mut b)?;
            with_l2(b, &[host | L1_COPIED | 1 << 57]).map(CaseInput::Bytes)
        }),
        case(L2_ZERO_FLAG, "zero flag in a version 2 image", |i| {
            let b = pick(i, "a version 2 image", |a| {
                a.header.version == 2 && a.header.l1_size > 0
            })?;
            with_l2(b, &[1]).map(CaseInput::Bytes)
        }),
        case(L2_EXTENDED, "subcluster 0 both allocated and zero", |i| {
            let mut b = pick(i, "an extended L2 image", |a| {
                a.header.incompatible_features & INCOMPAT_EXTENDED_L2 != 0
            })?;
            let host = data_cluster(&mut b)?;
            with_l2(b, &[host | L1_COPIED, 1 | 1 << 32]).map(CaseInput::Bytes)
        }),
        case(
            L2_EXTENDED,
            "allocation bits on an unallocated cluster",
            |i| {
                let b = pick(i, "an extended L2 image", |a| {
                    a.header.incompatible_features & INCOMPAT_EXTENDED_L2 != 0
                })?;
                with_l2(b, &[0, 0b101]).map(CaseInput::Bytes)
            },
        ),
        case(
            CMP_DESCRIPTOR,
            "compressed descriptor with the COPIED flag",
            |i| {
                let mut b = plain(i)?;
                let host = data_cluster(&mut b)? + 100;
                with_l2(b, &[COMPRESSED_FLAG | L1_COPIED | host]).map(CaseInput::Bytes)
            },
        ),
        case(
            CMP_DESCRIPTOR,
            "compressed host offset with bit 56 set (4 KiB clusters)",
            |i| {
                let b = pick(i, "a 4 KiB-cluster v3 image", |a| {
                    a.header.cluster_bits == 12 && a.header.version == 3
                })?;
                // Nothing is appended for it: the offset is far outside the file.
                with_l2(b, &[COMPRESSED_FLAG | (1 << 56)]).map(CaseInput::Bytes)
            },
        ),
        case(
            CMP_DESCRIPTOR,
            "compressed cluster with an external data file",
            |i| {
                let b = pick(i, "an image with an external data file", |a| {
                    a.data_file().is_some()
                })?;
                // The stream would be in the data file, where nothing is refcounted.
                with_l2(b, &[COMPRESSED_FLAG]).map(CaseInput::Bytes)
            },
        ),
        case(RC_TABLE_ENTRY, "refcount table entry 0 off by 512", |i| {
            let mut b = plain(i)?;
            let rt = header_field(&b, |a| a.header.refcount_table_offset.get())? as usize;
            let e = get_u64(&b, rt);
            put_u64(&mut b, rt, e + 512);
            Ok(CaseInput::Bytes(b))
        }),
        case(
            RC_TABLE_ENTRY,
            "refcount table entry 1 naming a block, with bit 0",
            |i| {
                let mut b = plain(i)?;
                let rt = header_field(&b, |a| a.header.refcount_table_offset.get())? as usize;
                if get_u64(&b, rt + 8) != 0 {
                    return Err("refcount table entry 1 is in use".into());
                }
                // An all-zero block for clusters past the file. A check
                // that refuses the entry does not count the block, so its
                // own refcount stays 0.
                let cs = header_field(&b, |a| 1 << a.header.cluster_bits)?;
                let block =
                    crate::mutate::append_cluster_aligned(&mut b, cs, &vec![0; cs as usize]);
                put_u64(&mut b, rt + 8, block | 1);
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(RC_MATCH, "refcount of the header cluster set to 0", |i| {
            let mut b = plain(i)?;
            let rt = header_field(&b, |a| a.header.refcount_table_offset.get())? as usize;
            let block = get_u64(&b, rt) as usize;
            // The plain image has 16-bit refcounts: entry 0 is bytes 0..2 of the block.
            b[block..block + 2].fill(0);
            Ok(CaseInput::Bytes(b))
        }),
        case(
            SNAP_ENTRY,
            "version 3 snapshot with 8 bytes of extra data",
            |i| {
                let mut b = plain(i)?;
                // An empty L1 table of its own, one entry for the 64 MiB disk.
                let l1 = append_counted(&mut b, 65536, &[0; 8])?;
                plain_with_snapshot(b, l1, 1, &[0; 8])
            },
        ),
        // The check counts no L1 table it cannot trust (as qemu-img check),
        // so these name no cluster and break nothing else.
        case(SNAP_ENTRY, "snapshot L1 table offset off by 512", |i| {
            plain_with_snapshot(plain(i)?, 0x30200, 1, &v3_extra())
        }),
        case(SNAP_ENTRY, "snapshot L1 table of 4,194,305 entries", |i| {
            plain_with_snapshot(plain(i)?, 0x30000, 4_194_305, &v3_extra())
        }),
        case(SNAP_VMSTATE, "one byte of VM state past a full L1", |i| {
            first_snapshot(i, |b, at| {
                // The 64-bit VM state size, the first field of the extra data.
                put_u64(b, at + 40, 1);
                Ok(())
            })
        }),
        case(
            SNAP_VMSTATE,
            "snapshot disk size beyond its L1 table",
            |i| {
                first_snapshot(i, |b, at| {
                    // 4 KiB clusters: one L1 entry covers 2 MiB.
                    put_u64(b, at + 48, 3 << 20);
                    Ok(())
                })
            },
        ),
        case(SNAP_ID_UNIQUE, "two snapshots with the ID 1", |i| {
            use qcow2_format::tables::snapshot::{self, SnapshotContext};
            let mut b = super::named(i, "built-snapshot-data")?;
            let a = HeaderArea::parse(&b).map_err(|e| e.to_string())?;
            let ctx = SnapshotContext {
                geometry: a.header.geometry().map_err(|e| e.to_string())?,
                version: a.header.version,
            };
            let at = a.header.snapshots_offset.get() as usize;
            let cs = ctx.geometry.cluster_size();
            let mut entries = snapshot::parse_table(&b[at..at + cs as usize], 1, &ctx, at as u64)
                .map_err(|e| e.to_string())?;
            // The second one has no L1 table of its own: only its ID is wrong.
            let mut again = entries[0].clone();
            again.l1_table_offset = qcow2_format::HostOffset(0);
            again.l1_size = 0;
            // A snapshot of an empty disk needs no L1 entries (SNAP-VMSTATE).
            if let Some(disk) = again.extra_data.get_mut(8..16) {
                disk.fill(0);
            }
            again.name = b"again".to_vec();
            entries.push(again);
            let table = snapshot::encode_table(&entries, &ctx).map_err(|e| e.to_string())?;
            if table.len() as u64 > cs {
                return Err("the table outgrows its cluster".into());
            }
            b[at..at + table.len()].copy_from_slice(&table);
            edit_area(&b, |a| a.header.nb_snapshots = 2).map(CaseInput::Bytes)
        }),
    ]
}

/// The qemu-made `snapshot` golden with `edit` applied, given the file
/// offset of its first snapshot table entry.
fn first_snapshot(
    images: &[crate::corpus::TestImage],
    edit: impl FnOnce(&mut Vec<u8>, usize) -> Result<(), String>,
) -> Result<CaseInput, String> {
    let mut b = super::named(images, "snapshot")?;
    let a = HeaderArea::parse(&b).map_err(|e| e.to_string())?;
    if a.header.nb_snapshots == 0 || a.header.cluster_bits != 12 {
        return Err("the snapshot golden has no snapshot, or not 4 KiB clusters".into());
    }
    edit(&mut b, a.header.snapshots_offset.get() as usize)?;
    Ok(CaseInput::Bytes(b))
}

/// Version 3 snapshot extra data: no VM state, the plain image's 64 MiB disk.
fn v3_extra() -> Vec<u8> {
    let mut extra = vec![0u8; 16];
    put_u64(&mut extra, 8, 64 << 20);
    extra
}

/// The plain image `b` with one snapshot (ID "1", name "a") whose L1 table
/// is `l1_size` entries at `l1_offset`, with `extra` as its extra data.
fn plain_with_snapshot(
    mut b: Vec<u8>,
    l1_offset: u64,
    l1_size: u32,
    extra: &[u8],
) -> Result<CaseInput, String> {
    let mut entry = vec![0u8; 40];
    put_u64(&mut entry, 0, l1_offset);
    put_u32(&mut entry, 8, l1_size);
    put_u32(&mut entry, 12, 0x0001_0001); // id_str_size 1, name_size 1
    put_u32(&mut entry, 36, extra.len() as u32);
    entry.extend_from_slice(extra);
    entry.extend_from_slice(b"1a");
    entry.resize(entry.len().div_ceil(8) * 8, 0);
    let at = append_counted(&mut b, 65536, &entry)?;
    edit_area(&b, |a| {
        a.header.nb_snapshots = 1;
        a.header.snapshots_offset.0 = at;
    })
    .map(CaseInput::Bytes)
}
