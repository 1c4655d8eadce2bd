//! Printing map entries as `qemu-img map` prints them.

use std::io::{self, Write};

use super::entry::Entry;

/// The human table's heading.
pub const HUMAN_HEADING: &str = "Offset          Length          Mapped to       File\n";

/// C's `%#x`: `0` for zero, `0x...` otherwise.
fn alt_hex(value: u64) -> String {
    if value == 0 {
        "0".to_string()
    } else {
        format!("{value:#x}")
    }
}

/// One row of the human table: data ranges only, with the file at `depth`.
pub fn human_row(out: &mut impl Write, entry: &Entry, file: &str) -> io::Result<()> {
    writeln!(
        out,
        "{:<16}{:<16}{:<16}{file}",
        alt_hex(entry.start),
        alt_hex(entry.length),
        alt_hex(entry.offset.unwrap_or(0))
    )
}

/// One JSON object, without separators.
pub fn json_object(out: &mut impl Write, entry: &Entry) -> io::Result<()> {
    write!(
        out,
        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \
         \"data\": {}, \"compressed\": {}",
        entry.start,
        entry.length,
        entry.depth,
        entry.present,
        entry.zero,
        entry.data,
        entry.compressed
    )?;
    if let Some(offset) = entry.offset {
        write!(out, ", \"offset\": {offset}")?;
    }
    write!(out, "}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_pad_like_printf() {
        let e = Entry {
            start: 0,
            length: 0x10000,
            depth: 0,
            present: true,
            zero: false,
            data: true,
            compressed: false,
            offset: Some(0x50000),
        };
        let mut out = Vec::new();
        human_row(&mut out, &e, "a.qcow2").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0               0x10000         0x50000         a.qcow2\n"
        );
    }
}
