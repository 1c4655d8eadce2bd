//! Counting one reference: the range check against the end of the file and
//! the increment of every cluster the range touches.

use qcow2_format::RuleId;

use super::image::Image;
use super::refmap::RefMap;
use super::report::{CheckReport, FindingKind};

/// What a reference is, for the role map and for messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ref {
    /// Role bit of [`super::refmap::role`].
    pub role: u8,
    /// The rule a bad reference of this kind breaks.
    pub rule: RuleId,
    /// What is referenced, for messages ("L2 table").
    pub what: &'static str,
}

/// The computed refcounts and the report they feed.
pub(crate) struct Counter<'r> {
    /// Computed refcounts.
    pub map: RefMap,
    /// Where findings go.
    pub report: &'r mut CheckReport,
    /// Largest refcount the image's refcount width holds.
    pub max: u64,
    /// Cluster size.
    pub cluster_size: u64,
    /// File length.
    pub file_len: u64,
}

impl<'r> Counter<'r> {
    /// Notes that the clusters of `offset..offset + size` belong to a
    /// hook's structure whose rule is `rule`.
    pub fn set_hook_rule(&mut self, offset: u64, size: u64, rule: qcow2_format::RuleId) {
        if size == 0 {
            return;
        }
        let first = offset / self.cluster_size;
        let last = (offset.saturating_add(size) - 1) / self.cluster_size;
        for cluster in first..=last.min(self.map.len().saturating_sub(1)) {
            self.map.set_hook_rule(cluster, rule);
        }
    }

    /// A counter for `img` tracking the clusters of its file.
    pub fn new(img: &Image<'_>, map: RefMap, report: &'r mut CheckReport) -> Self {
        Self {
            map,
            report,
            max: img.order.max_refcount(),
            cluster_size: img.cluster_size(),
            file_len: img.file_len,
        }
    }

    /// Counts `times` references to the bytes `offset..offset + size`
    /// (every cluster they touch gets `times` more). A range that ends one
    /// cluster or more past the end of the file is a corruption and is not
    /// counted; a range ending less than a cluster past it is tolerated, as
    /// the last cluster may be partly allocated. `at` is where the reference
    /// itself is stored. Returns whether the range was counted.
    pub fn add(&mut self, at: Option<u64>, offset: u64, size: u64, r: Ref, times: u64) -> bool {
        if size == 0 || times == 0 {
            return true;
        }
        let end = offset.saturating_add(size);
        if end.saturating_sub(self.file_len) >= self.cluster_size {
            self.report.record(
                FindingKind::Corruption,
                at.or(Some(offset)),
                Some(r.rule),
                format!(
                    "{} at {offset:#x} (size {size:#x}) ends one cluster or more past the end of the file ({:#x})",
                    r.what, self.file_len
                ),
                times,
            );
            return false;
        }
        let first = offset / self.cluster_size;
        let last = (end - 1) / self.cluster_size;
        if !self.map.grow(last + 1) {
            self.report.record(
                FindingKind::CheckError,
                Some(offset),
                Some(r.rule),
                format!("{} at {offset:#x}: too many clusters to track", r.what),
                times,
            );
            return false;
        }
        for cluster in first..=last {
            let lost = self.map.add(cluster, times, r.role, self.max);
            if lost > 0 {
                // The reference is sound; the refcount cannot count it.
                self.report.record(
                    FindingKind::Corruption,
                    Some(cluster * self.cluster_size),
                    Some(qcow2_format::rules::RC_MATCH),
                    format!(
                        "refcount of cluster {cluster} would overflow (largest refcount {}) counting {}",
                        self.max, r.what
                    ),
                    lost,
                );
            }
        }
        true
    }
}
