//! What a buildpack's build leaves in its layers directory.
//!
//! * `<layer>.toml` with `[types]` (`launch`, `build`, `cache`) and `[metadata]`; a layer
//!   whose `.toml` sets no type is not kept (as the spec says);
//! * `launch.toml`: `[[processes]]`, `[[labels]]`, `[[slices]]`;
//! * `build.toml`: `[[unmet]]` plan entries left for a later buildpack;
//! * `store.toml`: `[metadata]` handed to the next build;
//! * SBOM files: `<layer>.sbom.<ext>` and `launch.sbom.<ext>` / `build.sbom.<ext>` with ext
//!   `cdx.json`, `spdx.json` or `syft.json`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::descriptor::Api;
use super::{io_err, read_toml, CnbError};
use crate::pipeline::procfile::check_process_type;

/// The files in a layers directory that are not layers.
pub const LAUNCH_TOML: &str = "launch.toml";
pub const BUILD_TOML: &str = "build.toml";
pub const STORE_TOML: &str = "store.toml";
pub const SBOM_EXTENSIONS: [&str; 3] = ["cdx.json", "spdx.json", "syft.json"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Types {
    #[serde(default)]
    pub launch: bool,
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub cache: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct LayerToml {
    #[serde(default)]
    pub types: Types,
    #[serde(default)]
    pub metadata: toml::Table,
}

/// One `<layer>.toml` and its directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub toml: LayerToml,
    /// `<layers>/<name>`: may be missing (metadata-only layer).
    pub dir: PathBuf,
    /// SBOM files of this layer: (extension, path).
    pub sboms: Vec<(String, PathBuf)>,
}

impl Layer {
    /// The directory is missing or empty: the buildpack asks to reuse the previous image's
    /// layer (when `launch`) and wrote only its metadata.
    pub fn metadata_only(&self) -> bool {
        fs::read_dir(&self.dir).map(|mut d| d.next().is_none()).unwrap_or(true)
    }
}

/// `command` is a string before Buildpack API 0.9 and a list since.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Command {
    One(String),
    List(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Process {
    #[serde(rename = "type")]
    pub kind: String,
    pub command: Command,
    #[serde(default)]
    pub args: Vec<String>,
    /// Before API 0.9: run without a shell.
    #[serde(default)]
    pub direct: Option<bool>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub working_dir: Option<String>,
}

impl Process {
    /// The process as argv plus whether it runs through a shell.
    ///
    /// API ≥ 0.9: `command` is the argv head, run directly; `args` follow. Before 0.9: a
    /// `direct = true` process is `command` + `args` run directly; otherwise `command` is a
    /// shell script (`bash -c`, here `/bin/sh -c`) to which `args` are passed as `$1`...
    pub fn argv(&self) -> (Vec<String>, bool) {
        match &self.command {
            Command::List(c) => (c.iter().chain(&self.args).cloned().collect(), false),
            Command::One(c) if self.direct == Some(true) => {
                (std::iter::once(c).chain(&self.args).cloned().collect(), false)
            }
            Command::One(c) => (std::iter::once(c).chain(&self.args).cloned().collect(), true),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Label {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Slice {
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct LaunchToml {
    #[serde(default)]
    pub processes: Vec<Process>,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub slices: Vec<Slice>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Unmet {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct BuildToml {
    #[serde(default)]
    pub unmet: Vec<Unmet>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct StoreToml {
    #[serde(default)]
    pub metadata: toml::Table,
}

/// Everything one buildpack's build left.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// Layers with at least one type, in name order.
    pub layers: Vec<Layer>,
    pub launch: LaunchToml,
    pub build: BuildToml,
    pub store: Option<StoreToml>,
    /// `launch.sbom.<ext>` / `build.sbom.<ext>`: (extension, path).
    pub launch_sboms: Vec<(String, PathBuf)>,
    pub build_sboms: Vec<(String, PathBuf)>,
}

/// Reads a buildpack's layers directory after its build.
pub fn read_output(dir: &Path, api: Api, who: &str) -> Result<Output, CnbError> {
    let mut out = Output {
        launch: read_toml(&dir.join(LAUNCH_TOML))?.unwrap_or_default(),
        build: read_toml(&dir.join(BUILD_TOML))?.unwrap_or_default(),
        store: read_toml(&dir.join(STORE_TOML))?,
        ..Default::default()
    };
    let entries = fs::read_dir(dir).map_err(io_err(format!("Failed to read {}", dir.display())))?;
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for e in entries {
        let e = e.map_err(io_err(format!("Failed to read {}", dir.display())))?;
        if let Ok(n) = e.file_name().into_string() {
            names.insert(n, e.path());
        }
    }
    let sboms = |prefix: &str| -> Vec<(String, PathBuf)> {
        SBOM_EXTENSIONS
            .iter()
            .filter_map(|ext| names.get(&format!("{prefix}.sbom.{ext}")).map(|p| (ext.to_string(), p.clone())))
            .collect()
    };
    out.launch_sboms = sboms("launch");
    out.build_sboms = sboms("build");
    for (file, path) in &names {
        let Some(name) = file.strip_suffix(".toml") else { continue };
        if [LAUNCH_TOML, BUILD_TOML, STORE_TOML].contains(&file.as_str()) {
            continue;
        }
        if name.is_empty() || name.contains('.') {
            return Err(CnbError::File {
                path: path.clone(),
                why: format!("{who}: a layer name may not be empty or hold a dot"),
            });
        }
        let toml: LayerToml = read_toml(path)?.unwrap_or_default();
        if !(toml.types.launch || toml.types.build || toml.types.cache) {
            continue;
        }
        out.layers.push(Layer { name: name.to_string(), toml, dir: dir.join(name), sboms: sboms(name) });
    }
    for p in &out.launch.processes {
        let bad = |why: &str| CnbError::File {
            path: dir.join(LAUNCH_TOML),
            why: format!("{who}: process {:?} {why}", p.kind),
        };
        check_process_type(&p.kind)
            .map_err(|why| CnbError::File { path: dir.join(LAUNCH_TOML), why: format!("{who}: {why}") })?;
        match &p.command {
            Command::List(c) if c.is_empty() => return Err(bad("has an empty command")),
            Command::One(_) if api >= Api { major: 0, minor: 9 } => {
                return Err(bad("has a string command: Buildpack API 0.9 and later need a list (command = [\"...\"])"))
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V10: Api = Api { major: 0, minor: 10 };

    #[test]
    fn reads_layers_processes_and_sboms() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(d.join("node.toml"), "[types]\nlaunch = true\ncache = true\n[metadata]\nversion = \"20\"\n").unwrap();
        fs::create_dir(d.join("node")).unwrap();
        fs::write(d.join("node/x"), "x").unwrap();
        fs::write(d.join("node.sbom.cdx.json"), "{}").unwrap();
        fs::write(d.join("typeless.toml"), "[metadata]\na = 1\n").unwrap();
        fs::write(d.join("reused.toml"), "[types]\nlaunch = true\n").unwrap();
        fs::write(d.join("launch.sbom.spdx.json"), "{}").unwrap();
        fs::write(
            d.join(LAUNCH_TOML),
            "[[processes]]\ntype = \"web\"\ncommand = [\"node\", \"server.js\"]\nargs = [\"--port\"]\ndefault = true\nworking-dir = \"/workspace/app\"\n[[labels]]\nkey = \"k\"\nvalue = \"v\"\n[[slices]]\npaths = [\"public/*\"]\n",
        )
        .unwrap();
        fs::write(d.join(BUILD_TOML), "[[unmet]]\nname = \"yarn\"\n").unwrap();
        fs::write(d.join(STORE_TOML), "[metadata]\nruns = 2\n").unwrap();
        let o = read_output(d, V10, "acme/node").unwrap();
        assert_eq!(o.layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["node", "reused"]);
        assert!(o.layers[0].toml.types.cache && !o.layers[0].toml.types.build);
        assert_eq!(o.layers[0].toml.metadata["version"].as_str(), Some("20"));
        assert_eq!(o.layers[0].sboms[0].0, "cdx.json");
        assert!(!o.layers[0].metadata_only());
        assert!(o.layers[1].metadata_only());
        assert_eq!(o.launch_sboms[0].0, "spdx.json");
        let web = &o.launch.processes[0];
        assert_eq!(web.argv(), (vec!["node".into(), "server.js".into(), "--port".into()], false));
        assert!(web.default);
        assert_eq!(web.working_dir.as_deref(), Some("/workspace/app"));
        assert_eq!(o.launch.labels[0].key, "k");
        assert_eq!(o.launch.slices[0].paths, ["public/*"]);
        assert_eq!(o.build.unmet[0].name, "yarn");
        assert_eq!(o.store.unwrap().metadata["runs"].as_integer(), Some(2));
    }

    #[test]
    fn older_apis_take_string_commands() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(LAUNCH_TOML), "[[processes]]\ntype = \"web\"\ncommand = \"echo hi\"\n").unwrap();
        let e = read_output(t.path(), V10, "bp").unwrap_err().to_string();
        assert!(e.contains("launch.toml") && e.contains("need a list"), "{e}");
        let o = read_output(t.path(), Api { major: 0, minor: 8 }, "bp").unwrap();
        assert_eq!(o.launch.processes[0].argv(), (vec!["echo hi".into()], true));
    }

    #[test]
    fn bad_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("x.toml"), "[types\n").unwrap();
        let e = read_output(t.path(), V10, "bp").unwrap_err().to_string();
        assert!(e.contains("x.toml"), "{e}");
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(LAUNCH_TOML), "[[processes]]\ntype = \"a b\"\ncommand = [\"x\"]\n").unwrap();
        let e = read_output(t.path(), V10, "bp").unwrap_err().to_string();
        assert!(e.contains("\"a b\""), "{e}");
        // The Procfile's rule, length included: a 300-byte type is no file name.
        for bad in ["..", &"p".repeat(300)] {
            fs::write(t.path().join(LAUNCH_TOML), format!("[[processes]]\ntype = \"{bad}\"\ncommand = [\"x\"]\n"))
                .unwrap();
            let e = read_output(t.path(), V10, "bp").unwrap_err().to_string();
            assert!(e.contains("launch.toml") && e.contains("names are 1 to 63"), "{e}");
        }
    }
}
