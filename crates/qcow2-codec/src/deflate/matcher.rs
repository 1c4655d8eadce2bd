//! Hash chains over deflate's window, limited to the 4 KiB QEMU inflates
//! with.

use super::tables::{MAX_DIST, MAX_MATCH};

/// Matches shorter than this are not searched for: with a 4 KiB window a
/// 3-byte match rarely beats three literals, and 4-byte hashing keeps
/// chains short.
pub(crate) const MIN_SEARCHED: usize = 4;
/// Ring of chain links; twice the window so a slot is never reused while a
/// chain can still reach it.
const RING: usize = 2 * MAX_DIST;
/// Only 4096 positions are reachable at a time, so a small table (which
/// stays in the L1 cache) loses almost nothing to collisions.
const MAX_HASH_BITS: u32 = 15;
const MIN_HASH_BITS: u32 = 8;

/// How hard to look for matches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effort {
    /// Chain entries tried per search.
    pub(crate) depth: u32,
    /// With a match this long, the look-ahead search tries a quarter.
    pub(crate) good: usize,
    /// With a match this long, no look-ahead.
    pub(crate) lazy: usize,
    /// A match this long ends the search.
    pub(crate) nice: usize,
}

impl Effort {
    /// An effort: chain `depth`, `good`, `lazy` and `nice` lengths.
    pub(crate) const fn new(depth: u32, good: usize, lazy: usize, nice: usize) -> Self {
        Self {
            depth,
            good,
            lazy,
            nice,
        }
    }
}

/// Heads of the hash chains and the links between positions.
pub(crate) struct Chains {
    /// Newest position + 1 per hash, modulo 2^16 (0: none). The low 16
    /// bits halve the table; a stale entry that aliases a recent position
    /// only costs a wasted look, since every match is checked byte by byte.
    head: Vec<u16>,
    /// Per position (mod `RING`): how far back the previous position with
    /// the same hash is (0: none within the window).
    prev: Box<[u16; RING]>,
    shift: u32,
}

impl Default for Chains {
    fn default() -> Self {
        Self {
            head: Vec::new(),
            prev: Box::new([0; RING]),
            shift: 32 - MAX_HASH_BITS,
        }
    }
}

#[inline]
fn load32(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(b)
}

#[inline]
fn load64(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Length of the common prefix of `data[a..]` and `data[b..]`, at most
/// `limit`; `b + limit <= data.len()`.
#[inline]
fn common_prefix(data: &[u8], a: usize, b: usize, limit: usize) -> usize {
    let mut k = 0;
    while k + 8 <= limit {
        let x = load64(data, a + k) ^ load64(data, b + k);
        if x != 0 {
            return k + (x.trailing_zeros() / 8) as usize;
        }
        k += 8;
    }
    while k < limit && data[a + k] == data[b + k] {
        k += 1;
    }
    k
}

impl Chains {
    /// Forgets every position, sizing the hash table for `len` bytes.
    pub(crate) fn reset(&mut self, len: usize) {
        let bits = (usize::BITS - len.leading_zeros()).saturating_sub(1);
        let bits = bits.clamp(MIN_HASH_BITS, MAX_HASH_BITS);
        self.shift = 32 - bits;
        self.head.clear();
        self.head.resize(1 << bits, 0);
    }

    #[inline]
    fn hash(&self, data: &[u8], at: usize) -> usize {
        (load32(data, at).wrapping_mul(0x9E37_79B1) >> self.shift) as usize
    }

    /// Adds position `at` (`at + 4 <= data.len()`) to its chain and returns
    /// how far back the chain's previous head is (0: none in the window).
    #[inline]
    pub(crate) fn insert(&mut self, data: &[u8], at: usize) -> usize {
        let h = self.hash(data, at);
        let tag = (at + 1) as u16;
        let back = usize::from(tag.wrapping_sub(self.head[h]));
        self.head[h] = tag;
        let back = if back <= MAX_DIST && back != usize::from(tag) {
            back
        } else {
            0
        };
        self.prev[at & (RING - 1)] = back as u16;
        back
    }

    /// Inserts `at` and returns the longest match for it that is longer
    /// than `best` (length, distance), or `(best, 0)`.
    #[inline]
    pub(crate) fn find(
        &mut self,
        data: &[u8],
        at: usize,
        mut best: usize,
        mut depth: u32,
        nice: usize,
    ) -> (usize, usize) {
        let limit = (data.len() - at).min(MAX_MATCH);
        let back = self.insert(data, at);
        let mut dist = 0;
        if best >= limit || back == 0 {
            return (best, 0);
        }
        let mut c = at - back;
        let head4 = load32(data, at);
        loop {
            if data[c + best] == data[at + best] && load32(data, c) == head4 {
                let len = 4 + common_prefix(data, c + 4, at + 4, limit - 4);
                if len > best {
                    best = len;
                    dist = at - c;
                    if len >= nice || len == limit {
                        break;
                    }
                }
            }
            depth -= 1;
            let back = usize::from(self.prev[c & (RING - 1)]);
            // A slot not written for `c` (stale, or from another cluster)
            // still holds some distance: the checks keep it in bounds.
            if back == 0 || depth == 0 || back > c || at - c + back > MAX_DIST {
                break;
            }
            c -= back;
        }
        (best, dist)
    }
}
