//! Copying and removing directory trees without following symlinks: buildpacks' private
//! copies, kept caches and the sandbox's copy of a build image's rootfs all go through here.

use std::ffi::CString;
use std::fs::{self, FileTimes, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use walkdir::WalkDir;

use crate::store::trash;

/// A file system operation that failed: what was being done, on what, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct FsError {
    pub what: String,
    pub source: io::Error,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FsError {
    let what = what.into();
    move |source| FsError { what, source }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Symlinks are copied as they are.
    Verbatim,
    /// A relative symlink whose target climbs out of `src` (`bin/compile ->
    /// ../../shared/compile`) would break in the copy: it becomes an absolute link to the
    /// file it reaches. Other links (and dangling ones) are copied as they are.
    PinEscaping,
}

/// Copies the tree at `src` to `dst` (which must not exist): directories, regular files and
/// symlinks (as links: never followed), with their permission bits and mtimes; `add_mode` is
/// or-ed into every file's and directory's mode. Hard links become separate files. Sockets,
/// fifos and devices are not copied: their paths (relative to `src`) are returned.
pub fn copy_tree(src: &Path, dst: &Path, add_mode: u32, links: Links) -> Result<Vec<PathBuf>, FsError> {
    let mut skipped = Vec::new();
    // Directories get their final mode (which may forbid writing) once they are filled.
    let mut dirs: Vec<(PathBuf, Metadata)> = Vec::new();
    let mut files: Vec<(PathBuf, PathBuf, Metadata)> = Vec::new();
    for entry in WalkDir::new(src).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            let what = format!("Failed to read {}", e.path().unwrap_or(src).display());
            FsError { what, source: e.into() }
        })?;
        let rel = entry.path().strip_prefix(src).unwrap_or(Path::new(""));
        let to = if rel.as_os_str().is_empty() { dst.to_path_buf() } else { dst.join(rel) };
        let meta = entry
            .metadata()
            .map_err(|e| FsError { what: format!("Failed to read {}", entry.path().display()), source: e.into() })?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).map_err(io_err(format!("Failed to create {}", to.display())))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o700))
                .map_err(io_err(format!("Failed to set the mode of {}", to.display())))?;
            dirs.push((to, meta));
        } else if ft.is_file() {
            files.push((entry.path().to_path_buf(), to, meta));
        } else if ft.is_symlink() {
            let mut target =
                fs::read_link(entry.path()).map_err(io_err(format!("Failed to read {}", entry.path().display())))?;
            if links == Links::PinEscaping && climbs_out(rel, &target) {
                if let Ok(real) = fs::canonicalize(entry.path()) {
                    target = real;
                }
            }
            symlink(&target, &to).map_err(io_err(format!("Failed to create the symlink {}", to.display())))?;
            set_mtime(&to, &meta)?;
        } else {
            skipped.push(rel.to_path_buf());
        }
    }
    copy_files(&files, add_mode)?;
    for (dir, meta) in dirs.iter().rev() {
        let mode = (meta.mode() & 0o7777) | add_mode;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("Failed to set the mode of {}", dir.display())))?;
        set_mtime(dir, meta)?;
    }
    Ok(skipped)
}

const COPY_THREADS: usize = 4;

/// Copies regular files (source, destination, source's metadata), a few at once: for many
/// small files the open, copy and metadata calls dominate, not the bytes.
fn copy_files(files: &[(PathBuf, PathBuf, Metadata)], add_mode: u32) -> Result<(), FsError> {
    crate::parallel::try_map(
        files,
        COPY_THREADS,
        || (),
        |_, (from, to, meta)| {
            copy_file(from, to, meta, add_mode).map_err(io_err(format!(
                "Failed to copy {} to {}",
                from.display(),
                to.display()
            )))
        },
    )?;
    Ok(())
}

/// Copies one regular file (never following a symlink swapped in since the walk), with its
/// permission bits (or-ed with `add_mode`) and mtime, set through the open descriptor.
fn copy_file(from: &Path, to: &Path, meta: &Metadata, add_mode: u32) -> io::Result<()> {
    let mut src = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(from)?;
    let mut dst = OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_CLOEXEC).open(to)?;
    io::copy(&mut src, &mut dst)?;
    dst.set_permissions(fs::Permissions::from_mode((meta.mode() & 0o7777) | add_mode))?;
    let mtime = meta.modified()?;
    dst.set_times(FileTimes::new().set_modified(mtime).set_accessed(mtime))
}

/// Whether the relative symlink at `rel` (relative to the copied root) with this target
/// leads above the root. The parents of `rel` are real directories (the walk does not
/// follow links).
fn climbs_out(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = rel.components().count() as isize - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Sets the mtime (and atime) of `path` itself, not of what a symlink points to.
fn set_mtime(path: &Path, meta: &Metadata) -> Result<(), FsError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError {
        what: format!("path {} contains a NUL byte", path.display()),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    let ts = libc::timespec { tv_sec: meta.mtime() as libc::time_t, tv_nsec: meta.mtime_nsec() as _ };
    let times = [ts, ts];
    // SAFETY: `c` is a valid NUL-terminated string and `times` holds two timespecs, as
    // utimensat requires; neither is retained after the call.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        return Err(FsError {
            what: format!("Failed to set the mtime of {}", path.display()),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Removes `path` and everything under it ([`trash::remove_all`]); a missing path is fine.
pub fn remove_tree(path: &Path) -> Result<(), FsError> {
    trash::remove_all(path).map_err(io_err(format!("Failed to remove {}", path.display())))
}

/// Creates the directory `dir` (its parent must exist), readable by its owner only (0700).
pub fn private_dir(dir: &Path) -> Result<(), FsError> {
    fs::DirBuilder::new().mode(0o700).create(dir).map_err(io_err(format!("Failed to create {}", dir.display())))
}

/// Writes `data` to a new file (or over an old one) readable by its owner only (0600), never
/// through a symlink.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FsError> {
    use std::io::Write;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(io_err(format!("Failed to write {}", path.display())))
}

/// Removes a directory tree when dropped (errors ignored): for secrets a build step needs
/// only while it runs (Heroku's ENV_DIR, CNB's `platform/env`), whether it succeeds or not.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copy_keeps_modes_links_and_mtimes_and_remove_handles_read_only_dirs() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("ro/inner")).unwrap();
        fs::write(src.join("ro/inner/f"), "x").unwrap();
        fs::write(src.join("exe"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("exe"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("/", src.join("escape")).unwrap();
        symlink("exe", src.join("rel")).unwrap();
        fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        let dst = t.path().join("dst");
        assert!(copy_tree(&src, &dst, 0, Links::Verbatim).unwrap().is_empty());
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dst.join("exe")), 0o750);
        assert_eq!(mode(&dst.join("ro")), 0o555);
        assert_eq!(fs::read_link(dst.join("escape")).unwrap(), Path::new("/"));
        assert_eq!(fs::read_link(dst.join("rel")).unwrap(), Path::new("exe"));
        assert_eq!(fs::read_to_string(dst.join("ro/inner/f")).unwrap(), "x");
        let mtime = |p: &Path| fs::symlink_metadata(p).unwrap().mtime();
        assert_eq!(mtime(&dst.join("exe")), mtime(&src.join("exe")));
        assert_eq!(mtime(&dst.join("ro")), mtime(&src.join("ro")));

        let writable = t.path().join("writable");
        copy_tree(&src, &writable, 0o200, Links::Verbatim).unwrap();
        assert_eq!(mode(&writable.join("ro")), 0o755);

        remove_tree(&dst).unwrap();
        assert!(!dst.exists());
        // The link was removed, not followed.
        assert!(Path::new("/bin").exists());
        remove_tree(&dst).unwrap();
        fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn links_out_of_the_source_can_be_pinned() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("compile.sh"), "x").unwrap();
        let src = t.path().join("bp");
        fs::create_dir_all(src.join("bin")).unwrap();
        symlink("../../shared/compile.sh", src.join("bin/compile")).unwrap();
        symlink("compile", src.join("bin/detect")).unwrap();
        symlink("../nowhere", src.join("bin/dangling")).unwrap();
        symlink("../../bp/bin/./compile", src.join("bin/inside")).unwrap();
        let dst = t.path().join("copy");
        copy_tree(&src, &dst, 0, Links::PinEscaping).unwrap();
        let real_shared = shared.canonicalize().unwrap();
        assert_eq!(fs::read_link(dst.join("bin/compile")).unwrap(), real_shared.join("compile.sh"));
        assert_eq!(fs::read_link(dst.join("bin/detect")).unwrap(), Path::new("compile"));
        assert_eq!(fs::read_link(dst.join("bin/dangling")).unwrap(), Path::new("../nowhere"));
        assert_eq!(fs::read_to_string(dst.join("bin/detect")).unwrap(), "x");
        // Leaves and comes back in: pinned as well (lexically it climbs out).
        assert_eq!(fs::read_link(dst.join("bin/inside")).unwrap(), real_shared.join("compile.sh"));
        assert!(climbs_out(Path::new("a/b/l"), Path::new("../../..")));
        assert!(!climbs_out(Path::new("a/b/l"), Path::new("../../x")));
        assert!(!climbs_out(Path::new("l"), Path::new("/abs")));
    }
}
