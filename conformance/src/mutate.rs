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

/// Where the refcount of `cluster` is stored: (byte offset of its first byte, bit shift, width).
fn refcount_slot(bytes: &[u8], cluster: u64) -> Result<(usize, u32, u32), String> {
    let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let h = &area.header;
    let cs = 1u64 << h.cluster_bits;
    let width = 1u32 << h.refcount_order;
    let per_block = cs * 8 / u64::from(width);
    let entry_at = h.refcount_table_offset.get() + cluster / per_block * 8;
    let entries = u64::from(h.refcount_table_clusters) * cs / 8;
    if cluster / per_block >= entries || entry_at as usize + 8 > bytes.len() {
        return Err(format!("no refcount table entry covers cluster {cluster}"));
    }
    let block = get_u64(bytes, entry_at as usize) & !0x1ff;
    if block == 0 || block + cs > bytes.len() as u64 {
        return Err(format!(
            "no refcount block in the file covers cluster {cluster}"
        ));
    }
    let bit = cluster % per_block * u64::from(width);
    Ok(((block + bit / 8) as usize, (bit % 8) as u32, width))
}

/// The stored refcount of host cluster `cluster`.
pub fn get_refcount(bytes: &[u8], cluster: u64) -> Result<u64, String> {
    let (at, shift, width) = refcount_slot(bytes, cluster)?;
    if width < 8 {
        return Ok(u64::from(bytes[at] >> shift) & ((1 << width) - 1));
    }
    Ok(bytes[at..at + (width / 8) as usize]
        .iter()
        .fold(0, |acc, &b| acc << 8 | u64::from(b)))
}

/// Stores `value` as the refcount of host cluster `cluster` (the block covering it must exist).
pub fn set_refcount(bytes: &mut [u8], cluster: u64, value: u64) -> Result<(), String> {
    let (at, shift, width) = refcount_slot(bytes, cluster)?;
    if width < 64 && value >> width != 0 {
        return Err(format!("refcount {value} does not fit in {width} bits"));
    }
    if width < 8 {
        let mask = ((1u8 << width) - 1) << shift;
        bytes[at] = (bytes[at] & !mask) | ((value as u8) << shift);
    } else {
        let n = (width / 8) as usize;
        bytes[at..at + n].copy_from_slice(&value.to_be_bytes()[8 - n..]);
    }
    Ok(())
}

/// Adds `delta` (which may be negative) to the refcount of the cluster holding byte `offset`.
pub fn adjust_refcount(bytes: &mut [u8], offset: u64, delta: i64) -> Result<(), String> {
    let cs = 1u64
        << HeaderArea::parse(bytes)
            .map_err(|e| e.to_string())?
            .header
            .cluster_bits;
    let cluster = offset / cs;
    let now = get_refcount(bytes, cluster)?;
    let new = now
        .checked_add_signed(delta)
        .ok_or_else(|| format!("refcount of cluster {cluster} would leave the range"))?;
    set_refcount(bytes, cluster, new)
}

/// Like [`append_cluster_aligned`], and gives every appended cluster a refcount of 1,
/// so the image stays refcount-consistent.
pub fn append_counted(bytes: &mut Vec<u8>, cluster_size: u64, data: &[u8]) -> Result<u64, String> {
    let at = append_cluster_aligned(bytes, cluster_size, data);
    let clusters = (data.len() as u64).div_ceil(cluster_size).max(1);
    for k in 0..clusters {
        set_refcount(bytes, at / cluster_size + k, 1)?;
    }
    Ok(at)
}
