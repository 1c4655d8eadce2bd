//! Bounds-checked views of big-endian entry arrays, shared by the table modules.

use zerocopy::byteorder::big_endian::U64;
use zerocopy::FromBytes;

use crate::error::{ErrorKind, FormatError};
use crate::rules::RuleId;

/// `base_offset + pos`, saturating: an error offset must never overflow.
pub(crate) fn at(base_offset: u64, pos: usize) -> u64 {
    base_offset.saturating_add(pos as u64)
}

/// A `Truncated` error for `what` at `base_offset + pos`.
pub(crate) fn truncated(
    rule: RuleId,
    base_offset: u64,
    pos: usize,
    what: &'static str,
    needed: usize,
    available: usize,
) -> FormatError {
    FormatError::new(
        rule,
        at(base_offset, pos),
        ErrorKind::Truncated {
            what,
            needed: needed as u64,
            available: available as u64,
        },
    )
}

/// Views `buf` as an array of 8-byte big-endian entries.
///
/// A length that is not a multiple of 8 means the last entry is cut off.
pub(crate) fn u64_entries<'a>(
    buf: &'a [u8],
    rule: RuleId,
    what: &'static str,
    base_offset: u64,
) -> Result<&'a [U64], FormatError> {
    <[U64]>::ref_from_bytes(buf).map_err(|_| {
        let whole = buf.len() - buf.len() % 8;
        truncated(rule, base_offset, whole, what, 8, buf.len() % 8)
    })
}

/// The big-endian u64 at entry `index` of `buf` (8-byte entries).
pub(crate) fn u64_at(buf: &[u8], index: u64) -> Option<u64> {
    let start = usize::try_from(index).ok()?.checked_mul(8)?;
    let bytes = buf.get(start..start.checked_add(8)?)?;
    U64::read_from_bytes(bytes).ok().map(U64::get)
}

/// Writes `value` big-endian at entry `index` of `buf` (8-byte entries).
pub(crate) fn set_u64_at(buf: &mut [u8], index: u64, value: u64) -> Option<()> {
    let start = usize::try_from(index).ok()?.checked_mul(8)?;
    let bytes = buf.get_mut(start..start.checked_add(8)?)?;
    bytes.copy_from_slice(&value.to_be_bytes());
    Some(())
}

/// `OutOfRange` error for an entry index past the end of a table.
pub(crate) fn index_out_of_range(
    rule: RuleId,
    base_offset: u64,
    index: u64,
    entries: u64,
) -> FormatError {
    FormatError::new(
        rule,
        base_offset,
        ErrorKind::OutOfRange {
            field: "entry index",
            value: index,
            min: 0,
            max: entries.saturating_sub(1),
        },
    )
}
