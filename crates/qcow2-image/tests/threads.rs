//! `Image` is shared between threads: concurrent readers see exactly the
//! written data, also while a writer changes other ranges; writes into
//! allocated private clusters run side by side, also while other writes
//! allocate, copy and free clusters.

mod common;

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::Rng;
use qcow2_image::{BackingMode, CreateOptions, Image, OpenOptions};
use qcow2_io::{MemoryStorage, Storage, WriteKind};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn image_is_send_and_sync() {
    assert_send_sync::<Image>();
}

#[test]
fn concurrent_readers_and_a_writer_agree_with_the_model() {
    let size = 16u64 << 20;
    let mut options = CreateOptions::new(size);
    options.cluster_size = 4096;
    let image = Image::create(
        Arc::new(MemoryStorage::new()),
        &options,
        BackingMode::Ignore,
    )
    .unwrap();
    // The first half is written up front and never changes; the writer
    // thread rewrites the second half while readers check the first.
    let half = (size / 2) as usize;
    let stable: Vec<u8> = (0..half).map(|i| (i / 4096) as u8 ^ (i as u8)).collect();
    image.write_at(&stable, 0).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (image, stable) = (&image, &stable);
            scope.spawn(move || {
                let mut rng = Rng::new(t + 1);
                for _ in 0..300 {
                    let len = 1 + rng.below(70_000) as usize;
                    let offset = rng.below(half as u64 - len as u64) as usize;
                    let mut buf = vec![0u8; len];
                    image.read_at(&mut buf, offset as u64).unwrap();
                    assert!(
                        buf == stable[offset..offset + len],
                        "reader {t} at {offset}+{len}"
                    );
                }
            });
        }
        let image = &image;
        scope.spawn(move || {
            let mut rng = Rng::new(99);
            for i in 0..200u64 {
                let len = 1 + rng.below(50_000);
                let offset = half as u64 + rng.below(half as u64 - len);
                image
                    .write_at(&vec![(i % 255) as u8 + 1; len as usize], offset)
                    .unwrap();
                if i % 50 == 0 {
                    image.discard(offset, len).unwrap();
                }
            }
        });
    });
    image.flush().unwrap();
    let mut buf = vec![0u8; half];
    image.read_at(&mut buf, 0).unwrap();
    assert!(buf == stable);
}

/// Storage whose data writes wait (up to a timeout) until `want` of them
/// are inside at once, and that records the most it saw together.
struct Rendezvous {
    inner: MemoryStorage,
    want: usize,
    state: Mutex<(usize, usize)>,
    changed: Condvar,
}

impl Storage for Rendezvous {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, kind: WriteKind) -> io::Result<()> {
        if kind == WriteKind::Data {
            let mut state = self.state.lock().unwrap();
            state.0 += 1;
            state.1 = state.1.max(state.0);
            self.changed.notify_all();
            let (mut state, _) = self
                .changed
                .wait_timeout_while(state, Duration::from_secs(5), |s| s.1 < self.want)
                .unwrap();
            state.0 -= 1;
        }
        self.inner.write_at(buf, offset, kind)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

/// Two writes into allocated private clusters are in the storage at the
/// same time: neither waits for the other's data I/O.
#[test]
fn in_place_writes_reach_the_storage_together() {
    let mut options = CreateOptions::new(1 << 20);
    options.cluster_size = 4096;
    let memory = Arc::new(MemoryStorage::new());
    let image = Image::create(memory.clone(), &options, BackingMode::Ignore).unwrap();
    image.write_at(&vec![1u8; 64 << 10], 0).unwrap();
    image.close().unwrap();
    let storage = Arc::new(Rendezvous {
        inner: MemoryStorage::from_bytes(memory.to_vec()),
        want: 2,
        state: Mutex::new((0, 0)),
        changed: Condvar::new(),
    });
    let open = OpenOptions {
        writable: true,
        backing: BackingMode::Ignore,
    };
    let image = Image::open(storage.clone() as Arc<dyn Storage>, open).unwrap();
    std::thread::scope(|scope| {
        for t in 0..2u64 {
            let image = &image;
            scope.spawn(move || {
                image
                    .write_at(&[t as u8 + 7; 1000], t * 8192 + 100)
                    .unwrap()
            });
        }
    });
    assert_eq!(
        storage.state.lock().unwrap().1,
        2,
        "the second in-place write waited for the first one's data I/O"
    );
    let mut buf = vec![0u8; 1000];
    for t in 0..2u64 {
        image.read_at(&mut buf, t * 8192 + 100).unwrap();
        assert!(buf.iter().all(|&b| b == t as u8 + 7), "writer {t}");
    }
}

/// Writers of allocated clusters (the shared path) run while another
/// thread allocates, copies from compressed clusters, zeroes and
/// discards (the exclusive path) over other ranges, and readers read
/// everything: every range ends as its last writer left it, and the image
/// is clean for our check and for `qemu-img check`.
#[test]
fn shared_and_exclusive_writes_agree_with_the_model() {
    const CS: u64 = 4096;
    let size = 8u64 << 20;
    let mut options = CreateOptions::new(size);
    options.cluster_size = CS;
    let memory = Arc::new(MemoryStorage::new());
    let image = Image::create(memory.clone(), &options, BackingMode::Ignore).unwrap();
    // The first half is allocated up front; the shared writers own one
    // stripe of it each. The second half belongs to the exclusive writer.
    let half = size / 2;
    image.write_at(&vec![0x11; half as usize], 0).unwrap();
    for c in (0..half / CS).step_by(7) {
        image
            .write_compressed(&vec![0x22; CS as usize], half + c * CS)
            .unwrap();
    }
    let model = Mutex::new({
        let mut m = vec![0u8; size as usize];
        m[..half as usize].fill(0x11);
        for c in (0..half / CS).step_by(7) {
            let at = (half + c * CS) as usize;
            m[at..at + CS as usize].fill(0x22);
        }
        m
    });
    let stripe = half / 2;
    std::thread::scope(|scope| {
        for t in 0..2u64 {
            let (image, model) = (&image, &model);
            scope.spawn(move || {
                let mut rng = Rng::new(t + 10);
                for i in 0..400u64 {
                    let len = 1 + rng.below(3 * CS);
                    let offset = t * stripe + rng.below(stripe - len);
                    let byte = (t * 100 + i % 97) as u8 + 1;
                    image.write_at(&vec![byte; len as usize], offset).unwrap();
                    let mut m = model.lock().unwrap();
                    m[offset as usize..(offset + len) as usize].fill(byte);
                }
            });
        }
        let (image, model) = (&image, &model);
        scope.spawn(move || {
            let mut rng = Rng::new(77);
            for i in 0..200u64 {
                let len = 1 + rng.below(5 * CS);
                let offset = half + rng.below(half - len);
                let mut m = model.lock().unwrap();
                let range = offset as usize..(offset + len) as usize;
                match i % 4 {
                    0 => image.discard(offset, len).unwrap(),
                    1 => image.write_zeroes(offset, len, false).unwrap(),
                    _ => {
                        let byte = (i % 200) as u8 + 30;
                        image.write_at(&vec![byte; len as usize], offset).unwrap();
                        m[range].fill(byte);
                        continue;
                    }
                }
                // A discard reads zeros here (no backing file), except
                // where it covers only part of a cluster.
                let mut now = vec![0u8; len as usize];
                image.read_at(&mut now, offset).unwrap();
                m[range].copy_from_slice(&now);
            }
        });
        scope.spawn(move || {
            let mut rng = Rng::new(5);
            let mut buf = vec![0u8; 8192];
            for _ in 0..500 {
                let offset = rng.below(size - 8192);
                image.read_at(&mut buf, offset).unwrap();
            }
        });
    });
    image.flush().unwrap();
    let mut got = vec![0u8; size as usize];
    image.read_at(&mut got, 0).unwrap();
    let want = model.into_inner().unwrap();
    for (c, (a, b)) in got
        .chunks(CS as usize)
        .zip(want.chunks(CS as usize))
        .enumerate()
    {
        assert!(a == b, "cluster {c} differs from the model");
    }
    image.close().unwrap();
    let bytes = memory.to_vec();
    let report = qcow2_alloc::check::check(&MemoryStorage::from_bytes(bytes.clone()), &[]).unwrap();
    assert_eq!(
        report.corruptions + report.leaks,
        0,
        "{:#?}",
        report.findings
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    common::assert_qemu_check_clean(file.path());
}
