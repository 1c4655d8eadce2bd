//! The `Image` type: an open qcow2 image shared between threads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use qcow2_alloc::repair::{repair, RepairMode};
use qcow2_alloc::Refcounts;
use qcow2_codec::{Codec, Registry};
use qcow2_format::features as feat;
use qcow2_format::tables::l1::MAX_L1_ENTRIES;
use qcow2_format::HeaderArea;
use qcow2_io::{FileStorage, Storage};

use crate::backing::{resolve_backing_path, BackingSource, RawBacking};
use crate::error::{ImageError, Result};
use crate::l2_cache::L2Cache;
use crate::layout::Layout;
use crate::meta::{words_from_bytes, Meta};
use crate::metadata_guard::MetadataGuard;
use crate::options::{BackingMode, OpenOptions};
use crate::plan::{self, Readers};

/// Largest backing chain followed, so a loop of backing files ends.
const MAX_CHAIN_DEPTH: u32 = 64;
/// Bytes of L2 tables kept in memory.
const L2_CACHE_BYTES: u64 = 32 << 20;

/// An open qcow2 image.
///
/// `Image` is `Send + Sync`: reads from many threads run at once (the
/// metadata lock is held only to look up mappings, never during data I/O),
/// and so do writes that only replace bytes of allocated private clusters;
/// writes that allocate, copy or free clusters are serialized. Changes reach the file in an order that keeps it
/// consistent after a crash at any point (at worst leaked clusters);
/// [`Image::flush`] makes them durable.
pub struct Image {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) meta: Mutex<Meta>,
    /// Readers and writes that change no metadata share it; every other
    /// write takes it alone, so no reader or shared write meets a cluster
    /// freed and reused under its plan.
    pub(crate) io: RwLock<()>,
    pub(crate) backing: Option<Arc<dyn BackingSource>>,
    pub(crate) codec: Option<Arc<dyn Codec>>,
    pub(crate) writable: bool,
    pub(crate) layout: Layout,
    /// Set by `close`, so dropping does not flush a second time.
    pub(crate) closed: AtomicBool,
    /// Writes are deduplicated (mirrors `meta.dedup.is_some()`, readable
    /// without the lock).
    pub(crate) dedup_on: AtomicBool,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("size", &self.size())
            .field("writable", &self.writable)
            .field("backing", &self.backing)
            .finish()
    }
}

/// The highest level of the built-in codec called `name` (`None` when no
/// codec has that name): the look-up [`Image::open`] hands to
/// `HeaderArea::assess`, for tools that judge a header the same way.
pub fn codec_max_level(name: &str) -> Option<u8> {
    Registry::builtin()
        .info(name)
        .ok()
        .map(|i| i.levels().max())
}

impl Image {
    /// Opens the image file at `path`, following its backing chain.
    pub fn open_path(path: &Path, writable: bool) -> Result<Self> {
        let storage = FileStorage::open(path, writable)
            .map_err(|e| ImageError::io("opening the image file", 0, e))?;
        let options = OpenOptions {
            writable,
            backing: BackingMode::Follow(path.to_path_buf()),
        };
        Self::open(Arc::new(storage), options)
    }

    /// Opens an image on `storage`.
    ///
    /// Refuses images that are not qcow2, use features this engine does not
    /// implement (named in the error), or may only be opened read-only
    /// (corrupt bit, unusable compress level) when `writable` is asked.
    pub fn open(storage: Arc<dyn Storage>, options: OpenOptions) -> Result<Self> {
        Self::open_at_depth(storage, options, 0)
    }

    fn open_at_depth(storage: Arc<dyn Storage>, options: OpenOptions, depth: u32) -> Result<Self> {
        Self::open_inner(storage, options, depth, false)
    }

    fn open_inner(
        storage: Arc<dyn Storage>,
        options: OpenOptions,
        depth: u32,
        repaired: bool,
    ) -> Result<Self> {
        let mut area = read_area(&*storage)?;
        let geometry = area.header.geometry()?;
        let assessment = area.assess(Some(&codec_max_level))?;
        let features = assessment.features;
        let h = &area.header;
        if h.crypt_method != 0 {
            return Err(unsupported(
                "encrypted images (ENC-PAYLOAD: this build does not decrypt guest data)",
            ));
        }
        if features.external_data_file() {
            return Err(unsupported("external data files"));
        }
        if options.writable {
            if let Some(rule) = assessment.read_only {
                return Err(ImageError::ReadOnly {
                    reason: Some(rule.as_str()),
                });
            }
            if features.dirty {
                // Refcounts of a dirty image (lazy refcounts) may be stale:
                // rebuild them as QEMU does, then open the repaired image.
                if repaired {
                    return Err(ImageError::Corrupt {
                        rule: Some(qcow2_format::rules::FEAT_DIRTY),
                        offset: 72,
                        reason: "the dirty bit survived a refcount repair".into(),
                    });
                }
                let report = repair(&*storage, RepairMode::All, &[])?;
                let left = report.final_report();
                if left.corruptions > 0 {
                    return Err(ImageError::Corrupt {
                        rule: Some(qcow2_format::rules::RC_MATCH),
                        offset: 0,
                        reason: format!(
                            "{} corruptions remain after repairing the dirty image",
                            left.corruptions
                        ),
                    });
                }
                return Self::open_inner(storage, options, depth, true);
            }
            // Bit 0 without the extension names no bitmaps (BMP-BIT-NO-EXT):
            // it is cleared on the first write like any autoclear bit.
            let has_bitmaps = area.chain.find(qcow2_format::extensions::BITMAPS).is_some();
            if features.bitmaps_consistent && has_bitmaps {
                // Writing without updating them would leave bitmaps that
                // claim to be consistent but miss our writes; clearing the
                // bit instead makes QEMU treat their clusters as leaks.
                return Err(unsupported(
                    "writing an image with persistent dirty bitmaps (remove them with \
                     `qemu-img bitmap --remove`, or open read-only)",
                ));
            }
            if features.dedup() && features.extended_l2 {
                return Err(unsupported(
                    "writing a deduplicated image with extended L2 entries",
                ));
            }
            if h.nb_snapshots > 0 && area.dedup().is_some() {
                return Err(unsupported("writing a dedup image with snapshots"));
            }
        }
        let layout = Layout::new(geometry, h.version, features.extended_l2);
        if u64::from(h.l1_size) > MAX_L1_ENTRIES {
            return Err(ImageError::Corrupt {
                rule: Some(qcow2_format::rules::HDR_L1_SIZE),
                offset: 36,
                reason: format!("l1_size {} is too large", h.l1_size),
            });
        }
        let mut l1_bytes = vec![0u8; h.l1_size as usize * 8];
        storage
            .read_at(&mut l1_bytes, h.l1_table_offset.get())
            .map_err(|e| ImageError::io("reading the L1 table", h.l1_table_offset.get(), e))?;
        let l1 = words_from_bytes(&l1_bytes);
        let refcounts = match Refcounts::load(&*storage, h) {
            Ok(r) => r,
            Err(e) if options.writable => return Err(e.into()),
            // Reads never need refcounts: a damaged table must not hide data.
            Err(_) => Refcounts::detached(geometry, h.refcount_order),
        };
        let registry = Registry::builtin();
        let codec = match area.compress_format() {
            // A level this build cannot use still decodes (CF-LEVEL: such
            // images open read-only).
            Some(cf) => registry
                .by_name(&cf.name, cf.level)
                .or_else(|_| registry.by_name(&cf.name, 0))
                .ok(),
            None => qemu_codec(&registry, h.compression_type),
        };
        let backing = open_backing(&area, &options.backing, depth)?;
        let header_len = area.to_bytes().map(|b| b.len()).unwrap_or(0);
        let table_bytes = geometry.bytes_per_l2_table(features.extended_l2);
        let mut meta = Meta {
            area,
            layout,
            l1,
            l1_dirty: None,
            l2: L2Cache::new(L2_CACHE_BYTES, table_bytes),
            refcounts,
            header_dirty: false,
            header_len,
            poisoned: false,
            compressed_cursor: None,
            dedup: None,
            cow_results: Vec::new(),
            dedup_overwrite: Default::default(),
            guard: Default::default(),
            file_end: storage
                .len()
                .map_err(|e| ImageError::io("reading the file length", 0, e))?,
        };
        if options.writable {
            meta.guard = MetadataGuard::new(&*storage, &meta.area, &meta.l1)?;
        }
        let dedup_on = options.writable && features.dedup();
        if dedup_on {
            meta.dedup = Some(crate::dedup_write::load_state(&*storage, &meta)?);
        }
        if options.writable && meta.area.header.autoclear_features != 0 {
            // We do not maintain bitmaps or anything else an autoclear bit
            // guards; clearing the bits tells other tools so.
            meta.area.header.autoclear_features = 0;
            meta.write_header(&*storage)?;
            crate::meta::sync(&*storage)?;
        }
        let image = Self {
            storage: storage.clone(),
            meta: Mutex::new(meta),
            io: RwLock::new(()),
            backing,
            codec,
            writable: options.writable,
            layout,
            closed: AtomicBool::new(false),
            dedup_on: AtomicBool::new(dedup_on),
        };
        if options.writable && features.dedup_stale && !repaired {
            // DD-STALE: a table nobody kept up to date is never used for
            // writing. Index the data afresh, reclaim the old table's
            // clusters (leaks now), and open the rebuilt image.
            image.enable_dedup(false, &mut |_, _| {})?;
            image.close()?;
            let hook = crate::dedup_write::DedupTableReferences;
            repair(&*storage, RepairMode::Leaks, &[&hook])?;
            return Self::open_inner(storage, options, depth, true);
        }
        Ok(image)
    }

    pub(crate) fn lock_meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| {
            // A panic mid-update may have left memory ahead of the file.
            let mut meta = e.into_inner();
            meta.poisoned = true;
            meta
        })
    }

    /// Virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.lock_meta().size()
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.layout.cluster_size()
    }

    /// Whether the image uses extended L2 entries (subclusters).
    pub fn extended_l2(&self) -> bool {
        self.layout.extended
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The header area as it is now (header, extensions, backing name).
    pub fn header_area(&self) -> HeaderArea {
        self.lock_meta().area.clone()
    }

    /// The backing image, if one was opened.
    pub fn backing(&self) -> Option<&Arc<dyn BackingSource>> {
        self.backing.as_ref()
    }

    /// The storage the image lives on.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub(crate) fn readers(&self) -> Readers<'_> {
        Readers {
            storage: &*self.storage,
            backing: self.backing.as_ref(),
            codec: self.codec.as_ref(),
            cluster_size: self.layout.cluster_size(),
        }
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64, size: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ImageError::OutOfBounds { offset, len, size }),
        }
    }

    /// Reads `buf.len()` bytes at guest `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let _shared = self.io.read().unwrap_or_else(PoisonError::into_inner);
        let pieces = {
            let mut meta = self.lock_meta();
            self.check_range(offset, buf.len() as u64, meta.size())?;
            plan::plan(&mut meta, &*self.storage, offset, buf.len() as u64)?
        };
        plan::execute(&pieces, buf, &self.readers())
    }

    /// Makes every change durable, in the order that keeps the file
    /// consistent.
    pub fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let _exclusive = self.io.write().unwrap_or_else(PoisonError::into_inner);
        let mut meta = self.lock_meta();
        self.guarded(&mut meta, |meta| meta.flush(&*self.storage))
    }

    /// Flushes and closes the image, reporting any error the flush meets.
    pub fn close(self) -> Result<()> {
        self.closed.store(true, Ordering::Relaxed);
        self.flush()
    }

    /// Runs a metadata change; a failure poisons the image so that no later
    /// write builds on state the file may not have.
    pub(crate) fn guarded<T>(
        &self,
        meta: &mut Meta,
        op: impl FnOnce(&mut Meta) -> Result<T>,
    ) -> Result<T> {
        if meta.poisoned {
            return Err(ImageError::Poisoned);
        }
        let result = op(meta);
        if let Err(e) = &result {
            // What a failed operation copied is not settled later: its
            // buffers may be stale by then.
            meta.cow_results.clear();
            let harmless = matches!(
                e,
                ImageError::OutOfBounds { .. } | ImageError::InvalidArgument { .. }
            ) || e.is_read_failure();
            if !harmless {
                meta.poisoned = true;
            }
            let overlap = matches!(
                e,
                ImageError::Corrupt { rule: Some(r), .. } if *r == qcow2_format::rules::RC_OVERLAP
            );
            if overlap && self.writable {
                // Best effort: the refusal itself is what the caller sees.
                let _ = meta.mark_corrupt(&*self.storage);
            }
        }
        result
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(ImageError::ReadOnly { reason: None })
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // Best effort: callers that care about errors use `close`.
        if self.writable && !self.closed.load(Ordering::Relaxed) {
            let _ = self.flush();
        }
    }
}

impl BackingSource for Image {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let size = self.size();
        let avail = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(avail);
        if !head.is_empty() {
            Image::read_at(self, head, offset)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn size(&self) -> u64 {
        Image::size(self)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<crate::status::Extent>> {
        let inside = Image::size(self).saturating_sub(offset).min(len);
        Image::block_status(self, offset, inside)
    }
}

/// Reads and parses the header area of the image on `storage`: the first cluster (or the whole file
/// when shorter), parsed once the header says how long a cluster is.
pub fn read_area(storage: &dyn Storage) -> Result<HeaderArea> {
    let file_len = storage
        .len()
        .map_err(|e| ImageError::io("reading the file length", 0, e))?;
    // Never padded: a file shorter than its header is refused (HDR-LENGTH),
    // not read as if zeros followed it.
    let mut first = vec![0u8; file_len.min(2 << 20) as usize];
    storage
        .read_at(&mut first, 0)
        .map_err(|e| ImageError::io("reading the header", 0, e))?;
    let header = qcow2_format::Header::parse(&first)?;
    first.truncate(header.geometry()?.cluster_size() as usize);
    Ok(HeaderArea::parse(&first)?)
}

fn unsupported(what: &str) -> ImageError {
    ImageError::Unsupported { what: what.into() }
}

/// Opens the backing file `area` names, as `mode` says.
fn open_backing(
    area: &HeaderArea,
    mode: &BackingMode,
    depth: u32,
) -> Result<Option<Arc<dyn BackingSource>>> {
    let image_path = match mode {
        BackingMode::Ignore => return Ok(None),
        BackingMode::Provided(source) => return Ok(Some(source.clone())),
        BackingMode::Follow(path) => path,
    };
    let Some(raw_name) = &area.backing_file else {
        return Ok(None);
    };
    let name = String::from_utf8_lossy(raw_name).into_owned();
    let backing_error = |reason: String| ImageError::Backing {
        name: name.clone(),
        reason,
    };
    if depth >= MAX_CHAIN_DEPTH {
        return Err(backing_error(format!(
            "backing chain deeper than {MAX_CHAIN_DEPTH} (a loop?)"
        )));
    }
    let path = resolve_backing_path(image_path, &name);
    let storage: Arc<dyn Storage> =
        Arc::new(FileStorage::open(&path, false).map_err(|e| backing_error(e.to_string()))?);
    let format = match area.backing_format() {
        Some(f) => f.to_string(),
        None => {
            let mut magic = [0u8; 4];
            storage
                .read_at(&mut magic, 0)
                .map_err(|e| backing_error(e.to_string()))?;
            if &magic == b"QFI\xfb" { "qcow2" } else { "raw" }.to_string()
        }
    };
    let source: Arc<dyn BackingSource> = match format.as_str() {
        "qcow2" => Arc::new(
            Image::open_at_depth(
                storage,
                OpenOptions {
                    writable: false,
                    backing: BackingMode::Follow(path.clone()),
                },
                depth + 1,
            )
            .map_err(|e| backing_error(e.to_string()))?,
        ),
        "raw" | "file" => Arc::new(RawBacking::new(storage)?),
        other => {
            return Err(backing_error(format!(
                "unsupported backing format {other:?}"
            )))
        }
    };
    Ok(Some(source))
}

/// Rejects virtual sizes whose L1 table would exceed what QEMU accepts.
pub(crate) fn check_l1_fits(layout: &Layout, size: u64) -> Result<u64> {
    let entries = layout.geometry.l1_entries_for(size, layout.extended);
    if entries > MAX_L1_ENTRIES {
        return Err(ImageError::InvalidArgument {
            what: "size",
            reason: format!(
                "{size} bytes needs an L1 table of {entries} entries (max {MAX_L1_ENTRIES})"
            ),
        });
    }
    Ok(entries)
}

/// Feature bits of a header this engine would write.
/// The codec of a QEMU compression type, at the level QEMU compresses
/// with (zlib's default 6, zstd's default 3), so that what we write is the
/// size QEMU's own output would be.
fn qemu_codec(registry: &Registry, compression_type: u8) -> Option<Arc<dyn Codec>> {
    let info = registry
        .iter()
        .find(|c| c.qemu_type() == Some(compression_type))?;
    let level = match info.name() {
        "zlib" => 6,
        "zstd" => 3,
        _ => 0,
    };
    info.build(level).ok()
}

pub(crate) fn incompatible_bits(extended_l2: bool, compression_type: u8) -> u64 {
    let mut bits = 0;
    if extended_l2 {
        bits |= feat::INCOMPAT_EXTENDED_L2;
    }
    if compression_type != 0 {
        bits |= feat::INCOMPAT_COMPRESSION_TYPE;
    }
    bits
}
