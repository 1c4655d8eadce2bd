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
