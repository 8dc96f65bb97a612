//! `.slugignore`: paths removed from the build directory before compile.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ignore::gitignore::GitignoreBuilder;
use walkdir::WalkDir;

use super::{io_err, HerokuError};
use crate::fsutil::remove_tree;

pub const SLUGIGNORE: &str = ".slugignore";

/// Deletes what `build_dir/.slugignore` matches (gitignore patterns, relative to
/// `build_dir`). Symlinks are matched and removed as links, never followed, so nothing
/// outside `build_dir` is touched. Returns the removed paths (absolute), in walk order.
/// No `.slugignore` → nothing removed.
pub fn apply_slugignore(build_dir: &Path) -> Result<Vec<PathBuf>, HerokuError> {
    let file = build_dir.join(SLUGIGNORE);
    let text = match fs::symlink_metadata(&file) {
        Ok(m) if m.is_file() => {
            fs::read_to_string(&file).map_err(io_err(format!("Failed to read {}", file.display())))?
        }
        Ok(_) => return Err(HerokuError::Invalid(format!("{} is not a regular file", file.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HerokuError::Io { what: format!("Failed to read {}", file.display()), source: e }),
    };
    let mut builder = GitignoreBuilder::new(build_dir);
    for (n, line) in text.lines().enumerate() {
        builder
            .add_line(Some(file.clone()), line)
            .map_err(|e| HerokuError::Invalid(format!("{} line {}: {e}", file.display(), n + 1)))?;
    }
    let matcher = builder.build().map_err(|e| HerokuError::Invalid(format!("{}: {e}", file.display())))?;
    let mut removed = Vec::new();
    let mut walk = WalkDir::new(build_dir).follow_links(false).sort_by_file_name().min_depth(1).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| {
            let what = format!("Failed to read {}", e.path().unwrap_or(build_dir).display());
            HerokuError::Io { what, source: e.into() }
        })?;
        let Ok(rel) = entry.path().strip_prefix(build_dir) else { continue };
        let is_dir = entry.file_type().is_dir();
        if matcher.matched(rel, is_dir).is_ignore() {
            if is_dir {
                walk.skip_current_dir();
            }
            remove_tree(entry.path())?;
            removed.push(entry.path().to_path_buf());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn removes_files_and_dirs_but_never_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir_all(outside.join("keep")).unwrap();
        fs::write(outside.join("precious.txt"), "x").unwrap();
        let b = t.path().join("build");
        fs::create_dir_all(b.join("docs/img")).unwrap();
        fs::create_dir_all(b.join("src/test")).unwrap();
        fs::write(b.join("docs/img/a.png"), "").unwrap();
        fs::write(b.join("src/main.py"), "").unwrap();
        fs::write(b.join("src/test/t.py"), "").unwrap();
        fs::write(b.join("big.psd"), "").unwrap();
        fs::write(b.join("src/logo.psd"), "").unwrap();
        symlink("/", b.join("escape")).unwrap();
        symlink(&outside, b.join("out")).unwrap();
        symlink(&outside, b.join("gone")).unwrap();
        fs::write(b.join(SLUGIGNORE), "# comment\n/docs\n*.psd\nsrc/test/\nescape/*\nout/*\nout/precious.txt\ngone\n")
            .unwrap();
        let removed = apply_slugignore(&b).unwrap();
        let rel: Vec<_> = removed.iter().map(|p| p.strip_prefix(&b).unwrap().to_str().unwrap().to_string()).collect();
        assert_eq!(rel, ["big.psd", "docs", "gone", "src/logo.psd", "src/test"]);
        assert!(b.join("src/main.py").is_file());
        assert!(b.join(SLUGIGNORE).is_file());
        assert_eq!(fs::read_link(b.join("escape")).unwrap(), Path::new("/"));
        assert!(outside.join("precious.txt").is_file() && outside.join("keep").is_dir());
        assert!(Path::new("/bin").exists() && Path::new("/usr").exists());
        // The link was removed, not its target.
        assert!(fs::symlink_metadata(b.join("gone")).is_err());
    }

    #[test]
    fn no_slugignore_removes_nothing() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), "").unwrap();
        assert!(apply_slugignore(t.path()).unwrap().is_empty());
        assert!(t.path().join("a").exists());
    }
}
