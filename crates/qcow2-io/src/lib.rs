#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod fault;
mod file;
mod memory;
mod storage;

pub use fault::{Effect, Fault, FaultError, FaultStorage, Trigger};
pub use file::FileStorage;
pub use memory::MemoryStorage;
pub use storage::{Storage, WriteKind};
