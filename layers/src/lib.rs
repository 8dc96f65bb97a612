//! imgforge-layers: the pure, synchronous core of imgforge.
//!
//! Bytes flow once: files → normalizing tar writer → sha256 (diff_id) → compressor →
//! sha256 + size (digest) → sink. Nothing here touches the network, spawns async tasks or
//! prints; errors are returned, warnings are handed back to the caller.

pub mod compress;
pub mod content;
pub mod digest;
pub mod extract;
pub mod normalize;
pub mod reader;
pub mod synthetic;
pub mod tree;
pub mod whiteout;
pub mod writer;

#[cfg(test)]
mod roundtrip_tests;

pub use compress::{CompressOptions, Compression, Compressor, ParseCompressionError, GZIP_CHUNK_SIZE, ZSTD_CHUNK_SIZE};
pub use content::{ContentHash, ContentHasher, ContentReader};
pub use digest::{DiffId, Digest, DigestError, HashingReader, HashingWriter, Sha256Hash};
pub use extract::{
    extract_compressed, extract_layer, extract_layer_at, Devices, ExtractError, ExtractOptions, ExtractStats, Resolve,
};
pub use normalize::{Normalize, Owner, TarWriter, DEFAULT_EPOCH};
pub use reader::{decompress, Entry, EntryData, EntryType, LayerReader, Limits, ReadError};
pub use tree::{scan_and_write, scan_tree, EntryKind, Skipped, Tree, TreeEntry};
pub use writer::{write_tree_layer, LayerDigests, LayerWriter};
