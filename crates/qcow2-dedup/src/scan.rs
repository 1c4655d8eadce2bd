//! Reading a whole image's dedup state from its bytes: which physical
//! clusters hold live uncompressed data, the check of every dedup entry
//! against them, and the numbers `info` shows.

use std::collections::HashMap;

use qcow2_format::features::INCOMPAT_EXTENDED_L2;
use qcow2_format::rules::{self, RuleId};
use qcow2_format::tables::dedup_table::{self, DedupEntry};
use qcow2_format::tables::l1::{L1Entry, MAX_L1_ENTRIES};
use qcow2_format::tables::l2::L2Context;
use qcow2_format::tables::l2_extended::{self, ExtendedL2Mapping};
use qcow2_format::{ClusterGeometry, ClusterIndex, HeaderArea, HostOffset};
use qcow2_io::Storage;
use rayon::prelude::*;

use crate::digest::hash_cluster;
use crate::error::{DedupError, Result};
use crate::table::MAX_L1_ENTRIES as MAX_DEDUP_L1_ENTRIES;

/// What one guest cluster of the active table maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMapping {
    /// A whole uncompressed data cluster at this host cluster.
    Data(ClusterIndex),
    /// A compressed cluster: the raw descriptor value and its host clusters.
    Compressed {
        /// The descriptor's host offset (identifies shared streams).
        offset: HostOffset,
        /// Bytes of host data the descriptor may span.
        len: u64,
    },
    /// A host cluster kept allocated but reading as zeros, or partly
    /// allocated subclusters: not live whole-cluster data.
    Other(ClusterIndex),
}

/// Calls `visit(guest cluster index, mapping)` for every allocated guest
/// cluster of the active L1/L2 tables. Entries that do not decode are
/// skipped (the refcount check reports them).
pub fn walk_active(
    storage: &dyn Storage,
    area: &HeaderArea,
    mut visit: impl FnMut(u64, GuestMapping),
) -> Result<()> {
    let h = &area.header;
    let geometry = h.geometry()?;
    let extended = h.incompatible_features & INCOMPAT_EXTENDED_L2 != 0;
    let ctx = L2Context {
        geometry,
        version: h.version,
        external_data_file: false,
    };
    let l1_size = u64::from(h.l1_size).min(MAX_L1_ENTRIES);
    let mut l1 = vec![0u8; (l1_size * 8) as usize];
    let l1_at = h.l1_table_offset.get();
    storage
        .read_at(&mut l1, l1_at)
        .map_err(|e| DedupError::io("reading the L1 table", l1_at, e))?;
    let per = geometry.l2_entries(extended);
    let file_len = storage
        .len()
        .map_err(|e| DedupError::io("reading the file length", 0, e))?;
    let cs = geometry.cluster_size();
    let all = if extended { u32::MAX } else { 1 };
    let mut table = vec![0u8; cs as usize];
    for (k, raw) in l1.chunks_exact(8).enumerate() {
        let raw = u64::from_be_bytes(raw.try_into().unwrap_or([0; 8]));
        let Ok(entry) = L1Entry::decode(raw, geometry, l1_at + 8 * k as u64) else {
            continue;
        };
        let Some(l2) = entry.l2_table.filter(|o| o.get() < file_len) else {
            continue;
        };
        storage
            .read_at(&mut table, l2.get())
            .map_err(|e| DedupError::io("reading an L2 table", l2.get(), e))?;
        for i in 0..per {
            let mapping = if extended {
                l2_extended::decode_at(&table, i, &ctx, l2.get())
            } else {
                qcow2_format::tables::l2::decode_at(&table, i, &ctx, l2.get())
                    .map(ExtendedL2Mapping::from)
            };
            let Ok(mapping) = mapping else { continue };
            let guest = k as u64 * per + i;
            match mapping {
                ExtendedL2Mapping::Unallocated { .. } => {}
                ExtendedL2Mapping::Allocated {
                    host, allocated, ..
                } => {
                    let c = geometry.host_cluster(host.offset);
                    visit(
                        guest,
                        if allocated == all {
                            GuestMapping::Data(c)
                        } else {
                            GuestMapping::Other(c)
                        },
                    );
                }
                ExtendedL2Mapping::Compressed(d) => visit(
                    guest,
                    GuestMapping::Compressed {
                        offset: d.host_offset,
                        len: d.max_len(),
                    },
                ),
            }
        }
    }
    Ok(())
}

/// Live uncompressed data clusters: host cluster -> (first guest cluster
/// that maps it, number of guest clusters that map it).
pub fn live_data(storage: &dyn Storage, area: &HeaderArea) -> Result<HashMap<u64, (u64, u32)>> {
    let mut live: HashMap<u64, (u64, u32)> = HashMap::new();
    walk_active(storage, area, |guest, m| {
        if let GuestMapping::Data(c) = m {
            live.entry(c.get())
                .and_modify(|e| e.1 = e.1.saturating_add(1))
                .or_insert((guest, 1));
        }
    })?;
    Ok(live)
}

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The table is wrong: a hit could return wrong data.
    Corruption,
    /// Worth knowing, harmless (a guest offset that is only history).
    Note,
}

/// One problem of a dedup table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupFinding {
    /// The rule it breaks.
    pub rule: RuleId,
    /// Host offset of the offending bytes.
    pub offset: u64,
    /// How serious it is.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
}

/// Numbers about an image's deduplication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupStats {
    /// Non-empty entries of the dedup table.
    pub indexed_clusters: u64,
    /// Host clusters (uncompressed or holding a compressed stream) that
    /// more than one guest cluster maps.
    pub shared_clusters: u64,
    /// Bytes the sharing saves: each extra reference to an uncompressed
    /// cluster saves a cluster, to a compressed stream its length.
    pub bytes_saved: u64,
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default)]
pub struct Verification {
    /// Every problem found, in table order.
    pub findings: Vec<DedupFinding>,
    /// The image's numbers.
    pub stats: DedupStats,
}

fn finding(rule: RuleId, offset: u64, severity: Severity, message: String) -> DedupFinding {
    DedupFinding {
        rule,
        offset,
        severity,
        message,
    }
}

/// The stored entries of the table `area` names, with findings for every
/// structural problem (entries that do not decode are left out).
fn read_table(
    storage: &dyn Storage,
    area: &HeaderArea,
    geometry: ClusterGeometry,
    findings: &mut Vec<DedupFinding>,
) -> Result<Vec<(ClusterIndex, DedupEntry, u64)>> {
    let Some(d) = area.dedup() else {
        return Ok(Vec::new());
    };
    let file_len = storage
        .len()
        .map_err(|e| DedupError::io("reading the file length", 0, e))?;
    let size = u64::from(d.l1_size);
    let at = d.l1_offset.get();
    if size > MAX_DEDUP_L1_ENTRIES || at.saturating_add(size * 8) > file_len {
        findings.push(finding(
            rules::DD_L1_OFFSET,
            at,
            Severity::Corruption,
            format!("level-1 dedup table ({size} entries at {at:#x}) is outside the file"),
        ));
        return Ok(Vec::new());
    }
    let mut l1 = vec![0u8; (size * 8) as usize];
    storage
        .read_at(&mut l1, at)
        .map_err(|e| DedupError::io("reading the level-1 dedup table", at, e))?;
    let n = dedup_table::entries_per_l2(geometry);
    let cs = geometry.cluster_size();
    let mut out = Vec::new();
    let mut buf = vec![0u8; cs as usize];
    for (k, raw) in l1.chunks_exact(8).enumerate() {
        let pos = at + 8 * k as u64;
        let raw = u64::from_be_bytes(raw.try_into().unwrap_or([0; 8]));
        let l2 = match dedup_table::decode_l1_entry(raw, geometry, pos) {
            Ok(Some(o)) => o,
            Ok(None) => continue,
            Err(e) => {
                findings.push(finding(e.rule, pos, Severity::Corruption, e.to_string()));
                continue;
            }
        };
        if l2.get() + cs > file_len {
            findings.push(finding(
                rules::DD_L1_ENTRY,
                pos,
                Severity::Corruption,
                format!("level-2 dedup cluster {l2} is outside the file"),
            ));
            continue;
        }
        storage
            .read_at(&mut buf, l2.get())
            .map_err(|e| DedupError::io("reading a level-2 dedup cluster", l2.get(), e))?;
        let tail = (n * dedup_table::DEDUP_ENTRY_SIZE as u64) as usize;
        if let Some(i) = buf[tail..].iter().position(|&b| b != 0) {
            findings.push(finding(
                rules::DD_L2_LAYOUT,
                l2.get() + (tail + i) as u64,
                Severity::Corruption,
                format!("the tail of level-2 dedup cluster {l2} is not zero"),
            ));
        }
        for i in 0..n {
            match dedup_table::decode_l2_entry_at(&buf, i, geometry, l2.get()) {
                Ok(Some(e)) => out.push((
                    ClusterIndex(k as u64 * n + i),
                    e,
                    l2.get() + i * dedup_table::DEDUP_ENTRY_SIZE as u64,
                )),
                Ok(None) => {}
                Err(e) => findings.push(finding(
                    e.rule,
                    e.offset,
                    Severity::Corruption,
                    e.to_string(),
                )),
            }
        }
    }
    Ok(out)
}

/// Checks every entry of the image's dedup table: entries exist only for
/// live uncompressed data clusters (`DD-LIVE`), each digest matches its
/// cluster's data (`DD-DIGEST`, hashed on all cores), and structural rules;
/// a guest offset that no longer maps to its cluster is a note. Also counts
/// what `info` shows. An image without a dedup extension gives nothing.
pub fn verify(storage: &dyn Storage, area: &HeaderArea) -> Result<Verification> {
    scan(storage, area, true)
}

/// The numbers of [`verify`] without reading or hashing any data cluster
/// (what `info` shows): the table and the L1/L2 tables are read. A table
/// that cannot be read as the rules say is an error, not zeros.
pub fn stats(storage: &dyn Storage, area: &HeaderArea) -> Result<DedupStats> {
    let v = scan(storage, area, false)?;
    match v
        .findings
        .iter()
        .find(|f| f.severity == Severity::Corruption)
    {
        Some(f) => Err(DedupError::Table {
            rule: f.rule,
            offset: f.offset,
            reason: f.message.clone(),
        }),
        None => Ok(v.stats),
    }
}

fn scan(storage: &dyn Storage, area: &HeaderArea, digests: bool) -> Result<Verification> {
    let geometry = area.header.geometry()?;
    let cs = geometry.cluster_size();
    let mut v = Verification::default();
    let entries = read_table(storage, area, geometry, &mut v.findings)?;
    v.stats.indexed_clusters = entries.len() as u64;
    let wanted: HashMap<u64, u64> = entries
        .iter()
        .map(|(p, e, _)| (e.guest_offset.get() / cs, p.get()))
        .collect();
    let mut live: HashMap<u64, u32> = HashMap::new();
    let mut streams: HashMap<u64, (u64, u32)> = HashMap::new();
    let mut still_maps: HashMap<u64, bool> = HashMap::new();
    walk_active(storage, area, |guest, m| match m {
        GuestMapping::Data(c) => {
            *live.entry(c.get()).or_default() += 1;
            if wanted.get(&guest) == Some(&c.get()) {
                still_maps.insert(c.get(), true);
            }
        }
        GuestMapping::Compressed { offset, len } => {
            let e = streams.entry(offset.get()).or_insert((len, 0));
            e.1 += 1;
        }
        GuestMapping::Other(_) => {}
    })?;
    for &refs in live.values() {
        if refs > 1 {
            v.stats.shared_clusters += 1;
            v.stats.bytes_saved += u64::from(refs - 1) * cs;
        }
    }
    for &(len, refs) in streams.values() {
        if refs > 1 {
            v.stats.shared_clusters += 1;
            v.stats.bytes_saved += u64::from(refs - 1) * len;
        }
    }
    let mut to_hash = Vec::new();
    for &(p, e, at) in &entries {
        if !live.contains_key(&p.get()) {
            v.findings.push(finding(
                rules::DD_LIVE,
                at,
                Severity::Corruption,
                format!(
                    "dedup entry for host cluster {:#x}, which holds no live uncompressed \
                     data (free, compressed, zeroed or metadata)",
                    p.get() * cs
                ),
            ));
            continue;
        }
        if !still_maps.contains_key(&p.get()) {
            v.findings.push(finding(
                rules::DD_ENTRY,
                at + dedup_table::HASH_SIZE as u64,
                Severity::Note,
                format!(
                    "guest offset {} of the entry for host cluster {:#x} no longer maps to it \
                     (history only)",
                    e.guest_offset,
                    p.get() * cs
                ),
            ));
        }
        to_hash.push((p, e, at));
    }
    if !digests {
        to_hash.clear();
    }
    let bad: Vec<Result<Option<DedupFinding>>> = to_hash
        .par_iter()
        .map(|&(p, e, at)| {
            let mut data = vec![0u8; cs as usize];
            let host = p.get() * cs;
            storage
                .read_at(&mut data, host)
                .map_err(|err| DedupError::io("reading a data cluster", host, err))?;
            Ok((hash_cluster(&data) != e.hash).then(|| {
                finding(
                    rules::DD_DIGEST,
                    at,
                    Severity::Corruption,
                    format!("the digest of host cluster {host:#x} does not match its data"),
                )
            }))
        })
        .collect();
    for b in bad {
        if let Some(f) = b? {
            v.findings.push(f);
        }
    }
    v.findings.sort_by_key(|f| f.offset);
    Ok(v)
}

/// Host ranges the dedup table of `area` occupies (the level-1 table and
/// every well-formed level-2 cluster inside the file), for a refcount check.
pub fn table_ranges(storage: &dyn Storage, area: &HeaderArea) -> Result<Vec<(HostOffset, u64)>> {
    let Some(d) = area.dedup() else {
        return Ok(Vec::new());
    };
    let geometry = area.header.geometry()?;
    let file_len = storage
        .len()
        .map_err(|e| DedupError::io("reading the file length", 0, e))?;
    let len = u64::from(d.l1_size) * 8;
    if len == 0
        || u64::from(d.l1_size) > MAX_DEDUP_L1_ENTRIES
        || d.l1_offset.get().saturating_add(len) > file_len
    {
        return Ok(Vec::new());
    }
    let mut out = vec![(d.l1_offset, len)];
    let mut buf = vec![0u8; len as usize];
    storage
        .read_at(&mut buf, d.l1_offset.get())
        .map_err(|e| DedupError::io("reading the level-1 dedup table", d.l1_offset.get(), e))?;
    for (k, raw) in buf.chunks_exact(8).enumerate() {
        let raw = u64::from_be_bytes(raw.try_into().unwrap_or([0; 8]));
        let at = d.l1_offset.get() + 8 * k as u64;
        if let Ok(Some(l2)) = dedup_table::decode_l1_entry(raw, geometry, at) {
            out.push((l2, geometry.cluster_size()));
        }
    }
    Ok(out)
}
