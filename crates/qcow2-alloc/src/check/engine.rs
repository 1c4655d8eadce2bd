//! One check pass, optionally repairing, in the order `qemu-img check`
//! uses: count references, compare refcounts (fix or rebuild), then check
//! the COPIED flags against the now-correct refcounts.

use qcow2_format::features::{INCOMPAT_BIT1, INCOMPAT_DIRTY};
use qcow2_io::Storage;

use super::compare::{compare, Fix};
use super::copied::check_copied;
use super::error::{CheckError, CheckResult};
use super::extra::ExtraReferences;
use super::image::Image;
use super::report::{CheckReport, FindingKind};
use super::stored::Stored;
use super::walk::{total_clusters, walk};
use crate::repair::{header, rebuild};

/// Runs one pass over the image in `storage`.
pub(crate) fn run(
    storage: &dyn Storage,
    extra: &[&dyn ExtraReferences],
    fix: Fix,
) -> CheckResult<CheckReport> {
    let img = Image::open(storage)?;
    let mut report = CheckReport {
        total_clusters: total_clusters(&img),
        ..CheckReport::default()
    };
    if img.no_refcount_table() {
        report.corruption(
            Some(48),
            qcow2_format::rules::HDR_REFTABLE_CLUSTERS,
            "the image has no refcount table (offset 0, 0 clusters): every refcount reads as 0; \
             `check -r all` rebuilds it"
                .into(),
        );
    }
    let walked = walk(&img, &mut report, extra, true)?;
    let mut stored = Stored::load(&img)?;
    let before_compare = report.clone();
    let compared = compare(&img, &walked.map, &mut stored, &mut report, Fix::NONE)?;
    let rebuild_needed =
        walked.health.broken || compared.rebuild || (fix.errors && walked.health.outside);
    if rebuild_needed && fix.errors {
        drop(stored);
        return rebuild_and_finish(storage, extra, fix, img, report);
    }
    let mut highest = compared.highest;
    if fix.any() {
        if rebuild_needed {
            return Err(CheckError::RebuildNeeded);
        }
        if report.leaks > 0 || report.corruptions > 0 {
            report = before_compare;
            highest = compare(&img, &walked.map, &mut stored, &mut report, fix)?.highest;
            stored.write_dirty()?;
        }
    }
    finish(&img, &walked.map, &mut stored, report, fix, highest)
}

/// Rebuilds the refcount structure, then recounts on the new one.
fn rebuild_and_finish(
    storage: &dyn Storage,
    extra: &[&dyn ExtraReferences],
    fix: Fix,
    old_img: Image<'_>,
    old: CheckReport,
) -> CheckResult<CheckReport> {
    let placed = rebuild::rebuild(&old_img, extra)?;
    drop(old_img);
    let img = Image::open(storage)?;
    let mut report = CheckReport {
        total_clusters: total_clusters(&img),
        ..CheckReport::default()
    };
    let walked = walk(&img, &mut report, extra, true)?;
    let mut stored = Stored::load(&img)?;
    let leak_fix = Fix {
        leaks: fix.leaks,
        errors: false,
    };
    let compared = compare(&img, &walked.map, &mut stored, &mut report, leak_fix)?;
    stored.write_dirty()?;
    if compared.rebuild || walked.health.broken {
        report.record(
            FindingKind::CheckError,
            Some(placed.table_offset),
            None,
            "the rebuilt refcount structure is still broken".into(),
            1,
        );
    }
    let fresh_findings = std::mem::take(&mut report.findings);
    let mut merged = report;
    merged.findings = old.findings;
    merged.findings_omitted += old.findings_omitted;
    merged.rebuilt = true;
    // As qemu-img counts: what the old structure got wrong and the new one
    // does not. Leaks of the old structure itself are not counted.
    merged.corruptions_fixed =
        old.corruptions_fixed + old.corruptions.saturating_sub(merged.corruptions);
    merged.leaks_fixed = old.leaks_fixed + old.leaks.saturating_sub(merged.leaks);
    merged.record(
        FindingKind::Repaired,
        Some(placed.table_offset),
        None,
        format!(
            "rebuilt the refcount structure: a {}-cluster refcount table at {:#x} and {} refcount blocks after it",
            placed.table_clusters, placed.table_offset, placed.blocks
        ),
        1,
    );
    for finding in fresh_findings {
        merged.push(finding);
    }
    finish(
        &img,
        &walked.map,
        &mut stored,
        merged,
        fix,
        compared.highest,
    )
}

/// The COPIED flag pass, the image end, and marking a repaired image clean.
fn finish(
    img: &Image<'_>,
    map: &super::refmap::RefMap,
    stored: &mut Stored<'_, '_>,
    mut report: CheckReport,
    fix: Fix,
    highest: u64,
) -> CheckResult<CheckReport> {
    let repair = fix.errors
        || (fix.leaks && report.check_errors == 0 && report.corruptions == 0 && report.leaks == 0);
    check_copied(img, map, stored, &mut report, repair)?;
    report.image_end_offset = (highest + 1) * img.cluster_size();
    if fix.any() && report.check_errors == 0 && report.corruptions == 0 {
        // Bit 1 means "corrupt" only without a dedup extension (design §3).
        let mut clear = INCOMPAT_DIRTY;
        if img.area.dedup().is_none() {
            clear |= INCOMPAT_BIT1;
        }
        header::clear_incompatible(img, clear)?;
    }
    Ok(report)
}
