//! Running one child process and streaming its output: each line of stdout and stderr goes to
//! a callback as it comes (two reader threads), long lines are cut, and output that a process
//! left running in the background keeps open is abandoned shortly after the child exited.

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

/// The child gets SIGKILL when the thread that started it (which waits for it) dies.
pub(super) fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, getppid); it allocates nothing (io::Error from a raw errno is not
        // boxed).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // imgforge died before prctl took effect: nobody would kill us.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
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
