//! Storage on a host file with positioned I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{Storage, WriteKind};

/// A file accessed with `pread`/`pwrite`, so threads share it without a lock.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl FileStorage {
    /// Opens an existing file, read-only or read-write.
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(Self { file })
    }

    /// Creates a new file; fails when it exists unless `overwrite`.
    pub fn create(path: &Path, overwrite: bool) -> io::Result<Self> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if overwrite {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        Ok(Self {
            file: options.open(path)?,
        })
    }

    /// Wraps an already open file.
    pub fn from_file(file: File) -> Self {
        Self { file }
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _kind: WriteKind) -> io::Result<()> {
        offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn start_writeback(&self) -> io::Result<()> {
        // On Linux, DONTNEED starts asynchronous write-back of the dirty
        // pages (and drops the clean ones) without waiting for the disk.
        rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(io::Error::from)
    }

    fn data_run(&self, offset: u64) -> io::Result<(bool, u64)> {
        use rustix::fs::{seek, SeekFrom};
        let len = self.len()?;
        if offset >= len {
            return Ok((false, offset));
        }
        // Only the file position moves; all I/O here is positioned.
        match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(data) if data > offset => Ok((false, data.min(len))),
            Ok(_) => {
                let hole = seek(&self.file, SeekFrom::Hole(offset)).map_err(io::Error::from)?;
                Ok((true, hole.min(len)))
            }
            // No data after `offset`: a hole up to the end.
            Err(rustix::io::Errno::NXIO) => Ok((false, len)),
            // File systems without SEEK_DATA: all data.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok((true, len)),
            Err(e) => Err(e.into()),
        }
    }
}
