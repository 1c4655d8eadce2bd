//! Byte-level tools for building negative cases.

use qcow2_format::HeaderArea;

/// Writes a big-endian u32 at `at`.
pub fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Writes a big-endian u64 at `at`.
pub fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// Reads a big-endian u64 at `at`.
pub fn get_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Parses the header area of `bytes`, lets `edit` change it, and writes it back.
///
/// Bytes of the old area that the new one no longer covers are zeroed, so no
/// stale extension survives past the new end marker.
pub fn edit_area(bytes: &[u8], edit: impl FnOnce(&mut HeaderArea)) -> Result<Vec<u8>, String> {
    let mut area =
        HeaderArea::parse(bytes).map_err(|e| format!("base image does not parse: {e}"))?;
    let mut old = area.clone();
    let old_len = old.to_bytes().map_err(|e| e.to_string())?.len();
    edit(&mut area);
    let new = area
        .to_bytes()
        .map_err(|e| format!("edited area does not serialize: {e}"))?;
    let mut out = bytes.to_vec();
    let end = old_len.max(new.len());
    if out.len() < end {
        out.resize(end, 0);
    }
    out[..new.len()].copy_from_slice(&new);
    out[new.len()..end].fill(0);
    Ok(out)
}

/// Appends `data` at the next cluster boundary; returns its offset.
pub fn append_cluster_aligned(bytes: &mut Vec<u8>, cluster_size: u64, data: &[u8]) -> u64 {
    let at = (bytes.len() as u64).div_ceil(cluster_size) * cluster_size;
    bytes.resize(at as usize, 0);
    bytes.extend_from_slice(data);
    let padded = (bytes.len() as u64).div_ceil(cluster_size) * cluster_size;
    bytes.resize(padded as usize, 0);
    at
}
