//! ENC-PAYLOAD on the qemu-made encrypted goldens: the tables are plain
//! (our check reads them without a key), the guest data is not (the host
//! cluster does not hold what was written), and the engine, which cannot
//! decrypt, refuses to read rather than return ciphertext.

use qcow2_format::rules::ENC_PAYLOAD;
use qcow2_format::HeaderArea;
use qcow2_image::BackingMode;

use super::guest_model::{guest_disk, Until};
use super::raw_map::{self, Mapped};
use super::{clean, duty, golden, open, read_all, same, seen, DutyCase};
use crate::case_report::CaseKind::{Negative, Positive};

/// The guest bytes the aes golden's recorded write covers.
const WRITTEN: usize = 4096;

/// A reader of an encrypted image either decrypts (and reads what was
/// written) or refuses naming the rule; it never returns the stored bytes.
fn compare_reader(bytes: &[u8], name: &str) -> Result<String, String> {
    match open(bytes, false, BackingMode::Ignore) {
        Err(e) if e.contains(ENC_PAYLOAD.as_str()) => Ok(format!("refused: {e}")),
        Err(e) => Err(format!("refused without naming {ENC_PAYLOAD}: {e}")),
        Ok((image, _)) => {
            same(
                "the engine's read",
                &read_all(&image)?,
                &guest_disk(name, Until::End)?,
            )
            .map_err(|e| format!("stored bytes returned as guest data ({e})"))?;
            Ok("decrypted".into())
        }
    }
}

/// The tables of an encrypted image are plain (our check finds nothing
/// without a key) and the written guest cluster is stored encrypted.
fn compare_storage(bytes: &[u8], name: &str) -> Result<String, String> {
    clean(bytes, "the metadata does not read plain")?;
    let written = guest_disk(name, Until::End)?;
    let a = HeaderArea::parse(bytes).map_err(|e| e.to_string())?;
    let h = &a.header;
    let Mapped::Host(host) =
        raw_map::map(bytes, h.cluster_bits, h.l1_table_offset.get(), h.l1_size, 0)?
    else {
        return Ok("metadata plain; no guest data written".into());
    };
    let stored = &bytes[host as usize..host as usize + WRITTEN];
    if stored == &written[..WRITTEN] {
        return Err(format!("guest cluster 0 is stored in clear at {host:#x}"));
    }
    Ok(format!(
        "metadata plain; guest cluster 0 stored encrypted at {host:#x}"
    ))
}

pub(super) fn cases() -> Vec<DutyCase> {
    vec![
        duty(
            ENC_PAYLOAD,
            Positive,
            "aes: the engine refuses to read",
            "aes",
            |i| compare_reader(&golden(i, "aes")?, "aes"),
        ),
        duty(
            ENC_PAYLOAD,
            Positive,
            "luks: the engine refuses to read",
            "luks",
            |i| compare_reader(&golden(i, "luks")?, "luks"),
        ),
        duty(
            ENC_PAYLOAD,
            Positive,
            "aes: plain tables, encrypted data cluster",
            "aes",
            |i| compare_storage(&golden(i, "aes")?, "aes"),
        ),
        duty(ENC_PAYLOAD, Positive, "luks: plain tables", "luks", |i| {
            compare_storage(&golden(i, "luks")?, "luks")
        }),
        duty(
            ENC_PAYLOAD,
            Negative,
            "a reader that ignores crypt_method",
            "aes",
            |i| {
                let mut b = golden(i, "aes")?;
                crate::mutate::put_u32(&mut b, 32, 0);
                seen(compare_reader(&b, "aes"))
            },
        ),
        duty(
            ENC_PAYLOAD,
            Negative,
            "a writer that stores guest data in clear",
            "aes",
            |i| {
                let mut b = golden(i, "aes")?;
                let a = HeaderArea::parse(&b).map_err(|e| e.to_string())?;
                let h = &a.header;
                let Mapped::Host(host) =
                    raw_map::map(&b, h.cluster_bits, h.l1_table_offset.get(), h.l1_size, 0)?
                else {
                    return Err("the aes golden has no data cluster".into());
                };
                let plain = guest_disk("aes", Until::End)?;
                let host = host as usize;
                b[host..host + WRITTEN].copy_from_slice(&plain[..WRITTEN]);
                seen(compare_storage(&b, "aes"))
            },
        ),
        duty(
            ENC_PAYLOAD,
            Negative,
            "a writer that encrypts the L2 table as well",
            "aes",
            |i| {
                let mut b = golden(i, "aes")?;
                let a = HeaderArea::parse(&b).map_err(|e| e.to_string())?;
                let h = &a.header;
                let l1 = h.l1_table_offset.get() as usize;
                let l2 = (crate::mutate::get_u64(&b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
                if l2 == 0 {
                    return Err("the aes golden has no L2 table".into());
                }
                // What a cipher would leave: no byte as it was.
                let cs = 1usize << h.cluster_bits;
                for (k, byte) in b[l2..l2 + cs].iter_mut().enumerate() {
                    *byte ^= 0xa5 ^ (k as u8);
                }
                seen(compare_storage(&b, "aes"))
            },
        ),
    ]
}
