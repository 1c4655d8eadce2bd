//! L1 table entries: the pointers from the L1 table to L2 tables.
//!
//! Layout of one 8-byte big-endian entry: bits 9-55 hold the cluster-aligned
//! L2 table offset (0 = no L2 table), bit 63 is COPIED (the L2 table's refcount
//! is exactly one), every other bit is reserved and zero.

use crate::error::{ErrorKind, FormatError, Result};
use crate::header::MAX_L1_BYTES;
use crate::rules::{self, RuleId};
use crate::tables::raw;
use crate::units::{ClusterGeometry, HostOffset};

/// Size of one L1 entry in bytes.
pub const L1_ENTRY_SIZE: usize = 8;
/// Bit 63: the L2 table's refcount is exactly one (writes need no COW).
pub const L1_COPIED: u64 = 1 << 63;
/// Bits 9-55: the L2 table offset.
pub const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits that must be zero: 0-8 and 56-62.
pub const L1_RESERVED_MASK: u64 = !(L1_OFFSET_MASK | L1_COPIED);
/// QEMU's L1 table size limit ([`MAX_L1_BYTES`]) in entries; snapshot L1
/// tables are bounded by it too.
pub const MAX_L1_ENTRIES: u64 = MAX_L1_BYTES / L1_ENTRY_SIZE as u64;

const RULE: RuleId = rules::L1_ENTRY;

/// One decoded L1 entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct L1Entry {
    /// Offset of the L2 table, `None` when the entry is unused (all guest
    /// clusters it covers are unallocated).
    pub l2_table: Option<HostOffset>,
    /// COPIED: the L2 table's refcount is exactly one. Only meaningful in the
    /// active L1 table; never set on an unused entry.
    pub copied: bool,
}

impl L1Entry {
    /// The unused entry (raw value 0).
    pub const UNUSED: Self = Self {
        l2_table: None,
        copied: false,
    };

    /// Decodes a raw entry found at `base_offset`.
    ///
    /// Enforces [`rules::L1_ENTRY`]: reserved bits zero, the offset cluster
    /// aligned, and COPIED clear on an unused entry (the spec reserves COPIED
    /// for tables whose refcount is one, and an absent table has none).
    pub fn decode(raw: u64, geometry: ClusterGeometry, base_offset: u64) -> Result<Self> {
        let reserved = raw & L1_RESERVED_MASK;
        if reserved != 0 {
            return Err(FormatError::new(
                RULE,
                base_offset,
                ErrorKind::ReservedSet {
                    field: "L1 entry",
                    value: reserved,
                },
            ));
        }
        let offset = raw & L1_OFFSET_MASK;
        let copied = raw & L1_COPIED != 0;
        if offset == 0 {
            if copied {
                return Err(copied_on_unused(base_offset));
            }
            return Ok(Self::UNUSED);
        }
        if !geometry.is_aligned(offset) {
            return Err(misaligned(offset, geometry, base_offset));
        }
        Ok(Self {
            l2_table: Some(HostOffset(offset)),
            copied,
        })
    }

    /// Encodes the entry, checking [`rules::L1_ENTRY`] (errors at offset 0).
    pub fn encode(self, geometry: ClusterGeometry) -> Result<u64> {
        let Some(l2) = self.l2_table else {
            return if self.copied {
                Err(copied_on_unused(0))
            } else {
                Ok(0)
            };
        };
        let offset = l2.get();
        if offset == 0 {
            return Err(FormatError::new(
                RULE,
                0,
                ErrorKind::Malformed {
                    field: "L1 entry",
                    reason: "an L2 table cannot be at offset 0 (0 means unused)".into(),
                },
            ));
        }
        if offset > L1_OFFSET_MASK {
            return Err(FormatError::new(
                RULE,
                0,
                ErrorKind::OutOfRange {
                    field: "L2 table offset",
                    value: offset,
                    min: 0,
                    max: L1_OFFSET_MASK,
                },
            ));
        }
        if !geometry.is_aligned(offset) {
            return Err(misaligned(offset, geometry, 0));
        }
        Ok(offset | if self.copied { L1_COPIED } else { 0 })
    }
}

fn copied_on_unused(base_offset: u64) -> FormatError {
    FormatError::new(
        RULE,
        base_offset,
        ErrorKind::Malformed {
            field: "L1 entry",
            reason: "COPIED is set on an unused entry".into(),
        },
    )
}

fn misaligned(offset: u64, geometry: ClusterGeometry, base_offset: u64) -> FormatError {
    FormatError::new(
        RULE,
        base_offset,
        ErrorKind::Misaligned {
            field: "L2 table offset",
            value: offset,
            alignment: geometry.cluster_size(),
        },
    )
}

/// Decodes a whole L1 table (`l1_size` entries, so `buf.len()` = 8 × l1_size).
///
/// Errors carry [`rules::L1_ENTRY`] and `base_offset` + the entry's position.
pub fn decode_table(
    buf: &[u8],
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<Vec<L1Entry>> {
    let entries = raw::u64_entries(buf, RULE, "L1 table", base_offset)?;
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| L1Entry::decode(e.get(), geometry, raw::at(base_offset, i * L1_ENTRY_SIZE)))
        .collect()
}

/// Decodes entry `index` of an L1 table held in `buf` without decoding the rest.
pub fn decode_at(
    buf: &[u8],
    index: u64,
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<L1Entry> {
    let value = raw::u64_at(buf, index).ok_or_else(|| {
        raw::index_out_of_range(RULE, base_offset, index, (buf.len() / L1_ENTRY_SIZE) as u64)
    })?;
    let pos = base_offset.saturating_add(index.saturating_mul(L1_ENTRY_SIZE as u64));
    L1Entry::decode(value, geometry, pos)
}

/// Encodes a whole L1 table; errors carry the entry's position in the output.
pub fn encode_table(entries: &[L1Entry], geometry: ClusterGeometry) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.len().saturating_mul(L1_ENTRY_SIZE));
    for (i, entry) in entries.iter().enumerate() {
        let value = entry
            .encode(geometry)
            .map_err(|e| FormatError::new(e.rule, (i * L1_ENTRY_SIZE) as u64, e.kind))?;
        out.extend_from_slice(&value.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bits: u32) -> ClusterGeometry {
        ClusterGeometry::new(bits).unwrap()
    }

    #[test]
    fn decodes_used_and_unused() {
        let g = geo(16);
        assert_eq!(L1Entry::decode(0, g, 0).unwrap(), L1Entry::UNUSED);
        let e = L1Entry::decode(L1_COPIED | 0x5_0000, g, 0).unwrap();
        assert_eq!(e.l2_table, Some(HostOffset(0x5_0000)));
        assert!(e.copied);
        assert_eq!(e.encode(g).unwrap(), L1_COPIED | 0x5_0000);
    }

    #[test]
    fn reserved_bits_rejected() {
        let g = geo(16);
        for bit in [0, 8, 56, 62] {
            let err = L1Entry::decode(0x1_0000 | (1 << bit), g, 0x100).unwrap_err();
            assert_eq!(err.rule, rules::L1_ENTRY);
            assert_eq!(err.offset, 0x100);
            assert!(matches!(err.kind, ErrorKind::ReservedSet { .. }));
        }
    }

    #[test]
    fn misaligned_offset_rejected() {
        let err = L1Entry::decode(0x1200, geo(16), 8).unwrap_err();
        assert_eq!(err.rule, rules::L1_ENTRY);
        assert_eq!(err.offset, 8);
        assert!(matches!(err.kind, ErrorKind::Misaligned { .. }));
        // 512-byte clusters: the same offset is fine.
        assert!(L1Entry::decode(0x1200, geo(9), 8).is_ok());
    }

    #[test]
    fn copied_on_unused_rejected() {
        let err = L1Entry::decode(L1_COPIED, geo(16), 0).unwrap_err();
        assert_eq!(err.rule, rules::L1_ENTRY);
        let value = L1Entry {
            l2_table: None,
            copied: true,
        };
        assert_eq!(value.encode(geo(16)).unwrap_err().rule, rules::L1_ENTRY);
    }

    #[test]
    fn encode_rejects_unrepresentable_offsets() {
        let g = geo(16);
        for offset in [0, 1 << 56, 0x1_2000] {
            let value = L1Entry {
                l2_table: Some(HostOffset(offset)),
                copied: false,
            };
            assert_eq!(
                value.encode(g).unwrap_err().rule,
                rules::L1_ENTRY,
                "{offset:#x}"
            );
        }
    }

    #[test]
    fn table_errors_point_at_the_entry() {
        let g = geo(16);
        let mut buf = vec![0u8; 32];
        buf[16..24].copy_from_slice(&0x1_0001u64.to_be_bytes());
        let err = decode_table(&buf, g, 0x3_0000).unwrap_err();
        assert_eq!(err.offset, 0x3_0010);
        let err = decode_table(&buf[..30], g, 0).unwrap_err();
        assert_eq!(err.rule, rules::L1_ENTRY);
        assert!(matches!(err.kind, ErrorKind::Truncated { .. }));
        assert_eq!(decode_at(&buf, 1, g, 0).unwrap(), L1Entry::UNUSED);
        assert_eq!(
            decode_at(&buf, 2, g, 0x3_0000).unwrap_err().offset,
            0x3_0010
        );
        assert!(decode_at(&buf, 4, g, 0).is_err());
        assert!(decode_at(&buf, u64::MAX, g, 0).is_err());
    }
}
