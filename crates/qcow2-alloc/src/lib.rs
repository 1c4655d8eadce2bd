#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod check;
pub mod error;
pub mod refcounts;
pub mod repair;

pub use error::{AllocError, Result};
pub use refcounts::Refcounts;
