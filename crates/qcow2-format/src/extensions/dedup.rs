//! The seed's deduplication extension (`0xCD8E819B`): where the dedup table lives.

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules;
use crate::units::HostOffset;

/// Size of the extension data (the length field excludes the 4 bytes of padding).
pub const DATA_LEN: usize = 12;

/// The deduplication extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Dedup {
    /// Offset of the level-1 dedup table (cluster aligned).
    pub l1_offset: HostOffset,
    /// Number of u64 entries in the level-1 dedup table.
    pub l1_size: u32,
}

impl Dedup {
    /// Parses the extension data; `at` is its file offset.
    pub fn parse(data: &[u8], at: u64) -> Result<Self> {
        let Ok(raw) = <[u8; DATA_LEN]>::try_from(data) else {
            return Err(FormatError::new(
                rules::DD_LENGTH,
                at,
                ErrorKind::Mismatch {
                    field: "dedup extension length",
                    value: data.len() as u64,
                    expected: DATA_LEN as u64,
                },
            ));
        };
        let mut off = [0u8; 8];
        off.copy_from_slice(&raw[..8]);
        let mut size = [0u8; 4];
        size.copy_from_slice(&raw[8..]);
        Ok(Self {
            l1_offset: HostOffset(u64::from_be_bytes(off)),
            l1_size: u32::from_be_bytes(size),
        })
    }

    /// Serializes the extension data (without framing or padding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.l1_offset.0.to_be_bytes().to_vec();
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out
    }
}
