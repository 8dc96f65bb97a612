//! End-to-end tests for building with Heroku-style buildpacks (`imgforge build
//! APP --base IMAGE -t DEST --buildpack PATH... | --buildpacks-dir DIR`): the real
//! binary builds, rootless podman runs the images. The buildpacks are small sh
//! scripts in testdata/buildpacks/ (see docs/testing.md, "Buildpack tests");
//! the Python and Node samples run on the Debian base tests/run.sh makes.
//!
//! Tests copy buildpacks and apps into their temp dir: buildpacks write into
//! their own directory (the `export` file) and nothing may write to testdata/.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// A copy of testdata/buildpacks/`name` at `<t>/<dest>`, readable by the test user.
fn buildpack_at(t: &TestDir, name: &str, dest: &str) -> PathBuf {
    let src = testdata("buildpacks").join(name);
    assert!(src.join("bin/compile").is_file(), "{} is not a buildpack", src.display());
    let dst = t.join(dest);
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    copy_tree(&src, &dst);
    share(&dst);
    dst
}

/// A copy of testdata/buildpacks/`name` at `<t>/buildpacks/<name>`.
fn buildpack(t: &TestDir, name: &str) -> PathBuf {
    buildpack_at(t, name, &format!("buildpacks/{name}"))
}

/// Writes an app at `<t>/<name>`: `(path, contents)` pairs; files under `bin/`
/// are executable.
fn write_app(t: &TestDir, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = t.mkdir(name);
    for (rel, contents) in files {
        let p = t.write(format!("{name}/{rel}"), contents);
        if rel.starts_with("bin/") {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    share(&dir);
    dir
}

/// A copy of testdata/apps/`name` at `<t>/<name>`.
fn sample_app(t: &TestDir, name: &str) -> PathBuf {
    let dst = t.join(name);
    copy_tree(&testdata("apps").join(name), &dst);
    share(&dst);
    dst
}

/// Changes the app (its `rev.txt`). imgforge may reuse the whole previous image
/// when nothing changed, without compiling; a test that needs compile to run
/// again changes the app first.
fn new_revision(app: &Path, rev: &str) {
    fs::write(app.join("rev.txt"), format!("{rev}\n")).unwrap();
}

/// `imgforge build APP --base BASE` with the test dir's cache; FOO is removed
/// from the environment so that only ENV_DIR can carry it.
fn build_cmd(t: &TestDir, app: &Path, base: &str) -> Command {
    let mut c = t.imgforge();
    c.arg("build").arg(app).arg("--base").arg(base).env_remove("FOO").env_remove("STACK");
    c
}

/// Adds `--buildpack PATH` for each buildpack, in order.
fn with_buildpacks<'a>(c: &'a mut Command, bps: &[&Path]) -> &'a mut Command {
    for bp in bps {
        c.arg("--buildpack").arg(bp);
    }
    c
}

/// `oci:<t>/out:<tag>`.
fn out_ref(t: &TestDir, tag: &str) -> String {
    format!("oci:{}:{tag}", t.join("out").display())
}

/// Runs a build that must succeed; returns (digest, stderr).
fn build(c: &mut Command) -> (String, String) {
    let out = run(c);
    assert!(out.status.success(), "imgforge build failed\n{}", report(c, &out));
    let d = parse_digest_line(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", report(c, &out)));
    (d, stderr_str(&out))
}

/// Runs a build that must fail with exit 1 and print nothing on stdout.
fn build_fails(c: &mut Command) -> Output {
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "expected exit 1\n{}", report(c, &out));
    assert!(out.stdout.is_empty(), "a failed build printed on stdout\n{}", report(c, &out));
    out
}

fn assert_has(haystack: &str, needle: &str, what: &str) {
    assert!(haystack.contains(needle), "{what}: expected {needle:?} in:\n{haystack}");
}

fn assert_lacks(haystack: &str, needle: &str, what: &str) {
    assert!(!haystack.contains(needle), "{what}: did not expect {needle:?} in:\n{haystack}");
}

/// The image `dest` (built as `digest`, with `stderr`) has the `failing` or `sleeper`
/// buildpack's output and the app's revision 2.
fn assert_image_files(dest: &str, digest: &str, stderr: &str) {
    let out = podman_run_ok(dest, &["cat", "/app/compiled.txt", "/app/rev.txt"]);
    let layout = dest.strip_prefix("oci:").and_then(|r| r.rsplit_once(':')).map(|(d, _)| PathBuf::from(d)).unwrap();
    let tags = index_tags(&layout);
    assert_eq!(out, "compiled\n2\n", "files in {dest} (built as {digest}; index.json: {tags:?}); build log:\n{stderr}");
}

/// The image config's `config.Env`.
fn image_env(reference: &str) -> Vec<String> {
    let cfg = skopeo_inspect_config(reference);
    cfg["config"]["Env"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Layer digests of a manifest.
fn layer_digests(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("manifest has no layers: {manifest:#}"))
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Layer digests of the committed busybox fixture.
fn busybox_layers() -> Vec<String> {
    let layout = busybox_layout();
    layer_digests(&serde_json::from_slice(&read_blob(&layout, &index_tags(&layout)[0].1)).unwrap())
}

/// `imgforge: Layer …` lines of a build's stderr.
fn layer_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("Layer ")).collect()
}

/// An image pulled into podman's storage once, for several runs (the Debian
/// images are big); removed on drop.
struct Pulled(String);

impl Pulled {
    fn new(reference: &str) -> Self {
        Pulled(podman_pull(reference))
    }
    fn id(&self) -> &str {
        &self.0
    }
}

impl Drop for Pulled {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            podman_rmi(&self.0);
        }
    }
}

/// A busybox copy whose config carries the label `io.buildpacks.stack.id=STACK`.
fn busybox_with_stack_label(t: &TestDir, stack: &str) -> String {
    let dir = t.join("busybox-stack");
    copy_tree(&busybox_layout(), &dir);
    run_ok(
        Command::new("umoci")
            .args(["config", "--image"])
            .arg(format!("{}:latest", dir.display()))
            .arg(format!("--config.label=io.buildpacks.stack.id={stack}")),
    );
    share(&dir);
    format!("oci:{}:latest", dir.display())
}

/// A child process killed (SIGKILL) and reaped on drop, for a test that panics
/// before it kills it itself.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGKILLs process `pid` (one the test learned from a buildpack it started)
/// on drop, if it is still a `sleep`.
struct KillPid(Option<i32>);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

const APP_PROCFILE: &str = "web: echo \"web says $GREETING $FROM_PROFILE\"\nworker: echo worker-ran\n";

// ---------------------------------------------------------------------------
// detect
// ---------------------------------------------------------------------------

#[test]
fn buildpacks_dir_runs_the_first_buildpack_that_detects_in_name_order() {
    let t = TestDir::new();
    let dir = t.mkdir("bps");
    buildpack_at(&t, "nomatch", "bps/1-nomatch");
    buildpack_at(&t, "logger", "bps/2-logger");
    buildpack_at(&t, "exporter", "bps/3-exporter");
    let app = write_app(&t, "app", &[("Procfile", APP_PROCFILE), ("hello.txt", "hi\n")]);

    let dest = out_ref(&t, "v1");
    let (_, stderr) =
        build(build_cmd(&t, &app, &t.busybox_copy()).arg("--buildpacks-dir").arg(&dir).arg("-t").arg(&dest));
    assert!(
        stderr.lines().any(|l| l.contains("2-logger") && l.contains("Logger")),
        "stderr should say that 2-logger detected Logger:\n{stderr}"
    );
    assert_has(&stderr, "-----> Logger compile", "the detected buildpack compiles");
    assert_lacks(&stderr, "NOMATCH COMPILE RAN", "a buildpack whose detect failed");
    assert_lacks(&stderr, "Exporter wrote", "only the first buildpack that detects runs");
    assert!(!t.join("bps/3-exporter/export").exists(), "3-exporter's compile ran");

    // with buildpacks the app lives at /app
    let cfg = skopeo_inspect_config(&dest);
    assert_eq!(cfg["config"]["WorkingDir"], "/app", "{cfg:#}");
    assert_eq!(podman_run_ok(&dest, &["cat", "/app/hello.txt"]), "hi\n");
}

#[test]
fn no_buildpack_detects_fails_listing_each_one_tried() {
    let t = TestDir::new();
    let dir = t.mkdir("bps");
    buildpack_at(&t, "nomatch", "bps/first-nomatch");
    buildpack_at(&t, "nomatch", "bps/second-nomatch");
    let app = write_app(&t, "app", &[("Procfile", APP_PROCFILE)]);
    let layout = t.join("out");
    let out = build_fails(
        build_cmd(&t, &app, &t.busybox_copy()).arg("--buildpacks-dir").arg(&dir).arg("-t").arg(out_ref(&t, "v1")),
    );
    let stderr = stderr_str(&out);
    for name in ["first-nomatch", "second-nomatch"] {
        assert_has(&stderr, name, "the error lists every buildpack tried");
    }
    assert_lacks(&stderr, "NOMATCH COMPILE RAN", "no compile without detect");
    assert!(!layout.join("index.json").exists(), "a failed build wrote {}", layout.display());
}

// ---------------------------------------------------------------------------
// compile: cache, env dir, export, hooks, .slugignore
// ---------------------------------------------------------------------------

#[test]
fn cache_dir_persists_between_builds_and_clear_cache_empties_it() {
    let t = TestDir::new();
    let base = t.busybox_copy();
    let logger = buildpack(&t, "logger");
    let app = write_app(&t, "app", &[("Procfile", APP_PROCFILE), ("hello.txt", "hi\n")]);
    let dest = out_ref(&t, "v1");
    let b = |app: &Path, bp: &Path, extra: &[&str]| {
        build(with_buildpacks(&mut build_cmd(&t, app, &base), &[bp]).args(extra).arg("-t").arg(&dest))
    };

    let (_, e1) = b(&app, &logger, &[]);
    assert_has(&e1, "cache miss", "first build");
    new_revision(&app, "2");
    let (d2, e2) = b(&app, &logger, &[]);
    assert_has(&e2, "cache hit: 1 earlier build(s)", "second build of the same app and buildpack");
    // the image still works: profile.d puts the buildpack's tool on PATH
    assert_eq!(podman_run_ok(&dest, &["logger-tool"]).trim(), "logger-tool ran in /app");
    assert_eq!(podman_run_ok(&dest, &["cat", "rev.txt"]).trim(), "2");

    let (d3, e3) = b(&app, &logger, &["--clear-cache"]);
    assert_has(&e3, "cache miss", "--clear-cache");
    assert_eq!(d2, d3, "the cache must not change what the build makes");
    new_revision(&app, "3");
    let (_, e4) = b(&app, &logger, &[]);
    assert_has(&e4, "cache hit: 1 earlier build(s)", "the build after --clear-cache");

    // the cache belongs to one app and one buildpack
    let other_app = write_app(&t, "other-app", &[("Procfile", APP_PROCFILE), ("hello.txt", "another app\n")]);
    let (_, e5) = b(&other_app, &logger, &[]);
    assert_has(&e5, "cache miss", "another app");
    let other_bp = buildpack_at(&t, "logger", "buildpacks/logger-two");
    new_revision(&app, "4");
    let (_, e6) = b(&app, &other_bp, &[]);
    assert_has(&e6, "cache miss", "another buildpack");
    new_revision(&app, "5");
    let (_, e7) = b(&app, &logger, &[]);
    assert_has(&e7, "cache hit: 2 earlier build(s)", "the first app and buildpack again");
}

#[test]
fn env_vars_reach_compile_through_env_dir_only_and_land_in_the_image() {
    let t = TestDir::new();
    let base = busybox_with_stack_label(&t, "imgforge-test-stack");
    let logger = buildpack(&t, "logger");
    let app = write_app(&t, "app", &[("Procfile", APP_PROCFILE)]);
    let dest = out_ref(&t, "v1");

    let (_, stderr) =
        build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&logger]).args(["--env", "FOO=bar", "-t", &dest]));
    assert_has(&stderr, "args: 3", "bin/compile BUILD_DIR CACHE_DIR ENV_DIR");
    assert_has(&stderr, "env dir: FOO=bar", "ENV_DIR has a file per --env var");
    assert_has(&stderr, "compile env FOO=<unset>", "--env vars are not in compile's environment");
    assert_has(&stderr, "STACK=imgforge-test-stack", "STACK from the base's io.buildpacks.stack.id label");
    assert_has(&stderr, "HOME is set", "compile's environment");
    assert_has(&stderr, "PATH is set", "compile's environment");

    assert!(image_env(&dest).iter().any(|e| e == "FOO=bar"), "image env: {:?}", image_env(&dest));
    assert_eq!(podman_run_ok(&dest, &["sh", "-c", "echo \"FOO=$FOO\""]).trim(), "FOO=bar");

    let (_, stderr) = build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&logger]).args([
        "--stack",
        "heroku-22",
        "-t",
        &out_ref(&t, "v2"),
    ]));
    assert_has(&stderr, "STACK=heroku-22", "--stack wins over the base's label");
}

#[test]
fn export_file_of_one_buildpack_is_sourced_before_the_next_compile() {
    let t = TestDir::new();
    let exporter = buildpack(&t, "exporter");
    let importer = buildpack(&t, "importer");
    let app = write_app(&t, "app", &[("Procfile", APP_PROCFILE)]);
    let dest = out_ref(&t, "v1");
    let (_, stderr) = build(
        with_buildpacks(&mut build_cmd(&t, &app, &t.busybox_copy()), &[&exporter, &importer]).arg("-t").arg(&dest),
    );
    assert_has(&stderr, "Importer sees FROM_EXPORTER=exported by buildpack 1", "buildpack 2's compile");
    assert_eq!(podman_run_ok(&dest, &["cat", "/app/imported.txt"]).trim(), "exported by buildpack 1");
    let env = image_env(&dest);
    assert!(!env.iter().any(|e| e.starts_with("FROM_EXPORTER=")), "export is for the build, not the image: {env:?}");
}

#[test]
fn pre_and_post_compile_hooks_run_around_compile_in_both_spellings() {
    let t = TestDir::new();
    let base = t.busybox_copy();
    let logger = buildpack(&t, "logger");
    let hook = |name: &str| {
        format!("#!/bin/sh\necho \"-----> {name} hook\"\ncd \"$(dirname \"$0\")/..\" && echo {name} >>order.log\n")
    };
    for (i, (pre, post)) in [("pre_compile", "post_compile"), ("pre-compile", "post-compile")].into_iter().enumerate() {
        let app = write_app(
            &t,
            &format!("app{i}"),
            &[("Procfile", APP_PROCFILE), (&format!("bin/{pre}"), &hook(pre)), (&format!("bin/{post}"), &hook(post))],
        );
        let dest = out_ref(&t, &format!("v{i}"));
        let (_, stderr) = build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&logger]).arg("-t").arg(&dest));
        let (a, b, c) = (
            stderr.find(&format!("-----> {pre} hook")),
            stderr.find("-----> Logger compile"),
            stderr.find(&format!("-----> {post} hook")),
        );
        assert!(
            a.is_some() && b.is_some() && c.is_some() && a < b && b < c,
            "{pre}, compile, {post} in order:\n{stderr}"
        );
        assert_eq!(
            podman_run_ok(&dest, &["cat", "/app/order.log"]),
            format!("{pre}\ncompile\n{post}\n"),
            "bin/{pre} runs before compile and bin/{post} after"
        );
    }
}

#[test]
fn slugignore_profile_d_and_processes_by_name() {
    let t = TestDir::new();
    let logger = buildpack(&t, "logger");
    let app = write_app(
        &t,
        "app",
        &[
            ("Procfile", APP_PROCFILE),
            (".slugignore", "secret.txt\n*.tmp\ndocs/\n"),
            ("secret.txt", "do not ship\n"),
            ("notes.tmp", "scratch\n"),
            ("docs/readme.md", "docs\n"),
            ("keep.txt", "kept\n"),
        ],
    );
    let dest = out_ref(&t, "v1");
    let (_, stderr) = build(
        with_buildpacks(&mut build_cmd(&t, &app, &t.busybox_copy()), &[&logger])
            .args(["--env", "GREETING=hi", "-t"])
            .arg(&dest),
    );
    for f in ["secret.txt", "notes.tmp", "docs"] {
        assert_has(&stderr, &format!("does not see {f}"), ".slugignore applies before compile");
    }

    // .slugignore'd files are not in the image; the buildpack's output is
    let listing = podman_run_ok(&dest, &["sh", "-c", "pwd; ls -A"]);
    let mut lines = listing.lines();
    assert_eq!(lines.next(), Some("/app"), "processes start in /app: {listing}");
    let files: Vec<&str> = lines.collect();
    for f in ["Procfile", "keep.txt", ".profile.d", ".logger", "order.log"] {
        assert!(files.contains(&f), "{f} missing from /app: {files:?}");
    }
    for f in ["secret.txt", "notes.tmp", "docs"] {
        assert!(!files.contains(&f), "{f} is in .slugignore but in the image: {files:?}");
    }

    // .profile.d is sourced before any process or command
    assert_eq!(podman_run_ok(&dest, &["sh", "-c", "echo $FROM_PROFILE"]).trim(), "profile-ok");
    // processes by name: web by default, worker by name, anything else as a command
    assert_eq!(podman_run_ok(&dest, &[]).trim(), "web says hi profile-ok");
    assert_eq!(podman_run_ok(&dest, &["web"]).trim(), "web says hi profile-ok");
    assert_eq!(podman_run_ok(&dest, &["worker"]).trim(), "worker-ran");
    assert_eq!(podman_run_ok(&dest, &["echo", "an", "arbitrary", "command"]).trim(), "an arbitrary command");
    assert_eq!(podman_run_ok(&dest, &["logger-tool"]).trim(), "logger-tool ran in /app");
}

// ---------------------------------------------------------------------------
// release
// ---------------------------------------------------------------------------

#[test]
fn release_config_vars_become_env_and_default_process_types_give_processes() {
    let t = TestDir::new();
    let base = t.busybox_copy();
    let releaser = buildpack(&t, "releaser");

    // no Procfile: default_process_types
    let app = write_app(&t, "app", &[("hello.txt", "hi\n")]);
    let dest = out_ref(&t, "v1");
    build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&releaser]).args([
        "--env",
        "OVERRIDDEN=from-user",
        "-t",
        &dest,
    ]));
    let env = image_env(&dest);
    assert!(env.iter().any(|e| e == "RELEASE_VAR=from-release"), "config_vars land in the image env: {env:?}");
    assert!(env.iter().any(|e| e == "OVERRIDDEN=from-user"), "--env wins over config_vars: {env:?}");
    assert!(!env.iter().any(|e| e == "OVERRIDDEN=from-release"), "--env wins over config_vars: {env:?}");
    assert_eq!(podman_run_ok(&dest, &[]).trim(), "web from release RELEASE_VAR=from-release OVERRIDDEN=from-user");
    assert_eq!(podman_run_ok(&dest, &["worker"]).trim(), "worker from release");

    // a Procfile wins over default_process_types
    let app = write_app(&t, "app-procfile", &[("Procfile", "web: echo web from procfile\n")]);
    let dest = out_ref(&t, "v2");
    build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&releaser]).arg("-t").arg(&dest));
    assert_eq!(podman_run_ok(&dest, &[]).trim(), "web from procfile");
    assert!(image_env(&dest).iter().any(|e| e == "RELEASE_VAR=from-release"), "{:?}", image_env(&dest));
}

// ---------------------------------------------------------------------------
// failures leave things as they were
// ---------------------------------------------------------------------------

#[test]
fn failing_compile_exits_1_and_leaves_destination_and_cache_unchanged() {
    let t = TestDir::new();
    let base = t.busybox_copy();
    let failing = buildpack(&t, "failing");
    let app = write_app(&t, "app", &[("Procfile", APP_PROCFILE)]);
    let dest = out_ref(&t, "v1");
    let index = t.join("out/index.json");

    let (d1, e1) = build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&failing]).arg("-t").arg(&dest));
    assert_has(&e1, "cache state is empty, junk: no", "first build");
    let index_before = fs::read(&index).unwrap();

    fs::write(app.join("fail"), "").unwrap();
    let out = build_fails(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&failing]).arg("-t").arg(&dest));
    assert_has(&stderr_str(&out), "failing on purpose", "the buildpack's output is shown");
    assert_eq!(fs::read(&index).unwrap(), index_before, "a failed build changed {}", index.display());

    // fixed: the same app as the first build gives its image again
    fs::remove_file(app.join("fail")).unwrap();
    let (d3, _) = build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&failing]).arg("-t").arg(&dest));
    assert_eq!(d1, d3, "same app, same image");
    // and compile sees the cache the first build left, not the failed one's
    new_revision(&app, "2");
    let (d4, e4) = build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&failing]).arg("-t").arg(&dest));
    assert_has(&e4, "cache state is good, junk: no", "the cache after a failed compile is the one before it");
    assert_image_files(&dest, &d4, &e4);
}

#[test]
fn build_killed_mid_compile_leaves_destination_and_cache_unchanged() {
    let t = TestDir::new();
    let base = t.busybox_copy();
    let sleeper = buildpack(&t, "sleeper");
    let app = write_app(&t, "app", &[("Procfile", APP_PROCFILE)]);
    let dest = out_ref(&t, "v1");
    let index = t.join("out/index.json");

    let (d1, e1) = build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&sleeper]).arg("-t").arg(&dest));
    assert_has(&e1, "cache state is empty, junk: no", "first build");
    let index_before = fs::read(&index).unwrap();

    // the buildpack writes its pid to the marker, then sleeps
    let marker = t.join("compile-started");
    fs::write(app.join("sleep"), marker.to_str().unwrap()).unwrap();
    let log = t.join("killed-build.log");
    let mut cmd = build_cmd(&t, &app, &base);
    // On the host: the buildpack writes its pid to a host path the test watches (in the
    // sandbox neither the path nor the pid would mean anything here).
    cmd.args(["--isolation", "host"]);
    with_buildpacks(&mut cmd, &[&sleeper]).arg("-t").arg(&dest);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap());
    let mut child = KillOnDrop(Some(cmd.spawn().expect("spawn imgforge")));
    let mut sleeper_pid = KillPid(None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        if let Ok(Some(status)) = child.0.as_mut().unwrap().try_wait() {
            panic!(
                "imgforge ended ({status}) before the buildpack started:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "compile did not start in 60 s:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sleeper_pid.0 = fs::read_to_string(&marker).unwrap().trim().parse().ok();
    let mut c = child.0.take().unwrap();
    c.kill().expect("kill -9 imgforge");
    c.wait().unwrap();
    drop(sleeper_pid);

    assert_eq!(fs::read(&index).unwrap(), index_before, "a killed build changed {}", index.display());

    // the next build succeeds: the same app as the first build gives its image again
    fs::remove_file(app.join("sleep")).unwrap();
    let (d3, _) = build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&sleeper]).arg("-t").arg(&dest));
    assert_eq!(d1, d3, "same app, same image");
    // and compile sees the cache the first build left, not the killed one's
    new_revision(&app, "2");
    let (d4, e4) = build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&sleeper]).arg("-t").arg(&dest));
    assert_has(&e4, "cache state is good, junk: no", "the cache after a killed compile is the one before it");
    assert_image_files(&dest, &d4, &e4);
}

// ---------------------------------------------------------------------------
// layers
// ---------------------------------------------------------------------------

#[test]
fn changing_an_app_file_rebuilds_only_the_app_layer() {
    let t = TestDir::new();
    let base = t.busybox_copy();
    let logger = buildpack(&t, "logger");
    let app = write_app(&t, "app", &[("Procfile", APP_PROCFILE), ("app.txt", "version 1\n"), ("other.txt", "same\n")]);
    let layout = t.join("out");
    let b = |tag: &str| {
        build(with_buildpacks(&mut build_cmd(&t, &app, &base), &[&logger]).arg("-v").arg("-t").arg(out_ref(&t, tag)))
    };

    let (d1, _) = b("v1");
    let (d2, e2) = b("v2");
    assert_eq!(d1, d2, "a no-op rebuild gives the identical digest");
    assert!(!e2.contains("rebuilt because"), "nothing changed, nothing to rebuild:\n{e2}");

    fs::write(app.join("app.txt"), "version 2\n").unwrap();
    let (d3, e3) = b("v3");
    assert_ne!(d1, d3);

    let (l1, l3) = (layer_digests(&layout_manifest(&layout, "v1")), layer_digests(&layout_manifest(&layout, "v3")));
    let base_layers = busybox_layers();
    let n = base_layers.len();
    assert_eq!(l1.len(), l3.len(), "same number of layers: {l1:#?} {l3:#?}");
    assert_eq!(l1[..n], base_layers[..], "base layers are copied as they are");
    assert_eq!(l3[..n], base_layers[..], "base layers are copied as they are");
    assert!(l1.len() >= n + 2, "expected an app layer and at least one buildpack/runtime layer: {l1:#?}");
    let changed: Vec<usize> = (n..l1.len()).filter(|&i| l1[i] != l3[i]).collect();
    assert_eq!(changed.len(), 1, "exactly one layer (the app's) should change: {l1:#?} vs {l3:#?}");

    let lines = layer_lines(&e3);
    let rebuilt: Vec<&&str> = lines.iter().filter(|l| l.contains("rebuilt because")).collect();
    assert_eq!(rebuilt.len(), 1, "-v: exactly one layer rebuilt:\n{e3}");
    assert!(rebuilt[0].contains("app.txt changed"), "-v names the changed file: {}", rebuilt[0]);
    assert!(
        rebuilt[0].contains(&l3[changed[0]]),
        "the rebuilt layer is the one whose digest changed: {} vs {}",
        rebuilt[0],
        l3[changed[0]]
    );
    // the buildpack's (runtime) layers: unchanged, and -v says they were reused
    // (a layer imgforge writes itself, like the launcher, may say "written")
    let unchanged: Vec<&String> = l3[n..].iter().filter(|d| **d != l3[changed[0]]).collect();
    assert!(
        lines.iter().any(|l| l.contains("reused") && unchanged.iter().any(|d| l.contains(d.as_str()))),
        "-v: the runtime layers should say reused:\n{e3}"
    );
}

// ---------------------------------------------------------------------------
// the Python and Node samples on Debian
// ---------------------------------------------------------------------------

/// `--buildpacks-dir` with the node and python sample buildpacks.
fn sample_buildpacks_dir(t: &TestDir) -> PathBuf {
    let dir = t.mkdir("bps");
    buildpack_at(t, "node", "bps/node");
    buildpack_at(t, "python", "bps/python");
    dir
}

/// Layer digests of `oci:DIR:TAG`.
fn oci_layers(reference: &str) -> Vec<String> {
    let (dir, tag) = reference.strip_prefix("oci:").and_then(|r| r.rsplit_once(':')).expect("oci:DIR:TAG");
    layer_digests(&layout_manifest(Path::new(dir), tag))
}

/// Two builds on `base` whose apps differ in one source file: the base's layers
/// are copied as they are and, of the added layers, exactly one (the app's)
/// differs; the buildpack's layers are the same.
fn assert_only_the_app_layer_differs(base: &str, before: &str, after: &str) {
    let (b, l1, l2) = (oci_layers(base), oci_layers(before), oci_layers(after));
    let n = b.len();
    assert_eq!(l1.len(), l2.len(), "same number of layers: {l1:#?} {l2:#?}");
    assert_eq!(l1[..n], b[..], "base layers are copied as they are");
    assert_eq!(l2[..n], b[..], "base layers are copied as they are");
    assert!(l1.len() >= n + 2, "expected an app layer and at least one buildpack/runtime layer: {l1:#?}");
    let changed = (n..l1.len()).filter(|&i| l1[i] != l2[i]).count();
    assert_eq!(changed, 1, "exactly one layer (the app's) should change: {l1:#?} vs {l2:#?}");
}

/// Appends a line to an app file.
fn append(path: &Path, line: &str) {
    let mut text = fs::read_to_string(path).unwrap();
    text.push_str(line);
    fs::write(path, text).unwrap();
}

/// Builds a sample app with the sample buildpacks dir, PORT set, to `<t>/<tag>`: ((digest, stderr), dest).
fn build_sample(t: &TestDir, app: &Path, base: &str, dir: &Path, port: u16, tag: &str) -> ((String, String), String) {
    let dest = out_ref(t, tag);
    let mut c = build_cmd(t, app, base);
    c.arg("--buildpacks-dir").arg(dir).args(["--env", &format!("PORT={port}"), "-t", &dest]);
    (build(&mut c), dest)
}

#[test]
fn python_sample_installs_from_its_wheelhouse_and_serves_http_on_debian() {
    let base = debian_base();
    let t = TestDir::new();
    let dir = sample_buildpacks_dir(&t);
    let app = sample_app(&t, "python");
    let port = free_port();
    let b = |tag: &str| build_sample(&t, &app, &base, &dir, port, tag);

    let ((_, e1), v1) = b("v1");
    assert!(e1.lines().any(|l| l.contains("python") && l.contains("Python")), "python detects:\n{e1}");
    assert_has(&e1, "-----> Installing requirements", "first build");
    assert_has(&e1, "Successfully installed greeting-1.0", "pip's output is shown");

    // an app change: compile again, requirements from the cache, only the app layer changes
    append(&app.join("app.py"), "# edited\n");
    let ((d2, e2), v2) = b("v2");
    assert_has(&e2, "-----> Requirements unchanged: using the cache", "second build");
    assert_lacks(&e2, "Successfully installed", "second build");
    assert_only_the_app_layer_differs(&base, &v1, &v2);

    let image = Pulled::new(&v2);
    let body = podman_serve_http(image.id(), &[], port);
    assert_has(&body, "imgforge-python-sample-4b1d", "app.py answers");
    assert_has(&body, "greeting-wheel-1.0-d41c", "the greeting package from the wheelhouse");
    assert_has(&body, "python=/usr/bin/python3", "the base image's python runs it");
    assert_has(&body, "greeting-from=/app/.heroku/python/greeting", "installed into the slug");
    assert_eq!(
        podman_run_ok(image.id(), &["worker"]).trim(),
        "worker: hello worker from greeting 1.0 (greeting-wheel-1.0-d41c)"
    );
    let files = podman_run_ok(image.id(), &["ls", "-A", "/app"]);
    assert!(files.lines().any(|f| f == "app.py"), "/app: {files}");
    assert!(!files.lines().any(|f| f == "vendor"), ".slugignore'd vendor/ is in the image: {files}");
    drop(image);

    let ((d3, _), _) = b("v2");
    assert_eq!(d2, d3, "a no-op rebuild gives the same image");
}

#[test]
fn node_sample_installs_vendored_dependencies_and_serves_http_on_debian() {
    let base = debian_base();
    let t = TestDir::new();
    let dir = sample_buildpacks_dir(&t);
    let app = sample_app(&t, "node");
    let port = free_port();
    let b = |tag: &str| build_sample(&t, &app, &base, &dir, port, tag);

    let ((_, e1), v1) = b("v1");
    assert!(e1.lines().any(|l| l.contains("node") && l.contains("Node.js")), "node detects:\n{e1}");
    assert_has(&e1, "-----> Installing dependencies", "first build");
    assert_has(&e1, "added imgforge-greeting@1.0.0", "first build");

    append(&app.join("server.js"), "// edited\n");
    let ((d2, e2), v2) = b("v2");
    assert_has(&e2, "-----> Dependencies unchanged: using the cache", "second build");
    assert_only_the_app_layer_differs(&base, &v1, &v2);

    // no Procfile: web comes from the buildpack's default_process_types
    let image = Pulled::new(&v2);
    let body = podman_serve_http(image.id(), &[], port);
    assert_has(&body, "imgforge-node-sample-9c2e", "server.js answers");
    assert_has(&body, "imgforge-greeting-npm-1.0.0-77ab", "the vendored dependency");
    assert_has(&body, "node=/usr/bin/node", "the base image's node runs it");
    assert_has(&body, "greeting-from=/app/node_modules/imgforge-greeting/index.js", "installed into node_modules");
    assert_has(&body, "NODE_ENV=production", ".profile.d/node.sh was sourced");
    drop(image);

    let ((d3, _), _) = b("v2");
    assert_eq!(d2, d3, "a no-op rebuild gives the same image");
}

/// A buildpack whose compile prints what would retitle the window (OSC 0/2), write the
/// clipboard (OSC 52), move the cursor, erase, overwrite a line (`\r`), back up, ring the
/// bell, open a C1 CSI, and a colour. Returns (buildpack, app).
fn hostile_printer(t: &TestDir) -> (PathBuf, PathBuf) {
    let bp = t.join("buildpacks/hostile");
    fs::create_dir_all(bp.join("bin")).unwrap();
    let scripts = [
        ("detect", "#!/bin/sh\necho Hostile\n"),
        (
            "compile",
            concat!(
                "#!/bin/sh\n",
                "printf 'osc0 \\033]0;pwned-title\\007 osc2 \\033]2;pwned2\\033\\\\ end\\n'\n",
                "printf 'clip \\033]52;c;cm0gLXJmIH4=\\007 end\\n'\n",
                "printf 'move \\033[2A\\033[10;1H erase \\033[2K\\033[J end\\n'\n",
                "printf 'fake\\rimgforge: all good\\n'\n",
                "printf 'back\\010\\010\\010 bell\\007 c1 \\302\\23331m end\\n'\n",
                "printf 'bad utf8 \\377\\376 end\\n'\n",
                "printf '\\033[1;32mgreen-text\\033[0m\\n'\n",
            ),
        ),
    ];
    for (name, body) in scripts {
        let p = bp.join("bin").join(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    share(&bp);
    let app = write_app(t, "app", &[("Procfile", APP_PROCFILE), ("hello.txt", "hi\n")]);
    (bp, app)
}

#[test]
fn buildpack_output_cannot_drive_the_terminal() {
    let t = TestDir::new();
    let (bp, app) = hostile_printer(&t);
    let base = t.busybox_copy();
    let mut c = build_cmd(&t, &app, &base);
    with_buildpacks(&mut c, &[&bp]).arg("-t").arg(out_ref(&t, "plain"));
    let out = run(&mut c);
    assert!(out.status.success(), "{}", report(&c, &out));
    // Plain output (a pipe, as in CI): no control character at all but newlines.
    let raw = &out.stderr;
    for (b, what) in [(0x1bu8, "ESC"), (b'\r', "CR"), (0x07, "BEL"), (0x08, "BS"), (0x9b, "C1 CSI (UTF-8 c2 9b)")] {
        assert!(!raw.contains(&b), "raw {what} on stderr\n{}", report(&c, &out));
    }
    let err = stderr_str(&out);
    for shown in [
        "osc0 \\x1b]0;pwned-title\\x07 osc2 \\x1b]2;pwned2\\x1b\\ end",
        "clip \\x1b]52;c;cm0gLXJmIH4=\\x07 end",
        "move \\x1b[2A\\x1b[10;1H erase \\x1b[2K\\x1b[J end",
        "fake\\rimgforge: all good",
        "back\\x08\\x08\\x08 bell\\x07 c1 \\u{9b}31m end",
        "bad utf8 \u{fffd}\u{fffd} end",
        "\\x1b[1;32mgreen-text\\x1b[0m",
    ] {
        assert_has(&err, shown, "plain output shows the sequence escaped");
    }

    // On a terminal (a pseudo-terminal made by python3's pty): colours pass, nothing else.
    new_revision(&app, "2");
    let harness = concat!(
        "import os, pty, sys\n",
        "pid, fd = pty.fork()\n",
        "if pid == 0:\n    os.execv(sys.argv[1], sys.argv[1:])\n",
        "out = b''\n",
        "while True:\n",
        "    try:\n        d = os.read(fd, 65536)\n",
        "    except OSError:\n        break\n",
        "    if not d:\n        break\n",
        "    out += d\n",
        "_, st = os.waitpid(pid, 0)\n",
        "sys.stdout.buffer.write(out)\n",
        "sys.exit(os.waitstatus_to_exitcode(st))\n",
    );
    let mut tty = Command::new("python3");
    tty.arg("-c").arg(harness).arg(c.get_program()).args(c.get_args());
    tty.arg("-t").arg(out_ref(&t, "tty"));
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => tty.env(k, v),
            None => tty.env_remove(k),
        };
    }
    let out = run(&mut tty);
    assert!(out.status.success(), "{}", report(&tty, &out));
    let screen = &out.stdout;
    let has = |needle: &[u8]| screen.windows(needle.len()).any(|w| w == needle);
    for raw in [&b"\x1b]"[..], b"\x1b[10;1H", b"\x1b[J", b"\x07", b"\x08", b"\xc2\x9b", b"fake\rimgforge"] {
        assert!(!has(raw), "raw {:?} reached the terminal\n{}", String::from_utf8_lossy(raw), report(&tty, &out));
    }
    assert!(has(b"\x1b[1;32mgreen-text\x1b[0m"), "colours are kept on a terminal\n{}", report(&tty, &out));
    assert!(has(b"\\x1b]52;c;cm0gLXJmIH4=\\x07"), "{}", report(&tty, &out));
}

#[test]
fn a_release_process_type_no_file_system_can_hold_fails_the_build() {
    let t = TestDir::new();
    let bp = buildpack(&t, "releaser");
    let long = "p".repeat(300);
    let release = format!("#!/bin/sh\nprintf 'default_process_types:\\n  {long}: echo hi\\n'\n");
    fs::write(bp.join("bin/release"), release).unwrap();
    let app = write_app(&t, "app", &[("hello.txt", "hi\n")]);
    let out_dir = t.join("out");
    let mut c = build_cmd(&t, &app, &t.busybox_copy());
    with_buildpacks(&mut c, &[&bp]).arg("-t").arg(out_ref(&t, "x"));
    let out = build_fails(&mut c);
    let err = stderr_str(&out);
    for needed in ["releaser", "default_process_types", "(300 bytes)", "names are 1 to 63"] {
        assert_has(&err, needed, "the error names the buildpack, the source and the rule");
    }
    assert!(!out_dir.join("index.json").exists(), "an image was written\n{}", report(&c, &out));
}

#[test]
fn clear_cache_frees_a_huge_kept_cache_even_when_the_build_then_fails() {
    let t = TestDir::new();
    let bp = t.join("buildpacks/filler");
    fs::create_dir_all(bp.join("bin")).unwrap();
    let compile = concat!(
        "#!/bin/sh\n",
        "echo \"kept: $(ls \"$2\" | tr '\\n' ' ')\"\n",
        "if [ -f \"$1/fail\" ]; then echo 'No space left on device' >&2; exit 1; fi\n",
        "head -c 8000000 /dev/zero >\"$2/huge\"\n",
    );
    for (name, body) in [("detect", "#!/bin/sh\necho Filler\n"), ("compile", compile)] {
        fs::write(bp.join("bin").join(name), body).unwrap();
        fs::set_permissions(bp.join("bin").join(name), fs::Permissions::from_mode(0o755)).unwrap();
    }
    share(&bp);
    let app = write_app(&t, "app", &[("hello.txt", "hi\n")]);
    let kept_bytes = || -> u64 {
        let root = t.cache_dir().join("buildpack-cache-v1");
        let out = run_ok(Command::new("du").args(["-s", "-b"]).arg(&root));
        stdout_str(&out).split_whitespace().next().unwrap().parse().unwrap()
    };
    let b = |extra: &[&str]| {
        let mut c = build_cmd(&t, &app, &t.busybox_copy());
        with_buildpacks(&mut c, &[&bp]).args(extra).arg("-t").arg(out_ref(&t, "x"));
        c
    };
    build(&mut b(&[]));
    assert!(kept_bytes() > 8_000_000, "the first build keeps its cache");
    // The disk is full because of it: the build fails. --clear-cache must free it anyway,
    // not copy it first, and not wait for a successful build to replace it.
    new_revision(&app, "2");
    fs::write(app.join("fail"), "").unwrap();
    let out = build_fails(&mut b(&["--clear-cache"]));
    assert_has(&stderr_str(&out), "kept: \n", "the cleared build starts with an empty cache");
    assert!(kept_bytes() < 1_000_000, "the huge cache is still there after --clear-cache: {} bytes", kept_bytes());
    fs::remove_file(app.join("fail")).unwrap();
    let (_, err) = build(&mut b(&[]));
    assert_has(&err, "kept: \n", "nothing of the cleared cache comes back");
}
