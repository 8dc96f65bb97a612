//! Attacks by untrusted build steps on the user who runs the build (issue 11), through the
//! real binary, with `--isolation host` and in the userns sandbox on the Debian test base:
//! * a buildpack that types into the user's terminal with `TIOCSTI`, run under a real
//!   pseudo-terminal: what it injected must never reach the terminal's input;
//! * a buildpack that leaves processes running (`&`, `setsid`, `nohup`): none may outlive
//!   the build;
//! * a CNB buildpack under `--isolation host` that writes to the user's terminal by its
//!   `/dev/pts/N` name;
//! * a buildpack that fills its cache and fails: nothing of that build is kept.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Runs `argv` as the session leader of a new pseudo-terminal (its controlling terminal, and
/// its stdin, stdout and stderr), as a login shell in a terminal would, and copies what the
/// terminal shows to stdout. After `argv`, the terminal's pending input (what the user's
/// shell would read and run next) is printed as `pending=b'...'`.
const PTY_HARNESS: &str = r#"
import os, pty, select, sys
DRAIN = r'''
import os, select, termios, tty
tty.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: that would discard the pending input
data = b""
while True:
    r, _, _ = select.select([0], [], [], 1.0)
    if not r:
        break
    d = os.read(0, 4096)
    if not d:
        break
    data += d
os.write(1, b"pending=%r\r\n" % data)
'''
script = '"$@" >"$IMGFORGE_LOG" 2>&1; echo "imgforge-exit=$?"; exec python3 -c "$DRAIN"'
pid, fd = pty.fork()
if pid == 0:
    os.environ["DRAIN"] = DRAIN
    os.execvp("sh", ["sh", "-c", script, "sh"] + sys.argv[1:])
out = b""
while True:
    r, _, _ = select.select([fd], [], [], 300)
    if not r:
        break
    try:
        data = os.read(fd, 65536)
    except OSError:
        break
    if not data:
        break
    out += data
os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
"#;

/// A Heroku buildpack whose compile attacks: it pushes `echo INJECTED-<tag>` plus a newline
/// into the terminal with TIOCSTI through `/dev/tty` and through its stdio (and in the
/// sandbox, through every device it can open under /dev; on the host as root, other ttys are
/// root's to write to anyway), then leaves three
/// processes running: `sleep &`, `setsid sleep &` and `nohup sleep &`.
fn attacking_buildpack(t: &TestDir) -> PathBuf {
    heroku_buildpack(
        t,
        "attack",
        r#"#!/bin/sh
python3 - <<'EOF'
import fcntl, glob, os, termios
payload = b"echo INJECTED-" + os.environ["STACK"].encode() + b"\n"
targets = ["/dev/tty"]
if os.path.exists("/imgforge"):  # in the sandbox: every device there is
    targets += ["/dev/console", "/dev/ptmx"] + sorted(glob.glob("/dev/pts/*")) + sorted(glob.glob("/dev/*"))
def inject(fd, name):
    try:
        for b in payload:
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([b]))
        print("attack: TIOCSTI on %s worked" % name)
    except OSError as e:
        print("attack: TIOCSTI on %s: %s" % (name, e))
for fd in (0, 1, 2):
    inject(fd, "fd %d" % fd)
for path in targets:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    except OSError as e:
        print("attack: open %s: %s" % (path, e))
        continue
    inject(fd, path)
    os.close(fd)
print("attack: done")
EOF
sleep 1000 &
setsid sleep 1000 &
nohup sleep 1000 >/dev/null 2>&1 &
echo "attack: left 3 sleeps"
"#,
    )
}

/// `buildpacks/<name>` with a `bin/detect` that passes and this `bin/compile`, readable by
/// the test user.
fn heroku_buildpack(t: &TestDir, name: &str, compile: &str) -> PathBuf {
    let bp = t.mkdir(format!("buildpacks/{name}"));
    t.write(bp.join("bin/detect"), format!("#!/bin/sh\necho {name}\n"));
    t.write(bp.join("bin/compile"), compile);
    for s in ["detect", "compile"] {
        fs::set_permissions(bp.join("bin").join(s), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    share(&bp);
    bp
}

/// Pids of processes whose environment holds `needle` (e.g. `STACK=<unique>`).
fn pids_with_env(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(env) = fs::read(e.path().join("environ")) {
            if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

/// What the pty harness saw, and imgforge's own stderr.
struct Attack {
    terminal: String,
    log: String,
    stack: String,
}

/// Builds an app with [`attacking_buildpack`] on `base` under `isolation`, run under a
/// pseudo-terminal by [`PTY_HARNESS`].
fn attack(t: &TestDir, base: &str, isolation: &str) -> Attack {
    attack_with(t, &attacking_buildpack(t), base, isolation)
}

/// Builds an app with the buildpack `bp` on `base` under `isolation`, under a pseudo-terminal.
fn attack_with(t: &TestDir, bp: &Path, base: &str, isolation: &str) -> Attack {
    let app = t.mkdir("app");
    t.write("app/index.txt", "hi\n");
    let out = t.mkdir("out");
    let log = t.join("imgforge.log");
    let stack = format!("imgforge-attack-{}-{isolation}", std::process::id());
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PTY_HARNESS).arg(imgforge_bin()).arg("build").arg(&app);
    cmd.args(["--base", base, "--isolation", isolation, "--stack", &stack, "--compression", "none"]);
    cmd.arg("--buildpack").arg(bp).arg("-t").arg(format!("oci:{}:x", out.display()));
    cmd.env("IMGFORGE_CACHE_DIR", t.cache_dir()).env("IMGFORGE_LOG", &log);
    let o = run_ok(&mut cmd);
    let terminal = String::from_utf8_lossy(&o.stdout).into_owned();
    let log = fs::read_to_string(&log).unwrap_or_default();
    Attack { terminal, log, stack }
}

fn assert_no_injection(a: &Attack) {
    let ctx = || format!("terminal:\n{}\nimgforge:\n{}", a.terminal, a.log);
    assert!(a.terminal.contains("imgforge-exit=0"), "the build failed: {}", ctx());
    assert!(a.log.contains("attack: done"), "the attack did not run: {}", ctx());
    assert!(a.log.contains("attack: open /dev/tty: "), "/dev/tty could be opened: {}", ctx());
    assert!(!a.log.contains("worked"), "an injection was accepted: {}", ctx());
    let pending = a.terminal.lines().find(|l| l.starts_with("pending=")).unwrap_or_else(|| panic!("{}", ctx()));
    assert_eq!(pending.trim_end(), "pending=b''", "the terminal's input holds injected text: {}", ctx());
}

fn assert_no_leftovers(a: &Attack) {
    assert!(a.log.contains("attack: left 3 sleeps"), "{}", a.log);
    let needle = format!("STACK={}", a.stack);
    // The build has ended: give the kernel a moment to finish the kills it was asked for.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = pids_with_env(&needle);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = pids_with_env(&needle);
    }
    for pid in &left {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let cmdlines: Vec<String> = left
        .iter()
        .map(|p| fs::read_to_string(Path::new("/proc").join(p.to_string()).join("cmdline")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "processes the buildpack left outlived the build: {left:?} {cmdlines:?}\n{}", a.log);
}

#[test]
fn with_isolation_host_a_buildpack_cannot_type_into_the_users_terminal_nor_leave_processes_running() {
    let t = TestDir::new();
    // The base is not used to run anything on the host: the small one will do.
    let a = attack(&t, &t.busybox_copy(), "host");
    assert_no_injection(&a);
    assert_no_leftovers(&a);
}

#[test]
fn in_the_sandbox_a_buildpack_cannot_type_into_the_users_terminal_nor_see_a_host_tty() {
    let t = TestDir::new();
    let a = attack(&t, &debian_base(), "userns");
    assert!(a.log.contains("Buildpacks run in a user namespace"), "{}", a.log);
    assert_no_injection(&a);
    // No terminal device of the host is there at all.
    for dev in ["/dev/tty", "/dev/console", "/dev/ptmx"] {
        assert!(
            a.log.contains(&format!("attack: open {dev}: [Errno 2] No such file or directory")),
            "{dev} is visible in the sandbox:\n{}",
            a.log
        );
    }
    assert!(!a.log.contains("attack: open /dev/pts/"), "/dev/pts is visible in the sandbox:\n{}", a.log);
    assert_no_leftovers(&a);
}

/// A Cloud Native Buildpack whose `bin/build` tries to open every terminal device by name for
/// writing (`/dev/tty`, `/dev/console`, each `/dev/pts/*`, the user's among them), writes to
/// what it opened, and prints what it could open.
fn cnb_terminal_writer(t: &TestDir) -> PathBuf {
    let bp = t.mkdir("cnb-tty");
    t.write(
        bp.join("buildpack.toml"),
        "api = \"0.10\"\n[buildpack]\nid = \"imgforge-test/tty\"\nversion = \"1.0.0\"\n[[targets]]\nos = \"linux\"\n",
    );
    t.write(bp.join("bin/detect"), "#!/bin/sh\nexit 0\n");
    t.write(
        bp.join("bin/build"),
        r#"#!/bin/sh
opened=""
for dev in /dev/tty /dev/console /dev/pts/*; do
    # Only an existing device: a redirection would otherwise create a plain file there.
    if test -c "$dev" && (printf 'WRITTEN-BY-BUILDPACK\n' >"$dev") 2>/dev/null; then opened="$opened $dev"; fi
done
echo "attack: opened [$opened ] of $(echo /dev/pts/*)"
echo "attack: done"
"#,
    );
    for s in ["detect", "build"] {
        fs::set_permissions(bp.join("bin").join(s), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    share(&bp);
    bp
}

#[test]
fn with_isolation_host_a_cnb_buildpack_cannot_open_the_users_terminal_by_its_name() {
    let t = TestDir::new();
    let a = attack_with(&t, &cnb_terminal_writer(&t), &t.busybox_copy(), "host");
    let ctx = || format!("terminal:\n{}\nimgforge:\n{}", a.terminal, a.log);
    assert!(a.terminal.contains("imgforge-exit=0"), "the build failed: {}", ctx());
    assert!(a.log.contains("attack: done"), "the attack did not run: {}", ctx());
    assert!(a.log.contains("attack: opened [ ]"), "a terminal device could be opened: {}", ctx());
    assert!(!a.terminal.contains("WRITTEN-BY-BUILDPACK"), "the buildpack wrote to the user's terminal: {}", ctx());
    let pending = a.terminal.lines().find(|l| l.starts_with("pending=")).unwrap_or_else(|| panic!("{}", ctx()));
    assert_eq!(pending.trim_end(), "pending=b''", "{}", ctx());
}

/// A buildpack that opens up everything it is given: it fills its CACHE_DIR (chowning a
/// directory to another uid where it can), then makes the build dir, CACHE_DIR and ENV_DIR
/// world-writable. With `fail` in the app, compile then fails.
fn careless_buildpack(t: &TestDir) -> PathBuf {
    heroku_buildpack(
        t,
        "careless",
        r#"#!/bin/sh
set -e
mkdir -p "$2/deps/sub" "$1/public"
echo kept > "$2/deps/sub/file"
chown -R 1000:1000 "$2/deps" 2>/dev/null || true
echo hi > "$1/public/x"
chmod -R 0777 "$1" "$2" "$3"
echo "careless: env has $(ls "$3")"
if test -e "$1/fail"; then exit 1; fi
"#,
    )
}

/// Files under `root` (not under `blobs/`, where the image's own config holds the image's
/// environment by design) whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &str) -> Vec<PathBuf> {
    let out = run(Command::new("grep").arg("-rlF").arg("--exclude-dir=blobs").arg(needle).arg(root));
    stdout_str(&out).lines().map(PathBuf::from).collect()
}

#[test]
fn what_a_build_keeps_is_writable_by_nobody_else_and_its_secrets_are_gone_success_or_not() {
    for isolation in ["host", "userns"] {
        let t = TestDir::new();
        let bp = careless_buildpack(&t);
        let app = t.mkdir("app");
        t.write("app/index.txt", "hi\n");
        let out = t.user_dir("out");
        let secret = format!("s3cr3t-{}-{isolation}", std::process::id());
        // As the unprivileged test user (with subordinate ids: the sandbox can chown).
        let imgforge = || t.imgforge_as_test_user().unwrap_or_else(|| t.imgforge());
        let cache = if test_user().is_some() { t.join("user-cache") } else { t.cache_dir() };
        let build = |label: &str, ok: bool| {
            let mut c = imgforge();
            c.arg("build").arg(&app).args(["--base", &t.busybox_copy(), "--isolation", isolation]);
            c.arg("--buildpack").arg(&bp).arg("--env").arg(format!("SECRET_TOKEN={secret}"));
            c.arg("-t").arg(format!("oci:{}:x", out.display()));
            let o = if ok { run_ok(&mut c) } else { run(&mut c) };
            assert_eq!(o.status.success(), ok, "{isolation} {label}: {}", report(&c, &o));
            assert!(
                stderr_str(&o).contains("careless: env has SECRET_TOKEN"),
                "{isolation} {label}: {}",
                report(&c, &o)
            );
            // Only the unpacked build image's own sticky dirs (`/tmp`), which other users cannot
            // reach: its bucket is private.
            let writable =
                stdout_str(&run(Command::new("find").arg(&cache).args(["!", "-type", "l", "-perm", "-o+w"])));
            let rootfs = cache.join("rootfs-v1");
            let bad: Vec<&str> = writable.lines().filter(|l| !Path::new(l).starts_with(&rootfs)).collect();
            assert!(bad.is_empty(), "{isolation} {label}: world-writable in the cache: {bad:?}");
            if rootfs.exists() {
                let mode = fs::metadata(&rootfs).unwrap().permissions();
                assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700, "{isolation} {label}");
            }
            let left = files_containing(&cache, &secret);
            assert!(left.is_empty(), "{isolation} {label}: the secret is still on disk in {left:?}");
        };
        build("a build that succeeds", true);
        // The kept cache came back and was opened up again; then compile fails.
        t.write("app/fail", "");
        build("a build that fails", false);
    }
}

/// A buildpack that counts its builds in CACHE_DIR; with `fail` in the app it writes a big
/// file (standing for one that fills the disk) and a marker there first, then fails.
fn cache_filling_buildpack(t: &TestDir) -> PathBuf {
    heroku_buildpack(
        t,
        "filler",
        r#"#!/bin/sh
set -e
echo "filler: cache holds [$(cat "$2/count" 2>/dev/null)] $(ls "$2" | tr '\n' ' ')"
if test -e "$1/fail"; then
    head -c 8388608 /dev/zero > "$2/big"
    echo FAILED-BUILD-MARKER > "$2/marker"
    exit 1
fi
echo "x$(cat "$2/count" 2>/dev/null)" > "$2/count.new" && mv "$2/count.new" "$2/count"
"#,
    )
}

#[test]
fn a_heroku_build_that_fails_commits_nothing_to_the_kept_cache() {
    let t = TestDir::new();
    let bp = cache_filling_buildpack(&t);
    let app = t.mkdir("app");
    let build = |version: &str, ok: bool| {
        t.write("app/version.txt", version);
        let mut c = t.imgforge();
        c.arg("build").arg(&app).args(["--base", &t.busybox_copy(), "--isolation", "host"]);
        c.arg("--buildpack").arg(&bp).arg("-t").arg(format!("oci:{}:{version}", t.join("out").display()));
        let o = run(&mut c);
        assert_eq!(o.status.success(), ok, "{version}: {}", report(&c, &o));
        stderr_str(&o)
    };
    build("v1", true);
    t.write("app/fail", "");
    let failed = build("v2", false);
    assert!(failed.contains("filler: cache holds [x]"), "the failed build saw v1's cache: {failed}");
    fs::remove_file(app.join("fail")).unwrap();
    let kept = files_containing(&t.cache_dir(), "FAILED-BUILD-MARKER");
    assert!(kept.is_empty(), "the failed build's cache was kept: {kept:?}");
    let out = run(Command::new("find").arg(t.cache_dir()).args(["-name", "big", "-size", "+1M"]));
    assert_eq!(stdout_str(&out), "", "the failed build's big file was kept");
    let next = build("v3", true);
    assert!(next.contains("filler: cache holds [x] count "), "the next build does not see v1's cache: {next}");
}
