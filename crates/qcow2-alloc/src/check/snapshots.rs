//! The snapshot table, read leniently: a check must survive entries that an
//! open would refuse, and report them.

use std::collections::BTreeMap;

use qcow2_format::rules;
use qcow2_format::tables::l1::MAX_L1_ENTRIES;
use qcow2_format::tables::snapshot::{
    MAX_EXTRA_DATA, MAX_TABLE_SIZE, SNAPSHOT_HEADER_SIZE, V3_MIN_EXTRA_DATA,
};

use super::error::CheckResult;
use super::image::{be16, be32, be64, Image};
use super::refmap::role;
use super::refs::{Counter, Ref};
use super::tables::{for_each_entry, l1_entry, Visits};

/// The fields of a snapshot entry the check needs.
#[derive(Clone, Debug)]
struct Snapshot {
    /// File offset of the entry.
    at: u64,
    l1_offset: u64,
    l1_size: u32,
    /// VM state bytes: the 64-bit field of the extra data when present,
    /// else the 32-bit one.
    vm_state: u64,
    /// The disk size the extra data records, if it does.
    disk_size: Option<u64>,
    id: String,
    name: String,
}

/// `len` bytes of `buf` from `start`, zero-extended past its end (the file
/// reads as zeros past its end, as QEMU reads it). `len` is at most 65535.
fn bytes_at(buf: &[u8], start: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if let Some(avail) = buf.get(start..) {
        let n = avail.len().min(len);
        out[..n].copy_from_slice(&avail[..n]);
    }
    out
}

/// Parses up to `count` entries; returns them and the table length: up to
/// the end of the last entry, or of the part of a broken entry that was
/// needed. Bytes past the end of the file read as zeros, so a table running
/// past it is reported by the reference check of the table itself.
fn parse(
    img: &Image<'_>,
    counter: &mut Counter<'_>,
    count: u32,
) -> CheckResult<(Vec<Snapshot>, u64)> {
    let base = img.area.header.snapshots_offset.get();
    let buf = img.read_in_file(base, MAX_TABLE_SIZE, "reading the snapshot table")?;
    let limit = MAX_TABLE_SIZE as usize;
    let mut out = Vec::new();
    let mut pos = 0usize;
    for k in 0..count {
        pos = pos.next_multiple_of(8);
        let at = base.saturating_add(pos as u64);
        let extra = be32(&buf, pos + 36);
        let id_len = usize::from(be16(&buf, pos + 12));
        let name_len = usize::from(be16(&buf, pos + 14));
        if extra > MAX_EXTRA_DATA {
            counter.report.corruption(
                Some(at + 36),
                rules::SNAP_ENTRY,
                format!("snapshot table entry {k} has {extra} bytes of extra data, more than {MAX_EXTRA_DATA}"),
            );
            pos += SNAPSHOT_HEADER_SIZE;
            break;
        }
        if img.area.header.version >= 3 && extra < V3_MIN_EXTRA_DATA {
            counter.report.corruption(
                Some(at + 36),
                rules::SNAP_ENTRY,
                format!(
                    "snapshot table entry {k} has {extra} bytes of extra data; version 3 needs at least {V3_MIN_EXTRA_DATA} (VM state size and disk size)"
                ),
            );
        }
        let id_at = pos + SNAPSHOT_HEADER_SIZE + extra as usize;
        let end = id_at + id_len + name_len;
        if end > limit {
            counter.report.corruption(
                Some(at),
                rules::SNAP_ENTRY,
                format!("snapshot table entry {k} ends past the table size limit of {MAX_TABLE_SIZE} bytes"),
            );
            pos = end;
            break;
        }
        let extra_at = pos + SNAPSHOT_HEADER_SIZE;
        out.push(Snapshot {
            at,
            l1_offset: be64(&buf, pos),
            l1_size: be32(&buf, pos + 8),
            vm_state: if extra >= 8 {
                be64(&buf, extra_at)
            } else {
                be32(&buf, pos + 32).into()
            },
            disk_size: (extra >= 16).then(|| be64(&buf, extra_at + 8)),
            id: String::from_utf8_lossy(&bytes_at(&buf, id_at, id_len)).into_owned(),
            name: String::from_utf8_lossy(&bytes_at(&buf, id_at + id_len, name_len)).into_owned(),
        });
        pos = end;
    }
    Ok((out, pos as u64))
}

/// Counts the snapshot table, each snapshot's L1 table and its entries; the
/// L2 tables reached are added to `visits`.
pub(crate) fn count(
    img: &Image<'_>,
    counter: &mut Counter<'_>,
    visits: &mut Visits,
) -> CheckResult<()> {
    let header = &img.area.header;
    let nb = header.nb_snapshots;
    if nb == 0 {
        return Ok(());
    }
    if img.data_file {
        counter.report.corruption(
            Some(60),
            rules::SNAP_ENTRY,
            format!("{nb} snapshots in an image with an external data file"),
        );
    }
    let (snapshots, table_len) = parse(img, counter, nb)?;
    for (k, s) in snapshots.iter().enumerate() {
        if snapshots[..k].iter().any(|earlier| earlier.id == s.id) {
            counter.report.corruption(
                Some(s.at + 12),
                rules::SNAP_ID_UNIQUE,
                format!(
                    "snapshot {} ({}) has the ID of an earlier snapshot: a snapshot named by its ID is ambiguous",
                    s.id, s.name
                ),
            );
        }
    }
    let cs = img.cluster_size();
    let mut tables: BTreeMap<(u64, u32), (u64, u64)> = BTreeMap::new();
    for s in &snapshots {
        if !img.geo.is_aligned(s.l1_offset) {
            counter.report.corruption(
                Some(s.at),
                rules::SNAP_ENTRY,
                format!(
                    "snapshot {} ({}) L1 table offset {:#x} is not cluster aligned (cluster size {cs:#x}); snapshot table entry corrupted",
                    s.id, s.name, s.l1_offset
                ),
            );
            continue;
        }
        if u64::from(s.l1_size) > MAX_L1_ENTRIES {
            counter.report.corruption(
                Some(s.at + 8),
                rules::SNAP_ENTRY,
                format!(
                    "snapshot {} ({}) L1 table has {} entries, more than {MAX_L1_ENTRIES}; snapshot table entry corrupted",
                    s.id, s.name, s.l1_size
                ),
            );
            continue;
        }
        coverage(img, counter, s);
        tables
            .entry((s.l1_offset, s.l1_size))
            .or_insert((s.at, 0))
            .1 += 1;
    }
    for ((offset, size), (at, times)) in tables {
        if size == 0 {
            continue;
        }
        let l1 = Ref {
            role: role::L1,
            rule: rules::SNAP_ENTRY,
            what: "snapshot L1 table",
        };
        counter.add(Some(at), offset, u64::from(size) * 8, l1, times);
        for_each_entry(
            img,
            offset,
            size.into(),
            "reading a snapshot L1 table",
            |i, raw| {
                l1_entry(img, counter, offset + i * 8, raw, visits, times);
                Ok(())
            },
        )?;
    }
    let table = Ref {
        role: role::SNAPSHOTS,
        rule: rules::HDR_SNAPSHOTS,
        what: "snapshot table",
    };
    counter.add(Some(64), header.snapshots_offset.get(), table_len, table, 1);
    Ok(())
}

/// Reports a snapshot whose L1 table is too short for its disk and the VM
/// state stored after it (SNAP-VMSTATE): the VM state starts at the first
/// L1 entry past those the disk needs.
fn coverage(img: &Image<'_>, counter: &mut Counter<'_>, s: &Snapshot) {
    let per_l2 = img.geo.bytes_per_l2_table(img.extended_l2);
    let disk = s.disk_size.unwrap_or(img.area.header.size);
    let needed = disk
        .div_ceil(per_l2)
        .saturating_add(s.vm_state.div_ceil(per_l2));
    if u64::from(s.l1_size) < needed {
        counter.report.corruption(
            Some(s.at + 8),
            rules::SNAP_VMSTATE,
            format!(
                "snapshot {} ({}) has {} L1 entries, but its disk of {disk} bytes and VM state \
                 of {} bytes need {needed}",
                s.id, s.name, s.l1_size, s.vm_state
            ),
        );
    }
}
