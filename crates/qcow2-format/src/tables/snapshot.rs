//! The snapshot table: a packed list of variable-length entries.
//!
//! Each entry is a fixed 40-byte big-endian part ([`SnapshotHeaderRaw`]),
//! then `extra_data_size` bytes of extra data, the ID string and the name (not
//! NUL terminated), then padding to a multiple of 8 before the next entry.
//! Known extra data: bytes 0-7 the 64-bit VM state size, 8-15 the virtual disk
//! size (version 3 requires both), 16-23 the record/replay icount (`u64::MAX`
//! when disabled). Extra data is kept byte for byte, so bytes this crate does
//! not know survive a rewrite.
//!
//! Padding bytes are not checked on read and written as zeros; the table is
//! written without padding after its last entry, as QEMU does.

use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{ErrorKind, FormatError, Result};
pub use crate::header::MAX_SNAPSHOTS;
use crate::rules::{self, RuleId};
use crate::tables::l1::MAX_L1_ENTRIES;
use crate::tables::raw;
use crate::units::{ClusterGeometry, HostOffset};

/// Size of the fixed part of an entry.
pub const SNAPSHOT_HEADER_SIZE: usize = 40;
/// Most extra data bytes per entry (QEMU's limit).
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Extra data bytes every version 3 entry has (VM state size and disk size).
pub const V3_MIN_EXTRA_DATA: u32 = 16;
/// Most bytes the whole table may take (QEMU's limit: 1 KiB per snapshot).
pub const MAX_TABLE_SIZE: u64 = 1024 * MAX_SNAPSHOTS as u64;
/// The icount value that means "record/replay was disabled".
pub const ICOUNT_DISABLED: u64 = u64::MAX;

const RULE: RuleId = rules::SNAP_ENTRY;

/// The fixed 40-byte part of a snapshot table entry, as stored.
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
pub struct SnapshotHeaderRaw {
    /// Offset of the snapshot's L1 table (cluster aligned).
    pub l1_table_offset: U64,
    /// Number of entries in that L1 table.
    pub l1_size: U32,
    /// Length of the ID string.
    pub id_str_size: U16,
    /// Length of the name.
    pub name_size: U16,
    /// Creation time, seconds since the Epoch.
    pub date_sec: U32,
    /// Creation time, nanosecond part.
    pub date_nsec: U32,
    /// Guest run time when the snapshot was taken, in nanoseconds.
    pub vm_clock_nsec: U64,
    /// VM state size (superseded by the 64-bit value in extra data).
    pub vm_state_size: U32,
    /// Length of the extra data.
    pub extra_data_size: U32,
}

/// What validating snapshot entries depends on, taken from the image header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotContext {
    /// Cluster size, for the L1 table alignment.
    pub geometry: ClusterGeometry,
    /// Header version; version 3 entries need 16 bytes of extra data.
    pub version: u32,
}

/// One decoded snapshot table entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SnapshotEntry {
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: HostOffset,
    /// Number of entries in that L1 table.
    pub l1_size: u32,
    /// Creation time, seconds since the Epoch.
    pub date_sec: u32,
    /// Creation time, nanosecond part.
    pub date_nsec: u32,
    /// Guest run time when the snapshot was taken, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// The 32-bit VM state size field; see [`SnapshotEntry::vm_state_size`].
    pub vm_state_size_32: u32,
    /// Extra data, byte for byte (known fields: see the module docs).
    pub extra_data: Vec<u8>,
    /// Unique ID string (usually decimal digits; not necessarily UTF-8).
    pub id: Vec<u8>,
    /// Name (not necessarily UTF-8).
    pub name: Vec<u8>,
}

impl SnapshotEntry {
    /// Extra data in the layout QEMU writes today: VM state size, disk size,
    /// icount ([`ICOUNT_DISABLED`] for `None`).
    pub fn standard_extra_data(vm_state_size: u64, disk_size: u64, icount: Option<u64>) -> Vec<u8> {
        let mut extra = Vec::with_capacity(24);
        extra.extend_from_slice(&vm_state_size.to_be_bytes());
        extra.extend_from_slice(&disk_size.to_be_bytes());
        extra.extend_from_slice(&icount.unwrap_or(ICOUNT_DISABLED).to_be_bytes());
        extra
    }

    fn extra_u64(&self, at: usize) -> Option<u64> {
        let bytes = self.extra_data.get(at..at + 8)?;
        U64::read_from_bytes(bytes).ok().map(U64::get)
    }

    /// VM state size: the 64-bit extra data field when present, else the
    /// 32-bit field. 0 when the snapshot has no VM state.
    pub fn vm_state_size(&self) -> u64 {
        self.extra_u64(0)
            .unwrap_or(u64::from(self.vm_state_size_32))
    }

    /// Virtual disk size at the time of the snapshot, when recorded (callers
    /// fall back to the image's current size otherwise, as QEMU does).
    pub fn disk_size(&self) -> Option<u64> {
        self.extra_u64(8)
    }

    /// Record/replay instruction count, when recorded and enabled.
    pub fn icount(&self) -> Option<u64> {
        self.extra_u64(16).filter(|&v| v != ICOUNT_DISABLED)
    }

    /// Bytes this entry takes, without the padding after it.
    pub fn encoded_len(&self) -> u64 {
        (SNAPSHOT_HEADER_SIZE + self.extra_data.len() + self.id.len() + self.name.len()) as u64
    }

    /// Checks [`rules::SNAP_ENTRY`]; errors are relative to the entry start.
    pub fn validate(&self, ctx: &SnapshotContext) -> Result<()> {
        check_extra_size(self.extra_data.len() as u64, ctx, 0)?;
        check_string("ID string length", self.id.len(), 12)?;
        check_string("name length", self.name.len(), 14)?;
        check_l1(self.l1_table_offset.get(), self.l1_size, ctx, 0)
    }

    /// Appends the entry (unpadded) to `out`, after [`SnapshotEntry::validate`].
    fn write(&self, out: &mut Vec<u8>) {
        let header = SnapshotHeaderRaw {
            l1_table_offset: U64::new(self.l1_table_offset.get()),
            l1_size: U32::new(self.l1_size),
            id_str_size: U16::new(self.id.len() as u16),
            name_size: U16::new(self.name.len() as u16),
            date_sec: U32::new(self.date_sec),
            date_nsec: U32::new(self.date_nsec),
            vm_clock_nsec: U64::new(self.vm_clock_nsec),
            vm_state_size: U32::new(self.vm_state_size_32),
            extra_data_size: U32::new(self.extra_data.len() as u32),
        };
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.extra_data);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.name);
    }
}

fn check_extra_size(size: u64, ctx: &SnapshotContext, entry_offset: u64) -> Result<()> {
    let min = if ctx.version >= 3 {
        V3_MIN_EXTRA_DATA
    } else {
        0
    };
    if size < u64::from(min) || size > u64::from(MAX_EXTRA_DATA) {
        return Err(FormatError::new(
            RULE,
            entry_offset.saturating_add(36),
            ErrorKind::OutOfRange {
                field: "extra_data_size",
                value: size,
                min: min.into(),
                max: MAX_EXTRA_DATA.into(),
            },
        ));
    }
    Ok(())
}

fn check_string(field: &'static str, len: usize, field_offset: u64) -> Result<()> {
    if len > usize::from(u16::MAX) {
        return Err(FormatError::new(
            RULE,
            field_offset,
            ErrorKind::OutOfRange {
                field,
                value: len as u64,
                min: 0,
                max: u16::MAX.into(),
            },
        ));
    }
    Ok(())
}

fn check_l1(offset: u64, size: u32, ctx: &SnapshotContext, entry_offset: u64) -> Result<()> {
    if !ctx.geometry.is_aligned(offset) {
        return Err(FormatError::new(
            RULE,
            entry_offset,
            ErrorKind::Misaligned {
                field: "snapshot l1_table_offset",
                value: offset,
                alignment: ctx.geometry.cluster_size(),
            },
        ));
    }
    if u64::from(size) > MAX_L1_ENTRIES {
        return Err(FormatError::new(
            RULE,
            entry_offset.saturating_add(8),
            ErrorKind::OutOfRange {
                field: "snapshot l1_size",
                value: size.into(),
                min: 0,
                max: MAX_L1_ENTRIES,
            },
        ));
    }
    Ok(())
}

fn check_count(count: u64, base_offset: u64) -> Result<()> {
    if count > u64::from(MAX_SNAPSHOTS) {
        return Err(FormatError::new(
            rules::HDR_SNAPSHOTS,
            base_offset,
            ErrorKind::OutOfRange {
                field: "nb_snapshots",
                value: count,
                min: 0,
                max: MAX_SNAPSHOTS.into(),
            },
        ));
    }
    Ok(())
}

fn check_table_size(end: u64, entry_offset: u64) -> Result<()> {
    if end > MAX_TABLE_SIZE {
        return Err(FormatError::new(
            RULE,
            entry_offset,
            ErrorKind::OutOfRange {
                field: "snapshot table size",
                value: end,
                min: 0,
                max: MAX_TABLE_SIZE,
            },
        ));
    }
    Ok(())
}

/// Takes `len` bytes at `pos`, or a [`rules::SNAP_ENTRY`] truncation error.
fn take<'a>(
    buf: &'a [u8],
    pos: usize,
    len: usize,
    what: &'static str,
    base_offset: u64,
) -> Result<&'a [u8]> {
    pos.checked_add(len)
        .and_then(|end| buf.get(pos..end))
        .ok_or_else(|| {
            let available = buf.len().saturating_sub(pos);
            raw::truncated(RULE, base_offset, pos, what, len, available)
        })
}

/// Parses `count` entries (the header's `nb_snapshots`) from `buf`, which
/// starts at the header's `snapshots_offset`. Bytes after the last entry are
/// ignored.
///
/// Errors: [`rules::HDR_SNAPSHOTS`] when `count` exceeds [`MAX_SNAPSHOTS`];
/// [`rules::SNAP_ENTRY`] for a truncated entry, extra data outside
/// `16 (v3) or 0 ..= 1024`, a misaligned or oversized L1 table, or a table
/// larger than [`MAX_TABLE_SIZE`].
pub fn parse_table(
    buf: &[u8],
    count: u32,
    ctx: &SnapshotContext,
    base_offset: u64,
) -> Result<Vec<SnapshotEntry>> {
    check_count(count.into(), base_offset)?;
    // Every entry takes at least 40 bytes, so the buffer bounds the allocation.
    let mut entries = Vec::with_capacity((count as usize).min(buf.len() / SNAPSHOT_HEADER_SIZE));
    let mut pos = 0usize;
    for _ in 0..count {
        pos = pos.next_multiple_of(8);
        let at = raw::at(base_offset, pos);
        let fixed = take(
            buf,
            pos,
            SNAPSHOT_HEADER_SIZE,
            "snapshot table entry",
            base_offset,
        )?;
        let header = SnapshotHeaderRaw::read_from_bytes(fixed).map_err(|_| {
            raw::truncated(
                RULE,
                base_offset,
                pos,
                "snapshot table entry",
                SNAPSHOT_HEADER_SIZE,
                0,
            )
        })?;
        let extra_len = header.extra_data_size.get();
        check_extra_size(extra_len.into(), ctx, at)?;
        check_l1(header.l1_table_offset.get(), header.l1_size.get(), ctx, at)?;
        let id_len = usize::from(header.id_str_size.get());
        let name_len = usize::from(header.name_size.get());
        let total = SNAPSHOT_HEADER_SIZE + extra_len as usize + id_len + name_len;
        check_table_size((pos + total) as u64, at)?;
        let mut cursor = pos + SNAPSHOT_HEADER_SIZE;
        let extra = take(
            buf,
            cursor,
            extra_len as usize,
            "snapshot extra data",
            base_offset,
        )?;
        cursor += extra.len();
        let id = take(buf, cursor, id_len, "snapshot ID string", base_offset)?;
        cursor += id_len;
        let name = take(buf, cursor, name_len, "snapshot name", base_offset)?;
        entries.push(SnapshotEntry {
            l1_table_offset: HostOffset(header.l1_table_offset.get()),
            l1_size: header.l1_size.get(),
            date_sec: header.date_sec.get(),
            date_nsec: header.date_nsec.get(),
            vm_clock_nsec: header.vm_clock_nsec.get(),
            vm_state_size_32: header.vm_state_size.get(),
            extra_data: extra.to_vec(),
            id: id.to_vec(),
            name: name.to_vec(),
        });
        pos += total;
    }
    Ok(entries)
}

/// How many bytes the first `count` entries take, found from the entry
/// headers in `buf` (which starts at the table's offset), or `None` when
/// `buf` ends before a header it needs. A reader can then fetch the table
/// itself rather than the largest one allowed; [`parse_table`] still does
/// the checking. Stops early, with the length so far, once it passes
/// [`MAX_TABLE_SIZE`].
pub fn needed_len(buf: &[u8], count: u32) -> Option<u64> {
    let mut pos = 0u64;
    for _ in 0..count {
        if pos > MAX_TABLE_SIZE {
            break;
        }
        pos = pos.next_multiple_of(8);
        let start = usize::try_from(pos).ok()?;
        let fixed = buf.get(start..start.checked_add(SNAPSHOT_HEADER_SIZE)?)?;
        let header = SnapshotHeaderRaw::read_from_bytes(fixed).ok()?;
        pos += SNAPSHOT_HEADER_SIZE as u64
            + u64::from(header.extra_data_size.get())
            + u64::from(header.id_str_size.get())
            + u64::from(header.name_size.get());
    }
    Some(pos)
}

/// First read of [`read_table`]: enough for a few hundred typical entries.
const FIRST_READ: u64 = 64 << 10;

/// Reads and parses the table of `count` entries at `base_offset`, fetching
/// only what the entry headers ask for: `read(len)` returns the first `len`
/// bytes at `base_offset` and is called with lengths up to `available` (the
/// bytes the file holds there), each read larger than the last.
///
/// Errors: those of `read`, and those of [`parse_table`] (a table that does
/// not fit in `available` bytes is reported there as truncated).
pub fn read_table<E: From<FormatError>>(
    count: u32,
    ctx: &SnapshotContext,
    base_offset: u64,
    available: u64,
    mut read: impl FnMut(u64) -> core::result::Result<Vec<u8>, E>,
) -> core::result::Result<Vec<SnapshotEntry>, E> {
    let limit = available.min(MAX_TABLE_SIZE);
    let mut want = FIRST_READ.min(limit);
    loop {
        let buf = read(want)?;
        let next = match needed_len(&buf, count) {
            Some(need) if need <= buf.len() as u64 => {
                return Ok(parse_table(&buf[..need as usize], count, ctx, base_offset)?);
            }
            Some(need) => need.min(limit),
            None => want.saturating_mul(2).min(limit),
        };
        if next <= want {
            // Nothing more to read: let the parser say what is missing.
            return Ok(parse_table(&buf, count, ctx, base_offset)?);
        }
        want = next;
    }
}

/// Bytes the table takes when encoded: entries padded to 8 between each
/// other, none after the last.
pub fn table_len(entries: &[SnapshotEntry]) -> u64 {
    entries.iter().fold(0u64, |pos, e| {
        pos.next_multiple_of(8).saturating_add(e.encoded_len())
    })
}

/// Encodes the table; errors carry the entry's position in the output.
///
/// Checks the same rules as [`parse_table`], plus ID and name lengths that
/// fit their 16-bit fields.
pub fn encode_table(entries: &[SnapshotEntry], ctx: &SnapshotContext) -> Result<Vec<u8>> {
    check_count(entries.len() as u64, 0)?;
    let len = table_len(entries);
    check_table_size(len, 0)?;
    let mut out = Vec::with_capacity(len as usize);
    for entry in entries {
        out.resize(out.len().next_multiple_of(8), 0);
        let pos = out.len() as u64;
        entry
            .validate(ctx)
            .map_err(|e| FormatError::new(e.rule, pos.saturating_add(e.offset), e.kind))?;
        entry.write(&mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(version: u32) -> SnapshotContext {
        SnapshotContext {
            geometry: ClusterGeometry::new(16).unwrap(),
            version,
        }
    }

    fn entry(name: &str) -> SnapshotEntry {
        SnapshotEntry {
            l1_table_offset: HostOffset(0x5_0000),
            l1_size: 2,
            date_sec: 1_700_000_000,
            date_nsec: 5,
            vm_clock_nsec: 9,
            vm_state_size_32: 0,
            extra_data: SnapshotEntry::standard_extra_data(0, 1 << 30, None),
            id: b"1".to_vec(),
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn raw_header_is_40_bytes() {
        assert_eq!(
            core::mem::size_of::<SnapshotHeaderRaw>(),
            SNAPSHOT_HEADER_SIZE
        );
    }

    #[test]
    fn round_trip_with_padding() {
        let c = ctx(3);
        let entries = vec![entry("first"), entry("second-one")];
        let bytes = encode_table(&entries, &c).unwrap();
        // 40 + 24 + 1 + 5 = 70, padded to 72; then 40 + 24 + 1 + 10 = 75.
        assert_eq!(bytes.len(), 72 + 75);
        assert_eq!(table_len(&entries), 147);
        assert_eq!(&bytes[70..72], &[0, 0]);
        assert_eq!(parse_table(&bytes, 2, &c, 0).unwrap(), entries);
        assert_eq!(entries[0].disk_size(), Some(1 << 30));
        assert_eq!(entries[0].icount(), None);
        assert_eq!(entries[0].vm_state_size(), 0);
    }

    #[test]
    fn unknown_extra_data_is_kept() {
        let c = ctx(3);
        let mut e = entry("x");
        e.extra_data.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let bytes = encode_table(std::slice::from_ref(&e), &c).unwrap();
        let back = parse_table(&bytes, 1, &c, 0).unwrap();
        assert_eq!(back[0].extra_data.len(), 28);
        assert_eq!(encode_table(&back, &c).unwrap(), bytes);
    }

    #[test]
    fn v3_needs_16_bytes_of_extra_data() {
        let mut e = entry("x");
        e.extra_data.truncate(8);
        let err = encode_table(std::slice::from_ref(&e), &ctx(3)).unwrap_err();
        assert_eq!(err.rule, rules::SNAP_ENTRY);
        assert_eq!(err.offset, 36);
        // Version 2 allows it; reading it back in v3 does not.
        let bytes = encode_table(std::slice::from_ref(&e), &ctx(2)).unwrap();
        let err = parse_table(&bytes, 1, &ctx(3), 0x1_0000).unwrap_err();
        assert_eq!(err.rule, rules::SNAP_ENTRY);
        assert_eq!(err.offset, 0x1_0024);
        assert_eq!(
            parse_table(&bytes, 1, &ctx(2), 0).unwrap()[0].vm_state_size(),
            0
        );
    }

    #[test]
    fn extra_data_bounded() {
        let mut e = entry("x");
        e.extra_data.resize(1025, 0);
        assert_eq!(e.validate(&ctx(3)).unwrap_err().rule, rules::SNAP_ENTRY);
        let mut bytes = encode_table(&[entry("x")], &ctx(3)).unwrap();
        bytes[36..40].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        assert_eq!(
            parse_table(&bytes, 1, &ctx(3), 0).unwrap_err().rule,
            rules::SNAP_ENTRY
        );
    }

    #[test]
    fn misaligned_l1_rejected() {
        let mut e = entry("x");
        e.l1_table_offset = HostOffset(0x5_0200);
        assert_eq!(e.validate(&ctx(3)).unwrap_err().rule, rules::SNAP_ENTRY);
    }

    #[test]
    fn oversized_l1_rejected() {
        let mut e = entry("x");
        e.l1_size = MAX_L1_ENTRIES as u32 + 1;
        let err = e.validate(&ctx(3)).unwrap_err();
        assert_eq!(err.rule, rules::SNAP_ENTRY);
        assert_eq!(err.offset, 8);
    }

    #[test]
    fn truncated_entries_rejected() {
        let c = ctx(3);
        let bytes = encode_table(&[entry("a"), entry("b")], &c).unwrap();
        for cut in [0, 39, 40, 64, 65, 66, 72, bytes.len() - 1] {
            let err = parse_table(&bytes[..cut], 2, &c, 0).unwrap_err();
            assert_eq!(err.rule, rules::SNAP_ENTRY, "cut at {cut}");
            assert!(matches!(err.kind, ErrorKind::Truncated { .. }));
        }
    }

    #[test]
    fn count_and_string_limits() {
        let err = parse_table(&[], MAX_SNAPSHOTS + 1, &ctx(3), 0).unwrap_err();
        assert_eq!(err.rule, rules::HDR_SNAPSHOTS);
        let mut e = entry("x");
        e.name = vec![b'n'; 65536];
        assert_eq!(e.validate(&ctx(3)).unwrap_err().rule, rules::SNAP_ENTRY);
        assert!(parse_table(&[], 0, &ctx(3), 0).unwrap().is_empty());
    }

    #[test]
    fn oversized_table_rejected() {
        // 600 entries of 40 + 16 + 2 * 65535 bytes pass 64 MiB.
        let mut e = entry("");
        e.extra_data.truncate(16);
        e.id = vec![b'i'; 65535];
        e.name = vec![b'n'; 65535];
        let err = encode_table(&vec![e; 600], &ctx(3)).unwrap_err();
        assert_eq!(err.rule, rules::SNAP_ENTRY);
    }
}
