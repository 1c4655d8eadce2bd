//! The persistent bitmap directory, read far enough to list names, flags and
//! granularity: the file I/O is here, the layout in
//! `qcow2_format::tables::bitmap_directory`. A directory outside the file
//! is reported under `EXT-BITMAPS`, the rule of the extension that points
//! at it.

use qcow2_format::extensions::Bitmaps;
use qcow2_format::tables::bitmap_directory::{parse_directory, FLAG_AUTO, FLAG_IN_USE};
use qcow2_format::{rules, ErrorKind, FormatError};

use crate::error::CliError;
use crate::image_file::{ImageFile, MAX_READ};

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

/// Parses `count` entries from `dir` (file offset `at`) with the format
/// crate; value rules (flags, type, granularity, table) are `check`'s to
/// report, so only framing errors stop `info`.
pub fn parse(dir: &[u8], at: u64, count: u32) -> Result<Vec<BitmapInfo>, FormatError> {
    Ok(parse_directory(dir, at, count)?
        .into_iter()
        .map(|e| BitmapInfo {
            name: e.name_text(),
            granularity: e.granularity(),
            flags: e.flags,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_names_flags_and_granularity() {
        let mut dir = vec![0u8; 24];
        dir[12..16].copy_from_slice(&(FLAG_IN_USE | FLAG_AUTO).to_be_bytes());
        dir[16] = 1;
        dir[17] = 16;
        dir[18..20].copy_from_slice(&2u16.to_be_bytes());
        dir.extend(b"b0");
        dir.resize(32, 0);
        let got = parse(&dir, 0x1000, 1).unwrap();
        assert_eq!(got[0].name, "b0");
        assert_eq!(got[0].granularity, 65536);
        assert_eq!(got[0].flag_names(), ["in-use", "auto"]);
        let err = parse(&dir[..30], 0x1000, 1).unwrap_err();
        assert_eq!(err.rule, rules::BMP_DIRECTORY);
    }
}
