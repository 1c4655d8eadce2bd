//! What `info` learns about an image, independent of how it is printed.

use std::path::Path;

use qcow2_format::{Assessment, CryptMethod, HeaderArea};

use crate::backing::full_backing_filename;
use crate::bitmap_directory::{self, BitmapInfo};
use crate::error::CliError;
use crate::image_file::ImageFile;

/// The parsed and assessed header area of one image, plus file facts.
#[derive(Debug)]
pub struct ImageInfo {
    /// The path as the user typed it (QEMU reports it unchanged).
    pub filename: String,
    /// File length in bytes.
    pub file_length: u64,
    /// Bytes allocated on disk.
    pub actual_size: u64,
    /// Everything in the first cluster.
    pub area: HeaderArea,
    /// The verdict on it: features, notes, read-only reason.
    pub assessment: Assessment,
    /// Persistent bitmaps, when the bitmaps extension is present and consistent.
    pub bitmaps: Vec<BitmapInfo>,
    /// The LUKS header of a LUKS-encrypted image, when it reads as one
    /// (`check` reports one that does not).
    pub luks: Option<qcow2_format::tables::luks::LuksHeader>,
    /// Deduplication numbers, when the image has a dedup table that could
    /// be read.
    pub dedup_stats: Option<qcow2_dedup::DedupStats>,
    /// The internal snapshots, when the snapshot table parses.
    pub snapshots: Vec<super::snapshot_list::SnapshotInfo>,
}

/// The backing file, as named and as QEMU would resolve it.
#[derive(Debug, PartialEq, Eq)]
pub struct Backing {
    /// The name stored in the image.
    pub name: String,
    /// The name resolved against the image's directory.
    pub full_name: String,
    /// The format from the backing format extension, if present.
    pub format: Option<String>,
}

impl ImageInfo {
    /// Reads, parses and assesses the image at `path`; any rule violation is an error.
    pub fn gather(path: &Path) -> Result<Self, CliError> {
        let mut file = ImageFile::open(path)?;
        let cluster = file.first_cluster()?;
        let format_error = |source| CliError::Format {
            path: path.to_path_buf(),
            source,
        };
        let area = HeaderArea::parse(&cluster).map_err(format_error)?;
        // No codec lookup: inspecting an image must work even when its compress format is unknown.
        let assessment = area
            .assess(Some(&qcow2_image::codec_max_level))
            .map_err(format_error)?;
        let bitmaps = match bitmaps_extension(&area) {
            // QEMU ignores the extension while the autoclear bit says it is stale.
            Some(ext) if assessment.features.bitmaps_consistent => {
                bitmap_directory::read(&mut file, ext)?
            }
            _ => Vec::new(),
        };
        let luks = luks_header(&mut file, &area);
        let snapshots = super::snapshot_list::read(&mut file, &area);
        let dedup_stats = area.dedup().and_then(|_| {
            let storage = qcow2_io::FileStorage::open(path, false).ok()?;
            qcow2_dedup::stats(&storage, &area).ok()
        });
        Ok(Self {
            dedup_stats,
            filename: path.to_string_lossy().into_owned(),
            file_length: file.len(),
            actual_size: file.allocated_bytes(),
            area,
            assessment,
            bitmaps,
            luks,
            snapshots,
        })
    }

    /// The virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.area.header.size
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.assessment.geometry.cluster_size()
    }

    /// Whether the header is version 3, which has feature bits ("compat 1.1").
    pub fn is_v3(&self) -> bool {
        self.area.header.version >= 3
    }

    /// QEMU's name for the header version: "0.10" for version 2, "1.1" for version 3.
    pub fn compat(&self) -> &'static str {
        if self.is_v3() {
            "1.1"
        } else {
            "0.10"
        }
    }

    /// The compression type of the header (images without the field use zlib).
    pub fn compression_type(&self) -> &'static str {
        self.area.header.compression().map_or("zlib", |c| c.name())
    }

    /// Whether the image uses the legacy AES encryption (crypt_method 1).
    pub fn aes(&self) -> bool {
        self.area.header.crypt_method == CryptMethod::Aes.to_raw()
    }

    /// Whether the image is encrypted (AES or LUKS).
    pub fn encrypted(&self) -> bool {
        self.area.header.crypt_method != CryptMethod::None.to_raw()
    }

    /// The backing file, if the image has one.
    pub fn backing(&self) -> Option<Backing> {
        let name = String::from_utf8_lossy(self.area.backing_file.as_deref()?).into_owned();
        Some(Backing {
            full_name: full_backing_filename(&self.filename, &name),
            format: self.area.backing_format().map(str::to_string),
            name,
        })
    }

    /// Whether the external data file is raw; `None` when guest data is in the image itself.
    pub fn data_file_raw(&self) -> Option<bool> {
        let f = &self.assessment.features;
        f.external_data_file().then_some(f.data_file_raw)
    }
}

fn bitmaps_extension(area: &HeaderArea) -> Option<&qcow2_format::extensions::Bitmaps> {
    area.chain.extensions.iter().find_map(|e| match e {
        qcow2_format::extensions::Extension::Bitmaps(b) => Some(b),
        _ => None,
    })
}

/// The LUKS header the encryption header pointer names, if it parses.
fn luks_header(
    file: &mut crate::image_file::ImageFile,
    area: &HeaderArea,
) -> Option<qcow2_format::tables::luks::LuksHeader> {
    use qcow2_format::tables::luks;
    let (offset, len) = area.chain.extensions.iter().find_map(|e| match e {
        qcow2_format::extensions::Extension::FullDiskEncryption(f) => {
            Some((f.offset.get(), f.length.get()))
        }
        _ => None,
    })?;
    let head = file
        .read_at(offset, (luks::HEADER_LEN as u64).min(len))
        .ok()?;
    luks::parse_header(&head, offset, len).ok()
}
