//! Hostile inputs: typed errors or reported corruptions, never a panic, a
//! hang or an allocation sized by the file's claims.

mod check_support;

use std::fs;
use std::io;

use check_support::golden_dir;
use qcow2_alloc::check::{check, CheckError, CheckReport};
use qcow2_alloc::repair::{repair, RepairMode};
use qcow2_format::rules;
use qcow2_io::{MemoryStorage, Storage, WriteKind};

fn golden(name: &str) -> Vec<u8> {
    fs::read(golden_dir().join(name)).expect("golden image")
}

fn set_u64(bytes: &mut [u8], at: u64, value: u64) {
    bytes[at as usize..at as usize + 8].copy_from_slice(&value.to_be_bytes());
}

fn set_u32(bytes: &mut [u8], at: u64, value: u32) {
    bytes[at as usize..at as usize + 4].copy_from_slice(&value.to_be_bytes());
}

fn get_u64(bytes: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap())
}

fn check_bytes(bytes: Vec<u8>) -> Result<CheckReport, CheckError> {
    check(&MemoryStorage::from_bytes(bytes), &[])
}

/// Checks, repairs (all) and checks again; nothing may panic, and a repair
/// that completes must leave an image the check calls clean or at worst
/// with corruptions it could not fix.
fn survive(bytes: Vec<u8>) {
    let storage = MemoryStorage::from_bytes(bytes);
    if check(&storage, &[]).is_err() {
        return;
    }
    if let Ok(done) = repair(&storage, RepairMode::All, &[]) {
        let _ = done.final_report();
        let _ = check(&storage, &[]);
    }
}

#[test]
fn huge_l1_size_is_a_typed_error() {
    let mut bytes = golden("data-v3.qcow2");
    set_u32(&mut bytes, 36, u32::MAX);
    match check_bytes(bytes) {
        Err(CheckError::Header(e)) => assert_eq!(e.rule, rules::HDR_L1_SIZE),
        other => panic!("expected an HDR-L1-SIZE error, got {other:?}"),
    }
}

#[test]
fn huge_refcount_table_is_a_typed_error() {
    let mut bytes = golden("data-v3.qcow2");
    set_u32(&mut bytes, 56, u32::MAX);
    match check_bytes(bytes) {
        Err(CheckError::Header(e)) => assert_eq!(e.rule, rules::HDR_REFTABLE_CLUSTERS),
        other => panic!("expected an HDR-REFTABLE-CLUSTERS error, got {other:?}"),
    }
}

#[test]
fn tables_beyond_the_end_are_corruptions() {
    for (field, value) in [
        (48u64, 1u64 << 40),
        (40, 1 << 40),
        (48, 0x00ff_ffff_ffff_0000),
    ] {
        let mut bytes = golden("data-v3.qcow2");
        set_u64(&mut bytes, field, value);
        let report = check_bytes(bytes.clone()).expect("check completes");
        assert!(report.corruptions > 0, "field {field}: {report:#?}");
        assert!(report
            .findings
            .iter()
            .any(|f| f.message.contains("past the end of the file")));
        survive(bytes);
    }
}

#[test]
fn cyclic_and_overlapping_tables_are_reported() {
    let base = golden("data-v3.qcow2");
    let l1 = get_u64(&base, 40);
    let rt = get_u64(&base, 48);
    let l2 = get_u64(&base, l1) & 0x00ff_ffff_ffff_fe00;
    let block = get_u64(&base, rt);
    let cases: [(&str, u64, u64); 6] = [
        ("L1 entry pointing at the L1 table", l1, l1 | 1 << 63),
        ("L2 entry pointing at its own table", l2, l2 | 1 << 63),
        ("L2 entry pointing at the L1 table", l2 + 8, l1 | 1 << 63),
        (
            "refcount table entry pointing at the refcount table",
            rt,
            rt,
        ),
        ("refcount table entry pointing at an L2 table", rt, l2),
        ("refcount block entry twice", rt + 8, block),
    ];
    for (name, at, value) in cases {
        let mut bytes = base.clone();
        set_u64(&mut bytes, at, value);
        let report = check_bytes(bytes.clone()).expect("check completes");
        assert!(report.corruptions > 0, "{name}: {report:#?}");
        survive(bytes);
    }
}

#[test]
fn hostile_snapshot_tables_are_reported() {
    let mut bytes = golden("data-v3.qcow2");
    let end = bytes.len() as u64;
    // 65536 snapshots at a cluster that holds one entry with a huge,
    // misaligned and then a repeated L1 table.
    bytes.resize(end as usize + 65536, 0);
    set_u32(&mut bytes, 60, 65536);
    set_u64(&mut bytes, 64, end);
    let l1 = get_u64(&bytes, 40);
    set_u64(&mut bytes, end, l1);
    set_u32(&mut bytes, end + 8, 4 << 20);
    set_u32(&mut bytes, end + 36, 16);
    let report = check_bytes(bytes.clone()).expect("check completes");
    assert!(report.corruptions > 0, "{report:#?}");
    survive(bytes);
}

/// Storage that claims a huge length but holds only a few bytes.
#[derive(Debug)]
struct Sparse {
    inner: MemoryStorage,
    len: u64,
}

impl Storage for Sparse {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, kind: WriteKind) -> io::Result<()> {
        self.inner.write_at(buf, offset, kind)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

#[test]
fn file_length_bounds_memory() {
    let bytes = golden("data-v3.qcow2");
    let huge = Sparse {
        inner: MemoryStorage::from_bytes(bytes.clone()),
        len: 1 << 50,
    };
    assert!(matches!(
        check(&huge, &[]),
        Err(CheckError::TooLarge { .. })
    ));
    // 2^24 clusters of which a handful are used: counts stay exact and the
    // check does not allocate per cluster of the claimed length.
    let big = Sparse {
        inner: MemoryStorage::from_bytes(bytes),
        len: 1 << 40,
    };
    let report = check(&big, &[]).expect("check completes");
    assert_eq!(report.allocated_clusters, 2);
    assert!(report.is_clean(), "{report:#?}");
}

/// A small deterministic generator (xorshift) for mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_metadata_mutations_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for name in [
        "data-v3.qcow2",
        "compressed-zlib.qcow2",
        "data-extended-l2.qcow2",
        "bitmaps.qcow2",
        "refcount-bits-1.qcow2",
        "cluster-512.qcow2",
    ] {
        let base = golden(name);
        // Metadata lives in the first clusters of these small images.
        let span = base.len().min(8 * 65536) as u64;
        for _ in 0..60 {
            let mut bytes = base.clone();
            for _ in 0..1 + rng.next() % 6 {
                let at = rng.next() % span;
                let at = if rng.next() % 2 == 0 { at } else { at % 512 };
                bytes[at as usize] = rng.next() as u8;
            }
            survive(bytes);
        }
    }
}
