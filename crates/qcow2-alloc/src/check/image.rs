//! The facts a check needs from the header area, read with bounded I/O.

use qcow2_format::extensions::fixed::MAX_BITMAP_DIRECTORY;
use qcow2_format::extensions::Extension;
use qcow2_format::tables::RefcountOrder;
use qcow2_format::units::MAX_CLUSTER_BITS;
use qcow2_format::{rules, ClusterGeometry, ErrorKind, FormatError, HeaderArea};
use qcow2_io::Storage;

use super::error::{CheckError, CheckResult};

/// An image opened for checking: its parsed header area and derived facts.
pub struct Image<'a> {
    /// Where the image lives.
    pub storage: &'a dyn Storage,
    /// The parsed header, extensions and backing file name.
    pub area: HeaderArea,
    /// Cluster size.
    pub geo: ClusterGeometry,
    /// Refcount width.
    pub order: RefcountOrder,
    /// File length in bytes when the check started.
    pub file_len: u64,
    /// 16-byte L2 entries with subcluster bitmaps.
    pub extended_l2: bool,
    /// Data clusters live in an external data file (QEMU meaning of bit 2).
    pub data_file: bool,
    /// The bitmaps extension is valid (autoclear bit 0 set), so its
    /// directory and tables are in use.
    pub bitmaps: Option<(u64, u64, u32)>,
    /// The LUKS header range (offset, length), if any.
    pub crypto: Option<(u64, u64)>,
}

impl std::fmt::Debug for Image<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("area", &self.area)
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

/// The header's verdict, accepting one refusal a check must get past: no
/// refcount table at all (offset 0 and 0 clusters, iotest 108), which the
/// walk reports and repair rebuilds. Every other fatal finding stops it.
fn assess(area: &HeaderArea) -> CheckResult<qcow2_format::Assessment> {
    let refused = match area.assess(None) {
        Ok(a) => return Ok(a),
        Err(e) => e,
    };
    let h = &area.header;
    if h.refcount_table_offset.get() != 0 || h.refcount_table_clusters != 0 {
        return Err(refused.into());
    }
    let tolerated = |e: &FormatError| {
        e.rule == rules::HDR_REFTABLE_OFFSET || e.rule == rules::HDR_REFTABLE_CLUSTERS
    };
    match area.assess_all(None) {
        (Some(a), fatal) if fatal.iter().all(tolerated) => Ok(a),
        _ => Err(refused.into()),
    }
}

impl<'a> Image<'a> {
    /// Whether the header names no refcount table at all.
    pub(crate) fn no_refcount_table(&self) -> bool {
        let h = &self.area.header;
        h.refcount_table_offset.get() == 0 && h.refcount_table_clusters == 0
    }

    /// Reads and validates the header area.
    pub fn open(storage: &'a dyn Storage) -> CheckResult<Self> {
        let file_len = storage
            .len()
            .map_err(|e| CheckError::io("reading the file length", 0, e))?;
        // The first cluster is at most 2 MiB; a shorter file is read whole and
        // the parser reports what is missing.
        let first_len = (1u64 << MAX_CLUSTER_BITS).min(file_len) as usize;
        let mut first = vec![0u8; first_len];
        storage
            .read_at(&mut first, 0)
            .map_err(|e| CheckError::io("reading the header", 0, e))?;
        let area = HeaderArea::parse(&first)?;
        let assessment = assess(&area)?;
        let geo = assessment.geometry;
        let header = &area.header;
        let order = RefcountOrder::new(header.refcount_order).ok_or_else(|| {
            FormatError::new(
                rules::HDR_REFCOUNT_ORDER,
                96,
                ErrorKind::OutOfRange {
                    field: "refcount_order",
                    value: header.refcount_order.into(),
                    min: 0,
                    max: RefcountOrder::MAX.into(),
                },
            )
        })?;
        let mut bitmaps = None;
        let mut crypto = None;
        for ext in &area.chain.extensions {
            match ext {
                Extension::Bitmaps(b) if assessment.features.bitmaps_consistent => {
                    let size = b.bitmap_directory_size.get().min(MAX_BITMAP_DIRECTORY);
                    bitmaps = Some((b.bitmap_directory_offset.get(), size, b.nb_bitmaps.get()));
                }
                Extension::FullDiskEncryption(fde) => {
                    crypto = Some((fde.offset.get(), fde.length.get()));
                }
                _ => {}
            }
        }
        Ok(Self {
            storage,
            geo,
            order,
            file_len,
            extended_l2: assessment.features.extended_l2,
            data_file: assessment.features.external_data_file(),
            bitmaps,
            crypto,
            area,
        })
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size()
    }

    /// Reads `len` bytes at `offset` (bytes past the end read as zeros).
    /// Callers bound `len` (one cluster, or a table whose size the header
    /// validation capped).
    pub fn read(&self, offset: u64, len: u64, action: &'static str) -> CheckResult<Vec<u8>> {
        let len = usize::try_from(len).map_err(|_| CheckError::TooLarge {
            what: action,
            value: len,
            limit: usize::MAX as u64,
        })?;
        let mut buf = vec![0u8; len];
        self.storage
            .read_at(&mut buf, offset)
            .map_err(|e| CheckError::io(action, offset, e))?;
        Ok(buf)
    }

    /// Reads the part of `offset..offset + len` that lies inside the file;
    /// the rest reads as zeros, so callers treat missing bytes as zero. The
    /// allocation is bounded by the file length as well as by `len`.
    pub fn read_in_file(
        &self,
        offset: u64,
        len: u64,
        action: &'static str,
    ) -> CheckResult<Vec<u8>> {
        let avail = self.file_len.saturating_sub(offset).min(len);
        self.read(offset, avail, action)
    }

    /// Reads one cluster at `offset`, or nothing when it starts at or past
    /// the end of the file (it would read as zeros).
    pub fn read_cluster(&self, offset: u64, action: &'static str) -> CheckResult<Option<Vec<u8>>> {
        if offset >= self.file_len {
            return Ok(None);
        }
        self.read(offset, self.cluster_size(), action).map(Some)
    }
}

/// The big-endian u64 at byte `at` of `buf`, or 0 past its end.
pub fn be64(buf: &[u8], at: usize) -> u64 {
    at.checked_add(8)
        .and_then(|end| buf.get(at..end))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The big-endian u32 at byte `at` of `buf`, or 0 past its end.
pub fn be32(buf: &[u8], at: usize) -> u32 {
    at.checked_add(4)
        .and_then(|end| buf.get(at..end))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// The big-endian u16 at byte `at` of `buf`, or 0 past its end.
pub fn be16(buf: &[u8], at: usize) -> u16 {
    at.checked_add(2)
        .and_then(|end| buf.get(at..end))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_be_bytes)
}
