//! Deleting big trees off the critical path: a tree to delete is renamed into the store's
//! `trash/` (one rename, same file system) and deleted later by a background thread, which a
//! build starts as it begins ([`crate::store::BlobStore::sweep`]). A process that ends first
//! leaves the rest to the next build: entries in the trash are garbage whatever state they
//! are in.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use walkdir::WalkDir;

/// Moves `path` into `trash` to be deleted later; deletes it now if it cannot be moved
/// (another file system). A missing `path` is fine.
pub fn discard(trash: &Path, path: &Path) -> io::Result<()> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let name = format!("{}-{nanos}", std::process::id());
    let _ = fs::create_dir_all(trash);
    match fs::rename(path, trash.join(name)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => remove_all(path),
    }
}

/// Deletes everything in `trash`.
pub fn sweep_now(trash: &Path) {
    let Ok(listing) = fs::read_dir(trash) else { return };
    for entry in listing.flatten() {
        // Another build may be sweeping the same entry: errors only mean it got there first.
        let _ = remove_all(&entry.path());
    }
}

/// Removes `path` and everything under it; a missing path is fine. Directories without write
/// permission (Go's module cache makes them) are made writable first. Symlinks are removed,
/// never followed.
pub fn remove_all(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    // Each pass opens what the one before made searchable: a mode-000 directory inside a
    // mode-000 directory is reached on the second. A pass that opens nothing ends it.
    loop {
        let mut opened = false;
        for entry in WalkDir::new(path).follow_links(false).into_iter().flatten() {
            // A directory entry from lstat: set_permissions cannot be redirected through a link.
            if entry.file_type().is_dir() {
                if let Ok(m) = entry.metadata() {
                    if m.mode() & 0o700 != 0o700 {
                        let fixed = fs::Permissions::from_mode(m.mode() & 0o7777 | 0o700);
                        opened |= fs::set_permissions(entry.path(), fixed).is_ok();
                    }
                }
            }
        }
        match fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && opened => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discarded_trees_leave_at_once_and_a_sweep_deletes_them() {
        let d = tempfile::tempdir().unwrap();
        let trash = d.path().join("trash");
        let tree = d.path().join("tree");
        fs::create_dir_all(tree.join("ro/sub")).unwrap();
        fs::write(tree.join("ro/sub/f"), "x").unwrap();
        fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        discard(&trash, &tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(fs::read_dir(&trash).unwrap().count(), 1);
        discard(&trash, &d.path().join("missing")).unwrap();

        sweep_now(&trash);
        assert_eq!(fs::read_dir(&trash).unwrap().count(), 0, "trash not swept");
    }
}
