//! Content hashes of files, for imgforge's input-addressed caches (stat cache, layer keys).
//! They never appear in an image: OCI digests are sha256 ([`crate::digest`]).
//!
//! BLAKE3, because a first build hashes every file beside the two sha256 passes the layer
//! itself needs (diff_id and digest), and BLAKE3 takes about half of sha256's time there,
//! even against the CPU's SHA extensions (small files) and a fifth on large ones.

use std::fmt;
use std::io::{self, Read};

use crate::digest::{DigestError, Sha256Hash};

/// The BLAKE3 hash of a file's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex, 64 characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase hex characters.
    pub fn from_hex(s: &str) -> Result<Self, DigestError> {
        Sha256Hash::from_hex(s).map(|h| ContentHash(h.0))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.hex())
    }
}

/// Incremental [`ContentHash`].
#[derive(Default)]
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> ContentHash {
        ContentHash(*self.0.finalize().as_bytes())
    }
}

/// A reader that hashes what is read through it.
pub struct ContentReader<R> {
    inner: R,
    hasher: ContentHasher,
}

impl<R: Read> ContentReader<R> {
    pub fn new(inner: R) -> Self {
        ContentReader { inner, hasher: ContentHasher::default() }
    }

    pub fn finish(self) -> (R, ContentHash) {
        let h = self.hasher.finish();
        (self.inner, h)
    }
}

impl<R: Read> Read for ContentReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_hasher_and_one_shot_agree_and_hex_round_trips() {
        let data = vec![7u8; 100_000];
        let mut r = ContentReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (_, h) = r.finish();
        assert_eq!(h, ContentHash::of(&data));
        assert_ne!(h, ContentHash::of(b""));
        assert_eq!(ContentHash::from_hex(&h.hex()).unwrap(), h);
        // The published BLAKE3 test vector for the empty input.
        assert_eq!(ContentHash::of(b"").hex(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
    }
}
