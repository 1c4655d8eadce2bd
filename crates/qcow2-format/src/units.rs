//! Newtypes for the address spaces of a qcow2 image and the cluster geometry that relates them.
//!
//! Guest offsets (what the virtual disk sees), host offsets (bytes in the image file)
//! and cluster indices are all `u64` on disk; keeping them apart in the type system
//! stops a guest offset from being used to seek in the file.

use core::fmt;

macro_rules! offset_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct $name(pub u64);

        impl $name {
            /// The raw byte offset.
            pub const fn get(self) -> u64 {
                self.0
            }

            /// Adds `bytes`, or `None` on overflow.
            pub fn checked_add(self, bytes: u64) -> Option<Self> {
                self.0.checked_add(bytes).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

offset_newtype!(
    /// A byte offset in the virtual disk as the guest sees it.
    GuestOffset
);
offset_newtype!(
    /// A byte offset in the image file (or the external data file).
    HostOffset
);

/// The index of a cluster in the image file (host offset / cluster size).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ClusterIndex(pub u64);

impl ClusterIndex {
    /// The raw index.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ClusterIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster {}", self.0)
    }
}

/// Smallest cluster_bits the spec allows (512-byte clusters).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits QEMU accepts (2 MiB clusters).
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Cluster size and the sizes derived from it.
///
/// Construct with [`ClusterGeometry::new`], which enforces
/// [`MIN_CLUSTER_BITS`]..=[`MAX_CLUSTER_BITS`]; every method is then total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterGeometry {
    cluster_bits: u32,
}

impl ClusterGeometry {
    /// Geometry for `cluster_bits`, or `None` when it is outside 9..=21.
    pub const fn new(cluster_bits: u32) -> Option<Self> {
        if cluster_bits >= MIN_CLUSTER_BITS && cluster_bits <= MAX_CLUSTER_BITS {
            Some(Self { cluster_bits })
        } else {
            None
        }
    }

    /// log2 of the cluster size.
    pub const fn cluster_bits(self) -> u32 {
        self.cluster_bits
    }

    /// Cluster size in bytes.
    pub const fn cluster_size(self) -> u64 {
        1 << self.cluster_bits
    }

    /// Number of 8-byte entries in one L1/refcount-table cluster.
    pub const fn u64_entries_per_cluster(self) -> u64 {
        self.cluster_size() / 8
    }

    /// Number of L2 entries in one L2 table (extended entries are 16 bytes).
    pub const fn l2_entries(self, extended_l2: bool) -> u64 {
        if extended_l2 {
            self.cluster_size() / 16
        } else {
            self.cluster_size() / 8
        }
    }

    /// Bytes of guest data mapped by one L2 table.
    pub const fn bytes_per_l2_table(self, extended_l2: bool) -> u64 {
        self.l2_entries(extended_l2) * self.cluster_size()
    }

    /// Offset within its cluster.
    pub const fn offset_in_cluster(self, offset: u64) -> u64 {
        offset & (self.cluster_size() - 1)
    }

    /// Whether `offset` is a multiple of the cluster size.
    pub const fn is_aligned(self, offset: u64) -> bool {
        self.offset_in_cluster(offset) == 0
    }

    /// The cluster holding host offset `offset`.
    pub const fn host_cluster(self, offset: HostOffset) -> ClusterIndex {
        ClusterIndex(offset.0 >> self.cluster_bits)
    }

    /// Host offset of the first byte of `cluster`, or `None` on overflow.
    pub fn cluster_start(self, cluster: ClusterIndex) -> Option<HostOffset> {
        cluster.0.checked_mul(self.cluster_size()).map(HostOffset)
    }

    /// Number of clusters needed to hold `bytes` bytes.
    pub const fn clusters_for(self, bytes: u64) -> u64 {
        bytes.div_ceil(self.cluster_size())
    }

    /// (L1 index, L2 index) of a guest offset.
    pub const fn l1_l2_index(self, guest: GuestOffset, extended_l2: bool) -> (u64, u64) {
        let cluster = guest.0 >> self.cluster_bits;
        let per_l2 = self.l2_entries(extended_l2);
        (cluster / per_l2, cluster % per_l2)
    }

    /// Number of L1 entries needed for a disk of `virtual_size` bytes.
    pub const fn l1_entries_for(self, virtual_size: u64, extended_l2: bool) -> u64 {
        virtual_size.div_ceil(self.bytes_per_l2_table(extended_l2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_bounds() {
        assert!(ClusterGeometry::new(8).is_none());
        assert!(ClusterGeometry::new(22).is_none());
        let g = ClusterGeometry::new(16).unwrap();
        assert_eq!(g.cluster_size(), 65536);
        assert_eq!(g.l2_entries(false), 8192);
        assert_eq!(g.l2_entries(true), 4096);
        assert_eq!(g.bytes_per_l2_table(false), 512 << 20);
        assert_eq!(g.l1_l2_index(GuestOffset(512 << 20), false), (1, 0));
        assert_eq!(
            g.l1_l2_index(GuestOffset((512 << 20) + 65536 * 3 + 7), false),
            (1, 3)
        );
        assert_eq!(g.l1_entries_for(1 << 30, false), 2);
        assert_eq!(g.l1_entries_for((1 << 30) + 1, false), 3);
        assert_eq!(g.host_cluster(HostOffset(0x30000)), ClusterIndex(3));
        assert_eq!(g.cluster_start(ClusterIndex(u64::MAX)), None);
    }
}
