//! The copy loop of `convert`: the source is read in large chunks, ranges
//! the source reports as zero or unallocated are skipped without reading,
//! and only runs of units holding a non-zero byte are written, so zeros
//! stay unallocated in the destination.

use qcow2_image::{is_zero, ExtentKind};

use crate::disk::Disk;
use crate::error::CliError;
use crate::progress::Progress;

/// Bytes read from the source at a time (at least one destination unit).
const CHUNK: u64 = 2 << 20;

/// Copies every non-zero byte of `src` to `dst` (both of the same virtual
/// size; `dst` reads as zeros to begin with). `unit` is the granularity of
/// zero detection: the destination cluster size, or 4 KiB for raw files.
pub fn copy(src: &Disk, dst: &Disk, unit: u64, progress: &mut Progress) -> Result<(), CliError> {
    let size = src.size();
    let chunk = CHUNK.max(unit);
    let mut buf = vec![0u8; chunk as usize];
    let mut pos = 0;
    while pos < size {
        let len = (size - pos).min(chunk);
        if has_data(src, pos, len)? {
            let buf = &mut buf[..len as usize];
            src.read_at(buf, pos)?;
            write_non_zero(dst, buf, pos, unit)?;
        }
        pos += len;
        progress.update(pos);
    }
    Ok(())
}

/// Whether any part of the range may hold non-zero bytes.
fn has_data(src: &Disk, pos: u64, len: u64) -> Result<bool, CliError> {
    Ok(src
        .extents(pos, len)?
        .iter()
        .any(|e| matches!(e.kind, ExtentKind::Data { .. } | ExtentKind::Compressed)))
}

/// Writes the runs of `unit`-sized pieces of `buf` (which starts at guest
/// `pos`, a multiple of `unit`) that hold a non-zero byte.
fn write_non_zero(dst: &Disk, buf: &[u8], pos: u64, unit: u64) -> Result<(), CliError> {
    let unit = unit as usize;
    let mut run_start: Option<usize> = None;
    let mut at = 0;
    while at < buf.len() {
        let end = (at + unit).min(buf.len());
        let zero = is_zero(&buf[at..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                dst.write_at(&buf[start..at], pos + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(start) = run_start {
        dst.write_at(&buf[start..], pos + start as u64)?;
    }
    Ok(())
}
