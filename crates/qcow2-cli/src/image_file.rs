//! Bounded reads from an image file that may be hostile.
//!
//! Nothing here allocates from a size read out of the file without first
//! bounding it: the first cluster is sized by `cluster_bits` only once that is
//! known to be valid, and every read is capped at [`MAX_READ`].

use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use qcow2_format::header::{MAGIC, V2_HEADER_LEN};
use qcow2_format::ClusterGeometry;

use crate::error::CliError;

/// The most bytes read in one piece: the largest cluster qcow2 allows (2 MiB).
pub const MAX_READ: u64 = 2 << 20;

/// An image file opened for reading.
#[derive(Debug)]
pub struct ImageFile {
    path: PathBuf,
    file: File,
    meta: Metadata,
}

impl ImageFile {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<Self, CliError> {
        let file = File::open(path).map_err(|source| io_error(path, source))?;
        let meta = file.metadata().map_err(|source| io_error(path, source))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            meta,
        })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file length in bytes.
    pub fn len(&self) -> u64 {
        self.meta.len()
    }

    /// Bytes the file occupies on disk (`st_blocks * 512`, as `qemu-img` reports it).
    pub fn allocated_bytes(&self) -> u64 {
        self.meta.blocks().saturating_mul(512)
    }

    /// The first cluster, or the whole file when it is shorter.
    ///
    /// Without the magic, only the first 72 bytes (or fewer) are returned. With
    /// an invalid `cluster_bits` the cluster size is unknown, so up to the
    /// largest cluster is returned: either way, parsing the bytes then reports
    /// the precise rule the file breaks rather than a truncation.
    pub fn first_cluster(&mut self) -> Result<Vec<u8>, CliError> {
        let prefix = self.read_at(0, u64::from(V2_HEADER_LEN).min(self.len()))?;
        let want = match prefix_facts(&prefix) {
            PrefixFacts::NotQcow2 => return Ok(prefix),
            PrefixFacts::BadClusterBits => MAX_READ,
            PrefixFacts::ClusterSize(size) => size,
        };
        self.read_at(0, want.min(self.len()))
    }

    /// Reads exactly `len` bytes at `offset`; `len` must not exceed [`MAX_READ`].
    pub fn read_at(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, CliError> {
        if len > MAX_READ {
            return Err(CliError::TooLarge {
                path: self.path.clone(),
                what: "a read",
                size: len,
                limit: MAX_READ,
            });
        }
        // Bounded by MAX_READ just above, so the cast and the allocation are safe.
        let mut buf = vec![0u8; len as usize];
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|source| io_error(&self.path, source))?;
        Ok(buf)
    }
}

/// What the first 72 bytes say about how much of the file makes the first cluster.
#[derive(Debug, PartialEq, Eq)]
enum PrefixFacts {
    /// Too short or no magic: the prefix alone shows what is wrong.
    NotQcow2,
    /// The magic is there but `cluster_bits` is out of range.
    BadClusterBits,
    /// A valid cluster size.
    ClusterSize(u64),
}

fn prefix_facts(prefix: &[u8]) -> PrefixFacts {
    let field = |at: usize| {
        prefix
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    match (field(0), field(20)) {
        (Some(MAGIC), Some(bits)) if prefix.len() >= V2_HEADER_LEN as usize => {
            ClusterGeometry::new(bits).map_or(PrefixFacts::BadClusterBits, |g| {
                PrefixFacts::ClusterSize(g.cluster_size())
            })
        }
        _ => PrefixFacts::NotQcow2,
    }
}

fn io_error(path: &Path, source: std::io::Error) -> CliError {
    CliError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(magic: u32, bits: u32) -> Vec<u8> {
        let mut p = vec![0u8; 72];
        p[..4].copy_from_slice(&magic.to_be_bytes());
        p[20..24].copy_from_slice(&bits.to_be_bytes());
        p
    }

    #[test]
    fn cluster_size_needs_magic_and_valid_bits() {
        use PrefixFacts::*;
        assert_eq!(prefix_facts(&prefix(MAGIC, 16)), ClusterSize(65536));
        assert_eq!(prefix_facts(&prefix(MAGIC, 21)), ClusterSize(MAX_READ));
        assert_eq!(prefix_facts(&prefix(MAGIC, 8)), BadClusterBits);
        assert_eq!(prefix_facts(&prefix(MAGIC, u32::MAX)), BadClusterBits);
        assert_eq!(prefix_facts(&prefix(0, 16)), NotQcow2);
        assert_eq!(prefix_facts(&prefix(MAGIC, 16)[..71]), NotQcow2);
    }
}
