//! LSB-first bit output into a caller's buffer that may run out.

/// Writes deflate's LSB-first bit stream into a fixed buffer. Running out of
/// room is not an error: the writer stops storing and [`BitWriter::finish`]
/// reports `None`, which the encoder turns into "does not compress".
pub(crate) struct BitWriter<'a> {
    out: &'a mut [u8],
    pos: usize,
    bits: u64,
    count: u32,
    full: bool,
}

impl<'a> BitWriter<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Self {
            out,
            pos: 0,
            bits: 0,
            count: 0,
            full: false,
        }
    }

    /// Appends the low `n` bits of `value` (`n <= 32`).
    #[inline]
    pub(crate) fn put(&mut self, value: u32, n: u32) {
        debug_assert!(n <= 32 && (n == 32 || value >> n == 0));
        self.bits |= u64::from(value) << self.count;
        self.count += n;
        if self.count >= 32 {
            self.spill();
        }
    }

    #[inline]
    fn spill(&mut self) {
        let word = (self.bits as u32).to_le_bytes();
        match self.out.get_mut(self.pos..self.pos + 4) {
            Some(dst) => {
                dst.copy_from_slice(&word);
                self.pos += 4;
            }
            None => self.full = true,
        }
        self.bits >>= 32;
        self.count -= 32;
    }

    /// True once a write did not fit.
    pub(crate) fn overflowed(&self) -> bool {
        self.full
    }

    /// Pads to a byte boundary with zero bits (stored blocks start there).
    pub(crate) fn align_to_byte(&mut self) {
        let pad = (8 - self.count % 8) % 8;
        self.put(0, pad);
    }

    /// Appends whole bytes; the writer must be byte-aligned.
    pub(crate) fn put_bytes(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.count % 8, 0);
        while self.count > 0 {
            self.push_byte();
        }
        match self.out.get_mut(self.pos..self.pos + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos += bytes.len();
            }
            None => self.full = true,
        }
    }

    fn push_byte(&mut self) {
        match self.out.get_mut(self.pos) {
            Some(b) => {
                *b = self.bits as u8;
                self.pos += 1;
            }
            None => self.full = true,
        }
        self.bits >>= 8;
        self.count = self.count.saturating_sub(8);
    }

    /// Flushes the last partial byte; the stream length, or `None` when the
    /// buffer was too small.
    pub(crate) fn finish(mut self) -> Option<usize> {
        while self.count > 0 {
            self.push_byte();
        }
        (!self.full).then_some(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_come_out_lsb_first() {
        let mut buf = [0u8; 8];
        let mut w = BitWriter::new(&mut buf);
        w.put(0b1, 1);
        w.put(0b01, 2);
        w.put(0x1F, 5);
        w.put(0xABCD, 16);
        w.put(0x3, 2);
        assert_eq!(w.finish(), Some(4));
        assert_eq!(buf[..4], [0b1111_1011, 0xCD, 0xAB, 0x03]);
    }

    #[test]
    fn aligned_bytes_follow_the_bits() {
        let mut buf = [0u8; 8];
        let mut w = BitWriter::new(&mut buf);
        w.put(0b101, 3);
        w.align_to_byte();
        w.put_bytes(&[0x11, 0x22]);
        w.put(0xFF, 8);
        assert_eq!(w.finish(), Some(4));
        assert_eq!(buf[..4], [0b101, 0x11, 0x22, 0xFF]);
    }

    #[test]
    fn a_full_buffer_is_reported() {
        let mut buf = [0u8; 3];
        let mut w = BitWriter::new(&mut buf);
        for _ in 0..4 {
            w.put(0xFF, 8);
        }
        assert_eq!(w.finish(), None);
        let mut buf = [0u8; 3];
        let mut w = BitWriter::new(&mut buf);
        w.put(0xFFFF, 16);
        w.put(0xFF, 8);
        assert_eq!(w.finish(), Some(3));
    }
}
