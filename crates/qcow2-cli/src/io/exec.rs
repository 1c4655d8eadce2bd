//! Carrying out `qcow2 io` commands on an open disk.

use std::io::Write;
use std::time::Instant;

use qcow2_image::ExtentKind;

use super::command::IoCommand;
use super::report;
use crate::disk::Disk;
use crate::error::CliError;

/// Bytes handled per request to the engine, so huge reads and writes need
/// bounded memory.
const CHUNK: u64 = 4 << 20;

/// Whether a command succeeded; failures have been reported already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command did what it was asked.
    Done,
    /// A check failed (pattern verification).
    Failed,
}

fn out_err(e: std::io::Error) -> CliError {
    CliError::Output(e)
}

/// Runs `command`, printing what qemu-io prints to `out`.
pub fn execute(
    disk: &Disk,
    command: &IoCommand,
    out: &mut impl Write,
) -> Result<Outcome, CliError> {
    let start = Instant::now();
    match *command {
        IoCommand::Read {
            pattern,
            verbose,
            quiet,
            offset,
            len,
        } => {
            disk.check_range(offset, len)?;
            let mut mismatch = false;
            let mut buf = vec![0u8; CHUNK.min(len) as usize];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK) as usize;
                disk.read_at(&mut buf[..n], offset + done)?;
                if let Some(p) = pattern {
                    mismatch |= buf[..n].iter().any(|&b| b != p);
                }
                if verbose {
                    out.write_all(report::dump(&buf[..n], offset + done).as_bytes())
                        .map_err(out_err)?;
                }
                done += n as u64;
            }
            if mismatch {
                writeln!(
                    out,
                    "Pattern verification failed at offset {offset}, {len} bytes"
                )
                .map_err(out_err)?;
            }
            if !quiet {
                writeln!(
                    out,
                    "{}",
                    report::summary("read", len, offset, start.elapsed())
                )
                .map_err(out_err)?;
            }
            Ok(if mismatch {
                Outcome::Failed
            } else {
                Outcome::Done
            })
        }
        IoCommand::Write {
            pattern,
            zero,
            unmap,
            compressed,
            quiet,
            offset,
            len,
        } => {
            disk.check_range(offset, len)?;
            if zero {
                disk.write_zeroes(offset, len, unmap)?;
            } else if compressed {
                disk.write_compressed(pattern, offset, len)?;
            } else {
                let buf = vec![pattern; CHUNK.min(len) as usize];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(CHUNK) as usize;
                    disk.write_at(&buf[..n], offset + done)?;
                    done += n as u64;
                }
            }
            if !quiet {
                writeln!(
                    out,
                    "{}",
                    report::summary("wrote", len, offset, start.elapsed())
                )
                .map_err(out_err)?;
            }
            Ok(Outcome::Done)
        }
        IoCommand::Discard { quiet, offset, len } => {
            disk.check_range(offset, len)?;
            disk.discard(offset, len)?;
            if !quiet {
                writeln!(
                    out,
                    "{}",
                    report::summary("discard", len, offset, start.elapsed())
                )
                .map_err(out_err)?;
            }
            Ok(Outcome::Done)
        }
        IoCommand::Truncate { size } => {
            disk.resize(size)?;
            Ok(Outcome::Done)
        }
        IoCommand::Map => {
            print_map(disk, out)?;
            Ok(Outcome::Done)
        }
        IoCommand::Flush => {
            disk.flush()?;
            Ok(Outcome::Done)
        }
    }
}

/// Prints runs allocated (data or zero flag) in the image itself versus
/// left to the backing file or unallocated.
fn print_map(disk: &Disk, out: &mut impl Write) -> Result<(), CliError> {
    let size = disk.size();
    let mut run: Option<(u64, u64, bool)> = None;
    let mut pos = 0;
    while pos < size {
        let len = (size - pos).min(256 << 20);
        for e in disk.extents(pos, len)? {
            let allocated = e.depth == 0 && !matches!(e.kind, ExtentKind::Unallocated { .. });
            run = match run {
                Some((start, length, a)) if a == allocated => Some((start, length + e.length, a)),
                Some((start, length, a)) => {
                    writeln!(out, "{}", report::map_line(length, start, a)).map_err(out_err)?;
                    Some((e.start, e.length, allocated))
                }
                None => Some((e.start, e.length, allocated)),
            };
        }
        pos += len;
    }
    if let Some((start, length, a)) = run {
        writeln!(out, "{}", report::map_line(length, start, a)).map_err(out_err)?;
    }
    Ok(())
}
