//! Options of [`Image::create`](crate::Image::create) and
//! [`Image::open`](crate::Image::open).

use std::path::PathBuf;
use std::sync::Arc;

use crate::backing::BackingSource;

/// How to lay out metadata at creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocation {
    /// Allocate nothing up front (QEMU's `off`).
    #[default]
    Off,
    /// Allocate every L2 table and data cluster, data left as zeros
    /// (QEMU's `metadata`).
    Metadata,
}

/// Parameters of a new image; defaults match `qemu-img create -f qcow2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes (rounded up to 512 like QEMU).
    pub size: u64,
    /// Cluster size in bytes: a power of two from 512 B to 2 MiB.
    pub cluster_size: u64,
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`).
    pub version: u32,
    /// Refcount width in bits: 1, 2, 4, ..., 64 (16 for version 2).
    pub refcount_bits: u32,
    /// Set the lazy refcounts compatible bit (version 3).
    pub lazy_refcounts: bool,
    /// Extended L2 entries with 32 subclusters (version 3, clusters of at
    /// least 16 KiB).
    pub extended_l2: bool,
    /// Backing file name, stored as given.
    pub backing_file: Option<String>,
    /// Backing format (`qcow2`, `raw`), stored in its header extension.
    pub backing_format: Option<String>,
    /// Metadata preallocation.
    pub preallocation: Preallocation,
    /// QEMU compression type (0 zlib, 1 zstd); 1 sets incompatible bit 3.
    pub compression_type: u8,
    /// The seed compress format: codec name (`zlib`, `zstd`, `brotli`) and
    /// level (0 = the codec's default). Writes incompatible bit 2 and
    /// extension `0xC03183A3`; QEMU cannot open such images. Excludes a
    /// non-zero `compression_type`.
    pub compress_format: Option<(String, u8)>,
    /// Deduplicate (the seed extension): an empty dedup table and
    /// incompatible bit 1. QEMU reads such images as corrupt, hence
    /// read-only. Needs version 3 and standard L2 entries.
    pub dedup: bool,
}

impl CreateOptions {
    /// Defaults for a disk of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            cluster_size: 65536,
            version: 3,
            refcount_bits: 16,
            lazy_refcounts: false,
            extended_l2: false,
            backing_file: None,
            backing_format: None,
            preallocation: Preallocation::Off,
            compression_type: 0,
            compress_format: None,
            dedup: false,
        }
    }
}

/// Where reads of unallocated clusters go.
#[derive(Clone, Debug, Default)]
pub enum BackingMode {
    /// Open the backing file the header names, relative to this path (the
    /// image's own path).
    Follow(PathBuf),
    /// Ignore any backing file: unallocated clusters read as zeros.
    #[default]
    Ignore,
    /// Use this source.
    Provided(Arc<dyn BackingSource>),
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Allow writes.
    pub writable: bool,
    /// Where backing reads go.
    pub backing: BackingMode,
}
