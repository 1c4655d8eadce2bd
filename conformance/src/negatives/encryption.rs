//! Negative cases of encrypted images: the LUKS header the encryption
//! extension points at, its describing fields and the area around it.

use qcow2_format::extensions::Extension;
use qcow2_format::rules::*;
use qcow2_format::HeaderArea;

use super::{case, CaseInput, NegativeCase};
use crate::mutate::put_u32;

/// The LUKS golden with the 32-byte NUL-padded text field at `at` of its
/// header set to `text`: bytes 8-39 hold the cipher name, 40-71 the mode
/// and 72-103 the hash.
fn luks_text(
    images: &[crate::corpus::TestImage],
    at: usize,
    text: &'static str,
) -> Result<CaseInput, String> {
    luks(images, |b, area| {
        b[area + at..area + at + 32].fill(0);
        b[area + at..area + at + text.len()].copy_from_slice(text.as_bytes());
        Ok(())
    })
}

pub(super) fn cases() -> Vec<NegativeCase> {
    vec![
        case(ENC_LUKS_HEADER, "LUKS magic broken", |i| {
            luks(i, |b, area| {
                b[area] = b'l';
                Ok(())
            })
        }),
        case(ENC_LUKS_HEADER, "LUKS version 2 in a LUKS1 header", |i| {
            luks(i, |b, area| {
                b[area + 7] = 2;
                Ok(())
            })
        }),
        case(ENC_LUKS_HEADER, "key slot state 0", |i| {
            luks(i, |b, area| {
                b[area + 208..area + 212].fill(0);
                Ok(())
            })
        }),
        case(ENC_LUKS_HEADER, "key material past the LUKS area", |i| {
            luks(i, |b, area| {
                // Slot 0 in use: move its material to the last sector of the area.
                let sector = (area_len(b)? / 512 - 1) as u32;
                crate::mutate::put_u32(b, area + 208 + 40, sector);
                Ok(())
            })
        }),
        case(ENC_AREA, "non-zero byte after the LUKS area", |i| {
            luks(i, |b, area| {
                let end = area + area_len(b)? as usize;
                b[end + 100] = 0x5a;
                Ok(())
            })
        }),
        case(
            ENC_PAYLOAD_OFFSET,
            "payload offset inside key slot 7's material",
            |i| {
                luks(i, |b, area| {
                    put_u32(b, area + 104, 4000);
                    Ok(())
                })
            },
        ),
        case(
            ENC_PAYLOAD_OFFSET,
            "payload offset past the LUKS area",
            |i| {
                luks(i, |b, area| {
                    let sectors = (area_len(b)? / 512 + 1) as u32;
                    put_u32(b, area + 104, sectors);
                    Ok(())
                })
            },
        ),
        case(ENC_LUKS_CIPHER, "cipher name rot13", |i| {
            luks_text(i, 8, "rot13")
        }),
        case(ENC_LUKS_CIPHER, "IV generator plain65", |i| {
            luks_text(i, 40, "xts-plain65")
        }),
        case(ENC_LUKS_CIPHER, "hash crc32", |i| luks_text(i, 72, "crc32")),
        case(ENC_LUKS_CIPHER, "block mode ofb", |i| {
            luks_text(i, 40, "ofb-plain64")
        }),
        case(ENC_LUKS_CIPHER, "mode xts without an IV generator", |i| {
            luks_text(i, 40, "xts")
        }),
        case(ENC_LUKS_CIPHER, "essiv with the hash crc32", |i| {
            luks_text(i, 40, "xts-essiv:crc32")
        }),
        case(
            ENC_LUKS_CIPHER,
            "a 64-byte key for AES-CBC (twice a key is for xts only)",
            |i| luks_text(i, 40, "cbc-plain64"),
        ),
        case(ENC_LUKS_CIPHER, "a 40-byte key for AES-XTS", |i| {
            luks(i, |b, area| {
                put_u32(b, area + 108, 40);
                Ok(())
            })
        }),
    ]
}

/// The length of the LUKS area of an image with an encryption header pointer.
fn area_len(bytes: &[u8]) -> Result<u64, String> {
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    a.chain
        .extensions
        .iter()
        .find_map(|e| match e {
            Extension::FullDiskEncryption(f) => Some(f.length.get()),
            _ => None,
        })
        .ok_or_else(|| "no encryption header pointer".to_string())
}

/// The LUKS golden with `edit` applied, given the LUKS area's file offset.
fn luks(
    images: &[crate::corpus::TestImage],
    edit: impl FnOnce(&mut Vec<u8>, usize) -> Result<(), String>,
) -> Result<CaseInput, String> {
    let mut b = crate::negatives::named(images, "luks")?;
    let a = HeaderArea::parse(&b).map_err(|e| e.to_string())?;
    let at = a
        .chain
        .extensions
        .iter()
        .find_map(|e| match e {
            Extension::FullDiskEncryption(f) => Some(f.offset.get() as usize),
            _ => None,
        })
        .ok_or("the luks golden has no encryption header pointer")?;
    edit(&mut b, at)?;
    Ok(CaseInput::Bytes(b))
}
