//! The human output: `qemu-img check`'s summary lines, word for word.

use std::fmt::Write;

use qcow2_alloc::check::CheckReport;

/// Renders `report`; `repaired` is the repair pass when a repair fixed
/// something (its fixed counts are announced first, as qemu-img does).
pub fn render(report: &CheckReport, repaired: Option<&CheckReport>) -> String {
    let mut out = String::new();
    if let Some(pass) = repaired {
        let _ = write!(
            out,
            "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
            pass.leaks_fixed, pass.corruptions_fixed
        );
    }
    if report.corruptions == 0 && report.leaks == 0 && report.check_errors == 0 {
        out.push_str("No errors were found on the image.\n");
    } else {
        if report.corruptions > 0 {
            let _ = write!(
                out,
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                report.corruptions
            );
        }
        if report.leaks > 0 {
            let _ = write!(
                out,
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                report.leaks
            );
        }
        if report.check_errors > 0 {
            let _ = write!(
                out,
                "\n{} internal errors have occurred during the check.\n",
                report.check_errors
            );
        }
    }
    if report.total_clusters != 0 && report.allocated_clusters != 0 {
        let allocated = report.allocated_clusters as f64;
        let _ = writeln!(
            out,
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
            report.allocated_clusters,
            report.total_clusters,
            allocated * 100.0 / report.total_clusters as f64,
            report.fragmented_clusters as f64 * 100.0 / allocated,
            report.compressed_clusters as f64 * 100.0 / allocated,
        );
    }
    if report.image_end_offset != 0 {
        let _ = writeln!(out, "Image end offset: {}", report.image_end_offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_and_leaky_reports() {
        let clean = CheckReport {
            total_clusters: 64,
            allocated_clusters: 2,
            fragmented_clusters: 1,
            image_end_offset: 720896,
            ..CheckReport::default()
        };
        assert_eq!(
            render(&clean, None),
            "No errors were found on the image.\n\
             2/64 = 3.12% allocated, 50.00% fragmented, 0.00% compressed clusters\n\
             Image end offset: 720896\n"
        );
        let leaky = CheckReport {
            leaks: 1,
            corruptions: 2,
            ..clean.clone()
        };
        let text = render(&leaky, None);
        assert!(text.starts_with("\n2 errors were found on the image.\n"));
        assert!(text.contains("\n1 leaked clusters were found on the image.\n"));
        let fixed = CheckReport {
            leaks_fixed: 1,
            ..CheckReport::default()
        };
        assert!(render(&clean, Some(&fixed)).starts_with(
            "The following inconsistencies were found and repaired:\n\n    1 leaked clusters\n    0 corruptions\n\nDouble checking the fixed image now...\nNo errors"
        ));
    }
}
