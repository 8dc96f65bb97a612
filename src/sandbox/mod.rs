//! Where a build's commands run, and how: [`runner::Runner`] is the one entry point, picked
//! once per build (on the host, in a host-tree namespace ([`host_tree`]), or in the
//! build-image sandbox below); [`process`] starts a child and streams its output. See
//! docs/sandbox.md.
//!
//! The build-image sandbox ([`Sandbox`]), a rootless user-namespace sandbox whose root
//! filesystem is the build image, for each command:
//! * imgforge forks a child (through `std::process::Command` and `pre_exec`) that starts a
//!   session of its own (no controlling terminal) and unshares user, mount, pid, uts and
//!   ipc namespaces (and network with `--network none`). A helper thread in imgforge maps the invoking user to root inside: with
//!   `newuidmap`/`newgidmap` and the user's `/etc/subuid` and `/etc/subgid` ranges (inside
//!   uids 1..=count) when present, else a single-uid map written to `/proc/PID/uid_map`.
//! * The child forks again so that the command is pid 1 of the new pid namespace (when it
//!   ends, the kernel kills everything it left running); the intermediate process only
//!   waits and passes the exit status on. Every fd but 0, 1 and 2
//!   is closed on exec (`close_range`), so nothing of imgforge's leaks in.
//! * The root: an overlay mount with the cached, unpacked build image as its read-only
//!   lower layer and a per-build upper directory (the cache is never written), or, where
//!   the kernel refuses overlay in a user namespace, a per-build copy of it. `/proc` (new),
//!   a tmpfs `/dev` holding bind mounts of null, zero, full, random and urandom (no tty), tmpfs
//!   `/tmp` and `/dev/shm`, the binds (app, buildpacks, work dir), then `pivot_root` and a
//!   lazy unmount of the old root: the host's filesystem, imgforge's binary included, is no
//!   longer reachable.
//! * Every mount point is created inside the new root and must be a real directory (not a
//!   symlink planted by the build image), so a bind can never land outside it.

use std::ffi::{CStr, CString, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

pub mod emulation;
pub mod host_tree;
pub mod process;
pub mod rootfs;
pub mod runner;

pub use runner::{Cmd, Exit, RunError, Runner, Shell};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Isolation {
    Host,
    Userns,
    /// Userns when the kernel allows it and the build image has /bin/sh; else host.
    #[default]
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Network {
    /// A new network namespace with only loopback.
    None,
    #[default]
    Host,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(
        "{paths} must be at fixed paths during the build, which imgforge does on the host in a new user and mount namespace, and that failed here ({why}). \
         Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, \
         or a container with CLONE_NEWUSER allowed)"
    )]
    HostNamespace { paths: String, why: String },
    #[error("Failed to copy the build image's rootfs to {}", to.display())]
    CopyRootfs { to: PathBuf, source: crate::fsutil::FsError },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// How host ids map into the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub uid: u32,
    pub gid: u32,
    /// `/etc/subuid` range (first host id, count), used only with newuidmap available.
    pub sub_uid: Option<(u32, u32)>,
    pub sub_gid: Option<(u32, u32)>,
}

impl IdMap {
    /// The invoking user's ids and subordinate ranges (when newuidmap and newgidmap exist).
    pub fn detect() -> IdMap {
        // SAFETY: trivial getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let name = user_name(uid);
        let tools = find_tool("newuidmap").is_some() && find_tool("newgidmap").is_some();
        let range = |file: &str| if tools { sub_range(file, uid, name.as_deref()) } else { None };
        let (sub_uid, sub_gid) = (range("/etc/subuid"), range("/etc/subgid"));
        match (sub_uid, sub_gid) {
            (Some(u), Some(g)) => IdMap { uid, gid, sub_uid: Some(u), sub_gid: Some(g) },
            _ => IdMap { uid, gid, sub_uid: None, sub_gid: None },
        }
    }

    /// The id inside the sandbox of a host uid, if it is mapped.
    pub fn inside_uid(&self, host: u32) -> Option<u32> {
        inside(host, self.uid, self.sub_uid)
    }

    pub fn inside_gid(&self, host: u32) -> Option<u32> {
        inside(host, self.gid, self.sub_gid)
    }

    pub fn describe(&self) -> String {
        match self.sub_uid {
            Some((s, n)) => format!("uid {} → 0, {s}..{} → 1..{n} (newuidmap)", self.uid, s as u64 + n as u64 - 1),
            None => format!("uid {} → 0 only (no /etc/subuid range or no newuidmap)", self.uid),
        }
    }
}

fn inside(host: u32, own: u32, sub: Option<(u32, u32)>) -> Option<u32> {
    if host == own {
        return Some(0);
    }
    let (start, count) = sub?;
    (host >= start && host - start < count).then(|| host - start + 1)
}

fn user_name(uid: u32) -> Option<String> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// The first `/etc/subuid`-style range for this user (by name or number).
fn sub_range(file: &str, uid: u32, name: Option<&str>) -> Option<(u32, u32)> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let who = f.next()?;
        if who != uid.to_string() && Some(who) != name {
            return None;
        }
        let start = f.next()?.parse().ok()?;
        let count: u32 = f.next()?.parse().ok()?;
        (count > 0).then_some((start, count))
    })
}

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Why this kernel does not let this user create a user namespace.
#[derive(Clone, Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("a probe in a new user namespace failed ({0})")]
    ProbeFailed(std::process::ExitStatus),
    #[error("the kernel refuses unprivileged user namespaces ({source})")]
    Refused { source: Arc<io::Error> },
}

/// Whether this kernel lets this user create a user namespace with a mount namespace
/// (cached for the process). `Err` says why not.
pub fn userns_available() -> Result<(), UsernsError> {
    static PROBE: OnceLock<Result<(), UsernsError>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let mut cmd = Command::new("/bin/true");
            // SAFETY: the closure only makes a raw syscall.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match cmd.status() {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(UsernsError::ProbeFailed(s)),
                Err(e) => Err(UsernsError::Refused { source: Arc::new(e) }),
            }
        })
        .clone()
}

/// A directory of the host made visible inside.
#[derive(Clone, Debug)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute path inside.
    pub inside: String,
}

/// The path inside of a host path under one of `binds` (the longest, most specific bind wins).
pub(crate) fn bound_path(binds: &[Bind], host: &Path) -> Option<PathBuf> {
    binds
        .iter()
        .filter_map(|b| host.strip_prefix(&b.host).ok().map(|rest| (b, rest)))
        .max_by_key(|(b, _)| b.host.as_os_str().len())
        .map(
            |(b, rest)| {
                if rest.as_os_str().is_empty() {
                    PathBuf::from(&b.inside)
                } else {
                    Path::new(&b.inside).join(rest)
                }
            },
        )
}

/// The root filesystem of one build's sandbox.
enum Root {
    Overlay { lower: PathBuf, upper: PathBuf, work: PathBuf },
    Copy(PathBuf),
}

/// A sandbox for one build: every [`Sandbox::command`] runs in fresh namespaces over the
/// same root (changes a command makes to the root are seen by the next one).
pub struct Sandbox {
    root: Root,
    mnt: PathBuf,
    binds: Vec<Bind>,
    pub network: Network,
    pub ids: IdMap,
    _dir: crate::store::WorkDir,
}

impl Sandbox {
    /// A sandbox over the unpacked build image `rootfs`, with its private state in a new
    /// directory under `tmp`.
    pub fn new(rootfs: &Path, tmp: &Path, binds: Vec<Bind>, network: Network) -> Result<Sandbox, SandboxError> {
        let dir = crate::store::WorkDir::new(tmp, "sandbox-")
            .map_err(io_err(format!("Failed to make a sandbox directory in {}", tmp.display())))?;
        let mnt = dir.path().join("root");
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        for d in [&mnt, &upper, &work] {
            fs::create_dir(d).map_err(io_err(format!("Failed to create {}", d.display())))?;
        }
        let safe = |p: &Path| !p.as_os_str().as_bytes().iter().any(|b| b",:\\".contains(b));
        let ids = IdMap::detect();
        let mut sb = Sandbox {
            root: Root::Overlay { lower: rootfs.to_path_buf(), upper, work },
            mnt,
            binds,
            network,
            ids,
            _dir: dir,
        };
        if !(safe(rootfs) && safe(sb._dir.path()) && sb.probe().is_ok()) {
            // No overlay in a user namespace here: a private copy of the rootfs.
            let copy = sb._dir.path().join("copy");
            // Files, directories and symlinks; hard links become copies.
            crate::fsutil::copy_tree(rootfs, &copy, 0, crate::fsutil::Links::Verbatim)
                .map_err(|source| SandboxError::CopyRootfs { to: copy.clone(), source })?;
            sb.root = Root::Copy(copy);
            sb.probe()?;
        }
        Ok(sb)
    }

    /// After a build: gives group and others read access (and search on directories) to
    /// everything under `host_dir` (a bind), and takes write access from them, from inside,
    /// so that files a buildpack chowned to other uids can be read into layers by imgforge,
    /// and nothing is left writable by other users. Layer modes are unaffected: they derive
    /// from the owner's bits alone (`Normalize::file_mode`). Without subordinate ids every
    /// file is the invoking user's: see [`clear_group_other_write`].
    pub fn make_host_accessible(&self, host_dir: &Path) -> Result<(), SandboxError> {
        if self.ids.sub_uid.is_none() {
            return clear_group_other_write(host_dir);
        }
        self.host_tool_as_root("chmod", &[OsString::from("-R"), "go+rX,go-w".into(), host_dir.into()])
    }

    /// At the end of a build, once its layers are written: makes the invoking user the owner
    /// of everything under `host_dir` again (root inside), so that imgforge can keep, move
    /// and delete it without anyone else's write access. Symlinks are changed themselves,
    /// never followed. Does nothing without subordinate ids (everything is ours already).
    pub fn give_back(&self, host_dir: &Path) -> Result<(), SandboxError> {
        if self.ids.sub_uid.is_none() {
            return Ok(());
        }
        self.host_tool_as_root("chown", &[OsString::from("-R"), "-h".into(), "0:0".into(), host_dir.into()])
    }

    /// Runs a host tool (`chmod`, `rm`) in a bare user namespace with this sandbox's id map,
    /// as root there: it can change files owned by any mapped uid (`podman unshare` does
    /// the same). Only a user namespace: no mounts, the host's filesystem.
    fn host_tool_as_root(&self, tool: &str, args: &[OsString]) -> Result<(), SandboxError> {
        let program = find_tool(tool).ok_or_else(|| SandboxError::Unavailable(format!("{tool} not found")))?;
        let (mut cmd, mut guard) = self.spawn_with(Plan::bare(), &program)?;
        cmd.args(args).env_clear().stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        let out = cmd.output();
        let why = guard.finish();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(SandboxError::Unavailable(format!(
                "{tool} in a user namespace failed ({}): {}{why}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ))),
            Err(e) => Err(SandboxError::Unavailable(format!("{tool} in a user namespace could not start: {e}{why}"))),
        }
    }

    /// "overlay" or "copy".
    pub fn root_kind(&self) -> &'static str {
        match self.root {
            Root::Overlay { .. } => "overlay",
            Root::Copy(_) => "copy",
        }
    }

    fn probe(&self) -> Result<(), SandboxError> {
        let (mut cmd, mut guard) = self.command(Path::new("/bin/sh"), "/")?;
        cmd.arg("-c").arg("exit 0").stdin(std::process::Stdio::null());
        let status = cmd.status();
        let why = guard.finish();
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(SandboxError::Unavailable(format!("the sandbox could not start /bin/sh ({s}){why}"))),
            Err(e) => Err(SandboxError::Unavailable(format!("the sandbox could not start: {e}{why}"))),
        }
    }

    /// The path inside the sandbox of a host path under one of the binds.
    pub fn inside(&self, host: &Path) -> Option<PathBuf> {
        bound_path(&self.binds, host)
    }

    pub fn binds(&self) -> &[Bind] {
        &self.binds
    }

    /// A command that runs `program` (a path inside) in the sandbox, in directory `cwd`
    /// (inside). Set its args, env and stdio as usual (not its current_dir), spawn it, and
    /// keep the guard until it was spawned; [`SandboxGuard::finish`] then says why the
    /// sandbox could not be entered, if it could not.
    pub fn command(&self, program: &Path, cwd: &str) -> Result<(Command, SandboxGuard), SandboxError> {
        self.spawn_with(self.plan(cwd)?, program)
    }

    fn spawn_with(&self, plan: Plan, program: &Path) -> Result<(Command, SandboxGuard), SandboxError> {
        let (pid_r, pid_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        let (st_r, st_w) = pipe()?;
        let ids = self.ids.clone();
        let helper = std::thread::Builder::new()
            .name("sandbox-idmap".into())
            .spawn(move || map_ids(pid_r, go_w, &ids))
            .map_err(io_err("Failed to start a thread"))?;
        let mut cmd = Command::new(program);
        let (pid_wfd, go_rfd, st_wfd) = (pid_w.as_raw_fd(), go_r.as_raw_fd(), st_w.as_raw_fd());
        // SAFETY: `enter` makes only async-signal-safe system calls on data prepared before
        // the fork (`plan` owns every string), and allocates nothing.
        unsafe {
            cmd.pre_exec(move || enter(&plan, pid_wfd, go_rfd, st_wfd));
        }
        Ok((cmd, SandboxGuard { helper: Some(helper), child_fds: vec![pid_w, go_r, st_w], status: Some(st_r) }))
    }

    fn plan(&self, cwd: &str) -> Result<Plan, SandboxError> {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| nul(p));
        let mnt = c(&self.mnt)?;
        let (overlay, copy) = match &self.root {
            Root::Overlay { lower, upper, work } => {
                let opts = |extra: &str| {
                    let mut o = OsString::from("lowerdir=");
                    o.push(lower);
                    o.push(",upperdir=");
                    o.push(upper);
                    o.push(",workdir=");
                    o.push(work);
                    o.push(extra);
                    CString::new(o.as_bytes()).map_err(|_| nul(lower))
                };
                (Some((opts(",userxattr")?, opts("")?)), None)
            }
            Root::Copy(p) => (None, Some(c(p)?)),
        };
        let under = |inside: &str| -> Result<CString, SandboxError> {
            let mut p = self.mnt.as_os_str().to_os_string();
            p.push(inside);
            c(Path::new(&p))
        };
        let mut dirs = Vec::new();
        let add_dirs = |inside: &str, dirs: &mut Vec<CString>| -> Result<(), SandboxError> {
            let mut acc = String::new();
            for comp in inside.split('/').filter(|s| !s.is_empty()) {
                acc.push('/');
                acc.push_str(comp);
                let p = under(&acc)?;
                if !dirs.contains(&p) {
                    dirs.push(p);
                }
            }
            Ok(())
        };
        for d in ["/proc", "/dev", "/tmp"] {
            add_dirs(d, &mut dirs)?;
        }
        let mut binds = Vec::new();
        for b in &self.binds {
            if !b.inside.starts_with('/') || b.inside.split('/').any(|s| s == ".." || s == ".") {
                return Err(SandboxError::Unavailable(format!(
                    "bind destination {:?} is not a clean absolute path",
                    b.inside
                )));
            }
            add_dirs(&b.inside, &mut dirs)?;
            binds.push((c(&b.host)?, under(&b.inside)?));
        }
        Ok(Plan {
            mnt,
            overlay,
            copy,
            dirs,
            proc_: under("/proc")?,
            dev: PrivateDev::plan(under)?,
            tmp: under("/tmp")?,
            binds,
            cwd: CString::new(cwd).map_err(|_| nul(Path::new(cwd)))?,
            new_net: self.network == Network::None,
            parent: std::process::id() as libc::pid_t,
            full: true,
        })
    }
}

impl Drop for Sandbox {
    /// Removes the overlay's upper and work dirs (or the copy): files in them may belong
    /// to subordinate uids, or sit in mode-000 directories (overlay's work dir), so `rm`
    /// runs as root in a user namespace; without subordinate ids, the owner first gets rwx
    /// on every directory. The temp dir itself goes after.
    fn drop(&mut self) {
        let dir = self._dir.path().to_path_buf();
        let parts: Vec<OsString> =
            ["upper", "work", "copy"].iter().map(|p| dir.join(p)).filter(|p| p.exists()).map(Into::into).collect();
        if parts.is_empty() {
            return;
        }
        let mut args = vec![OsString::from("-rf"), "--".into()];
        args.extend(parts);
        if self.host_tool_as_root("rm", &args).is_err() {
            owner_rwx_dirs(&dir);
        }
    }
}

/// Takes write access from group and others on everything the invoking user owns under
/// `dir` (symlinks are skipped: their mode means nothing). What a build leaves in the cache
/// must not be writable by other users, whatever modes a buildpack set.
pub fn clear_group_other_write(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: trivial getter.
    let me = unsafe { libc::geteuid() };
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(|e| SandboxError::Io {
            what: format!("Failed to read {}", e.path().unwrap_or(dir).display()),
            source: e.into(),
        })?;
        let Ok(m) = entry.metadata() else { continue };
        if m.file_type().is_symlink() || m.uid() != me || m.mode() & 0o022 == 0 {
            continue;
        }
        // (Called once the build's commands and everything they started have ended: nothing
        // swaps this entry for a symlink meanwhile.)
        let path = entry.path();
        fs::set_permissions(path, fs::Permissions::from_mode(m.mode() & 0o7755))
            .map_err(io_err(format!("Failed to set the mode of {}", path.display())))?;
    }
    Ok(())
}

/// chmod u+rwx on every directory we own under `dir` (so that it can be removed).
fn owner_rwx_dirs(dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: trivial getter.
    let me = unsafe { libc::geteuid() };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&d) else { continue };
        if !m.is_dir() || m.uid() != me {
            continue;
        }
        if m.mode() & 0o700 != 0o700 {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode((m.mode() & 0o7777) | 0o700));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
}

pub(crate) fn nul(p: &Path) -> SandboxError {
    SandboxError::Unavailable(format!("{} contains a NUL byte", p.display()))
}

/// What a sandboxed command needs in imgforge until it was spawned.
pub struct SandboxGuard {
    helper: Option<std::thread::JoinHandle<Result<(), MapIdsError>>>,
    /// The child's ends of the sync pipes: closed in imgforge once the child has them.
    child_fds: Vec<OwnedFd>,
    status: Option<OwnedFd>,
}

impl SandboxGuard {
    /// After the command was spawned (or failed to): releases the helper. Returns what the
    /// sandbox setup reported as the reason of a failure (empty when nothing), formatted
    /// as ": ..." for appending to a message.
    pub fn finish(&mut self) -> String {
        self.child_fds.clear();
        let mut why = String::new();
        if let Some(h) = self.helper.take() {
            if let Ok(Err(e)) = h.join() {
                why = format!(": {e}");
            }
        }
        if let Some(st) = self.status.take() {
            let mut f = fs::File::from(st);
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            if buf.len() >= 4 {
                let (msg, errno) = buf.split_at(buf.len() - 4);
                let errno = i32::from_ne_bytes(errno.try_into().expect("4 bytes"));
                why = format!("{why}: {}: {}", String::from_utf8_lossy(msg), io::Error::from_raw_os_error(errno));
            }
        }
        why
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Io { what: "Failed to make a pipe".into(), source: io::Error::last_os_error() });
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Why the child's id maps could not be written.
#[derive(Debug, thiserror::Error)]
enum MapIdsError {
    #[error("Failed to run {tool}: {source}")]
    Spawn { tool: String, source: io::Error },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool { tool: String, status: std::process::ExitStatus, stderr: String },
    #[error("Failed to write /proc/{pid}/{file}: {source}")]
    Write { pid: i32, file: &'static str, source: io::Error },
}

/// Runs in imgforge: waits for the child's pid, writes its id maps, lets it go on.
fn map_ids(pid_r: OwnedFd, go_w: OwnedFd, ids: &IdMap) -> Result<(), MapIdsError> {
    let mut pid_r = fs::File::from(pid_r);
    let mut go_w = fs::File::from(go_w);
    let mut buf = [0u8; 4];
    if pid_r.read_exact(&mut buf).is_err() {
        return Ok(()); // the child never got there; spawn reports why
    }
    let pid = i32::from_ne_bytes(buf);
    let r = write_maps(pid, ids);
    let _ = go_w.write_all(if r.is_ok() { b"1" } else { b"0" });
    r
}

fn write_maps(pid: i32, ids: &IdMap) -> Result<(), MapIdsError> {
    let run = |tool: &str, own: u32, sub: (u32, u32)| -> Result<(), MapIdsError> {
        let out = Command::new(find_tool(tool).unwrap_or_else(|| PathBuf::from(tool)))
            .args([
                pid.to_string(),
                "0".into(),
                own.to_string(),
                "1".into(),
                "1".into(),
                sub.0.to_string(),
                sub.1.to_string(),
            ])
            .output()
            .map_err(|source| MapIdsError::Spawn { tool: tool.into(), source })?;
        if !out.status.success() {
            return Err(MapIdsError::Tool {
                tool: tool.into(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    };
    match (ids.sub_uid, ids.sub_gid) {
        (Some(u), Some(g)) => {
            run("newuidmap", ids.uid, u)?;
            run("newgidmap", ids.gid, g)
        }
        _ => {
            let w = |file: &'static str, text: String| {
                fs::write(format!("/proc/{pid}/{file}"), text).map_err(|source| MapIdsError::Write {
                    pid,
                    file,
                    source,
                })
            };
            w("setgroups", "deny".into())?;
            w("uid_map", format!("0 {} 1\n", ids.uid))?;
            w("gid_map", format!("0 {} 1\n", ids.gid))
        }
    }
}

/// Everything the child needs, as C strings made before the fork.
struct Plan {
    mnt: CString,
    /// Mount options with and without `userxattr`.
    overlay: Option<(CString, CString)>,
    copy: Option<CString>,
    /// Mount points to create (parents first), each checked to be a real directory.
    dirs: Vec<CString>,
    proc_: CString,
    dev: PrivateDev,
    tmp: CString,
    binds: Vec<(CString, CString)>,
    cwd: CString,
    new_net: bool,
    /// imgforge's pid: the child dies with it.
    parent: libc::pid_t,
    /// false: only a user namespace (for host tools run as root over mapped ids).
    full: bool,
}

impl Plan {
    fn bare() -> Plan {
        let empty = CString::default();
        Plan {
            mnt: empty.clone(),
            overlay: None,
            copy: None,
            dirs: Vec::new(),
            proc_: empty.clone(),
            dev: PrivateDev::default(),
            tmp: empty.clone(),
            binds: Vec::new(),
            cwd: empty,
            new_net: false,
            parent: std::process::id() as libc::pid_t,
            full: false,
        }
    }
}

/// Reports a failed step through the status pipe and returns the error for std to pass on.
fn fail(st: RawFd, step: &'static str) -> io::Error {
    let e = io::Error::last_os_error();
    let errno = e.raw_os_error().unwrap_or(0).to_ne_bytes();
    // SAFETY: plain writes of valid buffers.
    unsafe {
        libc::write(st, step.as_ptr().cast(), step.len());
        libc::write(st, errno.as_ptr().cast(), 4);
    }
    e
}

fn ok(r: libc::c_int, st: RawFd, step: &'static str) -> io::Result<()> {
    if r < 0 {
        Err(fail(st, step))
    } else {
        Ok(())
    }
}

/// A private `/dev`: a tmpfs holding bind mounts of the host's null, zero, full, random and
/// urandom, the `fd`/`stdin`/`stdout`/`stderr` links and a tmpfs `/dev/shm`. No terminal of
/// the host's (no tty, console, pts or ptmx): nothing inside can reach the user's terminal.
/// Planned before the fork, mounted in the child; shared by the build-image sandbox and the
/// host-tree namespace.
#[derive(Default)]
pub(crate) struct PrivateDev {
    dev: CString,
    shm: CString,
    /// (host device, file inside)
    devices: Vec<(CString, CString)>,
    /// (target, link inside)
    links: Vec<(CString, CString)>,
}

impl PrivateDev {
    /// `under` maps a path inside (`/dev/null`) to where it is before the root changes.
    pub(crate) fn plan(under: impl Fn(&str) -> Result<CString, SandboxError>) -> Result<PrivateDev, SandboxError> {
        let devices = ["null", "zero", "full", "random", "urandom"]
            .iter()
            .map(|d| Ok((CString::new(format!("/dev/{d}")).expect("static"), under(&format!("/dev/{d}"))?)))
            .collect::<Result<Vec<_>, SandboxError>>()?;
        let links = [
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
        ]
        .iter()
        .map(|(t, l)| Ok((CString::new(*t).expect("static"), under(l)?)))
        .collect::<Result<Vec<_>, SandboxError>>()?;
        Ok(PrivateDev { dev: under("/dev")?, shm: under("/dev/shm")?, devices, links })
    }

    /// Mounts it on its (existing) directory. In the forked child, before exec: only
    /// async-signal-safe calls. On failure, returns the step that failed (errno is set).
    pub(crate) fn mount(&self) -> Result<(), &'static str> {
        let check = |r: libc::c_int, step| if r < 0 { Err(step) } else { Ok(()) };
        let none = std::ptr::null::<libc::c_char>();
        check(mount_tmpfs(&self.dev, libc::MS_NOSUID | libc::MS_NOEXEC, c"mode=755"), "mount /dev")?;
        // SAFETY: raw system calls on NUL-terminated strings owned by `self`.
        unsafe {
            for (host, inside) in &self.devices {
                let fd = libc::open(inside.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o666);
                check(fd, "create a /dev node")?;
                libc::close(fd);
                check(
                    libc::mount(host.as_ptr(), inside.as_ptr(), none, libc::MS_BIND, std::ptr::null()),
                    "bind a /dev node",
                )?;
            }
            for (target, link) in &self.links {
                check(libc::symlink(target.as_ptr(), link.as_ptr()), "link in /dev")?;
            }
            check(libc::mkdir(self.shm.as_ptr(), 0o1777), "create /dev/shm")?;
        }
        let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(mount_tmpfs(&self.shm, nodev, c"mode=1777"), "mount /dev/shm")
    }
}

/// mount(2) of a new tmpfs at `target`. Async-signal-safe: a raw system call, no allocation.
fn mount_tmpfs(target: &CStr, flags: libc::c_ulong, options: &CStr) -> libc::c_int {
    // SAFETY: all three strings are NUL-terminated and outlive the call.
    unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), flags, options.as_ptr().cast()) }
}

/// In the forked child, before exec. Only async-signal-safe calls.
fn enter(p: &Plan, pid_w: RawFd, go_r: RawFd, st: RawFd) -> io::Result<()> {
    // SAFETY (whole function): raw system calls on valid, NUL-terminated strings owned by
    // `p`, and on fds this process holds.
    unsafe {
        // SIGKILL when imgforge dies (passed on to the command below).
        ok(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0), st, "prctl")?;
        if libc::getppid() != p.parent {
            *libc::__errno_location() = libc::ESRCH;
            return Err(fail(st, "imgforge exited"));
        }
        // A session of its own: no controlling terminal, so nothing inside can open the
        // user's terminal (`/dev/tty`) or type into it (TIOCSTI).
        ok(libc::setsid(), st, "setsid")?;
        let mut flags =
            libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        if !p.full {
            flags = libc::CLONE_NEWUSER;
        } else if p.new_net {
            flags |= libc::CLONE_NEWNET;
        }
        ok(libc::unshare(flags), st, "unshare")?;
        let pid = libc::getpid().to_ne_bytes();
        if libc::write(pid_w, pid.as_ptr().cast(), 4) != 4 {
            return Err(fail(st, "report the pid"));
        }
        let mut go = [0u8; 1];
        if libc::read(go_r, go.as_mut_ptr().cast(), 1) != 1 || go[0] != b'1' {
            *libc::__errno_location() = libc::EPERM;
            return Err(fail(st, "map user ids"));
        }
        // Allowed only with a newgidmap map (else "deny" was written): best effort.
        libc::setgroups(0, std::ptr::null());
        if !p.full {
            return Ok(());
        }
        // The command becomes pid 1 of the new pid namespace; this process waits for it.
        let child = libc::fork();
        if child < 0 {
            return Err(fail(st, "fork"));
        }
        if child > 0 {
            // Close everything but stdio (the status pipe, std's exec-error pipe): the
            // parent learns of the exec from the child alone.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let mut status = 0;
            loop {
                let r = libc::waitpid(child, &mut status, 0);
                if r == child {
                    break;
                }
                if r < 0 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(125);
                }
            }
            if libc::WIFEXITED(status) {
                libc::_exit(libc::WEXITSTATUS(status));
            }
            libc::_exit(128 + libc::WTERMSIG(status));
        }
        ok(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0), st, "prctl")?;
        let none = std::ptr::null::<libc::c_char>();
        ok(
            libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()),
            st,
            "make / private",
        )?;
        if let Some((with_userxattr, plain)) = &p.overlay {
            let ov = c"overlay".as_ptr();
            if libc::mount(ov, p.mnt.as_ptr(), ov, 0, with_userxattr.as_ptr().cast()) != 0 {
                ok(libc::mount(ov, p.mnt.as_ptr(), ov, 0, plain.as_ptr().cast()), st, "mount the overlay root")?;
            }
        } else if let Some(copy) = &p.copy {
            ok(
                libc::mount(copy.as_ptr(), p.mnt.as_ptr(), none, libc::MS_BIND | libc::MS_REC, std::ptr::null()),
                st,
                "bind the root",
            )?;
        }
        for d in &p.dirs {
            if libc::mkdir(d.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                return Err(fail(st, "create a mount point"));
            }
            let mut sb: libc::stat = std::mem::zeroed();
            ok(libc::lstat(d.as_ptr(), &mut sb), st, "inspect a mount point")?;
            if sb.st_mode & libc::S_IFMT != libc::S_IFDIR {
                *libc::__errno_location() = libc::ENOTDIR;
                return Err(fail(st, "a mount point in the build image is not a directory"));
            }
        }
        let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        ok(
            libc::mount(c"proc".as_ptr(), p.proc_.as_ptr(), c"proc".as_ptr(), nodev, std::ptr::null()),
            st,
            "mount /proc",
        )?;
        p.dev.mount().map_err(|step| fail(st, step))?;
        ok(mount_tmpfs(&p.tmp, libc::MS_NOSUID | libc::MS_NODEV, c"mode=1777"), st, "mount /tmp")?;
        for (host, inside) in &p.binds {
            ok(
                libc::mount(host.as_ptr(), inside.as_ptr(), none, libc::MS_BIND | libc::MS_REC, std::ptr::null()),
                st,
                "bind a directory",
            )?;
        }
        ok(libc::sethostname(c"imgforge".as_ptr(), 8), st, "sethostname")?;
        if p.new_net {
            loopback_up(st)?;
        }
        ok(libc::chdir(p.mnt.as_ptr()), st, "enter the new root")?;
        ok(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int, st, "pivot_root")?;
        ok(libc::umount2(c".".as_ptr(), libc::MNT_DETACH), st, "unmount the old root")?;
        ok(libc::chdir(c"/".as_ptr()), st, "chdir /")?;
        ok(libc::chdir(p.cwd.as_ptr()), st, "chdir to the working directory")?;
        // No fd but stdio reaches the command (std's own exec-error pipe is CLOEXEC too).
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
            for fd in 3..4096 {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        Ok(())
    }
}

/// Brings `lo` up in the new network namespace.
fn loopback_up(st: RawFd) -> io::Result<()> {
    // SAFETY: a socket and ioctls on a zeroed, correctly named ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(fail(st, "open a socket"));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(s, libc::SIOCGIFFLAGS as _, &mut ifr) != 0 {
            return Err(fail(st, "read the loopback flags"));
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s, libc::SIOCSIFFLAGS as _, &ifr) != 0 {
            return Err(fail(st, "bring loopback up"));
        }
        libc::close(s);
    }
    Ok(())
}
