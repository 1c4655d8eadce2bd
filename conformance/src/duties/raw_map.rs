//! The suite's own translation of a guest offset through an L1 table,
//! read straight from the file bytes: the formula of READ-MAPPING, written
//! apart from the engine so that the engine can be compared with it.
//! Standard L2 entries only (the images it is used on have no others).

use crate::mutate::get_u64;

/// Bits 9-55: an L1 or standard L2 entry's offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 62 of an L2 entry: compressed.
const COMPRESSED: u64 = 1 << 62;

/// What one guest cluster maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// A host cluster holding the data, at this file offset.
    Host(u64),
    /// Reads as zeros (the zero flag) or from below (unallocated).
    NoData,
}

/// Maps guest offset `g` through the L1 table of `l1_size` entries at
/// `l1_offset`, for clusters of 2^`cluster_bits` bytes.
pub fn map(
    bytes: &[u8],
    cluster_bits: u32,
    l1_offset: u64,
    l1_size: u32,
    g: u64,
) -> Result<Mapped, String> {
    let cs = 1u64 << cluster_bits;
    let l2_entries = cs / 8;
    let l1_index = g / (cs * l2_entries);
    let l2_index = (g / cs) % l2_entries;
    if l1_index >= u64::from(l1_size) {
        return Ok(Mapped::NoData);
    }
    let entry_at = |table: u64, k: u64| -> Result<u64, String> {
        let at = usize::try_from(table + 8 * k).map_err(|e| e.to_string())?;
        if at + 8 > bytes.len() {
            return Err(format!(
                "table entry at {at:#x} lies past the end of the file"
            ));
        }
        Ok(get_u64(bytes, at))
    };
    let l2 = entry_at(l1_offset, l1_index)? & OFFSET_MASK;
    if l2 == 0 {
        return Ok(Mapped::NoData);
    }
    let raw = entry_at(l2, l2_index)?;
    if raw & COMPRESSED != 0 {
        return Err(format!(
            "guest offset {g:#x} is compressed, which this map does not decode"
        ));
    }
    let host = raw & OFFSET_MASK;
    Ok(if host == 0 || raw & 1 != 0 {
        Mapped::NoData
    } else {
        Mapped::Host(host + g % cs)
    })
}

/// Reads `len` guest bytes from `g` through the L1 table as [`map`] does;
/// clusters without data read as zeros (for images without a backing file).
pub fn read(
    bytes: &[u8],
    cluster_bits: u32,
    l1: (u64, u32),
    g: u64,
    len: usize,
) -> Result<Vec<u8>, String> {
    let cs = 1u64 << cluster_bits;
    let mut out = vec![0u8; len];
    let mut done = 0usize;
    while done < len {
        let at = g + done as u64;
        let n = ((cs - at % cs) as usize).min(len - done);
        if let Mapped::Host(h) = map(bytes, cluster_bits, l1.0, l1.1, at)? {
            let h = h as usize;
            let src = bytes
                .get(h..h + n)
                .ok_or_else(|| format!("host range {h:#x}+{n:#x} lies past the end of the file"))?;
            out[done..done + n].copy_from_slice(src);
        }
        done += n;
    }
    Ok(out)
}
