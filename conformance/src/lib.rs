//! qcow2 conformance suite (work in progress).
#![forbid(unsafe_code)]
