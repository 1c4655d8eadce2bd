//! `cargo xtask bench dedup`: deduplicating conversion and offline dedup on
//! a disk with heavy 64 KiB-cluster duplication, in one run.
//!
//! The corpus is `dup-SM.raw`, laid out like `dup.raw` of
//! `shared/bench/make-corpus.sh`: the first S MiB of the engine benchmark's
//! ext4 disk (built in the same run if absent, see
//! [`crate::bench_engine::corpus`]) written three times, at offsets 0,
//! S MiB + 64 KiB and 2 S MiB + 192 KiB (64 KiB-aligned, deliberately not
//! 1 MiB-aligned), then a unique tail (the disk's bytes from S MiB on)
//! filling the image to `ceil(S * 2048 / 600)` MiB, so S = 600 gives the
//! script's 2 GiB image. Every byte is written.
//!
//! Measured: `qcow2 convert -O qcow2 --dedup` against our plain convert and
//! `qemu-img convert -O qcow2` (time, size, peak RSS); the output size
//! against the ideal (distinct non-zero clusters, found by hashing the raw
//! file here); `-c --dedup` against `-c` and against `-c` of a raw file of
//! the distinct clusters alone; single-thread SHA-256 throughput; index
//! bytes per cluster; the time to open a dedup image of about a million
//! indexed clusters for writing; `qcow2 amend -o dedup=on` of a plain image.
//!
//! Everything measured in-process (hashing, index, image open) runs in a
//! release build of this xtask (`target/release/xtask bench dedup probe
//! ...`), which the benchmark builds together with the CLI, so
//! `cargo xtask bench dedup` (an unoptimized xtask) measures the same.
//!
//! Options: `--size-mib N` (or `--size N`) the segment size S (default 600;
//! `--quick` is 64), `--reps N` runs per tool (default 3), `--doc yes|no`
//! whether to replace the Dedup section of `docs/benchmarks.md` (default:
//! yes for S = 600 only), `--open-clusters N` clusters of the open-time
//! image (default 1000000), `--rss time|proc` as in `bench compression`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use qcow2_dedup::{hash_cluster, is_zero, sha256_backend, Digest, DigestIndex};
use qcow2_format::ClusterIndex;
use qcow2_image::Image;
use serde_json::Value;

use crate::bench_compression::report::rss_mib;
use crate::bench_compression::{
    build_release, default_rss_probe, max_rss, os_args, splice_section, verify_ours, yes_no, Bench,
    RssProbe, Run, GNU_TIME,
};
use crate::bench_engine::{
    best, corpus, machine, median, output, target_dir, verify_convert, workspace_root,
    wrap_markdown, Machine, QEMU_IMG,
};

const HEADING: &str = "## Dedup";
const FULL_SEGMENT_MIB: u64 = 600;
const QUICK_SEGMENT_MIB: u64 = 64;
const CLUSTER: u64 = 64 * 1024;
const KIB64: u64 = 64 * 1024;
/// Cluster size of the open-time image.
const OPEN_CLUSTER: u64 = 4096;
/// Goals.
const SIZE_GOAL: f64 = 1.01;
const RSS_BASE_MIB: f64 = 64.0;
const INDEX_GOAL: f64 = 16.0;

struct Options {
    segment_mib: u64,
    reps: usize,
    doc: Option<bool>,
    open_clusters: u64,
    rss: RssProbe,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options {
        segment_mib: FULL_SEGMENT_MIB,
        reps: 3,
        doc: None,
        open_clusters: 1_000_000,
        rss: default_rss_probe(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            opts.segment_mib = QUICK_SEGMENT_MIB;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--size-mib" | "--size" => opts.segment_mib = number()?.max(8),
            "--reps" => opts.reps = number()?.max(1) as usize,
            "--open-clusters" => opts.open_clusters = number()?.max(1000),
            "--doc" => opts.doc = Some(yes_no(flag, value)?),
            "--rss" => {
                opts.rss = match value.as_str() {
                    "time" => RssProbe::GnuTime,
                    "proc" => RssProbe::Proc,
                    _ => return Err("--rss takes time or proc".into()),
                }
            }
            _ => {
                return Err(format!(
                    "unknown option {flag}; try --quick, --size-mib, --reps, --open-clusters, \
                     --doc, --rss"
                ))
            }
        }
    }
    Ok(opts)
}

mod dup_corpus;
mod overwrite;
mod probe;
mod report;

use dup_corpus::{ensure_dup, write_distinct_raw, Layout};
use probe::{int, num, probe, run_probe};

// ------------------------------------------------------------------ runs

struct Row {
    label: String,
    runs: Vec<Run>,
}

impl Row {
    fn new(label: &str) -> Self {
        Self {
            label: label.into(),
            runs: Vec::new(),
        }
    }
    fn times(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.secs).collect()
    }
    fn best(&self) -> f64 {
        best(&self.times())
    }
    fn bytes(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.bytes)
    }
    fn rss(&self) -> Option<u64> {
        max_rss(self.runs.iter().map(|r| r.rss_kib))
    }
}

/// The `dedup` object of our `check --output=json`, after failing on any
/// error or corruption.
fn our_check(qcow2: &Path, image: &Path) -> Result<Value, String> {
    let out = Command::new(qcow2)
        .args(["check", "--output=json"])
        .arg(image)
        .output()
        .map_err(|e| format!("qcow2 check: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "qcow2 check --output=json of {}: {e}: {text}",
            image.display()
        )
    })?;
    let bad = int(&json, "check-errors") + int(&json, "corruptions");
    let dedup = json.get("dedup").cloned().unwrap_or(Value::Null);
    let findings = dedup
        .get("findings")
        .and_then(Value::as_array)
        .map_or(0, |f| {
            f.iter()
                .filter(|x| x.get("severity").and_then(Value::as_str) == Some("corruption"))
                .count()
        });
    if !out.status.success() || bad > 0 || findings > 0 {
        return Err(format!("qcow2 check of {}: {text}", image.display()));
    }
    Ok(dedup)
}

/// Clusters `qemu-img check` reports as leaked: for a dedup image, the
/// dedup table's clusters (QEMU does not know the table).
fn qemu_leaks(image: &Path) -> u64 {
    Command::new(QEMU_IMG)
        .args(["check", "--output=json", "-f", "qcow2"])
        .arg(image)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .map_or(0, |v| int(&v, "leaks"))
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

struct Measured {
    machine: Machine,
    layout: Layout,
    segment_mib: u64,
    reps: usize,
    rss: RssProbe,
    scan: Value,
    /// qemu-img, ours plain, ours --dedup.
    plain: [Row; 3],
    dedup_check: Value,
    dedup_table: u64,
    dedup_index: Value,
    /// ours -c, ours -c --dedup, ours -c of the distinct clusters.
    compressed: [Row; 3],
    c_check: Value,
    c_table: u64,
    amend: Run,
    amend_before: (u64, u64),
    amend_after: (u64, u64),
    amend_check: Value,
    open_clusters: u64,
    open_convert: Run,
    open_size: u64,
    open: Value,
    /// `probe overwrite`: the two ways of overwriting indexed clusters.
    overwrite: Value,
}

fn measure(
    opts: &Options,
    dup: &Path,
    work: &Path,
    qcow2: &Path,
    xtask: &Path,
    layout: Layout,
) -> Result<Measured, String> {
    let bench = Bench {
        raw: dup,
        work,
        rss: opts.rss,
    };
    let distinct = work.join("distinct.raw");
    println!(
        "hashing the 64 KiB clusters of {} (release probe)",
        dup.display()
    );
    let scan = run_probe(xtask, &[dup, &distinct], "scan")?;
    println!("  {scan}");

    println!("convert: {} runs per tool, warm page cache", opts.reps);
    let mut plain = [
        Row::new("qemu-img convert -O qcow2"),
        Row::new("qcow2 convert -O qcow2"),
        Row::new("qcow2 convert -O qcow2 --dedup"),
    ];
    let outs = ["qemu.qcow2", "plain.qcow2", "dedup.qcow2"].map(|n| work.join(n));
    for rep in 1..=opts.reps {
        for (i, row) in plain.iter_mut().enumerate() {
            let (program, mut args) = match i {
                0 => (Path::new(QEMU_IMG), os_args(&["convert"])),
                1 => (qcow2, os_args(&["convert"])),
                _ => (qcow2, os_args(&["convert", "--dedup"])),
            };
            args.extend(os_args(&["-f", "raw", "-O", "qcow2"]));
            let run = bench.convert(program, &args, &outs[i])?;
            eprintln!(
                "  rep {rep}: {:<32} {:.2} s, {} bytes, peak RSS {}",
                row.label,
                run.secs,
                run.bytes,
                rss_mib(run.rss_kib)
            );
            row.runs.push(run);
        }
    }
    let _ = fs::remove_file(&outs[0]);
    verify_convert(dup, &outs[1])?;
    verify_ours(qcow2, dup, &outs[2])?;
    let dedup_check = our_check(qcow2, &outs[2])?;
    let dedup_table = qemu_leaks(&outs[2]) * CLUSTER;
    let dedup_index = run_probe(xtask, &[&outs[2]], "open")?;
    println!("dedup output passed qcow2 check and compare: {dedup_check} {dedup_index}");

    println!("convert -c: {} runs per variant", opts.reps);
    let mut compressed = [
        Row::new("qcow2 convert -c -O qcow2"),
        Row::new("qcow2 convert -c -O qcow2 --dedup"),
        Row::new("qcow2 convert -c -O qcow2 of the distinct clusters"),
    ];
    let couts = ["c.qcow2", "c-dedup.qcow2", "c-distinct.qcow2"].map(|n| work.join(n));
    for rep in 1..=opts.reps {
        for (i, row) in compressed.iter_mut().enumerate().take(2) {
            let mut args = os_args(&["convert", "-c"]);
            if i == 1 {
                args.push("--dedup".into());
            }
            args.extend(os_args(&["-f", "raw", "-O", "qcow2"]));
            let run = bench.convert(qcow2, &args, &couts[i])?;
            eprintln!(
                "  rep {rep}: {:<34} {:.2} s, {} bytes, peak RSS {}",
                row.label,
                run.secs,
                run.bytes,
                rss_mib(run.rss_kib)
            );
            row.runs.push(run);
        }
    }
    let distinct_bench = Bench {
        raw: &distinct,
        work,
        rss: opts.rss,
    };
    let run = distinct_bench.convert(
        qcow2,
        &os_args(&["convert", "-c", "-f", "raw", "-O", "qcow2"]),
        &couts[2],
    )?;
    eprintln!(
        "  distinct clusters -c: {:.2} s, {} bytes",
        run.secs, run.bytes
    );
    compressed[2].runs.push(run);
    verify_convert(dup, &couts[0])?;
    verify_ours(qcow2, dup, &couts[1])?;
    let c_check = our_check(qcow2, &couts[1])?;
    let c_table = qemu_leaks(&couts[1]) * CLUSTER;
    for p in &couts {
        let _ = fs::remove_file(p);
    }
    let _ = fs::remove_file(&outs[2]);

    println!("amend -o dedup=on of the plain image");
    let image = work.join("amend.qcow2");
    fs::rename(&outs[1], &image).map_err(|e| format!("{}: {e}", image.display()))?;
    let before = (
        fs::metadata(&image).map_or(0, |m| m.len()),
        allocated(&image),
    );
    let amend = bench.timed(
        Command::new(qcow2)
            .args(["amend", "-o", "dedup=on"])
            .arg(&image),
        &image,
    )?;
    let after = (amend.bytes, allocated(&image));
    verify_ours(qcow2, dup, &image)?;
    let amend_check = our_check(qcow2, &image)?;
    eprintln!(
        "  amend: {:.2} s, {} -> {} bytes ({} -> {} allocated) {amend_check}",
        amend.secs, before.0, after.0, before.1, after.1
    );
    let _ = fs::remove_file(&image);

    println!(
        "open time: a dedup image of {} distinct {} KiB clusters",
        opts.open_clusters,
        OPEN_CLUSTER / 1024
    );
    let gen = work.join("open.raw");
    let gen_image = work.join("open.qcow2");
    write_distinct_raw(&gen, opts.open_clusters, OPEN_CLUSTER)?;
    let gen_bench = Bench {
        raw: &gen,
        work,
        rss: opts.rss,
    };
    let option = format!("cluster_size={OPEN_CLUSTER}");
    let open_convert = gen_bench.convert(
        qcow2,
        &os_args(&[
            "convert", "--dedup", "-f", "raw", "-O", "qcow2", "-o", &option,
        ]),
        &gen_image,
    )?;
    let _ = fs::remove_file(&gen);
    let open_check = our_check(qcow2, &gen_image)?;
    let open = run_probe(xtask, &[&gen_image], "open")?;
    eprintln!(
        "  convert {:.2} s, {} bytes; open {open}; check {open_check}",
        open_convert.secs, open_convert.bytes
    );
    let open_size = open_convert.bytes;
    let _ = fs::remove_file(&gen_image);

    println!("overwriting indexed clusters: clear the entry first, or write elsewhere");
    let ow_dir = work.join("overwrite");
    fs::create_dir_all(&ow_dir).map_err(|e| format!("{}: {e}", ow_dir.display()))?;
    let overwrite = run_probe(xtask, &[&ow_dir], "overwrite")?;
    println!("  {overwrite}");
    for entry in fs::read_dir(&ow_dir).map_err(|e| format!("{}: {e}", ow_dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        our_check(qcow2, &path)?;
    }

    Ok(Measured {
        machine: machine(),
        layout,
        segment_mib: opts.segment_mib,
        reps: opts.reps,
        rss: opts.rss,
        scan,
        plain,
        dedup_check,
        dedup_table,
        dedup_index,
        compressed,
        c_check,
        c_table,
        amend,
        amend_before: before,
        amend_after: after,
        amend_check,
        open_clusters: opts.open_clusters,
        open_convert,
        open_size,
        open,
        overwrite,
    })
}

// ------------------------------------------------------------------ main

/// Runs the benchmark (or, with `probe`, one in-process measurement).
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) == Some("probe") {
        return probe(&args[1..]);
    }
    let opts = parse(args)?;
    let root = workspace_root();
    let target = target_dir(&root);
    let corpus_dir = target.join("bench-corpus");
    let layout = Layout::new(opts.segment_mib);
    let fs_raw = corpus::ensure(&corpus_dir, layout.disk >> 20)?;
    let dup = ensure_dup(&corpus_dir, &fs_raw, opts.segment_mib, layout)?;
    build_release(&root, &["qcow2-cli", "xtask"])?;
    let qcow2 = target.join("release").join("qcow2");
    let xtask = target.join("release").join("xtask");

    let work = corpus_dir.join(format!("work-dedup-{}M", opts.segment_mib));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let start = Instant::now();
    let result = measure(&opts, &dup, &work, &qcow2, &xtask, layout);
    let _ = fs::remove_dir_all(&work);
    let measured = result?;
    println!("measured in {:.0} s", start.elapsed().as_secs_f64());

    let section = wrap_markdown(&measured.section());
    println!("\n{section}");
    if opts.doc.unwrap_or(opts.segment_mib == FULL_SEGMENT_MIB) {
        let path = root.join("docs").join("benchmarks.md");
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        fs::write(&path, splice_section(&text, HEADING, &section))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote the Dedup section of docs/benchmarks.md");
    } else {
        println!("docs/benchmarks.md not updated (smaller segment; pass --doc yes to force)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse, Layout};

    #[test]
    fn the_full_layout_is_the_scripts() {
        let l = Layout::new(600);
        assert_eq!(l.disk, 2048 << 20);
        assert_eq!(
            l.copies(),
            [0, (600 << 20) + 65536, (1200 << 20) + 192 * 1024]
        );
        assert_eq!(l.tail(), (1800 << 20) + 192 * 1024);
        let mut at = 0;
        for (offset, _, len) in l.pieces() {
            assert_eq!(offset, at);
            at += len;
        }
        assert_eq!(at, l.disk);
    }

    #[test]
    fn options_parse() {
        let args: Vec<String> = ["--size", "64", "--reps", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let opts = parse(&args).unwrap();
        assert_eq!((opts.segment_mib, opts.reps), (64, 1));
        assert!(parse(&["--bogus".to_string(), "1".to_string()]).is_err());
    }
}
