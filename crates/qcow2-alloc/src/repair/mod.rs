//! Refcount repair, like `qemu-img check -r leaks|all`.
//!
//! A repair pass runs the check and fixes what the mode allows; when it
//! fixed anything, a second, read-only check verifies the result and its
//! counts are the ones reported, together with what was fixed.
//!
//! Write ordering: refcount blocks are written and flushed before any COPIED
//! flag that relies on them is set; a rebuilt refcount table and its blocks
//! are written after the end of the file and flushed before the header is
//! pointed at them, so a crash leaves either the old or the new structure
//! in use (at worst with leaks).

pub(crate) mod header;
mod order;
pub(crate) mod rebuild;

pub use order::{change_refcount_order, OrderChange};

use qcow2_io::Storage;

use crate::check::{engine, CheckReport, CheckResult, ExtraReferences, Fix};

/// What a repair may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepairMode {
    /// Lower refcounts that are higher than the references (`-r leaks`).
    Leaks,
    /// Also raise refcounts that are too low, fix COPIED flags, and rebuild
    /// the refcount structure when it is itself broken (`-r all`).
    All,
}

impl RepairMode {
    pub(crate) fn fix(self) -> Fix {
        Fix {
            leaks: true,
            errors: self == Self::All,
        }
    }
}

/// The outcome of a repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The repair pass: what was found, with the fixed counts.
    pub repair_pass: CheckReport,
    /// The check run after the repair, when the pass fixed anything.
    pub recheck: Option<CheckReport>,
}

impl RepairReport {
    /// Leaks the repair fixed.
    pub fn leaks_fixed(&self) -> u64 {
        self.repair_pass.leaks_fixed
    }

    /// Corruptions the repair fixed.
    pub fn corruptions_fixed(&self) -> u64 {
        self.repair_pass.corruptions_fixed
    }

    /// What `qemu-img check -r` reports: the recheck's counts with the
    /// repair pass's fixed counts, or the pass itself when nothing was
    /// fixed.
    pub fn final_report(&self) -> CheckReport {
        match &self.recheck {
            Some(recheck) => CheckReport {
                leaks_fixed: self.repair_pass.leaks_fixed,
                corruptions_fixed: self.repair_pass.corruptions_fixed,
                rebuilt: self.repair_pass.rebuilt,
                ..recheck.clone()
            },
            None => self.repair_pass.clone(),
        }
    }
}

/// Repairs the refcounts of the image in `storage` as `mode` allows, then
/// checks it again.
///
/// Fails with [`CheckError::RebuildNeeded`](crate::check::CheckError::RebuildNeeded)
/// in [`RepairMode::Leaks`] when only a rebuild can help, as `qemu-img check
/// -r leaks` does.
pub fn repair(
    storage: &dyn Storage,
    mode: RepairMode,
    extra: &[&dyn ExtraReferences],
) -> CheckResult<RepairReport> {
    let repair_pass = engine::run(storage, extra, mode.fix())?;
    let fixed = repair_pass.leaks_fixed + repair_pass.corruptions_fixed;
    let recheck = if fixed > 0 || repair_pass.rebuilt {
        Some(engine::run(storage, extra, Fix::NONE)?)
    } else {
        None
    };
    Ok(RepairReport {
        repair_pass,
        recheck,
    })
}
