//! Images built byte by byte from a golden image until the writer can produce
//! them: the seed extensions, and a snapshot table with a fixed timestamp.

use qcow2_format::extensions::{CompressFormat, Dedup, Extension};
use qcow2_format::features::{INCOMPAT_BIT1, INCOMPAT_BIT2};
use qcow2_format::tables::dedup_table::{self, DedupEntry};
use qcow2_format::{GuestOffset, HeaderArea, HostOffset};
use sha2::{Digest, Sha256};

use crate::corpus::{Origin, TestImage};
use crate::mutate::{adjust_refcount, append_counted, edit_area, get_u64, put_u64};

/// Codec/level pairs of the compress format images: defaults and explicit levels.
pub const COMPRESS_FORMATS: &[(&str, u8)] = &[
    ("zlib", 0),
    ("zlib", 1),
    ("zlib", 9),
    ("zstd", 0),
    ("zstd", 19),
    ("brotli", 0),
    ("brotli", 12),
];

/// The plain image seed images are derived from: version 3, 64 KiB clusters, no backing file,
/// no incompatible bits, no extension but the feature name table.
pub fn plain_base(images: &[TestImage]) -> Result<&TestImage, String> {
    images
        .iter()
        .filter(|i| i.origin == crate::corpus::Origin::Qemu)
        .find(|i| HeaderArea::parse(&i.bytes).is_ok_and(|a| is_plain(&a)))
        .ok_or_else(|| "no plain v3 64 KiB golden image to derive seed images from".to_string())
}

fn is_plain(a: &HeaderArea) -> bool {
    a.header.version == 3
        && a.header.cluster_bits == 16
        && a.header.incompatible_features == 0
        && a.header.size > 0
        && a.backing_file.is_none()
        && a.chain
            .extensions
            .iter()
            .all(|e| matches!(e, Extension::FeatureTable(_)))
}

/// The plain image the dedup seed images are derived from: like
/// [`plain_base`], with at least one uncompressed data cluster to index.
pub fn plain_data_base(images: &[TestImage]) -> Result<&TestImage, String> {
    images
        .iter()
        .filter(|i| i.origin == crate::corpus::Origin::Qemu)
        .find(|i| {
            HeaderArea::parse(&i.bytes).is_ok_and(|a| is_plain(&a))
                && first_data_cluster(&i.bytes).is_ok()
        })
        .ok_or_else(|| {
            "no plain v3 64 KiB golden image with data to derive dedup images from".to_string()
        })
}

/// The first guest cluster of the active tables that maps a whole
/// uncompressed data cluster: (guest offset, host offset). Standard L2
/// entries only.
fn first_data_cluster(bytes: &[u8]) -> Result<(u64, u64), String> {
    use qcow2_format::features::INCOMPAT_EXTENDED_L2;
    use qcow2_format::tables::l1::L1_OFFSET_MASK;
    use qcow2_format::tables::l2::{L2_COMPRESSED, L2_OFFSET_MASK};
    let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let h = &area.header;
    if h.incompatible_features & INCOMPAT_EXTENDED_L2 != 0 {
        return Err("extended L2 entries".into());
    }
    let cs = 1u64 << h.cluster_bits;
    let per = cs / 8;
    for k in 0..u64::from(h.l1_size) {
        let at = (h.l1_table_offset.get() + 8 * k) as usize;
        if at + 8 > bytes.len() {
            break;
        }
        let l2 = get_u64(bytes, at) & L1_OFFSET_MASK;
        if l2 == 0 || l2 + cs > bytes.len() as u64 {
            continue;
        }
        for i in 0..per {
            let e = get_u64(bytes, (l2 + 8 * i) as usize);
            let host = e & L2_OFFSET_MASK;
            if e & L2_COMPRESSED == 0 && e & 1 == 0 && host != 0 && host + cs <= bytes.len() as u64
            {
                return Ok(((k * per + i) * cs, host));
            }
        }
    }
    Err("no uncompressed data cluster".into())
}

/// Name of the compress format image for `name`/`level`.
pub fn compress_format_image_name(name: &str, level: u8) -> String {
    if level == 0 {
        format!("seed-cf-{name}-default")
    } else {
        format!("seed-cf-{name}-{level}")
    }
}

/// Adds the compress format extension for `name`/`level` and sets incompatible bit 2.
pub fn with_compress_format(bytes: &[u8], name: &str, level: u8) -> Result<Vec<u8>, String> {
    let ext = CompressFormat::new(name, level).map_err(|e| e.to_string())?;
    edit_area(bytes, |a| {
        a.header.incompatible_features |= INCOMPAT_BIT2;
        a.chain.extensions.insert(0, Extension::CompressFormat(ext));
    })
}

/// Adds a dedup table (one L1 entry, one L2 dedup cluster) and the dedup extension.
///
/// The L2 cluster holds one entry: the SHA-256 of the image's first
/// uncompressed data cluster, attributed to the guest offset that maps it
/// (a live cluster, as `DD-LIVE` and `DD-DIGEST` require). With `bit1` the
/// image is deduplicated; without it the table is stale.
pub fn with_dedup(bytes: &[u8], bit1: bool) -> Result<Vec<u8>, String> {
    let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let geo = area.header.geometry().map_err(|e| e.to_string())?;
    let cs = geo.cluster_size();
    let mut out = bytes.to_vec();
    let (guest, host) = first_data_cluster(bytes)?;
    let start = host as usize;
    let cluster = out[start..start + cs as usize].to_vec();
    let entry = DedupEntry {
        hash: Sha256::digest(&cluster).into(),
        guest_offset: GuestOffset(guest),
    };
    let last = host / cs;
    let index = dedup_table::DedupIndex::of(qcow2_format::ClusterIndex(last), geo);
    let mut entries = vec![None; (index.l2 + 1) as usize];
    entries[index.l2 as usize] = Some(entry);
    let l2 = dedup_table::encode_l2_cluster(&entries, geo).map_err(|e| e.to_string())?;
    let l2_at = append_counted(&mut out, cs, &l2)?;
    let mut l1 = vec![None; (index.l1 + 1) as usize];
    l1[index.l1 as usize] = Some(HostOffset(l2_at));
    let l1_bytes = dedup_table::encode_l1_table(&l1, geo).map_err(|e| e.to_string())?;
    let l1_at = append_counted(&mut out, cs, &l1_bytes)?;
    let l1_size = u32::try_from(l1.len()).map_err(|e| e.to_string())?;
    edit_area(&out, |a| {
        if bit1 {
            a.header.incompatible_features |= INCOMPAT_BIT1;
        }
        a.chain.extensions.insert(
            0,
            Extension::Dedup(Dedup {
                l1_offset: HostOffset(l1_at),
                l1_size,
            }),
        );
    })
}

/// Adds a snapshot table with one version 3 snapshot of the active image.
///
/// The snapshot gets its own copy of the L1 table and shares the L2 tables
/// and data clusters, whose refcounts go up by one and whose COPIED flags
/// are cleared, as `qemu-img snapshot -c` does (standard L2 entries only).
/// `qemu-img snapshot` stamps the wall clock into the table, so a qemu-made
/// snapshot image would differ on every regeneration; this one is fixed.
pub fn with_snapshot(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use qcow2_format::tables::l1::{L1_COPIED, L1_OFFSET_MASK};
    use qcow2_format::tables::l2::{L2_COMPRESSED, L2_OFFSET_MASK};
    use qcow2_format::tables::snapshot::{self, SnapshotContext, SnapshotEntry};
    let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let geo = area.header.geometry().map_err(|e| e.to_string())?;
    let cs = geo.cluster_size();
    let mut out = bytes.to_vec();
    let l1_at = area.header.l1_table_offset.get() as usize;
    for k in 0..area.header.l1_size as usize {
        let at = l1_at + 8 * k;
        let raw = get_u64(&out, at);
        let l2 = raw & L1_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        put_u64(&mut out, at, raw & !L1_COPIED);
        adjust_refcount(&mut out, l2, 1)?;
        for i in 0..(cs / 8) as usize {
            let e_at = l2 as usize + 8 * i;
            let e = get_u64(&out, e_at);
            if e & L2_COMPRESSED != 0 {
                return Err("the snapshot base has compressed clusters".into());
            }
            if e & L2_OFFSET_MASK != 0 {
                put_u64(&mut out, e_at, e & !L1_COPIED);
                adjust_refcount(&mut out, e & L2_OFFSET_MASK, 1)?;
            }
        }
    }
    let l1_len = area.header.l1_size as usize * 8;
    let l1_copy = out[l1_at..l1_at + l1_len].to_vec();
    let snapshot_l1 = if l1_len == 0 {
        area.header.l1_table_offset
    } else {
        HostOffset(append_counted(&mut out, cs, &l1_copy)?)
    };
    let entry = SnapshotEntry {
        l1_table_offset: snapshot_l1,
        l1_size: area.header.l1_size,
        date_sec: 1_700_000_000,
        date_nsec: 0,
        vm_clock_nsec: 0,
        vm_state_size_32: 0,
        extra_data: SnapshotEntry::standard_extra_data(0, area.header.size, None),
        id: b"1".to_vec(),
        name: b"golden".to_vec(),
    };
    let ctx = SnapshotContext {
        geometry: geo,
        version: area.header.version,
    };
    let table = snapshot::encode_table(&[entry], &ctx).map_err(|e| e.to_string())?;
    let at = append_counted(&mut out, cs, &table)?;
    edit_area(&out, |a| {
        a.header.nb_snapshots = 1;
        a.header.snapshots_offset = HostOffset(at);
    })
}

/// Every seed image, derived from the golden corpus.
pub fn build_all(golden: &[TestImage]) -> Result<Vec<TestImage>, String> {
    let base = plain_base(golden)?;
    let mut out = Vec::new();
    for &(name, level) in COMPRESS_FORMATS {
        out.push(TestImage {
            name: compress_format_image_name(name, level),
            origin: Origin::Built,
            bytes: with_compress_format(&base.bytes, name, level)?,
            made_by: format!(
                "seed_images::with_compress_format({:?}, {name:?}, {level}): golden {} with \
                 the compress format extension and bit 2",
                base.name, base.name
            ),
            path: None,
        });
    }
    let data_base = plain_data_base(golden)?;
    out.push(TestImage {
        name: "seed-dedup".into(),
        origin: Origin::Built,
        bytes: with_dedup(&data_base.bytes, true)?,
        made_by: format!(
            "seed_images::with_dedup: golden {} with a dedup table of its data clusters and bit 1",
            data_base.name
        ),
        path: None,
    });
    out.push(TestImage {
        name: "built-snapshot".into(),
        origin: Origin::Built,
        bytes: with_snapshot(&base.bytes)?,
        made_by: format!(
            "seed_images::with_snapshot: golden {} with one v3 snapshot of its active L1",
            base.name
        ),
        path: None,
    });
    out.push(TestImage {
        name: "built-snapshot-data".into(),
        origin: Origin::Built,
        bytes: with_snapshot(&data_base.bytes)?,
        made_by: format!(
            "seed_images::with_snapshot: golden {} (with data clusters and an L2 table) \
             with one v3 snapshot sharing them",
            data_base.name
        ),
        path: None,
    });
    let cf = with_compress_format(&data_base.bytes, "zstd", 3)?;
    out.push(TestImage {
        name: "seed-dedup-cf-zstd-3".into(),
        origin: Origin::Built,
        bytes: with_dedup(&cf, true)?,
        made_by: format!(
            "seed_images::with_compress_format(zstd, 3) then with_dedup: golden {}",
            data_base.name
        ),
        path: None,
    });
    Ok(out)
}
