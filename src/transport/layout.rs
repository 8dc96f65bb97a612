//! What the OCI image layout forms (directory and archive) share: picking a tag from
//! `index.json`, and writing `index.json`.

use std::collections::BTreeMap;
use std::io::Read;

use imgforge_layers::Digest;
use serde_json::{json, Value};

use super::{
    base_from_manifest, follow_to_manifest, read_small_verified, NewImage, NewIndex, ResolvedImage, Top, TransportError,
};
use crate::image::manifest::{self, media, parse_document, Descriptor, Document, Index, Platform};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The image's full name, which podman (`load`, `run oci-archive:`) and containerd's import
/// take in preference to `ref.name` when they name what they load.
pub const IMAGE_NAME: &str = "io.containerd.image.name";

/// What a destination write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Blobs copied in (`bytes_written` counts their bytes).
    pub blobs_written: usize,
    /// Blobs hard-linked from the cache or the base: no bytes moved.
    pub blobs_linked: usize,
    /// Blobs mounted from another repository of the same registry: no bytes moved.
    pub blobs_mounted: usize,
    pub blobs_present: usize,
    pub bytes_written: u64,
}

pub(crate) trait LayoutRead {
    fn read_index(&self) -> Result<Vec<u8>, TransportError>;
    fn open_blob(&self, d: &Digest) -> Result<Box<dyn Read + Send + '_>, TransportError>;
    fn describe(&self) -> String;
}

pub(crate) fn parse_index(bytes: &[u8], what: &str) -> Result<Index, TransportError> {
    match parse_document(bytes, None, what)? {
        Document::Index(i) => Ok(i),
        Document::Manifest(_) => Err(manifest::format_error(what, "index.json holds a manifest, not an index").into()),
    }
}

fn tag_of(d: &Descriptor) -> Option<&str> {
    d.annotations.get(REF_NAME).map(String::as_str)
}

fn reference_of(src: &impl LayoutRead, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("{}:{t}", src.describe()),
        None => src.describe(),
    }
}

/// The entries of `index.json` that `tag` names (with no tag: the only entry, else `latest`).
fn candidates(src: &impl LayoutRead, tag: Option<&str>) -> Result<Vec<Descriptor>, TransportError> {
    let index = parse_index(&src.read_index()?, &format!("{}/index.json", src.describe()))?;
    let tags: Vec<&str> = index.manifests.iter().filter_map(tag_of).collect();
    let candidates: Vec<Descriptor> = match tag {
        Some(t) => index.manifests.iter().filter(|d| tag_of(d) == Some(t)).cloned().collect(),
        None if index.manifests.len() == 1 => index.manifests.clone(),
        None => index
            .manifests
            .iter()
            .filter(|d| tag_of(d) == Some(super::super::image::reference::DEFAULT_TAG))
            .cloned()
            .collect(),
    };
    if candidates.is_empty() {
        let have = if tags.is_empty() { "no tags".to_string() } else { format!("tags: {}", tags.join(", ")) };
        return Err(TransportError::NotFound(match tag {
            Some(t) => format!("{}: no image tagged {t:?} ({have})", src.describe()),
            None => format!(
                "{}: several images and none tagged latest ({have}); name one as {}:TAG",
                src.describe(),
                src.describe()
            ),
        }));
    }
    Ok(candidates)
}

pub(crate) fn resolve(
    src: &impl LayoutRead,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<ResolvedImage, TransportError> {
    let reference = reference_of(src, tag);
    let candidates = candidates(src, tag)?;
    let desc =
        Index { media_type: media::OCI_INDEX.into(), manifests: candidates }.select(platform, &reference)?.clone();
    let fetch = |d: &Descriptor, max: u64, what: &str| read_small_verified(src.open_blob(&d.digest)?, d, max, what);
    let (digest, manifest, doc) = follow_to_manifest(&fetch, desc, platform, &reference)?;
    image_of(src, reference, digest, manifest, doc)
}

/// A manifest already read, with its config, as a [`ResolvedImage`].
fn image_of(
    src: &impl LayoutRead,
    reference: String,
    digest: Digest,
    manifest: Vec<u8>,
    doc: Document,
) -> Result<ResolvedImage, TransportError> {
    let Document::Manifest(m) = &doc else {
        return Err(manifest::format_error(&reference, "expected an image manifest, found an index").into());
    };
    let what = format!("{reference}: config {}", m.config.digest);
    let config_bytes =
        read_small_verified(src.open_blob(&m.config.digest)?, &m.config, manifest::MAX_CONFIG_BYTES, &what)?;
    base_from_manifest(reference, digest, manifest, doc, &config_bytes)
}

/// What the tag names, unresolved: its manifest or index, as read.
pub(crate) fn top(src: &impl LayoutRead, tag: Option<&str>) -> Result<Top, TransportError> {
    let reference = reference_of(src, tag);
    let candidates = candidates(src, tag)?;
    let [desc] = candidates.as_slice() else {
        return Err(TransportError::Unsupported(format!(
            "{reference}: {} entries of index.json carry this tag; one image or one index was expected",
            candidates.len()
        )));
    };
    let what = format!("{reference}: manifest {}", desc.digest);
    let bytes = read_small_verified(src.open_blob(&desc.digest)?, desc, manifest::MAX_MANIFEST_BYTES, &what)?;
    let doc = parse_document(&bytes, Some(&desc.media_type), &what)?;
    Ok(Top { reference, digest: desc.digest, bytes, doc })
}

/// The image a descriptor of an index points to (an image manifest, not another index).
pub(crate) fn image_at(src: &impl LayoutRead, top: &Top, d: &Descriptor) -> Result<ResolvedImage, TransportError> {
    let what = format!("{}: manifest {}", top.reference, d.digest);
    let bytes = read_small_verified(src.open_blob(&d.digest)?, d, manifest::MAX_MANIFEST_BYTES, &what)?;
    let doc = parse_document(&bytes, Some(&d.media_type), &what)?;
    image_of(src, format!("{}@{}", top.reference, d.digest), d.digest, bytes, doc)
}

/// The descriptor of a new image's manifest, tagged.
pub(crate) fn manifest_descriptor(image: &NewImage, tag: &str) -> Descriptor {
    tagged(&image.manifest_media_type, image.manifest_digest, image.manifest.len(), tag)
}

/// The descriptor of a new index, tagged.
pub(crate) fn index_descriptor(index: &NewIndex, tag: &str) -> Descriptor {
    tagged(&index.media_type, index.digest, index.bytes.len(), tag)
}

fn tagged(media_type: &str, digest: Digest, size: usize, tag: &str) -> Descriptor {
    let mut d = Descriptor::new(media_type, digest, size as u64);
    d.annotations = BTreeMap::from([(REF_NAME.to_string(), tag.to_string())]);
    d
}

/// The full name an image in the archive `file` under `tag` gets where it is loaded
/// (podman, containerd): `localhost/STEM:TAG` for a plain tag, STEM being the file's name
/// without `.tar`/`.oci` (`oci-archive:hello.tar:latest` → `localhost/hello:latest`); a
/// tag that is itself a name (`team/app:1`, `registry.example.com/app:1`) is that name,
/// under `localhost/` unless it names a registry. `None` where no valid name comes out
/// (the archive then carries `ref.name` alone, as skopeo writes it).
pub(crate) fn archive_image_name(file: &std::path::Path, tag: &str) -> Option<String> {
    use crate::image::reference::{DockerName, DEFAULT_TAG};
    let full = if tag.contains(['/', ':', '@']) {
        let first = tag.split('/').next().unwrap_or("");
        let names_registry = tag.contains('/') && (first.contains(['.', ':']) || first == "localhost");
        if names_registry {
            tag.to_string()
        } else {
            format!("localhost/{tag}")
        }
    } else {
        let name = file.file_name()?.to_str()?;
        let stem = [".tar.gz", ".tgz", ".tar", ".oci"].iter().find_map(|e| name.strip_suffix(e)).unwrap_or(name);
        let stem: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c.to_ascii_lowercase() } else { '-' })
            .collect();
        let stem = stem.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        format!("localhost/{stem}:{tag}")
    };
    let n = DockerName::parse(&full).ok().filter(|n| n.digest.is_none())?;
    Some(format!("{}/{}:{}", n.registry, n.repository, n.tag.as_deref().unwrap_or(DEFAULT_TAG)))
}

/// `index.json` bytes for the given manifests (deterministic: sorted keys, given order).
pub(crate) fn index_json(manifests: &[Descriptor]) -> Vec<u8> {
    let v: Value = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&v).expect("json values serialize")
}

pub(crate) const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[cfg(test)]
mod tests {
    use super::archive_image_name;
    use std::path::Path;

    #[test]
    fn archives_name_their_image_after_the_file_and_tag() {
        let name = |f: &str, t: &str| archive_image_name(Path::new(f), t);
        assert_eq!(name("hello.tar", "latest").as_deref(), Some("localhost/hello:latest"));
        assert_eq!(name("/out/My App.tar", "v1").as_deref(), Some("localhost/my-app:v1"));
        assert_eq!(name("dist/worker.oci", "2.0").as_deref(), Some("localhost/worker:2.0"));
        assert_eq!(name("img.tar", "hello:1").as_deref(), Some("localhost/hello:1"));
        assert_eq!(name("img.tar", "team/app").as_deref(), Some("localhost/team/app:latest"));
        assert_eq!(
            name("img.tar", "registry.example.com:5000/team/app:1").as_deref(),
            Some("registry.example.com:5000/team/app:1")
        );
        assert_eq!(name("img.tar", "localhost/app:2").as_deref(), Some("localhost/app:2"));
        // no valid name: ref.name alone
        assert_eq!(name("___.tar", "latest"), None);
        assert_eq!(name("a.tar", "x+y"), None);
        assert_eq!(name("a.tar", "app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), None);
    }
}
