//! The refcounts a check computes from the references it finds.
//!
//! Memory grows with the clusters that are referenced, not with the file
//! length: counts live in chunks allocated on first touch. The number of
//! clusters tracked is bounded by the file length (plus the one partly
//! allocated cluster after it that `qemu-img` tolerates), itself capped by
//! [`MAX_TRACKED_CLUSTERS`].

/// Largest number of host clusters a check tracks (QEMU's limit, `INT_MAX`).
pub const MAX_TRACKED_CLUSTERS: u64 = i32::MAX as u64;

/// Clusters per chunk.
const CHUNK: u64 = 4096;

/// What a cluster is used for; a cluster with two different uses overlaps.
pub(crate) mod role {
    /// The header cluster.
    pub const HEADER: u8 = 1 << 0;
    /// An active or snapshot L1 table.
    pub const L1: u8 = 1 << 1;
    /// An L2 table.
    pub const L2: u8 = 1 << 2;
    /// Guest data (plain, preallocated or compressed).
    pub const DATA: u8 = 1 << 3;
    /// The refcount table.
    pub const REFTABLE: u8 = 1 << 4;
    /// A refcount block.
    pub const REFBLOCK: u8 = 1 << 5;
    /// The snapshot table.
    pub const SNAPSHOTS: u8 = 1 << 6;
    /// Anything else: bitmaps, the LUKS header, extra references.
    pub const OTHER: u8 = 1 << 7;

    /// Names of the roles set in `roles`, joined by ", ".
    pub fn names(roles: u8) -> String {
        const NAMES: [&str; 8] = [
            "the header",
            "an L1 table",
            "an L2 table",
            "a data cluster",
            "the refcount table",
            "a refcount block",
            "the snapshot table",
            "other metadata (bitmaps, encryption header or extra references)",
        ];
        NAMES
            .iter()
            .enumerate()
            .filter(|(bit, _)| roles & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone)]
struct Chunk {
    counts: Vec<u64>,
    roles: Vec<u8>,
}

impl Chunk {
    fn new() -> Self {
        Self {
            counts: vec![0; CHUNK as usize],
            roles: vec![0; CHUNK as usize],
        }
    }
}

/// Computed refcount and roles of each host cluster `0..len`.
#[derive(Debug, Clone)]
pub(crate) struct RefMap {
    chunks: Vec<Option<Box<Chunk>>>,
    len: u64,
    /// The rule of clusters an extra-references hook counted (its table's
    /// own rule, reported for their refcount and overlap findings).
    hook_rules: std::collections::HashMap<u64, qcow2_format::RuleId>,
}

/// Splits a cluster index into (chunk, index in chunk); both fit `usize`
/// because `len` is at most [`MAX_TRACKED_CLUSTERS`].
fn split(cluster: u64) -> (usize, usize) {
    ((cluster / CHUNK) as usize, (cluster % CHUNK) as usize)
}

impl RefMap {
    /// An empty map for `len` clusters; `None` when `len` exceeds
    /// [`MAX_TRACKED_CLUSTERS`].
    pub fn new(len: u64) -> Option<Self> {
        let mut map = Self {
            chunks: Vec::new(),
            len: 0,
            hook_rules: std::collections::HashMap::new(),
        };
        map.grow(len).then_some(map)
    }

    /// Number of clusters tracked.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Tracks at least `len` clusters; false when that exceeds the limit.
    pub fn grow(&mut self, len: u64) -> bool {
        if len > MAX_TRACKED_CLUSTERS {
            return false;
        }
        if len > self.len {
            self.len = len;
            self.chunks
                .resize_with(len.div_ceil(CHUNK) as usize, || None);
        }
        true
    }

    /// The computed refcount of `cluster` (0 when untracked).
    pub fn get(&self, cluster: u64) -> u64 {
        self.slot(cluster).map_or(0, |(c, i)| c.counts[i])
    }

    /// Records that a hook counted `cluster` under `rule`.
    pub fn set_hook_rule(&mut self, cluster: u64, rule: qcow2_format::RuleId) {
        self.hook_rules.insert(cluster, rule);
    }

    /// The rule of a hook that counted `cluster`, if one did.
    pub fn hook_rule(&self, cluster: u64) -> Option<qcow2_format::RuleId> {
        self.hook_rules.get(&cluster).copied()
    }

    /// The roles of `cluster`.
    pub fn roles(&self, cluster: u64) -> u8 {
        self.slot(cluster).map_or(0, |(c, i)| c.roles[i])
    }

    fn slot(&self, cluster: u64) -> Option<(&Chunk, usize)> {
        if cluster >= self.len {
            return None;
        }
        let (chunk, index) = split(cluster);
        self.chunks
            .get(chunk)
            .and_then(|c| c.as_deref())
            .map(|c| (c, index))
    }

    fn slot_mut(&mut self, cluster: u64) -> Option<(&mut Chunk, usize)> {
        if cluster >= self.len {
            return None;
        }
        let (chunk, index) = split(cluster);
        let entry = self.chunks.get_mut(chunk)?;
        let chunk = entry.get_or_insert_with(|| Box::new(Chunk::new()));
        Some((chunk, index))
    }

    /// Adds `times` references of kind `role` to a tracked `cluster`, up to
    /// `max`; returns how many did not fit (0 when all did).
    pub fn add(&mut self, cluster: u64, times: u64, role: u8, max: u64) -> u64 {
        let Some((chunk, i)) = self.slot_mut(cluster) else {
            return times;
        };
        chunk.roles[i] |= role;
        let room = max.saturating_sub(chunk.counts[i]);
        let added = times.min(room);
        chunk.counts[i] += added;
        times - added
    }

    /// Whether every cluster of `start..end` has a computed count of 0,
    /// answered per chunk without looking at untouched ones.
    pub fn all_zero(&self, start: u64, end: u64) -> bool {
        let end = end.min(self.len);
        let mut c = start;
        while c < end {
            let (chunk, _) = split(c);
            let next = ((c / CHUNK) + 1) * CHUNK;
            if let Some(Some(data)) = self.chunks.get(chunk) {
                let from = (c % CHUNK) as usize;
                let to = (next.min(end) - (c - c % CHUNK)) as usize;
                if data.counts[from..to].iter().any(|&n| n != 0) {
                    return false;
                }
            }
            c = next;
        }
        true
    }

    /// The highest cluster with a non-zero count, if any.
    pub fn highest_nonzero(&self) -> Option<u64> {
        self.chunks.iter().enumerate().rev().find_map(|(k, chunk)| {
            let chunk = chunk.as_deref()?;
            let i = chunk.counts.iter().rposition(|&n| n != 0)?;
            Some(k as u64 * CHUNK + i as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_and_report_overflow() {
        let mut map = RefMap::new(10_000).unwrap();
        assert_eq!(map.add(5000, 3, role::DATA, 4), 0);
        assert_eq!(map.add(5000, 3, role::L2, 4), 2);
        assert_eq!(map.get(5000), 4);
        assert_eq!(map.roles(5000), role::DATA | role::L2);
        assert_eq!(map.add(10_000, 1, role::DATA, 4), 1, "untracked cluster");
        assert!(map.all_zero(0, 5000));
        assert!(!map.all_zero(4999, 5001));
        assert_eq!(map.highest_nonzero(), Some(5000));
        assert!(RefMap::new(MAX_TRACKED_CLUSTERS + 1).is_none());
    }
}
