//! The text qemu-io prints: summary lines, byte counts ("2 KiB",
//! "1.938 MiB"), hex dumps and allocation map lines.

use std::time::Duration;

const UNITS: [(u32, &str); 6] = [
    (60, "EiB"),
    (50, "PiB"),
    (40, "TiB"),
    (30, "GiB"),
    (20, "MiB"),
    (10, "KiB"),
];

/// A byte count the way qemu-io writes it: three decimals in the largest
/// binary unit not above the value, `.000` dropped; plain bytes below 1 KiB.
pub fn byte_count(value: f64) -> String {
    for (shift, unit) in UNITS {
        let scale = (1u64 << shift) as f64;
        if value >= scale {
            let text = format!("{:.3}", value / scale);
            return format!("{} {unit}", text.strip_suffix(".000").unwrap_or(&text));
        }
    }
    let text = format!("{value:.3}");
    format!("{} bytes", text.strip_suffix(".000").unwrap_or(&text))
}

/// The two summary lines of a request: what was done and how fast.
pub fn summary(verb: &str, len: u64, offset: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    format!(
        "{verb} {len}/{len} bytes at offset {offset}\n{}, 1 ops; {:05.2} sec ({}/sec and {:.4} ops/sec)",
        byte_count(len as f64),
        elapsed.as_secs_f64(),
        byte_count(len as f64 / secs),
        1.0 / secs
    )
}

/// Hex dump lines of `bytes`, which start at guest `offset`: 16 bytes a
/// line, address, hex bytes, then the printable characters.
pub fn dump(bytes: &[u8], offset: u64) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        out += &format!("{:08x}:  ", offset + i as u64 * 16);
        for b in line {
            out += &format!("{b:02x} ");
        }
        out.push(' ');
        out.extend(line.iter().map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

/// One line of `map`: a run that is (or is not) allocated in the image
/// itself.
pub fn map_line(len: u64, offset: u64, allocated: bool) -> String {
    format!(
        "{} (0x{len:x}) bytes {} at offset {} (0x{offset:x})",
        byte_count(len as f64),
        if allocated {
            "    allocated"
        } else {
            "not allocated"
        },
        byte_count(offset as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_qemu_io() {
        assert_eq!(byte_count(0.0), "0 bytes");
        assert_eq!(byte_count(40.0), "40 bytes");
        assert_eq!(byte_count(2048.0), "2 KiB");
        assert_eq!(byte_count(2_031_616.0), "1.938 MiB");
        assert_eq!(
            map_line(1 << 20, 0, true),
            "1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)"
        );
    }

    #[test]
    fn dump_lines() {
        assert_eq!(dump(&[0xaa; 4], 0x3f8), "000003f8:  aa aa aa aa  ....\n");
    }
}
