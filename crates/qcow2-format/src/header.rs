//! The fixed qcow2 header: 72 bytes in version 2, `header_length` bytes in version 3.

use zerocopy::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules::{self, RuleId};
use crate::units::{ClusterGeometry, HostOffset};

/// `QFI\xfb`, the first four bytes of every qcow2 image.
pub const MAGIC: u32 = 0x5146_49fb;
/// Size of the version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Smallest version 3 header (without the compression type byte).
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// Length of the version 3 header as QEMU writes it today (with compression type and padding).
pub const V3_HEADER_LEN: u32 = 112;
/// Offset of the compression type byte in a version 3 header.
pub const COMPRESSION_TYPE_OFFSET: u32 = 104;

/// Bytes 0..72, common to both versions.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RawHeaderV2 {
    /// `QFI\xfb`.
    pub magic: U32,
    /// 2 or 3.
    pub version: U32,
    /// Offset of the backing file name, 0 when there is none.
    pub backing_file_offset: U64,
    /// Length of the backing file name in bytes.
    pub backing_file_size: U32,
    /// log2 of the cluster size.
    pub cluster_bits: U32,
    /// Virtual disk size in bytes.
    pub size: U64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: U32,
    /// Number of L1 entries.
    pub l1_size: U32,
    /// Host offset of the active L1 table.
    pub l1_table_offset: U64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: U64,
    /// Number of clusters the refcount table occupies.
    pub refcount_table_clusters: U32,
    /// Number of snapshots.
    pub nb_snapshots: U32,
    /// Host offset of the snapshot table.
    pub snapshots_offset: U64,
}

/// Bytes 72..104, present in version 3 only.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RawHeaderV3Fields {
    /// Incompatible feature bits.
    pub incompatible_features: U64,
    /// Compatible feature bits.
    pub compatible_features: U64,
    /// Auto-clear feature bits.
    pub autoclear_features: U64,
    /// Refcount width is `1 << refcount_order` bits.
    pub refcount_order: U32,
    /// Length of the header structure in bytes.
    pub header_length: U32,
}

/// Encryption method of the header's `crypt_method` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum CryptMethod {
    /// Not encrypted.
    None,
    /// Legacy AES-CBC (read-only in QEMU, not supported for data access here).
    Aes,
    /// LUKS, described by the full disk encryption header extension.
    Luks,
}

impl CryptMethod {
    /// The on-disk value.
    pub const fn to_raw(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Aes => 1,
            Self::Luks => 2,
        }
    }

    /// Parses the on-disk value.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::None),
            1 => Some(Self::Aes),
            2 => Some(Self::Luks),
            _ => None,
        }
    }
}

/// QEMU's compression type (header byte 104).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum CompressionType {
    /// Raw deflate (type 0, also what images without the field use).
    Zlib,
    /// Zstandard (type 1).
    Zstd,
}

impl CompressionType {
    /// The on-disk value.
    pub const fn to_raw(self) -> u8 {
        match self {
            Self::Zlib => 0,
            Self::Zstd => 1,
        }
    }

    /// Parses the on-disk value.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Zlib),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The name `qemu-img` uses for it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
}

/// QEMU's upper bound on the L1 table (bytes); the same bound is applied to snapshot L1 tables.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's upper bound on the refcount table (bytes).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU's upper bound on the number of snapshots.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// QEMU's upper bound on the backing file name length.
pub const MAX_BACKING_FILE_NAME: u32 = 1023;

/// The parsed fixed header, with every field of both versions.
///
/// Version 2 images read as having no feature bits, refcount_order 4 and a
/// header length of 72. `tail` holds the bytes between the compression type
/// byte and `header_length` (padding and fields newer than this crate) so a
/// rewrite keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name, 0 when there is none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Raw crypt_method (see [`CryptMethod`]).
    pub crypt_method: u32,
    /// Number of active L1 entries.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: HostOffset,
    /// Offset of the refcount table.
    pub refcount_table_offset: HostOffset,
    /// Clusters used by the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: HostOffset,
    /// Incompatible feature bits (0 for version 2).
    pub incompatible_features: u64,
    /// Compatible feature bits (0 for version 2).
    pub compatible_features: u64,
    /// Auto-clear feature bits (0 for version 2).
    pub autoclear_features: u64,
    /// Refcount width is `1 << refcount_order` bits (4 for version 2).
    pub refcount_order: u32,
    /// Header length in bytes (72 for version 2).
    pub header_length: u32,
    /// Raw compression type byte (0 when the header is too short to hold it).
    pub compression_type: u8,
    /// Bytes from offset 105 up to `header_length`, kept verbatim.
    pub tail: Vec<u8>,
}

fn truncated(what: &'static str, needed: u64, available: usize) -> FormatError {
    FormatError::new(
        rules::HDR_LENGTH,
        0,
        ErrorKind::Truncated {
            what,
            needed,
            available: available as u64,
        },
    )
}

pub(crate) fn out_of_range(
    rule: RuleId,
    offset: u64,
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> FormatError {
    FormatError::new(
        rule,
        offset,
        ErrorKind::OutOfRange {
            field,
            value,
            min,
            max,
        },
    )
}

pub(crate) fn misaligned(
    rule: RuleId,
    offset: u64,
    field: &'static str,
    value: u64,
    alignment: u64,
) -> FormatError {
    FormatError::new(
        rule,
        offset,
        ErrorKind::Misaligned {
            field,
            value,
            alignment,
        },
    )
}

impl Header {
    /// Parses the fixed header from the start of `buf` (the first cluster of the image, or less).
    ///
    /// Only framing is checked here (magic, version, lengths); field values are
    /// checked by [`Header::validate`].
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let (v2, _) = RawHeaderV2::read_from_prefix(buf)
            .map_err(|_| truncated("version 2 header", V2_HEADER_LEN.into(), buf.len()))?;
        if v2.magic.get() != MAGIC {
            return Err(FormatError::new(
                rules::HDR_MAGIC,
                0,
                ErrorKind::Mismatch {
                    field: "magic",
                    value: v2.magic.get().into(),
                    expected: MAGIC.into(),
                },
            ));
        }
        let version = v2.version.get();
        if !(2..=3).contains(&version) {
            return Err(out_of_range(
                rules::HDR_VERSION,
                4,
                "version",
                version.into(),
                2,
                3,
            ));
        }
        let mut header = Self {
            version,
            backing_file_offset: v2.backing_file_offset.get(),
            backing_file_size: v2.backing_file_size.get(),
            cluster_bits: v2.cluster_bits.get(),
            size: v2.size.get(),
            crypt_method: v2.crypt_method.get(),
            l1_size: v2.l1_size.get(),
            l1_table_offset: HostOffset(v2.l1_table_offset.get()),
            refcount_table_offset: HostOffset(v2.refcount_table_offset.get()),
            refcount_table_clusters: v2.refcount_table_clusters.get(),
            nb_snapshots: v2.nb_snapshots.get(),
            snapshots_offset: HostOffset(v2.snapshots_offset.get()),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: 0,
            tail: Vec::new(),
        };
        if version == 2 {
            return Ok(header);
        }
        let rest = &buf[V2_HEADER_LEN as usize..];
        let (v3, _) = RawHeaderV3Fields::read_from_prefix(rest)
            .map_err(|_| truncated("version 3 header", V3_MIN_HEADER_LEN.into(), buf.len()))?;
        header.incompatible_features = v3.incompatible_features.get();
        header.compatible_features = v3.compatible_features.get();
        header.autoclear_features = v3.autoclear_features.get();
        header.refcount_order = v3.refcount_order.get();
        header.header_length = v3.header_length.get();
        let len = header.header_length;
        if len < V3_MIN_HEADER_LEN || len % 8 != 0 {
            return Err(FormatError::new(
                rules::HDR_LENGTH,
                100,
                ErrorKind::Malformed {
                    field: "header_length",
                    reason: format!("{len} is not a multiple of 8 of at least {V3_MIN_HEADER_LEN}"),
                },
            ));
        }
        // Checked before slicing so a huge header_length cannot index past the buffer.
        let end = len as usize;
        if buf.len() < end {
            // Past cluster 0 it breaks HDR-FIRST-CLUSTER; inside it, the
            // bytes are simply missing from the file (HDR-LENGTH).
            let in_cluster =
                header.cluster_bits < 64 && u64::from(len) <= 1u64 << header.cluster_bits;
            let rule = if in_cluster {
                rules::HDR_LENGTH
            } else {
                rules::HDR_FIRST_CLUSTER
            };
            return Err(FormatError::new(
                rule,
                100,
                ErrorKind::Truncated {
                    what: "header (header_length)",
                    needed: len.into(),
                    available: buf.len() as u64,
                },
            ));
        }
        if len > COMPRESSION_TYPE_OFFSET {
            header.compression_type = buf[COMPRESSION_TYPE_OFFSET as usize];
            header.tail = buf[COMPRESSION_TYPE_OFFSET as usize + 1..end].to_vec();
        }
        Ok(header)
    }

    /// Serializes the header into `header_length` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let v2 = RawHeaderV2 {
            magic: MAGIC.into(),
            version: self.version.into(),
            backing_file_offset: self.backing_file_offset.into(),
            backing_file_size: self.backing_file_size.into(),
            cluster_bits: self.cluster_bits.into(),
            size: self.size.into(),
            crypt_method: self.crypt_method.into(),
            l1_size: self.l1_size.into(),
            l1_table_offset: self.l1_table_offset.0.into(),
            refcount_table_offset: self.refcount_table_offset.0.into(),
            refcount_table_clusters: self.refcount_table_clusters.into(),
            nb_snapshots: self.nb_snapshots.into(),
            snapshots_offset: self.snapshots_offset.0.into(),
        };
        let mut out = v2.as_bytes().to_vec();
        if self.version >= 3 {
            let v3 = RawHeaderV3Fields {
                incompatible_features: self.incompatible_features.into(),
                compatible_features: self.compatible_features.into(),
                autoclear_features: self.autoclear_features.into(),
                refcount_order: self.refcount_order.into(),
                header_length: self.header_length.into(),
            };
            out.extend_from_slice(v3.as_bytes());
            if self.header_length > COMPRESSION_TYPE_OFFSET {
                out.push(self.compression_type);
                out.extend_from_slice(&self.tail);
            }
            out.resize(self.header_length as usize, 0);
        }
        out
    }

    /// A fresh header with QEMU's defaults for `version`, `cluster_bits` and virtual `size`.
    ///
    /// Table offsets are left at 0 for the writer to fill in.
    pub fn new(version: u32, cluster_bits: u32, size: u64) -> Self {
        let v3 = version >= 3;
        Self {
            version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: HostOffset(0),
            refcount_table_offset: HostOffset(0),
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: HostOffset(0),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: if v3 { V3_HEADER_LEN } else { V2_HEADER_LEN },
            compression_type: 0,
            tail: if v3 {
                vec![0; (V3_HEADER_LEN - COMPRESSION_TYPE_OFFSET - 1) as usize]
            } else {
                Vec::new()
            },
        }
    }

    /// The cluster geometry, or an `HDR-CLUSTER-BITS` error.
    pub fn geometry(&self) -> Result<ClusterGeometry> {
        ClusterGeometry::new(self.cluster_bits).ok_or_else(|| {
            out_of_range(
                rules::HDR_CLUSTER_BITS,
                20,
                "cluster_bits",
                self.cluster_bits.into(),
                crate::units::MIN_CLUSTER_BITS.into(),
                crate::units::MAX_CLUSTER_BITS.into(),
            )
        })
    }

    /// The compression type, when the byte holds a known value.
    pub fn compression(&self) -> Option<CompressionType> {
        CompressionType::from_raw(self.compression_type)
    }

    /// Refcount entry width in bits.
    pub fn refcount_bits(&self) -> u64 {
        1u64 << self.refcount_order.min(6)
    }
}
