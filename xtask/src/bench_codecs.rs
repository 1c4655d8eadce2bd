//! `cargo xtask bench codecs`: single-thread codec throughput on real clusters.

/// Runs the codec benchmark.
pub(crate) fn run(_args: &[String]) -> Result<(), String> {
    Err("bench codecs is not implemented yet".to_string())
}
