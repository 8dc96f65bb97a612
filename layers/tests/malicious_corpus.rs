//! Runs every case of `testdata/layers/malicious/cases.json` (made by `make-corpus.py`
//! there) through `extract_compressed`, with both path resolvers, into `T/root` beside
//! sentinels in `T/`. Each case must end exactly as its manifest says (the error kind and
//! message, or the complete tree of the root), and nothing outside the root may change.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imgforge_layers::{extract_compressed, Compression, ExtractOptions, Limits, Resolve};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/layers/malicious")
}

fn cases() -> Vec<Value> {
    let text = fs::read_to_string(corpus_dir().join("cases.json")).expect("cases.json");
    let v: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    v["cases"].as_array().expect("cases array").clone()
}

/// Everything under `dir` except the subtree `skip`: path → description of type, mode,
/// owner, size, mtime, content hash or link target. Symlinks are never followed.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            if p != skip {
                for e in fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link {}", fs::read_link(&p).unwrap().display())
        } else {
            format!("file {}", hex(&fs::read(&p).unwrap()))
        };
        if p == skip {
            // The root's mtime changes with its contents; its mode and owner must not.
            out.insert(p.clone(), format!("root mode {:o} {}:{}", m.mode(), m.uid(), m.gid()));
            continue;
        }
        out.insert(
            p.clone(),
            format!("{what} mode {:o} {}:{} mtime {} ino {}", m.mode(), m.uid(), m.gid(), m.mtime(), m.ino()),
        );
    }
    out
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// The tree of the root in the manifest's notation.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let v = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link:{}", fs::read_link(&p).unwrap().to_string_lossy())
            } else if ft.is_fifo() {
                "fifo".to_string()
            } else if ft.is_file() {
                let data = fs::read(&p).unwrap();
                match std::str::from_utf8(&data) {
                    Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n') => format!("file:{s}"),
                    _ => format!("file-sha256:{}", hex(&data)),
                }
            } else {
                "special".to_string()
            };
            out.insert(rel, v);
        }
    }
    out
}

fn limits(case: &Value) -> Limits {
    let mut l = Limits::default();
    if let Some(o) = case.get("limits").and_then(Value::as_object) {
        for (k, v) in o {
            let n = v.as_u64().expect("numeric limit");
            match k.as_str() {
                "max_entries" => l.max_entries = n,
                "max_pax_bytes" => l.max_pax_bytes = n,
                "max_name_len" => l.max_name_len = n as usize,
                "max_entry_size" => l.max_entry_size = n,
                "max_total_bytes" => l.max_total_bytes = n,
                other => panic!("unknown limit {other}"),
            }
        }
    }
    l
}

/// Runs one case; returns a description of what went wrong, if anything.
fn run_case(case: &Value, resolve: Resolve) -> Result<(), String> {
    let name = case["name"].as_str().unwrap();
    let t = tempfile::tempdir().unwrap();
    let base = t.path();
    let root = base.join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir_all(base.join("outside/dir")).unwrap();
    fs::write(base.join("outside/secret"), "secret").unwrap();
    fs::write(base.join("sentinel"), "sentinel").unwrap();
    fs::set_permissions(base.join("outside"), fs::Permissions::from_mode(0o755)).unwrap();
    let before = snapshot(base, &root);

    let opts = ExtractOptions { limits: limits(case), resolve, ..ExtractOptions::default() };
    let mut result = Ok(Default::default());
    let mut warnings = Vec::new();
    for layer in case["layers"].as_array().unwrap() {
        let path = corpus_dir().join(layer.as_str().unwrap());
        let mut file = fs::File::open(&path).unwrap();
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).unwrap();
        let file = fs::File::open(&path).unwrap();
        result = extract_compressed(&root, file, Compression::detect(&magic[..n]), &opts);
        match &result {
            Ok(stats) => warnings.extend(stats.warnings.clone()),
            Err(_) => break,
        }
    }

    let after = snapshot(base, &root);
    if before != after {
        let changed: Vec<_> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.display().to_string())
            .chain(before.keys().filter(|k| !after.contains_key(*k)).map(|k| format!("removed {}", k.display())))
            .collect();
        return Err(format!("{name}: something outside the root changed: {changed:?}"));
    }

    if let Some(want) = case.get("error") {
        let kind = want["kind"].as_str().unwrap();
        let contains = want["contains"].as_str().unwrap();
        return match result {
            Ok(_) => Err(format!("{name}: expected a {kind} error containing {contains:?}, got success")),
            Err(e) if e.kind() != kind || !e.to_string().contains(contains) => {
                Err(format!("{name}: expected a {kind} error containing {contains:?}, got {} error: {e}", e.kind()))
            }
            Err(_) => Ok(()),
        };
    }
    if let Err(e) = result {
        return Err(format!("{name}: expected success, got {} error: {e}", e.kind()));
    }
    let want: BTreeMap<String, String> = case["tree"]
        .as_object()
        .expect("tree or error")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let mut got = tree(&root);
    // Placeholders: empty regular files of mode 0600.
    for (k, v) in &want {
        if v == "placeholder" {
            let m = fs::symlink_metadata(root.join(k)).map_err(|e| format!("{name}: {k}: {e}"))?;
            if m.is_file() && m.len() == 0 && m.mode() & 0o7777 == 0o600 {
                got.insert(k.clone(), "placeholder".into());
            }
        }
    }
    if got != want {
        return Err(format!("{name}: tree differs\n   want {want:?}\n    got {got:?}"));
    }
    let want_warnings: Vec<&str> = case
        .get("warnings")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|w| w.as_str().unwrap()).collect())
        .unwrap_or_default();
    if warnings.len() != want_warnings.len() || !want_warnings.iter().all(|w| warnings.iter().any(|g| g.contains(w))) {
        return Err(format!("{name}: warnings {warnings:?}, expected one each containing {want_warnings:?}"));
    }
    Ok(())
}

#[test]
fn every_case_ends_as_its_manifest_says_and_nothing_outside_the_root_changes() {
    let cases = cases();
    let mut failures = Vec::new();
    for resolve in [Resolve::Auto, Resolve::Walk] {
        for case in &cases {
            if let Err(e) = run_case(case, resolve) {
                failures.push(format!("[{resolve:?}] {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_corpus_covers_the_issue_and_every_file_belongs_to_a_case() {
    let cases = cases();
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let mut used = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(c.get("error").is_some() != c.get("tree").is_some(), "{c}: exactly one of error and tree");
        for l in c["layers"].as_array().unwrap() {
            used.insert(l.as_str().unwrap().to_string());
        }
    }
    for e in fs::read_dir(corpus_dir()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        if n.contains(".tar") {
            assert!(used.contains(&n), "{n} is in no case");
        }
    }
    // The kinds of attack the issue names, by case name.
    for needed in [
        "dotdot-file",
        "symlink-dotdot-then-write",
        "cross-layer-symlink-write",
        "symlink-then-dir",
        "symlink-chain-escape",
        "hardlink-dotdot",
        "root-symlink",
        "whiteout-through-symlink",
        "opaque-through-symlink",
        "whiteout-dotdot",
        "pax-size-disagrees",
        "duplicate-entries",
        "device-nodes",
        "truncated-data",
        "gzip-bomb",
        "zstd-bomb",
    ] {
        assert!(cases.iter().any(|c| c["name"] == needed), "no case {needed}");
    }
}
