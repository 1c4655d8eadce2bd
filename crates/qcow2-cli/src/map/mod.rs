//! `qcow2 map`: which file of the backing chain holds each range of the
//! guest disk, and where.

mod chain;
mod entry;
mod render;

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::disk::{Disk, Format};
use crate::error::CliError;
use crate::size_arg::parse_size;
use entry::{Entry, Merger};

/// Guest bytes asked of the engine at a time (bounds memory on huge disks).
const CHUNK: u64 = 256 << 20;

/// How `map` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MapOutput {
    /// qemu-img's table of data ranges: Offset, Length, Mapped to, File.
    Human,
    /// qemu-img's JSON array covering every byte of the range.
    Json,
}

const AFTER_HELP: &str = "\
JSON output (same keys and layout as `qemu-img map --output=json`):
  one object per run of the guest disk with uniform status, in order:
    start, length   guest range
    depth           0 for FILE, 1 for its backing file, ...; for ranges
                    allocated nowhere, the depth of the last image
    present         allocated somewhere in the chain (data or zero flag)
    zero            reads as zeros
    data            holds data (possibly compressed)
    compressed      compressed clusters
    offset          host offset of the data in the file at that depth, when
                    the data sits uncompressed at a known place
  Adjacent runs with the same flags (and continuing offsets) are merged.

Human output prints only data ranges at known offsets, as qemu-img does; a
compressed range cannot be shown that way and ends the command with an error
(use --output=json).

Exit status: 0 on success, 1 on any error.";

/// Show how the guest disk maps to the files of the backing chain.
#[derive(Debug, Args)]
#[command(
    long_about = "Show how the guest disk maps to the files of the backing chain: for each \
                  range, which image holds it (depth), whether it reads as zeros, holds data \
                  (compressed or not) and at which host offset. The image is only read.",
    after_long_help = AFTER_HELP
)]
pub struct MapArgs {
    /// Output format: human (qemu-img's table) or json (qemu-img's JSON).
    #[arg(long, value_enum, default_value_t = MapOutput::Human, value_name = "FORMAT")]
    pub output: MapOutput,

    /// First guest byte to map (suffixes k, M, G... allowed).
    #[arg(long = "start-offset", short = 's', value_name = "OFFSET")]
    pub start_offset: Option<String>,

    /// Bytes to map from the start offset (default: to the end of the disk).
    #[arg(long = "max-length", short = 'l', value_name = "LENGTH")]
    pub max_length: Option<String>,

    /// Format of FILE (qcow2 or raw); probed when absent.
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<Format>,

    /// The image to map.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

fn size_option(text: &Option<String>, what: &str) -> Result<Option<u64>, CliError> {
    text.as_ref()
        .map(|t| parse_size(t).ok_or_else(|| CliError::Usage(format!("Invalid {what}: '{t}'"))))
        .transpose()
}

/// Runs `map`.
pub fn run(args: &MapArgs) -> Result<(), CliError> {
    let disk = Disk::open(&args.file, args.format, false)?;
    let size = disk.size();
    let start = size_option(&args.start_offset, "start offset")?.unwrap_or(0);
    let length = size_option(&args.max_length, "max length")?.unwrap_or(u64::MAX);
    let end = start.saturating_add(length).min(size);
    let names = match args.output {
        MapOutput::Human => chain::chain_names(&args.file, disk.format()),
        MapOutput::Json => Vec::new(),
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut printer = Printer {
        output: args.output,
        names,
        first: true,
    };
    printer.begin(&mut out).map_err(CliError::Output)?;
    if start >= end {
        // qemu-img prints one empty entry for an empty range.
        let empty = Entry {
            start,
            length: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
        };
        if args.output == MapOutput::Json {
            printer.print(&mut out, &empty)?;
        }
    }
    let mut merger = Merger::default();
    let mut pos = start;
    while pos < end {
        let len = (end - pos).min(CHUNK);
        for extent in disk.extents(pos, len)? {
            if let Some(done) = merger.push(Entry::from_extent(&extent)) {
                printer.print(&mut out, &done)?;
            }
        }
        pos += len;
    }
    if let Some(last) = merger.finish() {
        printer.print(&mut out, &last)?;
    }
    printer.end(&mut out).map_err(CliError::Output)?;
    out.flush().map_err(CliError::Output)
}

/// Writes entries in the chosen form.
struct Printer {
    output: MapOutput,
    names: Vec<String>,
    first: bool,
}

impl Printer {
    fn begin(&self, out: &mut impl Write) -> io::Result<()> {
        match self.output {
            MapOutput::Human => out.write_all(render::HUMAN_HEADING.as_bytes()),
            MapOutput::Json => out.write_all(b"["),
        }
    }

    fn print(&mut self, out: &mut impl Write, entry: &Entry) -> Result<(), CliError> {
        match self.output {
            MapOutput::Json => {
                if !self.first {
                    out.write_all(b",\n").map_err(CliError::Output)?;
                }
                self.first = false;
                render::json_object(out, entry).map_err(CliError::Output)
            }
            MapOutput::Human => {
                if !entry.data {
                    return Ok(());
                }
                if entry.offset.is_none() {
                    out.flush().map_err(CliError::Output)?;
                    return Err(CliError::Unrepresentable(
                        "File contains external, encrypted or compressed clusters.",
                    ));
                }
                if entry.zero {
                    return Ok(());
                }
                let name = self
                    .names
                    .get(entry.depth as usize)
                    .map_or("", String::as_str);
                render::human_row(out, entry, name).map_err(CliError::Output)
            }
        }
    }

    fn end(&self, out: &mut impl Write) -> io::Result<()> {
        match self.output {
            MapOutput::Human => Ok(()),
            MapOutput::Json => out.write_all(b"]\n"),
        }
    }
}
