//! The seed's compress format extension (`0xC03183A3`): a named codec and level for compressed clusters.

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules;

/// Size of the fixed part of the extension.
pub const FIXED_LEN: usize = 24;
/// Size of the name field.
pub const NAME_LEN: usize = 16;

/// Looks up the highest level of a compress format name; `None` when the name is unknown.
pub type MaxLevelLookup<'a> = &'a dyn Fn(&str) -> Option<u8>;

/// The compress format extension.
///
/// `extra_data` is opaque today; it is kept byte for byte so a rewrite by a
/// tool that does not understand it loses nothing (rule CF-EXTRA-DATA).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CompressFormat {
    /// The format name, 1..=16 bytes, no NUL.
    pub name: String,
    /// 0 = the codec's default level, 1 = lowest, up to the codec's maximum.
    pub level: u8,
    /// Format-specific extra data.
    pub extra_data: Vec<u8>,
    /// Whether the stored length also counted the zero padding to 8 bytes.
    /// The seed text allows both readings (docs/spec.md, CF-LENGTH); writers
    /// leave it out, and a rewrite keeps the reading it found.
    pub length_includes_padding: bool,
}

impl CompressFormat {
    /// Builds the extension for `name` and `level`, checking the name's framing (CF-NAME).
    pub fn new(name: &str, level: u8) -> Result<Self> {
        check_name_text(name.as_bytes(), 0)?;
        Ok(Self {
            name: name.to_string(),
            level,
            extra_data: Vec::new(),
            length_includes_padding: false,
        })
    }

    /// Parses the extension data (without the type/length framing); `at` is its file offset.
    pub fn parse(data: &[u8], at: u64) -> Result<Self> {
        if data.len() < FIXED_LEN {
            return Err(FormatError::new(
                rules::CF_LENGTH,
                at,
                ErrorKind::Truncated {
                    what: "compress format extension",
                    needed: FIXED_LEN as u64,
                    available: data.len() as u64,
                },
            ));
        }
        let raw_name = &data[..NAME_LEN];
        let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        if let Some(pos) = raw_name[name_len..].iter().position(|&b| b != 0) {
            return Err(FormatError::new(
                rules::CF_NAME,
                at + (name_len + pos) as u64,
                ErrorKind::Malformed {
                    field: "compress_format_name",
                    reason: "non-zero byte after the terminating NUL".to_string(),
                },
            ));
        }
        check_name_text(&raw_name[..name_len], at)?;
        let level = data[16];
        let reserved = &data[17..20];
        if let Some(pos) = reserved.iter().position(|&b| b != 0) {
            return Err(FormatError::new(
                rules::CF_RESERVED,
                at + 17 + pos as u64,
                ErrorKind::ReservedSet {
                    field: "compress format reserved bytes 17..=19",
                    value: reserved[pos].into(),
                },
            ));
        }
        let extra_size = u32::from_be_bytes([data[20], data[21], data[22], data[23]]);
        let body = FIXED_LEN as u64 + u64::from(extra_size);
        let stored = data.len() as u64;
        let length_includes_padding = stored != body && stored == body.next_multiple_of(8);
        if stored != body && !length_includes_padding {
            return Err(FormatError::new(
                rules::CF_LENGTH,
                at + 20,
                ErrorKind::Mismatch {
                    field: "extra_data_size",
                    value: extra_size.into(),
                    expected: stored - FIXED_LEN as u64,
                },
            ));
        }
        // Bounded by the check above: body <= stored = data.len().
        let body = body as usize;
        if let Some(pos) = data[body..].iter().position(|&b| b != 0) {
            return Err(FormatError::new(
                rules::CF_LENGTH,
                at + (body + pos) as u64,
                ErrorKind::Malformed {
                    field: "compress format padding",
                    reason: "padding counted in the length holds a non-zero byte".to_string(),
                },
            ));
        }
        Ok(Self {
            name: String::from_utf8_lossy(&raw_name[..name_len]).into_owned(),
            level,
            extra_data: data[FIXED_LEN..body].to_vec(),
            length_includes_padding,
        })
    }

    /// Serializes the extension data (without framing; with the padding only
    /// when [`CompressFormat::length_includes_padding`] says the length counts it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; FIXED_LEN];
        let name = self.name.as_bytes();
        let n = name.len().min(NAME_LEN);
        out[..n].copy_from_slice(&name[..n]);
        out[16] = self.level;
        let extra = u32::try_from(self.extra_data.len()).unwrap_or(u32::MAX);
        out[20..24].copy_from_slice(&extra.to_be_bytes());
        out.extend_from_slice(&self.extra_data);
        if self.length_includes_padding {
            out.resize(out.len().next_multiple_of(8), 0);
        }
        out
    }

    /// Checks the name and level against the codecs a build knows (CF-KNOWN, CF-LEVEL).
    ///
    /// `max_level` returns the highest level of a registered format, or `None`
    /// when the name is unknown. `at` is the file offset of the extension data.
    pub fn check_codec(&self, at: u64, max_level: impl Fn(&str) -> Option<u8>) -> Result<()> {
        let Some(max) = max_level(&self.name) else {
            return Err(FormatError::new(
                rules::CF_KNOWN,
                at,
                ErrorKind::UnknownCompressFormat {
                    name: self.name.clone(),
                },
            ));
        };
        if self.level > max {
            return Err(FormatError::new(
                rules::CF_LEVEL,
                at + 16,
                ErrorKind::OutOfRange {
                    field: "compress_level",
                    value: self.level.into(),
                    min: 0,
                    max: max.into(),
                },
            ));
        }
        Ok(())
    }
}

fn check_name_text(name: &[u8], at: u64) -> Result<()> {
    let reason = if name.is_empty() {
        "empty name"
    } else if name.len() > NAME_LEN {
        "longer than 16 bytes"
    } else if name.contains(&0) {
        "contains a NUL byte"
    } else if !name.iter().all(|b| b.is_ascii_graphic()) {
        "not printable ASCII"
    } else {
        return Ok(());
    };
    Err(FormatError::new(
        rules::CF_NAME,
        at,
        ErrorKind::Malformed {
            field: "compress_format_name",
            reason: reason.to_string(),
        },
    ))
}
