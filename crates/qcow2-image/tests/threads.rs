//! `Image` is shared between threads: concurrent readers see exactly the
//! written data, also while a writer changes other ranges.

mod common;

use std::sync::Arc;

use common::Rng;
use qcow2_image::{BackingMode, CreateOptions, Image};
use qcow2_io::MemoryStorage;

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
