//! `buildpack.toml`: what a Cloud Native Buildpack says about itself.
//!
//! Accepted: Buildpack API 0.7 to 0.12, `[buildpack]` (id, version, name, clear-env,
//! sbom-formats), `[[targets]]` and, for a composite buildpack, `[[order]]` with
//! `[[order.group]]` (id, version, optional). Older API versions are refused: their
//! contracts (positional-only arguments, `launch = true` layer keys at the top level of
//! `<layer>.toml`) differ enough to need their own code.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::CnbError;

pub const DESCRIPTOR: &str = "buildpack.toml";
const MAX_DESCRIPTOR: u64 = 1 << 20;

/// A Buildpack API version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Api {
    pub major: u32,
    pub minor: u32,
}

impl Api {
    pub const MIN: Api = Api { major: 0, minor: 7 };
    pub const MAX: Api = Api { major: 0, minor: 12 };

    pub fn parse(s: &str) -> Option<Api> {
        let (major, minor) = s.split_once('.')?;
        let num = |p: &str| (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok()).flatten();
        Some(Api { major: num(major)?, minor: num(minor)? })
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub homepage: String,
    #[serde(default)]
    pub clear_env: bool,
    #[serde(default)]
    pub sbom_formats: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Distro {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Target {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub variant: String,
    #[serde(default)]
    pub distros: Vec<Distro>,
}

impl Target {
    /// Whether this target admits an image for `os`/`arch` with this distribution (`ID`,
    /// `VERSION_ID` of its os-release; `None` when the image has none). Empty or `*` matches
    /// anything; a target that names distros admits only those (a version, when given, too).
    pub fn matches(&self, os: &str, arch: &str, distro: Option<(&str, &str)>) -> bool {
        let ok = |want: &str, have: &str| want.is_empty() || want == "*" || want == have;
        let distro_ok = self.distros.is_empty()
            || distro.is_some_and(|(name, version)| {
                self.distros.iter().any(|d| ok(&d.name, name) && ok(&d.version, version))
            });
        ok(&self.os, os) && ok(&self.arch, arch) && distro_ok
    }
}

/// One entry of an `[[order.group]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct GroupEntry {
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub optional: bool,
}

impl fmt::Display for GroupEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version.is_empty() {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{}@{}", self.id, self.version)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Group {
    #[serde(default)]
    pub group: Vec<GroupEntry>,
}

#[derive(Deserialize)]
struct Raw {
    api: Option<String>,
    buildpack: Option<Info>,
    #[serde(default)]
    targets: Vec<Target>,
    #[serde(default)]
    order: Vec<Group>,
}

/// A parsed, validated `buildpack.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub api: Api,
    pub info: Info,
    pub targets: Vec<Target>,
    /// Non-empty for a composite buildpack (which has no `bin/`).
    pub order: Vec<Group>,
    /// The buildpack's directory.
    pub dir: PathBuf,
}

impl Descriptor {
    pub fn is_composite(&self) -> bool {
        !self.order.is_empty()
    }

    /// `id@version`, for messages.
    pub fn key(&self) -> String {
        format!("{}@{}", self.info.id, self.info.version)
    }

    /// Reads `dir/buildpack.toml`. The descriptor keeps `dir` made absolute: buildpacks run
    /// with another working directory.
    pub fn load(dir: &Path) -> Result<Descriptor, CnbError> {
        let dir = &fs::canonicalize(dir)
            .map_err(|source| CnbError::Io { what: format!("Failed to read {}", dir.display()), source })?;
        let path = dir.join(DESCRIPTOR);
        let mut text = String::new();
        fs::File::open(&path)
            .and_then(|f| f.take(MAX_DESCRIPTOR).read_to_string(&mut text))
            .map_err(|source| CnbError::Io { what: format!("Failed to read {}", path.display()), source })?;
        Descriptor::parse(&text, dir)
    }

    pub fn parse(text: &str, dir: &Path) -> Result<Descriptor, CnbError> {
        let path = dir.join(DESCRIPTOR);
        let bad = |why: String| CnbError::Descriptor { path: path.clone(), why };
        let raw: Raw = toml::from_str(text).map_err(|e| bad(e.to_string().trim().to_string()))?;
        let api_text = raw.api.ok_or_else(|| bad("`api` is missing (e.g. api = \"0.10\")".into()))?;
        let api =
            Api::parse(&api_text).ok_or_else(|| bad(format!("api {api_text:?} is not a version like \"0.10\"")))?;
        if api < Api::MIN || api > Api::MAX {
            return Err(bad(format!(
                "Buildpack API {api} is not supported: imgforge implements {} to {}",
                Api::MIN,
                Api::MAX
            )));
        }
        let info = raw.buildpack.ok_or_else(|| bad("the [buildpack] table is missing".into()))?;
        check_id(&info.id).map_err(|why| bad(format!("[buildpack] id {:?}: {why}", info.id)))?;
        if info.version.is_empty() {
            return Err(bad("[buildpack] version is missing".into()));
        }
        for (n, g) in raw.order.iter().enumerate() {
            if g.group.is_empty() {
                return Err(bad(format!("[[order]] number {} has no [[order.group]] entries", n + 1)));
            }
            for e in &g.group {
                check_id(&e.id).map_err(|why| bad(format!("[[order.group]] id {:?}: {why}", e.id)))?;
            }
        }
        let composite = !raw.order.is_empty();
        if composite && !raw.targets.is_empty() {
            return Err(bad("a composite buildpack (with [[order]]) may not declare [[targets]]".into()));
        }
        Ok(Descriptor { api, info, targets: raw.targets, order: raw.order, dir: dir.to_path_buf() })
    }
}

/// Why a buildpack id is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is reserved by the spec")]
    Reserved,
    #[error("may hold only letters, digits, '.', '-', '_' and '/'")]
    Characters,
}

/// The spec forbids `config` and `app` (reserved directories under /layers) and the id
/// must be usable as a directory name once `/` is escaped.
fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if matches!(id, "app" | "config" | "sbom") {
        return Err(IdError::Reserved);
    }
    let ok = id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if !ok || id.starts_with('.') || id.contains("..") {
        return Err(IdError::Characters);
    }
    Ok(())
}

/// A buildpack id as a directory name: `/` becomes `_` (`heroku/nodejs` → `heroku_nodejs`).
pub fn escape_id(id: &str) -> String {
    id.replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Descriptor, CnbError> {
        Descriptor::parse(text, Path::new("/bp/x"))
    }

    #[test]
    fn reads_a_simple_buildpack() {
        let d = parse(
            r#"api = "0.10"
[buildpack]
id = "acme/node"
version = "1.2.3"
name = "Node"
clear-env = true
sbom-formats = ["application/vnd.cyclonedx+json"]
[[targets]]
os = "linux"
arch = "amd64"
[[targets.distros]]
name = "debian"
version = "12"
"#,
        )
        .unwrap();
        assert_eq!(d.api, Api { major: 0, minor: 10 });
        assert_eq!(d.info.id, "acme/node");
        assert!(d.info.clear_env);
        assert_eq!(d.targets[0].distros[0].name, "debian");
        assert!(d.targets[0].matches("linux", "amd64", Some(("debian", "12"))));
        assert!(!d.targets[0].matches("linux", "arm64", Some(("debian", "12"))));
        assert!(!d.targets[0].matches("linux", "amd64", Some(("debian", "11"))), "another version");
        assert!(!d.targets[0].matches("linux", "amd64", Some(("ubuntu", "12"))), "another distro");
        assert!(!d.targets[0].matches("linux", "amd64", None), "an image without os-release");
        let any_debian =
            Target { distros: vec![Distro { name: "debian".into(), version: String::new() }], ..Default::default() };
        assert!(any_debian.matches("linux", "arm64", Some(("debian", "13"))));
        assert!(Target::default().matches("linux", "amd64", None), "no distros named: any image");
        assert!(!d.is_composite());
        assert_eq!(escape_id(&d.info.id), "acme_node");
    }

    #[test]
    fn reads_a_composite() {
        let d = parse(
            r#"api = "0.12"
[buildpack]
id = "acme/meta"
version = "0.1"
[[order]]
[[order.group]]
id = "acme/a"
version = "1"
[[order.group]]
id = "acme/b"
optional = true
[[order]]
[[order.group]]
id = "acme/c"
"#,
        )
        .unwrap();
        assert!(d.is_composite());
        assert_eq!(d.order.len(), 2);
        assert!(d.order[0].group[1].optional);
        assert_eq!(d.order[0].group[0].to_string(), "acme/a@1");
        assert_eq!(d.order[1].group[0].to_string(), "acme/c");
    }

    #[test]
    fn refuses_apis_outside_0_7_to_0_12_naming_the_file() {
        for api in ["0.6", "0.13", "1.0", "0.x", "10"] {
            let e = parse(&format!("api = \"{api}\"\n[buildpack]\nid = \"a\"\nversion = \"1\"\n")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("/bp/x/buildpack.toml"), "{msg}");
            assert!(msg.contains(api), "{msg}");
        }
        for api in ["0.7", "0.12"] {
            parse(&format!("api = \"{api}\"\n[buildpack]\nid = \"a\"\nversion = \"1\"\n")).unwrap();
        }
    }

    #[test]
    fn refuses_missing_or_reserved_fields() {
        let e = parse("[buildpack]\nid = \"a\"\nversion = \"1\"\n").unwrap_err().to_string();
        assert!(e.contains("`api` is missing"), "{e}");
        let e = parse("api = \"0.9\"\n").unwrap_err().to_string();
        assert!(e.contains("[buildpack] table is missing"), "{e}");
        let e = parse("api = \"0.9\"\n[buildpack]\nid = \"config\"\nversion = \"1\"\n").unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
        let e = parse("api = \"0.9\"\n[buildpack]\nid = \"a/../b\"\nversion = \"1\"\n").unwrap_err().to_string();
        assert!(e.contains("may hold only"), "{e}");
        let e = parse("api = \"0.9\"\n[buildpack]\nid = \"a\"\n").unwrap_err().to_string();
        assert!(e.contains("version is missing"), "{e}");
        let e = parse("api = \"0.9\"\n[buildpack]\nid = \"a\"\nversion = \"1\"\n[[order]]\n").unwrap_err().to_string();
        assert!(e.contains("has no [[order.group]]"), "{e}");
        let e = parse("api = \"0.9\"\nbuildpack = 3\n").unwrap_err().to_string();
        assert!(e.contains("/bp/x/buildpack.toml"), "{e}");
    }
}
