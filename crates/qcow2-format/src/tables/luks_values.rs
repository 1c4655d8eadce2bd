//! What the describing fields of a LUKS1 header must hold once its framing
//! is sound ([`super::luks::check_header`]): a cipher specification that the
//! LUKS format defines (ENC-LUKS-CIPHER) and a payload offset past every
//! key slot's material and inside the area (ENC-PAYLOAD-OFFSET). Nothing
//! here decrypts; a reader that cannot apply the specification cannot read
//! the guest data at all.

use crate::error::{ErrorKind, FormatError};
use crate::rules;

use super::luks::LuksHeader;

/// Cipher names of LUKS1 and the key lengths (bytes, one key of the pair in
/// XTS mode) each accepts.
const CIPHERS: &[(&str, &[u32])] = &[
    ("aes", &[16, 24, 32]),
    ("twofish", &[16, 24, 32]),
    ("serpent", &[16, 24, 32]),
    ("cast5", &[16]),
    ("sm4", &[16]),
];
/// Block cipher modes.
const MODES: &[&str] = &["ecb", "cbc", "xts", "ctr"];
/// IV generators; `essiv` names its hash after a colon.
const IV_GENERATORS: &[&str] = &["plain", "plain64", "essiv"];
/// Hashes of the key derivation (and of ESSIV).
const HASHES: &[&str] = &[
    "md5",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "ripemd160",
    "sm3",
];
/// LUKS sectors are 512 bytes.
const SECTOR: u64 = 512;

/// Field offsets inside the LUKS header.
const CIPHER_NAME_AT: u64 = 8;
const CIPHER_MODE_AT: u64 = 40;
const HASH_SPEC_AT: u64 = 72;
const PAYLOAD_OFFSET_AT: u64 = 104;
const KEY_BYTES_AT: u64 = 108;

/// Why a cipher mode such as `xts-plain64` or `cbc-essiv:sha256` is not one
/// LUKS defines, or `None` when it is.
fn mode_problem(mode: &str) -> Option<String> {
    let (block, iv) = match mode.split_once('-') {
        Some((block, iv)) => (block, Some(iv)),
        None => (mode, None),
    };
    if !MODES.contains(&block) {
        return Some(format!("block mode {block:?} is none of {MODES:?}"));
    }
    let Some(iv) = iv else {
        // Only ECB needs no IV.
        return (block != "ecb").then(|| format!("mode {mode:?} names no IV generator"));
    };
    let (generator, hash) = match iv.split_once(':') {
        Some((g, h)) => (g, Some(h)),
        None => (iv, None),
    };
    if !IV_GENERATORS.contains(&generator) {
        return Some(format!(
            "IV generator {generator:?} is none of {IV_GENERATORS:?}"
        ));
    }
    match (generator, hash) {
        ("essiv", None) => Some("ESSIV names no hash".to_string()),
        ("essiv", Some(h)) if !HASHES.contains(&h) => {
            Some(format!("ESSIV hash {h:?} is none of {HASHES:?}"))
        }
        ("essiv", Some(_)) => None,
        (_, Some(h)) => Some(format!("IV generator {generator:?} takes no hash ({h:?})")),
        (_, None) => None,
    }
}

fn malformed(rule: crate::RuleId, at: u64, field: &'static str, reason: String) -> FormatError {
    FormatError::new(rule, at, ErrorKind::Malformed { field, reason })
}

/// Every ENC-LUKS-CIPHER and ENC-PAYLOAD-OFFSET problem of `header`, read at
/// file offset `at` from an area of `area_len` bytes.
pub fn check_values(header: &LuksHeader, at: u64, area_len: u64) -> Vec<FormatError> {
    let mut out = Vec::new();
    let cipher = CIPHERS.iter().find(|(name, _)| *name == header.cipher_name);
    if cipher.is_none() {
        out.push(malformed(
            rules::ENC_LUKS_CIPHER,
            at + CIPHER_NAME_AT,
            "LUKS cipher-name",
            format!("{:?} is not a LUKS cipher", header.cipher_name),
        ));
    }
    if let Some(why) = mode_problem(&header.cipher_mode) {
        out.push(malformed(
            rules::ENC_LUKS_CIPHER,
            at + CIPHER_MODE_AT,
            "LUKS cipher-mode",
            why,
        ));
    }
    if !HASHES.contains(&header.hash_spec.as_str()) {
        out.push(malformed(
            rules::ENC_LUKS_CIPHER,
            at + HASH_SPEC_AT,
            "LUKS hash-spec",
            format!("{:?} is none of {HASHES:?}", header.hash_spec),
        ));
    }
    if let Some((name, lengths)) = cipher {
        // XTS splits the master key into two keys of the cipher.
        let xts = header.cipher_mode.split('-').next() == Some("xts");
        let one = if xts {
            header.key_bytes / 2
        } else {
            header.key_bytes
        };
        if !lengths.contains(&one) || (xts && header.key_bytes % 2 != 0) {
            out.push(malformed(
                rules::ENC_LUKS_CIPHER,
                at + KEY_BYTES_AT,
                "LUKS key-bytes",
                format!(
                    "{} bytes is no key length of {name}{} ({lengths:?})",
                    header.key_bytes,
                    if xts {
                        " in XTS mode, which doubles"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    // All eight slots are laid out, used or not; the payload follows them.
    let key_bytes = u64::from(header.key_bytes);
    let material_end = header
        .slots
        .iter()
        .map(|s| {
            (key_bytes * u64::from(s.stripes))
                .div_ceil(SECTOR)
                .checked_mul(SECTOR)
                .and_then(|len| s.key_offset.checked_add(len))
        })
        .try_fold(super::luks::HEADER_LEN as u64, |end, slot| {
            slot.map(|e| end.max(e))
        });
    let payload = header.payload_offset;
    let problem = match material_end {
        None => Some("a key slot's material ends past 2^64".to_string()),
        Some(end) if payload < end => Some(format!(
            "the payload at {payload:#x} of the area overlaps the header and key material, \
             which end at {end:#x}"
        )),
        Some(_) if payload > area_len => Some(format!(
            "the payload at {payload:#x} of the area lies past the area's end ({area_len:#x})"
        )),
        Some(_) => None,
    };
    if let Some(reason) = problem {
        out.push(malformed(
            rules::ENC_PAYLOAD_OFFSET,
            at + PAYLOAD_OFFSET_AT,
            "LUKS payload-offset",
            reason,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::luks::KeySlot;

    fn header() -> LuksHeader {
        let slot = |k: u64| KeySlot {
            active: k == 0,
            iterations: 1000,
            key_offset: (8 + 504 * k) * SECTOR,
            stripes: 4000,
        };
        LuksHeader {
            cipher_name: "aes".into(),
            cipher_mode: "xts-plain64".into(),
            hash_spec: "sha256".into(),
            payload_offset: 4040 * SECTOR,
            key_bytes: 64,
            master_key_iterations: 1000,
            uuid: String::new(),
            slots: std::array::from_fn(|k| slot(k as u64)),
        }
    }

    fn rules_of(h: &LuksHeader, area_len: u64) -> Vec<(crate::RuleId, u64)> {
        check_values(h, 0x1000, area_len)
            .iter()
            .map(|e| (e.rule, e.offset - 0x1000))
            .collect()
    }

    #[test]
    fn what_qemu_writes_passes() {
        assert!(rules_of(&header(), 4040 * SECTOR).is_empty());
        for mode in ["cbc-essiv:sha256", "cbc-plain", "ecb", "ctr-plain64"] {
            let mut h = header();
            h.cipher_mode = mode.into();
            h.key_bytes = 32;
            assert!(rules_of(&h, 4040 * SECTOR).is_empty(), "{mode}");
        }
    }

    #[test]
    fn each_field_names_its_rule_and_offset() {
        let len = 4040 * SECTOR;
        let cipher = ENC_CIPHER_CASES;
        for (edit, at) in cipher {
            let mut h = header();
            edit(&mut h);
            assert_eq!(rules_of(&h, len), [(rules::ENC_LUKS_CIPHER, at)]);
        }
        let mut h = header();
        h.payload_offset = 4000 * SECTOR;
        assert_eq!(rules_of(&h, len), [(rules::ENC_PAYLOAD_OFFSET, 104)]);
        assert_eq!(
            rules_of(&header(), len - SECTOR),
            [(rules::ENC_PAYLOAD_OFFSET, 104)]
        );
        let mut h = header();
        h.slots[3].stripes = u32::MAX;
        h.key_bytes = u32::MAX - 1;
        h.slots[3].key_offset = u64::MAX - 1;
        assert!(rules_of(&h, len).contains(&(rules::ENC_PAYLOAD_OFFSET, 104)));
    }

    type Edit = fn(&mut LuksHeader);
    const ENC_CIPHER_CASES: [(Edit, u64); 7] = [
        (|h| h.cipher_name = "rot13".into(), 8),
        (|h| h.cipher_mode = "xts-plain65".into(), 40),
        (|h| h.cipher_mode = "xts-essiv:crc32".into(), 40),
        (|h| h.cipher_mode = "xts".into(), 40),
        (|h| h.cipher_mode = "xts-essiv".into(), 40),
        (|h| h.hash_spec = "crc32".into(), 72),
        (|h| h.key_bytes = 40, 108),
    ];
}
