//! The front-end half of the conformance corpus in `testdata/dockerfile/` (see its README):
//! every case is parsed, resolved and lowered, and checked against its expected config,
//! history, `.dockerignore` result or error message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::ImageConfig;
use super::stages::{resolve, BuildOptions};
use super::{dockerignore, parse, plan, DockerfileError};
use crate::image::manifest::Platform;

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Case {
    dockerfile: Option<String>,
    target: Option<String>,
    platform: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    error_phase: Option<String>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct History {
    created_by: String,
    empty_layer: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The config of the test base image, `testdata/images/busybox`.
fn busybox_config() -> ImageConfig {
    let layout = root().join("images/busybox");
    let blob = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digests");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    serde_json::from_value(config["config"].clone()).unwrap()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The context's files (relative, sorted) that the ignore file leaves in.
fn context_files(context: &Path, dockerfile: &Path) -> Vec<String> {
    let ignore = dockerignore::load(context, Some(dockerfile)).unwrap();
    let mut out: Vec<String> = walkdir::WalkDir::new(context)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(context).unwrap().to_string_lossy().into_owned())
        .filter(|p| !ignore.excludes(p))
        .collect();
    out.sort();
    out
}

/// How a case differs from what it expects (the test lists them all).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Mismatch(String);

impl From<String> for Mismatch {
    fn from(s: String) -> Mismatch {
        Mismatch(s)
    }
}

fn check_case(dir: &Path, base: &ImageConfig) -> Result<(), Mismatch> {
    let case: Case = match std::fs::read_to_string(dir.join("case.toml")) {
        Ok(t) => toml::from_str(&t).map_err(|e| format!("case.toml: {e}"))?,
        Err(_) => Case::default(),
    };
    let file = case.dockerfile.as_deref().unwrap_or("Dockerfile");
    let dockerfile = dir.join(file);
    let text = std::fs::read_to_string(&dockerfile).map_err(|e| format!("{file}: {e}"))?;
    let platform = Platform::parse(case.platform.as_deref().unwrap_or("linux/amd64")).map_err(|e| e.to_string())?;
    let options = BuildOptions {
        build_args: case.build_args.clone(),
        target: case.target.clone(),
        target_platform: platform.clone(),
        build_platform: platform,
    };
    let result = (|| -> Result<plan::Plan, DockerfileError> {
        let build = resolve(&parse(&text, file)?, &options)?;
        plan::lower(&build, |name, _| {
            assert_eq!(name, "busybox", "corpus cases use busybox as their only image base");
            Ok::<_, DockerfileError>(base.clone())
        })
    })();

    let expected = dir.join("expected");
    if let Ok(err_text) = std::fs::read_to_string(expected.join("error.txt")) {
        if case.error_phase.as_deref() == Some("build") {
            return result
                .map(|_| ())
                .map_err(|e| Mismatch(format!("the front end should succeed (error-phase = build): {e}")));
        }
        let message = match result {
            Ok(_) => return Err(Mismatch(format!("expected an error containing {err_text:?}, got success"))),
            Err(e) => e.to_string(),
        };
        for line in err_text.lines().filter(|l| !l.is_empty()) {
            if !message.contains(line) {
                return Err(Mismatch(format!("error {message:?} does not contain {line:?}")));
            }
        }
        return Ok(());
    }
    let plan = result.map_err(|e| e.to_string())?;
    let target = plan.target();
    let config = serde_json::to_value(&target.config).unwrap();
    let want: serde_json::Value = read_json(&expected.join("config.json"));
    if config != want {
        return Err(Mismatch(format!("config:\n  got  {config}\n  want {want}")));
    }
    let history: Vec<History> =
        target.steps.iter().map(|s| History { created_by: s.created_by.clone(), empty_layer: s.empty_layer }).collect();
    let want: Vec<History> = read_json(&expected.join("history.json"));
    if history != want {
        return Err(Mismatch(format!("history:\n  got  {history:?}\n  want {want:?}")));
    }
    if let Ok(want) = std::fs::read_to_string(expected.join("context.txt")) {
        let got = context_files(&dir.join("context"), &dockerfile);
        let want: Vec<&str> = want.lines().filter(|l| !l.is_empty()).collect();
        if got != want {
            return Err(Mismatch(format!("context after .dockerignore:\n  got  {got:?}\n  want {want:?}")));
        }
    }
    Ok(())
}

#[test]
fn every_corpus_case_parses_and_lowers_as_expected() {
    let base = busybox_config();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("dockerfile"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 20, "the corpus is missing: {dirs:?}");
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|d| {
            check_case(d, &base).err().map(|e| format!("{}: {e}", d.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(failures.is_empty(), "{} corpus case(s) failed:\n{}", failures.len(), failures.join("\n"));
}
