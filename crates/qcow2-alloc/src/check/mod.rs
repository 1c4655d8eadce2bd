//! Refcount check: computes the refcount every host cluster should have from
//! every reference in the image and compares it with the stored refcounts,
//! reporting like `qemu-img check`.
//!
//! References counted: the header cluster; the active L1 table, its L2
//! tables and their data clusters (standard and extended entries,
//! preallocated zero clusters, and one reference per compressed descriptor
//! on every cluster its sectors touch); the snapshot table, each snapshot's
//! L1 table and what it reaches; the refcount table and blocks; the LUKS
//! header; the bitmap directory, bitmap tables and bitmap data clusters; and
//! whatever [`ExtraReferences`] hooks add.
//!
//! Nothing read from the file is trusted: ranges are checked against the
//! file length before they are counted, tables are read in bounded pieces
//! and only inside the file, the computed refcounts grow with the clusters
//! actually referenced, and a table reached many times is read once.

mod bitmaps;
mod compare;
mod copied;
mod data_file;
pub(crate) mod engine;
mod error;
mod extra;
pub(crate) mod image;
mod refblocks;
pub(crate) mod refmap;
mod refs;
mod report;
mod snapshots;
mod stored;
mod tables;
pub(crate) mod walk;

pub use error::{CheckError, CheckResult};
pub use extra::{ExtraReferences, ImageView, References};
pub use refmap::MAX_TRACKED_CLUSTERS;
pub use report::{CheckReport, Finding, FindingKind, MAX_FINDINGS};

pub(crate) use compare::Fix;

use qcow2_io::Storage;

/// Checks the refcounts of the qcow2 image in `storage` without writing.
///
/// Returns the counts and findings; corruptions and leaks are findings, not
/// errors. Errors mean the check could not complete (unreadable header, I/O
/// error, an image too large to track) — `qemu-img check`'s "Check failed".
pub fn check(storage: &dyn Storage, extra: &[&dyn ExtraReferences]) -> CheckResult<CheckReport> {
    engine::run(storage, extra, Fix::NONE)
}
