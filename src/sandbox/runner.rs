//! The one way a build runs a command: [`Runner`], picked once per build, in one of three
//! places:
//! * on the host, as the invoking user ([`Runner::host`]);
//! * on the host in a user and mount namespace that puts a few directories at fixed paths
//!   (`/layers`, the app's image path) and shows the rest of the host as it is
//!   ([`Runner::host_tree`], see [`super::host_tree`]);
//! * in the build-image sandbox ([`Runner::image`], see [`super::Sandbox`]).
//!
//! Callers (Heroku and CNB buildpacks) describe a command in the terms it sees (program, args,
//! env and working directory as paths inside, translated with [`Runner::inside`]) and never
//! ask where it runs. Every command is untrusted code, and wherever it runs it gets:
//! * a session of its own with no controlling terminal (`setsid`): `/dev/tty` cannot be
//!   opened, and nothing can be typed into the user's terminal with `TIOCSTI`;
//! * stdin from `/dev/null`, stdout and stderr through pipes whose lines reach the caller as
//!   they come ([`super::process`]), no other fd of imgforge's;
//! * death with imgforge, and death of everything it left running (`&`, `setsid`, `nohup`)
//!   when it ends: on the host through a subreaper supervisor ([`super::process::contain`]),
//!   in the sandbox through its pid namespace.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

use super::host_tree::HostTree;
use super::process::{contain, run_lines, Stream};
use super::{Bind, IdMap, Sandbox, SandboxError};

/// Where a build's commands run. See the module docs.
pub struct Runner {
    place: Place,
}

enum Place {
    Host,
    HostTree(Arc<HostTree>),
    Image(Sandbox),
}

/// The shell scripts are run through where there is a choice: bash on the host, the build
/// image's `/bin/sh` (which may not be bash) in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shell {
    /// As the command sees it.
    pub path: PathBuf,
    /// Whether it is bash (else assume only POSIX sh).
    pub bash: bool,
}

/// One command to run, in the terms it sees (paths inside).
#[derive(Clone, Debug)]
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
}

impl Cmd {
    /// `program` with no arguments, an empty environment, in `/`.
    pub fn new(program: impl Into<PathBuf>) -> Cmd {
        Cmd { program: program.into(), args: Vec::new(), env: Vec::new(), cwd: PathBuf::from("/") }
    }

    pub fn arg(&mut self, a: impl Into<OsString>) -> &mut Cmd {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(&mut self, args: I) -> &mut Cmd {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The whole environment (nothing of imgforge's own is passed on).
    pub fn envs<I: IntoIterator<Item = (K, V)>, K: Into<OsString>, V: Into<OsString>>(&mut self, vars: I) -> &mut Cmd {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    pub fn cwd(&mut self, dir: impl Into<PathBuf>) -> &mut Cmd {
        self.cwd = dir.into();
        self
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub status: ExitStatus,
    /// Something it left running kept its output open after it exited; the rest of that
    /// output was not read.
    pub abandoned: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Failed to prepare the sandbox")]
    Prepare(#[source] SandboxError),
    /// The command could not be started; `why` says why the sandbox could not be entered,
    /// when it could not (": step: error", or empty).
    #[error("cannot run: {error}{why}")]
    Start { error: io::Error, why: String },
}

impl Runner {
    /// Commands run on the host, as the invoking user, with the host's paths.
    pub fn host() -> Runner {
        Runner { place: Place::Host }
    }

    /// Commands run on the host in a user and mount namespace where each of `binds` is at
    /// its path inside (mounted over an empty directory `root`). Fails, saying what to do,
    /// where user namespaces are not allowed.
    pub fn host_tree(root: &Path, binds: &[Bind]) -> Result<Runner, SandboxError> {
        Ok(Runner { place: Place::HostTree(HostTree::new(root, binds)?) })
    }

    /// Commands run in the build-image sandbox.
    pub fn image(sandbox: Sandbox) -> Runner {
        Runner { place: Place::Image(sandbox) }
    }

    /// A host path as commands see it: under a bind, its path inside; else unchanged (on the
    /// host, and in the host-tree namespace, the host's other paths are where they are).
    pub fn inside(&self, host: &Path) -> PathBuf {
        let binds = match &self.place {
            Place::Host => return host.to_path_buf(),
            Place::HostTree(t) => t.binds(),
            Place::Image(sb) => sb.binds(),
        };
        super::bound_path(binds, host).unwrap_or_else(|| host.to_path_buf())
    }

    /// The shell to run scripts through: bash on the host (`None` when there is none), the
    /// build image's `/bin/sh` in the sandbox.
    pub fn shell(&self) -> Option<Shell> {
        match &self.place {
            Place::Image(_) => Some(Shell { path: PathBuf::from("/bin/sh"), bash: false }),
            Place::Host | Place::HostTree(_) => host_bash().map(|path| Shell { path, bash: true }),
        }
    }

    /// How ids map between the host and inside, when commands run as another user there.
    pub fn ids(&self) -> Option<&IdMap> {
        match &self.place {
            Place::Image(sb) => Some(&sb.ids),
            Place::Host | Place::HostTree(_) => None,
        }
    }

    /// After the commands of a build ran: lets imgforge read everything under `host_dir`,
    /// whatever owners commands gave it inside, and takes write access from group and others
    /// (see [`Sandbox::make_host_accessible`]). `host_dir` itself becomes private (0700).
    pub fn make_host_accessible(&self, host_dir: &Path) -> Result<(), SandboxError> {
        match &self.place {
            Place::Image(sb) => sb.make_host_accessible(host_dir)?,
            Place::Host | Place::HostTree(_) => super::clear_group_other_write(host_dir)?,
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(host_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(super::io_err(format!("Failed to set the mode of {}", host_dir.display())))
    }

    /// At the end of a build, once nothing needs the owners commands set: everything under
    /// `host_dir` belongs to the invoking user again ([`Sandbox::give_back`]).
    pub fn give_back(&self, host_dir: &Path) -> Result<(), SandboxError> {
        match &self.place {
            Place::Image(sb) => sb.give_back(host_dir),
            Place::Host | Place::HostTree(_) => Ok(()),
        }
    }

    /// [`Runner::give_back`] of `dir` when the returned guard is dropped, at the end of the
    /// build step whatever happened; a failure goes to `on_error`.
    pub fn give_back_on_drop<'a>(&'a self, dir: &'a Path, on_error: &'a dyn Fn(SandboxError)) -> GiveBack<'a> {
        GiveBack { runner: self, dir, on_error }
    }

    /// Runs `cmd`, handing each line of its stdout and stderr to `on_line` as it comes.
    pub fn run(&self, cmd: &Cmd, on_line: &(dyn Fn(Stream, &str) + Sync)) -> Result<Exit, RunError> {
        let (mut command, mut guard) = match &self.place {
            Place::Host => {
                let mut c = Command::new(&cmd.program);
                c.current_dir(&cmd.cwd);
                contain(&mut c);
                (c, None)
            }
            Place::HostTree(tree) => {
                let mut c = Command::new(&cmd.program);
                contain(&mut c);
                tree.apply(&mut c, &cmd.cwd).map_err(RunError::Prepare)?;
                (c, None)
            }
            Place::Image(sb) => {
                let cwd = cmd.cwd.to_string_lossy();
                let (c, guard) = sb.command(&cmd.program, &cwd).map_err(RunError::Prepare)?;
                (c, Some(guard))
            }
        };
        command
            .args(&cmd.args)
            .env_clear()
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (status, abandoned) = run_lines(&mut command, on_line)
            .map_err(|error| RunError::Start { error, why: guard.as_mut().map(|g| g.finish()).unwrap_or_default() })?;
        Ok(Exit { status, abandoned })
    }
}

/// See [`Runner::give_back_on_drop`].
pub struct GiveBack<'a> {
    runner: &'a Runner,
    dir: &'a Path,
    on_error: &'a dyn Fn(SandboxError),
}

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.runner.give_back(self.dir) {
            (self.on_error)(e);
        }
    }
}

/// The host's bash, from the fixed `PATH` scripts get.
fn host_bash() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    PATH.split(':')
        .map(|d| Path::new(d).join("bash"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The `PATH` every script gets (Heroku's, minus its own tool directories).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Field `n` (1-based, after the command name) of /proc/PID/stat.
    fn stat_field(stat: &str, n: usize) -> String {
        let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
        rest.split(' ').nth(n - 3).unwrap_or_default().to_string()
    }

    /// On the host and in the host-tree namespace: the command runs in a session of its own
    /// with no controlling terminal, and what it leaves running (`&`, `setsid`, `nohup`) is
    /// gone when `run` returns.
    #[test]
    fn every_command_gets_its_own_session_and_loses_what_it_leaves_running() {
        let t = tempfile::tempdir().unwrap();
        let (root, dir) = (t.path().join("root"), t.path().join("dir"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let tree = Runner::host_tree(&root, &[Bind { host: dir.clone(), inside: "/imgforge-test-dir".into() }]);
        let own_sid = stat_field(&std::fs::read_to_string("/proc/self/stat").unwrap(), 6);
        for (name, runner, out) in
            [("host", Runner::host(), dir.clone()), ("host-tree", tree.unwrap(), "/imgforge-test-dir".into())]
        {
            let script = "read -r s < /proc/self/stat; echo \"stat $s\"; \
                          sleep 60 & echo \"bg $!\"; setsid sleep 60 & echo \"bg $!\"; \
                          nohup sleep 60 >/dev/null 2>&1 & echo \"bg $!\"; (sleep 60 &); echo done";
            let mut cmd = Cmd::new("/bin/sh");
            cmd.args(["-c", script]).cwd(&out).envs([("PATH", PATH)]);
            let lines = Mutex::new(Vec::new());
            let exit = runner.run(&cmd, &|_, l: &str| lines.lock().unwrap().push(l.to_string())).unwrap();
            let lines = lines.into_inner().unwrap();
            assert!(exit.status.success() && !exit.abandoned, "{name}: {exit:?} {lines:?}");
            let stat = lines.iter().find_map(|l| l.strip_prefix("stat ")).unwrap_or_else(|| panic!("{lines:?}"));
            let pid = stat.split(' ').next().unwrap();
            // A new session (led by the supervisor, its parent), its own process group.
            assert_eq!(stat_field(stat, 6), stat_field(stat, 4), "{name}: a session of its own: {stat}");
            assert_ne!(stat_field(stat, 6), own_sid, "{name}: {stat}");
            assert_eq!(stat_field(stat, 5), pid, "{name}: {stat}");
            assert_eq!(stat_field(stat, 7), "0", "{name}: no controlling terminal: {stat}");
            let bg: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("bg ")).collect();
            assert_eq!(bg.len(), 3, "{name}: {lines:?}");
            for p in bg {
                assert!(!Path::new("/proc").join(p).exists(), "{name}: process {p} outlived its command");
            }
        }
    }
}
