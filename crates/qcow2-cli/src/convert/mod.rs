//! `qcow2 convert`: copy a disk image into a new raw or qcow2 file.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use qcow2_image::{BackingMode, ConvertOptions, Image};
use qcow2_io::FileStorage;

use crate::create::Requested;
use crate::disk::{Disk, Format, RawDisk};
use crate::error::CliError;
use crate::progress::Progress;

const AFTER_HELP: &str = "\
The destination holds the guest disk as the source reads it, backing chain
included (the result has no backing file). Ranges that read as zeros are
not written: they stay unallocated clusters in a qcow2 destination (which
then reads as zeros, since it has no backing file) and holes in a raw one.
Both kinds of destination are written by a pipeline: worker threads (one
per core, or --threads) read the source (decompressing compressed
clusters), skip zeros and, with -c, compress. A qcow2 destination gets its
clusters in guest order; a raw one gets each worker's 2 MiB chunk as soon
as it is ready, with 4 KiB units of zeros left as holes. Memory use stays
bounded (about 2 MiB per worker, two windows for qcow2) whatever the image
size.

-c stores each cluster compressed when that makes it smaller, with the
codec the destination's options choose: -o compression_type=zlib (default)
or zstd, which QEMU reads, or --compress-format NAME[:LEVEL] (zlib, zstd,
brotli; the seed compress format extension, which QEMU cannot read).
Compressed streams are packed back to back into host clusters, as QEMU
packs them.

--dedup (same as -o dedup=on) deduplicates the destination: clusters are
hashed (SHA-256) by the workers, and a cluster whose content was already
written shares that copy instead of being written again; with -c,
duplicates share one compressed stream. The output does not depend on
--threads: every sharing decision is taken by the in-order writer. QEMU
opens deduplicated images read-only (see `qcow2 create --help`).

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

    /// Compress the destination's clusters (qcow2 destinations).
    #[arg(short = 'c')]
    pub compress: bool,

    /// Seed compress format of the destination, NAME[:LEVEL] (zlib, zstd,
    /// brotli); same as -o compress_format=NAME,compress_level=LEVEL.
    #[arg(long = "compress-format", value_name = "NAME[:LEVEL]")]
    pub compress_format: Option<String>,

    /// Deduplicate the destination (same as -o dedup=on).
    #[arg(long = "dedup")]
    pub dedup: bool,

    /// Worker threads reading, decompressing and compressing (default: one
    /// per core).
    #[arg(long = "threads", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,

    /// Allow out-of-order writes (accepted for qemu-img compatibility: a raw
    /// destination is always written out of order; a qcow2 one in guest
    /// order, which packs compressed clusters best).
    #[arg(short = 'W')]
    pub out_of_order: bool,

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
    if args.output_format == Format::Raw && args.dedup {
        return Err(CliError::Usage(
            "--dedup needs a qcow2 destination (-O qcow2)".into(),
        ));
    }
    if args.output_format == Format::Raw && (args.compress || args.compress_format.is_some()) {
        return Err(CliError::Usage(
            "compression needs a qcow2 destination (-O qcow2)".into(),
        ));
    }
    let src = Disk::open(&args.source, args.format, false)?;
    let size = src.size();
    let mut progress = Progress::new(args.progress && !args.quiet, size);
    match args.output_format {
        Format::Raw => {
            if !args.options.is_empty() {
                return Err(CliError::Usage(
                    "raw destinations take no -o options".into(),
                ));
            }
            let raw = RawDisk::create(&args.destination, size)?;
            let options = ConvertOptions {
                compress: false,
                threads: args.threads.map(usize::from),
            };
            qcow2_image::convert_to_raw(src.source(), raw.storage(), &options, &mut |done| {
                progress.update(done)
            })
            .map_err(|e| CliError::image(&args.destination, e))?;
            Disk::from_raw(&args.destination, raw).close()?;
        }
        Format::Qcow2 => {
            let (image, verify) = create_qcow2(args, size)?;
            image.set_dedup_verify(verify);
            let options = ConvertOptions {
                compress: args.compress,
                threads: args.threads.map(usize::from),
            };
            image
                .convert_from(src.source(), &options, &mut |done| progress.update(done))
                .map_err(|e| CliError::image(&args.destination, e))?;
            image
                .close()
                .map_err(|e| CliError::image(&args.destination, e))?;
        }
    }
    progress.finish();
    Ok(())
}

fn create_qcow2(args: &ConvertArgs, size: u64) -> Result<(Image, bool), CliError> {
    let mut requested = Requested::default();
    for list in &args.options {
        requested.apply(list)?;
    }
    if requested.backing_file.is_some() || requested.backing_fmt.is_some() {
        return Err(CliError::NotYet("convert onto a backing file"));
    }
    requested.size = Some(size);
    if args.dedup {
        requested.dedup = Some(true);
    }
    if let Some(cf) = &args.compress_format {
        requested.apply_compress_format(cf)?;
    }
    let options = requested.to_create_options()?;
    let storage = FileStorage::create(&args.destination, true)
        .map_err(|e| CliError::io(&args.destination, e))?;
    let image = Image::create(Arc::new(storage), &options, BackingMode::Ignore)
        .map_err(|e| CliError::image(&args.destination, e))?;
    Ok((image, requested.dedup_verify.unwrap_or(false)))
}
