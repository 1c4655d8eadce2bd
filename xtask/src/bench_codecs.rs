//! `cargo xtask bench codecs`: single-thread MB/s to compress and decompress
//! 64 KiB clusters of real data, per codec and level, with the compression
//! ratio, next to two references measured in the same run: the system zlib
//! at QEMU's settings (level 6, raw deflate, window bits 12, memLevel 9) and
//! the zstd library called directly.
//!
//! Run with `cargo run --release -p xtask -- bench codecs` (the `cargo xtask`
//! alias builds unoptimized). Options: `--mib N` data set size (default 32), `--reps N` best-of passes
//! (default 5), `--budget SECS` per-row time cap (default 6): a row slower
//! than that runs once on the clusters that fit in the budget.

mod corpus;
mod system_zlib;

use std::sync::Arc;
use std::time::{Duration, Instant};

use qcow2_codec::{Codec, CompressOutcome, Registry, Zlib, Zstd};

const CLUSTER: usize = 64 * 1024;
const ROOTS: [&str; 2] = ["/usr/lib", "/usr/share"];

/// Results of one row. MB/s count uncompressed bytes (10^6 per MB).
pub(crate) struct Measurement {
    pub(crate) clusters: usize,
    pub(crate) input_bytes: u64,
    /// Bytes as qcow2 stores them: the stream, or the cluster if no gain.
    pub(crate) stored_bytes: u64,
    pub(crate) compressed_input_bytes: u64,
    pub(crate) compress_secs: f64,
    pub(crate) decompress_secs: f64,
}

impl Measurement {
    fn ratio(&self) -> f64 {
        self.input_bytes as f64 / self.stored_bytes as f64
    }
    fn compress_mbs(&self) -> f64 {
        self.input_bytes as f64 / self.compress_secs / 1e6
    }
    fn decompress_mbs(&self) -> f64 {
        self.compressed_input_bytes as f64 / self.decompress_secs / 1e6
    }
}

/// Something that compresses and decompresses one cluster.
trait Engine {
    fn compress(&mut self, input: &[u8], out: &mut [u8]) -> Option<usize>;
    fn decompress(&mut self, input: &[u8], cluster: &mut [u8]) -> bool;
}

struct Ours(Arc<dyn Codec>);

impl Engine for Ours {
    fn compress(&mut self, input: &[u8], out: &mut [u8]) -> Option<usize> {
        match self.0.compress(input, out) {
            Ok(CompressOutcome::Compressed(n)) => Some(n),
            _ => None,
        }
    }
    fn decompress(&mut self, input: &[u8], cluster: &mut [u8]) -> bool {
        self.0.decompress(input, cluster).is_ok()
    }
}

/// The zstd library itself: one-shot calls on reused contexts, the fastest
/// way the library offers for independent blocks.
struct ZstdLib {
    cctx: zstd_safe::CCtx<'static>,
    dctx: zstd_safe::DCtx<'static>,
    level: i32,
}

impl Engine for ZstdLib {
    fn compress(&mut self, input: &[u8], out: &mut [u8]) -> Option<usize> {
        let limit = input.len() - 1;
        self.cctx
            .compress(&mut out[..limit], input, self.level)
            .ok()
    }
    fn decompress(&mut self, input: &[u8], cluster: &mut [u8]) -> bool {
        self.dctx.decompress(cluster, input) == Ok(cluster.len())
    }
}

struct Options {
    only: Option<String>,
    mib: usize,
    reps: usize,
    budget: Duration,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options {
        only: None,
        mib: 32,
        reps: 5,
        budget: Duration::from_secs(6),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--only" {
            opts.only = Some(value.clone());
            continue;
        }
        let value = value.parse::<u64>().map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--mib" => opts.mib = value as usize,
            "--reps" => opts.reps = value.max(1) as usize,
            "--budget" => opts.budget = Duration::from_secs(value),
            _ => {
                return Err(format!(
                    "unknown option {flag}; try --only CODEC, --mib, --reps, --budget"
                ))
            }
        }
    }
    Ok(opts)
}

/// Compresses then decompresses every cluster, best of `reps`; a first pass
/// slower than `budget` stops early and fixes the row's cluster count.
fn measure(
    engine: &mut dyn Engine,
    clusters: &[&[u8]],
    opts: &Options,
) -> Result<Measurement, String> {
    let mut out = vec![0u8; CLUSTER];
    let mut streams: Vec<Option<Vec<u8>>> = Vec::with_capacity(clusters.len());
    let mut n = clusters.len();
    let mut best_c = f64::INFINITY;
    for rep in 0..opts.reps {
        streams.clear();
        let start = Instant::now();
        for (i, c) in clusters[..n].iter().enumerate() {
            streams.push(engine.compress(c, &mut out).map(|len| out[..len].to_vec()));
            if rep == 0 && start.elapsed() > opts.budget {
                n = i + 1;
                break;
            }
        }
        best_c = best_c.min(start.elapsed().as_secs_f64());
        if n < clusters.len() {
            break; // a slow row: one pass is all the budget allows
        }
    }
    let packed: Vec<(&[u8], &[u8])> = clusters[..n]
        .iter()
        .zip(&streams)
        .filter_map(|(c, s)| s.as_deref().map(|s| (*c, s)))
        .collect();
    let mut cluster = vec![0u8; CLUSTER];
    let mut best_d = f64::INFINITY;
    for _ in 0..opts.reps {
        let start = Instant::now();
        for (_, s) in &packed {
            if !engine.decompress(s, &mut cluster) {
                return Err("decompression failed".to_string());
            }
        }
        best_d = best_d.min(start.elapsed().as_secs_f64());
    }
    for (c, s) in &packed {
        engine.decompress(s, &mut cluster);
        if cluster != *c {
            return Err("round trip differs".to_string());
        }
    }
    let stored = streams
        .iter()
        .map(|s| s.as_ref().map_or(CLUSTER, Vec::len) as u64)
        .sum();
    Ok(Measurement {
        clusters: n,
        input_bytes: (n * CLUSTER) as u64,
        stored_bytes: stored,
        compressed_input_bytes: (packed.len() * CLUSTER) as u64,
        compress_secs: best_c,
        decompress_secs: best_d,
    })
}

fn row(name: &str, level: &str, native: &str, m: &Measurement) {
    println!(
        "| {name} | {level} | {native} | {} | {:.3} | {:.1} | {:.1} |",
        m.clusters,
        m.ratio(),
        m.compress_mbs(),
        m.decompress_mbs()
    );
}

fn native_setting(name: &str, level: u8) -> String {
    match name {
        "zlib" => format!("effort {level}, 4 KiB window"),
        "zstd" => format!("zstd {level}"),
        "brotli" => format!("quality {}", level - 1),
        _ => String::new(),
    }
}

/// Runs the benchmark.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: unoptimized build, the numbers mean little; \
             use `cargo run --release -p xtask -- bench codecs`"
        );
    }
    let data = corpus::build(&ROOTS, opts.mib << 20)?;
    let clusters = corpus::clusters(&data, CLUSTER);
    let scratch = std::env::temp_dir().join("qcow2-bench-codecs.bin");
    println!(
        "Data set: {:.1} MiB sampled evenly from regular files under {} (at most 1 MiB per file), \
         {} non-zero 64 KiB clusters. Best of {} passes; rows slower than {} s run once on the \
         clusters that fit.\n",
        data.len() as f64 / f64::from(1 << 20),
        ROOTS.join(" and "),
        clusters.len(),
        opts.reps,
        opts.budget.as_secs()
    );
    println!(
        "| codec | level | native setting | clusters | ratio | compress MB/s | decompress MB/s |"
    );
    println!("|---|---|---|---|---|---|---|");

    // The reference runs twice, around our zlib rows, and keeps its best
    // times: load from elsewhere on the machine then hurts both sides alike.
    let (zlib_version, mut sys6) = system_zlib::measure(&clusters, &scratch, 6, opts.reps)?;

    let registry = Registry::builtin();
    let mut our_zlib_default = None;
    let mut our_zstd_default = None;
    let mut lib_zstd_default = None;
    let sweeps: [(&str, &[u8]); 3] = [
        ("zlib", &[1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("zstd", &[1, 3, 6, 9, 19, 22]),
        ("brotli", &[1, 2, 4, 6, 8, 10, 12]),
    ];
    for (name, levels) in sweeps {
        if opts.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let default = registry
            .info(name)
            .map_err(|e| e.to_string())?
            .levels()
            .default_level();
        for &level in levels {
            let codec = registry.by_name(name, level).map_err(|e| e.to_string())?;
            let m = measure(&mut Ours(codec), &clusters, &opts)?;
            let label = if level == default {
                format!("{level} (default)")
            } else {
                level.to_string()
            };
            row(name, &label, &native_setting(name, level), &m);
            if name == "zstd" {
                let mut lib = ZstdLib {
                    cctx: zstd_safe::CCtx::create(),
                    dctx: zstd_safe::DCtx::create(),
                    level: i32::from(level),
                };
                let r = measure(&mut lib, &clusters, &opts)?;
                row(
                    &format!("zstd library {} (reference)", zstd_safe::version_string()),
                    "-",
                    &native_setting(name, level),
                    &r,
                );
                if level == Zstd::DEFAULT_LEVEL {
                    lib_zstd_default = Some(r);
                }
            }
            if name == "zlib" && level == 9 {
                let (_, again) = system_zlib::measure(&clusters, &scratch, 6, opts.reps)?;
                sys6.compress_secs = sys6.compress_secs.min(again.compress_secs);
                sys6.decompress_secs = sys6.decompress_secs.min(again.decompress_secs);
                row(
                    &format!("system zlib {zlib_version} (reference)"),
                    "-",
                    "deflate 6, wbits 12, memLevel 9",
                    &sys6,
                );
            }
            if level == default && name == "zlib" {
                our_zlib_default = Some(m);
            } else if level == default && name == "zstd" {
                our_zstd_default = Some(m);
            }
        }
    }

    let _ = std::fs::remove_file(&scratch);
    println!();
    if let Some(ours) = our_zlib_default {
        let speed = ours.compress_mbs() / sys6.compress_mbs();
        let size = ours.stored_bytes as f64 / sys6.stored_bytes as f64 - 1.0;
        println!(
            "zlib default (level {}) vs system zlib -6: compress {speed:.2}x as fast (goal >= 1.70x), \
             output {:+.2}% (goal <= +2%): {}",
            Zlib::DEFAULT_LEVEL,
            size * 100.0,
            verdict(speed >= 1.7 && size <= 0.02)
        );
    }
    if let (Some(ours), Some(lib)) = (our_zstd_default, lib_zstd_default) {
        let c = ours.compress_mbs() / lib.compress_mbs();
        let d = ours.decompress_mbs() / lib.decompress_mbs();
        println!(
            "zstd default (level {}) vs the zstd library: compress {c:.3}x, decompress {d:.3}x \
             (goal >= 0.90x): {}",
            Zstd::DEFAULT_LEVEL,
            verdict(c >= 0.9 && d >= 0.9)
        );
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
