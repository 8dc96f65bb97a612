//! Safe extraction of buildpack archives (`.tgz`, `.tar.gz`, `.tar`).
//!
//! Read with the strict [`LayerReader`]. Only files, directories and symlinks are accepted.
//! Rejected: `..` components, duplicate entries, entries beneath a symlink, symlinks with
//! an absolute target or one that resolves (following the archive's other symlinks)
//! outside the extraction root, hard links and special files. Files are created with
//! `O_EXCL|O_NOFOLLOW`, directories one component at a time after checking that no
//! component is a symlink. Modes: 0755 for directories and for files with any exec bit,
//! 0644 for other files; owners and mtimes are not restored.
//!
//! The reader strips leading `/` from entry names (as GNU tar does), so an absolute entry
//! name lands inside the root: contained, but not reported.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imgforge_layers::{decompress, Compression, EntryType, LayerReader, Limits};

use super::{io_err, HerokuError};

/// Symlink hops followed when checking where a link leads (the kernel's limit is 40).
const MAX_HOPS: usize = 40;

fn limits() -> Limits {
    Limits { max_entries: 200_000, max_entry_size: 4 << 30, max_total_bytes: 16 << 30, ..Limits::default() }
}

/// Whether `path` is named like an archive this module extracts.
pub(crate) fn is_archive_name(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    [".tgz", ".tar.gz", ".tar"].iter().any(|ext| name.ends_with(ext))
}

/// Extracts `archive` into `root`, which must not exist yet.
pub(crate) fn extract(archive: &Path, root: &Path) -> Result<(), HerokuError> {
    let bad = |why: String| HerokuError::UnsafeArchive { path: archive.to_path_buf(), why };
    let file = File::open(archive).map_err(io_err(format!("Failed to open {}", archive.display())))?;
    let mut buffered = BufReader::new(file);
    let magic = buffered.fill_buf().map_err(io_err(format!("Failed to read {}", archive.display())))?;
    let compression = Compression::detect(magic);
    let stream = decompress(buffered, compression).map_err(io_err(format!("Failed to read {}", archive.display())))?;
    let mut reader = LayerReader::new(stream, limits());

    fs::create_dir(root).map_err(io_err(format!("Failed to create {}", root.display())))?;
    set_mode(root, 0o755)?;
    let mut seen: HashSet<Vec<OsString>> = HashSet::new();
    // Symlinks created so far: path → target, both as components.
    let mut links: HashMap<Vec<OsString>, Vec<u8>> = HashMap::new();
    loop {
        let entry = match reader.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => return Err(bad(e.to_string())),
        };
        let name = entry.path_lossy();
        let rel = components(&entry.path).map_err(|why| bad(format!("entry {name:?}: {why}")))?;
        if rel.is_empty() {
            if entry.kind != EntryType::Dir {
                return Err(bad(format!("entry {name:?}: the root is not a directory")));
            }
            continue;
        }
        if !seen.insert(rel.clone()) {
            return Err(bad(format!("entry {name:?} appears twice")));
        }
        for n in 1..rel.len() {
            if links.contains_key(&rel[..n]) {
                return Err(bad(format!("entry {name:?} is beneath the symlink {:?}", join(&rel[..n]))));
            }
        }
        let path = make_parents(root, &rel).map_err(|why| bad(format!("entry {name:?}: {why}")))?;
        match entry.kind {
            EntryType::Dir => match fs::symlink_metadata(&path) {
                // Created implicitly for an earlier entry.
                Ok(m) if m.is_dir() => set_mode(&path, 0o755)?,
                Ok(_) => return Err(bad(format!("entry {name:?}: a directory over an existing file"))),
                Err(_) => {
                    fs::create_dir(&path).map_err(io_err(format!("Failed to create {}", path.display())))?;
                    set_mode(&path, 0o755)?;
                }
            },
            EntryType::File => {
                let mode = if entry.mode & 0o111 != 0 { 0o755 } else { 0o644 };
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::AlreadyExists => bad(format!("entry {name:?}: a file over an existing path")),
                        _ => HerokuError::Io { what: format!("Failed to create {}", path.display()), source: e },
                    })?;
                io::copy(&mut reader.data(), &mut out)
                    .map_err(|e| bad(format!("entry {name:?}: Failed to read its data: {e}")))?;
                // The umask may have taken bits away.
                set_mode(&path, mode)?;
            }
            EntryType::Symlink => {
                let target = entry.link.clone().unwrap_or_default();
                if target.starts_with(b"/") {
                    return Err(bad(format!(
                        "symlink {name:?} points to the absolute path {:?}",
                        String::from_utf8_lossy(&target)
                    )));
                }
                symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_err(format!("Failed to create the symlink {}", path.display())))?;
                links.insert(rel, target);
            }
            EntryType::HardLink => return Err(bad(format!("entry {name:?}: hard links are not supported"))),
            other => return Err(bad(format!("entry {name:?}: unsupported entry type {other:?}"))),
        }
    }
    for (link, target) in &links {
        check_link(&links, link, target)
            .map_err(|why| bad(format!("symlink {:?} -> {:?} {why}", join(link), String::from_utf8_lossy(target))))?;
    }
    Ok(())
}

/// Why an entry of a buildpack archive is refused.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("has a '..' component")]
    DotDot,
    #[error("its parent {} is not a directory", .0.display())]
    ParentNotDir(PathBuf),
    #[error("Failed to create {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("Failed to set the mode of {}: {source}", path.display())]
    Mode { path: PathBuf, source: io::Error },
    #[error("Failed to read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("leads outside the buildpack")]
    Outside,
    #[error("is part of a symlink loop")]
    Loop,
    #[error("leads to an absolute path")]
    Absolute,
}

/// The components of a normalized entry name: `.` and empty components dropped, `..`
/// rejected.
fn components(path: &[u8]) -> Result<Vec<OsString>, EntryError> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(EntryError::DotDot),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn join(c: &[OsString]) -> String {
    c.iter().map(|s| s.to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Creates the missing parent directories of `rel` under `root`, one at a time, refusing to
/// go through anything but a real directory. Returns the entry's full path.
fn make_parents(root: &Path, rel: &[OsString]) -> Result<PathBuf, EntryError> {
    let mut p = root.to_path_buf();
    for c in &rel[..rel.len() - 1] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(EntryError::ParentNotDir(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&p).map_err(|source| EntryError::Create { path: p.clone(), source })?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                    .map_err(|source| EntryError::Mode { path: p.clone(), source })?;
            }
            Err(source) => return Err(EntryError::Read { path: p, source }),
        }
    }
    p.push(&rel[rel.len() - 1]);
    Ok(p)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), HerokuError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("Failed to set the mode of {}", path.display())))
}

/// Follows `target` from the directory holding `link` the way the kernel would, expanding
/// the archive's own symlinks on the way, and fails if it ever climbs above the root.
fn check_link(links: &HashMap<Vec<OsString>, Vec<u8>>, link: &[OsString], target: &[u8]) -> Result<(), EntryError> {
    let mut at: Vec<OsString> = link[..link.len() - 1].to_vec();
    let mut pending: VecDeque<Vec<u8>> = target.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        match c.as_slice() {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Err(EntryError::Outside);
                }
            }
            name => {
                at.push(OsStr::from_bytes(name).to_os_string());
                if let Some(next) = links.get(&at) {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(EntryError::Loop);
                    }
                    if next.starts_with(b"/") {
                        return Err(EntryError::Absolute);
                    }
                    at.pop();
                    for part in next.split(|&b| b == b'/').rev() {
                        pending.push_front(part.to_vec());
                    }
                }
            }
        }
    }
    Ok(())
}

/// The buildpack inside an extracted archive: the root when it has `bin/`, else the one
/// top-level directory that has (GitHub-style `name-version/bin/...` tarballs).
pub(crate) fn buildpack_root(root: &Path, archive: &Path) -> Result<PathBuf, HerokuError> {
    // A buildpack has a bin/; a composite Cloud Native Buildpack has only its buildpack.toml.
    let is_root = |d: &Path| d.join("bin").is_dir() || d.join(super::cnb::descriptor::DESCRIPTOR).is_file();
    if is_root(root) {
        return Ok(root.to_path_buf());
    }
    let mut with_bin = Vec::new();
    let listing = fs::read_dir(root).map_err(io_err(format!("Failed to read {}", root.display())))?;
    for entry in listing {
        let entry = entry.map_err(io_err(format!("Failed to read {}", root.display())))?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && is_root(&entry.path()) {
            with_bin.push(entry.path());
        }
    }
    match with_bin.len() {
        1 => Ok(with_bin.remove(0)),
        0 => Err(HerokuError::Invalid(format!(
            "buildpack archive {}: no bin/ directory (or buildpack.toml) at its top or in a top-level directory",
            archive.display()
        ))),
        _ => Err(HerokuError::Invalid(format!(
            "buildpack archive {}: several top-level directories have a bin/ or buildpack.toml ({}); which one is the buildpack?",
            archive.display(),
            with_bin.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar stream built by hand with the `tar` crate's header writer, so that names
    /// the crate's `append_path` would refuse can be written.
    pub(crate) struct TarBuilder {
        out: Vec<u8>,
    }

    impl TarBuilder {
        pub(crate) fn new() -> Self {
            TarBuilder { out: Vec::new() }
        }

        fn header(&mut self, name: &str, kind: tar::EntryType, mode: u32, size: u64, link: Option<&str>) {
            let mut h = tar::Header::new_ustar();
            // set_path refuses '..'; write the raw name field instead.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(0);
            if let Some(l) = link {
                let raw = &mut h.as_old_mut().linkname;
                raw[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            self.out.extend_from_slice(h.as_bytes());
        }

        pub(crate) fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
            self.header(name, tar::EntryType::Regular, mode, data.len() as u64, None);
            self.out.extend_from_slice(data);
            self.out.resize(self.out.len().div_ceil(512) * 512, 0);
            self
        }

        pub(crate) fn dir(mut self, name: &str) -> Self {
            self.header(name, tar::EntryType::Directory, 0o755, 0, None);
            self
        }

        pub(crate) fn symlink(mut self, name: &str, target: &str) -> Self {
            self.header(name, tar::EntryType::Symlink, 0o777, 0, Some(target));
            self
        }

        pub(crate) fn hardlink(mut self, name: &str, target: &str) -> Self {
            self.header(name, tar::EntryType::Link, 0o644, 0, Some(target));
            self
        }

        pub(crate) fn gzip(mut self) -> Vec<u8> {
            use std::io::Write;
            self.out.extend_from_slice(&[0; 1024]);
            let opts = imgforge_layers::CompressOptions { threads: 1, ..Default::default() };
            let mut gz = imgforge_layers::Compressor::new(Vec::new(), opts).unwrap();
            gz.write_all(&self.out).unwrap();
            gz.finish().unwrap()
        }
    }

    fn try_extract(tgz: Vec<u8>) -> (tempfile::TempDir, Result<(), HerokuError>) {
        let t = tempfile::tempdir().unwrap();
        let archive = t.path().join("bp.tgz");
        fs::write(&archive, tgz).unwrap();
        let r = extract(&archive, &t.path().join("out"));
        (t, r)
    }

    fn rejected(tgz: Vec<u8>, want: &str) {
        let (t, r) = try_extract(tgz);
        match r {
            Err(HerokuError::UnsafeArchive { why, .. }) => assert!(why.contains(want), "{why}"),
            other => panic!("expected UnsafeArchive({want}), got {other:?}"),
        }
        // Nothing was written outside the extraction root.
        let mut names: Vec<_> = fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["bp.tgz", "out"]);
    }

    #[test]
    fn extracts_files_dirs_links_and_modes() {
        let tgz = TarBuilder::new()
            .dir("./")
            .dir("./bin/")
            .file("./bin/compile", 0o775, b"#!/bin/sh\n")
            .file("lib/deep/x.sh", 0o4644, b"x")
            .symlink("bin/detect", "compile")
            .symlink("lib/up", "../bin")
            .symlink("lib/deep/self", "../../lib/deep/.")
            .gzip();
        let (t, r) = try_extract(tgz);
        r.unwrap();
        let out = t.path().join("out");
        let mode = |p: &str| fs::symlink_metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin/compile"), 0o755);
        assert_eq!(mode("lib/deep/x.sh"), 0o644);
        assert_eq!(mode("lib/deep"), 0o755);
        assert_eq!(fs::read_link(out.join("bin/detect")).unwrap(), Path::new("compile"));
        assert_eq!(buildpack_root(&out, Path::new("bp.tgz")).unwrap(), out);
    }

    #[test]
    fn finds_the_buildpack_in_one_top_level_directory() {
        let tgz =
            TarBuilder::new().file("heroku-buildpack-x-1.2/bin/compile", 0o755, b"").file("README", 0o644, b"").gzip();
        let (t, r) = try_extract(tgz);
        r.unwrap();
        let out = t.path().join("out");
        assert_eq!(buildpack_root(&out, Path::new("bp.tgz")).unwrap(), out.join("heroku-buildpack-x-1.2"));

        let tgz = TarBuilder::new().file("a/bin/compile", 0o755, b"").file("b/bin/compile", 0o755, b"").gzip();
        let (t, r) = try_extract(tgz);
        r.unwrap();
        let e = buildpack_root(&t.path().join("out"), Path::new("bp.tgz")).unwrap_err().to_string();
        assert!(
            e.contains("several top-level directories have a bin/ or buildpack.toml (a, b)") || e.contains("(b, a)"),
            "{e}"
        );

        // A composite Cloud Native Buildpack: only buildpack.toml.
        let tgz = TarBuilder::new().file("meta-1.0/buildpack.toml", 0o644, b"api = \"0.10\"").gzip();
        let (t, r) = try_extract(tgz);
        r.unwrap();
        let out = t.path().join("out");
        assert_eq!(buildpack_root(&out, Path::new("bp.tgz")).unwrap(), out.join("meta-1.0"));
    }

    #[test]
    fn rejects_dot_dot_paths() {
        rejected(TarBuilder::new().file("bin/../../evil", 0o644, b"x").gzip(), "'..'");
        rejected(TarBuilder::new().file("../evil", 0o644, b"x").gzip(), "'..'");
        rejected(TarBuilder::new().file("/../evil", 0o644, b"x").gzip(), "'..'");
    }

    #[test]
    fn absolute_names_stay_inside_the_root() {
        let tgz = TarBuilder::new().file("/tmp-imgforge-evil", 0o644, b"x").gzip();
        let (t, r) = try_extract(tgz);
        r.unwrap();
        assert!(t.path().join("out/tmp-imgforge-evil").is_file());
        assert!(!Path::new("/tmp-imgforge-evil").exists());
    }

    #[test]
    fn rejects_symlinks_out_and_writes_through_them() {
        rejected(TarBuilder::new().symlink("escape", "/").gzip(), "absolute path");
        rejected(TarBuilder::new().symlink("escape", "..").gzip(), "leads outside");
        rejected(TarBuilder::new().symlink("a/b/escape", "../../..").gzip(), "leads outside");
        // Each link stays inside on its own; chained they climb out.
        rejected(TarBuilder::new().dir("d").symlink("d/up", "..").symlink("x", "d/up/..").gzip(), "leads outside");
        rejected(TarBuilder::new().symlink("loop", "loop/x").gzip(), "loop");
        // Symlink then a file through it (the link itself would be fine).
        rejected(TarBuilder::new().dir("d").symlink("l", "d").file("l/f", 0o644, b"x").gzip(), "beneath the symlink");
        // Symlink out, then a file through it: the link is caught first.
        rejected(TarBuilder::new().symlink("l", "/tmp").file("l/evil", 0o644, b"x").gzip(), "absolute path");
        // Symlink then a file of the same name.
        rejected(TarBuilder::new().symlink("f", "g").file("f", 0o644, b"x").gzip(), "twice");
    }

    #[test]
    fn rejects_duplicates_hard_links_and_specials() {
        rejected(TarBuilder::new().file("f", 0o644, b"x").file("./f", 0o644, b"y").gzip(), "twice");
        rejected(TarBuilder::new().file("f", 0o644, b"x").hardlink("g", "f").gzip(), "hard links");
        let mut t = TarBuilder::new();
        t.header("fifo", tar::EntryType::Fifo, 0o644, 0, None);
        rejected(t.gzip(), "unsupported entry type");
        rejected(TarBuilder::new().file("f", 0o644, b"x").file("f/g", 0o644, b"x").gzip(), "not a directory");
    }

    #[test]
    fn rejects_malformed_archives() {
        let mut tgz = TarBuilder::new().file("f", 0o644, &[7; 3000]).gzip();
        tgz.truncate(tgz.len() / 2);
        let (_t, r) = try_extract(tgz);
        assert!(matches!(r, Err(HerokuError::UnsafeArchive { .. })), "{r:?}");
    }
}
