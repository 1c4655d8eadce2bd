//! Compressed cluster descriptors: where a compressed cluster's bytes live.
//!
//! In an L2 entry with bit 62 set, bits 0..x-1 (x = 62 - (cluster_bits - 8))
//! hold the byte offset of the compressed data (no alignment), and bits x..61
//! the number of 512-byte sectors it uses beyond the one holding that offset.
//! Offset bits above 55 (only reachable when cluster_bits < 14) must be zero.
//! COPIED (bit 63) is never set on a compressed cluster.

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules::{self, RuleId};
use crate::units::{ClusterGeometry, ClusterIndex, HostOffset};

/// Bit 62 of an L2 entry: the cluster is compressed.
pub const COMPRESSED_FLAG: u64 = 1 << 62;
/// Bit 63 of an L2 entry (COPIED), forbidden on compressed clusters.
pub const COPIED_FLAG: u64 = 1 << 63;
/// Sector size the descriptor counts in.
pub const SECTOR_SIZE: u64 = 512;
/// Host offsets in L2 entries stay below 2^56 (64 PiB).
const HOST_OFFSET_LIMIT: u64 = 1 << 56;

const RULE: RuleId = rules::CMP_DESCRIPTOR;

/// Number of bits holding the host offset (x = 62 - (cluster_bits - 8)).
pub const fn offset_bits(geometry: ClusterGeometry) -> u32 {
    62 - (geometry.cluster_bits() - 8)
}

/// Number of bits holding the additional sector count (cluster_bits - 8).
pub const fn sector_bits(geometry: ClusterGeometry) -> u32 {
    geometry.cluster_bits() - 8
}

/// Largest host offset a descriptor can hold for this geometry.
pub const fn max_host_offset(geometry: ClusterGeometry) -> u64 {
    let field = (1u64 << offset_bits(geometry)) - 1;
    if field < HOST_OFFSET_LIMIT - 1 {
        field
    } else {
        HOST_OFFSET_LIMIT - 1
    }
}

/// Largest additional sector count a descriptor can hold for this geometry.
pub const fn max_additional_sectors(geometry: ClusterGeometry) -> u64 {
    (1u64 << sector_bits(geometry)) - 1
}

/// A decoded compressed cluster descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct CompressedDescriptor {
    /// Byte offset of the compressed data in the image file (not aligned).
    pub host_offset: HostOffset,
    /// 512-byte sectors used beyond the one containing `host_offset`.
    pub additional_sectors: u64,
}

impl CompressedDescriptor {
    /// Decodes a whole L2 entry (bit 62 set) found at `base_offset`.
    ///
    /// Enforces [`rules::CMP_DESCRIPTOR`]: bit 62 set, COPIED clear, offset
    /// bits above 55 clear.
    pub fn decode(entry: u64, geometry: ClusterGeometry, base_offset: u64) -> Result<Self> {
        if entry & COMPRESSED_FLAG == 0 {
            return Err(FormatError::new(
                RULE,
                base_offset,
                ErrorKind::Mismatch {
                    field: "L2 entry compressed flag",
                    value: 0,
                    expected: 1,
                },
            ));
        }
        if entry & COPIED_FLAG != 0 {
            return Err(copied_set(base_offset));
        }
        let x = offset_bits(geometry);
        let offset = entry & ((1u64 << x) - 1);
        if offset >= HOST_OFFSET_LIMIT {
            return Err(FormatError::new(
                RULE,
                base_offset,
                ErrorKind::ReservedSet {
                    field: "compressed host offset bits 56 and up",
                    value: offset & !(HOST_OFFSET_LIMIT - 1),
                },
            ));
        }
        Ok(Self {
            host_offset: HostOffset(offset),
            additional_sectors: (entry >> x) & max_additional_sectors(geometry),
        })
    }

    /// Encodes the descriptor as a whole L2 entry (bit 62 set, COPIED clear).
    ///
    /// Checks [`rules::CMP_DESCRIPTOR`]: both fields fit (errors at offset 0).
    pub fn encode(self, geometry: ClusterGeometry) -> Result<u64> {
        check_fits(self.host_offset, self.additional_sectors, geometry)?;
        Ok(COMPRESSED_FLAG
            | self.host_offset.get()
            | (self.additional_sectors << offset_bits(geometry)))
    }

    /// The descriptor for `len` bytes of compressed data at `host_offset`.
    ///
    /// Fails with [`rules::CMP_DESCRIPTOR`] when `len` is 0, the offset does not
    /// fit, or the data spans more sectors than the count field can express.
    pub fn from_range(
        host_offset: HostOffset,
        len: u64,
        geometry: ClusterGeometry,
    ) -> Result<Self> {
        let max_len = (max_additional_sectors(geometry) + 1) * SECTOR_SIZE;
        let last = len
            .checked_sub(1)
            .and_then(|tail| host_offset.get().checked_add(tail))
            .ok_or_else(|| {
                FormatError::new(
                    RULE,
                    0,
                    ErrorKind::OutOfRange {
                        field: "compressed length",
                        value: len,
                        min: 1,
                        max: max_len,
                    },
                )
            })?;
        let additional = last / SECTOR_SIZE - host_offset.get() / SECTOR_SIZE;
        check_fits(host_offset, additional, geometry)?;
        Ok(Self {
            host_offset,
            additional_sectors: additional,
        })
    }

    /// Upper bound of the compressed data length: from `host_offset` to the end
    /// of the last sector. The real stream may end earlier; decoders stop once
    /// they have produced a cluster, and the slack may hold another cluster.
    pub const fn max_len(self) -> u64 {
        (self.additional_sectors.saturating_add(1)).saturating_mul(SECTOR_SIZE)
            - self.host_offset.get() % SECTOR_SIZE
    }

    /// First byte after the last sector, or `None` on overflow.
    pub fn host_end(self) -> Option<HostOffset> {
        self.host_offset.checked_add(self.max_len())
    }

    /// The host clusters the sectors touch: first cluster and count (1 or
    /// more; compressed data may run into the next cluster). `None` on
    /// overflow, which only an unvalidated descriptor can cause.
    pub fn host_clusters(self, geometry: ClusterGeometry) -> Option<(ClusterIndex, u64)> {
        let first = geometry.host_cluster(self.host_offset);
        let last = geometry.host_cluster(HostOffset(self.host_end()?.get() - 1));
        Some((first, last.get() - first.get() + 1))
    }
}

fn check_fits(host_offset: HostOffset, additional: u64, geometry: ClusterGeometry) -> Result<()> {
    let max_offset = max_host_offset(geometry);
    if host_offset.get() > max_offset {
        return Err(FormatError::new(
            RULE,
            0,
            ErrorKind::OutOfRange {
                field: "compressed host offset",
                value: host_offset.get(),
                min: 0,
                max: max_offset,
            },
        ));
    }
    let max_sectors = max_additional_sectors(geometry);
    if additional > max_sectors {
        return Err(FormatError::new(
            RULE,
            0,
            ErrorKind::OutOfRange {
                field: "additional compressed sectors",
                value: additional,
                min: 0,
                max: max_sectors,
            },
        ));
    }
    Ok(())
}

fn copied_set(base_offset: u64) -> FormatError {
    FormatError::new(
        RULE,
        base_offset,
        ErrorKind::Malformed {
            field: "compressed L2 entry",
            reason: "COPIED (bit 63) is set".into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bits: u32) -> ClusterGeometry {
        ClusterGeometry::new(bits).unwrap()
    }

    #[test]
    fn split_follows_cluster_bits() {
        assert_eq!(offset_bits(geo(16)), 54);
        assert_eq!(sector_bits(geo(16)), 8);
        assert_eq!(offset_bits(geo(9)), 61);
        assert_eq!(offset_bits(geo(21)), 49);
        assert_eq!(max_host_offset(geo(21)), (1 << 49) - 1);
        // Small clusters: the field is wider than 56 bits, the limit is not.
        assert_eq!(max_host_offset(geo(9)), (1 << 56) - 1);
        assert_eq!(max_additional_sectors(geo(9)), 1);
        assert_eq!(max_additional_sectors(geo(21)), 8191);
    }

    #[test]
    fn decodes_offset_and_sectors() {
        let g = geo(16);
        let entry = COMPRESSED_FLAG | (3 << 54) | 0x1_2345;
        let d = CompressedDescriptor::decode(entry, g, 0).unwrap();
        assert_eq!(d.host_offset, HostOffset(0x1_2345));
        assert_eq!(d.additional_sectors, 3);
        // 0x12345 is 0x145 bytes into its sector: 4 sectors minus that.
        assert_eq!(d.max_len(), 4 * 512 - 0x145);
        assert_eq!(d.host_end(), Some(HostOffset(0x1_2345 + 4 * 512 - 0x145)));
        assert_eq!(d.encode(g).unwrap(), entry);
    }

    #[test]
    fn from_range_counts_sectors_touched() {
        let g = geo(16);
        let d = CompressedDescriptor::from_range(HostOffset(1000), 24, g).unwrap();
        assert_eq!(d.additional_sectors, 0);
        let d = CompressedDescriptor::from_range(HostOffset(1000), 25, g).unwrap();
        assert_eq!(d.additional_sectors, 1);
        assert!(d.max_len() >= 25);
        let d = CompressedDescriptor::from_range(HostOffset(0xffff0), 0x20, g).unwrap();
        assert_eq!(d.host_clusters(g), Some((ClusterIndex(0xf), 2)));
    }

    #[test]
    fn copied_rejected() {
        let err = CompressedDescriptor::decode(COMPRESSED_FLAG | COPIED_FLAG | 0x200, geo(16), 24)
            .unwrap_err();
        assert_eq!(err.rule, rules::CMP_DESCRIPTOR);
        assert_eq!(err.offset, 24);
    }

    #[test]
    fn offset_bits_above_55_rejected() {
        // With 512-byte clusters the offset field reaches bit 60.
        let err = CompressedDescriptor::decode(COMPRESSED_FLAG | (1 << 57), geo(9), 0).unwrap_err();
        assert_eq!(err.rule, rules::CMP_DESCRIPTOR);
        assert!(matches!(err.kind, ErrorKind::ReservedSet { .. }));
    }

    #[test]
    fn not_compressed_rejected() {
        let err = CompressedDescriptor::decode(0x1_0000, geo(16), 0).unwrap_err();
        assert_eq!(err.rule, rules::CMP_DESCRIPTOR);
    }

    #[test]
    fn encode_range_checks() {
        let g = geo(21);
        let too_far = CompressedDescriptor {
            host_offset: HostOffset(1 << 49),
            additional_sectors: 0,
        };
        assert_eq!(too_far.encode(g).unwrap_err().rule, rules::CMP_DESCRIPTOR);
        let too_long = CompressedDescriptor {
            host_offset: HostOffset(0),
            additional_sectors: 8192,
        };
        assert_eq!(too_long.encode(g).unwrap_err().rule, rules::CMP_DESCRIPTOR);
        let g = geo(9);
        // Two sectors at most with 512-byte clusters.
        assert!(CompressedDescriptor::from_range(HostOffset(511), 513, g).is_ok());
        let err = CompressedDescriptor::from_range(HostOffset(511), 514, g).unwrap_err();
        assert_eq!(err.rule, rules::CMP_DESCRIPTOR);
        let err = CompressedDescriptor::from_range(HostOffset(0), 0, g).unwrap_err();
        assert_eq!(err.rule, rules::CMP_DESCRIPTOR);
        assert!(CompressedDescriptor::from_range(HostOffset(u64::MAX), 2, g).is_err());
    }
}
