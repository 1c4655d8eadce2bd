//! One view of standard and extended L2 entries, so the engine handles
//! both with the same code: an entry is an [`ExtendedL2Mapping`] whose
//! masks have 32 bits (extended) or 1 bit (standard: the whole cluster).

use qcow2_format::tables::l2::{L2Context, L2Mapping};
use qcow2_format::tables::l2_extended::ExtendedL2Mapping;
use qcow2_format::ClusterGeometry;

use crate::error::{ImageError, Result};

/// Shape of the image's mapping tables.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub geometry: ClusterGeometry,
    pub extended: bool,
    pub ctx: L2Context,
}

impl Layout {
    pub fn new(geometry: ClusterGeometry, version: u32, extended: bool) -> Self {
        Self {
            geometry,
            extended,
            ctx: L2Context {
                geometry,
                version,
                external_data_file: false,
            },
        }
    }

    pub fn cluster_size(&self) -> u64 {
        self.geometry.cluster_size()
    }

    /// Allocation units per cluster: subclusters, or the cluster itself.
    pub fn units(&self) -> u32 {
        if self.extended {
            32
        } else {
            1
        }
    }

    pub fn unit_size(&self) -> u64 {
        self.cluster_size() / u64::from(self.units())
    }

    /// Mask with every unit set.
    pub fn all(&self) -> u32 {
        if self.extended {
            u32::MAX
        } else {
            1
        }
    }

    /// Mask of the units `[first, first + count)`.
    pub fn mask(&self, first: u32, count: u32) -> u32 {
        if count >= 32 {
            return u32::MAX;
        }
        ((1u32 << count) - 1) << first
    }

    /// Guest clusters one L2 table maps.
    pub fn l2_entries(&self) -> u64 {
        self.geometry.l2_entries(self.extended)
    }

    /// u64 words per L2 entry.
    pub fn words(&self) -> usize {
        if self.extended {
            2
        } else {
            1
        }
    }

    pub fn v3(&self) -> bool {
        self.ctx.version >= 3
    }

    /// Decodes entry `index` of a table held as native u64 words.
    pub fn decode(&self, table: &[u64], index: usize, base: u64) -> Result<ExtendedL2Mapping> {
        let w = self.words();
        let at = base + (index * w * 8) as u64;
        let first = table.get(index * w).copied().unwrap_or(0);
        if self.extended {
            let bitmap = table.get(index * w + 1).copied().unwrap_or(0);
            return Ok(ExtendedL2Mapping::decode(first, bitmap, &self.ctx, at)?);
        }
        Ok(L2Mapping::decode(first, &self.ctx, at)?.into())
    }

    /// Encodes `mapping` into entry `index`.
    pub fn encode(
        &self,
        table: &mut [u64],
        index: usize,
        mapping: ExtendedL2Mapping,
    ) -> Result<()> {
        let w = self.words();
        let words = table
            .get_mut(index * w..index * w + w)
            .ok_or_else(|| ImageError::Corrupt {
                rule: None,
                offset: 0,
                reason: format!("L2 index {index} out of range"),
            })?;
        if self.extended {
            let (descriptor, bitmap) = mapping.encode(&self.ctx)?;
            words[0] = descriptor;
            words[1] = bitmap;
            return Ok(());
        }
        let standard = match mapping {
            ExtendedL2Mapping::Unallocated { zero: 0 } => L2Mapping::Unallocated,
            ExtendedL2Mapping::Unallocated { .. } => L2Mapping::Zero { preallocated: None },
            ExtendedL2Mapping::Allocated {
                host, allocated: 0, ..
            } => L2Mapping::Zero {
                preallocated: Some(host),
            },
            ExtendedL2Mapping::Allocated { host, .. } => L2Mapping::Data(host),
            ExtendedL2Mapping::Compressed(d) => L2Mapping::Compressed(d),
        };
        words[0] = standard.encode(&self.ctx)?;
        Ok(())
    }
}
