//! The compress format part of amend: a new level for the seed compress
//! format extension, or a new format for an image without compressed
//! clusters (the format decides how existing clusters decode).

use qcow2_codec::Registry;
use qcow2_format::extensions::{CompressFormat, Extension};
use qcow2_format::features as feat;
use qcow2_format::HeaderArea;
use qcow2_io::Storage;

use crate::error::{ImageError, Result};

fn invalid(reason: impl Into<String>) -> ImageError {
    ImageError::InvalidArgument {
        what: "amend option",
        reason: reason.into(),
    }
}

/// The compress format extension the image gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CodecChange {
    pub extension: CompressFormat,
}

/// The codec name compressed clusters of `area` use now.
fn current_codec(area: &HeaderArea) -> String {
    match area.compress_format() {
        Some(cf) => cf.name.clone(),
        None => area
            .header
            .compression()
            .map_or_else(|| "zlib".to_string(), |c| c.name().to_string()),
    }
}

/// Checks a compress format or level change against the image and returns
/// what to write, or `None` when nothing is asked.
pub(crate) fn plan(
    storage: &dyn Storage,
    area: &HeaderArea,
    format: Option<&str>,
    level: Option<u8>,
    target_version: u32,
) -> Result<Option<CodecChange>> {
    if format.is_none() && level.is_none() {
        return Ok(None);
    }
    if target_version < 3 {
        return Err(invalid(
            "a compress format needs compatibility level 1.1 (version 3)",
        ));
    }
    let existing = area.compress_format();
    let name = match (format, existing) {
        (Some(name), _) => name.to_string(),
        (None, Some(cf)) => cf.name.clone(),
        (None, None) => {
            return Err(invalid(
                "compress_level needs a compress format: this image has none (QEMU \
                 compression types have no level); give compress_format too",
            ))
        }
    };
    let registry = Registry::builtin();
    let info = registry
        .info(&name)
        .map_err(|e| invalid(format!("compress_format: {e}")))?;
    let level = level.unwrap_or_else(|| existing.map_or(0, |cf| cf.level));
    let max = info.levels().max();
    if level > max {
        return Err(invalid(format!(
            "compress_level {level} is above {name}'s highest level {max} (0 = default)"
        )));
    }
    if name != current_codec(area) {
        // Existing compressed clusters would decode with the wrong codec.
        if area.header.nb_snapshots > 0 {
            return Err(invalid(format!(
                "changing the compress format to {name}: the image has snapshots, which \
                 may hold compressed clusters"
            )));
        }
        let report = qcow2_alloc::check::check(storage, &[])?;
        if report.compressed_clusters > 0 {
            return Err(invalid(format!(
                "changing the compress format to {name}: {} clusters are compressed with {}",
                report.compressed_clusters,
                current_codec(area)
            )));
        }
    }
    // Extra data belongs to the format: kept while the format stays.
    let extra_data = match existing {
        Some(cf) if cf.name == name => cf.extra_data.clone(),
        _ => Vec::new(),
    };
    let mut extension = CompressFormat::new(&name, level)?;
    extension.extra_data = extra_data;
    Ok(Some(CodecChange { extension }))
}

/// Puts the extension in `area`: incompatible bit 2 set, any QEMU
/// compression type dropped (CF-CONFLICT).
pub(crate) fn apply(area: &mut HeaderArea, change: &CodecChange) {
    area.chain
        .extensions
        .retain(|e| !matches!(e, Extension::CompressFormat(_)));
    area.chain
        .extensions
        .insert(0, Extension::CompressFormat(change.extension.clone()));
    let h = &mut area.header;
    h.incompatible_features |= feat::INCOMPAT_BIT2;
    h.incompatible_features &= !feat::INCOMPAT_COMPRESSION_TYPE;
    h.compression_type = 0;
}
