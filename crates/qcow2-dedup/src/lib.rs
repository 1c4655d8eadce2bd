//! Deduplication for qcow2 images (the seed extension `0xCD8E819B`).
//!
//! - [`hash_cluster`] / [`hash_clusters`]: SHA-256 of whole clusters, with
//!   the `sha2` crate's CPU acceleration ([`sha256_backend`] says which);
//! - [`DedupTable`]: the on-disk two-level table of an image open for
//!   writing (indexed by physical cluster), grown as the file grows;
//! - [`DigestIndex`]: digest -> physical cluster in about 10 bytes an
//!   entry; hits are confirmed against the full digest in the table;
//! - [`verify`], [`table_ranges`], [`live_data`]: an image's dedup state
//!   read from its bytes, for `check`, `info` and rebuilds.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod digest;
mod error;
mod index;
mod scan;
mod table;

pub use digest::{hash_cluster, hash_clusters, is_zero, sha256_backend, Digest};
pub use error::{DedupError, Result};
pub use index::{DigestIndex, MAX_INDEXED_CLUSTER};
pub use scan::{
    live_data, stats, table_ranges, verify, walk_active, DedupFinding, DedupStats, GuestMapping,
    Severity, Verification,
};
pub use table::{ClusterAllocator, DedupTable, MAX_L1_ENTRIES};
