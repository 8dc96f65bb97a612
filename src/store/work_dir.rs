//! Scratch directories in the store's `tmp/` that a killed build cannot leave behind for
//! ever. Each `tmp/<prefix>XXXXXX/` has a lock file beside it, `tmp/<prefix>XXXXXX.lock`,
//! made and locked (flock, exclusive) before the directory and held for the directory's
//! life: the kernel drops the lock when its process dies, however it dies. A later build
//! ([`sweep_dead`]) removes every work directory whose lock it can take without waiting,
//! permissions fixed first ([`trash::remove_all`]: a buildpack may leave mode-000
//! directories), and never one a live process holds.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::trash;

/// The prefixes of the work directories imgforge makes (a build's, a sandbox's).
pub const PREFIXES: &[&str] = &["build-", "sandbox-"];
const LOCK_SUFFIX: &str = ".lock";
/// A work directory without a lock file was made by a version before locks, or is being
/// handed to the trash: removed once it is this old.
const UNLOCKED_GRACE: Duration = Duration::from_secs(3600);

/// A private (0700) scratch directory, removed when dropped unless kept. As small as a
/// `tempfile::TempDir` (the lock's path is derived from the directory's).
#[derive(Debug)]
pub struct WorkDir {
    path: Box<Path>,
    lock: Option<File>,
}

impl WorkDir {
    /// A new `<tmp>/<prefix>XXXXXX/` held by this process.
    pub fn new(tmp: &Path, prefix: &str) -> io::Result<WorkDir> {
        for _ in 0..16 {
            // The lock first: a directory never exists unlocked while its maker lives.
            let (lock, lock_path) = tempfile::Builder::new()
                .prefix(prefix)
                .suffix(LOCK_SUFFIX)
                .tempfile_in(tmp)?
                .keep()
                .map_err(|e| e.error)?;
            lock.try_lock().map_err(io::Error::from)?;
            let name = lock_path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let path = tmp.join(name.strip_suffix(LOCK_SUFFIX).unwrap_or(name));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(WorkDir { path: path.into_boxed_path(), lock: Some(lock) }),
                // Left by something else under this name: try another.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&lock_path);
                }
                Err(e) => {
                    let _ = fs::remove_file(&lock_path);
                    return Err(e);
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("no free {prefix}* name in {}", tmp.display())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the directory to the caller (to move it to the trash): the lock is released
    /// and removed, so a sweep may delete it from now on.
    pub fn keep(mut self) -> PathBuf {
        self.unlock();
        std::mem::replace(&mut self.path, PathBuf::new().into_boxed_path()).into_path_buf()
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(LOCK_SUFFIX);
        PathBuf::from(p)
    }

    fn unlock(&mut self) {
        if self.lock.take().is_some() {
            let _ = fs::remove_file(self.lock_path());
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = trash::remove_all(&self.path);
        }
        self.unlock();
    }
}

/// Removes the work directories in `tmp` that no live process holds, and their lock files.
pub fn sweep_dead(tmp: &Path) {
    let Ok(listing) = fs::read_dir(tmp) else { return };
    for entry in listing.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let path = entry.path();
        match name.strip_suffix(LOCK_SUFFIX) {
            // A lock whose directory is gone: removed when free (its owner removes it too).
            Some(dir_name) => {
                if fs::symlink_metadata(tmp.join(dir_name)).is_err() {
                    if let Some(_held) = take_lock(&path) {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
            None => {
                let lock_path = tmp.join(format!("{name}{LOCK_SUFFIX}"));
                match take_lock(&lock_path) {
                    Some(_held) => {
                        let _ = trash::remove_all(&path);
                        let _ = fs::remove_file(&lock_path);
                    }
                    None if !lock_path.exists() && older_than(&path, UNLOCKED_GRACE) => {
                        let _ = trash::remove_all(&path);
                    }
                    None => {}
                }
            }
        }
    }
}

/// The lock at `path`, if it exists and no one holds it.
fn take_lock(path: &Path) -> Option<File> {
    let f = OpenOptions::new().read(true).open(path).ok()?;
    f.try_lock().ok()?;
    Some(f)
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| {
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(m.mtime().max(0) as u64);
        mtime.elapsed().is_ok_and(|e| e > age)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A leftover as a killed build leaves it: a tree with mode-000 directories in it.
    fn fill(dir: &Path) {
        fs::create_dir_all(dir.join("app/locked/deeper")).unwrap();
        fs::write(dir.join("app/locked/deeper/f"), "x").unwrap();
        fs::set_permissions(dir.join("app/locked/deeper"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(dir.join("app/locked"), fs::Permissions::from_mode(0o000)).unwrap();
    }

    #[test]
    fn dead_work_dirs_are_swept_and_live_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let tmp = t.path();
        let live = WorkDir::new(tmp, "build-").unwrap();
        assert_eq!(fs::metadata(live.path()).unwrap().mode() & 0o777, 0o700);
        fill(live.path());
        // A dead build's: its lock file is there, and nobody holds it.
        let mut dead = WorkDir::new(tmp, "sandbox-").unwrap();
        fill(dead.path());
        let (dead_path, dead_lock) = (dead.path.to_path_buf(), dead.lock_path());
        // As a killed process: the kernel closes its lock, and nothing is removed.
        drop(dead.lock.take());
        std::mem::forget(dead);
        let stray_lock = tmp.join("build-gone.lock");
        fs::write(&stray_lock, "").unwrap();
        let other = tmp.join("blob-123");
        fs::write(&other, "").unwrap();

        sweep_dead(tmp);
        assert!(live.path().join("app").exists(), "a live build's directory was removed");
        assert!(!dead_path.exists(), "a dead build's directory is left");
        assert!(!dead_lock.exists() && !stray_lock.exists());
        assert!(other.exists(), "only work directories are swept");

        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists(), "dropped, even with mode-000 directories in it");
        let names: Vec<_> = fs::read_dir(tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["blob-123"]);
    }

    #[test]
    fn a_kept_dir_is_the_callers() {
        let t = tempfile::tempdir().unwrap();
        let w = WorkDir::new(t.path(), "build-").unwrap();
        let p = w.keep();
        assert!(p.is_dir());
        assert!(!p.with_file_name(format!("{}.lock", p.file_name().unwrap().to_str().unwrap())).exists());
    }
}
