//! Changing format options of an existing image, like `qemu-img amend -f
//! qcow2 -o ...`: the compatibility level (version 2 ⇄ 3), the lazy
//! refcounts bit, the refcount width, and the seed compress format (level,
//! or format when no cluster is compressed).
//!
//! Every option is checked against the image before anything is written,
//! so a refused amend leaves the file as it was. The changes then run in
//! QEMU's order: upgrade, refcount width, lazy refcounts, downgrade. Each
//! step leaves a consistent image behind it:
//!
//! - a dirty image (lazy refcounts) gets its refcounts repaired first;
//! - header rewrites keep every header extension QEMU keeps (unknown ones
//!   included), the backing file name and the known auto-clear bits;
//! - a new refcount width is written as a whole new refcount structure
//!   after the end of the file and made durable before one header write
//!   switches to it (see [`qcow2_alloc::repair::change_refcount_order`]);
//! - a downgrade first turns every zero cluster of the active L1 table into
//!   something version 2 can express (unallocated when nothing shows
//!   through, zeroed data otherwise), flushes, then writes the version 2
//!   header last.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use qcow2_alloc::repair::{change_refcount_order, repair, RepairMode};
use qcow2_format::extensions::Extension;
use qcow2_format::features::{self as feat, FeatureKind};
use qcow2_format::header::{COMPRESSION_TYPE_OFFSET, V2_HEADER_LEN, V3_HEADER_LEN};
use qcow2_format::tables::l2::{L2Context, L2Mapping, L2_ENTRY_SIZE};
use qcow2_format::tables::l2_extended::ExtendedL2Mapping;
use qcow2_format::tables::{L1Entry, RefcountOrder};
use qcow2_format::{ClusterGeometry, HeaderArea};
use qcow2_io::{FileStorage, Storage, WriteKind};

use crate::error::{ImageError, Result};
use crate::image::{read_area, Image};
use crate::meta::sync;
use crate::options::{BackingMode, OpenOptions};

/// A qcow2 compatibility level, as `-o compat=` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compat {
    /// Version 2 (`0.10` or `v2`).
    V2,
    /// Version 3 (`1.1` or `v3`).
    V3,
}

impl Compat {
    /// Parses a `compat=` value as qemu-img does (`0.10`, `v2`, `1.1`, `v3`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "0.10" | "v2" => Some(Self::V2),
            "1.1" | "v3" => Some(Self::V3),
            _ => None,
        }
    }

    /// The header version.
    pub fn version(self) -> u32 {
        match self {
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }
}

/// What to change; `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmendOptions {
    /// New seed compress format (codec name); refused when clusters are
    /// compressed with another codec.
    pub compress_format: Option<String>,
    /// New level of the seed compress format (0 = the codec's default).
    pub compress_level: Option<u8>,
    /// New compatibility level.
    pub compat: Option<Compat>,
    /// Set (`true`) or clear the lazy refcounts bit (version 3 only).
    pub lazy_refcounts: Option<bool>,
    /// New refcount width in bits: a power of two from 1 to 64 (16 for
    /// version 2).
    pub refcount_bits: Option<u64>,
}

/// What an amend changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmendReport {
    /// The refcounts of a dirty image were repaired first.
    pub repaired_dirty: bool,
    /// The image was upgraded from version 2 to 3.
    pub upgraded: bool,
    /// The refcount structure was rewritten with this width in bits.
    pub refcount_bits: Option<u64>,
    /// The lazy refcounts bit was set to this value.
    pub lazy_refcounts: Option<bool>,
    /// The image was downgraded from version 3 to 2.
    pub downgraded: bool,
    /// The compress format extension now names this codec and level.
    pub compress_format: Option<(String, u8)>,
    /// Zero clusters of the active L1 table turned into allocated zeroed
    /// clusters by the downgrade.
    pub zero_clusters_allocated: u64,
    /// Zero clusters turned unallocated by the downgrade (nothing shows
    /// through them).
    pub zero_clusters_unmapped: u64,
}

fn invalid(reason: impl Into<String>) -> ImageError {
    ImageError::InvalidArgument {
        what: "amend option",
        reason: reason.into(),
    }
}

fn cannot_downgrade(what: impl std::fmt::Display) -> ImageError {
    ImageError::Unsupported {
        what: format!("downgrading to compat=0.10 an image with {what}"),
    }
}

impl Image {
    /// Amends the image file at `path` (which must not be open elsewhere).
    pub fn amend_path(path: &Path, options: &AmendOptions) -> Result<AmendReport> {
        let storage = FileStorage::open(path, true)
            .map_err(|e| ImageError::io("opening the image file", 0, e))?;
        Self::amend(Arc::new(storage), options)
    }

    /// Changes the format options of the image on `storage`, which nothing
    /// else may have open.
    ///
    /// Refused, with nothing written: a bad option value or combination
    /// (lazy refcounts or a width other than 16 bits on version 2, a width
    /// that is not a power of two up to 64), images this engine cannot
    /// write (encrypted, external data file, corrupt), and downgrades of
    /// images using something version 2 cannot express (named in the
    /// error). A refcount width that cannot hold some cluster's refcount
    /// is refused before anything is written too.
    pub fn amend(storage: Arc<dyn Storage>, options: &AmendOptions) -> Result<AmendReport> {
        let area = read_area(&*storage)?;
        let plan = Plan::new(&*storage, &area, options)?;
        plan.run(storage, options)
    }
}

/// Bytes the header area takes on disk now: the serialized area or the
/// end of the backing file name, whichever is further.
fn area_len_on_disk(area: &HeaderArea) -> usize {
    let name_end = area
        .header
        .backing_file_offset
        .saturating_add(area.header.backing_file_size.into());
    let serialized = area.clone().to_bytes().map_or(0, |b| b.len());
    serialized.max(usize::try_from(name_end).unwrap_or(0))
}

/// Writes `area` at the start of the file, zeroing what is left of the
/// `old_len` bytes it replaces, and flushes.
fn write_area(storage: &dyn Storage, area: &mut HeaderArea, old_len: usize) -> Result<()> {
    let mut bytes = area.to_bytes()?;
    if bytes.len() < old_len {
        bytes.resize(old_len, 0);
    }
    sync(storage)?;
    storage
        .write_at(&bytes, 0, WriteKind::Header)
        .map_err(|e| ImageError::io("writing the header", 0, e))?;
    sync(storage)
}

/// The validated changes.
struct Plan {
    version: u32,
    target_version: u32,
    /// New refcount_order, when it changes.
    new_order: Option<RefcountOrder>,
    dirty: bool,
    codec: Option<crate::amend_codec::CodecChange>,
}

impl Plan {
    fn new(storage: &dyn Storage, area: &HeaderArea, options: &AmendOptions) -> Result<Self> {
        let h = &area.header;
        let assessment = area.assess(None)?;
        let features = assessment.features;
        if h.crypt_method != 0 {
            return Err(ImageError::Unsupported {
                what: "amending encrypted images".into(),
            });
        }
        if features.external_data_file() {
            return Err(ImageError::Unsupported {
                what: "amending images with an external data file".into(),
            });
        }
        if let Some(rule) = assessment.read_only {
            return Err(ImageError::ReadOnly {
                reason: Some(rule.as_str()),
            });
        }
        let version = h.version;
        let target_version = options.compat.map_or(version, Compat::version);
        let order = match options.refcount_bits {
            None => h.refcount_order,
            Some(bits) => {
                let order = bits.trailing_zeros();
                if !bits.is_power_of_two() || RefcountOrder::new(order).is_none() {
                    return Err(invalid(
                        "Refcount width must be a power of two and may not exceed 64 bits",
                    ));
                }
                order
            }
        };
        if target_version < 3 && order != 4 {
            return Err(invalid(if options.compat == Some(Compat::V2) {
                "compat=0.10 requires refcount_bits=16"
            } else {
                "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"
            }));
        }
        if target_version < 3 && options.lazy_refcounts == Some(true) {
            return Err(invalid(
                "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
            ));
        }
        if target_version < version {
            check_downgrade(storage, area)?;
        }
        let new_order = (order != h.refcount_order)
            .then(|| RefcountOrder::new(order))
            .flatten();
        let codec = crate::amend_codec::plan(
            storage,
            area,
            options.compress_format.as_deref(),
            options.compress_level,
            target_version,
        )?;
        Ok(Self {
            version,
            target_version,
            new_order,
            dirty: features.dirty,
            codec,
        })
    }

    fn run(self, storage: Arc<dyn Storage>, options: &AmendOptions) -> Result<AmendReport> {
        let mut report = AmendReport::default();
        let changes = self.target_version != self.version
            || self.new_order.is_some()
            || options.lazy_refcounts.is_some()
            || self.codec.is_some();
        if !changes {
            return Ok(report);
        }
        if self.dirty {
            // Stale refcounts must not be carried into a new structure or
            // declared clean.
            let repaired = repair(&*storage, RepairMode::All, &[])?;
            let left = repaired.final_report();
            if left.corruptions > 0 || left.check_errors > 0 {
                return Err(ImageError::Corrupt {
                    rule: Some(qcow2_format::rules::RC_MATCH),
                    offset: 0,
                    reason: format!(
                        "{} corruptions remain after repairing the dirty image",
                        left.corruptions
                    ),
                });
            }
            report.repaired_dirty = true;
        }
        if self.target_version > self.version {
            upgrade(&*storage)?;
            report.upgraded = true;
        }
        if let Some(order) = self.new_order {
            change_refcount_order(&*storage, order, &[])?;
            report.refcount_bits = Some(u64::from(order.bits()));
        }
        if let Some(lazy) = options.lazy_refcounts {
            if self.target_version >= 3 {
                set_lazy(&*storage, lazy)?;
            }
            report.lazy_refcounts = Some(lazy);
        }
        if let Some(change) = &self.codec {
            let mut area = read_area(&*storage)?;
            let old_len = area_len_on_disk(&area);
            crate::amend_codec::apply(&mut area, change);
            write_area(&*storage, &mut area, old_len)?;
            report.compress_format = Some((change.extension.name.clone(), change.extension.level));
        }
        if self.target_version < self.version {
            downgrade(storage, &mut report)?;
            report.downgraded = true;
        }
        Ok(report)
    }
}

/// Rewrites a version 2 header as version 3 with no feature bits, 16-bit
/// refcounts and zlib compression, keeping the extensions and backing name.
fn upgrade(storage: &dyn Storage) -> Result<()> {
    let mut area = read_area(storage)?;
    let old_len = area_len_on_disk(&area);
    let h = &mut area.header;
    h.version = 3;
    h.incompatible_features = 0;
    h.compatible_features = 0;
    h.autoclear_features = 0;
    h.refcount_order = 4;
    h.header_length = V3_HEADER_LEN;
    h.compression_type = 0;
    h.tail = vec![0; (V3_HEADER_LEN - COMPRESSION_TYPE_OFFSET - 1) as usize];
    write_area(storage, &mut area, old_len)
}

/// Sets or clears the lazy refcounts bit (the image is clean by now).
fn set_lazy(storage: &dyn Storage, lazy: bool) -> Result<()> {
    let mut area = read_area(storage)?;
    let old_len = area_len_on_disk(&area);
    let h = &mut area.header;
    if lazy {
        h.compatible_features |= feat::COMPAT_LAZY_REFCOUNTS;
    } else {
        h.compatible_features &= !feat::COMPAT_LAZY_REFCOUNTS;
    }
    // Auto-clear bits this crate does not know must be cleared by a writer.
    h.autoclear_features &= feat::AUTOCLEAR_KNOWN;
    write_area(storage, &mut area, old_len)
}

/// Zero and compressed entries found in some L2 tables.
#[derive(Debug, Default)]
struct L2Scan {
    zero: u64,
    compressed: u64,
}

/// Counts the zero and compressed entries of the standard L2 tables the
/// L1 table at `l1_offset` (`l1_size` entries) reaches; `seen` skips
/// tables already counted.
fn scan_l1(
    storage: &dyn Storage,
    ctx: &L2Context,
    l1_offset: u64,
    l1_size: u32,
    seen: &mut HashSet<u64>,
) -> Result<L2Scan> {
    let geo = ctx.geometry;
    let mut l1 = vec![0u8; l1_size as usize * 8];
    storage
        .read_at(&mut l1, l1_offset)
        .map_err(|e| ImageError::io("reading an L1 table", l1_offset, e))?;
    let cs = geo.cluster_size();
    let mut scan = L2Scan::default();
    let mut table = vec![0u8; cs as usize];
    for (i, raw) in l1.chunks_exact(8).enumerate() {
        let raw = u64::from_be_bytes(raw.try_into().unwrap_or_default());
        let at = l1_offset + i as u64 * 8;
        let Some(l2) = L1Entry::decode(raw, geo, at)?.l2_table else {
            continue;
        };
        if !seen.insert(l2.get()) {
            continue;
        }
        storage
            .read_at(&mut table, l2.get())
            .map_err(|e| ImageError::io("reading an L2 table", l2.get(), e))?;
        for (k, entry) in table.chunks_exact(L2_ENTRY_SIZE).enumerate() {
            let entry = u64::from_be_bytes(entry.try_into().unwrap_or_default());
            let entry_at = l2.get() + (k * L2_ENTRY_SIZE) as u64;
            match L2Mapping::decode(entry, ctx, entry_at)? {
                L2Mapping::Zero { .. } => scan.zero += 1,
                L2Mapping::Compressed(_) => scan.compressed += 1,
                _ => {}
            }
        }
    }
    Ok(scan)
}

/// Refuses a downgrade of `area`'s image when version 2 cannot express
/// what it uses.
fn check_downgrade(storage: &dyn Storage, area: &HeaderArea) -> Result<()> {
    let h = &area.header;
    let droppable = feat::INCOMPAT_DIRTY | feat::INCOMPAT_COMPRESSION_TYPE;
    let blocking = h.incompatible_features & !droppable;
    if blocking != 0 {
        let names: Vec<String> = (0..64)
            .filter(|bit| blocking & (1u64 << bit) != 0)
            .map(|bit| area.feature_name(FeatureKind::Incompatible, bit))
            .collect();
        return Err(cannot_downgrade(format_args!(
            "incompatible features {blocking:#x} set ({})",
            names.join(", ")
        )));
    }
    if h.autoclear_features & feat::AUTOCLEAR_BITMAPS != 0
        || area
            .chain
            .extensions
            .iter()
            .any(|e| matches!(e, Extension::Bitmaps(_)))
    {
        return Err(cannot_downgrade("persistent bitmaps"));
    }
    for ext in &area.chain.extensions {
        match ext {
            Extension::CompressFormat(_) => {
                return Err(cannot_downgrade("a compress format extension"))
            }
            Extension::Dedup(_) => return Err(cannot_downgrade("a dedup extension")),
            _ => {}
        }
    }
    let geo: ClusterGeometry = h.geometry()?;
    let ctx = L2Context {
        geometry: geo,
        version: h.version,
        external_data_file: false,
    };
    let mut seen = HashSet::new();
    let active = scan_l1(storage, &ctx, h.l1_table_offset.get(), h.l1_size, &mut seen)?;
    let mut compressed = active.compressed;
    if h.nb_snapshots > 0 {
        let snapshots = crate::snapshot_table::read(storage, h)?;
        // Tables shared with the active L1 were counted there: count the
        // snapshot-only ones on a fresh set, so sharing does not hide them.
        let mut snap_seen = HashSet::new();
        for snap in &snapshots {
            let scan = scan_l1(
                storage,
                &ctx,
                snap.l1_table_offset.get(),
                snap.l1_size,
                &mut snap_seen,
            )?;
            if scan.zero > 0 {
                return Err(cannot_downgrade(format_args!(
                    "zero clusters in snapshot '{}'",
                    String::from_utf8_lossy(&snap.name)
                )));
            }
            compressed += scan.compressed;
        }
    }
    if h.compression_type != 0 && compressed > 0 {
        let name = h.compression().map_or_else(
            || format!("type {}", h.compression_type),
            |c| c.name().into(),
        );
        return Err(cannot_downgrade(format_args!(
            "{name} compression and {compressed} compressed clusters"
        )));
    }
    Ok(())
}

/// Expands the zero clusters of the active L1 table, then writes the
/// version 2 header.
fn downgrade(storage: Arc<dyn Storage>, report: &mut AmendReport) -> Result<()> {
    let area = read_area(&*storage)?;
    let has_backing = area.backing_file.is_some();
    let image = Image::open(
        storage.clone(),
        OpenOptions {
            writable: true,
            backing: BackingMode::Ignore,
        },
    )?;
    expand_zero_clusters(&image, has_backing, report)?;
    image.close()?;

    let mut area = read_area(&*storage)?;
    let old_len = area_len_on_disk(&area);
    area.chain
        .extensions
        .retain(|e| !matches!(e, Extension::FeatureTable(_)));
    let h = &mut area.header;
    h.version = 2;
    h.incompatible_features = 0;
    h.compatible_features = 0;
    h.autoclear_features = 0;
    h.refcount_order = 4;
    h.header_length = V2_HEADER_LEN;
    h.compression_type = 0;
    h.tail.clear();
    write_area(&*storage, &mut area, old_len)
}

/// Replaces every zero cluster of the active L1 table: unallocated when
/// there is no backing file (zeros show through), otherwise an allocated
/// cluster holding zeros (a preallocated one is reused when private).
fn expand_zero_clusters(image: &Image, has_backing: bool, report: &mut AmendReport) -> Result<()> {
    let cs = image.cluster_size();
    let size = image.size();
    let per = image.layout.l2_entries();
    let l1_len = image.lock_meta().l1.len() as u64;
    let zeros = vec![0u8; cs as usize];
    for l1_index in 0..l1_len {
        if image.lock_meta().l1[l1_index as usize] == 0 {
            continue;
        }
        for l2_index in 0..per {
            let cluster = l1_index * per + l2_index;
            let start = cluster * cs;
            if start >= size {
                break;
            }
            let mapping = {
                let mut meta = image.lock_meta();
                image.guarded(&mut meta, |meta| meta.mapping(&*image.storage, cluster))?
            };
            let len = (size - start).min(cs) as usize;
            match mapping {
                ExtendedL2Mapping::Unallocated { zero } if zero != 0 => {
                    if has_backing {
                        image.write_at(&zeros[..len], start)?;
                        report.zero_clusters_allocated += 1;
                    } else {
                        let mut meta = image.lock_meta();
                        image.guarded(&mut meta, |meta| {
                            meta.set_mapping(
                                &*image.storage,
                                cluster,
                                ExtendedL2Mapping::Unallocated { zero: 0 },
                            )
                        })?;
                        report.zero_clusters_unmapped += 1;
                    }
                }
                ExtendedL2Mapping::Allocated {
                    allocated: 0, zero, ..
                } if zero != 0 => {
                    image.write_at(&zeros[..len], start)?;
                    report.zero_clusters_allocated += 1;
                }
                _ => {}
            }
        }
    }
    image.flush()
}
