//! Negative cases of the fixed header and the feature bits.

use qcow2_format::features::*;
use qcow2_format::rules::*;

use super::{case, pick, plain, CaseInput, NegativeCase};
use crate::mutate::{edit_area, put_u32, put_u64};

/// The last 64 KiB-aligned offset below 2^63: a table there of more than
/// one cluster runs past the largest offset.
const LAST_64K_CLUSTER: u64 = (i64::MAX as u64) & !0xffff;

fn bytes(b: Vec<u8>) -> Result<CaseInput, String> {
    Ok(CaseInput::Bytes(b))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    vec![
        case(HDR_MAGIC, "magic QFI\\xfa", |i| {
            let mut b = plain(i)?;
            b[3] = 0xfa;
            bytes(b)
        }),
        case(HDR_VERSION, "version 4", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 4, 4);
            bytes(b)
        }),
        case(HDR_VERSION, "version 1", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 4, 1);
            bytes(b)
        }),
        case(HDR_LENGTH, "header_length 100", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 100, 100);
            bytes(b)
        }),
        case(HDR_LENGTH, "header_length 108, not a multiple of 8", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 100, 108);
            bytes(b)
        }),
        case(HDR_LENGTH, "file cut inside the v3 header", |i| {
            let mut b = plain(i)?;
            b.truncate(90);
            bytes(b)
        }),
        case(
            HDR_LENGTH,
            "file ends after the 104 fixed bytes, before header_length",
            |i| {
                let mut b = plain(i)?;
                if u32::from_be_bytes([b[100], b[101], b[102], b[103]]) <= 104 {
                    return Err("the plain image's header_length is 104".into());
                }
                b.truncate(104);
                bytes(b)
            },
        ),
        case(
            HDR_FIRST_CLUSTER,
            "header_length beyond a 512-byte cluster",
            |i| {
                let mut b = pick(i, "a 512-byte-cluster v3 image", |a| {
                    a.header.cluster_bits == 9 && a.header.version == 3
                })?;
                put_u32(&mut b, 100, 520);
                bytes(b)
            },
        ),
        // iotest 080's extreme values.
        case(HDR_LENGTH, "header_length 0xffffffff", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 100, 0xffff_ffff);
            bytes(b)
        }),
        case(HDR_FIRST_CLUSTER, "header_length 0x7ffffff8", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 100, 0x7fff_fff8);
            bytes(b)
        }),
        case(EXT_FRAMING, "extension length 0x7fffffff", |i| {
            let mut b = plain(i)?;
            let at = u32::from_be_bytes([b[100], b[101], b[102], b[103]]) as usize;
            put_u32(&mut b, at, 0x7a7a_7a7a);
            put_u32(&mut b, at + 4, 0x7fff_ffff);
            bytes(b)
        }),
        case(
            EXT_FRAMING,
            "backing_file_offset inside an extension's framing",
            |i| {
                let mut b = plain(i)?;
                let at = u32::from_be_bytes([b[100], b[101], b[102], b[103]]) as usize;
                put_u32(&mut b, at, 0x7a7a_7a7a);
                put_u32(&mut b, at + 4, 8);
                b[at + 8..at + 16].copy_from_slice(b"base.img");
                put_u64(&mut b, 8, at as u64 + 4);
                put_u32(&mut b, 16, 4);
                bytes(b)
            },
        ),
        case(HDR_CLUSTER_BITS, "cluster_bits 8", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 20, 8);
            bytes(b)
        }),
        case(HDR_CLUSTER_BITS, "cluster_bits 22", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 20, 22);
            bytes(b)
        }),
        case(HDR_CRYPT_METHOD, "crypt_method 3", |i| {
            let mut b = plain(i)?;
            put_u32(&mut b, 32, 3);
            bytes(b)
        }),
        case(HDR_BACKING_FILE, "backing file name of 1024 bytes", |i| {
            let mut b = pick(i, "an image with a backing file", |a| {
                a.backing_file.is_some()
            })?;
            put_u32(&mut b, 16, 1024);
            bytes(b)
        }),
        case(
            HDR_BACKING_FILE,
            "backing file name past the first cluster",
            |i| {
                let mut b = plain(i)?;
                put_u64(&mut b, 8, 65536 - 4);
                put_u32(&mut b, 16, 8);
                bytes(b)
            },
        ),
        case(HDR_L1_OFFSET, "l1_table_offset off by 512", |i| {
            edit_area(&plain(i)?, |a| a.header.l1_table_offset.0 += 512).map(CaseInput::Bytes)
        }),
        case(HDR_L1_SIZE, "l1_size 0 for a non-empty disk", |i| {
            edit_area(&plain(i)?, |a| a.header.l1_size = 0).map(CaseInput::Bytes)
        }),
        case(HDR_L1_SIZE, "l1_size beyond the 32 MiB limit", |i| {
            edit_area(&plain(i)?, |a| a.header.l1_size = (32 << 20) / 8 + 1).map(CaseInput::Bytes)
        }),
        case(HDR_SIZE, "virtual size 2^63", |i| {
            edit_area(&plain(i)?, |a| a.header.size = 1 << 63).map(CaseInput::Bytes)
        }),
        case(
            HDR_SIZE,
            "virtual size needing more L1 entries than allowed",
            |i| {
                let mut b = pick(i, "a 512-byte-cluster v3 image", |a| {
                    a.header.cluster_bits == 9 && a.header.version == 3
                })?;
                // 512-byte clusters map 32 KiB per L2 table; 4M entries cover 128 GiB.
                put_u64(&mut b, 24, 256 << 30);
                bytes(b)
            },
        ),
        case(HDR_REFTABLE_OFFSET, "refcount_table_offset 0", |i| {
            edit_area(&plain(i)?, |a| a.header.refcount_table_offset.0 = 0).map(CaseInput::Bytes)
        }),
        case(HDR_REFTABLE_OFFSET, "refcount_table_offset off by 8", |i| {
            edit_area(&plain(i)?, |a| a.header.refcount_table_offset.0 += 8).map(CaseInput::Bytes)
        }),
        case(HDR_REFTABLE_CLUSTERS, "refcount_table_clusters 0", |i| {
            edit_area(&plain(i)?, |a| a.header.refcount_table_clusters = 0).map(CaseInput::Bytes)
        }),
        case(
            HDR_REFTABLE_CLUSTERS,
            "refcount table of 8 MiB + 1 cluster",
            |i| {
                edit_area(&plain(i)?, |a| a.header.refcount_table_clusters = 129)
                    .map(CaseInput::Bytes)
            },
        ),
        case(HDR_SNAPSHOTS, "nb_snapshots 65537", |i| {
            edit_area(&plain(i)?, |a| a.header.nb_snapshots = 65537).map(CaseInput::Bytes)
        }),
        case(HDR_SNAPSHOTS, "snapshots_offset not cluster aligned", |i| {
            edit_area(&plain(i)?, |a| a.header.snapshots_offset.0 = 0x10008).map(CaseInput::Bytes)
        }),
        case(HDR_L1_OFFSET, "l1_table_offset 0 with L1 entries", |i| {
            edit_area(&plain(i)?, |a| a.header.l1_table_offset.0 = 0).map(CaseInput::Bytes)
        }),
        case(HDR_L1_OFFSET, "L1 table ending past 2^63 - 1", |i| {
            edit_area(&plain(i)?, |a| {
                a.header.l1_table_offset.0 = LAST_64K_CLUSTER;
                a.header.l1_size = 8192;
            })
            .map(CaseInput::Bytes)
        }),
        case(
            HDR_REFTABLE_OFFSET,
            "refcount table ending past 2^63 - 1",
            |i| {
                edit_area(&plain(i)?, |a| {
                    a.header.refcount_table_offset.0 = LAST_64K_CLUSTER
                })
                .map(CaseInput::Bytes)
            },
        ),
        case(HDR_SNAPSHOTS, "snapshots_offset 0 with one snapshot", |i| {
            edit_area(&plain(i)?, |a| {
                a.header.nb_snapshots = 1;
                a.header.snapshots_offset.0 = 0;
            })
            .map(CaseInput::Bytes)
        }),
        case(HDR_SNAPSHOTS, "snapshot table ending past 2^63 - 1", |i| {
            edit_area(&plain(i)?, |a| {
                // 2,000 entries of at least 40 bytes do not fit in the last cluster.
                a.header.nb_snapshots = 2000;
                a.header.snapshots_offset.0 = LAST_64K_CLUSTER;
            })
            .map(CaseInput::Bytes)
        }),
        case(HDR_REFCOUNT_ORDER, "refcount_order 7", |i| {
            edit_area(&plain(i)?, |a| a.header.refcount_order = 7).map(CaseInput::Bytes)
        }),
        case(HDR_COMPRESSION_TYPE, "compression_type 2", |i| {
            edit_area(&plain(i)?, |a| {
                a.header.compression_type = 2;
                a.header.incompatible_features |= INCOMPAT_COMPRESSION_TYPE;
            })
            .map(CaseInput::Bytes)
        }),
        case(
            HDR_COMPRESSION_TYPE,
            "zstd without incompatible bit 3",
            |i| edit_area(&plain(i)?, |a| a.header.compression_type = 1).map(CaseInput::Bytes),
        ),
        case(HDR_COMPRESSION_TYPE, "incompatible bit 3 with zlib", |i| {
            edit_area(&plain(i)?, |a| {
                a.header.incompatible_features |= INCOMPAT_COMPRESSION_TYPE
            })
            .map(CaseInput::Bytes)
        }),
        case(
            HDR_V2_FEATURES,
            "v2 image with a compress format extension",
            |i| {
                let b = pick(i, "a version 2 image", |a| a.header.version == 2)?;
                crate::seed_images::with_compress_format(&b, "zlib", 0).map(CaseInput::Bytes)
            },
        ),
        case(FEAT_INCOMPAT_UNKNOWN, "incompatible bit 10", |i| {
            edit_area(&plain(i)?, |a| a.header.incompatible_features |= 1 << 10)
                .map(CaseInput::Bytes)
        })
        .saying(&["bit 10"]),
        case(FEAT_INCOMPAT_UNKNOWN, "incompatible bits 10 and 40", |i| {
            edit_area(&plain(i)?, |a| {
                a.header.incompatible_features |= 1 << 10 | 1 << 40
            })
            .map(CaseInput::Bytes)
        })
        .saying(&["bit 10", "bit 40"]),
        case(
            FEAT_INCOMPAT_UNKNOWN,
            "incompatible bit 10, named by the feature name table",
            |i| {
                let entry = qcow2_format::extensions::FeatureName::new(
                    FeatureKind::Incompatible,
                    10,
                    "future-bit",
                );
                let mut found = false;
                let b = edit_area(&plain(i)?, |a| {
                    a.header.incompatible_features |= 1 << 10;
                    for e in &mut a.chain.extensions {
                        if let qcow2_format::extensions::Extension::FeatureTable(t) = e {
                            t.push(entry.clone());
                            found = true;
                        }
                    }
                })?;
                if !found {
                    return Err("the plain image has no feature name table".into());
                }
                Ok(CaseInput::Bytes(b))
            },
        )
        .saying(&["future-bit"]),
        case(FEAT_DIRTY, "dirty bit set", |i| {
            edit_area(&plain(i)?, |a| {
                a.header.incompatible_features |= INCOMPAT_DIRTY
            })
            .map(CaseInput::Bytes)
        }),
        case(FEAT_CORRUPT, "bit 1 without a dedup extension", |i| {
            edit_area(&plain(i)?, |a| {
                a.header.incompatible_features |= INCOMPAT_BIT1
            })
            .map(CaseInput::Bytes)
        }),
        case(FEAT_BIT2, "bit 2 with neither extension", |i| {
            edit_area(&plain(i)?, |a| {
                a.header.incompatible_features |= INCOMPAT_BIT2
            })
            .map(CaseInput::Bytes)
        })
        .saying(&["without a compress format or external data file extension"]),
        case(
            FEAT_BIT2,
            "external data file extension with bit 2 clear",
            |i| {
                let b = pick(i, "an image with an external data file", |a| {
                    a.data_file().is_some()
                })?;
                edit_area(&b, |a| {
                    a.header.incompatible_features &= !INCOMPAT_BIT2;
                    a.header.autoclear_features &= !AUTOCLEAR_DATA_FILE_RAW;
                })
                .map(CaseInput::Bytes)
            },
        ),
        case(FEAT_EXTENDED_L2, "extended L2 with 8 KiB clusters", |i| {
            let b = pick(i, "an extended L2 image", |a| {
                a.header.incompatible_features & INCOMPAT_EXTENDED_L2 != 0
            })?;
            edit_area(&b, |a| {
                a.header.cluster_bits = 13;
                // Keep l1_size sufficient so only the extended L2 rule breaks.
                let per_l1 = (1u64 << 13) / 16 * (1 << 13);
                a.header.l1_size =
                    u32::try_from(a.header.size.div_ceil(per_l1)).unwrap_or(u32::MAX);
            })
            .map(CaseInput::Bytes)
        }),
        case(
            FEAT_LAZY_REFCOUNTS,
            "lazy refcounts requested on a version 2 header",
            |i| {
                let b = pick(i, "a version 2 image", |a| a.header.version == 2)?;
                let mut area = qcow2_format::HeaderArea::parse(&b).map_err(|e| e.to_string())?;
                area.header.compatible_features |= COMPAT_LAZY_REFCOUNTS;
                Ok(CaseInput::Area(Box::new(area)))
            },
        ),
        case(FEAT_UNKNOWN_COMPAT, "unknown compatible bit 5", |i| {
            edit_area(&plain(i)?, |a| a.header.compatible_features |= 1 << 5).map(CaseInput::Bytes)
        }),
        case(FEAT_UNKNOWN_COMPAT, "unknown auto-clear bit 7", |i| {
            edit_area(&plain(i)?, |a| a.header.autoclear_features |= 1 << 7).map(CaseInput::Bytes)
        }),
        case(
            FEAT_RAW_DATA,
            "raw external data bit without a data file",
            |i| {
                edit_area(&plain(i)?, |a| {
                    a.header.autoclear_features |= AUTOCLEAR_DATA_FILE_RAW
                })
                .map(CaseInput::Bytes)
            },
        ),
    ]
}
