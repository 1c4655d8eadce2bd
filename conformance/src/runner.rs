//! Runs every rule's positive and negative cases and reports per rule.

use std::collections::BTreeSet;

use qcow2_format::HeaderArea;

use crate::case_report::{findings_of, CaseKind, CaseReport, ImageRecord};
use crate::consequence::{observe, Consequence};
use crate::corpus::{self, TestImage};
use crate::evaluate::{evaluate, evaluate_area, Evaluation};
use crate::negatives::{self, CaseInput, NegativeCase};
use crate::registry;

/// The result of one rule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleReport {
    /// Rule ID.
    pub id: String,
    /// Positive cases that behaved as the rule requires.
    pub positive_passed: usize,
    /// Positive cases run.
    pub positive_total: usize,
    /// Negative cases that broke exactly this rule.
    pub negative_passed: usize,
    /// Negative cases run.
    pub negative_total: usize,
    /// What the spec's Violation column says happens (`None`: a cell the
    /// suite cannot read, which fails the rule).
    pub consequence: Option<Consequence>,
    /// Every case, positive and negative, in the order run.
    pub cases: Vec<CaseReport>,
    /// What went wrong, one line per failed case.
    pub failures: Vec<String>,
}

impl RuleReport {
    /// Whether the rule is proven: at least one case of each kind, all passing.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
            && self.positive_total > 0
            && self.negative_total > 0
            && self.positive_passed == self.positive_total
            && self.negative_passed == self.negative_total
    }
}

/// The result of the whole suite.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SuiteReport {
    /// Number of positive images in the corpus.
    pub images: usize,
    /// One report per rule, in spec order.
    pub rules: Vec<RuleReport>,
    /// Problems with the suite itself (spec and registry disagree, corpus missing).
    pub errors: Vec<String>,
}

impl SuiteReport {
    /// Whether every rule is proven and the suite itself is sound.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.rules.iter().all(RuleReport::ok)
    }
}

/// Runs the suite against the repository's golden corpus and `docs/spec.md`.
pub fn run() -> SuiteReport {
    let mut errors = Vec::new();
    let mut images = corpus::load().unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    let (written, writer_errors) = crate::engine_images::build_all();
    images.extend(written);
    errors.extend(writer_errors);
    match crate::spec_doc::load() {
        Ok(spec) => errors.extend(compare_ids(&spec)),
        Err(e) => errors.push(e),
    }
    errors.extend(unparsable(&images));
    let rules = run_on(&images);
    SuiteReport {
        images: images.len(),
        rules,
        errors,
    }
}

/// Differences between the spec's IDs, the registry and the IDs the format crate reports.
pub fn compare_ids(spec: &[String]) -> Vec<String> {
    let spec_set: BTreeSet<&str> = spec.iter().map(String::as_str).collect();
    let registry: BTreeSet<&str> = registry::all().iter().map(|r| r.id.as_str()).collect();
    let reported: BTreeSet<&str> = qcow2_format::rules::ALL
        .iter()
        .map(|r| r.as_str())
        .collect();
    let mut errors = Vec::new();
    for id in spec_set.difference(&registry) {
        errors.push(format!(
            "{id} is in docs/spec.md but has no check in the registry"
        ));
    }
    for id in registry.difference(&spec_set) {
        errors.push(format!("{id} has a check but no rule in docs/spec.md"));
    }
    for id in reported.difference(&spec_set) {
        errors.push(format!(
            "{id} is reported by qcow2-format but not documented in docs/spec.md"
        ));
    }
    let mut seen = BTreeSet::new();
    for id in spec {
        if !seen.insert(id) {
            errors.push(format!("{id} is defined twice in docs/spec.md"));
        }
    }
    errors
}

/// Golden images whose header area does not parse: they would prove
/// nothing as positives, so each is an error of the suite.
pub fn unparsable(images: &[TestImage]) -> Vec<String> {
    images
        .iter()
        .filter_map(|img| {
            HeaderArea::parse(&img.bytes)
                .err()
                .map(|e| format!("golden {} does not parse: {e}", img.name))
        })
        .collect()
}

/// Runs every registered rule against `images` and the negative cases built from them.
pub fn run_on(images: &[TestImage]) -> Vec<RuleReport> {
    let evaluated: Vec<Evaluated<'_>> = images
        .iter()
        .map(|img| Evaluated {
            image: img,
            record: ImageRecord::of(img),
            area: HeaderArea::parse(&img.bytes).ok(),
            eval: evaluate(&img.bytes),
        })
        .collect();
    let negatives = negatives::all();
    let duties = crate::duties::all();
    let violations = crate::spec_doc::load_violations().unwrap_or_default();
    registry::all()
        .into_iter()
        .map(|entry| {
            let consequence = violations
                .get(entry.id.as_str())
                .and_then(|c| Consequence::from_cell(c));
            let mut report = RuleReport {
                id: entry.id.to_string(),
                positive_passed: 0,
                positive_total: 0,
                negative_passed: 0,
                negative_total: 0,
                consequence,
                cases: Vec::new(),
                failures: Vec::new(),
            };
            if consequence.is_none() {
                report.failures.push(format!(
                    "Violation cell {:?} of docs/spec.md is none of refuse, read-only, check, \
                     repair, ignore+keep, duty",
                    violations.get(entry.id.as_str())
                ));
            }
            for e in &evaluated {
                let Some(area) = &e.area else { continue };
                if (entry.applies)(&e.image.bytes, area) {
                    report.add(positive(e));
                }
            }
            for case in negatives.iter().filter(|c| c.rule == entry.id) {
                report.add(negative(case, images, consequence));
            }
            for case in duties.iter().filter(|c| c.rule == entry.id) {
                report.add(crate::duties::report(case, images));
            }
            if (consequence == Some(Consequence::Duty)) != duties.iter().any(|c| c.rule == entry.id)
            {
                report.failures.push(
                    "a rule has duty cases exactly when its Violation cell is duty".to_string(),
                );
            }
            report
        })
        .collect()
}

/// An image of the corpus with what the checks said about it.
struct Evaluated<'a> {
    image: &'a TestImage,
    record: ImageRecord,
    area: Option<HeaderArea>,
    eval: Evaluation,
}

impl RuleReport {
    fn add(&mut self, case: CaseReport) {
        let (passed, total) = match case.kind {
            CaseKind::Positive => (&mut self.positive_passed, &mut self.positive_total),
            CaseKind::Negative => (&mut self.negative_passed, &mut self.negative_total),
        };
        *total += 1;
        if case.passed {
            *passed += 1;
        } else {
            let kind = match case.kind {
                CaseKind::Positive => "positive",
                CaseKind::Negative => "negative",
            };
            self.failures
                .push(format!("{kind} {:?}: {}", case.name, case.observed));
        }
        self.cases.push(case);
    }
}

/// A positive: clean for every rule (any rule's finding fails it, not only
/// its own: a golden image must be clean), and its header area
/// re-serializes to the same bytes (but for tolerated images, whose form
/// our serializer never writes).
fn positive(e: &Evaluated<'_>) -> CaseReport {
    let eval = &e.eval;
    let findings = findings_of(eval);
    let tolerated = e.image.origin == crate::corpus::Origin::Tolerated;
    let (passed, observed) = match &eval.roundtrip {
        Err(why) if !tolerated => (false, why.clone()),
        _ if findings.is_empty() => (true, "accepted, nothing reported".to_string()),
        _ => (false, eval.describe()),
    };
    CaseReport {
        kind: CaseKind::Positive,
        name: e.image.name.clone(),
        image: e.record.clone(),
        expected: "accepted, no finding of any rule".into(),
        findings,
        observed,
        passed,
    }
}

/// A negative: it breaks exactly its rule (every finding is of that rule),
/// and the engine does what the spec's Violation column says.
fn negative(
    case: &NegativeCase,
    images: &[TestImage],
    consequence: Option<Consequence>,
) -> CaseReport {
    let built = (case.build)(images);
    let bytes = match &built {
        Ok(CaseInput::Bytes(b)) => Some(b.clone()),
        Ok(CaseInput::Area(a)) => a.as_ref().clone().to_bytes().ok(),
        Err(_) => None,
    };
    let how = match &built {
        Ok(CaseInput::Area(_)) => {
            "header area built in code, as a writer would be asked to write it"
        }
        _ => "mutation of an image of the corpus",
    };
    let mut report = CaseReport {
        kind: CaseKind::Negative,
        name: case.name.to_string(),
        image: ImageRecord::built(bytes.as_deref(), format!("{how} ({})", case.source)),
        expected: {
            let mut expected = match consequence {
                Some(c) => format!("only {} reported; consequence {}", case.rule, c.as_str()),
                None => format!("only {} reported", case.rule),
            };
            if !case.message.is_empty() {
                expected += &format!("; the finding says {:?}", case.message);
            }
            expected
        },
        findings: Vec::new(),
        observed: String::new(),
        passed: false,
    };
    let eval = match &built {
        Ok(CaseInput::Bytes(b)) => evaluate(b),
        Ok(CaseInput::Area(a)) => evaluate_area(a),
        Err(e) => {
            report.observed = format!("cannot build: {e}");
            return report;
        }
    };
    report.findings = findings_of(&eval);
    if eval.triggered() != [case.rule] {
        report.observed = eval.describe();
        return report;
    }
    if let Some(missing) = case
        .message
        .iter()
        .find(|text| !report.findings.iter().any(|f| f.contains(*text)))
    {
        report.observed = format!("the finding does not say {missing:?}: {}", eval.describe());
        return report;
    }
    let seen = match (&built, consequence) {
        (Ok(CaseInput::Bytes(b)), Some(c)) => observe(b, case.rule, c),
        // A header area no writer may produce: refused above, there is
        // no file to open.
        (Ok(CaseInput::Area(_)), Some(Consequence::Refuse)) => {
            Ok("refused by the header checks (a writer-side case)".into())
        }
        _ => Err("no consequence to check".into()),
    };
    match seen {
        Ok(what) => {
            report.passed = true;
            report.observed = what;
        }
        Err(why) => report.observed = format!("consequence: {why}"),
    }
    report
}
