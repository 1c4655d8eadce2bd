//! Fixed-size extensions: bitmaps (`0x23852875`) and full disk encryption (`0x0537be77`).

use zerocopy::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules::{self, RuleId};

/// The bitmaps extension.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Bitmaps {
    /// Number of bitmaps in the directory, 1..=65535.
    pub nb_bitmaps: U32,
    /// Must be zero.
    pub reserved: U32,
    /// Size of the bitmap directory in bytes.
    pub bitmap_directory_size: U64,
    /// Offset of the bitmap directory (cluster aligned).
    pub bitmap_directory_offset: U64,
}

/// The full disk encryption header pointer.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct FullDiskEncryption {
    /// Offset of the LUKS header (cluster aligned).
    pub offset: U64,
    /// Length of the LUKS header area in bytes.
    pub length: U64,
}

/// Parses a fixed-size extension body, with `rule` reported on a length mismatch.
pub fn parse_exact<T: FromBytes + KnownLayout + Immutable + Copy>(
    data: &[u8],
    at: u64,
    rule: RuleId,
    what: &'static str,
) -> Result<T> {
    T::read_from_bytes(data).map_err(|_| {
        FormatError::new(
            rule,
            at,
            ErrorKind::Mismatch {
                field: what,
                value: data.len() as u64,
                expected: core::mem::size_of::<T>() as u64,
            },
        )
    })
}

/// QEMU's limit on the bitmap directory size (1024 bytes for each of at most 65535 bitmaps).
pub const MAX_BITMAP_DIRECTORY: u64 = 1024 * 65535;

impl Bitmaps {
    /// Checks the field values (EXT-BITMAPS); `at` is the file offset of the data.
    pub fn validate(&self, at: u64, cluster_size: u64) -> Result<()> {
        let bad =
            |off: u64, kind: ErrorKind| Err(FormatError::new(rules::EXT_BITMAPS, at + off, kind));
        if self.reserved.get() != 0 {
            return bad(
                4,
                ErrorKind::ReservedSet {
                    field: "bitmaps reserved",
                    value: self.reserved.get().into(),
                },
            );
        }
        let n = self.nb_bitmaps.get();
        if !(1..=65535).contains(&n) {
            return bad(
                0,
                ErrorKind::OutOfRange {
                    field: "nb_bitmaps",
                    value: n.into(),
                    min: 1,
                    max: 65535,
                },
            );
        }
        let size = self.bitmap_directory_size.get();
        if size == 0 || size > MAX_BITMAP_DIRECTORY {
            return bad(
                8,
                ErrorKind::OutOfRange {
                    field: "bitmap_directory_size",
                    value: size,
                    min: 1,
                    max: MAX_BITMAP_DIRECTORY,
                },
            );
        }
        let off = self.bitmap_directory_offset.get();
        if off == 0 || off % cluster_size != 0 {
            return bad(
                16,
                ErrorKind::Misaligned {
                    field: "bitmap_directory_offset",
                    value: off,
                    alignment: cluster_size,
                },
            );
        }
        Ok(())
    }
}

impl FullDiskEncryption {
    /// Checks the field values (EXT-FDE); `at` is the file offset of the data.
    pub fn validate(&self, at: u64, cluster_size: u64) -> Result<()> {
        let off = self.offset.get();
        if off == 0 || off % cluster_size != 0 {
            return Err(FormatError::new(
                rules::EXT_FDE,
                at,
                ErrorKind::Misaligned {
                    field: "crypto header offset",
                    value: off,
                    alignment: cluster_size,
                },
            ));
        }
        if self.length.get() == 0 {
            return Err(FormatError::new(
                rules::EXT_FDE,
                at + 8,
                ErrorKind::OutOfRange {
                    field: "crypto header length",
                    value: 0,
                    min: 1,
                    max: u64::MAX,
                },
            ));
        }
        Ok(())
    }
}
