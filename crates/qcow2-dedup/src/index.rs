//! The in-memory index from digest to physical cluster.
//!
//! One `u64` slot per entry in an open-addressing table (linear probing):
//! the low 40 bits hold the cluster index plus one (0 = empty slot), the high
//! 24 bits a fragment of the digest. The slot's home is computed from the
//! fragment alone, so entries can be moved (deletion, growth) without the
//! full digest. A fragment match is only a candidate: callers confirm it
//! against the full 32-byte digest in the on-disk table. With a load kept
//! between 0.57 and 0.85 an entry costs 9.4 to 14.1 bytes.

use qcow2_format::ClusterIndex;

use crate::digest::Digest;

const CLUSTER_BITS: u32 = 40;
const CLUSTER_MASK: u64 = (1 << CLUSTER_BITS) - 1;
const FRAGMENT_BITS: u32 = 64 - CLUSTER_BITS;
/// Grow past this load (percent).
const MAX_LOAD: usize = 85;
/// Load right after a build.
const BUILD_LOAD: usize = 70;

/// Largest cluster index the index can hold; clusters above it are simply
/// not indexed (2^40 clusters is 64 TiB with 64 KiB clusters).
pub const MAX_INDEXED_CLUSTER: u64 = CLUSTER_MASK - 1;

/// Maps digests to the physical clusters holding that content.
#[derive(Clone, Debug, Default)]
pub struct DigestIndex {
    slots: Vec<u64>,
    len: usize,
}

fn fragment(digest: &Digest) -> u64 {
    u64::from(digest[0]) << 16 | u64::from(digest[1]) << 8 | u64::from(digest[2])
}

impl DigestIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index with room for `entries` without growing.
    pub fn with_capacity(entries: usize) -> Self {
        let cap = (entries * 100 / BUILD_LOAD).max(16);
        Self {
            slots: vec![0; cap],
            len: 0,
        }
    }

    /// Builds an index from `(digest, cluster)` pairs.
    pub fn build(entries: impl ExactSizeIterator<Item = (Digest, ClusterIndex)>) -> Self {
        let mut index = Self::with_capacity(entries.len());
        for (d, c) in entries {
            index.insert(&d, c);
        }
        index
    }

    /// Number of indexed clusters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory the table holds.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * 8
    }

    fn home(&self, fragment: u64) -> usize {
        ((fragment * self.slots.len() as u64) >> FRAGMENT_BITS) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// Adds `cluster` under `digest`; returns false when the cluster index
    /// is too large to be held (it then stays unindexed).
    pub fn insert(&mut self, digest: &Digest, cluster: ClusterIndex) -> bool {
        if cluster.get() > MAX_INDEXED_CLUSTER {
            return false;
        }
        if self.slots.is_empty() || (self.len + 1) * 100 > self.slots.len() * MAX_LOAD {
            self.grow();
        }
        let frag = fragment(digest);
        self.place(frag << CLUSTER_BITS | (cluster.get() + 1));
        self.len += 1;
        true
    }

    fn place(&mut self, slot: u64) {
        let mut i = self.home(slot >> CLUSTER_BITS);
        while self.slots[i] != 0 {
            i = self.next(i);
        }
        self.slots[i] = slot;
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() * 3 / 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        for s in old.into_iter().filter(|&s| s != 0) {
            self.place(s);
        }
    }

    /// Clusters whose digest may be `digest` (a fragment match): confirm
    /// each against the full digest before use.
    pub fn candidates(&self, digest: &Digest) -> Vec<ClusterIndex> {
        let mut out = Vec::new();
        if self.slots.is_empty() {
            return out;
        }
        let frag = fragment(digest);
        let mut i = self.home(frag);
        while self.slots[i] != 0 {
            let s = self.slots[i];
            if s >> CLUSTER_BITS == frag {
                out.push(ClusterIndex((s & CLUSTER_MASK) - 1));
            }
            i = self.next(i);
        }
        out
    }

    /// Removes `cluster` from under `digest`; false when it was not there.
    pub fn remove(&mut self, digest: &Digest, cluster: ClusterIndex) -> bool {
        if self.slots.is_empty() || cluster.get() > MAX_INDEXED_CLUSTER {
            return false;
        }
        let want = fragment(digest) << CLUSTER_BITS | (cluster.get() + 1);
        let mut i = self.home(want >> CLUSTER_BITS);
        while self.slots[i] != want {
            if self.slots[i] == 0 {
                return false;
            }
            i = self.next(i);
        }
        self.slots[i] = 0;
        self.len -= 1;
        // Backward shift: pull later entries of the run into the hole when
        // their home allows it, so probing never stops early.
        let mut hole = i;
        let mut j = self.next(i);
        while self.slots[j] != 0 {
            let home = self.home(self.slots[j] >> CLUSTER_BITS);
            let movable = if hole <= j {
                home <= hole || home > j
            } else {
                home <= hole && home > j
            };
            if movable {
                self.slots[hole] = self.slots[j];
                self.slots[j] = 0;
                hole = j;
            }
            j = self.next(j);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::hash_cluster;

    fn d(i: u64) -> Digest {
        hash_cluster(&i.to_le_bytes())
    }

    #[test]
    fn insert_find_remove_many() {
        let mut index = DigestIndex::new();
        for i in 0..20_000u64 {
            assert!(index.insert(&d(i), ClusterIndex(i * 3)));
        }
        assert_eq!(index.len(), 20_000);
        for i in 0..20_000u64 {
            assert!(
                index.candidates(&d(i)).contains(&ClusterIndex(i * 3)),
                "{i}"
            );
        }
        for i in (0..20_000u64).step_by(2) {
            assert!(index.remove(&d(i), ClusterIndex(i * 3)));
        }
        assert!(!index.remove(&d(0), ClusterIndex(0)));
        for i in 0..20_000u64 {
            let found = index.candidates(&d(i)).contains(&ClusterIndex(i * 3));
            assert_eq!(found, i % 2 == 1, "{i}");
        }
        let per = index.memory_bytes() as f64 / index.len() as f64;
        assert!(per <= 32.0, "{per}");
    }

    #[test]
    fn bytes_per_entry_within_16_after_growth() {
        let mut index = DigestIndex::new();
        for i in 0..100_000u64 {
            index.insert(&d(i), ClusterIndex(i));
            if i > 1000 {
                let per = index.memory_bytes() as f64 / index.len() as f64;
                assert!(per <= 16.0, "{per} bytes per entry at {i}");
            }
        }
        let built = DigestIndex::build(
            (0..100_000u64)
                .map(|i| (d(i), ClusterIndex(i)))
                .collect::<Vec<_>>()
                .into_iter(),
        );
        assert!(built.memory_bytes() as f64 / built.len() as f64 <= 12.0);
    }

    #[test]
    fn duplicates_and_large_clusters() {
        let mut index = DigestIndex::new();
        index.insert(&d(1), ClusterIndex(5));
        index.insert(&d(1), ClusterIndex(9));
        let mut c = index.candidates(&d(1));
        c.sort();
        assert_eq!(c, vec![ClusterIndex(5), ClusterIndex(9)]);
        assert!(!index.insert(&d(2), ClusterIndex(MAX_INDEXED_CLUSTER + 1)));
        assert!(index.insert(&d(2), ClusterIndex(MAX_INDEXED_CLUSTER)));
        assert_eq!(
            index.candidates(&d(2)),
            vec![ClusterIndex(MAX_INDEXED_CLUSTER)]
        );
    }
}
