//! The containers `registries.conf` v2 convention (containers-registries.conf(5)), so a
//! site can point `docker.io` at its own mirror, block a registry or mark one insecure
//! without editing Dockerfiles or `--base` values.
//!
//! Supported: `[[registry]]` `prefix` / `location` / `insecure` / `blocked` /
//! `mirror-by-digest-only`, `[[registry.mirror]]` `location` / `insecure` /
//! `pull-from-mirror`, `unqualified-search-registries`, `short-name-mode` (read, see below)
//! and `[aliases]`. The longest matching prefix wins; a prefix `*.example.com` matches any
//! subdomain. Not supported: the v1 format (`[registries.search]`, refused with an error),
//! drop-in `registries.conf.d/` directories, and searching unqualified names through
//! `unqualified-search-registries`: a short name that no alias covers is normalised as
//! Docker does (`alpine` → `docker.io/library/alpine`), which keeps builds reproducible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::image::reference::{DockerName, NameError};

#[derive(Debug, thiserror::Error)]
pub enum RegistriesConfError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{}: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Location {
        path: PathBuf,
        #[source]
        source: LocationError,
    },
    #[error("CONTAINERS_REGISTRIES_CONF names {}, which does not exist: fix the variable or unset it", path.display())]
    Missing { path: PathBuf },
    #[error("pulling {reference} is blocked by the [[registry]] with prefix {prefix:?} in {}", path.display())]
    Blocked { reference: String, prefix: String, path: PathBuf },
}

/// Why a registry or mirror location is not usable.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("{0:?}: a registry location has no scheme (write host[:port][/path])")]
    HasScheme(String),
    #[error("{0:?} has no repository")]
    NoRepository(String),
    #[error("{full:?}: {source}")]
    BadName {
        full: String,
        #[source]
        source: NameError,
    },
}

/// Which mirrors serve which references.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum PullFromMirror {
    #[default]
    #[serde(rename = "all")]
    All,
    #[serde(rename = "digest-only")]
    DigestOnly,
    #[serde(rename = "tag-only")]
    TagOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mirror {
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub pull_from_mirror: Option<PullFromMirror>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Registry {
    /// What references this entry is for (defaults to `location`).
    #[serde(default)]
    pub prefix: String,
    /// Where they are pulled from (replaces the prefix).
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default)]
    pub mirror_by_digest_only: bool,
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<Mirror>,
}

/// A parsed `registries.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    /// The file it came from (`None`: no file, the defaults).
    pub path: Option<PathBuf>,
    pub unqualified_search_registries: Vec<String>,
    /// Read for completeness; imgforge never prompts and never searches.
    pub short_name_mode: Option<String>,
    pub registries: Vec<Registry>,
    /// Short name (`alpine`, `myteam/app`) → fully-qualified repository.
    pub aliases: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    unqualified_search_registries: Vec<String>,
    #[serde(default)]
    short_name_mode: Option<String>,
    #[serde(default)]
    registry: Vec<Registry>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    /// The v1 format's table; present means an unsupported v1 file.
    #[serde(default)]
    registries: Option<toml::Value>,
}

/// One place to pull an image from, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The reference rewritten for this endpoint.
    pub name: DockerName,
    /// Plain HTTP or unverified TLS allowed.
    pub insecure: bool,
    pub mirror: bool,
}

/// Where the file is: `$CONTAINERS_REGISTRIES_CONF`, else
/// `$XDG_CONFIG_HOME/containers/registries.conf` (or `~/.config/…`), else `etc`.
pub fn locate(var: &dyn Fn(&str) -> Option<String>, etc: &Path) -> Result<Option<PathBuf>, RegistriesConfError> {
    if let Some(p) = var("CONTAINERS_REGISTRIES_CONF").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        return if path.is_file() { Ok(Some(path)) } else { Err(RegistriesConfError::Missing { path }) };
    }
    let config_home = var("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| var("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".config")));
    let user = config_home.map(|c| c.join("containers/registries.conf"));
    Ok(user.into_iter().chain([etc.to_path_buf()]).find(|p| p.is_file()))
}

impl RegistriesConf {
    /// The configuration in force for this process (empty when there is no file).
    pub fn load() -> Result<RegistriesConf, RegistriesConfError> {
        let var = |k: &str| std::env::var(k).ok();
        match locate(&var, Path::new("/etc/containers/registries.conf"))? {
            Some(path) => RegistriesConf::load_from(&path),
            None => Ok(RegistriesConf::default()),
        }
    }

    pub fn load_from(path: &Path) -> Result<RegistriesConf, RegistriesConfError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RegistriesConfError::Read { path: path.to_path_buf(), source })?;
        RegistriesConf::parse(&text, path)
    }

    /// Parses and checks a file's text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<RegistriesConf, RegistriesConfError> {
        let invalid = |why: String| RegistriesConfError::Invalid { path: path.to_path_buf(), why };
        let location = |source| RegistriesConfError::Location { path: path.to_path_buf(), source };
        let file: File =
            toml::from_str(text).map_err(|source| RegistriesConfError::Parse { path: path.to_path_buf(), source })?;
        if file.registries.is_some() {
            return Err(invalid(
                "this is the v1 format ([registries.search] …), which imgforge does not read: use [[registry]] tables (v2)"
                    .into(),
            ));
        }
        let mut registries = Vec::new();
        for mut r in file.registry {
            r.location = normalize_location(&r.location).map_err(location)?;
            r.prefix = normalize_location(&r.prefix).map_err(location)?;
            if r.prefix.is_empty() {
                if r.location.is_empty() {
                    return Err(invalid("a [[registry]] needs a prefix or a location".into()));
                }
                r.prefix = r.location.clone();
            }
            if let Some(domain) = r.prefix.strip_prefix("*.") {
                if domain.is_empty() || domain.contains(['/', ':', '*']) {
                    return Err(invalid(format!(
                        "wildcard prefix {:?} must be *.DOMAIN, without port or path",
                        r.prefix
                    )));
                }
            } else if r.prefix.contains('*') {
                return Err(invalid(format!("prefix {:?}: a wildcard is only allowed as a leading *.", r.prefix)));
            }
            if r.location.is_empty() && !r.prefix.starts_with("*.") {
                r.location = r.prefix.clone();
            }
            for m in &mut r.mirrors {
                m.location = normalize_location(&m.location).map_err(location)?;
                if m.location.is_empty() {
                    return Err(invalid(format!("a mirror of {:?} has no location", r.prefix)));
                }
                if r.mirror_by_digest_only && m.pull_from_mirror.is_some() {
                    return Err(invalid(format!(
                        "{:?}: mirror-by-digest-only and a mirror's pull-from-mirror cannot both be set",
                        r.prefix
                    )));
                }
            }
            if registries.iter().any(|o: &Registry| o.prefix == r.prefix) {
                return Err(invalid(format!("prefix {:?} is defined twice", r.prefix)));
            }
            registries.push(r);
        }
        for (short, full) in &file.aliases {
            if has_registry(short) || short.contains(['@', ':']) {
                return Err(invalid(format!("alias {short:?} must be a short name without registry, tag or digest")));
            }
            if !has_registry(full)
                || full.contains('@')
                || full.rsplit('/').next().is_some_and(|last| last.contains(':'))
            {
                return Err(invalid(format!(
                    "alias {short:?} = {full:?}: the value must be a fully-qualified repository without tag or digest"
                )));
            }
        }
        Ok(RegistriesConf {
            path: Some(path.to_path_buf()),
            unqualified_search_registries: file.unqualified_search_registries,
            short_name_mode: file.short_name_mode,
            registries,
            aliases: file.aliases,
        })
    }

    /// A name as the user wrote it, with a short-name alias applied (`alpine:3` →
    /// `registry.example/lib/alpine:3`); other names are returned unchanged, for Docker's
    /// normalisation to complete.
    pub fn apply_alias(&self, input: &str) -> String {
        if has_registry(input) {
            return input.to_string();
        }
        let (name, suffix) = split_name(input);
        let key = name.strip_prefix("library/").unwrap_or(name);
        let found = self.aliases.get(name).or_else(|| self.aliases.get(key));
        match found {
            Some(full) => format!("{full}{suffix}"),
            None => input.to_string(),
        }
    }

    /// The `[[registry]]` entry for a fully-qualified reference: the longest matching
    /// prefix.
    pub fn find(&self, reference: &str) -> Option<(&Registry, usize)> {
        let mut best: Option<(&Registry, usize)> = None;
        for r in &self.registries {
            if let Some(len) = prefix_match(reference, &r.prefix) {
                if best.is_none_or(|(_, b)| len > b) {
                    best = Some((r, len));
                }
            }
        }
        best
    }

    /// Where to pull `name` from, in order: its mirrors, then its location. An error when
    /// its registry is blocked.
    pub fn pull_endpoints(&self, name: &DockerName) -> Result<Vec<Endpoint>, RegistriesConfError> {
        let reference = name.to_string();
        let Some((reg, len)) = self.find(&reference) else {
            return Ok(vec![Endpoint { name: name.clone(), insecure: false, mirror: false }]);
        };
        if reg.blocked {
            return Err(RegistriesConfError::Blocked {
                reference,
                prefix: reg.prefix.clone(),
                path: self.path.clone().unwrap_or_default(),
            });
        }
        let rest = &reference[len..];
        let invalid = |source| RegistriesConfError::Location { path: self.path.clone().unwrap_or_default(), source };
        let mut out = Vec::new();
        for m in &reg.mirrors {
            let rule = if reg.mirror_by_digest_only {
                PullFromMirror::DigestOnly
            } else {
                m.pull_from_mirror.unwrap_or_default()
            };
            let applies = match rule {
                PullFromMirror::All => true,
                PullFromMirror::DigestOnly => name.digest.is_some(),
                PullFromMirror::TagOnly => name.digest.is_none(),
            };
            if applies {
                let rewritten = rewrite(&m.location, rest).map_err(&invalid)?;
                out.push(Endpoint { name: rewritten, insecure: m.insecure, mirror: true });
            }
        }
        let primary =
            if reg.location.is_empty() { name.clone() } else { rewrite(&reg.location, rest).map_err(&invalid)? };
        out.push(Endpoint { name: primary, insecure: reg.insecure, mirror: false });
        Ok(out)
    }

    /// Pushes go to the reference itself (no mirrors, no rewriting); `blocked` and
    /// `insecure` still apply.
    pub fn push_endpoint(&self, name: &DockerName) -> Result<Endpoint, RegistriesConfError> {
        let reference = name.to_string();
        match self.find(&reference) {
            Some((reg, _)) if reg.blocked => Err(RegistriesConfError::Blocked {
                reference,
                prefix: reg.prefix.clone(),
                path: self.path.clone().unwrap_or_default(),
            }),
            found => {
                Ok(Endpoint { name: name.clone(), insecure: found.is_some_and(|(r, _)| r.insecure), mirror: false })
            }
        }
    }
}

/// `location + rest` as a [`DockerName`], the location's first component always the
/// registry (no Docker defaulting of `library/`).
fn rewrite(location: &str, rest: &str) -> Result<DockerName, LocationError> {
    let full = format!("{location}{rest}");
    let Some((registry, remainder)) = full.split_once('/') else {
        return Err(LocationError::NoRepository(full));
    };
    let mut name = DockerName::parse(&format!("registry.invalid/{remainder}"))
        .map_err(|source| LocationError::BadName { full: full.clone(), source })?;
    name.registry = registry.to_string();
    Ok(name)
}

/// containers/image's prefix rule: the prefix matches whole components (it may be followed
/// by `/`, `:` or `@`); `*.example.com` matches any subdomain of the registry. The length of
/// the matched part of `reference`.
fn prefix_match(reference: &str, prefix: &str) -> Option<usize> {
    if let Some(domain) = prefix.strip_prefix('*') {
        // `domain` is `.example.com`: it must end the registry component.
        let host_end = reference.find('/').unwrap_or(reference.len());
        let host = &reference[..host_end];
        let host_no_port = host.split(':').next().unwrap_or(host);
        return (host_no_port.ends_with(domain) && host_no_port.len() > domain.len()).then_some(host_no_port.len());
    }
    if reference == prefix {
        return Some(prefix.len());
    }
    let rest = reference.strip_prefix(prefix)?;
    rest.starts_with(['/', ':', '@']).then_some(prefix.len())
}

fn normalize_location(s: &str) -> Result<String, LocationError> {
    let t = s.trim().trim_end_matches('/');
    if t.starts_with("http://") || t.starts_with("https://") {
        return Err(LocationError::HasScheme(s.to_string()));
    }
    Ok(t.to_string())
}

/// Whether the first component of a name is a registry (Docker's rule).
fn has_registry(name: &str) -> bool {
    match name.split_once('/') {
        Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
        None => false,
    }
}

/// `name[:tag][@digest]` → (`name`, `:tag@digest`).
fn split_name(input: &str) -> (&str, &str) {
    let digest_at = input.find('@').unwrap_or(input.len());
    let last_slash = input[..digest_at].rfind('/').map_or(0, |i| i + 1);
    let tag_at = input[last_slash..digest_at].find(':').map_or(digest_at, |i| last_slash + i);
    (&input[..tag_at], &input[tag_at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
unqualified-search-registries = ["registry.fedoraproject.org", "docker.io"]
short-name-mode = "enforcing"

[[registry]]
prefix = "docker.io"
location = "mirror.internal:5000/dockerhub"
insecure = true

[[registry.mirror]]
location = "cache.internal/hub"
insecure = true

[[registry.mirror]]
location = "pinned.internal/hub"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "docker.io/library/busybox"
location = "busybox.internal/bb"

[[registry]]
location = "quay.io"
blocked = true

[[registry]]
prefix = "*.corp.example"
insecure = true

[aliases]
"app" = "registry.corp.example/team/app"
"#;

    fn conf() -> RegistriesConf {
        RegistriesConf::parse(CONF, Path::new("registries.conf")).unwrap()
    }

    fn name(s: &str) -> DockerName {
        DockerName::parse(s).unwrap()
    }

    fn endpoints(c: &RegistriesConf, s: &str) -> Vec<(String, bool, bool)> {
        c.pull_endpoints(&name(s)).unwrap().into_iter().map(|e| (e.name.to_string(), e.insecure, e.mirror)).collect()
    }

    #[test]
    fn parses_the_v2_keys() {
        let c = conf();
        assert_eq!(c.unqualified_search_registries, ["registry.fedoraproject.org", "docker.io"]);
        assert_eq!(c.short_name_mode.as_deref(), Some("enforcing"));
        assert_eq!(c.registries.len(), 4);
        assert_eq!(c.registries[2].prefix, "quay.io", "the prefix defaults to the location");
        assert_eq!(c.registries[0].mirrors[1].pull_from_mirror, Some(PullFromMirror::DigestOnly));
    }

    #[test]
    fn mirrors_first_then_the_location_longest_prefix_wins() {
        let c = conf();
        assert_eq!(
            endpoints(&c, "alpine:3.20"),
            [
                ("cache.internal/hub/library/alpine:3.20".to_string(), true, true),
                ("mirror.internal:5000/dockerhub/library/alpine:3.20".to_string(), true, false),
            ]
        );
        let digest = "docker.io/library/alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(endpoints(&c, digest).len(), 3, "the digest-only mirror serves digests");
        assert_eq!(endpoints(&c, "busybox:musl"), [("busybox.internal/bb:musl".to_string(), false, false)]);
        assert_eq!(
            endpoints(&c, "busyboxes"),
            [
                ("cache.internal/hub/library/busyboxes".to_string(), true, true),
                ("mirror.internal:5000/dockerhub/library/busyboxes".to_string(), true, false)
            ],
            "a prefix matches whole components only"
        );
        assert_eq!(endpoints(&c, "ghcr.io/x/y:1"), [("ghcr.io/x/y:1".to_string(), false, false)]);
    }

    #[test]
    fn wildcard_subdomains_and_blocked_registries() {
        let c = conf();
        assert_eq!(
            endpoints(&c, "registry.corp.example/team/app:1"),
            [("registry.corp.example/team/app:1".to_string(), true, false)]
        );
        assert_eq!(endpoints(&c, "a.b.corp.example:5000/x"), [("a.b.corp.example:5000/x".to_string(), true, false)]);
        assert_eq!(
            endpoints(&c, "corp.example/x"),
            [("corp.example/x".to_string(), false, false)],
            "*.d needs a subdomain"
        );
        let e = c.pull_endpoints(&name("quay.io/org/img:1")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pulling quay.io/org/img:1 is blocked by the [[registry]] with prefix \"quay.io\" in registries.conf"
        );
        assert!(c.push_endpoint(&name("quay.io/org/img:1")).is_err());
        assert!(c.push_endpoint(&name("docker.io/me/app:1")).unwrap().insecure);
        assert_eq!(c.push_endpoint(&name("docker.io/me/app:1")).unwrap().name.to_string(), "docker.io/me/app:1");
    }

    #[test]
    fn short_name_aliases() {
        let c = conf();
        assert_eq!(c.apply_alias("app:2"), "registry.corp.example/team/app:2");
        assert_eq!(c.apply_alias("app"), "registry.corp.example/team/app");
        assert_eq!(c.apply_alias("alpine:3"), "alpine:3", "no alias: Docker's normalisation follows");
        assert_eq!(c.apply_alias("quay.io/app:1"), "quay.io/app:1");
        assert_eq!(split_name("localhost:5000/a/b:t@sha256:x"), ("localhost:5000/a/b", ":t@sha256:x"));
    }

    #[test]
    fn invalid_files_say_what_is_wrong() {
        let bad = |t: &str| RegistriesConf::parse(t, Path::new("r.conf")).unwrap_err().to_string();
        assert!(bad("[registries.search]\nregistries = [\"docker.io\"]\n").contains("v1 format"));
        assert_eq!(bad("[[registry]]\ninsecure = true\n"), "r.conf: a [[registry]] needs a prefix or a location");
        assert!(bad("[[registry]]\nlocation = \"https://x.io\"\n").contains("has no scheme"));
        assert!(bad("[[registry]]\nprefix = \"*.x.io/ns\"\n").contains("wildcard prefix"));
        assert!(bad("[[registry]]\nlocation = \"a.io\"\n[[registry]]\nprefix = \"a.io\"\n").contains("defined twice"));
        assert!(bad("[aliases]\n\"x\" = \"noregistry\"\n").contains("fully-qualified"));
        assert!(bad("[aliases]\n\"x\" = \"r.io/a/b:tag\"\n").contains("without tag"));
        assert!(bad("unqualified-search-registries = 3\n").starts_with("r.conf: "));
    }

    #[test]
    fn the_file_is_found_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc.conf");
        let home = dir.path().join("home");
        let env = |vars: Vec<(&'static str, String)>| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        assert_eq!(locate(&env(vec![("HOME", home.display().to_string())]), &etc).unwrap(), None);
        std::fs::write(&etc, "").unwrap();
        assert_eq!(locate(&env(vec![("HOME", home.display().to_string())]), &etc).unwrap(), Some(etc.clone()));
        std::fs::create_dir_all(home.join(".config/containers")).unwrap();
        std::fs::write(home.join(".config/containers/registries.conf"), "").unwrap();
        let user = home.join(".config/containers/registries.conf");
        assert_eq!(locate(&env(vec![("HOME", home.display().to_string())]), &etc).unwrap(), Some(user));
        let named = dir.path().join("named.conf");
        let with_var = env(vec![
            ("HOME", home.display().to_string()),
            ("CONTAINERS_REGISTRIES_CONF", named.display().to_string()),
        ]);
        assert!(matches!(locate(&with_var, &etc), Err(RegistriesConfError::Missing { .. })));
        std::fs::write(&named, "").unwrap();
        assert_eq!(locate(&with_var, &etc).unwrap(), Some(named));
    }
}
