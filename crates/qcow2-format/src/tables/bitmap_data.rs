//! What a bitmap's directory flags and data clusters say, beyond their
//! framing: the notes a reader owes the user about in_use and extra data
//! (BMP-IN-USE, BMP-EXTRA-DATA), and the zero tail of the last data cluster
//! (BMP-DATA-TAIL).

use crate::error::{ErrorKind, FormatError};
use crate::rules;
use crate::units::ClusterGeometry;

use super::bitmap_directory::{BitmapEntry, FLAG_EXTRA_DATA_COMPATIBLE, FLAG_IN_USE};

/// Bits a bitmap of a `size`-byte disk holds (one per `granularity` bytes).
pub fn valid_bits(size: u64, granularity: u64) -> u64 {
    if granularity == 0 {
        0
    } else {
        size.div_ceil(granularity)
    }
}

/// What the user must be told about a well-framed entry: a bitmap saved
/// inconsistently (in_use), and extra data with whether it stops the bitmap
/// from being used. Both are notes: the image reads normally.
pub fn entry_notes(e: &BitmapEntry) -> Vec<FormatError> {
    let mut out = Vec::new();
    if e.flags & FLAG_IN_USE != 0 {
        out.push(FormatError::new(
            rules::BMP_IN_USE,
            e.at + 12,
            ErrorKind::Malformed {
                field: "bitmap flags",
                reason: format!(
                    "bitmap {:?} is in use (it was not saved consistently): its content \
                     cannot be trusted",
                    e.name_text()
                ),
            },
        ));
    }
    if !e.extra_data.is_empty() {
        let usable = e.flags & FLAG_EXTRA_DATA_COMPATIBLE != 0;
        out.push(FormatError::new(
            rules::BMP_EXTRA_DATA,
            e.at + 20,
            ErrorKind::Malformed {
                field: "bitmap extra_data_size",
                reason: format!(
                    "bitmap {:?} has {} bytes of extra data, kept as they are; {}",
                    e.name_text(),
                    e.extra_data.len(),
                    if usable {
                        "extra_data_compatible is set, so the bitmap stays usable"
                    } else {
                        "extra_data_compatible is clear, so no reader may use the bitmap"
                    }
                ),
            },
        ));
    }
    out
}

/// Checks the last data cluster of bitmap `e` of a `size`-byte disk, read
/// at file offset `at` (BMP-DATA-TAIL): every bit past the last one the
/// disk needs is zero. `index` is the table entry the cluster belongs to;
/// other entries have no tail.
pub fn check_tail(
    e: &BitmapEntry,
    size: u64,
    geo: ClusterGeometry,
    index: u64,
    cluster: &[u8],
    at: u64,
) -> Option<FormatError> {
    let bits = valid_bits(size, e.granularity());
    let per_cluster = geo.cluster_size() * 8;
    if bits == 0 || index != (bits - 1) / per_cluster {
        return None;
    }
    let used = bits - index * per_cluster;
    let first_byte = (used / 8) as usize;
    let partial = (used % 8) as u32;
    let stray = cluster
        .iter()
        .enumerate()
        .skip(first_byte)
        .find_map(|(i, &b)| {
            // Bits are counted from the least significant one.
            let mask = if i == first_byte && partial != 0 {
                !((1u8 << partial) - 1)
            } else {
                0xff
            };
            (b & mask != 0).then_some(i)
        })?;
    Some(FormatError::new(
        rules::BMP_DATA_TAIL,
        at + stray as u64,
        ErrorKind::Malformed {
            field: "bitmap data",
            reason: format!(
                "bitmap {:?} has a bit set past its last bit ({bits} bits for {size} bytes at \
                 {} bytes per bit)",
                e.name_text(),
                e.granularity()
            ),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::HostOffset;

    fn entry(flags: u32, extra: &[u8]) -> BitmapEntry {
        BitmapEntry {
            at: 0x1000,
            table_offset: HostOffset(0x10000),
            table_size: 1,
            flags,
            kind: 1,
            granularity_bits: 16,
            name: b"b0".to_vec(),
            extra_data: extra.to_vec(),
            padding: Vec::new(),
        }
    }

    fn geo() -> ClusterGeometry {
        ClusterGeometry::new(12).unwrap()
    }

    #[test]
    fn notes_name_their_rules() {
        assert!(entry_notes(&entry(2, &[])).is_empty());
        let rules: Vec<_> = entry_notes(&entry(1 | 4, &[7; 8]))
            .iter()
            .map(|e| (e.rule, e.offset))
            .collect();
        assert_eq!(
            rules,
            [(rules::BMP_IN_USE, 0x100c), (rules::BMP_EXTRA_DATA, 0x1014)]
        );
    }

    #[test]
    fn tail_bits_past_the_disk_are_found() {
        // 1 MiB at 64 KiB per bit: 16 bits, bytes 0 and 1 of the cluster.
        let e = entry(2, &[]);
        let mut cluster = vec![0u8; 4096];
        cluster[0] = 0xff;
        cluster[1] = 0xff;
        assert!(check_tail(&e, 1 << 20, geo(), 0, &cluster, 0x2000).is_none());
        cluster[2] = 1;
        let err = check_tail(&e, 1 << 20, geo(), 0, &cluster, 0x2000).unwrap();
        assert_eq!((err.rule, err.offset), (rules::BMP_DATA_TAIL, 0x2002));
        // 1 MiB + 1 byte needs 17 bits: bit 0 of byte 2 is valid, bit 1 not.
        cluster[2] = 1;
        assert!(check_tail(&e, (1 << 20) + 1, geo(), 0, &cluster, 0x2000).is_none());
        cluster[2] = 2;
        assert!(check_tail(&e, (1 << 20) + 1, geo(), 0, &cluster, 0x2000).is_some());
        // Not the last table entry: no tail.
        assert!(check_tail(&e, 1 << 20, geo(), 1, &cluster, 0x2000).is_none());
    }
}
