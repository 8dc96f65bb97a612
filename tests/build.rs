//! End-to-end acceptance tests for `imgforge build`: what a user checks with
//! skopeo, umoci and rootless podman. The CLI contract they are written
//! against is in docs/testing.md.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use common::*;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// `imgforge build APP --base BASE` with the test dir's cache.
fn build_cmd(t: &TestDir, app: &Path, base: &str) -> Command {
    let mut c = t.imgforge();
    c.arg("build").arg(app).arg("--base").arg(base);
    c
}

/// Adds a `.git` directory, which imgforge must always skip.
fn add_git_dir(app: &Path) {
    let git = app.join(".git");
    fs::create_dir_all(git.join("objects/ab")).unwrap();
    fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    fs::write(git.join("config"), "[core]\n\tbare = false\n").unwrap();
    fs::write(git.join("objects/ab/cdef0123"), [0u8, 1, 2, 3]).unwrap();
}

/// A copy of the hello app at `<t>/<name>` with a `.git` dir, readable by the
/// test user (dirs 0755, files 0644, executables 0755).
fn app_copy(t: &TestDir, name: &str) -> PathBuf {
    let dst = t.join(name);
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    copy_tree(&hello_app(), &dst);
    add_git_dir(&dst);
    share(&dst);
    dst
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn env_list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The busybox fixture's manifest (its one layer digest, its config).
fn busybox_manifest() -> Value {
    let layout = busybox_layout();
    serde_json::from_slice(&read_blob(&layout, &index_tags(&layout)[0].1)).unwrap()
}

fn busybox_config() -> Value {
    let m = busybox_manifest();
    serde_json::from_slice(&read_blob(&busybox_layout(), m["config"]["digest"].as_str().unwrap())).unwrap()
}

/// The config's history entries that stand for a layer must match the layers
/// one to one (podman and docker rely on it).
fn assert_history_matches_layers(config: &Value) {
    let layers = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    let history = config["history"].as_array().cloned().unwrap_or_default();
    let non_empty = history.iter().filter(|h| !h["empty_layer"].as_bool().unwrap_or(false)).count();
    assert_eq!(non_empty, layers, "history entries with a layer != diff_ids: {config:#}");
}

/// Entries of an uncompressed layer tar: path (no leading `./` or `/`) ->
/// (uid, gid, mtime, mode, is_dir).
fn tar_entries(bytes: &[u8]) -> Vec<(String, u64, u64, u64, u32)> {
    let mut ar = tar::Archive::new(bytes);
    ar.entries()
        .expect("layer is not a tar")
        .map(|e| {
            let e = e.expect("tar entry");
            let h = e.header();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let path = path.trim_start_matches("./").trim_start_matches('/').to_string();
            (path, h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap(), h.mode().unwrap())
        })
        .collect()
}

/// Number of layers in the busybox fixture.
fn base_layer_count() -> usize {
    busybox_manifest()["layers"].as_array().unwrap().len()
}

/// Entries of all the layers imgforge added (those after the base's) to
/// `tag` in an OCI layout built with `--compression none`.
fn added_layer_entries(layout: &Path, tag: &str, base_layers: usize) -> Vec<(String, u64, u64, u64, u32)> {
    let m = layout_manifest(layout, tag);
    let layers = m["layers"].as_array().unwrap();
    assert!(layers.len() > base_layers, "{tag}: no layer added: {m:#}");
    let mut entries = Vec::new();
    for layer in &layers[base_layers..] {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar", "--compression none: {m:#}");
        entries.extend(tar_entries(&read_blob(layout, layer["digest"].as_str().unwrap())));
    }
    entries
}

const APP_FILES: [&str; 3] = ["Procfile", "bin", "public"];
const IGNORED: [&str; 3] = ["debug.log", "tmp", ".git"];

/// The committed fixture still has the files the tests expect to be ignored.
fn assert_fixture_has_ignored_files() {
    let app = hello_app();
    assert!(app.join("debug.log").is_file(), "testdata/apps/hello/debug.log missing");
    assert!(app.join("tmp/x").is_file(), "testdata/apps/hello/tmp/x missing");
}

/// The app in an unpacked rootfs at `workdir`: its files are there, ignored
/// ones and `.git` are not.
fn assert_app_tree(rootfs: &Path, workdir: &str) {
    let ws = rootfs.join(workdir.trim_start_matches('/'));
    assert!(ws.is_dir(), "{} missing from the image", ws.display());
    for f in ["Procfile", "public/index.html", "bin/hello"] {
        assert!(ws.join(f).is_file(), "{workdir}/{f} missing from the image");
    }
    let index = fs::read_to_string(ws.join("public/index.html")).unwrap();
    assert!(index.contains(HELLO_MARKER), "index.html: {index}");
    assert_eq!(
        fs::read_link(ws.join("public/home.html")).ok(),
        Some(PathBuf::from("index.html")),
        "public/home.html should stay a symlink to index.html"
    );
    assert!(mode(&ws.join("bin/hello")) & 0o111 != 0, "bin/hello lost its exec bit: {:o}", mode(&ws.join("bin/hello")));
    assert_eq!(
        fs::read_to_string(ws.join("Procfile")).unwrap(),
        fs::read_to_string(hello_app().join("Procfile")).unwrap()
    );
    for f in IGNORED.iter().chain(&["more.log"]) {
        assert!(fs::symlink_metadata(ws.join(f)).is_err(), "{workdir}/{f} should have been left out of the image");
    }
}

// ---------------------------------------------------------------------------
// (a) reproducibility
// ---------------------------------------------------------------------------

fn check_reproducible(compression: &str) {
    assert_fixture_has_ignored_files();
    let t = TestDir::new();
    let base = t.busybox_copy();
    let mut results: Vec<(String, String)> = Vec::new();

    let mut build = |label: &str, app: &Path, cache: &str, extra: &[&str], env: &[(&str, &str)]| {
        let out = t.join(format!("out-{}.tar", results.len()));
        let mut c = build_cmd(&t, app, &base);
        c.args(["--compression", compression])
            .arg("-t")
            .arg(format!("oci-archive:{}", out.display()))
            .args(extra)
            .env("IMGFORGE_CACHE_DIR", t.join(cache))
            .env("TZ", "UTC")
            .env("LC_ALL", "C");
        for (k, v) in env {
            c.env(k, v);
        }
        let d = build_ok(&mut c);
        results.push((label.to_string(), d.clone()));
        (d, out)
    };

    // 1. from the checkout
    let (first, first_out) = build("baseline (--threads 1)", &hello_app(), "c1", &["--threads", "1"], &[]);
    build("same again, warm cache", &hello_app(), "c1", &["--threads", "1"], &[]);
    build("fresh cache, --threads 3", &hello_app(), "c2", &["--threads", "3"], &[]);
    build("default --threads", &hello_app(), "c2b", &[], &[]);

    // 2. a copy elsewhere, other mtimes, a .git dir and more ignored files
    let moved = app_copy(&t, "elsewhere/deeper/app");
    fs::write(moved.join("more.log"), "ignored\n").unwrap();
    fs::write(moved.join("tmp/y"), "ignored\n").unwrap();
    touch_all(&moved, "2001-02-03 04:05:06");
    build("copy at another path, other mtimes, .git, extra ignored files", &moved, "c3", &[], &[]);

    // 3. a copy made under umask 077
    let private = t.join("private-app");
    run_ok(Command::new("sh").args(["-c", "umask 077 && cp -R \"$0\" \"$1\""]).arg(hello_app()).arg(&private));
    add_git_dir(&private);
    assert_eq!(mode(&private.join("Procfile")), 0o600);
    assert_eq!(mode(&private.join("bin/hello")), 0o700);
    assert_eq!(mode(&private.join("public")), 0o700);
    build("copy made under umask 077", &private, "c4", &[], &[]);

    // 4. another time zone and locale
    build(
        "TZ=Pacific/Auckland LC_ALL=C.UTF-8",
        &hello_app(),
        "c5",
        &["--threads", "2"],
        &[("TZ", "Pacific/Auckland"), ("LC_ALL", "C.UTF-8"), ("LANG", "C.UTF-8")],
    );

    // 5. another user (needs root to switch users)
    if let Some(mut c) = t.imgforge_as_test_user() {
        let app = app_copy(&t, "shared-app");
        let out_dir = t.user_dir("user-out");
        c.arg("build")
            .arg(&app)
            .arg("--base")
            .arg(&base)
            .args(["--compression", compression])
            .arg("-t")
            .arg(format!("oci-archive:{}/img.tar", out_dir.display()))
            .env("TZ", "UTC");
        let d = build_ok(&mut c);
        results.push((format!("built by {}", test_user().unwrap().name), d));
    } else {
        eprintln!("note: not root, so the 'built by another user' variation is not run");
    }

    let differing: Vec<String> =
        results.iter().filter(|(_, d)| *d != first).map(|(l, d)| format!("  {l}: {d}")).collect();
    assert!(
        differing.is_empty(),
        "--compression {compression}: these builds differ from the baseline {first}:\n{}\nall: {results:#?}",
        differing.join("\n")
    );

    // the layers imgforge adds use the requested compression
    let manifest: Value =
        serde_json::from_slice(&skopeo_raw_manifest(&format!("oci-archive:{}", first_out.display()))).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(layers.len() > base_layer_count(), "{manifest:#}");
    for layer in &layers[base_layer_count()..] {
        assert_eq!(layer["mediaType"], format!("application/vnd.oci.image.layer.v1.tar+{compression}"), "{manifest:#}");
    }
}

#[test]
fn reproducible_with_gzip() {
    check_reproducible("gzip");
}

#[test]
fn reproducible_with_zstd() {
    check_reproducible("zstd");
}

#[test]
fn source_date_epoch_sets_created_and_file_times() {
    let t = TestDir::new();
    let build = |name: &str, sde: Option<&str>| -> (String, PathBuf) {
        let layout = t.join(name);
        let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
        c.arg("-t").arg(format!("oci:{}:latest", layout.display()));
        if let Some(s) = sde {
            c.env("SOURCE_DATE_EPOCH", s);
        }
        (build_ok(&mut c), layout)
    };
    let (default_digest, default_layout) = build("default", None);
    let (sde_digest, sde_layout) = build("sde", Some("1700000000"));
    let (sde_again, _) = build("sde-again", Some("1700000000"));
    assert_ne!(default_digest, sde_digest, "SOURCE_DATE_EPOCH must change the digest");
    assert_eq!(sde_digest, sde_again, "same SOURCE_DATE_EPOCH, same digest");

    for (layout, created, epoch) in
        [(&default_layout, DEFAULT_CREATED, DEFAULT_EPOCH), (&sde_layout, "2023-11-14T22:13:20Z", 1_700_000_000)]
    {
        let r = format!("oci:{}:latest", layout.display());
        let config = skopeo_inspect_config(&r);
        assert_eq!(config["created"], created, "config.created of {r}: {config:#}");
        let last_history = config["history"].as_array().and_then(|h| h.last()).cloned();
        assert_eq!(
            last_history.as_ref().map(|h| h["created"].clone()),
            Some(Value::from(created)),
            "the history entry imgforge adds: {config:#}"
        );
        let rootfs = umoci_unpack_rootless(layout, "latest", &t.join(format!("bundle-{epoch}")));
        for f in ["workspace", "workspace/Procfile", "workspace/public", "workspace/public/index.html"] {
            let m = fs::symlink_metadata(rootfs.join(f)).unwrap();
            assert_eq!(m.mtime(), epoch, "mtime of /{f} in {r}");
        }
    }
}

// ---------------------------------------------------------------------------
// (b) what skopeo and umoci see
// ---------------------------------------------------------------------------

#[test]
fn oci_and_oci_archive_outputs_inspect_unpack_and_run() {
    assert_fixture_has_ignored_files();
    let t = TestDir::new();
    let app = app_copy(&t, "app");
    let env_file = t.write("build.env", "# a comment\nFROM_FILE=yes\n\nSECOND=2\n");
    let layout = t.join("layout");
    let archive = t.join("img.tar");
    let mut c = build_cmd(&t, &app, &busybox_ref());
    c.arg("-t")
        .arg(format!("oci:{}:latest", layout.display()))
        .arg("-t")
        .arg(format!("oci-archive:{}", archive.display()))
        .args(["--env", "GREETING=hello", "--platform", "linux/amd64"])
        .arg("--env-file")
        .arg(&env_file);
    let digest = build_ok(&mut c);

    let base_manifest = busybox_manifest();
    let base_config = busybox_config();
    let layout_ref = format!("oci:{}:latest", layout.display());
    let archive_ref = format!("oci-archive:{}", archive.display());
    for r in [&layout_ref, &archive_ref] {
        let info = skopeo_inspect(r);
        assert_eq!(info["Digest"], digest.as_str(), "{r}: {info:#}");
        assert_eq!(info["Architecture"], "amd64", "{r}: {info:#}");
        assert_eq!(info["Os"], "linux", "{r}: {info:#}");
        let layers = info["Layers"].as_array().unwrap();
        // the base's layers, then the app's (imgforge may split the app into several)
        assert!(layers.len() > base_layer_count(), "{r}: the base layer plus the app's: {info:#}");
        assert_eq!(layers[0], base_manifest["layers"][0]["digest"], "{r}: the base layer must be reused as it is");
        let env = env_list(&info["Env"]);
        for want in [BUSYBOX_PATH_ENV, "GREETING=hello", "FROM_FILE=yes", "SECOND=2"] {
            assert!(env.iter().any(|e| e == want), "{r}: Env lacks {want}: {env:?}");
        }
        let config = skopeo_inspect_config(r);
        assert_eq!(config["config"]["WorkingDir"], "/workspace", "{r}: {config:#}");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["diff_ids"][0], base_config["rootfs"]["diff_ids"][0], "{r}: base diff_id");
        assert_history_matches_layers(&config);
        assert_eq!(
            config["rootfs"]["diff_ids"].as_array().map(Vec::len),
            Some(layers.len()),
            "{r}: one diff_id per layer: {config:#}"
        );
        // the digest is the sha256 of the manifest's bytes
        assert_eq!(sha256_digest(&skopeo_raw_manifest(r)), digest, "{r}");
    }

    // the app's files, without the ignored ones
    let rootfs = umoci_unpack_rootless(&layout, "latest", &t.join("bundle"));
    assert_app_tree(&rootfs, "/workspace");
    assert!(rootfs.join("bin/busybox").is_file(), "base layer files are there too");

    // imgforge inspect agrees
    let inspected = imgforge_inspect(&layout_ref);
    assert_eq!(inspected["digest"], digest.as_str(), "{inspected:#}");
    let layer_count = skopeo_inspect(&layout_ref)["Layers"].as_array().map(Vec::len);
    assert_eq!(inspected["manifest"]["layers"].as_array().map(Vec::len), layer_count, "{inspected:#}");
    assert_eq!(inspected["config"]["architecture"], "amd64");

    // and the oci-archive runs under podman as it is
    let out = podman_run_ok(&archive_ref, &["worker"]);
    assert_eq!(out.trim_end(), "worker says hello", "podman run {archive_ref} worker");
}

#[test]
fn workdir_and_chown_set_where_and_whose_the_app_files_are() {
    let t = TestDir::new();
    let app = app_copy(&t, "app");
    let layout = t.join("layout");
    let env_file = t.write("e.env", "A=1\n");

    // default: /workspace, owned by the base image's user (busybox: root)
    let mut c = build_cmd(&t, &app, &busybox_ref());
    c.arg("-t").arg(format!("oci:{}:default", layout.display())).args(["--compression", "none"]);
    build_ok(&mut c);

    // --workdir and --chown
    let mut c = build_cmd(&t, &app, &busybox_ref());
    c.arg("-t")
        .arg(format!("oci:{}:custom", layout.display()))
        .args(["--compression", "none", "--workdir", "/srv/app", "--chown", "1000:1000"])
        .arg("--env-file")
        .arg(&env_file);
    build_ok(&mut c);

    for (tag, prefix, uid) in [("default", "workspace", 0), ("custom", "srv/app", 1000)] {
        let entries = added_layer_entries(&layout, tag, base_layer_count());
        let app_entries: Vec<_> =
            entries.iter().filter(|e| e.0 == prefix || e.0.starts_with(&format!("{prefix}/"))).collect();
        let names: BTreeSet<&str> = app_entries.iter().map(|e| e.0.trim_end_matches('/')).collect();
        for f in ["Procfile", "public/index.html", "public/home.html", "bin/hello"] {
            let want = format!("{prefix}/{f}");
            assert!(names.contains(want.as_str()), "{tag}: no {want} in the layer: {names:?}");
        }
        for f in IGNORED {
            let bad = format!("{prefix}/{f}");
            assert!(
                !names.iter().any(|n| *n == bad || n.starts_with(&format!("{bad}/"))),
                "{tag}: {bad} must not be in the layer: {names:?}"
            );
        }
        for (path, u, g, mtime, _mode) in &app_entries {
            assert_eq!((*u, *g), (uid, uid), "{tag}: owner of {path}");
            assert_eq!(*mtime, DEFAULT_EPOCH as u64, "{tag}: mtime of {path}");
        }
        let config = skopeo_inspect_config(&format!("oci:{}:{tag}", layout.display()));
        assert_eq!(config["config"]["WorkingDir"], format!("/{prefix}"), "{tag}: {config:#}");
    }
    let config = skopeo_inspect_config(&format!("oci:{}:custom", layout.display()));
    assert!(env_list(&config["config"]["Env"]).contains(&"A=1".to_string()), "{config:#}");

    let rootfs = umoci_unpack_rootless(&layout, "custom", &t.join("bundle"));
    assert_app_tree(&rootfs, "/srv/app");
}

#[test]
fn scratch_base_gives_just_the_app_layers() {
    // no Procfile: on scratch there is no /bin/sh to run `$PORT`-style commands
    let t = TestDir::new();
    let app = t.mkdir("static-app");
    t.write("static-app/public/index.html", HELLO_MARKER);
    t.write("static-app/notes.log", "ignored\n");
    t.write("static-app/.imgforgeignore", "*.log\n");
    let layout = t.join("layout");
    let mut c = build_cmd(&t, &app, "scratch");
    c.arg("-t").arg(format!("oci:{}:latest", layout.display()));
    let digest = build_ok(&mut c);
    let r = format!("oci:{}:latest", layout.display());
    let info = skopeo_inspect(&r);
    assert_eq!(info["Digest"], digest.as_str());
    assert!(info["Layers"].as_array().is_some_and(|l| !l.is_empty()), "{info:#}");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    let config = skopeo_inspect_config(&r);
    assert_history_matches_layers(&config);
    let rootfs = umoci_unpack_rootless(&layout, "latest", &t.join("bundle"));
    let index = fs::read_to_string(rootfs.join("workspace/public/index.html")).unwrap();
    assert_eq!(index, HELLO_MARKER);
    assert!(!rootfs.join("workspace/notes.log").exists(), "ignored file in the image");
    assert!(!rootfs.join("bin").exists(), "nothing from busybox on scratch");
}

// ---------------------------------------------------------------------------
// (c) running the image under rootless podman
// ---------------------------------------------------------------------------

#[test]
fn docker_archive_runs_web_worker_and_commands_under_podman() {
    let t = TestDir::new();
    let app = app_copy(&t, "app");
    let port = free_port();
    let archive = t.join("hello.tar");
    let mut c = build_cmd(&t, &app, &busybox_ref());
    c.arg("-t")
        .arg(format!("docker-archive:{}:imgforge-test/hello:latest", archive.display()))
        .arg("--env")
        .arg(format!("PORT={port}"))
        .args(["--env", "GREETING=hello"]);
    build_ok(&mut c);
    let image = podman_load(&archive);

    // no arguments: the web process serves public/ on $PORT
    let body = podman_serve_http(&image, &[], port);
    assert!(body.contains(HELLO_MARKER), "GET / answered: {body}");

    // a process type by name
    let out = podman_run_ok(&image, &["worker"]);
    assert_eq!(out.trim_end(), "worker says hello");

    // any other command runs as given, in the workdir, with the image env
    let out = podman_run_ok(&image, &["ls", "/workspace"]);
    let listed: BTreeSet<&str> = out.split_whitespace().collect();
    for f in APP_FILES {
        assert!(listed.contains(f), "ls /workspace: no {f}: {out}");
    }
    for f in ["debug.log", "tmp", ".git"] {
        assert!(!listed.contains(f), "ls /workspace lists {f}: {out}");
    }
    assert_eq!(podman_run_ok(&image, &["pwd"]).trim_end(), "/workspace");
    assert_eq!(podman_run_ok(&image, &["sh", "-c", "echo $PORT"]).trim_end(), port.to_string());
    assert_eq!(podman_run_ok(&image, &["bin/hello"]).trim_end(), "hello from bin/hello");
    podman_rmi(&image);

    // without --env PORT, PORT is 5000; --default-process picks the process
    let archive2 = t.join("worker.tar");
    let mut c = build_cmd(&t, &app, &busybox_ref());
    c.arg("-t").arg(format!("docker-archive:{}:imgforge-test/worker:latest", archive2.display())).args([
        "--env",
        "GREETING=hi",
        "--default-process",
        "worker",
    ]);
    build_ok(&mut c);
    let image = podman_load(&archive2);
    assert_eq!(podman_run_ok(&image, &[]).trim_end(), "worker says hi");
    assert_eq!(podman_run_ok(&image, &["sh", "-c", "echo $PORT"]).trim_end(), "5000");
    podman_rmi(&image);
}

/// `podman load` names an image from an OCI archive after the archive's annotations: each
/// archive must bring its own name (`localhost/STEM:TAG`), not the bare tag (`latest`, which
/// podman made `localhost/latest:latest` for every archive, the last load stealing it).
#[test]
fn oci_archives_load_into_podman_under_their_own_names() {
    let t = TestDir::new();
    // names unique to this run: podman's storage is shared with other test processes
    let stem = format!("imgforge-refname-{}", std::process::id());
    let mut loaded = Vec::new();
    for (which, greeting) in [("first", "one"), ("second", "two")] {
        let archive = t.join(format!("{stem}-{which}.tar"));
        let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
        c.arg("-t")
            .arg(format!("oci-archive:{}:latest", archive.display()))
            .args(["--env", &format!("GREETING={greeting}")]);
        build_ok(&mut c);
        // skopeo still finds the image by the tag the user gave
        let config = skopeo_inspect(&format!("oci-archive:{}:latest", archive.display()));
        assert!(config.is_object(), "skopeo inspect oci-archive:…:latest");
        share(&archive);
        let mut c = podman();
        c.arg("load").arg("-i").arg(&archive);
        let out = run_ok(&mut c);
        let name = format!("localhost/{stem}-{which}:latest");
        assert!(stdout_str(&out).contains(&name), "podman load should name the image {name}\n{}", report(&c, &out));
        loaded.push((name, greeting));
    }
    // both names are there, each on its own image: the second load stole nothing
    for (name, greeting) in &loaded {
        let out = podman_run_ok(name, &["worker"]);
        assert_eq!(out.trim_end(), format!("worker says {greeting}"), "{name}");
    }
    for (name, _) in &loaded {
        let mut c = podman();
        c.args(["rmi", "--force", name]);
        run_ok(&mut c);
    }
}

// ---------------------------------------------------------------------------
// (d) the digest on stdout
// ---------------------------------------------------------------------------

#[test]
fn stdout_digest_matches_skopeo_inspect_and_digest_file() {
    let t = TestDir::new();
    let archive = t.join("img.tar");
    let digest_file = t.join("digest.txt");
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    c.arg("-t").arg(format!("oci-archive:{}", archive.display())).arg("--digest-file").arg(&digest_file).arg("-q");
    let out = run(&mut c);
    assert!(out.status.success(), "{}", report(&c, &out));
    let digest = parse_digest_line(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", report(&c, &out)));
    assert!(out.stderr.is_empty(), "-q: nothing on stderr\n{}", report(&c, &out));

    let r = format!("oci-archive:{}", archive.display());
    assert_eq!(skopeo_digest(&r), digest, "skopeo inspect --format {{{{.Digest}}}}");
    assert_eq!(sha256_digest(&skopeo_raw_manifest(&r)), digest);
    let inspected = imgforge_inspect(&r);
    assert_eq!(inspected["digest"], digest.as_str(), "imgforge inspect: {inspected:#}");
    for key in ["manifest", "config"] {
        assert!(inspected[key].is_object(), "imgforge inspect lacks {key}: {inspected:#}");
    }
    let written = fs::read_to_string(&digest_file).unwrap();
    assert_eq!(written.trim_end_matches('\n'), digest, "--digest-file: {written:?}");

    // without -q the logs go to stderr; stdout is still only the digest
    let archive2 = t.join("img2.tar");
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    c.arg("-t").arg(format!("oci-archive:{}", archive2.display())).arg("-v");
    assert_eq!(build_ok(&mut c), digest, "same inputs, same digest, with or without -q");
}

// ---------------------------------------------------------------------------
// (e) errors
// ---------------------------------------------------------------------------

fn assert_exit(c: &mut Command, code: i32, stderr_has: &[&str]) {
    let out = run(c);
    assert_eq!(out.status.code(), Some(code), "want exit {code}\n{}", report(c, &out));
    assert!(out.stdout.is_empty(), "nothing on stdout on failure\n{}", report(c, &out));
    let err = stderr_str(&out);
    for s in stderr_has {
        assert!(err.contains(s), "stderr should mention {s:?}\n{}", report(c, &out));
    }
}

#[test]
fn usage_errors_exit_2() {
    let t = TestDir::new();
    let dest = format!("oci:{}:latest", t.join("layout").display());
    // unknown flag
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    c.args(["-t", &dest, "--no-such-flag"]);
    assert_exit(&mut c, 2, &["--no-such-flag"]);
    // missing --base
    let mut c = t.imgforge();
    c.arg("build").arg(hello_app()).args(["-t", &dest]);
    assert_exit(&mut c, 2, &["--base"]);
    // missing -t
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    assert_exit(&mut c, 2, &[]);
    // unknown subcommand
    let mut c = t.imgforge();
    c.arg("no-such-command");
    assert_exit(&mut c, 2, &[]);
    assert!(!t.join("layout").exists(), "a usage error must write nothing");
}

#[test]
fn missing_app_dir_is_a_usage_error_naming_it() {
    let t = TestDir::new();
    let missing = t.join("no-such-app");
    let archive = t.join("img.tar");
    let mut c = build_cmd(&t, &missing, &busybox_ref());
    c.arg("-t").arg(format!("oci-archive:{}", archive.display()));
    assert_exit(&mut c, 2, &[&missing.display().to_string(), "does not exist"]);
    assert!(!archive.exists(), "a failed build must not leave an output");
}

/// A forgotten or misspelt transport must not become a registry name: each of these stops
/// with exit 2 before anything is read or built, and says what was probably meant.
#[test]
fn transport_typos_and_local_paths_are_usage_errors_with_a_hint() {
    let t = TestDir::new();
    let out = t.join("out");
    let dest = format!("oci:{}:latest", out.display());
    let transports = "oci-archive:FILE[:TAG]";
    // --base ocii:/tmp/x: an unknown transport, not a registry called "ocii:"
    let mut c = build_cmd(&t, &hello_app(), "ocii:/tmp/x");
    c.args(["-t", &dest]);
    assert_exit(&mut c, 2, &["unknown transport \"ocii:\"", "did you mean \"oci:\"", transports]);
    // an empty port, and a transport one letter off
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    c.args(["-t", "localhost:/app"]);
    assert_exit(&mut c, 2, &["unknown transport", transports]);
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    c.args(["-t", "oci-archve:x.tar"]);
    assert_exit(&mut c, 2, &["did you mean \"oci-archive:\"", transports]);
    // --base testdata/images/busybox, a real local layout: oci: was meant
    let mut c = build_cmd(&t, &hello_app(), "testdata/images/busybox");
    c.current_dir(repo_root()).args(["-t", &dest]);
    assert_exit(&mut c, 2, &["did you mean `oci:testdata/images/busybox`", "docker://testdata/images/busybox"]);
    // -t out.tar: an archive was meant, not docker.io/library/out.tar (and nothing is built)
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    c.current_dir(t.join("")).args(["-t", &dest, "-t", "out.tar"]);
    assert_exit(&mut c, 2, &["did you mean `oci-archive:out.tar` or `docker-archive:out.tar`"]);
    // inspect hello.tar, an OCI archive that exists: oci-archive: was meant
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    c.arg("-t").arg(format!("oci-archive:{}", t.join("hello.tar").display()));
    build_ok(&mut c);
    let mut c = t.imgforge();
    c.current_dir(t.join("")).args(["inspect", "hello.tar"]);
    assert_exit(&mut c, 2, &["did you mean `oci-archive:hello.tar`?"]);
    // the registry, when written out, is still the registry
    let mut c = t.imgforge();
    c.args(["inspect", "--tls-verify=false", &format!("docker://127.0.0.1:{}/out.tar", free_port())]);
    assert_exit(&mut c, 1, &["127.0.0.1"]);
    assert!(!out.exists() && !t.join("out.tar").exists(), "a usage error must write nothing");
}

/// Destinations are checked before the build starts: a missing or unwritable directory, an
/// archive path that is a directory, a push to Docker Hub without credentials.
#[test]
fn destinations_are_checked_before_anything_is_built() {
    let t = TestDir::new();
    let good = format!("oci:{}:latest", t.join("good").display());
    let auth = t.join("auth.json");
    fs::write(&auth, "{\"auths\": {}}").unwrap();
    let file = t.join("a-file");
    fs::write(&file, "x").unwrap();
    fs::create_dir_all(t.join("good")).unwrap();
    for (dest, says) in [
        (format!("oci:{}:latest", t.join("no/such/dir").display()), "does not exist"),
        (format!("oci-archive:{}", t.join("good").display()), "is a directory"),
        (format!("oci:{}", file.display()), "is not a directory"),
        ("docker.io/team/app:1".to_string(), "imgforge login docker.io"),
    ] {
        let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
        c.arg("--authfile").arg(&auth).args(["-t", &good, "-t", &dest]);
        let out = run(&mut c);
        assert_eq!(out.status.code(), Some(2), "{}", report(&c, &out));
        let err = stderr_str(&out);
        assert!(err.contains(says), "stderr should say {says:?}\n{}", report(&c, &out));
        assert!(!err.contains("Layer "), "nothing may be built before the check\n{}", report(&c, &out));
        assert!(!t.join("good/index.json").exists(), "the good destination must not be written either");
    }
    // unwritable: only meaningful for a user the permission bits bind (not root)
    if let Some(mut c) = t.imgforge_as_test_user() {
        let ro = t.mkdir("read-only");
        fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
        let app = t.join("app");
        copy_tree(&hello_app(), &app);
        share(&app);
        c.arg("build").arg(&app).arg("--base").arg(t.busybox_copy());
        c.arg("-t").arg(format!("oci-archive:{}", ro.join("x.tar").display()));
        let out = run(&mut c);
        assert_eq!(out.status.code(), Some(2), "{}", report(&c, &out));
        assert!(stderr_str(&out).contains("is not writable"), "{}", report(&c, &out));
    }
}

/// What a person reads on stderr: sizes in B/KiB/MiB, "1 layer", one default per flag, a
/// cause said once, and `copy` calling its source a source.
#[test]
fn messages_read_well() {
    let t = TestDir::new();
    let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
    c.arg("-t").arg(format!("oci:{}:latest", t.join("out").display()));
    let out = run_ok(&mut c);
    let err = stderr_str(&out);
    assert!(err.contains(", 1 layer)") && !err.contains("1 layers"), "{err}");
    assert!(!err.contains(" MB"), "sizes in B, KiB or MiB: {err}");
    assert!(err.lines().any(|l| l.contains("Layer app:") && l.contains(" KiB → ") && l.ends_with(" B gzip)")), "{err}");

    let mut c = t.imgforge();
    c.args(["build", "--help"]);
    let help = stdout_str(&run_ok(&mut c));
    let threads = help.lines().find(|l| l.contains("--threads")).expect("--threads in help");
    assert_eq!(threads.matches("[default").count(), 1, "{threads}");

    let missing = t.join("missing.tar");
    let mut c = build_cmd(&t, &hello_app(), &format!("oci-archive:{}", missing.display()));
    c.arg("-t").arg(format!("oci:{}:latest", t.join("out").display()));
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1), "{}", report(&c, &out));
    assert_eq!(stderr_str(&out).matches("No such file or directory").count(), 1, "{}", report(&c, &out));

    let mut c = t.imgforge();
    c.arg("copy").arg(busybox_ref()).arg(format!("oci:{}:copy", t.join("copy").display()));
    let err = stderr_str(&run_ok(&mut c));
    assert!(err.contains("Source ") && !err.contains("Base "), "copy has a source, not a base: {err}");
}

#[test]
fn bad_base_reference_fails_naming_it() {
    let t = TestDir::new();
    let archive = t.join("img.tar");
    let dest = format!("oci-archive:{}", archive.display());

    let missing = t.join("no-such-layout");
    let mut c = build_cmd(&t, &hello_app(), &format!("oci:{}:latest", missing.display()));
    c.args(["-t", &dest]);
    assert_exit(&mut c, 1, &[&missing.display().to_string()]);

    let mut c = build_cmd(&t, &hello_app(), &format!("oci:{}:no-such-tag", busybox_layout().display()));
    c.args(["-t", &dest]);
    assert_exit(&mut c, 1, &["no-such-tag"]);

    let missing_archive = t.join("no-such-archive.tar");
    let mut c = build_cmd(&t, &hello_app(), &format!("oci-archive:{}", missing_archive.display()));
    c.args(["-t", &dest]);
    assert_exit(&mut c, 1, &[&missing_archive.display().to_string()]);

    assert!(!archive.exists(), "a failed build must not leave an output");
}

#[test]
fn unreachable_registry_fails_naming_it() {
    // Registries themselves are tested in tests/registry.rs; here: nothing listens.
    let t = TestDir::new();
    let host = format!("127.0.0.1:{}", free_port());
    for (base, dest) in [
        (busybox_ref(), format!("docker://{host}/x")),
        (format!("docker://{host}/busybox:latest"), format!("oci:{}:latest", t.join("layout").display())),
    ] {
        let mut c = build_cmd(&t, &hello_app(), &base);
        c.args(["-t", &dest]);
        let out = run(&mut c);
        assert_eq!(out.status.code(), Some(1), "an unreachable registry should fail the build\n{}", report(&c, &out));
        assert!(out.stdout.is_empty(), "{}", report(&c, &out));
        assert!(stderr_str(&out).contains(&host), "stderr should name the registry\n{}", report(&c, &out));
        assert!(!t.join("layout").exists(), "nothing should be written");
    }
}

// ---------------------------------------------------------------------------
// (f) oci: layouts with several tags
// ---------------------------------------------------------------------------

#[test]
fn oci_layout_keeps_every_tag() {
    let t = TestDir::new();
    let layout = t.join("layout");
    let build = |tag: &str, value: &str| -> String {
        let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
        c.arg("-t").arg(format!("oci:{}:{tag}", layout.display())).arg("--env").arg(format!("VARIANT={value}"));
        build_ok(&mut c)
    };
    let a = build("a", "1");
    let b = build("b", "2");
    assert_ne!(a, b, "different env, different image");
    let tags = index_tags(&layout);
    assert!(tags.contains(&("a".into(), a.clone())), "index.json: {tags:?}");
    assert!(tags.contains(&("b".into(), b.clone())), "index.json: {tags:?}");
    assert_eq!(skopeo_digest(&format!("oci:{}:a", layout.display())), a);
    assert_eq!(skopeo_digest(&format!("oci:{}:b", layout.display())), b);
    assert_eq!(read_json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");

    // retagging a moves a, keeps b, and leaves one entry per tag
    let a2 = build("a", "3");
    let tags = index_tags(&layout);
    let count = |name: &str| tags.iter().filter(|(t, _)| t == name).count();
    assert_eq!((count("a"), count("b")), (1, 1), "index.json: {tags:?}");
    assert!(tags.contains(&("a".into(), a2.clone())), "index.json: {tags:?}");
    assert!(tags.contains(&("b".into(), b)), "index.json: {tags:?}");
    // every blob a manifest names is there
    for (tag, _) in &tags {
        let m = layout_manifest(&layout, tag);
        read_blob(&layout, m["config"]["digest"].as_str().unwrap());
        for l in m["layers"].as_array().unwrap() {
            read_blob(&layout, l["digest"].as_str().unwrap());
        }
    }
}

#[test]
fn concurrent_builds_into_one_layout_keep_every_tag() {
    let t = TestDir::new();
    let layout = t.join("layout");
    let children: Vec<_> = (0..4)
        .map(|i| {
            let mut c = build_cmd(&t, &hello_app(), &busybox_ref());
            c.arg("-t")
                .arg(format!("oci:{}:t{i}", layout.display()))
                .arg("--env")
                .arg(format!("N={i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = c.spawn().expect("spawn imgforge");
            (i, describe(&c), child)
        })
        .collect();
    let mut digests = Vec::new();
    for (i, cmd, child) in children {
        let out = child.wait_with_output().expect("wait for imgforge");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd}: {}\n{stderr}", out.status);
        let stdout = out.stdout;
        let d = parse_digest_line(&stdout).unwrap_or_else(|e| panic!("{cmd}: {e}\n{stderr}"));
        digests.push((format!("t{i}"), d));
    }
    let tags = index_tags(&layout);
    for want in &digests {
        assert!(tags.contains(want), "concurrent builds lost a tag: want {want:?} in {tags:?}");
    }
}

#[test]
fn base_at_another_path_gives_the_same_digest() {
    // CI checkouts live at different paths: the base's location must not leak into the image.
    let t = TestDir::new();
    let app = app_copy(&t, "app");
    let mut digests = Vec::new();
    for (i, dir) in ["one/base", "two/deeper/place/base"].iter().enumerate() {
        let base = t.join(dir);
        fs::create_dir_all(base.parent().unwrap()).unwrap();
        copy_tree(&busybox_layout(), &base);
        let out = t.join(format!("out{i}"));
        let mut c = build_cmd(&t, &app, &format!("oci:{}:latest", base.display()));
        c.arg("-t").arg(format!("oci:{}:v", out.display()));
        digests.push(build_ok(&mut c));
        let config = skopeo_inspect_config(&format!("oci:{}:v", out.display()));
        assert_eq!(config["config"]["Labels"]["org.opencontainers.image.base.name"], "oci:base:latest", "{config:#}");
    }
    assert_eq!(digests[0], digests[1], "the base's path changed the image digest");
}
