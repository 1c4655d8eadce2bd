//! The compressed side of a check: every compressed cluster the active
//! tables map is decoded (CMP-DECODE), which `qemu-img check` does not do.

use std::sync::Arc;

use qcow2_alloc::check::CheckReport;
use qcow2_image::{BackingMode, ExtentKind, Image, OpenOptions};
use qcow2_io::Storage;

/// Decodes every compressed guest cluster through the engine's read path,
/// printing and counting each one that does not decode as a corruption.
/// An image the engine does not open is left to the refcount check, which
/// has already said why.
pub(super) fn decode_pass(storage: &Arc<dyn Storage>, report: &mut CheckReport) {
    if report.compressed_clusters == 0 {
        return;
    }
    let options = OpenOptions {
        writable: false,
        // Compressed clusters are in this file: the chain is not needed.
        backing: BackingMode::Ignore,
    };
    let Ok(image) = Image::open(storage.clone(), options) else {
        return;
    };
    let Ok(extents) = image.block_status(0, image.size()) else {
        return;
    };
    let cs = image.cluster_size();
    let mut buf = vec![0u8; cs as usize];
    for x in extents.iter().filter(|x| x.kind == ExtentKind::Compressed) {
        let mut guest = x.start;
        while guest < x.start + x.length {
            let len = (x.start + x.length - guest).min(cs - guest % cs);
            if let Err(e) = image.read_at(&mut buf[..len as usize], guest) {
                report.corruptions += 1;
                eprintln!(
                    "ERROR {}: the compressed cluster at guest offset {guest:#x} does not decode: {e}",
                    qcow2_format::rules::CMP_DECODE
                );
            }
            guest += len;
        }
    }
}
