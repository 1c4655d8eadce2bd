//! The persistent bitmap directory the bitmaps extension points at, and the
//! bitmap table entries (rules BMP-*).
//!
//! [`parse_directory`] reads the entries and stops at the first entry it
//! cannot frame (nothing after it can be located); [`check_entries`] then
//! reports every value rule each framed entry breaks, without stopping.

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules::{self, RuleId};
use crate::units::{ClusterGeometry, HostOffset};

/// Fixed part of a directory entry.
pub const ENTRY_FIXED: usize = 24;
/// Longest bitmap name.
pub const MAX_NAME: usize = 1023;
/// Granularity bounds QEMU accepts (512 B to 2 GiB per bit).
pub const GRANULARITY_BITS: core::ops::RangeInclusive<u8> = 9..=31;
/// Flag bit 0: the bitmap was in use when the image was last closed.
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Flag bit 1: the bitmap records writes while the image is open.
pub const FLAG_AUTO: u32 = 1 << 1;
/// Flag bit 2: extra data does not stop a reader from using the bitmap.
pub const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// The only bitmap type: dirty tracking.
pub const TYPE_DIRTY_TRACKING: u8 = 1;
/// Reserved bits of a bitmap table entry.
pub const TABLE_ENTRY_RESERVED: u64 = 0xff00_0000_0000_01fe;
/// Bits of a bitmap table entry holding the data cluster offset.
pub const TABLE_ENTRY_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 0 of a table entry without a data cluster: the cluster reads as ones.
pub const TABLE_ENTRY_ALL_ONES: u64 = 1;

/// One entry of the bitmap directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapEntry {
    /// File offset of the entry.
    pub at: u64,
    /// Offset of the bitmap table.
    pub table_offset: HostOffset,
    /// Entries of the bitmap table.
    pub table_size: u32,
    /// The flags field.
    pub flags: u32,
    /// The type byte.
    pub kind: u8,
    /// log2 of the guest bytes one bit covers.
    pub granularity_bits: u8,
    /// The name's bytes (no NUL).
    pub name: Vec<u8>,
    /// The extra data, kept as is.
    pub extra_data: Vec<u8>,
    /// The bytes after the name up to a multiple of 8 (zero when valid).
    pub padding: Vec<u8>,
}

impl BitmapEntry {
    /// The name as text (invalid UTF-8 replaced).
    pub fn name_text(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Guest bytes one bit covers (0 when granularity_bits is out of range).
    pub fn granularity(&self) -> u64 {
        1u64.checked_shl(self.granularity_bits.into()).unwrap_or(0)
    }

    /// The entry as stored: fixed part, extra data, name, zero padding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_FIXED + self.extra_data.len() + self.name.len() + 7);
        out.extend(self.table_offset.get().to_be_bytes());
        out.extend(self.table_size.to_be_bytes());
        out.extend(self.flags.to_be_bytes());
        out.extend([self.kind, self.granularity_bits]);
        out.extend((self.name.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        out.extend((self.extra_data.len().min(u32::MAX as usize) as u32).to_be_bytes());
        out.extend(&self.extra_data);
        out.extend(&self.name);
        out.resize(out.len().next_multiple_of(8), 0);
        out
    }

    /// The table entries a disk of `size` bytes needs with `geo`'s clusters.
    pub fn needed_table_size(&self, size: u64, geo: ClusterGeometry) -> u64 {
        match self.granularity() {
            0 => 0,
            g => size.div_ceil(g).div_ceil(8 * geo.cluster_size()),
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses `count` entries from `dir`, read at file offset `at`; `dir` must
/// hold exactly them (bitmap_directory_size).
pub fn parse_directory(dir: &[u8], at: u64, count: u32) -> Result<Vec<BitmapEntry>> {
    match parse_directory_partial(dir, at, count) {
        (entries, None) => Ok(entries),
        (_, Some(e)) => Err(e),
    }
}

/// Like [`parse_directory`], but also returns the entries framed before
/// the first error, so that a checker can still account for their tables.
pub fn parse_directory_partial(
    dir: &[u8],
    at: u64,
    count: u32,
) -> (Vec<BitmapEntry>, Option<FormatError>) {
    let mut out = Vec::new();
    let error = frame_entries(dir, at, count, &mut out).err();
    (out, error)
}

fn frame_entries(dir: &[u8], at: u64, count: u32, out: &mut Vec<BitmapEntry>) -> Result<()> {
    let mut pos = 0usize;
    // Each entry takes at least 24 bytes of `dir`, which the caller holds,
    // so the loop is bounded by the directory itself.
    for _ in 0..count {
        let entry_at = at + pos as u64;
        let bad = |rule: RuleId, off: usize, kind: ErrorKind| {
            FormatError::new(rule, entry_at + off as u64, kind)
        };
        let rest = &dir[pos..];
        let Some(fixed) = rest.get(..ENTRY_FIXED) else {
            return Err(bad(
                rules::BMP_DIRECTORY,
                0,
                ErrorKind::Truncated {
                    what: "bitmap directory entry",
                    needed: ENTRY_FIXED as u64,
                    available: rest.len() as u64,
                },
            ));
        };
        let name_size = usize::from(u16::from_be_bytes([fixed[18], fixed[19]]));
        let extra_size = be32(fixed, 20);
        // u64 arithmetic: extra_size is untrusted and may be near u32::MAX.
        let body = ENTRY_FIXED as u64 + u64::from(extra_size) + name_size as u64;
        let entry_len = body.div_ceil(8) * 8;
        if entry_len > rest.len() as u64 {
            return Err(bad(
                rules::BMP_DIRECTORY,
                20,
                ErrorKind::Truncated {
                    what: "bitmap directory entry",
                    needed: entry_len,
                    available: rest.len() as u64,
                },
            ));
        }
        // entry_len <= rest.len(), so these casts and slices are in bounds.
        let (body, entry_len) = (body as usize, entry_len as usize);
        let name_start = ENTRY_FIXED + extra_size as usize;
        out.push(BitmapEntry {
            at: entry_at,
            table_offset: HostOffset(u64::from_be_bytes([
                fixed[0], fixed[1], fixed[2], fixed[3], fixed[4], fixed[5], fixed[6], fixed[7],
            ])),
            table_size: be32(fixed, 8),
            flags: be32(fixed, 12),
            kind: fixed[16],
            granularity_bits: fixed[17],
            name: rest[name_start..name_start + name_size].to_vec(),
            extra_data: rest[ENTRY_FIXED..name_start].to_vec(),
            padding: rest[body..entry_len].to_vec(),
        });
        pos += entry_len;
    }
    if pos != dir.len() {
        return Err(FormatError::new(
            rules::BMP_DIRECTORY,
            at + pos as u64,
            ErrorKind::Mismatch {
                field: "bitmap directory size",
                value: dir.len() as u64,
                expected: pos as u64,
            },
        ));
    }
    Ok(())
}

/// Every rule the framed entries break, in directory order: padding,
/// name length, flags, type, granularity, the table's place and size for a
/// disk of `size` bytes, and names used twice.
pub fn check_entries(entries: &[BitmapEntry], geo: ClusterGeometry, size: u64) -> Vec<FormatError> {
    let mut out = Vec::new();
    let known_flags = FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE;
    // A set, not a scan of the earlier entries: 65535 long names would
    // otherwise take billions of comparisons.
    let mut names = std::collections::HashSet::with_capacity(entries.len());
    for e in entries {
        if let Some(p) = e.padding.iter().position(|&b| b != 0) {
            let at = ENTRY_FIXED + e.extra_data.len() + e.name.len() + p;
            out.push(FormatError::new(
                rules::BMP_DIRECTORY,
                e.at + at as u64,
                ErrorKind::Malformed {
                    field: "bitmap directory entry padding",
                    reason: "a padding byte is not zero".to_string(),
                },
            ));
        }
        if e.name.is_empty() || e.name.len() > MAX_NAME {
            out.push(FormatError::new(
                rules::BMP_NAME,
                e.at + 18,
                ErrorKind::OutOfRange {
                    field: "bitmap name_size",
                    value: e.name.len() as u64,
                    min: 1,
                    max: MAX_NAME as u64,
                },
            ));
        }
        if e.flags & !known_flags != 0 {
            out.push(FormatError::new(
                rules::BMP_FLAGS,
                e.at + 12,
                ErrorKind::ReservedSet {
                    field: "bitmap flags bits 3-31",
                    value: (e.flags & !known_flags).into(),
                },
            ));
        }
        if e.kind != TYPE_DIRTY_TRACKING {
            out.push(FormatError::new(
                rules::BMP_TYPE,
                e.at + 16,
                ErrorKind::Mismatch {
                    field: "bitmap type",
                    value: e.kind.into(),
                    expected: TYPE_DIRTY_TRACKING.into(),
                },
            ));
        }
        if !GRANULARITY_BITS.contains(&e.granularity_bits) {
            out.push(FormatError::new(
                rules::BMP_GRANULARITY,
                e.at + 17,
                ErrorKind::OutOfRange {
                    field: "bitmap granularity_bits",
                    value: e.granularity_bits.into(),
                    min: (*GRANULARITY_BITS.start()).into(),
                    max: (*GRANULARITY_BITS.end()).into(),
                },
            ));
        } else if u64::from(e.table_size) != e.needed_table_size(size, geo) {
            out.push(FormatError::new(
                rules::BMP_TABLE,
                e.at + 8,
                ErrorKind::Mismatch {
                    field: "bitmap_table_size",
                    value: e.table_size.into(),
                    expected: e.needed_table_size(size, geo),
                },
            ));
        }
        let offset = e.table_offset.get();
        if offset == 0 || !geo.is_aligned(offset) {
            out.push(FormatError::new(
                rules::BMP_TABLE,
                e.at,
                ErrorKind::Misaligned {
                    field: "bitmap_table_offset",
                    value: offset,
                    alignment: geo.cluster_size(),
                },
            ));
        }
        if e.name.last() == Some(&0) {
            out.push(FormatError::new(
                rules::BMP_NAME,
                e.at + 24 + e.extra_data.len() as u64 + e.name.len() as u64 - 1,
                ErrorKind::Malformed {
                    field: "bitmap name",
                    reason: "the name ends with a NUL byte (names are not NUL terminated)"
                        .to_string(),
                },
            ));
        }
        if !names.insert(e.name.as_slice()) {
            out.push(FormatError::new(
                rules::BMP_NAME,
                e.at + 18,
                ErrorKind::Malformed {
                    field: "bitmap name",
                    reason: format!("{:?} names an earlier bitmap too", e.name_text()),
                },
            ));
        }
    }
    out
}

/// Checks one bitmap table entry read at `at` (BMP-TABLE-ENTRY); returns
/// the data cluster it names, if any.
pub fn decode_table_entry(raw: u64, at: u64, geo: ClusterGeometry) -> Result<Option<HostOffset>> {
    let data = raw & TABLE_ENTRY_OFFSET;
    let reason = if raw & TABLE_ENTRY_RESERVED != 0 {
        "reserved bits 1-8 or 56-63 are set"
    } else if data != 0 && raw & TABLE_ENTRY_ALL_ONES != 0 {
        "bit 0 is set with a data cluster"
    } else if !geo.is_aligned(data) {
        "the data cluster offset is not cluster aligned"
    } else {
        return Ok((data != 0).then_some(HostOffset(data)));
    };
    Err(FormatError::new(
        rules::BMP_TABLE_ENTRY,
        at,
        ErrorKind::Malformed {
            field: "bitmap table entry",
            reason: format!("{raw:#x}: {reason}"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: u32, granularity_bits: u8, extra: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; ENTRY_FIXED];
        e[0..8].copy_from_slice(&0x30000u64.to_be_bytes());
        e[8..12].copy_from_slice(&1u32.to_be_bytes());
        e[12..16].copy_from_slice(&flags.to_be_bytes());
        e[16] = 1;
        e[17] = granularity_bits;
        e[18..20].copy_from_slice(&(name.len() as u16).to_be_bytes());
        e[20..24].copy_from_slice(&(extra.len() as u32).to_be_bytes());
        e.extend_from_slice(extra);
        e.extend_from_slice(name.as_bytes());
        e.resize(e.len().div_ceil(8) * 8, 0);
        e
    }

    fn geo() -> ClusterGeometry {
        ClusterGeometry::new(16).unwrap()
    }

    #[test]
    fn parses_entries_with_extra_data_and_padding() {
        let mut dir = entry("b0", FLAG_AUTO, 16, &[]);
        dir.extend(entry(
            "longer-name",
            FLAG_IN_USE | FLAG_AUTO,
            17,
            &[1, 2, 3],
        ));
        let got = parse_directory(&dir, 0x1000, 2).unwrap();
        assert_eq!(got[0].name_text(), "b0");
        assert_eq!(got[0].granularity(), 65536);
        assert_eq!(got[0].table_offset.get(), 0x30000);
        assert_eq!(got[1].extra_data, [1, 2, 3]);
        assert_eq!(got[1].at, 0x1000 + 32);
        assert!(check_entries(&got, geo(), 1 << 20).is_empty());
        let again: Vec<u8> = got.iter().flat_map(BitmapEntry::to_bytes).collect();
        assert_eq!(again, dir);
    }

    #[test]
    fn framing_errors_stop_and_name_their_rule() {
        let good = entry("b0", 0, 16, &[]);
        let mut huge_extra = good.clone();
        huge_extra[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        let cases: [(&[u8], u32, RuleId, u64); 4] = [
            (&good[..10], 1, rules::BMP_DIRECTORY, 0x1000),
            (&huge_extra, 1, rules::BMP_DIRECTORY, 0x1014),
            (&good, 2, rules::BMP_DIRECTORY, 0x1000 + good.len() as u64),
            (&good, 0, rules::BMP_DIRECTORY, 0x1000),
        ];
        for (dir, count, rule, offset) in cases {
            let err = parse_directory(dir, 0x1000, count).unwrap_err();
            assert_eq!((err.rule, err.offset), (rule, offset), "{err}");
        }
    }

    #[test]
    fn value_errors_are_all_reported() {
        let mut dir = entry("b0", 1 << 5, 8, &[]);
        dir[16] = 2;
        dir[0..8].copy_from_slice(&0x30200u64.to_be_bytes());
        dir[31] = 1;
        dir.extend(entry("b0", 0, 16, &[]));
        let mut empty_name = entry("", 0, 16, &[]);
        empty_name[18..20].copy_from_slice(&0u16.to_be_bytes());
        dir.extend(empty_name);
        let got = parse_directory(&dir, 0, 3).unwrap();
        let rules: Vec<RuleId> = check_entries(&got, geo(), 1 << 20)
            .iter()
            .map(|e| e.rule)
            .collect();
        assert_eq!(
            rules,
            [
                rules::BMP_DIRECTORY,
                rules::BMP_FLAGS,
                rules::BMP_TYPE,
                rules::BMP_GRANULARITY,
                rules::BMP_TABLE,
                rules::BMP_NAME,
                rules::BMP_NAME
            ]
        );
        // A 1 MiB disk at 64 KiB per bit needs 16 bits: one table entry.
        let mut two = got[1].clone();
        two.table_size = 2;
        assert_eq!(
            check_entries(&[two], geo(), 1 << 20)[0].rule,
            rules::BMP_TABLE
        );
    }

    #[test]
    fn table_entries() {
        let g = geo();
        assert_eq!(decode_table_entry(0, 8, g).unwrap(), None);
        assert_eq!(decode_table_entry(1, 8, g).unwrap(), None);
        assert_eq!(
            decode_table_entry(0x50000, 8, g).unwrap(),
            Some(HostOffset(0x50000))
        );
        for raw in [1 << 60, 0x50001, 0x50200, 0x2] {
            let err = decode_table_entry(raw, 8, g).unwrap_err();
            assert_eq!(
                (err.rule, err.offset),
                (rules::BMP_TABLE_ENTRY, 8),
                "{raw:#x}"
            );
        }
    }
}
