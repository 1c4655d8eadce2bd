//! Length-limited Huffman codes, in the canonical form deflate sends.

/// Largest alphabet the encoder builds a code for (literal/length).
const MAX_SYMBOLS: usize = 288;

/// Scratch space for building codes, kept with the encoder state so that
/// building a code allocates nothing.
pub(crate) struct CodeBuilder {
    /// (frequency, symbol) of the used symbols, sorted by frequency.
    items: Vec<(u32, u16)>,
    /// Per item: tree links, then depths, then code lengths.
    work: Vec<u32>,
}

impl Default for CodeBuilder {
    fn default() -> Self {
        Self {
            items: Vec::with_capacity(MAX_SYMBOLS),
            work: Vec::with_capacity(MAX_SYMBOLS),
        }
    }
}

impl CodeBuilder {
    /// Fills `lens[s]` with the code length of symbol `s` for an optimal
    /// prefix code of at most `limit` bits over `freqs`; unused symbols get 0.
    ///
    /// The code is always complete, as zlib's inflate requires: with fewer
    /// than two used symbols, symbols 0 and 1 (or the used one and a spare)
    /// get one bit each.
    pub(crate) fn lengths(&mut self, freqs: &[u32], limit: u8, lens: &mut [u8]) {
        debug_assert!(freqs.len() <= MAX_SYMBOLS && lens.len() == freqs.len());
        lens.fill(0);
        self.items.clear();
        self.items.extend(
            freqs
                .iter()
                .enumerate()
                .filter(|(_, &f)| f > 0)
                .map(|(s, &f)| (f, s as u16)),
        );
        if self.items.len() < 2 {
            let used = self.items.first().map_or(0, |&(_, s)| usize::from(s));
            let spare = if used == 0 { 1 } else { 0 };
            lens[used] = 1;
            lens[spare] = 1;
            return;
        }
        self.items.sort_unstable();
        self.work.clear();
        self.work.extend(self.items.iter().map(|&(f, _)| f));
        minimum_redundancy(&mut self.work);
        limit_lengths(&mut self.work, u32::from(limit));
        for (&(_, symbol), &len) in self.items.iter().zip(&self.work) {
            lens[usize::from(symbol)] = len as u8;
        }
    }
}

/// Turns ascending weights into optimal code lengths in place
/// (Moffat & Katajainen's in-place method): `a[i]` becomes the length of
/// the item of weight `a[i]`. Needs at least two items.
fn minimum_redundancy(a: &mut [u32]) {
    let n = a.len();
    // Phase 1: combine the two lightest of (leaves, internal nodes); an
    // internal node's slot then holds its parent's index.
    a[0] += a[1];
    let (mut root, mut leaf) = (0usize, 2usize);
    for next in 1..n - 1 {
        if leaf >= n || a[root] < a[leaf] {
            a[next] = a[root];
            a[root] = next as u32;
            root += 1;
        } else {
            a[next] = a[leaf];
            leaf += 1;
        }
        if leaf >= n || (root < next && a[root] < a[leaf]) {
            a[next] += a[root];
            a[root] = next as u32;
            root += 1;
        } else {
            a[next] += a[leaf];
            leaf += 1;
        }
    }
    // Phase 2: depth of every internal node, from the root down.
    a[n - 2] = 0;
    for next in (0..n.saturating_sub(2)).rev() {
        a[next] = a[a[next] as usize] + 1;
    }
    // Phase 3: hand out leaf depths, heaviest leaves (at the end) first.
    let (mut avail, mut used, mut depth) = (1u32, 0u32, 0u32);
    let mut root = n as isize - 2;
    let mut next = n as isize - 1;
    while avail > 0 {
        while root >= 0 && a[root as usize] == depth {
            used += 1;
            root -= 1;
        }
        while avail > used {
            a[next as usize] = depth;
            next -= 1;
            avail -= 1;
        }
        avail = 2 * used;
        depth += 1;
        used = 0;
    }
}

/// Caps lengths (non-increasing, as `minimum_redundancy` leaves them) at
/// `limit` and restores a complete code: over-full codes lengthen the
/// longest codes under the cap, spare room shortens codes again.
fn limit_lengths(lens: &mut [u32], limit: u32) {
    if lens.first().is_none_or(|&l| l <= limit) {
        return;
    }
    let unit = |len: u32| 1u64 << (limit - len);
    for len in lens.iter_mut() {
        *len = (*len).min(limit);
    }
    let target = 1u64 << limit;
    let mut kraft: u64 = lens.iter().map(|&l| unit(l)).sum();
    // Lengths stay non-increasing: the first one under the cap is a longest.
    let mut j = lens.iter().position(|&l| l < limit).unwrap_or(lens.len());
    while kraft > target && j < lens.len() {
        kraft -= unit(lens[j] + 1);
        lens[j] += 1;
        if lens[j] == limit {
            j += 1;
        }
    }
    // Fill any room left, giving the bit back to the most frequent codes
    // that fit it.
    while kraft < target {
        let room = target - kraft;
        let Some(i) = (0..lens.len())
            .rev()
            .find(|&i| lens[i] > 1 && unit(lens[i]) <= room)
        else {
            break;
        };
        kraft += unit(lens[i]);
        lens[i] -= 1;
    }
    debug_assert_eq!(kraft, target);
}

/// Canonical codes for `lens`, bit-reversed so they can be written LSB
/// first.
pub(crate) fn canonical_codes(lens: &[u8], codes: &mut [u16]) {
    let mut count = [0u16; 16];
    for &l in lens {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut next = [0u16; 16];
    let mut code = 0u16;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    for (c, &l) in codes.iter_mut().zip(lens) {
        if l > 0 {
            let v = next[usize::from(l)];
            next[usize::from(l)] += 1;
            *c = v.reverse_bits() >> (16 - u32::from(l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kraft(lens: &[u8]) -> f64 {
        lens.iter()
            .filter(|&&l| l > 0)
            .map(|&l| 0.5f64.powi(i32::from(l)))
            .sum()
    }

    fn build(freqs: &[u32], limit: u8) -> Vec<u8> {
        let mut lens = vec![0; freqs.len()];
        CodeBuilder::default().lengths(freqs, limit, &mut lens);
        lens
    }

    #[test]
    fn optimal_lengths_for_a_small_alphabet() {
        assert_eq!(build(&[1, 1, 2, 4], 15), vec![3, 3, 2, 1]);
        assert_eq!(build(&[5, 5, 5, 5], 15), vec![2, 2, 2, 2]);
    }

    #[test]
    fn one_or_no_symbol_still_makes_a_complete_code() {
        assert_eq!(build(&[0, 0, 7], 15), vec![1, 0, 1]);
        assert_eq!(build(&[9, 0, 0], 15), vec![1, 1, 0]);
        assert_eq!(build(&[0, 0, 0], 15), vec![1, 1, 0]);
    }

    #[test]
    fn fibonacci_weights_are_capped_and_complete() {
        let mut freqs = vec![1u32, 1];
        while freqs.len() < 30 {
            let n = freqs.len();
            freqs.push(freqs[n - 1] + freqs[n - 2]);
        }
        let free = build(&freqs, 32);
        assert_eq!(*free.iter().max().unwrap(), 29);
        for limit in [7u8, 9, 15] {
            let lens = build(&freqs, limit);
            assert!(lens.iter().all(|&l| (1..=limit).contains(&l)));
            assert_eq!(kraft(&lens), 1.0, "limit {limit}");
        }
    }

    #[test]
    fn random_weights_give_complete_codes() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut b = CodeBuilder::default();
        for round in 0..500 {
            let n = 2 + round % 287;
            let freqs: Vec<u32> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let r = (seed % 1000) as u32;
                    if r < 300 {
                        0
                    } else {
                        1 << (r % 20)
                    }
                })
                .collect();
            let mut lens = vec![0; n];
            b.lengths(&freqs, 15, &mut lens);
            assert_eq!(kraft(&lens), 1.0, "round {round}");
            for (f, l) in freqs.iter().zip(&lens) {
                assert!(*l <= 15);
                assert!(*f == 0 || *l > 0);
            }
        }
    }

    #[test]
    fn canonical_codes_follow_rfc_1951() {
        // The example of RFC 1951 3.2.2: lengths (3,3,3,3,3,2,4,4).
        let lens = [3u8, 3, 3, 3, 3, 2, 4, 4];
        let mut codes = [0u16; 8];
        canonical_codes(&lens, &mut codes);
        let plain: Vec<u16> = codes
            .iter()
            .zip(&lens)
            .map(|(&c, &l)| c.reverse_bits() >> (16 - u32::from(l)))
            .collect();
        assert_eq!(plain, vec![2, 3, 4, 5, 6, 0, 14, 15]);
    }
}
