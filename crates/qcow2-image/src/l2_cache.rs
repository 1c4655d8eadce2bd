//! A bounded cache of the active image's L2 tables, keyed by L1 index.

use std::collections::HashMap;

use qcow2_format::HostOffset;

/// One L2 table in memory, as native u64 words.
#[derive(Debug)]
pub(crate) struct L2Slot {
    /// Where the table lives on disk.
    pub offset: HostOffset,
    pub words: Vec<u64>,
    /// Changed since it was last written.
    pub dirty: bool,
    last_use: u64,
}

#[derive(Debug)]
pub(crate) struct L2Cache {
    slots: HashMap<u64, L2Slot>,
    capacity: usize,
    clock: u64,
}

impl L2Cache {
    /// A cache of about `bytes` of tables of `table_bytes` each (at least 4).
    pub fn new(bytes: u64, table_bytes: u64) -> Self {
        Self {
            slots: HashMap::new(),
            capacity: (bytes / table_bytes.max(1)).max(4) as usize,
            clock: 0,
        }
    }

    pub fn get(&mut self, l1_index: u64) -> Option<&mut L2Slot> {
        self.clock += 1;
        let clock = self.clock;
        let slot = self.slots.get_mut(&l1_index)?;
        slot.last_use = clock;
        Some(slot)
    }

    pub fn contains(&self, l1_index: u64) -> bool {
        self.slots.contains_key(&l1_index)
    }

    /// The entry to evict before inserting, when the cache is full.
    pub fn victim(&self) -> Option<u64> {
        if self.slots.len() < self.capacity {
            return None;
        }
        self.slots
            .iter()
            .min_by_key(|(_, s)| (s.dirty, s.last_use))
            .map(|(&i, _)| i)
    }

    pub fn remove(&mut self, l1_index: u64) -> Option<L2Slot> {
        self.slots.remove(&l1_index)
    }

    pub fn insert(&mut self, l1_index: u64, offset: HostOffset, words: Vec<u64>, dirty: bool) {
        self.clock += 1;
        self.slots.insert(
            l1_index,
            L2Slot {
                offset,
                words,
                dirty,
                last_use: self.clock,
            },
        );
    }

    /// L1 indices of dirty tables, in order.
    pub fn dirty(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(&i, _)| i)
            .collect();
        v.sort_unstable();
        v
    }

    /// Drops every table at or beyond `l1_index` (after a shrink).
    pub fn retain_below(&mut self, l1_index: u64) {
        self.slots.retain(|&i, _| i < l1_index);
    }
}
