//! `qcow2 compare`: whether two images (raw or qcow2) hold the same guest
//! disk, with qemu-img's messages and exit statuses.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use qcow2_image::{Extent, ExtentKind};

use crate::disk::{Disk, Format};
use crate::error::CliError;
use crate::progress::Progress;
use qcow2_image::is_zero;

/// Bytes compared at a time.
const CHUNK: u64 = 2 << 20;
/// Mismatches are reported at this granularity, as qemu-img does.
const SECTOR: u64 = 512;

const AFTER_HELP: &str = "\
Only the guest contents count: formats, cluster sizes, backing chains and
allocation may differ (a range reads the same whether it is a zero cluster,
unallocated or written zeros). When the sizes differ, the images are the same
if the extra part of the larger one reads as zeros; \"Warning: Image size
mismatch!\" is printed first. With -s, different sizes or a different
block status (allocated, data, zero flag, as qemu-img's strict mode compares
them) make the images differ.

Output (stdout): \"Images are identical.\" or \"Content mismatch at offset N!\"
(N is the first differing 512-byte sector), as qemu-img prints them.

Exit status (qemu-img's): 0 identical, 1 different, 2 an image could not be
opened or read.";

/// Check whether two images have the same contents.
#[derive(Debug, Args)]
#[command(
    long_about = "Check whether two images (raw or qcow2, through their backing chains) have \
                  the same guest contents. Both are only read.",
    after_long_help = AFTER_HELP
)]
pub struct CompareArgs {
    /// Format of FILE1 (qcow2 or raw); probed when absent.
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format1: Option<Format>,

    /// Format of FILE2 (qcow2 or raw); probed when absent.
    #[arg(short = 'F', value_enum, value_name = "FMT")]
    pub format2: Option<Format>,

    /// Strict: different sizes or allocation status also make the images differ.
    #[arg(short = 's')]
    pub strict: bool,

    /// Show progress on stderr.
    #[arg(short = 'p')]
    pub progress: bool,

    /// Quiet: print nothing, only the exit status tells.
    #[arg(short = 'q')]
    pub quiet: bool,

    /// The first image.
    #[arg(value_name = "FILE1")]
    pub file1: PathBuf,

    /// The second image.
    #[arg(value_name = "FILE2")]
    pub file2: PathBuf,
}

/// The verdict.
enum Verdict {
    Identical,
    Different(String),
}

/// Runs `compare`; errors become exit status 2 (printed here).
pub fn run(args: &CompareArgs) -> Result<ExitCode, CliError> {
    match compare(args) {
        Ok(Verdict::Identical) => {
            if !args.quiet {
                println!("Images are identical.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Verdict::Different(message)) => {
            if !args.quiet {
                println!("{message}");
            }
            Ok(ExitCode::from(1))
        }
        Err(CliError::Output(e)) => Err(CliError::Output(e)),
        Err(e) => {
            eprintln!("qcow2: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn compare(args: &CompareArgs) -> Result<Verdict, CliError> {
    let a = Disk::open(&args.file1, args.format1, false)?;
    let b = Disk::open(&args.file2, args.format2, false)?;
    let (size_a, size_b) = (a.size(), b.size());
    if size_a != size_b && args.strict {
        return Ok(Verdict::Different(
            "Strict mode: Image size mismatch!".into(),
        ));
    }
    let tails = if args.strict {
        (tail_start(&a)?, tail_start(&b)?)
    } else {
        (0, 0)
    };
    let common = size_a.min(size_b);
    let total = size_a.max(size_b);
    let mut progress = Progress::new(args.progress && !args.quiet, total);
    let mut buf_a = vec![0u8; CHUNK as usize];
    let mut buf_b = vec![0u8; CHUNK as usize];
    let mut pos = 0;
    while pos < common {
        let len = (common - pos).min(CHUNK);
        let ext_a = a.extents(pos, len)?;
        let ext_b = b.extents(pos, len)?;
        let status = if args.strict {
            status_mismatch(&ext_a, &ext_b, tails)
        } else {
            None
        };
        let content = if may_hold_data(&ext_a) || may_hold_data(&ext_b) {
            let (ba, bb) = (&mut buf_a[..len as usize], &mut buf_b[..len as usize]);
            a.read_at(ba, pos)?;
            b.read_at(bb, pos)?;
            first_difference(ba, bb).map(|at| pos + at)
        } else {
            None
        };
        match (status, content) {
            (Some(s), c) if c.is_none_or(|c| s <= c) => {
                progress.finish();
                return Ok(Verdict::Different(format!(
                    "Strict mode: Offset {s} block status mismatch!"
                )));
            }
            (_, Some(c)) => {
                progress.finish();
                return Ok(mismatch(c));
            }
            _ => {}
        }
        pos += len;
        progress.update(pos);
    }
    // Like qemu-img, the size warning comes once the common part matched.
    if size_a != size_b && !args.quiet {
        println!("Warning: Image size mismatch!");
    }
    let longer = if size_a > size_b { &a } else { &b };
    while pos < total {
        let len = (total - pos).min(CHUNK);
        if may_hold_data(&longer.extents(pos, len)?) {
            let buf = &mut buf_a[..len as usize];
            longer.read_at(buf, pos)?;
            if !is_zero(buf) {
                let at = buf.iter().position(|&x| x != 0).unwrap_or(0);
                progress.finish();
                return Ok(mismatch(pos + at as u64));
            }
        }
        pos += len;
        progress.update(pos);
    }
    progress.finish();
    Ok(Verdict::Identical)
}

fn mismatch(offset: u64) -> Verdict {
    Verdict::Different(format!(
        "Content mismatch at offset {}!",
        offset / SECTOR * SECTOR
    ))
}

fn may_hold_data(extents: &[Extent]) -> bool {
    extents
        .iter()
        .any(|e| matches!(e.kind, ExtentKind::Data { .. } | ExtentKind::Compressed))
}

/// Offset (relative to the chunk start) of the first differing byte.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    let mut at = 0;
    for (ca, cb) in a.chunks(4096).zip(b.chunks(4096)) {
        if ca != cb {
            let i = ca.iter().zip(cb).position(|(x, y)| x != y).unwrap_or(0);
            return Some((at + i) as u64);
        }
        at += ca.len();
    }
    None
}

/// The block status flags qemu-img compares in strict mode: allocated,
/// data, zero, offset known. (Preallocated zero clusters have a known
/// offset in QEMU; the engine does not report it.)
fn flags(kind: ExtentKind) -> (bool, bool, bool, bool) {
    match kind {
        ExtentKind::Data { offset } => (true, true, false, offset.is_some()),
        ExtentKind::Compressed => (true, true, false, false),
        ExtentKind::Zero { offset } => (true, false, true, offset.is_some()),
        ExtentKind::Unallocated { offset } => (false, false, true, offset.is_some()),
    }
}

/// Where the last run of uniform status of `disk` begins: from there on,
/// qemu-img's block status also carries its end-of-file flag, which strict
/// mode compares too.
fn tail_start(disk: &Disk) -> Result<u64, CliError> {
    let size = disk.size();
    let mut run: Option<((bool, bool, bool, bool), u64)> = None;
    let mut pos = 0;
    while pos < size {
        let len = (size - pos).min(256 << 20);
        for e in disk.extents(pos, len)? {
            let f = flags(e.kind);
            if run.is_none_or(|(g, _)| g != f) {
                run = Some((f, e.start));
            }
        }
        pos += len;
    }
    Ok(run.map_or(0, |(_, start)| start))
}

/// First guest offset where the block status of the two images differs.
/// Both lists cover the same range in order; `tails` are the
/// [`tail_start`]s.
fn status_mismatch(a: &[Extent], b: &[Extent], tails: (u64, u64)) -> Option<u64> {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (ea, eb) = (&a[i], &b[j]);
        let at = ea.start.max(eb.start);
        if (flags(ea.kind), at >= tails.0) != (flags(eb.kind), at >= tails.1) {
            return Some(at);
        }
        if ea.start + ea.length <= eb.start + eb.length {
            i += 1;
        } else {
            j += 1;
        }
    }
    None
}
