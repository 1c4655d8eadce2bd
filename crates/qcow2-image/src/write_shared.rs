//! Guest writes that change no metadata run side by side.
//!
//! A write whose clusters are all allocated, marked COPIED (private) and
//! hold data in every unit it touches only replaces bytes: no L2 entry,
//! refcount or dedup entry changes. Such a write holds the shared side of
//! the `io` lock, like a read, and the metadata lock only while it looks
//! its clusters up; its data I/O runs with other such writes and with
//! reads. Every write that allocates, copies, frees or re-indexes takes the
//! exclusive side, so no cluster is freed or reused under a shared write's
//! plan, and a flush waits for the shared writes before it.

use std::ops::Range;
use std::sync::PoisonError;

use qcow2_format::tables::l2_extended::ExtendedL2Mapping;

use crate::error::Result;
use crate::image::Image;
use crate::meta::Meta;

/// One contiguous piece of a shared write: its host offset and the bytes of
/// the caller's buffer that go there.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HostRun {
    pub(crate) host: u64,
    pub(crate) data: Range<usize>,
}

impl Image {
    /// Writes `data` at `offset` under the shared lock when no metadata
    /// has to change; `Ok(false)` when the write needs the exclusive path
    /// (nothing has been written then).
    pub(crate) fn try_write_shared(&self, data: &[u8], offset: u64) -> Result<bool> {
        if self.dedup_enabled() {
            // Every in-place write of a deduplicated image clears the
            // cluster's dedup entry first.
            return Ok(false);
        }
        let _shared = self.io.read().unwrap_or_else(PoisonError::into_inner);
        let runs = {
            let mut meta = self.lock_meta();
            self.check_range(offset, data.len() as u64, meta.size())?;
            if meta.dedup.is_some() {
                return Ok(false);
            }
            match self.guarded(&mut meta, |meta| {
                self.in_place_runs(meta, offset, data.len() as u64)
            })? {
                Some(runs) => runs,
                None => return Ok(false),
            }
        };
        for run in runs {
            if let Err(e) = self.write_data(&data[run.data], run.host) {
                // As on the exclusive path: a failed data write stops
                // every later change until the image is reopened.
                self.lock_meta().poisoned = true;
                return Err(e);
            }
        }
        Ok(true)
    }

    /// The host runs of an in-place write of `len` bytes at guest `offset`,
    /// or `None` when some cluster it touches is not allocated, not marked
    /// COPIED, or lacks data in a touched unit (subcluster, or a
    /// preallocated zero cluster). Corrupt targets are errors, as on the
    /// exclusive path.
    pub(crate) fn in_place_runs(
        &self,
        meta: &mut Meta,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<HostRun>>> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let us = layout.unit_size();
        let mut runs: Vec<HostRun> = Vec::new();
        let mut pos = 0u64;
        while pos < len {
            let guest = offset + pos;
            let cluster = guest / cs;
            let within = guest % cs;
            let n = (cs - within).min(len - pos);
            let ExtendedL2Mapping::Allocated {
                host,
                allocated,
                zero,
            } = meta.mapping(&*self.storage, cluster)?
            else {
                return Ok(None);
            };
            if !host.copied {
                return Ok(None);
            }
            let first = (within / us) as u32;
            let last = ((within + n - 1) / us) as u32;
            let touched = layout.mask(first, last - first + 1);
            if touched & !allocated != 0 || touched & zero != 0 {
                return Ok(None);
            }
            meta.check_data_target(host.offset)?;
            meta.check_in_file(host.offset)?;
            let at = host.offset.get() + within;
            let data = pos as usize..(pos + n) as usize;
            match runs.last_mut() {
                Some(last) if last.host + last.data.len() as u64 == at => last.data.end = data.end,
                _ => runs.push(HostRun { host: at, data }),
            }
            pos += n;
        }
        Ok(Some(runs))
    }
}
