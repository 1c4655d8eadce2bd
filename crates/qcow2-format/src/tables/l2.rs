//! Standard (8-byte) L2 table entries: how one guest cluster is stored.
//!
//! Bit 63 is COPIED, bit 62 selects a compressed descriptor (see
//! [`compressed`](super::compressed)); otherwise bits 9-55 hold the
//! cluster-aligned host offset, bit 0 the zero flag (version 3 only; with
//! extended entries it has no meaning, is ignored on read and written as 0),
//! and bits 1-8 and 56-61 are reserved. A zero offset
//! with COPIED clear means "unallocated"; a zero offset with COPIED set is host
//! offset 0, which only an external data file can have.
//!
//! Extended entries reuse this descriptor; see [`l2_extended`](super::l2_extended).

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules;
use crate::tables::compressed::{CompressedDescriptor, COMPRESSED_FLAG};
use crate::tables::raw;
use crate::units::{ClusterGeometry, GuestOffset, HostOffset};

/// Size of a standard L2 entry in bytes.
pub const L2_ENTRY_SIZE: usize = 8;
/// Bit 63: the cluster's refcount is exactly one (writes need no COW).
pub const L2_COPIED: u64 = 1 << 63;
/// Bit 62: the entry is a compressed cluster descriptor.
pub const L2_COMPRESSED: u64 = COMPRESSED_FLAG;
/// Bit 0 of a standard descriptor: the cluster reads as zeros.
pub const L2_ZERO: u64 = 1;
/// Bits 9-55 of a standard descriptor: the host cluster offset.
pub const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of a standard descriptor: 1-8 and 56-61.
pub const L2_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;

/// What decoding an L2 entry depends on, taken from the image header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Context {
    /// Cluster size: host offsets must be aligned to it, and it splits
    /// compressed descriptors.
    pub geometry: ClusterGeometry,
    /// Header version (2 or 3); the zero flag needs 3.
    pub version: u32,
    /// Incompatible bit 2 in QEMU's meaning: data clusters live in an external
    /// file, may sit at host offset 0, and cannot be compressed.
    pub external_data_file: bool,
}

/// A host cluster an L2 entry points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HostCluster {
    /// Cluster-aligned offset in the image (or external data) file.
    pub offset: HostOffset,
    /// COPIED: the cluster's refcount is exactly one. Accurate only in tables
    /// reachable from the active L1 table.
    pub copied: bool,
}

/// One decoded standard L2 entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum L2Mapping {
    /// Not allocated in this image: reads go to the backing file, or read as
    /// zeros without one.
    #[default]
    Unallocated,
    /// Reads as zeros (version 3). A preallocated host cluster may be kept for
    /// later writes but is never read.
    Zero {
        /// The host cluster reserved for this guest cluster, if any.
        preallocated: Option<HostCluster>,
    },
    /// Data stored uncompressed in a host cluster.
    Data(HostCluster),
    /// Data stored compressed; the descriptor locates it.
    Compressed(CompressedDescriptor),
}

/// Where the bytes of a guest cluster (or subcluster) come from: the step an
/// engine turns into I/O when it builds a read plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadSource {
    /// Read from the backing file, or zeros when there is none (or it is
    /// shorter).
    Backing,
    /// Read as zeros without touching any file.
    Zero,
    /// Read plain data starting at this host offset (image file, or the
    /// external data file when the image has one).
    Data(HostOffset),
    /// Decompress the whole cluster from this descriptor.
    Compressed(CompressedDescriptor),
}

/// The standard descriptor part of an entry, shared by standard and extended entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Descriptor {
    Compressed(CompressedDescriptor),
    Standard {
        host: Option<HostCluster>,
        zero: bool,
    },
}

/// Decodes the first 8 bytes of an L2 entry (standard or extended).
///
/// `extended`: bit 0 is ignored, as zeros are in the subcluster bitmap.
pub(crate) fn decode_descriptor(
    raw: u64,
    ctx: &L2Context,
    extended: bool,
    base_offset: u64,
) -> Result<Descriptor> {
    if raw & L2_COMPRESSED != 0 {
        if ctx.external_data_file {
            return Err(compressed_with_data_file(base_offset));
        }
        return CompressedDescriptor::decode(raw, ctx.geometry, base_offset)
            .map(Descriptor::Compressed);
    }
    let reserved = raw & L2_RESERVED_MASK;
    if reserved != 0 {
        return Err(FormatError::new(
            rules::L2_ENTRY,
            base_offset,
            ErrorKind::ReservedSet {
                field: "L2 entry",
                value: reserved,
            },
        ));
    }
    let zero = raw & L2_ZERO != 0 && !extended;
    if zero {
        check_zero_flag(ctx, base_offset)?;
    }
    let offset = raw & L2_OFFSET_MASK;
    let copied = raw & L2_COPIED != 0;
    let host = if offset == 0 && !copied {
        None
    } else {
        let host = HostCluster {
            offset: HostOffset(offset),
            copied,
        };
        check_host(host, ctx, base_offset)?;
        Some(host)
    };
    Ok(Descriptor::Standard { host, zero })
}

/// Encodes a standard descriptor, with the same checks as [`decode_descriptor`].
pub(crate) fn encode_descriptor(
    host: Option<HostCluster>,
    zero: bool,
    ctx: &L2Context,
) -> Result<u64> {
    let mut raw = 0;
    if zero {
        check_zero_flag(ctx, 0)?;
        raw |= L2_ZERO;
    }
    if let Some(host) = host {
        check_host(host, ctx, 0)?;
        raw |= host.offset.get() | if host.copied { L2_COPIED } else { 0 };
    }
    Ok(raw)
}

/// Encodes a compressed descriptor, refusing it with an external data file.
pub(crate) fn encode_compressed(d: CompressedDescriptor, ctx: &L2Context) -> Result<u64> {
    if ctx.external_data_file {
        return Err(compressed_with_data_file(0));
    }
    d.encode(ctx.geometry)
}

fn check_zero_flag(ctx: &L2Context, base_offset: u64) -> Result<()> {
    if ctx.version >= 3 {
        return Ok(());
    }
    Err(FormatError::new(
        rules::L2_ZERO_FLAG,
        base_offset,
        ErrorKind::Malformed {
            field: "L2 entry",
            reason: "the zero flag (bit 0) needs version 3".into(),
        },
    ))
}

/// With an external data file, a host cluster sits at its guest cluster's offset.
pub(crate) fn check_guest_identity(
    host: Option<HostCluster>,
    guest: GuestOffset,
    ctx: &L2Context,
    base_offset: u64,
) -> Result<()> {
    let Some(host) = host else { return Ok(()) };
    let expected = guest.get() - ctx.geometry.offset_in_cluster(guest.get());
    if !ctx.external_data_file || host.offset.get() == expected {
        return Ok(());
    }
    Err(FormatError::new(
        rules::L2_ENTRY,
        base_offset,
        ErrorKind::Mismatch {
            field: "external data file host offset",
            value: host.offset.get(),
            expected,
        },
    ))
}

/// Host offsets: representable, cluster aligned, and 0 only with an external data file.
fn check_host(host: HostCluster, ctx: &L2Context, base_offset: u64) -> Result<()> {
    let offset = host.offset.get();
    if offset > L2_OFFSET_MASK {
        return Err(FormatError::new(
            rules::L2_ENTRY,
            base_offset,
            ErrorKind::OutOfRange {
                field: "host cluster offset",
                value: offset,
                min: 0,
                max: L2_OFFSET_MASK,
            },
        ));
    }
    if !ctx.geometry.is_aligned(offset) {
        return Err(FormatError::new(
            rules::L2_ENTRY,
            base_offset,
            ErrorKind::Misaligned {
                field: "host cluster offset",
                value: offset,
                alignment: ctx.geometry.cluster_size(),
            },
        ));
    }
    if offset == 0 && !(host.copied && ctx.external_data_file) {
        return Err(FormatError::new(
            rules::L2_ENTRY,
            base_offset,
            ErrorKind::Malformed {
                field: "L2 entry",
                reason: "host offset 0 needs COPIED and an external data file".into(),
            },
        ));
    }
    Ok(())
}

fn compressed_with_data_file(base_offset: u64) -> FormatError {
    FormatError::new(
        rules::CMP_DESCRIPTOR,
        base_offset,
        ErrorKind::Conflict("compressed cluster in an image with an external data file".into()),
    )
}

impl L2Mapping {
    /// Decodes a raw standard entry found at `base_offset`.
    ///
    /// Enforces [`rules::L2_ENTRY`] (reserved bits, alignment, offset 0),
    /// [`rules::L2_ZERO_FLAG`] and, for compressed entries,
    /// [`rules::CMP_DESCRIPTOR`].
    pub fn decode(raw: u64, ctx: &L2Context, base_offset: u64) -> Result<Self> {
        Ok(match decode_descriptor(raw, ctx, false, base_offset)? {
            Descriptor::Compressed(d) => Self::Compressed(d),
            Descriptor::Standard { host, zero: true } => Self::Zero { preallocated: host },
            Descriptor::Standard {
                host: None,
                zero: false,
            } => Self::Unallocated,
            Descriptor::Standard {
                host: Some(host),
                zero: false,
            } => Self::Data(host),
        })
    }

    /// Encodes the entry with the same checks as [`L2Mapping::decode`] (errors at offset 0).
    pub fn encode(self, ctx: &L2Context) -> Result<u64> {
        match self {
            Self::Unallocated => Ok(0),
            Self::Zero { preallocated } => encode_descriptor(preallocated, true, ctx),
            Self::Data(host) => encode_descriptor(Some(host), false, ctx),
            Self::Compressed(d) => encode_compressed(d, ctx),
        }
    }

    /// With an external data file, checks that the host offset equals the
    /// start of guest cluster `guest` ([`rules::L2_ENTRY`]); a no-op otherwise.
    /// Entries do not know their guest offset, so callers walking the tables
    /// run this separately from [`L2Mapping::decode`].
    pub fn check_guest_identity(
        self,
        guest: GuestOffset,
        ctx: &L2Context,
        base_offset: u64,
    ) -> Result<()> {
        check_guest_identity(self.host_cluster(), guest, ctx, base_offset)
    }

    /// How to read this cluster.
    pub fn read_source(self) -> ReadSource {
        match self {
            Self::Unallocated => ReadSource::Backing,
            Self::Zero { .. } => ReadSource::Zero,
            Self::Data(host) => ReadSource::Data(host.offset),
            Self::Compressed(d) => ReadSource::Compressed(d),
        }
    }

    /// The whole host cluster this entry holds a reference to (data or
    /// preallocation), for refcounting. Compressed data is not cluster
    /// aligned; see [`CompressedDescriptor::host_clusters`].
    pub fn host_cluster(self) -> Option<HostCluster> {
        match self {
            Self::Data(host) => Some(host),
            Self::Zero { preallocated } => preallocated,
            Self::Unallocated | Self::Compressed(_) => None,
        }
    }
}

/// Decodes a whole standard L2 table (one cluster of 8-byte entries).
pub fn decode_table(buf: &[u8], ctx: &L2Context, base_offset: u64) -> Result<Vec<L2Mapping>> {
    let entries = raw::u64_entries(buf, rules::L2_ENTRY, "L2 table", base_offset)?;
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| L2Mapping::decode(e.get(), ctx, raw::at(base_offset, i * L2_ENTRY_SIZE)))
        .collect()
}

/// Decodes entry `index` of a standard L2 table held in `buf`.
pub fn decode_at(buf: &[u8], index: u64, ctx: &L2Context, base_offset: u64) -> Result<L2Mapping> {
    let value = raw::u64_at(buf, index).ok_or_else(|| {
        let entries = (buf.len() / L2_ENTRY_SIZE) as u64;
        raw::index_out_of_range(rules::L2_ENTRY, base_offset, index, entries)
    })?;
    let pos = base_offset.saturating_add(index.saturating_mul(L2_ENTRY_SIZE as u64));
    L2Mapping::decode(value, ctx, pos)
}

/// Encodes `mapping` into entry `index` of a standard L2 table held in `buf`.
pub fn encode_at(buf: &mut [u8], index: u64, mapping: L2Mapping, ctx: &L2Context) -> Result<()> {
    let pos = index.saturating_mul(L2_ENTRY_SIZE as u64);
    let value = mapping
        .encode(ctx)
        .map_err(|e| FormatError::new(e.rule, pos, e.kind))?;
    let entries = (buf.len() / L2_ENTRY_SIZE) as u64;
    raw::set_u64_at(buf, index, value)
        .ok_or_else(|| raw::index_out_of_range(rules::L2_ENTRY, 0, index, entries))
}

/// Encodes a whole standard L2 table; errors carry the entry's position.
pub fn encode_table(entries: &[L2Mapping], ctx: &L2Context) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.len().saturating_mul(L2_ENTRY_SIZE));
    for (i, entry) in entries.iter().enumerate() {
        let value = entry
            .encode(ctx)
            .map_err(|e| FormatError::new(e.rule, (i * L2_ENTRY_SIZE) as u64, e.kind))?;
        out.extend_from_slice(&value.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(version: u32, external_data_file: bool) -> L2Context {
        L2Context {
            geometry: ClusterGeometry::new(16).unwrap(),
            version,
            external_data_file,
        }
    }

    fn host(offset: u64, copied: bool) -> HostCluster {
        HostCluster {
            offset: HostOffset(offset),
            copied,
        }
    }

    #[test]
    fn decodes_each_kind() {
        let c = ctx(3, false);
        assert_eq!(L2Mapping::decode(0, &c, 0).unwrap(), L2Mapping::Unallocated);
        assert_eq!(
            L2Mapping::decode(1, &c, 0).unwrap(),
            L2Mapping::Zero { preallocated: None }
        );
        assert_eq!(
            L2Mapping::decode(L2_COPIED | 0x3_0001, &c, 0).unwrap(),
            L2Mapping::Zero {
                preallocated: Some(host(0x3_0000, true))
            }
        );
        let data = L2Mapping::decode(L2_COPIED | 0x7_0000, &c, 0).unwrap();
        assert_eq!(data, L2Mapping::Data(host(0x7_0000, true)));
        assert_eq!(data.read_source(), ReadSource::Data(HostOffset(0x7_0000)));
        assert_eq!(data.host_cluster(), Some(host(0x7_0000, true)));
        let comp = L2Mapping::decode(L2_COMPRESSED | 0x1234, &c, 0).unwrap();
        assert!(matches!(comp.read_source(), ReadSource::Compressed(_)));
        for raw in [0, 1, L2_COPIED | 0x3_0001, 0x7_0000, L2_COMPRESSED | 0x1234] {
            assert_eq!(
                L2Mapping::decode(raw, &c, 0).unwrap().encode(&c).unwrap(),
                raw
            );
        }
    }

    #[test]
    fn reserved_bits_rejected() {
        for bit in [1, 8, 56, 61] {
            let err = L2Mapping::decode(0x1_0000 | (1 << bit), &ctx(3, false), 16).unwrap_err();
            assert_eq!(err.rule, rules::L2_ENTRY);
            assert_eq!(err.offset, 16);
        }
    }

    #[test]
    fn misaligned_host_offset_rejected() {
        let err = L2Mapping::decode(0x1_0200, &ctx(3, false), 0).unwrap_err();
        assert_eq!(err.rule, rules::L2_ENTRY);
        assert!(matches!(err.kind, ErrorKind::Misaligned { .. }));
        let bad = L2Mapping::Data(host(1 << 56, false));
        assert_eq!(
            bad.encode(&ctx(3, false)).unwrap_err().rule,
            rules::L2_ENTRY
        );
    }

    #[test]
    fn host_offset_zero_needs_data_file() {
        let err = L2Mapping::decode(L2_COPIED, &ctx(3, false), 0).unwrap_err();
        assert_eq!(err.rule, rules::L2_ENTRY);
        let d = L2Mapping::decode(L2_COPIED, &ctx(3, true), 0).unwrap();
        assert_eq!(d, L2Mapping::Data(host(0, true)));
        // Offset 0 without COPIED is "unallocated", so it cannot be data.
        let bad = L2Mapping::Data(host(0, false));
        assert_eq!(bad.encode(&ctx(3, true)).unwrap_err().rule, rules::L2_ENTRY);
    }

    #[test]
    fn data_file_offsets_equal_guest_offsets() {
        let c = ctx(3, true);
        let m = L2Mapping::Data(host(0x3_0000, true));
        assert!(m.check_guest_identity(GuestOffset(0x3_1234), &c, 0).is_ok());
        let err = m
            .check_guest_identity(GuestOffset(0x4_0000), &c, 0x18)
            .unwrap_err();
        assert_eq!(err.rule, rules::L2_ENTRY);
        assert_eq!(err.offset, 0x18);
        // Without a data file, any mapping passes.
        assert!(m
            .check_guest_identity(GuestOffset(0x4_0000), &ctx(3, false), 0)
            .is_ok());
    }

    #[test]
    fn zero_flag_needs_v3() {
        let err = L2Mapping::decode(1, &ctx(2, false), 40).unwrap_err();
        assert_eq!(err.rule, rules::L2_ZERO_FLAG);
        assert_eq!(err.offset, 40);
        let zero = L2Mapping::Zero { preallocated: None };
        assert_eq!(
            zero.encode(&ctx(2, false)).unwrap_err().rule,
            rules::L2_ZERO_FLAG
        );
    }

    #[test]
    fn compressed_checks_use_cmp_rule() {
        let err = L2Mapping::decode(L2_COMPRESSED | L2_COPIED, &ctx(3, false), 0).unwrap_err();
        assert_eq!(err.rule, rules::CMP_DESCRIPTOR);
        let err = L2Mapping::decode(L2_COMPRESSED | 0x200, &ctx(3, true), 0).unwrap_err();
        assert_eq!(err.rule, rules::CMP_DESCRIPTOR);
    }

    #[test]
    fn table_access() {
        let c = ctx(3, false);
        let mut buf = vec![0u8; 64];
        encode_at(&mut buf, 2, L2Mapping::Data(host(0x5_0000, false)), &c).unwrap();
        assert_eq!(
            decode_at(&buf, 2, &c, 0).unwrap(),
            L2Mapping::Data(host(0x5_0000, false))
        );
        assert!(encode_at(&mut buf, 8, L2Mapping::Unallocated, &c).is_err());
        assert!(decode_at(&buf, u64::MAX, &c, 0).is_err());
        let table = decode_table(&buf, &c, 0).unwrap();
        assert_eq!(table.len(), 8);
        assert_eq!(encode_table(&table, &c).unwrap(), buf);
        buf[40] = 0x80; // entry 5: COPIED with offset 0
        assert_eq!(
            decode_table(&buf, &c, 0x10_0000).unwrap_err().offset,
            0x10_0028
        );
        let err = encode_table(
            &[L2Mapping::Unallocated, L2Mapping::Data(host(0, false))],
            &c,
        )
        .unwrap_err();
        assert_eq!(err.offset, 8);
    }
}
