//! Runs every file of every seed corpus (`fuzz/corpus/<target>/`) through its check
//! function, on stable: the seeds and the regressions found by fuzzing stay checked in CI.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

fn run_corpus(target: &str) {
    run_corpus_with(target, &[]);
}

/// Runs `corpus/<target>/` and the files of `extra` directories.
fn run_corpus_with(target: &str, extra: &[PathBuf]) {
    let check = imgforge_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check function for {target}"))
        .1;
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    for d in extra {
        let listing = std::fs::read_dir(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        files.extend(listing.map(|e| e.expect("directory entry").path()).filter(|p| p.is_file()));
    }
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} seeds failed:\n  {}",
        failed.len(),
        files.len(),
        failed.join("\n  ")
    );
    println!("{target}: {} seeds passed", files.len());
}

#[test]
fn every_target_has_a_corpus_and_a_fuzz_target() {
    for (name, _) in imgforge_fuzz::TARGETS {
        assert!(corpus_dir(name).is_dir(), "missing corpus/{name}/");
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets").join(format!("{name}.rs"));
        assert!(bin.is_file(), "missing {}", bin.display());
    }
}

#[test]
fn tar_roundtrip_corpus() {
    run_corpus("tar_roundtrip");
}

#[test]
fn tar_reader_corpus() {
    run_corpus("tar_reader");
}

#[test]
fn manifest_corpus() {
    run_corpus("manifest");
}

#[test]
fn config_corpus() {
    run_corpus("config");
}

#[test]
fn index_corpus() {
    run_corpus("index");
}

#[test]
fn reference_corpus() {
    run_corpus("reference");
}

#[test]
fn extract_corpus() {
    // Seeds: corpus/extract/ and the malicious layer corpus of the extractor's own tests.
    let malicious = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/layers/malicious");
    run_corpus_with("extract", &[malicious]);
}

#[test]
fn auth_challenge_corpus() {
    run_corpus("auth_challenge");
}

#[test]
fn redirect_corpus() {
    run_corpus("redirect");
}
