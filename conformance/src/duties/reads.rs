//! READ-MAPPING and READ-UNALLOCATED: what the engine reads from goldens
//! with data, against the disk their recorded qemu-io commands describe.

use std::sync::Arc;

use qcow2_format::rules::{READ_MAPPING, READ_UNALLOCATED};
use qcow2_format::HeaderArea;
use qcow2_image::BackingMode;

use super::guest_model::{guest_disk, Until};
use super::{duty, golden, open, read_all, same, seen, DutyCase};
use crate::case_report::CaseKind::{Negative, Positive};
use crate::corpus::TestImage;
use crate::mutate::{get_u64, put_u64};

/// Bits 9-55 of an L1 or L2 entry.
const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;

/// The engine's reading of `bytes` (with `backing`) against the disk
/// golden `name`'s commands describe.
fn compare(bytes: &[u8], name: &str, backing: BackingMode) -> Result<String, String> {
    let want = guest_disk(name, Until::End)?;
    let (image, _) = open(bytes, false, backing)?;
    let got = read_all(&image)?;
    same("the engine's read", &got, &want)?;
    let written = want.iter().filter(|&&b| b != 0).count();
    Ok(format!(
        "all {} guest bytes read as the recorded commands wrote them ({written} non-zero)",
        want.len()
    ))
}

/// The golden `name` read alone, as the oracle says.
fn alone(images: &[TestImage], name: &str) -> Result<String, String> {
    compare(&golden(images, name)?, name, BackingMode::Ignore)
}

/// The backing golden of `chain-top`, opened as its backing file.
fn chain_backing(images: &[TestImage]) -> Result<BackingMode, String> {
    let (base, _) = open(&golden(images, "chain-base")?, false, BackingMode::Ignore)?;
    Ok(BackingMode::Provided(Arc::new(base)))
}

/// A raw backing file holding `bytes`.
fn raw_backing(bytes: Vec<u8>) -> Result<BackingMode, String> {
    let storage = Arc::new(qcow2_io::MemoryStorage::from_bytes(bytes));
    let raw = qcow2_image::RawBacking::new(storage).map_err(|e| e.to_string())?;
    Ok(BackingMode::Provided(Arc::new(raw)))
}

/// The file offset of the L1 table and the cluster bits of `bytes`.
fn l1_of(bytes: &[u8]) -> Result<(usize, u32), String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    Ok((
        a.header.l1_table_offset.get() as usize,
        a.header.cluster_bits,
    ))
}

/// Swaps the u64 entries at `a` and `b`.
fn swap_u64(bytes: &mut [u8], a: usize, b: usize) {
    let (x, y) = (get_u64(bytes, a), get_u64(bytes, b));
    put_u64(bytes, a, y);
    put_u64(bytes, b, x);
}

pub(super) fn cases() -> Vec<DutyCase> {
    vec![
        duty(
            READ_MAPPING,
            Positive,
            "data-v2 read alone",
            "data-v2",
            |i| alone(i, "data-v2"),
        ),
        duty(
            READ_MAPPING,
            Positive,
            "data-v3 read alone",
            "data-v3",
            |i| alone(i, "data-v3"),
        ),
        duty(
            READ_MAPPING,
            Positive,
            "data-extended-l2 read alone",
            "data-extended-l2",
            |i| alone(i, "data-extended-l2"),
        ),
        duty(
            READ_MAPPING,
            Positive,
            "data-512: four L1 entries and a write inside clusters",
            "data-512",
            |i| alone(i, "data-512"),
        ),
        duty(
            READ_MAPPING,
            Positive,
            "compressed-zlib read alone",
            "compressed-zlib",
            |i| alone(i, "compressed-zlib"),
        ),
        duty(
            READ_MAPPING,
            Positive,
            "compressed-zstd read alone",
            "compressed-zstd",
            |i| alone(i, "compressed-zstd"),
        ),
        duty(
            READ_MAPPING,
            Positive,
            "snapshot read alone",
            "snapshot",
            |i| alone(i, "snapshot"),
        ),
        duty(
            READ_MAPPING,
            Positive,
            "chain-base read alone",
            "chain-base",
            |i| alone(i, "chain-base"),
        ),
        duty(
            READ_MAPPING,
            Negative,
            "L2 entries of guest clusters 0 and 16 swapped",
            "data-v2",
            |i| {
                let mut b = golden(i, "data-v2")?;
                let (l1, _) = l1_of(&b)?;
                let l2 = (get_u64(&b, l1) & OFFSET) as usize;
                swap_u64(&mut b, l2, l2 + 16 * 8);
                seen(compare(&b, "data-v2", BackingMode::Ignore))
            },
        ),
        duty(
            READ_MAPPING,
            Negative,
            "compressed descriptors of guest clusters 0 and 2 swapped",
            "compressed-zlib",
            |i| {
                let mut b = golden(i, "compressed-zlib")?;
                let (l1, bits) = l1_of(&b)?;
                if bits != 16 {
                    return Err("compressed-zlib does not have 64 KiB clusters".into());
                }
                let l2 = (get_u64(&b, l1) & OFFSET) as usize;
                if get_u64(&b, l2) & 1 << 62 == 0 || get_u64(&b, l2 + 16) & 1 << 62 == 0 {
                    return Err("guest clusters 0 and 2 are not both compressed".into());
                }
                swap_u64(&mut b, l2, l2 + 16);
                seen(compare(&b, "compressed-zlib", BackingMode::Ignore))
            },
        ),
        duty(
            READ_MAPPING,
            Negative,
            "L1 entries 0 and 1 swapped",
            "data-512",
            |i| {
                let mut b = golden(i, "data-512")?;
                let (l1, bits) = l1_of(&b)?;
                if bits != 9 {
                    return Err("data-512 does not have 512-byte clusters".into());
                }
                swap_u64(&mut b, l1, l1 + 8);
                seen(compare(&b, "data-512", BackingMode::Ignore))
            },
        ),
        duty(
            READ_UNALLOCATED,
            Positive,
            "chain-top over chain-base: subclusters, a zero cluster, past the backing end",
            "chain-top",
            |i| compare(&golden(i, "chain-top")?, "chain-top", chain_backing(i)?),
        ),
        duty(
            READ_UNALLOCATED,
            Negative,
            "chain-top read by a reader denied its backing file",
            "chain-top",
            |i| {
                seen(compare(
                    &golden(i, "chain-top")?,
                    "chain-top",
                    BackingMode::Ignore,
                ))
            },
        ),
        duty(
            READ_UNALLOCATED,
            Positive,
            "data-v3, which names no backing file: unallocated clusters read as zeros",
            "data-v3",
            |i| alone(i, "data-v3"),
        ),
        duty(
            READ_UNALLOCATED,
            Negative,
            "data-v3 read by a reader that takes a backing file the header does not name",
            "data-v3",
            |i| {
                let size = HeaderArea::parse(&golden(i, "data-v3")?)
                    .map_err(|e| e.to_string())?
                    .header
                    .size;
                let backing = raw_backing(vec![0x77; size as usize])?;
                seen(compare(&golden(i, "data-v3")?, "data-v3", backing))
            },
        ),
        duty(
            READ_UNALLOCATED,
            Negative,
            "chain-top read by a reader that reads past the backing disk's end",
            "chain-top",
            |i| {
                // chain-base's own disk, then bytes where it has none.
                let mut disk = guest_disk("chain-base", Until::End)?;
                let top = HeaderArea::parse(&golden(i, "chain-top")?)
                    .map_err(|e| e.to_string())?
                    .header
                    .size;
                if top <= disk.len() as u64 {
                    return Err("chain-top does not reach past chain-base".into());
                }
                disk.resize(top as usize, 0x77);
                seen(compare(
                    &golden(i, "chain-top")?,
                    "chain-top",
                    raw_backing(disk)?,
                ))
            },
        ),
        duty(
            READ_UNALLOCATED,
            Negative,
            "chain-top with the zero bits of guest cluster 1 dropped",
            "chain-top",
            |i| {
                let mut b = golden(i, "chain-top")?;
                let (l1, _) = l1_of(&b)?;
                let l2 = (get_u64(&b, l1) & OFFSET) as usize;
                // Extended entry 1: the bitmap is its second u64; bits 32-63 say zero.
                let bitmap = l2 + 16 + 8;
                let bits = get_u64(&b, bitmap);
                if bits >> 32 == 0 {
                    return Err("guest cluster 1 of chain-top is not a zero cluster".into());
                }
                put_u64(&mut b, bitmap, bits & 0xffff_ffff);
                seen(compare(&b, "chain-top", chain_backing(i)?))
            },
        ),
    ]
}
