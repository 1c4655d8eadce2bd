//! `cargo xtask conformance [--json]`: one line per rule (cases passed, the
//! consequence checked through the engine); non-zero exit on any failure.

/// Runs the conformance suite and prints its report.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let json = match args {
        [] => false,
        [flag] if flag == "--json" => true,
        _ => return Err("usage: cargo xtask conformance [--json]".to_string()),
    };
    let report = qcow2_conformance::run();
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        println!(
            "{:<24} {:>9} {:>9}  {:<12} status",
            "rule", "positive", "negative", "consequence"
        );
        for r in &report.rules {
            let status = if r.ok() { "ok" } else { "FAIL" };
            let consequence = match r.consequence {
                Some(c) => serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                None => "?".into(),
            };
            println!(
                "{:<24} {:>4}/{:<4} {:>4}/{:<4}  {consequence:<12} {status}",
                r.id, r.positive_passed, r.positive_total, r.negative_passed, r.negative_total
            );
            for f in &r.failures {
                println!("    {f}");
            }
        }
        for e in &report.errors {
            println!("suite error: {e}");
        }
        let proven = report.rules.iter().filter(|r| r.ok()).count();
        println!(
            "{proven} of {} rules proven on {} images",
            report.rules.len(),
            report.images
        );
    }
    if report.ok() {
        Ok(())
    } else {
        Err("conformance failures".to_string())
    }
}
