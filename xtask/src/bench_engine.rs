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
//! `--only convert|reads` one part alone (for profiling; no doc).

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
    /// Run only the convert or only the read part (never writes the doc).
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Convert,
    Reads,
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
                    _ => return Err("--only takes convert or reads".into()),
                })
            }
            _ => {
                return Err(format!(
                    "unknown option {flag}; try --size-mib, --reps, --ops, --doc, --only"
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

// ---------------------------------------------------------------- convert

struct ConvertRow {
    label: &'static str,
    output: PathBuf,
    times: Vec<f64>,
    /// Apparent size and allocated bytes of the output file.
    size: u64,
    allocated: u64,
}

/// Converts `raw` with each tool `reps` times, tools interleaved so load
/// from elsewhere hits them alike. Each run starts from a cold page cache
/// when `cold`, else from a warm one; its time includes making the output
/// durable (both tools fdatasync before exiting; an extra fsync after exit
/// costs the same for both).
fn bench_convert(
    raw: &Path,
    work: &Path,
    qcow2: &Path,
    reps: usize,
    cold: bool,
) -> Result<Vec<ConvertRow>, String> {
    let tools: [(&'static str, &Path, &[&str], &str); 3] = [
        ("qemu-img convert", Path::new(QEMU_IMG), &[], QEMU_OUTPUT),
        (
            "qemu-img convert -W",
            Path::new(QEMU_IMG),
            &["-W"],
            "qemu-W.qcow2",
        ),
        ("qcow2 convert", qcow2, &[], "ours.qcow2"),
    ];
    let mut rows: Vec<ConvertRow> = tools
        .iter()
        .map(|&(label, _, _, name)| ConvertRow {
            label,
            output: work.join(name),
            times: Vec::new(),
            size: 0,
            allocated: 0,
        })
        .collect();
    for rep in 0..reps {
        for ((_, program, extra, _), row) in tools.iter().zip(&mut rows) {
            let _ = fs::remove_file(&row.output);
            if cold {
                drop_caches();
            } else {
                warm(raw)?;
            }
            let start = Instant::now();
            output(
                Command::new(program)
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .args(extra.iter())
                    .arg(raw)
                    .arg(&row.output),
            )?;
            File::open(&row.output)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("{}: {e}", row.output.display()))?;
            let secs = start.elapsed().as_secs_f64();
            row.times.push(secs);
            eprintln!("  convert rep {}: {:<20} {secs:.2} s", rep + 1, row.label);
        }
    }
    for row in &mut rows {
        let meta = fs::metadata(&row.output).map_err(|e| format!("{e}"))?;
        row.size = meta.len();
        row.allocated = meta.blocks() * 512;
    }
    Ok(rows)
}

/// Fails unless `qemu-img` finds `image` clean and identical to `raw`.
pub(crate) fn verify_convert(raw: &Path, image: &Path) -> Result<(), String> {
    let check = output(
        Command::new(QEMU_IMG)
            .args(["check", "-f", "qcow2"])
            .arg(image),
    )
    .map_err(|e| format!("qemu-img check of our convert output failed: {e}"))?;
    if !check.contains("No errors were found") {
        return Err(format!("qemu-img check of our convert output: {check}"));
    }
    output(
        Command::new(QEMU_IMG)
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(raw)
            .arg(image),
    )
    .map_err(|e| format!("our convert output differs from the source: {e}"))?;
    Ok(())
}

// ------------------------------------------------------------------ reads

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Sequential,
    Random,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Sequential => "sequential",
            Access::Random => "random",
        }
    }
}

/// splitmix64: a small, fixed-seed generator for the random offsets.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One measurement of our reads: wall time, and what the reader threads'
/// scheduler statistics say about it (summed over the threads).
#[derive(Clone, Copy)]
struct Timing {
    secs: f64,
    /// CPU time the readers ran.
    cpu_ns: u64,
    /// Time the readers were runnable but waited for a CPU (other load).
    wait_ns: u64,
}

/// This thread's run time and run-queue wait time, in ns.
fn schedstat() -> (u64, u64) {
    let text = fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

/// Reads `ops` blocks of `bs` bytes through `image` with `threads` threads
/// (each `ops / threads` reads; sequential threads take turns at 1 MiB
/// stripes of one pass, reading each stripe in order; random threads read
/// their own fixed-seed sequence of aligned offsets). Wall time runs from the common start to the last end.
fn engine_reads(
    image: &Image,
    bs: u64,
    ops: u64,
    access: Access,
    threads: u64,
) -> Result<Timing, String> {
    let read = |buf: &mut [u8], offset: u64| {
        image
            .read_at(buf, offset)
            .map_err(|e| format!("read at {offset}: {e}"))
    };
    timed_reads(&read, image.size(), bs, ops, access, threads)
}

/// The same reads as [`engine_reads`] with plain `pread` calls on a file
/// of the same size: the kernel's share of the cost, and its scaling.
fn pread_reads(
    file: &File,
    size: u64,
    bs: u64,
    ops: u64,
    access: Access,
    threads: u64,
) -> Result<Timing, String> {
    let read = |buf: &mut [u8], offset: u64| {
        file.read_exact_at(buf, offset)
            .map_err(|e| format!("pread at {offset}: {e}"))
    };
    timed_reads(&read, size, bs, ops, access, threads)
}

type ReadFn<'a> = dyn Fn(&mut [u8], u64) -> Result<(), String> + Sync + 'a;

fn timed_reads(
    read: &ReadFn<'_>,
    size: u64,
    bs: u64,
    ops: u64,
    access: Access,
    threads: u64,
) -> Result<Timing, String> {
    let blocks = size / bs;
    let per_thread = ops / threads;
    let barrier = Barrier::new(threads as usize + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(u64, u64), String> {
                    let mut buf = vec![0u8; bs as usize];
                    let mut rng = SplitMix(SEED ^ (t + 1).wrapping_mul(0x1234_5678_9abc_def1));
                    let stripe = (STRIPE / bs).max(1);
                    barrier.wait();
                    let (run0, wait0) = schedstat();
                    for i in 0..per_thread {
                        let block = match access {
                            Access::Sequential => {
                                ((i / stripe * threads + t) * stripe + i % stripe) % blocks
                            }
                            Access::Random => rng.next() % blocks,
                        };
                        read(&mut buf, block * bs)?;
                        black_box(&buf);
                    }
                    let (run1, wait1) = schedstat();
                    Ok((run1.saturating_sub(run0), wait1.saturating_sub(wait0)))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut timing = Timing {
            secs: 0.0,
            cpu_ns: 0,
            wait_ns: 0,
        };
        for worker in workers {
            let (cpu, wait) = worker
                .join()
                .map_err(|_| "a reader thread panicked".to_string())??;
            timing.cpu_ns += cpu;
            timing.wait_ns += wait;
        }
        timing.secs = start.elapsed().as_secs_f64();
        Ok(timing)
    })
}

/// The fastest of `reps` runs of our reads.
fn best_timing(
    reps: usize,
    mut f: impl FnMut() -> Result<Timing, String>,
) -> Result<Timing, String> {
    let mut best: Option<Timing> = None;
    for _ in 0..reps {
        let t = f()?;
        if best.is_none_or(|b| t.secs < b.secs) {
            best = Some(t);
        }
    }
    best.ok_or_else(|| "no runs".to_string())
}

/// Checks that the engine reads what the raw disk holds, at fixed-seed
/// random 64 KiB blocks and a few unaligned ranges.
fn verify_reads(image: &Image, raw: &Path) -> Result<(), String> {
    let file = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let size = image.size();
    let mut rng = SplitMix(SEED);
    let mut ours = vec![0u8; 64 * 1024];
    let mut theirs = vec![0u8; 64 * 1024];
    for i in 0..512 {
        let len = if i % 8 == 7 {
            1 + rng.next() % 65536
        } else {
            65536
        };
        let offset = if i % 8 == 7 {
            rng.next() % (size - len)
        } else {
            rng.next() % (size / 65536) * 65536
        };
        let (a, b) = (&mut ours[..len as usize], &mut theirs[..len as usize]);
        image
            .read_at(a, offset)
            .map_err(|e| format!("read at {offset}: {e}"))?;
        file.read_exact_at(b, offset)
            .map_err(|e| format!("{}: {e}", raw.display()))?;
        if a != b {
            return Err(format!(
                "the engine read different bytes than the raw disk holds at {offset} (+{len})"
            ));
        }
    }
    Ok(())
}

/// `qemu-img bench` reading `ops` blocks of `bs` with `depth` requests in
/// flight, each request `step` bytes after the last (wrapping at the end),
/// through the page cache (`-t writeback`, thread-pool AIO). Returns the
/// time it reports (the I/O loop only, like ours).
fn qemu_reads(image: &Path, bs: u64, ops: u64, depth: u32, step: u64) -> Result<f64, String> {
    let out = output(
        Command::new(QEMU_IMG)
            .args(["bench", "-f", "qcow2", "-t", "writeback", "-i", "threads"])
            .args(["-d", &depth.to_string(), "-c", &ops.to_string()])
            .args(["-s", &bs.to_string(), "-S", &step.to_string()])
            .arg(image),
    )?;
    out.split("Run completed in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|secs| secs.parse::<f64>().ok())
        .ok_or_else(|| format!("cannot read the time in qemu-img bench output: {out}"))
}

/// Best-of-`reps` seconds of one read measurement.
fn best_of(reps: usize, mut f: impl FnMut() -> Result<f64, String>) -> Result<f64, String> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        times.push(f()?);
    }
    Ok(best(&times))
}

struct ReadRow {
    access: Access,
    bs: u64,
    ops: u64,
    ours1: f64,
    ours2: f64,
    /// Our readers' CPU microseconds per read, 1 and 2 threads.
    cpu_per_op: [f64; 2],
    /// The same reads with plain pread on the raw disk: seconds and CPU
    /// microseconds per read, 1 and 2 threads.
    pread: [f64; 2],
    pread_cpu_per_op: [f64; 2],
    /// Share of the readers' time spent waiting for a CPU, 1 and 2 threads.
    wait_share: [f64; 2],
    /// qemu-img bench at depth 1 and 2: sequential, and strided.
    qemu_seq: [f64; 2],
    qemu_stride: [f64; 2],
    /// qemu-img bench sequential at its default depth (64).
    qemu_deep: f64,
}

fn mbs(bs: u64, ops: u64, secs: f64) -> f64 {
    (bs * ops) as f64 / secs / 1e6
}

fn iops(ops: u64, secs: f64) -> f64 {
    ops as f64 / secs
}

// --------------------------------------------------------------- report

pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) qemu: String,
    pub(crate) rustc: String,
    pub(crate) date: String,
}

pub(crate) fn machine() -> Machine {
    let first_line = |cmd: &mut Command| {
        output(cmd)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| "unknown".into())
    };
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        kernel: first_line(Command::new("uname").arg("-r")),
        qemu: first_line(Command::new(QEMU_IMG).arg("--version")),
        rustc: first_line(Command::new("rustc").arg("--version")),
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d"])),
    }
}

fn fmt_rate(bs: u64, ops: u64, secs: f64) -> String {
    format!(
        "{:.0} MB/s, {:.0} IOPS",
        mbs(bs, ops, secs),
        iops(ops, secs)
    )
}

fn kib(bs: u64) -> String {
    format!("{} KiB", bs / 1024)
}

struct Report<'a> {
    opts: &'a Options,
    machine: Machine,
    raw_size: u64,
    cold: bool,
    convert: Vec<ConvertRow>,
    reads: Vec<ReadRow>,
    /// Share of the read image's guest bytes that are unallocated.
    unallocated_share: f64,
}

impl Report<'_> {
    fn convert_table(&self) -> String {
        let mut s = String::from(
            "| tool | best s | median s | MB/s (best) | output bytes | allocated bytes | ours vs tool (speed) |\n\
             |---|---|---|---|---|---|---|\n",
        );
        let ours = self
            .convert
            .iter()
            .find(|r| r.label == "qcow2 convert")
            .map_or(f64::NAN, |r| best(&r.times));
        for r in &self.convert {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.0} | {} | {} | {:.2} |\n",
                r.label,
                best(&r.times),
                median(&r.times),
                self.raw_size as f64 / best(&r.times) / 1e6,
                r.size,
                r.allocated,
                best(&r.times) / ours
            );
        }
        s
    }

    fn read_table(&self) -> String {
        let mut s = String::from(
            "| access | block | ops | ours, 1 thread | ours, 2 threads | 2T/1T | \
             qemu-img bench -d 1 (sequential) | qemu-img bench -d 2 (sequential) | \
             ours 1T / qemu -d 1 | ours 2T / qemu -d 2 |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.reads {
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.2}x | {} | {} | {:.2} | {:.2} |\n",
                r.access.name(),
                kib(r.bs),
                r.ops,
                fmt_rate(r.bs, r.ops, r.ours1),
                fmt_rate(r.bs, r.ops, r.ours2),
                r.ours1 / r.ours2,
                fmt_rate(r.bs, r.ops, r.qemu_seq[0]),
                fmt_rate(r.bs, r.ops, r.qemu_seq[1]),
                r.qemu_seq[0] / r.ours1,
                r.qemu_seq[1] / r.ours2,
            );
        }
        s
    }

    fn scaling_table(&self) -> String {
        let mut s = String::from(
            "| access | block | ours 2T/1T | ours CPU us per read, 1T / 2T | \
             ours waiting for a CPU, 1T / 2T | pread 2T/1T | pread CPU us per read, 1T / 2T | \
             pread, 1 thread |\n|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.reads {
            s += &format!(
                "| {} | {} | {:.2}x | {:.2} / {:.2} | {:.0}% / {:.0}% | {:.2}x | {:.2} / {:.2} | {} |\n",
                r.access.name(),
                kib(r.bs),
                r.ours1 / r.ours2,
                r.cpu_per_op[0],
                r.cpu_per_op[1],
                r.wait_share[0] * 100.0,
                r.wait_share[1] * 100.0,
                r.pread[0] / r.pread[1],
                r.pread_cpu_per_op[0],
                r.pread_cpu_per_op[1],
                fmt_rate(r.bs, r.ops, r.pread[0]),
            );
        }
        s
    }

    fn other_qemu_table(&self) -> String {
        let mut s = String::from(
            "| block | qemu-img bench strided, -d 1 | strided, -d 2 | sequential, -d 64 |\n\
             |---|---|---|---|\n",
        );
        for r in self.reads.iter().filter(|r| r.access == Access::Sequential) {
            s += &format!(
                "| {} | {} | {} | {} |\n",
                kib(r.bs),
                fmt_rate(r.bs, r.ops, r.qemu_stride[0]),
                fmt_rate(r.bs, r.ops, r.qemu_stride[1]),
                fmt_rate(r.bs, r.ops, r.qemu_deep),
            );
        }
        s
    }

    fn goals(&self) -> String {
        let mut s = String::new();
        let time = |label: &str| {
            self.convert
                .iter()
                .find(|r| r.label == label)
                .map_or(f64::NAN, |r| best(&r.times))
        };
        let ratio = time("qemu-img convert") / time("qcow2 convert");
        s += &format!(
            "- convert raw -> qcow2: qcow2 convert is {ratio:.3}x as fast as qemu-img convert \
             (goal >= 1.000x): {}\n",
            verdict(ratio >= 1.0)
        );
        for r in &self.reads {
            let scaling = r.ours1 / r.ours2;
            let busy = if r.wait_share[1] > 0.1 {
                format!(
                    " (the 2 readers spent {:.0}% of their time waiting for a CPU)",
                    r.wait_share[1] * 100.0
                )
            } else {
                String::new()
            };
            s += &format!(
                "- {} {} reads, 2 threads vs 1: {scaling:.2}x (goal >= 1.70x): {}{busy}; \
                 plain pread: {:.2}x\n",
                r.access.name(),
                kib(r.bs),
                verdict(scaling >= 1.7),
                r.pread[0] / r.pread[1]
            );
        }
        s
    }

    fn section(&self) -> String {
        let m = &self.machine;
        let size_mib = self.raw_size >> 20;
        let cache_note = if self.cold {
            "the page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before \
             every run, so each tool reads the source from disk"
        } else {
            "the page cache could not be dropped (not root?), so the source is read once \
             before every run and each tool reads it from the page cache"
        };
        format!(
            "## Engine\n\n\
             The `qcow2-image` engine and `qcow2 convert` next to `qemu-img` on the same disk, \
             all measured in one run of\n\n\
             ```sh\n\
             cargo run --release -p xtask -- bench engine\n\
             ```\n\n\
             (`--size-mib N` for a smaller disk, `--reps N`, `--ops N`; the corpus is built once \
             and cached in `target/bench-corpus/`.)\n\n\
             - **Machine:** {cpus} CPUs ({cpu}), Linux {kernel}, {rustc}, release build; \
             other agents' builds shared the machine, so the figures are best of {reps}. \
             Full runs on this shared VM differ: convert times by up to 15% and 2-thread \
             scaling by up to 0.5x between runs the same day, so a small difference or a \
             single miss is noise until a rerun on an idle machine confirms it.\n\
             - **Reference:** {qemu}.\n\
             - **Date:** {date}.\n\
             - **Corpus:** a {size_mib} MiB raw disk holding an ext4 filesystem \
             (`mkfs.ext4 -d`, 4 KiB blocks) filled with about {fill} MiB of regular files \
             sampled from /usr (bin, sbin, lib, libexec, share, include) in a fixed \
             pseudo-random order; the rest is free space (zeros). Every byte is written, \
             so no tool can skip holes.\n\
             - **Convert:** `qemu-img convert -f raw -O qcow2 fs.raw out.qcow2` (the \
             reference; `-W`, out-of-order writes, also shown) and `qcow2 convert -f raw -O \
             qcow2 fs.raw out.qcow2`, default options (64 KiB clusters, all-zero clusters left \
             unallocated), {reps} runs each, tools interleaved; {cache_note}. Time is wall time \
             of the process plus an fsync of the output after it exits: `qcow2 convert` \
             fdatasyncs before it exits, while `qemu-img convert` opens its output with cache \
             mode `unsafe` (its default `-t`) and never flushes, so without that fsync its time \
             would leave out writing the output back to disk, which ours waits for. Our output passed \
             `qemu-img check` and `qemu-img compare` against the source (the benchmark fails \
             otherwise).\n\
             - **Reads:** of the image `qemu-img convert` wrote, with the file already in the \
             page cache, so these measure the engines' per-request cost, not the disk. Ours: \
             `Image::read_at` in-process on `FileStorage` (pread through the page cache), 1 \
             thread, and 2 threads on one shared `Image` (sequential: the threads take turns at \
             1 MiB stripes of one pass, each stripe read in order, so both meet the same mix \
             of data and free space; random: each thread its own fixed-seed sequence of \
             block-aligned offsets, same total ops). qemu-img: `qemu-img bench -f qcow2 -t \
             writeback -i threads -d D -c OPS -s BS`, i.e. also through the page cache, with \
             D = 1 and 2 requests in flight, against our 1 and 2 threads. `qemu-img bench` \
             has no random mode, so random rows are compared with its sequential figures; its \
             strided figures (`-S` of {stride} blocks, which visit every block once per pass \
             in a scattered order) are listed below as a closer random-like reference. Times \
             cover the I/O loop only (qemu-img bench reports the same), best of {reps}. MB/s = \
             10^6 bytes per second; ratios > 1 mean ours is faster.\n\n\
             ### Convert raw -> qcow2\n\n{convert}\n\
             ### Reads\n\n{reads}\n\
             Scaling from 1 to 2 threads, with what the kernel's scheduler statistics \
             (`/proc/thread-self/schedstat`, summed over the reader threads) say about the \
             same best runs: CPU time per read, and the share of the readers' time spent \
             runnable but waiting for a CPU (taken by other processes). CPU per read that stays \
             flat from 1 to 2 threads means the readers do not get in each other's way; time \
             waiting for a CPU is lost to other load on the machine, not to the engine. The \
             *pread* columns make the same reads (same offsets, threads and op counts) with \
             plain `pread` on the raw disk file, also cached: the kernel's own cost and \
             scaling, a ceiling for any engine that reads through one file descriptor (the \
             raw disk has no unallocated ranges, so every pread copies data, while ours \
             fill the image's unallocated clusters, {unallocated:.0}% of the disk, with zeros \
             without a system call).\n\n\
             {scaling}\n\
             Other `qemu-img bench` figures, same op counts: strided (`-S` = {stride} blocks) \
             at depth 1 and 2, and sequential at its default depth of 64 requests in flight \
             (its thread pool then reads with many threads at once):\n\n{other_qemu}\n\
             ### Goals\n\n{goals}",
            cpus = m.cpus,
            cpu = m.cpu_model,
            kernel = m.kernel,
            rustc = m.rustc,
            reps = self.opts.reps,
            qemu = m.qemu,
            date = m.date,
            fill = (size_mib as f64 * 0.6).round(),
            stride = STRIDE_BLOCKS,
            convert = self.convert_table(),
            reads = self.read_table(),
            scaling = self.scaling_table(),
            other_qemu = self.other_qemu_table(),
            unallocated = self.unallocated_share * 100.0,
            goals = self.goals(),
        )
    }
}

/// Wraps the prose lines of a markdown text at 78 columns (bullet items
/// continue indented by two spaces); tables, code and headings stay as
/// they are.
pub(crate) fn wrap_markdown(text: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || line.starts_with("```") || line.starts_with('|') || line.starts_with('#') {
            out += line;
            out.push('\n');
            continue;
        }
        let indent = if line.starts_with("- ") { "  " } else { "" };
        let mut current = String::new();
        for word in line.split(' ') {
            if !current.is_empty() && current.len() + 1 + word.len() > 78 {
                out += &current;
                out.push('\n');
                current = indent.to_string();
            } else if !current.is_empty() {
                current.push(' ');
            }
            current += word;
        }
        out += &current;
        out.push('\n');
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// `text` with its `## Engine` section (up to the next `## ` heading)
/// replaced by `section`, or with `section` appended.
fn replace_section(text: &str, section: &str) -> String {
    let start = if text.starts_with("## Engine\n") {
        Some(0)
    } else {
        text.find("\n## Engine\n").map(|i| i + 1)
    };
    let Some(start) = start else {
        return format!("{}\n\n{section}", text.trim_end_matches('\n'));
    };
    match text[start..].find("\n## ").map(|i| start + i + 1) {
        Some(end) => format!("{}{section}\n{}", &text[..start], &text[end..]),
        None => format!("{}{section}", &text[..start]),
    }
}

/// Replaces (or appends) the Engine section of `docs/benchmarks.md`.
fn write_doc(root: &Path, section: &str) -> Result<(), String> {
    let path = root.join("docs").join("benchmarks.md");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::write(&path, replace_section(&text, section))
        .map_err(|e| format!("{}: {e}", path.display()))
}

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
    let section = wrap_markdown(&report.section());
    println!("\n{section}");
    let write = opts.doc.unwrap_or(opts.size_mib == FULL_SIZE_MIB);
    if write {
        write_doc(&root, &section)?;
        println!("wrote the Engine section of docs/benchmarks.md");
    } else {
        println!("docs/benchmarks.md not updated (smaller disk; pass --doc yes to force)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{replace_section, wrap_markdown};

    #[test]
    fn the_engine_section_is_appended_then_replaced_in_place() {
        let page = "# Benchmarks\n\n## Codecs\n\ntext\n";
        let once = replace_section(page, "## Engine\n\nold\n");
        assert_eq!(
            once,
            "# Benchmarks\n\n## Codecs\n\ntext\n\n## Engine\n\nold\n"
        );
        let twice = replace_section(&once, "## Engine\n\nnew\n");
        assert_eq!(
            twice,
            "# Benchmarks\n\n## Codecs\n\ntext\n\n## Engine\n\nnew\n"
        );
        let later = format!("{once}\n## Later\n\nkept\n");
        assert_eq!(
            replace_section(&later, "## Engine\n\nnew\n"),
            "# Benchmarks\n\n## Codecs\n\ntext\n\n## Engine\n\nnew\n\n## Later\n\nkept\n"
        );
    }

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
