//! Map entries: the engine's extents in the terms of `qemu-img map`
//! (present / zero / data / compressed flags), merged when they continue
//! each other.

use qcow2_image::{Extent, ExtentKind};

/// One line of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Index in the backing chain of the image that decides the range.
    pub depth: u32,
    /// Allocated somewhere in the chain (data or a zero flag).
    pub present: bool,
    /// Reads as zeros.
    pub zero: bool,
    /// Holds data (possibly compressed).
    pub data: bool,
    /// Compressed clusters.
    pub compressed: bool,
    /// Host offset of the data in the file at `depth`, when known.
    pub offset: Option<u64>,
}

impl Entry {
    /// The entry describing `extent`.
    pub fn from_extent(extent: &Extent) -> Self {
        let base = Entry {
            start: extent.start,
            length: extent.length,
            depth: extent.depth,
            present: true,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
        };
        match extent.kind {
            ExtentKind::Data { offset } => Entry {
                data: true,
                offset,
                ..base
            },
            ExtentKind::Compressed => Entry {
                data: true,
                compressed: true,
                ..base
            },
            ExtentKind::Zero { offset } => Entry {
                zero: true,
                offset,
                ..base
            },
            ExtentKind::Unallocated { offset } => Entry {
                offset,
                present: false,
                zero: true,
                ..base
            },
        }
    }

    /// Whether `next` starts where this ends with the same flags (and a
    /// host offset that continues), so the two print as one.
    pub fn continues_with(&self, next: &Entry) -> bool {
        let offsets_continue = match (self.offset, next.offset) {
            (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
            (None, None) => true,
            _ => false,
        };
        self.start + self.length == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && offsets_continue
    }
}

/// Collects entries, merging each with the previous one when it continues
/// it; hands finished entries to a sink so memory stays bounded.
#[derive(Debug, Default)]
pub struct Merger {
    pending: Option<Entry>,
}

impl Merger {
    /// Adds `entry`; returns the previous entry when it is finished.
    pub fn push(&mut self, entry: Entry) -> Option<Entry> {
        match &mut self.pending {
            Some(p) if p.continues_with(&entry) => {
                p.length += entry.length;
                None
            }
            _ => self.pending.replace(entry),
        }
    }

    /// The last entry.
    pub fn finish(self) -> Option<Entry> {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(start: u64, length: u64, offset: u64) -> Entry {
        Entry::from_extent(&Extent {
            start,
            length,
            depth: 0,
            kind: ExtentKind::Data {
                offset: Some(offset),
            },
        })
    }

    #[test]
    fn contiguous_data_merges_and_gaps_split() {
        let mut m = Merger::default();
        assert_eq!(m.push(data(0, 10, 100)), None);
        assert_eq!(m.push(data(10, 10, 110)), None);
        let done = m.push(data(20, 10, 500)).unwrap();
        assert_eq!((done.start, done.length), (0, 20));
        assert_eq!(m.finish().unwrap().offset, Some(500));
    }
}
