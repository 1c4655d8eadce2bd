//! What reads fall through to: a backing image (qcow2 or raw).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qcow2_io::{FileStorage, Storage};

use crate::error::{ImageError, Result};
use crate::status::{Extent, ExtentKind};

/// A read-only block device an image can sit on.
pub trait BackingSource: Send + Sync + std::fmt::Debug {
    /// Fills `buf` from guest offset `offset`; bytes past
    /// [`BackingSource::size`] read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Virtual size in bytes.
    fn size(&self) -> u64;

    /// Status of `[offset, offset + len)` with depths relative to this
    /// source, clipped to [`BackingSource::size`] (the caller decides what
    /// lies beyond). The default says "data at the same offset", as for a
    /// raw file.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let inside = self.size().saturating_sub(offset).min(len);
        if inside > 0 {
            out.push(Extent {
                start: offset,
                length: inside,
                depth: 0,
                kind: ExtentKind::Data {
                    offset: Some(offset),
                },
            });
        }
        Ok(out)
    }
}

/// Status of `[offset, offset + len)` of a raw file on `storage` (clipped
/// to `size`): data where the file has data, zeros (with their offset)
/// where it has holes, as QEMU reports raw files.
pub fn raw_block_status(
    storage: &dyn Storage,
    size: u64,
    offset: u64,
    len: u64,
) -> Result<Vec<Extent>> {
    let end = offset.saturating_add(len).min(size);
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let (data, run_end) = storage
            .data_run(pos)
            .map_err(|e| ImageError::io("looking for holes", pos, e))?;
        // A back end that makes no progress is treated as data to the end.
        let (data, stop) = if run_end > pos {
            (data, run_end.min(end))
        } else {
            (true, end)
        };
        let kind = if data {
            ExtentKind::Data { offset: Some(pos) }
        } else {
            ExtentKind::Zero { offset: Some(pos) }
        };
        crate::status::push_extent(
            &mut out,
            Extent {
                start: pos,
                length: stop - pos,
                depth: 0,
                kind,
            },
        );
        pos = stop;
    }
    Ok(out)
}

/// A raw file used as a backing image.
pub struct RawBacking {
    storage: Arc<dyn Storage>,
    size: u64,
}

impl std::fmt::Debug for RawBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBacking")
            .field("size", &self.size)
            .finish()
    }
}

impl RawBacking {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let storage = FileStorage::open(path, false).map_err(|e| ImageError::Backing {
            name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::new(Arc::new(storage))
    }

    /// Wraps any storage; its length is the virtual size.
    pub fn new(storage: Arc<dyn Storage>) -> Result<Self> {
        let size = storage
            .len()
            .map_err(|e| ImageError::io("reading the backing file length", 0, e))?;
        Ok(Self { storage, size })
    }
}

impl BackingSource for RawBacking {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let avail = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(avail);
        if !head.is_empty() {
            self.storage
                .read_at(head, offset)
                .map_err(|e| ImageError::io("reading the backing file", offset, e))?;
        }
        tail.fill(0);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        raw_block_status(&*self.storage, self.size, offset, len)
    }
}

/// Resolves a backing file name as QEMU does: relative names are relative
/// to the directory of the image that names them.
pub fn resolve_backing_path(image_path: &Path, name: &str) -> PathBuf {
    let candidate = Path::new(name);
    if candidate.is_absolute() {
        return candidate.to_path_buf();
    }
    match image_path.parent() {
        Some(dir) => dir.join(candidate),
        None => candidate.to_path_buf(),
    }
}
