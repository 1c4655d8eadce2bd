//! The qcow2 conformance suite: every rule of `docs/spec.md` checked against
//! positive cases (golden images made by `qemu-img`, images carrying the seed
//! extensions) and negative cases (mutations that break exactly that rule).
//!
//! `cargo xtask conformance` prints one line per rule; `cargo test -p
//! qcow2-conformance` runs the same suite and also proves that the registry and
//! `docs/spec.md` list the same rule IDs.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod case_report;
pub mod consequence;
pub mod corpus;
pub mod duties;
pub mod engine_check;
pub mod engine_images;
pub mod evaluate;
pub mod fixtures;
pub mod mutate;
pub mod negatives;
pub mod registry;
pub mod runner;
pub mod seed_images;
pub mod sparse_hex;
pub mod spec_doc;
pub mod tolerated;
pub mod walk;
pub mod writer_structure;

pub use runner::{run, RuleReport, SuiteReport};
