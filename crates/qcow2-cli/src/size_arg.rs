//! Byte counts typed on the command line the way `qemu-img` reads them:
//! `65536`, `0x10000`, `64k`, `1.5G`, `2T` (binary units, case-insensitive
//! suffixes B, K, M, G, T, P, E).

/// Parses a byte count with an optional binary-unit suffix; `None` when the
/// text is not a size or the value does not fit in 63 bits.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16)
            .ok()
            .filter(|&v| v <= i64::MAX as u64);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return None,
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let mut value = u128::from(whole) << shift;
    if !fraction.is_empty() {
        // Exact decimal fraction of the unit, truncated to whole bytes.
        let digits = fraction.len().min(18) as u32;
        let numerator: u128 = fraction[..digits as usize].parse().ok()?;
        value += (numerator << shift) / 10u128.pow(digits);
    }
    u64::try_from(value).ok().filter(|&v| v <= i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn suffixes_are_binary_units() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("0x1000"), Some(4096));
        assert_eq!(parse_size("10b"), Some(10));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("9E"), None);
        assert_eq!(parse_size("1.2.3"), None);
    }
}
