#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod brotli;
mod codec;
mod deflate;
mod error;
mod level;
mod pool;
mod registry;
mod state;
mod zlib;
mod zstd;

pub use crate::brotli::Brotli;
pub use crate::codec::{
    check_compress_args, check_decompress_args, Codec, CompressOutcome, MAX_CLUSTER_SIZE,
};
pub use crate::error::{CodecError, RegistryError};
pub use crate::level::LevelSpec;
#[doc(hidden)]
pub use crate::pool::{brotli_pool_stats, BrotliPoolStats};
pub use crate::registry::{CodecInfo, Registry, MAX_NAME_LEN};
pub use crate::zlib::Zlib;
pub use crate::zstd::Zstd;
