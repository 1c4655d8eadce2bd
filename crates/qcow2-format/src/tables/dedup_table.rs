//! The deduplication table (seed extension `0xCD8E819B`).
//!
//! Two levels, indexed by physical (host) cluster. The level-1 table is an
//! array of big-endian u64: 0, or the cluster-aligned offset of a level-2
//! cluster. A level-2 cluster holds `n = floor(cluster_size / 40)` entries of
//! a 32-byte SHA-256 and a big-endian u64 guest offset; the bytes after the
//! last entry are zero. Host cluster `p` is at L1 index `p / n`, L2 index
//! `p % n`. An all-zero entry is empty; any other entry holds the (non-zero)
//! hash of the uncompressed cluster stored at `p` and the cluster-aligned
//! guest offset that first wrote it. Level-2 clusters lie below 2^56.

use zerocopy::byteorder::big_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules;
use crate::tables::raw;
use crate::units::{ClusterGeometry, ClusterIndex, GuestOffset, HostOffset};

/// Size of a dedup L1 entry in bytes.
pub const DEDUP_L1_ENTRY_SIZE: usize = 8;
/// Size of a dedup L2 entry in bytes (32-byte hash + u64 guest offset).
pub const DEDUP_ENTRY_SIZE: usize = 40;
/// Size of the SHA-256 hash in an entry.
pub const HASH_SIZE: usize = 32;
/// Dedup L2 clusters lie below 2^56, like every table L1/L2 entries point at.
pub const DEDUP_L1_OFFSET_LIMIT: u64 = 1 << 56;

/// The on-disk layout of one dedup L2 entry.
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
pub struct DedupEntryRaw {
    /// SHA-256 of the cluster's uncompressed content.
    pub hash: [u8; HASH_SIZE],
    /// Guest offset that first wrote this content.
    pub guest_offset: U64,
}

/// One non-empty dedup L2 entry. Empty entries are `None` in this module's APIs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DedupEntry {
    /// SHA-256 of the full uncompressed cluster stored at the host cluster.
    pub hash: [u8; HASH_SIZE],
    /// Cluster-aligned guest offset that first wrote this content.
    pub guest_offset: GuestOffset,
}

impl DedupEntry {
    /// Decodes an entry found at `base_offset`: `None` when all zero.
    ///
    /// Enforces [`rules::DD_ENTRY`]: a non-empty entry has a non-zero digest
    /// and a cluster-aligned guest offset.
    pub fn decode(
        raw: &DedupEntryRaw,
        geometry: ClusterGeometry,
        base_offset: u64,
    ) -> Result<Option<Self>> {
        if raw.as_bytes().iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let entry = Self {
            hash: raw.hash,
            guest_offset: GuestOffset(raw.guest_offset.get()),
        };
        entry.check(geometry, base_offset)?;
        Ok(Some(entry))
    }

    /// Encodes the entry with the same checks (errors at offset 0). An
    /// all-zero digest is refused: with offset 0 it would read back as empty,
    /// and with any other offset it is malformed.
    pub fn encode(self, geometry: ClusterGeometry) -> Result<DedupEntryRaw> {
        self.check(geometry, 0)?;
        Ok(DedupEntryRaw {
            hash: self.hash,
            guest_offset: U64::new(self.guest_offset.get()),
        })
    }

    fn check(self, geometry: ClusterGeometry, base_offset: u64) -> Result<()> {
        if self.hash == [0; HASH_SIZE] {
            return Err(FormatError::new(
                rules::DD_ENTRY,
                base_offset,
                ErrorKind::Malformed {
                    field: "dedup entry",
                    reason: "the digest is all zero but the entry is not empty".into(),
                },
            ));
        }
        let offset = self.guest_offset.get();
        if geometry.is_aligned(offset) {
            return Ok(());
        }
        Err(FormatError::new(
            rules::DD_ENTRY,
            base_offset.saturating_add(HASH_SIZE as u64),
            ErrorKind::Misaligned {
                field: "dedup guest offset",
                value: offset,
                alignment: geometry.cluster_size(),
            },
        ))
    }
}

/// Where the dedup entry of a host cluster lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DedupIndex {
    /// Index in the dedup L1 table.
    pub l1: u64,
    /// Index in the dedup L2 cluster.
    pub l2: u64,
}

impl DedupIndex {
    /// The position of host cluster `cluster`: (p / n, p % n).
    pub const fn of(cluster: ClusterIndex, geometry: ClusterGeometry) -> Self {
        let n = entries_per_l2(geometry);
        Self {
            l1: cluster.get() / n,
            l2: cluster.get() % n,
        }
    }
}

/// Entries in one dedup L2 cluster: floor(cluster_size / 40).
pub const fn entries_per_l2(geometry: ClusterGeometry) -> u64 {
    geometry.cluster_size() / DEDUP_ENTRY_SIZE as u64
}

/// Dedup L1 entries needed to cover `host_clusters` host clusters.
pub const fn l1_entries_for(host_clusters: u64, geometry: ClusterGeometry) -> u64 {
    host_clusters.div_ceil(entries_per_l2(geometry))
}

/// Decodes a dedup L1 entry found at `base_offset`: `None` when 0.
///
/// Enforces [`rules::DD_L1_ENTRY`]: a non-zero entry is cluster aligned and
/// below 2^56.
pub fn decode_l1_entry(
    raw: u64,
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<Option<HostOffset>> {
    if raw == 0 {
        return Ok(None);
    }
    if raw >= DEDUP_L1_OFFSET_LIMIT {
        return Err(FormatError::new(
            rules::DD_L1_ENTRY,
            base_offset,
            ErrorKind::ReservedSet {
                field: "dedup L1 entry bits 56-63",
                value: raw & !(DEDUP_L1_OFFSET_LIMIT - 1),
            },
        ));
    }
    if !geometry.is_aligned(raw) {
        return Err(FormatError::new(
            rules::DD_L1_ENTRY,
            base_offset,
            ErrorKind::Misaligned {
                field: "dedup L1 entry",
                value: raw,
                alignment: geometry.cluster_size(),
            },
        ));
    }
    Ok(Some(HostOffset(raw)))
}

/// Encodes a dedup L1 entry with the same checks (errors at offset 0).
pub fn encode_l1_entry(entry: Option<HostOffset>, geometry: ClusterGeometry) -> Result<u64> {
    let raw = entry.map_or(0, HostOffset::get);
    if entry.is_some() && raw == 0 {
        return Err(FormatError::new(
            rules::DD_L1_ENTRY,
            0,
            ErrorKind::Malformed {
                field: "dedup L1 entry",
                reason: "an L2 dedup cluster cannot be at offset 0 (0 means none)".into(),
            },
        ));
    }
    decode_l1_entry(raw, geometry, 0).map(|_| raw)
}

/// Decodes a whole dedup L1 table.
pub fn decode_l1_table(
    buf: &[u8],
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<Vec<Option<HostOffset>>> {
    let entries = raw::u64_entries(buf, rules::DD_L1_ENTRY, "dedup L1 table", base_offset)?;
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let pos = raw::at(base_offset, i * DEDUP_L1_ENTRY_SIZE);
            decode_l1_entry(e.get(), geometry, pos)
        })
        .collect()
}

/// Encodes a whole dedup L1 table; errors carry the entry's position.
pub fn encode_l1_table(
    entries: &[Option<HostOffset>],
    geometry: ClusterGeometry,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.len().saturating_mul(DEDUP_L1_ENTRY_SIZE));
    for (i, &entry) in entries.iter().enumerate() {
        let raw = encode_l1_entry(entry, geometry)
            .map_err(|e| FormatError::new(e.rule, (i * DEDUP_L1_ENTRY_SIZE) as u64, e.kind))?;
        out.extend_from_slice(&raw.to_be_bytes());
    }
    Ok(out)
}

/// A dedup L2 cluster is exactly one cluster ([`rules::DD_L2_LAYOUT`]).
fn check_l2_len(len: usize, geometry: ClusterGeometry, base_offset: u64) -> Result<()> {
    let size = geometry.cluster_size();
    if len as u64 != size {
        return Err(FormatError::new(
            rules::DD_L2_LAYOUT,
            base_offset,
            ErrorKind::Mismatch {
                field: "dedup L2 cluster length",
                value: len as u64,
                expected: size,
            },
        ));
    }
    Ok(())
}

/// The entries of a dedup L2 cluster and its tail; checks the length
/// ([`rules::DD_L2_LAYOUT`]).
fn split_l2(
    buf: &[u8],
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<(&[DedupEntryRaw], &[u8])> {
    check_l2_len(buf.len(), geometry, base_offset)?;
    let n = entries_per_l2(geometry) as usize;
    <[DedupEntryRaw]>::ref_from_prefix_with_elems(buf, n).map_err(|_| {
        raw::truncated(
            rules::DD_L2_LAYOUT,
            base_offset,
            0,
            "dedup L2 cluster",
            n * DEDUP_ENTRY_SIZE,
            buf.len(),
        )
    })
}

/// Decodes a whole dedup L2 cluster (`buf` is exactly one cluster).
///
/// Enforces [`rules::DD_L2_LAYOUT`] (length, zero tail) and
/// [`rules::DD_ENTRY`] for each entry.
pub fn decode_l2_cluster(
    buf: &[u8],
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<Vec<Option<DedupEntry>>> {
    let (entries, tail) = split_l2(buf, geometry, base_offset)?;
    let tail_start = entries.len() * DEDUP_ENTRY_SIZE;
    if let Some(i) = tail.iter().position(|&b| b != 0) {
        return Err(FormatError::new(
            rules::DD_L2_LAYOUT,
            raw::at(base_offset, tail_start + i),
            ErrorKind::ReservedSet {
                field: "dedup L2 cluster tail",
                value: tail.get(i).copied().unwrap_or(0).into(),
            },
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| DedupEntry::decode(e, geometry, raw::at(base_offset, i * DEDUP_ENTRY_SIZE)))
        .collect()
}

/// Decodes entry `index` of a dedup L2 cluster without checking the others.
pub fn decode_l2_entry_at(
    buf: &[u8],
    index: u64,
    geometry: ClusterGeometry,
    base_offset: u64,
) -> Result<Option<DedupEntry>> {
    let (entries, _) = split_l2(buf, geometry, base_offset)?;
    let entry = usize::try_from(index)
        .ok()
        .and_then(|i| entries.get(i))
        .ok_or_else(|| {
            raw::index_out_of_range(
                rules::DD_L2_LAYOUT,
                base_offset,
                index,
                entries.len() as u64,
            )
        })?;
    let pos = base_offset.saturating_add(index.saturating_mul(DEDUP_ENTRY_SIZE as u64));
    DedupEntry::decode(entry, geometry, pos)
}

/// Writes entry `index` of a dedup L2 cluster in place (`None` clears it).
pub fn encode_l2_entry_at(
    buf: &mut [u8],
    index: u64,
    entry: Option<DedupEntry>,
    geometry: ClusterGeometry,
) -> Result<()> {
    let pos = index.saturating_mul(DEDUP_ENTRY_SIZE as u64);
    let raw_entry = match entry {
        None => DedupEntryRaw::default(),
        Some(e) => e
            .encode(geometry)
            .map_err(|err| FormatError::new(err.rule, pos.saturating_add(err.offset), err.kind))?,
    };
    check_l2_len(buf.len(), geometry, 0)?;
    let n = entries_per_l2(geometry);
    if index >= n {
        return Err(raw::index_out_of_range(rules::DD_L2_LAYOUT, 0, index, n));
    }
    let start = pos as usize;
    if let Some(slot) = buf.get_mut(start..start + DEDUP_ENTRY_SIZE) {
        slot.copy_from_slice(raw_entry.as_bytes());
    }
    Ok(())
}

/// Encodes a dedup L2 cluster from up to `n` entries; missing entries and the
/// tail are zero.
pub fn encode_l2_cluster(
    entries: &[Option<DedupEntry>],
    geometry: ClusterGeometry,
) -> Result<Vec<u8>> {
    let n = entries_per_l2(geometry);
    if entries.len() as u64 > n {
        return Err(FormatError::new(
            rules::DD_L2_LAYOUT,
            0,
            ErrorKind::OutOfRange {
                field: "dedup L2 entries",
                value: entries.len() as u64,
                min: 0,
                max: n,
            },
        ));
    }
    let mut out = vec![0u8; geometry.cluster_size() as usize];
    for (i, &entry) in entries.iter().enumerate() {
        encode_l2_entry_at(&mut out, i as u64, entry, geometry)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(bits: u32) -> ClusterGeometry {
        ClusterGeometry::new(bits).unwrap()
    }

    fn entry(byte: u8, guest: u64) -> DedupEntry {
        DedupEntry {
            hash: [byte; HASH_SIZE],
            guest_offset: GuestOffset(guest),
        }
    }

    #[test]
    fn geometry() {
        assert_eq!(entries_per_l2(geo(16)), 1638);
        assert_eq!(entries_per_l2(geo(9)), 12);
        assert_eq!(
            DedupIndex::of(ClusterIndex(1638 * 3 + 5), geo(16)),
            DedupIndex { l1: 3, l2: 5 }
        );
        assert_eq!(l1_entries_for(1639, geo(16)), 2);
        assert_eq!(core::mem::size_of::<DedupEntryRaw>(), DEDUP_ENTRY_SIZE);
    }

    #[test]
    fn l2_round_trip() {
        let g = geo(9);
        let entries = vec![None, Some(entry(0xab, 0x200)), None, Some(entry(1, 0))];
        let buf = encode_l2_cluster(&entries, g).unwrap();
        assert_eq!(buf.len(), 512);
        let back = decode_l2_cluster(&buf, g, 0).unwrap();
        assert_eq!(back.len(), 12);
        assert_eq!(&back[..4], &entries[..]);
        assert!(back[4..].iter().all(Option::is_none));
        assert_eq!(decode_l2_entry_at(&buf, 1, g, 0).unwrap(), entries[1]);
        assert!(decode_l2_entry_at(&buf, 12, g, 0).is_err());
    }

    #[test]
    fn l1_entry_must_be_aligned() {
        let g = geo(16);
        assert_eq!(decode_l1_entry(0, g, 0).unwrap(), None);
        assert_eq!(
            decode_l1_entry(0x3_0000, g, 0).unwrap(),
            Some(HostOffset(0x3_0000))
        );
        let err = decode_l1_entry(0x3_0200, g, 0x88).unwrap_err();
        assert_eq!(err.rule, rules::DD_L1_ENTRY);
        assert_eq!(err.offset, 0x88);
        let err = encode_l1_entry(Some(HostOffset(0)), g).unwrap_err();
        assert_eq!(err.rule, rules::DD_L1_ENTRY);
        let mut buf = encode_l1_table(&[None, Some(HostOffset(0x1_0000))], g).unwrap();
        assert_eq!(decode_l1_table(&buf, g, 0).unwrap().len(), 2);
        buf[15] = 1;
        assert_eq!(decode_l1_table(&buf, g, 0x400).unwrap_err().offset, 0x408);
    }

    #[test]
    fn l2_tail_must_be_zero() {
        let g = geo(9);
        let mut buf = encode_l2_cluster(&[], g).unwrap();
        buf[500] = 7;
        let err = decode_l2_cluster(&buf, g, 0x1000).unwrap_err();
        assert_eq!(err.rule, rules::DD_L2_LAYOUT);
        assert_eq!(err.offset, 0x1000 + 500);
    }

    #[test]
    fn l2_length_must_be_a_cluster() {
        let err = decode_l2_cluster(&[0; 480], geo(9), 0).unwrap_err();
        assert_eq!(err.rule, rules::DD_L2_LAYOUT);
        let err = encode_l2_cluster(&[None; 13], geo(9)).unwrap_err();
        assert_eq!(err.rule, rules::DD_L2_LAYOUT);
    }

    #[test]
    fn entry_guest_offset_must_be_aligned() {
        let g = geo(16);
        let mut buf = encode_l2_cluster(&[Some(entry(2, 0x1_0000))], g).unwrap();
        buf[39] = 0x01;
        let err = decode_l2_cluster(&buf, g, 0).unwrap_err();
        assert_eq!(err.rule, rules::DD_ENTRY);
        assert_eq!(err.offset, 32);
        let err = encode_l2_cluster(&[None, Some(entry(2, 0x1_0001))], g).unwrap_err();
        assert_eq!(err.rule, rules::DD_ENTRY);
        assert_eq!(err.offset, 40 + 32);
        // A zero hash with offset 0 cannot be stored: it reads back as empty.
        let err = encode_l2_cluster(&[Some(entry(0, 0))], g).unwrap_err();
        assert_eq!(err.rule, rules::DD_ENTRY);
    }

    #[test]
    fn zero_digest_with_guest_offset_rejected() {
        let g = geo(16);
        let mut buf = encode_l2_cluster(&[], g).unwrap();
        buf[40 + 37] = 0x01; // entry 1: digest zero, guest offset 0x10000
        let err = decode_l2_cluster(&buf, g, 0).unwrap_err();
        assert_eq!(err.rule, rules::DD_ENTRY);
        assert_eq!(err.offset, 40);
    }

    #[test]
    fn l1_entry_must_be_below_2_pow_56() {
        let err = decode_l1_entry(1 << 56, geo(16), 0).unwrap_err();
        assert_eq!(err.rule, rules::DD_L1_ENTRY);
        let err = encode_l1_entry(Some(HostOffset(1 << 63)), geo(16)).unwrap_err();
        assert_eq!(err.rule, rules::DD_L1_ENTRY);
    }
}
