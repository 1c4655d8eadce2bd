//! The value checks of the fixed header, one rule each, so that a caller can
//! ask for the first violation (to refuse) or for all of them (to report).

use crate::error::{ErrorKind, FormatError, Result};
use crate::header::{
    misaligned, out_of_range, CompressionType, CryptMethod, Header, COMPRESSION_TYPE_OFFSET,
    MAX_BACKING_FILE_NAME, MAX_L1_BYTES, MAX_REFTABLE_BYTES, MAX_SNAPSHOTS, V3_MIN_HEADER_LEN,
};
use crate::rules::{self, RuleId};
use crate::units::ClusterGeometry;

/// Highest byte offset a table may reach (QEMU keeps offsets in a signed 64-bit type).
const MAX_END: u64 = i64::MAX as u64;
/// Bytes of one snapshot table entry without its variable parts.
const SNAPSHOT_ENTRY_MIN: u64 = 40;

/// One independent check of the fixed header.
type Check = fn(&Header, ClusterGeometry) -> Result<()>;

/// The checks in field order: the first failing one is what a refusal names.
const CHECKS: &[Check] = &[
    Header::check_first_cluster,
    Header::check_crypt_method,
    Header::check_backing_file,
    Header::check_size,
    Header::check_l1_size,
    Header::check_l1_offset,
    Header::check_reftable_offset,
    Header::check_reftable_clusters,
    Header::check_snapshots,
    Header::check_refcount_order,
    Header::check_compression_type,
    Header::check_v2_fields,
];

/// Fails with `rule` when `offset + count * unit` passes [`MAX_END`].
pub(crate) fn end_within_limit(
    rule: RuleId,
    at: u64,
    field: &'static str,
    offset: u64,
    count: u64,
    unit: u64,
) -> Result<()> {
    let end = count
        .checked_mul(unit)
        .and_then(|len| offset.checked_add(len));
    match end {
        Some(end) if end <= MAX_END => Ok(()),
        _ => Err(FormatError::new(
            rule,
            at,
            ErrorKind::Malformed {
                field,
                reason: format!(
                    "{offset:#x} + {count} x {unit} bytes runs past the largest offset 2^63 - 1"
                ),
            },
        )),
    }
}

impl Header {
    /// Checks every field of the fixed header on its own (no extensions, no
    /// file size) and returns the first violation in field order.
    pub fn validate(&self) -> Result<ClusterGeometry> {
        let geo = self.geometry()?;
        match CHECKS.iter().find_map(|check| check(self, geo).err()) {
            Some(e) => Err(e),
            None => Ok(geo),
        }
    }

    /// Every violation of the fixed header's value rules, in field order.
    /// A bad cluster size stops the checks: every other bound depends on it.
    pub fn validate_all(&self) -> Vec<FormatError> {
        match self.geometry() {
            Err(e) => vec![e],
            Ok(geo) => CHECKS
                .iter()
                .filter_map(|check| check(self, geo).err())
                .collect(),
        }
    }

    fn check_first_cluster(&self, geo: ClusterGeometry) -> Result<()> {
        let cs = geo.cluster_size();
        if u64::from(self.header_length) > cs {
            return Err(out_of_range(
                rules::HDR_FIRST_CLUSTER,
                100,
                "header_length",
                self.header_length.into(),
                V3_MIN_HEADER_LEN.into(),
                cs,
            ));
        }
        Ok(())
    }

    fn check_crypt_method(&self, _: ClusterGeometry) -> Result<()> {
        if CryptMethod::from_raw(self.crypt_method).is_none() {
            return Err(out_of_range(
                rules::HDR_CRYPT_METHOD,
                32,
                "crypt_method",
                self.crypt_method.into(),
                0,
                2,
            ));
        }
        Ok(())
    }

    fn check_backing_file(&self, geo: ClusterGeometry) -> Result<()> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        if self.backing_file_size > MAX_BACKING_FILE_NAME || self.backing_file_size == 0 {
            return Err(out_of_range(
                rules::HDR_BACKING_FILE,
                16,
                "backing_file_size",
                self.backing_file_size.into(),
                1,
                MAX_BACKING_FILE_NAME.into(),
            ));
        }
        let cs = geo.cluster_size();
        let end = self
            .backing_file_offset
            .saturating_add(self.backing_file_size.into());
        if end > cs || self.backing_file_offset < u64::from(self.header_length) {
            return Err(FormatError::new(
                rules::HDR_BACKING_FILE,
                8,
                ErrorKind::Malformed {
                    field: "backing_file_offset",
                    reason: format!(
                        "name at {:#x}..{end:#x} is not between the header end {:#x} and the cluster end {cs:#x}",
                        self.backing_file_offset, self.header_length
                    ),
                },
            ));
        }
        Ok(())
    }

    /// L1 entries the virtual size needs.
    fn needed_l1(&self, geo: ClusterGeometry) -> u64 {
        let extended_l2 = self.incompatible_features & crate::features::INCOMPAT_EXTENDED_L2 != 0;
        geo.l1_entries_for(self.size, extended_l2)
    }

    fn check_size(&self, geo: ClusterGeometry) -> Result<()> {
        if self.size > MAX_END {
            return Err(out_of_range(
                rules::HDR_SIZE,
                24,
                "size",
                self.size,
                0,
                MAX_END,
            ));
        }
        let max_l1 = MAX_L1_BYTES / 8;
        let needed_l1 = self.needed_l1(geo);
        if needed_l1 > max_l1 {
            return Err(FormatError::new(
                rules::HDR_SIZE,
                24,
                ErrorKind::Malformed {
                    field: "size",
                    reason: format!(
                        "{} bytes need {needed_l1} L1 entries, more than the limit of {max_l1}",
                        self.size
                    ),
                },
            ));
        }
        Ok(())
    }

    fn check_l1_size(&self, geo: ClusterGeometry) -> Result<()> {
        let max_l1 = MAX_L1_BYTES / 8;
        // A size no L1 table can map is HDR-SIZE's violation alone: the
        // table is then held only to the limit.
        let needed_l1 = match self.needed_l1(geo) {
            n if n > max_l1 => 0,
            n => n,
        };
        if u64::from(self.l1_size) > max_l1 || u64::from(self.l1_size) < needed_l1 {
            return Err(out_of_range(
                rules::HDR_L1_SIZE,
                36,
                "l1_size",
                self.l1_size.into(),
                needed_l1,
                max_l1,
            ));
        }
        Ok(())
    }

    fn check_l1_offset(&self, geo: ClusterGeometry) -> Result<()> {
        let offset = self.l1_table_offset.0;
        if !geo.is_aligned(offset) || (self.l1_size > 0 && offset == 0) {
            return Err(misaligned(
                rules::HDR_L1_OFFSET,
                40,
                "l1_table_offset",
                offset,
                geo.cluster_size(),
            ));
        }
        end_within_limit(
            rules::HDR_L1_OFFSET,
            40,
            "l1_table_offset",
            offset,
            self.l1_size.into(),
            8,
        )
    }

    fn check_reftable_offset(&self, geo: ClusterGeometry) -> Result<()> {
        let offset = self.refcount_table_offset.0;
        if offset == 0 || !geo.is_aligned(offset) {
            return Err(misaligned(
                rules::HDR_REFTABLE_OFFSET,
                48,
                "refcount_table_offset",
                offset,
                geo.cluster_size(),
            ));
        }
        end_within_limit(
            rules::HDR_REFTABLE_OFFSET,
            48,
            "refcount_table_offset",
            offset,
            self.refcount_table_clusters.into(),
            geo.cluster_size(),
        )
    }

    fn check_reftable_clusters(&self, geo: ClusterGeometry) -> Result<()> {
        let max_rt_clusters = (MAX_REFTABLE_BYTES / geo.cluster_size()).max(1);
        if self.refcount_table_clusters == 0
            || u64::from(self.refcount_table_clusters) > max_rt_clusters
        {
            return Err(out_of_range(
                rules::HDR_REFTABLE_CLUSTERS,
                56,
                "refcount_table_clusters",
                self.refcount_table_clusters.into(),
                1,
                max_rt_clusters,
            ));
        }
        Ok(())
    }

    fn check_snapshots(&self, geo: ClusterGeometry) -> Result<()> {
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(out_of_range(
                rules::HDR_SNAPSHOTS,
                60,
                "nb_snapshots",
                self.nb_snapshots.into(),
                0,
                MAX_SNAPSHOTS.into(),
            ));
        }
        let offset = self.snapshots_offset.0;
        if !geo.is_aligned(offset) || (self.nb_snapshots > 0 && offset == 0) {
            return Err(misaligned(
                rules::HDR_SNAPSHOTS,
                64,
                "snapshots_offset",
                offset,
                geo.cluster_size(),
            ));
        }
        end_within_limit(
            rules::HDR_SNAPSHOTS,
            64,
            "snapshots_offset",
            offset,
            self.nb_snapshots.into(),
            SNAPSHOT_ENTRY_MIN,
        )
    }

    fn check_refcount_order(&self, _: ClusterGeometry) -> Result<()> {
        if self.refcount_order > 6 {
            return Err(out_of_range(
                rules::HDR_REFCOUNT_ORDER,
                96,
                "refcount_order",
                self.refcount_order.into(),
                0,
                6,
            ));
        }
        Ok(())
    }

    /// A version 2 header has no feature fields: only a header built in
    /// code can hold incompatible or autoclear bits or a compression type
    /// (compatible bits are the lazy refcounts rule's business).
    fn check_v2_fields(&self, _: ClusterGeometry) -> Result<()> {
        if self.version != 2 {
            return Ok(());
        }
        let asked = [
            (self.incompatible_features != 0, "incompatible feature bits"),
            (self.autoclear_features != 0, "autoclear feature bits"),
            (self.compression_type != 0, "a compression type"),
        ];
        match asked.iter().find(|(set, _)| *set) {
            None => Ok(()),
            Some((_, what)) => Err(FormatError::new(
                rules::HDR_V2_FEATURES,
                72,
                ErrorKind::Conflict(format!(
                    "a version 2 header has no feature fields, so it cannot carry {what}"
                )),
            )),
        }
    }

    fn check_compression_type(&self, _: ClusterGeometry) -> Result<()> {
        if self.version == 2 {
            // No such field: HDR-V2-FEATURES judges a value put there.
            return Ok(());
        }
        let bit_set = self.incompatible_features & crate::features::INCOMPAT_COMPRESSION_TYPE != 0;
        let off = u64::from(COMPRESSION_TYPE_OFFSET);
        let Some(kind) = self.compression() else {
            return Err(out_of_range(
                rules::HDR_COMPRESSION_TYPE,
                off,
                "compression_type",
                self.compression_type.into(),
                0,
                1,
            ));
        };
        let has_field = self.header_length > COMPRESSION_TYPE_OFFSET;
        if bit_set && !has_field {
            return Err(FormatError::new(
                rules::HDR_COMPRESSION_TYPE,
                72,
                ErrorKind::Conflict(format!(
                    "incompatible bit 3 (compression type) is set but header_length {} has no compression type byte",
                    self.header_length
                )),
            ));
        }
        if bit_set != (kind != CompressionType::Zlib) {
            return Err(FormatError::new(
                rules::HDR_COMPRESSION_TYPE,
                off,
                ErrorKind::Conflict(format!(
                    "compression type {} requires incompatible bit 3 to be {}",
                    kind.name(),
                    if bit_set { "clear" } else { "set" }
                )),
            ));
        }
        Ok(())
    }
}
