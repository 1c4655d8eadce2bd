//! Extended (16-byte) L2 entries: a standard descriptor plus a subcluster bitmap.
//!
//! Images with incompatible bit 4 split each standard cluster into 32 equal
//! subclusters. The second 8 bytes hold bits 0-31 "subcluster x is allocated"
//! and bits 32-63 "subcluster x-32 reads as zeros". The descriptor's zero flag
//! has no meaning here: it is ignored on read and written as 0. Rules ([`rules::L2_EXTENDED`]): no subcluster is both
//! allocated and zero, a cluster without a host offset has no allocated
//! subclusters, and a compressed cluster's bitmap is all zero.

use zerocopy::byteorder::big_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules;
use crate::tables::compressed::CompressedDescriptor;
use crate::tables::l2::{self, Descriptor, HostCluster, L2Context, ReadSource};
use crate::tables::raw;
use crate::units::{ClusterGeometry, GuestOffset, HostOffset};

/// Size of an extended L2 entry in bytes.
pub const EXTENDED_L2_ENTRY_SIZE: usize = 16;
/// Number of subclusters in a cluster.
pub const SUBCLUSTERS: u32 = 32;

/// The on-disk layout of one extended L2 entry.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct ExtendedL2EntryRaw {
    /// The standard cluster descriptor with flags (bits 62, 63).
    pub descriptor: U64,
    /// The subcluster allocation bitmap.
    pub bitmap: U64,
}

/// A standard entry seen as an extended one with a single unit: a data
/// cluster is one allocated unit, a zero cluster one zero unit (keeping a
/// preallocated host cluster), so code can handle both table kinds alike.
impl From<crate::tables::l2::L2Mapping> for ExtendedL2Mapping {
    fn from(m: crate::tables::l2::L2Mapping) -> Self {
        use crate::tables::l2::L2Mapping;
        match m {
            L2Mapping::Unallocated => Self::Unallocated { zero: 0 },
            L2Mapping::Zero { preallocated: None } => Self::Unallocated { zero: 1 },
            L2Mapping::Zero {
                preallocated: Some(host),
            } => Self::Allocated {
                host,
                allocated: 0,
                zero: 1,
            },
            L2Mapping::Data(host) => Self::Allocated {
                host,
                allocated: 1,
                zero: 0,
            },
            L2Mapping::Compressed(d) => Self::Compressed(d),
        }
    }
}

/// One decoded extended L2 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ExtendedL2Mapping {
    /// No host cluster. Subclusters with their bit in `zero` read as zeros,
    /// the others go to the backing file.
    Unallocated {
        /// Bit x set: subcluster x reads as zeros.
        zero: u32,
    },
    /// A host cluster backs the subclusters set in `allocated`; those set in
    /// `zero` read as zeros; the others go to the backing file.
    Allocated {
        /// The host cluster.
        host: HostCluster,
        /// Bit x set: subcluster x holds data in the host cluster.
        allocated: u32,
        /// Bit x set: subcluster x reads as zeros. Disjoint from `allocated`.
        zero: u32,
    },
    /// The whole cluster is compressed; it has no subclusters.
    Compressed(CompressedDescriptor),
}

impl Default for ExtendedL2Mapping {
    fn default() -> Self {
        Self::Unallocated { zero: 0 }
    }
}

/// Size of one subcluster in bytes.
pub const fn subcluster_size(geometry: ClusterGeometry) -> u64 {
    geometry.cluster_size() / SUBCLUSTERS as u64
}

fn extended_error(base_offset: u64, reason: &str) -> FormatError {
    FormatError::new(
        rules::L2_EXTENDED,
        base_offset,
        ErrorKind::Malformed {
            field: "subcluster bitmap",
            reason: reason.into(),
        },
    )
}

fn check_bitmap(allocated: u32, zero: u32, has_host: bool, bitmap_offset: u64) -> Result<()> {
    if !has_host && allocated != 0 {
        return Err(extended_error(
            bitmap_offset,
            "subclusters are allocated but the cluster has no host offset",
        ));
    }
    if allocated & zero != 0 {
        return Err(extended_error(
            bitmap_offset,
            "subclusters are both allocated and zero",
        ));
    }
    Ok(())
}

impl ExtendedL2Mapping {
    /// Decodes an extended entry (descriptor and bitmap) found at `base_offset`.
    ///
    /// Enforces the descriptor rules of [`L2Mapping`](super::l2::L2Mapping)
    /// (except that bit 0 is ignored) and [`rules::L2_EXTENDED`], reported at
    /// `base_offset + 8`.
    pub fn decode(descriptor: u64, bitmap: u64, ctx: &L2Context, base_offset: u64) -> Result<Self> {
        let bitmap_offset = base_offset.saturating_add(8);
        match l2::decode_descriptor(descriptor, ctx, true, base_offset)? {
            Descriptor::Compressed(d) => {
                if bitmap != 0 {
                    return Err(FormatError::new(
                        rules::L2_EXTENDED,
                        bitmap_offset,
                        ErrorKind::ReservedSet {
                            field: "compressed cluster subcluster bitmap",
                            value: bitmap,
                        },
                    ));
                }
                Ok(Self::Compressed(d))
            }
            Descriptor::Standard { host, .. } => {
                let allocated = bitmap as u32;
                let zero = (bitmap >> 32) as u32;
                check_bitmap(allocated, zero, host.is_some(), bitmap_offset)?;
                Ok(match host {
                    None => Self::Unallocated { zero },
                    Some(host) => Self::Allocated {
                        host,
                        allocated,
                        zero,
                    },
                })
            }
        }
    }

    /// Decodes the 16-byte on-disk layout.
    pub fn decode_raw(raw: &ExtendedL2EntryRaw, ctx: &L2Context, base_offset: u64) -> Result<Self> {
        Self::decode(raw.descriptor.get(), raw.bitmap.get(), ctx, base_offset)
    }

    /// Encodes to (descriptor, bitmap) with the same checks as
    /// [`ExtendedL2Mapping::decode`] (errors at offset 0 or 8).
    pub fn encode(self, ctx: &L2Context) -> Result<(u64, u64)> {
        match self {
            Self::Compressed(d) => Ok((l2::encode_compressed(d, ctx)?, 0)),
            Self::Unallocated { zero } => {
                let descriptor = l2::encode_descriptor(None, false, ctx)?;
                Ok((descriptor, u64::from(zero) << 32))
            }
            Self::Allocated {
                host,
                allocated,
                zero,
            } => {
                let descriptor = l2::encode_descriptor(Some(host), false, ctx)?;
                check_bitmap(allocated, zero, true, 8)?;
                Ok((descriptor, u64::from(allocated) | u64::from(zero) << 32))
            }
        }
    }

    /// Encodes to the 16-byte on-disk layout.
    pub fn encode_raw(self, ctx: &L2Context) -> Result<ExtendedL2EntryRaw> {
        let (descriptor, bitmap) = self.encode(ctx)?;
        Ok(ExtendedL2EntryRaw {
            descriptor: U64::new(descriptor),
            bitmap: U64::new(bitmap),
        })
    }

    /// How to read subcluster `index` (0..32), or `None` past the last one.
    pub fn subcluster(self, index: u32, geometry: ClusterGeometry) -> Option<ReadSource> {
        let bit = 1u32.checked_shl(index)?;
        Some(match self {
            Self::Compressed(d) => ReadSource::Compressed(d),
            Self::Unallocated { zero } if zero & bit != 0 => ReadSource::Zero,
            Self::Unallocated { .. } => ReadSource::Backing,
            Self::Allocated {
                host, allocated, ..
            } if allocated & bit != 0 => {
                let offset = u64::from(index) * subcluster_size(geometry);
                ReadSource::Data(HostOffset(host.offset.get().saturating_add(offset)))
            }
            Self::Allocated { zero, .. } if zero & bit != 0 => ReadSource::Zero,
            Self::Allocated { .. } => ReadSource::Backing,
        })
    }

    /// The run of subclusters starting at `first` that read the same way:
    /// its source (for data, the host offset of subcluster `first`) and its
    /// length in subclusters. A compressed cluster is one run of 32. `None`
    /// when `first` is 32 or more.
    pub fn run_at(self, first: u32, geometry: ClusterGeometry) -> Option<(ReadSource, u32)> {
        let source = self.subcluster(first, geometry)?;
        let same_kind =
            |s: ReadSource| core::mem::discriminant(&s) == core::mem::discriminant(&source);
        let len = (first..SUBCLUSTERS)
            .take_while(|&i| self.subcluster(i, geometry).is_some_and(same_kind))
            .count() as u32;
        Some((source, len))
    }

    /// With an external data file, checks that the host offset equals the
    /// start of guest cluster `guest` ([`rules::L2_ENTRY`]); a no-op otherwise.
    pub fn check_guest_identity(
        self,
        guest: GuestOffset,
        ctx: &L2Context,
        base_offset: u64,
    ) -> Result<()> {
        l2::check_guest_identity(self.host_cluster(), guest, ctx, base_offset)
    }

    /// The host cluster this entry references (data or preallocation), for
    /// refcounting; compressed data is located by its descriptor instead.
    pub fn host_cluster(self) -> Option<HostCluster> {
        match self {
            Self::Allocated { host, .. } => Some(host),
            Self::Unallocated { .. } | Self::Compressed(_) => None,
        }
    }
}

fn raw_entries(buf: &[u8], base_offset: u64) -> Result<&[ExtendedL2EntryRaw]> {
    <[ExtendedL2EntryRaw]>::ref_from_bytes(buf).map_err(|_| {
        let whole = buf.len() - buf.len() % EXTENDED_L2_ENTRY_SIZE;
        raw::truncated(
            rules::L2_EXTENDED,
            base_offset,
            whole,
            "extended L2 entry",
            EXTENDED_L2_ENTRY_SIZE,
            buf.len() % EXTENDED_L2_ENTRY_SIZE,
        )
    })
}

/// Decodes a whole extended L2 table (one cluster of 16-byte entries).
pub fn decode_table(
    buf: &[u8],
    ctx: &L2Context,
    base_offset: u64,
) -> Result<Vec<ExtendedL2Mapping>> {
    raw_entries(buf, base_offset)?
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let pos = raw::at(base_offset, i * EXTENDED_L2_ENTRY_SIZE);
            ExtendedL2Mapping::decode_raw(e, ctx, pos)
        })
        .collect()
}

/// Decodes entry `index` of an extended L2 table held in `buf`.
pub fn decode_at(
    buf: &[u8],
    index: u64,
    ctx: &L2Context,
    base_offset: u64,
) -> Result<ExtendedL2Mapping> {
    let entries = raw_entries(buf, base_offset)?;
    let entry = usize::try_from(index)
        .ok()
        .and_then(|i| entries.get(i))
        .ok_or_else(|| {
            raw::index_out_of_range(rules::L2_EXTENDED, base_offset, index, entries.len() as u64)
        })?;
    let pos = base_offset.saturating_add(index.saturating_mul(EXTENDED_L2_ENTRY_SIZE as u64));
    ExtendedL2Mapping::decode_raw(entry, ctx, pos)
}

/// Encodes `mapping` into entry `index` of an extended L2 table held in `buf`.
pub fn encode_at(
    buf: &mut [u8],
    index: u64,
    mapping: ExtendedL2Mapping,
    ctx: &L2Context,
) -> Result<()> {
    let pos = index.saturating_mul(EXTENDED_L2_ENTRY_SIZE as u64);
    let value = mapping
        .encode_raw(ctx)
        .map_err(|e| FormatError::new(e.rule, pos.saturating_add(e.offset), e.kind))?;
    let count = (buf.len() / EXTENDED_L2_ENTRY_SIZE) as u64;
    let slot = usize::try_from(pos)
        .ok()
        .and_then(|start| buf.get_mut(start..start.checked_add(EXTENDED_L2_ENTRY_SIZE)?))
        .ok_or_else(|| raw::index_out_of_range(rules::L2_EXTENDED, 0, index, count))?;
    slot.copy_from_slice(value.as_bytes());
    Ok(())
}

/// Encodes a whole extended L2 table; errors carry the position in the output.
pub fn encode_table(entries: &[ExtendedL2Mapping], ctx: &L2Context) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.len().saturating_mul(EXTENDED_L2_ENTRY_SIZE));
    for (i, entry) in entries.iter().enumerate() {
        let pos = (i * EXTENDED_L2_ENTRY_SIZE) as u64;
        let value = entry
            .encode_raw(ctx)
            .map_err(|e| FormatError::new(e.rule, pos + e.offset, e.kind))?;
        out.extend_from_slice(value.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::l2::{L2_COMPRESSED, L2_COPIED};

    fn ctx() -> L2Context {
        L2Context {
            geometry: ClusterGeometry::new(16).unwrap(),
            version: 3,
            external_data_file: false,
        }
    }

    #[test]
    fn decodes_allocated_with_mixed_subclusters() {
        let c = ctx();
        let bitmap = 0b0011 | (0b0100 << 32);
        let m = ExtendedL2Mapping::decode(L2_COPIED | 0x4_0000, bitmap, &c, 0).unwrap();
        let g = c.geometry;
        assert_eq!(
            m.subcluster(0, g),
            Some(ReadSource::Data(HostOffset(0x4_0000)))
        );
        assert_eq!(
            m.subcluster(1, g),
            Some(ReadSource::Data(HostOffset(0x4_0800)))
        );
        assert_eq!(m.subcluster(2, g), Some(ReadSource::Zero));
        assert_eq!(m.subcluster(3, g), Some(ReadSource::Backing));
        assert_eq!(m.subcluster(32, g), None);
        assert_eq!(
            m.run_at(0, g),
            Some((ReadSource::Data(HostOffset(0x4_0000)), 2))
        );
        assert_eq!(m.run_at(3, g), Some((ReadSource::Backing, 29)));
        assert_eq!(m.encode(&c).unwrap(), (L2_COPIED | 0x4_0000, bitmap));
    }

    #[test]
    fn unallocated_cluster_may_have_zero_subclusters() {
        let c = ctx();
        let m = ExtendedL2Mapping::decode(0, 0xffff_ffff << 32, &c, 0).unwrap();
        assert_eq!(m, ExtendedL2Mapping::Unallocated { zero: u32::MAX });
        assert_eq!(m.run_at(0, c.geometry), Some((ReadSource::Zero, 32)));
    }

    #[test]
    fn allocated_and_zero_rejected() {
        let err = ExtendedL2Mapping::decode(0x4_0000, 1 | (1 << 32), &ctx(), 0x20).unwrap_err();
        assert_eq!(err.rule, rules::L2_EXTENDED);
        assert_eq!(err.offset, 0x28);
        let bad = ExtendedL2Mapping::Allocated {
            host: HostCluster {
                offset: HostOffset(0x4_0000),
                copied: false,
            },
            allocated: 1,
            zero: 1,
        };
        assert_eq!(bad.encode(&ctx()).unwrap_err().rule, rules::L2_EXTENDED);
    }

    #[test]
    fn allocated_subclusters_need_host_offset() {
        let err = ExtendedL2Mapping::decode(0, 1 << 31, &ctx(), 0).unwrap_err();
        assert_eq!(err.rule, rules::L2_EXTENDED);
    }

    #[test]
    fn compressed_bitmap_must_be_zero() {
        let err =
            ExtendedL2Mapping::decode(L2_COMPRESSED | 0x1000, 1 << 40, &ctx(), 0).unwrap_err();
        assert_eq!(err.rule, rules::L2_EXTENDED);
        let ok = ExtendedL2Mapping::decode(L2_COMPRESSED | 0x1000, 0, &ctx(), 0).unwrap();
        assert_eq!(ok.run_at(5, ctx().geometry).map(|r| r.1), Some(27));
    }

    #[test]
    fn zero_flag_ignored_in_extended_entries() {
        let m = ExtendedL2Mapping::decode(0x4_0001, 1, &ctx(), 0).unwrap();
        assert_eq!(
            m.subcluster(0, ctx().geometry),
            Some(ReadSource::Data(HostOffset(0x4_0000)))
        );
        assert_eq!(m.subcluster(1, ctx().geometry), Some(ReadSource::Backing));
        assert_eq!(m.encode(&ctx()).unwrap(), (0x4_0000, 1));
        // Even in a version 2 context, where it would be an error in a standard entry.
        let v2 = L2Context {
            version: 2,
            ..ctx()
        };
        assert!(ExtendedL2Mapping::decode(1, 0, &v2, 0).is_ok());
    }

    #[test]
    fn table_access() {
        let c = ctx();
        let mut buf = vec![0u8; 64];
        let m = ExtendedL2Mapping::Unallocated { zero: 7 };
        encode_at(&mut buf, 3, m, &c).unwrap();
        assert_eq!(decode_at(&buf, 3, &c, 0).unwrap(), m);
        assert!(decode_at(&buf, 4, &c, 0).is_err());
        assert!(encode_at(&mut buf, 4, m, &c).is_err());
        let table = decode_table(&buf, &c, 0).unwrap();
        assert_eq!(encode_table(&table, &c).unwrap(), buf);
        buf[16 + 15] = 1; // entry 1: allocated subcluster without host offset
        assert_eq!(decode_table(&buf, &c, 0x1000).unwrap_err().offset, 0x1018);
        assert!(decode_table(&buf[..40], &c, 0).is_err());
    }
}
