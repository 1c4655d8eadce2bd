//! The `qcow2` command line.
#![forbid(unsafe_code)]

fn main() {}
