//! Shared harness for imgforge's integration tests (`mod common;` in a test file).
//!
//! The container tools (podman, skopeo, umoci) are real, and missing tools make
//! tests fail, not skip: `tests/run.sh` installs them and prepares the
//! unprivileged user that runs rootless podman. See docs/testing.md.
//!
//! When the tests run as root, podman, umoci and "another user" builds run as
//! `$IMGFORGE_TEST_USER` (default `imgforge-test`) through `runuser`; otherwise
//! they run as the current user. Files handed to that user must be readable by
//! it: [`TestDir`] is world-readable and [`share`] opens up a path.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod registry;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Env var naming the unprivileged user for podman/umoci when tests run as root.
pub const TEST_USER_ENV: &str = "IMGFORGE_TEST_USER";
/// Env var with the podman storage driver chosen by tests/run.sh (optional).
pub const STORAGE_DRIVER_ENV: &str = "IMGFORGE_TEST_STORAGE_DRIVER";
/// The user tests/run.sh creates.
pub const DEFAULT_TEST_USER: &str = "imgforge-test";
/// Default image and file timestamp when SOURCE_DATE_EPOCH is unset.
pub const DEFAULT_CREATED: &str = "1980-01-01T00:00:01Z";
pub const DEFAULT_EPOCH: i64 = 315_532_801;
/// The string in testdata/apps/hello/public/index.html.
pub const HELLO_MARKER: &str = "imgforge-hello-fixture-7f3a";
/// PATH in the busybox fixture's config.
pub const BUSYBOX_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------------------
// paths and fixtures
// ---------------------------------------------------------------------------

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `testdata/<rel>` in the checkout.
pub fn testdata(rel: &str) -> PathBuf {
    repo_root().join("testdata").join(rel)
}

/// The committed busybox OCI layout (tag `latest`).
pub fn busybox_layout() -> PathBuf {
    testdata("images/busybox")
}

/// `oci:<abs path of the committed busybox layout>:latest`.
pub fn busybox_ref() -> String {
    format!("oci:{}:latest", busybox_layout().display())
}

/// The sample app with a Procfile (see testdata/apps/README.md).
pub fn hello_app() -> PathBuf {
    testdata("apps/hello")
}

/// The imgforge binary under test.
pub fn imgforge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgforge"))
}

// ---------------------------------------------------------------------------
// running commands
// ---------------------------------------------------------------------------

/// `program arg arg ...` for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '\'', '"', '$']) {
            s.push_str(&format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// A report of a finished command: its line, status, stdout and stderr.
pub fn report(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}--------------",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with stdin closed and returns its output (whatever the status).
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    let program = cmd.get_program().to_string_lossy().into_owned();
    if !program.contains('/') {
        require_tool(&program);
    }
    cmd.output().unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)))
}

/// Runs `cmd` and panics, with its stdout and stderr, unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.status.success(), "command failed\n{}", report(cmd, &out));
    out
}

/// Runs `cmd`, asserts exit 0, returns stdout as a string.
pub fn run_stdout(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).expect("stdout is not UTF-8")
}

pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// Panics unless `name` is an executable on PATH (or in an sbin directory).
/// Tests fail rather than skip when a tool is missing.
pub fn require_tool(name: &str) {
    if find_in_path(name).is_none() {
        panic!("missing tool {name}: run tests/run.sh, which installs it");
    }
}

// ---------------------------------------------------------------------------
// users
// ---------------------------------------------------------------------------

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The unprivileged user that runs podman and umoci when the tests run as root.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub runtime_dir: PathBuf,
}

/// `Some` when running as root (podman etc. then run as this user), `None`
/// when the tests already run unprivileged (tools run as ourselves).
pub fn test_user() -> Option<&'static TestUser> {
    static USER: OnceLock<Option<TestUser>> = OnceLock::new();
    USER.get_or_init(|| {
        if !is_root() {
            return None;
        }
        let name = std::env::var(TEST_USER_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_TEST_USER.to_string());
        let out = Command::new("getent").args(["passwd", &name]).output().expect("cannot run getent");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let fields: Vec<&str> = line.split(':').collect();
        if !out.status.success() || fields.len() < 7 {
            panic!(
                "test user {name} does not exist: run tests/run.sh, which creates it \
                 (running as root, podman runs as ${TEST_USER_ENV}, default {DEFAULT_TEST_USER})"
            );
        }
        let uid: u32 = fields[2].parse().expect("uid");
        let gid: u32 = fields[3].parse().expect("gid");
        let runtime_dir = PathBuf::from(format!("/run/user/{uid}"));
        if !runtime_dir.is_dir() {
            fs::create_dir_all(&runtime_dir).expect("create XDG_RUNTIME_DIR");
            std::os::unix::fs::chown(&runtime_dir, Some(uid), Some(gid)).expect("chown XDG_RUNTIME_DIR");
            fs::set_permissions(&runtime_dir, fs::Permissions::from_mode(0o700)).expect("chmod XDG_RUNTIME_DIR");
        }
        Some(TestUser { name, uid, gid, home: PathBuf::from(fields[5]), runtime_dir })
    })
    .as_ref()
}

/// A command for `program` that runs as the test user when we are root
/// (through `runuser`, with HOME and XDG_RUNTIME_DIR set and cwd `/`), or as
/// ourselves otherwise. Env set on the returned command reaches `program`.
pub fn as_test_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match test_user() {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", &u.name, "--", "env"])
                .arg(format!("HOME={}", u.home.display()))
                .arg(format!("USER={}", u.name))
                .arg(format!("LOGNAME={}", u.name))
                .arg(format!("XDG_RUNTIME_DIR={}", u.runtime_dir.display()))
                .arg(program)
                .current_dir("/");
            // root's settings must not leak into the user's podman
            for var in [
                "XDG_CONFIG_HOME",
                "XDG_DATA_HOME",
                "XDG_CACHE_HOME",
                "TMPDIR",
                "CONTAINERS_CONF",
                "CONTAINERS_STORAGE_CONF",
                "CONTAINERS_REGISTRIES_CONF",
                "DBUS_SESSION_BUS_ADDRESS",
            ] {
                c.env_remove(var);
            }
            c
        }
        None => Command::new(program),
    }
}

fn chown_to_test_user(path: &Path) {
    if let Some(u) = test_user() {
        std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), u.name));
    }
}

// ---------------------------------------------------------------------------
// temp dirs
// ---------------------------------------------------------------------------

/// Makes `path` readable by the test user: every directory in it gets o+rx
/// (0755 at least), every file o+r (0644, executables 0755), and checks that
/// its ancestors can be entered. Symlinks are left alone.
pub fn share(path: &Path) {
    fn open_up(p: &Path) {
        let meta = match fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) => panic!("share {}: {e}", p.display()),
        };
        if meta.file_type().is_symlink() {
            return;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() || mode & 0o111 != 0 { mode | 0o755 } else { mode | 0o644 };
        if want != mode {
            fs::set_permissions(p, fs::Permissions::from_mode(want))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        }
        if meta.is_dir() {
            for entry in fs::read_dir(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
                open_up(&entry.expect("read_dir entry").path());
            }
        }
    }
    open_up(path);
    check_traversable(path);
}

fn check_traversable(path: &Path) {
    if test_user().is_none() {
        return;
    }
    let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for dir in abs.ancestors().skip(1) {
        let mode = fs::metadata(dir).map(|m| m.permissions().mode()).unwrap_or(0);
        assert!(
            mode & 0o001 != 0,
            "{} (mode {:o}) cannot be entered by the test user, so it cannot reach {}; \
             run the tests with TMPDIR=/tmp",
            dir.display(),
            mode & 0o7777,
            path.display()
        );
    }
}

/// A per-test temporary directory under $TMPDIR (mode 0755 so the test user
/// can read what is inside; use [`share`] on files written with tighter
/// modes). Its name is lowercase: podman derives image names from `oci:` paths
/// and rejects upper case. Removed on drop unless IMGFORGE_TEST_KEEP=1.
pub struct TestDir {
    path: PathBuf,
    keep: bool,
}

impl TestDir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir();
        let path = loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!("imgforge-test-{}-{}-{nanos:08x}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
            let p = base.join(name);
            match fs::create_dir(&p) {
                Ok(()) => break p,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("create temp dir {}: {e}", p.display()),
            }
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        check_traversable(&path);
        let keep = std::env::var("IMGFORGE_TEST_KEEP").is_ok_and(|v| v == "1");
        if keep {
            eprintln!("IMGFORGE_TEST_KEEP=1: keeping {}", path.display());
        }
        TestDir { path, keep }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// `<dir>/cache`, the IMGFORGE_CACHE_DIR of [`TestDir::imgforge`].
    pub fn cache_dir(&self) -> PathBuf {
        self.join("cache")
    }

    /// Creates `<dir>/<rel>` (mode 0755) and returns it.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// Creates `<dir>/<rel>` owned by (and so writable by) the test user when
    /// running as root; a plain directory otherwise.
    pub fn user_dir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.mkdir(rel);
        chown_to_test_user(&p);
        p
    }

    /// Writes a file (mode 0644) and returns its path.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir parent");
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        p
    }

    /// `imgforge` with IMGFORGE_CACHE_DIR=`<dir>/cache` (a test can override it
    /// with `.env(...)` or `--cache-dir`).
    pub fn imgforge(&self) -> Command {
        imgforge_with_cache(&self.cache_dir())
    }

    /// A copy of the busybox fixture inside this dir, readable by the test
    /// user; returns `oci:<copy>:latest`.
    pub fn busybox_copy(&self) -> String {
        let dst = self.join("busybox");
        if !dst.exists() {
            copy_tree(&busybox_layout(), &dst);
            share(&dst);
        }
        format!("oci:{}:latest", dst.display())
    }

    /// `imgforge` run as the test user (root only; `None` otherwise): the
    /// binary is copied into this dir so that user can run it wherever the
    /// checkout lives, and IMGFORGE_CACHE_DIR is a user-owned `<dir>/user-cache`.
    /// Everything it reads must be shared with that user; what it writes must
    /// go to a [`TestDir::user_dir`].
    pub fn imgforge_as_test_user(&self) -> Option<Command> {
        test_user()?;
        let bin_dir = self.mkdir("user-bin");
        let bin = bin_dir.join("imgforge");
        if !bin.exists() {
            fs::copy(imgforge_bin(), &bin).expect("copy imgforge binary");
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let cache = self.user_dir("user-cache");
        let mut c = as_test_user(&bin);
        c.env("IMGFORGE_CACHE_DIR", cache);
        scrub_imgforge_env(&mut c);
        Some(c)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // rootless umoci can leave directories the owner cannot write
        let _ = Command::new("chmod").args(["-R", "u+rwX"]).arg(&self.path).stderr(Stdio::null()).status();
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Copies a directory tree (symlinks as symlinks, modes kept, mtimes not).
pub fn copy_tree(src: &Path, dst: &Path) {
    run_ok(Command::new("cp").arg("-R").arg(src).arg(dst));
}

/// Sets the mtime (and atime) of everything under `root`, symlinks included.
pub fn touch_all(root: &Path, date: &str) {
    run_ok(Command::new("find").arg(root).args(["-exec", "touch", "-h", "-d", date, "{}", "+"]));
}

// ---------------------------------------------------------------------------
// imgforge
// ---------------------------------------------------------------------------

fn scrub_imgforge_env(cmd: &mut Command) {
    // The ambient environment must not change what the tests build.
    cmd.env_remove("SOURCE_DATE_EPOCH");
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("IMGFORGE_") && k != "IMGFORGE_CACHE_DIR" {
                cmd.env_remove(k);
            }
        }
    }
}

fn imgforge_with_cache(cache: &Path) -> Command {
    let mut c = Command::new(imgforge_bin());
    scrub_imgforge_env(&mut c);
    c.env("IMGFORGE_CACHE_DIR", cache);
    c
}

/// `imgforge` with a fresh IMGFORGE_CACHE_DIR of its own under cargo's
/// target tmp dir (prefer [`TestDir::imgforge`], whose cache goes away with
/// the test). A test can override it with `.env(...)` or `--cache-dir`.
pub fn imgforge() -> Command {
    static N: AtomicUsize = AtomicUsize::new(0);
    static CLEANED: OnceLock<()> = OnceLock::new();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("imgforge-test-caches");
    CLEANED.get_or_init(|| {
        // caches of test processes that are gone
        if let Ok(entries) = fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').next().unwrap_or("");
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    });
    let n = N.fetch_add(1, Ordering::SeqCst);
    let cache = root.join(format!("{}-{n}", std::process::id()));
    imgforge_with_cache(&cache)
}

/// Checks that stdout is exactly one line `sha256:<64 lowercase hex>\n` and
/// returns the digest.
pub fn parse_digest_line(stdout: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(stdout).map_err(|_| "stdout is not UTF-8".to_string())?;
    let line = s.strip_suffix('\n').ok_or_else(|| format!("stdout does not end with a newline: {s:?}"))?;
    if !is_digest(line) {
        return Err(format!("stdout is not exactly one `sha256:<64 hex>` line: {s:?}"));
    }
    Ok(line.to_string())
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Runs a build command, asserts exit 0 and a single digest line on stdout,
/// returns the digest.
pub fn build_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "imgforge build failed\n{}", report(cmd, &out));
    parse_digest_line(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", report(cmd, &out)))
}

/// `imgforge inspect REF` parsed as JSON.
pub fn imgforge_inspect(reference: &str) -> Value {
    let mut cmd = imgforge();
    cmd.args(["inspect", reference]);
    let out = run_ok(&mut cmd);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("imgforge inspect: stdout is not JSON: {e}\n{}", report(&cmd, &out)))
}

// ---------------------------------------------------------------------------
// OCI layouts on disk
// ---------------------------------------------------------------------------

/// `index.json` of an OCI layout.
pub fn read_index(layout: &Path) -> Value {
    read_json(&layout.join("index.json"))
}

pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Path of a blob in an OCI layout.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    assert!(is_digest(digest), "not a sha256 digest: {digest:?}");
    layout.join("blobs/sha256").join(&digest[7..])
}

/// Writes `bytes` as a blob of the layout; returns its digest and size.
pub fn write_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let d = sha256_digest(bytes);
    fs::write(blob_path(layout, &d), bytes).unwrap();
    (d, bytes.len())
}

/// Bytes of a blob, checked against its digest.
pub fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let p = blob_path(layout, digest);
    let bytes = fs::read(&p).unwrap_or_else(|e| panic!("read blob {}: {e}", p.display()));
    assert_eq!(sha256_digest(&bytes), digest, "blob {} does not match its name", p.display());
    bytes
}

/// `(ref name, manifest digest)` for each entry of index.json.
pub fn index_tags(layout: &Path) -> Vec<(String, String)> {
    let index = read_index(layout);
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("index.json of {} has no manifests array", layout.display()))
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap_or("").to_string(),
                m["digest"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Manifest (parsed) of tag `tag` in an OCI layout.
pub fn layout_manifest(layout: &Path, tag: &str) -> Value {
    let tags = index_tags(layout);
    let (_, digest) = tags
        .iter()
        .find(|(t, _)| t == tag)
        .unwrap_or_else(|| panic!("no tag {tag:?} in {}: {tags:?}", layout.display()));
    serde_json::from_slice(&read_blob(layout, digest)).expect("manifest JSON")
}

// ---------------------------------------------------------------------------
// skopeo and umoci
// ---------------------------------------------------------------------------

fn skopeo(args: &[&str], reference: &str) -> Output {
    require_tool("skopeo");
    if let Some(p) = transport_path(reference) {
        assert!(p.exists(), "skopeo: {} does not exist", p.display());
    }
    let mut c = Command::new("skopeo");
    c.arg("inspect").args(args).arg(reference);
    run_ok(&mut c)
}

/// `skopeo inspect REF` as JSON (Digest, Architecture, Os, Layers, Env, ...).
pub fn skopeo_inspect(reference: &str) -> Value {
    let out = skopeo(&[], reference);
    serde_json::from_slice(&out.stdout).expect("skopeo inspect: JSON")
}

/// `skopeo inspect --config REF`: the image config.
pub fn skopeo_inspect_config(reference: &str) -> Value {
    let out = skopeo(&["--config"], reference);
    serde_json::from_slice(&out.stdout).expect("skopeo inspect --config: JSON")
}

/// `skopeo inspect --raw REF`: the manifest's exact bytes.
pub fn skopeo_raw_manifest(reference: &str) -> Vec<u8> {
    skopeo(&["--raw"], reference).stdout
}

/// `skopeo inspect --format '{{.Digest}}' REF`.
pub fn skopeo_digest(reference: &str) -> String {
    let out = skopeo(&["--format", "{{.Digest}}"], reference);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `umoci unpack --rootless --image LAYOUT:TAG BUNDLE`, as the test user when
/// root (the layout is shared with it; BUNDLE is created and given to it).
/// Returns `BUNDLE/rootfs`.
pub fn umoci_unpack_rootless(layout_dir: &Path, tag: &str, bundle_dir: &Path) -> PathBuf {
    require_tool("umoci");
    share(layout_dir);
    fs::create_dir_all(bundle_dir).expect("create bundle dir");
    chown_to_test_user(bundle_dir);
    if let Some(parent) = bundle_dir.parent() {
        check_traversable(parent);
    }
    let mut c = as_test_user("umoci");
    c.args(["unpack", "--rootless", "--image"]).arg(format!("{}:{tag}", layout_dir.display())).arg(bundle_dir);
    run_ok(&mut c);
    let rootfs = bundle_dir.join("rootfs");
    assert!(rootfs.is_dir(), "umoci made no {}", rootfs.display());
    rootfs
}

// ---------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------

/// `podman` with the global flags of the test setup, run as the test user
/// when root: `--runtime runc --cgroup-manager=cgroupfs [--storage-driver D]`.
pub fn podman() -> Command {
    require_tool("podman");
    require_tool("runc");
    let mut c = as_test_user("podman");
    c.args(["--runtime", "runc", "--cgroup-manager=cgroupfs"]);
    if let Ok(d) = std::env::var(STORAGE_DRIVER_ENV) {
        if !d.is_empty() {
            c.arg("--storage-driver").arg(d);
        }
    }
    c
}

/// For `oci:P[:R]`, `oci-archive:P[:R]`, `docker-archive:P[:R]`, `dir:P`: `P`.
/// (Test paths contain no ':'.)
fn transport_path(reference: &str) -> Option<PathBuf> {
    let (transport, rest) = reference.split_once(':')?;
    match transport {
        "oci" | "oci-archive" | "docker-archive" | "dir" => Some(PathBuf::from(rest.split(':').next().unwrap_or(rest))),
        _ => None,
    }
}

/// Images this process put into podman's storage, with the number of users.
/// Held while pulling/removing so one test cannot remove an image another
/// test has just pulled (reproducible builds give identical image ids).
fn image_refs() -> &'static Mutex<HashMap<String, usize>> {
    static REFS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    REFS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock_refs() -> std::sync::MutexGuard<'static, HashMap<String, usize>> {
    image_refs().lock().unwrap_or_else(|e| e.into_inner())
}

/// Puts `image_ref` (a transport reference) into podman's storage and returns
/// the image id; the caller must [`podman_rmi`] it.
pub fn podman_pull(image_ref: &str) -> String {
    if let Some(p) = transport_path(image_ref) {
        assert!(p.exists(), "podman: {} does not exist", p.display());
        share(&p);
    }
    let mut refs = lock_refs();
    let mut c = podman();
    c.args(["pull", "--quiet", image_ref]);
    let out = run_ok(&mut c);
    let id = stdout_str(&out).lines().last().unwrap_or("").trim().to_string();
    assert!(!id.is_empty(), "podman pull printed no image id\n{}", report(&c, &out));
    *refs.entry(id.clone()).or_default() += 1;
    id
}

/// `podman load -i ARCHIVE` (a docker-archive) and returns the image id
/// (the archive's config digest, without `sha256:`); release it with
/// [`podman_rmi`].
pub fn podman_load(docker_archive: &Path) -> String {
    share(docker_archive);
    let id = docker_archive_image_id(docker_archive);
    let mut refs = lock_refs();
    let mut c = podman();
    c.arg("load").arg("-i").arg(docker_archive);
    let out = run_ok(&mut c);
    let mut check = podman();
    check.args(["image", "inspect", "--format", "{{.Id}}", &id]);
    let check_out = run(&mut check);
    assert!(
        check_out.status.success() && stdout_str(&check_out).trim() == id,
        "after podman load, image {id} (the archive's config digest) is not in storage\n{}\n{}",
        report(&c, &out),
        report(&check, &check_out)
    );
    *refs.entry(id.clone()).or_default() += 1;
    id
}

/// The image id podman gives a docker-archive: the sha256 of its config.
pub fn docker_archive_image_id(archive: &Path) -> String {
    let read_member = |name: &str| -> Option<Vec<u8>> {
        let f = fs::File::open(archive).ok()?;
        let mut ar = tar::Archive::new(f);
        for entry in ar.entries().ok()? {
            let mut entry = entry.ok()?;
            let path = entry.path().ok()?.to_string_lossy().into_owned();
            if path.trim_start_matches("./") == name {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).ok()?;
                return Some(buf);
            }
        }
        None
    };
    let manifest = read_member("manifest.json").unwrap_or_else(|| panic!("{} has no manifest.json", archive.display()));
    let manifest: Value = serde_json::from_slice(&manifest)
        .unwrap_or_else(|e| panic!("{}: manifest.json is not JSON: {e}", archive.display()));
    let config_name =
        manifest[0]["Config"].as_str().unwrap_or_else(|| panic!("{}: manifest.json has no Config", archive.display()));
    let config = read_member(config_name).unwrap_or_else(|| panic!("{}: no member {config_name}", archive.display()));
    hex::encode(Sha256::digest(&config))
}

/// Releases an image from [`podman_pull`]/[`podman_load`]; removes it from
/// podman's storage when no other test of this process uses it.
pub fn podman_rmi(image_id: &str) {
    release_image(image_id, true);
}

fn release_image(image_id: &str, strict: bool) {
    let mut refs = lock_refs();
    let n = refs.entry(image_id.to_string()).or_default();
    *n = n.saturating_sub(1);
    if *n == 0 {
        refs.remove(image_id);
        let mut c = podman();
        c.args(["rmi", "--force", image_id]);
        let out = run(&mut c);
        if strict {
            assert!(out.status.success(), "podman rmi failed\n{}", report(&c, &out));
        }
    }
}

/// Holds an image in podman's storage for the guard's lifetime.
struct Pulled {
    id: String,
    release: bool,
}

impl Pulled {
    fn new(image_ref: &str) -> Self {
        if transport_path(image_ref).is_some() {
            Pulled { id: podman_pull(image_ref), release: true }
        } else {
            Pulled { id: image_ref.to_string(), release: false }
        }
    }
}

impl Drop for Pulled {
    fn drop(&mut self) {
        if self.release {
            // no second panic while a failing test unwinds
            release_image(&self.id, !std::thread::panicking());
        }
    }
}

/// `podman run --rm --network none IMAGE ARGS...` (rootless). `image_ref` is a
/// transport reference (`oci:…`, `oci-archive:…`, `docker-archive:…`; pulled
/// first and removed after) or an image id/name already in storage. Returns
/// the output whatever the exit status.
pub fn podman_run(image_ref: &str, args: &[&str]) -> Output {
    podman_run_with(image_ref, &[], args)
}

/// Like [`podman_run`] with extra `podman run` options (before the image).
pub fn podman_run_with(image_ref: &str, run_opts: &[&str], args: &[&str]) -> Output {
    let image = Pulled::new(image_ref);
    let attempt = || {
        let mut c = podman();
        c.args(["run", "--rm", "--network", "none"]).args(run_opts).arg(&image.id).args(args);
        run(&mut c)
    };
    let out = attempt();
    // Rootless podman 4.3 (Debian 12) now and then loses the whole stdout of a container that
    // exits at once, with exit 0 (seen once in a few hundred runs here). Running the same
    // command again tells that apart from a command that really printed nothing.
    if out.status.success() && out.stdout.is_empty() {
        return attempt();
    }
    out
}

/// [`podman_run`], asserting exit 0 (the message has podman's stderr); returns stdout.
pub fn podman_run_ok(image_ref: &str, args: &[&str]) -> String {
    let out = podman_run(image_ref, args);
    assert!(
        out.status.success(),
        "podman run {image_ref} {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        stdout_str(&out),
        stderr_str(&out)
    );
    stdout_str(&out)
}

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// One HTTP/1.0 GET to 127.0.0.1:PORT; `(status code, body)`.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = ("127.0.0.1", port);
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP header end in {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Removes a container on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "--force", "--time", "0", &self.0]).stdin(Stdio::null()).output();
    }
}

/// Runs `podman run -d --network host IMAGE ARGS...`, waits (at most 20 s)
/// until `http://127.0.0.1:PORT/` answers 200 and returns the body, then stops
/// and removes the container. Panics with the container's logs otherwise.
/// With host networking the port is the one the process listens on (for a
/// Procfile `web` process: the image's PORT).
pub fn podman_serve_http(image_ref: &str, args: &[&str], port: u16) -> String {
    podman_serve_http_path(image_ref, args, port, "/")
}

/// [`podman_serve_http`] for another URL path.
pub fn podman_serve_http_path(image_ref: &str, args: &[&str], port: u16, path: &str) -> String {
    let image = Pulled::new(image_ref);
    let mut c = podman();
    c.args(["run", "-d", "--network", "host"]).arg(&image.id).args(args);
    let out = run_ok(&mut c);
    let container = Container(stdout_str(&out).trim().to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_err;
    loop {
        match http_get(port, path) {
            Ok((200, body)) => return body,
            Ok((code, body)) => last_err = format!("HTTP {code}: {body}"),
            Err(e) => last_err = e,
        }
        let mut state = podman();
        state.args(["container", "inspect", "--format", "{{.State.Status}}", &container.0]);
        let state = stdout_str(&run(&mut state)).trim().to_string();
        if Instant::now() > deadline || state == "exited" || state == "stopped" {
            let mut logs = podman();
            logs.args(["logs", &container.0]);
            let logs = run(&mut logs);
            panic!(
                "container of {image_ref} {args:?} did not serve http://127.0.0.1:{port}{path} \
                 (container {state}, last error: {last_err})\n--- container stdout ---\n{}\
                 \n--- container stderr ---\n{}",
                stdout_str(&logs),
                stderr_str(&logs)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------
// the Debian base image (tests/buildpacks.rs)
// ---------------------------------------------------------------------------

/// Env var with the multi-platform Debian base made by tests/run.sh: an OCI index of the
/// amd64 Debian base and a Debian arm64 (minbase) image, `oci:DIR:bookworm`.
pub const MULTIARCH_BASE_ENV: &str = "IMGFORGE_TEST_MULTIARCH_BASE";

/// `oci:<dir>:bookworm`, the multi-platform Debian base (linux/amd64 and linux/arm64/v8)
/// tests/run.sh makes once and exports as `$IMGFORGE_TEST_MULTIARCH_BASE`. Panics when it
/// is not set: the tests that need it fail rather than skip.
pub fn multiarch_base() -> String {
    env_layout(MULTIARCH_BASE_ENV, "the Debian arm64 base under qemu-user and an index of it and the amd64 base")
}

/// Env var with the Debian base made by tests/run.sh (bookworm minbase with
/// python3 and nodejs, an `oci:DIR:bookworm` reference).
pub const DEBIAN_BASE_ENV: &str = "IMGFORGE_TEST_DEBIAN_BASE";

/// `oci:<dir>:bookworm`, the Debian base tests/run.sh makes (once, cached under
/// `$IMGFORGE_TEST_BASE_DIR`) and exports as `$IMGFORGE_TEST_DEBIAN_BASE`.
/// Panics when it is not set: the tests that need it fail rather than skip.
pub fn debian_base() -> String {
    env_layout(DEBIAN_BASE_ENV, "the Debian base image (bookworm + python3, nodejs)")
}

/// The `oci:` reference in `$var`, checked to be a layout; panics naming tests/run.sh,
/// which makes `what` once and exports it, when it is not set.
fn env_layout(var: &str, what: &str) -> String {
    match std::env::var(var) {
        Ok(r) if !r.is_empty() => {
            if let Some(p) = transport_path(&r) {
                assert!(
                    p.join("index.json").is_file(),
                    "{var}={r}: {} is not an OCI layout; run tests/run.sh",
                    p.display()
                );
            }
            r
        }
        _ => panic!("{var} is not set: run tests/run.sh, which makes {what} once and exports it"),
    }
}
