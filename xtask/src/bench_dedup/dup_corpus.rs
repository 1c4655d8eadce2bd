//! The duplicated corpus of `bench dedup`: its layout and the raw files.

use super::*;

/// The layout of the duplicated image for a segment of `segment` bytes.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    pub(super) segment: u64,
    pub(super) disk: u64,
}

impl Layout {
    pub(super) fn new(segment_mib: u64) -> Self {
        Self {
            segment: segment_mib << 20,
            disk: (segment_mib * 2048).div_ceil(FULL_SEGMENT_MIB) << 20,
        }
    }

    /// Where the three copies of the segment start.
    pub(super) fn copies(self) -> [u64; 3] {
        [0, self.segment + KIB64, 2 * self.segment + 3 * KIB64]
    }

    /// Where the unique tail starts in the image.
    pub(super) fn tail(self) -> u64 {
        3 * self.segment + 3 * KIB64
    }

    /// `(image offset, source offset or None for zeros, length)` pieces in
    /// image order, covering the whole image.
    pub(super) fn pieces(self) -> Vec<(u64, Option<u64>, u64)> {
        let [a, b, c] = self.copies();
        let s = self.segment;
        vec![
            (a, Some(0), s),
            (s, None, b - s),
            (b, Some(0), s),
            (b + s, None, c - b - s),
            (c, Some(0), s),
            (self.tail(), Some(s), self.disk - self.tail()),
        ]
    }
}

/// Builds `dup-SM.raw` from the ext4 disk `fs` (of `layout.disk` bytes)
/// unless it is already there with the right size.
pub(super) fn ensure_dup(
    dir: &Path,
    fs_raw: &Path,
    segment_mib: u64,
    layout: Layout,
) -> Result<PathBuf, String> {
    let image = dir.join(format!("dup-{segment_mib}M.raw"));
    if fs::metadata(&image).is_ok_and(|m| m.len() == layout.disk) {
        println!("corpus: reusing {}", image.display());
        return Ok(image);
    }
    println!("corpus: writing {}", image.display());
    let tmp = dir.join(format!("dup-{segment_mib}M.tmp"));
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut src = File::open(fs_raw).map_err(|e| err(fs_raw, e))?;
    let mut dst = File::create(&tmp).map_err(|e| err(&tmp, e))?;
    let mut buf = vec![0u8; 1 << 20];
    for (_, source, len) in layout.pieces() {
        let mut left = len;
        if let Some(at) = source {
            use std::io::{Seek, SeekFrom};
            src.seek(SeekFrom::Start(at)).map_err(|e| err(fs_raw, e))?;
        }
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            match source {
                Some(_) => src.read_exact(&mut buf[..n]).map_err(|e| err(fs_raw, e))?,
                None => buf[..n].fill(0),
            }
            dst.write_all(&buf[..n]).map_err(|e| err(&tmp, e))?;
            left -= n as u64;
        }
    }
    dst.sync_all().map_err(|e| err(&tmp, e))?;
    if dst.metadata().map(|m| m.len()).unwrap_or(0) != layout.disk {
        return Err(format!("{} has the wrong size", tmp.display()));
    }
    fs::rename(&tmp, &image).map_err(|e| err(&image, e))?;
    Ok(image)
}

/// A raw file of `clusters` clusters of `cluster` bytes, each distinct and
/// non-zero: its index (little endian) in the first 8 bytes, a fixed
/// pattern in the next 8, zeros after.
pub(super) fn write_distinct_raw(path: &Path, clusters: u64, cluster: u64) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = File::create(path).map_err(err)?;
    let per_buf = (4 << 20) / cluster;
    let mut buf = vec![0u8; (per_buf * cluster) as usize];
    let mut i = 0;
    while i < clusters {
        let n = per_buf.min(clusters - i);
        for k in 0..n {
            let at = (k * cluster) as usize;
            buf[at..at + 8].copy_from_slice(&(i + k).to_le_bytes());
            buf[at + 8..at + 16].copy_from_slice(&0x5eed_d0d0_c0de_beefu64.to_le_bytes());
        }
        file.write_all(&buf[..(n * cluster) as usize])
            .map_err(err)?;
        i += n;
    }
    file.sync_all().map_err(err)
}

// ----------------------------------------------------------------- probe
