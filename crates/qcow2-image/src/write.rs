//! Guest writes: in place where the cluster is private, otherwise into
//! fresh clusters (copy on write from the backing file, a compressed
//! cluster or a cluster shared with a snapshot).

use std::sync::PoisonError;

use qcow2_format::tables::l2::HostCluster;
use qcow2_format::tables::l2_extended::ExtendedL2Mapping;
use qcow2_format::HostOffset;
use qcow2_io::WriteKind;

use crate::dedup_write::{CowResult, Hashed};
use crate::error::{ImageError, Result};
use crate::image::Image;
use crate::meta::Meta;
use crate::plan;

impl Image {
    /// Writes `data` at guest `offset`.
    ///
    /// A write that only replaces bytes of allocated private clusters runs
    /// alongside reads and other such writes; one that allocates, copies
    /// or frees clusters runs alone.
    ///
    /// On a deduplicated image, whole clusters are hashed before any lock
    /// is taken; a cluster whose content is already stored is mapped to
    /// that copy instead of being written, and all-zero clusters become
    /// zero clusters.
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        if self.try_write_shared(data, offset)? {
            return Ok(());
        }
        let hashed = self.hash_for_write(data, offset);
        self.write_hashed(data, offset, hashed.as_ref())
    }

    /// [`Image::write_at`] with the digests already computed.
    pub(crate) fn write_hashed(
        &self,
        data: &[u8],
        offset: u64,
        hashed: Option<&Hashed>,
    ) -> Result<()> {
        let cow = {
            let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
            let mut meta = self.lock_meta();
            self.check_range(offset, data.len() as u64, meta.size())?;
            self.guarded(&mut meta, |meta| {
                self.write_locked_hashed(meta, data, offset, hashed)
            })?;
            std::mem::take(&mut meta.cow_results)
        };
        self.settle_cow(cow)
    }

    /// Writes with both locks held (no dedup of whole clusters).
    pub(crate) fn write_locked(&self, meta: &mut Meta, data: &[u8], offset: u64) -> Result<()> {
        self.write_locked_hashed(meta, data, offset, None)
    }

    fn write_locked_hashed(
        &self,
        meta: &mut Meta,
        data: &[u8],
        offset: u64,
        hashed: Option<&Hashed>,
    ) -> Result<()> {
        let cs = self.layout.cluster_size();
        let mut pos = 0usize;
        while pos < data.len() {
            let guest = offset + pos as u64;
            let cluster = guest / cs;
            let within = guest % cs;
            let n = (cs - within).min((data.len() - pos) as u64) as usize;
            let mapping = meta.mapping(&*self.storage, cluster)?;
            let whole = within == 0 && n as u64 == cs;
            if let Some(digest) = hashed.filter(|_| whole).and_then(|h| h.get(cluster)) {
                pos += self.write_dedup(meta, cluster, mapping, digest, &data[pos..], hashed)?;
                continue;
            }
            if let Some(host) = self.in_place_host(meta, mapping)? {
                self.write_in_place(meta, cluster, mapping, host, within, &data[pos..pos + n])?;
                pos += n;
                continue;
            }
            if n as u64 == cs {
                pos += self.write_fresh_run(meta, cluster, mapping, &data[pos..])?;
                continue;
            }
            self.write_partial_fresh(meta, cluster, mapping, within, &data[pos..pos + n])?;
            pos += n;
        }
        Ok(())
    }

    /// The host cluster of `mapping` when it may be written in place.
    fn private_host(
        &self,
        meta: &mut Meta,
        mapping: ExtendedL2Mapping,
    ) -> Result<Option<HostCluster>> {
        match mapping {
            ExtendedL2Mapping::Allocated { host, .. } => {
                meta.check_data_target(host.offset)?;
                meta.check_in_file(host.offset)?;
                if meta.is_private(&*self.storage, host.offset, host.copied)? {
                    Ok(Some(host))
                } else {
                    Ok(None)
                }
            }
            _ => Ok(None),
        }
    }

    /// [`Self::private_host`], unless the cluster is indexed and the image
    /// writes such clusters elsewhere.
    fn in_place_host(
        &self,
        meta: &mut Meta,
        mapping: ExtendedL2Mapping,
    ) -> Result<Option<HostCluster>> {
        let Some(host) = self.private_host(meta, mapping)? else {
            return Ok(None);
        };
        let p = self.layout.geometry.host_cluster(host.offset);
        if meta.overwrite_elsewhere(&*self.storage, p)? {
            return Ok(None);
        }
        Ok(Some(host))
    }

    pub(crate) fn write_data(&self, data: &[u8], host: u64) -> Result<()> {
        self.storage
            .write_at(data, host, WriteKind::Data)
            .map_err(|e| ImageError::io("writing guest data", host, e))
    }

    /// Reads the current guest content of `[start, start + len)` (through
    /// the backing file, zeros, compressed data...).
    fn current(&self, meta: &mut Meta, start: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let pieces = plan::plan(meta, &*self.storage, start, len)?;
        plan::execute(&pieces, &mut buf, &self.readers())?;
        Ok(buf)
    }

    /// Writes into a private host cluster; units (subclusters, or a
    /// preallocated zero cluster) that held no data get their untouched
    /// bytes from the current content.
    fn write_in_place(
        &self,
        meta: &mut Meta,
        cluster: u64,
        mapping: ExtendedL2Mapping,
        host: HostCluster,
        within: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let ExtendedL2Mapping::Allocated {
            allocated, zero, ..
        } = mapping
        else {
            return Ok(());
        };
        let layout = self.layout;
        let us = layout.unit_size();
        let first = (within / us) as u32;
        let last = ((within + bytes.len() as u64 - 1) / us) as u32;
        let touched = layout.mask(first, last - first + 1);
        let span_start = u64::from(first) * us;
        let span_end = u64::from(last + 1) * us;
        let aligned = span_start == within && span_end == within + bytes.len() as u64;
        if meta.dedup.is_some() {
            let p = layout.geometry.host_cluster(host.offset);
            meta.dedup_forget_durably(&*self.storage, p)?;
        }
        if touched & !allocated == 0 || aligned {
            self.write_data(bytes, host.offset.get() + within)?;
        } else {
            let cs = layout.cluster_size();
            let mut span = self.current(meta, cluster * cs + span_start, span_end - span_start)?;
            let at = (within - span_start) as usize;
            span[at..at + bytes.len()].copy_from_slice(bytes);
            self.write_data(&span, host.offset.get() + span_start)?;
        }
        let updated = ExtendedL2Mapping::Allocated {
            host: HostCluster {
                offset: host.offset,
                copied: true,
            },
            allocated: allocated | touched,
            zero: zero & !touched,
        };
        if updated != mapping {
            meta.set_mapping(&*self.storage, cluster, updated)?;
        }
        Ok(())
    }

    /// Writes whole clusters from `cluster` on that need fresh host
    /// clusters, as many in a row as `data` covers, in one contiguous run.
    /// Returns the bytes consumed.
    fn write_fresh_run(
        &self,
        meta: &mut Meta,
        cluster: u64,
        first: ExtendedL2Mapping,
        data: &[u8],
    ) -> Result<usize> {
        let cs = self.layout.cluster_size();
        // At most 32 MiB per run keeps the refcount work per call bounded.
        let max = ((data.len() as u64 / cs).min((32 << 20) / cs)).max(1);
        let mut old = vec![first];
        while (old.len() as u64) < max {
            let mapping = meta.mapping(&*self.storage, cluster + old.len() as u64)?;
            if self.private_host(meta, mapping)?.is_some() {
                break;
            }
            old.push(mapping);
        }
        let count = old.len() as u64;
        let host = meta.allocate(&*self.storage, count)?;
        let bytes = (count * cs) as usize;
        self.write_data(&data[..bytes], host.get())?;
        for (i, previous) in old.into_iter().enumerate() {
            let mapping = ExtendedL2Mapping::Allocated {
                host: HostCluster {
                    offset: HostOffset(host.get() + i as u64 * cs),
                    copied: true,
                },
                allocated: self.layout.all(),
                zero: 0,
            };
            meta.set_mapping(&*self.storage, cluster + i as u64, mapping)?;
            meta.release_mapping(previous)?;
        }
        Ok(bytes)
    }

    /// Writes part of a cluster that needs a fresh host cluster.
    fn write_partial_fresh(
        &self,
        meta: &mut Meta,
        cluster: u64,
        old: ExtendedL2Mapping,
        within: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let us = layout.unit_size();
        let host = meta.allocate(&*self.storage, 1)?;
        let (span_start, span_end, allocated, zero) = match old {
            // Subclusters: only the touched ones need data; the others keep
            // reading from the backing file or as zeros.
            ExtendedL2Mapping::Unallocated { zero } if layout.extended => {
                let first = (within / us) as u32;
                let last = ((within + bytes.len() as u64 - 1) / us) as u32;
                let touched = layout.mask(first, last - first + 1);
                (
                    u64::from(first) * us,
                    u64::from(last + 1) * us,
                    touched,
                    zero & !touched,
                )
            }
            _ => (0, cs, layout.all(), 0),
        };
        let mut span = self.current(meta, cluster * cs + span_start, span_end - span_start)?;
        let at = (within - span_start) as usize;
        span[at..at + bytes.len()].copy_from_slice(bytes);
        self.write_data(&span, host.get() + span_start)?;
        let mapping = ExtendedL2Mapping::Allocated {
            host: HostCluster {
                offset: host,
                copied: true,
            },
            allocated,
            zero,
        };
        meta.set_mapping(&*self.storage, cluster, mapping)?;
        if meta.dedup.is_some() && span_start == 0 && span_end == cs {
            // A copy-on-write result: hashed once the locks are released.
            meta.cow_results.push(CowResult {
                guest: cluster,
                host,
                data: span,
            });
        }
        meta.release_mapping(old)
    }

    /// Writes whole guest cluster `cluster` (and, for a run of fresh
    /// misses, the clusters after it) on a deduplicated image; `digest` is
    /// `None` for zeros. Returns the bytes consumed from `data`.
    fn write_dedup(
        &self,
        meta: &mut Meta,
        cluster: u64,
        mapping: ExtendedL2Mapping,
        digest: Option<qcow2_dedup::Digest>,
        data: &[u8],
        hashed: Option<&Hashed>,
    ) -> Result<usize> {
        let storage = &*self.storage;
        let cs = self.layout.cluster_size() as usize;
        let chunk = &data[..cs];
        let Some(d) = digest else {
            if self.layout.v3() {
                self.zero_cluster_locked(meta, cluster)?;
            } else {
                self.write_locked(meta, chunk, cluster * cs as u64)?;
            }
            return Ok(cs);
        };
        if meta.dedup_hit(storage, cluster, mapping, &d, chunk)? {
            return Ok(cs);
        }
        if let Some(host) = self.in_place_host(meta, mapping)? {
            self.write_in_place(meta, cluster, mapping, host, 0, chunk)?;
            let p = self.layout.geometry.host_cluster(host.offset);
            meta.dedup_index(storage, p, d, cluster)?;
            return Ok(cs);
        }
        // A run of clusters that all need fresh space and are new content
        // (not indexed, no repeat inside the run).
        let mut run = vec![d];
        while (run.len() + 1) * cs <= data.len() {
            let next = cluster + run.len() as u64;
            let Some(Some(dn)) = hashed.and_then(|h| h.get(next)) else {
                break;
            };
            let bytes = &data[run.len() * cs..(run.len() + 1) * cs];
            if run.contains(&dn) || meta.dedup_find(storage, &dn, bytes)?.is_some() {
                break;
            }
            let m = meta.mapping(storage, next)?;
            if self.private_host(meta, m)?.is_some() {
                break;
            }
            run.push(dn);
        }
        let written = self.write_fresh_run(meta, cluster, mapping, &data[..run.len() * cs])?;
        for (i, dn) in run.iter().enumerate().take(written / cs) {
            let g = cluster + i as u64;
            let m = meta.mapping(storage, g)?;
            if let Some(p) = meta.data_cluster(m) {
                meta.dedup_index(storage, p, *dn, g)?;
                meta.note_unwritten_referrer(g, p);
            }
        }
        Ok(written)
    }
}
