//! The `qcow2` command line: inspect qcow2 images, with output shaped like `qemu-img`'s.
#![forbid(unsafe_code)]

mod amend;
mod backing;
mod bitmap_directory;
mod check;
mod compare;
mod convert;
mod create;
mod disk;
mod error;
mod image_file;
mod info;
mod io;
mod map;
mod progress;
mod resize;
mod size;
mod size_arg;

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use error::CliError;

/// Create, inspect, check, map, compare, convert, resize, amend and poke qcow2 disk images.
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
    Check(check::CheckArgs),
    Create(create::CreateArgs),
    Map(map::MapArgs),
    Convert(convert::ConvertArgs),
    Io(io::IoArgs),
    Compare(compare::CompareArgs),
    Resize(resize::ResizeArgs),
    Amend(amend::AmendArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each command returns its exit status; `check` has several (qemu-img's).
    let result = match &cli.command {
        Command::Info(args) => info::run(args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check::run(args),
        Command::Create(args) => create::run(args).map(|()| ExitCode::SUCCESS),
        Command::Map(args) => map::run(args).map(|()| ExitCode::SUCCESS),
        Command::Convert(args) => convert::run(args).map(|()| ExitCode::SUCCESS),
        Command::Io(args) => io::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Resize(args) => resize::run(args).map(|()| ExitCode::SUCCESS),
        Command::Amend(args) => amend::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        // A reader that stops early (`| head`) is not an error.
        Err(CliError::Output(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qcow2: {e}");
            ExitCode::FAILURE
        }
    }
}
