//! One record per case for `cargo xtask conformance --json`: what was
//! checked, on which bytes (with their SHA-256 and how they were made), what
//! the spec expects and what happened.

use crate::corpus::{sha256_hex, TestImage};
use crate::evaluate::Evaluation;

/// Whether a case shows a rule holding or being broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseKind {
    /// An image the rule applies to, which must be clean.
    Positive,
    /// An input that breaks exactly this rule.
    Negative,
}

/// The bytes a case ran on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageRecord {
    /// The corpus name, for images of the corpus.
    pub name: Option<String>,
    /// Where the file is kept, relative to the repository root.
    pub path: Option<String>,
    /// SHA-256 of the bytes checked (`None` when no bytes could be made).
    pub sha256: Option<String>,
    /// How the bytes were made.
    pub made_by: String,
}

impl ImageRecord {
    /// The record of an image of the corpus.
    pub fn of(image: &TestImage) -> Self {
        Self {
            name: Some(image.name.clone()),
            path: image.path.clone(),
            sha256: Some(image.sha256()),
            made_by: image.made_by.clone(),
        }
    }

    /// The record of bytes made by a negative case.
    pub fn built(bytes: Option<&[u8]>, made_by: String) -> Self {
        Self {
            name: None,
            path: None,
            sha256: bytes.map(sha256_hex),
            made_by,
        }
    }
}

/// One case of one rule.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseReport {
    /// Positive or negative.
    pub kind: CaseKind,
    /// The image name (positives) or the mutation's description (negatives).
    pub name: String,
    /// The bytes checked.
    pub image: ImageRecord,
    /// What the spec requires of this case.
    pub expected: String,
    /// Every finding of every rule, one line each.
    pub findings: Vec<String>,
    /// What the engine did, for negatives; the verdict, for positives.
    pub observed: String,
    /// Whether the case behaved as expected.
    pub passed: bool,
}

/// Every finding of an evaluation, one line each, rule first.
pub fn findings_of(eval: &Evaluation) -> Vec<String> {
    let mut out: Vec<String> = eval.fatal.iter().map(|e| format!("fatal {e}")).collect();
    if let Some(a) = &eval.assessment {
        out.extend(
            a.notes
                .iter()
                .map(|n| format!("note {} at byte {:#x}: {}", n.rule, n.offset, n.message)),
        );
        out.extend(a.read_only.map(|r| format!("read-only {r}")));
    }
    out.extend(eval.table_findings.iter().map(|e| format!("table {e}")));
    out.extend(
        eval.engine
            .findings
            .iter()
            .map(|f| format!("check {}: {}", f.rule, f.message)),
    );
    out.extend(
        eval.engine
            .error
            .iter()
            .map(|e| format!("check did not finish: {e}")),
    );
    out
}
