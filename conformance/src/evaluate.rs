//! Runs every check this crate knows on one image and collects what each rule says.

use qcow2_format::{Assessment, FormatError, HeaderArea, RuleId};

use crate::engine_check::{self, EngineVerdict};
use crate::walk;

/// The highest level of a registered compress format, `None` for an unknown name.
pub fn codec_max_level(name: &str) -> Option<u8> {
    static REGISTRY: std::sync::OnceLock<qcow2_codec::Registry> = std::sync::OnceLock::new();
    let registry = REGISTRY.get_or_init(qcow2_codec::Registry::builtin);
    registry.info(name).ok().map(|info| info.levels().max())
}

/// Everything the checks found in one case.
#[derive(Debug)]
pub struct Evaluation {
    /// Every fatal error found (the image would be refused when there is
    /// one); the first is the one a refusal names.
    pub fatal: Vec<FormatError>,
    /// Header-level verdict whenever the geometry and feature bits could be read.
    pub assessment: Option<Assessment>,
    /// Violations found by walking the tables (reported by `check`, not fatal to opening).
    pub table_findings: Vec<FormatError>,
    /// Whether serializing the parsed header area gives back the same bytes.
    pub roundtrip: Result<(), String>,
    /// What the engine (refcount check, compressed cluster decoding) found.
    pub engine: EngineVerdict,
}

impl Evaluation {
    /// Every rule this case triggers: the fatal error, notes, read-only reasons and table findings.
    pub fn triggered(&self) -> Vec<RuleId> {
        let mut rules: Vec<RuleId> = self.fatal.iter().map(|e| e.rule).collect();
        if let Some(a) = &self.assessment {
            rules.extend(a.notes.iter().map(|n| n.rule));
            rules.extend(a.read_only);
        }
        rules.extend(self.table_findings.iter().map(|e| e.rule));
        rules.extend(self.engine.findings.iter().map(|f| f.rule));
        rules.sort();
        rules.dedup();
        rules
    }

    /// A one-line summary for failure messages.
    pub fn describe(&self) -> String {
        match self.fatal.as_slice() {
            [first, more @ ..] => {
                let mut text = format!("refused: {first}");
                for e in more {
                    text.push_str(&format!("; also {e}"));
                }
                text
            }
            [] => {
                let rules: Vec<String> = self.triggered().iter().map(|r| r.to_string()).collect();
                let mut text = if rules.is_empty() {
                    "accepted, nothing reported".to_string()
                } else {
                    format!("accepted, reported {}", rules.join(", "))
                };
                for f in self.engine.findings.iter().take(3) {
                    text.push_str(&format!(" [{}: {}]", f.rule, f.message));
                }
                if let Some(e) = &self.engine.error {
                    text.push_str(&format!(" [{e}]"));
                }
                text
            }
        }
    }
}

/// Evaluates a whole image file.
pub fn evaluate(bytes: &[u8]) -> Evaluation {
    let area = match HeaderArea::parse(bytes) {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    let roundtrip = roundtrip(&area, bytes);
    let mut eval = evaluate_area(&area);
    eval.roundtrip = roundtrip;
    if eval.fatal.is_empty() {
        if let Some(a) = &eval.assessment {
            eval.table_findings = walk::walk(bytes, &area, a);
            eval.engine = engine_check::judge(bytes, &area);
        }
    }
    eval
}

/// Evaluates a header area built in code (what a writer would be asked to produce).
pub fn evaluate_area(area: &HeaderArea) -> Evaluation {
    let (assessment, fatal) = area.assess_all(Some(&codec_max_level));
    Evaluation {
        fatal,
        assessment,
        table_findings: Vec::new(),
        roundtrip: Ok(()),
        engine: EngineVerdict::default(),
    }
}

fn refused(e: FormatError) -> Evaluation {
    Evaluation {
        fatal: vec![e],
        assessment: None,
        table_findings: Vec::new(),
        roundtrip: Ok(()),
        engine: EngineVerdict::default(),
    }
}

fn roundtrip(area: &HeaderArea, bytes: &[u8]) -> Result<(), String> {
    let mut copy = area.clone();
    let out = copy
        .to_bytes()
        .map_err(|e| format!("cannot re-serialize: {e}"))?;
    match bytes.get(..out.len()) {
        Some(orig) if orig == out.as_slice() => Ok(()),
        _ => {
            let at = out
                .iter()
                .zip(bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(out.len());
            Err(format!(
                "re-serialized header area differs from the file at byte {at:#x}"
            ))
        }
    }
}
