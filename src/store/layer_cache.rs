//! The input-addressed layer cache: a key computed from everything that determines a
//! layer's bytes maps to the layer's digests, so a known layer is never tarred or
//! compressed again. Each layer scope also keeps the key's ingredients from its last build,
//! so a miss can say what changed.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use imgforge_layers::{
    CompressOptions, Compression, ContentHash, DiffId, Digest, EntryKind, LayerDigests, Normalize, Owner, Sha256Hash,
    Tree,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::stat_cache::StatCache;
use super::{write_hint, BlobStore, StoreError};

/// Bump when the bytes `imgforge-layers` writes for the same input change.
const FORMAT: &str = "imgforge-layer-v1";

/// A layer's cache key and what it was computed from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerKey {
    pub key: String,
    pub settings: String,
    /// (path, first 16 hex digits of the hash of the entry's kind, mode, size, content or link
    /// target), in canonical order: for explaining misses.
    pub items: Vec<(String, String)>,
}

/// Computes the key of the layer `tree.write_to(prefix, owner)` would write with these settings,
/// reading content hashes through the stat cache.
pub fn tree_key(
    tree: &Tree,
    prefix: &[u8],
    owner: Owner,
    rules: &Normalize,
    compress: &CompressOptions,
    stat: &mut StatCache,
) -> std::io::Result<LayerKey> {
    let hashes = stat.content_hashes(tree)?;
    tree_key_with(tree, prefix, owner, rules, compress, &mut |i, e| {
        hashes[i].ok_or_else(|| std::io::Error::other(format!("{} was not hashed", e.rel.display())))
    })
}

/// [`tree_key`] with file content hashes from `content(entry index, entry)`.
pub fn tree_key_with(
    tree: &Tree,
    prefix: &[u8],
    owner: Owner,
    rules: &Normalize,
    compress: &CompressOptions,
    content: &mut dyn FnMut(usize, &imgforge_layers::TreeEntry) -> std::io::Result<ContentHash>,
) -> std::io::Result<LayerKey> {
    let level = compress.level.unwrap_or_else(|| compress.compression.default_level());
    let settings = format!(
        "{FORMAT} prefix={} owner={}:{} mtime={} special-bits={} capabilities={} compression={} level={}",
        String::from_utf8_lossy(prefix),
        owner.uid,
        owner.gid,
        rules.mtime,
        rules.keep_special_bits,
        rules.keep_capabilities,
        compress.compression.name(),
        if compress.compression == Compression::None { 0 } else { level },
    );
    let mut key = Sha256::new();
    key.update(settings.as_bytes());
    let mut items = Vec::with_capacity(tree.entries.len());
    for (i, e) in tree.entries.iter().enumerate() {
        let mut h = Sha256::new();
        match &e.kind {
            EntryKind::Dir => h.update(format!("dir {:o}", rules.dir_mode(e.mode))),
            EntryKind::File => {
                let content = content(i, e)?;
                h.update(format!("file {:o} {} ", rules.file_mode(e.mode), e.size));
                h.update(content.0);
            }
            EntryKind::Symlink(t) => {
                h.update(b"symlink ");
                h.update(t);
            }
            EntryKind::HardLink(t) => {
                h.update(format!("hardlink {:o} ", rules.file_mode(e.mode)));
                h.update(t.as_os_str().as_bytes());
            }
        }
        if let Some(o) = e.owner {
            h.update(format!(" owner {}:{}", o.uid, o.gid));
        }
        let item = Sha256Hash(h.finalize().into());
        let path = e.rel.as_os_str().as_bytes();
        key.update((path.len() as u64).to_le_bytes());
        key.update(path);
        key.update(item.0);
        // 64 bits of the item hash are plenty to tell what changed; the key uses all of it.
        items.push((String::from_utf8_lossy(path).into_owned(), item.hex()[..16].to_string()));
    }
    Ok(LayerKey { key: Sha256Hash(key.finalize().into()).hex(), settings, items })
}

impl LayerKey {
    /// What differs from `prev`: the first changed setting or path (`None`: nothing).
    pub fn what_changed(&self, prev: &LayerKey) -> Option<String> {
        if prev.settings != self.settings {
            let changed: Vec<&str> =
                self.settings.split(' ').filter(|s| !prev.settings.split(' ').any(|p| p == *s)).collect();
            return Some(format!("settings changed: {}", changed.join(", ")));
        }
        let (mut a, mut b) = (prev.items.iter().peekable(), self.items.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    if x.1 != y.1 {
                        return Some(format!("{} changed", y.0));
                    }
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.0 < y.0 => return Some(format!("{} was removed", x.0)),
                (Some(_), Some(y)) | (None, Some(y)) => return Some(format!("{} was added", y.0)),
                (Some(x), None) => return Some(format!("{} was removed", x.0)),
                (None, None) => return None,
            }
        }
    }
}

#[derive(Clone)]
pub struct LayerCache {
    dir: PathBuf,
}

/// How a layer's digests are written down (the layer cache, CNB build records).
pub fn digests_json(d: &LayerDigests) -> serde_json::Value {
    json!({
        "diff_id": d.diff_id.to_string(), "digest": d.digest.to_string(), "size": d.size,
        "tar_size": d.tar_size, "compression": d.compression.name(),
    })
}

pub fn digests_from_json(v: &serde_json::Value) -> Option<LayerDigests> {
    Some(LayerDigests {
        diff_id: v["diff_id"].as_str()?.parse::<DiffId>().ok()?,
        digest: v["digest"].as_str()?.parse::<Digest>().ok()?,
        size: v["size"].as_u64()?,
        tar_size: v["tar_size"].as_u64()?,
        compression: v["compression"].as_str()?.parse::<Compression>().ok()?,
    })
}

impl LayerCache {
    pub fn open(store: &BlobStore) -> Result<LayerCache, StoreError> {
        let dir = store.bucket(super::buckets::LAYERS)?;
        fs::create_dir_all(dir.join("scopes")).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        Ok(LayerCache { dir })
    }

    /// The layer stored under `key`, if its blob is still in the store.
    pub fn get(&self, store: &BlobStore, key: &LayerKey) -> Option<LayerDigests> {
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.join(format!("{}.json", key.key))).ok()?).ok()?;
        let d = digests_from_json(&v)?;
        store.contains(&d.digest).then_some(d)
    }

    pub fn put(&self, key: &LayerKey, d: &LayerDigests) -> std::io::Result<()> {
        write_hint(&self.dir.join(format!("{}.json", key.key)), &serde_json::to_vec(&digests_json(d)).expect("json"))
    }

    fn scope_file(&self, scope: &str) -> PathBuf {
        self.dir.join("scopes").join(format!("{}.bin", Sha256Hash::of(scope.as_bytes()).hex()))
    }

    /// Why `key` differs from the last key recorded for `scope`: the first changed setting or path.
    pub fn explain_miss(&self, scope: &str, key: &LayerKey) -> String {
        let Some(prev) = fs::read(self.scope_file(scope)).ok().and_then(|b| postcard::from_bytes::<LayerKey>(&b).ok())
        else {
            return "first build".into();
        };
        key.what_changed(&prev).unwrap_or_else(|| "its blob is no longer in the cache".into())
    }

    pub fn record(&self, scope: &str, key: &LayerKey) -> std::io::Result<()> {
        // postcard: one item per file of the layer, written while a first build finishes.
        write_hint(&self.scope_file(scope), &postcard::to_stdvec(key).map_err(std::io::Error::other)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgforge_layers::scan_tree;

    fn key_of(dir: &std::path::Path, stat: &mut StatCache, level: Option<i32>) -> LayerKey {
        let tree = scan_tree(dir, &|_, _| true).unwrap();
        let opts = CompressOptions { compression: Compression::Gzip, level, threads: 1 };
        tree_key(&tree, b"workspace", Owner { uid: 0, gid: 0 }, &Normalize::default(), &opts, stat).unwrap()
    }

    #[test]
    fn key_tracks_content_settings_and_explains() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.txt"), "one").unwrap();
        fs::create_dir(d.path().join("src")).unwrap();
        fs::write(d.path().join("src/main.py"), "print(1)").unwrap();
        let mut stat = StatCache::ephemeral();
        let k1 = key_of(d.path(), &mut stat, None);
        assert_eq!(k1, key_of(d.path(), &mut stat, None), "same tree, same key");
        assert_ne!(k1.key, key_of(d.path(), &mut stat, Some(9)).key, "level is part of the key");

        let store_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(store_dir.path()).unwrap();
        let cache = LayerCache::open(&store).unwrap();
        assert_eq!(cache.explain_miss("app", &k1), "first build");
        cache.record("app", &k1).unwrap();

        fs::write(d.path().join("src/main.py"), "print(2)").unwrap();
        let k2 = key_of(d.path(), &mut stat, None);
        assert_ne!(k1.key, k2.key);
        assert_eq!(cache.explain_miss("app", &k2), "src/main.py changed");
        fs::write(d.path().join("b.txt"), "new").unwrap();
        assert_eq!(cache.explain_miss("app", &key_of(d.path(), &mut stat, None)), "b.txt was added");
        assert!(cache.explain_miss("app", &key_of(d.path(), &mut stat, Some(1))).contains("level=1"));

        // A cached entry is only returned while its blob exists.
        let digests = LayerDigests {
            diff_id: DiffId::of(b"t"),
            digest: Digest::of(b"blob"),
            size: 4,
            tar_size: 1,
            compression: Compression::Gzip,
        };
        cache.put(&k1, &digests).unwrap();
        assert_eq!(cache.get(&store, &k1), None);
        store.put_bytes(b"blob").unwrap();
        assert_eq!(cache.get(&store, &k1), Some(digests));
    }

    #[test]
    fn stat_cache_skips_unchanged_files_and_sees_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "x").unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(store_dir.path()).unwrap();
        let tree = scan_tree(d.path(), &|_, _| true).unwrap();
        let mut stat = StatCache::load(&store, d.path()).unwrap().without_racy_window();
        stat.content_hash(&f, &tree.entries[0]).unwrap();
        assert_eq!(stat.hashed_files, 1);
        stat.save().unwrap();

        let mut again = StatCache::load(&store, d.path()).unwrap().without_racy_window();
        assert_eq!(again.content_hash(&f, &tree.entries[0]).unwrap(), ContentHash::of(b"x"));
        assert_eq!(again.hashed_files, 0, "an unchanged file is not read again");
        fs::write(&f, "y").unwrap();
        let tree2 = scan_tree(d.path(), &|_, _| true).unwrap();
        assert_eq!(again.content_hash(&f, &tree2.entries[0]).unwrap(), ContentHash::of(b"y"));
        assert_eq!(again.hashed_files, 1);

        // Within the racy window nothing is remembered.
        let mut racy = StatCache::load(&store, d.path()).unwrap();
        racy.content_hash(&f, &tree2.entries[0]).unwrap();
        racy.save().unwrap();
        let mut after = StatCache::load(&store, d.path()).unwrap();
        after.content_hash(&f, &tree2.entries[0]).unwrap();
        assert_eq!(after.hashed_files, 1, "a just-modified file is read again");
    }
}
