//! A raw-deflate encoder (RFC 1951) for single clusters, limited to the
//! 4 KiB window QEMU inflates with.
//!
//! zlib-rs, the other safe encoder with a small window, trades about 2% of
//! output for speed at its middle levels; this one parses lazily over hash
//! chains of 4-byte prefixes and picks per block the cheapest of dynamic,
//! static and stored coding.

mod bits;
mod block;
mod huffman;
mod matcher;
mod symbols;
mod tables;

use bits::BitWriter;
use block::BlockWriter;
pub(crate) use matcher::Effort;
use matcher::{Chains, MIN_SEARCHED};
use symbols::Symbols;

/// Symbols per block before the block is closed: large enough that code
/// headers cost little, small enough to follow changes in the data.
const BLOCK_SYMBOLS: usize = 8 * 1024;

/// Reusable encoder state (about 200 KiB), one per thread.
#[derive(Default)]
pub(crate) struct Encoder {
    chains: Chains,
    symbols: Symbols,
    blocks: BlockWriter,
}

impl Encoder {
    /// Compresses `input` as one raw deflate stream into `out`; `None` when
    /// it does not fit.
    pub(crate) fn compress(
        &mut self,
        input: &[u8],
        out: &mut [u8],
        effort: Effort,
    ) -> Option<usize> {
        let mut w = BitWriter::new(out);
        let n = input.len();
        self.chains.reset(n);
        self.symbols.clear();
        let mut block_start = 0;
        let mut next_insert = 0;
        let mut p = 0;
        while p < n {
            if self.symbols.items.len() >= BLOCK_SYMBOLS {
                self.blocks
                    .write(&mut w, &mut self.symbols, &input[block_start..p], false);
                if w.overflowed() {
                    return None;
                }
                self.symbols.clear();
                block_start = p;
            }
            if p + MIN_SEARCHED > n {
                self.symbols.literal(input[p]);
                p += 1;
                continue;
            }
            let (mut len, mut dist) =
                self.chains
                    .find(input, p, MIN_SEARCHED - 1, effort.depth, effort.nice);
            next_insert = next_insert.max(p + 1);
            if len < MIN_SEARCHED {
                self.symbols.literal(input[p]);
                p += 1;
                continue;
            }

            let mut start = p;
            while len < effort.lazy && start + 1 + MIN_SEARCHED <= n {
                let depth = if len >= effort.good {
                    effort.depth / 4
                } else {
                    effort.depth
                };
                let (len2, dist2) = self.chains.find(input, start + 1, len, depth, effort.nice);
                next_insert = start + 2;
                if len2 <= len {
                    break;
                }
                self.symbols.literal(input[start]);
                start += 1;
                len = len2;
                dist = dist2;
            }
            self.symbols.matched(len, dist);
            let end = start + len;
            let insert_end = end.min(n.saturating_sub(MIN_SEARCHED - 1));
            while next_insert < insert_end {
                self.chains.insert(input, next_insert);
                next_insert += 1;
            }
            p = end;
        }
        self.blocks
            .write(&mut w, &mut self.symbols, &input[block_start..], true);
        w.finish()
    }
}

#[cfg(test)]
mod tests;
