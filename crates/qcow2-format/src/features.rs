//! Feature bits and the meaning they take from the header extensions present.
//!
//! Incompatible bits 1 and 2 mean different things in today's QEMU and in the
//! seed extensions; the extension present decides (design §3).

/// Incompatible bit 0: refcounts may be stale (lazy refcounts in use).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible bit 1: QEMU's corrupt bit, or the seed's deduplication bit when the dedup extension is present.
pub const INCOMPAT_BIT1: u64 = 1 << 1;
/// Incompatible bit 2: QEMU's external data file bit, or the seed's compress format bit when that extension is present.
pub const INCOMPAT_BIT2: u64 = 1 << 2;
/// Incompatible bit 3: compression type field in use (header byte 104 is non-zero).
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// Incompatible bit 4: extended L2 entries with subcluster bitmaps.
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Every incompatible bit this crate understands.
pub const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_BIT1
    | INCOMPAT_BIT2
    | INCOMPAT_COMPRESSION_TYPE
    | INCOMPAT_EXTENDED_L2;

/// Compatible bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Every compatible bit this crate understands.
pub const COMPAT_KNOWN: u64 = COMPAT_LAZY_REFCOUNTS;

/// Auto-clear bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Auto-clear bit 1: the external data file is a valid raw image.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;
/// Every auto-clear bit this crate understands.
pub const AUTOCLEAR_KNOWN: u64 = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;

/// Which of the three feature bitmaps a bit belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum FeatureKind {
    /// Incompatible features (type 0 in the feature name table).
    Incompatible,
    /// Compatible features (type 1).
    Compatible,
    /// Auto-clear features (type 2).
    Autoclear,
}

impl FeatureKind {
    /// Parses the type byte of a feature name table entry.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Incompatible),
            1 => Some(Self::Compatible),
            2 => Some(Self::Autoclear),
            _ => None,
        }
    }

    /// The type byte of a feature name table entry.
    pub const fn to_raw(self) -> u8 {
        match self {
            Self::Incompatible => 0,
            Self::Compatible => 1,
            Self::Autoclear => 2,
        }
    }
}

/// What incompatible bit 1 means for one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Bit1Meaning {
    /// The dedup extension is present: the image is deduplicated (seed).
    Dedup,
    /// No dedup extension: QEMU's corrupt bit.
    Corrupt,
}

/// What incompatible bit 2 means for one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Bit2Meaning {
    /// Compressed clusters use the format of the compress format extension (seed).
    CompressFormat,
    /// Guest data lives in an external data file (QEMU).
    ExternalDataFile,
}

/// The feature bits of one image, interpreted.
///
/// Built by [`crate::HeaderArea::features`], which resolves the meaning of bits
/// 1 and 2 from the extensions present.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Features {
    /// Refcounts may be stale and must be rebuilt before writing.
    pub dirty: bool,
    /// Meaning of bit 1 when it is set.
    pub bit1: Option<Bit1Meaning>,
    /// Meaning of bit 2 when it is set.
    pub bit2: Option<Bit2Meaning>,
    /// A dedup extension is present but bit 1 is clear: the table is stale.
    pub dedup_stale: bool,
    /// QEMU's compression type field is in use.
    pub compression_type_bit: bool,
    /// Extended L2 entries.
    pub extended_l2: bool,
    /// Lazy refcounts.
    pub lazy_refcounts: bool,
    /// The bitmaps extension is consistent.
    pub bitmaps_consistent: bool,
    /// The external data file is a valid raw image.
    pub data_file_raw: bool,
    /// Compatible bits this crate does not know (ignored).
    pub unknown_compatible: u64,
    /// Auto-clear bits this crate does not know (cleared by a writer).
    pub unknown_autoclear: u64,
}

impl Features {
    /// Whether the image is deduplicated in the seed's sense.
    pub fn dedup(&self) -> bool {
        self.bit1 == Some(Bit1Meaning::Dedup)
    }

    /// Whether QEMU's corrupt bit is set.
    pub fn corrupt(&self) -> bool {
        self.bit1 == Some(Bit1Meaning::Corrupt)
    }

    /// Whether the seed's compress format extension governs compressed clusters.
    pub fn compress_format(&self) -> bool {
        self.bit2 == Some(Bit2Meaning::CompressFormat)
    }

    /// Whether guest data lives in an external data file.
    pub fn external_data_file(&self) -> bool {
        self.bit2 == Some(Bit2Meaning::ExternalDataFile)
    }
}

/// The name of a feature bit this crate knows, given the meaning bits 1 and 2 take.
pub fn known_name(
    kind: FeatureKind,
    bit: u32,
    bit1: Bit1Meaning,
    bit2: Bit2Meaning,
) -> Option<&'static str> {
    match (kind, bit) {
        (FeatureKind::Incompatible, 0) => Some("dirty bit"),
        (FeatureKind::Incompatible, 1) => Some(match bit1 {
            Bit1Meaning::Dedup => "deduplication",
            Bit1Meaning::Corrupt => "corrupt bit",
        }),
        (FeatureKind::Incompatible, 2) => Some(match bit2 {
            Bit2Meaning::CompressFormat => "compress format",
            Bit2Meaning::ExternalDataFile => "external data file",
        }),
        (FeatureKind::Incompatible, 3) => Some("compression type"),
        (FeatureKind::Incompatible, 4) => Some("extended L2 entries"),
        (FeatureKind::Compatible, 0) => Some("lazy refcounts"),
        (FeatureKind::Autoclear, 0) => Some("bitmaps"),
        (FeatureKind::Autoclear, 1) => Some("raw external data"),
        _ => None,
    }
}
