//! Byte counts written the way `qemu-img` writes them ("64 MiB", "0.977 MiB", "1e+03 KiB").
//!
//! `qemu-img` picks the binary unit in which the value stays below 1000 and
//! prints three significant digits in C's `%g` style; scripts and eyes used to
//! its output should see the same text from us.

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `bytes` in the largest binary unit in which it is still below 1000, e.g. `"196 KiB"`.
pub fn human_size(bytes: u64) -> String {
    // Move up a unit once the value reaches 1000 of the current one.
    let mut unit = 0;
    while unit + 1 < UNITS.len() && u128::from(bytes) >= 1000u128 << (10 * unit) {
        unit += 1;
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    format!("{} {}", format_g3(value), UNITS[unit])
}

/// C's `%.3g`: three significant digits, trailing zeros dropped, exponent form outside 1e-4..1e3.
fn format_g3(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    // Rust's `{:.2e}` rounds to three significant digits; its exponent decides the form.
    let sci = format!("{value:.2e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..3).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim_zeros(mantissa), exp.abs());
    }
    let decimals = usize::try_from(2 - exp).unwrap_or(0);
    trim_zeros(&format!("{value:.decimals$}")).to_string()
}

/// Drops trailing zeros after a decimal point, and the point itself if nothing follows it.
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The integration tests compare against qemu-img itself; these pin the %g corner cases.
    #[test]
    fn g3_matches_c_printf() {
        assert_eq!(format_g3(1.0), "1");
        assert_eq!(format_g3(1.5), "1.5");
        assert_eq!(format_g3(0.9765625), "0.977");
        assert_eq!(format_g3(4.76837158203125), "4.77");
        assert_eq!(format_g3(999.4), "999");
        assert_eq!(format_g3(999.5), "1e+03");
        assert_eq!(format_g3(0.99951171875), "1");
        assert_eq!(format_g3(0.00012345), "0.000123");
        assert_eq!(format_g3(0.000012345), "1.23e-05");
    }

    #[test]
    fn units_switch_at_one_thousand() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "0.977 KiB");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(u64::MAX), "16 EiB");
    }
}
