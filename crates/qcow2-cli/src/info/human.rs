//! `info --output=human`: `qemu-img info`'s lines first, in its order and wording, then ours.
//!
//! For any image `qemu-img` can open, our output starts with exactly the lines
//! it prints before its "Child node" section (the integration tests check
//! this), so people and scripts can switch tools. The header details that
//! only this tool shows follow in sections of their own.

use std::fmt::{self, Write};

use qcow2_format::extensions::Extension;
use qcow2_format::features::FeatureKind;

use super::model::ImageInfo;
use crate::size::human_size;

const INDENT: &str = "    ";

/// The full human-readable report.
pub fn render(info: &ImageInfo) -> Result<String, fmt::Error> {
    let mut out = String::new();
    qemu_lines(&mut out, info)?;
    header_section(&mut out, info)?;
    extensions_section(&mut out, info)?;
    notes_section(&mut out, info)?;
    Ok(out)
}

/// The lines `qemu-img info` prints, with its key names.
fn qemu_lines(out: &mut String, info: &ImageInfo) -> fmt::Result {
    let size = info.virtual_size();
    writeln!(out, "image: {}", info.filename)?;
    writeln!(out, "file format: qcow2")?;
    writeln!(out, "virtual size: {} ({size} bytes)", human_size(size))?;
    writeln!(out, "disk size: {}", human_size(info.actual_size))?;
    if info.encrypted() {
        writeln!(out, "encrypted: yes")?;
    }
    writeln!(out, "cluster_size: {}", info.cluster_size())?;
    if info.assessment.features.dirty {
        writeln!(out, "cleanly shut down: no")?;
    }
    if let Some(b) = info.backing() {
        if b.full_name == b.name {
            writeln!(out, "backing file: {}", b.name)?;
        } else {
            writeln!(
                out,
                "backing file: {} (actual path: {})",
                b.name, b.full_name
            )?;
        }
        if let Some(format) = &b.format {
            writeln!(out, "backing file format: {format}")?;
        }
    }
    super::snapshot_list::render(out, &info.snapshots)?;
    format_specific(out, info)
}

/// "Format specific information:", with the keys of the JSON `format-specific.data`.
fn format_specific(out: &mut String, info: &ImageInfo) -> fmt::Result {
    let features = &info.assessment.features;
    let v3 = info.is_v3();
    let i1 = INDENT;
    writeln!(out, "Format specific information:")?;
    writeln!(out, "{i1}compat: {}", info.compat())?;
    writeln!(out, "{i1}compression type: {}", info.compression_type())?;
    if v3 {
        writeln!(out, "{i1}lazy refcounts: {}", features.lazy_refcounts)?;
    }
    bitmaps(out, info)?;
    writeln!(
        out,
        "{i1}refcount bits: {}",
        info.area.header.refcount_bits()
    )?;
    if info.aes() {
        writeln!(out, "{INDENT}encrypt:")?;
        writeln!(out, "{INDENT}{INDENT}format: aes")?;
    }
    if let Some(luks) = &info.luks {
        encrypt(out, luks)?;
    }
    if let Some(name) = info.area.data_file() {
        writeln!(out, "{i1}data file: {name}")?;
    }
    if let Some(raw) = info.data_file_raw() {
        writeln!(out, "{i1}data file raw: {raw}")?;
    }
    if v3 {
        writeln!(out, "{i1}corrupt: {}", features.corrupt())?;
        writeln!(out, "{i1}extended l2: {}", features.extended_l2)?;
    }
    // The seed extensions, which qemu-img cannot show.
    if let Some(c) = info.area.compress_format() {
        writeln!(out, "{i1}compress format:")?;
        writeln!(out, "{i1}{i1}name: {}", c.name)?;
        writeln!(out, "{i1}{i1}level: {}", c.level)?;
        writeln!(out, "{i1}{i1}extra data size: {}", c.extra_data.len())?;
    }
    if let Some(d) = info.area.dedup() {
        writeln!(out, "{i1}dedup:")?;
        writeln!(out, "{i1}{i1}table offset: {}", d.l1_offset.get())?;
        writeln!(out, "{i1}{i1}table size: {}", d.l1_size)?;
        if let Some(s) = &info.dedup_stats {
            writeln!(out, "{i1}{i1}indexed clusters: {}", s.indexed_clusters)?;
            writeln!(out, "{i1}{i1}shared clusters: {}", s.shared_clusters)?;
            writeln!(out, "{i1}{i1}bytes saved: {}", s.bytes_saved)?;
        }
    }
    Ok(())
}

/// The `encrypt` block of a LUKS image, in qemu-img's order and wording.
fn encrypt(out: &mut String, luks: &qcow2_format::tables::luks::LuksHeader) -> fmt::Result {
    let e = super::luks_summary::Encrypt::of(luks);
    let (i2, i3, i4) = (INDENT.repeat(2), INDENT.repeat(3), INDENT.repeat(4));
    writeln!(out, "{INDENT}encrypt:")?;
    writeln!(out, "{i2}ivgen alg: {}", e.ivgen_alg)?;
    if let Some(h) = &e.ivgen_hash_alg {
        writeln!(out, "{i2}ivgen hash alg: {h}")?;
    }
    writeln!(out, "{i2}detached header: {}", e.detached_header)?;
    writeln!(out, "{i2}hash alg: {}", e.hash_alg)?;
    writeln!(out, "{i2}cipher alg: {}", e.cipher_alg)?;
    writeln!(out, "{i2}uuid: {}", e.uuid)?;
    writeln!(out, "{i2}format: {}", e.format)?;
    writeln!(out, "{i2}cipher mode: {}", e.cipher_mode)?;
    writeln!(out, "{i2}slots:")?;
    for (k, slot) in e.slots.iter().enumerate() {
        writeln!(out, "{i3}[{k}]:")?;
        writeln!(out, "{i4}active: {}", slot.active)?;
        if let Some(iters) = slot.iters {
            writeln!(out, "{i4}iters: {iters}")?;
        }
        writeln!(out, "{i4}key offset: {}", slot.key_offset)?;
        if let Some(stripes) = slot.stripes {
            writeln!(out, "{i4}stripes: {stripes}")?;
        }
    }
    writeln!(out, "{i2}payload offset: {}", e.payload_offset)?;
    writeln!(out, "{i2}master key iters: {}", e.master_key_iters)
}

/// QEMU's nested list layout: `[index]:` items, keys one level deeper.
fn bitmaps(out: &mut String, info: &ImageInfo) -> fmt::Result {
    if info.bitmaps.is_empty() {
        return Ok(());
    }
    let (i1, i2, i3, i4) = (INDENT, INDENT.repeat(2), INDENT.repeat(3), INDENT.repeat(4));
    writeln!(out, "{i1}bitmaps:")?;
    for (n, b) in info.bitmaps.iter().enumerate() {
        writeln!(out, "{i2}[{n}]:")?;
        writeln!(out, "{i3}flags:")?;
        for (f, flag) in b.flag_names().iter().enumerate() {
            writeln!(out, "{i4}[{f}]: {flag}")?;
        }
        writeln!(out, "{i3}name: {}", b.name)?;
        writeln!(out, "{i3}granularity: {}", b.granularity)?;
    }
    Ok(())
}

/// Header fields and feature bits by name.
fn header_section(out: &mut String, info: &ImageInfo) -> fmt::Result {
    let h = &info.area.header;
    let i1 = INDENT;
    writeln!(out, "Header:")?;
    writeln!(out, "{i1}version: {}", h.version)?;
    writeln!(out, "{i1}header length: {}", h.header_length)?;
    writeln!(
        out,
        "{i1}file length: {} ({} bytes)",
        human_size(info.file_length),
        info.file_length
    )?;
    for (kind, label, bits) in [
        (
            FeatureKind::Incompatible,
            "incompatible",
            h.incompatible_features,
        ),
        (FeatureKind::Compatible, "compatible", h.compatible_features),
        (FeatureKind::Autoclear, "autoclear", h.autoclear_features),
    ] {
        let names: Vec<String> = (0..64)
            .filter(|b| bits & (1u64 << b) != 0)
            .map(|b| info.area.feature_name(kind, b))
            .collect();
        let names = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        writeln!(out, "{i1}{label} features: {names}")?;
    }
    writeln!(out, "{i1}l1 table offset: {}", h.l1_table_offset)?;
    writeln!(out, "{i1}l1 size: {}", h.l1_size)?;
    writeln!(
        out,
        "{i1}refcount table offset: {}",
        h.refcount_table_offset
    )?;
    writeln!(
        out,
        "{i1}refcount table clusters: {}",
        h.refcount_table_clusters
    )?;
    writeln!(out, "{i1}snapshots: {}", h.nb_snapshots)?;
    if h.nb_snapshots > 0 {
        writeln!(out, "{i1}snapshot table offset: {}", h.snapshots_offset)?;
    }
    match info.assessment.read_only {
        Some(rule) => writeln!(out, "{i1}read-only: yes ({rule})"),
        None => writeln!(out, "{i1}read-only: no"),
    }
}

/// Every header extension in file order, known or not.
fn extensions_section(out: &mut String, info: &ImageInfo) -> fmt::Result {
    let i1 = INDENT;
    writeln!(out, "Header extensions:")?;
    if info.area.chain.extensions.is_empty() {
        return writeln!(out, "{i1}none");
    }
    for ext in &info.area.chain.extensions {
        let kind = ext.kind();
        write!(out, "{i1}{} ({kind:#010x}): ", Extension::kind_name(kind))?;
        match ext {
            Extension::BackingFormat(name) | Extension::ExternalDataFile(name) => {
                writeln!(out, "{name}")?
            }
            Extension::FeatureTable(entries) => {
                writeln!(out, "{} entries", entries.len())?;
                for e in entries {
                    let kind = match e.kind {
                        FeatureKind::Incompatible => "incompatible",
                        FeatureKind::Compatible => "compatible",
                        FeatureKind::Autoclear => "autoclear",
                    };
                    writeln!(out, "{i1}{i1}{kind} bit {}: {}", e.bit, e.name())?;
                }
            }
            Extension::Bitmaps(b) => writeln!(
                out,
                "{} bitmaps, directory of {} bytes at {:#x}",
                b.nb_bitmaps.get(),
                b.bitmap_directory_size.get(),
                b.bitmap_directory_offset.get()
            )?,
            Extension::FullDiskEncryption(f) => writeln!(
                out,
                "encryption header of {} bytes at {:#x}",
                f.length.get(),
                f.offset.get()
            )?,
            Extension::CompressFormat(c) => writeln!(
                out,
                "{}, level {}{}, {} bytes of extra data",
                c.name,
                c.level,
                if c.level == 0 { " (codec default)" } else { "" },
                c.extra_data.len()
            )?,
            Extension::Dedup(d) => {
                writeln!(out, "table of {} entries at {}", d.l1_size, d.l1_offset)?
            }
            Extension::Unknown { data, .. } => writeln!(out, "{} bytes, kept as is", data.len())?,
        }
    }
    Ok(())
}

/// The assessment's non-fatal findings, each with its rule ID.
fn notes_section(out: &mut String, info: &ImageInfo) -> fmt::Result {
    let notes = &info.assessment.notes;
    if notes.is_empty() {
        return Ok(());
    }
    writeln!(out, "Notes:")?;
    for n in notes {
        writeln!(
            out,
            "{INDENT}{} at byte {:#x}: {}",
            n.rule, n.offset, n.message
        )?;
    }
    Ok(())
}
