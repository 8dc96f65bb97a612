use std::collections::HashSet;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use imgforge_layers::{Digest, HashingReader};

use super::stat_cache::RACY_NS;

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

/// What identifies a file's content without reading it, as git's index does: if none of
/// these changed, neither did the bytes (a write changes mtime and ctime, and no user can
/// set ctime back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    pub fn of(m: &Metadata) -> FileId {
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    fn line(&self) -> String {
        format!("{} {} {} {} {}\n", self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
    }

    fn parse(line: &str) -> Option<FileId> {
        let mut it = line.split(' ');
        let mut next = || it.next()?.parse::<i128>().ok();
        let id = FileId {
            dev: u64::try_from(next()?).ok()?,
            ino: u64::try_from(next()?).ok()?,
            size: u64::try_from(next()?).ok()?,
            mtime_ns: next()?,
            ctime_ns: next()?,
        };
        Some(id)
    }
}

/// Identities remembered per digest (the base's copy, the store's, a few destinations').
const MAX_IDS: usize = 8;

/// Remembers which local files (by [`FileId`]) were read and found to hold which digest, so
/// a blob of a local layout is hashed once, not at every build that hard-links it. An
/// identity is written to disk only when the file's mtime and ctime were old enough when it
/// was read ([`RACY_NS`]): a change in the same clock tick cannot then go unseen.
#[derive(Debug, Default)]
pub struct VerifyCache {
    dir: Option<PathBuf>,
    /// This process's verifications, whatever their age.
    seen: Mutex<HashSet<(FileId, Digest)>>,
}

impl VerifyCache {
    /// Remembering in `<cache_root>/verified-v1` (only in memory without a cache).
    pub fn new(cache_root: Option<&Path>) -> VerifyCache {
        VerifyCache { dir: cache_root.map(|r| r.join(super::buckets::VERIFIED.name())), seen: Mutex::default() }
    }

    fn entry(&self, d: &Digest) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join(d.hex()))
    }

    fn known(&self, id: FileId, d: &Digest) -> bool {
        if self.seen.lock().is_ok_and(|s| s.contains(&(id, *d))) {
            return true;
        }
        let Some(p) = self.entry(d) else { return false };
        fs::read_to_string(p).is_ok_and(|text| text.lines().filter_map(FileId::parse).any(|i| i == id))
    }

    /// Records that the file with identity `id` holds `d`.
    pub fn remember(&self, id: FileId, d: &Digest) {
        if let Ok(mut s) = self.seen.lock() {
            s.insert((id, *d));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_nanos() as i128);
        if now - id.mtime_ns.max(id.ctime_ns) < RACY_NS {
            return;
        }
        let Some(p) = self.entry(d) else { return };
        let mut ids: Vec<FileId> =
            fs::read_to_string(&p).map(|t| t.lines().filter_map(FileId::parse).collect()).unwrap_or_default();
        ids.retain(|i| *i != id && (i.dev, i.ino) != (id.dev, id.ino));
        ids.push(id);
        let skip = ids.len().saturating_sub(MAX_IDS);
        let text: String = ids[skip..].iter().map(FileId::line).collect();
        if let Some(dir) = p.parent() {
            let _ = fs::create_dir_all(dir);
        }
        // A lost entry costs one more read, nothing else: no fsync.
        let _ = super::write_hint(&p, text.as_bytes());
    }

    /// Checks that the open regular file `f` holds exactly `d` (`size` bytes): from memory
    /// when its identity is unchanged since it was last verified, else by reading it all.
    /// Leaves the file's offset at 0 either way.
    pub fn check(&self, f: &mut File, d: &Digest, size: u64, from: &str) -> io::Result<FileId> {
        let id = FileId::of(&f.metadata()?);
        if id.size != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {d} from {from} does not match: {} bytes, descriptor says {size}", id.size),
            ));
        }
        if !self.known(id, d) {
            f.seek(SeekFrom::Start(0))?;
            io::copy(&mut VerifiedReader::new(&mut *f, *d, Some(size), from.to_string()), &mut io::sink())?;
            // The identity as it was before the read: a change since then shows as a new one.
            self.remember(id, d);
        }
        f.seek(SeekFrom::Start(0))?;
        Ok(id)
    }

    /// After `f` (verified with identity `before`) was hard-linked: the link changed its
    /// ctime, not its bytes, so the new identity is remembered too when all else is equal.
    pub fn relinked(&self, f: &File, before: FileId, d: &Digest) {
        if let Ok(m) = f.metadata() {
            let after = FileId::of(&m);
            if (after.dev, after.ino, after.size, after.mtime_ns)
                == (before.dev, before.ino, before.size, before.mtime_ns)
            {
                self.remember(after, d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verification_is_remembered_by_file_identity_and_forgotten_when_the_file_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("blob");
        fs::write(&p, b"layer bytes").unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(10);
        File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
        let digest = Digest::of(b"layer bytes");
        let mut f = File::open(&p).unwrap();
        let id = VerifyCache::new(Some(d.path())).check(&mut f, &digest, 11, "t").unwrap();
        // The ctime is new (set_modified changed it): remembered in memory only.
        assert!(!d.path().join(crate::store::buckets::VERIFIED.name()).join(digest.hex()).exists());
        let aged = FileId { ctime_ns: id.ctime_ns - 5_000_000_000, ..id };
        VerifyCache::new(Some(d.path())).remember(aged, &digest);
        let fresh = VerifyCache::new(Some(d.path()));
        assert!(fresh.known(aged, &digest), "an old enough verification is kept on disk");
        assert!(!fresh.known(id, &digest), "another identity is not");
        assert!(!fresh.known(aged, &Digest::of(b"other")));

        // One flipped byte: a new identity, read again, refused.
        fs::write(&p, b"layer bytez").unwrap();
        let err = VerifyCache::new(Some(d.path())).check(&mut File::open(&p).unwrap(), &digest, 11, "t").unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = VerifyCache::new(None).check(&mut File::open(&p).unwrap(), &digest, 12, "t").unwrap_err();
        assert!(err.to_string().contains("descriptor says 12"), "{err}");
    }
}
