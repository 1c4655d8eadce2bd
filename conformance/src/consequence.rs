//! The Violation column of docs/spec.md, checked through the engine: what
//! `qcow2_image::Image` must do with an image that breaks a rule.

use std::sync::Arc;

use qcow2_format::{HeaderArea, RuleId};
use qcow2_image::{BackingMode, Image, ImageError, OpenOptions};
use qcow2_io::MemoryStorage;

/// What the spec says happens to an image that breaks a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consequence {
    /// Opening fails, with the rule in the error.
    Refuse,
    /// Opens for reading; opening for writing fails, naming the rule.
    ReadOnly,
    /// Opens for reading; `check` reports the rule.
    Check,
    /// Opens for writing; what the rule covers survives a rewrite.
    IgnoreKeep,
    /// As [`Consequence::Check`], and `check -r all` (refcount repair, then
    /// a dedup table rebuild) leaves an image with no finding of any rule.
    Repair,
    /// A rule about what readers and writers do, which no image breaks:
    /// its cases are [`crate::duties`].
    Duty,
}

impl Consequence {
    /// The word of the Violation column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::ReadOnly => "read-only",
            Self::Check => "check",
            Self::IgnoreKeep => "ignore+keep",
            Self::Repair => "repair",
            Self::Duty => "duty",
        }
    }

    /// Reads a Violation cell (`refuse`, `read-only`, `check`, `repair`,
    /// `ignore+keep`, `duty`).
    pub fn from_cell(cell: &str) -> Option<Self> {
        match cell.trim() {
            "refuse" => Some(Self::Refuse),
            "read-only" => Some(Self::ReadOnly),
            "check" => Some(Self::Check),
            "ignore+keep" => Some(Self::IgnoreKeep),
            "repair" => Some(Self::Repair),
            "duty" => Some(Self::Duty),
            _ => None,
        }
    }
}

fn open(bytes: &[u8], writable: bool) -> Result<(Image, Arc<MemoryStorage>), ImageError> {
    let storage = Arc::new(MemoryStorage::from_bytes(bytes.to_vec()));
    let options = OpenOptions {
        writable,
        backing: BackingMode::Ignore,
    };
    Image::open(storage.clone(), options).map(|image| (image, storage))
}

fn names(e: &ImageError, rule: RuleId) -> bool {
    e.rule() == Some(rule) || e.to_string().contains(rule.as_str())
}

/// Checks that the engine does with `bytes` (which break `rule`) what
/// `expected` says, then what the rule's own text adds (see
/// [`follow_through`]); `Ok` holds a description of what happened.
pub fn observe(bytes: &[u8], rule: RuleId, expected: Consequence) -> Result<String, String> {
    let seen = observe_violation(bytes, rule, expected)?;
    match follow_through(bytes, rule)? {
        Some(more) => Ok(format!("{seen}; {more}")),
        None => Ok(seen),
    }
}

/// What some rules say beyond their Violation word, run on the broken
/// image: FEAT-DIRTY's read-write open rebuilds the refcounts and clears
/// the bit; FEAT-CORRUPT's repair clears the bit when nothing is left to
/// repair; EXT-PADDING's header rewrite writes zero padding.
fn follow_through(bytes: &[u8], rule: RuleId) -> Result<Option<String>, String> {
    use qcow2_format::rules::{EXT_PADDING, FEAT_CORRUPT, FEAT_DIRTY};
    let bit = |b: &[u8], n: u32| {
        HeaderArea::parse(b).map(|a| a.header.incompatible_features & (1 << n) != 0)
    };
    if rule == FEAT_DIRTY {
        let (image, storage) = open(bytes, true)
            .map_err(|e| format!("read-write open of a dirty image failed: {e}"))?;
        image.close().map_err(|e| format!("close: {e}"))?;
        let after = storage.to_vec();
        let left = crate::evaluate::evaluate(&after);
        if !left.triggered().is_empty() || bit(&after, 0).map_err(|e| e.to_string())? {
            return Err(format!(
                "after a read-write open: {}, dirty bit {:?}",
                left.describe(),
                bit(&after, 0)
            ));
        }
        return Ok(Some(
            "a read-write open rebuilt the refcounts and cleared the bit".into(),
        ));
    }
    if rule == FEAT_CORRUPT {
        let repaired = repair_all(bytes)?;
        if bit(&repaired, 1).map_err(|e| e.to_string())? {
            return Err("check -r all left nothing to repair but kept the corrupt bit".into());
        }
        open(&repaired, true).map_err(|e| format!("still not writable after the repair: {e}"))?;
        return Ok(Some(
            "check -r all cleared the corrupt bit; the image then opens for writing".into(),
        ));
    }
    if rule == EXT_PADDING {
        let (image, storage) =
            open(bytes, true).map_err(|e| format!("refused for writing: {e}"))?;
        let grown = image.size() + image.cluster_size();
        image
            .resize(grown)
            .and_then(|()| image.close())
            .map_err(|e| format!("rewrite (resize) failed: {e}"))?;
        let area = HeaderArea::parse(&storage.to_vec()).map_err(|e| e.to_string())?;
        if area.chain.findings.iter().any(|f| f.rule == EXT_PADDING) {
            return Err("the header rewrite kept the non-zero padding".into());
        }
        return Ok(Some("a header rewrite (resize) wrote zero padding".into()));
    }
    Ok(None)
}

fn observe_violation(bytes: &[u8], rule: RuleId, expected: Consequence) -> Result<String, String> {
    match expected {
        Consequence::Refuse => match open(bytes, false) {
            Ok(_) => Err("opened, but the rule says refuse".into()),
            Err(e) if names(&e, rule) => Ok(format!("refused: {e}")),
            Err(e) => Err(format!("refused without naming {rule}: {e}")),
        },
        Consequence::ReadOnly => {
            open(bytes, false).map_err(|e| format!("not even read-only: {e}"))?;
            match open(bytes, true) {
                Ok(_) => Err("opened for writing, but the rule says read-only".into()),
                Err(e) if names(&e, rule) => Ok(format!("read-only: {e}")),
                Err(e) => Err(format!("writable open refused without naming {rule}: {e}")),
            }
        }
        Consequence::Check => read_around(bytes, rule),
        Consequence::Repair => {
            let read = read_around(bytes, rule)?;
            let repaired = repair_all(bytes)?;
            let left = crate::evaluate::evaluate(&repaired);
            match left.triggered().as_slice() {
                [] => Ok(format!("{read}; check -r all leaves it clean")),
                _ => Err(format!("after check -r all: {}", left.describe())),
            }
        }
        Consequence::IgnoreKeep => keep_across_rewrite(bytes),
        Consequence::Duty => Err(format!(
            "{rule} is a duty of readers and writers: no image breaks it"
        )),
    }
}

/// Clusters read by [`read_around`] at most.
const READ_CLUSTERS: u64 = 4096;

/// The finding itself is compared by the runner (the engine's check must
/// report exactly this rule); here: the image opens read-only and every
/// cluster reads, or fails with an error that names the rule.
fn read_around(bytes: &[u8], rule: RuleId) -> Result<String, String> {
    let image = match open(bytes, false) {
        Ok((image, _)) => image,
        // A feature the engine does not implement (external data files,
        // encryption)
        // is refused whatever the rule: the runner has already seen the
        // check report the rule, which is all such an image can show.
        Err(e @ ImageError::Unsupported { .. }) => {
            return Ok(format!(
                "not opened by the engine ({e}); check reports {rule}"
            ))
        }
        Err(e) => return Err(format!("refused, but the rule says check: {e}")),
    };
    let cs = image.cluster_size();
    let clusters = image.size().div_ceil(cs).min(READ_CLUSTERS);
    let mut buf = vec![0u8; cs as usize];
    let mut failed = 0;
    for c in 0..clusters {
        let len = (image.size() - c * cs).min(cs) as usize;
        if let Err(e) = image.read_at(&mut buf[..len], c * cs) {
            if !names(&e, rule) {
                return Err(format!(
                    "reading guest cluster {c} failed without naming {rule}: {e}"
                ));
            }
            failed += 1;
        }
    }
    Ok(format!(
        "opened read-only; {} of {clusters} clusters read, {failed} refused naming {rule}",
        clusters - failed
    ))
}

/// Rewrites `bytes` three ways and compares the header area with the
/// original after each (see [`compare_kept`]): a resize that grows the disk
/// by one cluster, an amend to another refcount width (which writes new
/// refcount structures and the header), and `check -r all`.
fn keep_across_rewrite(bytes: &[u8]) -> Result<String, String> {
    let (image, storage) = open(bytes, true)
        .map_err(|e| format!("refused for writing, but the rule says keep: {e}"))?;
    let grown = image.size() + image.cluster_size();
    image
        .resize(grown)
        .and_then(|()| image.close())
        .map_err(|e| format!("rewrite (resize) failed: {e}"))?;
    let resized = storage.to_vec();
    compare_kept(bytes, &resized, grown).map_err(|e| format!("resize: {e}"))?;
    let area = HeaderArea::parse(&resized).map_err(|e| e.to_string())?;
    let width = if area.header.refcount_bits() == 32 {
        16
    } else {
        32
    };
    let options = qcow2_image::AmendOptions {
        refcount_bits: Some(width),
        ..Default::default()
    };
    Image::amend(storage.clone(), &options)
        .map_err(|e| format!("rewrite (amend refcount_bits={width}) failed: {e}"))?;
    let amended = storage.to_vec();
    compare_kept(bytes, &amended, grown).map_err(|e| format!("amend: {e}"))?;
    let repaired = repair_all(&amended)?;
    compare_kept(bytes, &repaired, grown)
        .map_err(|e| format!("check -r all: {e}"))
        .map(|kept| format!("{kept}, and across amend refcount_bits={width} and check -r all"))
}

/// Compares the header areas of an image before and after a rewrite that
/// grew it to `grown` bytes: equal but for the size, a moved L1 table and
/// the refcount structures' place and width, with autoclear bits cleared as
/// FEAT-UNKNOWN-COMPAT says.
pub fn compare_kept(before: &[u8], after: &[u8], grown: u64) -> Result<String, String> {
    let mut before = HeaderArea::parse(before).map_err(|e| format!("does not parse: {e}"))?;
    let mut after =
        HeaderArea::parse(after).map_err(|e| format!("rewritten image does not parse: {e}"))?;
    if after.header.size != grown {
        return Err(format!(
            "the resize did not land: size {}",
            after.header.size
        ));
    }
    let mut cleared = "";
    if before.header.autoclear_features != 0 {
        // Autoclear bits are the exception: cleared before the first write.
        if after.header.autoclear_features != 0 {
            return Err(format!(
                "autoclear bits {:#x} survived a write",
                after.header.autoclear_features
            ));
        }
        after.header.autoclear_features = before.header.autoclear_features;
        cleared = ", autoclear bits cleared";
    }
    after.header.size = before.header.size;
    after.header.l1_table_offset = before.header.l1_table_offset;
    after.header.l1_size = before.header.l1_size;
    // Where the refcount structures are and how wide, which an amend changes.
    after.header.refcount_order = before.header.refcount_order;
    after.header.refcount_table_offset = before.header.refcount_table_offset;
    after.header.refcount_table_clusters = before.header.refcount_table_clusters;
    let (a, b) = (
        before.to_bytes().map_err(|e| e.to_string())?,
        after.to_bytes().map_err(|e| e.to_string())?,
    );
    match a.iter().zip(&b).position(|(x, y)| x != y) {
        None if a.len() == b.len() => Ok(format!("kept byte for byte across a resize{cleared}")),
        None => Err(format!("header area {} bytes, was {}", b.len(), a.len())),
        Some(at) => Err(format!(
            "header area changed at byte {at:#x} across a resize"
        )),
    }
}

/// What `qcow2 check -r all` does to `bytes`: repair every refcount and
/// COPIED problem, then rebuild the dedup table of a deduplicated image.
pub fn repair_all(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let storage = Arc::new(MemoryStorage::from_bytes(bytes.to_vec()));
    let hook = qcow2_image::DedupTableReferences;
    let done =
        qcow2_alloc::repair::repair(&*storage, qcow2_alloc::repair::RepairMode::All, &[&hook])
            .map_err(|e| format!("check -r all failed: {e}"))?;
    if !done.final_report().is_clean() {
        return Err("check -r all left findings".into());
    }
    qcow2_image::rebuild_dedup(storage.clone()).map_err(|e| format!("dedup rebuild: {e}"))?;
    Ok(storage.to_vec())
}
