//! Writes that would land on metadata (QEMU's iotest 060): on images qemu-img
//! made, an L2 entry is pointed at a metadata structure, or a structure's
//! refcount is set to 0 so the allocator may hand it out. The write must be
//! refused under RC-OVERLAP without touching the structure, the image marked
//! corrupt on disk (writable opens refused, reads still served), and every
//! other structure left as it was.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::run;
use qcow2_image::{BackingMode, Image, ImageError, OpenOptions};
use qcow2_io::{FileStorage, Storage};

const CS: u64 = 65536;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

fn be64(bytes: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn put64(bytes: &mut [u8], at: u64, value: u64) {
    let at = at as usize;
    bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// A qemu-img image of 4 MiB holding data in guest clusters 0 and 1, with
/// snapshot "s1" when `snapshot` is set (taken after the writes).
fn qemu_image(dir: &Path, snapshot: bool) -> std::path::PathBuf {
    let path = dir.join("hostile.qcow2");
    let p = path.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", p, "4M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 128k", p]);
    if snapshot {
        run("qemu-img", &["snapshot", "-c", "s1", p]);
    }
    path
}

/// Host offset of the active L2 table of guest cluster 0.
fn first_l2(bytes: &[u8]) -> u64 {
    be64(bytes, be64(bytes, 40)) & L2_OFFSET_MASK
}

/// Offset of the 16-bit refcount entry of host cluster `cluster`.
fn refcount_entry(bytes: &[u8], cluster: u64) -> u64 {
    let block = be64(bytes, be64(bytes, 48));
    block + 2 * cluster
}

fn writable() -> OpenOptions {
    OpenOptions {
        writable: true,
        backing: BackingMode::Ignore,
    }
}

/// Writes `bytes` as the image, tries the guest write at `guest`, and
/// checks the refusal and its aftermath. `protected` is the structure's
/// host range, which must come through unchanged.
fn assert_write_refused(path: &Path, bytes: &[u8], guest: u64, protected: (u64, u64)) {
    std::fs::write(path, bytes).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::open(path, true).unwrap());
    let image = Image::open(storage.clone(), writable()).unwrap();
    let err = image.write_at(&[0xeeu8; 4096], guest).unwrap_err();
    assert!(
        matches!(&err, ImageError::Corrupt { rule: Some(r), .. } if r.as_str() == "RC-OVERLAP"),
        "write at {guest:#x}: {err}"
    );
    assert!(err.to_string().contains("RC-OVERLAP"), "{err}");
    drop(image);
    let after = std::fs::read(path).unwrap();
    let (start, end) = (protected.0 as usize, protected.1 as usize);
    assert_eq!(
        &after[start..end],
        &bytes[start..end],
        "the protected structure at {start:#x} changed"
    );
    // Only the header's incompatible bits may differ: the corrupt bit.
    let incompatible = be64(&after, 72);
    assert_eq!(incompatible, be64(bytes, 72) | 2, "corrupt bit set");
    assert_eq!(after.len(), bytes.len(), "the file length");
    assert!(
        after[..72] == bytes[..72] && after[80..] == bytes[80..],
        "nothing but the corrupt bit was written"
    );
    assert!(Image::open(storage.clone(), writable()).is_err());
    let image = Image::open(storage, OpenOptions::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    image.read_at(&mut buf, CS).unwrap();
    assert_eq!(buf, vec![0x11u8; 4096], "reads still work");
    // qemu-img check counts the entry as a corruption (exit status 2).
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(2),
        "qemu-img check of the damaged image"
    );
}

#[test]
fn a_data_entry_pointing_at_its_own_l2_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_image(dir.path(), false);
    let mut bytes = std::fs::read(&path).unwrap();
    let l2 = first_l2(&bytes);
    put64(&mut bytes, l2, l2 | 1 << 63);
    assert_write_refused(&path, &bytes, 0, (l2, l2 + CS));
}

#[test]
fn a_data_entry_pointing_at_the_snapshot_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_image(dir.path(), true);
    let mut bytes = std::fs::read(&path).unwrap();
    let table = be64(&bytes, 64);
    let l2 = first_l2(&bytes);
    put64(&mut bytes, l2, table | 1 << 63);
    assert_write_refused(&path, &bytes, 0, (table, table + 64));
}

#[test]
fn a_data_entry_pointing_at_a_snapshot_l1_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_image(dir.path(), true);
    let mut bytes = std::fs::read(&path).unwrap();
    let snapshot_l1 = be64(&bytes, be64(&bytes, 64));
    assert_ne!(snapshot_l1, be64(&bytes, 40), "the snapshot has its own L1");
    let l2 = first_l2(&bytes);
    put64(&mut bytes, l2, snapshot_l1 | 1 << 63);
    assert_write_refused(&path, &bytes, 0, (snapshot_l1, snapshot_l1 + 8));
}

#[test]
fn the_header_cluster_with_refcount_zero_is_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_image(dir.path(), false);
    let mut bytes = std::fs::read(&path).unwrap();
    let entry = refcount_entry(&bytes, 0) as usize;
    bytes[entry..entry + 2].copy_from_slice(&[0, 0]);
    // Guest cluster 2 is unallocated: the write needs a fresh cluster.
    assert_write_refused(&path, &bytes, 2 * CS, (0, 72));
}

#[test]
fn an_l2_table_with_refcount_zero_is_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_image(dir.path(), false);
    let mut bytes = std::fs::read(&path).unwrap();
    let l2 = first_l2(&bytes);
    let entry = refcount_entry(&bytes, l2 / CS) as usize;
    bytes[entry..entry + 2].copy_from_slice(&[0, 0]);
    assert_write_refused(&path, &bytes, 2 * CS, (l2, l2 + CS));
}
