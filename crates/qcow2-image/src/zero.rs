//! Zero writes and discards: whole clusters (or subclusters) change their
//! mapping; the unaligned edges of a zero write are written as zero bytes,
//! unless their unit reads as zeros already and can take the zero flag.

use std::sync::PoisonError;

use qcow2_format::tables::l2_extended::ExtendedL2Mapping;

use crate::error::Result;
use crate::image::Image;
use crate::meta::Meta;
use crate::status::ExtentKind;

/// What to do with the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Must read back as zeros; `unmap` lets host clusters go.
    Zero { unmap: bool },
    /// The guest no longer needs the data; whole units only.
    Discard,
}

impl Image {
    /// Makes `[offset, offset + len)` read as zeros. With `unmap`, host
    /// clusters of whole zeroed clusters are freed; without it they stay
    /// allocated (version 3 keeps them as preallocated zero clusters).
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.change_range(offset, len, Mode::Zero { unmap })
    }

    /// Discards `[offset, offset + len)`: whole clusters (subclusters with
    /// extended L2) are unmapped and their host clusters freed, and then
    /// read as zeros. On version 2, which has no zero flag, an image with a
    /// backing file keeps its clusters, as QEMU does (unmapping would show
    /// the backing file's data). Partial clusters are left alone.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.change_range(offset, len, Mode::Discard)
    }

    fn change_range(&self, offset: u64, len: u64, mode: Mode) -> Result<()> {
        self.check_writable()?;
        let cow = {
            let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
            let mut meta = self.lock_meta();
            self.check_range(offset, len, meta.size())?;
            self.guarded(&mut meta, |meta| {
                self.change_locked(meta, offset, len, mode)
            })?;
            // Edges written as zero bytes copied clusters: settle them now,
            // as a write does, so no later write settles them stale.
            std::mem::take(&mut meta.cow_results)
        };
        self.settle_cow(cow)
    }

    /// Zeroes a range with both locks held, freeing whole clusters.
    pub(crate) fn zero_locked(&self, meta: &mut Meta, offset: u64, len: u64) -> Result<()> {
        self.change_locked(meta, offset, len, Mode::Zero { unmap: true })
    }

    fn change_locked(&self, meta: &mut Meta, offset: u64, len: u64, mode: Mode) -> Result<()> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let us = layout.unit_size();
        let size = meta.size();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let cluster = pos / cs;
            let within = pos % cs;
            let n = (cs - within).min(end - pos);
            // The tail cluster of a disk whose size is not cluster aligned
            // counts as whole when the range reaches the end of the disk.
            let reaches_end = pos + n == end && end == size;
            let first_unit = within.div_ceil(us);
            let end_unit = if reaches_end {
                u64::from(layout.units())
            } else {
                (within + n) / us
            };
            let mut mask = if first_unit < end_unit {
                layout.mask(first_unit as u32, (end_unit - first_unit) as u32)
            } else {
                0
            };
            let mut edges = Vec::new();
            if matches!(mode, Mode::Zero { .. }) {
                // The parts of at most two units the range covers only in
                // part. As QEMU does, a unit that reads as zeros already
                // takes the zero flag whole; any other gets zero bytes.
                let head_end = (within + n).min(first_unit * us);
                let tail_start = (end_unit * us).max(head_end);
                for (start, stop) in [(within, head_end), (tail_start, within + n)] {
                    if start >= stop {
                        continue;
                    }
                    let unit = (start / us) as u32;
                    if self.unit_reads_zero(meta, cluster, unit)? {
                        mask |= layout.mask(unit, 1);
                    } else {
                        edges.push((cluster * cs + start, stop - start));
                    }
                }
            }
            if mask != 0 {
                self.change_units(meta, cluster, mask, mode)?;
            }
            for (guest, len) in edges {
                self.zero_bytes(meta, guest, len)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Turns guest cluster `cluster` into a zero cluster, freeing its host
    /// cluster (both locks held; version 3).
    pub(crate) fn zero_cluster_locked(&self, meta: &mut Meta, cluster: u64) -> Result<()> {
        self.change_units(meta, cluster, self.layout.all(), Mode::Zero { unmap: true })
    }

    /// Whether unit `unit` of guest cluster `cluster` reads as zeros by
    /// block status alone, as QEMU decides it: zero flagged, or unallocated
    /// over a backing chain that has nothing there (or over none). On
    /// version 2, which has no zero flag, such a cluster is left as it is.
    fn unit_reads_zero(&self, meta: &mut Meta, cluster: u64, unit: u32) -> Result<bool> {
        let bit = self.layout.mask(unit, 1);
        let (zero, below) = match meta.mapping(&*self.storage, cluster)? {
            ExtendedL2Mapping::Unallocated { zero } => (zero & bit != 0, true),
            ExtendedL2Mapping::Allocated {
                allocated, zero, ..
            } => (zero & bit != 0, allocated & bit == 0),
            ExtendedL2Mapping::Compressed(_) => (false, false),
        };
        if zero || !below {
            return Ok(zero);
        }
        let us = self.layout.unit_size();
        let start = cluster * self.layout.cluster_size() + u64::from(unit) * us;
        match &self.backing {
            Some(backing) => Ok(backing.block_status(start, us)?.iter().all(|e| {
                matches!(
                    e.kind,
                    ExtentKind::Zero { .. } | ExtentKind::Unallocated { .. }
                )
            })),
            // A backing file we were told to ignore may still hold data.
            None => Ok(meta.area.backing_file.is_none()),
        }
    }

    fn zero_bytes(&self, meta: &mut Meta, guest: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.write_locked(meta, &vec![0u8; len as usize], guest)
    }

    /// Applies `mode` to the units in `mask` of one guest cluster.
    fn change_units(&self, meta: &mut Meta, cluster: u64, mask: u32, mode: Mode) -> Result<()> {
        let layout = self.layout;
        let all = layout.all();
        let old = meta.mapping(&*self.storage, cluster)?;
        let has_backing = self.backing.is_some() || meta.area.backing_file.is_some();
        let v3 = layout.v3();
        if !v3 {
            // Version 2 has no zero flag: unallocated reads as zeros only
            // without a backing file.
            match mode {
                Mode::Zero { .. } if has_backing => {
                    let cs = layout.cluster_size();
                    return self.zero_bytes(meta, cluster * cs, cs);
                }
                // Unmapping would show the backing file's data where the
                // guest had its own; QEMU keeps the cluster too.
                Mode::Discard if has_backing => return Ok(()),
                _ => {}
            }
            return meta.unmap(&*self.storage, cluster, old);
        }
        if mode == Mode::Discard && !has_backing {
            if let ExtendedL2Mapping::Unallocated { .. } = old {
                // Reads as zeros already, zero flags or not; QEMU leaves
                // such an entry as it is too.
                return Ok(());
            }
        }
        let new = match (old, mode) {
            (ExtendedL2Mapping::Compressed(_), Mode::Zero { .. }) if mask != all => {
                // A compressed cluster has no subclusters: as QEMU does, the
                // units get zero bytes, which copies the cluster out first.
                let (cs, us) = (layout.cluster_size(), layout.unit_size());
                for unit in (0..layout.units()).filter(|&u| mask & layout.mask(u, 1) != 0) {
                    self.zero_bytes(meta, cluster * cs + u64::from(unit) * us, us)?;
                }
                return Ok(());
            }
            (ExtendedL2Mapping::Compressed(_), _) if mask != all => {
                // A compressed cluster has no subclusters: decompress into a
                // fresh cluster first, then drop its units.
                let cs = layout.cluster_size();
                let data = {
                    let mut buf = vec![0u8; cs as usize];
                    let pieces = crate::plan::plan(meta, &*self.storage, cluster * cs, cs)?;
                    crate::plan::execute(&pieces, &mut buf, &self.readers())?;
                    buf
                };
                self.write_locked(meta, &data, cluster * cs)?;
                return self.change_units(meta, cluster, mask, mode);
            }
            (
                ExtendedL2Mapping::Allocated {
                    host,
                    allocated,
                    zero,
                },
                Mode::Zero { unmap: false },
            ) if meta.is_private(&*self.storage, host.offset, host.copied)? => {
                // The kept cluster no longer holds live data.
                let p = layout.geometry.host_cluster(host.offset);
                meta.dedup_unindex(&*self.storage, p)?;
                ExtendedL2Mapping::Allocated {
                    host,
                    allocated: allocated & !mask,
                    zero: zero | mask,
                }
            }
            (
                ExtendedL2Mapping::Allocated {
                    host,
                    allocated,
                    zero,
                },
                _,
            ) if mask != all => ExtendedL2Mapping::Allocated {
                host,
                allocated: allocated & !mask,
                zero: zero | mask,
            },
            (ExtendedL2Mapping::Unallocated { zero }, _) if mask != all => {
                ExtendedL2Mapping::Unallocated { zero: zero | mask }
            }
            _ => ExtendedL2Mapping::Unallocated { zero: all },
        };
        if new == old {
            return Ok(());
        }
        meta.set_mapping(&*self.storage, cluster, new)?;
        let dropped_host = !matches!(
            (old, new),
            (
                ExtendedL2Mapping::Allocated { .. },
                ExtendedL2Mapping::Allocated { .. }
            ) | (ExtendedL2Mapping::Unallocated { .. }, _)
        );
        if dropped_host {
            meta.release_mapping(old)?;
        }
        Ok(())
    }
}
