//! Image references, spelled as skopeo users know them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use imgforge_layers::Digest;

/// Where an image comes from or goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// The empty image (input only).
    Scratch,
    /// `oci:DIR[:REF]`: an OCI image layout directory.
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:REF]`: a tar of an OCI image layout.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:NAME[:TAG]]`: the `docker save` format.
    DockerArchive { file: PathBuf, name: Option<DockerName> },
    /// `docker://NAME` or a bare `registry/name:tag`.
    Registry(DockerName),
}

/// A Docker-style name: `[registry/]repository[:tag][@digest]`, normalised with Docker's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerName {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {reference:?}: {why}")]
    Invalid { reference: String, why: String },
}

fn invalid(reference: &str, why: impl fmt::Display) -> ReferenceError {
    ReferenceError::Invalid { reference: reference.chars().take(200).collect(), why: why.to_string() }
}

/// Why a name or tag is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error(transparent)]
    Digest(#[from] imgforge_layers::DigestError),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid tag {0:?}: use letters, digits and - . _ : @ / + =")]
    OciTag(String),
    #[error("invalid repository name {0:?}: use lowercase letters, digits and . _ - separated by /")]
    Repository(String),
    #[error("invalid registry {0:?}")]
    Registry(String),
    #[error("invalid registry {0:?}: the port after ':' must be a number")]
    Port(String),
}

/// The default tag where a reference names none (Docker's rule, applied to OCI layouts too).
pub const DEFAULT_TAG: &str = "latest";

/// The transports a reference may name, as error messages list them.
pub const TRANSPORTS: &str = "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME[:TAG]], \
     docker://NAME[:TAG|@DIGEST] (or a bare registry NAME), scratch";

/// The transport prefixes imgforge reads and writes.
const KNOWN_TRANSPORTS: [&str; 4] = ["oci", "oci-archive", "docker-archive", "docker"];

/// `W:REST` where `W` is not a transport but was meant as one: `ocii:/tmp/x` (a path
/// follows, which no registry name does), `oci-archve:app.tar` (one or two letters away
/// from a transport), `dockr://x`. A registry name with a port (`localhost:5000/app`) or a
/// tag (`busybox:1.36`) is none of these.
fn unknown_transport(word: &str, rest: &str) -> Option<String> {
    let is_word = word.len() <= 32
        && word.starts_with(|c: char| c.is_ascii_alphabetic())
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !is_word || rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let near = KNOWN_TRANSPORTS
        .into_iter()
        .filter(|t| t.len() > 3 || word.len() > 3)
        .find(|t| strsim::levenshtein(&word.to_ascii_lowercase(), t) <= 2);
    let looks_like_path = rest.is_empty() || rest.starts_with(['/', '.', '~']);
    match near {
        Some(t) => Some(format!("unknown transport \"{word}:\" (did you mean \"{t}:\"?)")),
        None if looks_like_path => Some(format!("unknown transport \"{word}:\"")),
        None => None,
    }
}

impl ImageRef {
    /// The tag used when writing to this reference (`latest` where none was given).
    pub fn tag_or_default(&self) -> &str {
        match self {
            ImageRef::OciLayout { tag, .. } | ImageRef::OciArchive { tag, .. } => tag.as_deref().unwrap_or(DEFAULT_TAG),
            ImageRef::DockerArchive { name: Some(n), .. } | ImageRef::Registry(n) => {
                n.tag.as_deref().unwrap_or(DEFAULT_TAG)
            }
            _ => DEFAULT_TAG,
        }
    }
}

impl ImageRef {
    /// The name recorded in an image's `org.opencontainers.image.base.name`: for local
    /// transports, the file or directory name and tag without the path, so the same base at
    /// another path (another checkout, another machine) gives the same image digest. The
    /// base's digest, recorded beside it, is its exact identity.
    pub fn portable_name(&self) -> String {
        let base = |p: &std::path::Path| {
            p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
        };
        match self {
            ImageRef::Scratch => "scratch".into(),
            ImageRef::OciLayout { dir, .. } => format!("oci:{}:{}", base(dir), self.tag_or_default()),
            ImageRef::OciArchive { file, .. } => format!("oci-archive:{}:{}", base(file), self.tag_or_default()),
            ImageRef::DockerArchive { file, name } => match name {
                Some(n) => format!("docker-archive:{}:{}", base(file), n.familiar()),
                None => format!("docker-archive:{}", base(file)),
            },
            ImageRef::Registry(n) => n.to_string(),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, ReferenceError> {
        if s == "scratch" {
            return Ok(ImageRef::Scratch);
        }
        if let Some((transport, rest)) = s.split_once(':') {
            match transport {
                "oci" | "oci-archive" => {
                    // containers/image splits at the first ':' after the transport: the path
                    // may not contain ':'.
                    let (path, tag) = match rest.split_once(':') {
                        Some((p, t)) => (p, Some(t)),
                        None => (rest, None),
                    };
                    if path.is_empty() {
                        return Err(invalid(s, "the path is empty"));
                    }
                    if let Some(t) = tag {
                        validate_oci_ref_name(t).map_err(|why| invalid(s, why))?;
                    }
                    let tag = tag.map(str::to_string);
                    return Ok(if transport == "oci" {
                        ImageRef::OciLayout { dir: path.into(), tag }
                    } else {
                        ImageRef::OciArchive { file: path.into(), tag }
                    });
                }
                "docker-archive" => {
                    let (path, name) = match rest.split_once(':') {
                        Some((p, n)) => (p, Some(n)),
                        None => (rest, None),
                    };
                    if path.is_empty() {
                        return Err(invalid(s, "the path is empty"));
                    }
                    let name = match name {
                        Some(n) => {
                            let n = DockerName::parse(n).map_err(|why| invalid(s, why))?;
                            if n.digest.is_some() {
                                return Err(invalid(s, "a docker-archive name cannot carry a digest"));
                            }
                            Some(n)
                        }
                        None => None,
                    };
                    return Ok(ImageRef::DockerArchive { file: path.into(), name });
                }
                "docker" => {
                    let name = rest
                        .strip_prefix("//")
                        .ok_or_else(|| invalid(s, "the docker transport is written docker://NAME"))?;
                    return DockerName::parse(name).map(ImageRef::Registry).map_err(|why| invalid(s, why));
                }
                "containers-storage" | "docker-daemon" | "dir" | "ostree" | "sif" => {
                    return Err(invalid(
                        s,
                        format!(
                            "the {transport}: transport is not supported; use oci:, oci-archive:, docker-archive: or docker://"
                        ),
                    ));
                }
                word => {
                    if let Some(why) = unknown_transport(word, rest) {
                        return Err(invalid(s, format!("{why}; a reference is one of {TRANSPORTS}")));
                    }
                }
            }
        }
        // A bare name: a registry reference, unless it looks like a path.
        if s.starts_with('/') || s.starts_with('.') {
            return Err(invalid(
                s,
                "this looks like a path; name a transport, e.g. oci:PATH[:TAG], oci-archive:PATH or docker-archive:PATH",
            ));
        }
        DockerName::parse(s).map(ImageRef::Registry).map_err(|why| {
            // `app:` or `host:/x`: perhaps a transport was meant, so name them all
            if s.contains(':') {
                invalid(s, format!("{why}; a reference is one of {TRANSPORTS}"))
            } else {
                invalid(s, why)
            }
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Scratch => write!(f, "scratch"),
            ImageRef::OciLayout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                tag.as_ref().map_or(Ok(()), |t| write!(f, ":{t}"))
            }
            ImageRef::OciArchive { file, tag } => {
                write!(f, "oci-archive:{}", file.display())?;
                tag.as_ref().map_or(Ok(()), |t| write!(f, ":{t}"))
            }
            ImageRef::DockerArchive { file, name } => {
                write!(f, "docker-archive:{}", file.display())?;
                name.as_ref().map_or(Ok(()), |n| write!(f, ":{}", n.archive_name()))
            }
            ImageRef::Registry(n) => write!(f, "docker://{n}"),
        }
    }
}

/// OCI `org.opencontainers.image.ref.name` grammar, restricted to what is safe and useful.
fn validate_oci_ref_name(t: &str) -> Result<(), NameError> {
    let ok =
        !t.is_empty() && t.len() <= 255 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:@/+=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NameError::OciTag(t.to_string()))
    }
}

impl DockerName {
    /// Parses with Docker's defaulting rules: no registry → docker.io; a single-component
    /// name on docker.io → `library/NAME`. The tag stays `None` when not given.
    pub fn parse(s: &str) -> Result<DockerName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // The tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let valid = !t.is_empty()
                && t.len() <= 128
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !valid {
                return Err(NameError::Tag(t.to_string()));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if repository.is_empty() || !repository.split('/').all(component_ok) {
            return Err(NameError::Repository(repository));
        }
        if registry.is_empty() || !registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
            return Err(NameError::Registry(registry));
        }
        // HOST:PORT: the port is a number (an IPv6 literal keeps its colons inside brackets)
        let port = match registry.rsplit_once(']') {
            Some((_, after)) => after.strip_prefix(':'),
            None => registry.split_once(':').map(|(_, p)| p),
        };
        if let Some(port) = port {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NameError::Port(registry));
            }
        }
        Ok(DockerName { registry, repository, tag: tag.map(str::to_string), digest })
    }

    /// `name:tag` as `docker save` writes it in RepoTags (familiar form, tag defaulted).
    pub fn familiar(&self) -> String {
        format!("{}:{}", self.short_name(), self.tag.as_deref().unwrap_or(DEFAULT_TAG))
    }

    /// The shortest spelling that parses back to the same registry and repository.
    fn short_name(&self) -> String {
        if self.registry != "docker.io" {
            return format!("{}/{}", self.registry, self.repository);
        }
        let first = self.repository.split('/').next().unwrap_or("");
        let looks_like_registry = first.contains('.') || first.contains(':') || first == "localhost";
        match self.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ if looks_like_registry => format!("docker.io/{}", self.repository),
            _ => self.repository.clone(),
        }
    }

    /// The name as written for docker-archive references: the tag only when one was given.
    fn archive_name(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.short_name()),
            None => self.short_name(),
        }
    }
}

impl fmt::Display for DockerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn transports() {
        assert_eq!(p("scratch"), ImageRef::Scratch);
        assert_eq!(p("oci:/tmp/x:v1"), ImageRef::OciLayout { dir: "/tmp/x".into(), tag: Some("v1".into()) });
        assert_eq!(p("oci:rel/dir"), ImageRef::OciLayout { dir: "rel/dir".into(), tag: None });
        assert_eq!(p("oci-archive:/a.tar"), ImageRef::OciArchive { file: "/a.tar".into(), tag: None });
        match p("docker-archive:/a.tar:myapp:1") {
            ImageRef::DockerArchive { file, name: Some(n) } => {
                assert_eq!(file, PathBuf::from("/a.tar"));
                assert_eq!(n.familiar(), "myapp:1");
            }
            other => panic!("{other:?}"),
        }
        match p("docker-archive:/a.tar:reg.example:5000/team/app") {
            ImageRef::DockerArchive { name: Some(n), .. } => {
                assert_eq!(n.familiar(), "reg.example:5000/team/app:latest")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn portable_names_drop_the_path() {
        assert_eq!(p("oci:/a/b/busybox:1").portable_name(), "oci:busybox:1");
        assert_eq!(p("oci:../x/busybox").portable_name(), "oci:busybox:latest");
        assert_eq!(p("oci:/other/place/busybox:1").portable_name(), p("oci:busybox:1").portable_name());
        assert_eq!(p("docker-archive:/t/base.tar:app:2").portable_name(), "docker-archive:base.tar:app:2");
    }

    #[test]
    fn docker_archive_names_round_trip() {
        // Found by the reference fuzz target (REF-1).
        for s in [
            "docker-archive:a.tar:app",
            "docker-archive:a.tar:library/x/y:1",
            "docker-archive:aa:library/library/x",
            "docker-archive:a.tar:docker.io/a.b/c:t",
            "docker-archive:a.tar:docker.io/my_team.example/app:1",
            "docker-archive:a.tar:reg.example:5000/team/app:2",
        ] {
            let r = p(s);
            let printed = r.to_string();
            assert_eq!(p(&printed), r, "{s} printed as {printed}");
            assert_eq!(p(&printed).to_string(), printed, "printing {s} is not stable");
        }
        let ImageRef::DockerArchive { name: Some(n), .. } = p("docker-archive:a.tar:library/x/y:1") else { panic!() };
        assert_eq!(n.familiar(), "library/x/y:1");
    }

    #[test]
    fn docker_defaults() {
        let ImageRef::Registry(n) = p("busybox") else { panic!() };
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str(), n.tag.as_deref()),
            ("docker.io", "library/busybox", None)
        );
        let ImageRef::Registry(n) = p("docker://localhost:5000/app:1.2") else { panic!() };
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str(), n.tag.as_deref()),
            ("localhost:5000", "app", Some("1.2"))
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let ImageRef::Registry(n) = p(&format!("quay.io/org/app@{d}")) else { panic!() };
        assert_eq!(n.digest.unwrap().to_string(), d);
        assert_eq!(n.to_string(), format!("quay.io/org/app@{d}"));
    }

    #[test]
    fn transport_typos_are_errors_that_list_the_transports() {
        for (bad, says) in [
            ("ocii:/tmp/x", "unknown transport \"ocii:\" (did you mean \"oci:\"?)"),
            ("oci-archve:hello.tar", "did you mean \"oci-archive:\""),
            ("dockerarchive:a.tar", "did you mean \"docker-archive:\""),
            ("dockr://busybox", "did you mean \"docker:\""),
            ("file:/tmp/x", "unknown transport \"file:\""),
            ("myreg:/app", "unknown transport"),
            ("localhost:/app", "unknown transport"),
            ("reg.example.com:/app", "port after ':' must be a number"),
            ("reg.example.com:http/app", "port after ':' must be a number"),
            ("app:", "unknown transport \"app:\""),
        ] {
            let e = bad.parse::<ImageRef>().expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("oci-archive:FILE[:TAG]") && e.contains("docker://NAME"), "{bad}: {e}");
        }
        // what still parses as registry names
        for good in ["busybox:1.36", "localhost:5000/app", "[::1]:5000/app:1", "reg.example.com:443/team/app", "ocx:1"]
        {
            assert!(matches!(p(good), ImageRef::Registry(_)), "{good}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "oci:",
            "oci:/x:bad tag",
            "docker:busybox",
            "UPPER/case",
            "/abs/path",
            "./rel",
            "app:",
            "app@sha256:1234",
            "containers-storage:x",
            "docker-archive:/a.tar:x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad} should be rejected");
        }
    }
}
