//! `qcow2 amend`: change format options of an existing image, like
//! `qemu-img amend -f qcow2 -o ...`.

use std::path::PathBuf;

use clap::Args;
use qcow2_image::{AmendOptions, Compat, Image};

use crate::error::CliError;
use crate::progress::Progress;

const AFTER_HELP: &str = "\
Options (-o, comma separated, as in qemu-img):
  compat=0.10|v2|1.1|v3   compatibility level (qcow2 version 2 or 3)
  lazy_refcounts=on|off   postpone refcount updates (version 3 only)
  refcount_bits=N         refcount width: 1, 2, 4, ..., 64 (16 for version 2)
  compress_format=NAME    seed compress format (zlib, zstd, brotli): sets the
                          compress format extension; refused when clusters
                          are compressed with another codec (or snapshots
                          might hold some). QEMU cannot open the result.
  compress_level=N        level of the compress format (0 = default); later
                          compressed writes use it
  dedup=on|off            on: build the dedup table from the data already in
                          the image and merge clusters with the same content
                          into one shared copy (offline deduplication; crash
                          safe, flushed every few MiB; -p shows progress).
                          off: drop the table and clear incompatible bit 1,
                          leaving a plain qcow2 image that QEMU can write
                          (shared clusters stay shared, refcounts right)
  dedup_verify=on|off     with dedup=on: compare the bytes of every match
                          before merging instead of trusting SHA-256

`-o help` lists them. The other options qemu-img amend accepts (size,
backing_file, backing_fmt, data_file, data_file_raw, encrypt.*) are refused
with an error naming them. Every option is checked before the image is
touched: a refused amend leaves the file unchanged.

Downgrading to compat=0.10 turns zero clusters into unallocated clusters (no
backing file) or allocated zeroed clusters, and is refused for images using
what version 2 cannot express (extended L2 entries, persistent bitmaps,
zstd-compressed clusters, zero clusters in snapshots...). A dirty image
(lazy refcounts) gets its refcounts repaired first.

Exit status: 0 on success, 1 on any error.";

/// The `-o` options `qemu-img amend -f qcow2` knows and this tool does not
/// change, with a hint where another command does the job.
const NOT_SUPPORTED: &[(&str, &str)] = &[
    ("size", " (use `qcow2 resize`)"),
    ("backing_file", " (use `qemu-img rebase`)"),
    ("backing_fmt", " (use `qemu-img rebase`)"),
    ("data_file", ""),
    ("data_file_raw", ""),
];

/// Change format options of an image.
#[derive(Debug, Args)]
#[command(
    long_about = "Change format-specific options of a qcow2 image (compat, lazy_refcounts, refcount_bits, compress_format, compress_level), like `qemu-img amend`.",
    after_long_help = AFTER_HELP
)]
pub struct AmendArgs {
    /// Image format; only qcow2 can be amended.
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,

    /// Options to change, `name=value[,name=value...]`; may be repeated.
    #[arg(short = 'o', value_name = "OPTIONS", required = true)]
    pub options: Vec<String>,

    /// Show progress on stderr.
    #[arg(short = 'p')]
    pub progress: bool,

    /// Quiet: no progress output.
    #[arg(short = 'q')]
    pub quiet: bool,

    /// The image to amend.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

fn parse_bool(name: &str, value: &str) -> Result<bool, CliError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(CliError::Usage(format!(
            "Parameter '{name}' expects 'on' or 'off'"
        ))),
    }
}

/// What `-o` asks for besides the engine's amend options.
#[derive(Debug, Default, PartialEq, Eq)]
struct DedupRequest {
    dedup: Option<bool>,
    verify: bool,
}

/// The options `text` asks for, or `None` for `help`.
fn parse_options(text: &str) -> Result<Option<(AmendOptions, DedupRequest)>, CliError> {
    let mut options = AmendOptions::default();
    let mut dedup = DedupRequest::default();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        if item == "help" || item == "?" {
            return Ok(None);
        }
        let (name, value) = item.split_once('=').ok_or_else(|| {
            CliError::Usage(format!("Invalid parameter '{item}': expected name=value"))
        })?;
        match name {
            "compat" => {
                options.compat = Some(Compat::parse(value).ok_or_else(|| {
                    CliError::Usage(format!("Unknown compatibility level {value}"))
                })?);
            }
            "lazy_refcounts" => options.lazy_refcounts = Some(parse_bool(name, value)?),
            "dedup" => dedup.dedup = Some(parse_bool(name, value)?),
            "dedup_verify" => dedup.verify = parse_bool(name, value)?,
            "compress_format" => options.compress_format = Some(value.to_string()),
            "compress_level" => {
                options.compress_level = Some(value.parse::<u8>().map_err(|_| {
                    CliError::Usage(format!(
                        "Parameter 'compress_level' expects a level from 0 to 255, got '{value}'"
                    ))
                })?);
            }
            "refcount_bits" => {
                let bits = value.parse::<u64>().map_err(|_| {
                    CliError::Usage(format!(
                        "Parameter 'refcount_bits' expects a non-negative number, got '{value}'"
                    ))
                })?;
                options.refcount_bits = Some(bits);
            }
            _ => {
                let known = NOT_SUPPORTED.iter().find(|(n, _)| *n == name);
                return Err(match known {
                    Some((_, hint)) => CliError::Usage(format!(
                        "amend option '{name}' is not supported by qcow2 amend{hint}"
                    )),
                    None if name.starts_with("encrypt.") => CliError::Usage(format!(
                        "amend option '{name}' is not supported by qcow2 amend (encryption is not implemented)"
                    )),
                    None => CliError::Usage(format!("Invalid parameter '{name}'")),
                });
            }
        }
    }
    Ok(Some((options, dedup)))
}

const OPTIONS_HELP: &str = "\
Amend options for 'qcow2':
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  refcount_bits=<num>    - Width of a reference count entry in bits
  compress_format=<str>  - Seed compress format (zlib, zstd, brotli)
  compress_level=<num>   - Level of the compress format (0 = default)
  dedup=<bool (on/off)>  - Deduplicate (seed extension): build the table and
                           merge duplicate clusters, or drop the table
  dedup_verify=<bool (on/off)> - Compare bytes before merging";

/// Runs `amend`.
pub fn run(args: &AmendArgs) -> Result<(), CliError> {
    if let Some(format) = &args.format {
        if format != "qcow2" {
            return Err(CliError::Usage(format!(
                "Format driver '{format}' does not support option amendment"
            )));
        }
    }
    let Some((options, dedup)) = parse_options(&args.options.join(","))? else {
        println!("{OPTIONS_HELP}");
        return Ok(());
    };
    let show = args.progress && !args.quiet;
    if options != AmendOptions::default() || dedup.dedup.is_none() {
        let mut progress = Progress::new(show, 1);
        Image::amend_path(&args.file, &options).map_err(|e| CliError::image(&args.file, e))?;
        progress.update(1);
        progress.finish();
    }
    let Some(on) = dedup.dedup else {
        return Ok(());
    };
    let image = Image::open_path(&args.file, true).map_err(|e| CliError::image(&args.file, e))?;
    if on {
        image.set_dedup_verify(dedup.verify);
        let mut progress = Progress::new(show, image.size());
        let cs = image.cluster_size();
        image
            .enable_dedup(true, &mut |done, _| progress.update(done * cs))
            .map_err(|e| CliError::image(&args.file, e))?;
        progress.finish();
    } else {
        image
            .disable_dedup()
            .map_err(|e| CliError::image(&args.file, e))?;
    }
    image.close().map_err(|e| CliError::image(&args.file, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_like_qemu_img() {
        let (o, d) = parse_options("compat=v3,lazy_refcounts=on,refcount_bits=64,dedup=on")
            .unwrap()
            .unwrap();
        assert_eq!(d.dedup, Some(true));
        assert_eq!(o.compat, Some(Compat::V3));
        assert_eq!(o.lazy_refcounts, Some(true));
        assert_eq!(o.refcount_bits, Some(64));
        assert_eq!(
            parse_options("compat=0.10").unwrap().unwrap().0.compat,
            Some(Compat::V2)
        );
        assert!(parse_options("help").unwrap().is_none());
        for bad in [
            "compat=1.2",
            "lazy_refcounts=maybe",
            "refcount_bits=x",
            "foo=1",
        ] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
        let err = parse_options("size=1G").unwrap_err().to_string();
        assert!(err.contains("'size'"), "{err}");
    }
}
