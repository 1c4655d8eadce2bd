//! One deflate block from a parsed symbol list: the cheapest of a dynamic
//! Huffman, the static Huffman and a stored block.

use super::bits::BitWriter;
use super::huffman::{canonical_codes, CodeBuilder};
use super::symbols::{Symbols, MATCH_FLAG};
use super::tables::{
    dist_extra_value, len_extra_value, static_litlen_len, CODELEN_ORDER, DIST_EXTRA, DIST_SLOT,
    DIST_SYMBOLS, END_OF_BLOCK, LEN_EXTRA, LEN_SLOT, LITLEN_SYMBOLS, MIN_MATCH, STATIC_DIST_LEN,
};

const CODELEN_SYMBOLS: usize = 19;
/// Longest literal/length and distance codes deflate allows.
const MAX_CODE_LEN: u8 = 15;
/// Longest code length code (3-bit lengths).
const MAX_CODELEN_LEN: u8 = 7;
/// Largest stored block.
const MAX_STORED: usize = 65_535;

/// One Huffman code: lengths and bit-reversed codes per symbol.
struct Code<const N: usize> {
    lens: [u8; N],
    codes: [u16; N],
}

impl<const N: usize> Code<N> {
    fn new() -> Self {
        Self {
            lens: [0; N],
            codes: [0; N],
        }
    }

    fn build(&mut self, builder: &mut CodeBuilder, freqs: &[u32; N], limit: u8) {
        builder.lengths(freqs, limit, &mut self.lens);
        canonical_codes(&self.lens, &mut self.codes);
    }

    /// Bits the symbols of `freqs` take in this code.
    fn cost(&self, freqs: &[u32; N]) -> u64 {
        freqs
            .iter()
            .zip(&self.lens)
            .map(|(&f, &l)| u64::from(f) * u64::from(l))
            .sum()
    }

    /// Number of entries to send: past the last used one, at least `min`.
    fn used(&self, min: usize) -> usize {
        self.lens
            .iter()
            .rposition(|&l| l > 0)
            .map_or(0, |i| i + 1)
            .max(min)
    }
}

/// Codes and scratch space for writing blocks, reused between blocks.
pub(crate) struct BlockWriter {
    builder: CodeBuilder,
    litlen: Code<LITLEN_SYMBOLS>,
    dist: Code<DIST_SYMBOLS>,
    codelen: Code<CODELEN_SYMBOLS>,
    static_litlen: Code<LITLEN_SYMBOLS>,
    static_dist: Code<DIST_SYMBOLS>,
    /// Run-length coded code lengths: (code length symbol, extra value).
    rle: Vec<(u8, u8)>,
}

impl Default for BlockWriter {
    fn default() -> Self {
        // The static code spans 288 symbols; 286 and 287 never occur but
        // take their place in the canonical order.
        let mut lens = [0u8; 288];
        let mut codes = [0u16; 288];
        for (s, l) in lens.iter_mut().enumerate() {
            *l = static_litlen_len(s);
        }
        canonical_codes(&lens, &mut codes);
        let mut static_litlen = Code::new();
        static_litlen.lens.copy_from_slice(&lens[..LITLEN_SYMBOLS]);
        static_litlen
            .codes
            .copy_from_slice(&codes[..LITLEN_SYMBOLS]);
        let mut static_dist = Code::new();
        static_dist.lens = [STATIC_DIST_LEN; DIST_SYMBOLS];
        canonical_codes(&static_dist.lens, &mut static_dist.codes);
        Self {
            builder: CodeBuilder::default(),
            litlen: Code::new(),
            dist: Code::new(),
            codelen: Code::new(),
            static_litlen,
            static_dist,
            rle: Vec::with_capacity(LITLEN_SYMBOLS + DIST_SYMBOLS),
        }
    }
}

impl BlockWriter {
    /// Writes `symbols` (which encode `raw`) as one block, or as stored
    /// blocks when that is smaller.
    pub(crate) fn write(
        &mut self,
        w: &mut BitWriter<'_>,
        symbols: &mut Symbols,
        raw: &[u8],
        last: bool,
    ) {
        symbols.litlen_freq[END_OF_BLOCK] += 1;
        self.litlen
            .build(&mut self.builder, &symbols.litlen_freq, MAX_CODE_LEN);
        self.dist
            .build(&mut self.builder, &symbols.dist_freq, MAX_CODE_LEN);
        let extra = extra_bits(symbols);
        let hlit = self.litlen.used(257);
        let hdist = self.dist.used(1);
        self.run_length_code(hlit, hdist);
        let mut codelen_freq = [0u32; CODELEN_SYMBOLS];
        for &(sym, _) in &self.rle {
            codelen_freq[usize::from(sym)] += 1;
        }
        self.codelen
            .build(&mut self.builder, &codelen_freq, MAX_CODELEN_LEN);
        let hclen = CODELEN_ORDER
            .iter()
            .rposition(|&s| self.codelen.lens[s] > 0)
            .map_or(0, |i| i + 1)
            .max(4);
        let header = 14
            + 3 * hclen as u64
            + self.codelen.cost(&codelen_freq)
            + self
                .rle
                .iter()
                .map(|&(s, _)| rle_extra_bits(s))
                .sum::<u64>();
        let dynamic = header
            + self.litlen.cost(&symbols.litlen_freq)
            + self.dist.cost(&symbols.dist_freq)
            + extra;
        let fixed = self.static_litlen.cost(&symbols.litlen_freq)
            + self.static_dist.cost(&symbols.dist_freq)
            + extra;
        let chunks = raw.len().div_ceil(MAX_STORED).max(1) as u64;
        let stored = 8 * raw.len() as u64 + chunks * 40 + 7;

        if stored < dynamic.min(fixed) + 3 {
            write_stored(w, raw, last);
        } else if fixed <= dynamic {
            w.put(u32::from(last), 1);
            w.put(1, 2);
            write_symbols(w, symbols, &self.static_litlen, &self.static_dist);
        } else {
            w.put(u32::from(last), 1);
            w.put(2, 2);
            w.put((hlit - 257) as u32, 5);
            w.put((hdist - 1) as u32, 5);
            w.put((hclen - 4) as u32, 4);
            for &s in &CODELEN_ORDER[..hclen] {
                w.put(u32::from(self.codelen.lens[s]), 3);
            }
            for &(sym, value) in &self.rle {
                let s = usize::from(sym);
                w.put(
                    u32::from(self.codelen.codes[s]),
                    u32::from(self.codelen.lens[s]),
                );
                let bits = rle_extra_bits(sym) as u32;
                if bits > 0 {
                    w.put(u32::from(value), bits);
                }
            }
            write_symbols(w, symbols, &self.litlen, &self.dist);
        }
    }

    /// Run-length codes the first `hlit` literal/length and `hdist`
    /// distance code lengths as one sequence (RFC 1951 3.2.7).
    fn run_length_code(&mut self, hlit: usize, hdist: usize) {
        self.rle.clear();
        let seq = self.litlen.lens[..hlit]
            .iter()
            .chain(&self.dist.lens[..hdist]);
        let mut prev: Option<u8> = None;
        let mut run = 0usize;
        for &l in seq {
            if Some(l) == prev {
                run += 1;
                continue;
            }
            if let Some(p) = prev {
                push_run(&mut self.rle, p, run);
            }
            prev = Some(l);
            run = 1;
        }
        if let Some(p) = prev {
            push_run(&mut self.rle, p, run);
        }
    }
}

/// Appends `run` repeats of code length `len`.
fn push_run(rle: &mut Vec<(u8, u8)>, len: u8, mut run: usize) {
    if len == 0 {
        while run >= 11 {
            let r = run.min(138);
            rle.push((18, (r - 11) as u8));
            run -= r;
        }
        if run >= 3 {
            rle.push((17, (run - 3) as u8));
            run = 0;
        }
    } else {
        rle.push((len, 0));
        run -= 1;
        while run >= 3 {
            let r = run.min(6);
            rle.push((16, (r - 3) as u8));
            run -= r;
        }
    }
    for _ in 0..run {
        rle.push((len, 0));
    }
}

fn rle_extra_bits(sym: u8) -> u64 {
    match sym {
        16 => 2,
        17 => 3,
        18 => 7,
        _ => 0,
    }
}

/// Extra bits of every length and distance in the block, whatever the code.
fn extra_bits(symbols: &Symbols) -> u64 {
    let len: u64 = LEN_EXTRA
        .iter()
        .zip(&symbols.litlen_freq[257..])
        .map(|(&e, &f)| u64::from(e) * u64::from(f))
        .sum();
    let dist: u64 = DIST_EXTRA
        .iter()
        .zip(&symbols.dist_freq)
        .map(|(&e, &f)| u64::from(e) * u64::from(f))
        .sum();
    len + dist
}

fn write_symbols(
    w: &mut BitWriter<'_>,
    symbols: &Symbols,
    litlen: &Code<LITLEN_SYMBOLS>,
    dist: &Code<DIST_SYMBOLS>,
) {
    for &item in &symbols.items {
        if item & MATCH_FLAG == 0 {
            let s = item as usize;
            w.put(u32::from(litlen.codes[s]), u32::from(litlen.lens[s]));
            continue;
        }
        let len = ((item >> 12) & 0xFF) as usize + MIN_MATCH;
        let d = (item & 0xFFF) as usize + 1;
        let ls = usize::from(LEN_SLOT[len - MIN_MATCH]);
        let s = 257 + ls;
        let code_len = u32::from(litlen.lens[s]);
        w.put(
            u32::from(litlen.codes[s]) | len_extra_value(len, ls) << code_len,
            code_len + u32::from(LEN_EXTRA[ls]),
        );
        let ds = usize::from(DIST_SLOT[d - 1]);
        let code_len = u32::from(dist.lens[ds]);
        w.put(
            u32::from(dist.codes[ds]) | dist_extra_value(d, ds) << code_len,
            code_len + u32::from(DIST_EXTRA[ds]),
        );
    }
    w.put(
        u32::from(litlen.codes[END_OF_BLOCK]),
        u32::from(litlen.lens[END_OF_BLOCK]),
    );
}

fn write_stored(w: &mut BitWriter<'_>, raw: &[u8], last: bool) {
    let mut chunks = raw.chunks(MAX_STORED).peekable();
    if chunks.peek().is_none() {
        write_stored_chunk(w, &[], last);
    }
    while let Some(chunk) = chunks.next() {
        write_stored_chunk(w, chunk, last && chunks.peek().is_none());
    }
}

fn write_stored_chunk(w: &mut BitWriter<'_>, chunk: &[u8], last: bool) {
    w.put(u32::from(last), 1);
    w.put(0, 2);
    w.align_to_byte();
    let len = chunk.len() as u16;
    w.put(u32::from(len), 16);
    w.put(u32::from(!len), 16);
    w.put_bytes(chunk);
}
