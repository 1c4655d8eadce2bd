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

// ---------------------------------------------------------------- corpus

/// The layout of the duplicated image for a segment of `segment` bytes.
#[derive(Clone, Copy)]
struct Layout {
    segment: u64,
    disk: u64,
}

impl Layout {
    fn new(segment_mib: u64) -> Self {
        Self {
            segment: segment_mib << 20,
            disk: (segment_mib * 2048).div_ceil(FULL_SEGMENT_MIB) << 20,
        }
    }

    /// Where the three copies of the segment start.
    fn copies(self) -> [u64; 3] {
        [0, self.segment + KIB64, 2 * self.segment + 3 * KIB64]
    }

    /// Where the unique tail starts in the image.
    fn tail(self) -> u64 {
        3 * self.segment + 3 * KIB64
    }

    /// `(image offset, source offset or None for zeros, length)` pieces in
    /// image order, covering the whole image.
    fn pieces(self) -> Vec<(u64, Option<u64>, u64)> {
        let [a, b, c] = self.copies();
        let s = self.segment;
        vec![
            (a, Some(0), s),
            (s, None, b - s),
            (b, Some(0), s),
            (b + s, None, c - b - s),
            (c, Some(0), s),
            (self.tail(), Some(s), self.disk - self.tail()),
        ]
    }
}

/// Builds `dup-SM.raw` from the ext4 disk `fs` (of `layout.disk` bytes)
/// unless it is already there with the right size.
fn ensure_dup(
    dir: &Path,
    fs_raw: &Path,
    segment_mib: u64,
    layout: Layout,
) -> Result<PathBuf, String> {
    let image = dir.join(format!("dup-{segment_mib}M.raw"));
    if fs::metadata(&image).is_ok_and(|m| m.len() == layout.disk) {
        println!("corpus: reusing {}", image.display());
        return Ok(image);
    }
    println!("corpus: writing {}", image.display());
    let tmp = dir.join(format!("dup-{segment_mib}M.tmp"));
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut src = File::open(fs_raw).map_err(|e| err(fs_raw, e))?;
    let mut dst = File::create(&tmp).map_err(|e| err(&tmp, e))?;
    let mut buf = vec![0u8; 1 << 20];
    for (_, source, len) in layout.pieces() {
        let mut left = len;
        if let Some(at) = source {
            use std::io::{Seek, SeekFrom};
            src.seek(SeekFrom::Start(at)).map_err(|e| err(fs_raw, e))?;
        }
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            match source {
                Some(_) => src.read_exact(&mut buf[..n]).map_err(|e| err(fs_raw, e))?,
                None => buf[..n].fill(0),
            }
            dst.write_all(&buf[..n]).map_err(|e| err(&tmp, e))?;
            left -= n as u64;
        }
    }
    dst.sync_all().map_err(|e| err(&tmp, e))?;
    if dst.metadata().map(|m| m.len()).unwrap_or(0) != layout.disk {
        return Err(format!("{} has the wrong size", tmp.display()));
    }
    fs::rename(&tmp, &image).map_err(|e| err(&image, e))?;
    Ok(image)
}

/// A raw file of `clusters` clusters of `cluster` bytes, each distinct and
/// non-zero: its index (little endian) in the first 8 bytes, a fixed
/// pattern in the next 8, zeros after.
fn write_distinct_raw(path: &Path, clusters: u64, cluster: u64) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = File::create(path).map_err(err)?;
    let per_buf = (4 << 20) / cluster;
    let mut buf = vec![0u8; (per_buf * cluster) as usize];
    let mut i = 0;
    while i < clusters {
        let n = per_buf.min(clusters - i);
        for k in 0..n {
            let at = (k * cluster) as usize;
            buf[at..at + 8].copy_from_slice(&(i + k).to_le_bytes());
            buf[at + 8..at + 16].copy_from_slice(&0x5eed_d0d0_c0de_beefu64.to_le_bytes());
        }
        file.write_all(&buf[..(n * cluster) as usize])
            .map_err(err)?;
        i += n;
    }
    file.sync_all().map_err(err)
}

// ----------------------------------------------------------------- probe

/// `bench dedup probe scan RAW DISTINCT` / `probe open IMAGE`: the
/// in-process measurements, run in the release xtask; one JSON line out.
fn probe(args: &[String]) -> Result<(), String> {
    match (args.first().map(String::as_str), args.len()) {
        (Some("scan"), 3) => probe_scan(Path::new(&args[1]), Path::new(&args[2])),
        (Some("open"), 2) => probe_open(Path::new(&args[1])),
        _ => Err("usage: bench dedup probe scan RAW DISTINCT | probe open IMAGE".into()),
    }
}

/// Hashes every non-zero 64 KiB cluster of `raw` on one thread with
/// `hash_cluster` (only the hashing is timed), writes the distinct ones in
/// first-seen order to `distinct`, and builds a `DigestIndex` of them.
fn probe_scan(raw: &Path, distinct: &Path) -> Result<(), String> {
    let mut input = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let mut out = File::create(distinct).map_err(|e| format!("{}: {e}", distinct.display()))?;
    let mut buf = vec![0u8; 64 * CLUSTER as usize];
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut digests: Vec<Digest> = Vec::new();
    let (mut clusters, mut zero, mut hashed) = (0u64, 0u64, 0u64);
    let mut hash_secs = 0.0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = input
                .read(&mut buf[filled..])
                .map_err(|e| format!("{}: {e}", raw.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let chunks: Vec<&[u8]> = buf[..filled].chunks(CLUSTER as usize).collect();
        let nonzero: Vec<&[u8]> = chunks.iter().copied().filter(|c| !is_zero(c)).collect();
        clusters += chunks.len() as u64;
        zero += (chunks.len() - nonzero.len()) as u64;
        let start = Instant::now();
        let these: Vec<Digest> = nonzero.iter().map(|c| hash_cluster(c)).collect();
        hash_secs += start.elapsed().as_secs_f64();
        for (c, d) in nonzero.iter().zip(these) {
            hashed += c.len() as u64;
            if seen.insert(d) {
                digests.push(d);
                out.write_all(c)
                    .map_err(|e| format!("{}: {e}", distinct.display()))?;
            }
        }
        if filled < buf.len() {
            break;
        }
    }
    out.sync_all()
        .map_err(|e| format!("{}: {e}", distinct.display()))?;
    let index = DigestIndex::build(
        digests
            .iter()
            .enumerate()
            .map(|(i, d)| (*d, ClusterIndex(i as u64 + 1))),
    );
    let json = serde_json::json!({
        "clusters": clusters,
        "zero": zero,
        "distinct": digests.len(),
        "hashed_bytes": hashed,
        "hash_secs": hash_secs,
        "backend": sha256_backend(),
        "index_len": index.len(),
        "index_bytes": index.memory_bytes(),
    });
    println!("{json}");
    Ok(())
}

/// Opens `image` for writing three times; the best open time and the
/// index numbers.
fn probe_open(image: &Path) -> Result<(), String> {
    let mut times = Vec::new();
    let mut stats = None;
    for _ in 0..3 {
        let start = Instant::now();
        let img = Image::open_path(image, true).map_err(|e| format!("{}: {e}", image.display()))?;
        times.push(start.elapsed().as_secs_f64());
        stats = img.dedup_index_stats();
        img.close()
            .map_err(|e| format!("{}: {e}", image.display()))?;
    }
    let (indexed, bytes) = stats.ok_or_else(|| format!("{}: dedup is off", image.display()))?;
    let json = serde_json::json!({
        "open_secs": best(&times),
        "open_times": times,
        "indexed": indexed,
        "index_bytes": bytes,
    });
    println!("{json}");
    Ok(())
}

fn run_probe(xtask: &Path, args: &[&Path], kind: &str) -> Result<Value, String> {
    let mut cmd = Command::new(xtask);
    cmd.args(["bench", "dedup", "probe", kind]).args(args);
    let text = output(&mut cmd)?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("probe {kind}: no JSON in {text:?}"))?;
    serde_json::from_str(line).map_err(|e| format!("probe {kind}: {e}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn int(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

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
    })
}

// ---------------------------------------------------------------- report

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

impl Measured {
    fn nonzero(&self) -> u64 {
        int(&self.scan, "clusters") - int(&self.scan, "zero")
    }
    fn distinct(&self) -> u64 {
        int(&self.scan, "distinct")
    }
    fn ideal(&self) -> u64 {
        self.distinct() * CLUSTER
    }
    /// Header, L1, L2 and refcount bytes of our plain output.
    fn plain_metadata(&self) -> u64 {
        self.plain[1]
            .bytes()
            .saturating_sub(self.nonzero() * CLUSTER)
    }
    fn size_limit(&self) -> f64 {
        SIZE_GOAL * self.ideal() as f64 + (self.plain_metadata() + self.dedup_table) as f64
    }
    fn c_ideal(&self) -> u64 {
        self.compressed[2].bytes() + self.c_table
    }
    fn rss_limit_kib(&self) -> f64 {
        RSS_BASE_MIB * 1024.0 + int(&self.dedup_index, "index_bytes") as f64 / 1024.0
    }
    fn index_per_cluster(&self) -> (f64, f64) {
        let built = int(&self.scan, "index_bytes") as f64 / int(&self.scan, "index_len") as f64;
        let opened =
            int(&self.dedup_index, "index_bytes") as f64 / int(&self.dedup_index, "indexed") as f64;
        (built, opened)
    }
    fn hash_mbs(&self) -> f64 {
        num(&self.scan, "hashed_bytes") / num(&self.scan, "hash_secs") / 1e6
    }

    fn convert_table(&self) -> String {
        let disk = self.layout.disk as f64;
        let dedup = self.plain[2].best();
        let mut s = String::from(
            "| tool | time s (best) | median s | MB/s | output MiB | peak RSS | --dedup time / this |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for r in &self.plain {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.0} | {:.1} | {} | {:.2}x |\n",
                r.label,
                r.best(),
                median(&r.times()),
                disk / r.best() / 1e6,
                mib(r.bytes()),
                rss_mib(r.rss()),
                dedup / r.best()
            );
        }
        s
    }

    fn size_table(&self) -> String {
        let dedup = self.plain[2].bytes();
        let excess =
            dedup as f64 - self.ideal() as f64 - (self.plain_metadata() + self.dedup_table) as f64;
        format!(
            "| figure | value |\n|---|---|\n\
             | 64 KiB clusters of the raw file | {clusters} |\n\
             | all-zero clusters | {zero} |\n\
             | non-zero clusters | {nonzero} |\n\
             | distinct non-zero clusters (SHA-256) | {distinct} |\n\
             | ideal: distinct x 64 KiB | {ideal:.1} MiB |\n\
             | metadata of our plain output (its size - non-zero clusters x 64 KiB) | {meta:.2} MiB |\n\
             | dedup table (clusters `qemu-img check` reports as leaks) | {table:.2} MiB |\n\
             | `--dedup` output | {dedup_mib:.2} MiB ({ratio:.4}x ideal) |\n\
             | `--dedup` output - ideal - metadata - table | {excess:.2} MiB |\n\
             | plain output | {plain:.1} MiB |\n\
             | `qemu-img convert` output | {qemu:.1} MiB |\n\
             | `qcow2 check` of the `--dedup` output: indexed / shared clusters, bytes saved | {ix} / {sh} / {saved:.1} MiB |\n",
            clusters = int(&self.scan, "clusters"),
            zero = int(&self.scan, "zero"),
            nonzero = self.nonzero(),
            distinct = self.distinct(),
            ideal = mib(self.ideal()),
            meta = mib(self.plain_metadata()),
            table = mib(self.dedup_table),
            dedup_mib = mib(dedup),
            ratio = dedup as f64 / self.ideal() as f64,
            excess = excess / f64::from(1 << 20),
            plain = mib(self.plain[1].bytes()),
            qemu = mib(self.plain[0].bytes()),
            ix = int(&self.dedup_check, "indexed-clusters"),
            sh = int(&self.dedup_check, "shared-clusters"),
            saved = mib(int(&self.dedup_check, "bytes-saved")),
        )
    }

    fn compressed_table(&self) -> String {
        let mut s = String::from(
            "| run | time s (best) | median s | output MiB | peak RSS |\n|---|---|---|---|---|\n",
        );
        for r in &self.compressed {
            s += &format!(
                "| {} | {:.2} | {:.2} | {:.2} | {} |\n",
                r.label,
                r.best(),
                median(&r.times()),
                mib(r.bytes()),
                rss_mib(r.rss())
            );
        }
        s
    }

    fn goals(&self) -> String {
        let dedup = self.plain[2].bytes();
        let limit = self.size_limit();
        let c_dedup = self.compressed[1].bytes();
        let c_ratio = c_dedup as f64 / self.c_ideal() as f64;
        let rss = self.plain[2].rss();
        let (built, opened) = self.index_per_cluster();
        let (plain_s, dedup_s) = (self.plain[1].best(), self.plain[2].best());
        let mut s = format!(
            "- Time of `convert --dedup` against our plain convert of the same disk: {dedup_s:.2} \
             s against {plain_s:.2} s (best of each), {:.2}x the plain time (goal <= 1.00x): \
             **{}**.\n",
            dedup_s / plain_s,
            verdict(dedup_s <= plain_s),
        );
        s += &format!(
            "- Output size of `convert --dedup`: {:.2} MiB against 1.01 x ideal + metadata = \
             1.01 x {:.2} + {:.2} (L1/L2/refcounts) + {:.2} (dedup table) = {:.2} MiB: **{}** \
             ({:.4}x of that limit).\n",
            mib(dedup),
            mib(self.ideal()),
            mib(self.plain_metadata()),
            mib(self.dedup_table),
            limit / f64::from(1 << 20),
            verdict(dedup as f64 <= limit),
            dedup as f64 / limit,
        );
        s += &format!(
            "- Output size of `convert -c --dedup`: {:.2} MiB against the compressed distinct \
             clusters ({:.2} MiB, `convert -c` of a raw file holding only them) + its dedup \
             table ({:.2} MiB) = {:.2} MiB: {c_ratio:.4}x (goal <= {SIZE_GOAL:.2}x): **{}**. \
             Plain `-c`: {:.2} MiB, so `--dedup` saves {:.1}%.\n",
            mib(c_dedup),
            mib(self.compressed[2].bytes()),
            mib(self.c_table),
            mib(self.c_ideal()),
            verdict(c_ratio <= SIZE_GOAL),
            mib(self.compressed[0].bytes()),
            100.0 * (1.0 - c_dedup as f64 / self.compressed[0].bytes() as f64),
        );
        s += &match rss {
            Some(kib) => format!(
                "- Peak RSS of `convert --dedup`: {} against 64 MiB + index ({:.2} MiB) = \
                 {:.1} MiB: **{}**.\n",
                rss_mib(Some(kib)),
                int(&self.dedup_index, "index_bytes") as f64 / f64::from(1 << 20),
                self.rss_limit_kib() / 1024.0,
                verdict(kib as f64 <= self.rss_limit_kib()),
            ),
            None => "- Peak RSS of `convert --dedup`: not measured.\n".into(),
        };
        s += &format!(
            "- Index bytes per indexed cluster: {opened:.2} in the `--dedup` output opened for \
             writing ({} clusters, {} bytes), {built:.2} for a `DigestIndex` built from the \
             distinct digests, {:.2} in the {}-cluster image (goal <= {INDEX_GOAL:.0}): **{}**.\n",
            int(&self.dedup_index, "indexed"),
            int(&self.dedup_index, "index_bytes"),
            self.open_per_cluster(),
            int(&self.open, "indexed"),
            verdict(opened.max(built).max(self.open_per_cluster()) <= INDEX_GOAL),
        );
        s
    }

    fn open_per_cluster(&self) -> f64 {
        int(&self.open, "index_bytes") as f64 / int(&self.open, "indexed") as f64
    }

    fn section(&self) -> String {
        let m = &self.machine;
        let disk_mib = self.layout.disk >> 20;
        let [_, b, c] = self.layout.copies();
        let rss = match self.rss {
            RssProbe::GnuTime => format!("`{GNU_TIME} -f %M` (the kernel's ru_maxrss of the tool)"),
            RssProbe::Proc => "`VmHWM` of `/proc/PID/status`, polled".into(),
        };
        let scale = if self.segment_mib == FULL_SEGMENT_MIB {
            String::new()
        } else {
            format!(
                " (a {} MiB segment, not the script's 600 MiB: a smaller run)",
                self.segment_mib
            )
        };
        let plain_ratio = self.plain[2].best() / self.plain[1].best();
        let qemu_ratio = self.plain[2].best() / self.plain[0].best();
        format!(
            "{HEADING}\n\n\
Deduplication measured in one run of\n\n```sh\ncargo xtask bench dedup\n```\n\n\
(`--size-mib N` for a smaller segment, `--quick` for 64 MiB, `--reps N`, \
`--open-clusters N`; it builds `cargo build --release -p qcow2-cli -p xtask` \
first, and everything measured in-process runs in that release xtask.)\n\n\
- **Machine:** {cpus} CPUs ({cpu}), Linux {kernel}, {rustc}; other builds shared \
the machine now and then, so the tables show the best of {reps} runs and the median.\n\
- **Reference:** {qemu}.\n\
- **Date:** {date}.\n\
- **Corpus:** `dup-{seg}M.raw`{scale}, laid out like `dup.raw` of \
`shared/bench/make-corpus.sh`: a {disk_mib} MiB raw disk holding the first {seg} MiB of \
the Engine benchmark's ext4 disk (files sampled from /usr, built in the same run) \
three times, at offsets 0, {b} and {c} bytes (64 KiB-aligned, not 1 MiB-aligned), then \
the ext4 disk's bytes from {seg} MiB on as a unique tail; every byte written.\n\
- **Method:** before each convert the destination is deleted and the source read \
once (warm page cache); time is wall time of the tool plus an fsync of its output \
after it exits; runs interleaved. Peak RSS: {rss}, largest over the runs. Default \
options: 64 KiB clusters, zlib for `-c`, one worker per core. The distinct clusters are \
found by the xtask itself (SHA-256 of every non-zero 64 KiB cluster of the raw file). \
Our plain output passed `qemu-img check` and `qemu-img compare`; every dedup output \
passed our `qcow2 check` (no errors, no dedup corruption) and `qcow2 compare` \
against the source (the benchmark fails otherwise).\n\n\
### Convert\n\n{convert}\n\
`--dedup` takes {plain_ratio:.2}x the time of our plain convert and {qemu_ratio:.2}x that \
of `qemu-img convert`.\n\n\
### Output size\n\n{sizes}\n\
### Compressed\n\n{compressed}\n\
The last row is the reference for the compressed ideal: `qcow2 convert -c` of a raw file \
holding each distinct non-zero cluster once ({distinct} clusters, first-seen order). The \
`-c --dedup` output's dedup table: {c_table:.2} MiB; `qcow2 check` of it: {c_ix} indexed, \
{c_sh} shared clusters.\n\n\
### Hashing, index, open, amend\n\n\
- SHA-256, one thread, `qcow2_dedup::hash_cluster` on every non-zero 64 KiB cluster of \
the raw file from memory: **{hash:.0} MB/s**, backend `{backend}` (`sha256_backend()`).\n\
- Index: the `--dedup` output opened for writing holds {ix} indexed clusters in {ixb} bytes \
(`dedup_index_stats()`); a `DigestIndex` built from the {ilen} distinct digests takes \
{ibytes} bytes.\n\
- Open for writing a dedup image with {oix} indexed clusters: **{open:.3} s** (best of \
3 opens from a warm page cache; runs: {open_times}); index {oixb} bytes. The image: \
`qcow2 convert --dedup -o cluster_size={ocs}` of a generated {oraw:.0} MiB raw file of \
{ocl} distinct non-zero {ocsk} KiB clusters (each its index in its first 8 bytes), which took \
{oconv:.2} s and wrote {osize:.1} MiB (peak RSS {orss}).\n\
- `qcow2 amend -o dedup=on` of our plain output of the same disk: **{amend:.2} s** \
(peak RSS {arss}); file size {ab0:.1} -> {ab1:.1} MiB, allocated {aa0:.1} -> {aa1:.1} MiB; \
`qcow2 check` after: {aix} indexed, {ash} shared clusters, {asaved:.1} MiB saved.\n\n\
### Goals\n\n{goals}",
            cpus = m.cpus,
            cpu = m.cpu_model,
            kernel = m.kernel,
            rustc = m.rustc,
            reps = self.reps,
            qemu = m.qemu,
            date = m.date,
            seg = self.segment_mib,
            convert = self.convert_table(),
            sizes = self.size_table(),
            compressed = self.compressed_table(),
            distinct = self.distinct(),
            c_table = mib(self.c_table),
            c_ix = int(&self.c_check, "indexed-clusters"),
            c_sh = int(&self.c_check, "shared-clusters"),
            hash = self.hash_mbs(),
            backend = self
                .scan
                .get("backend")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            ix = int(&self.dedup_index, "indexed"),
            ixb = int(&self.dedup_index, "index_bytes"),
            ilen = int(&self.scan, "index_len"),
            ibytes = int(&self.scan, "index_bytes"),
            oix = int(&self.open, "indexed"),
            open = num(&self.open, "open_secs"),
            open_times = self
                .open
                .get("open_times")
                .and_then(Value::as_array)
                .map_or_else(String::new, |v| v
                    .iter()
                    .map(|t| format!("{:.3}", t.as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", ")),
            oixb = int(&self.open, "index_bytes"),
            ocs = OPEN_CLUSTER,
            ocsk = OPEN_CLUSTER / 1024,
            ocl = self.open_clusters,
            oraw = mib(self.open_clusters * OPEN_CLUSTER),
            oconv = self.open_convert.secs,
            osize = mib(self.open_size),
            orss = rss_mib(self.open_convert.rss_kib),
            amend = self.amend.secs,
            arss = rss_mib(self.amend.rss_kib),
            ab0 = mib(self.amend_before.0),
            ab1 = mib(self.amend_after.0),
            aa0 = mib(self.amend_before.1),
            aa1 = mib(self.amend_after.1),
            aix = int(&self.amend_check, "indexed-clusters"),
            ash = int(&self.amend_check, "shared-clusters"),
            asaved = mib(int(&self.amend_check, "bytes-saved")),
            goals = self.goals(),
        )
    }
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
