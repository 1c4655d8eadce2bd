//! The persistent bitmap directory, read far enough to list names, flags and granularity.
//!
//! `qcow2-format` parses the bitmaps header extension but not the directory it
//! points at, so `info` reads the directory here. Violations are reported
//! under `EXT-BITMAPS`, the rule of the extension that points at it.

use qcow2_format::extensions::Bitmaps;
use qcow2_format::{rules, ErrorKind, FormatError};

use crate::error::CliError;
use crate::image_file::{ImageFile, MAX_READ};

/// Fixed part of a directory entry.
const ENTRY_FIXED: usize = 24;
/// QEMU's longest bitmap name.
const MAX_NAME: usize = 1023;
/// QEMU's granularity bounds (512 B ..= 2 GiB).
const GRANULARITY_BITS: core::ops::RangeInclusive<u8> = 9..=31;
/// Flag bit 0: the bitmap was in use when the image was last closed (it may be inconsistent).
const FLAG_IN_USE: u32 = 1 << 0;
/// Flag bit 1: the bitmap tracks writes when the image is opened.
const FLAG_AUTO: u32 = 1 << 1;

/// One bitmap as `qemu-img info` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapInfo {
    /// The bitmap's name.
    pub name: String,
    /// Bytes of guest data per bit.
    pub granularity: u64,
    /// The raw flags field.
    pub flags: u32,
}

impl BitmapInfo {
    /// The flags `qemu-img` names, in its order.
    pub fn flag_names(&self) -> Vec<&'static str> {
        [(FLAG_IN_USE, "in-use"), (FLAG_AUTO, "auto")]
            .into_iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, name)| name)
            .collect()
    }
}

/// Reads and parses the directory the extension points at.
pub fn read(file: &mut ImageFile, ext: &Bitmaps) -> Result<Vec<BitmapInfo>, CliError> {
    let offset = ext.bitmap_directory_offset.get();
    let size = ext.bitmap_directory_size.get();
    if size > MAX_READ {
        return Err(CliError::TooLarge {
            path: file.path().to_path_buf(),
            what: "the bitmap directory",
            size,
            limit: MAX_READ,
        });
    }
    let format_error = |source| CliError::Format {
        path: file.path().to_path_buf(),
        source,
    };
    if offset.checked_add(size).is_none_or(|end| end > file.len()) {
        return Err(format_error(FormatError::new(
            rules::EXT_BITMAPS,
            offset,
            ErrorKind::Truncated {
                what: "bitmap directory",
                needed: size,
                available: file.len().saturating_sub(offset),
            },
        )));
    }
    let bytes = file.read_at(offset, size)?;
    parse(&bytes, offset, ext.nb_bitmaps.get()).map_err(|source| CliError::Format {
        path: file.path().to_path_buf(),
        source,
    })
}

/// Parses `count` entries from `dir`, which starts at file offset `at` and must hold exactly them.
pub fn parse(dir: &[u8], at: u64, count: u32) -> Result<Vec<BitmapInfo>, FormatError> {
    let mut pos = 0usize;
    // `count` is at most 65535 (checked by the extension) and each entry takes 24+ bytes
    // of `dir`, so the loop is bounded by the directory we already hold.
    let mut out = Vec::new();
    for _ in 0..count {
        let entry_at = at + pos as u64;
        let bad = |off: usize, kind: ErrorKind| {
            FormatError::new(rules::EXT_BITMAPS, entry_at + off as u64, kind)
        };
        let rest = &dir[pos..];
        let Some(fixed) = rest.get(..ENTRY_FIXED) else {
            return Err(bad(
                0,
                ErrorKind::Truncated {
                    what: "bitmap directory entry",
                    needed: ENTRY_FIXED as u64,
                    available: rest.len() as u64,
                },
            ));
        };
        let flags = u32::from_be_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
        let granularity_bits = fixed[17];
        let name_size = usize::from(u16::from_be_bytes([fixed[18], fixed[19]]));
        let extra_size = u32::from_be_bytes([fixed[20], fixed[21], fixed[22], fixed[23]]);
        if !GRANULARITY_BITS.contains(&granularity_bits) {
            return Err(bad(
                17,
                ErrorKind::OutOfRange {
                    field: "bitmap granularity_bits",
                    value: granularity_bits.into(),
                    min: (*GRANULARITY_BITS.start()).into(),
                    max: (*GRANULARITY_BITS.end()).into(),
                },
            ));
        }
        if name_size == 0 || name_size > MAX_NAME {
            return Err(bad(
                18,
                ErrorKind::OutOfRange {
                    field: "bitmap name_size",
                    value: name_size as u64,
                    min: 1,
                    max: MAX_NAME as u64,
                },
            ));
        }
        // u64 arithmetic: extra_size is untrusted and may be near u32::MAX.
        let body = ENTRY_FIXED as u64 + u64::from(extra_size) + name_size as u64;
        let entry_len = body.div_ceil(8) * 8;
        if entry_len > rest.len() as u64 {
            return Err(bad(
                20,
                ErrorKind::Truncated {
                    what: "bitmap directory entry",
                    needed: entry_len,
                    available: rest.len() as u64,
                },
            ));
        }
        // entry_len <= rest.len(), so these casts and slices are in bounds.
        let name_start = ENTRY_FIXED + extra_size as usize;
        let name = &rest[name_start..name_start + name_size];
        out.push(BitmapInfo {
            name: String::from_utf8_lossy(name).into_owned(),
            granularity: 1u64 << granularity_bits,
            flags,
        });
        pos += entry_len as usize;
    }
    if pos != dir.len() {
        return Err(FormatError::new(
            rules::EXT_BITMAPS,
            at + pos as u64,
            ErrorKind::Mismatch {
                field: "bitmap directory size",
                value: dir.len() as u64,
                expected: pos as u64,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: u32, granularity_bits: u8, extra: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; ENTRY_FIXED];
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

    #[test]
    fn parses_entries_with_extra_data_and_padding() {
        let mut dir = entry("b0", FLAG_AUTO, 16, &[]);
        dir.extend(entry(
            "longer-name",
            FLAG_IN_USE | FLAG_AUTO,
            17,
            &[1, 2, 3],
        ));
        let got = parse(&dir, 0x1000, 2).unwrap();
        assert_eq!(
            got[0],
            BitmapInfo {
                name: "b0".into(),
                granularity: 65536,
                flags: FLAG_AUTO
            }
        );
        assert_eq!(got[1].name, "longer-name");
        assert_eq!(got[1].flag_names(), ["in-use", "auto"]);
    }

    #[test]
    fn hostile_directories_are_errors_not_panics() {
        let good = entry("b0", 0, 16, &[]);
        let mut huge_extra = good.clone();
        huge_extra[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut bad_granularity = good.clone();
        bad_granularity[17] = 64;
        let mut empty_name = good.clone();
        empty_name[18..20].copy_from_slice(&0u16.to_be_bytes());
        let cases: [(&[u8], u32, u64); 6] = [
            (&good[..10], 1, 0x1000),
            (&huge_extra, 1, 0x1014),
            (&bad_granularity, 1, 0x1011),
            (&empty_name, 1, 0x1012),
            (&good, 2, 0x1000 + good.len() as u64),
            (&good, 0, 0x1000),
        ];
        for (dir, count, offset) in cases {
            let err = parse(dir, 0x1000, count).unwrap_err();
            assert_eq!(
                (err.rule, err.offset),
                (rules::EXT_BITMAPS, offset),
                "{err}"
            );
        }
    }
}
