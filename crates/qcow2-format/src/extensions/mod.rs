//! The header extension chain: `type: u32, length: u32, data, zero padding to 8`, ended by type 0.

pub mod compress_format;
pub mod dedup;
pub mod feature_table;
pub mod fixed;

use nom::bytes::complete::take;
use nom::number::complete::be_u32;
use nom::IResult;

pub use compress_format::CompressFormat;
pub use dedup::Dedup;
pub use feature_table::FeatureName;
pub use fixed::{Bitmaps, FullDiskEncryption};

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules::{self, RuleId};
use zerocopy::IntoBytes;

/// End of the extension area.
pub const END: u32 = 0;
/// Backing file format name.
pub const BACKING_FORMAT: u32 = 0xE279_2ACA;
/// Feature name table.
pub const FEATURE_TABLE: u32 = 0x6803_f857;
/// Bitmaps.
pub const BITMAPS: u32 = 0x2385_2875;
/// Full disk encryption header pointer.
pub const FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
/// External data file name.
pub const EXTERNAL_DATA_FILE: u32 = 0x4441_5441;
/// Compress format (seed `000_544a3bbaf9a3cb29.txt`).
pub const COMPRESS_FORMAT: u32 = 0xC031_83A3;
/// Deduplication (seed `003_4440354a316a896c.txt`).
pub const DEDUP: u32 = 0xCD8E_819B;

/// One header extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Extension {
    /// Format of the backing file, for example `qcow2` or `raw`.
    BackingFormat(String),
    /// Names of feature bits.
    FeatureTable(Vec<FeatureName>),
    /// Persistent dirty bitmaps.
    Bitmaps(Bitmaps),
    /// Location of the LUKS header.
    FullDiskEncryption(FullDiskEncryption),
    /// Name of the external data file.
    ExternalDataFile(String),
    /// Codec and level of compressed clusters (seed).
    CompressFormat(CompressFormat),
    /// Location of the dedup table (seed).
    Dedup(Dedup),
    /// An extension this crate does not know, kept byte for byte.
    Unknown {
        /// Its type.
        kind: u32,
        /// Its data, without padding.
        data: Vec<u8>,
    },
}

impl Extension {
    /// The type code written on disk.
    pub fn kind(&self) -> u32 {
        match self {
            Self::BackingFormat(_) => BACKING_FORMAT,
            Self::FeatureTable(_) => FEATURE_TABLE,
            Self::Bitmaps(_) => BITMAPS,
            Self::FullDiskEncryption(_) => FULL_DISK_ENCRYPTION,
            Self::ExternalDataFile(_) => EXTERNAL_DATA_FILE,
            Self::CompressFormat(_) => COMPRESS_FORMAT,
            Self::Dedup(_) => DEDUP,
            Self::Unknown { kind, .. } => *kind,
        }
    }

    /// A human name for the type.
    pub fn kind_name(kind: u32) -> &'static str {
        match kind {
            BACKING_FORMAT => "backing file format",
            FEATURE_TABLE => "feature name table",
            BITMAPS => "bitmaps",
            FULL_DISK_ENCRYPTION => "full disk encryption",
            EXTERNAL_DATA_FILE => "external data file",
            COMPRESS_FORMAT => "compress format",
            DEDUP => "deduplication",
            _ => "unknown",
        }
    }

    /// The extension data without framing or padding.
    pub fn data(&self) -> Vec<u8> {
        match self {
            Self::BackingFormat(s) | Self::ExternalDataFile(s) => s.as_bytes().to_vec(),
            Self::FeatureTable(t) => feature_table::to_bytes(t),
            Self::Bitmaps(b) => b.as_bytes().to_vec(),
            Self::FullDiskEncryption(f) => f.as_bytes().to_vec(),
            Self::CompressFormat(c) => c.to_bytes(),
            Self::Dedup(d) => d.to_bytes(),
            Self::Unknown { data, .. } => data.clone(),
        }
    }

    /// Bytes the extension takes in the chain: 8 of framing plus data padded to 8.
    pub fn encoded_len(&self) -> usize {
        8 + padded(self.data().len())
    }

    /// Decodes one extension's data; `at` is the file offset of the data.
    pub fn decode(kind: u32, data: &[u8], at: u64) -> Result<Self> {
        Ok(match kind {
            BACKING_FORMAT => Self::BackingFormat(name_text(
                data,
                at,
                rules::EXT_BACKING_FORMAT,
                "backing file format",
                MAX_BACKING_FORMAT_LEN,
            )?),
            FEATURE_TABLE => Self::FeatureTable(feature_table::parse(data, at)?),
            BITMAPS => Self::Bitmaps(fixed::parse_exact(
                data,
                at,
                rules::EXT_BITMAPS,
                "bitmaps extension length",
            )?),
            FULL_DISK_ENCRYPTION => Self::FullDiskEncryption(fixed::parse_exact(
                data,
                at,
                rules::EXT_FDE,
                "full disk encryption extension length",
            )?),
            EXTERNAL_DATA_FILE => Self::ExternalDataFile(name_text(
                data,
                at,
                rules::EXT_DATA_FILE,
                "external data file name",
                usize::MAX,
            )?),
            COMPRESS_FORMAT => Self::CompressFormat(CompressFormat::parse(data, at)?),
            DEDUP => Self::Dedup(Dedup::parse(data, at)?),
            _ => Self::Unknown {
                kind,
                data: data.to_vec(),
            },
        })
    }
}

/// QEMU keeps the backing format in a 16-byte C string, so names are at most 15 bytes.
pub const MAX_BACKING_FORMAT_LEN: usize = 15;

/// Rounds up to a multiple of 8.
pub const fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

fn name_text(
    data: &[u8],
    at: u64,
    rule: RuleId,
    field: &'static str,
    max: usize,
) -> Result<String> {
    let reason = if data.is_empty() {
        "empty"
    } else if data.len() > max {
        "too long"
    } else if data.contains(&0) {
        "contains a NUL byte"
    } else {
        match core::str::from_utf8(data) {
            Ok(s) => return Ok(s.to_string()),
            Err(_) => "not UTF-8",
        }
    };
    Err(FormatError::new(
        rule,
        at,
        ErrorKind::Malformed {
            field,
            reason: reason.to_string(),
        },
    ))
}

/// One framed record: type, data and padding.
struct Record<'a> {
    kind: u32,
    data: &'a [u8],
    padding: &'a [u8],
}

fn record(input: &[u8]) -> IResult<&[u8], Record<'_>> {
    let (input, kind) = be_u32(input)?;
    let (input, len) = be_u32(input)?;
    let (input, data) = take(len as usize)(input)?;
    // QEMU only needs the data to fit: padding may be cut off by the end of the area.
    let pad = (padded(len as usize) - len as usize).min(input.len());
    let (input, padding) = take(pad)(input)?;
    Ok((
        input,
        Record {
            kind,
            data,
            padding,
        },
    ))
}

/// The parsed extension chain.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExtensionChain {
    /// The extensions in file order.
    pub extensions: Vec<Extension>,
    /// Whether the chain ended with an explicit end marker (rather than at the end of the area).
    pub end_marker: bool,
    /// Problems that do not stop the image from opening (non-zero padding, a
    /// malformed feature name table); a rewrite normalizes them away.
    pub findings: Vec<FormatError>,
}

impl ExtensionChain {
    /// Parses the chain in `area`, which starts at file offset `base`.
    ///
    /// Known extensions may appear once each; unknown ones are kept in order.
    pub fn parse(area: &[u8], base: u64) -> Result<Self> {
        let mut rest = area;
        let mut chain = Self::default();
        let mut seen: Vec<u32> = Vec::new();
        while !rest.is_empty() {
            let at = base + (area.len() - rest.len()) as u64;
            if rest.len() < 8 {
                return Err(FormatError::new(
                    rules::EXT_FRAMING,
                    at,
                    ErrorKind::Truncated {
                        what: "extension header",
                        needed: 8,
                        available: rest.len() as u64,
                    },
                ));
            }
            if rest[..4] == END.to_be_bytes() {
                // QEMU stops at the marker whatever its length field says.
                chain.end_marker = true;
                break;
            }
            let (after, rec) = record(rest).map_err(|_| {
                let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
                FormatError::new(
                    rules::EXT_FRAMING,
                    at + 4,
                    ErrorKind::Truncated {
                        what: "extension data",
                        needed: len.into(),
                        available: (rest.len() - 8) as u64,
                    },
                )
            })?;
            // QEMU never reads padding, so non-zero padding is reported, not refused.
            if let Some(pos) = rec.padding.iter().position(|&b| b != 0) {
                chain.findings.push(FormatError::new(
                    rules::EXT_PADDING,
                    at + 8 + (rec.data.len() + pos) as u64,
                    ErrorKind::ReservedSet {
                        field: "extension padding",
                        value: rec.padding[pos].into(),
                    },
                ));
            }
            let ext = match Extension::decode(rec.kind, rec.data, at + 8) {
                // The feature name table only names bits in messages: keep a bad one raw and report it.
                Err(e) if e.rule == rules::EXT_FEATURE_TABLE => {
                    chain.findings.push(e);
                    Extension::Unknown {
                        kind: rec.kind,
                        data: rec.data.to_vec(),
                    }
                }
                other => other?,
            };
            if !matches!(ext, Extension::Unknown { .. }) {
                if seen.contains(&rec.kind) {
                    return Err(FormatError::new(
                        rules::EXT_DUPLICATE,
                        at,
                        ErrorKind::Conflict(format!(
                            "second {} extension ({:#010x})",
                            Extension::kind_name(rec.kind),
                            rec.kind
                        )),
                    ));
                }
                seen.push(rec.kind);
            }
            chain.extensions.push(ext);
            rest = after;
        }
        Ok(chain)
    }

    /// Serializes the chain, with an end marker when `end_marker` is set.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for ext in &self.extensions {
            let data = ext.data();
            out.extend_from_slice(&ext.kind().to_be_bytes());
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&data);
            out.resize(out.len() + padded(data.len()) - data.len(), 0);
        }
        if self.end_marker {
            out.extend_from_slice(&[0; 8]);
        }
        out
    }

    /// File offsets of each extension's data, given the chain starts at `base`.
    pub fn data_offsets(&self, base: u64) -> Vec<u64> {
        let mut at = base;
        self.extensions
            .iter()
            .map(|e| {
                let data_at = at + 8;
                at += e.encoded_len() as u64;
                data_at
            })
            .collect()
    }

    /// The first extension of type `kind`, with its index.
    pub fn find(&self, kind: u32) -> Option<(usize, &Extension)> {
        self.extensions
            .iter()
            .enumerate()
            .find(|(_, e)| e.kind() == kind)
    }
}
