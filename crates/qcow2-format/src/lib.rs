//! On-disk layouts of the qcow2 image format, without I/O.
//!
//! This crate parses and serializes every fixed and variable structure of a
//! qcow2 image (header v2/v3, header extensions including the seed
//! compress-format and deduplication extensions, L1/L2 entries, compressed
//! cluster descriptors, refcount structures, snapshots, dedup tables) and
//! validates them. Every error names the rule of `docs/spec.md` it breaks and
//! the byte offset where it was found. Every size and count read from disk is
//! bounded before it is used.
//!
//! See the crate README, included below, for an example.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod area;
pub mod error;
pub mod extensions;
pub mod features;
pub mod header;
mod header_checks;
pub mod rules;
pub mod tables;
pub mod units;

pub use area::{Assessment, HeaderArea, Note};
pub use error::{ErrorKind, FormatError, Result};
pub use features::Features;
pub use header::{CompressionType, CryptMethod, Header};
pub use rules::RuleId;
pub use units::{ClusterGeometry, ClusterIndex, GuestOffset, HostOffset};
