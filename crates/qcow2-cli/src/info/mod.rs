//! `qcow2 info`: everything the header area of an image says.

mod human;
mod json;
mod luks_summary;
mod model;
mod snapshot_list;

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::error::CliError;
use model::ImageInfo;

/// How `info` prints its report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Text laid out like `qemu-img info`, followed by header details.
    Human,
    /// A JSON object with the keys of `qemu-img info --output=json`.
    Json,
}

const JSON_HELP: &str = "\
JSON output:
  Keys follow `qemu-img info --output=json` for every field both tools know:
  snapshots [{id, name, vm-state-size, date-sec, date-nsec, vm-clock-sec,
  vm-clock-nsec, icount}], virtual-size, filename, cluster-size, format,
  actual-size, encrypted, dirty-flag, backing-filename,
  full-backing-filename, backing-filename-format, and format-specific
  {type: \"qcow2\", data: {compat, compression-type, lazy-refcounts,
  bitmaps [{flags, name, granularity}], refcount-bits, encrypt, data-file,
  data-file-raw, corrupt, extended-l2}}, each omitted in the same
  cases as qemu-img (compat 0.10 images have no lazy-refcounts, corrupt or
  extended-l2). qemu-img's \"children\" list is not produced.

  Keys only this tool writes, all inside format-specific.data:
    compress-format   {name, level, extra-data-size}: the seed compress format
                      extension (0xC03183A3), when present
    dedup             {table-offset, table-size, indexed-clusters,
                      shared-clusters, bytes-saved}: the seed deduplication
                      extension (0xCD8E819B), when present; table-size counts
                      u64 entries of the level-1 dedup table; the numbers
                      (when the table can be read) count non-empty entries,
                      host clusters more than one guest cluster maps, and
                      the bytes that sharing saves
    read-only-reason  the rule ID that restricts the image to read-only
                      opening (for example FEAT-CORRUPT), when there is one
    notes             [{rule, offset, message}]: non-fatal findings, each with
                      the rule ID of docs/spec.md and a byte offset; omitted
                      when there are none

Exit status: 0 on success; 1 when the file cannot be read or is not a valid
qcow2 image, with a one-line error naming the rule ID and byte offset.";

/// Show an image's size, format options, feature bits and header extensions.
#[derive(Debug, Args)]
#[command(
    long_about = "Show an image's size, format options, feature bits and header extensions.\n\n\
                  Reads only the header area (and the bitmap directory, if any); the image is \
                  never modified. Output mirrors `qemu-img info` so scripts written for it keep \
                  working.",
    after_long_help = JSON_HELP
)]
pub struct InfoArgs {
    /// Output format: `human` (qemu-img's layout, then header details) or `json` (qemu-img's JSON keys).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human, value_name = "FORMAT")]
    pub output: OutputFormat,

    /// The qcow2 image to inspect.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `info` and writes its report to stdout.
pub fn run(args: &InfoArgs) -> Result<(), CliError> {
    let info = ImageInfo::gather(&args.file)?;
    let bytes = match args.output {
        OutputFormat::Human => human::render(&info)
            .map(String::into_bytes)
            .map_err(io::Error::other),
        OutputFormat::Json => json::render(&info).map_err(io::Error::other),
    }
    .map_err(CliError::Output)?;
    io::stdout()
        .lock()
        .write_all(&bytes)
        .map_err(CliError::Output)
}
