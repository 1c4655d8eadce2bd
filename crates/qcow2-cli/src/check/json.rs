//! `check --output=json`: the keys of `qemu-img check --output=json`, in its
//! order, each optional key omitted when it is zero as qemu-img omits it.

use serde::Serialize;

use qcow2_alloc::check::CheckReport;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The object qemu-img prints (its QDict order).
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Check<'a> {
    #[serde(skip_serializing_if = "is_zero")]
    image_end_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    compressed_clusters: u64,
    #[serde(skip_serializing_if = "is_zero")]
    total_clusters: u64,
    #[serde(skip_serializing_if = "is_zero")]
    corruptions: u64,
    #[serde(skip_serializing_if = "is_zero")]
    corruptions_fixed: u64,
    check_errors: u64,
    #[serde(skip_serializing_if = "is_zero")]
    leaks: u64,
    #[serde(skip_serializing_if = "is_zero")]
    leaks_fixed: u64,
    #[serde(skip_serializing_if = "is_zero")]
    allocated_clusters: u64,
    filename: &'a str,
    format: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    fragmented_clusters: u64,
    /// Our own key: the dedup table's findings and numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup: Option<Dedup>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Dedup {
    indexed_clusters: u64,
    shared_clusters: u64,
    bytes_saved: u64,
    findings: Vec<DedupFindingJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct DedupFindingJson {
    rule: &'static str,
    offset: u64,
    severity: &'static str,
    message: String,
}

/// Renders `report` for the image named `filename` (as given on the command line).
pub fn render(
    report: &CheckReport,
    filename: &str,
    dedup: Option<&qcow2_dedup::Verification>,
) -> Result<Vec<u8>, serde_json::Error> {
    let dedup = dedup.map(|v| Dedup {
        indexed_clusters: v.stats.indexed_clusters,
        shared_clusters: v.stats.shared_clusters,
        bytes_saved: v.stats.bytes_saved,
        findings: v
            .findings
            .iter()
            .map(|f| DedupFindingJson {
                rule: f.rule.as_str(),
                offset: f.offset,
                severity: match f.severity {
                    qcow2_dedup::Severity::Corruption => "corruption",
                    qcow2_dedup::Severity::Note => "note",
                },
                message: f.message.clone(),
            })
            .collect(),
    });
    let check = Check {
        image_end_offset: report.image_end_offset,
        compressed_clusters: report.compressed_clusters,
        total_clusters: report.total_clusters,
        corruptions: report.corruptions,
        corruptions_fixed: report.corruptions_fixed,
        check_errors: report.check_errors,
        leaks: report.leaks,
        leaks_fixed: report.leaks_fixed,
        allocated_clusters: report.allocated_clusters,
        filename,
        format: "qcow2",
        fragmented_clusters: report.fragmented_clusters,
        dedup,
    };
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    check.serialize(&mut ser)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_keys_are_omitted_in_qemu_order() {
        let report = CheckReport {
            leaks: 1,
            total_clusters: 64,
            image_end_offset: 720896,
            allocated_clusters: 2,
            fragmented_clusters: 1,
            ..CheckReport::default()
        };
        let text = String::from_utf8(render(&report, "leak.qcow2", None).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\n    \"image-end-offset\": 720896,\n    \"total-clusters\": 64,\n    \"check-errors\": 0,\n    \"leaks\": 1,\n    \"allocated-clusters\": 2,\n    \"filename\": \"leak.qcow2\",\n    \"format\": \"qcow2\",\n    \"fragmented-clusters\": 1\n}\n"
        );
    }
}
