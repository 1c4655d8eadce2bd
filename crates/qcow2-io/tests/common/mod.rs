//! Checks shared by the storage back-end tests.

#![allow(dead_code)]

use qcow2_io::{Storage, WriteKind};

/// A deterministic, position-dependent byte pattern (never all zeros).
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Reads `len` bytes at `offset`.
pub fn read(s: &impl Storage, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xAA; len];
    s.read_at(&mut buf, offset).unwrap();
    buf
}

/// Contract every back end must meet, starting from empty storage.
pub fn check_contract(s: &impl Storage) {
    assert_eq!(s.len().unwrap(), 0, "starts empty");
    assert!(s.is_empty().unwrap());

    // Reading empty storage gives zeros, and does not grow it.
    assert_eq!(read(s, 0, 16), vec![0; 16]);
    assert_eq!(read(s, 1 << 20, 16), vec![0; 16]);
    assert_eq!(s.len().unwrap(), 0, "reads never grow the storage");

    // A write past the end grows the storage; the gap reads as zeros.
    let data = pattern(7, 100);
    s.write_at(&data, 1000, WriteKind::Data).unwrap();
    assert_eq!(s.len().unwrap(), 1100);
    assert!(!s.is_empty().unwrap());
    assert_eq!(read(s, 0, 1000), vec![0; 1000]);
    assert_eq!(read(s, 1000, 100), data);

    // A read straddling the end: stored bytes, then zeros.
    let tail = read(s, 1050, 100);
    assert_eq!(&tail[..50], &data[50..]);
    assert_eq!(&tail[50..], &[0; 50][..]);

    // Overwriting inside does not change the length.
    s.write_at(b"abc", 1010, WriteKind::L2).unwrap();
    assert_eq!(s.len().unwrap(), 1100);
    let mut expect = data.clone();
    expect[10..13].copy_from_slice(b"abc");
    assert_eq!(read(s, 1000, 100), expect);

    // An empty write changes nothing.
    s.write_at(&[], 5000, WriteKind::Other).unwrap();
    assert_eq!(s.len().unwrap(), 1100);

    // write_zeroes clears a range inside and grows past the end.
    s.write_zeroes(1020, 10, WriteKind::Other).unwrap();
    expect[20..30].fill(0);
    assert_eq!(read(s, 1000, 100), expect);
    s.write_zeroes(1100, 3 << 20, WriteKind::Data).unwrap();
    assert_eq!(s.len().unwrap(), 1100 + (3 << 20));
    assert_eq!(read(s, 1000, 100), expect);
    assert!(read(s, 1100, 3 << 20).iter().all(|&b| b == 0));

    // set_len truncates: bytes past the new end are gone...
    s.set_len(1050).unwrap();
    assert_eq!(s.len().unwrap(), 1050);
    assert_eq!(read(s, 1000, 50), &expect[..50]);
    // ...and extending again brings back zeros, not the old bytes.
    s.set_len(1200).unwrap();
    assert_eq!(s.len().unwrap(), 1200);
    assert_eq!(read(s, 1000, 50), &expect[..50]);
    assert_eq!(read(s, 1050, 150), vec![0; 150]);

    // punch_hole either zeroes the range or reports that it left it alone.
    let before = read(s, 1000, 50);
    let punched = s.punch_hole(1005, 20).unwrap();
    let after = read(s, 1000, 50);
    if punched {
        let mut want = before.clone();
        want[5..25].fill(0);
        assert_eq!(after, want);
    } else {
        assert_eq!(after, before);
    }
    assert_eq!(s.len().unwrap(), 1200, "punch_hole keeps the length");

    s.flush().unwrap();
    s.set_len(0).unwrap();
    assert_eq!(s.len().unwrap(), 0);
    assert_eq!(read(s, 1000, 10), vec![0; 10]);
}
