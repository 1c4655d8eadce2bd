//! Regression tests for bugs found in review: a refcount table moved while
//! creating, a failed eviction during a read, refcount block durability,
//! grown space over a longer backing file, and a zero write's copy indexed
//! after a later write had changed it.

use std::io;
use std::sync::{Arc, Mutex};

use qcow2_image::{BackingMode, CreateOptions, Image, OpenOptions, RawBacking};
use qcow2_io::{Fault, FaultStorage, MemoryStorage, Storage, WriteKind};

fn check_corruptions(bytes: Vec<u8>) -> u64 {
    let storage = MemoryStorage::from_bytes(bytes);
    let report = qcow2_alloc::check::check(&storage, &[]).expect("check runs");
    eprintln!("corruptions={} leaks={}", report.corruptions, report.leaks);
    for f in report
        .findings
        .iter()
        .filter(|f| format!("{:?}", f.kind) != "Leak")
        .take(5)
    {
        eprintln!("  finding: {:?} {}", f.kind, f.message);
    }
    report.corruptions
}

/// Finding 1: `Image::create` ignores the new refcount-table location that
/// `Refcounts::flush` returns when allocating the L1 table grew the refcount
/// table, and writes a header pointing at the stale table (cluster 1).
#[test]
fn create_with_large_l1_points_header_at_current_refcount_table() {
    let mut options = CreateOptions::new(16 << 30);
    options.cluster_size = 512;
    options.refcount_bits = 64;
    let storage = Arc::new(MemoryStorage::new());
    let image = Image::create(storage.clone(), &options, BackingMode::Ignore).unwrap();
    image.close().unwrap();
    let corruptions = check_corruptions(storage.to_vec());
    assert_eq!(corruptions, 0, "fresh image already has corruptions");
}

/// Finding 2: a dirty L2 table evicted from the read path (`read_at` ->
/// `plan` -> `load_l2` -> `make_room`) whose write fails is marked clean
/// before the write (`write_l2`), and the read path does not poison the
/// image: a later `flush` succeeds and the guest write is silently lost.
#[test]
fn failed_eviction_during_read_does_not_lose_a_flushed_write() {
    const TABLE_SPAN: u64 = 512 << 30; // guest bytes one 2 MiB L2 table maps
    const CS: u64 = 2 << 20;
    let fault = Arc::new(FaultStorage::new(MemoryStorage::new()));
    let mut options = CreateOptions::new(20 * TABLE_SPAN);
    options.cluster_size = CS;
    let storage: Arc<dyn Storage> = fault.clone();
    let image = Image::create(storage, &options, BackingMode::Ignore).unwrap();
    // 18 L2 tables on disk; the cache (16 tables of 2 MiB) keeps 2..=17.
    for t in 0..18u64 {
        image.write_at(&[1u8; 512], t * TABLE_SPAN).unwrap();
    }
    image.flush().unwrap();
    // Make every cached table dirty.
    for t in 2..18u64 {
        image.write_at(&[0x5au8; 512], t * TABLE_SPAN + CS).unwrap();
    }
    // The next L2 write (the eviction of table 2) fails.
    fault.arm(Fault::fail_write_of(WriteKind::L2, 1));
    let mut buf = [0u8; 512];
    let read = image.read_at(&mut buf, 0);
    fault.revive();
    eprintln!("read during failed eviction: {read:?}");
    // If the engine reports success, the data must be on disk.
    if image.flush().is_ok() {
        drop(image);
        let copy: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes(fault.inner().to_vec()));
        let reopened = Image::open(copy, OpenOptions::default()).unwrap();
        for t in 2..18u64 {
            let mut got = [0u8; 512];
            reopened.read_at(&mut got, t * TABLE_SPAN + CS).unwrap();
            assert_eq!(
                got, [0x5au8; 512],
                "flush succeeded but the write to table {t} was lost"
            );
        }
    }
}

/// A storage that models a volatile write cache: `durable` is what the last
/// flush made durable. When armed, the first refcount-table write that is
/// issued while refcount-block writes are still unflushed records the disk a
/// crash right after it may leave: the durable bytes plus that table write
/// only (the unflushed block writes lost).
#[derive(Debug, Default)]
struct Volatile {
    current: MemoryStorage,
    state: Mutex<VolState>,
}

#[derive(Debug, Default)]
struct VolState {
    durable: Vec<u8>,
    armed: bool,
    unflushed_block_write: bool,
    crash_image: Option<Vec<u8>>,
}

impl Storage for Volatile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.current.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, kind: WriteKind) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        if st.armed {
            if kind == WriteKind::RefcountBlock {
                st.unflushed_block_write = true;
            }
            if kind == WriteKind::RefcountTable
                && st.unflushed_block_write
                && st.crash_image.is_none()
            {
                let mut img = st.durable.clone();
                let end = offset as usize + buf.len();
                if img.len() < end {
                    img.resize(end, 0);
                }
                img[offset as usize..end].copy_from_slice(buf);
                st.crash_image = Some(img);
            }
        }
        self.current.write_at(buf, offset, kind)
    }
    fn flush(&self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.durable = self.current.to_vec();
        st.unflushed_block_write = false;
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.current.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.current.set_len(len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.current.punch_hole(offset, len)
    }
}

/// Finding 3 (fixed in the working tree during the review, 12:40; kept as
/// a regression test): `Refcounts::flush` wrote a newly installed refcount block
/// and then the refcount table entry pointing at it with no flush between,
/// so a crash can leave the table referencing a block that never reached the
/// disk (the block's own refcount reads 0: a corruption, not a leak).
#[test]
fn new_refcount_block_is_durable_before_the_table_points_at_it() {
    let vol = Arc::new(Volatile::default());
    let mut options = CreateOptions::new(16 << 20);
    options.cluster_size = 512;
    let storage: Arc<dyn Storage> = vol.clone();
    let image = Image::create(storage, &options, BackingMode::Ignore).unwrap();
    image.flush().unwrap();
    vol.state.lock().unwrap().armed = true;
    // 256 KiB of data needs refcount blocks 1 and 2 (256 clusters each).
    image.write_at(&vec![7u8; 256 << 10], 0).unwrap();
    image.flush().unwrap();
    let crash = vol.state.lock().unwrap().crash_image.take();
    // None: every table write followed a flush of the blocks (fixed).
    if let Some(crash) = crash {
        let corruptions = check_corruptions(crash);
        assert_eq!(corruptions, 0, "crash image has corruptions");
    }
}

/// Finding 4: growing an image whose backing file is longer than the old
/// size exposes the backing file's data in the new area; QEMU zeroes it
/// (`qemu-img resize` then `qemu-io -c 'read -P 0 1M 1M'` passes).
#[test]
fn grow_over_longer_backing_reads_zeros() {
    let backing_store = Arc::new(MemoryStorage::from_bytes(vec![0xaa; 4 << 20]));
    let backing = Arc::new(RawBacking::new(backing_store).unwrap());
    let mut options = CreateOptions::new(1 << 20);
    options.backing_file = Some("b.raw".into());
    options.backing_format = Some("raw".into());
    let storage = Arc::new(MemoryStorage::new());
    let image = Image::create(storage, &options, BackingMode::Provided(backing)).unwrap();
    image.resize(2 << 20).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    image.read_at(&mut buf, 1 << 20).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "grown area shows backing data");
}

/// Finding 5: a zero write that copies part of a cluster from the backing
/// file left its copy-on-write result queued; the next write settled it
/// after an in-place write had changed the cluster, so the dedup table
/// named the cluster with the digest of its old content and a later write
/// of that content was mapped to other data.
#[test]
fn a_zero_write_copy_is_indexed_before_later_writes_change_it() {
    const CS: u64 = 65536;
    let backing_bytes: Vec<u8> = (0..4 * CS).map(|i| (i % 251) as u8 + 1).collect();
    let backing_store = Arc::new(MemoryStorage::from_bytes(backing_bytes.clone()));
    let backing = Arc::new(RawBacking::new(backing_store).unwrap());
    let mut options = CreateOptions::new(4 * CS);
    options.backing_file = Some("b.raw".into());
    options.backing_format = Some("raw".into());
    options.dedup = true;
    let storage = Arc::new(MemoryStorage::new());
    let image = Image::create(storage, &options, BackingMode::Provided(backing)).unwrap();
    // Cluster 0 is copied from the backing file with its first 512 bytes
    // zeroed: the copy's content is `copied`.
    image.write_zeroes(0, 512, false).unwrap();
    let mut copied = backing_bytes[..CS as usize].to_vec();
    copied[..512].fill(0);
    // In place: cluster 0 no longer holds `copied`.
    image.write_at(&[0xee; 100], 1000).unwrap();
    let mut now = copied.clone();
    now[1000..1100].fill(0xee);
    // A whole-cluster write of `copied` elsewhere must store it, not map
    // cluster 2 to cluster 0's host cluster.
    image.write_at(&copied, 2 * CS).unwrap();
    let mut got = vec![0u8; CS as usize];
    image.read_at(&mut got, 2 * CS).unwrap();
    assert!(got == copied, "cluster 2 reads other data than was written");
    image.read_at(&mut got, 0).unwrap();
    assert!(got == now, "cluster 0 changed");
}
