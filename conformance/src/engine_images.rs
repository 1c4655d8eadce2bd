//! Positive cases written by our own writer: images created in memory with
//! `qcow2-image` across cluster sizes, refcount widths, versions, extended
//! L2 and compress formats, then changed by data writes, compressed writes,
//! zero writes, discards and a resize.
//!
//! The compress format images (the seed extension, every codec at default
//! and explicit levels) and the deduplicated images (guest writes that
//! share, overwrite and discard clusters; a compressed convert) are also
//! pinned in `conformance/golden/writer/`: their structure, not their bytes
//! (see [`crate::writer_structure`]); `cargo xtask golden --writer` rewrites
//! the pins and a test checks they are current.
//!
//! Every rule that applies to them must hold; an image here that breaks a
//! rule is a writer bug, and the suite reports it with the image's name,
//! which spells out the configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qcow2_image::{BackingMode, ConvertOptions, CreateOptions, Image, Preallocation, RawBacking};
use qcow2_io::{MemoryStorage, Storage};

use crate::corpus::{Origin, TestImage};
use crate::seed_images::COMPRESS_FORMATS;

/// One writer configuration of the matrix.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Image version, 2 or 3.
    pub version: u32,
    /// Refcount width in bits.
    pub refcount_bits: u32,
    /// Extended L2 entries.
    pub extended_l2: bool,
    /// QEMU compression type (0 zlib, 1 zstd).
    pub compression_type: u8,
    /// Lazy refcounts (the image is closed cleanly, so the dirty bit must be clear).
    pub lazy_refcounts: bool,
    /// Metadata preallocation.
    pub preallocation: Preallocation,
    /// Seed compress format: codec name and level byte.
    pub compress_format: Option<(&'static str, u8)>,
}

impl WriterConfig {
    const fn new(cluster_size: u64, version: u32, refcount_bits: u32) -> Self {
        Self {
            cluster_size,
            version,
            refcount_bits,
            extended_l2: false,
            compression_type: 0,
            lazy_refcounts: false,
            preallocation: Preallocation::Off,
            compress_format: None,
        }
    }

    const fn extended(mut self) -> Self {
        self.extended_l2 = true;
        self
    }

    /// The image name: `engine-` followed by every setting that differs from the defaults.
    pub fn name(&self) -> String {
        let cs = match self.cluster_size {
            n if n >= 1 << 20 => format!("{}m", n >> 20),
            n if n >= 1 << 10 => format!("{}k", n >> 10),
            n => n.to_string(),
        };
        let mut name = format!("engine-c{cs}-v{}-rb{}", self.version, self.refcount_bits);
        if self.extended_l2 {
            name.push_str("-extl2");
        }
        if self.compression_type == 1 {
            name.push_str("-zstd");
        }
        if self.lazy_refcounts {
            name.push_str("-lazy");
        }
        if self.preallocation == Preallocation::Metadata {
            name.push_str("-prealloc");
        }
        match self.compress_format {
            Some((codec, 0)) => name.push_str(&format!("-cf-{codec}-default")),
            Some((codec, level)) => name.push_str(&format!("-cf-{codec}-{level}")),
            None => {}
        }
        name
    }

    /// The virtual size the workload starts from: 4 MiB, or 8 clusters when larger.
    pub fn size(&self) -> u64 {
        (4 << 20).max(8 * self.cluster_size)
    }
}

/// The matrix: every cluster size class, refcount widths 1/16/64, both
/// versions, extended L2 at its smallest and largest cluster sizes.
pub fn configs() -> Vec<WriterConfig> {
    let mut lazy = WriterConfig::new(65536, 3, 16);
    lazy.lazy_refcounts = true;
    let mut zstd = WriterConfig::new(65536, 3, 16);
    zstd.compression_type = 1;
    let mut prealloc = WriterConfig::new(4096, 3, 16);
    prealloc.preallocation = Preallocation::Metadata;
    vec![
        WriterConfig::new(512, 3, 16),
        WriterConfig::new(512, 2, 16),
        WriterConfig::new(512, 3, 1),
        WriterConfig::new(4096, 3, 1),
        WriterConfig::new(4096, 3, 64),
        WriterConfig::new(65536, 3, 16),
        WriterConfig::new(65536, 2, 16),
        WriterConfig::new(65536, 3, 1).extended(),
        WriterConfig::new(16384, 3, 64).extended(),
        WriterConfig::new(2 << 20, 3, 16),
        WriterConfig::new(2 << 20, 3, 64).extended(),
        lazy,
        zstd,
        prealloc,
    ]
    .into_iter()
    .chain(compress_format_configs())
    .collect()
}

/// The seed compress format images: every codec, default and explicit
/// levels, on 64 KiB clusters.
pub fn compress_format_configs() -> Vec<WriterConfig> {
    COMPRESS_FORMATS
        .iter()
        .map(|&(codec, level)| {
            let mut cfg = WriterConfig::new(65536, 3, 16);
            cfg.compress_format = Some((codec, level));
            cfg
        })
        .collect()
}

/// Where the writer's compress format images are kept.
pub fn golden_writer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join("writer")
}

/// The images kept in `conformance/golden/writer/`: the compress format
/// images and the deduplicated ones, as (file name, bytes).
pub fn golden_images() -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for cfg in compress_format_configs() {
        out.push((format!("{}.qcow2", cfg.name()), build(&cfg)?));
    }
    for (name, build) in dedup_images() {
        out.push((format!("{name}.qcow2"), build()?));
    }
    Ok(out)
}

/// Writes the pinned structure of each writer golden image into `dir` as
/// `NAME.json` (see [`crate::writer_structure`]), replacing what was there;
/// returns how many.
pub fn write_golden(dir: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path
            .extension()
            .is_some_and(|e| e == "qcow2" || e == "json")
        {
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let images = golden_images()?;
    for (file, bytes) in &images {
        let path = dir.join(structure_file(file));
        let text = crate::writer_structure::structure(bytes).map_err(|e| format!("{file}: {e}"))?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(images.len())
}

/// `NAME.json` for the image file `NAME.qcow2`.
fn structure_file(image_file: &str) -> String {
    format!("{}.json", image_file.trim_end_matches(".qcow2"))
}

/// Names of the images whose structure differs from the one pinned in
/// `dir`, or whose pin is missing.
pub fn stale_golden(dir: &Path) -> Result<Vec<String>, String> {
    let mut stale = Vec::new();
    for (file, bytes) in golden_images()? {
        let current =
            crate::writer_structure::structure(&bytes).map_err(|e| format!("{file}: {e}"))?;
        let pinned = std::fs::read_to_string(dir.join(structure_file(&file))).ok();
        if pinned.as_deref() != Some(current.as_str()) {
            stale.push(file);
        }
    }
    Ok(stale)
}

/// Deterministic, non-zero guest data.
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Creates the image of `cfg` in memory, runs the workload and returns the file.
pub fn build(cfg: &WriterConfig) -> Result<Vec<u8>, String> {
    let storage = Arc::new(MemoryStorage::new());
    let mut options = CreateOptions::new(cfg.size());
    options.cluster_size = cfg.cluster_size;
    options.version = cfg.version;
    options.refcount_bits = cfg.refcount_bits;
    options.extended_l2 = cfg.extended_l2;
    options.compression_type = cfg.compression_type;
    options.lazy_refcounts = cfg.lazy_refcounts;
    options.preallocation = cfg.preallocation;
    options.compress_format = cfg.compress_format.map(|(c, l)| (c.to_string(), l));
    let step = |what: &str, r: qcow2_image::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let image = Image::create(dyn_storage, &options, BackingMode::Ignore)
        .map_err(|e| format!("create: {e}"))?;
    let cs = cfg.cluster_size;
    let size = cfg.size();
    // Data across a cluster boundary, then a partial cluster in the middle.
    step("write at 0", image.write_at(&pattern(cs + 1000, 1), 0))?;
    step(
        "partial write",
        image.write_at(&pattern(3000, 2), size / 2 + 512),
    )?;
    // Two clusters of data, one zeroed in place and one zeroed with unmap.
    step(
        "write at 4 clusters",
        image.write_at(&pattern(2 * cs, 3), 4 * cs),
    )?;
    step("zero keep", image.write_zeroes(4 * cs, cs, false))?;
    step("zero unmap", image.write_zeroes(5 * cs, cs, true))?;
    step("discard", image.discard(cs, cs))?;
    // Two compressed clusters (packed into one host cluster), one of them
    // then partly overwritten (copied out of its compressed form).
    step(
        "compressed write",
        image.write_compressed(&pattern(cs, 6), 2 * cs),
    )?;
    step(
        "compressed write",
        image.write_compressed(&pattern(cs, 7), 3 * cs),
    )?;
    step(
        "compressed write",
        image.write_compressed(&pattern(cs, 8), 6 * cs),
    )?;
    step(
        "overwrite compressed",
        image.write_at(&pattern(100, 9), 3 * cs + 10),
    )?;
    step("small zero", image.write_zeroes(size / 2 + 100, 700, false))?;
    // Growing may move the L1 table; then write into the new space.
    step("resize", image.resize(2 * size))?;
    step(
        "write after resize",
        image.write_at(&pattern(4096, 4), size + size / 2),
    )?;
    step("rewrite", image.write_at(&pattern(512, 5), 512))?;
    step("close", image.close())?;
    Ok(storage.to_vec())
}

/// Name of the deduplicated image made by guest writes ([`build_dedup_writes`]).
pub const DEDUP_WRITES: &str = "engine-dedup-c64k-writes";
/// Name of the deduplicated image made by a compressed convert ([`build_dedup_convert`]).
pub const DEDUP_CONVERT: &str = "engine-dedup-c64k-convert-compressed";

/// Deterministic incompressible guest data (an xorshift stream).
fn noise(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A deduplicated image (64 KiB clusters, 1.5 GiB so that the L1 table has
/// three entries) changed by guest writes: the same cluster written at
/// several guest offsets (separately and inside one write), so that they
/// share one host cluster, then a shared cluster and an unshared one
/// overwritten, a partial write into a shared cluster, a discard, a zero
/// write over a shared cluster and a duplicate in the second L2 table.
pub fn build_dedup_writes() -> Result<Vec<u8>, String> {
    const CS: u64 = 65536;
    let storage = Arc::new(MemoryStorage::new());
    let options = CreateOptions {
        dedup: true,
        ..CreateOptions::new(3 << 29)
    };
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let image = Image::create(dyn_storage, &options, BackingMode::Ignore)
        .map_err(|e| format!("create: {e}"))?;
    let step = |what: &str, r: qcow2_image::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let a = noise(CS, 1);
    let b = noise(CS, 2);
    let c = noise(CS, 3);
    for k in 0..3 {
        step("write A", image.write_at(&a, k * CS))?;
    }
    let mut bca = b.clone();
    bca.extend_from_slice(&c);
    bca.extend_from_slice(&a);
    step("write B, C, A", image.write_at(&bca, 3 * CS))?;
    step(
        "write A, A",
        image.write_at(&[&a[..], &a[..]].concat(), 6 * CS),
    )?;
    step("overwrite shared", image.write_at(&noise(CS, 4), CS))?;
    step("overwrite unshared", image.write_at(&noise(CS, 5), 3 * CS))?;
    step(
        "partial write into shared",
        image.write_at(&noise(100, 6), 2 * CS + 10),
    )?;
    step("discard unshared", image.discard(4 * CS, CS))?;
    step("zero shared", image.write_zeroes(6 * CS, CS, false))?;
    step(
        "write A in the second L2 table",
        image.write_at(&a, (1 << 29) + 3 * CS),
    )?;
    step("write C again", image.write_at(&c, 9 * CS))?;
    step("close", image.close())?;
    Ok(storage.to_vec())
}

/// A deduplicated image written by a compressed convert (one thread) of a
/// raw disk with repeated incompressible clusters, repeated compressible
/// clusters and zero clusters.
pub fn build_dedup_convert() -> Result<Vec<u8>, String> {
    const CS: u64 = 65536;
    let n1 = noise(CS, 11);
    let n2 = noise(CS, 12);
    let p = pattern(CS, 13);
    let zero = vec![0u8; CS as usize];
    let q = pattern(CS, 14);
    let disk = [&n1, &n1, &p, &zero, &p, &n2, &zero, &n1, &q, &n2]
        .map(Vec::as_slice)
        .concat();
    let source = RawBacking::new(Arc::new(MemoryStorage::from_bytes(disk.clone())))
        .map_err(|e| format!("source: {e}"))?;
    let storage = Arc::new(MemoryStorage::new());
    let options = CreateOptions {
        dedup: true,
        ..CreateOptions::new(disk.len() as u64)
    };
    let dyn_storage: Arc<dyn Storage> = storage.clone();
    let image = Image::create(dyn_storage, &options, BackingMode::Ignore)
        .map_err(|e| format!("create: {e}"))?;
    let convert = ConvertOptions {
        compress: true,
        threads: Some(1),
    };
    image
        .convert_from(&source, &convert, &mut |_| {})
        .map_err(|e| format!("convert: {e}"))?;
    image.close().map_err(|e| format!("close: {e}"))?;
    Ok(storage.to_vec())
}

/// Makes one image of our writer.
pub type ImageBuilder = fn() -> Result<Vec<u8>, String>;

/// The deduplicated images: name and builder.
pub fn dedup_images() -> [(&'static str, ImageBuilder); 2] {
    [
        (DEDUP_WRITES, build_dedup_writes),
        (DEDUP_CONVERT, build_dedup_convert),
    ]
}

/// Records the writer's lapses in `bytes` (see
/// [`crate::writer_structure::writer_lapses`]) as errors; true if any.
fn lapses(name: &str, bytes: &[u8], errors: &mut Vec<String>) -> bool {
    let found = crate::writer_structure::writer_lapses(bytes);
    errors.extend(found.iter().map(|l| format!("writer image {name}: {l}")));
    !found.is_empty()
}

/// Every image of the matrix, and an error line for each configuration the
/// writer failed on or wrote with a lapse.
pub fn build_all() -> (Vec<TestImage>, Vec<String>) {
    let mut images = Vec::new();
    let mut errors = Vec::new();
    for (name, build) in dedup_images() {
        match build() {
            Ok(bytes) if !lapses(name, &bytes, &mut errors) => images.push(TestImage {
                name: name.to_string(),
                origin: Origin::Writer,
                bytes,
                made_by: format!(
                    "our writer (qcow2-image): {name} workload of conformance/src/engine_images.rs"
                ),
                path: None,
            }),
            Ok(_) => {}
            Err(e) => errors.push(format!("writer failed on {name}: {e}")),
        }
    }
    for cfg in configs() {
        match build(&cfg) {
            Ok(bytes) if !lapses(&cfg.name(), &bytes, &mut errors) => images.push(TestImage {
                name: cfg.name(),
                origin: Origin::Writer,
                bytes,
                made_by: format!("our writer (qcow2-image): engine_images::build({cfg:?})"),
                path: None,
            }),
            Ok(_) => {}
            Err(e) => errors.push(format!("writer failed on {} ({cfg:?}): {e}", cfg.name())),
        }
    }
    (images, errors)
}
