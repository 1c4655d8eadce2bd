//! RC-COW on the qemu-made `snapshot` goldens: a write to a data cluster or
//! an L2 table a snapshot shares leaves the snapshot as it was.

use qcow2_format::rules::RC_COW;
use qcow2_format::HeaderArea;
use qcow2_image::BackingMode;

use super::guest_model::{guest_disk, Until};
use super::raw_map::{self, Mapped};
use super::{clean, duty, golden, open, read_all, same, seen, DutyCase};
use crate::case_report::CaseKind::{Negative, Positive};
use crate::mutate::{get_u64, put_u64};

/// The guest cluster the cases write: written before the snapshot and not
/// since, so the snapshot and the active image share it.
const SHARED_AT: u64 = 64 << 10;
const WRITE_BYTE: u8 = 0x71;

/// A write of [`WRITE_BYTE`] over `len` bytes at `at`, and the golden whose
/// recorded commands give the disk before it.
#[derive(Clone, Copy)]
struct Write {
    golden: &'static str,
    at: u64,
    len: usize,
}

const WHOLE: Write = Write {
    golden: "snapshot",
    at: SHARED_AT,
    len: 4096,
};
const PARTIAL: Write = Write {
    golden: "snapshot",
    at: SHARED_AT + 1024,
    len: 1024,
};
/// After `snapshot -a` the active image shares the snapshot's L2 table too.
const SHARED_L2: Write = Write {
    golden: "snapshot-applied",
    at: SHARED_AT,
    len: 4096,
};

/// The header area, cluster bits and first snapshot's L1 table (offset,
/// entries) and disk size.
pub(super) struct Layout {
    pub area: HeaderArea,
    pub snapshot_l1: (u64, u32),
    pub snapshot_size: u64,
}

pub(super) fn layout(bytes: &[u8]) -> Result<Layout, String> {
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

/// After write `w`: the active image reads the new data and, around it,
/// the bytes the cluster held (the copy took them), the snapshot (read
/// through its own L1 table by the suite) still holds what it held when
/// it was taken, and no rule is broken (refcounts and COPIED agree).
fn compare_after_write(after: &[u8], w: Write) -> Result<String, String> {
    let mut want = guest_disk(w.golden, Until::End)?;
    want[w.at as usize..w.at as usize + w.len].fill(WRITE_BYTE);
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

/// The engine's write `w` on its golden; the image bytes after it.
fn engine_write(images: &[crate::corpus::TestImage], w: Write) -> Result<Vec<u8>, String> {
    let bytes = golden(images, w.golden)?;
    shared_host(&bytes)?;
    let (image, storage) = open(&bytes, true, BackingMode::Ignore)?;
    image
        .write_at(&vec![WRITE_BYTE; w.len], w.at)
        .and_then(|()| image.close())
        .map_err(|e| format!("the engine's write failed: {e}"))?;
    Ok(storage.to_vec())
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
        SHARED_AT,
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

/// The L2 entry of the shared cluster in the active L2 table.
fn shared_entry(bytes: &[u8]) -> Result<usize, String> {
    let h = layout(bytes)?.area.header;
    let l2 = get_u64(bytes, h.l1_table_offset.get() as usize) & 0x00ff_ffff_ffff_fe00;
    Ok(l2 as usize + 8 * (SHARED_AT >> h.cluster_bits) as usize)
}

pub(super) fn cases() -> Vec<DutyCase> {
    vec![
        duty(
            RC_COW,
            Positive,
            "the engine writes a whole cluster the snapshot shares",
            "snapshot",
            |i| compare_after_write(&engine_write(i, WHOLE)?, WHOLE),
        ),
        duty(
            RC_COW,
            Positive,
            "the engine writes 1 KiB inside a cluster the snapshot shares",
            "snapshot",
            |i| compare_after_write(&engine_write(i, PARTIAL)?, PARTIAL),
        ),
        duty(
            RC_COW,
            Positive,
            "the engine writes through an L2 table the snapshot shares",
            "snapshot-applied",
            |i| compare_after_write(&engine_write(i, SHARED_L2)?, SHARED_L2),
        ),
        duty(
            RC_COW,
            Negative,
            "a writer that overwrites the shared cluster in place",
            "snapshot",
            |i| {
                let mut bytes = golden(i, "snapshot")?;
                let host = shared_host(&bytes)? as usize;
                bytes[host..host + WHOLE.len].fill(WRITE_BYTE);
                seen(compare_after_write(&bytes, WHOLE))
            },
        ),
        duty(
            RC_COW,
            Negative,
            "a writer that copies but leaves the old cluster both references",
            "snapshot",
            |i| {
                let bytes = golden(i, "snapshot")?;
                let old = shared_host(&bytes)?;
                let mut after = engine_write(i, WHOLE)?;
                let bits = layout(&after)?.area.header.cluster_bits;
                crate::mutate::set_refcount(&mut after, old >> bits, 2)?;
                seen(compare_after_write(&after, WHOLE))
            },
        ),
        duty(
            RC_COW,
            Negative,
            "a writer whose copy leaves out the bytes the write does not cover",
            "snapshot",
            |i| {
                let mut after = engine_write(i, PARTIAL)?;
                let entry = shared_entry(&after)?;
                let copy = (get_u64(&after, entry) & 0x00ff_ffff_ffff_fe00) as usize;
                let within = (PARTIAL.at - SHARED_AT) as usize;
                after[copy..copy + within].fill(0);
                seen(compare_after_write(&after, PARTIAL))
            },
        ),
        duty(
            RC_COW,
            Negative,
            "a writer that points the entry at its copy without COPIED",
            "snapshot",
            |i| {
                let mut after = engine_write(i, PARTIAL)?;
                let entry = shared_entry(&after)?;
                let without = get_u64(&after, entry) & !(1 << 63);
                put_u64(&mut after, entry, without);
                seen(compare_after_write(&after, PARTIAL))
            },
        ),
        duty(
            RC_COW,
            Negative,
            "a writer that repoints an entry of the shared L2 table in place",
            "snapshot-applied",
            |i| {
                let mut bytes = golden(i, "snapshot-applied")?;
                let cs = 1u64 << layout(&bytes)?.area.header.cluster_bits;
                let entry = shared_entry(&bytes)?;
                // The new data in a fresh cluster, but the shared table edited.
                let mut data = guest_disk("snapshot-applied", Until::End)?
                    [SHARED_AT as usize..(SHARED_AT + cs) as usize]
                    .to_vec();
                data[..SHARED_L2.len].fill(WRITE_BYTE);
                let fresh = crate::mutate::append_counted(&mut bytes, cs, &data)?;
                let old = get_u64(&bytes, entry) & 0x00ff_ffff_ffff_fe00;
                crate::mutate::adjust_refcount(&mut bytes, old, -1)?;
                put_u64(&mut bytes, entry, fresh | 1 << 63);
                seen(compare_after_write(&bytes, SHARED_L2))
            },
        ),
    ]
}
