//! A disk image of either format the engine commands handle: qcow2 (through
//! the `qcow2-image` engine, with its backing chain) or raw.

mod raw;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use qcow2_image::{Extent, Image};

use crate::error::CliError;
pub use raw::RawDisk;

/// An image format, as named by `-f`, `-F` and `-O`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A plain file holding the guest disk byte for byte.
    Raw,
    /// A qcow2 image (version 2 or 3).
    Qcow2,
}

impl Format {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Guesses the format of `path` from its first bytes, like qemu-img:
    /// qcow2 when it starts with the qcow2 magic, raw otherwise.
    pub fn probe(path: &Path) -> Result<Self, CliError> {
        let mut file = File::open(path).map_err(|e| CliError::io(path, e))?;
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match file.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CliError::io(path, e)),
            }
        }
        Ok(
            if got == 4 && magic == qcow2_format::header::MAGIC.to_be_bytes() {
                Format::Qcow2
            } else {
                Format::Raw
            },
        )
    }
}

/// The image behind a [`Disk`].
#[derive(Debug)]
enum Backend {
    Qcow2(Box<Image>),
    Raw(RawDisk),
}

/// An open disk image of either format.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    backend: Backend,
}

impl Disk {
    /// Opens `path` as `format` (probed when `None`); qcow2 images follow
    /// their backing chain.
    pub fn open(path: &Path, format: Option<Format>, writable: bool) -> Result<Self, CliError> {
        let format = match format {
            Some(f) => f,
            None => Format::probe(path)?,
        };
        let backend = match format {
            Format::Qcow2 => Backend::Qcow2(Box::new(
                Image::open_path(path, writable).map_err(|e| CliError::image(path, e))?,
            )),
            Format::Raw => Backend::Raw(RawDisk::open(path, writable)?),
        };
        Ok(Self {
            path: path.to_path_buf(),
            backend,
        })
    }

    /// Wraps a raw file the caller already opened or created.
    pub fn from_raw(path: &Path, raw: RawDisk) -> Self {
        Self {
            path: path.to_path_buf(),
            backend: Backend::Raw(raw),
        }
    }

    /// The format.
    pub fn format(&self) -> Format {
        match self.backend {
            Backend::Qcow2(_) => Format::Qcow2,
            Backend::Raw(_) => Format::Raw,
        }
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        match &self.backend {
            Backend::Qcow2(image) => image.size(),
            Backend::Raw(raw) => raw.size(),
        }
    }

    /// Fails unless `[offset, offset + len)` lies within the disk.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), CliError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(self.wrap(qcow2_image::ImageError::OutOfBounds { offset, len, size })),
        }
    }

    fn wrap(&self, e: qcow2_image::ImageError) -> CliError {
        CliError::image(&self.path, e)
    }

    /// Reads guest bytes at `offset`; the range must lie within the disk.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), CliError> {
        match &self.backend {
            Backend::Qcow2(image) => image.read_at(buf, offset).map_err(|e| self.wrap(e)),
            Backend::Raw(raw) => raw.read_at(buf, offset).map_err(|e| self.wrap(e)),
        }
    }

    /// Writes guest bytes at `offset`; the range must lie within the disk.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), CliError> {
        match &self.backend {
            Backend::Qcow2(image) => image.write_at(data, offset).map_err(|e| self.wrap(e)),
            Backend::Raw(raw) => raw.write_at(data, offset).map_err(|e| self.wrap(e)),
        }
    }

    /// Writes `len` bytes of `pattern` at `offset` as compressed clusters
    /// (qcow2 only): the range starts on a cluster boundary and covers
    /// whole clusters, the last one possibly cut short by the disk's end.
    pub fn write_compressed(&self, pattern: u8, offset: u64, len: u64) -> Result<(), CliError> {
        let Backend::Qcow2(image) = &self.backend else {
            return Err(CliError::Usage(
                "compressed writes need a qcow2 image".into(),
            ));
        };
        let cs = image.cluster_size();
        let end = offset + len;
        if offset % cs != 0 || (end % cs != 0 && end != image.size()) {
            return Err(CliError::Usage(format!(
                "compressed writes cover whole clusters: {offset}+{len} is not aligned to {cs}"
            )));
        }
        let buf = vec![pattern; cs as usize];
        let mut at = offset;
        while at < end {
            let n = (end - at).min(cs) as usize;
            image
                .write_compressed(&buf[..n], at)
                .map_err(|e| self.wrap(e))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Makes a range read as zeros; `unmap` lets the space go.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), CliError> {
        match &self.backend {
            Backend::Qcow2(image) => image
                .write_zeroes(offset, len, unmap)
                .map_err(|e| self.wrap(e)),
            Backend::Raw(raw) => raw.write_zeroes(offset, len).map_err(|e| self.wrap(e)),
        }
    }

    /// Discards a range (qcow2: whole clusters; raw: punches a hole).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), CliError> {
        match &self.backend {
            Backend::Qcow2(image) => image.discard(offset, len).map_err(|e| self.wrap(e)),
            Backend::Raw(raw) => raw.discard(offset, len).map_err(|e| self.wrap(e)),
        }
    }

    /// Changes the virtual size.
    pub fn resize(&self, new_size: u64) -> Result<(), CliError> {
        match &self.backend {
            Backend::Qcow2(image) => image.resize(new_size).map_err(|e| self.wrap(e)),
            Backend::Raw(raw) => raw.resize(new_size).map_err(|e| self.wrap(e)),
        }
    }

    /// Makes every change durable.
    pub fn flush(&self) -> Result<(), CliError> {
        match &self.backend {
            Backend::Qcow2(image) => image.flush().map_err(|e| self.wrap(e)),
            Backend::Raw(raw) => raw.flush().map_err(|e| self.wrap(e)),
        }
    }

    /// Flushes and closes, reporting a failed flush.
    pub fn close(self) -> Result<(), CliError> {
        match self.backend {
            Backend::Qcow2(image) => image.close().map_err(|e| CliError::image(&self.path, e)),
            Backend::Raw(raw) => raw.flush().map_err(|e| CliError::image(&self.path, e)),
        }
    }

    /// The disk as a read-only source (for the convert pipeline).
    pub fn source(&self) -> &dyn qcow2_image::BackingSource {
        match &self.backend {
            Backend::Qcow2(image) => &**image,
            Backend::Raw(raw) => raw,
        }
    }

    /// What backs `[offset, offset + len)` (clipped to the disk), through
    /// the backing chain; a raw file is data at the same offset throughout.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, CliError> {
        match &self.backend {
            Backend::Qcow2(image) => image.block_status(offset, len).map_err(|e| self.wrap(e)),
            Backend::Raw(raw) => raw.extents(offset, len).map_err(|e| self.wrap(e)),
        }
    }
}
