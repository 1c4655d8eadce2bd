//! The decompression rows of `cargo xtask bench compression`: both tools
//! convert one compressed qcow2 image (made by `qemu-img convert -c`, so
//! neither reads its own output) back to a raw file, `reps` runs each,
//! interleaved; both outputs must equal the raw corpus.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::report::rss_mib;
use super::{max_rss, Bench, Run, TYPES};
use crate::bench_engine::{best, median, output, warm, QEMU_IMG};

/// Our throughput over `qemu-img convert -W`'s, at least.
const GOAL: f64 = 2.0;

/// All runs of both tools for one compression type.
pub(super) struct Decompress {
    pub(super) kind: &'static str,
    pub(super) qemu: Vec<Run>,
    pub(super) ours: Vec<Run>,
}

impl Decompress {
    fn times(runs: &[Run]) -> Vec<f64> {
        runs.iter().map(|r| r.secs).collect()
    }

    /// Our best time's throughput over qemu-img's.
    fn speedup(&self) -> f64 {
        best(&Self::times(&self.qemu)) / best(&Self::times(&self.ours))
    }
}

/// Runs the decompression rows.
pub(super) fn run(bench: &Bench<'_>, qcow2: &Path, reps: usize) -> Result<Vec<Decompress>, String> {
    let mut rows = Vec::new();
    for kind in TYPES {
        let input = bench.work.join(format!("{kind}-input.qcow2"));
        output(
            Command::new(QEMU_IMG)
                .args(["convert", "-c", "-W", "-f", "raw", "-O", "qcow2", "-o"])
                .arg(format!("compression_type={kind}"))
                .arg(bench.raw)
                .arg(&input),
        )?;
        let mut row = Decompress {
            kind,
            qemu: Vec::new(),
            ours: Vec::new(),
        };
        let qemu_out = bench.work.join(format!("{kind}-qemu.raw"));
        let ours_out = bench.work.join(format!("{kind}-ours.raw"));
        for rep in 1..=reps {
            for ours in [false, true] {
                let dst = if ours { &ours_out } else { &qemu_out };
                let _ = fs::remove_file(dst);
                warm(&input)?;
                let mut cmd = if ours {
                    let mut c = Command::new(qcow2);
                    c.args(["convert", "-f", "qcow2", "-O", "raw"]);
                    c
                } else {
                    let mut c = Command::new(QEMU_IMG);
                    c.args(["convert", "-W", "-f", "qcow2", "-O", "raw"]);
                    c
                };
                cmd.arg(&input).arg(dst);
                let run = bench.timed(&mut cmd, dst)?;
                eprintln!(
                    "  {kind} -> raw rep {rep}: {:<24} {:.2} s, peak RSS {}",
                    if ours {
                        "qcow2 convert"
                    } else {
                        "qemu-img convert -W"
                    },
                    run.secs,
                    rss_mib(run.rss_kib)
                );
                if ours {
                    row.ours.push(run);
                } else {
                    row.qemu.push(run);
                }
            }
        }
        for dst in [&qemu_out, &ours_out] {
            let same = output(
                Command::new(QEMU_IMG)
                    .args(["compare", "-f", "raw", "-F", "raw"])
                    .arg(bench.raw)
                    .arg(dst),
            )?;
            if !same.contains("Images are identical") {
                return Err(format!("{kind} -> raw: {} differs: {same}", dst.display()));
            }
            let _ = fs::remove_file(dst);
        }
        let _ = fs::remove_file(&input);
        println!("{kind} -> raw: both outputs equal the corpus");
        rows.push(row);
    }
    Ok(rows)
}

/// The table and goal lines of the decompression rows.
pub(super) fn section(rows: &[Decompress], raw_size: u64) -> String {
    let mut s = String::from(
        "| type | tool | time s (best) | median s | MB/s | peak RSS | speedup ours/qemu |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mbs = |secs: f64| raw_size as f64 / secs / 1e6;
    for r in rows {
        for (tool, runs, speedup) in [
            ("qemu-img convert -W", &r.qemu, "-".to_string()),
            ("qcow2 convert", &r.ours, format!("{:.2}x", r.speedup())),
        ] {
            let times = Decompress::times(runs);
            s += &format!(
                "| {} | {tool} | {:.2} | {:.2} | {:.0} | {} | {speedup} |\n",
                r.kind,
                best(&times),
                median(&times),
                mbs(best(&times)),
                rss_mib(max_rss(runs.iter().map(|r| r.rss_kib))),
            );
        }
    }
    s += "\n";
    for r in rows {
        let speedup = r.speedup();
        s += &format!(
            "- compressed {} qcow2 -> raw: ours {speedup:.2}x `qemu-img convert -W` \
             (goal >= {GOAL:.1}x): **{}**\n",
            r.kind,
            if speedup >= GOAL { "PASS" } else { "MISS" }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{section, Decompress, Run};

    fn runs(secs: &[f64]) -> Vec<Run> {
        secs.iter()
            .map(|&secs| Run {
                secs,
                bytes: 0,
                rss_kib: Some(1024),
            })
            .collect()
    }

    #[test]
    fn the_goal_line_compares_best_times() {
        let rows = [
            Decompress {
                kind: "zlib",
                qemu: runs(&[4.0, 5.0]),
                ours: runs(&[2.5, 1.9]),
            },
            Decompress {
                kind: "zstd",
                qemu: runs(&[3.0]),
                ours: runs(&[2.0]),
            },
        ];
        let text = section(&rows, 2 << 30);
        assert!(
            text.contains("compressed zlib qcow2 -> raw: ours 2.11x"),
            "{text}"
        );
        assert!(text.contains("(goal >= 2.0x): **PASS**"), "{text}");
        assert!(
            text.contains("compressed zstd qcow2 -> raw: ours 1.50x"),
            "{text}"
        );
        assert!(text.contains("**MISS**"), "{text}");
        assert!(
            text.contains("| zlib | qcow2 convert | 1.90 | 2.50 |"),
            "{text}"
        );
    }
}
