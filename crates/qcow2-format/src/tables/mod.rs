//! Layouts of the tables an image points at: L1/L2, compressed descriptors,
//! refcount structures, snapshots and the dedup table.
