//! The engine's view of an image: runs `qcow2-alloc`'s refcount check on the
//! bytes and decodes every compressed cluster with `qcow2-codec`, reporting
//! each problem under the rule it breaks.
//!
//! The check tags refcount mismatches and role overlaps with `RC-BLOCK`, a
//! refcount block that is also something else with `RC-TABLE-ENTRY`, and
//! COPIED flag errors with `L1-ENTRY`/`L2-ENTRY`, from before those concepts
//! had rules of their own; [`rules_of`] sorts them into `RC-MATCH`,
//! `RC-OVERLAP`, `L1-COPIED` and `L2-COPIED` by the shape of the message.
//! Every other finding keeps the rule the check gave it.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use qcow2_alloc::check::{self, CheckResult, ExtraReferences, Finding, ImageView, References};
use qcow2_codec::{Codec, Registry};
use qcow2_format::features::INCOMPAT_DIRTY;
use qcow2_format::rules::{self, RuleId};
use qcow2_format::tables::compressed::{CompressedDescriptor, COMPRESSED_FLAG, SECTOR_SIZE};
use qcow2_format::tables::dedup_table;
use qcow2_format::tables::l1::L1_OFFSET_MASK;
use qcow2_format::{HeaderArea, HostOffset};
use qcow2_io::MemoryStorage;

use crate::mutate::get_u64;

/// One problem the engine found, under the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineFinding {
    /// The rule.
    pub rule: RuleId,
    /// What the engine said.
    pub message: String,
}

/// What the engine says about one image.
#[derive(Clone, Debug, Default)]
pub struct EngineVerdict {
    /// Findings with a rule.
    pub findings: Vec<EngineFinding>,
    /// Set when the check could not run to completion.
    pub error: Option<String>,
}

/// The rules a check finding breaks (none for findings without a rule).
pub fn rules_of(finding: &Finding) -> Vec<RuleId> {
    let Some(rule) = finding.rule else {
        return Vec::new();
    };
    let m = finding.message.as_str();
    if rule == rules::RC_BLOCK {
        let mut out = Vec::new();
        if m.contains(" refcount=") && m.contains(" reference=") {
            out.push(rules::RC_MATCH);
        }
        if m.contains("(used as ") || m.contains("at the same time") {
            out.push(rules::RC_OVERLAP);
        }
        if out.is_empty() {
            out.push(rule);
        }
        return out;
    }
    if rule == rules::RC_TABLE_ENTRY
        && m.contains("; it is also used as ")
        && !m.contains("another refcount block")
    {
        return vec![rules::RC_OVERLAP];
    }
    if m.starts_with("OFLAG_COPIED") {
        if rule == rules::L1_ENTRY {
            return vec![rules::L1_COPIED];
        }
        if rule == rules::L2_ENTRY {
            return vec![rules::L2_COPIED];
        }
    }
    vec![rule]
}

/// Runs the engine's checks on a whole image file whose header area parsed
/// and was accepted.
///
/// A dirty image (incompatible bit 0) is not checked: its refcounts may be
/// stale by definition, which `FEAT-DIRTY` covers.
pub fn judge(bytes: &[u8], area: &HeaderArea) -> EngineVerdict {
    let mut verdict = EngineVerdict::default();
    if area.header.incompatible_features & INCOMPAT_DIRTY != 0 {
        return verdict;
    }
    let storage = MemoryStorage::from_bytes(bytes.to_vec());
    let hook = DedupReferences;
    match check::check(&storage, &[&hook]) {
        Ok(report) => {
            for f in &report.findings {
                for rule in rules_of(f) {
                    verdict.findings.push(EngineFinding {
                        rule,
                        message: f.to_string(),
                    });
                }
            }
        }
        Err(e) => verdict.error = Some(format!("the refcount check failed: {e}")),
    }
    verdict.findings.extend(decode_compressed(bytes, area));
    verdict
}

/// Counts the dedup table's clusters, which only this workspace knows about:
/// the level-1 table and every well-formed level-2 dedup cluster it names.
/// Malformed level-1 entries are `DD-L1-ENTRY`'s business and are skipped.
#[derive(Debug)]
struct DedupReferences;

impl ExtraReferences for DedupReferences {
    fn name(&self) -> &str {
        "dedup table"
    }

    fn add_references(
        &self,
        image: &ImageView<'_>,
        refs: &mut References<'_, '_>,
    ) -> CheckResult<()> {
        let Some(d) = image.area.dedup() else {
            return Ok(());
        };
        let len = u64::from(d.l1_size) * 8;
        if len == 0 || d.l1_offset.get().saturating_add(len) > image.file_len {
            return Ok(());
        }
        refs.add(d.l1_offset, len, "dedup level-1 table", rules::DD_L1_OFFSET);
        let mut buf = vec![0u8; len as usize];
        if image.storage.read_at(&mut buf, d.l1_offset.get()).is_err() {
            return Ok(());
        }
        for (k, raw) in buf.chunks_exact(8).enumerate() {
            let at = d.l1_offset.get() + 8 * k as u64;
            if let Ok(Some(l2)) = dedup_table::decode_l1_entry(get_u64(raw, 0), image.geometry, at)
            {
                refs.add(
                    l2,
                    image.geometry.cluster_size(),
                    "dedup level-2 cluster",
                    rules::DD_L1_ENTRY,
                );
            }
        }
        Ok(())
    }
}

/// The codec compressed clusters of this image use, if this build has it.
fn codec_for(area: &HeaderArea) -> Option<std::sync::Arc<dyn Codec>> {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Registry::builtin);
    match area.compress_format() {
        Some(cf) => registry.by_name(&cf.name, 0).ok(),
        None => registry.by_qemu_type(area.header.compression_type).ok(),
    }
}

/// Decodes every compressed cluster the active L2 tables name (`CMP-DECODE`).
///
/// Descriptors that break `CMP-DESCRIPTOR` and tables outside the file are
/// left to the rules that cover them.
fn decode_compressed(bytes: &[u8], area: &HeaderArea) -> Vec<EngineFinding> {
    let h = &area.header;
    let Ok(geo) = h.geometry() else {
        return Vec::new();
    };
    let extended = h.incompatible_features & qcow2_format::features::INCOMPAT_EXTENDED_L2 != 0;
    let step = if extended { 16 } else { 8 };
    let cs = geo.cluster_size() as usize;
    let l1_at = h.l1_table_offset.get() as usize;
    let l1_len = h.l1_size as usize * 8;
    let Some(l1) = bytes.get(l1_at..l1_at.saturating_add(l1_len)) else {
        return Vec::new();
    };
    let mut descriptors = BTreeSet::new();
    for e in l1.chunks_exact(8) {
        let l2_at = (get_u64(e, 0) & L1_OFFSET_MASK) as usize;
        let Some(l2) = bytes
            .get(l2_at..l2_at.saturating_add(cs))
            .filter(|_| l2_at != 0)
        else {
            continue;
        };
        for (i, x) in l2.chunks_exact(step).enumerate() {
            let raw = get_u64(x, 0);
            if raw & COMPRESSED_FLAG != 0 {
                descriptors.insert((raw, (l2_at + i * step) as u64));
            }
        }
    }
    if descriptors.is_empty() {
        return Vec::new();
    }
    let Some(codec) = codec_for(area) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cluster = vec![0u8; cs];
    let mut seen = BTreeSet::new();
    for (raw, at) in descriptors {
        let Ok(d) = CompressedDescriptor::decode(raw, geo, at) else {
            continue;
        };
        if !seen.insert(raw) {
            continue;
        }
        let start = d.host_offset.get();
        let len = (d.additional_sectors + 1) * SECTOR_SIZE - start % SECTOR_SIZE;
        let mut input = vec![0u8; len as usize];
        let from = (start as usize).min(bytes.len());
        let to = (start.saturating_add(len) as usize).min(bytes.len());
        input[..to - from].copy_from_slice(&bytes[from..to]);
        if let Err(e) = codec.decompress(&input, &mut cluster) {
            out.push(EngineFinding {
                rule: rules::CMP_DECODE,
                message: format!(
                    "compressed cluster at {} (L2 entry at {at:#x}) does not decode with {}: {e}",
                    HostOffset(start),
                    codec.name()
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use qcow2_alloc::check::{Finding, FindingKind};
    use qcow2_format::rules::{self, RuleId};

    fn finding(rule: RuleId, message: &str) -> Finding {
        Finding {
            kind: FindingKind::Corruption,
            offset: None,
            rule: Some(rule),
            message: message.to_string(),
            times: 1,
        }
    }

    #[test]
    fn sorts_check_findings_into_rules() {
        let cases = [
            (rules::RC_BLOCK, "cluster 4 refcount=1 reference=0", vec![rules::RC_MATCH]),
            (
                rules::RC_BLOCK,
                "cluster 5 refcount=1 reference=2 (used as an L2 table and a data cluster)",
                vec![rules::RC_MATCH, rules::RC_OVERLAP],
            ),
            (
                rules::RC_BLOCK,
                "cluster 3 is used as an L1 table and a data cluster at the same time",
                vec![rules::RC_OVERLAP],
            ),
            (
                rules::RC_TABLE_ENTRY,
                "refcount block 0 at 0x400 is referenced 2 times; it is also used as a data cluster",
                vec![rules::RC_OVERLAP],
            ),
            (
                rules::RC_TABLE_ENTRY,
                "refcount block 1 at 0x400 is referenced 2 times; it is also used as another refcount block",
                vec![rules::RC_TABLE_ENTRY],
            ),
            (rules::L1_ENTRY, "OFLAG_COPIED L2 cluster: l1_index=0", vec![rules::L1_COPIED]),
            (rules::L2_ENTRY, "OFLAG_COPIED data cluster: l2_entry=0x1", vec![rules::L2_COPIED]),
            (rules::L2_ENTRY, "L2 entry 0x2 has reserved bits set", vec![rules::L2_ENTRY]),
        ];
        for (rule, message, expected) in cases {
            assert_eq!(
                super::rules_of(&finding(rule, message)),
                expected,
                "{message}"
            );
        }
    }
}
