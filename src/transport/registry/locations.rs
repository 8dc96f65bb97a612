//! Where blobs live on registries, remembered across runs (as containers/image's blob-info
//! cache does): after a blob is pushed to, mounted into or found in a repository, that
//! repository is recorded for it, so a later push of the same blob to another repository of
//! the same registry mounts it instead of uploading it again.
//!
//! Layout, in the cache directory (bucket `blob-locations-v1`):
//! ```text
//! blob-locations-v1/<registry>/<digest hex>   repositories holding the blob, one a line,
//!                                              oldest first (appended; compacted when long)
//! ```
//! `<registry>` is `host[:port]` with `:` written as `+`. The file is only a hint: a mount
//! from a repository that no longer holds the blob is refused by the registry (anything
//! but 201), and the push uploads instead. Lines that are not repository names are
//! ignored, so a damaged or planted file cannot inject anything into a request.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use imgforge_layers::Digest;

/// The bucket's name in the cache directory.
pub const BUCKET: &str = crate::store::buckets::BLOB_LOCATIONS.name();
/// Most repositories kept per blob and registry (the most recent).
const KEEP: usize = 8;
/// A file longer than this is compacted to its last [`KEEP`] distinct lines.
const COMPACT_AT: u64 = 4096;

pub struct Locations {
    dir: PathBuf,
}

/// Whether `r` is a repository name as the distribution spec allows it (lowercase
/// components of `[a-z0-9._-]` separated by `/`).
fn is_repository(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

impl Locations {
    /// The cache for `registry` under `cache_dir`.
    pub fn open(cache_dir: &Path, registry: &str) -> Locations {
        Locations { dir: cache_dir.join(BUCKET).join(registry.replace(':', "+")) }
    }

    fn file(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Repositories known to hold `d`, most recent first, without duplicates.
    pub fn get(&self, d: &Digest) -> Vec<String> {
        let Ok(text) = fs::read_to_string(self.file(d)) else { return Vec::new() };
        let mut out: Vec<String> = Vec::new();
        for line in text.lines().rev() {
            if is_repository(line) && !out.iter().any(|r| r == line) {
                out.push(line.to_string());
            }
        }
        out
    }

    /// Records that `repository` holds `d`. Best effort: the cache is only a hint, so a
    /// failure to write it is ignored.
    pub fn add(&self, d: &Digest, repository: &str) {
        if !is_repository(repository) || self.get(d).first().is_some_and(|r| r == repository) {
            return;
        }
        let path = self.file(d);
        let _ = fs::create_dir_all(&self.dir);
        // One short line with O_APPEND: concurrent writers do not interleave within it.
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&path) {
            let _ = f.write_all(format!("{repository}\n").as_bytes());
            if f.metadata().is_ok_and(|m| m.len() > COMPACT_AT) {
                self.compact(d);
            }
        }
    }

    /// Rewrites the file with its last [`KEEP`] distinct repositories (atomically).
    fn compact(&self, d: &Digest) {
        let mut keep = self.get(d);
        keep.truncate(KEEP);
        keep.reverse();
        let Ok(mut tmp) = tempfile::NamedTempFile::new_in(&self.dir) else { return };
        let text: String = keep.iter().map(|r| format!("{r}\n")).collect();
        if tmp.write_all(text.as_bytes()).is_ok() {
            let _ = tmp.persist(self.file(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_most_recent_first_and_ignores_junk() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        let l = Locations::open(dir.path(), "127.0.0.1:5000");
        assert!(l.get(&d).is_empty());
        l.add(&d, "team/a");
        l.add(&d, "b");
        l.add(&d, "team/a");
        assert_eq!(l.get(&d), ["team/a", "b"]);
        // Another registry knows nothing of it.
        assert!(Locations::open(dir.path(), "127.0.0.1:5001").get(&d).is_empty());
        // Planted lines that are not repository names never come back.
        let f = dir.path().join(BUCKET).join("127.0.0.1+5000").join(d.hex());
        fs::write(&f, "ok/repo\nx&mount=evil\n../up\nUPPER\n\n/abs\n").unwrap();
        assert_eq!(l.get(&d), ["ok/repo"]);
        l.add(&d, "bad repo");
        assert_eq!(l.get(&d), ["ok/repo"]);
    }

    #[test]
    fn compacts_a_long_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"y");
        let l = Locations::open(dir.path(), "reg.example");
        for i in 0..600 {
            l.add(&d, &format!("repo{}", i % 300));
        }
        let f = dir.path().join(BUCKET).join("reg.example").join(d.hex());
        assert!(fs::metadata(&f).unwrap().len() <= COMPACT_AT + 16);
        assert_eq!(l.get(&d)[0], "repo299");
    }
}
