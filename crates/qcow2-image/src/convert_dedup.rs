//! Sharing compressed clusters during a convert: the table indexes no
//! compressed cluster (DD rules), so the convert keeps its own index of the
//! streams it wrote, confirming each match by decoding the stream and
//! comparing it with the cluster being written.

use qcow2_dedup::{Digest, DigestIndex};
use qcow2_format::tables::compressed::CompressedDescriptor;
use qcow2_format::ClusterIndex;

use crate::error::Result;
use crate::image::Image;
use crate::plan;

/// The compressed streams a convert has written, by content digest.
#[derive(Debug, Default)]
pub(crate) struct CompressedShare {
    index: DigestIndex,
    descriptors: Vec<CompressedDescriptor>,
    scratch: Vec<u8>,
}

impl CompressedShare {
    /// A stream already written whose cluster is exactly `data`.
    pub fn find(
        &mut self,
        image: &Image,
        digest: &Digest,
        data: &[u8],
    ) -> Result<Option<CompressedDescriptor>> {
        let cs = image.cluster_size() as usize;
        for slot in self.index.candidates(digest) {
            let Some(&d) = self.descriptors.get(slot.get() as usize) else {
                continue;
            };
            self.scratch.resize(cs, 0);
            plan::decompress(&image.readers(), d, &mut self.scratch)?;
            if self.scratch[..data.len()] == *data
                && self.scratch[data.len()..].iter().all(|&b| b == 0)
            {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// Whether a stream may exist for `digest` (a fragment match).
    pub fn known(&self, digest: &Digest) -> bool {
        !self.index.candidates(digest).is_empty()
    }

    /// Remembers a stream just written for `digest`.
    pub fn add(&mut self, digest: &Digest, descriptor: CompressedDescriptor) {
        let slot = ClusterIndex(self.descriptors.len() as u64);
        if self.index.insert(digest, slot) {
            self.descriptors.push(descriptor);
        }
    }
}
