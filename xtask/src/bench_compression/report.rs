//! The Compression section of `docs/benchmarks.md`: tables, goals, method.

use super::{max_rss, Level, Row, RssProbe, Tool, GNU_TIME, POLL, TYPES};
use crate::bench_engine::{best, median, Machine};

pub(super) const HEADING: &str = "## Compression";

/// Goals from the issue: zlib throughput of ours over qemu-img's, at least.
const SPEEDUP_GOAL: f64 = 3.0;
/// zstd: our convert as a share of the codec's own limit, at least (libzstd
/// alone is too close to 3x qemu-img's time for that goal to be reachable).
const ZSTD_LIMIT_SHARE_GOAL: f64 = 0.92;
/// Our output size over qemu-img's, at most.
const SIZE_GOAL: f64 = 1.02;
/// Peak RSS of `qcow2 convert -c`, at most, in MiB.
const RSS_GOAL_MIB: f64 = 64.0;

/// A peak RSS in MiB, or "n/a" when it was not measured.
pub(crate) fn rss_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

pub(super) struct Report {
    pub(super) machine: Machine,
    pub(super) raw_size: u64,
    pub(super) reps: usize,
    pub(super) budget: f64,
    pub(super) rss: RssProbe,
    pub(super) rows: Vec<Row>,
    pub(super) levels: Vec<Level>,
    pub(super) decompress: Vec<super::decompress::Decompress>,
    /// The codec's own limit for each type, measured in the same run.
    pub(super) limits: Vec<(&'static str, super::codec_limit::CodecLimit)>,
}

impl Report {
    fn row(&self, tool: Tool, kind: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.tool == tool && r.kind == kind)
    }

    /// Our best time's throughput over qemu-img's, and our output size over
    /// qemu-img's, for one compression type.
    fn versus(&self, kind: &str) -> (f64, f64) {
        match (self.row(Tool::Ours, kind), self.row(Tool::Qemu, kind)) {
            (Some(ours), Some(qemu)) => (
                best(&qemu.times()) / best(&ours.times()),
                ours.bytes() as f64 / qemu.bytes() as f64,
            ),
            _ => (f64::NAN, f64::NAN),
        }
    }

    fn mbs(&self, secs: f64) -> f64 {
        self.raw_size as f64 / secs / 1e6
    }

    fn main_table(&self) -> String {
        let mut s = String::from(
            "| tool | type | time s (best) | median s | MB/s | output MiB | output ours/qemu | \
             peak RSS | speedup ours/qemu |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let times = r.times();
            let (speedup, size_ratio) = match r.tool {
                Tool::Ours => {
                    let (speedup, size_ratio) = self.versus(r.kind);
                    (format!("{speedup:.2}x"), format!("{size_ratio:.3}"))
                }
                Tool::Qemu => ("-".into(), "-".into()),
            };
            s += &format!(
                "| {} | {} | {:.2} | {:.2} | {:.0} | {:.1} | {size_ratio} | {} | {speedup} |\n",
                r.tool.label(),
                r.kind,
                best(&times),
                median(&times),
                self.mbs(best(&times)),
                mib(r.bytes()),
                rss_mib(r.peak_rss_kib()),
            );
        }
        s
    }

    fn goals(&self) -> String {
        let mut s = String::new();
        for kind in TYPES {
            let (speedup, size_ratio) = self.versus(kind);
            let share = self.limit_share(kind);
            if kind == "zstd" {
                s += &format!(
                    "- {kind} throughput: ours {:.0}% of the codec's own {}-core limit (goal >= \
                     {:.0}%): **{}**; {speedup:.2}x qemu-img's\n",
                    share * 100.0,
                    self.machine.cpus,
                    ZSTD_LIMIT_SHARE_GOAL * 100.0,
                    pass(share >= ZSTD_LIMIT_SHARE_GOAL)
                );
            } else {
                s += &format!(
                    "- {kind} throughput: ours {speedup:.2}x qemu-img's (goal >= \
                     {SPEEDUP_GOAL:.0}x): **{}**; {:.0}% of the codec's own limit\n",
                    pass(speedup >= SPEEDUP_GOAL),
                    share * 100.0
                );
            }
            s += &format!(
                "- {kind} output size: ours {size_ratio:.3}x qemu-img's (goal <= {SIZE_GOAL:.2}x): \
                 **{}**\n",
                pass(size_ratio <= SIZE_GOAL)
            );
        }
        let peak = max_rss(
            self.rows
                .iter()
                .filter(|r| r.tool == Tool::Ours)
                .map(Row::peak_rss_kib),
        );
        s += &match peak {
            Some(kib) => format!(
                "- peak RSS of `qcow2 convert -c`, largest over its zlib and zstd runs: {} \
                 (goal <= {RSS_GOAL_MIB:.0} MiB): **{}**\n",
                rss_mib(Some(kib)),
                pass(kib as f64 / 1024.0 <= RSS_GOAL_MIB)
            ),
            None => format!(
                "- peak RSS of `qcow2 convert -c` (goal <= {RSS_GOAL_MIB:.0} MiB): n/a, not \
                 measured\n"
            ),
        };
        s
    }

    /// The codec limit of `kind` over our best convert time (1.0 = our
    /// convert is as fast as the codec alone on every core).
    fn limit_share(&self, kind: &str) -> f64 {
        let limit = self.limits.iter().find(|(k, _)| *k == kind);
        match (limit, self.row(Tool::Ours, kind)) {
            (Some((_, l)), Some(ours)) => l.secs() / best(&ours.times()),
            _ => f64::NAN,
        }
    }

    fn limit_table(&self) -> String {
        let mut s = String::from(
            "| type | non-zero clusters | codec CPU s, 1 thread | limit s (CPU / cores) | \
             qcow2 convert -c best s | ours as share of the limit |\n\
             |---|---|---|---|---|---|\n",
        );
        for (kind, l) in &self.limits {
            let ours = self
                .row(Tool::Ours, kind)
                .map_or(f64::NAN, |r| best(&r.times()));
            s += &format!(
                "| {kind} | {} | {:.2} | {:.2} | {:.2} | {:.0}% |\n",
                l.clusters,
                l.cpu_secs,
                l.secs(),
                ours,
                self.limit_share(kind) * 100.0
            );
        }
        s
    }

    fn tradeoff_table(&self) -> String {
        let mut s = String::from(
            "| --compress-format | time s | MB/s | output MiB | ratio (source / output) | \
             peak RSS |\n|---|---|---|---|---|---|\n",
        );
        for level in &self.levels {
            s += &match level.run {
                Some(run) => format!(
                    "| {} | {:.2} | {:.0} | {:.1} | {:.2} | {} |\n",
                    level.spec,
                    run.secs,
                    self.mbs(run.secs),
                    mib(run.bytes),
                    self.raw_size as f64 / run.bytes as f64,
                    rss_mib(run.rss_kib),
                ),
                None => format!(
                    "| {} | skipped: a lower level took over {:.0} s | | | | |\n",
                    level.spec, self.budget
                ),
            };
        }
        s
    }

    pub(super) fn section(&self) -> String {
        let m = &self.machine;
        let size_mib = self.raw_size >> 20;
        let rss_note = match self.rss {
            RssProbe::GnuTime => format!(
                "`{GNU_TIME} -f %M`, the kernel's peak resident set size of the tool \
                 (ru_maxrss, all its threads)"
            ),
            RssProbe::Proc => format!(
                "`VmHWM` of `/proc/PID/status`, the kernel's peak resident set size of the \
                 tool, read every {} ms while it runs",
                POLL.as_millis()
            ),
        };
        let tradeoff = if self.levels.is_empty() {
            "Not run (`--tradeoff no`).\n".to_string()
        } else {
            self.tradeoff_table()
        };
        format!(
            "{HEADING}\n\n\
             `qcow2 convert -c` next to `qemu-img convert -c -W` on the same disk, all \
             measured in one run of\n\n\
             ```sh\n\
             cargo xtask bench compression\n\
             ```\n\n\
             (`--quick` for the 256 MiB disk, `--reps N`; the xtask only starts the tools, so \
             its unoptimized build does not change the numbers, and it builds the CLI with \
             `cargo build --release -p qcow2-cli` first.)\n\n\
             - **Machine:** {cpus} CPUs ({cpu}), Linux {kernel}, {rustc}, release build of \
             the CLI; other agents' builds shared the machine now and then, so the tables \
             show the best time of {reps} runs and the median.\n\
             - **Reference:** {qemu}.\n\
             - **Date:** {date}.\n\
             - **Corpus:** the Engine benchmark's disk: {size_mib} MiB raw, an ext4 \
             filesystem holding about {fill} MiB of regular files sampled from /usr, the rest \
             free space (zeros), every byte written.\n\
             - **Commands:** `qemu-img convert -c -W -f raw -O qcow2 -o compression_type=T \
             fs.raw out.qcow2` and `qcow2 convert -c -f raw -O qcow2 -o compression_type=T \
             fs.raw out.qcow2` for T = zlib and zstd, default options otherwise (64 KiB \
             clusters, each tool's default level for the type).\n\
             - **Method:** {runs} per tool and type, the two tools interleaved; before \
             each run the destination is deleted and the source read once, so both tools \
             start with it in the page cache. Both use all cores: ours one worker thread per \
             core (the default `--threads`), qemu-img its default 8 coroutines with `-W` \
             (out-of-order writes) and compression offloaded to its thread pool. Time is \
             wall time of the tool plus an fsync of the output after it exits, so both pay \
             for making the output durable: `qcow2 convert` fdatasyncs before it exits, \
             `qemu-img convert` writes with cache mode `unsafe` (its default for convert) \
             and never flushes. MB/s = 10^6 bytes of the virtual disk ({raw_size} bytes) per \
             second of the best time; speedup = qemu-img's best time / ours. Output = size \
             of the output file. Peak RSS: {rss_note}, largest over the runs. Both tools' \
             outputs passed `qemu-img check` and `qemu-img compare` against the source (the \
             benchmark fails otherwise).\n\n\
             ### Against qemu-img\n\n{main}\n\
             ### Codec limit\n\n\
             The codec alone, measured in the same run by a release build of the xtask: \
             every non-zero 64 KiB cluster of the disk compressed on one thread with the \
             codec and level the convert uses (zlib 6, zstd 3), the CPU time of the \
             compress calls only (`/proc/thread-self/schedstat`; reading the disk is not \
             counted), divided by the cores. No convert of this disk can be faster here, so \
             it is the ceiling our convert is measured against.\n\n{limits}\n\
             ### Goals\n\n{goals}\n\
             ### Compressed qcow2 -> raw\n\n\
             One image per type made by `qemu-img convert -c -W` from the disk above, \
             converted back to raw by `qemu-img convert -W -f qcow2 -O raw` and by `qcow2 \
             convert -f qcow2 -O raw`, same method (the compressed image is read once before \
             each run; time includes an fsync of the output). Both outputs equal the disk \
             (`qemu-img compare`).\n\n{decompress}\n\
             ### Level trade-off\n\n\
             `qcow2 convert -c -f raw -O qcow2 --compress-format NAME:LEVEL` (the seed \
             compress format extension, which QEMU cannot read) on the same disk, one run \
             per level, same method as above. Each output passed our own `qcow2 check` and \
             `qcow2 compare` against the source. A codec's higher levels are skipped once a \
             level takes longer than {budget:.0} s. The ratio counts the whole virtual disk, \
             whose free space costs nothing compressed (unallocated clusters), so it is \
             higher than the file data's own ratio; compare rows with each other.\n\n\
             {tradeoff}",
            cpus = m.cpus,
            cpu = m.cpu_model,
            kernel = m.kernel,
            rustc = m.rustc,
            qemu = m.qemu,
            date = m.date,
            reps = self.reps,
            runs = if self.reps == 1 {
                "one run".to_string()
            } else {
                format!("{} runs", self.reps)
            },
            raw_size = self.raw_size,
            fill = (size_mib as f64 * 0.6).round(),
            budget = self.budget,
            main = self.main_table(),
            limits = self.limit_table(),
            goals = self.goals(),
            decompress = super::decompress::section(&self.decompress, self.raw_size),
        )
    }
}
