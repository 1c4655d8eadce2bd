//! RC-COW and SNAP-LOAD on the qemu-made `snapshot` goldens: a write to a
//! cluster a snapshot shares leaves the snapshot as it was, and a loaded
//! snapshot is the active image with its COPIED flags recomputed.

use qcow2_format::rules::{RC_COW, SNAP_LOAD};
use qcow2_format::HeaderArea;
use qcow2_image::BackingMode;

use super::guest_model::{guest_disk, Until};
use super::raw_map::{self, Mapped};
use super::{clean, duty, golden, open, read_all, same, seen, DutyCase};
use crate::case_report::CaseKind::{Negative, Positive};
use crate::mutate::{get_u64, put_u64};

/// The guest range the cases write: a cluster written before the snapshot
/// and not since, so the snapshot and the active image share it.
const WRITE_AT: u64 = 64 << 10;
const WRITE_LEN: usize = 4096;
const WRITE_BYTE: u8 = 0x71;

/// The header area, cluster bits and first snapshot's L1 table (offset,
/// entries) and disk size.
struct Layout {
    area: HeaderArea,
    snapshot_l1: (u64, u32),
    snapshot_size: u64,
}

fn layout(bytes: &[u8]) -> Result<Layout, String> {
    let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    if area.header.nb_snapshots == 0 {
        return Err("the image has no snapshot".into());
    }
    let at = area.header.snapshots_offset.get() as usize;
    let entry = bytes
        .get(at..at + 64)
        .ok_or("snapshot table past the end")?;
    let l1 = (
        get_u64(entry, 0),
        u32::from_be_bytes(entry[8..12].try_into().unwrap_or_default()),
    );
    // Version 3 extra data: VM state size at bytes 40-47, disk size at 48-55.
    let snapshot_size = get_u64(entry, 48);
    Ok(Layout {
        area,
        snapshot_l1: l1,
        snapshot_size,
    })
}

/// After a write of [`WRITE_BYTE`] over the shared range: the active image
/// reads the new data, the snapshot (read through its own L1 table by the
/// suite) still holds what it held when it was taken, and no rule is broken.
fn compare_after_write(after: &[u8]) -> Result<String, String> {
    let mut want = guest_disk("snapshot", Until::End)?;
    want[WRITE_AT as usize..WRITE_AT as usize + WRITE_LEN].fill(WRITE_BYTE);
    let (image, _) = open(after, false, BackingMode::Ignore)?;
    same("the active image", &read_all(&image)?, &want)?;
    let l = layout(after)?;
    let then = guest_disk("snapshot", Until::SnapshotCreate)?;
    let view = raw_map::read(
        after,
        l.area.header.cluster_bits,
        l.snapshot_l1,
        0,
        then.len(),
    )?;
    same("the snapshot", &view, &then)?;
    clean(after, "after the write")?;
    Ok("the write landed in a copy; the snapshot reads as it was taken; no finding".into())
}

/// The active host cluster of the shared range, which must be shared.
fn shared_host(bytes: &[u8]) -> Result<u64, String> {
    let l = layout(bytes)?;
    let h = &l.area.header;
    let Mapped::Host(host) = raw_map::map(
        bytes,
        h.cluster_bits,
        h.l1_table_offset.get(),
        h.l1_size,
        WRITE_AT,
    )?
    else {
        return Err("the shared range is not allocated".into());
    };
    let refs = crate::mutate::get_refcount(bytes, host >> h.cluster_bits)?;
    if refs < 2 {
        return Err(format!(
            "the cluster at {host:#x} has refcount {refs}, not shared"
        ));
    }
    Ok(host)
}

/// The active L1 entries and those of the first snapshot, COPIED masked.
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

pub(super) fn cases() -> Vec<DutyCase> {
    vec![
        duty(
            RC_COW,
            Positive,
            "the engine writes a cluster the snapshot shares",
            "snapshot",
            |i| {
                let bytes = golden(i, "snapshot")?;
                shared_host(&bytes)?;
                let (image, storage) = open(&bytes, true, BackingMode::Ignore)?;
                image
                    .write_at(&[WRITE_BYTE; WRITE_LEN], WRITE_AT)
                    .and_then(|()| image.close())
                    .map_err(|e| format!("the engine's write failed: {e}"))?;
                compare_after_write(&storage.to_vec())
            },
        ),
        duty(
            RC_COW,
            Negative,
            "a writer that overwrites the shared cluster in place",
            "snapshot",
            |i| {
                let mut bytes = golden(i, "snapshot")?;
                let host = shared_host(&bytes)? as usize;
                bytes[host..host + WRITE_LEN].fill(WRITE_BYTE);
                seen(compare_after_write(&bytes))
            },
        ),
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
                let mut b = golden(i, "snapshot-applied")?;
                let h = layout(&b)?.area.header;
                let l1 = h.l1_table_offset.get() as usize;
                for k in 0..h.l1_size as usize {
                    let e = get_u64(&b, l1 + 8 * k);
                    if e != 0 {
                        put_u64(&mut b, l1 + 8 * k, e | 1 << 63);
                    }
                }
                seen(compare_load(&b, &golden(i, "snapshot")?))
            },
        ),
    ]
}
