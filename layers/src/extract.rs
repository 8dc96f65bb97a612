//! Safe application of image layers to a root directory.
//!
//! [`extract_layer`] reads one layer through the strict [`LayerReader`] and applies it to a
//! rootfs, with OCI semantics: a directory over a directory merges, anything else replaces
//! what is there (a directory is removed with its contents), `.wh.NAME` removes NAME,
//! `.wh..wh..opq` empties its directory of what lower layers put there. See
//! `docs/sandbox.md` ("Hardened extraction") for the whole contract.
//!
//! Nothing can read, write, chmod, chown or create anything outside the root:
//! * every entry path is split into components; `..` anywhere is refused, a leading `/` is
//!   dropped (as every tar does), `.` and empty components are ignored;
//! * the parent directory is resolved **inside the root**: with `openat2(RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)` when the kernel has it (Linux ≥ 5.6), else by a
//!   component-by-component walk with `O_NOFOLLOW` that follows symlinks itself, with `/`
//!   and `..` clamped at the root. A symlink planted by an earlier entry or layer therefore
//!   redirects at most to another place inside the root, as if the root were `/`
//!   (containerd and umoci do the same);
//! * the last component is never followed: it is created with `O_CREAT|O_EXCL|O_NOFOLLOW`,
//!   `mkdirat`, `symlinkat`, `linkat` or `mknodat` under the resolved parent's fd, after
//!   removing what was there (`unlinkat`; directories are emptied through fds opened with
//!   `O_NOFOLLOW`). A directory over an existing directory is chmod-ed through an fd opened
//!   with `O_NOFOLLOW|O_DIRECTORY`, so a symlink of the same name is replaced, never
//!   chmod-ed through (tar-rs CVE-2026-33056);
//! * a hard link's target is resolved the same way (its `..` refused); a root entry (`.`
//!   or `/`) must be a directory;
//! * the reader's [`Limits`] cap entries, header and name sizes, per-file bytes and the
//!   total tar bytes, which is the decompressed size: a gzip or zstd bomb stops there.
//!
//! Ownership: with [`ExtractOptions::chown`] (for a privileged caller) entries get the
//! uid/gid of their headers; otherwise they belong to the caller and the header owners
//! are not recorded. Device nodes become empty placeholder files with a warning unless
//! [`ExtractOptions::devices`] asks for real nodes. The library never prints: warnings are
//! returned in [`ExtractStats`].

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::compress::Compression;
use crate::reader::{decompress, Entry, EntryType, LayerReader, Limits, ReadError};
use crate::whiteout::{self, Whiteout};

/// Most symlinks followed while resolving one path (the kernel's own limit).
const MAX_SYMLINKS: u32 = 40;

/// How device nodes are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Devices {
    /// An empty regular file (mode 0600) stands in for the node, with a warning. The only
    /// choice without root.
    #[default]
    Placeholder,
    /// `mknodat` (needs CAP_MKNOD).
    Create,
}

/// How parent paths are resolved inside the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Resolve {
    /// `openat2(RESOLVE_IN_ROOT)` when the kernel has it, else [`Resolve::Walk`].
    #[default]
    Auto,
    /// The component-by-component walk (used when openat2 is missing; selectable for tests).
    Walk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtractOptions {
    pub limits: Limits,
    /// chown entries to their header uid/gid (needs privilege).
    pub chown: bool,
    /// Give the caller read and write access to files and rwx to directories (mode |
    /// 0600 / 0700), so an unprivileged caller can later read, copy and remove the tree,
    /// and apply further layers into directories a layer made read-only. Inside a user
    /// namespace that maps the caller to root, root ignores these bits anyway.
    pub owner_access: bool,
    pub devices: Devices,
    pub resolve: Resolve,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            limits: Limits::default(),
            chown: false,
            owner_access: true,
            devices: Devices::Placeholder,
            resolve: Resolve::Auto,
        }
    }
}

/// What one layer did to the root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// `.wh.` entries and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes written as placeholders.
    pub placeholders: u64,
    /// Their paths, with their kind: `dev/null (character)`. `warnings` sums them up in one
    /// line; these are the details.
    pub placeholder_paths: Vec<String>,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Bytes of tar stream read (decompressed).
    pub tar_bytes: u64,
    /// Things the caller should tell the user (placeholders, skipped entry types).
    pub warnings: Vec<String>,
}

/// Why extraction stopped. Every variant names the entry; callers add the image and layer.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The tar stream is malformed, truncated, over a limit, or could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The entry tries something the extractor refuses.
    #[error("entry {path:?} refused: {why}")]
    Refused { path: String, why: String },
    /// A filesystem operation failed.
    #[error("entry {path:?}: Failed to {what}: {source}")]
    Io { path: String, what: String, source: io::Error },
    #[error("Failed to open the root directory {root}: {source}")]
    Root { root: String, source: io::Error },
}

impl ExtractError {
    /// A short stable name for the kind of failure ("refused", "malformed", "truncated",
    /// "limit", "io").
    pub fn kind(&self) -> &'static str {
        match self {
            ExtractError::Read(ReadError::Malformed { .. }) => "malformed",
            ExtractError::Read(ReadError::Truncated { .. }) => "truncated",
            ExtractError::Read(ReadError::Limit { .. }) => "limit",
            ExtractError::Read(ReadError::Io(_)) => "io",
            ExtractError::Refused { .. } => "refused",
            ExtractError::Io { .. } | ExtractError::Root { .. } => "io",
        }
    }
}

/// Applies one (compressed) layer to `root`.
pub fn extract_compressed<R: Read>(
    root: &Path,
    layer: R,
    compression: Compression,
    opts: &ExtractOptions,
) -> Result<ExtractStats, ExtractError> {
    let r = decompress(layer, compression).map_err(ReadError::Io)?;
    extract_layer(root, r, opts)
}

/// Applies one uncompressed layer (a tar stream) to the directory `root`.
pub fn extract_layer<R: Read>(root: &Path, tar: R, opts: &ExtractOptions) -> Result<ExtractStats, ExtractError> {
    let c = cpath(root.as_os_str().as_bytes())
        .map_err(|source| ExtractError::Root { root: root.display().to_string(), source })?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(ExtractError::Root { root: root.display().to_string(), source: io::Error::last_os_error() });
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    extract_layer_at(fd.as_fd(), tar, opts)
}

/// Applies one uncompressed layer to the directory open as `root` (any fd type, `O_PATH`
/// included).
pub fn extract_layer_at<R: Read>(
    root: BorrowedFd<'_>,
    tar: R,
    opts: &ExtractOptions,
) -> Result<ExtractStats, ExtractError> {
    let mode = match opts.resolve {
        Resolve::Walk => Mode::Walk,
        Resolve::Auto if openat2_available(root) => Mode::Openat2,
        Resolve::Auto => Mode::Walk,
    };
    let mut x = Extractor { root, mode, opts, stats: ExtractStats::default(), this_layer: HashSet::new() };
    let mut reader = LayerReader::new(tar, opts.limits);
    while let Some(entry) = reader.next_entry()? {
        x.stats.entries += 1;
        x.apply(&entry, &mut reader)?;
    }
    x.stats.tar_bytes = reader.position();
    if let Some(summary) = placeholder_summary(&x.stats.placeholder_paths) {
        x.stats.warnings.push(summary);
    }
    Ok(x.stats)
}

/// Paths shown in the one-line summary of a layer's device placeholders.
const PLACEHOLDERS_NAMED: usize = 3;

/// One warning for all of a layer's device placeholders (a base image's `/dev` has a
/// dozen): how many, the first few, and why.
fn placeholder_summary(paths: &[String]) -> Option<String> {
    let (first, n) = (paths.first()?, paths.len());
    if n == 1 {
        return Some(format!(
            "1 device node replaced by an empty placeholder file (device nodes cannot be created without root): {first}"
        ));
    }
    let named = paths[..n.min(PLACEHOLDERS_NAMED)].join(", ");
    let more = if n > PLACEHOLDERS_NAMED { format!(" and {} more", n - PLACEHOLDERS_NAMED) } else { String::new() };
    Some(format!(
        "{n} device nodes replaced by empty placeholder files (device nodes cannot be created without root): {named}{more}"
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Openat2,
    Walk,
}

struct Extractor<'a> {
    root: BorrowedFd<'a>,
    mode: Mode,
    opts: &'a ExtractOptions,
    stats: ExtractStats,
    /// Paths (components joined by '/') this layer created: whiteouts never remove them.
    this_layer: HashSet<Vec<u8>>,
}

/// The components of a normalized entry path, or why it is refused.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("the path contains \"..\"".into()),
            _ => out.push(c),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn cpath(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check<T: PartialOrd + Default>(r: T) -> io::Result<T> {
    if r < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: `how` is a valid open_how of the size passed; `path` is NUL-terminated.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EAGAIN: a concurrent rename raced the lookup; retry.
            if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                continue;
            }
            return Err(e);
        }
        return owned(r as libc::c_int);
    }
}

fn openat2_available(root: BorrowedFd<'_>) -> bool {
    // ENOSYS (kernel < 5.6) or EPERM (a seccomp filter) both mean: walk.
    openat2(root, c".", libc::O_PATH | libc::O_DIRECTORY).is_ok()
}

fn openat(dir: BorrowedFd<'_>, name: &[u8], flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cpath(name)?;
    // SAFETY: valid dirfd and NUL-terminated name.
    owned(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })
}

fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<libc::stat>> {
    let c = cpath(name)?;
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, NUL-terminated name, valid out-pointer.
    let r = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 {
        Ok(Some(st))
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cpath(name)?;
    // SAFETY: valid dirfd and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode as libc::mode_t) }).map(|_| ())
}

fn readlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cpath(name)?;
    let mut buf = vec![0u8; 4097];
    // SAFETY: buf is writable for its length.
    let n = check(unsafe { libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// Removes `name` in `dir` whatever it is; a directory with everything in it. Never
/// follows a symlink.
fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let c = cpath(name)?;
    let Some(st) = lstat_at(dir, name)? else { return Ok(()) };
    if is_dir(&st) {
        let sub = openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
        empty_dir(sub, &|_| true)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })?;
    } else {
        // SAFETY: as above.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) })?;
    }
    Ok(())
}

/// Removes the children of the directory `dir` (opened `O_RDONLY|O_DIRECTORY`) for which
/// `remove(name)` is true.
fn empty_dir(dir: OwnedFd, remove: &dyn Fn(&[u8]) -> bool) -> io::Result<()> {
    // The directory is listed first, then changed: readdir over a changing directory may
    // skip entries.
    let names = list_dir(&dir)?;
    // Rootless: a directory made read-only by a layer could not be emptied.
    let _ = ensure_owner_rwx(dir.as_fd());
    for n in names {
        if remove(&n) {
            remove_at(dir.as_fd(), &n)?;
        }
    }
    Ok(())
}

fn ensure_owner_rwx(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: zeroed stat is a valid out-parameter; dir is a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(dir.as_raw_fd(), &mut st) })?;
    if st.st_mode & 0o700 != 0o700 && st.st_uid == unsafe { libc::geteuid() } {
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(dir.as_raw_fd(), (st.st_mode & 0o7777) | 0o700) })?;
    }
    Ok(())
}

fn list_dir(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    // fdopendir takes ownership of the fd it is given: hand it a duplicate.
    // SAFETY: valid fd.
    let dup = check(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is a fresh directory fd.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // errno must be cleared to tell the end from an error.
        // SAFETY: writing errno of this thread.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d` is an open DIR stream.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e) };
        }
        // SAFETY: d_name is NUL-terminated within the dirent.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    };
    // SAFETY: closes the stream and `dup`.
    unsafe { libc::closedir(d) };
    result.map(|()| names)
}

/// A short description of what is at a path, for messages.
fn kind_of(st: &libc::stat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symlink",
        libc::S_IFREG => "a file",
        _ => "a special file",
    }
}

impl Extractor<'_> {
    fn refused(&self, e: &Entry, why: impl Into<String>) -> ExtractError {
        ExtractError::Refused { path: e.path_lossy(), why: why.into() }
    }

    fn io(&self, e: &Entry, what: impl Into<String>) -> impl FnOnce(io::Error) -> ExtractError {
        let path = e.path_lossy();
        let what = what.into();
        move |source| ExtractError::Io { path, what, source }
    }

    fn dir_mode(&self, mode: u32) -> u32 {
        let m = mode & 0o7777;
        if self.opts.owner_access {
            m | 0o700
        } else {
            m
        }
    }

    fn file_mode(&self, mode: u32) -> u32 {
        let m = mode & 0o7777;
        if self.opts.owner_access {
            m | 0o600
        } else {
            m
        }
    }

    /// Opens the directory `comps` inside the root, following symlinks inside it. With
    /// `create`, missing directories are made (mode 0755); without, `Ok(None)` when missing.
    fn open_dir(&self, comps: &[&[u8]], create: bool) -> io::Result<Option<OwnedFd>> {
        match self.mode {
            Mode::Openat2 => self.open_dir_openat2(comps, create),
            Mode::Walk => self.open_dir_walk(comps, create),
        }
    }

    fn open_dir_openat2(&self, comps: &[&[u8]], create: bool) -> io::Result<Option<OwnedFd>> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let full = if comps.is_empty() { b".".to_vec() } else { join(comps) };
        match openat2(self.root, &cpath(&full)?, flags) {
            Ok(fd) => return Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        // Some component is missing: find and create them one by one.
        let mut cur = openat2(self.root, c".", flags)?;
        for i in 0..comps.len() {
            let prefix = cpath(&join(&comps[..=i]))?;
            cur = match openat2(self.root, &prefix, flags) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.mkdir_missing(cur.as_fd(), comps[i])?;
                    openat2(self.root, &prefix, flags)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(Some(cur))
    }

    fn mkdir_missing(&self, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
        match mkdir_at(dir, name, self.dir_mode(0o755)) {
            // The name exists but did not resolve: a symlink to nowhere.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{:?} is a symlink to a missing directory", String::from_utf8_lossy(name)),
            )),
            r => r,
        }
    }

    fn open_dir_walk(&self, comps: &[&[u8]], create: bool) -> io::Result<Option<OwnedFd>> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let root = openat(self.root, b".", flags, 0)?;
        let mut stack: Vec<OwnedFd> = vec![root];
        // (component, came from a symlink's target)
        let mut queue: std::collections::VecDeque<(Vec<u8>, bool)> =
            comps.iter().map(|c| (c.to_vec(), false)).collect();
        let mut links = 0;
        while let Some((c, from_link)) = queue.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let cur = stack.last().expect("the root is never popped").as_fd();
            match lstat_at(cur, &c)? {
                None if !create => return Ok(None),
                None if from_link => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the path goes through a symlink to a missing directory",
                    ))
                }
                None => {
                    self.mkdir_missing(cur, &c)?;
                    let fd = openat(cur, &c, flags, 0)?;
                    stack.push(fd);
                }
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = readlink_at(cur, &c)?;
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    for t in target.split(|&b| b == b'/').rev() {
                        queue.push_front((t.to_vec(), true));
                    }
                }
                Some(st) if is_dir(&st) => {
                    let fd = openat(cur, &c, flags, 0)?;
                    stack.push(fd);
                }
                Some(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            }
        }
        Ok(stack.pop())
    }

    fn apply<R: Read>(&mut self, e: &Entry, reader: &mut LayerReader<R>) -> Result<(), ExtractError> {
        let comps = components(&e.path).map_err(|why| self.refused(e, why))?;
        let Some((&name, parents)) = comps.split_last() else {
            // The root itself.
            return match e.kind {
                EntryType::Dir => Ok(()),
                _ => Err(self.refused(e, format!("the root entry is a {:?}, not a directory", e.kind))),
            };
        };
        if let Some(p) = parents.iter().find(|p| whiteout::is_whiteout_name(p)) {
            return Err(
                self.refused(e, format!("the whiteout name {:?} is used as a directory", String::from_utf8_lossy(p)))
            );
        }
        match whiteout::classify(name).map_err(|why| self.refused(e, why))? {
            Whiteout::None => {}
            Whiteout::Remove(target) => return self.whiteout(e, parents, target),
            Whiteout::Opaque => return self.opaque(e, parents),
        }
        let parent = self
            .open_dir(parents, true)
            .map_err(self.io(e, "resolve the parent directory inside the root"))?
            .expect("created");
        let parent = parent.as_fd();
        let existing = lstat_at(parent, name).map_err(self.io(e, "inspect the existing entry"))?;
        let key = join(&comps);

        // A directory over a directory merges: only its mode changes.
        if e.kind == EntryType::Dir {
            if let Some(st) = &existing {
                if is_dir(st) {
                    self.finish_dir(e, parent, name, "open the existing directory")?;
                    self.this_layer.insert(key);
                    return Ok(());
                }
            }
        }
        // A hard link to itself would remove its own target first.
        if e.kind == EntryType::HardLink {
            let target = self.link_target(e)?;
            if target == comps {
                return Err(self.refused(e, "a hard link to itself"));
            }
        }
        if let Some(st) = &existing {
            remove_at(parent, name)
                .map_err(self.io(e, format!("replace the existing {} with the new entry", kind_of(st))))?;
        }
        let c = cpath(name).map_err(self.io(e, "name the entry"))?;
        match e.kind {
            EntryType::File => {
                let f = openat(
                    parent,
                    name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    self.file_mode(e.mode),
                )
                .map_err(self.io(e, "create the file"))?;
                let mut f = File::from(f);
                let n = self.copy_data(e, reader, &mut f)?;
                self.stats.bytes += n;
                self.stats.files += 1;
                self.finish_file(e, f.as_fd())?;
            }
            EntryType::Dir => {
                mkdir_at(parent, name, self.dir_mode(e.mode)).map_err(self.io(e, "create the directory"))?;
                self.finish_dir(e, parent, name, "open the new directory")?;
            }
            EntryType::Symlink => {
                let target = e.link.as_deref().unwrap_or_default();
                let t = cpath(target).map_err(self.io(e, "read the link target"))?;
                // SAFETY: valid pointers and dirfd.
                check(unsafe { libc::symlinkat(t.as_ptr(), parent.as_raw_fd(), c.as_ptr()) })
                    .map_err(self.io(e, "create the symlink"))?;
                self.set_times_at(e, parent, &c)?;
                self.chown_at(e, parent, &c, "chown the symlink")?;
                self.stats.symlinks += 1;
            }
            EntryType::HardLink => {
                let target = self.link_target(e)?;
                let Some((&tname, tparents)) = target.split_last() else {
                    return Err(self.refused(e, "a hard link to the root"));
                };
                let tdir = self
                    .open_dir(tparents, false)
                    .map_err(self.io(e, "resolve the hard link target inside the root"))?
                    .ok_or_else(|| self.refused(e, "the hard link target does not exist"))?;
                let tc = cpath(tname).map_err(self.io(e, "name the hard link target"))?;
                match lstat_at(tdir.as_fd(), tname).map_err(self.io(e, "inspect the hard link target"))? {
                    None => return Err(self.refused(e, "the hard link target does not exist")),
                    Some(st) if is_dir(&st) => return Err(self.refused(e, "a hard link to a directory")),
                    Some(_) => {}
                }
                // flags 0: a symlink target is linked itself, never followed.
                // SAFETY: valid dirfds and names.
                check(unsafe { libc::linkat(tdir.as_raw_fd(), tc.as_ptr(), parent.as_raw_fd(), c.as_ptr(), 0) })
                    .map_err(self.io(e, "create the hard link"))?;
                self.stats.hardlinks += 1;
            }
            EntryType::CharDevice | EntryType::BlockDevice | EntryType::Fifo => {
                self.special(e, parent, name, &c)?;
            }
            EntryType::Other(flag) => {
                self.stats.warnings.push(format!(
                    "{}: skipped an entry of unknown type {:?}",
                    e.path_lossy(),
                    char::from(flag)
                ));
                return Ok(());
            }
        }
        self.this_layer.insert(key);
        Ok(())
    }

    /// The normalized components of a hard link's target.
    fn link_target<'e>(&self, e: &'e Entry) -> Result<Vec<&'e [u8]>, ExtractError> {
        let raw = e.link.as_deref().unwrap_or_default();
        let mut s = raw;
        while let Some(r) = s.strip_prefix(b"/") {
            s = r;
        }
        components(s)
            .map_err(|why| self.refused(e, format!("hard link target {:?}: {why}", String::from_utf8_lossy(raw))))
    }

    fn special(&mut self, e: &Entry, parent: BorrowedFd<'_>, name: &[u8], c: &CStr) -> Result<(), ExtractError> {
        let devtype = match e.kind {
            EntryType::CharDevice => libc::S_IFCHR,
            EntryType::BlockDevice => libc::S_IFBLK,
            _ => libc::S_IFIFO,
        };
        if e.kind == EntryType::Fifo || self.opts.devices == Devices::Create {
            // Device numbers are not carried by `Entry`; device nodes get 0:0 unless the
            // caller asked for real ones, which come from podman-style runtimes anyway.
            // SAFETY: valid dirfd and name.
            check(unsafe {
                libc::mknodat(parent.as_raw_fd(), c.as_ptr(), devtype | self.file_mode(e.mode) as libc::mode_t, 0)
            })
            .map_err(self.io(e, "create the special file"))?;
            self.chown_at(e, parent, c, "chown the special file")?;
            self.stats.files += 1;
            return Ok(());
        }
        let f = openat(parent, name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600)
            .map_err(self.io(e, "create the device placeholder"))?;
        self.stats.placeholders += 1;
        let what = if e.kind == EntryType::CharDevice { "character" } else { "block" };
        self.stats.placeholder_paths.push(format!("{} ({what})", e.path_lossy()));
        drop(f);
        Ok(())
    }

    fn copy_data<R: Read>(&self, e: &Entry, reader: &mut LayerReader<R>, out: &mut File) -> Result<u64, ExtractError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read_data(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(ExtractError::Read(ReadError::Truncated {
                        entry: self.stats.entries - 1,
                        path: e.path_lossy(),
                    }))
                }
                Err(err) => return Err(ExtractError::Read(ReadError::Io(err))),
            };
            out.write_all(&buf[..n]).map_err(self.io(e, "write the file"))?;
            total += n as u64;
        }
    }

    /// Gives the directory `name` in `parent` (just made, or merged into) `e`'s mode exactly
    /// (mkdirat applies the umask) and owner.
    fn finish_dir(&mut self, e: &Entry, parent: BorrowedFd<'_>, name: &[u8], open: &str) -> Result<(), ExtractError> {
        let d =
            openat(parent, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0).map_err(self.io(e, open))?;
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(d.as_raw_fd(), self.dir_mode(e.mode)) })
            .map_err(self.io(e, "chmod the directory"))?;
        self.chown_fd(e, d.as_fd())?;
        self.stats.dirs += 1;
        Ok(())
    }

    fn finish_file(&self, e: &Entry, f: BorrowedFd<'_>) -> Result<(), ExtractError> {
        // The umask applied at creation: set the mode exactly.
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(f.as_raw_fd(), self.file_mode(e.mode)) }).map_err(self.io(e, "chmod the file"))?;
        self.chown_fd(e, f)?;
        let ts = times(e.mtime);
        // SAFETY: valid fd and a two-element timespec array.
        check(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) }).map_err(self.io(e, "set the file's mtime"))?;
        Ok(())
    }

    fn chown_fd(&self, e: &Entry, f: BorrowedFd<'_>) -> Result<(), ExtractError> {
        if self.opts.chown {
            // SAFETY: valid fd.
            check(unsafe { libc::fchown(f.as_raw_fd(), e.uid as libc::uid_t, e.gid as libc::gid_t) })
                .map_err(self.io(e, "chown"))?;
        }
        Ok(())
    }

    /// Gives `name` in `dir` (never followed) the entry's owner, when asked to.
    fn chown_at(&self, e: &Entry, dir: BorrowedFd<'_>, name: &CStr, what: &str) -> Result<(), ExtractError> {
        if !self.opts.chown {
            return Ok(());
        }
        // SAFETY: valid dirfd and name.
        check(unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                name.as_ptr(),
                e.uid as libc::uid_t,
                e.gid as libc::gid_t,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map_err(self.io(e, what))?;
        Ok(())
    }

    fn set_times_at(&self, e: &Entry, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), ExtractError> {
        let ts = times(e.mtime);
        // SAFETY: valid dirfd, name and timespec array.
        check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
            .map_err(self.io(e, "set the mtime"))?;
        Ok(())
    }

    fn whiteout(&mut self, e: &Entry, parents: &[&[u8]], target: &[u8]) -> Result<(), ExtractError> {
        let mut key = join(parents);
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend_from_slice(target);
        self.stats.whiteouts += 1;
        if self.this_layer.contains(&key) {
            // A whiteout hides lower layers only.
            return Ok(());
        }
        let Some(dir) =
            self.open_dir(parents, false).map_err(self.io(e, "resolve the whiteout's directory inside the root"))?
        else {
            return Ok(());
        };
        remove_at(dir.as_fd(), target).map_err(self.io(e, "remove the whited-out entry"))
    }

    fn opaque(&mut self, e: &Entry, parents: &[&[u8]]) -> Result<(), ExtractError> {
        self.stats.whiteouts += 1;
        let Some(dir) =
            self.open_dir(parents, false).map_err(self.io(e, "resolve the opaque directory inside the root"))?
        else {
            return Ok(());
        };
        // A real fd (O_PATH cannot be listed), opened through the resolved one.
        let dir = openat(dir.as_fd(), b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(self.io(e, "open the opaque directory"))?;
        let prefix = {
            let mut p = join(parents);
            if !p.is_empty() {
                p.push(b'/');
            }
            p
        };
        let keep = &self.this_layer;
        empty_dir(dir, &|n| {
            let mut k = prefix.clone();
            k.extend_from_slice(n);
            !keep.contains(&k)
        })
        .map_err(self.io(e, "empty the opaque directory"))
    }
}

fn times(mtime: u64) -> [libc::timespec; 2] {
    let sec = libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX);
    [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, libc::timespec { tv_sec: sec, tv_nsec: 0 }]
}

#[cfg(test)]
mod tests {
    use super::placeholder_summary;

    #[test]
    fn device_placeholders_are_summed_up_in_one_warning() {
        let paths = |n: usize| (0..n).map(|i| format!("dev/tty{i} (character)")).collect::<Vec<_>>();
        assert_eq!(placeholder_summary(&[]), None);
        let one = placeholder_summary(&paths(1)).unwrap();
        assert!(
            one.starts_with("1 device node replaced by an empty placeholder file")
                && one.ends_with(": dev/tty0 (character)")
        );
        let eight = placeholder_summary(&paths(8)).unwrap();
        assert!(eight.starts_with("8 device nodes replaced by empty placeholder files"), "{eight}");
        assert!(
            eight.ends_with(": dev/tty0 (character), dev/tty1 (character), dev/tty2 (character) and 5 more"),
            "{eight}"
        );
        assert!(!eight.contains('\n'));
    }
}
