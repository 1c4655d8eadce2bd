//! `info --output=json`: the keys, nesting and omissions of `qemu-img info --output=json`.
//!
//! Field order follows QEMU's so the two outputs diff cleanly. Keys QEMU does
//! not have (the seed extensions, notes) live inside `format-specific.data`,
//! where QEMU keeps format-specific details; they are listed in `info --help`.

use serde::Serialize;

use super::model::ImageInfo;

/// `format-specific.data.encrypt`: the LUKS header's description, or the
/// bare format name of the legacy AES method.
#[derive(Serialize)]
#[serde(untagged)]
enum Encrypt {
    Luks(super::luks_summary::Encrypt),
    Aes { format: &'static str },
}

/// The top-level object.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Info<'a> {
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    snapshots: &'a [super::snapshot_list::SnapshotInfo],
    virtual_size: u64,
    filename: &'a str,
    cluster_size: u64,
    format: &'static str,
    actual_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    encrypted: Option<bool>,
    format_specific: FormatSpecific<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    full_backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backing_filename_format: Option<String>,
    dirty_flag: bool,
}

#[derive(Serialize)]
struct FormatSpecific<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: Qcow2Data<'a>,
}

/// `format-specific.data`. Version 2 images omit every key from `lazy-refcounts` on, as QEMU does.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Qcow2Data<'a> {
    compat: &'static str,
    compression_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lazy_refcounts: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bitmaps: Vec<Bitmap<'a>>,
    refcount_bits: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    encrypt: Option<Encrypt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_file_raw: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corrupt: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_l2: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compress_format: Option<CompressFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dedup: Option<Dedup>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<Note<'a>>,
}

#[derive(Serialize)]
struct Bitmap<'a> {
    flags: Vec<&'static str>,
    name: &'a str,
    granularity: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct CompressFormat<'a> {
    name: &'a str,
    level: u8,
    extra_data_size: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Dedup {
    table_offset: u64,
    table_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    indexed_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_saved: Option<u64>,
}

#[derive(Serialize)]
struct Note<'a> {
    rule: &'static str,
    offset: u64,
    message: &'a str,
}

/// The JSON document, indented by four spaces like `qemu-img`, with a trailing newline.
pub fn render(info: &ImageInfo) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    build(info).serialize(&mut ser)?;
    out.push(b'\n');
    Ok(out)
}

fn build(info: &ImageInfo) -> Info<'_> {
    let backing = info.backing();
    let (backing_filename, full_backing_filename, backing_filename_format) = match backing {
        Some(b) => (Some(b.name), Some(b.full_name), b.format),
        None => (None, None, None),
    };
    Info {
        snapshots: &info.snapshots,
        virtual_size: info.virtual_size(),
        filename: &info.filename,
        cluster_size: info.cluster_size(),
        format: "qcow2",
        actual_size: info.actual_size,
        encrypted: info.encrypted().then_some(true),
        format_specific: FormatSpecific {
            kind: "qcow2",
            data: data(info),
        },
        full_backing_filename,
        backing_filename,
        backing_filename_format,
        dirty_flag: info.assessment.features.dirty,
    }
}

fn data(info: &ImageInfo) -> Qcow2Data<'_> {
    let features = &info.assessment.features;
    let v3 = |value: bool| info.is_v3().then_some(value);
    Qcow2Data {
        compat: info.compat(),
        compression_type: info.compression_type(),
        lazy_refcounts: v3(features.lazy_refcounts),
        bitmaps: info
            .bitmaps
            .iter()
            .map(|b| Bitmap {
                flags: b.flag_names(),
                name: &b.name,
                granularity: b.granularity,
            })
            .collect(),
        refcount_bits: info.area.header.refcount_bits(),
        encrypt: match &info.luks {
            Some(luks) => Some(Encrypt::Luks(super::luks_summary::Encrypt::of(luks))),
            None => info.aes().then_some(Encrypt::Aes { format: "aes" }),
        },
        data_file: info.area.data_file(),
        data_file_raw: info.data_file_raw(),
        corrupt: v3(features.corrupt()),
        extended_l2: v3(features.extended_l2),
        compress_format: info.area.compress_format().map(|c| CompressFormat {
            name: &c.name,
            level: c.level,
            extra_data_size: c.extra_data.len(),
        }),
        dedup: info.area.dedup().map(|d| Dedup {
            table_offset: d.l1_offset.get(),
            table_size: d.l1_size,
            indexed_clusters: info.dedup_stats.map(|s| s.indexed_clusters),
            shared_clusters: info.dedup_stats.map(|s| s.shared_clusters),
            bytes_saved: info.dedup_stats.map(|s| s.bytes_saved),
        }),
        read_only_reason: info.assessment.read_only.map(|r| r.as_str()),
        notes: info
            .assessment
            .notes
            .iter()
            .map(|n| Note {
                rule: n.rule.as_str(),
                offset: n.offset,
                message: &n.message,
            })
            .collect(),
    }
}
