//! `FaultStorage`: fault plans, tearing, the dead state, counters, the log.

mod common;

use std::io;

use common::{pattern, read};
use qcow2_io::fault::{Op, Outcome, Record};
use qcow2_io::{
    Effect, Fault, FaultError, FaultStorage, FileStorage, MemoryStorage, Storage, Trigger,
    WriteKind,
};

fn fault_of(result: io::Result<impl std::fmt::Debug>) -> FaultError {
    let err = result.expect_err("operation should have failed");
    assert_eq!(err.kind(), io::ErrorKind::Other);
    FaultError::of(&err).unwrap_or_else(|| panic!("not an injected fault: {err}"))
}

fn new_disk() -> FaultStorage<MemoryStorage> {
    FaultStorage::new(MemoryStorage::new())
}

#[test]
fn unarmed_wrapper_is_transparent() {
    let disk = new_disk();
    common::check_contract(&disk);
    assert!(!disk.fired());
    assert_eq!(disk.armed(), None);
}

#[test]
fn fails_the_nth_write_and_writes_nothing() {
    let disk = new_disk();
    disk.arm(Fault::fail_write(3));
    for i in 0..2u64 {
        disk.write_at(&[i as u8 + 1; 10], i * 10, WriteKind::Data)
            .unwrap();
    }
    assert!(!disk.fired());
    assert_eq!(
        fault_of(disk.write_at(&[9; 10], 20, WriteKind::L1)),
        FaultError::Injected
    );
    assert!(disk.fired());
    assert_eq!(disk.armed(), None, "a fault fires once");
    assert_eq!(disk.len().unwrap(), 20, "the failed write did not grow it");
    let mut want = vec![1; 10];
    want.extend([2; 10]);
    assert_eq!(disk.inner().to_vec(), want);
    assert_eq!(
        disk.fired_by(),
        Some(Record {
            op: Op::Write {
                offset: 20,
                len: 10,
                kind: WriteKind::L1
            },
            outcome: Outcome::Failed,
        })
    );
}

#[test]
fn tears_the_nth_l2_write_to_the_documented_prefix() {
    const CLUSTER: usize = 65536;
    let disk = new_disk();
    // Old contents the torn write lands on, so untouched bytes are visible.
    disk.write_at(&vec![0xEE; 4 * CLUSTER], 0, WriteKind::Other)
        .unwrap();
    disk.arm(Fault::tear_write_of(WriteKind::L2, 2));

    let first = pattern(1, CLUSTER);
    let second = pattern(2, CLUSTER);
    disk.write_at(&first, 0, WriteKind::L2).unwrap();
    // Writes of other kinds do not count towards an L2 trigger.
    disk.write_at(&[5; 100], CLUSTER as u64, WriteKind::Data)
        .unwrap();
    disk.write_at(&[6; 100], CLUSTER as u64 + 100, WriteKind::L1)
        .unwrap();
    assert_eq!(
        fault_of(disk.write_at(&second, 2 * CLUSTER as u64, WriteKind::L2)),
        FaultError::Injected
    );

    let kept = Effect::Tear.kept_bytes(CLUSTER as u64) as usize;
    assert_eq!(kept, CLUSTER / 2);
    let image = disk.inner().to_vec();
    assert_eq!(image.len(), 4 * CLUSTER, "the torn write did not grow it");
    assert_eq!(&image[..CLUSTER], &first[..]);
    assert_eq!(&image[CLUSTER..CLUSTER + 100], &[5; 100][..]);
    assert_eq!(&image[CLUSTER + 100..CLUSTER + 200], &[6; 100][..]);
    let torn = &image[2 * CLUSTER..3 * CLUSTER];
    assert_eq!(&torn[..kept], &second[..kept], "prefix written");
    assert!(torn[kept..].iter().all(|&b| b == 0xEE), "rest untouched");
    assert_eq!(
        disk.fired_by().unwrap().outcome,
        Outcome::Torn { kept: kept as u64 }
    );
}

#[test]
fn tear_rounds_half_down_to_sectors() {
    assert_eq!(Effect::Tear.kept_bytes(0), 0);
    assert_eq!(Effect::Tear.kept_bytes(1023), 0);
    assert_eq!(Effect::Tear.kept_bytes(1024), 512);
    assert_eq!(Effect::Tear.kept_bytes(3000), 1024);
    assert_eq!(Effect::Tear.kept_bytes(4096), 2048);
    assert_eq!(Effect::Fail.kept_bytes(4096), 0);
    assert_eq!(Effect::TearAt(7).kept_bytes(4096), 7);
    assert_eq!(Effect::TearAt(7).kept_bytes(5), 5);

    // An odd-sized write: 3000 bytes keep 1024.
    let disk = new_disk();
    disk.arm(Fault::tear_write(1));
    let data = pattern(4, 3000);
    fault_of(disk.write_at(&data, 0, WriteKind::RefcountBlock));
    assert_eq!(disk.inner().to_vec(), &data[..1024]);

    // A short write tears to nothing.
    let disk = new_disk();
    disk.arm(Fault::tear_write(1));
    fault_of(disk.write_at(&[1; 104], 0, WriteKind::Header));
    assert_eq!(disk.len().unwrap(), 0);
    assert_eq!(disk.fired_by().unwrap().outcome, Outcome::Torn { kept: 0 });
}

#[test]
fn tear_at_keeps_exactly_n_bytes() {
    let disk = new_disk();
    disk.arm(Fault::new(Trigger::Write(1), Effect::TearAt(13)));
    let data = pattern(8, 104);
    fault_of(disk.write_at(&data, 8, WriteKind::Header));
    assert_eq!(disk.len().unwrap(), 21);
    assert_eq!(read(&disk, 8, 13), &data[..13]);

    // n beyond the buffer: the whole write lands, the call still fails.
    let disk = new_disk();
    disk.arm(Fault::new(Trigger::Write(1), Effect::TearAt(u64::MAX)));
    assert_eq!(
        fault_of(disk.write_at(&data, 0, WriteKind::Header)),
        FaultError::Injected
    );
    assert_eq!(disk.inner().to_vec(), data);
    assert!(disk.fired());
}

#[test]
fn write_zeroes_is_one_write_and_can_be_torn() {
    let disk = FaultStorage::new(MemoryStorage::from_bytes(vec![0xFF; 8192]));
    disk.arm(Fault::tear_write_of(WriteKind::Other, 2));
    disk.write_zeroes(0, 5 << 20, WriteKind::Other).unwrap();
    assert_eq!(disk.writes_of(WriteKind::Other), 1, "one call, one write");
    disk.set_len(8192).unwrap();
    disk.write_at(&[0xFF; 8192], 0, WriteKind::Data).unwrap();
    fault_of(disk.write_zeroes(0, 4096, WriteKind::Other));
    let image = disk.inner().to_vec();
    assert!(image[..2048].iter().all(|&b| b == 0));
    assert!(image[2048..].iter().all(|&b| b == 0xFF));
}

#[test]
fn fails_the_nth_flush() {
    let disk = new_disk();
    disk.arm(Fault::fail_flush(2));
    disk.write_at(b"one", 0, WriteKind::Data).unwrap();
    disk.flush().unwrap();
    disk.write_at(b"two", 3, WriteKind::Data).unwrap();
    assert_eq!(fault_of(disk.flush()), FaultError::Injected);
    assert!(disk.fired());
    assert_eq!(disk.fired_by().unwrap().op, Op::Flush);
    assert_eq!(fault_of(disk.flush()), FaultError::Dead);
    assert_eq!(
        fault_of(disk.write_at(b"three", 6, WriteKind::Data)),
        FaultError::Dead
    );
    assert_eq!(disk.inner().to_vec(), b"onetwo");
}

#[test]
fn a_tear_on_a_flush_just_fails_it() {
    let disk = new_disk();
    disk.arm(Fault::new(Trigger::Flush(1), Effect::Tear));
    assert_eq!(fault_of(disk.flush()), FaultError::Injected);
    assert_eq!(disk.fired_by().unwrap().outcome, Outcome::Failed);
}

#[test]
fn dead_storage_refuses_every_change_but_reads() {
    let disk = FaultStorage::new(MemoryStorage::from_bytes(b"survivor".to_vec()));
    disk.arm(Fault::fail_write(1));
    fault_of(disk.write_at(b"X", 0, WriteKind::Header));

    let dead = FaultError::Dead;
    assert_eq!(fault_of(disk.write_at(b"Y", 0, WriteKind::Header)), dead);
    assert_eq!(fault_of(disk.write_at(b"Y", 100, WriteKind::Data)), dead);
    assert_eq!(fault_of(disk.write_zeroes(0, 4, WriteKind::Other)), dead);
    assert_eq!(fault_of(disk.flush()), dead);
    assert_eq!(fault_of(disk.set_len(2)), dead);
    assert_eq!(fault_of(disk.set_len(1000)), dead);
    assert_eq!(fault_of(disk.punch_hole(0, 4)), dead);

    assert_eq!(disk.len().unwrap(), 8);
    assert_eq!(read(&disk, 0, 10), b"survivor\0\0");
    assert_eq!(disk.into_inner().to_vec(), b"survivor");
}

#[test]
fn non_fault_errors_are_not_mistaken_for_faults() {
    assert_eq!(FaultError::of(&io::Error::other("disk on fire")), None);
    assert_eq!(
        FaultError::of(&io::Error::from(io::ErrorKind::NotFound)),
        None
    );
    let disk = new_disk();
    let err = disk
        .write_at(b"abcd", u64::MAX - 1, WriteKind::Data)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(FaultError::of(&err), None);
    let injected: io::Error = FaultError::Injected.into();
    assert_eq!(FaultError::of(&injected), Some(FaultError::Injected));
}

#[test]
fn counters_count_every_attempt_since_creation() {
    let disk = new_disk();
    disk.write_at(b"h", 0, WriteKind::Header).unwrap();
    disk.write_at(b"l2", 1, WriteKind::L2).unwrap();
    disk.write_at(b"l2", 3, WriteKind::L2).unwrap();
    disk.write_zeroes(5, 3, WriteKind::L2).unwrap();
    disk.write_at(b"d", 8, WriteKind::Data).unwrap();
    disk.flush().unwrap();
    disk.set_len(100).unwrap();
    disk.punch_hole(0, 1).unwrap();

    assert_eq!(disk.writes_of(WriteKind::Header), 1);
    assert_eq!(disk.writes_of(WriteKind::L2), 3);
    assert_eq!(disk.writes_of(WriteKind::Data), 1);
    assert_eq!(disk.writes_of(WriteKind::L1), 0);
    assert_eq!(disk.writes(), 5);
    assert_eq!(disk.flushes(), 1);
    let per_kind: u64 = WriteKind::ALL.iter().map(|&k| disk.writes_of(k)).sum();
    assert_eq!(per_kind, disk.writes());

    // Arming keeps the counters; failed and refused attempts count too.
    disk.arm(Fault::fail_flush(1));
    assert_eq!(disk.flushes(), 1);
    fault_of(disk.flush());
    fault_of(disk.flush());
    fault_of(disk.write_at(b"x", 0, WriteKind::L2));
    assert_eq!(disk.flushes(), 3);
    assert_eq!(disk.writes_of(WriteKind::L2), 4);
    assert_eq!(disk.writes(), 6);
}

#[test]
fn ordinals_count_from_arming() {
    let disk = new_disk();
    for i in 0..5 {
        disk.write_at(&[i], u64::from(i), WriteKind::L2).unwrap();
    }
    disk.arm(Fault::fail_write_of(WriteKind::L2, 2));
    disk.write_at(b"a", 10, WriteKind::L2).unwrap();
    assert!(!disk.fired(), "earlier writes do not count");
    fault_of(disk.write_at(b"b", 11, WriteKind::L2));
    assert_eq!(read(&disk, 10, 2), b"a\0");

    // Re-arming revives the storage and restarts the count.
    disk.arm(Fault::fail_write(1));
    assert!(!disk.fired());
    fault_of(disk.write_at(b"c", 12, WriteKind::Data));
    assert_eq!(disk.len().unwrap(), 11);
}

#[test]
fn disarm_and_revive() {
    let disk = new_disk();
    let fault = Fault::fail_write(2);
    disk.arm(fault);
    assert_eq!(disk.armed(), Some(fault));
    disk.write_at(b"a", 0, WriteKind::Data).unwrap();
    assert_eq!(disk.disarm(), Some(fault));
    assert_eq!(disk.disarm(), None);
    disk.write_at(b"b", 1, WriteKind::Data).unwrap();
    disk.write_at(b"c", 2, WriteKind::Data).unwrap();
    assert!(!disk.fired());
    assert_eq!(disk.inner().to_vec(), b"abc");

    // Disarming a storage that already died does not revive it.
    disk.arm(Fault::fail_write(1));
    fault_of(disk.write_at(b"d", 3, WriteKind::Data));
    assert_eq!(disk.disarm(), None);
    assert!(disk.fired());
    assert_eq!(
        fault_of(disk.write_at(b"d", 3, WriteKind::Data)),
        FaultError::Dead
    );

    // Reviving does.
    disk.revive();
    assert!(!disk.fired());
    assert_eq!(disk.fired_by(), None);
    disk.write_at(b"d", 3, WriteKind::Data).unwrap();
    disk.flush().unwrap();
    disk.set_len(5).unwrap();
    assert_eq!(disk.inner().to_vec(), b"abcd\0");
}

#[test]
fn with_fault_starts_armed() {
    let disk = FaultStorage::with_fault(MemoryStorage::new(), Fault::fail_flush(1));
    assert_eq!(disk.armed(), Some(Fault::fail_flush(1)));
    assert_eq!(fault_of(disk.flush()), FaultError::Injected);
}

#[test]
#[should_panic(expected = "count from 1")]
fn ordinal_zero_is_rejected() {
    new_disk().arm(Fault::fail_write(0));
}

#[test]
fn log_records_operations_and_outcomes() {
    let disk = new_disk();
    disk.write_at(b"unrecorded", 0, WriteKind::Data).unwrap();
    disk.set_recording(true);
    disk.arm(Fault::tear_write_of(WriteKind::L1, 1));
    disk.write_at(&[1; 8], 0, WriteKind::L2).unwrap();
    disk.flush().unwrap();
    fault_of(disk.write_at(&[2; 2048], 512, WriteKind::L1));
    fault_of(disk.set_len(0));
    fault_of(disk.punch_hole(0, 8));
    fault_of(disk.write_zeroes(0, 8, WriteKind::Other));

    let log = disk.take_log();
    let expect = [
        (
            Op::Write {
                offset: 0,
                len: 8,
                kind: WriteKind::L2,
            },
            Outcome::Forwarded,
        ),
        (Op::Flush, Outcome::Forwarded),
        (
            Op::Write {
                offset: 512,
                len: 2048,
                kind: WriteKind::L1,
            },
            Outcome::Torn { kept: 1024 },
        ),
        (Op::SetLen(0), Outcome::Refused),
        (Op::PunchHole { offset: 0, len: 8 }, Outcome::Refused),
        (
            Op::WriteZeroes {
                offset: 0,
                len: 8,
                kind: WriteKind::Other,
            },
            Outcome::Refused,
        ),
    ]
    .map(|(op, outcome)| Record { op, outcome });
    assert_eq!(log, expect);
    assert!(disk.take_log().is_empty(), "taking clears the log");

    disk.set_recording(false);
    fault_of(disk.flush());
    assert!(disk.take_log().is_empty(), "not recording");
}

#[test]
fn exactly_one_concurrent_write_fires() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 50;
    const NTH: u64 = 77;
    let disk = new_disk();
    disk.arm(Fault::fail_write(NTH));
    let results: Vec<Vec<Option<FaultError>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let disk = &disk;
                scope.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let slot = t * PER_THREAD + i;
                            disk.write_at(&[1; 16], slot * 16, WriteKind::Data)
                                .err()
                                .map(|e| FaultError::of(&e).unwrap())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<_> = results.into_iter().flatten().collect();
    let ok = all.iter().filter(|r| r.is_none()).count() as u64;
    let injected = all
        .iter()
        .filter(|r| **r == Some(FaultError::Injected))
        .count();
    let dead = all.iter().filter(|r| **r == Some(FaultError::Dead)).count() as u64;
    assert_eq!(injected, 1);
    assert_eq!(ok, NTH - 1);
    assert_eq!(dead, THREADS * PER_THREAD - NTH);
    assert_eq!(disk.writes(), THREADS * PER_THREAD);
    // Exactly the successful writes reached the inner storage.
    let image = disk.inner().to_vec();
    let written = image.chunks(16).filter(|c| c == &[1; 16]).count() as u64;
    assert_eq!(written, NTH - 1);
}

/// A little "engine" workload: writes of several kinds and flushes, stopping
/// at the first error as a real engine would.
fn workload(disk: &impl Storage) -> io::Result<()> {
    disk.write_at(&pattern(1, 104), 0, WriteKind::Header)?;
    disk.write_at(&pattern(2, 4096), 4096, WriteKind::L2)?;
    disk.write_at(&pattern(3, 8192), 8192, WriteKind::Data)?;
    disk.flush()?;
    disk.write_at(&pattern(4, 4096), 4096, WriteKind::L2)?;
    disk.write_at(&pattern(5, 512), 16384, WriteKind::RefcountBlock)?;
    disk.flush()?;
    disk.write_at(&pattern(6, 2048), 6144, WriteKind::L2)?;
    disk.write_at(&pattern(7, 16), 0, WriteKind::Header)?;
    disk.flush()
}

#[test]
fn crash_at_every_event_leaves_exactly_the_prefix() {
    // Count the events of a healthy run, recording them as the model.
    let healthy = new_disk();
    healthy.set_recording(true);
    workload(&healthy).unwrap();
    let model = healthy.take_log();
    let l2_writes = healthy.writes_of(WriteKind::L2);
    assert_eq!(l2_writes, 3);
    assert_eq!(healthy.writes(), 7);
    assert_eq!(healthy.flushes(), 3);

    // Replays the first `ops` model writes, plus `kept` bytes of the next.
    let expected = |ops: usize, kept: usize| {
        let plain = MemoryStorage::new();
        let mut seen = 0;
        let mut it = model.iter().filter_map(|r| match r.op {
            Op::Write { offset, len, kind } => Some((offset, len, kind)),
            _ => None,
        });
        for (offset, len, kind) in it.by_ref().take(ops) {
            seen += 1;
            let seed = seen as u8;
            plain
                .write_at(&pattern(seed, len as usize), offset, kind)
                .unwrap();
        }
        if kept > 0 {
            let (offset, len, kind) = it.next().unwrap();
            let data = pattern(seen as u8 + 1, len as usize);
            plain.write_at(&data[..kept], offset, kind).unwrap();
        }
        plain.to_vec()
    };

    // Tear each L2 write in turn.
    for n in 1..=l2_writes {
        let disk =
            FaultStorage::with_fault(MemoryStorage::new(), Fault::tear_write_of(WriteKind::L2, n));
        assert_eq!(fault_of(workload(&disk)), FaultError::Injected);
        let Record { op, outcome } = disk.fired_by().unwrap();
        let Op::Write { len, .. } = op else {
            panic!("fired on {op:?}")
        };
        let kept = Effect::Tear.kept_bytes(len);
        assert_eq!(outcome, Outcome::Torn { kept });
        // Index of this L2 write among all writes of the model.
        let (index, model_op) = model
            .iter()
            .filter(|r| matches!(r.op, Op::Write { .. }))
            .enumerate()
            .filter(|(_, r)| {
                matches!(
                    r.op,
                    Op::Write {
                        kind: WriteKind::L2,
                        ..
                    }
                )
            })
            .nth(n as usize - 1)
            .map(|(i, r)| (i, r.op))
            .unwrap();
        assert_eq!(op, model_op);
        assert_eq!(
            disk.inner().to_vec(),
            expected(index, kept as usize),
            "L2 write #{n}"
        );
    }

    // Fail each write in turn: exactly the earlier writes survive.
    for n in 1..=healthy.writes() {
        let disk = FaultStorage::with_fault(MemoryStorage::new(), Fault::fail_write(n));
        assert_eq!(fault_of(workload(&disk)), FaultError::Injected);
        assert_eq!(disk.writes(), n, "the workload stopped at the fault");
        assert_eq!(
            disk.inner().to_vec(),
            expected(n as usize - 1, 0),
            "write #{n}"
        );
    }

    // Fail each flush in turn: the writes before it survive, none after.
    for n in 1..=healthy.flushes() {
        let disk = FaultStorage::with_fault(MemoryStorage::new(), Fault::fail_flush(n));
        assert_eq!(fault_of(workload(&disk)), FaultError::Injected);
        assert_eq!(disk.flushes(), n);
        let writes_before = disk.writes() as usize;
        assert_eq!(
            disk.inner().to_vec(),
            expected(writes_before, 0),
            "flush #{n}"
        );
    }
}

#[test]
fn tears_a_write_on_a_real_file() {
    let file = tempfile::tempfile().unwrap();
    let disk = FaultStorage::new(FileStorage::from_file(file));
    disk.write_at(&[0x11; 8192], 0, WriteKind::Other).unwrap();
    disk.arm(Fault::tear_write_of(WriteKind::RefcountTable, 1));
    let data = pattern(6, 4096);
    fault_of(disk.write_at(&data, 1024, WriteKind::RefcountTable));
    fault_of(disk.flush());
    let file = disk.into_inner();
    assert_eq!(file.len().unwrap(), 8192);
    assert_eq!(read(&file, 0, 1024), vec![0x11; 1024]);
    assert_eq!(read(&file, 1024, 2048), &data[..2048]);
    assert_eq!(read(&file, 3072, 5120), vec![0x11; 5120]);
}

#[test]
fn faults_display_readably() {
    assert_eq!(Fault::fail_write(3).to_string(), "fail write #3");
    assert_eq!(
        Fault::tear_write_of(WriteKind::L2, 2).to_string(),
        "tear L2 write #2"
    );
    assert_eq!(Fault::fail_flush(1).to_string(), "fail flush #1");
    assert_eq!(
        Fault::new(Trigger::Write(4), Effect::TearAt(9)).to_string(),
        "tear after 9 bytes write #4"
    );
    assert_eq!(Trigger::WriteOf(WriteKind::L1, 5).nth(), 5);
}

#[test]
fn a_read_fault_fails_that_read_only() {
    let disk = new_disk();
    disk.write_at(&[7u8; 64], 0, WriteKind::Data).unwrap();
    disk.arm(Fault::fail_read(2));
    let mut buf = [0u8; 16];
    disk.read_at(&mut buf, 0).unwrap();
    assert_eq!(fault_of(disk.read_at(&mut buf, 16)), FaultError::Injected);
    assert!(disk.fired() && disk.is_dead());
    // Reads go on working on a dead storage; changes do not.
    disk.read_at(&mut buf, 16).unwrap();
    assert_eq!(buf, [7u8; 16]);
    assert_eq!(
        fault_of(disk.write_at(&[1u8; 4], 0, WriteKind::Data)),
        FaultError::Dead
    );
    assert_eq!(disk.reads(), 3);
    assert!(
        matches!(
            disk.fired_by().map(|r| r.op),
            Some(Op::Read {
                offset: 16,
                len: 16
            })
        ),
        "{:?}",
        disk.fired_by()
    );
}

#[test]
fn a_once_fault_leaves_the_storage_alive() {
    for fault in [
        Fault::fail_read(1).once(),
        Fault::fail_write(1).once(),
        Fault::fail_flush(1).once(),
    ] {
        let disk = new_disk();
        disk.arm(fault);
        let mut buf = [0u8; 8];
        let first = match fault.trigger {
            Trigger::Read(_) => disk.read_at(&mut buf, 0).map(|_| ()),
            Trigger::Flush(_) => disk.flush(),
            _ => disk.write_at(&[1u8; 8], 0, WriteKind::Data),
        };
        assert_eq!(fault_of(first), FaultError::Injected, "{fault}");
        assert!(disk.fired() && !disk.is_dead(), "{fault}");
        assert_eq!(disk.armed(), None, "{fault} fires once");
        disk.write_at(&[2u8; 8], 0, WriteKind::Data).unwrap();
        disk.flush().unwrap();
        disk.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [2u8; 8], "{fault}");
    }
    assert_eq!(
        Fault::fail_read(3).once().to_string(),
        "fail read #3 (once)"
    );
}
