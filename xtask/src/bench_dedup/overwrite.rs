//! `bench dedup probe overwrite DIR`: the two ways of overwriting an
//! indexed, private cluster ([`DedupOverwrite`]) timed against each other
//! on the same random writes, with real fsyncs.
//!
//! Each run creates a dedup image of [`FILLED`] distinct 64 KiB clusters,
//! then overwrites [`WRITES`] random places with new, distinct data
//! (whole clusters, or 4 KiB pieces at random 4 KiB offsets), flushing
//! every [`FLUSH_EVERY`] writes as a guest's file system would.

use std::path::Path;
use std::time::Instant;

use qcow2_image::{CreateOptions, DedupOverwrite, Image};
use serde_json::{json, Value};

use crate::bench_engine::best;

const CLUSTER: u64 = 64 * 1024;
/// Distinct clusters written before the timed part.
pub(super) const FILLED: u64 = 2048;
/// Timed writes per run.
pub(super) const WRITES: u64 = 1000;
/// Writes between two flushes.
pub(super) const FLUSH_EVERY: u64 = 16;
const RUNS: usize = 3;

/// Pseudo-random bytes, distinct for every `seed`.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
}

fn mode_name(mode: DedupOverwrite) -> &'static str {
    match mode {
        DedupOverwrite::ClearFirst => "clear_first",
        _ => "elsewhere",
    }
}

/// One timed run; returns seconds and leaves the image at `path`.
fn run_once(path: &Path, mode: DedupOverwrite, write_len: u64) -> Result<f64, String> {
    let err = |e: qcow2_image::ImageError| format!("{}: {e}", path.display());
    let _ = std::fs::remove_file(path);
    let mut options = CreateOptions::new(2 * FILLED * CLUSTER);
    options.dedup = true;
    let image = Image::create_path(path, &options).map_err(err)?;
    let mut buf = vec![0u8; (16 * CLUSTER) as usize];
    for chunk in 0..FILLED / 16 {
        for (i, c) in buf.chunks_mut(CLUSTER as usize).enumerate() {
            fill(c, chunk * 16 + i as u64 + 1);
        }
        image.write_at(&buf, chunk * 16 * CLUSTER).map_err(err)?;
    }
    image.flush().map_err(err)?;
    image.set_dedup_overwrite(mode);
    let mut data = vec![0u8; write_len as usize];
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ write_len;
    let start = Instant::now();
    for n in 0..WRITES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cluster = x % FILLED;
        let within = (x >> 32) % (CLUSTER / write_len) * write_len;
        fill(&mut data, (1 << 40) + n);
        image
            .write_at(&data, cluster * CLUSTER + within)
            .map_err(err)?;
        if (n + 1) % FLUSH_EVERY == 0 {
            image.flush().map_err(err)?;
        }
    }
    image.flush().map_err(err)?;
    let secs = start.elapsed().as_secs_f64();
    image.close().map_err(err)?;
    Ok(secs)
}

/// Runs every mode and write size [`RUNS`] times, interleaved; the last
/// image of each stays in `dir` as `ow-MODE-LEN.qcow2` for the caller to
/// check. Prints one JSON line.
pub(super) fn probe_overwrite(dir: &Path) -> Result<(), String> {
    let modes = [DedupOverwrite::WriteElsewhere, DedupOverwrite::ClearFirst];
    let mut results = serde_json::Map::new();
    for write_len in [CLUSTER, 4096] {
        let mut times = vec![Vec::new(); modes.len()];
        for _ in 0..RUNS {
            for (m, &mode) in modes.iter().enumerate() {
                let path = dir.join(format!("ow-{}-{write_len}.qcow2", mode_name(mode)));
                times[m].push(run_once(&path, mode, write_len)?);
            }
        }
        for (m, &mode) in modes.iter().enumerate() {
            let path = dir.join(format!("ow-{}-{write_len}.qcow2", mode_name(mode)));
            let size = std::fs::metadata(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            let key = format!("{}_{}", mode_name(mode), write_len);
            results.insert(
                key,
                json!({ "secs": best(&times[m]), "times": times[m], "file_bytes": size }),
            );
        }
    }
    results.insert("writes".into(), json!(WRITES));
    results.insert("filled".into(), json!(FILLED));
    results.insert("flush_every".into(), json!(FLUSH_EVERY));
    println!("{}", Value::Object(results));
    Ok(())
}
