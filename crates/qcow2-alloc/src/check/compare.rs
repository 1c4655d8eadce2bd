//! Compares the computed refcounts with the stored ones and, in repair
//! mode, corrects the stored ones in place. Mismatches are reported under
//! `RC-MATCH`, clusters in two roles under `RC-OVERLAP`.

use qcow2_format::rules;

use super::error::CheckResult;
use super::image::Image;
use super::refmap::{role, RefMap};
use super::report::{CheckReport, FindingKind};
use super::stored::Stored;

/// What a pass may fix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fix {
    /// Lower refcounts that are too high.
    pub leaks: bool,
    /// Raise refcounts that are too low, fix COPIED flags, rebuild.
    pub errors: bool,
}

impl Fix {
    /// Only report.
    pub const NONE: Self = Self {
        leaks: false,
        errors: false,
    };

    /// Whether anything may be written.
    pub fn any(self) -> bool {
        self.leaks || self.errors
    }
}

/// The outcome of a comparison.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Compared {
    /// A referenced cluster has a stored refcount of 0: only a rebuild of
    /// the refcount structure fixes that.
    pub rebuild: bool,
    /// Highest cluster with a stored or computed refcount above 0.
    pub highest: u64,
}

/// Roles of a cluster that uses two different roles, as text.
fn overlap(map: &RefMap, cluster: u64) -> Option<String> {
    let roles = map.roles(cluster);
    (roles.count_ones() > 1).then(|| role::names(roles).replace(", ", " and "))
}

/// Compares every tracked cluster, fixing what `fix` allows.
pub(crate) fn compare(
    img: &Image<'_>,
    map: &RefMap,
    stored: &mut Stored<'_, '_>,
    report: &mut CheckReport,
    fix: Fix,
) -> CheckResult<Compared> {
    let cs = img.cluster_size();
    let per_block = stored.per_block();
    let nb = map.len();
    let mut out = Compared::default();
    for index in 0..nb.div_ceil(per_block) {
        let start = index * per_block;
        let end = (start + per_block).min(nb);
        let block = stored.block_of(index);
        if block == 0 && map.all_zero(start, end) {
            continue;
        }
        if block != 0 && !img.geo.is_aligned(block) {
            report.record(
                FindingKind::CheckError,
                Some(img.area.header.refcount_table_offset.get() + index * 8),
                Some(rules::RC_TABLE_ENTRY),
                format!(
                    "cannot read the refcounts of clusters {start}..{end}: refcount block offset {block:#x} is not cluster aligned"
                ),
                end - start,
            );
            continue;
        }
        for cluster in start..end {
            let computed = map.get(cluster);
            let on_disk = match stored.get(cluster)? {
                Ok(value) => value,
                Err(_) => continue,
            };
            if on_disk > 0 || computed > 0 {
                out.highest = cluster;
            }
            let at = Some(cluster * cs);
            if on_disk == computed {
                if let Some(roles) = overlap(map, cluster).filter(|_| computed > 0) {
                    report.record(
                        FindingKind::Corruption,
                        at,
                        Some(map.hook_rule(cluster).unwrap_or(rules::RC_OVERLAP)),
                        format!("cluster {cluster} is used as {roles} at the same time"),
                        1,
                    );
                }
                continue;
            }
            // A mismatch is one count, as in qemu-img. When the cluster also
            // plays two roles the overlap is the deeper fault (fixing the
            // refcount leaves it), so that finding carries `RC-OVERLAP`.
            let mut message = format!("cluster {cluster} refcount={on_disk} reference={computed}");
            let mut rule = rules::RC_MATCH;
            if let Some(roles) = overlap(map, cluster) {
                message.push_str(&format!(" (used as {roles})"));
                rule = rules::RC_OVERLAP;
            }
            if let Some(hook) = map.hook_rule(cluster) {
                rule = hook;
            }
            let fixable = on_disk != 0
                && ((on_disk > computed && fix.leaks) || (on_disk < computed && fix.errors));
            if on_disk == 0 {
                out.rebuild = true;
            }
            if fixable && stored.set(cluster, computed)? {
                if on_disk > computed {
                    report.leaks_fixed += 1;
                } else {
                    report.corruptions_fixed += 1;
                }
                report.record(FindingKind::Repaired, at, Some(rule), message, 1);
                continue;
            }
            let kind = if on_disk < computed {
                FindingKind::Corruption
            } else {
                FindingKind::Leak
            };
            report.record(kind, at, Some(rule), message, 1);
        }
    }
    Ok(out)
}
