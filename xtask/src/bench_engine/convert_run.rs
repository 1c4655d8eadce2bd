//! The convert part of `bench engine`: ours and qemu-img's, verified.

use super::*;

pub(crate) struct ConvertRow {
    pub(crate) label: &'static str,
    pub(crate) output: PathBuf,
    pub(crate) times: Vec<f64>,
    /// Apparent size and allocated bytes of the output file.
    pub(crate) size: u64,
    pub(crate) allocated: u64,
    /// Largest peak RSS over the runs, in KiB, when every run measured one.
    pub(crate) rss_kib: Option<u64>,
}

/// Converts `raw` with each tool `reps` times, tools interleaved so load
/// from elsewhere hits them alike, measuring each tool's peak RSS. Each run starts from a cold page cache
/// when `cold`, else from a warm one; its time includes making the output
/// durable (both tools fdatasync before exiting; an extra fsync after exit
/// costs the same for both).
pub(crate) fn bench_convert(
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
            rss_kib: Some(0),
        })
        .collect();
    let bench = crate::bench_compression::Bench {
        raw,
        work,
        rss: crate::bench_compression::default_rss_probe(),
    };
    for rep in 0..reps {
        for ((_, program, extra, _), row) in tools.iter().zip(&mut rows) {
            let _ = fs::remove_file(&row.output);
            if cold {
                drop_caches();
            } else {
                warm(raw)?;
            }
            let run = bench.timed(
                Command::new(program)
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .args(extra.iter())
                    .arg(raw)
                    .arg(&row.output),
                &row.output,
            )?;
            let secs = run.secs;
            row.rss_kib = crate::bench_compression::max_rss([row.rss_kib, run.rss_kib]);
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
