//! The malicious `oci:` layout corpus (testdata/layouts/malicious/cases.json): blobs that are
//! symlinks, FIFOs or directories, and blobs whose bytes do not match. A build or copy from
//! one must fail naming it, never hang, never follow a link out of the layout, and never
//! leave a destination with an index naming a bad blob.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::registry::{Mode, Registry};
use common::*;
use serde_json::Value;

const SECRET: &[u8] = b"-----BEGIN OPENSSH PRIVATE KEY----- imgforge-test-secret-7f3a\n";

struct Case {
    name: String,
    blob: Option<String>,
    change: String,
    error: Vec<String>,
}

fn cases() -> Vec<Case> {
    let v: Value = read_json(&testdata("layouts/malicious/cases.json"));
    v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            blob: c["blob"].as_str().map(str::to_string),
            change: c["change"].as_str().unwrap().to_string(),
            error: c["error"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect(),
        })
        .collect()
}

/// A copy of busybox changed as `case` says; returns the layout and the changed blob's digest.
fn make_layout(t: &TestDir, case: &Case) -> (PathBuf, Option<String>) {
    let layout = t.join(format!("bad/{}", case.name));
    fs::create_dir_all(layout.parent().unwrap()).unwrap();
    copy_tree(&busybox_layout(), &layout);
    let outside = t.join(format!("outside/{}", case.name));
    fs::create_dir_all(&outside).unwrap();
    let m = layout_manifest(&layout, "latest");
    let digest = case.blob.as_deref().map(|b| match b {
        "layer" => m["layers"][0]["digest"].as_str().unwrap().to_string(),
        "config" => m["config"]["digest"].as_str().unwrap().to_string(),
        "manifest" => read_index(&layout)["manifests"][0]["digest"].as_str().unwrap().to_string(),
        other => panic!("{}: unknown blob {other}", case.name),
    });
    let blob = digest.as_ref().map(|d| blob_path(&layout, d));
    let blob = || blob.clone().unwrap_or_else(|| panic!("{}: {} needs a blob", case.name, case.change));
    match case.change.as_str() {
        "symlink-outside-same-bytes" => {
            let kept = outside.join("same-bytes");
            fs::rename(blob(), &kept).unwrap();
            symlink(&kept, blob()).unwrap();
        }
        "symlink-outside-secret" => {
            let secret = outside.join("id_rsa");
            fs::write(&secret, SECRET).unwrap();
            fs::remove_file(blob()).unwrap();
            symlink(&secret, blob()).unwrap();
        }
        "symlink-index" => {
            let kept = outside.join("index.json");
            fs::rename(layout.join("index.json"), &kept).unwrap();
            symlink(&kept, layout.join("index.json")).unwrap();
        }
        "symlink-blob-dir" => {
            let kept = outside.join("sha256");
            fs::rename(layout.join("blobs/sha256"), &kept).unwrap();
            symlink(&kept, layout.join("blobs/sha256")).unwrap();
        }
        "fifo" => {
            fs::remove_file(blob()).unwrap();
            run_ok(Command::new("mkfifo").arg(blob()));
        }
        "directory" => {
            fs::remove_file(blob()).unwrap();
            fs::create_dir(blob()).unwrap();
        }
        "flip-byte" => {
            let mut bytes = fs::read(blob()).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            fs::write(blob(), bytes).unwrap();
        }
        "truncate" => {
            let bytes = fs::read(blob()).unwrap();
            fs::write(blob(), &bytes[..bytes.len() - 1]).unwrap();
        }
        other => panic!("{}: unknown change {other}", case.name),
    }
    (layout, digest)
}

/// Runs `cmd`, killing it after `secs` (a FIFO blob must not hang imgforge).
fn run_within(cmd: &mut Command, secs: u64) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {secs} s, killed\n{}", report(cmd, &out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// What a user would compare: the index's bytes and every blob, each of which must be a
/// regular file whose bytes hash to its name.
fn snapshot(layout: &Path) -> (Vec<u8>, Vec<String>) {
    let index = fs::read(layout.join("index.json")).unwrap_or_default();
    let mut blobs = Vec::new();
    for e in fs::read_dir(layout.join("blobs/sha256")).into_iter().flatten() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        assert!(meta.is_file(), "{}: blob {name} is not a regular file", layout.display());
        let digest = sha256_digest(&fs::read(e.path()).unwrap());
        assert_eq!(digest, format!("sha256:{name}"), "{}: blob {name} does not hash to its name", layout.display());
        blobs.push(name);
    }
    blobs.sort();
    (index, blobs)
}

fn assert_refused(case: &Case, cmd: &Command, out: &Output, layout: &Path, digest: Option<&String>) {
    let err = stderr_str(out);
    assert_eq!(out.status.code(), Some(1), "{}: accepted\n{}", case.name, report(cmd, out));
    assert!(out.stdout.is_empty(), "{}: printed a digest\n{}", case.name, report(cmd, out));
    assert!(!err.contains("panicked"), "{}\n{}", case.name, report(cmd, out));
    for want in &case.error {
        assert!(err.contains(want.as_str()), "{}: the error lacks {want:?}\n{}", case.name, report(cmd, out));
    }
    assert!(err.contains(&layout.display().to_string()), "{}: the error must name the layout\n{err}", case.name);
    if let Some(d) = digest {
        assert!(err.contains(&d[7..]), "{}: the error must name the blob {d}\n{err}", case.name);
    }
}

#[test]
fn every_malicious_layout_is_refused_and_leaves_the_destinations_as_they_were() {
    let t = TestDir::new();
    let cases = cases();
    assert!(cases.len() >= 10, "the corpus lost cases");
    // Two destinations that already hold an image (the clean base's build, tag x).
    let dests = [t.join("a"), t.join("b")];
    // No Procfile: nothing needs to read the base's layer, which a build then only links.
    let app = t.write("app/index.html", "hello\n").parent().unwrap().to_path_buf();
    let mut good = t.imgforge();
    good.arg("build").arg(&app).args(["--base", &t.busybox_copy()]);
    for d in &dests {
        good.arg("-t").arg(format!("oci:{}:x", d.display()));
    }
    build_ok(&mut good);
    let before: Vec<_> = dests.iter().map(|d| snapshot(d)).collect();

    for case in &cases {
        let (layout, digest) = make_layout(&t, case);
        let base = format!("oci:{}:latest", layout.display());
        let mut build = t.imgforge();
        build.arg("build").arg(&app).args(["--base", &base]);
        for d in &dests {
            build.arg("-t").arg(format!("oci:{}:y", d.display()));
        }
        let out = run_within(&mut build, 60);
        assert_refused(case, &build, &out, &layout, digest.as_ref());
        for (d, b) in dests.iter().zip(&before) {
            assert_eq!(&snapshot(d), b, "{}: {} changed", case.name, d.display());
        }

        let copy_dest = t.join(format!("copies/{}", case.name));
        fs::create_dir_all(copy_dest.parent().unwrap()).unwrap();
        let mut copy = t.imgforge();
        copy.args(["copy", &base, &format!("oci:{}:z", copy_dest.display())]);
        let out = run_within(&mut copy, 60);
        assert_refused(case, &copy, &out, &layout, digest.as_ref());
        assert!(!copy_dest.join("index.json").exists(), "{}: the copy wrote an index", case.name);
        snapshot(&copy_dest);
    }
}

#[test]
fn a_layout_blob_linked_to_a_secret_is_never_sent_to_a_registry() {
    let t = TestDir::new();
    let reg = Registry::start(&t, Mode::Plain);
    for case in cases().iter().filter(|c| c.change == "symlink-outside-secret") {
        let (layout, digest) = make_layout(&t, case);
        let mut copy = t.imgforge();
        copy.args(["copy", &format!("oci:{}:latest", layout.display()), &reg.reference(&case.name)]);
        let out = run_within(&mut copy, 60);
        assert_refused(case, &copy, &out, &layout, digest.as_ref());
        let marker = String::from_utf8_lossy(&SECRET[SECRET.len() - 10..SECRET.len() - 1]).into_owned();
        let grep = Command::new("grep").args(["-r", "-l", &marker]).arg(&reg.dir).output().unwrap();
        assert!(grep.stdout.is_empty(), "{}: the secret reached the registry: {}", case.name, stdout_str(&grep));
    }
}
