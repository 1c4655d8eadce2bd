//! Rule identifiers of `docs/spec.md`.
//!
//! Every check in this crate reports the rule it enforces, so an error message
//! can be looked up in the spec and the conformance suite can prove that each
//! rule has both passing and failing cases.

use core::fmt;

/// The ID of one rule in `docs/spec.md`, such as `HDR-MAGIC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub &'static str);

impl RuleId {
    /// The ID as written in the spec.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

macro_rules! rules {
    ($($(#[$doc:meta])* $name:ident = $id:literal;)*) => {
        $($(#[$doc])* pub const $name: RuleId = RuleId($id);)*
        /// Every rule this crate can report, in spec order.
        pub const ALL: &[RuleId] = &[$($name),*];
    };
}

rules! {
    /// The file starts with `QFI\xfb`.
    HDR_MAGIC = "HDR-MAGIC";
    /// Version is 2 or 3.
    HDR_VERSION = "HDR-VERSION";
    /// The header is long enough for its version; v3 header_length is >= 104 and a multiple of 8.
    HDR_LENGTH = "HDR-LENGTH";
    /// The header, its extensions and the backing file name fit in the first cluster.
    HDR_FIRST_CLUSTER = "HDR-FIRST-CLUSTER";
    /// cluster_bits is 9..=21.
    HDR_CLUSTER_BITS = "HDR-CLUSTER-BITS";
    /// crypt_method is 0, 1 (AES) or 2 (LUKS).
    HDR_CRYPT_METHOD = "HDR-CRYPT-METHOD";
    /// The backing file name is at most 1023 bytes and lies inside the first cluster.
    HDR_BACKING_FILE = "HDR-BACKING-FILE";
    /// l1_table_offset is cluster aligned.
    HDR_L1_OFFSET = "HDR-L1-OFFSET";
    /// l1_size covers the virtual size and stays within the L1 size limit.
    HDR_L1_SIZE = "HDR-L1-SIZE";
    /// The virtual size can be addressed.
    HDR_SIZE = "HDR-SIZE";
    /// refcount_table_offset is cluster aligned and non-zero.
    HDR_REFTABLE_OFFSET = "HDR-REFTABLE-OFFSET";
    /// refcount_table_clusters is non-zero and within the size limit.
    HDR_REFTABLE_CLUSTERS = "HDR-REFTABLE-CLUSTERS";
    /// snapshots_offset is cluster aligned and nb_snapshots within the limit.
    HDR_SNAPSHOTS = "HDR-SNAPSHOTS";
    /// refcount_order is at most 6 (v2 implies 4).
    HDR_REFCOUNT_ORDER = "HDR-REFCOUNT-ORDER";
    /// compression_type is 0 (zlib) or 1 (zstd), and non-zero exactly when incompatible bit 3 is set.
    HDR_COMPRESSION_TYPE = "HDR-COMPRESSION-TYPE";
    /// Version 2 images (no feature bitmaps) cannot carry extensions that need an incompatible bit: compress format, external data file.
    HDR_V2_FEATURES = "HDR-V2-FEATURES";
    /// Unknown incompatible feature bits make the image unopenable.
    FEAT_INCOMPAT_UNKNOWN = "FEAT-INCOMPAT-UNKNOWN";
    /// Incompatible bit 0: the dirty bit; refcounts must be rebuilt before writing.
    FEAT_DIRTY = "FEAT-DIRTY";
    /// Incompatible bit 1 without a dedup extension: the corrupt bit; read-only.
    FEAT_CORRUPT = "FEAT-CORRUPT";
    /// Incompatible bit 2 needs exactly one of the compress format and external data file extensions.
    FEAT_BIT2 = "FEAT-BIT2";
    /// Incompatible bit 4 (extended L2) needs clusters of at least 16 KiB.
    FEAT_EXTENDED_L2 = "FEAT-EXTENDED-L2";
    /// Compatible bit 0 (lazy refcounts) needs version 3.
    FEAT_LAZY_REFCOUNTS = "FEAT-LAZY-REFCOUNTS";
    /// Unknown compatible bits are ignored; unknown autoclear bits are cleared on write.
    FEAT_UNKNOWN_COMPAT = "FEAT-UNKNOWN-COMPAT";
    /// Autoclear bit 1 (raw external data) needs an external data file.
    FEAT_RAW_DATA = "FEAT-RAW-DATA";
    /// With an external data file, guest clusters carry no refcounts in the image file.
    DATA_NO_REFCOUNT = "DATA-NO-REFCOUNT";
    /// While the raw-data bit is set, the data file alone is the guest disk.
    DATA_RAW_IMAGE = "DATA-RAW-IMAGE";
    /// Each extension is type, length, data, zero padding to 8; the chain ends with type 0.
    EXT_FRAMING = "EXT-FRAMING";
    /// Padding after extension data is zero.
    EXT_PADDING = "EXT-PADDING";
    /// A known extension appears at most once.
    EXT_DUPLICATE = "EXT-DUPLICATE";
    /// Unknown extensions are skipped and kept byte for byte.
    EXT_UNKNOWN = "EXT-UNKNOWN";
    /// The backing file format name is non-empty text without NUL.
    EXT_BACKING_FORMAT = "EXT-BACKING-FORMAT";
    /// Feature name table entries are 48 bytes with type 0..=2.
    EXT_FEATURE_TABLE = "EXT-FEATURE-TABLE";
    /// The bitmaps extension is 24 bytes, reserved zero, aligned table, 1..=65535 bitmaps.
    EXT_BITMAPS = "EXT-BITMAPS";
    /// The full disk encryption extension is 16 bytes and present exactly when crypt_method is 2.
    EXT_FDE = "EXT-FDE";
    /// The external data file name is non-empty text without NUL.
    EXT_DATA_FILE = "EXT-DATA-FILE";
    /// The compress format extension is present exactly when incompatible bit 2 has the seed meaning.
    CF_PRESENCE = "CF-PRESENCE";
    /// The extension is at least 24 bytes and its length is 24 + extra_data_size.
    CF_LENGTH = "CF-LENGTH";
    /// The name is non-empty, zero padded; bytes after the first NUL are zero.
    CF_NAME = "CF-NAME";
    /// The format name is one this build can decode.
    CF_KNOWN = "CF-KNOWN";
    /// The level is 0 (default) or 1..=max of the named codec.
    CF_LEVEL = "CF-LEVEL";
    /// Bytes 17..=19 are zero.
    CF_RESERVED = "CF-RESERVED";
    /// Extra data is kept byte for byte.
    CF_EXTRA_DATA = "CF-EXTRA-DATA";
    /// The compress format extension cannot be combined with incompatible bit 3.
    CF_CONFLICT = "CF-CONFLICT";
    /// A dedup extension with incompatible bit 1 marks a deduplicated image, whose dedup table must exist.
    DD_PRESENCE = "DD-PRESENCE";
    /// A dedup extension without incompatible bit 1 is stale: readable, never used for writes.
    DD_STALE = "DD-STALE";
    /// The dedup extension data is exactly 12 bytes.
    DD_LENGTH = "DD-LENGTH";
    /// The dedup L1 table offset is cluster aligned (non-zero when the size is).
    DD_L1_OFFSET = "DD-L1-OFFSET";
    /// The dedup L1 table size is within the limit.
    DD_L1_SIZE = "DD-L1-SIZE";
    /// A dedup L1 entry is 0 or a cluster-aligned offset.
    DD_L1_ENTRY = "DD-L1-ENTRY";
    /// A dedup L2 cluster holds floor(cluster_size/40) 40-byte entries and a zero tail.
    DD_L2_LAYOUT = "DD-L2-LAYOUT";
    /// A non-empty dedup entry has a cluster-aligned guest offset.
    DD_ENTRY = "DD-ENTRY";
    /// A non-empty dedup entry's digest is the SHA-256 of the cluster's data.
    DD_DIGEST = "DD-DIGEST";
    /// Dedup entries exist only for live uncompressed data clusters.
    DD_LIVE = "DD-LIVE";
    /// Dedup table clusters are refcounted metadata that overlap nothing else.
    DD_REFCOUNT = "DD-REFCOUNT";
    /// L1 entries: reserved bits zero, L2 offset cluster aligned.
    L1_ENTRY = "L1-ENTRY";
    /// Active L1 entries: COPIED is set exactly when the L2 table's refcount is 1.
    L1_COPIED = "L1-COPIED";
    /// Standard L2 entries: reserved bits zero, host offset cluster aligned.
    L2_ENTRY = "L2-ENTRY";
    /// The zero flag (bit 0) needs version 3.
    L2_ZERO_FLAG = "L2-ZERO-FLAG";
    /// Extended L2: no subcluster both allocated and zero; unallocated clusters have no alloc bits.
    L2_EXTENDED = "L2-EXTENDED";
    /// Active L2 entries of allocated clusters: COPIED is set exactly when the refcount is 1.
    L2_COPIED = "L2-COPIED";
    /// Compressed descriptors: the offset/size split by cluster_bits; no COPIED flag.
    CMP_DESCRIPTOR = "CMP-DESCRIPTOR";
    /// Each compressed cluster decodes to exactly one cluster with the image's codec.
    CMP_DECODE = "CMP-DECODE";
    /// A guest offset maps through L1 index, L2 index and the offset in the cluster.
    READ_MAPPING = "READ-MAPPING";
    /// Unallocated clusters read from the backing file or as zeros; zero clusters read zeros.
    READ_UNALLOCATED = "READ-UNALLOCATED";
    /// The LUKS area starts with a LUKS1 header whose key material lies inside the area.
    ENC_LUKS_HEADER = "ENC-LUKS-HEADER";
    /// The LUKS area's slack up to the end of its last cluster is zero.
    ENC_AREA = "ENC-AREA";
    /// The LUKS payload offset lies past the key material and inside the area.
    ENC_PAYLOAD_OFFSET = "ENC-PAYLOAD-OFFSET";
    /// The LUKS cipher, mode, IV generator, hash and key size are ones LUKS defines.
    ENC_LUKS_CIPHER = "ENC-LUKS-CIPHER";
    /// Guest data of an encrypted image is encrypted, its metadata plain; this build refuses to read it.
    ENC_PAYLOAD = "ENC-PAYLOAD";
    /// Refcount table entries: reserved bits zero, block offset cluster aligned.
    RC_TABLE_ENTRY = "RC-TABLE-ENTRY";
    /// Refcount blocks pack 2^refcount_order-bit big-endian entries.
    RC_BLOCK = "RC-BLOCK";
    /// Every host cluster's stored refcount equals the number of references to it.
    RC_MATCH = "RC-MATCH";
    /// No host cluster serves two different structures (or metadata and guest data).
    RC_OVERLAP = "RC-OVERLAP";
    /// A write never changes a cluster whose refcount is 2 or more in place.
    RC_COW = "RC-COW";
    /// Snapshot table entries: bounded lengths, aligned L1, v3 extra data of at least 16 bytes.
    SNAP_ENTRY = "SNAP-ENTRY";
    /// No two snapshots share an ID.
    SNAP_ID_UNIQUE = "SNAP-ID-UNIQUE";
    /// A snapshot's L1 table covers its disk and the VM state stored after it.
    SNAP_VMSTATE = "SNAP-VMSTATE";
    /// Loading a snapshot copies its L1 table, restores its size and recomputes COPIED.
    SNAP_LOAD = "SNAP-LOAD";
    /// The bitmap directory: framed entries, zero padding, exactly its stated size.
    BMP_DIRECTORY = "BMP-DIRECTORY";
    /// Bitmap names are 1..=1023 bytes and unique.
    BMP_NAME = "BMP-NAME";
    /// Bitmap flag bits 3-31 are zero.
    BMP_FLAGS = "BMP-FLAGS";
    /// A bitmap's type is 1 (dirty tracking).
    BMP_TYPE = "BMP-TYPE";
    /// A bitmap's granularity_bits is 9..=31.
    BMP_GRANULARITY = "BMP-GRANULARITY";
    /// A bitmap table is aligned, non-zero and as long as the disk needs.
    BMP_TABLE = "BMP-TABLE";
    /// Bitmap table entries: reserved bits zero, aligned data cluster, bit 0 only without one.
    BMP_TABLE_ENTRY = "BMP-TABLE-ENTRY";
    /// Autoclear bit 0 without a bitmaps extension is ignored and cleared on write.
    BMP_BIT_NO_EXT = "BMP-BIT-NO-EXT";
    /// A bitmap with in_use set is reported as untrustworthy.
    BMP_IN_USE = "BMP-IN-USE";
    /// Bitmap extra data is kept; without extra_data_compatible the bitmap is unusable.
    BMP_EXTRA_DATA = "BMP-EXTRA-DATA";
    /// Bits past the last valid bit of the final bitmap data cluster are zero.
    BMP_DATA_TAIL = "BMP-DATA-TAIL";
    /// Bit k of a bitmap covers guest bytes k*g to (k+1)*g-1, packed from the LSB.
    BMP_DATA = "BMP-DATA";
    /// An enabled (auto) bitmap records every write made while it is enabled.
    BMP_AUTO = "BMP-AUTO";
}
