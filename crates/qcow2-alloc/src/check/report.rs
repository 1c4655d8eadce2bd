//! The result of a check: counts shaped like `qemu-img check` and the findings behind them.

use core::fmt;

use qcow2_format::{HostOffset, RuleId};

/// At most this many findings are kept; the counts stay exact beyond it.
pub const MAX_FINDINGS: usize = 10_000;

/// What a finding counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FindingKind {
    /// Counted in [`CheckReport::corruptions`]: a refcount too low, a
    /// reference beyond the end of the file, overlapping metadata, a
    /// misaligned offset, a wrong COPIED flag...
    Corruption,
    /// Counted in [`CheckReport::leaks`]: a refcount higher than the number
    /// of references.
    Leak,
    /// Counted in [`CheckReport::check_errors`]: the check could not read or
    /// interpret something.
    CheckError,
    /// A corruption or leak that repair fixed (counted in the `_fixed` fields).
    Repaired,
    /// Something that breaks a rule of docs/spec.md but that `qemu-img
    /// check` does not count (readers tolerate it): reported, not counted.
    Note,
}

impl FindingKind {
    /// The word `qemu-img` starts such a line with.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Corruption => "ERROR",
            Self::Leak => "Leaked",
            Self::CheckError => "Check error",
            Self::Repaired => "Repaired",
            Self::Note => "Note",
        }
    }
}

/// One problem found (or fixed), with where it is and the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How it is counted.
    pub kind: FindingKind,
    /// The host offset of the offending entry or cluster, when there is one.
    pub offset: Option<HostOffset>,
    /// The rule of `docs/spec.md` it breaks, when one applies.
    pub rule: Option<RuleId>,
    /// What is wrong.
    pub message: String,
    /// How many times it was counted (a table reached through several
    /// snapshots is reported once, counted once per path, as `qemu-img` does).
    pub times: u64,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.label(), self.message)?;
        match (self.offset, self.rule) {
            (Some(offset), Some(rule)) => write!(f, " (offset {offset}, {rule})")?,
            (Some(offset), None) => write!(f, " (offset {offset})")?,
            (None, Some(rule)) => write!(f, " ({rule})")?,
            (None, None) => {}
        }
        if self.times > 1 {
            write!(f, " [x{}]", self.times)?;
        }
        Ok(())
    }
}

/// Counts and findings of one check (or of the repair pass of a repair).
///
/// The numeric fields have the meaning of `qemu-img check`'s fields of the
/// same name (`check_errors` is "check-errors", and so on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Corruptions: structures that are wrong and may lose data.
    pub corruptions: u64,
    /// Leaked clusters: refcounts higher than their references.
    pub leaks: u64,
    /// Internal errors: things the check could not read or evaluate.
    pub check_errors: u64,
    /// Corruptions a repair fixed.
    pub corruptions_fixed: u64,
    /// Leaks a repair fixed.
    pub leaks_fixed: u64,
    /// Clusters of the virtual disk (virtual size in whole 512-byte sectors,
    /// divided by the cluster size, rounded up).
    pub total_clusters: u64,
    /// Guest clusters with a host cluster (data, preallocated zero or
    /// compressed) in the active L2 tables.
    pub allocated_clusters: u64,
    /// Allocated guest clusters whose host cluster does not follow the
    /// previous one of the same L2 table; every compressed cluster counts.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters in the active L2 tables.
    pub compressed_clusters: u64,
    /// One past the last byte of the last cluster in use (referenced or with
    /// a non-zero refcount).
    pub image_end_offset: u64,
    /// Whether a repair rebuilt the refcount table and blocks.
    pub rebuilt: bool,
    /// The findings, at most [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
    /// Findings dropped after [`MAX_FINDINGS`].
    pub findings_omitted: u64,
}

impl CheckReport {
    /// No corruption, leak or check error.
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }

    /// Records a finding counted `times` times.
    pub(crate) fn record(
        &mut self,
        kind: FindingKind,
        offset: Option<u64>,
        rule: Option<RuleId>,
        message: String,
        times: u64,
    ) {
        if times == 0 {
            return;
        }
        // Repairs are counted by the caller, which knows whether a leak or a
        // corruption was fixed.
        let counter = match kind {
            FindingKind::Corruption => Some(&mut self.corruptions),
            FindingKind::Leak => Some(&mut self.leaks),
            FindingKind::CheckError => Some(&mut self.check_errors),
            FindingKind::Repaired | FindingKind::Note => None,
        };
        if let Some(counter) = counter {
            *counter = counter.saturating_add(times);
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding {
                kind,
                offset: offset.map(HostOffset),
                rule,
                message,
                times,
            });
        } else {
            self.findings_omitted = self.findings_omitted.saturating_add(1);
        }
    }

    /// Appends a finding without counting it (its count is already in the
    /// report).
    pub(crate) fn push(&mut self, finding: Finding) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.findings_omitted = self.findings_omitted.saturating_add(1);
        }
    }

    /// Records a corruption.
    pub(crate) fn corruption(&mut self, offset: Option<u64>, rule: RuleId, message: String) {
        self.record(FindingKind::Corruption, offset, Some(rule), message, 1);
    }
}
