//! Computes the refcount every host cluster should have, from every
//! reference the image holds.

use qcow2_format::rules;

use super::error::{CheckError, CheckResult};
use super::extra::{self, ExtraReferences};
use super::image::Image;
use super::refblocks::{self, RefblockHealth};
use super::refmap::{role, RefMap, MAX_TRACKED_CLUSTERS};
use super::refs::{Counter, Ref};
use super::report::CheckReport;
use super::tables::{for_each_entry, l1_entry, l2_table, Visits};
use super::{bitmaps, snapshots};

/// The computed refcounts and what the refcount table entries look like.
#[derive(Debug)]
pub(crate) struct Walked {
    /// Computed refcount and roles of every tracked cluster.
    pub map: RefMap,
    /// Whether the refcount structure needs a rebuild.
    pub health: RefblockHealth,
}

/// Clusters of the virtual disk as `qemu-img` counts them: the size in
/// whole 512-byte sectors, divided by the cluster size, rounded up.
pub(crate) fn total_clusters(img: &Image<'_>) -> u64 {
    let bytes = img.area.header.size / 512 * 512;
    img.geo.clusters_for(bytes)
}

/// Counts every reference of `img` into a fresh map; findings go to
/// `report`. Without `refcount_structures` the refcount table and blocks
/// are left out (a rebuild places new ones).
pub(crate) fn walk(
    img: &Image<'_>,
    report: &mut CheckReport,
    extra: &[&dyn ExtraReferences],
    refcount_structures: bool,
) -> CheckResult<Walked> {
    let clusters = img.geo.clusters_for(img.file_len);
    let map = RefMap::new(clusters).ok_or(CheckError::TooLarge {
        what: "number of host clusters in the file",
        value: clusters,
        limit: MAX_TRACKED_CLUSTERS,
    })?;
    let mut counter = Counter::new(img, map, report);
    let cs = img.cluster_size();
    let header = Ref {
        role: role::HEADER,
        rule: rules::HDR_FIRST_CLUSTER,
        what: "header cluster",
    };
    counter.add(None, 0, cs, header, 1);

    let h = &img.area.header;
    let l1_at = h.l1_table_offset.get();
    let l1_size = u64::from(h.l1_size);
    let mut active = Visits::new();
    if l1_size > 0 {
        let l1 = Ref {
            role: role::L1,
            rule: rules::HDR_L1_OFFSET,
            what: "active L1 table",
        };
        counter.add(Some(40), l1_at, l1_size * 8, l1, 1);
        for_each_entry(
            img,
            l1_at,
            l1_size,
            "reading the active L1 table",
            |i, raw| {
                l1_entry(img, &mut counter, l1_at + i * 8, raw, &mut active, 1);
                Ok(())
            },
        )?;
    }
    let mut inactive = Visits::new();
    snapshots::count(img, &mut counter, &mut inactive)?;
    for (&l2, &times) in &active {
        l2_table(img, &mut counter, l2, times, true)?;
    }
    for (&l2, &times) in &inactive {
        l2_table(img, &mut counter, l2, times, false)?;
    }
    if refcount_structures {
        refblocks::count_table(img, &mut counter);
    }
    if let Some((offset, len)) = img.crypto {
        let luks = Ref {
            role: role::OTHER,
            rule: rules::EXT_FDE,
            what: "LUKS header",
        };
        counter.add(None, offset, len, luks, 1);
        luks_area(img, &mut counter, offset, len);
    }
    bitmaps::count(img, &mut counter)?;
    extra::count(img, &mut counter, extra)?;
    super::data_file::guest_identity(img, counter.report)?;
    let health = if refcount_structures {
        refblocks::count_blocks(img, &mut counter)?
    } else {
        RefblockHealth::default()
    };
    Ok(Walked {
        map: counter.map,
        health,
    })
}

/// Reports what the LUKS area of `len` bytes at `offset` breaks: its header
/// (ENC-LUKS-HEADER), the header's cipher and payload fields
/// (ENC-LUKS-CIPHER, ENC-PAYLOAD-OFFSET) and the slack after it (ENC-AREA).
fn luks_area(img: &Image<'_>, counter: &mut Counter<'_>, offset: u64, len: u64) {
    use qcow2_format::tables::{luks, luks_values};
    let head = (luks::HEADER_LEN as u64).min(len);
    if let Ok(bytes) = img.read_in_file(offset, head, "reading the LUKS header") {
        let errors = match luks::parse_header(&bytes, offset, len) {
            Ok(header) => luks_values::check_values(&header, offset, len),
            Err(e) => vec![e],
        };
        for e in errors {
            counter
                .report
                .corruption(Some(e.offset), e.rule, e.kind.to_string());
        }
    }
    // The slack is less than a cluster; an area past the end of the file
    // is reported by the refcount walk.
    let Some(end) = offset.checked_add(len) else {
        return;
    };
    let in_cluster = img.geo.offset_in_cluster(end);
    let slack = if in_cluster == 0 {
        0
    } else {
        img.cluster_size() - in_cluster
    };
    if slack == 0 || end.saturating_add(slack) > img.file_len {
        return;
    }
    if let Ok(bytes) = img.read_in_file(end, slack, "reading the LUKS area's slack") {
        if let Some(p) = bytes.iter().position(|&b| b != 0) {
            counter.report.corruption(
                Some(end + p as u64),
                rules::ENC_AREA,
                format!(
                    "byte {p} after the LUKS area's {len} bytes is not zero (the rest of its \
                     last cluster must be)"
                ),
            );
        }
    }
}
