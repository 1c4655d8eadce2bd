//! Negative cases of the seed extensions: compress format (CF-*) and deduplication (DD-*).

use qcow2_format::extensions::{self as ext, Extension};
use qcow2_format::features::*;
use qcow2_format::rules::*;
use qcow2_format::HeaderArea;

use super::{case, named, CaseInput, NegativeCase};
use crate::mutate::{edit_area, get_u64, put_u32, put_u64};

/// The zlib default-level image.
fn cf(images: &[crate::corpus::TestImage]) -> Result<Vec<u8>, String> {
    named(images, "seed-cf-zlib-default")
}

/// File offset of the data of extension `kind`.
fn ext_data_at(bytes: &[u8], kind: u32) -> Result<usize, String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let (i, _) = a.chain.find(kind).ok_or("extension missing")?;
    let offsets = a.chain.data_offsets(a.header.header_length.into());
    Ok(offsets[i] as usize)
}

fn poke(images: &[crate::corpus::TestImage], rel: usize, value: u8) -> Result<CaseInput, String> {
    let mut b = cf(images)?;
    let at = ext_data_at(&b, ext::COMPRESS_FORMAT)?;
    b[at + rel] = value;
    Ok(CaseInput::Bytes(b))
}

fn with_cf(
    images: &[crate::corpus::TestImage],
    f: impl FnOnce(&mut ext::CompressFormat),
) -> Result<CaseInput, String> {
    with_cf_of(images, "zlib", f)
}

/// Edits the compress format extension of the seed image of codec `name`
/// (default level).
fn with_cf_of(
    images: &[crate::corpus::TestImage],
    name: &str,
    f: impl FnOnce(&mut ext::CompressFormat),
) -> Result<CaseInput, String> {
    let base = named(
        images,
        &crate::seed_images::compress_format_image_name(name, 0),
    )?;
    let mut f = Some(f);
    edit_area(&base, |a| {
        for e in &mut a.chain.extensions {
            if let (Extension::CompressFormat(c), Some(f)) = (e, f.take()) {
                f(c);
            }
        }
    })
    .map(CaseInput::Bytes)
}

fn dedup(images: &[crate::corpus::TestImage]) -> Result<Vec<u8>, String> {
    named(images, "seed-dedup")
}

/// File offset of the dedup L1 table and of the first L2 dedup cluster.
fn dedup_tables(bytes: &[u8]) -> Result<(usize, usize), String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let d = a.dedup().ok_or("no dedup extension")?;
    let l1 = d.l1_offset.get() as usize;
    let l2 = (0..d.l1_size as usize)
        .map(|k| get_u64(bytes, l1 + 8 * k))
        .find(|&e| e != 0)
        .ok_or("empty dedup L1")?;
    Ok((l1, l2 as usize))
}

pub(super) fn cases() -> Vec<NegativeCase> {
    vec![
        case(
            CF_PRESENCE,
            "compress format extension with bit 2 clear",
            |i| {
                edit_area(&cf(i)?, |a| {
                    a.header.incompatible_features &= !INCOMPAT_BIT2
                })
                .map(CaseInput::Bytes)
            },
        ),
        case(CF_LENGTH, "extra_data_size 8 without extra data", |i| {
            let mut b = cf(i)?;
            let at = ext_data_at(&b, ext::COMPRESS_FORMAT)?;
            put_u32(&mut b, at + 20, 8);
            Ok(CaseInput::Bytes(b))
        }),
        case(CF_LENGTH, "extension of 16 bytes", |i| {
            let mut b = cf(i)?;
            let at = ext_data_at(&b, ext::COMPRESS_FORMAT)?;
            put_u32(&mut b, at - 4, 16);
            // The old bytes 16..24 become this extension's padding, which must be zero.
            b[at + 16..at + 24].fill(0);
            Ok(CaseInput::Bytes(b))
        }),
        case(
            CF_LENGTH,
            "non-zero byte in padding the length counts",
            |i| {
                let CaseInput::Bytes(mut b) = with_cf(i, |c| {
                    c.extra_data = vec![1, 2, 3];
                    c.length_includes_padding = true;
                })?
                else {
                    return Err("not bytes".into());
                };
                let at = ext_data_at(&b, ext::COMPRESS_FORMAT)?;
                // 24 + 3 data bytes, then the 5 counted padding bytes.
                b[at + 31] = 0x80;
                Ok(CaseInput::Bytes(b))
            },
        ),
        case(CF_NAME, "garbage after the terminating NUL", |i| {
            poke(i, 10, b'x')
        }),
        case(CF_NAME, "empty name", |i| poke(i, 0, 0)),
        case(CF_KNOWN, "unknown format lzma", |i| {
            with_cf(i, |c| c.name = "lzma".into())
        })
        .saying(&["lzma"]),
        // A 16-byte name fills the field without a NUL: CF-NAME accepts it,
        // so only its being unknown may be reported.
        case(
            CF_KNOWN,
            "unknown format abcdefghijklmnop (16 bytes, no NUL)",
            |i| with_cf(i, |c| c.name = "abcdefghijklmnop".into()),
        )
        .saying(&["abcdefghijklmnop"]),
        case(CF_LEVEL, "zlib level 200", |i| {
            with_cf(i, |c| c.level = 200)
        }),
        case(CF_LEVEL, "zlib level 10, one above its maximum", |i| {
            with_cf(i, |c| c.level = 10)
        }),
        case(CF_LEVEL, "zstd level 23, one above its maximum", |i| {
            with_cf_of(i, "zstd", |c| c.level = 23)
        }),
        case(CF_LEVEL, "brotli level 13, one above its maximum", |i| {
            with_cf_of(i, "brotli", |c| c.level = 13)
        }),
        case(CF_RESERVED, "byte 18 set", |i| poke(i, 18, 1)),
        case(CF_EXTRA_DATA, "8 bytes of extra data", |i| {
            with_cf(i, |c| c.extra_data = vec![1, 2, 3, 4, 5, 6, 7, 8])
        }),
        // CF-LENGTH's other reading: the stored length counts the padding
        // (zeros). Readers must accept it and a rewrite keep it, which the
        // ignore-and-keep consequence checks across a resize.
        case(
            CF_EXTRA_DATA,
            "3 bytes of extra data, length counting the padding",
            |i| {
                let input = with_cf(i, |c| {
                    c.extra_data = vec![1, 2, 3];
                    c.length_includes_padding = true;
                })?;
                let CaseInput::Bytes(b) = &input else {
                    return Err("with_cf returns bytes".into());
                };
                let a = HeaderArea::parse(b).map_err(|e| e.to_string())?;
                match a.compress_format() {
                    Some(c) if c.length_includes_padding => Ok(input),
                    _ => Err("the stored length does not count the padding".into()),
                }
            },
        ),
        case(
            CF_CONFLICT,
            "compress format with incompatible bit 3",
            |i| {
                edit_area(&cf(i)?, |a| {
                    a.header.incompatible_features |= INCOMPAT_COMPRESSION_TYPE;
                    a.header.compression_type = 1;
                })
                .map(CaseInput::Bytes)
            },
        ),
        case(
            DD_PRESENCE,
            "bit 1 with a dedup extension but no table",
            |i| {
                edit_area(&dedup(i)?, |a| {
                    for e in &mut a.chain.extensions {
                        if let Extension::Dedup(d) = e {
                            d.l1_size = 0;
                            d.l1_offset.0 = 0;
                        }
                    }
                })
                .map(CaseInput::Bytes)
            },
        ),
        case(DD_STALE, "dedup extension with bit 1 clear", |i| {
            edit_area(&dedup(i)?, |a| {
                a.header.incompatible_features &= !INCOMPAT_BIT1
            })
            .map(CaseInput::Bytes)
        }),
        case(DD_LENGTH, "dedup extension of 16 bytes", |i| {
            let mut b = dedup(i)?;
            let at = ext_data_at(&b, ext::DEDUP)?;
            put_u32(&mut b, at - 4, 16);
            Ok(CaseInput::Bytes(b))
        }),
        case(DD_L1_OFFSET, "dedup table offset off by 8", |i| {
            let mut b = dedup(i)?;
            let at = ext_data_at(&b, ext::DEDUP)?;
            let off = get_u64(&b, at);
            put_u64(&mut b, at, off + 8);
            Ok(CaseInput::Bytes(b))
        }),
        case(DD_L1_OFFSET, "dedup table offset 0 with entries", |i| {
            let mut b = dedup(i)?;
            let at = ext_data_at(&b, ext::DEDUP)?;
            put_u64(&mut b, at, 0);
            Ok(CaseInput::Bytes(b))
        }),
        case(DD_L1_OFFSET, "dedup table ending past 2^63 - 1", |i| {
            let mut b = dedup(i)?;
            let at = ext_data_at(&b, ext::DEDUP)?;
            put_u64(&mut b, at, (i64::MAX as u64) & !0xffff);
            put_u32(&mut b, at + 8, 8192);
            Ok(CaseInput::Bytes(b))
        }),
        case(DD_L1_SIZE, "dedup table of 4M + 1 entries", |i| {
            let mut b = dedup(i)?;
            let at = ext_data_at(&b, ext::DEDUP)?;
            put_u32(&mut b, at + 8, (4 << 20) + 1);
            Ok(CaseInput::Bytes(b))
        }),
        case(DD_L1_ENTRY, "dedup L1 entry off by 512", |i| {
            let mut b = dedup(i)?;
            let (l1, l2) = dedup_tables(&b)?;
            put_u64(&mut b, l1, l2 as u64 + 512);
            // Nothing names the level-2 cluster any more: free it, so that
            // only the entry itself is wrong.
            crate::mutate::adjust_refcount(&mut b, l2 as u64, -1)?;
            Ok(CaseInput::Bytes(b))
        }),
        case(DD_L2_LAYOUT, "non-zero byte in the dedup L2 tail", |i| {
            let mut b = dedup(i)?;
            let (_, l2) = dedup_tables(&b)?;
            // 64 KiB holds 1638 entries of 40 bytes; the last 16 bytes are the tail.
            b[l2 + 65535] = 1;
            Ok(CaseInput::Bytes(b))
        }),
        case(
            DD_ENTRY,
            "dedup entry with an unaligned guest offset",
            |i| {
                let mut b = dedup(i)?;
                let (_, l2) = dedup_tables(&b)?;
                let entry = (l2..l2 + 65536 - 40)
                    .step_by(40)
                    .find(|&e| b[e..e + 40].iter().any(|&x| x != 0))
                    .ok_or("no non-empty dedup entry")?;
                put_u64(&mut b, entry + 32, 4096);
                Ok(CaseInput::Bytes(b))
            },
        ),
    ]
}
