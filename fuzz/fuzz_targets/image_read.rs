//! A whole image from arbitrary bytes: opening it read-only and reading
//! guest ranges never panics, hangs or allocates without bound; whatever
//! is wrong comes back as a typed error.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use qcow2_image::{BackingMode, Image, OpenOptions};
use qcow2_io::{MemoryStorage, Storage};

fuzz_target!(|data: &[u8]| {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes(data.to_vec()));
    let options = OpenOptions {
        writable: false,
        backing: BackingMode::Ignore,
    };
    let Ok(image) = Image::open(storage, options) else {
        return;
    };
    let size = image.size();
    if size == 0 {
        return;
    }
    // A few windows spread over the disk, chosen by the input's tail.
    let seed = data.iter().rev().take(8).fold(0u64, |acc, &b| acc << 8 | u64::from(b));
    let mut buf = vec![0u8; 128 * 1024];
    for i in 0..4u64 {
        let offset = seed.wrapping_mul(i + 1).wrapping_add(i << 20) % size;
        let len = (size - offset).min(buf.len() as u64) as usize;
        let _ = image.read_at(&mut buf[..len], offset);
        let _ = image.block_status(offset, len as u64);
    }
});
