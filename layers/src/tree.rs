//! Scanning a directory into canonical layer entries.
//!
//! Canonical order: by the bytes of the relative path (no trailing '/'), so a parent
//! always precedes its children and the order never depends on the file system's
//! directory order. Symlinks are never followed. Files with several links inside the tree
//! are written once, at the first path in canonical order; later paths become hard links
//! to it. Sockets, fifos and devices are reported in [`Tree::skipped`], not written.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::content::{ContentHash, ContentReader};
use crate::normalize::{validate_rel_path, Owner, TarWriter};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    /// Target bytes, verbatim.
    Symlink(Vec<u8>),
    /// Relative path of the first link (in canonical order), which carries the data.
    HardLink(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative to the root; the root itself ("") is never included.
    pub rel: PathBuf,
    pub kind: EntryKind,
    /// Host `st_mode & 0o7777`.
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    /// Host `st_uid` and `st_gid`.
    pub host_uid: u32,
    pub host_gid: u32,
    /// Owner in the layer, when not the layer's owner (e.g. a file a buildpack chowned in
    /// the sandbox). `scan_tree` leaves it `None`.
    pub owner: Option<Owner>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub rel: PathBuf,
    /// "socket" | "fifo" | "block device" | "char device"
    pub what: &'static str,
}

#[derive(Clone, Debug)]
pub struct Tree {
    pub root: PathBuf,
    pub entries: Vec<TreeEntry>,
    pub skipped: Vec<Skipped>,
}

fn ns(sec: i64, nsec: i64) -> i128 {
    i128::from(sec) * 1_000_000_000 + i128::from(nsec)
}

/// Scans `root` (which must be a directory; if it is a symlink it is followed, nothing
/// below it is). `include(rel, is_dir)` returning false drops the entry, and for a
/// directory its whole subtree. Directories are read by a few threads at once (stat calls
/// dominate, and the layer writer waits for the scan); the result does not depend on it.
pub fn scan_tree(root: &Path, include: Include<'_>) -> io::Result<Tree> {
    let md = fs::metadata(root).map_err(|e| annotate(e, "failed to stat", root))?;
    if !md.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", root.display())));
    }
    let queue = ScanQueue::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, SCAN_THREADS);
    let parts: Vec<io::Result<ScanPart>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads).map(|_| s.spawn(|| scan_worker(root, include, &queue))).collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("directory scan panicked"))))
            .collect()
    });
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for part in parts {
        let (e, s) = part?;
        entries.extend(e);
        skipped.extend(s);
    }
    entries.sort_unstable_by(|a, b| a.0.rel.as_os_str().as_bytes().cmp(b.0.rel.as_os_str().as_bytes()));
    skipped.sort_unstable_by(|a, b| a.rel.as_os_str().as_bytes().cmp(b.rel.as_os_str().as_bytes()));

    let mut links = FirstLinks::default();
    let entries = entries.into_iter().map(|(e, nlink)| links.resolve(e, nlink)).collect();
    Ok(Tree { root: root.to_path_buf(), entries, skipped })
}

const SCAN_THREADS: usize = 4;

/// Directories still to read, shared by the scan threads.
struct ScanQueue {
    state: std::sync::Mutex<QueueState>,
    ready: std::sync::Condvar,
}

struct QueueState {
    dirs: Vec<PathBuf>,
    /// Threads reading a directory now (which may add more).
    busy: usize,
    failed: bool,
}

impl ScanQueue {
    fn new() -> ScanQueue {
        let state = QueueState { dirs: vec![PathBuf::new()], busy: 0, failed: false };
        ScanQueue { state: std::sync::Mutex::new(state), ready: std::sync::Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the caller's directory (if any) done, pushes the subdirectories it found and
    /// takes the next; None when every directory is read or a thread failed.
    fn next(&self, done: Option<Vec<PathBuf>>) -> Option<PathBuf> {
        let mut st = self.lock();
        if let Some(subdirs) = done {
            st.busy -= 1;
            st.dirs.extend(subdirs);
            self.ready.notify_all();
        }
        loop {
            if st.failed {
                return None;
            }
            if let Some(d) = st.dirs.pop() {
                st.busy += 1;
                return Some(d);
            }
            if st.busy == 0 {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn fail(&self) {
        self.lock().failed = true;
        self.ready.notify_all();
    }
}

type Include<'a> = &'a (dyn Fn(&Path, bool) -> bool + Sync);
type ScanPart = (Vec<(TreeEntry, u64)>, Vec<Skipped>);

fn scan_worker(root: &Path, include: Include<'_>, queue: &ScanQueue) -> io::Result<ScanPart> {
    let mut part = (Vec::new(), Vec::new());
    let mut done = None;
    while let Some(dir_rel) = queue.next(done.take()) {
        match scan_dir(root, &dir_rel, include, &mut part) {
            Ok(subdirs) => done = Some(subdirs),
            Err(e) => {
                queue.fail();
                return Err(e);
            }
        }
    }
    Ok(part)
}

/// Reads one directory into `part`; returns its subdirectories (those included).
fn scan_dir(root: &Path, dir_rel: &Path, include: Include<'_>, part: &mut ScanPart) -> io::Result<Vec<PathBuf>> {
    let mut subdirs = Vec::new();
    let dir_abs = root.join(dir_rel);
    let rd = fs::read_dir(&dir_abs).map_err(|e| annotate(e, "failed to read directory", &dir_abs))?;
    for de in rd {
        let de = de.map_err(|e| annotate(e, "failed to read directory", &dir_abs))?;
        let rel = dir_rel.join(de.file_name());
        // DirEntry::metadata does not follow symlinks.
        let md = de.metadata().map_err(|e| annotate(e, "failed to stat", &root.join(&rel)))?;
        let ft = md.file_type();
        let what = if ft.is_socket() {
            Some("socket")
        } else if ft.is_fifo() {
            Some("fifo")
        } else if ft.is_block_device() {
            Some("block device")
        } else if ft.is_char_device() {
            Some("char device")
        } else {
            None
        };
        let is_dir = ft.is_dir();
        if !include(&rel, is_dir) {
            continue;
        }
        if let Some(what) = what {
            part.1.push(Skipped { rel, what });
            continue;
        }
        let kind = if is_dir {
            EntryKind::Dir
        } else if ft.is_symlink() {
            let t = fs::read_link(root.join(&rel)).map_err(|e| annotate(e, "failed to read link", &root.join(&rel)))?;
            EntryKind::Symlink(t.into_os_string().into_vec_bytes())
        } else {
            EntryKind::File
        };
        if is_dir {
            subdirs.push(rel.clone());
        }
        let size = if matches!(kind, EntryKind::File) { md.size() } else { 0 };
        let entry = TreeEntry {
            rel,
            kind,
            mode: md.mode() & 0o7777,
            size,
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            ino: md.ino(),
            dev: md.dev(),
            host_uid: md.uid(),
            host_gid: md.gid(),
            owner: None,
        };
        part.0.push((entry, md.nlink()));
    }
    Ok(subdirs)
}

/// Hard links: the first path (in canonical order) of a (dev, ino) carries the data; later
/// paths become links to it. Entries must be given in canonical order.
#[derive(Default)]
struct FirstLinks(HashMap<(u64, u64), PathBuf>);

impl FirstLinks {
    fn resolve(&mut self, mut e: TreeEntry, nlink: u64) -> TreeEntry {
        if nlink > 1 && e.kind == EntryKind::File {
            match self.0.get(&(e.dev, e.ino)) {
                Some(p) => e.kind = EntryKind::HardLink(p.clone()),
                None => {
                    self.0.insert((e.dev, e.ino), e.rel.clone());
                }
            }
        }
        e
    }
}

/// Scans `root` as [`scan_tree`] does and writes its layer at the same time: a scan thread
/// reads directories in canonical order (each directory when its turn comes), and reads and
/// hashes small files too; the caller's thread writes each entry as soon as it arrives, so
/// the compressor starts long before the scan ends, and the writing thread (the busiest)
/// does little but copy bytes. Same bytes as `scan_tree` followed by [`Tree::write_to_hashing`].
pub fn scan_and_write<W: Write>(
    root: &Path,
    include: Include<'_>,
    tar: &mut TarWriter<W>,
    prefix: &[u8],
    owner: Owner,
    on_file: &mut dyn FnMut(usize, ContentHash),
) -> io::Result<Tree> {
    let md = fs::metadata(root).map_err(|e| annotate(e, "failed to stat", root))?;
    if !md.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a directory", root.display())));
    }
    write_prefix(tar, prefix, owner)?;
    let mut tree = Tree { root: root.to_path_buf(), entries: Vec::new(), skipped: Vec::new() };
    let (tx, rx) = std::sync::mpsc::sync_channel::<(TreeEntry, Option<Preloaded>)>(STREAM_AHEAD);
    std::thread::scope(|s| {
        let scan = s.spawn(move || {
            let mut skipped = Vec::new();
            let mut links = FirstLinks::default();
            walk_ordered(root, Path::new(""), include, &mut skipped, &mut |(e, nlink)| {
                let e = links.resolve(e, nlink);
                let data = match e.kind {
                    EntryKind::File if e.size <= PRELOAD_MAX => Some(preload(root, &e)?),
                    _ => None,
                };
                // The writer hung up (it failed): its error is the one to report.
                tx.send((e, data)).map_err(|_| io::Error::other("layer writer stopped"))
            })?;
            Ok::<_, io::Error>(skipped)
        });
        let written: io::Result<()> = rx.iter().try_for_each(|(e, data)| {
            let i = tree.entries.len();
            if let Some(h) = write_entry(tar, &tree.root, prefix, owner, &e, data)? {
                on_file(i, h);
            }
            tree.entries.push(e);
            Ok(())
        });
        drop(rx);
        let scanned = scan.join().unwrap_or_else(|_| Err(io::Error::other("directory scan panicked")));
        written?;
        tree.skipped = scanned?;
        Ok(tree)
    })
}

/// How many scanned entries may wait for the writer, and the largest file the scan thread
/// reads ahead: at most 16 MiB of file data waits.
const STREAM_AHEAD: usize = 1024;
const PRELOAD_MAX: u64 = 16 << 10;

/// A small file's bytes and content hash, read by the scan thread.
type Preloaded = (Vec<u8>, ContentHash);

/// Reads the regular file `e` (checked as [`open_checked`] does); it must still have its
/// scanned size.
fn preload(root: &Path, e: &TreeEntry) -> io::Result<Preloaded> {
    let abs = root.join(&e.rel);
    let mut data = Vec::with_capacity(e.size as usize);
    open_checked(&abs, e)?.take(e.size + 1).read_to_end(&mut data)?;
    if data.len() as u64 != e.size {
        return Err(io::Error::other(format!("file changed while it was being read: {}", abs.display())));
    }
    let hash = ContentHash::of(&data);
    Ok((data, hash))
}

/// Emits the entries under `dir_rel` in canonical order. Within one directory, an entry
/// sorts by its name and a subdirectory's contents by its name followed by '/': that is
/// where all of them fall among the siblings in the byte order of full paths (`a`, `a.txt`,
/// `a/b`, `a0`).
fn walk_ordered(
    root: &Path,
    dir_rel: &Path,
    include: Include<'_>,
    skipped: &mut Vec<Skipped>,
    emit: &mut dyn FnMut((TreeEntry, u64)) -> io::Result<()>,
) -> io::Result<()> {
    let mut part = (Vec::new(), Vec::new());
    let subdirs = scan_dir(root, dir_rel, include, &mut part)?;
    let (entries, mut skips) = part;
    skips.sort_unstable_by(|a, b| a.rel.as_os_str().as_bytes().cmp(b.rel.as_os_str().as_bytes()));
    skipped.append(&mut skips);
    enum Item {
        Entry((TreeEntry, u64)),
        Contents(PathBuf),
    }
    let name = |rel: &Path| rel.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
    let mut items: Vec<(Vec<u8>, Item)> = Vec::with_capacity(entries.len() + subdirs.len());
    for e in entries {
        items.push((name(&e.0.rel), Item::Entry(e)));
    }
    for d in subdirs {
        let mut key = name(&d);
        key.push(b'/');
        items.push((key, Item::Contents(d)));
    }
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, item) in items {
        match item {
            Item::Entry(e) => emit(e)?,
            Item::Contents(d) => walk_ordered(root, &d, include, skipped, emit)?,
        }
    }
    Ok(())
}

/// The parents of `prefix` (root-owned, 0755), then `prefix` itself (owned by `owner`, 0755).
fn write_prefix<W: Write>(tar: &mut TarWriter<W>, prefix: &[u8], owner: Owner) -> io::Result<()> {
    if !prefix.is_empty() {
        validate_rel_path(prefix)?;
        for (i, &b) in prefix.iter().enumerate() {
            if b == b'/' {
                tar.dir(&prefix[..i], 0o755, Owner::ROOT)?;
            }
        }
        tar.dir(prefix, 0o755, owner)?;
    }
    Ok(())
}

/// Writes one entry of the tree at `root`; returns a regular file's content hash. A file
/// the scan thread already read comes with its bytes and hash.
fn write_entry<W: Write>(
    tar: &mut TarWriter<W>,
    root: &Path,
    prefix: &[u8],
    owner: Owner,
    e: &TreeEntry,
    preloaded: Option<Preloaded>,
) -> io::Result<Option<ContentHash>> {
    let path = join_prefix(prefix, e.rel.as_os_str());
    let owner = e.owner.unwrap_or(owner);
    match &e.kind {
        EntryKind::Dir => tar.dir(&path, e.mode, owner)?,
        EntryKind::Symlink(t) => tar.symlink(&path, t, owner)?,
        EntryKind::HardLink(first) => {
            let target = join_prefix(prefix, first.as_os_str());
            tar.hardlink_with_mode(&path, &target, e.mode, owner)?
        }
        EntryKind::File => {
            if let Some((bytes, hash)) = preloaded {
                tar.file(&path, e.mode, owner, e.size, &mut bytes.as_slice())?;
                return Ok(Some(hash));
            }
            let abs = root.join(&e.rel);
            let mut f = ContentReader::new(open_checked(&abs, e)?);
            tar.file(&path, e.mode, owner, e.size, &mut f)?;
            return Ok(Some(f.finish().1));
        }
    }
    Ok(None)
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}

impl IntoVecBytes for std::ffi::OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        std::os::unix::ffi::OsStringExt::into_vec(self)
    }
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn join_prefix(prefix: &[u8], rel: &OsStr) -> Vec<u8> {
    let rel = rel.as_bytes();
    let mut v = Vec::with_capacity(prefix.len() + 1 + rel.len());
    v.extend_from_slice(prefix);
    if !prefix.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(rel);
    v
}

/// Opens a regular file for reading without following symlinks and without blocking on a
/// fifo swapped in since the scan; checks it is still the scanned file.
fn open_checked(abs: &Path, e: &TreeEntry) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(abs)
        .map_err(|err| annotate(err, "failed to open", abs))?;
    let md = f.metadata()?;
    if !md.is_file() || md.ino() != e.ino || md.dev() != e.dev {
        return Err(io::Error::other(format!("file changed while it was being read: {}", abs.display())));
    }
    Ok(f)
}

impl Tree {
    /// Writes all entries under `prefix` (relative, e.g. `b"workspace"`; `b""` = the layer
    /// root). First the parents of `prefix` (root-owned, 0755), then `prefix` itself
    /// (owned by `owner`, 0755), then the entries, all owned by `owner`.
    pub fn write_to<W: Write>(&self, tar: &mut TarWriter<W>, prefix: &[u8], owner: Owner) -> io::Result<()> {
        self.write_to_hashing(tar, prefix, owner, &mut |_, _| {})
    }

    /// [`Tree::write_to`], also handing back the content hash of each regular file as it
    /// is streamed (entry index, hash): a caller that needs content hashes reads each file once.
    pub fn write_to_hashing<W: Write>(
        &self,
        tar: &mut TarWriter<W>,
        prefix: &[u8],
        owner: Owner,
        on_file: &mut dyn FnMut(usize, ContentHash),
    ) -> io::Result<()> {
        write_prefix(tar, prefix, owner)?;
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(h) = write_entry(tar, &self.root, prefix, owner, e, None)? {
                on_file(i, h);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn rels(t: &Tree) -> Vec<String> {
        t.entries.iter().map(|e| e.rel.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn write_to_hashing_reports_each_file_once() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"alpha").unwrap();
        fs::create_dir(d.path().join("d")).unwrap();
        fs::write(d.path().join("d/b"), b"beta").unwrap();
        let t = scan_tree(d.path(), &|_, _| true).unwrap();
        let mut seen = Vec::new();
        let mut tar = TarWriter::new(Vec::new(), crate::Normalize::default());
        t.write_to_hashing(&mut tar, b"p", Owner::ROOT, &mut |i, h| seen.push((rels(&t)[i].clone(), h))).unwrap();
        let with_hashes = tar.finish().unwrap();
        let mut plain = TarWriter::new(Vec::new(), crate::Normalize::default());
        t.write_to(&mut plain, b"p", Owner::ROOT).unwrap();
        assert_eq!(with_hashes, plain.finish().unwrap(), "hashing must not change the tar");
        assert_eq!(seen, vec![("a".into(), ContentHash::of(b"alpha")), ("d/b".into(), ContentHash::of(b"beta"))]);
    }

    /// Names around '/' (0x2f) in byte order, hard links, a pruned directory, specials.
    fn tricky_tree(r: &Path) {
        for d in ["a/b/c", "a-b", "a.d/x", "a0", "z/y", "skip/me", "A"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "a/b/c/f",
            "a/b.txt",
            "a!",
            "a.txt",
            "a/b0",
            "a-b/f",
            "a.d/x/g",
            "a0/h",
            "z/y/i",
            "skip/me/j",
            "A/k",
            "\u{1}",
        ] {
            fs::write(r.join(f), f.as_bytes()).unwrap();
        }
        fs::hard_link(r.join("z/y/i"), r.join("a/link")).unwrap();
        fs::hard_link(r.join("z/y/i"), r.join("a0/link")).unwrap();
        symlink("a/b", r.join("a/b/c/up")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(r.join("a/sock")).unwrap();
        std::mem::forget(_sock);
    }

    #[test]
    fn scan_and_write_gives_the_same_tree_bytes_and_hashes_as_scan_then_write() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        tricky_tree(r);
        let include = |p: &Path, _: bool| p != Path::new("skip");
        let t = scan_tree(r, &include).unwrap();
        let mut a_hashes = Vec::new();
        let mut a = TarWriter::new(Vec::new(), crate::Normalize::default());
        t.write_to_hashing(&mut a, b"w/app", Owner { uid: 5, gid: 6 }, &mut |i, h| a_hashes.push((i, h))).unwrap();
        let mut b_hashes = Vec::new();
        let mut b = TarWriter::new(Vec::new(), crate::Normalize::default());
        let s =
            scan_and_write(r, &include, &mut b, b"w/app", Owner { uid: 5, gid: 6 }, &mut |i, h| b_hashes.push((i, h)))
                .unwrap();
        assert_eq!(rels(&s), rels(&t));
        assert_eq!(s.entries, t.entries);
        assert_eq!(s.skipped, t.skipped);
        assert_eq!(a_hashes, b_hashes);
        assert_eq!(a.finish().unwrap(), b.finish().unwrap());
        assert!(rels(&t).iter().any(|p| p == "a/link"), "{:?}", rels(&t));
        assert!(!rels(&t).iter().any(|p| p.starts_with("skip")));
    }

    #[test]
    fn scan_and_write_reports_a_missing_root_and_a_failing_writer() {
        let d = tempfile::tempdir().unwrap();
        let mut tar = TarWriter::new(Vec::new(), crate::Normalize::default());
        assert!(scan_and_write(&d.path().join("missing"), &|_, _| true, &mut tar, b"", Owner::ROOT, &mut |_, _| {})
            .is_err());
        // A sink that fails: its error is the one reported, and the scan thread stops.
        tricky_tree(d.path());
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut tar = TarWriter::new(Full, crate::Normalize::default());
        let e = scan_and_write(d.path(), &|_, _| true, &mut tar, b"", Owner::ROOT, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
    }

    #[test]
    fn canonical_order_is_bytewise_on_full_paths() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        // Created in an order unrelated to the canonical one.
        fs::create_dir(r.join("a")).unwrap();
        fs::write(r.join("a/b"), b"").unwrap();
        fs::write(r.join("a.txt"), b"x").unwrap();
        fs::write(r.join("a-b"), b"").unwrap();
        fs::write(r.join("B"), b"").unwrap();
        fs::create_dir_all(r.join("a/c/d")).unwrap();
        let t = scan_tree(r, &|_, _| true).unwrap();
        assert_eq!(rels(&t), ["B", "a", "a-b", "a.txt", "a/b", "a/c", "a/c/d"]);
        assert_eq!(t.entries[3].size, 1);
        assert_eq!(t.entries[1].kind, EntryKind::Dir);
        assert_eq!(t.entries[1].size, 0);
    }

    #[test]
    fn first_hard_link_in_canonical_order_carries_data() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::write(r.join("z"), b"data").unwrap();
        fs::create_dir(r.join("b")).unwrap();
        fs::hard_link(r.join("z"), r.join("b/y")).unwrap();
        fs::hard_link(r.join("z"), r.join("m")).unwrap();
        let t = scan_tree(r, &|_, _| true).unwrap();
        assert_eq!(rels(&t), ["b", "b/y", "m", "z"]);
        assert_eq!(t.entries[1].kind, EntryKind::File);
        assert_eq!(t.entries[2].kind, EntryKind::HardLink(PathBuf::from("b/y")));
        assert_eq!(t.entries[3].kind, EntryKind::HardLink(PathBuf::from("b/y")));
        // If the first link is filtered out, the next one carries the data.
        let t = scan_tree(r, &|p, _| p != Path::new("b")).unwrap();
        assert_eq!(rels(&t), ["m", "z"]);
        assert_eq!(t.entries[0].kind, EntryKind::File);
        assert_eq!(t.entries[1].kind, EntryKind::HardLink(PathBuf::from("m")));
    }

    #[test]
    fn specials_are_skipped_and_symlinks_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("real")).unwrap();
        fs::write(r.join("real/f"), b"f").unwrap();
        symlink("real", r.join("link-to-dir")).unwrap();
        symlink("/nonexistent/target", r.join("dangling")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();
        let fifo_made =
            std::process::Command::new("mkfifo").arg(r.join("fifo")).status().map(|s| s.success()).unwrap_or(false);
        let t = scan_tree(r, &|_, _| true).unwrap();
        assert_eq!(rels(&t), ["dangling", "link-to-dir", "real", "real/f"]);
        assert_eq!(t.entries[1].kind, EntryKind::Symlink(b"real".to_vec()));
        assert_eq!(t.entries[0].kind, EntryKind::Symlink(b"/nonexistent/target".to_vec()));
        let mut want = vec![];
        if fifo_made {
            want.push(Skipped { rel: "fifo".into(), what: "fifo" });
        }
        want.push(Skipped { rel: "sock".into(), what: "socket" });
        assert_eq!(t.skipped, want);
    }

    #[test]
    fn include_prunes_subtrees_and_sees_is_dir() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("keep/sub")).unwrap();
        fs::create_dir_all(r.join("node_modules/x")).unwrap();
        fs::write(r.join("node_modules/x/f"), b"").unwrap();
        fs::write(r.join("keep/sub/f"), b"").unwrap();
        fs::write(r.join("keep/.env"), b"").unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let t = scan_tree(r, &|p, is_dir| {
            seen.lock().unwrap().push((p.to_path_buf(), is_dir));
            p != Path::new("node_modules") && p.file_name() != Some(OsStr::new(".env"))
        })
        .unwrap();
        assert_eq!(rels(&t), ["keep", "keep/sub", "keep/sub/f"]);
        let seen = seen.into_inner().unwrap();
        assert!(seen.contains(&(PathBuf::from("keep/sub"), true)));
        assert!(seen.contains(&(PathBuf::from("keep/sub/f"), false)));
        assert!(!seen.iter().any(|(p, _)| p.starts_with("node_modules/x")), "pruned dir not descended");
    }

    #[test]
    fn modes_are_host_modes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::write(r.join("x"), b"").unwrap();
        fs::set_permissions(r.join("x"), fs::Permissions::from_mode(0o4751)).unwrap();
        let t = scan_tree(r, &|_, _| true).unwrap();
        assert_eq!(t.entries[0].mode, 0o4751);
    }

    #[test]
    fn root_must_be_a_directory() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), b"").unwrap();
        assert!(scan_tree(&d.path().join("f"), &|_, _| true).is_err());
        assert!(scan_tree(&d.path().join("missing"), &|_, _| true).is_err());
    }

    #[test]
    fn write_to_detects_a_swapped_file() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::write(r.join("f"), b"abc").unwrap();
        let t = scan_tree(r, &|_, _| true).unwrap();
        // Replaced by another file (new inode: the old one is kept alive) after the scan.
        fs::rename(r.join("f"), r.join("old")).unwrap();
        fs::write(r.join("f"), b"abc").unwrap();
        let mut w = TarWriter::new(Vec::new(), crate::Normalize::default());
        let e = t.write_to(&mut w, b"", Owner::ROOT).unwrap_err();
        assert!(e.to_string().contains("file changed while it was being read"), "{e}");
        // Replaced by a symlink: O_NOFOLLOW refuses it.
        fs::remove_file(r.join("f")).unwrap();
        symlink("/etc/passwd", r.join("f")).unwrap();
        let mut w = TarWriter::new(Vec::new(), crate::Normalize::default());
        assert!(t.write_to(&mut w, b"", Owner::ROOT).is_err());
    }
}
