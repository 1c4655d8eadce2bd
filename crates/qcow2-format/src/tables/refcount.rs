//! Refcount structures: the refcount table and the packed refcount blocks.
//!
//! A refcount table entry holds in bits 9-63 the cluster-aligned offset of a
//! refcount block (0 = not allocated, every refcount it covers is 0); bits 0-8
//! are reserved. A refcount block is one cluster of `2^refcount_order`-bit
//! entries. Entries of 8 bits or more are big-endian integers; narrower ones
//! are packed into bytes starting at the least significant bit, so entry `i`
//! of width `w` sits in byte `i*w/8` at bit `(i*w) % 8`.

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules::{self, RuleId};
use crate::tables::raw;
use crate::units::{ClusterGeometry, ClusterIndex, HostOffset};

/// Size of a refcount table entry in bytes.
pub const RC_TABLE_ENTRY_SIZE: usize = 8;
/// Reserved bits of a refcount table entry (0-8).
pub const RC_TABLE_RESERVED_MASK: u64 = 0x1ff;

const TABLE_RULE: RuleId = rules::RC_TABLE_ENTRY;
const BLOCK_RULE: RuleId = rules::RC_BLOCK;

/// One decoded refcount table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RefcountTableEntry {
    /// Offset of the refcount block, `None` when it is not allocated.
    pub block: Option<HostOffset>,
}

impl RefcountTableEntry {
    /// Decodes a raw entry found at `base_offset`.
    ///
    /// Enforces [`rules::RC_TABLE_ENTRY`]: reserved bits zero, offset cluster aligned.
    pub fn decode(raw: u64, geometry: ClusterGeometry, base_offset: u64) -> Result<Self> {
        let reserved = raw & RC_TABLE_RESERVED_MASK;
        if reserved != 0 {
            return Err(FormatError::new(
                TABLE_RULE,
                base_offset,
                ErrorKind::ReservedSet {
                    field: "refcount table entry",
                    value: reserved,
                },
            ));
        }
        if raw == 0 {
            return Ok(Self { block: None });
        }
        check_aligned(raw, geometry, base_offset)?;
        Ok(Self {
            block: Some(HostOffset(raw)),
        })
    }

    /// Encodes the entry with the same checks (errors at offset 0).
    pub fn encode(self, geometry: ClusterGeometry) -> Result<u64> {
        let Some(block) = self.block else {
            return Ok(0);
        };
        let offset = block.get();
        if offset == 0 {
            return Err(FormatError::new(
                TABLE_RULE,
                0,
                ErrorKind::Malformed {
                    field: "refcount table entry",
                    reason: "a refcount block cannot be at offset 0 (0 means unallocated)".into(),
                },
            ));
        }
        check_aligned(offset, geometry, 0)?;
        Ok(offset)
    }
}

fn check_aligned(offset: u64, geometry: ClusterGeometry, base_offset: u64) -> Result<()> {
    if geometry.is_aligned(offset) {
        return Ok(());
    }
    Err(FormatError::new(
        TABLE_RULE,
        base_offset,
        ErrorKind::Misaligned {
            field: "refcount block offset",
            value: offset,
            alignment: geometry.cluster_size(),
        },
    ))
}

/// Decodes a whole refcount table (`refcount_table_clusters` clusters).
pub fn decode_table(
    buf: &[u8],
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<Vec<RefcountTableEntry>> {
    let entries = raw::u64_entries(buf, TABLE_RULE, "refcount table", base_offset)?;
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let pos = raw::at(base_offset, i * RC_TABLE_ENTRY_SIZE);
            RefcountTableEntry::decode(e.get(), geometry, pos)
        })
        .collect()
}

/// Decodes entry `index` of a refcount table held in `buf`.
pub fn decode_at(
    buf: &[u8],
    index: u64,
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<RefcountTableEntry> {
    let value = raw::u64_at(buf, index).ok_or_else(|| {
        let entries = (buf.len() / RC_TABLE_ENTRY_SIZE) as u64;
        raw::index_out_of_range(TABLE_RULE, base_offset, index, entries)
    })?;
    let pos = base_offset.saturating_add(index.saturating_mul(RC_TABLE_ENTRY_SIZE as u64));
    RefcountTableEntry::decode(value, geometry, pos)
}

/// Encodes a whole refcount table; errors carry the entry's position.
pub fn encode_table(entries: &[RefcountTableEntry], geometry: ClusterGeometry) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.len().saturating_mul(RC_TABLE_ENTRY_SIZE));
    for (i, entry) in entries.iter().enumerate() {
        let value = entry
            .encode(geometry)
            .map_err(|e| FormatError::new(e.rule, (i * RC_TABLE_ENTRY_SIZE) as u64, e.kind))?;
        out.extend_from_slice(&value.to_be_bytes());
    }
    Ok(out)
}

/// The width of refcount block entries: `refcount_bits = 1 << order`, order 0..=6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefcountOrder(u32);

impl RefcountOrder {
    /// Largest order the spec allows (64-bit refcounts).
    pub const MAX: u32 = 6;
    /// The order of every version 2 image and QEMU's default (16-bit refcounts).
    pub const DEFAULT: Self = Self(4);

    /// The order, or `None` when it exceeds [`RefcountOrder::MAX`].
    pub const fn new(order: u32) -> Option<Self> {
        if order <= Self::MAX {
            Some(Self(order))
        } else {
            None
        }
    }

    /// The header's `refcount_order`.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Width of one entry in bits.
    pub const fn bits(self) -> u32 {
        1 << self.0
    }

    /// Largest refcount an entry can hold.
    pub const fn max_refcount(self) -> u64 {
        u64::MAX >> (64 - self.bits())
    }

    /// Entries in one refcount block (cluster_size * 8 / refcount_bits).
    pub const fn entries_per_block(self, geometry: ClusterGeometry) -> u64 {
        (geometry.cluster_size() * 8) >> self.0
    }

    /// (refcount table index, index in that block) of a host cluster.
    pub const fn locate(self, cluster: ClusterIndex, geometry: ClusterGeometry) -> (u64, u64) {
        let per_block = self.entries_per_block(geometry);
        (cluster.get() / per_block, cluster.get() % per_block)
    }
}

/// A refcount block in a byte buffer, with bounds-checked entry access.
///
/// Works on any `AsRef<[u8]>` (a borrowed slice, a `Vec`, a cache page);
/// [`RefcountBlock::set`] needs `AsMut<[u8]>` too.
#[derive(Clone, Debug)]
pub struct RefcountBlock<B> {
    buf: B,
    order: RefcountOrder,
    base_offset: u64,
}

impl<B: AsRef<[u8]>> RefcountBlock<B> {
    /// Views `buf` as a refcount block; `base_offset` is where it is in the file.
    pub fn new(buf: B, order: RefcountOrder, base_offset: u64) -> Self {
        Self {
            buf,
            order,
            base_offset,
        }
    }

    /// Views `buf` as a refcount block that must be exactly one cluster
    /// ([`rules::RC_BLOCK`] otherwise).
    pub fn for_cluster(
        buf: B,
        order: RefcountOrder,
        geometry: ClusterGeometry,
        base_offset: u64,
    ) -> Result<Self> {
        let len = buf.as_ref().len() as u64;
        if len != geometry.cluster_size() {
            return Err(FormatError::new(
                BLOCK_RULE,
                base_offset,
                ErrorKind::Mismatch {
                    field: "refcount block length",
                    value: len,
                    expected: geometry.cluster_size(),
                },
            ));
        }
        Ok(Self::new(buf, order, base_offset))
    }

    /// The entry width.
    pub fn order(&self) -> RefcountOrder {
        self.order
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        (self.buf.as_ref().len() as u64).saturating_mul(8) >> self.order.0
    }

    /// Whether the block holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> B {
        self.buf
    }

    /// The refcount of entry `index` ([`rules::RC_BLOCK`] when out of bounds).
    pub fn get(&self, index: u64) -> Result<u64> {
        let (byte, shift) = self.position(index)?;
        let buf = self.buf.as_ref();
        let width = self.order.bits();
        if width < 8 {
            let b = buf.get(byte).copied().unwrap_or(0);
            return Ok(u64::from(b >> shift) & self.order.max_refcount());
        }
        let bytes = buf.get(byte..byte + (width / 8) as usize).unwrap_or(&[]);
        Ok(bytes.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    /// All refcounts in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or(0))
    }

    /// Byte index and bit shift of entry `index`, checked against the buffer.
    fn position(&self, index: u64) -> Result<(usize, u32)> {
        let len = self.len();
        if index >= len {
            return Err(FormatError::new(
                BLOCK_RULE,
                self.base_offset,
                ErrorKind::OutOfRange {
                    field: "refcount block index",
                    value: index,
                    min: 0,
                    max: len.saturating_sub(1),
                },
            ));
        }
        // index < len keeps this below buf.len() * 8.
        let bit = index << self.order.0;
        Ok(((bit / 8) as usize, (bit % 8) as u32))
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> RefcountBlock<B> {
    /// Sets entry `index` to `value` ([`rules::RC_BLOCK`] when out of bounds
    /// or wider than the entry).
    pub fn set(&mut self, index: u64, value: u64) -> Result<()> {
        let (byte, shift) = self.position(index)?;
        let max = self.order.max_refcount();
        if value > max {
            return Err(FormatError::new(
                BLOCK_RULE,
                raw::at(self.base_offset, byte),
                ErrorKind::OutOfRange {
                    field: "refcount",
                    value,
                    min: 0,
                    max,
                },
            ));
        }
        let width = self.order.bits();
        let buf = self.buf.as_mut();
        if width < 8 {
            if let Some(b) = buf.get_mut(byte) {
                let mask = (max as u8) << shift;
                *b = (*b & !mask) | ((value as u8) << shift);
            }
            return Ok(());
        }
        let n = (width / 8) as usize;
        if let Some(bytes) = buf.get_mut(byte..byte + n) {
            bytes.copy_from_slice(&value.to_be_bytes()[8 - n..]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bits: u32) -> ClusterGeometry {
        ClusterGeometry::new(bits).unwrap()
    }

    #[test]
    fn table_entry_decode_encode() {
        let g = geo(16);
        assert_eq!(RefcountTableEntry::decode(0, g, 0).unwrap().block, None);
        let e = RefcountTableEntry::decode(0x1_0000_0000_0000, g, 0).unwrap();
        assert_eq!(e.block, Some(HostOffset(0x1_0000_0000_0000)));
        // Unlike L1/L2 entries, bits 56-63 are part of the offset.
        assert!(RefcountTableEntry::decode(1 << 63, g, 0).is_ok());
        assert_eq!(e.encode(g).unwrap(), 0x1_0000_0000_0000);
    }

    #[test]
    fn table_entry_reserved_bits_rejected() {
        let err = RefcountTableEntry::decode(0x1_0001, geo(16), 0x28).unwrap_err();
        assert_eq!(err.rule, rules::RC_TABLE_ENTRY);
        assert_eq!(err.offset, 0x28);
        assert!(matches!(err.kind, ErrorKind::ReservedSet { .. }));
    }

    #[test]
    fn table_entry_misaligned_rejected() {
        let err = RefcountTableEntry::decode(0x1_0200, geo(16), 0).unwrap_err();
        assert_eq!(err.rule, rules::RC_TABLE_ENTRY);
        assert!(matches!(err.kind, ErrorKind::Misaligned { .. }));
        let bad = RefcountTableEntry {
            block: Some(HostOffset(0)),
        };
        assert_eq!(bad.encode(geo(16)).unwrap_err().rule, rules::RC_TABLE_ENTRY);
    }

    #[test]
    fn table_positions() {
        let g = geo(9);
        let mut buf = encode_table(&[RefcountTableEntry::default(); 4], g).unwrap();
        buf[31] = 0x10;
        assert_eq!(decode_table(&buf, g, 0x200).unwrap_err().offset, 0x218);
        assert!(decode_at(&buf, 2, g, 0).is_ok());
        assert!(decode_at(&buf, 4, g, 0).is_err());
        assert!(decode_table(&buf[..12], g, 0).is_err());
    }

    #[test]
    fn order_arithmetic() {
        assert!(RefcountOrder::new(7).is_none());
        let g = geo(16);
        let o = RefcountOrder::DEFAULT;
        assert_eq!(o.bits(), 16);
        assert_eq!(o.max_refcount(), 0xffff);
        assert_eq!(o.entries_per_block(g), 32768);
        assert_eq!(o.locate(ClusterIndex(32769), g), (1, 1));
        let max: Vec<u64> = (0..=6)
            .map(|o| RefcountOrder::new(o).unwrap().max_refcount())
            .collect();
        assert_eq!(max, [1, 3, 15, 255, 65535, u32::MAX as u64, u64::MAX]);
    }

    #[test]
    fn sub_byte_entries_pack_from_lsb() {
        let mut buf = [0u8; 2];
        let mut block = RefcountBlock::new(&mut buf[..], RefcountOrder::new(1).unwrap(), 0);
        block.set(0, 1).unwrap();
        block.set(3, 2).unwrap();
        block.set(4, 3).unwrap();
        assert_eq!(block.get(3).unwrap(), 2);
        assert_eq!(buf, [0b1000_0001, 0b0000_0011]);
        let mut buf = [0u8; 1];
        let mut block = RefcountBlock::new(&mut buf[..], RefcountOrder::new(0).unwrap(), 0);
        block.set(7, 1).unwrap();
        assert_eq!(buf, [0x80]);
        let mut buf = [0u8; 1];
        let mut block = RefcountBlock::new(&mut buf[..], RefcountOrder::new(2).unwrap(), 0);
        block.set(1, 0xa).unwrap();
        block.set(0, 0x5).unwrap();
        assert_eq!(buf, [0xa5]);
    }

    #[test]
    fn wide_entries_are_big_endian() {
        let mut buf = vec![0u8; 16];
        let mut block = RefcountBlock::new(&mut buf, RefcountOrder::new(5).unwrap(), 0);
        block.set(1, 0x0102_0304).unwrap();
        assert_eq!(block.get(1).unwrap(), 0x0102_0304);
        assert_eq!(block.len(), 4);
        assert_eq!(&buf[4..8], &[1, 2, 3, 4]);
        let block = RefcountBlock::new(&buf[..], RefcountOrder::new(6).unwrap(), 0);
        assert_eq!(block.get(0).unwrap(), 0x0102_0304);
        assert_eq!(block.iter().collect::<Vec<_>>(), [0x0102_0304, 0]);
    }

    #[test]
    fn block_bounds_and_width_rejected() {
        let mut buf = vec![0u8; 8];
        let mut block = RefcountBlock::new(&mut buf, RefcountOrder::DEFAULT, 0x1000);
        let err = block.get(4).unwrap_err();
        assert_eq!(err.rule, rules::RC_BLOCK);
        let err = block.set(1, 0x1_0000).unwrap_err();
        assert_eq!(err.rule, rules::RC_BLOCK);
        assert_eq!(err.offset, 0x1002);
        assert!(block.get(u64::MAX).is_err());
        let err =
            RefcountBlock::for_cluster(&buf[..], RefcountOrder::DEFAULT, geo(9), 0).unwrap_err();
        assert_eq!(err.rule, rules::RC_BLOCK);
    }
}
