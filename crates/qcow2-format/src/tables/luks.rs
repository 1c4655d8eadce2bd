//! The LUKS (version 1) header at the start of the area the full disk
//! encryption extension names (rule ENC-LUKS-HEADER). Only the layout is
//! checked: this crate never decrypts.

use crate::error::{ErrorKind, FormatError, Result};
use crate::rules;

/// Bytes of the LUKS partition header (with its eight key slots).
pub const HEADER_LEN: usize = 592;
/// "LUKS" followed by 0xBA 0xBE.
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// The LUKS version qcow2 stores.
pub const VERSION: u16 = 1;
/// Key slot state: in use.
pub const SLOT_ENABLED: u32 = 0x00ac_71f3;
/// Key slot state: free.
pub const SLOT_DISABLED: u32 = 0x0000_dead;
/// Key slots in a LUKS1 header.
pub const SLOTS: usize = 8;
/// Offset of the first key slot.
const SLOTS_AT: usize = 208;
/// Bytes of one key slot.
const SLOT_LEN: usize = 48;
/// LUKS sectors are 512 bytes.
const SECTOR: u64 = 512;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One key slot of a LUKS1 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySlot {
    /// Whether the slot holds a key.
    pub active: bool,
    /// PBKDF2 iterations of the slot's passphrase.
    pub iterations: u32,
    /// Where the key material starts, in bytes from the start of the LUKS area.
    pub key_offset: u64,
    /// Anti-forensic stripes of the key material.
    pub stripes: u32,
}

/// The fields of a LUKS1 header that describe it (no key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuksHeader {
    /// Cipher name, for example "aes".
    pub cipher_name: String,
    /// Cipher mode with the IV generator, for example "xts-plain64".
    pub cipher_mode: String,
    /// Hash of the key derivation, for example "sha256".
    pub hash_spec: String,
    /// Where the encrypted payload would start, in bytes from the area start.
    pub payload_offset: u64,
    /// Length of the master key in bytes.
    pub key_bytes: u32,
    /// PBKDF2 iterations of the master key digest.
    pub master_key_iterations: u32,
    /// The header's UUID text.
    pub uuid: String,
    /// The eight key slots.
    pub slots: [KeySlot; SLOTS],
}

/// A NUL-padded text field.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Reads the describing fields of the LUKS header `area` (file offset
/// `at`, an area of `area_len` bytes), after [`check_header`].
pub fn parse_header(area: &[u8], at: u64, area_len: u64) -> Result<LuksHeader> {
    check_header(area, at, area_len)?;
    let slot = |k: usize| {
        let s = SLOTS_AT + k * SLOT_LEN;
        KeySlot {
            active: be32(area, s) == SLOT_ENABLED,
            iterations: be32(area, s + 4),
            key_offset: u64::from(be32(area, s + 40)) * SECTOR,
            stripes: be32(area, s + 44),
        }
    };
    Ok(LuksHeader {
        cipher_name: text(&area[8..40]),
        cipher_mode: text(&area[40..72]),
        hash_spec: text(&area[72..104]),
        payload_offset: u64::from(be32(area, 104)) * SECTOR,
        key_bytes: be32(area, 108),
        master_key_iterations: be32(area, 164),
        uuid: text(&area[168..208]),
        slots: std::array::from_fn(slot),
    })
}

/// Checks the LUKS header `area` (the first bytes of the LUKS area, at
/// file offset `at`) against an area of `area_len` bytes: magic, version,
/// key slot states, and every enabled slot's key material inside the area.
pub fn check_header(area: &[u8], at: u64, area_len: u64) -> Result<()> {
    let bad = |off: usize, reason: String| {
        Err(FormatError::new(
            rules::ENC_LUKS_HEADER,
            at + off as u64,
            ErrorKind::Malformed {
                field: "LUKS header",
                reason,
            },
        ))
    };
    if area.len() < HEADER_LEN || area_len < HEADER_LEN as u64 {
        return bad(
            0,
            format!(
                "{} bytes hold no {HEADER_LEN}-byte LUKS header",
                area.len().min(area_len as usize)
            ),
        );
    }
    if area[..6] != MAGIC {
        return bad(0, "the LUKS magic is missing".to_string());
    }
    let version = u16::from_be_bytes([area[6], area[7]]);
    if version != VERSION {
        return bad(6, format!("LUKS version {version}, not {VERSION}"));
    }
    let key_bytes = u64::from(be32(area, 108));
    for slot in 0..SLOTS {
        let s = SLOTS_AT + slot * SLOT_LEN;
        match be32(area, s) {
            SLOT_DISABLED => {}
            SLOT_ENABLED => {
                let start = u64::from(be32(area, s + 40)) * SECTOR;
                let stripes = u64::from(be32(area, s + 44));
                // Hostile sizes may pass 2^64: such a slot ends outside any area.
                let end = (key_bytes * stripes)
                    .div_ceil(SECTOR)
                    .checked_mul(SECTOR)
                    .and_then(|len| start.checked_add(len));
                let inside = start >= HEADER_LEN as u64 && end.is_some_and(|e| e <= area_len);
                if !inside {
                    let end = end.map_or("past 2^64".to_string(), |e| format!("{e:#x}"));
                    return bad(
                        s + 40,
                        format!(
                            "key slot {slot}'s material at {start:#x}..{end} of the area is not \
                             between the header and the area's end ({area_len:#x})"
                        ),
                    );
                }
            }
            other => return bad(s, format!("key slot {slot} has the state {other:#x}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..6].copy_from_slice(&MAGIC);
        h[6..8].copy_from_slice(&VERSION.to_be_bytes());
        h[108..112].copy_from_slice(&32u32.to_be_bytes());
        for slot in 0..SLOTS {
            let s = SLOTS_AT + slot * SLOT_LEN;
            h[s..s + 4].copy_from_slice(&SLOT_DISABLED.to_be_bytes());
        }
        let s = SLOTS_AT;
        h[s..s + 4].copy_from_slice(&SLOT_ENABLED.to_be_bytes());
        h[s + 40..s + 44].copy_from_slice(&8u32.to_be_bytes());
        h[s + 44..s + 48].copy_from_slice(&4000u32.to_be_bytes());
        h
    }

    #[test]
    fn layout_errors_name_the_rule_and_offset() {
        let good = header();
        // Slot 0: 32 x 4000 bytes (250 sectors) from sector 8 end at 0x20400.
        check_header(&good, 0x1000, 0x20400).unwrap();
        assert_eq!(
            check_header(&good, 0x1000, 0x203ff).unwrap_err().offset,
            0x1000 + 248
        );
        let mut magic = good.clone();
        magic[0] = b'l';
        let mut version = good.clone();
        version[7] = 2;
        let mut state = good.clone();
        state[SLOTS_AT + SLOT_LEN..SLOTS_AT + SLOT_LEN + 4].fill(0);
        for (bytes, off) in [(magic, 0), (version, 6), (state, SLOTS_AT + SLOT_LEN)] {
            let err = check_header(&bytes, 0x1000, 0x20400).unwrap_err();
            assert_eq!(
                (err.rule, err.offset),
                (rules::ENC_LUKS_HEADER, 0x1000 + off as u64)
            );
        }
        assert!(check_header(&good[..100], 0, 0x20400).is_err());
        let mut huge = good.clone();
        huge[108..112].fill(0xff);
        huge[SLOTS_AT + 40..SLOTS_AT + 48].fill(0xff);
        assert!(check_header(&huge, 0, u64::MAX).is_err());
        let parsed = parse_header(&good, 0x1000, 0x20400).unwrap();
        assert_eq!(parsed.key_bytes, 32);
        assert!(parsed.slots[0].active && !parsed.slots[1].active);
        assert_eq!(
            (parsed.slots[0].key_offset, parsed.slots[0].stripes),
            (4096, 4000)
        );
    }
}
