//! SNAP-LOAD on the qemu-made `snapshot-applied` golden, against the
//! `snapshot` golden it was loaded from: the active image is a copy of the
//! snapshot with its COPIED flags recomputed.

use qcow2_format::rules::SNAP_LOAD;
use qcow2_image::BackingMode;

use super::guest_model::{guest_disk, Until};
use super::writes::layout;
use super::{clean, duty, golden, open, read_all, same, seen, DutyCase};
use crate::case_report::CaseKind::{Negative, Positive};
use crate::mutate::{get_u64, put_u64};

/// The entries of the L1 table (offset, count) of `bytes`, COPIED masked.
fn l1_entries(bytes: &[u8], l1: (u64, u32)) -> Vec<u64> {
    (0..u64::from(l1.1))
        .map(|k| {
            let at = (l1.0 + 8 * k) as usize;
            if at + 8 <= bytes.len() {
                get_u64(bytes, at) & !(1 << 63)
            } else {
                u64::MAX
            }
        })
        .collect()
}

/// A loaded snapshot: the active L1 is a copy of the snapshot's (COPIED
/// aside), the size is the snapshot's, the disk reads as the snapshot was
/// taken, and no rule is broken (COPIED recomputed from the refcounts).
fn compare_load(loaded: &[u8], before: &[u8]) -> Result<String, String> {
    let was = layout(before)?;
    let now = layout(loaded)?;
    let h = &now.area.header;
    let active = l1_entries(loaded, (h.l1_table_offset.get(), h.l1_size));
    if active != l1_entries(before, was.snapshot_l1) {
        return Err("the active L1 table is not a copy of the snapshot's".into());
    }
    if h.size != was.snapshot_size {
        return Err(format!(
            "size {} after the load, the snapshot's is {}",
            h.size, was.snapshot_size
        ));
    }
    let (image, _) = open(loaded, false, BackingMode::Ignore)?;
    same(
        "the loaded image",
        &read_all(&image)?,
        &guest_disk("snapshot", Until::SnapshotCreate)?,
    )?;
    clean(loaded, "after the load")?;
    Ok("the active L1 copies the snapshot's, the disk reads as it was, COPIED agrees".into())
}

/// `snapshot-applied` with `edit` applied (given its active L1 offset and
/// entry count), compared as a load.
fn planted(
    images: &[crate::corpus::TestImage],
    edit: impl FnOnce(&mut Vec<u8>, usize, usize),
) -> Result<String, String> {
    let mut b = golden(images, "snapshot-applied")?;
    let h = layout(&b)?.area.header;
    edit(&mut b, h.l1_table_offset.get() as usize, h.l1_size as usize);
    seen(compare_load(&b, &golden(images, "snapshot")?))
}

/// The first host cluster whose refcount goes from `from` in `snapshot`
/// to `to` in `snapshot-applied`.
fn cluster_changed(images: &[crate::corpus::TestImage], from: u64, to: u64) -> Result<u64, String> {
    let before = golden(images, "snapshot")?;
    let after = golden(images, "snapshot-applied")?;
    let bits = layout(&after)?.area.header.cluster_bits;
    let clusters = (before.len().min(after.len()) as u64) >> bits;
    (1..clusters)
        .find(|&c| {
            crate::mutate::get_refcount(&before, c) == Ok(from)
                && crate::mutate::get_refcount(&after, c) == Ok(to)
        })
        .ok_or_else(|| format!("no cluster whose refcount went from {from} to {to}"))
}

pub(super) fn cases() -> Vec<DutyCase> {
    vec![
        duty(
            SNAP_LOAD,
            Positive,
            "qemu-img snapshot -a s0",
            "snapshot-applied",
            |i| compare_load(&golden(i, "snapshot-applied")?, &golden(i, "snapshot")?),
        ),
        duty(
            SNAP_LOAD,
            Negative,
            "a load that keeps the COPIED flags of the copied L1 entries",
            "snapshot-applied",
            |i| {
                planted(i, |b, l1, n| {
                    for k in 0..n {
                        let e = get_u64(b, l1 + 8 * k);
                        if e != 0 {
                            put_u64(b, l1 + 8 * k, e | 1 << 63);
                        }
                    }
                })
            },
        ),
        duty(
            SNAP_LOAD,
            Negative,
            "a load that keeps the active L1 table it had",
            "snapshot-applied",
            |i| {
                // The L1 entry of the image before the load.
                let before = golden(i, "snapshot")?;
                let h = layout(&before)?.area.header;
                let old = get_u64(&before, h.l1_table_offset.get() as usize);
                planted(i, |b, l1, _| put_u64(b, l1, old))
            },
        ),
        duty(
            SNAP_LOAD,
            Negative,
            "a load that keeps the references of the tables it replaced",
            "snapshot-applied",
            |i| {
                // A cluster only the old active tables used, freed by the load.
                let freed = cluster_changed(i, 1, 0)?;
                planted(i, |b, _, _| {
                    let _ = crate::mutate::set_refcount(b, freed, 1);
                })
            },
        ),
        duty(
            SNAP_LOAD,
            Negative,
            "a load that adds no reference for the snapshot's tables",
            "snapshot-applied",
            |i| {
                // A cluster the load made shared by the snapshot and the copy.
                let shared = cluster_changed(i, 1, 2)?;
                planted(i, |b, _, _| {
                    let _ = crate::mutate::set_refcount(b, shared, 1);
                })
            },
        ),
        duty(
            SNAP_LOAD,
            Negative,
            "a load that keeps the virtual size it had",
            "snapshot-applied",
            |i| {
                planted(i, |b, _, _| {
                    let size = get_u64(b, 24);
                    put_u64(b, 24, size + 4096);
                })
            },
        ),
    ]
}
