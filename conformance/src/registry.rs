//! The rule registry: for every rule ID, which corpus images exercise it (its
//! positive cases); its negative cases live in [`crate::negatives`].

use qcow2_format::extensions as ext;
use qcow2_format::features as feat;
use qcow2_format::rules::{self, RuleId};
use qcow2_format::HeaderArea;

use crate::mutate::get_u64;

/// Decides whether an image (whole file, parsed header area) exercises a rule.
pub type Applies = fn(&[u8], &HeaderArea) -> bool;

/// One registered rule.
#[derive(Clone, Copy)]
pub struct RuleEntry {
    /// The rule.
    pub id: RuleId,
    /// Which images are positive cases for it.
    pub applies: Applies,
}

fn any(_: &[u8], _: &HeaderArea) -> bool {
    true
}
fn v2(_: &[u8], a: &HeaderArea) -> bool {
    a.header.version == 2
}
fn v3(_: &[u8], a: &HeaderArea) -> bool {
    a.header.version == 3
}
/// A backing file name, or a stored name size that must be ignored (offset 0).
fn has_backing(_: &[u8], a: &HeaderArea) -> bool {
    a.backing_file.is_some() || a.header.backing_file_size != 0
}
fn has_backing_format(_: &[u8], a: &HeaderArea) -> bool {
    a.backing_format().is_some()
}
fn has_ext(a: &HeaderArea, kind: u32) -> bool {
    a.chain.find(kind).is_some()
}
fn has_feature_table(_: &[u8], a: &HeaderArea) -> bool {
    has_ext(a, ext::FEATURE_TABLE)
}
fn has_bitmaps(_: &[u8], a: &HeaderArea) -> bool {
    has_ext(a, ext::BITMAPS)
}
fn has_fde(_: &[u8], a: &HeaderArea) -> bool {
    has_ext(a, ext::FULL_DISK_ENCRYPTION)
}
fn has_data_file(_: &[u8], a: &HeaderArea) -> bool {
    has_ext(a, ext::EXTERNAL_DATA_FILE)
}
fn has_bit2(_: &[u8], a: &HeaderArea) -> bool {
    a.header.incompatible_features & feat::INCOMPAT_BIT2 != 0
}
fn has_cf(_: &[u8], a: &HeaderArea) -> bool {
    a.compress_format().is_some()
}
fn has_dedup(_: &[u8], a: &HeaderArea) -> bool {
    a.dedup().is_some()
}
fn has_dedup_entries(b: &[u8], a: &HeaderArea) -> bool {
    a.dedup().is_some_and(|d| {
        d.l1_size > 0 && first_non_zero_u64(b, d.l1_offset.get(), d.l1_size.into())
    })
}
/// A deduplicated image (bit 1 and the extension) whose table has entries.
fn deduplicated_with_entries(b: &[u8], a: &HeaderArea) -> bool {
    a.header.incompatible_features & feat::INCOMPAT_BIT1 != 0 && has_dedup_entries(b, a)
}
fn has_dedup_clean(b: &[u8], a: &HeaderArea) -> bool {
    clean(b, a) && has_dedup(b, a)
}
fn has_compression_type(_: &[u8], a: &HeaderArea) -> bool {
    a.header.incompatible_features & feat::INCOMPAT_COMPRESSION_TYPE != 0
}
fn has_extended_l2(_: &[u8], a: &HeaderArea) -> bool {
    a.header.incompatible_features & feat::INCOMPAT_EXTENDED_L2 != 0
}
fn has_lazy(_: &[u8], a: &HeaderArea) -> bool {
    a.header.compatible_features & feat::COMPAT_LAZY_REFCOUNTS != 0
}
fn has_l2_tables(b: &[u8], a: &HeaderArea) -> bool {
    first_non_zero_u64(b, a.header.l1_table_offset.get(), a.header.l1_size.into())
}
fn has_l2_tables_v2(b: &[u8], a: &HeaderArea) -> bool {
    a.header.version == 2 && has_l2_tables(b, a)
}
fn has_l2_tables_extended(b: &[u8], a: &HeaderArea) -> bool {
    has_extended_l2(b, a) && has_l2_tables(b, a)
}
fn has_compressed_clusters(b: &[u8], a: &HeaderArea) -> bool {
    crate::walk::has_compressed_clusters(b, a)
}
fn has_snapshots(_: &[u8], a: &HeaderArea) -> bool {
    a.header.nb_snapshots > 0
}
fn clean(_: &[u8], a: &HeaderArea) -> bool {
    a.header.incompatible_features & feat::INCOMPAT_DIRTY == 0
}
fn has_l2_tables_clean(b: &[u8], a: &HeaderArea) -> bool {
    clean(b, a) && has_l2_tables(b, a)
}
/// Duty rules take no corpus image as a positive: their cases are
/// [`crate::duties`].
fn never(_: &[u8], _: &HeaderArea) -> bool {
    false
}
fn small_clusters(_: &[u8], a: &HeaderArea) -> bool {
    a.header.cluster_bits <= 12
}

/// Whether any of `count` u64 entries at `at` is non-zero (false when out of the file).
fn first_non_zero_u64(bytes: &[u8], at: u64, count: u64) -> bool {
    (0..count.min(1 << 22)).any(|k| {
        let pos = at.saturating_add(8 * k) as usize;
        pos + 8 <= bytes.len() && get_u64(bytes, pos) != 0
    })
}

/// Every registered rule, in the order of `docs/spec.md`.
pub fn all() -> Vec<RuleEntry> {
    use rules::*;
    let table: &[(RuleId, Applies)] = &[
        (HDR_MAGIC, any),
        (HDR_VERSION, any),
        (HDR_LENGTH, any),
        (HDR_FIRST_CLUSTER, small_clusters),
        (HDR_CLUSTER_BITS, any),
        (HDR_CRYPT_METHOD, any),
        (HDR_BACKING_FILE, has_backing),
        (HDR_L1_OFFSET, any),
        (HDR_L1_SIZE, any),
        (HDR_SIZE, any),
        (HDR_REFTABLE_OFFSET, any),
        (HDR_REFTABLE_CLUSTERS, any),
        (HDR_SNAPSHOTS, any),
        (HDR_REFCOUNT_ORDER, v3),
        (HDR_COMPRESSION_TYPE, has_compression_type),
        (HDR_V2_FEATURES, v2),
        (FEAT_INCOMPAT_UNKNOWN, v3),
        (FEAT_DIRTY, v3),
        (FEAT_CORRUPT, v3),
        (FEAT_BIT2, has_bit2),
        (FEAT_EXTENDED_L2, has_extended_l2),
        (FEAT_LAZY_REFCOUNTS, has_lazy),
        (FEAT_UNKNOWN_COMPAT, v3),
        (FEAT_RAW_DATA, has_data_file),
        (DATA_NO_REFCOUNT, never),
        (DATA_RAW_IMAGE, never),
        (EXT_FRAMING, any),
        (EXT_PADDING, has_backing_format),
        (EXT_DUPLICATE, has_feature_table),
        (EXT_UNKNOWN, any),
        (EXT_BACKING_FORMAT, has_backing_format),
        (EXT_FEATURE_TABLE, has_feature_table),
        (EXT_BITMAPS, has_bitmaps),
        (EXT_FDE, any),
        (EXT_DATA_FILE, has_data_file),
        (ENC_LUKS_HEADER, has_fde),
        (ENC_AREA, has_fde),
        (ENC_PAYLOAD_OFFSET, has_fde),
        (ENC_LUKS_CIPHER, has_fde),
        (ENC_PAYLOAD, never),
        (CF_PRESENCE, has_cf),
        (CF_LENGTH, has_cf),
        (CF_NAME, has_cf),
        (CF_KNOWN, has_cf),
        (CF_LEVEL, has_cf),
        (CF_RESERVED, has_cf),
        (CF_EXTRA_DATA, has_cf),
        (CF_CONFLICT, has_cf),
        (DD_PRESENCE, has_dedup),
        (DD_STALE, has_dedup),
        (DD_LENGTH, has_dedup),
        (DD_L1_OFFSET, has_dedup),
        (DD_L1_SIZE, has_dedup),
        (DD_L1_ENTRY, has_dedup_entries),
        (DD_L2_LAYOUT, has_dedup_entries),
        (DD_ENTRY, has_dedup_entries),
        (DD_DIGEST, deduplicated_with_entries),
        (DD_LIVE, deduplicated_with_entries),
        (DD_REFCOUNT, has_dedup_clean),
        (L1_ENTRY, has_l2_tables),
        (L1_COPIED, has_l2_tables_clean),
        (L2_ENTRY, has_l2_tables),
        (L2_ZERO_FLAG, has_l2_tables_v2),
        (L2_EXTENDED, has_l2_tables_extended),
        (L2_COPIED, has_l2_tables_clean),
        (CMP_DESCRIPTOR, has_compressed_clusters),
        (CMP_DECODE, has_compressed_clusters),
        (READ_MAPPING, never),
        (READ_UNALLOCATED, never),
        (RC_TABLE_ENTRY, any),
        (RC_BLOCK, any),
        (RC_MATCH, clean),
        (RC_OVERLAP, clean),
        (RC_COW, never),
        (SNAP_ENTRY, has_snapshots),
        (SNAP_ID_UNIQUE, has_snapshots),
        (SNAP_VMSTATE, has_snapshots),
        (SNAP_LOAD, never),
        (BMP_DIRECTORY, has_bitmaps),
        (BMP_NAME, has_bitmaps),
        (BMP_FLAGS, has_bitmaps),
        (BMP_TYPE, has_bitmaps),
        (BMP_GRANULARITY, has_bitmaps),
        (BMP_TABLE, has_bitmaps),
        (BMP_TABLE_ENTRY, has_bitmaps),
        (BMP_BIT_NO_EXT, v3),
        (BMP_IN_USE, has_bitmaps),
        (BMP_EXTRA_DATA, has_bitmaps),
        (BMP_DATA_TAIL, has_bitmaps),
        (BMP_DATA, never),
        (BMP_AUTO, never),
    ];
    table
        .iter()
        .map(|&(id, applies)| RuleEntry { id, applies })
        .collect()
}
