//! The rootless build sandbox (`--isolation userns`, `--build-image`, `--network`), driven
//! through the real binary as the unprivileged test user (tests/run.sh creates it, with
//! /etc/subuid and /etc/subgid ranges, when the tests run as root).
//!
//! The buildpack is testdata/buildpacks/sandbox-probe: its compile prints what it can see
//! (the build image's marker, a host file, a server on the host's loopback, its pid, fds
//! and the programs of the processes it sees) and chowns two entries to 1000:1000.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use imgforge::layers::{decompress, Compression, EntryType, LayerReader, Limits};

/// imgforge as the unprivileged test user (or as ourselves when not root).
fn user_imgforge(t: &TestDir) -> Command {
    t.imgforge_as_test_user().unwrap_or_else(|| t.imgforge())
}

fn user_cache(t: &TestDir) -> PathBuf {
    if test_user().is_some() {
        t.join("user-cache")
    } else {
        t.cache_dir()
    }
}

fn probe_buildpack(t: &TestDir) -> PathBuf {
    let dst = t.join("buildpacks/sandbox-probe");
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    copy_tree(&testdata("buildpacks/sandbox-probe"), &dst);
    share(&dst);
    dst
}

/// A build image: busybox plus `/imgforge-marker/marker.txt`, which no other image has.
fn marker_build_image(t: &TestDir) -> String {
    let app = t.mkdir("marker-app");
    t.write("marker-app/marker.txt", "from-the-build-image\n");
    share(&app);
    let out = t.user_dir("build-image");
    let reference = format!("oci:{}:latest", out.display());
    build_ok(user_imgforge(t).arg("build").arg(&app).args([
        "--base",
        &t.busybox_copy(),
        "--workdir",
        "/imgforge-marker",
        "-t",
        &reference,
    ]));
    reference
}

fn app(t: &TestDir, name: &str, rev: &str) -> PathBuf {
    let app = t.mkdir(name);
    t.write(format!("{name}/index.txt"), format!("app {rev}\n"));
    share(&app);
    app
}

/// The probe's lines (`       key: value`) from a build's stderr.
fn probe_lines(stderr: &str) -> Vec<String> {
    stderr.lines().filter_map(|l| l.strip_prefix("imgforge:        ")).map(str::to_string).collect()
}

fn probe_value<'a>(lines: &'a [String], key: &str) -> Vec<&'a str> {
    lines.iter().filter_map(|l| l.strip_prefix(&format!("{key}: "))).collect()
}

/// Every entry of every added layer of `tag` in the layout: (path, uid, gid).
fn layer_owners(layout: &Path, tag: &str) -> Vec<(String, u64, u64)> {
    let m = layout_manifest(layout, tag);
    let mut out = Vec::new();
    for l in m["layers"].as_array().unwrap() {
        let blob = read_blob(layout, l["digest"].as_str().unwrap());
        let c = Compression::detect(&blob);
        let mut r = LayerReader::new(decompress(&blob[..], c).unwrap(), Limits::default());
        while let Some(e) = r.next_entry().unwrap() {
            let mut sink = Vec::new();
            r.data().read_to_end(&mut sink).unwrap();
            if e.kind != EntryType::Dir || e.path.starts_with(b"app") {
                out.push((e.path_lossy(), e.uid, e.gid));
            }
        }
    }
    out
}

#[test]
fn buildpack_runs_inside_the_build_image_sees_no_host_file_and_its_chown_reaches_the_layer() {
    let t = TestDir::new();
    let build_image = marker_build_image(&t);
    let bp = probe_buildpack(&t);
    // Readable by the test user: only the sandbox can hide it.
    let host_file = t.write("host-only/secret.txt", "host secret\n");
    share(&t.join("host-only"));
    let app = app(&t, "app", "1");
    let out = t.user_dir("out");
    let dest = format!("oci:{}:probe", out.display());
    let mut cmd = user_imgforge(&t);
    cmd.arg("build").arg(&app).args(["--base", &t.busybox_copy(), "--build-image", &build_image]);
    cmd.args(["--isolation", "userns", "--compression", "none", "-t", &dest]);
    cmd.arg("--buildpack").arg(&bp).arg("--env").arg(format!("HOST_FILE={}", host_file.display()));
    let o = run_ok(&mut cmd);
    let stderr = stderr_str(&o);
    let lines = probe_lines(&stderr);
    let ctx = || report(&cmd, &o);

    assert!(stderr.contains("Buildpacks run in a user namespace on"), "{}", ctx());
    assert_eq!(probe_value(&lines, "marker"), ["from-the-build-image"], "{}", ctx());
    assert_eq!(probe_value(&lines, "host file"), ["invisible"], "{}", ctx());
    assert!(host_file.is_file(), "the host file is really there");
    assert_eq!(probe_value(&lines, "pid"), ["1"], "compile is pid 1 of its own pid namespace: {}", ctx());
    assert_eq!(probe_value(&lines, "uid"), ["0"], "{}", ctx());
    assert_eq!(probe_value(&lines, "chown"), ["1000:1000"], "{}", ctx());
    // No fd from imgforge: stdio, the shell's own script and its command-substitution pipe.
    let fds: Vec<&str> = lines.iter().filter(|l| l.starts_with("fd ")).map(String::as_str).collect();
    assert!(!fds.is_empty(), "{}", ctx());
    for fd in &fds {
        let target = fd.split_once(": ").map(|x| x.1).unwrap_or("");
        assert!(
            target == "/dev/null" || target.starts_with("pipe:") || target.starts_with("/imgforge/buildpacks/0/bin/"),
            "unexpected fd inside the sandbox: {fd}\n{}",
            ctx()
        );
    }
    // Only the build image's programs run in the sandbox; imgforge's binary is not there.
    let exes = probe_value(&lines, "exe");
    assert!(!exes.is_empty(), "{}", ctx());
    for exe in exes {
        assert!(!exe.contains("user-bin") && !exe.ends_with("/imgforge"), "imgforge visible as {exe}: {}", ctx());
        assert!(exe.starts_with("/bin/") || exe.starts_with("/usr/"), "unexpected process {exe}: {}", ctx());
    }

    // Ownership in the layers: what the buildpack chowned is 1000:1000, the rest is the
    // app owner (busybox has no User: 0:0).
    let owners = layer_owners(&out, "probe");
    let find = |p: &str| owners.iter().find(|(path, ..)| path == p).unwrap_or_else(|| panic!("{p} not in {owners:?}"));
    assert_eq!(find("app/owned.txt").1, 1000, "{owners:?}");
    assert_eq!(find("app/owned.txt").2, 1000, "{owners:?}");
    assert_eq!((find("app/owned-dir").1, find("app/owned-dir").2), (1000, 1000), "{owners:?}");
    assert_eq!((find("app/owned-dir/file.txt").1, find("app/owned-dir/file.txt").2), (1000, 1000));
    assert_eq!((find("app/index.txt").1, find("app/index.txt").2), (0, 0), "{owners:?}");
    // The marker belongs to the build image only, not to the image built on busybox.
    assert!(!owners.iter().any(|(p, ..)| p.contains("imgforge-marker")), "{owners:?}");
}

/// A one-shot HTTP server on the host's loopback; returns its port.
fn serve_on_loopback() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom-the-host\n");
        }
    });
    port
}

#[test]
fn network_none_cannot_reach_a_server_on_the_hosts_loopback_and_host_can() {
    let t = TestDir::new();
    let bp = probe_buildpack(&t);
    let port = serve_on_loopback();
    let out = t.user_dir("out");
    let base = t.busybox_copy();
    let mut results = Vec::new();
    for (network, rev) in [("host", "1"), ("none", "2")] {
        let app = app(&t, &format!("app-{network}"), rev);
        let mut cmd = user_imgforge(&t);
        cmd.arg("build").arg(&app).args(["--base", &base, "--isolation", "userns", "--network", network]);
        cmd.arg("--buildpack").arg(&bp).arg("--env").arg(format!("PROBE_PORT={port}"));
        cmd.arg("-t").arg(format!("oci:{}:{network}", out.display()));
        let o = run_ok(&mut cmd);
        let lines = probe_lines(&stderr_str(&o));
        results.push((
            network,
            probe_value(&lines, "network").iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            report(&cmd, &o),
        ));
    }
    assert_eq!(results[0].1, ["reachable from-the-host"], "--network host: {}", results[0].2);
    assert_eq!(results[1].1, ["unreachable"], "--network none: {}", results[1].2);
}

#[test]
fn a_second_build_with_the_same_build_image_does_not_unpack_it_again() {
    let t = TestDir::new();
    let bp = probe_buildpack(&t);
    let out = t.user_dir("out");
    let base = t.busybox_copy();
    let mut stderrs = Vec::new();
    for rev in ["1", "2"] {
        let app = app(&t, &format!("app{rev}"), rev);
        let mut cmd = user_imgforge(&t);
        cmd.arg("build").arg(&app).args(["--base", &base, "--isolation", "userns", "--buildpack"]).arg(&bp);
        cmd.arg("-t").arg(format!("oci:{}:r{rev}", out.display()));
        let o = run_ok(&mut cmd);
        stderrs.push(stderr_str(&o));
    }
    let rootfs_dirs: Vec<_> = fs::read_dir(user_cache(&t).join("rootfs-v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(rootfs_dirs.len(), 1, "one unpacked build image, no leftovers: {rootfs_dirs:?}");
    // The sandboxes' overlay dirs and the build dirs (with files of other uids) are gone.
    let tmp: Vec<_> = fs::read_dir(user_cache(&t).join("tmp")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(tmp.is_empty(), "left in the cache's tmp: {tmp:?}");
    assert!(stderrs[0].contains("Unpacking the build image"), "{}", stderrs[0]);
    assert!(stderrs[0].contains(": unpacked ("), "{}", stderrs[0]);
    assert!(!stderrs[1].contains("Unpacking the build image"), "{}", stderrs[1]);
    assert!(stderrs[1].contains("reusing its unpacked filesystem"), "{}", stderrs[1]);
}

#[test]
fn isolation_host_runs_on_the_host_and_network_none_needs_the_sandbox() {
    let t = TestDir::new();
    let bp = probe_buildpack(&t);
    let app = app(&t, "app", "1");
    let out = t.user_dir("out");
    let base = t.busybox_copy();
    let mut cmd = user_imgforge(&t);
    cmd.arg("build").arg(&app).args(["--base", &base, "--isolation", "host", "--network", "none", "--buildpack"]);
    cmd.arg(&bp).arg("-t").arg(format!("oci:{}:x", out.display()));
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(1), "{}", report(&cmd, &o));
    assert!(stderr_str(&o).contains("--network none needs --isolation userns"), "{}", report(&cmd, &o));
    assert!(o.stdout.is_empty());
}

/// A copy of the busybox layout with `layer` (an uncompressed tar) added on top, tagged
/// `latest`; returns its directory.
fn busybox_plus_layer(t: &TestDir, name: &str, layer: &[u8]) -> PathBuf {
    let dir = t.join(name);
    copy_tree(&busybox_layout(), &dir);
    let put = |bytes: &[u8]| -> String {
        let d = sha256_digest(bytes);
        fs::write(blob_path(&dir, &d), bytes).unwrap();
        d
    };
    let layer_digest = put(layer);
    let mut manifest = layout_manifest(&dir, "latest");
    let mut config: serde_json::Value =
        serde_json::from_slice(&read_blob(&dir, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(layer_digest.clone().into());
    if let Some(h) = config["history"].as_array_mut() {
        h.push(serde_json::json!({"created_by": "crafted"}));
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put(&config_bytes);
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config_bytes.len().into();
    manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": layer_digest,
        "size": layer.len(),
    }));
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put(&manifest_bytes);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    share(&dir);
    dir
}

#[test]
fn a_crafted_build_image_layer_fails_the_build_naming_image_layer_and_entry_and_writes_nothing_outside() {
    let t = TestDir::new();
    let bp = probe_buildpack(&t);
    let app = app(&t, "app", "1");
    let out = t.user_dir("out");
    // A symlink to ../outside, then a file through it: refused by neither rule alone
    // (links are kept verbatim), so the write must stay in the root and the missing
    // target fail the build. And a plain ../ path.
    let corpus = repo_root().join("testdata/layers/malicious");
    for (case, entry, why) in [
        ("symlink-outside-then-write.tar", "link/pwned", "symlink to a missing directory"),
        ("dotdot-file.tar", "../outside/pwned", "\"..\""),
    ] {
        let layer = fs::read(corpus.join(case)).unwrap();
        let dir = busybox_plus_layer(&t, &format!("crafted-{}", case.trim_end_matches(".tar")), &layer);
        let reference = format!("oci:{}:latest", dir.display());
        let mut cmd = user_imgforge(&t);
        cmd.arg("build").arg(&app).args(["--base", &t.busybox_copy(), "--build-image", &reference]);
        cmd.args(["--isolation", "userns", "--buildpack"]).arg(&bp).arg("-t").arg(format!("oci:{}:x", out.display()));
        let o = run(&mut cmd);
        let stderr = stderr_str(&o);
        assert_eq!(o.status.code(), Some(1), "{}", report(&cmd, &o));
        assert!(o.stdout.is_empty(), "{}", report(&cmd, &o));
        for needed in [reference.as_str(), "layer 2", entry, why] {
            assert!(stderr.contains(needed), "{case}: the error does not say {needed:?}\n{}", report(&cmd, &o));
        }
        assert!(!stderr.contains("Sandbox probe"), "compile must not run: {}", report(&cmd, &o));
        // Nothing escaped next to the unpack directory, and no partial rootfs is left.
        let rootfs_v1 = user_cache(&t).join("rootfs-v1");
        let names: Vec<String> =
            fs::read_dir(&rootfs_v1).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| n.ends_with(".lock")), "{case}: left in rootfs-v1: {names:?}");
        assert!(!user_cache(&t).join("outside").exists() && !t.join("outside").exists());
    }
}

/// Pids of processes whose environment holds `needle` (e.g. `STACK=<unique>`).
fn pids_with_env(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(env) = fs::read(e.path().join("environ")) {
            if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn killing_imgforge_mid_compile_leaves_no_process_of_the_sandbox_behind() {
    let t = TestDir::new();
    let bp = t.join("buildpacks/sleeper");
    fs::create_dir_all(bp.parent().unwrap()).unwrap();
    copy_tree(&testdata("buildpacks/sleeper"), &bp);
    let app = app(&t, "app", "1");
    // The sleeper writes its pid to the path in `sleep` (inside: the build dir), then
    // `exec sleep 120`. A unique STACK finds its processes from here.
    fs::write(app.join("sleep"), "/app/started").unwrap();
    let stack = format!("imgforge-kill-test-{}", std::process::id());
    let out = t.mkdir("out");
    let mut cmd = t.imgforge();
    cmd.arg("build").arg(&app).args(["--base", &t.busybox_copy(), "--isolation", "userns", "--stack", &stack]);
    cmd.arg("--buildpack").arg(&bp).arg("-t").arg(format!("oci:{}:x", out.display()));
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let needle = format!("STACK={stack}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let started = loop {
        let found: Vec<PathBuf> = fs::read_dir(t.cache_dir().join("tmp"))
            .map(|rd| rd.flatten().map(|e| e.path().join("app/started")).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        if let Some(p) = found.into_iter().next() {
            break p;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("imgforge ended ({status}) before compile started");
        }
        assert!(std::time::Instant::now() < deadline, "compile did not start in 60 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(fs::read_to_string(&started).unwrap().trim(), "1", "compile is pid 1 in its namespace");
    assert!(!pids_with_env(&needle).is_empty(), "the sleeping compile is not found by its STACK");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = pids_with_env(&needle);
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "processes of the killed build still run: {left:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A work directory as a killed build leaves it in `<cache>/tmp`: a tree with mode-000
/// directories (which a buildpack may make), beside its lock file.
fn leftover(tmp: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = tmp.join(name);
    fs::create_dir_all(dir.join("app/locked/deeper")).unwrap();
    fs::write(dir.join("app/locked/deeper/file"), "x").unwrap();
    let lock = tmp.join(format!("{name}.lock"));
    fs::write(&lock, "").unwrap();
    (dir, lock)
}

#[test]
fn a_later_build_removes_what_dead_builds_left_but_not_what_a_live_one_holds() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestDir::new();
    let mut cmd = user_imgforge(&t); // makes the user's cache dir
    let tmp = user_cache(&t).join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let (dead_build, dead_build_lock) = leftover(&tmp, "build-dead01");
    let (dead_sandbox, _) = leftover(&tmp, "sandbox-dead02");
    let (live, live_lock) = leftover(&tmp, "build-live03");
    if let Some(u) = test_user() {
        run_ok(Command::new("chown").arg("-R").arg(format!("{}:{}", u.uid, u.gid)).arg(user_cache(&t)));
    }
    for d in [&dead_build, &dead_sandbox, &live] {
        for sub in ["app/locked/deeper", "app/locked"] {
            fs::set_permissions(d.join(sub), fs::Permissions::from_mode(0o000)).unwrap();
        }
    }
    // A live build holds its lock (this process, for the test).
    let held = fs::File::open(&live_lock).unwrap();
    held.try_lock().unwrap();

    let bp = probe_buildpack(&t);
    let app = app(&t, "app", "1");
    let out = t.user_dir("out");
    cmd.arg("build").arg(&app).args(["--base", &t.busybox_copy(), "--isolation", "userns", "--buildpack"]).arg(&bp);
    cmd.arg("-t").arg(format!("oci:{}:x", out.display()));
    let o = run_ok(&mut cmd);
    let ctx = || report(&cmd, &o);
    // The sweep runs beside the build, which takes longer than removing a few files.
    assert!(!dead_build.exists() && !dead_build_lock.exists(), "a dead build's directory is left\n{}", ctx());
    assert!(!dead_sandbox.exists(), "a dead sandbox's directory is left\n{}", ctx());
    assert!(live.join("app").exists() && live_lock.exists(), "a live build's directory was removed\n{}", ctx());
    // And this build left nothing of its own.
    let mut names: Vec<String> =
        fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["build-live03", "build-live03.lock"], "{}", ctx());
    drop(held);
    fs::set_permissions(live.join("app/locked"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(live.join("app/locked/deeper"), fs::Permissions::from_mode(0o755)).unwrap();
}
