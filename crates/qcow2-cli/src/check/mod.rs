//! `qcow2 check`: refcount check and repair with `qemu-img check`'s output and exit codes.

mod compressed;
mod human;
mod json;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use qcow2_alloc::check::{self, CheckReport};
use qcow2_alloc::repair::{self, RepairMode};
use qcow2_image::DedupTableReferences;
use qcow2_io::{FileStorage, Storage};
use std::sync::Arc;

use crate::error::CliError;

/// How `check` prints its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The summary lines of `qemu-img check`.
    Human,
    /// A JSON object with the keys of `qemu-img check --output=json`.
    Json,
}

/// What `-r` repairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RepairArg {
    /// Lower refcounts that are too high (leaked clusters).
    Leaks,
    /// Also fix refcounts that are too low and COPIED flags, rebuilding the
    /// refcount table and blocks when they are themselves broken.
    All,
}

const AFTER_HELP: &str = "\
What is checked:
  Every host cluster's refcount is compared with the number of references to
  it: the header cluster, the active L1 table and its L2 tables and data
  clusters (standard, extended, preallocated zero and compressed), the
  snapshot table and every snapshot's L1 and L2 tables, the refcount table
  and blocks, the LUKS header and the persistent bitmaps. The COPIED flags of
  the active tables must match refcounts of exactly 1.

  A refcount lower than its references (including 0 for a used cluster), a
  reference past the end of the file, a misaligned offset, a wrong COPIED
  flag or a cluster used as two kinds of metadata at once is a corruption. A
  refcount higher than its references is a leak: wasted space, no harm to
  data. Each finding is printed on stderr with its host offset and the rule
  ID of docs/spec.md; the summary goes to stdout. Lines starting with Note name rules
  that readers tolerate and qemu-img does not count (a dirty bit, non-zero
  header padding, the zero flag on a version 2 image, a refcount block cut
  short by the end of the file): they change no count and no exit code.

Repair (-r), which opens the image for writing:
  leaks  lowers leaked refcounts to the number of references.
  all    also raises refcounts that are too low and fixes COPIED flags; when
         the refcount table or a refcount block is itself broken (misaligned,
         outside the image, overlapping other data, or a used cluster with
         refcount 0) it writes a new refcount table and blocks after the end
         of the file and then points the header at them.
  After a repair that fixed anything, the image is checked again and that
  second check is reported, with leaks-fixed and corruptions-fixed.

Output:
  human  the summary lines of qemu-img check.
  json   the object of qemu-img check --output=json: filename, format,
         check-errors, and, only when non-zero, image-end-offset,
         total-clusters, allocated-clusters, fragmented-clusters,
         compressed-clusters, corruptions, leaks, corruptions-fixed and
         leaks-fixed.

Exit status (as qemu-img check):
  0  no corruption and no leak (after repair, if -r was given)
  1  the check could not complete (unreadable file, invalid header, internal
     errors, or -r leaks on an image that needs -r all)
  2  corruptions were found
  3  only leaks were found";

/// Check an image's refcounts and metadata consistency, and optionally repair them.
#[derive(Debug, Args)]
#[command(
    long_about = "Check an image's refcounts and metadata consistency, and optionally repair them.\n\n\
                  Without -r the image is opened read-only and never modified. Output and exit \
                  codes mirror `qemu-img check` so scripts written for it keep working.",
    after_long_help = AFTER_HELP
)]
pub struct CheckArgs {
    /// Repair: `leaks` (leaked clusters only) or `all` (leaks and corruptions).
    #[arg(short = 'r', long = "repair", value_enum, value_name = "leaks|all")]
    pub repair: Option<RepairArg>,

    /// Output format: `human` (qemu-img's summary) or `json` (qemu-img's JSON keys).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human, value_name = "FORMAT")]
    pub output: OutputFormat,

    /// Image format; only `qcow2` is accepted (for qemu-img compatibility).
    #[arg(short = 'f', value_name = "FMT", value_parser = ["qcow2"])]
    pub format: Option<String>,

    /// The qcow2 image to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Prints every finding on stderr, as qemu-img prints its diagnostics.
fn print_findings(report: &CheckReport) {
    let stderr = io::stderr();
    let mut err = stderr.lock();
    for finding in &report.findings {
        let _ = writeln!(err, "{finding}");
    }
    if report.findings_omitted > 0 {
        let _ = writeln!(
            err,
            "... {} more findings not shown",
            report.findings_omitted
        );
    }
}

/// Runs `check` and returns the exit status qemu-img would.
pub fn run(args: &CheckArgs) -> Result<ExitCode, CliError> {
    let storage: Arc<dyn Storage> = Arc::new(
        FileStorage::open(&args.file, args.repair.is_some()).map_err(|source| CliError::Io {
            path: args.file.clone(),
            source,
        })?,
    );
    let filename = args.file.to_string_lossy();
    print_header_notes(&*storage);
    let hook = DedupTableReferences;
    let outcome = match args.repair {
        None => check::check(&*storage, &[&hook]).map(|report| {
            print_findings(&report);
            (None, report)
        }),
        Some(mode) => {
            let mode = match mode {
                RepairArg::Leaks => RepairMode::Leaks,
                RepairArg::All => RepairMode::All,
            };
            repair::repair(&*storage, mode, &[&hook]).map(|done| {
                print_findings(&done.repair_pass);
                if let Some(recheck) = &done.recheck {
                    print_findings(recheck);
                }
                let fixed = done.recheck.is_some().then(|| done.repair_pass.clone());
                (fixed, done.final_report())
            })
        }
    };
    let (repaired, mut report) = match outcome {
        Ok(done) => done,
        Err(e) => {
            eprintln!("qcow2: Check failed: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let dedup = match dedup_pass(&storage, args, &mut report) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("qcow2: Check failed: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    compressed::decode_pass(&storage, &mut report);
    let bytes = match args.output {
        OutputFormat::Human => human::render(&report, repaired.as_ref()).into_bytes(),
        OutputFormat::Json => json::render(&report, &filename, dedup.as_ref())
            .map_err(|e| CliError::Output(io::Error::other(e)))?,
    };
    io::stdout()
        .lock()
        .write_all(&bytes)
        .map_err(CliError::Output)?;
    Ok(exit_code(&report))
}

/// What the header checks noticed without refusing the image (a dirty
/// bit, padding or table oddities that readers tolerate), on stderr with
/// the rule: not counted, as `qemu-img check` does not count them.
fn print_header_notes(storage: &dyn Storage) {
    let Ok(area) = qcow2_image::read_header_area(storage) else {
        return;
    };
    if let Ok(assessment) = area.assess(Some(&qcow2_image::codec_max_level)) {
        for note in &assessment.notes {
            eprintln!("Note {} at {:#x}: {}", note.rule, note.offset, note.message);
        }
    }
}

/// The dedup side of a check: `-r all` rebuilds the table (and the refcount
/// numbers are taken again afterwards); every entry is then verified, each
/// problem printed with its rule and counted as a corruption; a stale table
/// is a note.
fn dedup_pass(
    storage: &Arc<dyn Storage>,
    args: &CheckArgs,
    report: &mut CheckReport,
) -> Result<Option<qcow2_dedup::Verification>, String> {
    let area = qcow2_image::read_header_area(&**storage).map_err(|e| e.to_string())?;
    if area.dedup().is_none() {
        return Ok(None);
    }
    let hook = DedupTableReferences;
    let mut area = area;
    if matches!(args.repair, Some(RepairArg::All)) {
        qcow2_image::rebuild_dedup(storage.clone()).map_err(|e| e.to_string())?;
        *report = check::check(&**storage, &[&hook]).map_err(|e| e.to_string())?;
        print_findings(report);
        area = qcow2_image::read_header_area(&**storage).map_err(|e| e.to_string())?;
    }
    let stale = area.header.incompatible_features & qcow2_format::features::INCOMPAT_BIT1 == 0;
    if stale {
        eprintln!(
            "Note {}: the dedup table is stale (incompatible bit 1 is clear); it is not \
             used for writing, and `check -r all` rebuilds it",
            qcow2_format::rules::DD_STALE
        );
        return Ok(None);
    }
    let verification = qcow2_dedup::verify(&**storage, &area).map_err(|e| e.to_string())?;
    for f in &verification.findings {
        let kind = match f.severity {
            qcow2_dedup::Severity::Corruption => {
                report.corruptions += 1;
                "ERROR"
            }
            qcow2_dedup::Severity::Note => "Note",
        };
        eprintln!("{kind} {} at {:#x}: {}", f.rule, f.offset, f.message);
    }
    Ok(Some(verification))
}

/// qemu-img's exit status for a completed check.
fn exit_code(report: &CheckReport) -> ExitCode {
    if report.check_errors > 0 {
        eprintln!("qcow2: Check failed");
        ExitCode::from(1)
    } else if report.corruptions > 0 {
        ExitCode::from(2)
    } else if report.leaks > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
