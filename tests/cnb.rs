//! End-to-end tests for Cloud Native Buildpacks (`imgforge build APP --base IMAGE
//! --buildpacks-dir DIR` / `--buildpack PATH`): the real binary builds, rootless podman runs
//! the images. The buildpacks are bash scripts in testdata/cnb/ (see its README). Most
//! tests use the busybox base with `--isolation host` (imgforge's own user and mount
//! namespace: busybox has no bash for the build-image sandbox); one builds on the Debian
//! base in the build-image sandbox.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::*;

/// A copy of testdata/cnb at `<t>/cnb`, readable by the test user.
fn buildpacks(t: &TestDir) -> PathBuf {
    let dst = t.join("cnb");
    copy_tree(&testdata("cnb"), &dst);
    share(&dst);
    dst
}

/// An app the runtime buildpack detects, with a `public/` slice.
fn sample_app(t: &TestDir) -> PathBuf {
    let dir = t.mkdir("app");
    t.write("app/runtime.txt", "greet-1\n");
    t.write("app/server.txt", "v1\n");
    t.write("app/public/index.html", "<h1>hi</h1>\n");
    share(&dir);
    dir
}

fn out_ref(t: &TestDir, tag: &str) -> String {
    format!("oci:{}:{tag}", t.join("out").display())
}

fn cnb_build(t: &TestDir, app: &Path, bps: &Path, tag: &str) -> Command {
    let mut c = t.imgforge();
    c.arg("build")
        .arg(app)
        .arg("--base")
        .arg(t.busybox_copy())
        .arg("-t")
        .arg(out_ref(t, tag))
        .arg("--buildpacks-dir")
        .arg(bps)
        .args(["--isolation", "host"])
        .args(["--env", "GREETING=hi", "--env", "DEF_KEPT=user", "--env", "APPENDED=start"])
        .args(["--env", "PREPENDED=rest", "--env", "OVERRIDDEN=user"]);
    c
}

fn build(c: &mut Command) -> (String, String) {
    let out = run(c);
    assert!(out.status.success(), "imgforge build failed\n{}", report(c, &out));
    let d = parse_digest_line(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", report(c, &out)));
    (d, stderr_str(&out))
}

/// The image config of `tag` in `<t>/out`.
fn config(t: &TestDir, tag: &str) -> Value {
    let layout = t.join("out");
    let m = layout_manifest(&layout, tag);
    serde_json::from_slice(&read_blob(&layout, m["config"]["digest"].as_str().unwrap())).unwrap()
}

fn label(config: &Value, key: &str) -> Value {
    let text = config["config"]["Labels"][key].as_str().unwrap_or_else(|| panic!("no label {key}: {config}"));
    serde_json::from_str(text).unwrap()
}

/// `layer name -> diff_id` of each buildpack layer, from io.buildpacks.lifecycle.metadata.
fn launch_layers(config: &Value) -> BTreeMap<String, String> {
    let md = label(config, "io.buildpacks.lifecycle.metadata");
    let mut out = BTreeMap::new();
    for bp in md["buildpacks"].as_array().unwrap() {
        for (name, l) in bp["layers"].as_object().unwrap() {
            if let Some(sha) = l["sha"].as_str() {
                out.insert(format!("{}:{name}", bp["key"].as_str().unwrap()), sha.to_string());
            }
        }
    }
    out
}

fn assert_has(haystack: &str, needle: &str, what: &str) {
    assert!(haystack.contains(needle), "{what}: expected {needle:?} in:\n{haystack}");
}

#[test]
fn composite_builds_an_image_whose_processes_run_by_name_with_the_launch_env() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    let (_, stderr) = build(&mut cnb_build(&t, &app, &bps, "v1"));
    assert_has(&stderr, "---> runtime build", "runtime's output is streamed");
    assert_has(&stderr, "app build sees GREETING=hi and plan entries: 0", "app's output, user env");
    let image = out_ref(&t, "v1");

    // The default process, with no arguments: the runtime's bin on PATH, its env, the
    // process-specific env.launch/web and profile.d.
    let web = podman_run_ok(&image, &[]);
    assert_eq!(
        web.trim(),
        "greet web from /layers/imgforge-test_runtime/runtime: RUNTIME_HOME=/layers/imgforge-test_runtime/runtime WEB_ONLY=web-only PROFILE_RAN=yes GREETING=hi"
    );
    // Another process by name: its working dir and args, no web-only env.
    let worker = podman_run_ok(&image, &["worker"]);
    assert_eq!(worker.trim(), "worker in /workspace/public WEB_ONLY=unset arg one it's");
    // Every env-file suffix, over the image env set by --env.
    let env = podman_run_ok(&image, &["env-dump"]);
    for want in [
        "DEF_SET=from-default",
        "DEF_KEPT=user",
        "APPENDED=start,tail",
        "PREPENDED=head:rest",
        "OVERRIDDEN=overridden",
        "RUNTIME_HOME=/layers/imgforge-test_runtime/runtime",
        "PROFILE_RAN=yes",
    ] {
        assert!(env.lines().any(|l| l == want), "env-dump: expected line {want:?} in:\n{env}");
    }
    assert!(!env.contains("BUILD_ONLY"), "env.build must not reach the image:\n{env}");
    assert!(
        env.lines().any(|l| l
            .starts_with("PATH=/layers/imgforge-test_runtime/tools/bin:/layers/imgforge-test_runtime/runtime/bin:")),
        "{env}"
    );
    // A plain command gets the launch env too; the plan the runtime saw has the app's require.
    let plan = podman_run_ok(&image, &["cat", "/layers/imgforge-test_runtime/runtime/plan.toml"]);
    assert_has(&plan, "name = \"runtime\"", "runtime's plan (the [[or]] alternative)");
    assert_has(&plan, "flavour = \"vanilla\"", "require metadata");
    // SBOMs at the documented path; the slice's files in the image.
    let sbom = podman_run_ok(
        &image,
        &[
            "cat",
            "/layers/sbom/launch/imgforge-test_runtime/runtime/sbom.cdx.json",
            "/layers/sbom/launch/imgforge-test_runtime/sbom.spdx.json",
            "/workspace/public/index.html",
        ],
    );
    assert_has(&sbom, "CycloneDX", "layer SBOM");
    assert_has(&sbom, "SPDX-2.3", "launch SBOM");
    assert_has(&sbom, "<h1>hi</h1>", "slice file");

    // Labels as the lifecycle writes them.
    let cfg = config(&t, "v1");
    let bm = label(&cfg, "io.buildpacks.build.metadata");
    let ids: Vec<&str> = bm["buildpacks"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["imgforge-test/runtime", "imgforge-test/app"], "the optional extra is dropped: {bm}");
    let procs: Vec<&str> = bm["processes"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(procs, ["web", "worker", "env-dump"], "in the order launch.toml declares them");
    let web_md = bm["processes"].as_array().unwrap().iter().find(|p| p["type"] == "web").unwrap();
    assert_eq!(web_md["default"], true);
    assert_eq!(web_md["buildpackID"], "imgforge-test/app");
    assert_eq!(web_md["command"], serde_json::json!(["greet", "web"]));
    let layers = launch_layers(&cfg);
    assert_eq!(layers.keys().collect::<Vec<_>>(), ["imgforge-test/runtime:runtime", "imgforge-test/runtime:tools"]);
    let diff_ids: Vec<&str> =
        cfg["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    for sha in layers.values() {
        assert!(diff_ids.contains(&sha.as_str()), "label layer {sha} is an image layer");
    }
    let lm = label(&cfg, "io.buildpacks.lifecycle.metadata");
    assert_eq!(lm["app"].as_array().unwrap().len(), 2, "the slice and the rest of the app: {lm}");
    assert!(lm["sbom"]["sha"].is_string(), "{lm}");
    let runtime_md = &lm["buildpacks"][0];
    assert_eq!(runtime_md["layers"]["runtime"]["data"]["version"], "1.0.0");
    assert_eq!(runtime_md["layers"]["downloads"]["cache"], true);
    assert_eq!(runtime_md["store"]["metadata"]["runs"], 1);
    assert_eq!(label(&cfg, "io.buildpacks.project.metadata"), serde_json::json!({}));
    assert_eq!(cfg["config"]["Labels"]["org.example.built-by"], "imgforge-test/app");
    assert_eq!(cfg["config"]["WorkingDir"], "/workspace");
}

#[test]
fn rebuild_after_an_app_change_restores_the_cache_and_rewrites_no_launch_layer() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    let (d1, _) = build(&mut cnb_build(&t, &app, &bps, "v1"));
    fs::write(app.join("server.txt"), "v2\n").unwrap();
    let (d2, stderr) = build(&mut cnb_build(&t, &app, &bps, "v2"));
    assert_ne!(d1, d2);
    assert_has(&stderr, "tools: unchanged, reusing the previous layer", "the buildpack saw its restored tools.toml");
    // Unchanged launch layers are not written again (input-addressed), nor is the metadata-only one.
    assert_has(&stderr, "Layer imgforge-test/runtime:runtime: reused", "unchanged layer");
    assert_has(&stderr, "Layer imgforge-test/runtime:tools: reused", "metadata-only layer");
    assert_has(&stderr, "Layer app: written", "the changed app layer");
    let (c1, c2) = (config(&t, "v1"), config(&t, "v2"));
    assert_eq!(launch_layers(&c1), launch_layers(&c2), "no launch layer changed");
    let image = out_ref(&t, "v2");
    // Cache layer restored (second build counted), store.toml kept, metadata-only layer reused.
    let out = podman_run_ok(
        &image,
        &["cat", "/workspace/cache-count.txt", "/workspace/store-runs.txt", "/workspace/server.txt"],
    );
    assert_eq!(out, "2\n2\nv2\n");
    assert_eq!(podman_run_ok(&image, &["tools-version"]), "tools-v1\n");
    // The same inputs in a fresh cache give the same image.
    let t2 = TestDir::new();
    let (bps2, app2) = (buildpacks(&t2), sample_app(&t2));
    let mut c = cnb_build(&t2, &app2, &bps2, "v1");
    let (e1, _) = build(&mut c);
    let t3 = TestDir::new();
    let (bps3, app3) = (buildpacks(&t3), sample_app(&t3));
    let (e2, _) = build(&mut cnb_build(&t3, &app3, &bps3, "v1"));
    assert_eq!(e1, e2, "same inputs, same digest");
    // --clear-cache starts the cache layers empty.
    let (_, _) = build(cnb_build(&t, &app, &bps, "v3").arg("--clear-cache"));
    assert_eq!(podman_run_ok(&out_ref(&t, "v3"), &["cat", "/workspace/cache-count.txt"]), "1\n");
}

#[test]
fn an_unprivileged_user_builds_the_same_image() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    let (as_root, _) = build(&mut cnb_build(&t, &app, &bps, "v1"));
    let Some(mut c) = t.imgforge_as_test_user() else {
        eprintln!("note: not root, so the build as another user is not run (this run was unprivileged already)");
        return;
    };
    let out_dir = t.user_dir("user-out");
    c.arg("build")
        .arg(&app)
        .arg("--base")
        .arg(t.busybox_copy())
        .arg("-t")
        .arg(format!("oci:{}/out:v1", out_dir.display()))
        .arg("--buildpacks-dir")
        .arg(&bps)
        .args(["--isolation", "host"])
        .args(["--env", "GREETING=hi", "--env", "DEF_KEPT=user", "--env", "APPENDED=start"])
        .args(["--env", "PREPENDED=rest", "--env", "OVERRIDDEN=user"]);
    let (as_user, _) = build(&mut c);
    assert_eq!(as_root, as_user, "the rootless build (user namespace, no privileges) gives the same image");
}

#[test]
fn workdir_moves_the_app_during_the_build_and_in_the_image() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    // /opt exists on the host: inside the build's namespace it is replaced, not written to.
    let (_, stderr) = build(cnb_build(&t, &app, &bps, "v1").args(["--workdir", "/opt/app"]));
    assert_has(&stderr, "---> runtime build", "built");
    let out = podman_run_ok(&out_ref(&t, "v1"), &["sh", "-c", "pwd; cat cache-count.txt"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["/opt/app", "1"], "{out}");
    assert!(!Path::new("/opt/app/cache-count.txt").exists(), "the build wrote into the host's /opt");
}

#[test]
fn a_composite_named_with_buildpack_as_a_directory_or_tgz_finds_its_buildpacks() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    // A directory: the buildpacks it names are next to it (no --buildpacks-dir).
    let mut c = t.imgforge();
    c.arg("build").arg(&app).arg("--base").arg(t.busybox_copy()).arg("-t").arg(out_ref(&t, "dir"));
    c.arg("--buildpack").arg(bps.join("meta")).args(["--isolation", "host"]);
    build(&mut c);
    assert!(podman_run_ok(&out_ref(&t, "dir"), &[]).starts_with("greet web from /layers/imgforge-test_runtime/runtime"));
    // A .tgz elsewhere: its buildpacks come from --buildpacks-dir.
    let tgz = t.mkdir("archives").join("meta.tgz");
    run_ok(Command::new("tar").arg("-czf").arg(&tgz).arg("-C").arg(&bps).arg("meta"));
    share(&tgz);
    let mut c = t.imgforge();
    c.arg("build").arg(&app).arg("--base").arg(t.busybox_copy()).arg("-t").arg(out_ref(&t, "tgz"));
    c.arg("--buildpack").arg(&tgz).arg("--buildpacks-dir").arg(&bps).args(["--isolation", "host"]);
    let (_, stderr) = build(&mut c);
    assert_has(&stderr, "---> runtime build", "the composite's runtime ran");
    // A CNB buildpack, even as an archive, keeps the app at /workspace (Heroku's go to /app).
    assert_eq!(podman_run_ok(&out_ref(&t, "tgz"), &["pwd"]), "/workspace\n");
    // Without --buildpacks-dir, what the .tgz names cannot be found: the message says where it looked.
    let mut c = t.imgforge();
    c.arg("build").arg(&app).arg("--base").arg(t.busybox_copy()).arg("-t").arg(out_ref(&t, "x"));
    c.arg("--buildpack").arg(&tgz).args(["--isolation", "host"]);
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1), "{}", report(&c, &out));
    assert_has(
        &stderr_str(&out),
        "names buildpack imgforge-test/runtime@1.0.0, which is not in --buildpacks-dir nor next to",
        "message",
    );
}

#[test]
fn a_failed_build_leaves_the_kept_cache_as_it_was() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    build(&mut cnb_build(&t, &app, &bps, "v1"));
    t.write("app/fail.txt", "x");
    let mut c = cnb_build(&t, &app, &bps, "v2");
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1), "{}", report(&c, &out));
    assert_has(&stderr_str(&out), "imgforge-test/runtime@1.0.0: bin/build failed with exit code 1", "failure");
    fs::remove_file(app.join("fail.txt")).unwrap();
    // A changed app, so that the buildpacks run again (an unchanged one reuses v1 whole).
    t.write("app/server.txt", "v3\n");
    build(&mut cnb_build(&t, &app, &bps, "v3"));
    // The failed build counted in its copy of the cache, which was thrown away.
    assert_eq!(
        podman_run_ok(&out_ref(&t, "v3"), &["cat", "/workspace/cache-count.txt", "/workspace/store-runs.txt"]),
        "2\n2\n"
    );
}

#[test]
fn no_passing_group_names_the_unmet_requirement_and_who_required_it() {
    let t = TestDir::new();
    let bps = buildpacks(&t);
    let app = t.mkdir("plain");
    t.write("plain/readme.txt", "no runtime.txt here\n");
    share(&app);
    let mut c = cnb_build(&t, &app, &bps, "v1");
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1), "{}", report(&c, &out));
    let err = stderr_str(&out);
    assert_has(&err, "no group of buildpacks passes detection", "headline");
    assert_has(
        &err,
        "imgforge-test/java requires \"jdk\", which neither it nor an earlier buildpack provides",
        "unmet",
    );
    assert_has(&err, "imgforge-test/runtime@1.0.0 did not pass detect (exit code 100)", "the composite's group");
}

#[test]
fn exec_d_is_refused_with_a_message() {
    let t = TestDir::new();
    let bps = buildpacks(&t);
    let app = t.mkdir("execd-app");
    t.write("execd-app/execd.txt", "x");
    share(&app);
    let mut c = cnb_build(&t, &app, &bps, "v1");
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1), "{}", report(&c, &out));
    assert_has(
        &stderr_str(&out),
        "buildpack imgforge-test/execd@1.0.0: layer tool has exec.d, which imgforge does not support",
        "message",
    );
}

#[test]
fn a_base_without_a_shell_is_refused_for_the_launch_env() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    let mut c = t.imgforge();
    c.arg("build").arg(&app).args(["--base", "scratch", "-t"]).arg(out_ref(&t, "x")).arg("--buildpacks-dir").arg(&bps);
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1), "{}", report(&c, &out));
    assert_has(&stderr_str(&out), "the base image has no /bin/sh: imgforge's launcher needs it", "message");
}

#[test]
fn the_build_image_sandbox_runs_cnb_buildpacks_with_layers_at_slash_layers() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    let mut c = t.imgforge();
    c.arg("build")
        .arg(&app)
        .arg("--base")
        .arg(debian_base())
        .arg("-t")
        .arg(out_ref(&t, "v1"))
        .arg("--buildpacks-dir")
        .arg(&bps)
        .args(["--isolation", "userns", "--network", "none"]);
    let (_, stderr) = build(&mut c);
    assert_has(&stderr, "Buildpacks run in a user namespace on", "the sandbox was used");
    assert_has(&stderr, "no network", "--network none");
    let image = out_ref(&t, "v1");
    // bin/build was pid 1 of the sandbox's pid namespace; its layer paths hold in the image.
    assert_eq!(podman_run_ok(&image, &["cat", "/workspace/build-pid.txt"]), "pid-1\n");
    // CNB_TARGET_DISTRO_* from the Debian base's os-release.
    assert_eq!(podman_run_ok(&image, &["cat", "/workspace/target-distro.txt"]), "debian 12\n");
    assert_eq!(
        podman_run_ok(&image, &[]).trim(),
        "greet web from /layers/imgforge-test_runtime/runtime: RUNTIME_HOME=/layers/imgforge-test_runtime/runtime WEB_ONLY=web-only PROFILE_RAN=yes GREETING=unset"
    );
}

#[test]
fn network_none_needs_the_sandbox() {
    let t = TestDir::new();
    let (bps, app) = (buildpacks(&t), sample_app(&t));
    let mut c = cnb_build(&t, &app, &bps, "v1");
    c.args(["--network", "none"]);
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1), "{}", report(&c, &out));
    assert_has(&stderr_str(&out), "--network none needs --isolation userns", "message");
}

#[test]
fn a_group_mixing_cnb_and_heroku_buildpacks_is_refused() {
    let t = TestDir::new();
    let bps = buildpacks(&t);
    let heroku = t.join("heroku-node");
    copy_tree(&testdata("buildpacks/node"), &heroku);
    share(&heroku);
    let app = sample_app(&t);
    let mut c = t.imgforge();
    c.arg("build").arg(&app).arg("--base").arg(t.busybox_copy()).arg("-t").arg(out_ref(&t, "x"));
    c.arg("--buildpack").arg(bps.join("runtime")).arg("--buildpack").arg(&heroku);
    let out = run(&mut c);
    assert_eq!(out.status.code(), Some(1), "{}", report(&c, &out));
    assert_has(
        &stderr_str(&out),
        "mix Cloud Native Buildpacks (runtime, with buildpack.toml) and Heroku-classic buildpacks (heroku-node",
        "message",
    );
}
