//! Walks the tables an image points at and reports every entry that breaks a rule.
//!
//! The image is in memory; every offset and count comes from the file and is
//! bounded by the file's length before it is used.

use qcow2_format::rules::{self, RuleId};
use qcow2_format::tables::{dedup_table, l1, l2, l2_extended, refcount, snapshot};
use qcow2_format::tables::{L2Context, RefcountBlock, RefcountOrder, SnapshotContext};
use qcow2_format::{Assessment, ErrorKind, FormatError, HeaderArea};

/// Reads `len` bytes at `at`, or reports `rule` when they are not all in the file.
fn slice<'a>(
    bytes: &'a [u8],
    at: u64,
    len: u64,
    rule: RuleId,
    what: &'static str,
) -> Result<&'a [u8], FormatError> {
    let range = usize::try_from(at)
        .ok()
        .zip(usize::try_from(at.saturating_add(len)).ok())
        .and_then(|(a, b)| bytes.get(a..b));
    range.ok_or_else(|| {
        FormatError::new(
            rule,
            at,
            ErrorKind::Truncated {
                what,
                needed: len,
                available: (bytes.len() as u64).saturating_sub(at),
            },
        )
    })
}

/// Every table finding of the image.
pub fn walk(bytes: &[u8], area: &HeaderArea, assessment: &Assessment) -> Vec<FormatError> {
    let mut findings = Vec::new();
    let mut record = |r: Result<(), FormatError>| {
        if let Err(e) = r {
            findings.push(e);
        }
    };
    record(walk_l1_l2(bytes, area, assessment));
    record(walk_refcounts(bytes, area, assessment));
    record(walk_snapshots(bytes, area, assessment));
    record(walk_dedup(bytes, area, assessment));
    findings
}

fn walk_l1_l2(bytes: &[u8], area: &HeaderArea, a: &Assessment) -> Result<(), FormatError> {
    let h = &area.header;
    let geo = a.geometry;
    let l1_at = h.l1_table_offset.get();
    let l1_buf = slice(
        bytes,
        l1_at,
        u64::from(h.l1_size) * 8,
        rules::HDR_L1_OFFSET,
        "L1 table",
    )?;
    let ctx = L2Context {
        geometry: geo,
        version: h.version,
        external_data_file: a.features.external_data_file(),
    };
    for entry in l1::decode_table(l1_buf, geo, l1_at)? {
        let Some(l2_at) = entry.l2_table else {
            continue;
        };
        let l2_buf = slice(
            bytes,
            l2_at.get(),
            geo.cluster_size(),
            rules::L1_ENTRY,
            "L2 table",
        )?;
        if a.features.extended_l2 {
            l2_extended::decode_table(l2_buf, &ctx, l2_at.get())?;
        } else {
            l2::decode_table(l2_buf, &ctx, l2_at.get())?;
        }
    }
    Ok(())
}

fn walk_refcounts(bytes: &[u8], area: &HeaderArea, a: &Assessment) -> Result<(), FormatError> {
    let h = &area.header;
    let geo = a.geometry;
    let rt_at = h.refcount_table_offset.get();
    let len = u64::from(h.refcount_table_clusters) * geo.cluster_size();
    let rt_buf = slice(
        bytes,
        rt_at,
        len,
        rules::HDR_REFTABLE_OFFSET,
        "refcount table",
    )?;
    let table = refcount::decode_table(rt_buf, geo, rt_at)?;
    let order = RefcountOrder::new(h.refcount_order).ok_or_else(|| {
        FormatError::new(
            rules::HDR_REFCOUNT_ORDER,
            96,
            ErrorKind::OutOfRange {
                field: "refcount_order",
                value: h.refcount_order.into(),
                min: 0,
                max: 6,
            },
        )
    })?;
    // Cluster 0 holds the header, so its refcount is at least 1.
    let mut refcount0 = 0;
    for (k, entry) in table.iter().enumerate() {
        let Some(block_at) = entry.block else {
            continue;
        };
        // A block starting past the end of the file is a bad table entry; one
        // cut short by the end of the file is a bad block.
        let rule = if block_at.get() >= bytes.len() as u64 {
            rules::RC_TABLE_ENTRY
        } else {
            rules::RC_BLOCK
        };
        let buf = slice(
            bytes,
            block_at.get(),
            geo.cluster_size(),
            rule,
            "refcount block",
        )?;
        let block = RefcountBlock::for_cluster(buf, order, geo, block_at.get())?;
        if k == 0 {
            refcount0 = block.get(0)?;
        }
    }
    let first = table.first().and_then(|e| e.block);
    if refcount0 == 0 {
        return Err(FormatError::new(
            rules::RC_MATCH,
            first.map_or(rt_at, |b| b.get()),
            ErrorKind::Malformed {
                field: "refcount of cluster 0",
                reason: "the header cluster has refcount 0".into(),
            },
        ));
    }
    Ok(())
}

fn walk_snapshots(bytes: &[u8], area: &HeaderArea, a: &Assessment) -> Result<(), FormatError> {
    let h = &area.header;
    if h.nb_snapshots == 0 {
        return Ok(());
    }
    let at = h.snapshots_offset.get();
    let avail = (bytes.len() as u64)
        .saturating_sub(at)
        .min(snapshot::MAX_TABLE_SIZE);
    let buf = slice(bytes, at, avail, rules::HDR_SNAPSHOTS, "snapshot table")?;
    let ctx = SnapshotContext {
        geometry: a.geometry,
        version: h.version,
    };
    snapshot::parse_table(buf, h.nb_snapshots, &ctx, at)?;
    Ok(())
}

fn walk_dedup(bytes: &[u8], area: &HeaderArea, a: &Assessment) -> Result<(), FormatError> {
    let Some(d) = area.dedup() else { return Ok(()) };
    let geo = a.geometry;
    let at = d.l1_offset.get();
    let buf = slice(
        bytes,
        at,
        u64::from(d.l1_size) * 8,
        rules::DD_L1_OFFSET,
        "dedup L1 table",
    )?;
    for l2_at in dedup_table::decode_l1_table(buf, geo, at)?
        .into_iter()
        .flatten()
    {
        let l2_buf = slice(
            bytes,
            l2_at.get(),
            geo.cluster_size(),
            rules::DD_L1_ENTRY,
            "dedup L2 cluster",
        )?;
        dedup_table::decode_l2_cluster(l2_buf, geo, l2_at.get())?;
    }
    Ok(())
}

/// Whether any L2 entry of the image is a compressed cluster descriptor.
pub fn has_compressed_clusters(bytes: &[u8], area: &HeaderArea) -> bool {
    let h = &area.header;
    let Ok(geo) = h.geometry() else { return false };
    let extended = h.incompatible_features & qcow2_format::features::INCOMPAT_EXTENDED_L2 != 0;
    let step = if extended { 16 } else { 8 };
    let Ok(l1) = slice(
        bytes,
        h.l1_table_offset.get(),
        u64::from(h.l1_size) * 8,
        rules::HDR_L1_OFFSET,
        "L1 table",
    ) else {
        return false;
    };
    l1.chunks_exact(8).any(|e| {
        let l2_at = crate::mutate::get_u64(e, 0) & l1::L1_OFFSET_MASK;
        l2_at != 0
            && slice(
                bytes,
                l2_at,
                geo.cluster_size(),
                rules::L1_ENTRY,
                "L2 table",
            )
            .is_ok_and(|l2| {
                l2.chunks_exact(step).any(|x| {
                    crate::mutate::get_u64(x, 0) & qcow2_format::tables::compressed::COMPRESSED_FLAG
                        != 0
                })
            })
    })
}
