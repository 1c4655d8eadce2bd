//! Negative cases of the header extension chain and the upstream extensions.

use qcow2_format::extensions::{self as ext, Extension};
use qcow2_format::rules::*;
use qcow2_format::HeaderArea;

use super::{case, named, pick, plain, CaseInput, NegativeCase};
use crate::mutate::{edit_area, put_u32};

/// File offset of the first extension's type field (the chain starts at header_length).
fn first_ext_at(bytes: &[u8]) -> Result<usize, String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    Ok(a.header.header_length as usize)
}

/// The plain image with `e` as its first extension.
fn plain_with(images: &[crate::corpus::TestImage], e: Extension) -> Result<Vec<u8>, String> {
    edit_area(&plain(images)?, |a| a.chain.extensions.insert(0, e))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    let mut all = chain_cases();
    all.extend(duplicate_cases());
    all
}

/// Image `name` with a second copy of its extension of type `kind`
/// appended to the chain.
fn twice(images: &[crate::corpus::TestImage], name: &str, kind: u32) -> Result<CaseInput, String> {
    let b = named(images, name)?;
    let a = HeaderArea::parse(&b).map_err(|e| e.to_string())?;
    let (_, e) = a
        .chain
        .find(kind)
        .ok_or_else(|| format!("{name} has no extension {kind:#x}"))?;
    let e = e.clone();
    edit_area(&b, |a| a.chain.extensions.push(e)).map(CaseInput::Bytes)
}

/// One case per extension type this build knows but the backing format
/// (which `chain_cases` duplicates): each appears a second time.
fn duplicate_cases() -> Vec<NegativeCase> {
    vec![
        case(EXT_DUPLICATE, "two feature name tables", |i| {
            twice(i, "default", ext::FEATURE_TABLE)
        }),
        case(EXT_DUPLICATE, "two bitmaps extensions", |i| {
            twice(i, "bitmaps", ext::BITMAPS)
        }),
        case(EXT_DUPLICATE, "two encryption header pointers", |i| {
            twice(i, "luks", ext::FULL_DISK_ENCRYPTION)
        }),
        case(EXT_DUPLICATE, "two external data file names", |i| {
            edit_area(&named(i, "data-file")?, |a| {
                a.chain
                    .extensions
                    .push(Extension::ExternalDataFile("x".into()))
            })
            .map(CaseInput::Bytes)
        }),
        case(EXT_DUPLICATE, "two compress format extensions", |i| {
            twice(i, "seed-cf-zlib-default", ext::COMPRESS_FORMAT)
        }),
        case(EXT_DUPLICATE, "two dedup extensions", |i| {
            twice(i, "seed-dedup", ext::DEDUP)
        }),
    ]
}

fn chain_cases() -> Vec<NegativeCase> {
    vec![
        case(EXT_FRAMING, "extension length past the cluster end", |i| {
            let mut b = plain_with(
                i,
                Extension::Unknown {
                    kind: 0x7a7a_7a7a,
                    data: vec![1; 8],
                },
            )?;
            let at = first_ext_at(&b)?;
            put_u32(&mut b, at + 4, 0x0010_0000);
            Ok(CaseInput::Bytes(b))
        }),
        case(
            EXT_PADDING,
            "non-zero padding after the backing format name",
            |i| {
                let mut b = pick(i, "an image with a backing format", |a| {
                    a.backing_format().is_some_and(|f| f.len() % 8 != 0)
                })?;
                let a = HeaderArea::parse(&b).map_err(|e| e.to_string())?;
                let (k, e) = a
                    .chain
                    .find(ext::BACKING_FORMAT)
                    .ok_or("no backing format")?;
                let at = a.chain.data_offsets(a.header.header_length.into())[k] as usize;
                b[at + e.data().len()] = 0xff;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(EXT_DUPLICATE, "two backing format extensions", |i| {
            let b = pick(i, "an image with a backing format", |a| {
                a.backing_format().is_some()
            })?;
            edit_area(&b, |a| {
                a.chain
                    .extensions
                    .insert(0, Extension::BackingFormat("raw".into()))
            })
            .map(CaseInput::Bytes)
        }),
        case(EXT_UNKNOWN, "an unknown extension", |i| {
            plain_with(
                i,
                Extension::Unknown {
                    kind: 0x1234_abcd,
                    data: b"keep me".to_vec(),
                },
            )
            .map(CaseInput::Bytes)
        }),
        case(EXT_BACKING_FORMAT, "empty backing format", |i| {
            let b = pick(i, "an image with a backing format", |a| {
                a.backing_format().is_some()
            })?;
            edit_area(&b, |a| {
                for e in &mut a.chain.extensions {
                    if let Extension::BackingFormat(_) = e {
                        *e = Extension::Unknown {
                            kind: ext::BACKING_FORMAT,
                            data: Vec::new(),
                        };
                    }
                }
            })
            .map(CaseInput::Bytes)
        }),
        case(EXT_FEATURE_TABLE, "feature table of 47 bytes", |i| {
            plain_with(
                i,
                Extension::Unknown {
                    kind: ext::FEATURE_TABLE,
                    data: vec![0; 47],
                },
            )
            .map(CaseInput::Bytes)
        }),
        case(EXT_FEATURE_TABLE, "feature table entry of type 3", |i| {
            let mut entry = vec![0u8; 48];
            entry[0] = 3;
            entry[2..6].copy_from_slice(b"odd!");
            plain_with(
                i,
                Extension::Unknown {
                    kind: ext::FEATURE_TABLE,
                    data: entry,
                },
            )
            .map(CaseInput::Bytes)
        }),
        case(EXT_BITMAPS, "bitmaps extension with nb_bitmaps 0", |i| {
            let b = pick(i, "an image with bitmaps", |a| {
                a.chain.find(ext::BITMAPS).is_some()
            })?;
            edit_area(&b, |a| {
                for e in &mut a.chain.extensions {
                    if let Extension::Bitmaps(bm) = e {
                        bm.nb_bitmaps = 0.into();
                    }
                }
            })
            .map(CaseInput::Bytes)
        }),
        case(EXT_BITMAPS, "bitmaps extension of 16 bytes", |i| {
            let b = pick(i, "an image with bitmaps", |a| {
                a.chain.find(ext::BITMAPS).is_some()
            })?;
            edit_area(&b, |a| {
                for e in &mut a.chain.extensions {
                    if let Extension::Bitmaps(_) = e {
                        *e = Extension::Unknown {
                            kind: ext::BITMAPS,
                            data: vec![0; 16],
                        };
                    }
                }
            })
            .map(CaseInput::Bytes)
        }),
        case(
            EXT_FDE,
            "crypt_method 2 without the encryption extension",
            |i| edit_area(&plain(i)?, |a| a.header.crypt_method = 2).map(CaseInput::Bytes),
        ),
        case(EXT_FDE, "encryption extension with crypt_method 0", |i| {
            with_fde(i, 0, fde_data(0x10000, 0x1000))
        }),
        case(EXT_FDE, "LUKS header offset 0", |i| {
            with_fde(i, 2, fde_data(0, 0x1000))
        }),
        case(EXT_FDE, "LUKS header offset off by 512", |i| {
            with_fde(i, 2, fde_data(0x10200, 0x1000))
        }),
        case(EXT_FDE, "LUKS header length 0", |i| {
            with_fde(i, 2, fde_data(0x10000, 0))
        }),
        case(EXT_FDE, "encryption extension of 8 bytes", |i| {
            with_fde(i, 2, fde_data(0x10000, 0x1000)[..8].to_vec())
        }),
        case(EXT_DATA_FILE, "external data file name with a NUL", |i| {
            let b = pick(i, "an image with an external data file", |a| {
                a.data_file().is_some()
            })?;
            edit_area(&b, |a| {
                for e in &mut a.chain.extensions {
                    if let Extension::ExternalDataFile(_) = e {
                        *e = Extension::Unknown {
                            kind: ext::EXTERNAL_DATA_FILE,
                            data: b"a\0b".to_vec(),
                        };
                    }
                }
            })
            .map(CaseInput::Bytes)
        }),
    ]
}

/// The 16 data bytes of an encryption header pointer.
fn fde_data(offset: u64, length: u64) -> Vec<u8> {
    let mut data = offset.to_be_bytes().to_vec();
    data.extend(length.to_be_bytes());
    data
}

/// The plain image with `crypt_method` and an encryption header pointer
/// extension holding `data` (raw, so that a wrong length can be written).
fn with_fde(
    images: &[crate::corpus::TestImage],
    crypt_method: u32,
    data: Vec<u8>,
) -> Result<CaseInput, String> {
    edit_area(&plain(images)?, |a| {
        a.header.crypt_method = crypt_method;
        a.chain.extensions.push(Extension::Unknown {
            kind: ext::FULL_DISK_ENCRYPTION,
            data,
        });
    })
    .map(CaseInput::Bytes)
}
