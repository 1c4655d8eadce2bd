//! Read and write qcow2 images the way QEMU does.
//!
//! [`Image`] opens or creates an image on any [`qcow2_io::Storage`] and
//! offers positioned reads and writes, zero writes, discards, resize and
//! flush, with backing chains (qcow2 or raw), extended L2 subclusters and
//! compressed cluster reads. See the crate README, included below.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod amend;
mod amend_codec;
mod backing;
mod compress;
mod convert;
mod convert_dedup;
mod convert_raw;
mod convert_repeat;
mod create;
mod dedup;
mod dedup_write;
mod error;
mod image;
mod l2_cache;
mod layout;
mod meta;
mod metadata_guard;
mod options;
mod plan;
mod resize;
mod snapshot_table;
mod status;
mod write;
mod write_shared;
mod zero;

pub use amend::{AmendOptions, AmendReport, Compat};
pub use backing::{raw_block_status, resolve_backing_path, BackingSource, RawBacking};
pub use convert::{ConvertOptions, ConvertStats};
pub use convert_raw::convert_to_raw;
pub use dedup_write::{rebuild_dedup, DedupOverwrite, DedupPassReport, DedupTableReferences};
pub use error::{ImageError, Result};
pub use image::{codec_max_level, read_area as read_header_area, Image};
pub use options::{BackingMode, CreateOptions, OpenOptions, Preallocation};
pub use qcow2_dedup::is_zero;
pub use status::{Extent, ExtentKind};
