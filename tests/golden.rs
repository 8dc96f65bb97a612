//! Golden digests: the sample builds of every build mode, at a fixed SOURCE_DATE_EPOCH,
//! give exactly the manifest digests recorded here. A refactoring of the pipeline must not
//! change a single byte of what it builds; a change that does on purpose (a new layer
//! format, a new label) updates these values in the same commit and says why.
//!
//! Each case builds twice in one cache (the second build goes through every cache a
//! rebuild with nothing changed takes) and once more in a fresh directory (paths and
//! caches must not leak into the image).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// SOURCE_DATE_EPOCH of every golden build (2023-11-14T22:13:20Z).
const EPOCH: &str = "1700000000";

const PLAIN: &str = "sha256:abdd4a89d0339736b0b4bef1e41b14be54b4af5704a2145bd08e76fc34dd3587";
/// The same image whether the buildpacks ran on the host or in the sandbox.
const HEROKU: &str = "sha256:f11edc06d00b8f56abc463e7cc7ec6fe21fa8653c59b0958b5d8f1f6fd51f88d";
const CNB: &str = "sha256:ae944e8a661e6dd8a7f9b72ba1d07577e186874c21914a3815f6587d2cfa8f2d";

/// An app for the Heroku builds: the logger buildpack leaves a runtime directory and a
/// profile script, the releaser gives config vars and process types (the Procfile's `web`
/// wins over its own).
const HEROKU_APP: &[(&str, &str)] =
    &[("Procfile", "web: echo web from the Procfile\n"), ("app.txt", "version 1\n"), ("lib/util.txt", "util\n")];

/// `imgforge build APP --base <busybox copy> -t oci:<t>/out:golden` at [`EPOCH`].
fn build_cmd(t: &TestDir, app: &Path) -> Command {
    let mut c = t.imgforge();
    c.arg("build")
        .arg(app)
        .arg("--base")
        .arg(t.busybox_copy())
        .arg("-t")
        .arg(format!("oci:{}:golden", t.join("out").display()))
        .env("SOURCE_DATE_EPOCH", EPOCH);
    c
}

fn digest_of(c: &mut Command) -> String {
    let out = run(c);
    assert!(out.status.success(), "imgforge build failed\n{}", report(c, &out));
    parse_digest_line(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", report(c, &out)))
}

/// Builds `case` (which sets up its inputs in a test dir and returns the command) twice in
/// one cache and once in another directory; every digest must be `expected`.
fn assert_golden(name: &str, expected: &str, case: impl Fn(&TestDir) -> Command) {
    let (t1, t2) = (TestDir::new(), TestDir::new());
    let first = digest_of(&mut case(&t1));
    let again = digest_of(&mut case(&t1));
    let elsewhere = digest_of(&mut case(&t2));
    assert_eq!(
        [first.as_str(), again.as_str(), elsewhere.as_str()],
        [expected; 3],
        "{name}: the golden digest changed (first build, rebuild in the same cache, build in another directory); \
         what imgforge builds must not change unless on purpose"
    );
}

fn copy_of(t: &TestDir, src: &Path, name: &str) -> PathBuf {
    let dst = t.join(name);
    if !dst.exists() {
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        copy_tree(src, &dst);
        share(&dst);
    }
    dst
}

fn heroku_app(t: &TestDir) -> PathBuf {
    let dir = t.join("app");
    if !dir.exists() {
        for (rel, contents) in HEROKU_APP {
            t.write(format!("app/{rel}"), contents);
        }
        share(&dir);
    }
    dir
}

fn heroku_build(t: &TestDir, isolation: &str) -> Command {
    let app = heroku_app(t);
    let mut c = build_cmd(t, &app);
    for name in ["logger", "releaser"] {
        c.arg("--buildpack").arg(copy_of(t, &testdata("buildpacks").join(name), &format!("buildpacks/{name}")));
    }
    c.args(["--isolation", isolation, "--env", "FOO=bar"]).env_remove("FOO").env_remove("STACK");
    c
}

#[test]
fn plain_app_on_busybox() {
    assert_golden("plain app", PLAIN, |t| build_cmd(t, &copy_of(t, &hello_app(), "hello")));
}

#[test]
fn heroku_buildpacks_on_the_host() {
    assert_golden("Heroku buildpacks, --isolation host", HEROKU, |t| heroku_build(t, "host"));
}

#[test]
fn heroku_buildpacks_in_the_build_image_sandbox() {
    assert_golden("Heroku buildpacks, --isolation userns", HEROKU, |t| heroku_build(t, "userns"));
}

#[test]
fn cloud_native_buildpacks() {
    assert_golden("Cloud Native Buildpacks", CNB, |t| {
        let bps = copy_of(t, &testdata("cnb"), "cnb");
        let app = t.join("app");
        if !app.exists() {
            t.write("app/runtime.txt", "greet-1\n");
            t.write("app/server.txt", "v1\n");
            t.write("app/public/index.html", "<h1>hi</h1>\n");
            share(&app);
        }
        let mut c = build_cmd(t, &app);
        c.arg("--buildpacks-dir").arg(bps).args(["--isolation", "host", "--env", "GREETING=hi"]);
        c
    });
}

/// A plain build whose inputs did not change reuses the previous build's result (the step
/// cache wraps every mode), and the image is byte for byte the golden one; a change says why
/// the step ran again (`-v`).
#[test]
fn an_unchanged_plain_app_reuses_the_last_result() {
    let t = TestDir::new();
    let app = copy_of(&t, &hello_app(), "hello");
    // The stat cache keeps only hashes of files older than its racy window (2 s): the
    // second build is the first that knows the files without reading them.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let build = |t: &TestDir| {
        let mut c = build_cmd(t, &app);
        c.arg("-v");
        let out = run(&mut c);
        assert!(out.status.success(), "imgforge build failed\n{}", report(&c, &out));
        (parse_digest_line(&out.stdout).unwrap(), stderr_str(&out))
    };
    let (first, _) = build(&t);
    let (second, e2) = build(&t);
    let (third, e3) = build(&t);
    assert_eq!([first.as_str(), second.as_str(), third.as_str()], [PLAIN; 3]);
    assert!(!e2.contains("Nothing changed"), "the first warm build has no record to reuse:\n{e2}");
    assert!(e3.contains("Nothing changed since the last build"), "nothing changed, the result is reused:\n{e3}");
    assert!(e3.contains("Layer app: reused"), "{e3}");

    std::fs::write(app.join("public/extra.txt"), "new\n").unwrap();
    let (changed, e4) = build(&t);
    assert_ne!(changed, PLAIN);
    assert!(e4.contains("public/extra.txt was added"), "-v says why the step ran again:\n{e4}");
}
