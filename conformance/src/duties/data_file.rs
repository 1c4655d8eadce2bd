//! DATA-NO-REFCOUNT and DATA-RAW-IMAGE on the qemu-made `data-file-raw`
//! golden and the data file beside it.

use qcow2_format::features::{AUTOCLEAR_DATA_FILE_RAW, INCOMPAT_BIT2};
use qcow2_format::rules::{DATA_NO_REFCOUNT, DATA_RAW_IMAGE};
use qcow2_image::BackingMode;

use super::guest_model::{guest_disk, Until};
use super::{clean, duty, golden, open, same, seen, DutyCase};
use crate::case_report::CaseKind::{Negative, Positive};
use crate::mutate::edit_area;

/// The golden's data file, from its stored sparse hex.
fn data_file(name: &str) -> Result<Vec<u8>, String> {
    let path = crate::corpus::golden_dir().join(format!("{name}.data.hex"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::sparse_hex::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The data file read alone is the guest disk the recorded commands made.
fn compare_raw(data: &[u8]) -> Result<String, String> {
    let want = guest_disk("data-file-raw", Until::End)?;
    same("the data file read alone", data, &want)?;
    Ok(format!(
        "the data file alone is the guest disk ({} non-zero bytes)",
        want.iter().filter(|&&b| b != 0).count()
    ))
}

/// Our check of the image file finds nothing, although its L2 entries
/// name offsets that, in the image file, hold its own metadata: the guest
/// clusters are the data file's and carry no refcount here.
fn compare_check(bytes: &[u8]) -> Result<String, String> {
    clean(bytes, "check")?;
    Ok("no finding: no refcount is owed for the data file's clusters".into())
}

/// `check -r all` on an image with a data file: the L2 entries and the
/// file are what they were (a repair has no data file space to free or
/// allocate by refcount), and nothing is left to report.
fn compare_repair(before: &[u8], after: &[u8]) -> Result<String, String> {
    let l2 = |b: &[u8]| -> Result<Vec<u8>, String> {
        let a = qcow2_format::HeaderArea::parse(b).map_err(|e| e.to_string())?;
        let l1 = a.header.l1_table_offset.get() as usize;
        let table = (crate::mutate::get_u64(b, l1) & 0x00ff_ffff_ffff_fe00) as usize;
        let cs = 1usize << a.header.cluster_bits;
        b.get(table..table + cs)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "the L2 table lies past the end".to_string())
    };
    if l2(before)? != l2(after)? {
        return Err("check -r all changed the L2 table of a data file image".into());
    }
    clean(after, "after check -r all")?;
    Ok("check -r all left the L2 table as it was and nothing to report".into())
}

pub(super) fn cases() -> Vec<DutyCase> {
    vec![
        duty(
            DATA_NO_REFCOUNT,
            Positive,
            "check of an image whose L2 entries map every guest cluster into its data file",
            "data-file-raw",
            |i| compare_check(&golden(i, "data-file-raw")?),
        ),
        duty(
            DATA_NO_REFCOUNT,
            Negative,
            "a check that counts the data file's clusters in the image file",
            "data-file-raw",
            |i| {
                // Without bit 2 and the extension the same L2 entries name
                // clusters of the image file, as a check unaware of the
                // data file would count them.
                let b = edit_area(&golden(i, "data-file-raw")?, |a| {
                    a.header.incompatible_features &= !INCOMPAT_BIT2;
                    a.header.autoclear_features &= !AUTOCLEAR_DATA_FILE_RAW;
                    a.chain.extensions.retain(|e| {
                        !matches!(e, qcow2_format::extensions::Extension::ExternalDataFile(_))
                    });
                })?;
                seen(compare_check(&b))
            },
        ),
        duty(
            DATA_NO_REFCOUNT,
            Positive,
            "check -r all of data-file-raw moves no guest cluster",
            "data-file-raw",
            |i| {
                let before = golden(i, "data-file-raw")?;
                compare_repair(&before, &crate::consequence::repair_all(&before)?)
            },
        ),
        duty(
            DATA_NO_REFCOUNT,
            Negative,
            "a repair that moves guest cluster 1 to a cluster it allocates",
            "data-file-raw",
            |i| {
                let before = golden(i, "data-file-raw")?;
                let mut after = crate::consequence::repair_all(&before)?;
                let a = qcow2_format::HeaderArea::parse(&after).map_err(|e| e.to_string())?;
                let cs = 1u64 << a.header.cluster_bits;
                let l1 = a.header.l1_table_offset.get() as usize;
                let table = (crate::mutate::get_u64(&after, l1) & 0x00ff_ffff_ffff_fe00) as usize;
                let fresh = crate::mutate::append_counted(&mut after, cs, &vec![0; cs as usize])?;
                crate::mutate::put_u64(&mut after, table + 8, fresh | 1 << 63);
                seen(compare_repair(&before, &after))
            },
        ),
        duty(
            DATA_RAW_IMAGE,
            Positive,
            "the data file of data-file-raw after data and zero writes",
            "data-file-raw",
            |_| compare_raw(&data_file("data-file-raw")?),
        ),
        duty(
            DATA_RAW_IMAGE,
            Positive,
            "the engine, which does not write data files, refuses to open one",
            "data-file-raw",
            |i| match open(&golden(i, "data-file-raw")?, true, BackingMode::Ignore) {
                Ok(_) => Err("the engine opened a raw data file image for writing".into()),
                Err(e) => Ok(format!("refused: {e}")),
            },
        ),
        duty(
            DATA_RAW_IMAGE,
            Negative,
            "a zero write kept in the L2 table only",
            "data-file-raw",
            |_| {
                let mut data = data_file("data-file-raw")?;
                // What the data file held before `write -z 128k 4k`.
                data[128 << 10..132 << 10].fill(0x5c);
                seen(compare_raw(&data))
            },
        ),
    ]
}
