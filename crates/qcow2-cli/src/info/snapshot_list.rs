//! The internal snapshots `info` lists, as `qemu-img info` shows them: a
//! `snapshots` array in JSON and a "Snapshot list:" table in human output.

use std::fmt::{self, Write};

use qcow2_format::tables::snapshot::{self, SnapshotContext};
use qcow2_format::HeaderArea;

use crate::image_file::ImageFile;
use crate::size::human_size;

/// One snapshot, with qemu-img's JSON key names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotInfo {
    /// Record/replay instruction count, when one was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icount: Option<u64>,
    /// Nanoseconds part of the guest run time.
    pub vm_clock_nsec: u64,
    /// The snapshot's name (qemu-img's TAG).
    pub name: String,
    /// Creation time, seconds since 1970.
    pub date_sec: u64,
    /// Creation time, nanoseconds part.
    pub date_nsec: u64,
    /// Whole seconds of guest run time.
    pub vm_clock_sec: u64,
    /// The snapshot's ID string.
    pub id: String,
    /// Bytes of saved VM state.
    pub vm_state_size: u64,
}

/// The snapshots of the image, or none when the table does not parse
/// (`qcow2 check` reports why).
pub fn read(file: &mut ImageFile, area: &HeaderArea) -> Vec<SnapshotInfo> {
    let h = &area.header;
    if h.nb_snapshots == 0 {
        return Vec::new();
    }
    let Ok(geometry) = h.geometry() else {
        return Vec::new();
    };
    let at = h.snapshots_offset.get();
    let ctx = SnapshotContext {
        geometry,
        version: h.version,
    };
    let available = file.len().saturating_sub(at);
    let read = |len| {
        file.read_at(at, len)
            .map_err(Box::<dyn std::error::Error>::from)
    };
    let Ok(entries) = snapshot::read_table(h.nb_snapshots, &ctx, at, available, read) else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| SnapshotInfo {
            icount: e.icount(),
            vm_clock_nsec: e.vm_clock_nsec % 1_000_000_000,
            name: String::from_utf8_lossy(&e.name).into_owned(),
            date_sec: e.date_sec.into(),
            date_nsec: e.date_nsec.into(),
            vm_clock_sec: e.vm_clock_nsec / 1_000_000_000,
            id: String::from_utf8_lossy(&e.id).into_owned(),
            vm_state_size: e.vm_state_size(),
        })
        .collect()
}

/// Year, month, day of the `days`-th day after 1970-01-01 (proleptic
/// Gregorian calendar).
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Count in 400-year eras from 0000-03-01, whose years end with February.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD HH:MM:SS` of a time in seconds since 1970, in UTC.
fn date_text(secs: u64) -> String {
    let secs = secs as i64;
    let (y, m, d) = civil_date(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// The "Snapshot list:" table, in qemu-img's columns.
pub fn render(out: &mut String, snapshots: &[SnapshotInfo]) -> fmt::Result {
    if snapshots.is_empty() {
        return Ok(());
    }
    writeln!(out, "Snapshot list:")?;
    writeln!(
        out,
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    )?;
    for s in snapshots {
        let ms = s.vm_clock_nsec / 1_000_000;
        let clock = format!(
            "{:04}:{:02}:{:02}.{ms:03}",
            s.vm_clock_sec / 3600,
            s.vm_clock_sec / 60 % 60,
            s.vm_clock_sec % 60
        );
        let icount = s.icount.map(|i| i.to_string()).unwrap_or_default();
        writeln!(
            out,
            "{:<7} {:<16} {:>8} {:>19} {clock:>15} {icount:>10}",
            s.id,
            s.name,
            human_size(s.vm_state_size),
            date_text(s.date_sec)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date_text(0), "1970-01-01 00:00:00");
        assert_eq!(date_text(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(date_text(1_796_647_372), "2026-12-07 12:42:52");
        assert_eq!(date_text(4_107_542_399), "2100-02-28 23:59:59");
    }

    #[test]
    fn rows_line_up_with_qemu_img() {
        let s = SnapshotInfo {
            icount: Some(0),
            vm_clock_nsec: 0,
            name: "s0".into(),
            date_sec: 1_796_647_372,
            date_nsec: 0,
            vm_clock_sec: 0,
            id: "1".into(),
            vm_state_size: 0,
        };
        let mut out = String::new();
        render(&mut out, &[s]).unwrap();
        assert_eq!(
            out,
            "Snapshot list:\n\
             ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT\n\
             1       s0                    0 B 2026-12-07 12:42:52  0000:00:00.000          0\n"
        );
    }
}
