//! Negative cases of the rules the engine enforces: refcounts that do not
//! match the references, clusters in two roles, wrong COPIED flags,
//! compressed clusters that do not decode, and a refcount block cut short.
//!
//! They mutate golden qemu images and images written by our own writer, and
//! keep every other refcount consistent so that only the named rule breaks.

use qcow2_codec::{CompressOutcome, Registry};
use qcow2_format::features::INCOMPAT_EXTENDED_L2;
use qcow2_format::rules::{self, *};
use qcow2_format::tables::compressed::{CompressedDescriptor, COMPRESSED_FLAG, SECTOR_SIZE};
use qcow2_format::tables::l1::{L1_COPIED, L1_OFFSET_MASK};
use qcow2_format::tables::l2::{L2_COPIED, L2_OFFSET_MASK};
use qcow2_format::HeaderArea;

use super::{case, named, plain, CaseInput, NegativeCase};
use crate::mutate::{
    adjust_refcount, append_cluster_aligned, append_counted, get_u64, put_u64, set_refcount,
};

/// What the cases need to know about an image's layout.
pub(super) struct Layout {
    pub(super) cluster_size: u64,
    pub(super) l1_offset: u64,
    pub(super) l1_size: u64,
    pub(super) refcount_table: u64,
    pub(super) entry_size: usize,
}

pub(super) fn layout(bytes: &[u8]) -> Result<Layout, String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let h = &a.header;
    Ok(Layout {
        cluster_size: 1 << h.cluster_bits,
        l1_offset: h.l1_table_offset.get(),
        l1_size: h.l1_size.into(),
        refcount_table: h.refcount_table_offset.get(),
        entry_size: if h.incompatible_features & INCOMPAT_EXTENDED_L2 != 0 {
            16
        } else {
            8
        },
    })
}

/// Byte offset of the first non-zero active L1 entry.
pub(super) fn first_l1_entry(bytes: &[u8]) -> Result<usize, String> {
    let l = layout(bytes)?;
    (0..l.l1_size as usize)
        .map(|k| l.l1_offset as usize + 8 * k)
        .find(|&at| get_u64(bytes, at) & L1_OFFSET_MASK != 0)
        .ok_or_else(|| "the image has no L2 table".to_string())
}

/// Byte offsets of the L2 entries of the first L2 table for which `pred(raw)` holds.
fn l2_entries(bytes: &[u8], pred: impl Fn(u64) -> bool) -> Result<Vec<usize>, String> {
    let l = layout(bytes)?;
    let l2 = (get_u64(bytes, first_l1_entry(bytes)?) & L1_OFFSET_MASK) as usize;
    Ok((0..l.cluster_size as usize / l.entry_size)
        .map(|i| l2 + i * l.entry_size)
        .filter(|&at| pred(get_u64(bytes, at)))
        .collect())
}

/// The first L2 entry with a standard (uncompressed) host cluster.
fn first_data_entry(bytes: &[u8]) -> Result<usize, String> {
    l2_entries(bytes, |e| {
        e & COMPRESSED_FLAG == 0 && e & L2_OFFSET_MASK != 0
    })?
    .first()
    .copied()
    .ok_or_else(|| "the first L2 table maps no data cluster".to_string())
}

/// The last entry of the first L2 table that is entirely zero (with its bitmap).
pub(super) fn free_entry(bytes: &[u8]) -> Result<usize, String> {
    let step = layout(bytes)?.entry_size;
    l2_entries(bytes, |e| e == 0)?
        .into_iter()
        .rev()
        .find(|&at| bytes[at..at + step].iter().all(|&b| b == 0))
        .ok_or_else(|| "the first L2 table has no free entry".to_string())
}

/// Points a free L2 entry (COPIED clear) at `target` and counts that reference,
/// so the target's refcount matches and only its second role is wrong.
pub(super) fn alias(
    mut b: Vec<u8>,
    target: impl Fn(&[u8]) -> Result<u64, String>,
) -> Result<CaseInput, String> {
    let at = free_entry(&b)?;
    let host = target(&b)?;
    put_u64(&mut b, at, host);
    if layout(&b)?.entry_size == 16 {
        put_u64(&mut b, at + 8, 1); // subcluster 0 allocated
    }
    adjust_refcount(&mut b, host, 1)?;
    Ok(CaseInput::Bytes(b))
}

/// The first compressed descriptor of the image: (entry offset, data range).
fn first_compressed(bytes: &[u8]) -> Result<(usize, std::ops::Range<usize>), String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let geo = a.header.geometry().map_err(|e| e.to_string())?;
    let at = *l2_entries(bytes, |e| e & COMPRESSED_FLAG != 0)?
        .first()
        .ok_or("the image has no compressed cluster")?;
    let d = CompressedDescriptor::decode(get_u64(bytes, at), geo, at as u64)
        .map_err(|e| e.to_string())?;
    let start = d.host_offset.get();
    let len = (d.additional_sectors + 1) * SECTOR_SIZE - start % SECTOR_SIZE;
    let end = (start + len).min(bytes.len() as u64);
    Ok((at, start as usize..end as usize))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    vec![
        case(
            RC_MATCH,
            "leak: a free cluster with refcount 1 (writer image, 64-bit refcounts)",
            |i| {
                let mut b = named(i, "engine-c4k-v3-rb64")?;
                let cs = layout(&b)?.cluster_size;
                append_counted(&mut b, cs, &vec![0; cs as usize])?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(RC_MATCH, "refcount of the active L1 table set to 0", |i| {
            let mut b = named(i, "data-v3")?;
            let l = layout(&b)?;
            set_refcount(&mut b, l.l1_offset / l.cluster_size, 0)?;
            Ok(CaseInput::Bytes(b))
        }),
        case(
            RC_MATCH,
            "refcount of the refcount table set to 0 (writer image, 1-bit refcounts)",
            |i| {
                let mut b = named(i, "engine-c4k-v3-rb1")?;
                let l = layout(&b)?;
                set_refcount(&mut b, l.refcount_table / l.cluster_size, 0)?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(RC_OVERLAP, "L2 entry naming the active L1 table", |i| {
            alias(named(i, "data-v3")?, |b| Ok(layout(b)?.l1_offset))
        }),
        case(
            RC_OVERLAP,
            "L2 entry naming a refcount block (writer image, 512-byte clusters)",
            |i| {
                alias(named(i, "engine-c512-v3-rb16")?, |b| {
                    let l = layout(b)?;
                    Ok(get_u64(b, l.refcount_table as usize) & !0x1ff)
                })
            },
        ),
        case(
            rules::L1_COPIED,
            "COPIED clear on a private L2 table",
            |i| {
                let mut b = named(i, "data-v3")?;
                let at = first_l1_entry(&b)?;
                let e = get_u64(&b, at);
                put_u64(&mut b, at, e & !L1_COPIED);
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            rules::L1_COPIED,
            "COPIED kept on an L2 table shared by two L1 entries (writer image, version 2)",
            |i| {
                let mut b = named(i, "engine-c512-v2-rb16")?;
                let l = layout(&b)?;
                let at = first_l1_entry(&b)?;
                let l2 = get_u64(&b, at) & L1_OFFSET_MASK;
                // Share the table correctly (count the second reference, clear the
                // COPIED flags of its now shared data clusters) except for the
                // COPIED flags of the two L1 entries.
                let free = (0..l.l1_size as usize)
                    .map(|k| l.l1_offset as usize + 8 * k)
                    .rev()
                    .find(|&at| get_u64(&b, at) == 0)
                    .ok_or("no free L1 entry")?;
                put_u64(&mut b, free, l2 | L1_COPIED);
                adjust_refcount(&mut b, l2, 1)?;
                for e_at in l2_entries(&b, |e| e & L2_OFFSET_MASK != 0)? {
                    let e = get_u64(&b, e_at);
                    put_u64(&mut b, e_at, e & !L2_COPIED);
                    adjust_refcount(&mut b, e & L2_OFFSET_MASK, 1)?;
                }
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            rules::L2_COPIED,
            "COPIED clear on a private data cluster",
            |i| {
                let mut b = named(i, "data-v3")?;
                let at = first_data_entry(&b)?;
                let e = get_u64(&b, at);
                put_u64(&mut b, at, e & !L2_COPIED);
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            rules::L2_COPIED,
            "COPIED clear on a private data cluster (writer image, extended L2)",
            |i| {
                let mut b = named(i, "engine-c64k-v3-rb1-extl2")?;
                let at = first_data_entry(&b)?;
                let e = get_u64(&b, at);
                put_u64(&mut b, at, e & !L2_COPIED);
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            rules::L2_COPIED,
            "COPIED kept on a data cluster shared by two entries",
            |i| {
                let mut b = named(i, "data-v3")?;
                let data = first_data_entry(&b)?;
                let host = get_u64(&b, data) & L2_OFFSET_MASK;
                let free = free_entry(&b)?;
                put_u64(&mut b, free, host);
                adjust_refcount(&mut b, host, 1)?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            CMP_DECODE,
            "compressed zlib cluster overwritten with zeros",
            |i| {
                let mut b = named(i, "compressed-zlib")?;
                let (_, range) = first_compressed(&b)?;
                b[range].fill(0);
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            CMP_DECODE,
            "zstd stream that ends after half a cluster",
            |i| {
                let mut b = named(i, "compressed-zstd")?;
                let (_, range) = first_compressed(&b)?;
                let half = vec![0x33u8; layout(&b)?.cluster_size as usize / 2];
                let codec = Registry::builtin()
                    .by_name("zstd", 0)
                    .map_err(|e| e.to_string())?;
                let mut out = vec![0u8; half.len()];
                let CompressOutcome::Compressed(n) =
                    codec.compress(&half, &mut out).map_err(|e| e.to_string())?
                else {
                    return Err("half a cluster of 0x33 did not compress".into());
                };
                if n > range.len() {
                    return Err("the short stream does not fit the descriptor".into());
                }
                b[range.clone()].fill(0);
                b[range.start..range.start + n].copy_from_slice(&out[..n]);
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            RC_BLOCK,
            "refcount block cut short by the end of the file",
            |i| {
                let mut b = plain(i)?;
                let l = layout(&b)?;
                let rt = l.refcount_table as usize;
                let old = get_u64(&b, rt) & !0x1ff;
                let block = b[old as usize..(old + l.cluster_size) as usize].to_vec();
                let new = append_cluster_aligned(&mut b, l.cluster_size, &block);
                put_u64(&mut b, rt, new);
                set_refcount(&mut b, new / l.cluster_size, 1)?;
                set_refcount(&mut b, old / l.cluster_size, 0)?;
                b.truncate(b.len() - 512);
                Ok(CaseInput::Bytes(b))
            },
        ),
    ]
}
