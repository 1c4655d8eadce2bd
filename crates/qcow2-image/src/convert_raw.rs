//! Converting into a raw file: the source is read in chunks on every worker
//! (so a compressed or deduplicated qcow2 source decompresses on all
//! cores), zeros are detected there too, and each worker writes the
//! non-zero runs of its chunk at their own offsets, out of order, which a
//! raw file does not mind. Workers take the next chunk as soon as they are
//! free; at most one chunk per worker is in memory.

use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

use qcow2_dedup::is_zero;
use qcow2_io::{Storage, WriteKind};

use crate::backing::BackingSource;
use crate::convert::{has_data, with_threads, ConvertOptions, ConvertStats, WRITEBACK_EVERY};
use crate::error::{ImageError, Result};

/// Source bytes one worker reads at a time.
const CHUNK: u64 = 2 << 20;
/// Zero detection granularity (qemu-img's default `-S 4k`).
const UNIT: u64 = 4096;

/// What the workers report back, under one lock.
struct Done<'a> {
    bytes: u64,
    /// `bytes` when write-back was last started.
    hinted: u64,
    progress: &'a mut (dyn FnMut(u64) + Send),
}

/// Copies every non-zero 4 KiB unit of `source` into `dst`, a raw file of
/// at least the source's size that reads as zeros (a new or truncated
/// file): zero units are left as holes. `progress` gets the bytes done
/// (a growing count, chunks finishing in any order). Stats count 4 KiB
/// units.
pub fn convert_to_raw(
    source: &dyn BackingSource,
    dst: &dyn Storage,
    options: &ConvertOptions,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<ConvertStats> {
    if options.compress {
        return Err(ImageError::InvalidArgument {
            what: "convert options",
            reason: "a raw destination cannot hold compressed clusters".into(),
        });
    }
    with_threads(options.threads, move || copy_all(source, dst, progress))
}

fn copy_all(
    source: &dyn BackingSource,
    dst: &dyn Storage,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<ConvertStats> {
    let size = source.size();
    let chunks: Vec<u64> = (0..size).step_by(CHUNK as usize).collect();
    // Workers take chunks as they free up (no round waits for its slowest
    // chunk); the bytes done are counted under the lock that calls
    // `progress`, so it sees them grow.
    let done = Mutex::new(Done {
        bytes: 0,
        hinted: 0,
        progress,
    });
    let counts = chunks
        .par_iter()
        .map(|&start| {
            let len = CHUNK.min(size - start);
            let counts = copy_chunk(source, dst, start, len)?;
            let mut guard = done.lock().unwrap_or_else(PoisonError::into_inner);
            guard.bytes += len;
            let bytes = guard.bytes;
            (guard.progress)(bytes);
            if bytes - guard.hinted >= WRITEBACK_EVERY {
                // The disk writes while the workers decompress, instead of
                // all at the final flush; only a hint, so errors are moot.
                guard.hinted = bytes;
                let _ = dst.start_writeback();
            }
            Ok(counts)
        })
        .collect::<Result<Vec<(u64, u64)>>>()?;
    let mut stats = ConvertStats::default();
    for (written, zero) in counts {
        stats.plain += written;
        stats.zero += zero;
    }
    Ok(stats)
}

/// Copies one chunk; returns the units written and the units left as zeros.
fn copy_chunk(
    source: &dyn BackingSource,
    dst: &dyn Storage,
    start: u64,
    len: u64,
) -> Result<(u64, u64)> {
    let units = len.div_ceil(UNIT);
    if !has_data(source, start, len)? {
        return Ok((0, units));
    }
    let mut buf = vec![0u8; len as usize];
    source.read_at(&mut buf, start)?;
    let mut written = 0;
    let mut run: Option<usize> = None;
    let write = |from: usize, to: usize| {
        let at = start + from as u64;
        dst.write_at(&buf[from..to], at, WriteKind::Data)
            .map_err(|e| ImageError::io("writing the raw destination", at, e))
    };
    for k in 0..units as usize {
        let (a, b) = (k * UNIT as usize, ((k + 1) * UNIT as usize).min(buf.len()));
        let zero = is_zero(&buf[a..b]);
        match (zero, run) {
            (false, None) => run = Some(a),
            (true, Some(from)) => {
                write(from, a)?;
                run = None;
            }
            _ => {}
        }
        written += u64::from(!zero);
    }
    if let Some(from) = run {
        write(from, buf.len())?;
    }
    Ok((written, units - written))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use qcow2_io::{MemoryStorage, Storage};

    use super::*;
    use crate::{BackingMode, CreateOptions, Image};

    /// A 9 MiB qcow2 source (an odd number of chunks) with plain,
    /// compressed and zero-written data, and the bytes it reads as.
    fn source() -> (Image, Vec<u8>) {
        let mut o = CreateOptions::new(9 << 20);
        o.cluster_size = 65536;
        let image = Image::create(Arc::new(MemoryStorage::new()), &o, BackingMode::Ignore).unwrap();
        let mut want = vec![0u8; 9 << 20];
        let text: Vec<u8> = (0..65536u32).map(|i| b'a' + (i / 9 % 26) as u8).collect();
        image.write_compressed(&text, 3 << 20).unwrap();
        want[3 << 20..(3 << 20) + 65536].copy_from_slice(&text);
        image.write_at(&[0x42; 5000], (7 << 20) + 100).unwrap();
        want[(7 << 20) + 100..(7 << 20) + 5100].fill(0x42);
        image.write_at(&[0; 8192], 1 << 20).unwrap();
        (image, want)
    }

    #[test]
    fn raw_copy_equals_the_source_whatever_the_thread_count() {
        let (image, want) = source();
        for threads in [1, 3] {
            let dst = MemoryStorage::new();
            dst.set_len(want.len() as u64).unwrap();
            let options = ConvertOptions {
                compress: false,
                threads: Some(threads),
            };
            let mut seen = Vec::new();
            let stats =
                convert_to_raw(&image, &dst, &options, &mut |done| seen.push(done)).unwrap();
            assert_eq!(dst.to_vec(), want, "{threads} threads");
            // 16 units of the compressed cluster, 2 of the 5000-byte write.
            assert_eq!(stats.plain, 18, "{threads} threads");
            assert_eq!(stats.plain + stats.zero, want.len() as u64 / UNIT);
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
            assert_eq!(seen.last(), Some(&(want.len() as u64)));
        }
    }

    #[test]
    fn compressed_raw_destinations_are_refused() {
        let (image, _) = source();
        let options = ConvertOptions {
            compress: true,
            threads: None,
        };
        let err = convert_to_raw(&image, &MemoryStorage::new(), &options, &mut |_| {});
        assert!(matches!(err, Err(ImageError::InvalidArgument { .. })));
    }
}
