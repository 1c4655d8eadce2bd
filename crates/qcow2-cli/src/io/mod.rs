//! `qcow2 io`: qemu-io style requests on an image (read, write, zero,
//! discard, truncate, map, flush), so scripts can poke images without QEMU.

mod command;
mod exec;
mod report;

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::disk::{Disk, Format};
use crate::error::CliError;
use command::{IoCommand, COMMANDS_HELP};
use exec::Outcome;

const AFTER_HELP: &str = "\
Each command prints what qemu-io prints (\"wrote 4096/4096 bytes at offset 0\"
and a timing line). Commands run in order; a failing command is reported
and the next one still runs. Changes are flushed when the command list ends,
leaving an image QEMU reads (qemu-io, qemu-img) and `qemu-img check` finds
clean.

Exit status: 0 when every command succeeded, 1 otherwise (a failed pattern
verification, an out-of-range request, an unreadable image...).";

/// Run qemu-io style commands on an image.
#[derive(Debug, Args)]
#[command(
    long_about = "Run qemu-io style commands on an image: read (optionally checking a \
                  pattern), write patterns or zeros, discard, truncate, show the allocation \
                  map, flush.",
    after_long_help = format!("{COMMANDS_HELP}\n\n{AFTER_HELP}")
)]
pub struct IoArgs {
    /// Image format (qcow2 or raw); probed when absent.
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<Format>,

    /// Open the image read-only (writes then fail).
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,

    /// A command to run, e.g. "write -P 0xaa 0 64k"; repeatable.
    #[arg(
        short = 'c',
        value_name = "COMMAND",
        allow_hyphen_values = true,
        required = true
    )]
    pub commands: Vec<String>,

    /// The image.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `io`; the exit status says whether every command succeeded.
pub fn run(args: &IoArgs) -> Result<ExitCode, CliError> {
    let disk = Disk::open(&args.file, args.format, !args.read_only)?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failed = false;
    for line in &args.commands {
        let command = match IoCommand::parse(line) {
            Ok(c) => c,
            Err(message) => {
                out.flush().map_err(CliError::Output)?;
                eprintln!("qcow2 io: {message}");
                failed = true;
                continue;
            }
        };
        match exec::execute(&disk, &command, &mut out) {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Failed) => failed = true,
            Err(CliError::Output(e)) => return Err(CliError::Output(e)),
            Err(e) => {
                out.flush().map_err(CliError::Output)?;
                let verb = line.split_whitespace().next().unwrap_or("command");
                eprintln!("{verb} failed: {e}");
                failed = true;
            }
        }
    }
    out.flush().map_err(CliError::Output)?;
    disk.close()?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
