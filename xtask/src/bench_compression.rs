//! `cargo xtask bench compression`: `qcow2 convert -c` against
//! `qemu-img convert -c -W`, on the engine benchmark's ext4 corpus, in one
//! run.
//!
//! 1. For each compression type QEMU reads (`zlib`, `zstd`), both tools
//!    convert the raw disk to a compressed qcow2 image `--reps` times,
//!    interleaved, each run from a warm page cache and into a fresh
//!    destination: wall time (best of the runs), output size, peak RSS of
//!    the tool. Both outputs must pass `qemu-img check` and
//!    `qemu-img compare`, or the benchmark fails.
//! 2. For each type, one image made by `qemu-img convert -c` is converted
//!    back to raw by both tools (`qemu-img convert -W`), same method; both
//!    outputs must equal the disk.
//! 3. The codec limit (`codec_limit.rs`): the codec alone on the disk's
//!    non-zero clusters, CPU time over cores, measured by a release build
//!    of the xtask; our convert is reported as a share of it.
//! 4. A level trade-off table of our seed compress formats
//!    (`--compress-format NAME:LEVEL`, which QEMU cannot read), one run per
//!    level, verified with our own `qcow2 check` and `qcow2 compare`.
//!
//! The xtask itself only starts processes and reads the source once per run
//! to warm the cache, so `cargo xtask bench compression` (an unoptimized
//! xtask) measures the same as a release xtask; the CLI is always built
//! with `cargo build --release -p qcow2-cli` first.
//!
//! Options: `--size-mib N` disk size (default 2048; `--quick` is
//! `--size-mib 256`), `--reps N` runs per tool and type (default 3; the
//! table shows the best), `--doc yes|no` whether to replace the Compression
//! section of `docs/benchmarks.md` (default: yes for the full 2048 MiB disk
//! only), `--tradeoff yes|no` whether to run the level table (default yes;
//! without it the doc is not written), `--budget SECS` (default 240): once a
//! trade-off level takes longer, the codec's higher levels are skipped,
//! `--rss time|proc` how peak RSS is taken (default `time`, i.e.
//! `/usr/bin/time -f %M`, when that exists, else `proc`: polling `VmHWM`).

pub(crate) mod codec_limit;
mod decompress;
pub(crate) mod report;

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::bench_engine::{
    corpus, machine, output, target_dir, verify_convert, warm, workspace_root, wrap_markdown,
    QEMU_IMG,
};

const FULL_SIZE_MIB: u64 = 2048;
const QUICK_SIZE_MIB: u64 = 256;
pub(crate) const GNU_TIME: &str = "/usr/bin/time";
/// Compression types both tools write (`-o compression_type=T`).
const TYPES: [&str; 2] = ["zlib", "zstd"];
/// The trade-off table's `--compress-format` values, each codec's levels
/// in ascending order (slowest last, see `--budget`).
const TRADEOFF: [&str; 10] = [
    "zlib:1", "zlib:5", "zlib:9", "zstd:1", "zstd:3", "zstd:9", "brotli:1", "brotli:3", "brotli:6",
    "brotli:9",
];
/// How often the `proc` RSS probe samples the child.
const POLL: Duration = Duration::from_millis(10);

/// How the peak resident set size of a tool is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RssProbe {
    /// `/usr/bin/time -f %M`: the kernel's `ru_maxrss` of the child.
    GnuTime,
    /// `VmHWM` from `/proc/PID/status`, sampled every [`POLL`].
    Proc,
}

struct Options {
    size_mib: u64,
    reps: usize,
    doc: Option<bool>,
    tradeoff: bool,
    budget: f64,
    rss: RssProbe,
}

/// `/usr/bin/time` when it exists, else polling `/proc`.
pub(crate) fn default_rss_probe() -> RssProbe {
    if Path::new(GNU_TIME).exists() {
        RssProbe::GnuTime
    } else {
        RssProbe::Proc
    }
}

pub(crate) fn yes_no(flag: &str, value: &str) -> Result<bool, String> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("{flag} takes yes or no")),
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options {
        size_mib: FULL_SIZE_MIB,
        reps: 3,
        doc: None,
        tradeoff: true,
        budget: 240.0,
        rss: default_rss_probe(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            opts.size_mib = QUICK_SIZE_MIB;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--size-mib" => opts.size_mib = number()?.max(64),
            "--reps" => opts.reps = number()?.max(1) as usize,
            "--budget" => opts.budget = number()? as f64,
            "--doc" => opts.doc = Some(yes_no(flag, value)?),
            "--tradeoff" => opts.tradeoff = yes_no(flag, value)?,
            "--rss" => {
                opts.rss = match value.as_str() {
                    "time" => RssProbe::GnuTime,
                    "proc" => RssProbe::Proc,
                    _ => return Err("--rss takes time or proc".into()),
                }
            }
            _ => {
                return Err(format!(
                    "unknown option {flag}; try --quick, --size-mib, --reps, --doc, --tradeoff, \
                     --budget, --rss"
                ))
            }
        }
    }
    Ok(opts)
}

// ------------------------------------------------------------------ runs

/// One timed conversion.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    /// Wall time of the tool plus an fsync of its output after it exits.
    pub(crate) secs: f64,
    /// Size of the output file.
    pub(crate) bytes: u64,
    /// Peak resident set size of the tool, in KiB, when measured.
    pub(crate) rss_kib: Option<u64>,
}

/// Which converter a row measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Qemu,
    Ours,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Qemu => "qemu-img convert -c -W",
            Tool::Ours => "qcow2 convert -c",
        }
    }
}

/// All runs of one tool with one compression type.
struct Row {
    tool: Tool,
    kind: &'static str,
    runs: Vec<Run>,
}

impl Row {
    fn times(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.secs).collect()
    }

    /// Size of the last (verified) output.
    fn bytes(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.bytes)
    }

    /// Largest peak RSS over the runs, if every run measured one.
    fn peak_rss_kib(&self) -> Option<u64> {
        max_rss(self.runs.iter().map(|r| r.rss_kib))
    }
}

/// The largest of some peak RSS figures, or `None` if any is missing.
pub(crate) fn max_rss(rss: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    rss.into_iter()
        .try_fold(0, |peak, kib| kib.map(|k| k.max(peak)))
}

/// One level of the trade-off table, run once (or skipped).
struct Level {
    spec: &'static str,
    run: Option<Run>,
}

/// What a conversion needs besides the tool's own arguments.
pub(crate) struct Bench<'a> {
    pub(crate) raw: &'a Path,
    pub(crate) work: &'a Path,
    pub(crate) rss: RssProbe,
}

impl Bench<'_> {
    /// Runs `program args... SRC DST` once, with the source freshly read
    /// into the page cache and no destination, and times it, including an
    /// fsync of the destination after the tool exits.
    pub(crate) fn convert(
        &self,
        program: &Path,
        args: &[OsString],
        dst: &Path,
    ) -> Result<Run, String> {
        let _ = fs::remove_file(dst);
        warm(self.raw)?;
        let mut cmd = Command::new(program);
        cmd.args(args).arg(self.raw).arg(dst);
        self.timed(&mut cmd, dst)
    }

    /// Runs `cmd` once and times it, including an fsync of `dst` (the file
    /// it writes) after it exits; measures its peak RSS.
    pub(crate) fn timed(&self, cmd: &mut Command, dst: &Path) -> Result<Run, String> {
        let start = Instant::now();
        let rss_kib = match self.rss {
            RssProbe::GnuTime => self.run_under_time(cmd)?,
            RssProbe::Proc => self.run_polled(cmd)?,
        };
        File::open(dst)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("{}: {e}", dst.display()))?;
        let secs = start.elapsed().as_secs_f64();
        let bytes = fs::metadata(dst)
            .map_err(|e| format!("{}: {e}", dst.display()))?
            .len();
        Ok(Run {
            secs,
            bytes,
            rss_kib,
        })
    }

    /// Runs `cmd` under `/usr/bin/time -f %M`, which reports the child's
    /// peak RSS in KiB into a file (so the tool's own stderr stays apart).
    fn run_under_time(&self, cmd: &mut Command) -> Result<Option<u64>, String> {
        let report = self.work.join("maxrss.txt");
        let mut timed = Command::new(GNU_TIME);
        timed
            .args(["-f", "%M", "-o"])
            .arg(&report)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        output(&mut timed)?;
        let text = fs::read_to_string(&report).map_err(|e| format!("{}: {e}", report.display()))?;
        Ok(text.trim().parse().ok())
    }

    /// Runs `cmd`, sampling `VmHWM` (the kernel's peak RSS of the process)
    /// until it exits; growth in its last [`POLL`] goes unseen.
    fn run_polled(&self, cmd: &mut Command) -> Result<Option<u64>, String> {
        let errors = self.work.join("stderr.txt");
        let stderr = File::create(&errors).map_err(|e| format!("{}: {e}", errors.display()))?;
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
        let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
        let mut peak: Option<u64> = None;
        let status: ExitStatus = loop {
            if let Some(hwm) = vm_hwm_kib(&status_file) {
                peak = Some(peak.map_or(hwm, |p| p.max(hwm)));
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => return Err(format!("{:?}: {e}", cmd.get_program())),
            }
        };
        if !status.success() {
            return Err(format!(
                "{:?} {:?} failed ({status}): {}",
                cmd.get_program(),
                cmd.get_args().collect::<Vec<_>>(),
                fs::read_to_string(&errors).unwrap_or_default()
            ));
        }
        Ok(peak)
    }
}

/// The `VmHWM` line of a `/proc/PID/status` file, in KiB.
fn vm_hwm_kib(status_file: &Path) -> Option<u64> {
    let text = fs::read_to_string(status_file).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Both tools with each compression type, `reps` runs each, tools
/// interleaved so that load from elsewhere hits them alike; each type's
/// two outputs are verified with `qemu-img` and deleted before the next.
fn head_to_head(bench: &Bench<'_>, qcow2: &Path, reps: usize) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for kind in TYPES {
        let option = format!("compression_type={kind}");
        let mut pair = [Tool::Qemu, Tool::Ours].map(|tool| Row {
            tool,
            kind,
            runs: Vec::new(),
        });
        for rep in 1..=reps {
            for row in &mut pair {
                let (program, mut args) = match row.tool {
                    Tool::Qemu => (Path::new(QEMU_IMG), os_args(&["convert", "-c", "-W"])),
                    Tool::Ours => (qcow2, os_args(&["convert", "-c"])),
                };
                args.extend(os_args(&["-f", "raw", "-O", "qcow2", "-o", &option]));
                let dst = bench
                    .work
                    .join(format!("{kind}-{}.qcow2", tool_file(row.tool)));
                let run = bench.convert(program, &args, &dst)?;
                eprintln!(
                    "  {kind} rep {rep}: {:<24} {:.2} s, {} bytes, peak RSS {}",
                    row.tool.label(),
                    run.secs,
                    run.bytes,
                    report::rss_mib(run.rss_kib)
                );
                row.runs.push(run);
            }
        }
        for row in &pair {
            let dst = bench
                .work
                .join(format!("{kind}-{}.qcow2", tool_file(row.tool)));
            verify_convert(bench.raw, &dst)
                .map_err(|e| format!("{} ({kind}): {e}", row.tool.label()))?;
            let _ = fs::remove_file(&dst);
        }
        println!("{kind}: both outputs passed qemu-img check and qemu-img compare");
        rows.extend(pair);
    }
    Ok(rows)
}

fn tool_file(tool: Tool) -> &'static str {
    match tool {
        Tool::Qemu => "qemu",
        Tool::Ours => "ours",
    }
}

/// Fails unless our own `check` finds `image` clean and our `compare`
/// finds it identical to `raw` (QEMU cannot open the seed extension).
pub(crate) fn verify_ours(qcow2: &Path, raw: &Path, image: &Path) -> Result<(), String> {
    let check = output(Command::new(qcow2).arg("check").arg(image))?;
    if !check.contains("No errors were found") {
        return Err(format!("qcow2 check of {}: {check}", image.display()));
    }
    let same = output(
        Command::new(qcow2)
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(raw)
            .arg(image),
    )?;
    if !same.contains("Images are identical.") {
        return Err(format!("qcow2 compare of {}: {same}", image.display()));
    }
    Ok(())
}

/// Our seed compress formats, one run per level, each verified with our
/// own tools. Once a level takes longer than `budget` seconds, the same
/// codec's later (higher, slower) levels are skipped.
fn tradeoff(bench: &Bench<'_>, qcow2: &Path, budget: f64) -> Result<Vec<Level>, String> {
    let dst = bench.work.join("tradeoff.qcow2");
    let mut over_budget: Vec<&str> = Vec::new();
    let mut levels = Vec::new();
    for spec in TRADEOFF {
        let codec = spec.split(':').next().unwrap_or(spec);
        if over_budget.contains(&codec) {
            eprintln!("  {spec}: skipped ({codec} went over the {budget:.0} s budget)");
            levels.push(Level { spec, run: None });
            continue;
        }
        let mut args = os_args(&["convert", "-c", "-f", "raw", "-O", "qcow2"]);
        args.extend(os_args(&["--compress-format", spec]));
        let run = bench.convert(qcow2, &args, &dst)?;
        verify_ours(qcow2, bench.raw, &dst)?;
        let _ = fs::remove_file(&dst);
        eprintln!(
            "  {spec:<9} {:.2} s, {} bytes, peak RSS {}; passed qcow2 check and compare",
            run.secs,
            run.bytes,
            report::rss_mib(run.rss_kib)
        );
        if run.secs > budget {
            over_budget.push(codec);
        }
        levels.push(Level {
            spec,
            run: Some(run),
        });
    }
    Ok(levels)
}

// ------------------------------------------------------------------- doc

/// `text` with the section under `heading` (a `## ` line, up to the next
/// `## ` line outside code blocks) replaced by `section`, or with
/// `section` appended when there is none.
pub(crate) fn splice_section(text: &str, heading: &str, section: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    let mut skipping = false;
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with("## ") {
            skipping = !replaced && line.trim_end() == heading;
            if skipping {
                out += section.trim_end();
                out += "\n\n";
                replaced = true;
            }
        }
        if !skipping {
            out += line;
        }
    }
    if !replaced {
        out = format!("{}\n\n{}", out.trim_end(), section.trim_end());
    }
    format!("{}\n", out.trim_end())
}

// ------------------------------------------------------------------ main

/// Builds the CLI, and the xtask that measures the codec limit, in release.
fn build_cli(root: &Path, target: &Path) -> Result<PathBuf, String> {
    build_release(root, &["qcow2-cli", "xtask"])?;
    Ok(target.join("release").join("qcow2"))
}

/// `cargo build --release -p PACKAGE...` in the workspace at `root`.
pub(crate) fn build_release(root: &Path, packages: &[&str]) -> Result<(), String> {
    let flags: Vec<String> = packages.iter().map(|p| format!("-p {p}")).collect();
    println!("building: cargo build --release {}", flags.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(root)
        .args(["build", "--quiet", "--release"]);
    for p in packages {
        build.args(["-p", p]);
    }
    output(&mut build)?;
    Ok(())
}

/// Runs the benchmark.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    let root = workspace_root();
    let target = target_dir(&root);
    let corpus_dir = target.join("bench-corpus");
    let raw = corpus::ensure(&corpus_dir, opts.size_mib)?;
    let raw_size = fs::metadata(&raw).map_err(|e| e.to_string())?.len();
    let qcow2 = build_cli(&root, &target)?;

    let work = corpus_dir.join(format!("work-compression-{}M", opts.size_mib));
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let bench = Bench {
        raw: &raw,
        work: &work,
        rss: opts.rss,
    };
    println!(
        "compression: {} runs per tool and type, warm page cache",
        opts.reps
    );
    let result = head_to_head(&bench, &qcow2, opts.reps).and_then(|rows| {
        println!(
            "compressed qcow2 -> raw: {} runs per tool and type",
            opts.reps
        );
        let decompress = decompress::run(&bench, &qcow2, opts.reps)?;
        let xtask = target.join("release").join("xtask");
        let mut limits = Vec::new();
        for kind in TYPES {
            println!("codec limit: {kind} alone on the disk's non-zero clusters");
            limits.push((kind, codec_limit::measure_in_release(&xtask, &raw, kind)?));
        }
        let levels = if opts.tradeoff {
            println!("trade-off: one run per level");
            tradeoff(&bench, &qcow2, opts.budget)?
        } else {
            Vec::new()
        };
        Ok((rows, levels, decompress, limits))
    });
    let _ = fs::remove_dir_all(&work);
    let (rows, levels, decompress, limits) = result?;

    let report = report::Report {
        machine: machine(),
        raw_size,
        reps: opts.reps,
        budget: opts.budget,
        rss: opts.rss,
        rows,
        levels,
        decompress,
        limits,
    };
    let section = wrap_markdown(&report.section());
    println!("\n{section}");
    let write = opts.tradeoff && opts.doc.unwrap_or(opts.size_mib == FULL_SIZE_MIB);
    if write {
        let path = root.join("docs").join("benchmarks.md");
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        fs::write(&path, splice_section(&text, report::HEADING, &section))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote the Compression section of docs/benchmarks.md");
    } else {
        println!(
            "docs/benchmarks.md not updated (smaller disk or no trade-off table; \
             pass --doc yes to force)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse, splice_section, Row, Run, Tool};

    #[test]
    fn the_section_is_appended_then_replaced_in_place() {
        let page = "# Benchmarks\n\n## Engine\n\n```sh\n## not a heading\n```\n";
        let once = splice_section(page, "## Compression", "## Compression\n\nold\n");
        assert_eq!(
            once,
            "# Benchmarks\n\n## Engine\n\n```sh\n## not a heading\n```\n\n## Compression\n\nold\n"
        );
        let twice = splice_section(&once, "## Compression", "## Compression\n\nnew\n");
        assert_eq!(twice, once.replace("old", "new"));
        let middle = "# B\n\n## Compression\n\nold\n\n### Sub\n\nx\n\n## Later\n\nkept\n";
        assert_eq!(
            splice_section(middle, "## Compression", "## Compression\n\nnew\n"),
            "# B\n\n## Compression\n\nnew\n\n## Later\n\nkept\n"
        );
    }

    #[test]
    fn options_parse() {
        let args: Vec<String> = ["--quick", "--reps", "5", "--doc", "yes"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let opts = parse(&args).unwrap();
        assert_eq!((opts.size_mib, opts.reps, opts.doc), (256, 5, Some(true)));
        assert!(parse(&["--doc".to_string(), "maybe".to_string()]).is_err());
        assert!(parse(&["--bogus".to_string(), "1".to_string()]).is_err());
    }

    #[test]
    fn peak_rss_needs_every_run() {
        let run = |rss_kib| Run {
            secs: 1.0,
            bytes: 1,
            rss_kib,
        };
        let mut row = Row {
            tool: Tool::Ours,
            kind: "zlib",
            runs: vec![run(Some(10)), run(Some(30)), run(Some(20))],
        };
        assert_eq!(row.peak_rss_kib(), Some(30));
        row.runs.push(run(None));
        assert_eq!(row.peak_rss_kib(), None);
    }
}
