//! `qcow2 resize`: grow or shrink the virtual disk.

use std::path::PathBuf;

use clap::Args;

use crate::disk::{Disk, Format};
use crate::error::CliError;
use crate::size_arg::parse_size;

const AFTER_HELP: &str = "\
SIZE is absolute (\"10G\"), or relative to the current size (\"+1G\", \"-512M\").
Growing adds space that reads as zeros (or from the backing file beyond its
old end, as in QEMU). Shrinking needs --shrink: every cluster beyond the new
end is freed and its data is lost. A qcow2 size must be a multiple of 512.
The resized image passes `qemu-img check` and is readable by QEMU.

Exit status: 0 on success (\"Image resized.\"), 1 on any error.";

/// Change the virtual size of an image.
#[derive(Debug, Args)]
#[command(
    long_about = "Change the virtual size of an image (qcow2 or raw), like `qemu-img resize`.",
    after_long_help = AFTER_HELP
)]
pub struct ResizeArgs {
    /// Allow the image to become smaller (data beyond the new end is lost).
    #[arg(long)]
    pub shrink: bool,

    /// Image format (qcow2 or raw); probed when absent.
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<Format>,

    /// Quiet: do not print "Image resized.".
    #[arg(short = 'q')]
    pub quiet: bool,

    /// The image to resize.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// New size, or +SIZE / -SIZE relative to the current one.
    #[arg(value_name = "SIZE", allow_hyphen_values = true)]
    pub size: String,
}

/// The size `text` asks for, given the current size.
fn new_size(text: &str, current: u64) -> Result<u64, CliError> {
    let invalid = || CliError::Usage(format!("Invalid image size specified: '{text}'"));
    if let Some(delta) = text.strip_prefix('+') {
        let delta = parse_size(delta).ok_or_else(invalid)?;
        return current.checked_add(delta).ok_or_else(invalid);
    }
    if let Some(delta) = text.strip_prefix('-') {
        let delta = parse_size(delta).ok_or_else(invalid)?;
        return match current.checked_sub(delta) {
            Some(size) if size > 0 => Ok(size),
            _ => Err(CliError::Usage("New image size must be positive".into())),
        };
    }
    parse_size(text).ok_or_else(invalid)
}

/// Runs `resize`.
pub fn run(args: &ResizeArgs) -> Result<(), CliError> {
    let disk = Disk::open(&args.file, args.format, true)?;
    let current = disk.size();
    let size = new_size(&args.size, current)?;
    if size < current && !args.shrink {
        return Err(CliError::Usage(
            "Use the --shrink option to perform a shrink operation.".into(),
        ));
    }
    disk.resize(size)?;
    disk.close()?;
    if !args.quiet {
        println!("Image resized.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::new_size;

    #[test]
    fn relative_and_absolute() {
        assert_eq!(new_size("+1M", 1 << 20).unwrap(), 2 << 20);
        assert_eq!(new_size("-512k", 1 << 20).unwrap(), 512 << 10);
        assert_eq!(new_size("64k", 1 << 20).unwrap(), 65536);
        assert!(new_size("-1M", 1 << 20).is_err());
        assert!(new_size("+x", 1).is_err());
    }
}
