//! Finding repeats cheaply during a deduplicating convert.
//!
//! Every distinct cluster needs its SHA-256 for the dedup table, but a
//! repeat of a cluster seen earlier in the source does not: the writer can
//! take the digest from the table entry of the copy already written. The
//! workers fingerprint each cluster with xxh3 (an order of magnitude
//! cheaper than SHA-256), look the fingerprint up in a small lossy table of
//! earlier clusters, and confirm a candidate by reading the earlier
//! cluster back from the source and comparing the bytes. Only a confirmed
//! repeat skips SHA-256, so a fingerprint collision costs one compare and
//! never a wrong mapping.
//!
//! The table is shared by the workers without locks. What it holds depends
//! on thread timing, but the output does not: a repeat that is missed is
//! hashed with SHA-256 and reaches the same decision in the writer, which
//! finds the same indexed copy either way.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::backing::BackingSource;
use crate::error::Result;

/// Slots of the table at most (8 bytes each): 8 MiB whatever the disk
/// size; a bigger disk loses some repeats to SHA-256, never correctness.
const MAX_SLOTS: u64 = 1 << 20;
/// Slots looked at from the home slot of a fingerprint.
const PROBES: usize = 4;
/// Bits of a slot holding guest cluster + 1 (0 marks an empty slot); the
/// rest hold a fragment of the fingerprint.
const CLUSTER_BITS: u32 = 40;
const CLUSTER_MASK: u64 = (1 << CLUSTER_BITS) - 1;

/// Guest clusters of the source by fingerprint, first seen kept.
#[derive(Debug)]
pub(crate) struct RepeatFinder {
    slots: Vec<AtomicU64>,
    cluster_size: usize,
}

impl RepeatFinder {
    /// A table for a source of `clusters` clusters of `cluster_size` bytes.
    pub fn new(clusters: u64, cluster_size: usize) -> Self {
        let n = (clusters.saturating_mul(2))
            .next_power_of_two()
            .clamp(PROBES as u64, MAX_SLOTS);
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            cluster_size,
        }
    }

    /// An earlier guest cluster of `source` whose bytes equal `chunk`
    /// (guest cluster `cluster`, a whole cluster); when there is none,
    /// `chunk` is remembered for the clusters after it.
    pub fn earlier_copy(
        &self,
        source: &dyn BackingSource,
        cluster: u64,
        chunk: &[u8],
    ) -> Result<Option<u64>> {
        if cluster >= CLUSTER_MASK || chunk.len() != self.cluster_size {
            return Ok(None);
        }
        let fingerprint = xxhash_rust::xxh3::xxh3_64(chunk);
        let fragment = fingerprint >> CLUSTER_BITS;
        let mask = self.slots.len() as u64 - 1;
        let home = fingerprint & mask;
        let mut scratch = Vec::new();
        for probe in 0..PROBES as u64 {
            let slot = &self.slots[((home + probe) & mask) as usize];
            let value = slot.load(Ordering::Relaxed);
            if value == 0 {
                let mine = (fragment << CLUSTER_BITS) | (cluster + 1);
                // Lost to another worker: only a missed shortcut.
                let _ = slot.compare_exchange(0, mine, Ordering::Relaxed, Ordering::Relaxed);
                return Ok(None);
            }
            let earlier = (value & CLUSTER_MASK) - 1;
            if value >> CLUSTER_BITS != fragment || earlier >= cluster {
                continue;
            }
            scratch.resize(self.cluster_size, 0);
            let offset = earlier * self.cluster_size as u64;
            let readable = (source.size().saturating_sub(offset) as usize).min(self.cluster_size);
            source.read_at(&mut scratch[..readable], offset)?;
            scratch[readable..].fill(0);
            if scratch == chunk {
                return Ok(Some(earlier));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backing::RawBacking;
    use qcow2_io::MemoryStorage;

    fn source(bytes: Vec<u8>) -> RawBacking {
        RawBacking::new(std::sync::Arc::new(MemoryStorage::from_bytes(bytes))).unwrap()
    }

    #[test]
    fn finds_only_earlier_equal_clusters() {
        let cs = 4096;
        let mut disk = vec![0u8; cs * 4];
        disk[..cs].fill(7);
        disk[cs..2 * cs].fill(8);
        disk[2 * cs..3 * cs].fill(7);
        disk[3 * cs..].fill(8);
        disk[4 * cs - 1] = 9;
        let src = source(disk.clone());
        let finder = RepeatFinder::new(4, cs);
        let chunk = |i: usize| &disk[i * cs..(i + 1) * cs];
        assert_eq!(finder.earlier_copy(&src, 0, chunk(0)).unwrap(), None);
        assert_eq!(finder.earlier_copy(&src, 1, chunk(1)).unwrap(), None);
        assert_eq!(finder.earlier_copy(&src, 2, chunk(2)).unwrap(), Some(0));
        // One byte differs from cluster 1: a compare, then no match.
        assert_eq!(finder.earlier_copy(&src, 3, chunk(3)).unwrap(), None);
        // Asked again for cluster 0 itself: no earlier copy of it.
        assert_eq!(finder.earlier_copy(&src, 0, chunk(0)).unwrap(), None);
    }

    #[test]
    fn a_fingerprint_match_with_other_bytes_is_no_repeat() {
        let cs = 4096;
        let disk = vec![5u8; cs * 2];
        let src = source(disk);
        let finder = RepeatFinder::new(2, cs);
        // Plant cluster 0 under the fingerprint of other bytes, as a
        // collision would.
        let other = vec![6u8; cs];
        let fp = xxhash_rust::xxh3::xxh3_64(&other);
        let mask = finder.slots.len() as u64 - 1;
        finder.slots[(fp & mask) as usize].store(
            ((fp >> CLUSTER_BITS) << CLUSTER_BITS) | 1,
            Ordering::Relaxed,
        );
        assert_eq!(finder.earlier_copy(&src, 1, &other).unwrap(), None);
    }
}
