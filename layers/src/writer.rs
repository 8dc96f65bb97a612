//! One-pass layer writer: tar bytes → sha256 (diff_id) → compressor → sha256 + size
//! (digest) → sink. No temporary copy; memory is bounded by the compressor's buffers.

use std::io::{self, Write};

use sha2::{Digest as _, Sha256};

use crate::compress::{CompressOptions, Compression, Compressor};
use crate::digest::{DiffId, Digest, HashingWriter, Sha256Hash};
use crate::normalize::{Normalize, Owner, TarWriter};
use crate::tree::Tree;

/// What a written layer is known by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar.
    pub diff_id: DiffId,
    /// sha256 of the blob as stored.
    pub digest: Digest,
    /// Blob size in bytes.
    pub size: u64,
    /// Uncompressed tar size in bytes.
    pub tar_size: u64,
    pub compression: Compression,
}

/// Takes the uncompressed tar stream through `Write`; [`LayerWriter::finish`] returns the
/// digests and the sink.
pub struct LayerWriter<W: Write + Send + 'static> {
    inner: Inner<W>,
    compression: Compression,
}

enum Inner<W: Write + Send + 'static> {
    /// Uncompressed: blob == tar, hashed once.
    Plain(HashingWriter<W>),
    Compressed {
        tar_hash: Sha256,
        tar_size: u64,
        comp: Compressor<HashingWriter<W>>,
    },
}

impl<W: Write + Send + 'static> LayerWriter<W> {
    pub fn new(sink: W, opts: CompressOptions) -> io::Result<Self> {
        let inner = match opts.compression {
            Compression::None => Inner::Plain(HashingWriter::new(sink)),
            _ => Inner::Compressed {
                tar_hash: Sha256::new(),
                tar_size: 0,
                comp: Compressor::new(HashingWriter::new(sink), opts)?,
            },
        };
        Ok(LayerWriter { inner, compression: opts.compression })
    }

    /// Uncompressed bytes written so far.
    pub fn tar_size(&self) -> u64 {
        match &self.inner {
            Inner::Plain(h) => h.count(),
            Inner::Compressed { tar_size, .. } => *tar_size,
        }
    }

    /// Finishes compression; the sink is flushed before it is returned.
    pub fn finish(self) -> io::Result<(LayerDigests, W)> {
        match self.inner {
            Inner::Plain(h) => {
                let (mut w, hash, n) = h.finish();
                w.flush()?;
                let d = LayerDigests {
                    diff_id: DiffId(hash),
                    digest: Digest(hash),
                    size: n,
                    tar_size: n,
                    compression: self.compression,
                };
                Ok((d, w))
            }
            Inner::Compressed { tar_hash, tar_size, comp } => {
                let h = comp.finish()?;
                let (mut w, hash, n) = h.finish();
                w.flush()?;
                let d = LayerDigests {
                    diff_id: DiffId(Sha256Hash(tar_hash.finalize().into())),
                    digest: Digest(hash),
                    size: n,
                    tar_size,
                    compression: self.compression,
                };
                Ok((d, w))
            }
        }
    }
}

impl<W: Write + Send + 'static> Write for LayerWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(h) => h.write(buf),
            Inner::Compressed { tar_hash, tar_size, comp } => {
                let n = comp.write(buf)?;
                tar_hash.update(&buf[..n]);
                *tar_size += n as u64;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Plain(h) => h.flush(),
            Inner::Compressed { comp, .. } => comp.flush(),
        }
    }
}

/// Writes `tree` under `prefix` as one layer (normalized tar, then compressed) into
/// `sink`.
pub fn write_tree_layer<W: Write + Send + 'static>(
    sink: W,
    opts: CompressOptions,
    rules: Normalize,
    tree: &Tree,
    prefix: &[u8],
    owner: Owner,
) -> io::Result<(LayerDigests, W)> {
    let lw = LayerWriter::new(sink, opts)?;
    let mut tar = TarWriter::new(lw, rules);
    tree.write_to(&mut tar, prefix, owner)?;
    let lw = tar.finish()?;
    lw.finish()
}
