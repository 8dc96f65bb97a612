//! Manifests, indexes and configs as they arrive: parsed strictly, never trusted.
//!
//! The raw bytes are the source of truth (their digest is what was verified); the parsed
//! values here are views of them. Parsing goes through `oci-spec` for the schema and then
//! into small local types whose digests are our strict [`Digest`].

use std::collections::BTreeMap;
use std::fmt;

use imgforge_layers::{Compression, DiffId, Digest};
use serde_json::Value;

pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
}

/// Largest manifest or index accepted (the distribution registry's own limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Deepest chain of nested indexes followed.
pub const MAX_INDEX_DEPTH: usize = 4;
/// Most entries read from one index, and most layers in one manifest.
pub const MAX_FANOUT: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct FormatError {
    pub what: String,
    pub why: String,
}

pub fn format_error(what: impl fmt::Display, why: impl Into<String>) -> FormatError {
    FormatError { what: what.to_string(), why: why.into() }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A `--platform` that is not `OS/ARCH[/VARIANT]`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")]
pub struct PlatformError(pub String);

impl Platform {
    /// linux/<the architecture this binary runs on>, in GOARCH spelling.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: variant.map(Into::into) }
    }

    /// `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None })
            }
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: Some(v.to_string()) })
            }
            _ => Err(PlatformError(s.to_string())),
        }
    }

    /// Whether a manifest for `candidate` runs on `self`. A variant is compared only when
    /// both name one (arm64 images rarely do).
    pub fn accepts(&self, candidate: &Platform) -> bool {
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && match (&self.variant, &candidate.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        self.variant.as_ref().map_or(Ok(()), |v| write!(f, "/{v}"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
    /// Alternate locations: recorded, never fetched (containerd CVE-2020-15157).
    pub urls: Vec<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            urls: Vec::new(),
        }
    }

    /// The descriptor as JSON, keys sorted (deterministic).
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("mediaType".into(), self.media_type.clone().into());
        m.insert("digest".into(), self.digest.to_string().into());
        m.insert("size".into(), self.size.into());
        if let Some(p) = &self.platform {
            let mut pm = serde_json::Map::new();
            pm.insert("architecture".into(), p.architecture.clone().into());
            pm.insert("os".into(), p.os.clone().into());
            if let Some(v) = &p.variant {
                pm.insert("variant".into(), v.clone().into());
            }
            m.insert("platform".into(), pm.into());
        }
        if !self.annotations.is_empty() {
            m.insert("annotations".into(), serde_json::to_value(&self.annotations).expect("string map"));
        }
        if !self.urls.is_empty() {
            m.insert("urls".into(), self.urls.clone().into());
        }
        m.into()
    }

    fn from_oci(d: &oci_spec::image::Descriptor, what: &str) -> Result<Descriptor, FormatError> {
        let digest = d.digest().to_string().parse::<Digest>().map_err(|e| format_error(what, e.to_string()))?;
        let size = d.size();
        let platform = d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        });
        Ok(Descriptor {
            media_type: d.media_type().to_string(),
            digest,
            size,
            platform,
            annotations: d.annotations().clone().unwrap_or_default().into_iter().collect(),
            urls: d.urls().clone().unwrap_or_default(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Index {
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

#[derive(Clone, Debug)]
pub enum Document {
    Manifest(Box<Manifest>),
    Index(Index),
}

/// Parses a manifest or an index. `declared` is the media type the referring descriptor
/// (or registry) gave, if any. Rejects schema 1, unknown schema versions, documents that
/// could be read as both kinds (CVE-2021-41190), and unknown media types.
pub fn parse_document(bytes: &[u8], declared: Option<&str>, what: &str) -> Result<Document, FormatError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format_error(
            what,
            format!("{} bytes is larger than the {MAX_MANIFEST_BYTES}-byte limit for manifests", bytes.len()),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format_error(what, format!("not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| format_error(what, "not a JSON object"))?;
    match obj.get("schemaVersion") {
        Some(Value::Number(n)) if n.as_u64() == Some(2) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {
            return Err(format_error(
                what,
                "Docker schema 1 manifests are not supported; convert the image (e.g. skopeo copy) first",
            ))
        }
        Some(other) => return Err(format_error(what, format!("unsupported schemaVersion {other}"))),
        None => return Err(format_error(what, "schemaVersion is missing")),
    }
    let inner = obj
        .get("mediaType")
        .map(|m| m.as_str().ok_or_else(|| format_error(what, "mediaType is not a string")))
        .transpose()?;
    if let (Some(inner), Some(declared)) = (inner, declared) {
        if inner != declared {
            return Err(format_error(
                what,
                format!("mediaType {inner:?} disagrees with the descriptor's {declared:?}"),
            ));
        }
    }
    let media_type = inner.or(declared);
    let is_index = match media_type {
        Some(media::OCI_INDEX | media::DOCKER_LIST) => true,
        Some(media::OCI_MANIFEST | media::DOCKER_MANIFEST) => false,
        Some(media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED) => {
            return Err(format_error(what, "Docker schema 1 manifests are not supported"))
        }
        Some(other) => return Err(format_error(what, format!("unsupported media type {other:?}"))),
        None => {
            let has_manifests = obj.contains_key("manifests");
            let has_image = obj.contains_key("config") || obj.contains_key("layers");
            match (has_manifests, has_image) {
                (true, false) => true,
                (false, true) => false,
                (true, true) => {
                    return Err(format_error(
                        what,
                        "ambiguous document: no mediaType and both manifests and config/layers (CVE-2021-41190)",
                    ))
                }
                (false, false) => return Err(format_error(what, "neither a manifest nor an index")),
            }
        }
    };
    let media_type = media_type.unwrap_or(if is_index { media::OCI_INDEX } else { media::OCI_MANIFEST }).to_string();
    if is_index {
        if obj.contains_key("config") || obj.contains_key("layers") {
            return Err(format_error(what, "an index must not have config or layers (CVE-2021-41190)"));
        }
        let idx: oci_spec::image::ImageIndex =
            serde_json::from_value(value).map_err(|e| format_error(what, format!("invalid index: {e}")))?;
        if idx.manifests().len() > MAX_FANOUT {
            return Err(format_error(
                what,
                format!("index lists {} manifests; the limit is {MAX_FANOUT}", idx.manifests().len()),
            ));
        }
        let manifests = idx
            .manifests()
            .iter()
            .enumerate()
            .map(|(i, d)| Descriptor::from_oci(d, &format!("{what}, manifests[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Document::Index(Index { media_type, manifests }))
    } else {
        if obj.contains_key("manifests") {
            return Err(format_error(what, "a manifest must not list manifests (CVE-2021-41190)"));
        }
        let m: oci_spec::image::ImageManifest =
            serde_json::from_value(value).map_err(|e| format_error(what, format!("invalid manifest: {e}")))?;
        if m.layers().len() > MAX_FANOUT {
            return Err(format_error(what, format!("{} layers; the limit is {MAX_FANOUT}", m.layers().len())));
        }
        let config = Descriptor::from_oci(m.config(), &format!("{what}, config"))?;
        if !matches!(config.media_type.as_str(), media::OCI_CONFIG | media::DOCKER_CONFIG) {
            return Err(format_error(
                what,
                format!("config media type {:?} is not an image config", config.media_type),
            ));
        }
        let layers: Vec<Descriptor> = m
            .layers()
            .iter()
            .enumerate()
            .map(|(i, d)| Descriptor::from_oci(d, &format!("{what}, layers[{i}]")))
            .collect::<Result<_, _>>()?;
        for (i, l) in layers.iter().enumerate() {
            if Compression::from_media_type(&l.media_type).is_none() {
                return Err(format_error(what, format!("layers[{i}] has unsupported media type {:?}", l.media_type)));
            }
        }
        Ok(Document::Manifest(Box::new(Manifest {
            media_type,
            config,
            layers,
            annotations: m.annotations().clone().unwrap_or_default().into_iter().collect(),
        })))
    }
}

impl Index {
    /// The manifest for `platform`, or an error naming the platforms on offer.
    pub fn select(&self, platform: &Platform, what: &str) -> Result<&Descriptor, FormatError> {
        let images = self.manifests.iter().filter(|d| {
            matches!(
                d.media_type.as_str(),
                media::OCI_MANIFEST | media::DOCKER_MANIFEST | media::OCI_INDEX | media::DOCKER_LIST
            )
        });
        let mut offered = Vec::new();
        for d in images {
            match &d.platform {
                Some(p) if platform.accepts(p) => return Ok(d),
                Some(p) => offered.push(p.to_string()),
                None => offered.push("(no platform)".into()),
            }
        }
        // A single image without a platform is an index that merely wraps one manifest.
        if self.manifests.len() == 1 && self.manifests[0].platform.is_none() {
            return Ok(&self.manifests[0]);
        }
        Err(format_error(
            what,
            format!(
                "no image for {platform}; it offers: {}. Choose one with --platform",
                if offered.is_empty() { "nothing".into() } else { offered.join(", ") }
            ),
        ))
    }
}

/// An image config: the raw JSON (kept whole, so nothing the base set is lost) and the
/// fields imgforge reads.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    pub raw: serde_json::Map<String, Value>,
    pub typed: oci_spec::image::ImageConfiguration,
    pub diff_ids: Vec<DiffId>,
}

pub fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfig, FormatError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format_error(
            what,
            format!("{} bytes is larger than the {MAX_CONFIG_BYTES}-byte limit for configs", bytes.len()),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format_error(what, format!("not valid JSON: {e}")))?;
    let raw = value.as_object().cloned().ok_or_else(|| format_error(what, "not a JSON object"))?;
    let typed: oci_spec::image::ImageConfiguration =
        serde_json::from_value(value).map_err(|e| format_error(what, format!("invalid image config: {e}")))?;
    if typed.rootfs().typ() != "layers" {
        return Err(format_error(what, format!("rootfs.type is {:?}, expected \"layers\"", typed.rootfs().typ())));
    }
    let diff_ids = typed
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse::<DiffId>().map_err(|e| format_error(what, format!("rootfs.diff_ids: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImageConfig { raw, typed, diff_ids })
}

impl ImageConfig {
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.typed.os().to_string(),
            architecture: self.typed.architecture().to_string(),
            variant: self.typed.variant().clone(),
        }
    }

    /// The `config` section's string list field (`Env`, `Entrypoint`, `Cmd`).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.raw
            .get("config")
            .and_then(|c| c.get(key))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    pub fn label(&self, key: &str) -> Option<String> {
        self.raw
            .get("config")
            .and_then(|c| c.get("Labels"))
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.raw.get("config").and_then(|c| c.get(key)).and_then(Value::as_str).map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest_json(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,{extra}"config":{{"mediaType":"{}","digest":"{D}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":3}}]}}"#,
            media::OCI_CONFIG
        )
    }

    #[test]
    fn parses_manifest_with_and_without_media_type() {
        for extra in ["", &format!(r#""mediaType":"{}","#, media::OCI_MANIFEST)] {
            let Document::Manifest(m) = parse_document(manifest_json(extra).as_bytes(), None, "m").unwrap() else {
                panic!()
            };
            assert_eq!(m.layers.len(), 1);
            assert_eq!(m.layers[0].size, 3);
        }
    }

    #[test]
    fn rejects_hostile_documents() {
        let ambiguous = format!(
            r#"{{"schemaVersion":2,"manifests":[],"config":{{"mediaType":"{}","digest":"{D}","size":2}},"layers":[]}}"#,
            media::OCI_CONFIG
        );
        let cases = [
            (ambiguous.clone(), "CVE-2021-41190"),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#.into(), "schema 1"),
            (r#"{"schemaVersion":3}"#.into(), "schemaVersion"),
            ("[1,2]".into(), "not a JSON object"),
            ("{\"schemaVersion\":2,".into(), "not valid JSON"),
            (manifest_json("").replace(D, "sha256:abc"), "digest"),
            (manifest_json("").replace("tar+gzip", "tar+lz4"), "unsupported media type"),
            (manifest_json(r#""mediaType":"text/html","#), "unsupported media type"),
        ];
        for (doc, want) in cases {
            let err = parse_document(doc.as_bytes(), None, "base manifest").unwrap_err().to_string();
            assert!(err.contains(want), "{doc}: {err}");
            assert!(err.starts_with("base manifest"), "{err}");
        }
        let declared = parse_document(manifest_json("").as_bytes(), Some(media::OCI_INDEX), "m");
        assert!(declared.unwrap_err().to_string().contains("index must not have config"));
        let big = vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize];
        assert!(parse_document(&big, None, "m").unwrap_err().to_string().contains("limit"));
    }

    #[test]
    fn index_selects_platform() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
              {{"mediaType":"{m}","digest":"{D}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
              {{"mediaType":"{m}","digest":"{D}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            media::OCI_INDEX,
            m = media::OCI_MANIFEST
        );
        let Document::Index(i) = parse_document(idx.as_bytes(), None, "i").unwrap() else { panic!() };
        assert_eq!(i.select(&Platform::parse("linux/amd64").unwrap(), "i").unwrap().size, 2);
        assert_eq!(i.select(&Platform::parse("linux/arm64").unwrap(), "i").unwrap().size, 1);
        let err = i.select(&Platform::parse("linux/s390x").unwrap(), "i").unwrap_err().to_string();
        assert!(err.contains("linux/arm64/v8") && err.contains("--platform"), "{err}");
    }

    #[test]
    fn arm64_accepts_its_v8_variant_and_none() {
        let p = |s| Platform::parse(s).unwrap();
        let arm64 = p("linux/arm64");
        assert!(arm64.accepts(&p("linux/arm64/v8")), "Docker Hub lists arm64 with variant v8");
        assert!(arm64.accepts(&p("linux/arm64")));
        assert!(p("linux/arm64/v8").accepts(&p("linux/arm64")));
        assert!(!arm64.accepts(&p("linux/arm/v8")));
        assert!(!arm64.accepts(&p("linux/amd64")));
        assert!(!p("linux/arm/v7").accepts(&p("linux/arm/v6")));
    }

    #[test]
    fn config_diff_ids_are_strict() {
        let ok = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{D}"]}},"config":{{"Env":["A=1"]}}}}"#
        );
        let c = parse_config(ok.as_bytes(), "c").unwrap();
        assert_eq!(c.diff_ids.len(), 1);
        assert_eq!(c.list("Env"), vec!["A=1"]);
        let bad = ok.replace(D, "sha256:zz");
        assert!(parse_config(bad.as_bytes(), "c").unwrap_err().to_string().contains("rootfs.diff_ids"));
    }
}
