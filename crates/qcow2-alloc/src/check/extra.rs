//! The hook through which other crates add the clusters their structures
//! use (the dedup table, for example), so the check counts them.

use qcow2_format::{ClusterGeometry, HeaderArea, HostOffset, RuleId};
use qcow2_io::Storage;

use super::error::CheckResult;
use super::image::Image;
use super::refmap::role;
use super::refs::{Counter, Ref};
use super::report::FindingKind;

/// What a hook sees of the image being checked.
#[derive(Clone, Copy)]
pub struct ImageView<'a> {
    /// The image file.
    pub storage: &'a dyn Storage,
    /// Its parsed header area (header, extensions, backing file name).
    pub area: &'a HeaderArea,
    /// Its cluster size.
    pub geometry: ClusterGeometry,
    /// The file length when the check started.
    pub file_len: u64,
}

impl std::fmt::Debug for ImageView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageView")
            .field("area", &self.area)
            .field("geometry", &self.geometry)
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

/// Where a hook adds its references.
pub struct References<'c, 'r> {
    counter: &'c mut Counter<'r>,
}

impl std::fmt::Debug for References<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("References").finish_non_exhaustive()
    }
}

impl References<'_, '_> {
    /// Counts one reference to every host cluster that the bytes
    /// `offset..offset + len` touch. `what` names the structure in messages
    /// and `rule` is the rule a bad reference breaks; refcount mismatches
    /// and overlaps of those clusters are reported under it too. Returns false (and
    /// records a corruption) when the range ends one cluster or more past
    /// the end of the file.
    pub fn add(&mut self, offset: HostOffset, len: u64, what: &'static str, rule: RuleId) -> bool {
        let r = Ref {
            role: role::OTHER,
            rule,
            what,
        };
        let counted = self.counter.add(None, offset.get(), len, r, 1);
        if counted {
            self.counter.set_hook_rule(offset.get(), len, rule);
        }
        counted
    }

    /// Records a corruption the hook found in its own structures, at the
    /// host offset of the offending bytes.
    pub fn corruption(&mut self, offset: HostOffset, rule: RuleId, message: String) {
        self.counter.report.record(
            FindingKind::Corruption,
            Some(offset.get()),
            Some(rule),
            message,
            1,
        );
    }
}

/// A source of references the check does not know about by itself.
///
/// Crates that add refcounted structures to the format implement this so
/// that `check` counts their clusters instead of reporting them as leaks.
pub trait ExtraReferences {
    /// A short name for messages ("dedup table").
    fn name(&self) -> &str;

    /// Adds every host range the structures use, through `refs`. An error
    /// stops the check ([`CheckError::Extra`](super::CheckError::Extra) is
    /// the natural one to return).
    fn add_references(
        &self,
        image: &ImageView<'_>,
        refs: &mut References<'_, '_>,
    ) -> CheckResult<()>;
}

/// Runs every hook.
pub(crate) fn count(
    img: &Image<'_>,
    counter: &mut Counter<'_>,
    extra: &[&dyn ExtraReferences],
) -> CheckResult<()> {
    let view = ImageView {
        storage: img.storage,
        area: &img.area,
        geometry: img.geo,
        file_len: img.file_len,
    };
    for hook in extra {
        let mut refs = References { counter };
        hook.add_references(&view, &mut refs)?;
    }
    Ok(())
}
