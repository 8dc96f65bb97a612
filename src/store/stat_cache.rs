//! Content hashes of files, remembered by (path, device, inode, size, mtime, ctime) as git's
//! index does, so an unchanged file is never read twice.
//!
//! Racy-clean rule: a hash is remembered only if the file's mtime and ctime were at least
//! [`RACY_NS`] old when it was read. A file changed after that gets a new ctime (which
//! no user can set back), so a stale entry can never match it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use imgforge_layers::{ContentHash, ContentHasher, EntryKind, Sha256Hash, Tree, TreeEntry};
use serde::{Deserialize, Serialize};

use super::{write_hint, BlobStore, StoreError};

pub(crate) const RACY_NS: i128 = 2_000_000_000;
const HASH_THREADS: usize = 4;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct StatEntry {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    hash: [u8; 32],
}

impl StatEntry {
    fn of(e: &TreeEntry, hash: ContentHash) -> StatEntry {
        StatEntry { dev: e.dev, ino: e.ino, size: e.size, mtime_ns: e.mtime_ns, ctime_ns: e.ctime_ns, hash: hash.0 }
    }

    /// The remembered hash, if `e`'s stat is exactly the one it was remembered with.
    fn hash_if_unchanged(&self, e: &TreeEntry) -> Option<ContentHash> {
        let same = (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
            == (e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns);
        same.then_some(ContentHash(self.hash))
    }
}

/// One stat cache per tree root (the app dir, a build dir, …).
pub struct StatCache {
    file: Option<PathBuf>,
    /// The root as the caller names it: paths under it are stored relative to it.
    root: PathBuf,
    entries: HashMap<PathBuf, StatEntry>,
    seen: HashMap<PathBuf, StatEntry>,
    now_ns: i128,
    racy_ns: i128,
    /// How many files had to be read (for reports and tests).
    pub hashed_files: u64,
}

impl StatCache {
    pub fn load(store: &BlobStore, root: &Path) -> Result<StatCache, StoreError> {
        let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let name = Sha256Hash::of(canonical.as_os_str().as_bytes()).hex();
        let file = store.bucket(super::buckets::STAT)?.join(format!("{name}.bin"));
        // Unreadable or from another version: start empty (costs a re-read, nothing more).
        let stored: Vec<(Vec<u8>, StatEntry)> =
            fs::read(&file).ok().and_then(|b| postcard::from_bytes(&b).ok()).unwrap_or_default();
        let entries = stored.into_iter().map(|(p, e)| (root.join(std::ffi::OsStr::from_bytes(&p)), e)).collect();
        Ok(StatCache {
            file: Some(file),
            root: root.to_path_buf(),
            entries,
            seen: HashMap::new(),
            now_ns: now_ns(),
            racy_ns: RACY_NS,
            hashed_files: 0,
        })
    }

    /// A cache that remembers nothing between runs.
    pub fn ephemeral() -> StatCache {
        StatCache {
            file: None,
            root: PathBuf::new(),
            entries: HashMap::new(),
            seen: HashMap::new(),
            now_ns: now_ns(),
            racy_ns: RACY_NS,
            hashed_files: 0,
        }
    }

    /// The content hash of the file `e` at `abs`, from the cache when its stat is unchanged.
    pub fn content_hash(&mut self, abs: &Path, e: &TreeEntry) -> io::Result<ContentHash> {
        if let Some(h) = self.cached(abs, e) {
            return Ok(h);
        }
        let hash = hash_file(abs, e.size, &mut Vec::new())?;
        self.hashed_files += 1;
        self.remember(abs, e, hash);
        Ok(hash)
    }

    /// The content hash of every regular file of `tree` (by entry index; `None` for other
    /// kinds), from the cache where the stat is unchanged; the others are read by a few
    /// threads at once (open and read calls dominate for many small files).
    pub fn content_hashes(&mut self, tree: &Tree) -> io::Result<Vec<Option<ContentHash>>> {
        let mut hashes = vec![None; tree.entries.len()];
        let mut misses = Vec::new();
        for (i, e) in tree.entries.iter().enumerate() {
            if e.kind != EntryKind::File {
                continue;
            }
            let abs = tree.root.join(&e.rel);
            match self.cached(&abs, e) {
                Some(h) => hashes[i] = Some(h),
                None => misses.push((i, abs)),
            }
        }
        let hashed = crate::parallel::try_map(&misses, HASH_THREADS, Vec::new, |buf, (i, abs)| {
            hash_file(abs, tree.entries[*i].size, buf)
        })?;
        for ((i, abs), h) in misses.iter().zip(hashed) {
            hashes[*i] = Some(h);
            self.hashed_files += 1;
            self.remember(abs, &tree.entries[*i], h);
        }
        Ok(hashes)
    }

    fn cached(&mut self, abs: &Path, e: &TreeEntry) -> Option<ContentHash> {
        if let Some(h) = self.seen.get(abs).and_then(|hit| hit.hash_if_unchanged(e)) {
            return Some(h);
        }
        let hit = self.entries.get(abs)?;
        let h = hit.hash_if_unchanged(e)?;
        self.seen.insert(abs.to_path_buf(), hit.clone());
        Some(h)
    }

    /// Whether nothing was remembered for this tree (first build from this path): every file
    /// would have to be read to compute a key, so it is cheaper to write first and key after.
    pub fn is_cold(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a hash computed elsewhere (e.g. while the file was streamed into a layer),
    /// under the same racy-clean rule as a hash computed here.
    pub fn remember(&mut self, abs: &Path, e: &TreeEntry, hash: ContentHash) {
        if self.now_ns - e.mtime_ns.max(e.ctime_ns) >= self.racy_ns {
            self.seen.insert(abs.to_path_buf(), StatEntry::of(e, hash));
        }
    }

    #[cfg(test)]
    pub(crate) fn without_racy_window(mut self) -> Self {
        self.racy_ns = 0;
        self
    }

    /// Records the hash of a file this process has just written itself (a copy of a file
    /// whose hash is known). The racy window does not apply: the caller guarantees nobody
    /// touched the file between writing it and `e`'s stat; a later change shows in its ctime.
    pub fn prime(&mut self, abs: &Path, e: &TreeEntry, hash: ContentHash) {
        self.seen.insert(abs.to_path_buf(), StatEntry::of(e, hash));
    }

    /// Writes what this run saw (entries for files that are gone are dropped).
    pub fn save(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => {
                let stored: Vec<(&[u8], &StatEntry)> = self
                    .seen
                    .iter()
                    .map(|(p, e)| (p.strip_prefix(&self.root).unwrap_or(p).as_os_str().as_bytes(), e))
                    .collect();
                write_hint(f, &postcard::to_stdvec(&stored).map_err(io::Error::other)?)
            }
            None => Ok(()),
        }
    }
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

/// Hashes the file at `path`, which must still have `size` bytes; `buf` is reused between calls.
fn hash_file(path: &Path, size: u64, buf: &mut Vec<u8>) -> io::Result<ContentHash> {
    let f: File = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let mut h = ContentHasher::default();
    if buf.is_empty() {
        buf.resize(256 << 10, 0);
    }
    let mut r = f.take(size + 1);
    let mut n_total = 0u64;
    loop {
        let n = r.read(buf)?;
        if n == 0 {
            break;
        }
        n_total += n as u64;
        h.update(&buf[..n]);
    }
    if n_total != size {
        return Err(io::Error::other(format!("file changed while it was being read: {}", path.display())));
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn any_file_name_is_remembered_and_the_root_may_be_named_another_way() {
        let d = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe");
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub").join(name), "x").unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(store_dir.path()).unwrap();

        let tree = imgforge_layers::scan_tree(d.path(), &|_, _| true).unwrap();
        let mut stat = StatCache::load(&store, d.path()).unwrap().without_racy_window();
        let hashes = stat.content_hashes(&tree).unwrap();
        assert_eq!(hashes[1], Some(ContentHash::of(b"x")));
        assert_eq!(stat.hashed_files, 1);
        stat.save().unwrap();

        // The same directory through another spelling of its path: same cache, nothing re-read.
        let other = d.path().join("sub").join("..");
        let tree = imgforge_layers::scan_tree(&other, &|_, _| true).unwrap();
        let mut again = StatCache::load(&store, &other).unwrap().without_racy_window();
        assert_eq!(again.content_hashes(&tree).unwrap()[1], Some(ContentHash::of(b"x")));
        assert_eq!(again.hashed_files, 0);
    }
}
