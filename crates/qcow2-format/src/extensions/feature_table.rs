//! The feature name table extension (`0x6803f857`): human names of feature bits.

use crate::error::{ErrorKind, FormatError, Result};
use crate::features::FeatureKind;
use crate::rules;

/// Size of one table entry.
pub const ENTRY_LEN: usize = 48;
/// Size of the name field of an entry.
pub const NAME_LEN: usize = 46;

/// One entry of the feature name table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FeatureName {
    /// Which bitmap the bit belongs to.
    pub kind: FeatureKind,
    /// Bit number, 0..=63.
    pub bit: u8,
    /// The raw name field, zero padded (kept raw so a rewrite is byte-exact).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub raw_name: [u8; NAME_LEN],
}

impl FeatureName {
    /// An entry for `kind`/`bit` named `name` (truncated to 46 bytes).
    pub fn new(kind: FeatureKind, bit: u8, name: &str) -> Self {
        let mut raw_name = [0u8; NAME_LEN];
        let n = name.len().min(NAME_LEN);
        raw_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self {
            kind,
            bit,
            raw_name,
        }
    }

    /// The name up to the first NUL.
    pub fn name(&self) -> String {
        let end = self
            .raw_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(NAME_LEN);
        String::from_utf8_lossy(&self.raw_name[..end]).into_owned()
    }
}

/// Parses the table; `at` is the file offset of the extension data.
pub fn parse(data: &[u8], at: u64) -> Result<Vec<FeatureName>> {
    if data.len() % ENTRY_LEN != 0 {
        return Err(FormatError::new(
            rules::EXT_FEATURE_TABLE,
            at,
            ErrorKind::Malformed {
                field: "feature name table",
                reason: format!("length {} is not a multiple of {ENTRY_LEN}", data.len()),
            },
        ));
    }
    data.chunks_exact(ENTRY_LEN)
        .enumerate()
        .map(|(i, entry)| {
            let entry_at = at + (i * ENTRY_LEN) as u64;
            let kind = FeatureKind::from_raw(entry[0]).ok_or_else(|| {
                FormatError::new(
                    rules::EXT_FEATURE_TABLE,
                    entry_at,
                    ErrorKind::OutOfRange {
                        field: "feature type",
                        value: entry[0].into(),
                        min: 0,
                        max: 2,
                    },
                )
            })?;
            let bit = entry[1];
            if bit > 63 {
                return Err(FormatError::new(
                    rules::EXT_FEATURE_TABLE,
                    entry_at + 1,
                    ErrorKind::OutOfRange {
                        field: "feature bit number",
                        value: bit.into(),
                        min: 0,
                        max: 63,
                    },
                ));
            }
            let name = &entry[2..];
            if let Some(nul) = name.iter().position(|&b| b == 0) {
                if let Some(p) = name[nul..].iter().position(|&b| b != 0) {
                    return Err(FormatError::new(
                        rules::EXT_FEATURE_TABLE,
                        entry_at + (2 + nul + p) as u64,
                        ErrorKind::Malformed {
                            field: "feature name",
                            reason: "a byte after the name's terminating zero is not zero"
                                .to_string(),
                        },
                    ));
                }
            }
            let mut raw_name = [0u8; NAME_LEN];
            raw_name.copy_from_slice(name);
            Ok(FeatureName {
                kind,
                bit,
                raw_name,
            })
        })
        .collect()
}

/// Serializes the table.
pub fn to_bytes(entries: &[FeatureName]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        out.push(e.kind.to_raw());
        out.push(e.bit);
        out.extend_from_slice(&e.raw_name);
    }
    out
}
