//! `qcow2 create`: a new, empty qcow2 (or raw) image.

mod options;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use qcow2_image::{resolve_backing_path, BackingMode, Image};
use qcow2_io::FileStorage;

use crate::disk::{Disk, Format, RawDisk};
use crate::error::CliError;
use crate::size_arg::parse_size;
pub use options::Requested;
use options::OPTIONS_HELP;

const AFTER_HELP: &str = "\
The new image is readable and writable by QEMU (qemu-img, qemu-io, qemu-nbd,
qemu-system-*) and by every qcow2 command; `qemu-img check` finds it clean.
compat=0.10 images are also readable by QEMU versions before 1.1;
compression_type=zstd and extended_l2 images need QEMU 5.1 / 5.2 or later.
Images with a compress format (--compress-format, -o compress_format=) carry
the seed extension: only qcow2 commands (and other readers of that extension)
open them; QEMU refuses them by incompatible bit 2.

When SIZE is omitted and a backing file is given, the image takes the
backing file's size. Without -F, the backing file's format is probed and
recorded. An existing FILE is overwritten, like qemu-img does.

Exit status: 0 on success, 1 on any error.";

/// Create a new disk image.
#[derive(Debug, Args)]
#[command(
    long_about = "Create a new disk image: a qcow2 image laid out as `qemu-img create -f qcow2` \
                  lays it out (header, refcount table, one refcount block, L1 table), or a \
                  sparse raw file. Prints \"Formatting 'FILE', fmt=...\" with the options used.",
    after_long_help = format!("{OPTIONS_HELP}\n\n{AFTER_HELP}")
)]
pub struct CreateArgs {
    /// Image format: qcow2 (default) or raw.
    #[arg(short = 'f', value_enum, default_value_t = Format::Qcow2, value_name = "FMT")]
    pub format: Format,

    /// Creation options `name=value,...` (listed below; `-o help` prints them).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// Backing file: reads of unallocated clusters go to it. A relative name
    /// is relative to the directory of FILE.
    #[arg(short = 'b', value_name = "BACKING")]
    pub backing: Option<String>,

    /// Format of the backing file (qcow2 or raw); probed when absent.
    #[arg(short = 'F', value_enum, value_name = "BACKING_FMT")]
    pub backing_format: Option<Format>,

    /// Seed compress format of compressed clusters, NAME[:LEVEL] with NAME
    /// zlib, zstd or brotli (the same as -o compress_format=,compress_level=).
    /// QEMU cannot open such images.
    #[arg(long = "compress-format", value_name = "NAME[:LEVEL]")]
    pub compress_format: Option<String>,

    /// Unsafe: do not open the backing file (SIZE is then required).
    #[arg(short = 'u')]
    pub unsafe_backing: bool,

    /// Suppress the "Formatting ..." line.
    #[arg(short = 'q')]
    pub quiet: bool,

    /// The image to create.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Virtual size in bytes, with optional suffix k, M, G, T, P or E.
    #[arg(value_name = "SIZE")]
    pub size: Option<String>,
}

/// Runs `create`.
pub fn run(args: &CreateArgs) -> Result<(), CliError> {
    let mut requested = Requested::default();
    for list in &args.options {
        if list == "help" || list == "?" {
            println!("{OPTIONS_HELP}");
            return Ok(());
        }
        requested.apply(list)?;
    }
    if let Some(text) = &args.size {
        let size = parse_size(text)
            .ok_or_else(|| CliError::Usage(format!("Invalid image size specified: '{text}'.")))?;
        requested.size = Some(size);
    }
    if let Some(cf) = &args.compress_format {
        requested.apply_compress_format(cf)?;
    }
    if let Some(b) = &args.backing {
        requested.backing_file = Some(b.clone());
    }
    if let Some(f) = args.backing_format {
        requested.backing_fmt = Some(f.name().to_string());
    }
    let file_name = args.file.display().to_string();
    if args.format == Format::Raw {
        return create_raw(args, &requested, &file_name);
    }
    if let Some(backing) = requested.backing_file.clone() {
        if !args.unsafe_backing {
            inspect_backing(&args.file, &backing, &mut requested)?;
        }
    }
    let options = requested.to_create_options()?;
    if !args.quiet {
        println!("{}", requested.formatting_line(&file_name, &options));
    }
    let storage = FileStorage::create(&args.file, true).map_err(|e| CliError::io(&args.file, e))?;
    let image = Image::create(Arc::new(storage), &options, BackingMode::Ignore)
        .map_err(|e| CliError::image(&args.file, e))?;
    image.close().map_err(|e| CliError::image(&args.file, e))
}

/// Opens the backing file to check it, probe its format and take its size.
fn inspect_backing(file: &Path, backing: &str, requested: &mut Requested) -> Result<(), CliError> {
    let path = resolve_backing_path(file, backing);
    let format = match requested.backing_fmt.as_deref() {
        Some("raw") => Some(Format::Raw),
        Some(_) => Some(Format::Qcow2),
        None => None,
    };
    let disk = Disk::open(&path, format, false)?;
    requested.backing_fmt = Some(disk.format().name().to_string());
    if requested.size.is_none() {
        requested.size = Some(disk.size());
    }
    Ok(())
}

fn create_raw(args: &CreateArgs, requested: &Requested, file_name: &str) -> Result<(), CliError> {
    if requested.backing_file.is_some() {
        return Err(CliError::Usage(
            "raw images cannot have a backing file".into(),
        ));
    }
    let size = requested
        .size
        .ok_or_else(|| CliError::Usage("Image creation needs a size parameter".into()))?;
    if !args.quiet {
        println!("Formatting '{file_name}', fmt=raw size={size}");
    }
    RawDisk::create(&args.file, size)?;
    Ok(())
}
