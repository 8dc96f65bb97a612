//! Build-only variables (`--build-env`, `--build-env-file`, issue 13 item 3): buildpacks see
//! them (Heroku's ENV_DIR, CNB's `platform/env`), but the value is found nowhere in the
//! result: not in any blob of the image (config or layer), the cache dir, or the output.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn executable(t: &TestDir, rel: &str, text: &str) {
    let p = t.write(rel, text);
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A Heroku buildpack that writes the sha256 of ENV_DIR's SECRET_KEY (and FROM_FILE) into the
/// app, and keeps something in its cache.
fn heroku_buildpack(t: &TestDir) -> PathBuf {
    executable(t, "heroku/bin/detect", "#!/bin/sh\necho secrets\n");
    executable(
        t,
        "heroku/bin/compile",
        r#"#!/bin/sh
set -e
sha256sum < "$3/SECRET_KEY" | cut -d' ' -f1 > "$1/secret.sha256"
sha256sum < "$3/FROM_FILE" | cut -d' ' -f1 > "$1/from-file.sha256"
echo "compile saw SECRET_KEY of $(wc -c < "$3/SECRET_KEY") bytes"
mkdir -p "$2" && echo kept > "$2/kept"
"#,
    );
    t.join("heroku")
}

/// A Cloud Native Buildpack that does the same with `platform/env`, and makes a cache layer.
fn cnb_buildpack(t: &TestDir) -> PathBuf {
    t.write("cnb/buildpack.toml", "api = \"0.12\"\n[buildpack]\nid = \"imgforge-test/secrets\"\nversion = \"1.0.0\"\n");
    executable(t, "cnb/bin/detect", "#!/bin/sh\nexit 0\n");
    executable(
        t,
        "cnb/bin/build",
        r#"#!/bin/sh
set -e
env_dir="$CNB_PLATFORM_DIR/env"
sha256sum < "$env_dir/SECRET_KEY" | cut -d' ' -f1 > secret.sha256
sha256sum < "$env_dir/FROM_FILE" | cut -d' ' -f1 > from-file.sha256
echo "build saw SECRET_KEY of $(wc -c < "$env_dir/SECRET_KEY") bytes"
mkdir -p "$CNB_LAYERS_DIR/kept"
echo kept > "$CNB_LAYERS_DIR/kept/kept"
printf '[types]\ncache = true\n' > "$CNB_LAYERS_DIR/kept.toml"
"#,
    );
    t.join("cnb")
}

/// Files under `root` whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &str) -> Vec<String> {
    let out = run(Command::new("grep").arg("-rlF").arg(needle).arg(root));
    stdout_str(&out).lines().map(String::from).collect()
}

fn hex_sha256(s: &str) -> String {
    sha256_digest(s.as_bytes()).trim_start_matches("sha256:").to_string()
}

#[test]
fn a_build_only_secret_reaches_the_buildpacks_and_nothing_else() {
    for kind in ["heroku", "cnb"] {
        let t = TestDir::new();
        let bp = if kind == "heroku" { heroku_buildpack(&t) } else { cnb_buildpack(&t) };
        t.write("app/index.txt", "hi\n");
        let secret = format!("s3cr3t-{kind}-{}-value", std::process::id());
        let from_file = format!("f1le-{kind}-{}-value", std::process::id());
        t.write("build.env", format!("# build-only\nFROM_FILE={from_file}\n"));
        let layout = t.join("out");
        let mut c = t.imgforge();
        c.arg("build").arg(t.join("app")).args(["--base", &t.busybox_copy(), "--isolation", "host"]);
        c.arg("--buildpack").arg(&bp).args(["--compression", "none", "--env", "VISIBLE=yes"]);
        // `K` alone: the value comes from imgforge's own environment.
        c.args(["--build-env", "SECRET_KEY", "--build-env-file"]).arg(t.join("build.env"));
        c.env("SECRET_KEY", &secret).arg("-t").arg(format!("oci:{}:x", layout.display()));
        let o = run_ok(&mut c);
        let all_output = format!("{}{}", stdout_str(&o), stderr_str(&o));
        assert!(all_output.contains(&format!("saw SECRET_KEY of {} bytes", secret.len())), "{kind}: {all_output}");
        for value in [&secret, &from_file] {
            assert!(!all_output.contains(value.as_str()), "{kind}: the output shows a build-only value");
            // Every blob (uncompressed layers, config, manifest) and the whole cache dir.
            let found = files_containing(&layout, value);
            assert!(found.is_empty(), "{kind}: the image holds a build-only value in {found:?}");
            let found = files_containing(&t.cache_dir(), value);
            assert!(found.is_empty(), "{kind}: the cache holds a build-only value in {found:?}");
            // The buildpack did see the value: its digest, which it wrote into the app, is in a layer.
            let found = files_containing(&layout.join("blobs"), &hex_sha256(value));
            assert!(!found.is_empty(), "{kind}: the buildpack did not see the build-only value");
        }
        let config = skopeo_inspect_config(&format!("oci:{}:x", layout.display()));
        let env = config["config"]["Env"].to_string();
        assert!(env.contains("VISIBLE=yes"), "{kind}: {env}");
        assert!(!env.contains("SECRET_KEY") && !env.contains("FROM_FILE"), "{kind}: {env}");
    }
}

#[test]
fn a_bad_build_env_is_a_usage_error() {
    let t = TestDir::new();
    t.write("app/index.txt", "hi\n");
    let mut c = t.imgforge();
    c.arg("build").arg(t.join("app")).args(["--base", &t.busybox_copy(), "--build-env", "1BAD=x"]);
    c.arg("-t").arg(format!("oci:{}:x", t.join("out").display()));
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(2), "{}", report(&c, &o));
    assert!(stderr_str(&o).contains("--build-env: invalid variable name \"1BAD\""), "{}", report(&c, &o));
    let mut c = t.imgforge();
    c.arg("build").arg(t.join("app")).args(["--base", &t.busybox_copy(), "--build-env-file"]).arg(t.join("none"));
    c.arg("-t").arg(format!("oci:{}:x", t.join("out").display()));
    let o = run(&mut c);
    assert_eq!(o.status.code(), Some(2), "{}", report(&c, &o));
    assert!(stderr_str(&o).contains("--build-env-file"), "{}", report(&c, &o));
}
