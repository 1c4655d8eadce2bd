//! Layouts of the tables an image points at: L1/L2, compressed descriptors,
//! refcount structures, snapshots, the dedup table and the bitmap directory.
//!
//! # Error offsets
//!
//! Every decoder takes a `base_offset: u64`: the position of the first byte of
//! the buffer (or of the single entry) it is given. Errors report
//! `base_offset + position of the offending entry or field in that buffer`.
//! Pass the absolute file offset where the buffer was read to get absolute
//! offsets, or `0` to get offsets relative to the buffer. Encoders of single
//! values report offset 0 (relative to the value they encode); table encoders
//! report the position in the output buffer.
//!
//! # Validity
//!
//! Decoders accept exactly the bit patterns the spec allows and return typed
//! values; encoders check the same rules, so for every value `v` an encoder
//! accepts, decoding its output gives back `v`, and for every byte string `b` a
//! decoder accepts, encoding the result gives back `b`. Two exceptions are
//! normalised to zero on rewrite: snapshot padding (see [`snapshot`]) and the
//! meaningless bit 0 of extended L2 descriptors (see [`l2_extended`]).

pub mod bitmap_data;
pub mod bitmap_directory;
pub mod compressed;
pub mod dedup_table;
pub mod l1;
pub mod l2;
pub mod l2_extended;
pub mod luks;
pub mod luks_values;
pub mod refcount;
pub mod snapshot;

mod raw;

pub use compressed::CompressedDescriptor;
pub use dedup_table::{DedupEntry, DedupIndex};
pub use l1::L1Entry;
pub use l2::{HostCluster, L2Context, L2Mapping, ReadSource};
pub use l2_extended::ExtendedL2Mapping;
pub use refcount::{RefcountBlock, RefcountOrder, RefcountTableEntry};
pub use snapshot::{SnapshotContext, SnapshotEntry};
