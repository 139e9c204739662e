//! A set of block indices, kept as fixed-size bitmap chunks.
//!
//! One chunk covers [`CHUNK_BLOCKS`] consecutive blocks in 512 bytes, so a
//! file's dirty blocks cost memory (and sled space) in proportion to the
//! regions written, whatever the file size, and a flush rewrites only the
//! chunks that changed.

use std::collections::BTreeMap;

/// Blocks per chunk (one bit each).
pub const CHUNK_BLOCKS: u64 = 4096;
const WORDS: usize = (CHUNK_BLOCKS / 64) as usize;
/// Size of one chunk when stored.
pub const CHUNK_BYTES: usize = WORDS * 8;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct BlockSet {
    chunks: BTreeMap<u64, Box<[u64; WORDS]>>,
}

impl std::fmt::Debug for BlockSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ranges()).finish()
    }
}

impl BlockSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Insert blocks `start..end`; calls `touched` with every chunk index changed.
    pub fn insert_range(&mut self, start: u64, end: u64, touched: &mut impl FnMut(u64)) {
        let mut b = start;
        while b < end {
            let c = b / CHUNK_BLOCKS;
            let chunk_end = ((c + 1) * CHUNK_BLOCKS).min(end);
            let words = self.chunks.entry(c).or_insert_with(|| Box::new([0; WORDS]));
            let mut changed = false;
            let mut i = b;
            while i < chunk_end {
                let bit = i % CHUNK_BLOCKS;
                let w = (bit / 64) as usize;
                let lo = bit % 64;
                // how many bits in this word
                let n = (64 - lo).min(chunk_end - i);
                let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << lo };
                if words[w] & mask != mask {
                    words[w] |= mask;
                    changed = true;
                }
                i += n;
            }
            if changed {
                touched(c);
            }
            b = chunk_end;
        }
    }

    pub fn insert(&mut self, block: u64) {
        self.insert_range(block, block + 1, &mut |_| {});
    }

    pub fn contains(&self, block: u64) -> bool {
        let c = block / CHUNK_BLOCKS;
        let bit = block % CHUNK_BLOCKS;
        self.chunks.get(&c).is_some_and(|w| w[(bit / 64) as usize] >> (bit % 64) & 1 == 1)
    }

    /// Remove every block at or after `start` (the file got shorter).
    pub fn remove_from(&mut self, start: u64, touched: &mut impl FnMut(u64)) {
        let first = start / CHUNK_BLOCKS;
        let later: Vec<u64> = self.chunks.range(first + 1..).map(|(k, _)| *k).collect();
        for k in later {
            self.chunks.remove(&k);
            touched(k);
        }
        if let Some(words) = self.chunks.get_mut(&first) {
            let mut changed = false;
            for bit in (start % CHUNK_BLOCKS)..CHUNK_BLOCKS {
                let w = (bit / 64) as usize;
                if bit % 64 == 0 {
                    if words[w] != 0 {
                        words[w] = 0;
                        changed = true;
                    }
                    continue;
                }
                if words[w] >> (bit % 64) & 1 == 1 {
                    words[w] &= !(1u64 << (bit % 64));
                    changed = true;
                }
            }
            if words.iter().all(|w| *w == 0) {
                self.chunks.remove(&first);
                changed = true;
            }
            if changed {
                touched(first);
            }
        }
    }

    /// Number of blocks in the set.
    pub fn count(&self) -> u64 {
        self.chunks.values().map(|w| w.iter().map(|x| x.count_ones() as u64).sum::<u64>()).sum()
    }

    /// Number of blocks in the set below `limit`.
    pub fn count_below(&self, limit: u64) -> u64 {
        self.ranges().iter().map(|&(s, e)| e.min(limit).saturating_sub(s)).sum()
    }

    /// The set as sorted, non-overlapping `start..end` runs.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&c, words) in &self.chunks {
            for (w, &word) in words.iter().enumerate() {
                if word == 0 {
                    continue;
                }
                for bit in 0..64 {
                    if word >> bit & 1 == 1 {
                        let b = c * CHUNK_BLOCKS + w as u64 * 64 + bit;
                        match out.last_mut() {
                            Some(last) if last.1 == b => last.1 = b + 1,
                            _ => out.push((b, b + 1)),
                        }
                    }
                }
            }
        }
        out
    }

    /// The stored form of one chunk, or `None` if it holds no block.
    pub fn chunk_bytes(&self, c: u64) -> Option<Vec<u8>> {
        self.chunks.get(&c).map(|w| w.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// Load one chunk from its stored form.
    pub fn set_chunk(&mut self, c: u64, bytes: &[u8]) {
        if bytes.len() != CHUNK_BYTES {
            return;
        }
        let mut words = Box::new([0u64; WORDS]);
        for (i, w) in words.iter_mut().enumerate() {
            *w = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        }
        if words.iter().any(|w| *w != 0) {
            self.chunks.insert(c, words);
        } else {
            self.chunks.remove(&c);
        }
    }

    pub fn chunk_indices(&self) -> Vec<u64> {
        self.chunks.keys().copied().collect()
    }

    pub fn union_with(&mut self, other: &BlockSet) {
        for (&c, words) in &other.chunks {
            let mine = self.chunks.entry(c).or_insert_with(|| Box::new([0; WORDS]));
            for (a, b) in mine.iter_mut().zip(words.iter()) {
                *a |= *b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_across_chunks() {
        let mut s = BlockSet::new();
        let mut touched = Vec::new();
        s.insert_range(4090, 4100, &mut |c| touched.push(c));
        assert_eq!(touched, vec![0, 1]);
        assert_eq!(s.ranges(), vec![(4090, 4100)]);
        assert_eq!(s.count(), 10);
        s.insert(3);
        assert_eq!(s.ranges(), vec![(3, 4), (4090, 4100)]);
        s.remove_from(4095, &mut |_| {});
        assert_eq!(s.ranges(), vec![(3, 4), (4090, 4095)]);
        s.remove_from(0, &mut |_| {});
        assert!(s.is_empty());
    }

    #[test]
    fn stored_form_round_trips() {
        let mut s = BlockSet::new();
        s.insert_range(0, 200, &mut |_| {});
        s.insert_range(9000, 9001, &mut |_| {});
        let mut t = BlockSet::new();
        for c in s.chunk_indices() {
            t.set_chunk(c, &s.chunk_bytes(c).unwrap());
        }
        assert_eq!(s, t);
        assert_eq!(t.count_below(100), 100);
    }

    #[test]
    fn unchanged_insert_touches_nothing() {
        let mut s = BlockSet::new();
        s.insert_range(10, 20, &mut |_| {});
        let mut n = 0;
        s.insert_range(12, 18, &mut |_| n += 1);
        assert_eq!(n, 0);
    }
}
