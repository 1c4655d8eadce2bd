//! The conformance suite as a test: every rule of docs/spec.md proven by positive and negative cases.

#[test]
fn every_rule_is_proven() {
    let report = qcow2_conformance::run();
    let mut problems = report.errors.clone();
    for r in report.rules.iter().filter(|r| !r.ok()) {
        problems.push(format!(
            "{}: positive {}/{}, negative {}/{}; {}",
            r.id,
            r.positive_passed,
            r.positive_total,
            r.negative_passed,
            r.negative_total,
            r.failures.join("; ")
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        report.rules.len() >= 40,
        "only {} rules",
        report.rules.len()
    );
    every_case_is_auditable(&report);
}

/// Each case names its bytes by SHA-256 and says how they were made; the
/// stored goldens hash to what the report says.
fn every_case_is_auditable(report: &qcow2_conformance::SuiteReport) {
    use qcow2_conformance::case_report::CaseKind;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stored = 0;
    for rule in &report.rules {
        let count = |kind| rule.cases.iter().filter(|c| c.kind == kind).count();
        assert_eq!(
            count(CaseKind::Positive),
            rule.positive_total,
            "{}",
            rule.id
        );
        assert_eq!(
            count(CaseKind::Negative),
            rule.negative_total,
            "{}",
            rule.id
        );
        for case in &rule.cases {
            let what = format!("{} {:?}", rule.id, case.name);
            assert!(case.passed, "{what}: {}", case.observed);
            assert!(!case.image.made_by.is_empty(), "{what}: no provenance");
            assert!(
                !case.expected.is_empty() && !case.observed.is_empty(),
                "{what}"
            );
            let sha = case
                .image
                .sha256
                .as_deref()
                .unwrap_or_else(|| panic!("{what}: no SHA-256"));
            assert_eq!(sha.len(), 64, "{what}");
            if case.kind == CaseKind::Positive {
                assert!(case.findings.is_empty(), "{what}: {:?}", case.findings);
            } else {
                assert!(
                    case.findings.iter().all(|f| f.contains(rule.id.as_str())),
                    "{what}: a finding of another rule: {:?}",
                    case.findings
                );
                assert!(!case.findings.is_empty(), "{what}: nothing found");
            }
            if let Some(path) = case.image.path.as_deref() {
                let text = std::fs::read_to_string(root.join(path)).unwrap();
                let bytes = qcow2_conformance::sparse_hex::parse(&text).unwrap();
                assert_eq!(qcow2_conformance::corpus::sha256_hex(&bytes), sha, "{what}");
                stored += 1;
            }
        }
    }
    assert!(stored > 0, "no case names a stored golden");
}

#[test]
fn spec_and_registry_disagreement_is_detected() {
    let mut spec = qcow2_conformance::spec_doc::load().unwrap();
    spec.push("HDR-NOT-A-RULE".to_string());
    let removed = spec.remove(0);
    let errors = qcow2_conformance::runner::compare_ids(&spec);
    assert!(
        errors.iter().any(|e| e.contains("HDR-NOT-A-RULE")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains(&removed)), "{errors:?}");
}

#[test]
fn writer_golden_images_are_current() {
    let dir = qcow2_conformance::engine_images::golden_writer_dir();
    let stale = qcow2_conformance::engine_images::stale_golden(&dir).expect("build");
    assert!(
        stale.is_empty(),
        "conformance/golden/writer is stale (run `cargo xtask golden`): {stale:?}"
    );
}

#[test]
fn a_positive_fails_on_another_rules_finding_and_an_unparsable_golden_is_an_error() {
    use qcow2_conformance::corpus::{Origin, TestImage};
    use qcow2_conformance::negatives::{self, CaseInput};
    let mut images = qcow2_conformance::corpus::load().expect("corpus");
    let case = negatives::all()
        .into_iter()
        .find(|c| c.rule.as_str() == "RC-MATCH")
        .expect("an RC-MATCH negative");
    let Ok(CaseInput::Bytes(bytes)) = (case.build)(&images) else {
        panic!("the RC-MATCH negative builds no image");
    };
    images.push(TestImage {
        name: "rc-mismatch-posing-as-positive".into(),
        origin: Origin::Writer,
        bytes,
        made_by: "the RC-MATCH negative".into(),
        path: None,
    });
    let reports = qcow2_conformance::runner::run_on(&images);
    // RC-TABLE-ENTRY holds on that image, but the image has a finding of
    // another rule, so it is no positive for any rule.
    let rule = reports
        .iter()
        .find(|r| r.id == "RC-TABLE-ENTRY")
        .expect("RC-TABLE-ENTRY report");
    assert!(
        rule.failures
            .iter()
            .any(|f| f.contains("rc-mismatch-posing-as-positive")),
        "{:?}",
        rule.failures
    );
    assert!(!rule.ok());

    images.push(TestImage {
        name: "garbage".into(),
        origin: Origin::Qemu,
        bytes: b"not an image".to_vec(),
        made_by: "a literal".into(),
        path: None,
    });
    let errors = qcow2_conformance::runner::unparsable(&images);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("garbage"), "{errors:?}");
}

#[test]
fn a_consequence_that_does_not_happen_fails() {
    use qcow2_conformance::consequence::{observe, Consequence};
    use qcow2_format::rules;
    let images = qcow2_conformance::corpus::load().expect("corpus");
    let plain = qcow2_conformance::negatives::plain(&images).expect("plain image");
    // A clean image opens: "refuse" and "read-only" do not happen.
    assert!(observe(&plain, rules::HDR_MAGIC, Consequence::Refuse).is_err());
    assert!(observe(&plain, rules::FEAT_CORRUPT, Consequence::ReadOnly).is_err());
    // A wrong magic is refused, naming the rule.
    let mut bad = plain.clone();
    bad[0] = 0;
    let seen = observe(&bad, rules::HDR_MAGIC, Consequence::Refuse).expect("refused");
    assert!(seen.contains("HDR-MAGIC"), "{seen}");
    // Refused, but not for the rule the case claims.
    assert!(observe(&bad, rules::HDR_VERSION, Consequence::Refuse).is_err());
    // An unknown autoclear bit is cleared by a rewrite, an unknown
    // compatible bit kept.
    let mut auto = plain.clone();
    auto[95] |= 0x80;
    auto[87] |= 0x40;
    let seen = observe(&auto, rules::FEAT_UNKNOWN_COMPAT, Consequence::IgnoreKeep).expect("kept");
    assert!(seen.contains("autoclear bits cleared"), "{seen}");
}

#[test]
fn qemu_img_reads_the_built_snapshot_as_a_clean_image_with_one_snapshot() {
    let images = qcow2_conformance::corpus::load().expect("corpus");
    let image = qcow2_conformance::corpus::find(&images, "built-snapshot-data").unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("built-snapshot");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("snapshot.qcow2");
    std::fs::write(&file, &image.bytes).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("qemu-img")
            .args(args)
            .arg(&file)
            .output()
            .expect("qemu-img (install qemu-utils)");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run(&["check", "-f", "qcow2"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(&["snapshot", "-l"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("golden"), "{text}");
}

/// docs/normative-statements.md maps every one of QEMU's normative
/// statements to rule IDs that docs/spec.md defines: no NONE, no unknown
/// ID, numbered N1 to the count its summary states, each used rule listed.
#[test]
fn every_normative_statement_has_a_defined_rule() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = std::fs::read_to_string(root.join("docs/spec.md")).unwrap();
    let defined: std::collections::BTreeSet<String> = qcow2_conformance::spec_doc::rule_ids(&spec)
        .into_iter()
        .collect();
    let text = std::fs::read_to_string(root.join("docs/normative-statements.md")).unwrap();
    let mut numbers = Vec::new();
    let statement_row = |l: &&str| {
        l.strip_prefix("| N")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    };
    for line in text.lines().filter(statement_row) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let n: usize = cells[0].trim_start_matches('N').parse().unwrap();
        numbers.push(n);
        let ids = cells.last().unwrap();
        assert!(!ids.contains("NONE"), "N{n} has no rule: {line}");
        let named: Vec<&str> = ids
            .split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'))
            .filter(|w| {
                w.len() > 3 && w.contains('-') && w.chars().next().unwrap().is_ascii_uppercase()
            })
            .collect();
        assert!(!named.is_empty(), "N{n} names no rule ID: {line}");
        for id in named {
            assert!(
                defined.contains(id),
                "N{n} names {id}, which docs/spec.md does not define"
            );
        }
    }
    assert_eq!(
        numbers,
        (1..=numbers.len()).collect::<Vec<_>>(),
        "statements are not N1..Nk in order"
    );
    let summary = format!("all {} covered", numbers.len());
    assert!(
        text.contains(&summary),
        "the summary does not say {summary:?}"
    );
}

/// The writer-side clauses of HDR-SIZE (a multiple of 512), HDR-LENGTH
/// (zero header padding) and HDR-FIRST-CLUSTER (nothing else in cluster 0):
/// every image our writer makes passes, and a lapse planted in each is
/// reported.
#[test]
fn writer_lapses_in_cluster_zero_are_reported() {
    let images = qcow2_conformance::engine_images::golden_images().unwrap();
    assert!(!images.is_empty());
    for (name, bytes) in &images {
        let lapses = qcow2_conformance::writer_structure::writer_lapses(bytes);
        assert!(lapses.is_empty(), "{name}: {lapses:?}");
    }
    let (name, clean) = &images[0];
    let header_length = u32::from_be_bytes(clean[100..104].try_into().unwrap()) as usize;
    assert!(header_length > 105, "{name} has header padding");
    let mut padded = clean.clone();
    padded[header_length - 1] = 1;
    let found = qcow2_conformance::writer_structure::writer_lapses(&padded);
    assert!(
        found.len() == 1 && found[0].starts_with("HDR-LENGTH"),
        "{found:?}"
    );
    let mut tail = clean.clone();
    let cluster = 1usize << u32::from_be_bytes(clean[20..24].try_into().unwrap());
    tail[cluster - 1] = 1;
    let found = qcow2_conformance::writer_structure::writer_lapses(&tail);
    assert!(
        found.len() == 1 && found[0].starts_with("HDR-FIRST-CLUSTER"),
        "{found:?}"
    );
    let mut odd = clean.clone();
    let size = u64::from_be_bytes(odd[24..32].try_into().unwrap());
    odd[24..32].copy_from_slice(&(size - 1).to_be_bytes());
    let found = qcow2_conformance::writer_structure::writer_lapses(&odd);
    assert!(
        found.len() == 1 && found[0].starts_with("HDR-SIZE"),
        "{found:?}"
    );
}
