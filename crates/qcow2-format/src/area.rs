//! The first cluster of an image: fixed header, extension chain and backing file name.

use crate::error::{ErrorKind, FormatError, Result};
use crate::extensions::compress_format::MaxLevelLookup;
use crate::extensions::{self, CompressFormat, Dedup, Extension, ExtensionChain};
use crate::features::{self as feat, Bit1Meaning, Bit2Meaning, FeatureKind, Features};
use crate::header::{CryptMethod, Header, MAX_L1_BYTES};
use crate::rules::{self, RuleId};
use crate::units::ClusterGeometry;

/// Everything stored in the first cluster of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderArea {
    /// The fixed header.
    pub header: Header,
    /// The header extensions, in file order.
    pub chain: ExtensionChain,
    /// The backing file name, raw bytes (not necessarily UTF-8 on Linux).
    pub backing_file: Option<Vec<u8>>,
}

/// A finding that does not stop an image from opening.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The rule behind it.
    pub rule: RuleId,
    /// Where in the file.
    pub offset: u64,
    /// What it means for the user.
    pub message: String,
}

/// The verdict on a header area: how the image may be opened and what was noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// The cluster geometry.
    pub geometry: ClusterGeometry,
    /// The interpreted feature bits.
    pub features: Features,
    /// Why the image may only be opened read-only, if it must be.
    pub read_only: Option<RuleId>,
    /// Non-fatal findings, in file order.
    pub notes: Vec<Note>,
}

impl HeaderArea {
    /// Parses the header area from the first cluster of an image (or the whole file, if shorter).
    ///
    /// Bytes past the first cluster are ignored. Checks framing; call
    /// [`HeaderArea::assess`] for the semantic rules.
    pub fn parse(first_cluster: &[u8]) -> Result<Self> {
        let header = Header::parse(first_cluster)?;
        let geo = header.geometry()?;
        let cluster = &first_cluster[..first_cluster.len().min(geo.cluster_size() as usize)];
        let start = header.header_length as usize;
        if cluster.len() < start {
            return Err(FormatError::new(
                rules::HDR_FIRST_CLUSTER,
                0,
                ErrorKind::Truncated {
                    what: "header",
                    needed: start as u64,
                    available: cluster.len() as u64,
                },
            ));
        }
        // Like QEMU, a non-zero backing_file_offset ends the extension area, even
        // when the name starts right at the header end (an empty chain).
        let bfo = header.backing_file_offset;
        let end = if bfo == 0 {
            cluster.len()
        } else {
            usize::try_from(bfo).map_or(cluster.len(), |b| b.clamp(start, cluster.len()))
        };
        let chain = ExtensionChain::parse(&cluster[start..end], start as u64)?;
        let backing_file = if bfo == 0 {
            None
        } else {
            let name_end = bfo.saturating_add(header.backing_file_size.into());
            let Some(name) = usize::try_from(bfo)
                .ok()
                .zip(usize::try_from(name_end).ok())
                .and_then(|(a, b)| cluster.get(a..b))
            else {
                return Err(FormatError::new(
                    rules::HDR_BACKING_FILE,
                    8,
                    ErrorKind::Malformed {
                        field: "backing_file_offset",
                        reason: format!(
                            "name at {bfo:#x}..{name_end:#x} lies outside the first cluster (or the file, {:#x} bytes)",
                            cluster.len()
                        ),
                    },
                ));
            };
            Some(name.to_vec())
        };
        Ok(Self {
            header,
            chain,
            backing_file,
        })
    }

    /// Serializes the area, laying the backing file name right after the extension chain.
    ///
    /// Updates `backing_file_offset`/`backing_file_size` to the new layout and
    /// fails with `HDR-FIRST-CLUSTER` when everything does not fit in one cluster.
    pub fn to_bytes(&mut self) -> Result<Vec<u8>> {
        let geo = self.header.geometry()?;
        let chain = self.chain.to_bytes();
        let name_at = u64::from(self.header.header_length) + chain.len() as u64;
        match &self.backing_file {
            Some(name) => {
                self.header.backing_file_offset = name_at;
                self.header.backing_file_size = u32::try_from(name.len()).unwrap_or(u32::MAX);
            }
            None => {
                self.header.backing_file_offset = 0;
                self.header.backing_file_size = 0;
            }
        }
        let mut out = self.header.to_bytes();
        out.extend_from_slice(&chain);
        if let Some(name) = &self.backing_file {
            out.extend_from_slice(name);
        }
        if out.len() as u64 > geo.cluster_size() {
            return Err(FormatError::new(
                rules::HDR_FIRST_CLUSTER,
                0,
                ErrorKind::OutOfRange {
                    field: "header area length",
                    value: out.len() as u64,
                    min: 0,
                    max: geo.cluster_size(),
                },
            ));
        }
        Ok(out)
    }

    /// The compress format extension, if present.
    pub fn compress_format(&self) -> Option<&CompressFormat> {
        self.chain.extensions.iter().find_map(|e| match e {
            Extension::CompressFormat(c) => Some(c),
            _ => None,
        })
    }

    /// The dedup extension, if present.
    pub fn dedup(&self) -> Option<&Dedup> {
        self.chain.extensions.iter().find_map(|e| match e {
            Extension::Dedup(d) => Some(d),
            _ => None,
        })
    }

    /// The backing file format, if the extension is present.
    pub fn backing_format(&self) -> Option<&str> {
        self.chain.extensions.iter().find_map(|e| match e {
            Extension::BackingFormat(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The external data file name, if the extension is present.
    pub fn data_file(&self) -> Option<&str> {
        self.chain.extensions.iter().find_map(|e| match e {
            Extension::ExternalDataFile(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// File offset of the data of the first extension of type `kind`.
    fn ext_offset(&self, kind: u32) -> u64 {
        let base = u64::from(self.header.header_length);
        self.chain
            .find(kind)
            .and_then(|(i, _)| self.chain.data_offsets(base).get(i).copied())
            .unwrap_or(base)
    }

    /// The name a feature bit is known by: this crate's name, else the image's feature name table.
    pub fn feature_name(&self, kind: FeatureKind, bit: u32) -> String {
        let bit1 = if self.dedup().is_some() {
            Bit1Meaning::Dedup
        } else {
            Bit1Meaning::Corrupt
        };
        let bit2 = if self.compress_format().is_some() {
            Bit2Meaning::CompressFormat
        } else {
            Bit2Meaning::ExternalDataFile
        };
        if let Some(name) = feat::known_name(kind, bit, bit1, bit2) {
            return name.to_string();
        }
        self.chain
            .extensions
            .iter()
            .filter_map(|e| match e {
                Extension::FeatureTable(t) => Some(t),
                _ => None,
            })
            .flatten()
            .find(|f| f.kind == kind && u32::from(f.bit) == bit)
            .map(|f| f.name())
            .unwrap_or_else(|| format!("bit {bit}"))
    }

    /// Interprets the feature bits, deciding bits 1 and 2 by the extensions present (design §3).
    pub fn features(&self) -> Result<Features> {
        let h = &self.header;
        let inc = h.incompatible_features;
        let unknown = inc & !feat::INCOMPAT_KNOWN;
        if unknown != 0 {
            let names: Vec<String> = (0..64)
                .filter(|b| unknown & (1u64 << b) != 0)
                .map(|b| self.feature_name(FeatureKind::Incompatible, b))
                .collect();
            return Err(FormatError::new(
                rules::FEAT_INCOMPAT_UNKNOWN,
                72,
                ErrorKind::UnknownIncompatible {
                    bits: unknown,
                    names: names.join(", "),
                },
            ));
        }
        let has_cf = self.compress_format().is_some();
        let has_df = self.data_file().is_some();
        if h.version == 2 && (has_cf || has_df) {
            let kind = if has_cf {
                extensions::COMPRESS_FORMAT
            } else {
                extensions::EXTERNAL_DATA_FILE
            };
            return Err(FormatError::new(
                rules::HDR_V2_FEATURES,
                self.ext_offset(kind),
                ErrorKind::Conflict(format!(
                    "a version 2 image cannot carry the {} extension: it needs incompatible bit 2",
                    extensions::Extension::kind_name(kind)
                )),
            ));
        }
        let bit2 = if inc & feat::INCOMPAT_BIT2 != 0 {
            match (has_cf, has_df) {
                (true, false) => Some(Bit2Meaning::CompressFormat),
                (false, true) => Some(Bit2Meaning::ExternalDataFile),
                (true, true) => {
                    return Err(FormatError::new(
                        rules::FEAT_BIT2,
                        72,
                        ErrorKind::Conflict(
                            "incompatible bit 2 is set with both a compress format and an external data file extension"
                                .to_string(),
                        ),
                    ))
                }
                (false, false) => {
                    return Err(FormatError::new(
                        rules::FEAT_BIT2,
                        72,
                        ErrorKind::Conflict(
                            "incompatible bit 2 is set without a compress format or external data file extension"
                                .to_string(),
                        ),
                    ))
                }
            }
        } else {
            if has_cf {
                return Err(FormatError::new(
                    rules::CF_PRESENCE,
                    self.ext_offset(extensions::COMPRESS_FORMAT),
                    ErrorKind::Conflict(
                        "compress format extension present but incompatible bit 2 is clear"
                            .to_string(),
                    ),
                ));
            }
            if has_df {
                return Err(FormatError::new(
                    rules::FEAT_BIT2,
                    self.ext_offset(extensions::EXTERNAL_DATA_FILE),
                    ErrorKind::Conflict(
                        "external data file extension present but incompatible bit 2 is clear"
                            .to_string(),
                    ),
                ));
            }
            None
        };
        let compression_type_bit = inc & feat::INCOMPAT_COMPRESSION_TYPE != 0;
        if bit2 == Some(Bit2Meaning::CompressFormat) && compression_type_bit {
            return Err(FormatError::new(
                rules::CF_CONFLICT,
                self.ext_offset(extensions::COMPRESS_FORMAT),
                ErrorKind::Conflict(
                    "compress format extension together with incompatible bit 3 (compression type)"
                        .to_string(),
                ),
            ));
        }
        let has_dedup = self.dedup().is_some();
        let bit1 = (inc & feat::INCOMPAT_BIT1 != 0).then_some(if has_dedup {
            Bit1Meaning::Dedup
        } else {
            Bit1Meaning::Corrupt
        });
        let extended_l2 = inc & feat::INCOMPAT_EXTENDED_L2 != 0;
        if extended_l2 && h.cluster_bits < 14 {
            return Err(FormatError::new(
                rules::FEAT_EXTENDED_L2,
                72,
                ErrorKind::OutOfRange {
                    field: "cluster_bits with extended L2",
                    value: h.cluster_bits.into(),
                    min: 14,
                    max: crate::units::MAX_CLUSTER_BITS.into(),
                },
            ));
        }
        let lazy = h.compatible_features & feat::COMPAT_LAZY_REFCOUNTS != 0;
        let data_file_raw = h.autoclear_features & feat::AUTOCLEAR_DATA_FILE_RAW != 0;
        if data_file_raw && bit2 != Some(Bit2Meaning::ExternalDataFile) {
            return Err(FormatError::new(
                rules::FEAT_RAW_DATA,
                88,
                ErrorKind::Conflict(
                    "auto-clear bit 1 (raw external data) is set without an external data file"
                        .to_string(),
                ),
            ));
        }
        Ok(Features {
            dirty: inc & feat::INCOMPAT_DIRTY != 0,
            bit1,
            bit2,
            dedup_stale: has_dedup && bit1.is_none(),
            compression_type_bit,
            extended_l2,
            lazy_refcounts: lazy,
            bitmaps_consistent: h.autoclear_features & feat::AUTOCLEAR_BITMAPS != 0,
            data_file_raw,
            unknown_compatible: h.compatible_features & !feat::COMPAT_KNOWN,
            unknown_autoclear: h.autoclear_features & !feat::AUTOCLEAR_KNOWN,
        })
    }

    /// Checks every header-level rule and says how the image may be opened.
    ///
    /// `max_level` looks up the highest level of a compress format name (see
    /// [`CompressFormat::check_codec`]); pass `None` to skip CF-KNOWN/CF-LEVEL,
    /// for example when only inspecting an image.
    pub fn assess(&self, max_level: Option<MaxLevelLookup<'_>>) -> Result<Assessment> {
        let mut errors = Vec::new();
        let assessment = self.assess_into(max_level, &mut errors);
        match errors.into_iter().next() {
            Some(first) => Err(first),
            None => assessment,
        }
    }

    /// Like [`HeaderArea::assess`], but goes on past a violation to report
    /// every one it can: the errors come in the order `assess` meets them
    /// (its error is the first). The assessment is there whenever the
    /// geometry and the feature bits could be read, even with errors.
    pub fn assess_all(
        &self,
        max_level: Option<MaxLevelLookup<'_>>,
    ) -> (Option<Assessment>, Vec<FormatError>) {
        let mut errors = Vec::new();
        match self.assess_into(max_level, &mut errors) {
            Ok(assessment) => (Some(assessment), errors),
            Err(stop) => {
                errors.push(stop);
                (None, errors)
            }
        }
    }

    /// The assessment, pushing every violation that does not stop it onto
    /// `errors`; an `Err` is one without which nothing further can be
    /// judged (the geometry, the feature bits), and comes after `errors`.
    fn assess_into(
        &self,
        max_level: Option<MaxLevelLookup<'_>>,
        errors: &mut Vec<FormatError>,
    ) -> Result<Assessment> {
        let geometry = self.header.geometry()?;
        errors.extend(self.header.validate_all());
        let features = self.features()?;

        let cs = geometry.cluster_size();
        let base = u64::from(self.header.header_length);
        let offsets = self.chain.data_offsets(base);
        let mut notes: Vec<Note> = self
            .chain
            .findings
            .iter()
            .map(|f| Note {
                rule: f.rule,
                offset: f.offset,
                message: f.kind.to_string(),
            })
            .collect();
        let mut read_only = None;
        for (ext, &at) in self.chain.extensions.iter().zip(&offsets) {
            match ext {
                Extension::Bitmaps(b) if features.bitmaps_consistent => {
                    errors.extend(b.validate(at, cs).err())
                }
                Extension::FullDiskEncryption(f) => errors.extend(f.validate(at, cs).err()),
                Extension::CompressFormat(c) => {
                    if let Some(lookup) = max_level {
                        match c.check_codec(at, lookup) {
                            // Decoding does not depend on the level: reads stay possible.
                            Err(e) if e.rule == rules::CF_LEVEL => {
                                read_only = Some(rules::CF_LEVEL);
                                notes.push(Note {
                                    rule: e.rule,
                                    offset: e.offset,
                                    message: format!(
                                        "{}: compressed writes would be refused",
                                        e.kind
                                    ),
                                });
                            }
                            Err(e) => errors.push(e),
                            Ok(()) => {}
                        }
                    }
                    if !c.extra_data.is_empty() {
                        notes.push(Note {
                            rule: rules::CF_EXTRA_DATA,
                            offset: at + 24,
                            message: format!(
                                "{} bytes of compress format extra data kept as is",
                                c.extra_data.len()
                            ),
                        });
                    }
                }
                Extension::Dedup(d) => {
                    errors.extend(validate_dedup(d, at, geometry, features.dedup()).err())
                }
                Extension::Unknown { kind, data } if Extension::kind_name(*kind) == "unknown" => {
                    notes.push(Note {
                        rule: rules::EXT_UNKNOWN,
                        offset: at - 8,
                        message: format!(
                            "unknown header extension {kind:#010x} ({} bytes) kept as is",
                            data.len()
                        ),
                    })
                }
                _ => {}
            }
        }
        let luks = self.header.crypt_method == CryptMethod::Luks.to_raw();
        let has_fde = self.chain.find(extensions::FULL_DISK_ENCRYPTION).is_some();
        if luks != has_fde {
            errors.push(FormatError::new(
                rules::EXT_FDE,
                32,
                ErrorKind::Conflict(format!(
                    "crypt_method {} {} a full disk encryption extension",
                    self.header.crypt_method,
                    if has_fde { "does not take" } else { "needs" }
                )),
            ));
        }
        if features.lazy_refcounts && self.header.version < 3 {
            // Unreachable from disk (v2 has no compatible bits) but reachable from a builder.
            errors.push(FormatError::new(
                rules::FEAT_LAZY_REFCOUNTS,
                80,
                ErrorKind::Conflict("lazy refcounts need version 3".to_string()),
            ));
        }
        if features.corrupt() {
            read_only = Some(rules::FEAT_CORRUPT);
            notes.push(Note {
                rule: rules::FEAT_CORRUPT,
                offset: 72,
                message:
                    "the image is marked corrupt: it may only be opened read-only until repaired"
                        .to_string(),
            });
        }
        if features.dirty {
            notes.push(Note {
                rule: rules::FEAT_DIRTY,
                offset: 72,
                message: "the dirty bit is set: refcounts must be rebuilt before writing"
                    .to_string(),
            });
        }
        if features.dedup_stale {
            notes.push(Note {
                rule: rules::DD_STALE,
                offset: self.ext_offset(extensions::DEDUP),
                message: "dedup extension present without incompatible bit 1: the table is stale and not used for writes"
                    .to_string(),
            });
        }
        let bitmaps_bit = self.header.autoclear_features & crate::features::AUTOCLEAR_BITMAPS != 0;
        if bitmaps_bit && self.chain.find(extensions::BITMAPS).is_none() {
            notes.push(Note {
                rule: rules::BMP_BIT_NO_EXT,
                offset: 88,
                message: "autoclear bit 0 (bitmaps) is set without a bitmaps extension: ignored, \
                          and cleared on the first write"
                    .to_string(),
            });
        }
        if features.unknown_compatible != 0 || features.unknown_autoclear != 0 {
            notes.push(Note {
                rule: rules::FEAT_UNKNOWN_COMPAT,
                offset: 80,
                message: format!(
                    "unknown compatible bits {:#x} ignored; unknown auto-clear bits {:#x} are cleared on write",
                    features.unknown_compatible, features.unknown_autoclear
                ),
            });
        }
        notes.sort_by_key(|n| n.offset);
        Ok(Assessment {
            geometry,
            features,
            read_only,
            notes,
        })
    }
}

fn validate_dedup(d: &Dedup, at: u64, geo: ClusterGeometry, in_use: bool) -> Result<()> {
    if in_use && d.l1_size == 0 {
        return Err(FormatError::new(
            rules::DD_PRESENCE,
            at,
            ErrorKind::Conflict(
                "deduplicated image (incompatible bit 1) without a dedup table".to_string(),
            ),
        ));
    }
    let max = MAX_L1_BYTES / 8;
    if u64::from(d.l1_size) > max {
        return Err(FormatError::new(
            rules::DD_L1_SIZE,
            at + 8,
            ErrorKind::OutOfRange {
                field: "dedup table size",
                value: d.l1_size.into(),
                min: 0,
                max,
            },
        ));
    }
    let off = d.l1_offset.0;
    if !geo.is_aligned(off) || (d.l1_size > 0 && off == 0) {
        return Err(FormatError::new(
            rules::DD_L1_OFFSET,
            at,
            ErrorKind::Misaligned {
                field: "dedup table offset",
                value: off,
                alignment: geo.cluster_size(),
            },
        ));
    }
    crate::header_checks::end_within_limit(
        rules::DD_L1_OFFSET,
        at,
        "dedup table offset",
        off,
        d.l1_size.into(),
        8,
    )
}
