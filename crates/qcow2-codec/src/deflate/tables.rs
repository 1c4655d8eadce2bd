//! The fixed tables of RFC 1951: length and distance symbols with their
//! extra bits, and the static Huffman code lengths.

/// Shortest match deflate can express.
pub(crate) const MIN_MATCH: usize = 3;
/// Longest match deflate can express.
pub(crate) const MAX_MATCH: usize = 258;
/// Literal/length alphabet size (286 and 287 never occur).
pub(crate) const LITLEN_SYMBOLS: usize = 286;
/// Distance alphabet size (30 and 31 never occur).
pub(crate) const DIST_SYMBOLS: usize = 30;
/// The end-of-block symbol.
pub(crate) const END_OF_BLOCK: usize = 256;

/// First length of each length symbol 257..=285.
const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
/// Extra bits of each length symbol 257..=285.
pub(crate) const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// First distance of each distance symbol.
const DIST_BASE: [u16; DIST_SYMBOLS] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
/// Extra bits of each distance symbol.
pub(crate) const DIST_EXTRA: [u8; DIST_SYMBOLS] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Largest distance the encoder emits: QEMU inflates with a 4 KiB window.
pub(crate) const MAX_DIST: usize = 4096;

/// Length symbol index (0 = symbol 257) for each `length - 3`.
pub(crate) static LEN_SLOT: [u8; MAX_MATCH - MIN_MATCH + 1] = len_slots();
/// Distance symbol for each `distance - 1` up to [`MAX_DIST`].
pub(crate) static DIST_SLOT: [u8; MAX_DIST] = dist_slots();

const fn len_slots() -> [u8; MAX_MATCH - MIN_MATCH + 1] {
    let mut table = [0u8; MAX_MATCH - MIN_MATCH + 1];
    let mut slot = 0;
    let mut len = MIN_MATCH;
    while len <= MAX_MATCH {
        // 258 has its own symbol although 284's range would reach it.
        while slot + 1 < LEN_BASE.len() && LEN_BASE[slot + 1] as usize <= len {
            slot += 1;
        }
        table[len - MIN_MATCH] = slot as u8;
        len += 1;
    }
    table
}

const fn dist_slots() -> [u8; MAX_DIST] {
    let mut table = [0u8; MAX_DIST];
    let mut slot = 0;
    let mut dist = 1;
    while dist <= MAX_DIST {
        while slot + 1 < DIST_BASE.len() && DIST_BASE[slot + 1] as usize <= dist {
            slot += 1;
        }
        table[dist - 1] = slot as u8;
        dist += 1;
    }
    table
}

/// Extra-bit value of a match length in its symbol.
pub(crate) fn len_extra_value(len: usize, slot: usize) -> u32 {
    (len - LEN_BASE[slot] as usize) as u32
}

/// Extra-bit value of a distance in its symbol.
pub(crate) fn dist_extra_value(dist: usize, slot: usize) -> u32 {
    (dist - DIST_BASE[slot] as usize) as u32
}

/// Code lengths of the static literal/length code (RFC 1951 3.2.6).
pub(crate) fn static_litlen_len(symbol: usize) -> u8 {
    match symbol {
        0..=143 => 8,
        144..=255 => 9,
        256..=279 => 7,
        _ => 8,
    }
}

/// Every static distance code is 5 bits long.
pub(crate) const STATIC_DIST_LEN: u8 = 5;

/// The order in which code length code lengths are sent.
pub(crate) const CODELEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_their_ranges() {
        assert_eq!(LEN_SLOT[0], 0);
        assert_eq!(LEN_SLOT[10 - 3], 7);
        assert_eq!(LEN_SLOT[11 - 3], 8);
        assert_eq!(LEN_SLOT[257 - 3], 27);
        assert_eq!(LEN_SLOT[258 - 3], 28);
        assert_eq!(DIST_SLOT[0], 0);
        assert_eq!(DIST_SLOT[4], 4);
        assert_eq!(DIST_SLOT[6], 5);
        assert_eq!(DIST_SLOT[3072], 23);
        assert_eq!(DIST_SLOT[4095], 23);
        for len in MIN_MATCH..=MAX_MATCH {
            let slot = usize::from(LEN_SLOT[len - MIN_MATCH]);
            assert!(len_extra_value(len, slot) < 1 << LEN_EXTRA[slot]);
        }
        for dist in 1..=MAX_DIST {
            let slot = usize::from(DIST_SLOT[dist - 1]);
            assert!(dist_extra_value(dist, slot) < 1 << DIST_EXTRA[slot]);
        }
    }
}
