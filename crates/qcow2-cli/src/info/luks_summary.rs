//! The `encrypt` object `qemu-img info` shows for a LUKS image, derived
//! from the LUKS header fields (no key is needed: nothing is decrypted).

use qcow2_format::tables::luks::LuksHeader;
use serde::Serialize;

/// One key slot as qemu-img lists it: iterations and stripes only when active.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Slot {
    /// Whether the slot holds a key.
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// PBKDF2 iterations (active slots).
    pub iters: Option<u32>,
    /// Start of the key material in the LUKS area, in bytes.
    pub key_offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Anti-forensic stripes (active slots).
    pub stripes: Option<u32>,
}

/// qemu-img's `format-specific.data.encrypt` for `format: luks`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Encrypt {
    /// IV generator, for example plain64.
    pub ivgen_alg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Hash of the IV generator (ESSIV).
    pub ivgen_hash_alg: Option<String>,
    /// Always false: the header is inside the image.
    pub detached_header: bool,
    /// Hash of the key derivation.
    pub hash_alg: String,
    /// Cipher and key size, for example aes-256.
    pub cipher_alg: String,
    /// The LUKS UUID.
    pub uuid: String,
    /// Always luks.
    pub format: &'static str,
    /// Cipher mode, for example xts.
    pub cipher_mode: String,
    /// The eight key slots.
    pub slots: Vec<Slot>,
    /// Payload offset in bytes (unused by qcow2).
    pub payload_offset: u64,
    /// PBKDF2 iterations of the master key digest.
    pub master_key_iters: u32,
}

impl Encrypt {
    /// The summary of `h`: the mode string "MODE-IVGEN[:HASH]" is split, and
    /// the cipher is named with its key size (XTS halves the master key).
    pub fn of(h: &LuksHeader) -> Self {
        let (mode, ivgen) = h
            .cipher_mode
            .split_once('-')
            .unwrap_or((&h.cipher_mode, ""));
        let (ivgen_alg, ivgen_hash) = match ivgen.split_once(':') {
            Some((alg, hash)) => (alg.to_string(), Some(hash.to_string())),
            None => (ivgen.to_string(), None),
        };
        let key_bits = u64::from(h.key_bytes) * 8 / if mode == "xts" { 2 } else { 1 };
        Self {
            ivgen_alg,
            ivgen_hash_alg: ivgen_hash,
            detached_header: false,
            hash_alg: h.hash_spec.clone(),
            cipher_alg: format!("{}-{key_bits}", h.cipher_name),
            uuid: h.uuid.clone(),
            format: "luks",
            cipher_mode: mode.to_string(),
            slots: h
                .slots
                .iter()
                .map(|s| Slot {
                    active: s.active,
                    iters: s.active.then_some(s.iterations),
                    key_offset: s.key_offset,
                    stripes: s.active.then_some(s.stripes),
                })
                .collect(),
            payload_offset: h.payload_offset,
            master_key_iters: h.master_key_iterations,
        }
    }
}
