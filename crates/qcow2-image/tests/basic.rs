//! In-memory behaviour of the engine: create, write, read back, reopen.

use std::sync::Arc;

use qcow2_image::{BackingMode, CreateOptions, Image, OpenOptions};
use qcow2_io::{MemoryStorage, Storage};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn create(options: &CreateOptions) -> (Arc<MemoryStorage>, Image) {
    let storage = Arc::new(MemoryStorage::new());
    let image = Image::create(storage.clone(), options, BackingMode::Ignore).unwrap();
    (storage, image)
}

fn reopen(storage: &Arc<MemoryStorage>) -> Image {
    let copy: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes(storage.to_vec()));
    Image::open(copy, OpenOptions::default()).unwrap()
}

#[test]
fn fresh_image_reads_zeros() {
    let (_, image) = create(&CreateOptions::new(1 << 20));
    let mut buf = vec![1u8; 4096];
    image.read_at(&mut buf, 8192).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn write_read_round_trip_across_layouts() {
    for (cluster_size, extended, refcount_bits) in [
        (512, false, 16),
        (4096, false, 1),
        (65536, false, 64),
        (65536, true, 16),
        (16384, true, 8),
    ] {
        let mut options = CreateOptions::new(8 << 20);
        options.cluster_size = cluster_size;
        options.extended_l2 = extended;
        options.refcount_bits = refcount_bits;
        let (storage, image) = create(&options);
        let mut model = vec![0u8; 8 << 20];
        let writes = [
            (0u64, 100usize),
            (4000, 9000),
            (65536 * 3 + 17, 200_000),
            ((8 << 20) - 512, 512),
        ]
        .iter()
        .enumerate();
        for (i, &(offset, len)) in writes {
            let data = pattern(len, i as u8);
            image.write_at(&data, offset).unwrap();
            model[offset as usize..offset as usize + len].copy_from_slice(&data);
        }
        // Overwrite in place.
        let data = pattern(3000, 99);
        image.write_at(&data, 4100).unwrap();
        model[4100..7100].copy_from_slice(&data);
        let mut buf = vec![0u8; model.len()];
        image.read_at(&mut buf, 0).unwrap();
        assert!(buf == model, "cluster {cluster_size} extended {extended}");
        image.flush().unwrap();
        let again = reopen(&storage);
        let mut buf2 = vec![0u8; model.len()];
        again.read_at(&mut buf2, 0).unwrap();
        assert!(
            buf2 == model,
            "after reopen: cluster {cluster_size} extended {extended}"
        );
    }
}

#[test]
fn out_of_bounds_and_read_only_are_refused() {
    let (storage, image) = create(&CreateOptions::new(1 << 20));
    assert!(image.write_at(&[1], 1 << 20).is_err());
    image.flush().unwrap();
    let ro = reopen(&storage);
    assert!(matches!(
        ro.write_at(&[1], 0),
        Err(qcow2_image::ImageError::ReadOnly { .. })
    ));
}

#[test]
fn a_data_entry_pointing_at_metadata_refuses_the_write() {
    let mut options = CreateOptions::new(1 << 20);
    options.cluster_size = 4096;
    let (storage, image) = create(&options);
    image.write_at(&[7u8; 4096], 0).unwrap();
    image.close().unwrap();
    // Point guest cluster 0 at the L1 table (COPIED set, as a hostile image could).
    let mut bytes = storage.to_vec();
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let l2 = (u64::from_be_bytes(bytes[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00)
        as usize;
    bytes[l2..l2 + 8].copy_from_slice(&((l1 as u64) | (1 << 63)).to_be_bytes());
    let hostile: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes(bytes.clone()));
    let image = Image::open(
        hostile.clone(),
        OpenOptions {
            writable: true,
            backing: BackingMode::Ignore,
        },
    )
    .unwrap();
    let err = image.write_at(&[1u8; 16], 0).unwrap_err();
    assert!(
        matches!(err, qcow2_image::ImageError::Corrupt { .. }),
        "{err}"
    );
    drop(image);
    let mut after = vec![0u8; 8];
    hostile.read_at(&mut after, l1 as u64).unwrap();
    assert_eq!(&after, &bytes[l1..l1 + 8], "the L1 table is untouched");

    // As QEMU does (iotest 060), the refusal marks the image corrupt on
    // disk: it now opens read-only only, and reads still work.
    let mut header = vec![0u8; 80];
    hostile.read_at(&mut header, 0).unwrap();
    let incompatible = u64::from_be_bytes(header[72..80].try_into().unwrap());
    assert_ne!(incompatible & 2, 0, "corrupt bit set");
    let writable = || OpenOptions {
        writable: true,
        backing: BackingMode::Ignore,
    };
    assert!(Image::open(hostile.clone(), writable()).is_err());
    let image = Image::open(hostile.clone(), OpenOptions::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    image.read_at(&mut buf, 4096).unwrap();
    drop(image);
    // A repair that leaves no corruption clears the bit; the overlapping
    // entry is one, so the entry is put right first, as a user would.
    hostile
        .write_at(&bytes[l2..l2 + 8], l2 as u64, qcow2_io::WriteKind::Other)
        .unwrap();
    let original = u64::from_be_bytes(storage.to_vec()[l2..l2 + 8].try_into().unwrap());
    hostile
        .write_at(
            &original.to_be_bytes(),
            l2 as u64,
            qcow2_io::WriteKind::Other,
        )
        .unwrap();
    let done =
        qcow2_alloc::repair::repair(&*hostile, qcow2_alloc::repair::RepairMode::All, &[]).unwrap();
    assert!(done.final_report().is_clean(), "{:#?}", done.final_report());
    Image::open(hostile, writable()).unwrap().close().unwrap();
}
