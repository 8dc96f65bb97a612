//! The host-tree namespace: commands on the host, as the invoking user, that see a few
//! directories at fixed paths (Cloud Native Buildpacks' layers at `/layers` and the app at its
//! image path) and the rest of the host's tree as it is.
//!
//! The child (between fork and exec) enters a new user namespace, mapping the invoking
//! uid and gid to themselves (`setgroups` denied), and a new mount namespace. There it
//! mounts a private tmpfs as a new root, binds every top-level entry of the host's `/`
//! into it recursively (top-level symlinks are recreated), binds the build's layers
//! directory at `/layers` and the app at its path in the image, gives it a private `/dev`
//! (the build-image sandbox's: no terminal device of the host's, so a script cannot write
//! to the user's terminal by its `/dev/pts/N` name), then `chroot`s into it.
//! Nothing is mounted in the host's namespace; everything disappears with the child.
//! The capabilities the namespace grants are lost at exec for a non-root user.
//!
//! Without user namespaces (a kernel or a container that forbids them) this cannot be made,
//! and builds that need it are refused (see [`HostTree::new`]).

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path};
use std::process::Command;
use std::sync::Arc;

use super::{Bind, PrivateDev, SandboxError};

enum Top {
    Dir(CString, CString),
    File(CString, CString),
    Link(CString, CString),
}

/// Where a child's filesystem comes from. Built once per build, applied to each command.
pub struct HostTree {
    root: CString,
    top: Vec<Top>,
    mkdirs: Vec<CString>,
    binds: Vec<(CString, CString)>,
    /// Replaces the host's `/dev`: no terminal of the user's is reachable inside.
    dev: PrivateDev,
    /// The binds, to translate paths.
    bound: Vec<Bind>,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

fn cstr(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| super::nul(p))
}

impl HostTree {
    /// `root`: an empty directory to mount the new root on. `binds`: host directories and
    /// the absolute paths they get inside (`/layers`, `/workspace`); their first component
    /// hides the host entry of that name. Checks that the namespace can be made here, with
    /// an error that says what to do when it cannot.
    pub fn new(root: &Path, binds: &[Bind]) -> Result<Arc<HostTree>, SandboxError> {
        let tree = Arc::new(HostTree::plan(root, binds)?);
        tree.probe()?;
        Ok(tree)
    }

    fn plan(root: &Path, binds: &[Bind]) -> Result<HostTree, SandboxError> {
        let mut hidden = vec![std::ffi::OsString::from("dev")];
        let mut mkdirs = vec![cstr(&root.join("dev"))?];
        let mut bind_list = Vec::new();
        for Bind { host, inside } in binds {
            let inside = Path::new(inside);
            let parts: Vec<_> = inside
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_os_string()),
                    _ => None,
                })
                .collect();
            let Some(first) = parts.first() else {
                return Err(SandboxError::Unavailable(format!("cannot mount {} at /", host.display())));
            };
            hidden.push(first.clone());
            let mut at = root.to_path_buf();
            for p in &parts {
                at.push(p);
                let c = cstr(&at)?;
                if !mkdirs.contains(&c) {
                    mkdirs.push(c);
                }
            }
            bind_list.push((cstr(host)?, cstr(&at)?));
        }
        let mut top = Vec::new();
        let mut names: Vec<_> =
            fs::read_dir("/").map_err(super::io_err("Failed to read /"))?.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name();
            if hidden.contains(&name) {
                continue;
            }
            let (host, inside) = (Path::new("/").join(&name), root.join(&name));
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_symlink() {
                if let Ok(target) = fs::read_link(&host) {
                    top.push(Top::Link(cstr(&target)?, cstr(&inside)?));
                }
            } else if ft.is_dir() {
                top.push(Top::Dir(cstr(&host)?, cstr(&inside)?));
            } else if ft.is_file() {
                top.push(Top::File(cstr(&host)?, cstr(&inside)?));
            }
        }
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(HostTree {
            root: cstr(root)?,
            top,
            mkdirs,
            binds: bind_list,
            dev: PrivateDev::plan(|inside| {
                let mut p = root.as_os_str().to_os_string();
                p.push(inside);
                cstr(Path::new(&p))
            })?,
            bound: binds.to_vec(),
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        })
    }

    /// The binds, for translating paths.
    pub fn binds(&self) -> &[Bind] {
        &self.bound
    }

    /// Makes `cmd` run inside, in `cwd` (a path inside; do not set another working
    /// directory on `cmd`).
    pub fn apply(self: &Arc<Self>, cmd: &mut Command, cwd: &Path) -> Result<(), SandboxError> {
        let m = self.clone();
        let cwd = cstr(cwd)?;
        // SAFETY: the closure runs between fork and exec; it only makes system calls on
        // memory prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || m.enter(&cwd));
        }
        Ok(())
    }

    fn enter(&self, cwd: &CStr) -> io::Result<()> {
        let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
        let none = std::ptr::null::<libc::c_char>();
        // SAFETY: plain system calls on NUL-terminated strings that outlive them.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
            write_file(c"/proc/self/setgroups", b"deny", true)?;
            write_file(c"/proc/self/uid_map", &self.uid_map, false)?;
            write_file(c"/proc/self/gid_map", &self.gid_map, false)?;
            check(libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755".as_ptr().cast(),
            ))?;
            let bind = |src: &CStr, dst: &CStr| {
                libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND | libc::MS_REC, std::ptr::null())
            };
            for t in &self.top {
                // A host entry that cannot be bound (an odd filesystem) is left empty.
                match t {
                    Top::Dir(src, dst) => {
                        if libc::mkdir(dst.as_ptr(), 0o755) == 0 {
                            bind(src, dst);
                        }
                    }
                    Top::File(src, dst) => {
                        let fd = libc::open(dst.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                        if fd >= 0 {
                            libc::close(fd);
                            bind(src, dst);
                        }
                    }
                    Top::Link(target, dst) => {
                        libc::symlink(target.as_ptr(), dst.as_ptr());
                    }
                }
            }
            for d in &self.mkdirs {
                if libc::mkdir(d.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                    return Err(io::Error::last_os_error());
                }
            }
            for (src, dst) in &self.binds {
                check(bind(src, dst))?;
            }
            self.dev.mount().map_err(|_| io::Error::last_os_error())?;
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::chroot(c".".as_ptr()))?;
            check(libc::chdir(cwd.as_ptr()))?;
        }
        Ok(())
    }
}

/// Writes `data` to `path` in one write. `optional`: a missing file is fine.
unsafe fn write_file(path: &std::ffi::CStr, data: &[u8], optional: bool) -> io::Result<()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if optional && e.raw_os_error() == Some(libc::ENOENT) { Ok(()) } else { Err(e) };
    }
    let n = libc::write(fd, data.as_ptr().cast(), data.len());
    let e = io::Error::last_os_error();
    libc::close(fd);
    if n != data.len() as isize {
        return Err(e);
    }
    Ok(())
}

impl HostTree {
    /// Runs `/bin/sh -c 'test -d BIND'` inside for the first bind: an error that says what to
    /// do when user namespaces are not allowed here.
    fn probe(self: &Arc<Self>) -> Result<(), SandboxError> {
        let first = self.bound.first().map(|b| b.inside.clone()).unwrap_or_else(|| "/".into());
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "test -d \"$1\"", "probe", &first]).env_clear();
        self.apply(&mut cmd, Path::new("/"))?;
        let paths = self.bound.iter().map(|b| b.inside.as_str()).collect::<Vec<_>>().join(", ");
        let refuse = |why: String| SandboxError::HostNamespace { paths: paths.clone(), why };
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(refuse(format!("the probe ended with {s}"))),
            Err(e) => Err(refuse(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_app_appear_at_their_image_paths() {
        let t = tempfile::tempdir().unwrap();
        let (root, layers, app) = (t.path().join("root"), t.path().join("layers"), t.path().join("app"));
        for d in [&root, &layers, &app] {
            fs::create_dir(d).unwrap();
        }
        fs::write(layers.join("marker"), "L").unwrap();
        fs::write(app.join("marker"), "A").unwrap();
        let bind = |host: &Path, inside: &str| Bind { host: host.to_path_buf(), inside: inside.into() };
        let m = HostTree::new(&root, &[bind(&layers, "/layers"), bind(&app, "/workspace/deep")]).unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "cat /layers/marker ./marker; echo x > /layers/new; pwd; test -d /usr/bin && echo usr"]);
        m.apply(&mut cmd, Path::new("/workspace/deep")).unwrap();
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "LA/workspace/deep\nusr\n");
        assert_eq!(fs::read_to_string(layers.join("new")).unwrap(), "x\n", "writes reach the host directory");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "nothing is left in the host's mount point");
    }
}
