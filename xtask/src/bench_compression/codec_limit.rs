//! The codec's own limit for a compressed convert: the CPU time the codec
//! alone needs to compress every non-zero cluster of the disk, divided by
//! the cores. No convert can finish faster on this machine, so our convert
//! is reported as a share of it.
//!
//! The measurement runs in a release build of the xtask (`xtask bench
//! codec-limit RAW TYPE`), started by `bench compression`, whose own build
//! is unoptimized.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use qcow2_codec::Registry;

use crate::bench_engine::{output, reads::schedstat};

/// The clusters `qcow2 convert` uses by default.
const CLUSTER: usize = 64 * 1024;
/// Bytes of the disk read (untimed) before compressing them (timed).
const CHUNK: usize = 32 << 20;

/// What the codec alone needed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CodecLimit {
    /// CPU seconds of one thread compressing every non-zero cluster.
    pub(crate) cpu_secs: f64,
    /// Non-zero clusters compressed.
    pub(crate) clusters: u64,
    /// Cores of the machine.
    pub(crate) cores: usize,
}

impl CodecLimit {
    /// Seconds the codec needs with every core busy: the fastest any
    /// compressed convert of this disk can be here.
    pub(crate) fn secs(&self) -> f64 {
        self.cpu_secs / self.cores.max(1) as f64
    }
}

/// The level a compressed convert with `-o compression_type=kind` uses (the
/// level QEMU compresses with).
fn qemu_level(kind: &str) -> u8 {
    match kind {
        "zlib" => 6,
        "zstd" => 3,
        _ => 0,
    }
}

/// Compresses every non-zero cluster of `raw` with the codec `kind` on
/// this thread and sums the CPU time of the compress calls.
pub(crate) fn measure(raw: &Path, kind: &str) -> Result<CodecLimit, String> {
    let codec = Registry::builtin()
        .info(kind)
        .and_then(|info| info.build(qemu_level(kind)))
        .map_err(|e| format!("codec {kind}: {e}"))?;
    let file = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{}: {e}", raw.display()))?
        .len();
    let mut chunk = vec![0u8; CHUNK];
    let mut out = vec![0u8; CLUSTER];
    let mut cpu_ns = 0u64;
    let mut clusters = 0u64;
    let mut at = 0u64;
    while at < size {
        let len = (size - at).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..len], at)
            .map_err(|e| format!("{}: {e}", raw.display()))?;
        let (run0, _) = schedstat();
        for cluster in chunk[..len].chunks(CLUSTER) {
            if cluster.len() < CLUSTER || qcow2_dedup::is_zero(cluster) {
                continue;
            }
            let outcome = codec
                .compress(cluster, &mut out)
                .map_err(|e| format!("compressing with {kind}: {e}"))?;
            let _ = std::hint::black_box(outcome);
            clusters += 1;
        }
        let (run1, _) = schedstat();
        cpu_ns += run1.saturating_sub(run0);
        at += len as u64;
    }
    Ok(CodecLimit {
        cpu_secs: cpu_ns as f64 / 1e9,
        clusters,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
    })
}

/// `xtask bench codec-limit RAW TYPE`: prints the measurement as
/// `cpu_secs=S clusters=N cores=C`.
pub(crate) fn run_child(args: &[String]) -> Result<(), String> {
    let [raw, kind] = args else {
        return Err("usage: xtask bench codec-limit RAW TYPE".into());
    };
    if cfg!(debug_assertions) {
        return Err("the codec limit must be measured by a release build".into());
    }
    let limit = measure(Path::new(raw), kind)?;
    println!(
        "cpu_secs={} clusters={} cores={}",
        limit.cpu_secs, limit.clusters, limit.cores
    );
    Ok(())
}

/// Runs the release xtask at `xtask` to measure the limit of `kind` on `raw`.
pub(crate) fn measure_in_release(
    xtask: &Path,
    raw: &Path,
    kind: &str,
) -> Result<CodecLimit, String> {
    let text = output(
        Command::new(xtask)
            .args(["bench", "codec-limit"])
            .arg(raw)
            .arg(kind),
    )?;
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("no {name} in the codec-limit output: {text}"))
    };
    let number = |name: &str| -> Result<f64, String> {
        field(name)?
            .parse::<f64>()
            .map_err(|e| format!("{name} in the codec-limit output: {e}"))
    };
    Ok(CodecLimit {
        cpu_secs: number("cpu_secs")?,
        clusters: number("clusters")? as u64,
        cores: number("cores")? as usize,
    })
}
