//! Walking the guest mapping: L1 tables (active and snapshot) and the L2
//! tables they point at, as `qemu-img check` counts them.
//!
//! A table reached several times (an L2 table shared by snapshots, a
//! snapshot L1 table listed twice) is read once and its references are
//! counted once per path, so a hostile image cannot make the walk read the
//! same cluster millions of times.

use std::collections::BTreeMap;

use qcow2_format::rules;
use qcow2_format::tables::compressed::{max_additional_sectors, offset_bits, SECTOR_SIZE};
use qcow2_format::tables::l1::{L1_OFFSET_MASK, L1_RESERVED_MASK};
use qcow2_format::tables::l2::{
    L2_COMPRESSED, L2_COPIED, L2_OFFSET_MASK, L2_RESERVED_MASK, L2_ZERO,
};

use super::error::CheckResult;
use super::image::{be64, Image};
use super::refmap::role;
use super::refs::{Counter, Ref};
use super::report::FindingKind;

/// Bytes read at a time when streaming a long table.
const PIECE: u64 = 1 << 20;

/// Calls `f(index, raw)` for every non-zero u64 entry of the `count`-entry
/// table at `offset`, reading it in pieces and only the part inside the file
/// (the rest reads as zeros, which are skipped anyway).
pub(crate) fn for_each_entry(
    img: &Image<'_>,
    offset: u64,
    count: u64,
    action: &'static str,
    mut f: impl FnMut(u64, u64) -> CheckResult<()>,
) -> CheckResult<()> {
    let bytes = count.saturating_mul(8);
    let in_file = img.file_len.saturating_sub(offset).min(bytes);
    let mut done = 0;
    while done < in_file {
        let len = PIECE.min(in_file - done);
        let buf = img.read(offset + done, len, action)?;
        for (k, raw) in buf.chunks_exact(8).enumerate() {
            let raw = be64(raw, 0);
            if raw != 0 {
                f(done / 8 + k as u64, raw)?;
            }
        }
        done += len;
    }
    Ok(())
}

/// How an L2 entry maps its guest cluster, with QEMU's classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClusterType {
    /// No host cluster.
    Unallocated,
    /// Reads as zeros, no host cluster.
    ZeroPlain,
    /// Reads as zeros, with a preallocated host cluster.
    ZeroAlloc,
    /// Plain data.
    Normal,
    /// Compressed data.
    Compressed,
}

/// Classifies a raw L2 descriptor.
pub(crate) fn cluster_type(img: &Image<'_>, entry: u64) -> ClusterType {
    if entry & L2_COMPRESSED != 0 {
        ClusterType::Compressed
    } else if entry & L2_ZERO != 0 && !img.extended_l2 {
        if entry & L2_OFFSET_MASK != 0 {
            ClusterType::ZeroAlloc
        } else {
            ClusterType::ZeroPlain
        }
    } else if entry & L2_OFFSET_MASK == 0 {
        if img.data_file && entry & L2_COPIED != 0 {
            ClusterType::Normal
        } else {
            ClusterType::Unallocated
        }
    } else {
        ClusterType::Normal
    }
}

/// Bytes of one L2 entry.
pub(crate) fn l2_entry_size(img: &Image<'_>) -> u64 {
    if img.extended_l2 {
        16
    } else {
        8
    }
}

/// Times each L2 table offset is reached from an L1 table.
pub(crate) type Visits = BTreeMap<u64, u64>;

const L2_TABLE: Ref = Ref {
    role: role::L2,
    rule: rules::L1_ENTRY,
    what: "L2 table",
};
const DATA: Ref = Ref {
    role: role::DATA,
    rule: rules::L2_ENTRY,
    what: "data cluster",
};
const COMPRESSED: Ref = Ref {
    role: role::DATA,
    rule: rules::CMP_DESCRIPTOR,
    what: "compressed cluster",
};

/// Counts an L1 entry `raw`, stored at `at`, reached `times` times: its L2
/// table, and where that table is, in `visits`.
pub(crate) fn l1_entry(
    img: &Image<'_>,
    counter: &mut Counter<'_>,
    at: u64,
    raw: u64,
    visits: &mut Visits,
    times: u64,
) {
    if raw & L1_RESERVED_MASK != 0 {
        counter.report.record(
            FindingKind::Corruption,
            Some(at),
            Some(rules::L1_ENTRY),
            format!("L1 entry {raw:#x} has reserved bits set"),
            times,
        );
    }
    let l2 = raw & L1_OFFSET_MASK;
    counter.add(Some(at), l2, img.cluster_size(), L2_TABLE, times);
    if !img.geo.is_aligned(l2) {
        counter.report.record(
            FindingKind::Corruption,
            Some(at),
            Some(rules::L1_ENTRY),
            format!("L2 table offset {l2:#x} is not cluster aligned; L1 entry corrupted"),
            times,
        );
    }
    // A table starting past the end of the file reads as zeros: it holds no
    // references, so it is not worth visiting.
    if l2 < img.file_len {
        *visits.entry(l2).or_default() += times;
    }
}

/// Counts the references of the L2 table at `l2`, reached `times` times.
/// `active`: reached from the active L1 table, so the allocation and
/// fragmentation statistics count it.
pub(crate) fn l2_table(
    img: &Image<'_>,
    counter: &mut Counter<'_>,
    l2: u64,
    times: u64,
    active: bool,
) -> CheckResult<()> {
    let Some(buf) = img.read_cluster(l2, "reading an L2 table")? else {
        return Ok(());
    };
    let cs = img.cluster_size();
    let step = l2_entry_size(img) as usize;
    let mut next_contiguous = 0u64;
    for (i, raw) in buf.chunks_exact(step).enumerate() {
        let entry = be64(raw, 0);
        let bitmap = if img.extended_l2 { be64(raw, 8) } else { 0 };
        let at = l2 + (i * step) as u64;
        let kind = cluster_type(img, entry);
        let corrupt = |counter: &mut Counter<'_>, rule, message: String| {
            counter.report.record(
                FindingKind::Corruption,
                Some(at),
                Some(rule),
                message,
                times,
            );
        };
        if img.area.header.version < 3 && kind != ClusterType::Compressed && entry & L2_ZERO != 0 {
            // QEMU reads such a cluster as zeros and does not count it.
            counter.report.record(
                FindingKind::Note,
                Some(at),
                Some(rules::L2_ZERO_FLAG),
                format!("L2 entry {entry:#x} has the zero flag (bit 0), which version 2 does not define"),
                times,
            );
        }
        if img.extended_l2 && kind != ClusterType::Compressed && entry & L2_ZERO != 0 {
            // Zeros are the subcluster bitmap's business: QEMU ignores the bit.
            counter.report.record(
                FindingKind::Note,
                Some(at),
                Some(rules::L2_ZERO_FLAG),
                format!(
                    "L2 entry {entry:#x} has the zero flag (bit 0), which has no meaning with \
                     extended L2 entries and is ignored"
                ),
                times,
            );
        }
        if kind != ClusterType::Compressed && entry & L2_RESERVED_MASK != 0 {
            corrupt(
                counter,
                rules::L2_ENTRY,
                format!("L2 entry {entry:#x} has reserved bits set"),
            );
        }
        match kind {
            ClusterType::Compressed => {
                if entry & L2_COPIED != 0 {
                    corrupt(
                        counter,
                        rules::CMP_DESCRIPTOR,
                        format!("compressed cluster entry {entry:#x} has the COPIED flag set"),
                    );
                }
                if img.data_file {
                    corrupt(
                        counter,
                        rules::CMP_DESCRIPTOR,
                        format!("compressed cluster entry {entry:#x} in an image with an external data file"),
                    );
                    continue;
                }
                if bitmap != 0 {
                    corrupt(
                        counter,
                        rules::L2_EXTENDED,
                        format!("compressed cluster entry {entry:#x} has a non-zero subcluster bitmap {bitmap:#x}"),
                    );
                    // The descriptor still locates the stream (QEMU ignores
                    // the bitmap): its clusters are in use.
                }
                let x = offset_bits(img.geo);
                let host = entry & ((1u64 << x) - 1);
                let sectors = ((entry & !L2_COPIED) >> x & max_additional_sectors(img.geo)) + 1;
                let size = sectors * SECTOR_SIZE - host % SECTOR_SIZE;
                counter.add(Some(at), host, size, COMPRESSED, times);
                if active {
                    counter.report.allocated_clusters += times;
                    counter.report.compressed_clusters += times;
                    counter.report.fragmented_clusters += times;
                }
            }
            ClusterType::Normal | ClusterType::ZeroAlloc => {
                let offset = entry & L2_OFFSET_MASK;
                if (bitmap >> 32) & bitmap != 0 {
                    corrupt(
                        counter,
                        rules::L2_EXTENDED,
                        format!("cluster at {offset:#x} has subclusters both allocated and zero (bitmap {bitmap:#x})"),
                    );
                }
                if !img.geo.is_aligned(offset) {
                    let has_data = if img.extended_l2 {
                        bitmap & 0xffff_ffff != 0
                    } else {
                        entry & L2_ZERO == 0
                    };
                    let what = if has_data { "data" } else { "preallocated" };
                    corrupt(
                        counter,
                        rules::L2_ENTRY,
                        format!("{what} cluster offset {offset:#x} is not cluster aligned; L2 entry corrupted"),
                    );
                }
                if active {
                    counter.report.allocated_clusters += times;
                    if next_contiguous != 0 && offset != next_contiguous {
                        counter.report.fragmented_clusters += times;
                    }
                    next_contiguous = offset + cs;
                }
                if !img.data_file {
                    counter.add(Some(at), offset, cs, DATA, times);
                }
            }
            ClusterType::ZeroPlain => {}
            ClusterType::Unallocated => {
                if bitmap & 0xffff_ffff != 0 {
                    corrupt(
                        counter,
                        rules::L2_EXTENDED,
                        format!(
                            "unallocated cluster has allocated subclusters (bitmap {bitmap:#x})"
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}
