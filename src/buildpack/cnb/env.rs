//! Environment directories and layer directories, as the spec defines them.
//!
//! In an env directory each regular file changes one variable: the name is the file name up
//! to the first dot, the rest is the action. The contents are the value, byte for byte
//! (never trimmed, never shell-evaluated). Files are applied in name order:
//! * no suffix, or `.override`: set the variable;
//! * `.default`: set it only when unset or empty;
//! * `.append` / `.prepend`: add the value after / before the current one, separated by the
//!   contents of `<NAME>.delim` (no separator without one); when the variable is unset or
//!   empty the value stands alone;
//! * `.delim`: only read by the two above. Any other suffix is ignored.
//!
//! A layer's `bin/` is prepended to `PATH` and its `lib/` to `LD_LIBRARY_PATH` (and to
//! `LIBRARY_PATH` at build time), separated by `:`. Then come its `env/` and, for build,
//! `env.build/`; for launch, `env.launch/` then `env.launch/<process>/`. Buildpacks apply in
//! group order, a buildpack's layers in name order.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

/// When the environment is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Build,
    /// Launch, optionally for one process type.
    Launch,
}

/// What one file in an env directory does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Override,
    Default,
    Append,
    Prepend,
}

/// One change to the environment, with the separator read for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub action: Action,
    pub value: String,
    pub delim: String,
}

/// Reads an env directory's changes, in the order they apply. A missing directory has
/// none. Values that are not UTF-8 are refused (the image config stores strings).
pub fn read_dir_changes(dir: &Path) -> io::Result<Vec<Change>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = BTreeMap::new();
    for e in entries {
        let e = e?;
        // Regular files, or links to them; directories (env.launch/<process>) are not changes.
        if !fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
            continue;
        }
        if let Ok(name) = e.file_name().into_string() {
            files.insert(name, e.path());
        }
    }
    let read = |p: &Path| {
        let bytes = fs::read(p)?;
        String::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{} is not UTF-8", p.display())))
    };
    let mut out = Vec::new();
    for (file, path) in &files {
        let (name, suffix) = match file.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (file.as_str(), None),
        };
        if !crate::buildpack::valid_var_name(name) {
            continue;
        }
        let action = match suffix {
            None | Some("override") => Action::Override,
            Some("default") => Action::Default,
            Some("append") => Action::Append,
            Some("prepend") => Action::Prepend,
            _ => continue,
        };
        let delim = match files.get(&format!("{name}.delim")) {
            Some(p) if matches!(action, Action::Append | Action::Prepend) => read(p)?,
            _ => String::new(),
        };
        out.push(Change { name: name.to_string(), action, value: read(path)?, delim });
    }
    Ok(out)
}

/// An environment being built up: variables in name order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

impl Env {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env { vars: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn apply(&mut self, c: &Change) {
        let current = self.vars.get(&c.name).filter(|v| !v.is_empty());
        let new = match (&c.action, current) {
            (Action::Override, _) => c.value.clone(),
            (Action::Default, Some(_)) => return,
            (Action::Default, None) => c.value.clone(),
            (Action::Append | Action::Prepend, None) => c.value.clone(),
            (Action::Append, Some(cur)) => format!("{cur}{}{}", c.delim, c.value),
            (Action::Prepend, Some(cur)) => format!("{}{}{cur}", c.value, c.delim),
        };
        self.vars.insert(c.name.clone(), new);
    }

    pub fn apply_dir(&mut self, dir: &Path) -> io::Result<()> {
        for c in read_dir_changes(dir)? {
            self.apply(&c);
        }
        Ok(())
    }

    /// Puts `dir` first in a `:`-separated list (`PATH`).
    pub fn prepend_path(&mut self, name: &str, dir: &str) {
        self.apply(&Change { name: name.into(), action: Action::Prepend, value: dir.into(), delim: ":".into() });
    }

    /// Applies one layer: `bin`, `lib`, then its env directories for `phase`. `layer` is
    /// the path the layer has where the environment is used (`/layers/<id>/<name>`), and
    /// `host` where it can be read now.
    pub fn apply_layer(&mut self, layer: &str, host: &Path, phase: Phase, process: Option<&str>) -> io::Result<()> {
        let c = changes_for_layer(layer, host, phase, process)?;
        for c in &c {
            self.apply(c);
        }
        Ok(())
    }
}

/// The changes one layer makes, in order (see the module docs).
pub fn changes_for_layer(layer: &str, host: &Path, phase: Phase, process: Option<&str>) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    let path_change = |name: &str, sub: &str| Change {
        name: name.into(),
        action: Action::Prepend,
        value: format!("{layer}/{sub}"),
        delim: ":".into(),
    };
    if host.join("bin").is_dir() {
        out.push(path_change("PATH", "bin"));
    }
    if host.join("lib").is_dir() {
        out.push(path_change("LD_LIBRARY_PATH", "lib"));
        if phase == Phase::Build {
            out.push(path_change("LIBRARY_PATH", "lib"));
        }
    }
    out.extend(read_dir_changes(&host.join("env"))?);
    match phase {
        Phase::Build => out.extend(read_dir_changes(&host.join("env.build"))?),
        Phase::Launch => {
            out.extend(read_dir_changes(&host.join("env.launch"))?);
            if let Some(p) = process {
                out.extend(read_dir_changes(&host.join("env.launch").join(p))?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, value: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(name), value).unwrap();
    }

    #[test]
    fn every_suffix_as_the_spec_says() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(d, "PLAIN", "p\n");
        write(d, "OVER.override", "o");
        write(d, "DEF.default", "d");
        write(d, "KEEP.default", "no");
        write(d, "APP.append", "a");
        write(d, "APP.delim", ",");
        write(d, "PRE.prepend", "x");
        write(d, "PRE.delim", ":");
        write(d, "NODELIM.append", "z");
        write(d, "FRESH.prepend", "only");
        write(d, "FRESH.delim", ":");
        write(d, "ODD.whatever", "ignored");
        fs::create_dir(d.join("web")).unwrap();
        let mut env = Env::from_pairs([("OVER", "old"), ("KEEP", "yes"), ("APP", "1"), ("PRE", "2"), ("NODELIM", "y")]);
        env.apply_dir(d).unwrap();
        assert_eq!(env.get("PLAIN"), Some("p\n"), "contents byte for byte, newline kept");
        assert_eq!(env.get("OVER"), Some("o"));
        assert_eq!(env.get("DEF"), Some("d"));
        assert_eq!(env.get("KEEP"), Some("yes"));
        assert_eq!(env.get("APP"), Some("1,a"));
        assert_eq!(env.get("PRE"), Some("x:2"));
        assert_eq!(env.get("NODELIM"), Some("yz"));
        assert_eq!(env.get("FRESH"), Some("only"));
        assert_eq!(env.get("ODD"), None);
        assert_eq!(env.get("web"), None);
    }

    #[test]
    fn layers_apply_bin_lib_then_env_dirs_per_phase() {
        let t = tempfile::tempdir().unwrap();
        let l = t.path().join("node");
        fs::create_dir_all(l.join("bin")).unwrap();
        fs::create_dir_all(l.join("lib")).unwrap();
        write(&l.join("env"), "NODE_HOME", "/layers/acme_node/node");
        write(&l.join("env.build"), "ONLY_BUILD", "b");
        write(&l.join("env.launch"), "ONLY_LAUNCH", "l");
        write(&l.join("env.launch/web"), "WEB_ONLY", "w");
        write(&l.join("env.launch"), "PATH.append", "/extra");
        write(&l.join("env.launch"), "PATH.delim", ":");

        let mut build = Env::from_pairs([("PATH", "/usr/bin")]);
        build.apply_layer("/layers/acme_node/node", &l, Phase::Build, None).unwrap();
        assert_eq!(build.get("PATH"), Some("/layers/acme_node/node/bin:/usr/bin"));
        assert_eq!(build.get("LD_LIBRARY_PATH"), Some("/layers/acme_node/node/lib"));
        assert_eq!(build.get("LIBRARY_PATH"), Some("/layers/acme_node/node/lib"));
        assert_eq!(build.get("ONLY_BUILD"), Some("b"));
        assert_eq!(build.get("ONLY_LAUNCH"), None);

        let mut launch = Env::from_pairs([("PATH", "/usr/bin")]);
        launch.apply_layer("/layers/acme_node/node", &l, Phase::Launch, Some("web")).unwrap();
        assert_eq!(launch.get("PATH"), Some("/layers/acme_node/node/bin:/usr/bin:/extra"));
        assert_eq!(launch.get("LIBRARY_PATH"), None);
        assert_eq!(launch.get("ONLY_LAUNCH"), Some("l"));
        assert_eq!(launch.get("WEB_ONLY"), Some("w"));
        assert_eq!(launch.get("NODE_HOME"), Some("/layers/acme_node/node"));
        let mut worker = Env::default();
        worker.apply_layer("/l", &l, Phase::Launch, Some("worker")).unwrap();
        assert_eq!(worker.get("WEB_ONLY"), None);
    }
}
