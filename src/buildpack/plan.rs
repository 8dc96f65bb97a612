//! Which buildpacks run: `--buildpack` paths, the app's `.buildpacks`, its `project.toml`,
//! or every buildpack in a directory.
//!
//! `project.toml` (the CNB project descriptor) forms read, all of them only for entries
//! with a `uri`, in file order:
//! * schema 0.2 as `pack` reads it: `[[io.buildpacks.group]]` with `uri = "…"`;
//! * the spec's `[[io.buildpacks.build.buildpacks]]` with `uri = "…"`;
//! * schema 0.1: `[[build.buildpacks]]` with `uri = "…"`.
//!
//! Using more than one of these tables in one file is an error (which would win is not
//! defined). An entry with only an `id` (a registry lookup) or an inline `script` is an
//! error: only local buildpacks are supported offline. A file with none of these tables
//! (or empty ones) is skipped, and the next source is tried. Other keys (`[_]`, `include`,
//! `exclude`, `env`, `builder`) are ignored here.
//!
//! A `uri` or `.buildpacks` line is a local path (relative to the app directory) or a
//! `file:///absolute/path` URL; any other URL (`https://`, `git@`, `docker://`, `urn:`,
//! `from=builder`) is an error.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::archive::{self, is_archive_name};
use super::{io_err, Buildpack, HerokuError, Plan, Selection};
use crate::fsutil::{copy_tree, remove_tree, Links};

pub const DOT_BUILDPACKS: &str = ".buildpacks";
pub const PROJECT_TOML: &str = "project.toml";
const MAX_DESCRIPTOR: u64 = 1 << 20;

/// A buildpack as named by the user, before it is copied.
struct Wanted {
    path: PathBuf,
    /// Where it was named, for messages.
    from: String,
    /// As written there.
    spec: String,
}

/// Chooses the buildpacks and makes a writable private copy of each under
/// `work/buildpacks/<n>-<name>/`.
///
/// In order: `explicit` paths (directories or `.tgz`/`.tar.gz`/`.tar`) → [`Selection::All`];
/// else the app's `.buildpacks` (one path or URL per line, `#` comments, paths relative to
/// the app) → All; else `project.toml` (see the module docs) → All; else the
/// subdirectories of `buildpacks_dir` in name order (hidden ones skipped) →
/// [`Selection::FirstThatDetects`]; else an error.
pub fn plan(
    explicit: &[PathBuf],
    app_dir: &Path,
    buildpacks_dir: Option<&Path>,
    work: &Path,
) -> Result<Plan, HerokuError> {
    let (wanted, selection) = if !explicit.is_empty() {
        let w = explicit
            .iter()
            .map(|p| Wanted { path: p.clone(), from: "--buildpack".into(), spec: p.display().to_string() })
            .collect();
        (w, Selection::All)
    } else if let Some(w) = read_dot_buildpacks(app_dir)? {
        (w, Selection::All)
    } else if let Some(w) = read_project_toml(app_dir)? {
        (w, Selection::All)
    } else if let Some(dir) = buildpacks_dir {
        (list_dir(dir)?, Selection::FirstThatDetects)
    } else {
        return Err(HerokuError::Invalid("no buildpacks: pass --buildpack or --buildpacks-dir".into()));
    };
    let root = work.join("buildpacks");
    remove_tree(&root)?;
    fs::create_dir_all(&root).map_err(io_err(format!("Failed to create {}", root.display())))?;
    let buildpacks = wanted.iter().enumerate().map(|(n, w)| materialize(w, &root, n)).collect::<Result<Vec<_>, _>>()?;
    Ok(Plan { buildpacks, selection })
}

fn materialize(w: &Wanted, root: &Path, n: usize) -> Result<Buildpack, HerokuError> {
    let source = fs::canonicalize(&w.path).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::NotFound && registry_like(&w.spec) {
            " (registry names such as heroku/nodejs need the network: only local buildpacks are supported offline)"
        } else {
            ""
        };
        HerokuError::Io {
            what: format!("buildpack {} (from {}) cannot be used{hint}", w.path.display(), w.from),
            source: e,
        }
    })?;
    let meta = fs::metadata(&source).map_err(io_err(format!("Failed to read {}", source.display())))?;
    // The name as given (a symlinked buildpack keeps the link's name); `.`, `..` or `/`
    // give the real directory's name.
    let given = match w.path.components().next_back() {
        Some(std::path::Component::Normal(n)) => Some(n),
        _ => None,
    };
    let name =
        given.or_else(|| source.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "root".into());
    let copy = root.join(format!("{n}-{}", name.replace(|c: char| c.is_control(), "_")));
    let dir = if meta.is_dir() {
        // Sockets and the like have no business in a buildpack: not copied.
        copy_tree(&source, &copy, 0o200, Links::PinEscaping)?;
        copy
    } else if meta.is_file() && (is_archive_name(&w.path) || is_archive_name(&source)) {
        archive::extract(&source, &copy)?;
        archive::buildpack_root(&copy, &source)?
    } else {
        return Err(HerokuError::Invalid(format!(
            "buildpack {} (from {}) is neither a directory nor a .tgz/.tar.gz/.tar archive",
            source.display(),
            w.from
        )));
    };
    let key = hex::encode(Sha256::digest(source.as_os_str().as_bytes()));
    Ok(Buildpack { name, source, dir, key })
}

/// `heroku/nodejs`: how Heroku's buildpack registry names buildpacks.
fn registry_like(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty() && !p.starts_with('.') && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// A path or URL from `.buildpacks` or `project.toml`, as a local path.
fn local_path(spec: &str, app_dir: &Path, from: &str) -> Result<PathBuf, HerokuError> {
    let offline =
        || HerokuError::Invalid(format!("{from}: {spec:?}: only local buildpacks are supported offline (give a path)"));
    if let Some(rest) = spec.strip_prefix("file://") {
        return if rest.starts_with('/') { Ok(PathBuf::from(rest)) } else { Err(offline()) };
    }
    let url_like = spec.contains("://")
        || spec.starts_with("git@")
        || spec.starts_with("urn:")
        || spec.starts_with("docker:")
        || spec.starts_with("from=");
    if url_like {
        return Err(offline());
    }
    Ok(app_dir.join(spec))
}

fn read_small(path: &Path) -> Result<Option<String>, HerokuError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HerokuError::Io { what: format!("Failed to read {}", path.display()), source: e }),
    };
    if !meta.is_file() {
        return Err(HerokuError::Invalid(format!("{} is not a regular file", path.display())));
    }
    if meta.len() > MAX_DESCRIPTOR {
        return Err(HerokuError::Invalid(format!("{} is over {MAX_DESCRIPTOR} bytes", path.display())));
    }
    fs::read_to_string(path).map(Some).map_err(io_err(format!("Failed to read {}", path.display())))
}

fn read_dot_buildpacks(app_dir: &Path) -> Result<Option<Vec<Wanted>>, HerokuError> {
    let file = app_dir.join(DOT_BUILDPACKS);
    let Some(text) = read_small(&file)? else { return Ok(None) };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let from = format!("{DOT_BUILDPACKS} line {}", n + 1);
        out.push(Wanted { path: local_path(line, app_dir, &from)?, from, spec: line.to_string() });
    }
    if out.is_empty() {
        return Err(HerokuError::Invalid(format!("{} lists no buildpacks", file.display())));
    }
    Ok(Some(out))
}

fn read_project_toml(app_dir: &Path) -> Result<Option<Vec<Wanted>>, HerokuError> {
    let file = app_dir.join(PROJECT_TOML);
    let Some(text) = read_small(&file)? else { return Ok(None) };
    let doc: toml::Table =
        text.parse().map_err(|e| HerokuError::Invalid(format!("{}: invalid TOML: {e}", file.display())))?;
    let tables: [(&str, &[&str]); 3] = [
        ("io.buildpacks.group", &["io", "buildpacks", "group"]),
        ("io.buildpacks.build.buildpacks", &["io", "buildpacks", "build", "buildpacks"]),
        ("build.buildpacks", &["build", "buildpacks"]),
    ];
    let mut found: Option<(&str, &Vec<toml::Value>)> = None;
    for (name, keys) in tables {
        let mut v: Option<&toml::Value> = None;
        for (i, k) in keys.iter().enumerate() {
            v = if i == 0 { doc.get(*k) } else { v.and_then(|v| v.get(*k)) };
        }
        let Some(v) = v else { continue };
        let invalid = |why: &str| HerokuError::Invalid(format!("{}: [[{name}]]: {why}", file.display()));
        let list = v.as_array().ok_or_else(|| invalid("expected an array of tables"))?;
        if list.is_empty() {
            continue;
        }
        if let Some((other, _)) = found {
            return Err(invalid(&format!("also has [[{other}]]; use one list of buildpacks")));
        }
        found = Some((name, list));
    }
    let Some((name, list)) = found else { return Ok(None) };
    let mut out = Vec::new();
    for (n, entry) in list.iter().enumerate() {
        let from = format!("{PROJECT_TOML} [[{name}]] #{}", n + 1);
        let invalid = |why: String| HerokuError::Invalid(format!("{from}: {why}"));
        let t = entry.as_table().ok_or_else(|| invalid("expected a table".into()))?;
        match (t.get("uri"), t.get("id"), t.get("script")) {
            (Some(uri), _, _) => {
                let uri = uri.as_str().ok_or_else(|| invalid("uri is not a string".into()))?;
                out.push(Wanted { path: local_path(uri, app_dir, &from)?, from, spec: uri.to_string() });
            }
            (None, _, Some(_)) => {
                return Err(invalid("inline script buildpacks are not supported; give a uri to a local path".into()))
            }
            (None, Some(id), None) => {
                return Err(invalid(format!(
                    "buildpack id {} without a uri needs a registry: only local buildpacks are supported offline \
                     (give uri = \"path\")",
                    id.as_str().map(|s| format!("{s:?}")).unwrap_or_else(|| format!("{id:?}"))
                )))
            }
            (None, None, None) => return Err(invalid("has no uri".into())),
        }
    }
    Ok(Some(out))
}

fn list_dir(dir: &Path) -> Result<Vec<Wanted>, HerokuError> {
    let what = || format!("Failed to read the buildpacks directory {}", dir.display());
    let mut names: Vec<OsString> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(what()))? {
        let entry = entry.map_err(io_err(what()))?;
        let name = entry.file_name();
        if name.as_bytes().starts_with(b".") {
            continue;
        }
        // Follows symlinks: a link to a buildpack directory counts.
        if entry.path().is_dir() {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(HerokuError::Invalid(format!("no buildpacks: {} has no subdirectories", dir.display())));
    }
    names.sort();
    let from = format!("the buildpacks directory {}", dir.display());
    Ok(names
        .into_iter()
        .map(|n| Wanted { path: dir.join(&n), from: from.clone(), spec: n.to_string_lossy().into_owned() })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildpack::test_support::unit_bp;

    fn names(p: &Plan) -> Vec<&str> {
        p.buildpacks.iter().map(|b| b.name.as_str()).collect()
    }

    #[test]
    fn explicit_then_dot_buildpacks_then_project_toml_then_dir() {
        let t = tempfile::tempdir().unwrap();
        let app = t.path().join("app");
        fs::create_dir(&app).unwrap();
        let work = t.path().join("work");
        fs::create_dir(&work).unwrap();
        let bps = unit_bp("alpha").parent().unwrap().to_path_buf();

        let err = plan(&[], &app, None, &work).unwrap_err().to_string();
        assert_eq!(err, "no buildpacks: pass --buildpack or --buildpacks-dir");

        let p = plan(&[], &app, Some(&bps), &work).unwrap();
        assert_eq!(p.selection, Selection::FirstThatDetects);
        let mut sorted = names(&p);
        sorted.sort();
        assert_eq!(names(&p), sorted);
        assert!(names(&p).contains(&"alpha") && names(&p).contains(&"beta"));

        fs::write(app.join(PROJECT_TOML), format!("[_]\nschema-version = \"0.2\"\n[[io.buildpacks.group]]\nuri = \"{}\"\n[[io.buildpacks.group]]\nuri = \"file://{}\"\n", unit_bp("beta").display(), unit_bp("alpha").display())).unwrap();
        let p = plan(&[], &app, Some(&bps), &work).unwrap();
        assert_eq!((names(&p), p.selection), (vec!["beta", "alpha"], Selection::All));

        fs::create_dir(app.join("local")).unwrap();
        copy_tree(&unit_bp("alpha"), &app.join("local/mine"), 0, Links::Verbatim).unwrap();
        fs::write(app.join(DOT_BUILDPACKS), "# first\n\nlocal/mine\n  ./local/mine  \n").unwrap();
        let p = plan(&[], &app, Some(&bps), &work).unwrap();
        assert_eq!((names(&p), p.selection), (vec!["mine", "mine"], Selection::All));
        assert_eq!(p.buildpacks[0].key, p.buildpacks[1].key);
        assert_ne!(p.buildpacks[0].dir, p.buildpacks[1].dir);
        assert_eq!(p.buildpacks[0].source, app.canonicalize().unwrap().join("local/mine"));
        assert_eq!(p.buildpacks[0].dir, work.join("buildpacks/0-mine"));
        assert!(p.buildpacks[0].dir.join("bin/compile").is_file());

        std::os::unix::fs::symlink(app.join("local/mine"), app.join("linked")).unwrap();
        let p = plan(&[app.join("linked"), app.join("local/mine/.")], &app, None, &work).unwrap();
        assert_eq!(names(&p), ["linked", "mine"]);
        assert_eq!(p.buildpacks[0].source, p.buildpacks[1].source);

        let p = plan(&[unit_bp("beta")], &app, Some(&bps), &work).unwrap();
        assert_eq!((names(&p), p.selection), (vec!["beta"], Selection::All));
        assert_eq!(p.buildpacks[0].key.len(), 64);
    }

    #[test]
    fn urls_and_registry_ids_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let work = t.path();
        let app = t.path().join("app");
        fs::create_dir(&app).unwrap();
        for line in ["https://github.com/heroku/heroku-buildpack-nodejs#v1", "git@github.com:x/y.git", "file://x"] {
            fs::write(app.join(DOT_BUILDPACKS), format!("{line}\n")).unwrap();
            let e = plan(&[], &app, None, work).unwrap_err().to_string();
            assert!(e.contains("only local buildpacks are supported offline") && e.contains("line 1"), "{e}");
        }
        fs::write(app.join(DOT_BUILDPACKS), "# nothing\n").unwrap();
        assert!(plan(&[], &app, None, work).unwrap_err().to_string().contains("lists no buildpacks"));
        fs::write(app.join(DOT_BUILDPACKS), "heroku/nodejs\n").unwrap();
        let e = plan(&[], &app, None, work).unwrap_err().to_string();
        assert!(e.contains("heroku/nodejs") && e.contains("need the network"), "{e}");
        fs::remove_file(app.join(DOT_BUILDPACKS)).unwrap();

        for (toml, want) in [
            ("[[io.buildpacks.group]]\nid = \"heroku/python\"\nversion = \"1\"\n", "\"heroku/python\" without a uri"),
            ("[[io.buildpacks.group]]\nuri = \"docker://cnbs/x\"\n", "only local buildpacks"),
            ("[[io.buildpacks.build.buildpacks]]\nuri = \"urn:cnb:registry:x\"\n", "only local buildpacks"),
            ("[[build.buildpacks]]\nuri = \"https://x/y.tgz\"\n", "only local buildpacks"),
            ("[[io.buildpacks.group]]\n[io.buildpacks.group.script]\napi = \"0.10\"\ninline = \"true\"\n", "inline"),
            ("[[io.buildpacks.group]]\nuri = \"a\"\n[[build.buildpacks]]\nuri = \"b\"\n", "use one list"),
            ("[io.buildpacks]\ngroup = 3\n", "array of tables"),
            ("[[io.buildpacks.group]\n", "invalid TOML"),
        ] {
            fs::write(app.join(PROJECT_TOML), toml).unwrap();
            let e = plan(&[], &app, None, work).unwrap_err().to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
        // Nothing about buildpacks: skipped.
        fs::write(app.join(PROJECT_TOML), "[_]\nschema-version = \"0.2\"\n[io.buildpacks]\nexclude = [\"x\"]\n")
            .unwrap();
        assert!(plan(&[], &app, None, work).unwrap_err().to_string().starts_with("no buildpacks"));
        let e = plan(&[app.join("nope")], &app, None, work).unwrap_err();
        assert!(e.to_string().contains("nope (from --buildpack) cannot be used"), "{e}");
        fs::write(app.join("x.zip"), "").unwrap();
        let e = plan(&[app.join("x.zip")], &app, None, work).unwrap_err();
        assert!(e.to_string().contains("neither a directory nor"), "{e}");
    }
}
