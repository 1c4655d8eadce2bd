//! Growing and shrinking the virtual disk.

use std::sync::PoisonError;

use qcow2_format::tables::l1::L1Entry;

use crate::error::{ImageError, Result};
use crate::image::{check_l1_fits, Image};
use crate::meta::Meta;

impl Image {
    /// Changes the virtual size to `new_size` (a multiple of 512). Growing
    /// adds unallocated space (a larger L1 table if needed); shrinking frees
    /// every cluster beyond the new end.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        self.check_writable()?;
        if new_size % 512 != 0 {
            return Err(ImageError::InvalidArgument {
                what: "size",
                reason: format!("{new_size} is not a multiple of 512"),
            });
        }
        let needed = check_l1_fits(&self.layout, new_size)?;
        let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
        let mut meta = self.lock_meta();
        self.guarded(&mut meta, |meta| {
            let old_size = meta.size();
            if new_size < old_size {
                self.shrink(meta, new_size)?;
            }
            if needed > meta.l1.len() as u64 {
                let mut entries = meta.l1.clone();
                entries.resize(needed as usize, 0);
                meta.replace_l1(&*self.storage, entries, new_size)?;
            } else {
                meta.area.header.size = new_size;
                meta.header_dirty = true;
                meta.flush(&*self.storage)?;
            }
            if new_size > old_size {
                self.hide_backing_tail(meta, old_size, new_size)?;
            }
            Ok(())
        })
    }

    /// New space reads as zeros even where a longer backing file has data
    /// (as QEMU does): the part the backing file covers gets zeroed.
    fn hide_backing_tail(&self, meta: &mut Meta, old_size: u64, new_size: u64) -> Result<()> {
        if meta.area.backing_file.is_none() {
            return Ok(());
        }
        let backing_end = self.backing.as_ref().map_or(new_size, |b| b.size());
        let end = backing_end.min(new_size);
        if end <= old_size {
            return Ok(());
        }
        self.zero_locked(meta, old_size, end - old_size)?;
        meta.flush(&*self.storage)
    }

    fn shrink(&self, meta: &mut Meta, new_size: u64) -> Result<()> {
        let cs = self.layout.cluster_size();
        let per = self.layout.l2_entries();
        let first_gone = new_size.div_ceil(cs);
        let end = meta.size().div_ceil(cs);
        let mut cluster = first_gone;
        while cluster < end {
            let l1_index = cluster / per;
            if meta.l1.get(l1_index as usize).copied().unwrap_or(0) == 0 {
                cluster = (l1_index + 1) * per;
                continue;
            }
            let old = meta.mapping(&*self.storage, cluster)?;
            meta.unmap(&*self.storage, cluster, old)?;
            cluster += 1;
        }
        // L2 tables wholly beyond the end go too; the L1 keeps its size.
        let first_table = first_gone.div_ceil(per);
        meta.flush(&*self.storage)?;
        for l1_index in first_table..meta.l1.len() as u64 {
            let at = meta.area.header.l1_table_offset.get() + l1_index * 8;
            let entry = L1Entry::decode(meta.l1[l1_index as usize], self.layout.geometry, at)?;
            if let Some(table) = entry.l2_table {
                meta.clear_l1(l1_index)?;
                let first = self.layout.geometry.host_cluster(table);
                meta.refcounts.release(first, 1);
            }
        }
        meta.l2.retain_below(first_table);
        Ok(())
    }
}
