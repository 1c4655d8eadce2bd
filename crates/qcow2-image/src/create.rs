//! Creating new images, laid out as `qemu-img create` lays them out:
//! header, refcount table, one refcount block, L1 table.

use std::path::Path;
use std::sync::Arc;

use qcow2_alloc::Refcounts;
use qcow2_format::extensions::{CompressFormat, Extension, ExtensionChain};
use qcow2_format::features as feat;
use qcow2_format::tables::refcount::RefcountOrder;
use qcow2_format::{ClusterGeometry, Header, HeaderArea};
use qcow2_io::{FileStorage, Storage, WriteKind};

use crate::error::{ImageError, Result};
use crate::image::{check_l1_fits, incompatible_bits, Image};
use crate::layout::Layout;
use crate::meta::sync;
use crate::options::{BackingMode, CreateOptions, OpenOptions, Preallocation};

fn invalid(what: &'static str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidArgument {
        what,
        reason: reason.into(),
    }
}

/// Checks `options` and returns the geometry and refcount order.
fn validate(options: &CreateOptions) -> Result<(ClusterGeometry, RefcountOrder)> {
    let cs = options.cluster_size;
    if !cs.is_power_of_two() {
        return Err(invalid(
            "cluster_size",
            format!("{cs} is not a power of two"),
        ));
    }
    let geometry = ClusterGeometry::new(cs.trailing_zeros())
        .ok_or_else(|| invalid("cluster_size", format!("{cs} is outside 512 B..2 MiB")))?;
    if !matches!(options.version, 2 | 3) {
        return Err(invalid(
            "compat",
            format!("version {} (use 2 or 3)", options.version),
        ));
    }
    let bits = options.refcount_bits;
    if !bits.is_power_of_two() || bits > 64 {
        return Err(invalid(
            "refcount_bits",
            format!("{bits} (use 1, 2, 4, 8, 16, 32 or 64)"),
        ));
    }
    let order = RefcountOrder::new(bits.trailing_zeros()).unwrap_or(RefcountOrder::DEFAULT);
    let v3 = options.version == 3;
    if !v3 && bits != 16 {
        return Err(invalid(
            "refcount_bits",
            "version 2 images only have 16-bit refcounts",
        ));
    }
    if !v3 && (options.lazy_refcounts || options.extended_l2 || options.compression_type != 0) {
        return Err(invalid(
            "compat",
            "lazy_refcounts, extended_l2 and compression_type need version 3",
        ));
    }
    if options.extended_l2 && cs < 16384 {
        return Err(invalid(
            "cluster_size",
            "extended_l2 needs clusters of at least 16 KiB",
        ));
    }
    if options.compression_type > 1 {
        return Err(invalid("compression_type", "use 0 (zlib) or 1 (zstd)"));
    }
    if let Some((name, level)) = &options.compress_format {
        check_compress_format(options, name, *level)?;
    }
    if options.dedup && (!v3 || options.extended_l2) {
        return Err(invalid(
            "dedup",
            "deduplication needs version 3 (compat=1.1) and standard L2 entries",
        ));
    }
    if options.backing_format.is_some() && options.backing_file.is_none() {
        return Err(invalid(
            "backing_fmt",
            "a backing format needs a backing file",
        ));
    }
    if options.backing_file.is_some() && options.preallocation != Preallocation::Off {
        return Err(invalid("preallocation", "not with a backing file"));
    }
    Ok((geometry, order))
}

/// Checks a seed compress format choice: a known codec, a level it has,
/// a version 3 image and no QEMU compression type beside it (CF-CONFLICT).
fn check_compress_format(options: &CreateOptions, name: &str, level: u8) -> Result<()> {
    let registry = qcow2_codec::Registry::builtin();
    let info = registry
        .info(name)
        .map_err(|e| invalid("compress_format", e.to_string()))?;
    let max = info.levels().max();
    if level > max {
        return Err(invalid(
            "compress_level",
            format!("{level} is above {name}'s highest level {max} (0 = default)"),
        ));
    }
    if options.version != 3 {
        return Err(invalid(
            "compat",
            "a compress format needs version 3 (compat=1.1)",
        ));
    }
    if options.compression_type != 0 {
        return Err(invalid(
            "compress_format",
            "give either compression_type or a compress format, not both",
        ));
    }
    Ok(())
}

impl CreateOptions {
    /// Checks the options without creating anything: what
    /// [`Image::create`] would refuse, it refuses here with the same error.
    pub fn validate(&self) -> Result<()> {
        validate(self).map(|_| ())
    }
}

impl Image {
    /// Creates an image file at `path` (failing if it exists) and opens it
    /// read-write, with its backing file if any.
    pub fn create_path(path: &Path, options: &CreateOptions) -> Result<Self> {
        let storage = FileStorage::create(path, false)
            .map_err(|e| ImageError::io("creating the image file", 0, e))?;
        Self::create(
            Arc::new(storage),
            options,
            BackingMode::Follow(path.to_path_buf()),
        )
    }

    /// Formats `storage` (its old contents are discarded) as a new image and
    /// opens it read-write.
    pub fn create(
        storage: Arc<dyn Storage>,
        options: &CreateOptions,
        backing: BackingMode,
    ) -> Result<Self> {
        let (geometry, order) = validate(options)?;
        let size = options.size.div_ceil(512) * 512;
        let layout = Layout::new(geometry, options.version, options.extended_l2);
        let l1_entries = check_l1_fits(&layout, size)?;
        storage
            .set_len(0)
            .map_err(|e| ImageError::io("truncating the image file", 0, e))?;
        let mut refcounts = Refcounts::format(&*storage, geometry, order)?;
        let cs = geometry.cluster_size();
        let l1_clusters = (l1_entries * 8).div_ceil(cs);
        let l1_offset = if l1_clusters > 0 {
            refcounts.allocate(&*storage, l1_clusters)?
        } else {
            // Like QEMU: the offset of an empty L1 table is the next cluster.
            qcow2_format::HostOffset(3 * cs)
        };
        if l1_clusters > 0 {
            storage
                .write_zeroes(l1_offset.get(), l1_clusters * cs, WriteKind::L1)
                .map_err(|e| ImageError::io("writing the L1 table", l1_offset.get(), e))?;
        }
        // Allocating a large L1 table may have grown (moved) the refcount
        // table: the header takes wherever it is now.
        refcounts.flush(&*storage)?;
        let location = refcounts.location();
        let mut header = Header::new(options.version, geometry.cluster_bits(), size);
        header.refcount_order = order.get();
        header.refcount_table_offset = location.offset;
        header.refcount_table_clusters = location.clusters;
        header.l1_table_offset = l1_offset;
        header.l1_size = l1_entries as u32;
        header.incompatible_features =
            incompatible_bits(options.extended_l2, options.compression_type);
        header.compression_type = options.compression_type;
        if options.lazy_refcounts {
            header.compatible_features |= feat::COMPAT_LAZY_REFCOUNTS;
        }
        let mut extensions = Vec::new();
        if let Some((name, level)) = &options.compress_format {
            header.incompatible_features |= feat::INCOMPAT_BIT2;
            extensions.push(Extension::CompressFormat(CompressFormat::new(
                name, *level,
            )?));
        }
        if let Some(format) = &options.backing_format {
            extensions.push(Extension::BackingFormat(format.clone()));
        }
        let mut area = HeaderArea {
            header,
            chain: ExtensionChain {
                extensions,
                end_marker: true,
                findings: Vec::new(),
            },
            backing_file: options.backing_file.as_ref().map(|b| b.as_bytes().to_vec()),
        };
        let bytes = area.to_bytes()?;
        storage
            .write_at(&bytes, 0, WriteKind::Header)
            .map_err(|e| ImageError::io("writing the header", 0, e))?;
        // The refcounts of clusters 0..=2 were set by `format`; make sure the
        // file covers the header cluster even when it is sparse.
        let len = storage
            .len()
            .map_err(|e| ImageError::io("reading the file length", 0, e))?;
        if len < 3 * cs {
            storage
                .set_len(3 * cs)
                .map_err(|e| ImageError::io("extending the image file", 0, e))?;
        }
        sync(&*storage)?;
        // The first table, if replaced, is free now that the header moved.
        refcounts.header_updated();
        if refcounts.has_pending_releases() {
            refcounts.apply_releases(&*storage)?;
            sync(&*storage)?;
        }
        let image = Image::open(
            storage,
            OpenOptions {
                writable: true,
                backing,
            },
        )?;
        if options.preallocation == Preallocation::Metadata {
            image.preallocate_metadata()?;
        }
        if options.dedup {
            image.enable_dedup(false, &mut |_, _| {})?;
        }
        Ok(image)
    }

    /// Maps every guest cluster to a fresh host cluster (data left as the
    /// file's zeros), in large contiguous runs.
    fn preallocate_metadata(&self) -> Result<()> {
        let _exclusive = self
            .io
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut meta = self.lock_meta();
        let cs = self.layout.cluster_size();
        let clusters = meta.size().div_ceil(cs);
        self.guarded(&mut meta, |meta| {
            let mut cluster = 0;
            while cluster < clusters {
                let count = (clusters - cluster).min((64 << 20) / cs).max(1);
                let host = meta.allocate(&*self.storage, count)?;
                for i in 0..count {
                    let mapping = qcow2_format::tables::l2_extended::ExtendedL2Mapping::Allocated {
                        host: qcow2_format::tables::l2::HostCluster {
                            offset: qcow2_format::HostOffset(host.get() + i * cs),
                            copied: true,
                        },
                        allocated: self.layout.all(),
                        zero: 0,
                    };
                    meta.set_mapping(&*self.storage, cluster + i, mapping)?;
                }
                let end = host.get() + count * cs;
                let len = self
                    .storage
                    .len()
                    .map_err(|e| ImageError::io("reading the file length", 0, e))?;
                if len < end {
                    self.storage
                        .set_len(end)
                        .map_err(|e| ImageError::io("extending the image file", end, e))?;
                }
                cluster += count;
            }
            meta.flush(&*self.storage)
        })
    }
}
