//! Raw disk files: the guest disk stored byte for byte.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use qcow2_image::ImageError;
use qcow2_io::{FileStorage, Storage, WriteKind};

use crate::error::CliError;

/// A raw file opened as a disk; its length is the virtual size.
#[derive(Debug)]
pub struct RawDisk {
    storage: FileStorage,
    size: AtomicU64,
    writable: bool,
}

impl RawDisk {
    /// Opens an existing raw file.
    pub fn open(path: &Path, writable: bool) -> Result<Self, CliError> {
        let storage = FileStorage::open(path, writable).map_err(|e| CliError::io(path, e))?;
        let size = storage.len().map_err(|e| CliError::io(path, e))?;
        Ok(Self {
            storage,
            size: AtomicU64::new(size),
            writable,
        })
    }

    /// Creates (or truncates) `path` as a sparse raw file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> Result<Self, CliError> {
        let storage = FileStorage::create(path, true).map_err(|e| CliError::io(path, e))?;
        storage.set_len(size).map_err(|e| CliError::io(path, e))?;
        Ok(Self {
            storage,
            size: AtomicU64::new(size),
            writable: true,
        })
    }

    /// The file, for the convert pipeline's positioned writes.
    pub fn storage(&self) -> &FileStorage {
        &self.storage
    }

    /// Data and holes of `[offset, offset + len)`, clipped to the disk.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<qcow2_image::Extent>, ImageError> {
        qcow2_image::raw_block_status(&self.storage, self.size(), offset, len)
    }

    /// Virtual size (the file length).
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn check(&self, offset: u64, len: u64, write: bool) -> Result<(), ImageError> {
        if write && !self.writable {
            return Err(ImageError::ReadOnly { reason: None });
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ImageError::OutOfBounds { offset, len, size }),
        }
    }

    /// Reads bytes within the file.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.check(offset, buf.len() as u64, false)?;
        self.storage
            .read_at(buf, offset)
            .map_err(|e| ImageError::io("reading the raw file", offset, e))
    }

    /// Writes bytes within the file.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), ImageError> {
        self.check(offset, data.len() as u64, true)?;
        self.storage
            .write_at(data, offset, WriteKind::Data)
            .map_err(|e| ImageError::io("writing the raw file", offset, e))
    }

    /// Writes zero bytes over a range.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check(offset, len, true)?;
        self.storage
            .write_zeroes(offset, len, WriteKind::Data)
            .map_err(|e| ImageError::io("zeroing the raw file", offset, e))
    }

    /// Discards a range: it reads as zeros afterwards (the bytes are
    /// written as zeros; no hole is punched).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.write_zeroes(offset, len)
    }

    /// Truncates or extends the file.
    pub fn resize(&self, new_size: u64) -> Result<(), ImageError> {
        if !self.writable {
            return Err(ImageError::ReadOnly { reason: None });
        }
        self.storage
            .set_len(new_size)
            .map_err(|e| ImageError::io("resizing the raw file", new_size, e))?;
        self.size.store(new_size, Ordering::Relaxed);
        Ok(())
    }

    /// Makes writes durable.
    pub fn flush(&self) -> Result<(), ImageError> {
        if !self.writable {
            return Ok(());
        }
        self.storage
            .flush()
            .map_err(|e| ImageError::io("flushing the raw file", 0, e))
    }
}

impl qcow2_image::BackingSource for RawDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        RawDisk::read_at(self, buf, offset)
    }

    fn size(&self) -> u64 {
        RawDisk::size(self)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<qcow2_image::Extent>, ImageError> {
        self.extents(offset, len)
    }
}
