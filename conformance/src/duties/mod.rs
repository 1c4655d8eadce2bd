//! Cases of the rules whose Violation column reads `duty`: rules about
//! what a reader or writer does (how a guest offset maps, what an
//! unallocated cluster reads, that a shared cluster is copied before a
//! write), which no image can break.
//!
//! A positive case runs the duty through the engine on images `qemu-img`
//! made and compares the outcome with an oracle that shares no code with
//! the engine: the guest disk replayed from the commands the golden
//! manifest records ([`guest_model`]), or the suite's own translation of
//! the tables ([`raw_map`]). A negative case plants a behaviour that breaks
//! the duty (a reader denied the backing file, a table entry pointing
//! elsewhere, a write made in place over a shared cluster) and passes only
//! when the same comparison reports it.

pub mod bitmap_bits;
pub mod data_file;
pub mod encrypted;
pub mod guest_model;
pub mod raw_map;
pub mod reads;
pub mod snapshot_load;
pub mod writes;

use std::sync::Arc;

use qcow2_format::RuleId;
use qcow2_image::{BackingMode, Image, OpenOptions};
use qcow2_io::MemoryStorage;

use crate::case_report::{CaseKind, CaseReport, ImageRecord};
use crate::corpus::TestImage;

/// The first word of a manifest command that runs qemu-io.
pub(crate) const QEMU_IO: &str = "qemu-io";

/// What a duty case does: `Ok` describes a positive that held or a
/// planted violation that the comparison reported; `Err` says why not.
pub type DutyRun = fn(&[TestImage]) -> Result<String, String>;

/// One case of a duty rule.
#[derive(Clone, Copy)]
pub struct DutyCase {
    /// The rule.
    pub rule: RuleId,
    /// Positive (the duty holds) or negative (a planted breach is seen).
    pub kind: CaseKind,
    /// What the case does.
    pub name: &'static str,
    /// The golden image it starts from.
    pub image: &'static str,
    /// Runs it.
    pub run: DutyRun,
    /// The file that defines it, relative to the repository root.
    pub source: &'static str,
}

/// Every duty case of the suite.
pub fn all() -> Vec<DutyCase> {
    [
        ("conformance/src/duties/reads.rs", reads::cases()),
        ("conformance/src/duties/writes.rs", writes::cases()),
        (
            "conformance/src/duties/snapshot_load.rs",
            snapshot_load::cases(),
        ),
        (
            "conformance/src/duties/bitmap_bits.rs",
            bitmap_bits::cases(),
        ),
        ("conformance/src/duties/encrypted.rs", encrypted::cases()),
        ("conformance/src/duties/data_file.rs", data_file::cases()),
    ]
    .into_iter()
    .flat_map(|(source, cases)| cases.into_iter().map(move |c| DutyCase { source, ..c }))
    .collect()
}

/// Runs one duty case and reports it.
pub fn report(case: &DutyCase, images: &[TestImage]) -> CaseReport {
    let image = match crate::corpus::find(images, case.image) {
        Ok(img) => ImageRecord {
            made_by: match case.kind {
                CaseKind::Positive => img.made_by.clone(),
                CaseKind::Negative => format!(
                    "{}; then, in memory, the planted breach of the case ({})",
                    img.made_by, case.source
                ),
            },
            ..ImageRecord::of(img)
        },
        Err(e) => ImageRecord::built(None, e),
    };
    let (passed, observed) = match (case.run)(images) {
        Ok(what) => (true, what),
        Err(why) => (false, why),
    };
    // What the comparison reported is a negative's finding.
    let findings = match case.kind {
        CaseKind::Negative if passed => vec![format!("{}: {observed}", case.rule)],
        _ => Vec::new(),
    };
    CaseReport {
        kind: case.kind,
        name: case.name.to_string(),
        image,
        expected: match case.kind {
            CaseKind::Positive => "the engine's outcome equals the oracle's".into(),
            CaseKind::Negative => {
                format!("the comparison reports the planted breach of {}", case.rule)
            }
        },
        findings,
        observed,
        passed,
    }
}

/// Shorthand for a case (the runner fills in `source`).
pub(crate) const fn duty(
    rule: RuleId,
    kind: CaseKind,
    name: &'static str,
    image: &'static str,
    run: DutyRun,
) -> DutyCase {
    DutyCase {
        rule,
        kind,
        name,
        image,
        run,
        source: "",
    }
}

/// A negative's verdict: the comparison must have failed.
pub(crate) fn seen(comparison: Result<String, String>) -> Result<String, String> {
    match comparison {
        Err(reported) => Ok(format!("reported: {reported}")),
        Ok(said) => Err(format!("the planted breach went unseen: {said}")),
    }
}

/// Opens `bytes` with the engine.
pub(crate) fn open(
    bytes: &[u8],
    writable: bool,
    backing: BackingMode,
) -> Result<(Image, Arc<MemoryStorage>), String> {
    let storage = Arc::new(MemoryStorage::from_bytes(bytes.to_vec()));
    let options = OpenOptions { writable, backing };
    Image::open(storage.clone(), options)
        .map(|image| (image, storage))
        .map_err(|e| format!("the engine does not open it: {e}"))
}

/// The whole guest disk as the engine reads it.
pub(crate) fn read_all(image: &Image) -> Result<Vec<u8>, String> {
    let len = usize::try_from(image.size()).map_err(|e| e.to_string())?;
    let mut disk = vec![0u8; len];
    image
        .read_at(&mut disk, 0)
        .map_err(|e| format!("the engine's read failed: {e}"))?;
    Ok(disk)
}

/// `Ok` when `got` equals `want`, else where they first differ.
pub(crate) fn same(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} bytes, the oracle has {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(format!(
            "{what}: guest byte {at:#x} is {:#04x}, the oracle says {:#04x}",
            got[at], want[at]
        )),
    }
}

/// The golden called `name`, as bytes.
pub(crate) fn golden(images: &[TestImage], name: &str) -> Result<Vec<u8>, String> {
    crate::corpus::find(images, name).map(|i| i.bytes.clone())
}

/// `Ok` when the suite finds nothing of any rule in `bytes` (header,
/// tables, the engine's check), else what it found, after `when`.
pub(crate) fn clean(bytes: &[u8], when: &str) -> Result<(), String> {
    let eval = crate::evaluate::evaluate(bytes);
    if eval.triggered().is_empty() {
        Ok(())
    } else {
        Err(format!("{when}: {}", eval.describe()))
    }
}
