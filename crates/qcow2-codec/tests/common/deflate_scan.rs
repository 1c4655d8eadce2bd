//! A small, independent raw-deflate decoder (RFC 1951) that also reports the
//! longest back-reference distance, to prove what window a stream needs.
//! zlib-rs cannot check this itself: it always keeps a 32 KiB window.

/// Lengths for length symbols 257..=285: base and extra bits.
const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// Distances for distance symbols 0..=29: base and extra bits.
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
/// Order in which code-length code lengths are sent.
const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

struct Bits<'a> {
    data: &'a [u8],
    bit: usize,
}

impl Bits<'_> {
    fn take(&mut self, n: u8) -> Result<u32, String> {
        let mut v = 0;
        for i in 0..n {
            let byte = *self.data.get(self.bit / 8).ok_or("input ends")?;
            v |= u32::from((byte >> (self.bit % 8)) & 1) << i;
            self.bit += 1;
        }
        Ok(v)
    }
}

/// Canonical Huffman code: symbols sorted by code length, count per length.
struct Code {
    count: [u16; 16],
    symbols: Vec<u16>,
}

impl Code {
    fn new(lengths: &[u8]) -> Self {
        let mut count = [0u16; 16];
        for &l in lengths {
            count[l as usize] += 1;
        }
        count[0] = 0;
        let mut symbols = Vec::new();
        for len in 1..16u8 {
            for (sym, &l) in lengths.iter().enumerate() {
                if l == len {
                    symbols.push(sym as u16);
                }
            }
        }
        Self { count, symbols }
    }

    /// Reads one symbol: codes are sent most-significant bit first.
    fn decode(&self, bits: &mut Bits<'_>) -> Result<u16, String> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= bits.take(1)? as i32;
            let count = i32::from(self.count[len]);
            if code - first < count {
                return Ok(self.symbols[(index + code - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("invalid Huffman code".into())
    }
}

/// Decodes a raw deflate stream; returns the output and the largest
/// distance any back-reference used.
pub fn inflate(stream: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut bits = Bits {
        data: stream,
        bit: 0,
    };
    let mut out: Vec<u8> = Vec::new();
    let mut max_dist = 0;
    loop {
        let last = bits.take(1)? == 1;
        match bits.take(2)? {
            0 => {
                bits.bit = bits.bit.div_ceil(8) * 8;
                let len = bits.take(16)? as usize;
                let nlen = bits.take(16)? as usize;
                if len != !nlen & 0xffff {
                    return Err("stored length mismatch".into());
                }
                for _ in 0..len {
                    out.push(bits.take(8)? as u8);
                }
            }
            1 => {
                let mut lit = [8u8; 288];
                lit[144..256].fill(9);
                lit[256..280].fill(7);
                let (lit, dist) = (Code::new(&lit), Code::new(&[5u8; 30]));
                max_dist = max_dist.max(block(&mut bits, &lit, &dist, &mut out)?);
            }
            2 => {
                let (lit, dist) = dynamic_codes(&mut bits)?;
                max_dist = max_dist.max(block(&mut bits, &lit, &dist, &mut out)?);
            }
            _ => return Err("reserved block type".into()),
        }
        if last {
            return Ok((out, max_dist));
        }
    }
}

fn dynamic_codes(bits: &mut Bits<'_>) -> Result<(Code, Code), String> {
    let nlit = bits.take(5)? as usize + 257;
    let ndist = bits.take(5)? as usize + 1;
    let ncl = bits.take(4)? as usize + 4;
    let mut cl = [0u8; 19];
    for &i in &CL_ORDER[..ncl] {
        cl[i] = bits.take(3)? as u8;
    }
    let cl = Code::new(&cl);
    let mut lengths = Vec::with_capacity(nlit + ndist);
    while lengths.len() < nlit + ndist {
        let (value, repeat) = match cl.decode(bits)? {
            sym @ 0..=15 => (sym as u8, 1),
            16 => (
                *lengths.last().ok_or("repeat with no length")?,
                3 + bits.take(2)?,
            ),
            17 => (0, 3 + bits.take(3)?),
            _ => (0, 11 + bits.take(7)?),
        };
        lengths.extend(std::iter::repeat_n(value, repeat as usize));
    }
    if lengths.len() != nlit + ndist {
        return Err("code lengths overrun".into());
    }
    Ok((Code::new(&lengths[..nlit]), Code::new(&lengths[nlit..])))
}

fn block(bits: &mut Bits<'_>, lit: &Code, dist: &Code, out: &mut Vec<u8>) -> Result<usize, String> {
    let mut max_dist = 0;
    loop {
        let sym = lit.decode(bits)? as usize;
        match sym {
            0..=255 => out.push(sym as u8),
            256 => return Ok(max_dist),
            257..=285 => {
                let i = sym - 257;
                let len = LEN_BASE[i] as usize + bits.take(LEN_EXTRA[i])? as usize;
                let d = dist.decode(bits)? as usize;
                if d >= 30 {
                    return Err("bad distance symbol".into());
                }
                let distance = DIST_BASE[d] as usize + bits.take(DIST_EXTRA[d])? as usize;
                if distance > out.len() {
                    return Err("distance before start of output".into());
                }
                max_dist = max_dist.max(distance);
                for _ in 0..len {
                    out.push(out[out.len() - distance]);
                }
            }
            _ => return Err("bad length symbol".into()),
        }
    }
}
