use std::io::{self, Read};

use imgforge_layers::{Digest, HashingReader};

/// Reads a blob and fails, at the end or as soon as it is too long, unless the bytes match
/// the digest and size they were asked for by.
pub struct VerifiedReader<R> {
    inner: Option<HashingReader<R>>,
    expected: Digest,
    size: Option<u64>,
    read: u64,
    from: String,
}

impl<R: Read> VerifiedReader<R> {
    pub fn new(inner: R, expected: Digest, size: Option<u64>, from: String) -> Self {
        VerifiedReader { inner: Some(HashingReader::new(inner)), expected, size, read: 0, from }
    }

    fn mismatch(&self, why: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("blob {} from {} does not match: {why}", self.expected, self.from),
        )
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else { return Ok(0) };
        let n = inner.read(buf)?;
        self.read += n as u64;
        if let Some(size) = self.size {
            if self.read > size {
                return Err(self.mismatch(format!("more than the {size} bytes its descriptor gives")));
            }
        }
        if n == 0 && !buf.is_empty() {
            let (_, hash, count) = self.inner.take().expect("checked above").finish();
            if self.size.is_some_and(|s| s != count) {
                return Err(self.mismatch(format!("{count} bytes, descriptor says {}", self.size.unwrap_or(0))));
            }
            if Digest(hash) != self.expected {
                return Err(self.mismatch(format!("content hashes to {}", Digest(hash))));
            }
        }
        Ok(n)
    }
}
