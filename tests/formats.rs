//! Base images in every accepted shape, and hostile ones: Docker schema 2 manifests and
//! manifest lists, platform selection, docker-archive bases, tampered blobs, malformed and
//! oversized documents. Each bad input must fail with exit 1 and a message naming it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn write_index(layout: &Path, manifests: Value) {
    let idx =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    fs::write(layout.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

/// A copy of the busybox layout whose image is re-expressed as a Docker manifest list with
/// an amd64 and an arm64 entry (the arm64 one differs only in its config's architecture).
/// Returns the layout and the two manifest digests.
fn docker_list_layout(t: &TestDir) -> (PathBuf, String, String) {
    let layout = t.join("docker-list");
    copy_tree(&busybox_layout(), &layout);
    let oci = layout_manifest(&layout, "latest");
    let config: Value = serde_json::from_slice(&read_blob(&layout, oci["config"]["digest"].as_str().unwrap())).unwrap();
    let mut digests = Vec::new();
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut c = config.clone();
        c["architecture"] = arch.into();
        let (cd, cs) = write_blob(&layout, &serde_json::to_vec(&c).unwrap());
        let layers: Vec<Value> = oci["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| json!({"mediaType": DOCKER_LAYER, "digest": l["digest"], "size": l["size"]}))
            .collect();
        let m = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": cd, "size": cs}, "layers": layers});
        let (md, ms) = write_blob(&layout, &serde_json::to_vec(&m).unwrap());
        entries.push(json!({"mediaType": DOCKER_MANIFEST, "digest": md, "size": ms,
            "platform": {"architecture": arch, "os": "linux"}}));
        digests.push(md);
    }
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries});
    let (ld, ls) = write_blob(&layout, &serde_json::to_vec(&list).unwrap());
    write_index(
        &layout,
        json!([{"mediaType": DOCKER_LIST, "digest": ld, "size": ls,
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]),
    );
    (layout, digests.remove(0), digests.remove(0))
}

fn build(t: &TestDir, base: &str, extra: &[&str]) -> std::process::Output {
    let out = t.join("out");
    let mut c = t.imgforge();
    c.arg("build").arg(hello_app()).arg("--base").arg(base).arg("-t").arg(format!("oci:{}:x", out.display()));
    c.args(extra);
    run(&mut c)
}

fn base_digest_of(t: &TestDir) -> String {
    let config = skopeo_inspect_config(&format!("oci:{}:x", t.join("out").display()));
    config["config"]["Labels"]["org.opencontainers.image.base.digest"].as_str().unwrap().to_string()
}

#[test]
fn docker_manifest_list_resolves_to_the_platform() {
    let t = TestDir::new();
    let (layout, amd64, arm64) = docker_list_layout(&t);
    let base = format!("oci:{}:multi", layout.display());

    let out = build(&t, &base, &[]);
    assert!(out.status.success(), "{}", stderr_str(&out));
    assert_eq!(base_digest_of(&t), amd64, "the host (amd64) entry must be chosen");
    // Docker layer media types come out in OCI spelling, same bytes and digest.
    let m = layout_manifest(&t.join("out"), "x");
    assert_eq!(m["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(m["layers"][0]["digest"], layout_manifest(&busybox_layout(), "latest")["layers"][0]["digest"]);

    let out = build(&t, &base, &["--platform", "linux/arm64"]);
    assert!(out.status.success(), "{}", stderr_str(&out));
    assert_eq!(base_digest_of(&t), arm64);
    let config = skopeo_inspect_config(&format!("oci:{}:x", t.join("out").display()));
    assert_eq!(config["architecture"], "arm64");

    let out = build(&t, &base, &["--platform", "linux/s390x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_str(&out);
    assert!(err.contains("no image for linux/s390x") && err.contains("linux/arm64"), "{err}");
}

#[test]
fn docker_archive_base_round_trips() {
    let t = TestDir::new();
    let archive = t.join("base.tar");
    let mut c = t.imgforge();
    c.arg("build").arg(hello_app()).arg("--base").arg(busybox_ref());
    c.arg("-t").arg(format!("docker-archive:{}:first:1", archive.display()));
    build_ok(&mut c);
    // Build again on top of the docker-archive: its (gzip) layers are kept as they are.
    let archived = imgforge_inspect(&format!("docker-archive:{}", archive.display()));
    let out = build(&t, &format!("docker-archive:{}", archive.display()), &["--workdir", "/second"]);
    assert!(out.status.success(), "{}", stderr_str(&out));
    let r = format!("oci:{}:x", t.join("out").display());
    let m = layout_manifest(&t.join("out"), "x");
    let layers = m["layers"].as_array().unwrap();
    for (i, base_layer) in archived["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(layers[i]["digest"], base_layer["digest"], "base layer {i} kept byte for byte\n{m:#}");
        assert_eq!(layers[i]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip", "{m:#}");
    }
    let rootfs = umoci_unpack_rootless(&t.join("out"), "x", &t.join("bundle"));
    assert!(rootfs.join("workspace/public/index.html").is_file(), "the first build's app is in the base");
    assert!(rootfs.join("second/public/index.html").is_file());
    assert!(skopeo_inspect(&r)["Layers"].as_array().unwrap().len() >= 3);
}

/// The layers of a docker-archive, as `manifest.json` lists them: (name, bytes).
fn docker_archive_layers(archive: &Path) -> Vec<(String, Vec<u8>)> {
    let mut members = std::collections::HashMap::new();
    let mut ar = tar::Archive::new(fs::File::open(archive).unwrap());
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        members.insert(name, bytes);
    }
    let manifest: Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    let names = manifest[0]["Layers"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string());
    names.map(|n| (n.clone(), members.remove(&n).unwrap_or_else(|| panic!("no member {n}")))).collect()
}

/// docker-archive output keeps gzip layers compressed, byte for byte the OCI blobs (the
/// Debian base took 259 MB uncompressed against 122 MB), and podman loads and runs it;
/// zstd layers, which older `docker load` cannot read, go in as plain tar.
#[test]
fn docker_archive_keeps_gzip_layers_compressed_and_podman_runs_it() {
    let t = TestDir::new();
    let archive = t.join("gz.tar");
    let layout = t.join("layout");
    let mut c = t.imgforge();
    c.arg("build").arg(hello_app()).arg("--base").arg(busybox_ref()).args(["--env", "GREETING=gz"]);
    c.arg("-t").arg(format!("docker-archive:{}:imgforge-test/gz:latest", archive.display()));
    c.arg("-t").arg(format!("oci:{}:gz", layout.display()));
    build_ok(&mut c);
    let oci_layers: Vec<String> = layout_manifest(&layout, "gz")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let stored = docker_archive_layers(&archive);
    assert_eq!(stored.len(), oci_layers.len());
    for ((name, bytes), digest) in stored.iter().zip(&oci_layers) {
        assert_eq!(&bytes[..2], [0x1f, 0x8b], "{name} should be gzip");
        assert_eq!(&sha256_digest(bytes), digest, "{name} should be the OCI blob as it is");
    }
    let image = podman_load(&archive);
    assert_eq!(podman_run_ok(&image, &["worker"]).trim_end(), "worker says gz");
    podman_rmi(&image);

    let zarchive = t.join("zstd.tar");
    let mut c = t.imgforge();
    c.arg("build").arg(hello_app()).arg("--base").arg(busybox_ref()).args(["--compression", "zstd"]);
    c.arg("-t").arg(format!("docker-archive:{}:imgforge-test/zstd:latest", zarchive.display()));
    build_ok(&mut c);
    let stored = docker_archive_layers(&zarchive);
    let (app_name, app) = stored.last().unwrap();
    assert_eq!(&app[257..262], b"ustar", "{app_name}: a zstd layer goes in as plain tar");
}

#[test]
fn tampered_blobs_are_refused_naming_them() {
    let t = TestDir::new();
    let manifest = layout_manifest(&busybox_layout(), "latest");
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    for (what, digest) in [("layer", &layer), ("config", &config)] {
        let layout = t.join(format!("tampered-{what}"));
        copy_tree(&busybox_layout(), &layout);
        let p = blob_path(&layout, digest);
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&p, &bytes).unwrap();
        let out = build(&t, &format!("oci:{}:latest", layout.display()), &[]);
        assert_eq!(out.status.code(), Some(1), "tampered {what} accepted: {}", stderr_str(&out));
        let err = stderr_str(&out);
        assert!(err.contains(digest.as_str()) || err.contains(&digest[7..19]), "{what}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!t.join("out/index.json").exists(), "nothing may be written from a tampered base");
    }
}

#[test]
fn malformed_and_oversized_documents_fail_cleanly() {
    let t = TestDir::new();
    type Breaker = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "index not json",
            Box::new(|l: &Path| fs::write(l.join("index.json"), "{not json").unwrap()),
            "not valid JSON",
        ),
        (
            "index schema 1",
            Box::new(|l: &Path| fs::write(l.join("index.json"), r#"{"schemaVersion":1,"manifests":[]}"#).unwrap()),
            "schema 1",
        ),
        (
            "oversized manifest",
            Box::new(|l: &Path| {
                let big = format!(r#"{{"schemaVersion":2,"x":"{}"}}"#, "a".repeat(5 << 20));
                let (d, s) = write_blob(l, big.as_bytes());
                write_index(
                    l,
                    json!([{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": s,
                    "annotations": {"org.opencontainers.image.ref.name": "latest"}}]),
                );
            }),
            "limit",
        ),
        ("missing tag", Box::new(|_: &Path| {}), "no image tagged \"nope\""),
    ];
    for (i, (name, break_it, want)) in cases.iter().enumerate() {
        let layout = t.join(format!("bad{i}"));
        copy_tree(&busybox_layout(), &layout);
        break_it(&layout);
        let tag = if *name == "missing tag" { "nope" } else { "latest" };
        let out = build(&t, &format!("oci:{}:{tag}", layout.display()), &[]);
        let err = stderr_str(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(want), "{name}: expected {want:?} in: {err}");
        assert!(err.contains(&format!("bad{i}")), "{name}: the message must name the base: {err}");
    }
}
