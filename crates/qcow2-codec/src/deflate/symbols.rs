//! The parse of one block: literals and matches with their frequencies.

use super::tables::{
    DIST_SLOT, DIST_SYMBOLS, LEN_SLOT, LITLEN_SYMBOLS, MAX_DIST, MAX_MATCH, MIN_MATCH,
};

/// Marks a match item; literals are the byte value itself.
pub(crate) const MATCH_FLAG: u32 = 1 << 31;

/// Literals and matches of the block being built, packed one per `u32`
/// (a match is `MATCH_FLAG | (length - 3) << 12 | (distance - 1)`), and
/// the symbol frequencies the block's codes are built from.
pub(crate) struct Symbols {
    pub(crate) items: Vec<u32>,
    pub(crate) litlen_freq: [u32; LITLEN_SYMBOLS],
    pub(crate) dist_freq: [u32; DIST_SYMBOLS],
}

impl Default for Symbols {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            litlen_freq: [0; LITLEN_SYMBOLS],
            dist_freq: [0; DIST_SYMBOLS],
        }
    }
}

impl Symbols {
    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.litlen_freq.fill(0);
        self.dist_freq.fill(0);
    }

    #[inline]
    pub(crate) fn literal(&mut self, byte: u8) {
        self.items.push(u32::from(byte));
        self.litlen_freq[usize::from(byte)] += 1;
    }

    #[inline]
    pub(crate) fn matched(&mut self, len: usize, dist: usize) {
        debug_assert!((MIN_MATCH..=MAX_MATCH).contains(&len) && (1..=MAX_DIST).contains(&dist));
        self.items
            .push(MATCH_FLAG | ((len - MIN_MATCH) as u32) << 12 | (dist - 1) as u32);
        self.litlen_freq[257 + usize::from(LEN_SLOT[len - MIN_MATCH])] += 1;
        self.dist_freq[usize::from(DIST_SLOT[dist - 1])] += 1;
    }
}
