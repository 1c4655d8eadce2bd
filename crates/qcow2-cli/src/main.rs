//! The `qcow2` command line: inspect qcow2 images, with output shaped like `qemu-img`'s.
#![forbid(unsafe_code)]

mod backing;
mod bitmap_directory;
mod error;
mod image_file;
mod info;
mod size;

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use error::CliError;

/// Inspect qcow2 disk images.
///
/// Output and JSON keys follow `qemu-img`, so scripts written for it work with `qcow2`.
#[derive(Debug, Parser)]
#[command(name = "qcow2", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Info(info::InfoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info(args) => info::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stops early (`| head`) is not an error.
        Err(CliError::Output(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qcow2: {e}");
            ExitCode::FAILURE
        }
    }
}
