//! Compressed cluster writes.
//!
//! Streams are packed back to back into host clusters as QEMU packs them:
//! a stream starts where the previous one ended and may run into the next
//! host cluster when that one is allocated right after. A host cluster
//! holds one reference per stream that touches it.

use std::sync::{Arc, PoisonError};

use qcow2_codec::{Codec, CompressOutcome};
use qcow2_format::tables::compressed::CompressedDescriptor;
use qcow2_format::tables::l2_extended::ExtendedL2Mapping;
use qcow2_format::HostOffset;
use qcow2_io::{Storage, WriteKind};

use crate::error::{ImageError, Result};
use crate::image::Image;
use crate::meta::Meta;

fn invalid(reason: String) -> ImageError {
    ImageError::InvalidArgument {
        what: "compressed write",
        reason,
    }
}

impl Image {
    /// The codec of compressed clusters: the compress format extension's
    /// format and level, or the QEMU compression type at its default
    /// level. `None` when this build has no such codec.
    pub fn codec(&self) -> Option<&Arc<dyn Codec>> {
        self.codec.as_ref()
    }

    /// Compresses one guest cluster's content into `out` with the image's
    /// codec; `data` is a whole cluster, or the image's last, shorter
    /// cluster (compressed as if padded with zeros).
    ///
    /// Returns the stream length, or `None` when compression does not save
    /// space (store the cluster with [`Image::write_at`] then). Takes no
    /// lock: worker threads call it in parallel and hand the stream to
    /// [`Image::write_compressed_stream`].
    pub fn compress_cluster(&self, data: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>> {
        let cs = self.layout.cluster_size() as usize;
        if data.is_empty() || data.len() > cs {
            return Err(invalid(format!(
                "{} bytes given; a compressed write takes one cluster ({cs} bytes)",
                data.len()
            )));
        }
        let codec = self.write_codec()?;
        let padded;
        let input = if data.len() == cs {
            data
        } else {
            let mut full = data.to_vec();
            full.resize(cs, 0);
            padded = full;
            &padded[..]
        };
        out.resize(cs, 0);
        match codec.compress(input, out) {
            Ok(CompressOutcome::Compressed(n)) => {
                out.truncate(n);
                Ok(Some(n))
            }
            Ok(CompressOutcome::NoGain) => Ok(None),
            Err(source) => Err(ImageError::Codec { offset: 0, source }),
        }
    }

    /// Writes the guest cluster at `offset` compressed, or uncompressed when
    /// compression does not make it smaller. `offset` is cluster aligned and
    /// `data` covers the whole cluster (or the rest of the disk, for a last
    /// cluster cut short by the virtual size).
    pub fn write_compressed(&self, data: &[u8], offset: u64) -> Result<()> {
        self.check_whole_cluster(offset, data.len() as u64)?;
        let mut stream = Vec::new();
        match self.compress_cluster(data, &mut stream)? {
            Some(_) => self.write_compressed_stream(&stream, offset),
            None => self.write_at(data, offset),
        }
    }

    /// Stores `stream`, a compressed cluster made by
    /// [`Image::compress_cluster`], as the content of the guest cluster at
    /// `offset` (cluster aligned). What the cluster held before is released.
    pub fn write_compressed_stream(&self, stream: &[u8], offset: u64) -> Result<()> {
        self.store_compressed_stream(stream, offset).map(|_| ())
    }

    /// [`Image::write_compressed_stream`], returning where the stream went.
    pub(crate) fn store_compressed_stream(
        &self,
        stream: &[u8],
        offset: u64,
    ) -> Result<CompressedDescriptor> {
        self.check_writable()?;
        let cs = self.layout.cluster_size();
        if stream.is_empty() || stream.len() as u64 >= cs {
            return Err(invalid(format!(
                "a stream of {} bytes; it must be shorter than the {cs}-byte cluster",
                stream.len()
            )));
        }
        let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
        let mut meta = self.lock_meta();
        self.check_range(offset, 1, meta.size())?;
        if offset % cs != 0 {
            return Err(invalid(format!(
                "guest offset {offset:#x} is not cluster aligned"
            )));
        }
        self.guarded(&mut meta, |meta| {
            let cluster = offset / cs;
            let old = meta.mapping(&*self.storage, cluster)?;
            let len = stream.len() as u64;
            let host = place_stream(meta, &*self.storage, len)?;
            self.storage
                .write_at(stream, host.get(), WriteKind::Data)
                .map_err(|e| ImageError::io("writing compressed data", host.get(), e))?;
            let descriptor = CompressedDescriptor::from_range(host, len, self.layout.geometry)?;
            meta.set_mapping(
                &*self.storage,
                cluster,
                ExtendedL2Mapping::Compressed(descriptor),
            )?;
            meta.release_mapping(old)?;
            Ok(descriptor)
        })
    }

    /// Maps the guest cluster at `offset` (cluster aligned) to an existing
    /// compressed stream, taking one more reference to each host cluster it
    /// touches, as QEMU counts them. False (nothing changed) when a
    /// refcount is at its maximum.
    pub(crate) fn share_compressed(
        &self,
        descriptor: CompressedDescriptor,
        offset: u64,
    ) -> Result<bool> {
        let cs = self.layout.cluster_size();
        let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
        let mut meta = self.lock_meta();
        self.guarded(&mut meta, |meta| {
            let storage = &*self.storage;
            let Some((first, count)) = descriptor.host_clusters(self.layout.geometry) else {
                return Ok(false);
            };
            let max = meta.refcounts.order().max_refcount();
            for c in first.get()..first.get() + count {
                if meta.refcounts.get(storage, qcow2_format::ClusterIndex(c))? >= max {
                    return Ok(false);
                }
            }
            for c in first.get()..first.get() + count {
                meta.refcounts
                    .add_ref(storage, qcow2_format::ClusterIndex(c))?;
            }
            let cluster = offset / cs;
            let old = meta.mapping(storage, cluster)?;
            meta.set_mapping(storage, cluster, ExtendedL2Mapping::Compressed(descriptor))?;
            meta.release_mapping(old)?;
            Ok(true)
        })
    }

    fn write_codec(&self) -> Result<&Arc<dyn Codec>> {
        self.codec.as_ref().ok_or_else(|| ImageError::Unsupported {
            what: "compressed writes with this image's codec".into(),
        })
    }

    /// A compressed write covers exactly one guest cluster.
    fn check_whole_cluster(&self, offset: u64, len: u64) -> Result<()> {
        let cs = self.layout.cluster_size();
        let size = self.size();
        self.check_range(offset, len, size)?;
        if offset % cs != 0 || (len != cs && offset + len != size) || len == 0 {
            return Err(invalid(format!(
                "{len} bytes at guest offset {offset:#x}: compressed writes cover one whole, \
                 aligned cluster of {cs} bytes"
            )));
        }
        Ok(())
    }
}

/// Finds room for a stream of `len` bytes (less than a cluster) and takes
/// the references it needs; returns its host offset.
fn place_stream(meta: &mut Meta, storage: &dyn Storage, len: u64) -> Result<HostOffset> {
    let geometry = meta.layout.geometry;
    let cs = geometry.cluster_size();
    if let Some(at) = meta.compressed_cursor.take() {
        let cluster = geometry.host_cluster(at);
        let cluster_end = (cluster.get() + 1) * cs;
        let max = meta.refcounts.order().max_refcount();
        if meta.refcounts.get(storage, cluster)? < max {
            let end = at.get() + len;
            if end <= cluster_end {
                meta.refcounts.add_ref(storage, cluster)?;
                meta.compressed_cursor = (end < cluster_end).then_some(HostOffset(end));
                return Ok(at);
            }
            let next = meta.allocate(storage, 1)?;
            if next.get() == cluster_end {
                // The stream runs on into the cluster allocated right after.
                meta.refcounts.add_ref(storage, cluster)?;
                meta.compressed_cursor = Some(HostOffset(end));
                return Ok(at);
            }
            return Ok(start_fresh(meta, next, len, cs));
        }
    }
    let fresh = meta.allocate(storage, 1)?;
    Ok(start_fresh(meta, fresh, len, cs))
}

/// Places a stream at the start of a freshly allocated host cluster.
fn start_fresh(meta: &mut Meta, cluster: HostOffset, len: u64, cs: u64) -> HostOffset {
    meta.compressed_cursor = (len < cs).then_some(HostOffset(cluster.get() + len));
    cluster
}
