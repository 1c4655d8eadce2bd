//! The metadata clusters no guest data or fresh table may be written over,
//! beyond the header, L1 and refcount structures [`crate::meta::Meta`]
//! knows itself: the active L2 tables, the snapshot table, the snapshots'
//! L1 tables and the bitmap directory. QEMU checks the same set before a
//! write (its default overlap check, iotest 060); only the snapshots' L2
//! tables are left out, as QEMU leaves them out, since finding them means
//! reading every snapshot L1 table.

use std::collections::HashMap;

use qcow2_format::extensions::Extension;
use qcow2_format::features::AUTOCLEAR_BITMAPS;
use qcow2_format::tables::l1::{L1_ENTRY_SIZE, L1_OFFSET_MASK};
use qcow2_format::HeaderArea;
use qcow2_io::Storage;

use crate::error::Result;

/// A byte range of the file holding one metadata structure.
#[derive(Debug)]
struct Span {
    start: u64,
    end: u64,
    what: &'static str,
}

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct MetadataGuard {
    /// Host offsets of the L2 tables the active L1 table names, with how
    /// many entries name each (a damaged L1 table may name one twice).
    active_l2: HashMap<u64, u32>,
    /// Structures read at open that the engine never moves.
    fixed: Vec<Span>,
}

impl MetadataGuard {
    /// The guard of an image opened for writing, from its header area and
    /// active L1 entries. Reads the snapshot table when there is one.
    pub fn new(storage: &dyn Storage, area: &HeaderArea, l1: &[u64]) -> Result<Self> {
        let h = &area.header;
        let mut fixed = Vec::new();
        let mut add = |start: u64, len: u64, what| {
            if len > 0 {
                fixed.push(Span {
                    start,
                    end: start.saturating_add(len),
                    what,
                });
            }
        };
        let snapshots = crate::snapshot_table::read(storage, h)?;
        add(
            h.snapshots_offset.get(),
            qcow2_format::tables::snapshot::table_len(&snapshots),
            "the snapshot table",
        );
        for snap in &snapshots {
            add(
                snap.l1_table_offset.get(),
                u64::from(snap.l1_size) * L1_ENTRY_SIZE as u64,
                "a snapshot's L1 table",
            );
        }
        // With autoclear bit 0 clear the directory is not in use (QEMU and
        // our check treat its clusters as free).
        let bitmaps_in_use = h.autoclear_features & AUTOCLEAR_BITMAPS != 0;
        for ext in area.chain.extensions.iter().filter(|_| bitmaps_in_use) {
            if let Extension::Bitmaps(b) = ext {
                add(
                    b.bitmap_directory_offset.get(),
                    b.bitmap_directory_size.get(),
                    "the bitmap directory",
                );
            }
        }
        let mut guard = Self {
            active_l2: HashMap::new(),
            fixed,
        };
        guard.reset_l1(l1);
        Ok(guard)
    }

    /// Follows a change of one active L1 entry.
    pub fn l1_changed(&mut self, old: u64, new: u64) {
        let (old, new) = (old & L1_OFFSET_MASK, new & L1_OFFSET_MASK);
        if old != 0 {
            if let Some(n) = self.active_l2.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.active_l2.remove(&old);
                }
            }
        }
        if new != 0 {
            *self.active_l2.entry(new).or_insert(0) += 1;
        }
    }

    /// Follows a new active L1 table.
    pub fn reset_l1(&mut self, l1: &[u64]) {
        self.active_l2.clear();
        for &raw in l1 {
            self.l1_changed(0, raw);
        }
    }

    /// The structure the cluster at `start` (of `cluster_size` bytes)
    /// overlaps, if any.
    pub fn overlap(&self, start: u64, cluster_size: u64) -> Option<&'static str> {
        if self.active_l2.contains_key(&start) {
            return Some("an active L2 table");
        }
        let end = start.saturating_add(cluster_size);
        self.fixed
            .iter()
            .find(|s| s.start < end && start < s.end)
            .map(|s| s.what)
    }
}
