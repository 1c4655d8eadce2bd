//! The COPIED flags of the active tables: set exactly when the stored
//! refcount of the L2 table or data cluster is 1.

use std::collections::BTreeMap;

use qcow2_format::rules;
use qcow2_format::tables::l1::{L1_COPIED, L1_OFFSET_MASK};
use qcow2_format::tables::l2::{L2_COPIED, L2_OFFSET_MASK};
use qcow2_io::WriteKind;

use super::error::{CheckError, CheckResult};
use super::image::{be64, Image};
use super::refmap::{role, RefMap};
use super::report::{CheckReport, FindingKind};
use super::stored::Stored;
use super::tables::{cluster_type, for_each_entry, l2_entry_size, ClusterType};

/// Checks (and with `repair`, fixes) the COPIED flags of the active L1
/// table and of the L2 tables it points at, against the stored refcounts.
pub(crate) fn check_copied(
    img: &Image<'_>,
    map: &RefMap,
    stored: &mut Stored<'_, '_>,
    report: &mut CheckReport,
    repair: bool,
) -> CheckResult<()> {
    let cs = img.cluster_size();
    let h = &img.area.header;
    let l1_at = h.l1_table_offset.get();
    let mut tables: BTreeMap<u64, u64> = BTreeMap::new();
    for_each_entry(
        img,
        l1_at,
        h.l1_size.into(),
        "reading the active L1 table",
        |i, raw| {
            let l2 = raw & L1_OFFSET_MASK;
            if l2 == 0 {
                return Ok(());
            }
            let Ok(refcount) = stored.get(l2 / cs)? else {
                return Ok(());
            };
            let copied = raw & L1_COPIED != 0;
            if (refcount == 1) != copied {
                let at = l1_at + i * 8;
                let message = format!(
                    "OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={raw:#x} refcount={refcount}"
                );
                if repair {
                    let fixed = if refcount == 1 {
                        raw | L1_COPIED
                    } else {
                        raw & !L1_COPIED
                    };
                    img.storage
                        .write_at(&fixed.to_be_bytes(), at, WriteKind::L1)
                        .map_err(|e| CheckError::io("writing an L1 entry", at, e))?;
                    report.corruptions_fixed += 1;
                    report.record(
                        FindingKind::Repaired,
                        Some(at),
                        Some(rules::L1_COPIED),
                        message,
                        1,
                    );
                } else {
                    report.record(
                        FindingKind::Corruption,
                        Some(at),
                        Some(rules::L1_COPIED),
                        message,
                        1,
                    );
                }
            }
            if l2 < img.file_len {
                *tables.entry(l2).or_default() += 1;
            }
            Ok(())
        },
    )?;
    for (l2, times) in tables {
        l2_copied(img, map, stored, report, repair, l2, times)?;
    }
    if repair {
        img.storage
            .flush()
            .map_err(|e| CheckError::io("flushing COPIED flag repairs", 0, e))?;
    }
    Ok(())
}

fn l2_copied(
    img: &Image<'_>,
    map: &RefMap,
    stored: &mut Stored<'_, '_>,
    report: &mut CheckReport,
    repair: bool,
    l2: u64,
    times: u64,
) -> CheckResult<()> {
    let Some(mut buf) = img.read_cluster(l2, "reading an L2 table")? else {
        return Ok(());
    };
    let cs = img.cluster_size();
    let step = l2_entry_size(img) as usize;
    let mut pending = Vec::new();
    for i in 0..buf.len() / step {
        let entry = be64(&buf, i * step);
        let kind = cluster_type(img, entry);
        if !matches!(kind, ClusterType::Normal | ClusterType::ZeroAlloc) {
            continue;
        }
        let refcount = if img.data_file {
            1
        } else {
            match stored.get((entry & L2_OFFSET_MASK) / cs)? {
                Ok(r) => r,
                Err(_) => continue,
            }
        };
        if (refcount == 1) == (entry & L2_COPIED != 0) {
            continue;
        }
        let at = l2 + (i * step) as u64;
        let message = format!("OFLAG_COPIED data cluster: l2_entry={entry:#x} refcount={refcount}");
        if repair {
            let fixed = if refcount == 1 {
                entry | L2_COPIED
            } else {
                entry & !L2_COPIED
            };
            buf[i * step..i * step + 8].copy_from_slice(&fixed.to_be_bytes());
            pending.push((at, message));
        } else {
            report.record(
                FindingKind::Corruption,
                Some(at),
                Some(rules::L2_COPIED),
                message,
                times,
            );
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let others = map.roles(l2 / cs) & !role::L2;
    if others != 0 || !img.geo.is_aligned(l2) {
        let other = if others == 0 {
            "a misaligned table".to_string()
        } else {
            role::names(others)
        };
        let err = CheckError::Overlap {
            what: "an L2 table",
            offset: l2,
            other,
        };
        report.record(
            FindingKind::CheckError,
            Some(l2),
            Some(rules::L1_ENTRY),
            err.to_string(),
            1,
        );
        for (at, message) in pending {
            report.record(
                FindingKind::Corruption,
                Some(at),
                Some(rules::L2_COPIED),
                message,
                times,
            );
        }
        return Ok(());
    }
    img.storage
        .write_at(&buf, l2, WriteKind::L2)
        .map_err(|e| CheckError::io("writing an L2 table", l2, e))?;
    report.corruptions_fixed += pending.len() as u64;
    for (at, message) in pending {
        report.record(
            FindingKind::Repaired,
            Some(at),
            Some(rules::L2_COPIED),
            message,
            1,
        );
    }
    Ok(())
}
