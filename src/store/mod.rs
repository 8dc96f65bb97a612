//! The content-addressed store: blobs named by digest, written atomically, verified on read.
//!
//! Layout of the cache directory:
//! ```text
//! blobs/sha256/<hex>   blob bytes; present only once complete and verified
//! tmp/                 temp files, same filesystem as blobs/ so rename is atomic; work
//!                      directories of builds and sandboxes, each locked while in use
//!                      (work_dir.rs), swept when their process is gone
//! trash/               trees waiting to be deleted by a background thread
//! verified-v1/<hex>    identities of local files found to hold that blob (verify.rs)
//! lock                 shared by builds, exclusive for maintenance
//! <bucket>-v<N>/       everything else: one versioned bucket per kind, listed in [`buckets`]
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use imgforge_layers::{Digest, HashingReader, HashingWriter};
use tempfile::NamedTempFile;

pub mod buckets;
pub mod layer_cache;
pub mod stat_cache;
pub mod swap;
pub mod trash;
mod verify;
pub mod work_dir;
pub use verify::{FileId, VerifiedReader, VerifyCache};
pub use work_dir::WorkDir;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("blob {expected} does not match its digest: got {actual} ({size} bytes) from {from}")]
    Mismatch { expected: Digest, actual: Digest, size: u64, from: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// Where the cache lives: `--cache-dir`, then `$IMGFORGE_CACHE_DIR`, then
/// `$XDG_CACHE_HOME/imgforge`, then `~/.cache/imgforge`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    non_empty("IMGFORGE_CACHE_DIR")
        .or_else(|| non_empty("XDG_CACHE_HOME").map(|d| d.join("imgforge")))
        .or_else(|| non_empty("HOME").map(|h| h.join(".cache").join("imgforge")))
}

pub struct BlobStore {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    /// Boxed: a store is held inline by sources, which an enum keeps side by side.
    verified: Box<VerifyCache>,
}

/// A blob being written: a temp file in the store that becomes `blobs/sha256/<digest>` on commit.
pub struct PendingBlob {
    file: NamedTempFile,
}

/// Holds a lock on the store until dropped.
pub struct StoreLock {
    _file: File,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<BlobStore, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        for d in [&blobs, &tmp] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        Ok(BlobStore { root: root.to_path_buf(), blobs, tmp, verified: Box::new(VerifyCache::new(Some(root))) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one of the cache's [`buckets`] (created if absent).
    pub fn bucket(&self, bucket: buckets::Bucket) -> Result<PathBuf, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let d = self.root.join(bucket.name());
        // Private: buckets hold build data (buildpack caches, unpacked build images whose
        // own `/tmp` is world-writable) that other users must neither read nor reach.
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io_err(&d))?;
        Ok(d)
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// A new private work directory in `tmp/`, held (locked) until dropped ([`work_dir`]).
    pub fn work_dir(&self, prefix: &str) -> io::Result<WorkDir> {
        WorkDir::new(&self.tmp, prefix)
    }

    /// Deletes, in a detached thread, what earlier builds left: the trash, and the work
    /// directories of builds that died.
    pub fn sweep(&self) {
        let (trash, tmp) = (self.trash_dir(), self.tmp.clone());
        let _ = std::thread::Builder::new().name("imgforge-sweep".into()).spawn(move || {
            work_dir::sweep_dead(&tmp);
            trash::sweep_now(&trash);
        });
    }

    /// Where trees wait to be deleted ([`trash`]); same file system as everything else here.
    pub fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Shared lock: many builds at once. Exclusive: nobody else (cache maintenance).
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
        if exclusive { file.lock() } else { file.lock_shared() }.map_err(io_err(&path))?;
        Ok(StoreLock { _file: file })
    }

    /// A temp file to stream a new blob into; `commit` it once its digest is known.
    pub fn pending(&self) -> Result<PendingBlob, StoreError> {
        let file = tempfile::Builder::new().prefix("blob-").tempfile_in(&self.tmp).map_err(io_err(&self.tmp))?;
        Ok(PendingBlob { file })
    }

    /// Moves a finished temp file into place under `digest`: fsync, rename, fsync the dir.
    /// The caller vouches that `digest` is the hash of what it wrote (it hashed the stream).
    pub fn commit(&self, pending: PendingBlob, digest: &Digest) -> Result<PathBuf, StoreError> {
        let dest = self.blob_path(digest);
        pending.file.as_file().sync_all().map_err(io_err(pending.file.path()))?;
        if dest.exists() {
            // Another writer got there first with the same bytes; ours is dropped.
            return Ok(dest);
        }
        set_read_only(pending.file.as_file());
        let f = pending.file.persist(&dest).map_err(|e| StoreError::Io { path: dest.clone(), source: e.error })?;
        sync_dir(&self.blobs).map_err(io_err(&self.blobs))?;
        // Hashed as it was written: no need to read it again to hard-link it.
        if let Ok(m) = f.metadata() {
            self.verified.remember(FileId::of(&m), digest);
        }
        Ok(dest)
    }

    /// Streams `reader` into the store, refusing it unless it hashes to `expected` (and has
    /// `size` bytes, when given). Nothing unverified ever gets a blob name.
    pub fn put_verified(
        &self,
        reader: &mut dyn Read,
        expected: &Digest,
        size: Option<u64>,
        from: &str,
    ) -> Result<PathBuf, StoreError> {
        if self.contains(expected) {
            return Ok(self.blob_path(expected));
        }
        let mut pending = self.pending()?;
        let mut w = HashingWriter::new(BufWriter::new(pending.file.as_file_mut()));
        let limit = size.map_or(u64::MAX, |s| s + 1);
        io::copy(&mut reader.take(limit), &mut w)
            .map_err(|e| StoreError::Io { path: PathBuf::from(from), source: e })?;
        let (mut bw, hash, n) = w.finish();
        bw.flush().map_err(io_err(&self.tmp))?;
        drop(bw);
        let actual = Digest(hash);
        if actual != *expected || size.is_some_and(|s| s != n) {
            return Err(StoreError::Mismatch { expected: *expected, actual, size: n, from: from.to_string() });
        }
        self.commit(pending, expected)
    }

    /// Stores bytes already in memory (configs, manifests) and returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if !self.contains(&digest) {
            let mut pending = self.pending()?;
            pending.file.write_all(bytes).map_err(io_err(&self.tmp))?;
            self.commit(pending, &digest)?;
        }
        Ok(digest)
    }

    /// Opens a blob for reading; the reader fails at EOF if the bytes do not match.
    pub fn open_blob(&self, digest: &Digest, size: Option<u64>) -> Result<VerifiedReader<File>, StoreError> {
        let path = self.blob_path(digest);
        let f = open_regular_beneath(&self.blobs, &[&digest.hex()]).map_err(io_err(&path))?;
        Ok(VerifiedReader::new(f, *digest, size, path.display().to_string()))
    }

    /// The store's file of a blob, opened without following links and verified (once per
    /// file identity, see [`VerifyCache`]), to hard-link into a destination; `None` if absent.
    pub fn local_file(&self, digest: &Digest, size: u64) -> Result<Option<(File, FileId)>, StoreError> {
        let path = self.blob_path(digest);
        let mut f = match open_regular_beneath(&self.blobs, &[&digest.hex()]) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let id = self.verified.check(&mut f, digest, size, &path.display().to_string()).map_err(io_err(&path))?;
        Ok(Some((f, id)))
    }

    /// The store's record of verified files, for other local files (a layout's blobs).
    pub fn verified(&self) -> &VerifyCache {
        &self.verified
    }

    /// Reads a whole small blob, verified, refusing more than `max` bytes.
    pub fn read_small(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let f = open_regular_beneath(&self.blobs, &[&digest.hex()]).map_err(io_err(&path))?;
        let mut buf = Vec::new();
        HashingReader::new(f).take(max + 1).read_to_end(&mut buf).map_err(io_err(&path))?;
        let actual = Digest::of(&buf);
        if actual != *digest {
            return Err(StoreError::Mismatch {
                expected: *digest,
                actual,
                size: buf.len() as u64,
                from: path.display().to_string(),
            });
        }
        Ok(buf)
    }
}

impl PendingBlob {
    pub fn file(&mut self) -> &mut File {
        self.file.as_file_mut()
    }

    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.as_file().try_clone()
    }
}

fn set_read_only(f: &File) {
    use std::os::unix::fs::PermissionsExt;
    let _ = f.set_permissions(fs::Permissions::from_mode(0o444));
}

/// Opens the regular file `dir/<components joined by />` for reading without following a
/// symbolic link at any component below `dir` (`dir` itself, named by the user, may be
/// one), and without blocking on a FIFO. A symlink, FIFO, device or directory is refused
/// with an error saying which path is what: local layouts and caches are not trusted to
/// point only where they should.
pub fn open_regular_beneath(dir: &Path, components: &[&str]) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let mut cur = File::open(dir)?;
    let mut at = dir.to_path_buf();
    for (i, c) in components.iter().enumerate() {
        at.push(c);
        let last = i + 1 == components.len();
        let kind = if last { libc::O_NONBLOCK | libc::O_NOCTTY } else { libc::O_DIRECTORY };
        let name = std::ffi::CString::new(std::ffi::OsStr::new(c).as_bytes())?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name that outlive the call.
        let fd = unsafe {
            libc::openat(cur.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | kind)
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => not_regular(&at, last),
                _ => io::Error::new(e.kind(), format!("{}: {e}", at.display())),
            });
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        cur = unsafe { File::from_raw_fd(fd) };
    }
    if !cur.metadata()?.is_file() {
        return Err(not_regular(&at, true));
    }
    // SAFETY: fcntl on a descriptor we own; clears O_NONBLOCK (meaningless on regular files).
    unsafe { libc::fcntl(cur.as_raw_fd(), libc::F_SETFL, 0) };
    Ok(cur)
}

fn not_regular(path: &Path, last: bool) -> io::Error {
    let kind = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => "a symbolic link",
        Ok(m) if m.is_dir() => "a directory",
        Ok(m) if m.is_file() => "a regular file",
        Ok(_) => "a special file (FIFO, socket or device)",
        Err(_) => "not readable",
    };
    let want = if last { "a regular file" } else { "a directory" };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is {kind}, not {want}: refusing to follow or read it", path.display()),
    )
}

/// fsync a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file being written that asks the kernel to start writing each few MiB back to disk
/// as it goes (`sync_file_range`, which does not wait), so that the fsync before the rename
/// finds little left to write: on a layer of tens of MB that fsync was most of a build's tail.
pub struct WritebackFile {
    file: File,
    written: u64,
    started: u64,
}

const WRITEBACK_STEP: u64 = 8 << 20;

impl WritebackFile {
    pub fn new(file: File) -> WritebackFile {
        WritebackFile { file, written: 0, started: 0 }
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor and a range within what was written. Only a
            // hint: an error (a file system without it) changes nothing, the fsync still runs.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.started as libc::off64_t,
                    (self.written - self.started) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes `bytes` to `dest` atomically: temp file in the same directory, fsync, rename, fsync dir.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".imgforge-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(dest).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Replaces `dest` by rename, without fsync: for cache entries whose loss or tearing in a
/// crash costs only a rebuild (readers treat an unreadable entry as absent, and blobs are
/// verified when read). Durable data goes through [`write_atomic`].
pub fn write_hint(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".imgforge-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_open_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert!(store.contains(&d));
        let mut s = String::new();
        store.open_blob(&d, Some(5)).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");

        // A blob corrupted on disk is refused when read.
        let p = store.blob_path(&d);
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        fs::write(&p, b"jello").unwrap();
        let err = store.open_blob(&d, Some(5)).unwrap().read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(store.read_small(&d, 100).is_err());
    }

    #[test]
    fn put_verified_refuses_wrong_bytes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let want = Digest::of(b"expected");
        let err = store.put_verified(&mut &b"tampered"[..], &want, Some(8), "test source").unwrap_err();
        assert!(matches!(err, StoreError::Mismatch { .. }), "{err}");
        assert!(!store.contains(&want));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0, "temp file left behind");
        // Size is checked too.
        let err = store.put_verified(&mut &b"expected!"[..], &want, Some(8), "src").unwrap_err();
        assert!(matches!(err, StoreError::Mismatch { .. }));
        store.put_verified(&mut &b"expected"[..], &want, Some(8), "src").unwrap();
        assert!(store.contains(&want));
    }

    #[test]
    fn concurrent_writers_of_one_blob() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 1 << 20];
        let want = Digest::of(&data);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let store = BlobStore::open(dir.path()).unwrap();
                    store.put_verified(&mut &data[..], &want, Some(data.len() as u64), "t").unwrap();
                });
            }
        });
        let store = BlobStore::open(dir.path()).unwrap();
        assert_eq!(store.read_small(&want, 2 << 20).unwrap(), data);
    }
}

#[cfg(test)]
mod open_tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened_and_no_link_is_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("blobs")).unwrap();
        fs::write(d.path().join("secret"), "s").unwrap();
        fs::write(root.join("blobs/ok"), "x").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("blobs/link")).unwrap();
        std::os::unix::fs::symlink(root.join("blobs"), root.join("dirlink")).unwrap();
        fs::create_dir(root.join("blobs/dir")).unwrap();
        let fifo = std::ffi::CString::new(root.join("blobs/fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let mut s = String::new();
        open_regular_beneath(&root, &["blobs", "ok"]).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
        for (path, says) in [
            (&["blobs", "link"][..], "blobs/link is a symbolic link, not a regular file"),
            (&["dirlink", "ok"][..], "dirlink is a symbolic link, not a directory"),
            (&["blobs", "dir"][..], "blobs/dir is a directory, not a regular file"),
            (&["blobs", "fifo"][..], "blobs/fifo is a special file"),
        ] {
            let err = open_regular_beneath(&root, path).unwrap_err();
            assert!(err.to_string().contains(says), "{path:?}: {err}");
        }
        let err = open_regular_beneath(&root, &["blobs", "missing"]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
