//! The `ExtraReferences` hook: clusters a later crate's structures use are
//! counted instead of reported as leaks, and its failures stop the check.

mod check_support;

use std::fs;

use check_support::golden_dir;
use qcow2_alloc::check::{check, CheckError, CheckResult, ExtraReferences, ImageView, References};
use qcow2_alloc::repair::{repair, RepairMode};
use qcow2_format::{rules, HostOffset};
use qcow2_io::MemoryStorage;

/// Claims one cluster at a fixed offset, as a dedup table would.
struct Claims(u64);

impl ExtraReferences for Claims {
    fn name(&self) -> &str {
        "test table"
    }

    fn add_references(
        &self,
        image: &ImageView<'_>,
        refs: &mut References<'_, '_>,
    ) -> CheckResult<()> {
        refs.add(
            HostOffset(self.0),
            image.geometry.cluster_size(),
            "test table",
            rules::DD_L1_ENTRY,
        );
        Ok(())
    }
}

struct Fails;

impl ExtraReferences for Fails {
    fn name(&self) -> &str {
        "broken hook"
    }

    fn add_references(&self, _: &ImageView<'_>, _: &mut References<'_, '_>) -> CheckResult<()> {
        Err(CheckError::Extra {
            name: self.name().into(),
            message: "cannot read its table".into(),
        })
    }
}

/// data-v3.qcow2 with one more cluster at the end whose refcount is 1.
fn image_with_extra_cluster() -> (MemoryStorage, u64) {
    let mut bytes = fs::read(golden_dir().join("data-v3.qcow2")).unwrap();
    let end = bytes.len().next_multiple_of(65536);
    bytes.resize(end + 65536, 0);
    let rt = u64::from_be_bytes(bytes[48..56].try_into().unwrap()) as usize;
    let block = u64::from_be_bytes(bytes[rt..rt + 8].try_into().unwrap()) as usize;
    let at = block + (end / 65536) * 2;
    bytes[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    (MemoryStorage::from_bytes(bytes), end as u64)
}

#[test]
fn hooked_clusters_are_not_leaks() {
    let (image, extra) = image_with_extra_cluster();
    assert_eq!(check(&image, &[]).unwrap().leaks, 1);
    let hook = Claims(extra);
    let report = check(&image, &[&hook]).unwrap();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.image_end_offset, extra + 65536);
    // A repair that knows the hook keeps the cluster.
    let done = repair(&image, RepairMode::All, &[&hook]).unwrap();
    assert!(done.recheck.is_none());
    assert_eq!(check(&image, &[]).unwrap().leaks, 1);
}

#[test]
fn hooked_range_past_the_end_is_a_corruption() {
    let (image, extra) = image_with_extra_cluster();
    let hook = Claims(extra + (1 << 30));
    let report = check(&image, &[&hook]).unwrap();
    assert_eq!((report.corruptions, report.leaks), (1, 1), "{report:#?}");
    assert!(report
        .findings
        .iter()
        .any(|f| f.rule == Some(rules::DD_L1_ENTRY)));
}

#[test]
fn failing_hook_stops_the_check() {
    let (image, _) = image_with_extra_cluster();
    assert!(matches!(
        check(&image, &[&Fails]),
        Err(CheckError::Extra { .. })
    ));
}
