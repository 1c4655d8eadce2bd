//! `qcow2 convert`: copy a disk image into a new raw or qcow2 file.

mod copy;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use qcow2_image::{BackingMode, Image};
use qcow2_io::FileStorage;

use crate::create::Requested;
use crate::disk::{Disk, Format, RawDisk};
use crate::error::CliError;
use crate::progress::Progress;
pub use copy::is_zero;

/// Zero-detection unit for raw destinations (qemu-img's default `-S 4k`).
const RAW_UNIT: u64 = 4096;

const AFTER_HELP: &str = "\
The destination holds the guest disk as the source reads it, backing chain
included (the result has no backing file). Ranges that read as zeros are
not written: they stay unallocated clusters in a qcow2 destination (which
then reads as zeros, since it has no backing file) and holes in a raw one.
Memory use stays bounded (2 MiB chunks) whatever the image size.

A qcow2 destination is created with the defaults of `qcow2 create` unless
-o says otherwise (see `qcow2 create --help` for the options); it passes
`qemu-img check` and is readable by QEMU and every qcow2 command. A raw
destination is readable by anything.

Exit status: 0 on success, 1 on any error.";

/// Convert a disk image to another format (or copy it).
#[derive(Debug, Args)]
#[command(
    long_about = "Convert a disk image (raw or qcow2, with its backing chain) to a new raw or \
                  qcow2 file, skipping zeros. An existing destination is overwritten.",
    after_long_help = AFTER_HELP
)]
pub struct ConvertArgs {
    /// Source format (qcow2 or raw); probed when absent.
    #[arg(short = 'f', value_enum, value_name = "FMT")]
    pub format: Option<Format>,

    /// Destination format: raw (default, as in qemu-img) or qcow2.
    #[arg(short = 'O', value_enum, default_value_t = Format::Raw, value_name = "OUTPUT_FMT")]
    pub output_format: Format,

    /// Creation options of a qcow2 destination, `name=value,...`.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// Compress the destination's clusters (not supported yet).
    #[arg(short = 'c')]
    pub compress: bool,

    /// Show progress on stderr.
    #[arg(short = 'p')]
    pub progress: bool,

    /// Quiet (accepted for qemu-img compatibility; convert prints nothing else).
    #[arg(short = 'q')]
    pub quiet: bool,

    /// The image to read.
    #[arg(value_name = "SRC")]
    pub source: PathBuf,

    /// The file to write.
    #[arg(value_name = "DST")]
    pub destination: PathBuf,
}

/// Runs `convert`.
pub fn run(args: &ConvertArgs) -> Result<(), CliError> {
    if args.compress {
        return Err(CliError::NotYet("compressed output (convert -c)"));
    }
    let src = Disk::open(&args.source, args.format, false)?;
    let size = src.size();
    let (dst, unit) = match args.output_format {
        Format::Raw => {
            if !args.options.is_empty() {
                return Err(CliError::Usage(
                    "raw destinations take no -o options".into(),
                ));
            }
            let raw = RawDisk::create(&args.destination, size)?;
            (Disk::from_raw(&args.destination, raw), RAW_UNIT)
        }
        Format::Qcow2 => {
            let image = create_qcow2(args, size)?;
            let unit = image.cluster_size();
            (Disk::from_image(&args.destination, image), unit)
        }
    };
    let mut progress = Progress::new(args.progress && !args.quiet, size);
    copy::copy(&src, &dst, unit, &mut progress)?;
    dst.close()?;
    progress.finish();
    Ok(())
}

fn create_qcow2(args: &ConvertArgs, size: u64) -> Result<Image, CliError> {
    let mut requested = Requested::default();
    for list in &args.options {
        requested.apply(list)?;
    }
    if requested.backing_file.is_some() || requested.backing_fmt.is_some() {
        return Err(CliError::NotYet("convert onto a backing file"));
    }
    requested.size = Some(size);
    let options = requested.to_create_options()?;
    let storage = FileStorage::create(&args.destination, true)
        .map_err(|e| CliError::io(&args.destination, e))?;
    Image::create(Arc::new(storage), &options, BackingMode::Ignore)
        .map_err(|e| CliError::image(&args.destination, e))
}
