//! Multi-platform images (issue 17): `copy --all` of an OCI index to every transport and
//! back, with skopeo reading and round-tripping what imgforge wrote; `inspect` listing an
//! index's platforms; platform matching against an index (arm64 and its v8 variant) and the
//! error for a platform the index lacks.
//!
//! The fixture is the busybox layout re-expressed as an OCI index with a linux/amd64 and a
//! linux/arm64/v8 entry (as Docker Hub's bases list them); the two images differ only in
//! their config's architecture, so every test here runs without emulation.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::registry::{Mode, Registry};
use common::*;
use serde_json::{json, Value};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The busybox layout with tag `multi` naming an OCI index of an amd64 and an arm64/v8
/// image. Returns the layout and the index digest.
fn index_layout(t: &TestDir) -> (PathBuf, String) {
    let layout = t.join("multi");
    copy_tree(&busybox_layout(), &layout);
    let oci = layout_manifest(&layout, "latest");
    let config: Value = serde_json::from_slice(&read_blob(&layout, oci["config"]["digest"].as_str().unwrap())).unwrap();
    let mut entries = Vec::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let mut c = config.clone();
        c["architecture"] = arch.into();
        if let Some(v) = variant {
            c["variant"] = v.into();
        }
        let (cd, cs) = write_blob(&layout, &serde_json::to_vec(&c).unwrap());
        let mut m = oci.clone();
        m["config"]["digest"] = cd.into();
        m["config"]["size"] = cs.into();
        let (md, ms) = write_blob(&layout, &serde_json::to_vec(&m).unwrap());
        let mut platform = json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        entries.push(json!({"mediaType": OCI_MANIFEST, "digest": md, "size": ms, "platform": platform}));
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    let (id, is) = write_blob(&layout, &serde_json::to_vec(&index).unwrap());
    let mut top = read_index(&layout);
    top["manifests"].as_array_mut().unwrap().push(
        json!({"mediaType": OCI_INDEX, "digest": id, "size": is, "annotations": {"org.opencontainers.image.ref.name": "multi"}}),
    );
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    (layout, id)
}

/// The platforms (`os/arch[/variant]`) and manifest digests `skopeo inspect --raw` shows
/// for an index.
fn index_entries(raw: &[u8]) -> Vec<(String, String)> {
    let v: Value = serde_json::from_slice(raw).expect("index JSON");
    v["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!("{}/{}", p["os"].as_str().unwrap(), p["architecture"].as_str().unwrap());
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            (s, m["digest"].as_str().unwrap().to_string())
        })
        .collect()
}

fn copy_all(t: &TestDir, src: &str, dest: &str) -> String {
    build_ok(t.imgforge().args(["copy", "--all", src, dest]))
}

fn skopeo_arch(reference: &str, arch: &str) -> String {
    let out = run_ok(Command::new("skopeo").args([
        "--override-arch",
        arch,
        "inspect",
        "--config",
        "--tls-verify=false",
        reference,
    ]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["architecture"].as_str().unwrap().to_string()
}

#[test]
fn copy_all_keeps_the_index_in_layouts_and_archives_and_skopeo_reads_it() {
    let t = TestDir::new();
    let (layout, index_digest) = index_layout(&t);
    let src = format!("oci:{}:multi", layout.display());
    let want = index_entries(&read_blob(&layout, &index_digest));
    assert_eq!(want.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["linux/amd64", "linux/arm64/v8"]);

    for dest in [
        format!("oci:{}:copied", t.join("out").display()),
        format!("oci-archive:{}:copied", t.join("out.tar").display()),
    ] {
        let digest = copy_all(&t, &src, &dest);
        assert_eq!(digest, index_digest, "{dest}: the index keeps its bytes, so its digest");
        let raw = skopeo_raw_manifest(&dest);
        assert_eq!(sha256_digest(&raw), index_digest, "{dest}: the tag names the index itself");
        assert_eq!(index_entries(&raw), want, "{dest}");
        // each platform's image is there, with its own config
        assert_eq!(skopeo_arch(&dest, "arm64"), "arm64", "{dest}");
        assert_eq!(skopeo_arch(&dest, "amd64"), "amd64", "{dest}");
    }

    // skopeo copy --all of what imgforge wrote gives the same index back
    let back = format!("oci:{}:back", t.join("skopeo-back").display());
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--all"])
            .arg(format!("oci:{}:copied", t.join("out").display()))
            .arg(&back),
    );
    assert_eq!(sha256_digest(&skopeo_raw_manifest(&back)), index_digest);

    // without --all, copy takes this machine's platform, as a plain manifest
    let one = format!("oci:{}:one", t.join("one").display());
    let digest = build_ok(t.imgforge().args(["copy", &src, &one]));
    assert_eq!(digest, want.iter().find(|e| e.0 == "linux/amd64").unwrap().1);
    let raw: Value = serde_json::from_slice(&skopeo_raw_manifest(&one)).unwrap();
    assert_eq!(raw["mediaType"], OCI_MANIFEST);

    // a docker-archive holds no index: a clear error, and nothing written
    let archive = t.join("d.tar");
    let out = run(t.imgforge().args(["copy", "--all", &src]).arg(format!("docker-archive:{}", archive.display())));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_str(&out));
    let err = stderr_str(&out);
    assert!(err.contains("docker-archive") && err.contains("oci-archive") && err.contains("--platform"), "{err}");
    assert!(!archive.exists());
}

#[test]
fn inspect_lists_platforms_and_arm64_matches_the_v8_entry() {
    let t = TestDir::new();
    let (layout, index_digest) = index_layout(&t);
    let src = format!("oci:{}:multi", layout.display());
    let v = imgforge_inspect_with(&t, &src, &["--platform", "linux/arm64"]);
    assert_eq!(v["index"]["digest"], index_digest);
    let platforms: Vec<&str> =
        v["index"]["manifests"].as_array().unwrap().iter().map(|m| m["platform"].as_str().unwrap()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
    // linux/arm64 (no variant) picks the arm64/v8 entry
    assert_eq!(v["config"]["architecture"], "arm64");
    assert_eq!(v["config"]["variant"], "v8");

    // a platform the index lacks: the error lists what it has
    let out = run(t.imgforge().args(["inspect", &src, "--platform", "linux/s390x"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_str(&out);
    assert!(err.contains("linux/s390x") && err.contains("linux/amd64") && err.contains("linux/arm64/v8"), "{err}");

    // a plain image has no index
    let v = imgforge_inspect_with(&t, &busybox_ref(), &[]);
    assert!(v["index"].is_null(), "{v}");
}

fn imgforge_inspect_with(t: &TestDir, reference: &str, extra: &[&str]) -> Value {
    let out = run_ok(t.imgforge().args(["inspect", reference]).args(extra));
    serde_json::from_slice(&out.stdout).expect("inspect JSON")
}

#[test]
fn copy_all_through_a_registry_keeps_the_digest_and_skopeo_round_trips_it() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    let (layout, index_digest) = index_layout(&t);
    let src = format!("oci:{}:multi", layout.display());
    let pushed = reg.reference("multi:1");
    let mut c = t.imgforge();
    c.args(["--tls-verify=false", "copy", "--all", &src, &pushed]);
    assert_eq!(build_ok(&mut c), index_digest, "pushed as the same index");
    let raw = run_ok(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &pushed])).stdout;
    assert_eq!(sha256_digest(&raw), index_digest, "the registry serves the index itself under the tag");
    assert_eq!(skopeo_arch(&pushed, "arm64"), "arm64");
    assert_eq!(skopeo_arch(&pushed, "amd64"), "amd64");

    // skopeo copy --all out of the registry and imgforge copy --all back in: same digest
    let via_skopeo = format!("oci:{}:x", t.join("via-skopeo").display());
    run_ok(Command::new("skopeo").args(["copy", "--quiet", "--all", "--src-tls-verify=false", &pushed, &via_skopeo]));
    assert_eq!(sha256_digest(&skopeo_raw_manifest(&via_skopeo)), index_digest);
    let again = reg.reference("multi:2");
    let mut c = t.imgforge();
    c.args(["--tls-verify=false", "copy", "--all", &via_skopeo, &again]);
    assert_eq!(build_ok(&mut c), index_digest);
    let mut c = t.imgforge();
    c.args(["--tls-verify=false", "copy", "--all", &again]).arg(format!("oci:{}:y", t.join("pulled").display()));
    assert_eq!(build_ok(&mut c), index_digest, "imgforge pulls the whole index back");
}

/// The test setup's Debian index (tests/run.sh: amd64, and arm64 made with debootstrap
/// under qemu-user): skopeo sees both platforms, an app built for linux/arm64 on it gets the
/// arm64 base and says arm64 in its config, and podman runs it under emulation.
#[test]
fn the_debian_index_holds_both_platforms_and_an_arm64_build_runs_under_emulation() {
    let t = TestDir::new();
    let base = multiarch_base();
    let entries = index_entries(&skopeo_raw_manifest(&base));
    assert_eq!(entries.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["linux/amd64", "linux/arm64/v8"]);
    assert_eq!(skopeo_arch(&base, "arm64"), "arm64");

    t.write("app/hello.txt", "hello from arm64\n");
    let out = t.join("out");
    let digest = build_ok(
        t.imgforge()
            .args(["build"])
            .arg(t.join("app"))
            .args(["--base", &base, "--platform", "linux/arm64", "-t"])
            .arg(format!("oci:{}:arm", out.display())),
    );
    let image = format!("oci:{}:arm", out.display());
    assert_eq!(skopeo_digest(&image), digest);
    let config = skopeo_inspect_config(&image);
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");
    let base_digest = config["config"]["Labels"]["org.opencontainers.image.base.digest"].as_str().unwrap().to_string();
    assert_eq!(base_digest, entries[1].1, "the arm64 entry is the base");

    let ran = podman_run_ok(&image, &["sh", "-c", "uname -m; cat /workspace/hello.txt"]);
    assert_eq!(ran, "aarch64\nhello from arm64\n");
}
