//! Running one child process: [`contain`] puts it in a session of its own under a supervisor
//! that kills whatever it leaves running, and [`run_lines`] streams its output: each line of
//! stdout and stderr goes to a callback as it comes (two reader threads), long lines are cut,
//! and output that a process left running still keeps open is abandoned shortly after the
//! child exited.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest output line passed on whole; longer ones are cut into pieces of this size.
const MAX_LINE: usize = 64 * 1024;
/// How long to keep reading output after a script exited. A process it left running in the
/// background may hold the pipe open forever; its later output is not shown.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Which of a child's output streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// `exit code 3`, `signal 9`: how a process ended, for messages.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => format!("status {status}"),
    }
}

/// Makes `cmd` run contained, for untrusted code: in a session of its own (no controlling
/// terminal, so `/dev/tty` cannot be opened and nothing can be typed into the user's
/// terminal), killed when imgforge dies, and with everything it leaves running killed when
/// it ends.
///
/// Between fork and exec the child calls `setsid`, becomes a child subreaper (processes its
/// descendants orphan are reparented to it, `setsid`/`nohup` or not) and forks once more:
/// the grandchild goes on to exec the command (in a process group of its own), the child
/// stays as a supervisor holding no fd of imgforge's but stdio. When the command ends, the
/// supervisor kills the command's process group and every process reparented to it, reaps
/// them all, and ends as the command ended (its exit code, or its signal). When imgforge
/// dies, the supervisor learns it (SIGHUP as its parent-death signal) and does the same.
/// Register this before any other `pre_exec` (those then run in the grandchild).
pub(super) fn contain(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec; `supervise` makes only
    // async-signal-safe system calls and allocates nothing.
    unsafe {
        cmd.pre_exec(move || supervise(parent));
    }
}

extern "C" fn wake(_: libc::c_int) {}

/// See [`contain`]. Returns (in the grandchild) to let the exec go on; the supervisor never
/// returns.
unsafe fn supervise(parent: libc::pid_t) -> io::Result<()> {
    let check = |r: libc::c_long| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    check(libc::setsid() as libc::c_long)?;
    // SIGHUP interrupts the supervisor's waits (no SA_RESTART) when imgforge dies.
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = wake as extern "C" fn(libc::c_int) as libc::sighandler_t;
    check(libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut()) as libc::c_long)?;
    check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP as libc::c_ulong, 0, 0, 0) as libc::c_long)?;
    if libc::getppid() != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    check(libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) as libc::c_long)?;
    let supervisor = libc::getpid();
    let child = libc::fork();
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // The command: dies with the supervisor, leads its own process group.
        libc::signal(libc::SIGHUP, libc::SIG_DFL);
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) as libc::c_long)?;
        if libc::getppid() != supervisor {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        check(libc::setpgid(0, 0) as libc::c_long)?;
        return Ok(());
    }
    // The supervisor: nothing of imgforge's but stdio (std's exec-error pipe among them: the
    // exec's outcome is the grandchild's to report).
    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    let mut status = 0;
    let ended = loop {
        let r = libc::waitpid(child, &mut status, 0);
        if r == child {
            break true;
        }
        if r < 0 && *libc::__errno_location() != libc::EINTR {
            break false;
        }
        if libc::getppid() != parent {
            break false; // imgforge died
        }
    };
    kill_all(child);
    if !ended {
        libc::_exit(125);
    }
    if libc::WIFSIGNALED(status) {
        // End by the same signal (no core file), so that imgforge sees what the command saw.
        let sig = libc::WTERMSIG(status);
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
    libc::_exit(libc::WEXITSTATUS(status));
}

/// In the supervisor: SIGKILLs the command's process group, then every child (processes
/// orphaned under it are reparented to it) until none is left, reaping them. Gives up after
/// about two seconds of children it cannot see (no `/proc/thread-self/children`), rather
/// than hang the build.
unsafe fn kill_all(group: libc::pid_t) {
    libc::kill(-group, libc::SIGKILL);
    let mut blind = 0;
    loop {
        let killed = kill_children();
        let r = libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL);
        if r > 0 {
            continue;
        }
        if r < 0 && *libc::__errno_location() != libc::EINTR {
            return; // ECHILD: nothing left
        }
        if killed == 0 {
            blind += 1;
            if blind > 200 {
                return;
            }
        }
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 };
        libc::nanosleep(&pause, std::ptr::null_mut());
    }
}

/// SIGKILLs every child of the calling (single-threaded) process, as listed in
/// `/proc/thread-self/children`, without allocating. Returns how many it signalled.
unsafe fn kill_children() -> usize {
    let fd = libc::open(c"/proc/thread-self/children".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return 0;
    }
    let mut killed = 0;
    let mut buf = [0u8; 4096];
    let mut pid: libc::pid_t = 0;
    loop {
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        if n <= 0 {
            break;
        }
        for &b in &buf[..n as usize] {
            if b.is_ascii_digit() {
                pid = pid.saturating_mul(10).saturating_add((b - b'0') as libc::pid_t);
            } else {
                if pid > 0 {
                    libc::kill(pid, libc::SIGKILL);
                    killed += 1;
                }
                pid = 0;
            }
        }
    }
    if pid > 0 {
        libc::kill(pid, libc::SIGKILL);
        killed += 1;
    }
    libc::close(fd);
    killed
}

/// Runs `cmd` (stdout and stderr piped), handing each output line to `on_line` as it
/// comes, from two reader threads. Returns the exit status and whether output was
/// abandoned because something the process left running kept the pipes open.
pub fn run_lines(cmd: &mut Command, on_line: &(dyn Fn(Stream, &str) + Sync)) -> io::Result<(ExitStatus, bool)> {
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let exited: OnceLock<Instant> = OnceLock::new();
    std::thread::scope(|s| {
        let out = stdout.map(|r| spawn_pump(s, r, Stream::Out, &exited, on_line)).transpose();
        let err = stderr.map(|r| spawn_pump(s, r, Stream::Err, &exited, on_line)).transpose();
        if out.is_err() || err.is_err() {
            let _ = child.kill();
        }
        let status = child.wait();
        let _ = exited.set(Instant::now());
        let mut abandoned = false;
        for h in [out?, err?].into_iter().flatten() {
            match h.join() {
                Ok(r) => abandoned |= r?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok((status?, abandoned))
    })
}

fn spawn_pump<'scope, R: Read + AsRawFd + Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    r: R,
    stream: Stream,
    exited: &'scope OnceLock<Instant>,
    on_line: &'scope (dyn Fn(Stream, &str) + Sync),
) -> io::Result<std::thread::ScopedJoinHandle<'scope, io::Result<bool>>> {
    let name = if stream == Stream::Out { "child-stdout" } else { "child-stderr" };
    std::thread::Builder::new().name(name.into()).spawn_scoped(s, move || pump(r, stream, exited, on_line))
}

/// Reads `r` line by line until EOF, or until `DRAIN_GRACE` after the process exited
/// (returns true then).
fn pump<R: Read + AsRawFd>(
    mut r: R,
    stream: Stream,
    exited: &OnceLock<Instant>,
    on_line: &(dyn Fn(Stream, &str) + Sync),
) -> io::Result<bool> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        on_line(stream, &String::from_utf8_lossy(text));
        line.clear();
    };
    loop {
        if exited.get().is_some_and(|t| t.elapsed() > DRAIN_GRACE) {
            if !line.is_empty() {
                emit(&mut line);
            }
            return Ok(true);
        }
        let mut pfd = libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: `pfd` is one valid pollfd and the count is 1.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready == 0 {
            continue;
        }
        let n = match r.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if !line.is_empty() {
                emit(&mut line);
            }
            return Ok(false);
        }
        for piece in buf[..n].split_inclusive(|&b| b == b'\n') {
            line.extend_from_slice(piece);
            if line.last() == Some(&b'\n') {
                line.pop();
                emit(&mut line);
            } else if line.len() >= MAX_LINE {
                emit(&mut line);
            }
        }
    }
}
