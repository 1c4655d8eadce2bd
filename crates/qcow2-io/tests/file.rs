//! `FileStorage` semantics on real files.

mod common;

use std::io;

use common::{check_contract, pattern, read};
use qcow2_io::{FileStorage, Storage, WriteKind};

#[test]
fn meets_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::create(&dir.path().join("disk"), false).unwrap();
    check_contract(&s);
}

#[test]
fn from_file_meets_the_storage_contract() {
    let file = tempfile::tempfile().unwrap();
    check_contract(&FileStorage::from_file(file));
}

#[test]
fn create_refuses_an_existing_file_unless_overwriting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    let s = FileStorage::create(&path, false).unwrap();
    s.write_at(b"hello", 0, WriteKind::Header).unwrap();
    s.flush().unwrap();
    drop(s);

    let err = FileStorage::create(&path, false).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello", "left untouched");

    let s = FileStorage::create(&path, true).unwrap();
    assert_eq!(s.len().unwrap(), 0, "overwrite truncates");
}

#[test]
fn writes_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    let data = pattern(9, 10_000);
    {
        let s = FileStorage::create(&path, false).unwrap();
        s.write_at(&data, 512, WriteKind::Data).unwrap();
        s.flush().unwrap();
    }
    let s = FileStorage::open(&path, false).unwrap();
    assert_eq!(s.len().unwrap(), 10_512);
    assert_eq!(read(&s, 0, 512), vec![0; 512]);
    assert_eq!(read(&s, 512, 10_000), data);
    assert_eq!(std::fs::read(&path).unwrap()[512..], data[..]);
}

#[test]
fn read_only_open_rejects_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    std::fs::write(&path, b"abcdef").unwrap();
    let s = FileStorage::open(&path, false).unwrap();
    assert!(s.write_at(b"x", 0, WriteKind::Data).is_err());
    assert!(s.set_len(2).is_err());
    assert_eq!(read(&s, 0, 8), b"abcdef\0\0");
    assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
}

#[test]
fn open_missing_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let err = FileStorage::open(&dir.path().join("nope"), true).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn out_of_range_write_is_rejected() {
    let file = tempfile::tempfile().unwrap();
    let s = FileStorage::from_file(file);
    let err = s
        .write_at(b"abcd", u64::MAX - 1, WriteKind::Data)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(s.len().unwrap(), 0);
}

#[test]
fn positioned_io_from_several_threads() {
    const THREADS: u64 = 4;
    const CHUNK: usize = 8192;
    const ROUNDS: u64 = 32;
    let slot_seed = |slot: u64| (slot % 251) as u8;

    let s = FileStorage::from_file(tempfile::tempfile().unwrap());
    // Phase 1: threads write interleaved slots (slot = round * THREADS + t),
    // so neighbouring slots come from different threads at the same time.
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let s = &s;
            scope.spawn(move || {
                for r in 0..ROUNDS {
                    let slot = r * THREADS + t;
                    let data = pattern(slot_seed(slot), CHUNK);
                    s.write_at(&data, slot * CHUNK as u64, WriteKind::Data)
                        .unwrap();
                }
            });
        }
    });
    let slots = THREADS * ROUNDS;
    assert_eq!(s.len().unwrap(), slots * CHUNK as u64);

    // Phase 2: readers check the first half while writers fill a second
    // half, all on the same handle at once.
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let s = &s;
            scope.spawn(move || {
                for slot in (t..slots).step_by(THREADS as usize) {
                    let got = read(s, slot * CHUNK as u64, CHUNK);
                    assert_eq!(got, pattern(slot_seed(slot), CHUNK), "slot {slot}");
                }
            });
            scope.spawn(move || {
                for r in 0..ROUNDS {
                    let slot = slots + r * THREADS + t;
                    let data = pattern(slot_seed(slot), CHUNK);
                    s.write_at(&data, slot * CHUNK as u64, WriteKind::L2)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(s.len().unwrap(), 2 * slots * CHUNK as u64);
    for slot in 0..2 * slots {
        assert_eq!(
            read(&s, slot * CHUNK as u64, CHUNK),
            pattern(slot_seed(slot), CHUNK),
            "slot {slot}"
        );
    }
}

#[test]
fn data_runs_cover_the_file_and_holes_read_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.raw");
    let storage = FileStorage::create(&path, false).unwrap();
    let len = 4u64 << 20;
    storage.set_len(len).unwrap();
    storage
        .write_at(&vec![0xabu8; 65536], 2 << 20, WriteKind::Data)
        .unwrap();
    let mut pos = 0;
    let mut data_seen = Vec::new();
    while pos < len {
        let (data, end) = storage.data_run(pos).unwrap();
        assert!(end > pos && end <= len, "run from {pos} ends at {end}");
        if data {
            data_seen.push((pos, end));
        } else {
            let mut buf = vec![1u8; (end - pos) as usize];
            storage.read_at(&mut buf, pos).unwrap();
            assert!(
                buf.iter().all(|&b| b == 0),
                "hole at {pos}..{end} reads zeros"
            );
        }
        pos = end;
    }
    let written = 2u64 << 20..(2 << 20) + 65536;
    assert!(
        data_seen
            .iter()
            .any(|&(a, b)| a <= written.start && written.end <= b),
        "the written range is reported as data: {data_seen:?}"
    );
    assert_eq!(storage.data_run(len).unwrap(), (false, len), "past the end");
}
