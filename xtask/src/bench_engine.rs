//! `cargo xtask bench engine`: the qcow2 engine against `qemu-img` on one
//! corpus, in one run.
//!
//! 1. raw -> qcow2 conversion of an ext4 disk: `qcow2 convert` against
//!    `qemu-img convert` (and `qemu-img convert -W`): wall time, output size;
//!    our output must pass `qemu-img check` and `qemu-img compare`, or the
//!    benchmark fails.
//! 2. Reads of the qcow2 image `qemu-img convert` wrote: 4 KiB and 64 KiB,
//!    sequential and random, through `qcow2_image::Image` in this process
//!    with 1 and 2 threads, against `qemu-img bench` (sequential and strided
//!    only; it has no random mode) at queue depth 1 and 2. Both read through
//!    the page cache with the image file already cached, so the numbers
//!    measure the engines, not the disk.
//!
//! Run with `cargo run --release -p xtask -- bench engine`. Options:
//! `--size-mib N` disk size (default 2048; the corpus is cached per size
//! under `target/bench-corpus/`), `--reps N` best-of runs (default 3),
//! `--ops N` reads per measurement (default: one pass over the disk),
//! `--doc yes|no` whether to replace the Engine section of
//! `docs/benchmarks.md` (default: yes for the full 2048 MiB disk only),
//! `--only convert|reads|writes|cold` one part alone (for profiling; no
//! doc unless `--doc yes` with `writes` or `cold`, whose sections stand
//! alone).
//! 3. Guest writes (`writes.rs`): 4 KiB and 64 KiB into allocated and into
//!    fresh clusters with 1 and 2 threads, against `qemu-img bench -w` at
//!    depth 1 and 2 and plain pwrite; its own section of the doc.
//! 4. Cold-metadata reads (`cold_reads.rs`): 4 KiB reads over a 1 TiB
//!    sparse image whose L2 tables do not fit the cache, against
//!    `qemu-img bench`; its own section.

pub(crate) mod corpus;

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::Instant;

use qcow2_image::{ExtentKind, Image};

pub(crate) const QEMU_IMG: &str = "/usr/bin/qemu-img";
const FULL_SIZE_MIB: u64 = 2048;
const BLOCK_SIZES: [u64; 2] = [4096, 64 * 1024];
/// Blocks between two `qemu-img bench` requests in the strided reference:
/// a prime, so the requests visit every block once per pass and consecutive
/// ones land far apart.
const STRIDE_BLOCKS: u64 = 4093;
/// The reference's convert output, which the read benchmarks use.
const QEMU_OUTPUT: &str = "qemu.qcow2";
/// Sequential reads with 2 threads split the pass into stripes of this
/// many bytes, taken in turn, so both threads meet the same mix of data
/// and free (unallocated) space; halves would not (ext4 fills the start).
const STRIPE: u64 = 1 << 20;
const SEED: u64 = 0x5eed_0000_c0de_beef;

struct Options {
    size_mib: u64,
    reps: usize,
    ops: Option<u64>,
    doc: Option<bool>,
    /// Run one part alone (writes the doc only for `writes` with `--doc yes`).
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Convert,
    Reads,
    Writes,
    Cold,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options {
        size_mib: FULL_SIZE_MIB,
        reps: 3,
        ops: None,
        doc: None,
        only: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--size-mib" => opts.size_mib = number()?.max(64),
            "--reps" => opts.reps = number()?.max(1) as usize,
            "--ops" => opts.ops = Some(number()?.max(2)),
            "--doc" => {
                opts.doc = Some(match value.as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => return Err("--doc takes yes or no".into()),
                })
            }
            "--only" => {
                opts.only = Some(match value.as_str() {
                    "convert" => Part::Convert,
                    "reads" => Part::Reads,
                    "writes" => Part::Writes,
                    "cold" => Part::Cold,
                    _ => return Err("--only takes convert, reads, writes or cold".into()),
                })
            }
            _ => {
                return Err(format!(
                    "unknown option {flag}; try --size-mib, --reps, --ops, --doc, --only (convert, reads, writes or cold)"
                ))
            }
        }
    }
    Ok(opts)
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Runs a command to completion; its output, or an error with its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{:?} {:?} failed ({}): {stdout}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// Empties the page cache (needs root); false when the kernel refuses.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Reads a whole file once, so that it sits in the page cache.
pub(crate) fn warm(path: &Path) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 4 << 20];
    while file
        .read(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?
        > 0
    {}
    Ok(())
}

pub(crate) fn best(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

pub(crate) fn median(times: &[f64]) -> f64 {
    let mut v = times.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

mod cold_reads;
mod convert_run;
pub(crate) mod reads;
mod report;
mod writes;

pub(crate) use convert_run::verify_convert;
use convert_run::*;
use reads::*;
use report::*;
pub(crate) use report::{machine, wrap_markdown, Machine};

// ------------------------------------------------------------------ main

/// Builds `qcow2`, times the conversions and verifies ours.
fn convert_part(
    opts: &Options,
    raw: &Path,
    work: &Path,
    target: &Path,
    cold: bool,
) -> Result<Vec<ConvertRow>, String> {
    let root = workspace_root();
    println!("building qcow2 (cargo build --release -p qcow2-cli)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    output(Command::new(cargo).current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "qcow2-cli",
    ]))?;
    let qcow2 = target.join("release").join("qcow2");
    println!(
        "convert: {} runs per tool, {} page cache",
        opts.reps,
        if cold { "cold (dropped)" } else { "warm" }
    );
    let convert = bench_convert(raw, work, &qcow2, opts.reps, cold)?;
    verify_convert(raw, &convert[2].output)?;
    println!("convert: our output passed qemu-img check and qemu-img compare");
    Ok(convert)
}

/// Times the reads of `image_path` (a copy of `raw`), ours and qemu-img's.
fn reads_part(
    opts: &Options,
    raw: &Path,
    image_path: &Path,
    raw_size: u64,
) -> Result<(Vec<ReadRow>, f64), String> {
    warm(image_path)?;
    let image = Image::open_path(image_path, false)
        .map_err(|e| format!("{}: {e}", image_path.display()))?;
    let unallocated: u64 = image
        .block_status(0, image.size())
        .map_err(|e| format!("{}: {e}", image_path.display()))?
        .iter()
        .filter(|e| matches!(e.kind, ExtentKind::Unallocated { .. }))
        .map(|e| e.length)
        .sum();
    let unallocated_share = unallocated as f64 / image.size() as f64;
    verify_reads(&image, raw)?;
    warm(raw)?;
    let raw_file = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let mut reads = Vec::new();
    for access in [Access::Sequential, Access::Random] {
        for bs in BLOCK_SIZES {
            let ops = opts.ops.unwrap_or(raw_size / bs) / 2 * 2;
            let t1 = best_timing(opts.reps, || engine_reads(&image, bs, ops, access, 1))?;
            let t2 = best_timing(opts.reps, || engine_reads(&image, bs, ops, access, 2))?;
            let (ours1, ours2) = (t1.secs, t2.secs);
            let p1 = best_timing(opts.reps, || {
                pread_reads(&raw_file, raw_size, bs, ops, access, 1)
            })?;
            let p2 = best_timing(opts.reps, || {
                pread_reads(&raw_file, raw_size, bs, ops, access, 2)
            })?;
            let previous = reads
                .iter()
                .find(|r: &&ReadRow| r.access == Access::Sequential && r.bs == bs);
            let (qemu_seq, qemu_stride, qemu_deep) = match previous {
                // qemu-img bench has no random mode: random rows reuse its
                // sequential (and strided) figures as the reference.
                Some(seq) if access == Access::Random => {
                    (seq.qemu_seq, seq.qemu_stride, seq.qemu_deep)
                }
                _ => {
                    let mut qemu_seq = [0.0; 2];
                    let mut qemu_stride = [0.0; 2];
                    for (d, depth) in [1u32, 2].into_iter().enumerate() {
                        qemu_seq[d] =
                            best_of(opts.reps, || qemu_reads(image_path, bs, ops, depth, bs))?;
                        let step = bs * STRIDE_BLOCKS;
                        qemu_stride[d] =
                            best_of(opts.reps, || qemu_reads(image_path, bs, ops, depth, step))?;
                    }
                    let deep = best_of(opts.reps, || qemu_reads(image_path, bs, ops, 64, bs))?;
                    (qemu_seq, qemu_stride, deep)
                }
            };
            eprintln!(
                "  {} {}: ours 1T {} ({:.2} us CPU/op, {:.2} us waited/op), \
                 2T {} ({:.2} us CPU/op, {:.2} us waited/op); qemu-img -d1 {}, -d2 {}",
                access.name(),
                kib(bs),
                fmt_rate(bs, ops, ours1),
                t1.cpu_ns as f64 / ops as f64 / 1e3,
                t1.wait_ns as f64 / ops as f64 / 1e3,
                fmt_rate(bs, ops, ours2),
                t2.cpu_ns as f64 / ops as f64 / 1e3,
                t2.wait_ns as f64 / ops as f64 / 1e3,
                fmt_rate(bs, ops, qemu_seq[0]),
                fmt_rate(bs, ops, qemu_seq[1]),
            );
            reads.push(ReadRow {
                access,
                bs,
                ops,
                ours1,
                ours2,
                cpu_per_op: [t1, t2].map(|t| t.cpu_ns as f64 / ops as f64 / 1e3),
                pread: [p1.secs, p2.secs],
                pread_cpu_per_op: [p1, p2].map(|t| t.cpu_ns as f64 / ops as f64 / 1e3),
                wait_share: [t1, t2]
                    .map(|t| t.wait_ns as f64 / (t.wait_ns + t.cpu_ns).max(1) as f64),
                qemu_seq,
                qemu_stride,
                qemu_deep,
            });
        }
    }
    Ok((reads, unallocated_share))
}

/// Runs the benchmark.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: unoptimized build, the numbers mean little; \
             use `cargo run --release -p xtask -- bench engine`"
        );
    }
    let root = workspace_root();
    let target = target_dir(&root);
    let corpus_dir = target.join("bench-corpus");
    let quick_writes = opts.size_mib < FULL_SIZE_MIB;
    if matches!(opts.only, Some(Part::Writes | Part::Cold)) {
        fs::create_dir_all(&corpus_dir).map_err(|e| format!("{}: {e}", corpus_dir.display()))?;
        let section = if opts.only == Some(Part::Writes) {
            let rows = writes::writes_part(&corpus_dir, opts.reps, quick_writes)?;
            writes::writes_section(&rows, &machine(), opts.reps)
        } else {
            let row = cold_reads::cold_part(&corpus_dir, opts.reps, quick_writes)?;
            cold_reads::cold_section(&row, &machine(), opts.reps)
        };
        let section = wrap_markdown(&section);
        println!("\n{section}");
        if opts.doc == Some(true) {
            write_doc(&root, &section)?;
            println!("wrote its section of docs/benchmarks.md");
        }
        return Ok(());
    }
    let raw = corpus::ensure(&corpus_dir, opts.size_mib)?;
    let raw_size = fs::metadata(&raw).map_err(|e| e.to_string())?.len();

    let work = corpus_dir.join(format!("work-{}M", opts.size_mib));
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let cold = drop_caches();
    let convert = if opts.only == Some(Part::Reads) {
        Vec::new()
    } else {
        convert_part(&opts, &raw, &work, &target, cold)?
    };
    let (reads, unallocated_share) = if opts.only == Some(Part::Convert) {
        (Vec::new(), 0.0)
    } else {
        let image_path = work.join(QEMU_OUTPUT);
        if !image_path.exists() {
            output(
                Command::new(QEMU_IMG)
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(&image_path),
            )?;
        }
        reads_part(&opts, &raw, &image_path, raw_size)?
    };

    let report = Report {
        opts: &opts,
        machine: machine(),
        raw_size,
        cold,
        convert,
        reads,
        unallocated_share,
    };
    if opts.only.is_some() {
        println!(
            "\n{}\n{}\n{}",
            report.convert_table(),
            report.read_table(),
            report.scaling_table()
        );
        return Ok(());
    }
    println!("writes: {} runs per measurement", opts.reps);
    let writes = writes::writes_part(&work, opts.reps, quick_writes)?;
    println!("cold-metadata reads: {} runs per measurement", opts.reps);
    let cold_row = cold_reads::cold_part(&corpus_dir, opts.reps, quick_writes)?;
    let section = wrap_markdown(&report.section());
    let writes_section =
        wrap_markdown(&writes::writes_section(&writes, &report.machine, opts.reps));
    let cold_section = wrap_markdown(&cold_reads::cold_section(
        &cold_row,
        &report.machine,
        opts.reps,
    ));
    println!("\n{section}\n{writes_section}\n{cold_section}");
    let write = opts.doc.unwrap_or(opts.size_mib == FULL_SIZE_MIB);
    if write {
        for s in [&section, &writes_section, &cold_section] {
            write_doc(&root, s)?;
        }
        println!(
            "wrote the Engine, Guest writes and Cold-metadata reads sections of \
             docs/benchmarks.md"
        );
    } else {
        println!("docs/benchmarks.md not updated (smaller disk; pass --doc yes to force)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::wrap_markdown;

    #[test]
    fn prose_wraps_and_tables_do_not() {
        let long = "word ".repeat(30);
        let text = format!("- {long}\n| {long} |\n");
        let wrapped = wrap_markdown(&text);
        let lines: Vec<&str> = wrapped.lines().collect();
        assert!(lines.len() > 2);
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() <= 78));
        assert!(lines[1].starts_with("  word"));
        assert_eq!(lines[lines.len() - 1], format!("| {long} |"));
    }
}
