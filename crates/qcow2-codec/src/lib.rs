//! Per-cluster compression codecs for qcow2 (work in progress, see the `[codecs]` issue).
#![forbid(unsafe_code)]
