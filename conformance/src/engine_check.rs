//! The engine's view of an image: runs `qcow2-alloc`'s refcount check on the
//! bytes and decodes every compressed cluster with `qcow2-codec`, reporting
//! each problem under the rule it breaks.
//!
//! Every check finding already names the precise rule it breaks (`RC-MATCH`
//! for refcount mismatches, `RC-OVERLAP` for clusters in two roles,
//! `L1-COPIED`/`L2-COPIED` for COPIED flag errors, ...); [`rule_of`] passes
//! it through.
//!
//! The dedup table's clusters are counted by the engine's own hook
//! ([`qcow2_image::DedupTableReferences`], the one `qcow2 check` uses),
//! which makes the refcount check report a wrong refcount or a second role
//! of one of them under `DD-REFCOUNT` itself. A deduplicated image (bit 1 set) also
//! gets `qcow2_dedup::verify`, as in `qcow2 check`: its corruptions
//! (`DD-DIGEST`, `DD-LIVE`, ...) are findings, its notes (a guest offset
//! that is only history) are not.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use qcow2_alloc::check::{self, Finding};
use qcow2_codec::{Codec, Registry};
use qcow2_format::features::{INCOMPAT_BIT1, INCOMPAT_DIRTY};
use qcow2_format::rules::{self, RuleId};
use qcow2_format::tables::compressed::{CompressedDescriptor, COMPRESSED_FLAG, SECTOR_SIZE};
use qcow2_format::tables::l1::L1_OFFSET_MASK;
use qcow2_format::{HeaderArea, HostOffset};
use qcow2_image::DedupTableReferences;
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

/// The rule a check finding breaks (none for findings without a rule).
pub fn rule_of(finding: &Finding) -> Option<RuleId> {
    finding.rule
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
    let hook = DedupTableReferences;
    match check::check(&storage, &[&hook]) {
        Ok(report) => {
            for f in &report.findings {
                if let Some(rule) = rule_of(f) {
                    verdict.findings.push(EngineFinding {
                        rule,
                        message: f.to_string(),
                    });
                }
            }
        }
        Err(e) => verdict.error = Some(format!("the refcount check failed: {e}")),
    }
    if area.header.incompatible_features & INCOMPAT_BIT1 != 0 && area.dedup().is_some() {
        match qcow2_dedup::verify(&storage, area) {
            Ok(v) => verdict.findings.extend(
                v.findings
                    .into_iter()
                    .filter(|f| f.severity == qcow2_dedup::Severity::Corruption)
                    .map(|f| EngineFinding {
                        rule: f.rule,
                        message: format!("at {:#x}: {}", f.offset, f.message),
                    }),
            ),
            Err(e) => verdict.error = Some(format!("the dedup verification failed: {e}")),
        }
    }
    verdict.findings.extend(decode_compressed(bytes, area));
    verdict
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
    if area.data_file().is_some() {
        // Every compressed descriptor there breaks CMP-DESCRIPTOR already.
        return Vec::new();
    }
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
    //! Each finding the check makes on a mutated golden image reaches the
    //! verdict under the precise rule, with the check's own kind word.

    use qcow2_format::rules::{self, RuleId};
    use qcow2_format::tables::l1::{L1_COPIED, L1_OFFSET_MASK};
    use qcow2_format::tables::l2::{L2_COPIED, L2_OFFSET_MASK};
    use qcow2_format::HeaderArea;

    use super::{judge, EngineFinding};
    use crate::corpus::{find, golden_dir, load_golden};
    use crate::mutate::{adjust_refcount, append_counted, get_u64, put_u64, set_refcount};

    const CS: u64 = 65536;

    /// The golden data-v3 image: 64 KiB clusters, standard L2 entries.
    fn data_v3() -> Vec<u8> {
        let images = load_golden(&golden_dir()).unwrap();
        find(&images, "data-v3").unwrap().bytes.clone()
    }

    fn area(b: &[u8]) -> HeaderArea {
        HeaderArea::parse(b).unwrap()
    }

    fn l1_offset(b: &[u8]) -> u64 {
        area(b).header.l1_table_offset.get()
    }

    /// Byte offset of the first active L1 entry naming an L2 table.
    fn first_l1_entry(b: &[u8]) -> usize {
        let h = area(b).header;
        (0..h.l1_size as usize)
            .map(|k| h.l1_table_offset.get() as usize + 8 * k)
            .find(|&at| get_u64(b, at) & L1_OFFSET_MASK != 0)
            .expect("data-v3 has an L2 table")
    }

    fn first_l2(b: &[u8]) -> usize {
        (get_u64(b, first_l1_entry(b)) & L1_OFFSET_MASK) as usize
    }

    /// Byte offset of the first L2 entry mapping a data cluster.
    fn first_data_entry(b: &[u8]) -> usize {
        let l2 = first_l2(b);
        (0..CS as usize / 8)
            .map(|i| l2 + 8 * i)
            .find(|&at| get_u64(b, at) & L2_OFFSET_MASK != 0)
            .expect("data-v3 maps a data cluster")
    }

    /// Byte offset of the last unused L2 entry of the first table.
    fn free_entry(b: &[u8]) -> usize {
        let l2 = first_l2(b);
        (0..CS as usize / 8)
            .rev()
            .map(|i| l2 + 8 * i)
            .find(|&at| get_u64(b, at) == 0)
            .expect("the first L2 table has a free entry")
    }

    /// The offset of the first refcount block.
    fn first_refblock(b: &[u8]) -> u64 {
        let rt = area(b).header.refcount_table_offset.get() as usize;
        get_u64(b, rt) & !0x1ff
    }

    fn verdict(b: &[u8]) -> Vec<EngineFinding> {
        let v = judge(b, &area(b));
        assert_eq!(v.error, None);
        v.findings
    }

    /// Asserts every finding carries `rule` and at least one starts with `start`.
    #[track_caller]
    fn all_under(findings: &[EngineFinding], rule: RuleId, start: &str) {
        assert!(!findings.is_empty(), "nothing found");
        assert!(findings.iter().all(|f| f.rule == rule), "{findings:#?}");
        assert!(
            findings.iter().any(|f| f.message.starts_with(start)),
            "no finding starts with {start:?}: {findings:#?}"
        );
    }

    #[test]
    fn the_untouched_image_is_clean() {
        assert_eq!(verdict(&data_v3()), []);
    }

    #[test]
    fn refcount_mismatches_carry_rc_match() {
        // A leak: an appended cluster nothing references, with refcount 1.
        let mut b = data_v3();
        let at = append_counted(&mut b, CS, &[0; CS as usize]).unwrap();
        let found = verdict(&b);
        all_under(
            &found,
            rules::RC_MATCH,
            &format!("Leaked cluster {} refcount=1 reference=0", at / CS),
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        // Too low: the active L1 table with refcount 0.
        let mut b = data_v3();
        let l1 = l1_offset(&b) / CS;
        set_refcount(&mut b, l1, 0).unwrap();
        all_under(
            &verdict(&b),
            rules::RC_MATCH,
            &format!("ERROR cluster {l1} refcount=0 reference=1"),
        );
    }

    #[test]
    fn clusters_in_two_roles_carry_rc_overlap() {
        // An L2 entry naming the L1 table, its refcount raised to match.
        let mut b = data_v3();
        let l1 = l1_offset(&b);
        let at = free_entry(&b);
        put_u64(&mut b, at, l1);
        adjust_refcount(&mut b, l1, 1).unwrap();
        all_under(
            &verdict(&b),
            rules::RC_OVERLAP,
            &format!(
                "ERROR cluster {} is used as an L1 table and a data cluster at the same time",
                l1 / CS
            ),
        );
        // The same without raising the refcount: one finding, counted once
        // as qemu-img does, under the overlap rule.
        let mut b = data_v3();
        let at = free_entry(&b);
        put_u64(&mut b, at, l1 | L2_COPIED);
        let found = verdict(&b);
        all_under(
            &found,
            rules::RC_OVERLAP,
            &format!(
                "ERROR cluster {} refcount=1 reference=2 (used as an L1 table and a data cluster)",
                l1 / CS
            ),
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        // An L2 entry naming a refcount block.
        let mut b = data_v3();
        let block = first_refblock(&b);
        let at = free_entry(&b);
        put_u64(&mut b, at, block);
        adjust_refcount(&mut b, block, 1).unwrap();
        let found = verdict(&b);
        all_under(
            &found,
            rules::RC_OVERLAP,
            &format!("ERROR refcount block 0 at {block:#x} is referenced 2 times; it is also used as a data cluster"),
        );
    }

    #[test]
    fn a_refcount_block_named_twice_keeps_rc_table_entry() {
        let mut b = data_v3();
        let rt = area(&b).header.refcount_table_offset.get() as usize;
        let block = first_refblock(&b);
        assert_eq!(get_u64(&b, rt + 8), 0);
        put_u64(&mut b, rt + 8, block);
        let found = verdict(&b);
        let expected = format!(
            "ERROR refcount block 1 at {block:#x} is referenced 2 times; it is also used as another refcount block (offset {:#x}, RC-TABLE-ENTRY)",
            rt + 8
        );
        assert!(
            found
                .iter()
                .any(|f| f.rule == rules::RC_TABLE_ENTRY && f.message == expected),
            "{found:#?}"
        );
        assert!(
            found.iter().all(|f| f.rule != rules::RC_OVERLAP),
            "{found:#?}"
        );
    }

    #[test]
    fn copied_flag_errors_carry_l1_and_l2_copied() {
        let mut b = data_v3();
        let at = first_l1_entry(&b);
        let e = get_u64(&b, at);
        assert_ne!(e & L1_COPIED, 0);
        put_u64(&mut b, at, e & !L1_COPIED);
        let found = verdict(&b);
        all_under(&found, rules::L1_COPIED, "ERROR OFLAG_COPIED L2 cluster");
        assert_eq!(found.len(), 1, "{found:#?}");

        let mut b = data_v3();
        let at = first_data_entry(&b);
        let e = get_u64(&b, at);
        assert_ne!(e & L2_COPIED, 0);
        put_u64(&mut b, at, e & !L2_COPIED);
        let found = verdict(&b);
        all_under(&found, rules::L2_COPIED, "ERROR OFLAG_COPIED data cluster");
        assert_eq!(found.len(), 1, "{found:#?}");
    }
}
