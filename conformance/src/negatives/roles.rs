//! Negatives for the kinds of cluster RC-MATCH counts and RC-OVERLAP gives
//! one role that the other files leave unbroken: a compressed host cluster
//! two descriptors share, a snapshot's L1 table, an L2 table, and each
//! metadata structure named a second time as guest data.

use qcow2_format::extensions::Extension;
use qcow2_format::rules::*;
use qcow2_format::tables::compressed::{CompressedDescriptor, COMPRESSED_FLAG, SECTOR_SIZE};
use qcow2_format::tables::l1::{L1_COPIED, L1_OFFSET_MASK};

use super::clauses::{area, ext_at, refcount};
use super::engine::{alias, first_l1_entry, layout};
use super::{case, named, CaseInput, NegativeCase};
use crate::mutate::{adjust_refcount, get_refcount, get_u64, put_u64, set_refcount};

/// Writer images whose compressed clusters may share a host cluster.
const PACKED: &[&str] = &[
    "engine-c64k-v3-rb16",
    "engine-c64k-v3-rb16-zstd",
    "engine-c4k-v3-rb16-prealloc",
    "engine-c512-v3-rb16",
];

/// For each host cluster some compressed stream of `b` touches, the number
/// of descriptors (of the active tables) that touch it.
fn compressed_touches(b: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let a = area(b)?;
    if a.header.nb_snapshots != 0 {
        return Err("snapshot tables would count too".into());
    }
    let geo = a.header.geometry().map_err(|e| e.to_string())?;
    let l = layout(b)?;
    let mut touches: Vec<(u64, u64)> = Vec::new();
    for k in 0..l.l1_size as usize {
        let l2 = get_u64(b, l.l1_offset as usize + 8 * k) & L1_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        for e in 0..(l.cluster_size as usize / l.entry_size) {
            let at = l2 as usize + e * l.entry_size;
            let raw = get_u64(b, at);
            if raw & COMPRESSED_FLAG == 0 {
                continue;
            }
            let d = CompressedDescriptor::decode(raw, geo, at as u64).map_err(|e| e.to_string())?;
            let start = d.host_offset.get();
            let end = start + (d.additional_sectors + 1) * SECTOR_SIZE - start % SECTOR_SIZE;
            for c in start / l.cluster_size..=(end - 1) / l.cluster_size {
                match touches.iter_mut().find(|(h, _)| *h == c) {
                    Some((_, n)) => *n += 1,
                    None => touches.push((c, 1)),
                }
            }
        }
    }
    Ok(touches)
}

/// The snapshot golden's first snapshot L1 table.
fn snapshot_l1(b: &[u8]) -> Result<u64, String> {
    let a = area(b)?;
    if a.header.nb_snapshots == 0 {
        return Err("the snapshot golden has no snapshot".into());
    }
    Ok(get_u64(b, a.header.snapshots_offset.get() as usize))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    let mut all = match_cases();
    all.extend(overlap_cases());
    all
}

fn match_cases() -> Vec<NegativeCase> {
    vec![
        case(
            RC_MATCH,
            "refcount 1 for a host cluster two compressed descriptors share (writer image)",
            |i| {
                for name in PACKED {
                    let mut b = named(i, name)?;
                    let shared = compressed_touches(&b)?
                        .into_iter()
                        .find(|&(c, n)| n == 2 && get_refcount(&b, c) == Ok(2));
                    if let Some((c, _)) = shared {
                        set_refcount(&mut b, c, 1)?;
                        return Ok(CaseInput::Bytes(b));
                    }
                }
                Err("no writer image has a host cluster of two compressed streams".into())
            },
        ),
        case(RC_MATCH, "refcount 0 for a snapshot's L1 table", |i| {
            refcount(i, "snapshot", 0, snapshot_l1)
        }),
        case(RC_MATCH, "refcount 0 for an L2 table", |i| {
            let mut b = named(i, "data-v3")?;
            let l = layout(&b)?;
            let at = first_l1_entry(&b)?;
            let e = get_u64(&b, at);
            set_refcount(&mut b, (e & L1_OFFSET_MASK) / l.cluster_size, 0)?;
            // COPIED agrees with a refcount of 0 only when clear.
            put_u64(&mut b, at, e & !L1_COPIED);
            Ok(CaseInput::Bytes(b))
        }),
    ]
}

fn overlap_cases() -> Vec<NegativeCase> {
    vec![
        case(RC_OVERLAP, "L2 entry naming a snapshot's L1 table", |i| {
            alias(named(i, "snapshot")?, snapshot_l1)
        }),
        case(RC_OVERLAP, "L2 entry naming its own L2 table", |i| {
            let CaseInput::Bytes(mut b) = alias(named(i, "data-v3")?, |b| {
                Ok(get_u64(b, first_l1_entry(b)?) & L1_OFFSET_MASK)
            })?
            else {
                return Err("not bytes".into());
            };
            // The table's refcount is 2 now: COPIED must be clear.
            let at = first_l1_entry(&b)?;
            let e = get_u64(&b, at);
            put_u64(&mut b, at, e & !L1_COPIED);
            Ok(CaseInput::Bytes(b))
        }),
        case(RC_OVERLAP, "L2 entry naming the refcount table", |i| {
            alias(named(i, "data-v3")?, |b| Ok(layout(b)?.refcount_table))
        }),
        case(RC_OVERLAP, "L2 entry naming the snapshot table", |i| {
            alias(named(i, "snapshot")?, |b| {
                Ok(area(b)?.header.snapshots_offset.get())
            })
        }),
        case(RC_OVERLAP, "L2 entry naming the bitmap directory", |i| {
            alias(named(i, "bitmaps")?, |b| {
                let at = ext_at(b, qcow2_format::extensions::BITMAPS)?;
                Ok(get_u64(b, at + 16))
            })
        }),
        case(RC_OVERLAP, "L2 entry naming the LUKS area", |i| {
            let b = named(i, "luks")?;
            let fde = area(&b)?
                .chain
                .extensions
                .iter()
                .find_map(|e| match e {
                    Extension::FullDiskEncryption(f) => Some(f.offset.get()),
                    _ => None,
                })
                .ok_or("the luks golden has no encryption header pointer")?;
            // Its L2 table is new, so the entry's COPIED flag (clear) is
            // right for a cluster of refcount 2.
            let mut b = super::tables::with_l2(b, &[fde])?;
            adjust_refcount(&mut b, fde, 1)?;
            Ok(CaseInput::Bytes(b))
        }),
    ]
}
