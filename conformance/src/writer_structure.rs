//! What the pinned images of our writer must keep: the structure the
//! format fixes, not the bytes an encoder happens to produce. A codec change
//! that keeps every stream valid changes stream lengths and therefore host
//! offsets; it must not force a regeneration, so offsets are left out and
//! the content is pinned through what the guest reads.

use std::sync::Arc;

use qcow2_format::extensions::{self as ext, Extension};
use qcow2_format::HeaderArea;
use qcow2_image::{BackingMode, ExtentKind, Image, OpenOptions};
use qcow2_io::MemoryStorage;
use serde_json::{json, Value};

use crate::corpus::sha256_hex;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The extensions, in order: type, and the data where its layout is fixed
/// by the spec (the dedup extension holds a table offset, which is not).
fn extensions(area: &HeaderArea) -> Vec<Value> {
    area.chain
        .extensions
        .iter()
        .map(|e| match e {
            Extension::Dedup(d) => json!({
                "type": format!("{:#010x}", ext::DEDUP),
                "dedup_table_entries": d.l1_size,
            }),
            other => json!({
                "type": format!("{:#010x}", other.kind()),
                "data": hex(&other.data()),
            }),
        })
        .collect()
}

/// The guest map as runs of one kind: data, compressed, zero, unallocated.
fn guest_map(image: &Image) -> Result<Vec<Value>, String> {
    let extents = image
        .block_status(0, image.size())
        .map_err(|e| format!("block status: {e}"))?;
    let mut runs: Vec<(u64, u64, &str)> = Vec::new();
    for x in extents {
        let kind = match x.kind {
            ExtentKind::Data { .. } => "data",
            ExtentKind::Compressed => "compressed",
            ExtentKind::Zero { .. } => "zero",
            _ => "unallocated",
        };
        match runs.last_mut() {
            Some((start, len, k)) if *k == kind && *start + *len == x.start => *len += x.length,
            _ => runs.push((x.start, x.length, kind)),
        }
    }
    Ok(runs
        .into_iter()
        .map(|(start, length, kind)| json!({ "start": start, "length": length, "kind": kind }))
        .collect())
}

/// The pinned structure of one image of our writer, as pretty JSON.
pub fn structure(bytes: &[u8]) -> Result<String, String> {
    let area = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let h = &area.header;
    let storage = Arc::new(MemoryStorage::from_bytes(bytes.to_vec()));
    let image = Image::open(
        storage.clone(),
        OpenOptions {
            writable: false,
            backing: BackingMode::Ignore,
        },
    )
    .map_err(|e| format!("open: {e}"))?;
    let mut content = vec![0u8; image.size() as usize];
    image
        .read_at(&mut content, 0)
        .map_err(|e| format!("read: {e}"))?;
    let report = qcow2_alloc::check::check(&*storage, &[&qcow2_image::DedupTableReferences])
        .map_err(|e| format!("check: {e}"))?;
    let findings: Vec<String> = crate::evaluate::evaluate(bytes)
        .triggered()
        .iter()
        .map(|r| r.to_string())
        .collect();
    let mut value = json!({
        "header": {
            "version": h.version,
            "cluster_bits": h.cluster_bits,
            "size": h.size,
            "crypt_method": h.crypt_method,
            "incompatible_features": format!("{:#x}", h.incompatible_features),
            "compatible_features": format!("{:#x}", h.compatible_features),
            "autoclear_features": format!("{:#x}", h.autoclear_features),
            "refcount_order": h.refcount_order,
            "header_length": h.header_length,
            "compression_type": h.compression_type,
            "nb_snapshots": h.nb_snapshots,
        },
        "extensions": extensions(&area),
        "guest_map": guest_map(&image)?,
        "guest_content_sha256": sha256_hex(&content),
        "rules_broken": findings,
        "check": {
            "clean": report.is_clean(),
            "allocated_clusters": report.allocated_clusters,
            "compressed_clusters": report.compressed_clusters,
        },
    });
    if area.dedup().is_some() {
        let stats =
            qcow2_dedup::stats(&*storage, &area).map_err(|e| format!("dedup stats: {e}"))?;
        value["dedup"] = json!({
            "indexed_clusters": stats.indexed_clusters,
            "shared_clusters": stats.shared_clusters,
        });
    }
    serde_json::to_string_pretty(&value)
        .map(|t| t + "\n")
        .map_err(|e| e.to_string())
}

/// What our writer must do though no reader checks it, one line per lapse:
/// a virtual size that is a multiple of 512 (HDR-SIZE), zero header padding
/// up to header_length (HDR-LENGTH) and nothing in the rest of cluster 0
/// after the header area (HDR-FIRST-CLUSTER).
pub fn writer_lapses(bytes: &[u8]) -> Vec<String> {
    let mut area = match HeaderArea::parse(bytes) {
        Ok(a) => a,
        Err(e) => return vec![format!("does not parse: {e}")],
    };
    let mut out = Vec::new();
    if area.header.size % 512 != 0 {
        out.push(format!(
            "HDR-SIZE: virtual size {} is not a multiple of 512",
            area.header.size
        ));
    }
    if let Some(k) = area.header.tail.iter().position(|&b| b != 0) {
        out.push(format!(
            "HDR-LENGTH: header padding byte {} is {:#x}, not 0",
            105 + k,
            area.header.tail[k]
        ));
    }
    let end = match area.to_bytes() {
        Ok(b) => b.len(),
        Err(e) => return vec![format!("does not serialize: {e}")],
    };
    let cluster = area
        .header
        .geometry()
        .map(|g| g.cluster_size() as usize)
        .unwrap_or(bytes.len())
        .min(bytes.len());
    if let Some(k) = bytes[end.min(cluster)..cluster]
        .iter()
        .position(|&b| b != 0)
    {
        out.push(format!(
            "HDR-FIRST-CLUSTER: byte {:#x} of cluster 0, after the header area, is not 0",
            end + k
        ));
    }
    out
}
