//! The test harness and the committed fixtures work with the real tools:
//! skopeo reads the busybox layout, umoci unpacks it rootless, and rootless
//! podman runs it (as $IMGFORGE_TEST_USER when root). These pass without
//! imgforge; if they fail, the build tests' failures mean nothing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

#[test]
fn busybox_fixture_blobs_match_their_digests() {
    let layout = busybox_layout();
    assert_eq!(read_json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let tags = index_tags(&layout);
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert_eq!(tags[0].0, "latest");
    // read_blob checks every blob against its name
    let manifest: serde_json::Value = serde_json::from_slice(&read_blob(&layout, &tags[0].1)).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&read_blob(&layout, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = read_blob(&layout, layers[0]["digest"].as_str().unwrap());
    assert_eq!(layer.len() as u64, layers[0]["size"].as_u64().unwrap());
    assert!(layer.len() < 2 * 1024 * 1024, "fixture layer grew to {} bytes", layer.len());
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    assert_eq!(config["created"], DEFAULT_CREATED);
}

#[test]
fn busybox_fixture_is_accepted_by_skopeo() {
    let r = busybox_ref();
    let info = skopeo_inspect(&r);
    assert_eq!(info["Architecture"], "amd64", "{info:#}");
    assert_eq!(info["Os"], "linux", "{info:#}");
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(1), "{info:#}");
    assert_eq!(info["Env"][0], BUSYBOX_PATH_ENV, "{info:#}");
    let config = skopeo_inspect_config(&r);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(config["created"], DEFAULT_CREATED);
    // the digest skopeo computes is the one index.json names
    let digest = skopeo_digest(&r);
    assert_eq!(digest, index_tags(&busybox_layout())[0].1);
    assert_eq!(sha256_digest(&skopeo_raw_manifest(&r)), digest);
}

#[test]
fn busybox_fixture_unpacks_with_umoci_rootless() {
    let t = TestDir::new();
    let rootfs = umoci_unpack_rootless(&busybox_layout(), "latest", &t.join("bundle"));
    assert!(rootfs.join("bin/busybox").is_file());
    for applet in [
        "bin/sh",
        "bin/ls",
        "bin/cat",
        "bin/echo",
        "usr/bin/env",
        "usr/bin/id",
        "usr/sbin/httpd",
        "usr/bin/wget",
        "bin/sleep",
        "usr/bin/test",
        "usr/bin/printf",
        "bin/pwd",
        "bin/stat",
        "usr/bin/find",
        "bin/readlink",
        "usr/bin/nc",
    ] {
        let p = rootfs.join(applet);
        let target = fs::read_link(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(target.to_string_lossy().ends_with("busybox"), "{applet} -> {}", target.display());
    }
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("root:x:0:0:"), "{passwd}");
    assert!(passwd.contains("app:x:1000:1000:"), "{passwd}");
    assert!(passwd.contains("nobody:x:65534:65534:"), "{passwd}");
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.contains("app:x:1000:"), "{group}");
    let tmp_mode = fs::metadata(rootfs.join("tmp")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(tmp_mode, 0o1777, "/tmp mode {tmp_mode:o}");
    let copyright = fs::read_to_string(rootfs.join("usr/share/doc/busybox-static/copyright")).unwrap();
    assert!(copyright.contains("GNU General Public License"));
}

#[test]
fn busybox_fixture_runs_under_rootless_podman() {
    let t = TestDir::new();
    let image = t.busybox_copy();
    assert_eq!(podman_run_ok(&image, &["echo", "hi"]), "hi\n");
    // rootless: uid 0 in the container is not uid 0 outside
    let uid_map = podman_run_ok(&image, &["cat", "/proc/self/uid_map"]);
    let first: Vec<&str> = uid_map.split_whitespace().take(3).collect();
    assert_eq!(first.first(), Some(&"0"), "{uid_map}");
    assert_ne!(first.get(1), Some(&"0"), "container root is host root: {uid_map}");
    // the image's Env and Cmd apply
    let env = podman_run_ok(&image, &["env"]);
    assert!(env.contains(BUSYBOX_PATH_ENV), "{env}");
    let out = podman_run_with(&image, &["-i"], &[]);
    assert!(out.status.success(), "default Cmd sh: {}", stderr_str(&out));
    // a failing command is reported as such
    let out = podman_run(&image, &["sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn podman_serve_helper_fetches_http() {
    let t = TestDir::new();
    let image = t.busybox_copy();
    let port = free_port();
    let script = format!(
        "mkdir -p /tmp/www && echo served-by-busybox > /tmp/www/index.html && \
         exec httpd -f -v -p {port} -h /tmp/www"
    );
    let body = podman_serve_http(&image, &["sh", "-c", &script], port);
    assert_eq!(body, "served-by-busybox\n");
}

#[test]
fn podman_load_helper_loads_a_docker_archive() {
    let t = TestDir::new();
    let archive = t.join("busybox-docker.tar");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(busybox_ref())
            .arg(format!("docker-archive:{}:imgforge-test/busybox:latest", archive.display())),
    );
    let id = podman_load(&archive);
    // podman's image id is the config digest, which skopeo copy keeps
    let layout = busybox_layout();
    let manifest: serde_json::Value = serde_json::from_slice(&read_blob(&layout, &index_tags(&layout)[0].1)).unwrap();
    assert_eq!(Some(format!("sha256:{id}").as_str()), manifest["config"]["digest"].as_str());
    assert_eq!(podman_run_ok(&id, &["echo", "loaded"]), "loaded\n");
    podman_rmi(&id);
}

#[test]
#[should_panic(expected = "missing tool no-such-tool-imgforge: run tests/run.sh, which installs it")]
fn require_tool_fails_loudly() {
    require_tool("no-such-tool-imgforge");
}

#[test]
fn digest_line_parsing() {
    let d = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(parse_digest_line(format!("{d}\n").as_bytes()).unwrap(), d);
    assert!(parse_digest_line(d.as_bytes()).is_err(), "no newline");
    assert!(parse_digest_line(format!("{d}\n{d}\n").as_bytes()).is_err(), "two lines");
    assert!(parse_digest_line(format!("log\n{d}\n").as_bytes()).is_err(), "log line");
    assert!(parse_digest_line(format!("{}\n", d.to_uppercase()).as_bytes()).is_err());
}
