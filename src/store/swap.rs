//! Replacing a kept directory (a buildpack cache, CNB state) by a new one in one step: the
//! new directory is swapped in with `renameat2(RENAME_EXCHANGE)` where the file system allows
//! it, and the old one goes to the trash. Readers never see the destination missing.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::trash;

/// `<pid>-<nanoseconds>`: a name part no other process or call uses.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Puts the directory `src` at `dest`, replacing what is there, which goes to `trash`. `dest`
/// is never missing while an old one exists, unless the filesystem cannot swap atomically.
pub fn install(src: &Path, dest: &Path, trash: &Path) -> io::Result<()> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut last = None;
    for _ in 0..5 {
        if fs::symlink_metadata(dest).is_ok() {
            match exchange(src, dest) {
                Ok(()) => {
                    // `src` now holds the old cache.
                    let _ = trash::discard(trash, src);
                    return Ok(());
                }
                // Removed meanwhile by another build's commit: plain rename below.
                Err(e) if e.kind() == io::ErrorKind::NotFound && src.exists() => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)) => {
                    // No RENAME_EXCHANGE here: move the old one away first.
                    let old = dest.with_file_name(format!("{name}.old-{}", unique_suffix()));
                    match fs::rename(dest, &old) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    let r = fs::rename(src, dest);
                    if r.is_err() {
                        let _ = fs::rename(&old, dest);
                    }
                    let _ = trash::discard(trash, &old);
                    return r;
                }
                Err(e) => return Err(e),
            }
        }
        match fs::rename(src, dest) {
            Ok(()) => return Ok(()),
            // Another build committed meanwhile: swap with theirs.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("the cache kept changing while it was saved")))
}

/// Atomically swaps two paths (renameat2 with RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let a = CString::new(a.as_os_str().as_bytes())?;
        let b = CString::new(b.as_os_str().as_bytes())?;
        // SAFETY: both are valid NUL-terminated paths that outlive the call; renameat2
        // takes (olddirfd, oldpath, newdirfd, newpath, flags).
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}
