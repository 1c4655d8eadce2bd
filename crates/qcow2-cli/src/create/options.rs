//! `-o name=value,...` creation options, as `qemu-img create` names them,
//! and the "Formatting ..." line that echoes them.

use qcow2_image::{CreateOptions, Preallocation};

use crate::error::CliError;
use crate::size_arg::parse_size;

/// Help for `-o help` and `--help`.
pub const OPTIONS_HELP: &str = "\
Creation options (-o name=value,...; several -o are merged):
  size=SIZE              virtual disk size (suffixes k, M, G, T, P, E)
  cluster_size=SIZE      cluster size, a power of two from 512 to 2M (default 64k)
  compat=0.10|v2|1.1|v3  qcow2 version 2 or 3 (default 1.1)
  refcount_bits=N        refcount width: 1, 2, 4, 8, 16, 32 or 64 (default 16;
                         version 2 only has 16)
  lazy_refcounts=on|off  set the lazy refcounts bit (version 3)
  extended_l2=on|off     32 subclusters per cluster (version 3, clusters >= 16k)
  backing_file=NAME      backing file, stored as given (same as -b)
  backing_fmt=FMT        backing format, qcow2 or raw (same as -F)
  preallocation=off|metadata
                         metadata: allocate every L2 table and data cluster
  compression_type=zlib|zstd
                         codec of compressed clusters (zstd sets incompatible
                         bit 3, which QEMU 5.1 and later read)
  compress_format=zlib|zstd|brotli
                         the seed compress format extension instead: codec
                         of compressed clusters, recorded by name with a
                         level (sets incompatible bit 2; QEMU cannot open
                         such images, every qcow2 command can). Same as
                         --compress-format NAME[:LEVEL]
  compress_level=N       level for compress_format: 0 = the codec's default,
                         1 (fastest) up to 9 (zlib), 22 (zstd), 12 (brotli)
  dedup=on|off           deduplicate (the seed extension): clusters with the
                         same SHA-256 share one copy; sets incompatible bit 1,
                         which QEMU reads as its corrupt bit, so QEMU opens
                         such images read-only (`qcow2 amend -o dedup=off`
                         makes them plain qcow2 again). Needs compat=1.1 and
                         no extended_l2
  dedup_verify=on|off    compare the bytes of every dedup hit instead of
                         trusting the digest (applies to the writes of the
                         command that gets it: convert, amend)";

/// The options as typed: `None` for what was not given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requested {
    /// `size`.
    pub size: Option<u64>,
    /// `cluster_size`.
    pub cluster_size: Option<u64>,
    /// `compat`, as typed.
    pub compat: Option<String>,
    /// `refcount_bits`.
    pub refcount_bits: Option<u32>,
    /// `lazy_refcounts`.
    pub lazy_refcounts: Option<bool>,
    /// `extended_l2`.
    pub extended_l2: Option<bool>,
    /// `backing_file`.
    pub backing_file: Option<String>,
    /// `backing_fmt`.
    pub backing_fmt: Option<String>,
    /// `preallocation`, as typed.
    pub preallocation: Option<String>,
    /// `compression_type`, as typed.
    pub compression_type: Option<String>,
    /// `compress_format` (the seed extension's codec name).
    pub compress_format: Option<String>,
    /// `compress_level`.
    pub compress_level: Option<u8>,
    /// `dedup`.
    pub dedup: Option<bool>,
    /// `dedup_verify`.
    pub dedup_verify: Option<bool>,
}

fn bad(name: &str, value: &str, expected: &str) -> CliError {
    CliError::Usage(format!(
        "invalid value '{value}' for option '{name}' (expected {expected})"
    ))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, CliError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(bad(name, value, "on or off")),
    }
}

impl Requested {
    /// Applies one `-o` argument (`a=b,c=d`; `,,` is a literal comma).
    pub fn apply(&mut self, list: &str) -> Result<(), CliError> {
        for item in split_options(list) {
            let (name, value) = item.split_once('=').ok_or_else(|| {
                CliError::Usage(format!("invalid option '{item}' (expected name=value)"))
            })?;
            self.set(name, value)?;
        }
        Ok(())
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), CliError> {
        match name {
            "size" => {
                self.size = Some(parse_size(value).ok_or_else(|| bad(name, value, "a size"))?)
            }
            "cluster_size" => {
                self.cluster_size =
                    Some(parse_size(value).ok_or_else(|| bad(name, value, "a size"))?)
            }
            "compat" => match value {
                "0.10" | "v2" | "1.1" | "v3" => self.compat = Some(value.to_string()),
                _ => return Err(bad(name, value, "0.10, v2, 1.1 or v3")),
            },
            "refcount_bits" => {
                self.refcount_bits = Some(value.parse().map_err(|_| bad(name, value, "a number"))?)
            }
            "lazy_refcounts" => self.lazy_refcounts = Some(parse_bool(name, value)?),
            "extended_l2" => self.extended_l2 = Some(parse_bool(name, value)?),
            "backing_file" => self.backing_file = Some(value.to_string()),
            "backing_fmt" => match value {
                "qcow2" | "raw" => self.backing_fmt = Some(value.to_string()),
                _ => return Err(bad(name, value, "qcow2 or raw")),
            },
            "preallocation" => match value {
                "off" | "metadata" => self.preallocation = Some(value.to_string()),
                "falloc" | "full" => return Err(CliError::NotYet("preallocation=falloc|full")),
                _ => return Err(bad(name, value, "off or metadata")),
            },
            "compression_type" => match value {
                "zlib" | "zstd" => self.compression_type = Some(value.to_string()),
                _ => return Err(bad(name, value, "zlib or zstd")),
            },
            "compress_format" => self.compress_format = Some(value.to_string()),
            "dedup" => self.dedup = Some(parse_bool(name, value)?),
            "dedup_verify" => self.dedup_verify = Some(parse_bool(name, value)?),
            "compress_level" => {
                self.compress_level = Some(
                    value
                        .parse()
                        .map_err(|_| bad(name, value, "a level from 0 to 255"))?,
                )
            }
            _ => {
                return Err(CliError::Usage(format!(
                    "unknown option '{name}' (see `qcow2 create --help`)"
                )))
            }
        }
        Ok(())
    }

    /// Applies `--compress-format NAME[:LEVEL]`.
    pub fn apply_compress_format(&mut self, arg: &str) -> Result<(), CliError> {
        let (name, level) = match arg.split_once(':') {
            Some((name, level)) => {
                let level = level.parse().map_err(|_| {
                    bad(
                        "--compress-format",
                        arg,
                        "NAME or NAME:LEVEL, LEVEL from 0 to 255",
                    )
                })?;
                (name, Some(level))
            }
            None => (arg, None),
        };
        self.compress_format = Some(name.to_string());
        if level.is_some() {
            self.compress_level = level;
        }
        Ok(())
    }

    /// The engine's options; `size` must be known by now.
    pub fn to_create_options(&self) -> Result<CreateOptions, CliError> {
        let size = self
            .size
            .ok_or_else(|| CliError::Usage("Image creation needs a size parameter".into()))?;
        let mut options = CreateOptions::new(size);
        if let Some(cs) = self.cluster_size {
            options.cluster_size = cs;
        }
        if let Some(compat) = &self.compat {
            options.version = if matches!(compat.as_str(), "0.10" | "v2") {
                2
            } else {
                3
            };
        }
        if let Some(bits) = self.refcount_bits {
            options.refcount_bits = bits;
        }
        options.lazy_refcounts = self.lazy_refcounts.unwrap_or(false);
        options.extended_l2 = self.extended_l2.unwrap_or(false);
        options.backing_file = self.backing_file.clone();
        options.backing_format = self.backing_fmt.clone();
        if self.preallocation.as_deref() == Some("metadata") {
            options.preallocation = Preallocation::Metadata;
        }
        options.compression_type = u8::from(self.compression_type.as_deref() == Some("zstd"));
        options.dedup = self.dedup.unwrap_or(false);
        match (&self.compress_format, self.compress_level) {
            (Some(name), level) => {
                options.compress_format = Some((name.clone(), level.unwrap_or(0)));
            }
            (None, Some(_)) => {
                return Err(CliError::Usage(
                    "compress_level needs compress_format (QEMU compression types have no level)"
                        .into(),
                ))
            }
            (None, None) => {}
        }
        options
            .validate()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(options)
    }

    /// The line `qemu-img create` prints, in its order of options.
    pub fn formatting_line(&self, file: &str, options: &CreateOptions) -> String {
        let on_off = |b: bool| if b { "on" } else { "off" };
        let mut line = format!(
            "Formatting '{file}', fmt=qcow2 cluster_size={} extended_l2={}",
            options.cluster_size,
            on_off(options.extended_l2)
        );
        if let Some(p) = &self.preallocation {
            line += &format!(" preallocation={p}");
        }
        let codec = if options.compression_type == 1 {
            "zstd"
        } else {
            "zlib"
        };
        line += &format!(" compression_type={codec}");
        if let Some((name, level)) = &options.compress_format {
            line += &format!(" compress_format={name} compress_level={level}");
        }
        if options.dedup {
            line += " dedup=on";
        }
        line += &format!(" size={}", options.size);
        if let Some(b) = &options.backing_file {
            line += &format!(" backing_file={b}");
        }
        if let Some(f) = &options.backing_format {
            line += &format!(" backing_fmt={f}");
        }
        if let Some(c) = &self.compat {
            line += &format!(" compat={c}");
        }
        line += &format!(
            " lazy_refcounts={} refcount_bits={}",
            on_off(options.lazy_refcounts),
            options.refcount_bits
        );
        line
    }
}

/// Splits `a=b,c=d` at single commas; `,,` stands for a comma in a value.
fn split_options(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                items.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items.retain(|s| !s.is_empty());
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_merge_and_commas_escape() {
        let mut r = Requested::default();
        r.apply("cluster_size=4k,compat=0.10").unwrap();
        r.apply("backing_file=a,,b.qcow2").unwrap();
        assert_eq!(r.cluster_size, Some(4096));
        assert_eq!(r.compat.as_deref(), Some("0.10"));
        assert_eq!(r.backing_file.as_deref(), Some("a,b.qcow2"));
        assert!(r.apply("nonsense=1").is_err());
        assert!(r.apply("lazy_refcounts=maybe").is_err());
    }
}
