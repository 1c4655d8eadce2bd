//! `MemoryStorage` semantics.

mod common;

use std::io;
use std::sync::Arc;

use common::{check_contract, pattern, read};
use qcow2_io::{MemoryStorage, Storage, WriteKind};

#[test]
fn meets_the_storage_contract() {
    check_contract(&MemoryStorage::new());
}

#[test]
fn from_bytes_and_to_vec_round_trip() {
    let bytes = pattern(3, 300);
    let s = MemoryStorage::from_bytes(bytes.clone());
    assert_eq!(s.len().unwrap(), 300);
    assert_eq!(read(&s, 0, 300), bytes);
    s.write_at(b"xy", 299, WriteKind::Header).unwrap();
    let mut want = bytes;
    want[299] = b'x';
    want.push(b'y');
    assert_eq!(s.to_vec(), want);
}

#[test]
fn punch_hole_zeroes_and_never_grows() {
    let s = MemoryStorage::from_bytes(vec![0xFF; 100]);
    assert!(s.punch_hole(10, 20).unwrap());
    let v = s.to_vec();
    assert!(v[..10].iter().all(|&b| b == 0xFF));
    assert!(v[10..30].iter().all(|&b| b == 0));
    assert!(v[30..].iter().all(|&b| b == 0xFF));

    // A hole running past the end is clamped; the length stays.
    assert!(s.punch_hole(90, 1000).unwrap());
    assert_eq!(s.len().unwrap(), 100);
    assert!(s.to_vec()[90..].iter().all(|&b| b == 0));
    assert!(s.to_vec()[30..90].iter().all(|&b| b == 0xFF));

    // Entirely past the end, and at an absurd offset: nothing happens.
    assert!(s.punch_hole(500, 10).unwrap());
    assert!(s.punch_hole(u64::MAX - 1, u64::MAX).unwrap());
    assert_eq!(s.len().unwrap(), 100);
}

#[test]
fn out_of_range_writes_are_rejected_without_growing() {
    let s = MemoryStorage::new();
    let err = s
        .write_at(b"abcd", u64::MAX - 1, WriteKind::Data)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(s.len().unwrap(), 0);
}

#[test]
fn reads_far_past_the_end_are_zero() {
    let s = MemoryStorage::from_bytes(vec![1; 10]);
    assert_eq!(read(&s, u64::MAX - 100, 8), vec![0; 8]);
    assert_eq!(read(&s, 8, 4), vec![1, 1, 0, 0]);
}

#[test]
fn pointer_wrappers_forward_to_the_storage() {
    let shared = Arc::new(MemoryStorage::new());
    shared.write_at(b"arc", 0, WriteKind::Other).unwrap();
    let boxed: Box<dyn Storage> = Box::new(Arc::clone(&shared));
    boxed.write_at(b"box", 3, WriteKind::Other).unwrap();
    let by_ref: &dyn Storage = &*shared;
    by_ref.write_zeroes(6, 2, WriteKind::Other).unwrap();
    assert_eq!(shared.to_vec(), b"arcbox\0\0");
    assert_eq!(boxed.len().unwrap(), 8);
    boxed.set_len(3).unwrap();
    assert_eq!(shared.to_vec(), b"arc");
}

#[test]
fn concurrent_disjoint_writes_all_land() {
    const THREADS: usize = 4;
    const CHUNK: usize = 4096;
    const ROUNDS: usize = 16;
    let s = MemoryStorage::new();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let s = &s;
            scope.spawn(move || {
                for r in 0..ROUNDS {
                    let slot = (r * THREADS + t) as u64;
                    let data = pattern((slot % 251) as u8, CHUNK);
                    s.write_at(&data, slot * CHUNK as u64, WriteKind::Data)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(s.len().unwrap(), (THREADS * ROUNDS * CHUNK) as u64);
    for slot in 0..(THREADS * ROUNDS) as u64 {
        assert_eq!(
            read(&s, slot * CHUNK as u64, CHUNK),
            pattern((slot % 251) as u8, CHUNK),
            "slot {slot}"
        );
    }
}
