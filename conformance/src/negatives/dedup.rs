//! Negative cases of the dedup table's content and refcounts (DD-DIGEST,
//! DD-LIVE, DD-REFCOUNT), made from the deduplicated images our writer
//! makes (`crate::engine_images`). Each keeps every refcount consistent, so
//! that only the named rule breaks.

use qcow2_format::rules::*;
use qcow2_format::tables::compressed::{CompressedDescriptor, COMPRESSED_FLAG};
use qcow2_format::tables::dedup_table::{DEDUP_ENTRY_SIZE, HASH_SIZE};
use qcow2_format::tables::l1::{L1_COPIED, L1_OFFSET_MASK};
use qcow2_format::tables::l2::L2_OFFSET_MASK;
use qcow2_format::HeaderArea;
use sha2::{Digest, Sha256};

use super::{case, named, CaseInput, NegativeCase};
use crate::corpus::TestImage;
use crate::engine_images::{DEDUP_CONVERT, DEDUP_WRITES};
use crate::mutate::{get_refcount, get_u64, put_u64, set_refcount};

/// What the cases need to know about a deduplicated image.
struct Dedup {
    cluster_size: u64,
    /// Entries per level-2 dedup cluster.
    per_l2: u64,
    /// Offset of the level-1 dedup table.
    l1: u64,
    /// Entries of the level-1 dedup table.
    l1_size: u64,
}

fn dedup(bytes: &[u8]) -> Result<Dedup, String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let d = a.dedup().ok_or("no dedup extension")?;
    let cluster_size = 1u64 << a.header.cluster_bits;
    Ok(Dedup {
        cluster_size,
        per_l2: cluster_size / DEDUP_ENTRY_SIZE as u64,
        l1: d.l1_offset.get(),
        l1_size: d.l1_size.into(),
    })
}

impl Dedup {
    /// Offset of level-2 dedup cluster `k` (error when the level-1 entry is 0).
    fn l2(&self, bytes: &[u8], k: u64) -> Result<usize, String> {
        if k >= self.l1_size {
            return Err(format!("the dedup table has no level-1 entry {k}"));
        }
        match get_u64(bytes, (self.l1 + 8 * k) as usize) {
            0 => Err(format!("level-1 dedup entry {k} is empty")),
            at => Ok(at as usize),
        }
    }

    /// Byte offset of the dedup entry of physical cluster `p`.
    fn slot(&self, bytes: &[u8], p: u64) -> Result<usize, String> {
        let l2 = self.l2(bytes, p / self.per_l2)?;
        Ok(l2 + (p % self.per_l2) as usize * DEDUP_ENTRY_SIZE)
    }

    /// Byte offsets of every non-empty dedup entry.
    fn entries(&self, bytes: &[u8]) -> Vec<usize> {
        (0..self.l1_size)
            .filter_map(|k| self.l2(bytes, k).ok())
            .flat_map(|l2| (0..self.per_l2 as usize).map(move |i| l2 + i * DEDUP_ENTRY_SIZE))
            .filter(|&at| bytes[at..at + DEDUP_ENTRY_SIZE].iter().any(|&b| b != 0))
            .collect()
    }

    /// Writes an entry for physical cluster `p`: the SHA-256 of the bytes
    /// the cluster holds now (zeros past the end of the file), attributed
    /// to `guest`, as a writer indexing the cluster would.
    fn index(&self, bytes: &mut [u8], p: u64, guest: u64) -> Result<(), String> {
        let at = self.slot(bytes, p)?;
        if bytes[at..at + DEDUP_ENTRY_SIZE].iter().any(|&b| b != 0) {
            return Err(format!("physical cluster {p} already has a dedup entry"));
        }
        let start = ((p * self.cluster_size) as usize).min(bytes.len());
        let end = (((p + 1) * self.cluster_size) as usize).min(bytes.len());
        let mut data = bytes[start..end].to_vec();
        data.resize(self.cluster_size as usize, 0);
        let digest: [u8; 32] = Sha256::digest(&data).into();
        bytes[at..at + HASH_SIZE].copy_from_slice(&digest);
        put_u64(bytes, at + HASH_SIZE, guest);
        Ok(())
    }
}

/// Offset of the first L2 table of the active L1 table, and the L1 size.
fn first_l2_table(bytes: &[u8]) -> Result<(u64, u64, u64), String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let h = &a.header;
    let l1 = h.l1_table_offset.get();
    let l2 = get_u64(bytes, l1 as usize) & L1_OFFSET_MASK;
    if l2 == 0 {
        return Err("the first L1 entry names no L2 table".into());
    }
    Ok((l1, h.l1_size.into(), l2))
}

fn writes(images: &[TestImage]) -> Result<Vec<u8>, String> {
    named(images, DEDUP_WRITES)
}

fn convert(images: &[TestImage]) -> Result<Vec<u8>, String> {
    named(images, DEDUP_CONVERT)
}

/// Flips one bit of the digest of the first non-empty entry.
fn wrong_digest(mut b: Vec<u8>) -> Result<CaseInput, String> {
    let d = dedup(&b)?;
    let at = *d
        .entries(&b)
        .first()
        .ok_or("the dedup table has no entry")?;
    b[at + 7] ^= 0x10;
    Ok(CaseInput::Bytes(b))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    let mut all = content_cases();
    all.extend(metadata_cases());
    all
}

/// The guest-writes image with an entry for the cluster `cluster(b, d)`
/// returns the offset of, as if a writer had indexed it as data.
fn indexed(
    images: &[TestImage],
    cluster: impl FnOnce(&[u8], &Dedup) -> Result<u64, String>,
) -> Result<CaseInput, String> {
    let mut b = writes(images)?;
    let d = dedup(&b)?;
    let at = cluster(&b, &d)?;
    d.index(&mut b, at / d.cluster_size, 0)?;
    Ok(CaseInput::Bytes(b))
}

/// The refcount table offset of `b`.
fn refcount_table(b: &[u8]) -> Result<u64, String> {
    HeaderArea::parse(b)
        .map(|a| a.header.refcount_table_offset.get())
        .map_err(|e| e.to_string())
}

/// DD-LIVE for each kind of metadata cluster, and DD-REFCOUNT for a
/// level-2 dedup cluster that is guest data too.
fn metadata_cases() -> Vec<NegativeCase> {
    vec![
        case(
            DD_LIVE,
            "entry for the header cluster (writer image, guest writes)",
            |i| indexed(i, |_, _| Ok(0)),
        ),
        case(
            DD_LIVE,
            "entry for the active L1 table cluster (writer image, guest writes)",
            |i| indexed(i, |b, _| Ok(first_l2_table(b)?.0)),
        ),
        case(
            DD_LIVE,
            "entry for the refcount table cluster (writer image, guest writes)",
            |i| indexed(i, |b, _| refcount_table(b)),
        ),
        case(
            DD_LIVE,
            "entry for a refcount block cluster (writer image, guest writes)",
            |i| indexed(i, |b, _| Ok(get_u64(b, refcount_table(b)? as usize))),
        ),
        case(
            DD_LIVE,
            "entry for the level-1 dedup table cluster (writer image, guest writes)",
            |i| indexed(i, |_, d| Ok(d.l1)),
        ),
        case(
            DD_LIVE,
            "entry for a level-2 dedup cluster (writer image, guest writes)",
            |i| indexed(i, |b, d| Ok(d.l2(b, 0)? as u64)),
        ),
        case(
            DD_REFCOUNT,
            "level-2 dedup cluster also mapped as guest data (writer image, guest writes)",
            |i| super::engine::alias(writes(i)?, |b| Ok(dedup(b)?.l2(b, 0)? as u64)),
        ),
    ]
}

fn content_cases() -> Vec<NegativeCase> {
    vec![
        case(
            DD_DIGEST,
            "one bit of a live entry's digest flipped (writer image, guest writes)",
            |i| wrong_digest(writes(i)?),
        ),
        case(
            DD_DIGEST,
            "one bit of a live entry's digest flipped (writer image, compressed convert)",
            |i| wrong_digest(convert(i)?),
        ),
        case(
            DD_DIGEST,
            "a live cluster's data changed without its entry (writer image, guest writes)",
            |i| {
                let mut b = writes(i)?;
                let d = dedup(&b)?;
                let at = *d.entries(&b).last().ok_or("the dedup table has no entry")?;
                let p = ((at - d.l2(&b, 0)?) / DEDUP_ENTRY_SIZE) as u64;
                let byte = (p * d.cluster_size + 100) as usize;
                b[byte] ^= 0xff;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            DD_LIVE,
            "entry for a free cluster (writer image, guest writes)",
            |i| {
                let mut b = writes(i)?;
                let d = dedup(&b)?;
                let clusters = (b.len() as u64).div_ceil(d.cluster_size);
                let p = (1..clusters)
                    .find(|&p| get_refcount(&b, p) == Ok(0))
                    .ok_or("no free cluster inside the file")?;
                d.index(&mut b, p, 20 * d.cluster_size)?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            DD_LIVE,
            "entry for a cluster past the end of the file (writer image, compressed convert)",
            |i| {
                let mut b = convert(i)?;
                let d = dedup(&b)?;
                let p = (b.len() as u64).div_ceil(d.cluster_size) + 2;
                d.index(&mut b, p, 0)?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            DD_LIVE,
            "entry for a host cluster of compressed streams (writer image, compressed convert)",
            |i| {
                let mut b = convert(i)?;
                let d = dedup(&b)?;
                let a = HeaderArea::parse(&b).map_err(|e| e.to_string())?;
                let geo = a.header.geometry().map_err(|e| e.to_string())?;
                let (_, _, l2) = first_l2_table(&b)?;
                let (guest, raw) = (0..d.cluster_size / 8)
                    .map(|g| (g, get_u64(&b, (l2 + 8 * g) as usize)))
                    .find(|&(_, e)| e & COMPRESSED_FLAG != 0)
                    .ok_or("the image has no compressed cluster")?;
                let desc = CompressedDescriptor::decode(raw, geo, l2 + 8 * guest)
                    .map_err(|e| e.to_string())?;
                d.index(
                    &mut b,
                    desc.host_offset.get() / d.cluster_size,
                    guest * d.cluster_size,
                )?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            DD_LIVE,
            "entry for a cluster kept allocated but flagged zero (writer image, guest writes)",
            |i| {
                let mut b = writes(i)?;
                let d = dedup(&b)?;
                let (_, _, l2) = first_l2_table(&b)?;
                let mapped: Vec<(usize, u64)> = (0..d.cluster_size / 8)
                    .map(|g| (l2 + 8 * g) as usize)
                    .map(|at| (at, get_u64(&b, at)))
                    .filter(|&(_, e)| e & COMPRESSED_FLAG == 0 && e & L2_OFFSET_MASK != 0)
                    .collect();
                let indexed: Vec<u64> = d
                    .entries(&b)
                    .iter()
                    .map(|&at| {
                        let k = (0..d.l1_size)
                            .find(|&k| {
                                d.l2(&b, k).is_ok_and(|l2| {
                                    (l2..l2 + d.cluster_size as usize).contains(&at)
                                })
                            })
                            .unwrap_or(0);
                        let l2 = d.l2(&b, k).unwrap_or(0);
                        k * d.per_l2 + ((at - l2) / DEDUP_ENTRY_SIZE) as u64
                    })
                    .collect();
                // An indexed cluster that exactly one guest cluster maps:
                // the zero flag (bit 0) makes that guest cluster read zeros
                // while the host cluster stays allocated to it.
                let (at, e) = mapped
                    .iter()
                    .copied()
                    .find(|&(_, e)| {
                        let host = e & L2_OFFSET_MASK;
                        indexed.contains(&(host / d.cluster_size))
                            && mapped
                                .iter()
                                .filter(|&&(_, x)| x & L2_OFFSET_MASK == host)
                                .count()
                                == 1
                    })
                    .ok_or("no indexed cluster mapped exactly once")?;
                put_u64(&mut b, at, e | 1);
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            DD_LIVE,
            "entry for an L2 table cluster (writer image, guest writes)",
            |i| {
                let mut b = writes(i)?;
                let d = dedup(&b)?;
                let (_, _, l2) = first_l2_table(&b)?;
                d.index(&mut b, l2 / d.cluster_size, 0)?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            DD_REFCOUNT,
            "level-2 dedup cluster with refcount 0 (writer image, guest writes)",
            |i| {
                let mut b = writes(i)?;
                let d = dedup(&b)?;
                let l2 = d.l2(&b, 0)? as u64;
                set_refcount(&mut b, l2 / d.cluster_size, 0)?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            DD_REFCOUNT,
            "level-1 dedup table with refcount 0 (writer image, compressed convert)",
            |i| {
                let mut b = convert(i)?;
                let d = dedup(&b)?;
                set_refcount(&mut b, d.l1 / d.cluster_size, 0)?;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(
            DD_REFCOUNT,
            "level-2 dedup cluster also used as an L2 table (writer image, guest writes)",
            |i| {
                let mut b = writes(i)?;
                let d = dedup(&b)?;
                let l2 = d.l2(&b, 0)?;
                // An all-zero cluster is a valid level-2 dedup cluster (every
                // entry empty) and a valid L2 table (every entry unallocated):
                // only the double use is wrong. Its refcount stays 1, so the
                // COPIED flag of the new L1 entry is right for it.
                b[l2..l2 + d.cluster_size as usize].fill(0);
                let (l1, l1_size, _) = first_l2_table(&b)?;
                let free = (0..l1_size)
                    .map(|k| (l1 + 8 * k) as usize)
                    .rev()
                    .find(|&at| get_u64(&b, at) == 0)
                    .ok_or("no free L1 entry")?;
                put_u64(&mut b, free, l2 as u64 | L1_COPIED);
                Ok(CaseInput::Bytes(b))
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_images_have_what_the_cases_need() {
        let b = crate::engine_images::build_dedup_writes().unwrap();
        let d = dedup(&b).unwrap();
        assert!(d.entries(&b).len() >= 3, "{}", d.entries(&b).len());
        let (_, l1_size, _) = first_l2_table(&b).unwrap();
        assert!(l1_size >= 3);
        let (_, _, l2) = first_l2_table(&b).unwrap();
        // Shared clusters: some host cluster is mapped twice.
        let hosts: Vec<u64> = (0..d.cluster_size / 8)
            .map(|g| get_u64(&b, (l2 + 8 * g) as usize) & L2_OFFSET_MASK)
            .filter(|&h| h != 0)
            .collect();
        let mut unique = hosts.clone();
        unique.sort_unstable();
        unique.dedup();
        assert!(unique.len() < hosts.len(), "{hosts:x?}");
    }
}
