//! Transports: where images are read from and written to.
//!
//! Reading resolves a reference to a [`ResolvedImage`] (manifest and config only: layers stay
//! lazy, opened only when a destination lacks them). Writing takes a finished [`NewImage`]
//! and a [`Blobs`] provider and copies only what the destination does not have.

use std::io::{self, Read};

use layout::LayoutRead;
use std::path::{Path, PathBuf};

use imgforge_layers::{Compression, DiffId, Digest};

use crate::image::manifest::{
    self, parse_config, parse_document, Descriptor, Document, FormatError, ImageConfig, Platform,
};
use crate::image::reference::ImageRef;
use crate::store::{FileId, StoreError, VerifiedReader, VerifyCache};

mod docker_archive;
pub mod hint;
mod layout;
mod oci_archive;
mod oci_dir;
pub mod registries_conf;
pub mod registry;
mod tar_index;

pub use docker_archive::DockerArchiveSource;
pub use layout::WriteSummary;
pub use oci_archive::OciArchiveSource;
pub use oci_dir::OciDirSource;
pub use registry::{RegistryOptions, RegistrySource};

use crate::report::Reporter;

/// What transports need besides the reference: where pulled blobs are kept, and how to talk
/// to registries.
#[derive(Clone, Debug, Default)]
pub struct TransportOptions {
    /// The store pulled blobs go into (so the second pull is free). `None`: stream only.
    pub cache_dir: Option<PathBuf>,
    pub registry: RegistryOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(Box<registry::RegistryError>),
}

impl From<registry::RegistryError> for TransportError {
    fn from(e: registry::RegistryError) -> Self {
        TransportError::Registry(Box::new(e))
    }
}

pub fn io_error(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> TransportError {
    let what = what.to_string();
    move |source| TransportError::Io { what, source }
}

/// One layer of a base image: its descriptor as the source gives it, and its diff_id.
#[derive(Clone, Debug)]
pub struct ImageLayer {
    pub descriptor: Descriptor,
    pub diff_id: DiffId,
}

/// A resolved image: the manifest's digest, its config and its (lazy) layers.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub reference: String,
    /// `None` for scratch.
    pub manifest_digest: Option<Digest>,
    /// The manifest's bytes as read (`None` for scratch and docker-archive, which has none).
    pub manifest: Option<Vec<u8>>,
    pub config: Option<ImageConfig>,
    /// The config's bytes as read (`None` for scratch).
    pub config_bytes: Option<Vec<u8>>,
    pub layers: Vec<ImageLayer>,
}

impl ResolvedImage {
    /// The layers with their media types in OCI spelling (bytes untouched), for an OCI
    /// manifest that lists them.
    pub fn oci_layers(&self) -> Vec<ImageLayer> {
        self.layers
            .iter()
            .map(|l| {
                let mut d = l.descriptor.clone();
                if let Some(mt) = oci_layer_media_type(&d.media_type) {
                    d.media_type = mt.to_string();
                }
                ImageLayer { descriptor: d, diff_id: l.diff_id }
            })
            .collect()
    }

    pub fn scratch() -> ResolvedImage {
        ResolvedImage {
            reference: "scratch".into(),
            manifest_digest: None,
            manifest: None,
            config: None,
            config_bytes: None,
            layers: Vec::new(),
        }
    }
}

/// A finished image, ready to be written anywhere.
#[derive(Clone, Debug)]
pub struct NewImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    /// The manifest's media type (OCI for what imgforge builds; a copy keeps the source's).
    pub manifest_media_type: String,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub layers: Vec<ImageLayer>,
}

/// What a reference names before any platform is chosen: an image manifest or an index,
/// with its bytes as read (verified against its digest).
#[derive(Clone, Debug)]
pub struct Top {
    pub reference: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub doc: Document,
}

impl Top {
    /// The index's entries, if this is an index.
    pub fn index(&self) -> Option<&manifest::Index> {
        match &self.doc {
            Document::Index(i) => Some(i),
            Document::Manifest(_) => None,
        }
    }
}

/// A finished multi-platform image: an index and the images it lists, in its order.
#[derive(Clone, Debug)]
pub struct NewIndex {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
    pub images: Vec<NewImage>,
}

impl NewIndex {
    /// A new OCI index of `images`, each with its platform. Reproducible: the entries are
    /// ordered by platform (os, then architecture, then variant, a missing variant first),
    /// so the same images give the same bytes whatever order they were made in.
    pub fn of(mut images: Vec<(Platform, NewImage)>) -> NewIndex {
        images
            .sort_by(|(a, _), (b, _)| (&a.os, &a.architecture, &a.variant).cmp(&(&b.os, &b.architecture, &b.variant)));
        let manifests: Vec<serde_json::Value> = images
            .iter()
            .map(|(p, i)| {
                let mut d = Descriptor::new(&i.manifest_media_type, i.manifest_digest, i.manifest.len() as u64);
                d.platform = Some(p.clone());
                d.to_json()
            })
            .collect();
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::media::OCI_INDEX,
            "manifests": manifests,
        }))
        .expect("json values serialize");
        NewIndex {
            digest: Digest::of(&bytes),
            bytes,
            media_type: manifest::media::OCI_INDEX.into(),
            images: images.into_iter().map(|(_, i)| i).collect(),
        }
    }

    /// Every layer of every image, each digest once, in order.
    pub fn layers(&self) -> Vec<ImageLayer> {
        let mut seen = std::collections::HashSet::new();
        self.images.iter().flat_map(|i| i.layers.iter()).filter(|l| seen.insert(l.descriptor.digest)).cloned().collect()
    }
}

/// Gives destinations the bytes of blobs they lack.
pub trait Blobs: Sync {
    /// Raw blob bytes, verified against the descriptor as they are read.
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, TransportError>;
    /// A local file holding exactly this blob, opened without following links and verified,
    /// to hard-link instead of copy; `None` if there is none.
    fn local_file(&self, d: &Descriptor) -> Result<Option<LocalBlob<'_>>, TransportError>;
    /// A repository this blob can be mounted from (the base image's, on a registry).
    fn mount_source(&self, _d: &Digest) -> Option<crate::image::reference::DockerName> {
        None
    }
}

/// A verified local file of a blob, for a destination to hard-link.
pub struct LocalBlob<'a> {
    pub file: std::fs::File,
    id: FileId,
    verified: &'a VerifyCache,
}

impl<'a> LocalBlob<'a> {
    pub fn new(file: std::fs::File, id: FileId, verified: &'a VerifyCache) -> LocalBlob<'a> {
        LocalBlob { file, id, verified }
    }

    /// Whether hard-linking it is safe: a file of another user could be changed by them
    /// under the destination's name afterwards.
    pub fn linkable(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        self.file.metadata().is_ok_and(|m| m.uid() == unsafe { libc::geteuid() })
    }

    /// After a hard link: remembers the file's new ctime as verified too.
    pub fn linked(&self, d: &Digest) {
        self.verified.relinked(&self.file, self.id, d);
    }
}

/// An opened image source.
pub enum Source {
    Scratch,
    OciDir(OciDirSource),
    OciArchive(OciArchiveSource),
    DockerArchive(DockerArchiveSource),
    Registry(RegistrySource),
}

impl Source {
    pub fn open(r: &ImageRef, opts: &TransportOptions) -> Result<Source, TransportError> {
        Ok(match r {
            ImageRef::Scratch => Source::Scratch,
            ImageRef::OciLayout { dir, tag } => {
                Source::OciDir(OciDirSource::open(dir, tag.clone(), opts.cache_dir.as_deref())?)
            }
            ImageRef::OciArchive { file, tag } => Source::OciArchive(OciArchiveSource::open(file, tag.clone())?),
            ImageRef::DockerArchive { file, name } => {
                Source::DockerArchive(DockerArchiveSource::open(file, name.clone())?)
            }
            ImageRef::Registry(n) => {
                Source::Registry(RegistrySource::open(n, &opts.registry, opts.cache_dir.as_deref())?)
            }
        })
    }

    pub fn resolve(&self, platform: &Platform) -> Result<ResolvedImage, TransportError> {
        match self {
            Source::Scratch => Ok(ResolvedImage::scratch()),
            Source::OciDir(s) => layout::resolve(s, s.tag(), platform),
            Source::OciArchive(s) => layout::resolve(s, s.tag(), platform),
            Source::DockerArchive(s) => s.resolve(),
            Source::Registry(s) => s.resolve(platform),
        }
    }

    /// What the reference names, unresolved: a manifest or an index (for `copy --all` and
    /// `inspect`).
    pub fn top(&self) -> Result<Top, TransportError> {
        match self {
            Source::Scratch => Err(TransportError::Unsupported("scratch has no manifest".into())),
            Source::OciDir(s) => layout::top(s, s.tag()),
            Source::OciArchive(s) => layout::top(s, s.tag()),
            Source::DockerArchive(_) => Err(TransportError::Unsupported(format!(
                "{}: a docker-archive has no manifest of its own",
                self.describe()
            ))),
            Source::Registry(s) => s.top(),
        }
    }

    /// The image an entry of the index `top` points to.
    pub fn image_at(&self, top: &Top, d: &Descriptor) -> Result<ResolvedImage, TransportError> {
        if !matches!(d.media_type.as_str(), manifest::media::OCI_MANIFEST | manifest::media::DOCKER_MANIFEST) {
            return Err(TransportError::Unsupported(format!(
                "{}: entry {} is a {:?}, not an image manifest (nested indexes and artifacts are not copied)",
                top.reference, d.digest, d.media_type
            )));
        }
        match self {
            Source::OciDir(s) => layout::image_at(s, top, d),
            Source::OciArchive(s) => layout::image_at(s, top, d),
            Source::Registry(s) => s.image_at(top, d),
            Source::Scratch | Source::DockerArchive(_) => {
                Err(TransportError::Unsupported(format!("{}: holds no index", self.describe())))
            }
        }
    }

    /// Raw, unverified bytes of a blob (callers wrap them in a [`VerifiedReader`]).
    pub fn open_raw(&self, d: &Digest) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        match self {
            Source::Scratch => Err(TransportError::NotFound(format!("blob {d}: scratch has no blobs"))),
            Source::OciDir(s) => s.open_blob(d),
            Source::OciArchive(s) => s.open_blob(d),
            Source::DockerArchive(s) => s.open_blob(d),
            Source::Registry(_) => {
                Err(TransportError::Unsupported(format!("blob {d}: registry blobs are opened by descriptor")))
            }
        }
    }

    pub fn open_verified(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        let raw = match self {
            Source::Registry(s) => s.open_blob(d)?,
            _ => self.open_raw(&d.digest)?,
        };
        Ok(Box::new(VerifiedReader::new(raw, d.digest, Some(d.size), self.describe())))
    }

    /// A verified local file of the blob (an `oci:` layout's). A registry's blobs are in
    /// the store, which callers ask first.
    pub fn local_file(&self, d: &Descriptor) -> Result<Option<LocalBlob<'_>>, TransportError> {
        match self {
            Source::OciDir(s) => s.local_blob(d).map(Some),
            _ => Ok(None),
        }
    }

    /// Where a blob of this source can be mounted from (registry sources only).
    pub fn mount_source(&self, d: &Digest) -> Option<crate::image::reference::DockerName> {
        match self {
            Source::Registry(s) if s.has_layer(d) => Some(s.name().clone()),
            _ => None,
        }
    }

    /// Fetches, `jobs` at once, the layers a destination other than a registry will need;
    /// verifies an `oci:` layout's (once per file, see [`VerifyCache`]), so that a tampered
    /// layer fails the write before any destination is touched.
    pub fn prefetch(&self, layers: &[ImageLayer], reporter: &dyn Reporter) -> Result<(), TransportError> {
        match self {
            Source::Registry(s) => {
                let d: Vec<Descriptor> = layers.iter().map(|l| l.descriptor.clone()).collect();
                s.prefetch(&d, reporter)
            }
            // Layers not in the layout (the build's own) are the store's.
            Source::OciDir(s) => layers.iter().try_for_each(|l| match s.local_blob(&l.descriptor) {
                Err(TransportError::NotFound(_)) | Ok(_) => Ok(()),
                Err(e) => Err(e),
            }),
            _ => Ok(()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Scratch => "scratch".into(),
            Source::OciDir(s) => format!("oci:{}", s.dir().display()),
            Source::OciArchive(s) => format!("oci-archive:{}", s.path().display()),
            Source::DockerArchive(s) => format!("docker-archive:{}", s.path().display()),
            Source::Registry(s) => s.describe(),
        }
    }
}

/// Writes `image` to `dest`, copying only the blobs it lacks.
pub fn write(
    dest: &ImageRef,
    image: &NewImage,
    blobs: &dyn Blobs,
    opts: &TransportOptions,
    reporter: &dyn Reporter,
) -> Result<WriteSummary, TransportError> {
    match dest {
        ImageRef::Registry(n) => registry::push(n, image, blobs, &opts.registry, opts.cache_dir.as_deref(), reporter),
        ImageRef::OciLayout { dir, .. } => oci_dir::write(dir, dest.tag_or_default(), image, blobs),
        ImageRef::OciArchive { file, .. } => oci_archive::write(file, dest.tag_or_default(), image, blobs),
        ImageRef::DockerArchive { file, name } => docker_archive::write(file, name.as_ref(), image, blobs),
        ImageRef::Scratch => write_unsupported(dest).map(|()| WriteSummary::default()),
    }
}

/// Writes a multi-platform image to `dest`: every image's blobs and manifest, then the
/// index, which the destination's tag names. A docker-archive cannot hold an index.
pub fn write_index(
    dest: &ImageRef,
    index: &NewIndex,
    blobs: &dyn Blobs,
    opts: &TransportOptions,
    reporter: &dyn Reporter,
) -> Result<WriteSummary, TransportError> {
    match dest {
        ImageRef::Registry(n) => {
            registry::push_index(n, index, blobs, &opts.registry, opts.cache_dir.as_deref(), reporter)
        }
        ImageRef::OciLayout { dir, .. } => oci_dir::write_index(dir, dest.tag_or_default(), index, blobs),
        ImageRef::OciArchive { file, .. } => oci_archive::write_index(file, dest.tag_or_default(), index, blobs),
        ImageRef::DockerArchive { .. } => Err(TransportError::Unsupported(format!(
            "{dest}: a docker-archive holds single-platform images only, not an index of {} platforms; \
             write an oci-archive: or oci: instead, or copy one platform (without --all, with --platform)",
            index.images.len()
        ))),
        ImageRef::Scratch => write_unsupported(dest).map(|()| WriteSummary::default()),
    }
}

/// Checks a destination reference before any work is done, so a typo fails fast: the
/// directory a local destination goes into exists and is writable, and what it would
/// replace is of the right kind.
pub fn check_destination(dest: &ImageRef) -> Result<(), TransportError> {
    let unusable = |why: String| Err(TransportError::Unsupported(format!("{dest}: {why}")));
    let writable_dir = |dir: &Path| -> Result<(), TransportError> {
        if !dir.is_dir() {
            return unusable(format!("directory {} does not exist", dir.display()));
        }
        if !may_write(dir) {
            return unusable(format!("directory {} is not writable", dir.display()));
        }
        Ok(())
    };
    let parent = |p: &Path| p.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    match dest {
        ImageRef::OciLayout { dir, .. } => match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                unusable(format!("{} exists and is not a directory (an OCI layout is one)", dir.display()))
            }
            Ok(_) => writable_dir(dir),
            Err(_) => writable_dir(&parent(dir)),
        },
        ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file, .. } => {
            if file.is_dir() {
                return unusable(format!(
                    "{} is a directory; an archive is a file (for a directory, use oci:)",
                    file.display()
                ));
            }
            writable_dir(&parent(file))
        }
        ImageRef::Registry(n) if n.digest.is_some() => Err(TransportError::Unsupported(format!(
            "{dest}: a destination names a tag, not a digest (the digest is known only once the image is built)"
        ))),
        ImageRef::Registry(_) => Ok(()),
        ImageRef::Scratch => write_unsupported(dest),
    }
}

/// Whether this process may create and remove entries in `dir` (root may anywhere but on a
/// read-only file system).
fn may_write(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Registries that take no anonymous pushes: a push there without credentials can only
/// fail, after the whole build.
fn needs_credentials_to_push(registry: &str) -> bool {
    matches!(registry, "docker.io" | "ghcr.io" | "quay.io" | "gcr.io" | "registry.gitlab.com" | "public.ecr.aws")
        || [".gcr.io", ".pkg.dev", ".azurecr.io", ".amazonaws.com"].iter().any(|s| registry.ends_with(s))
}

/// For a push to a registry that needs credentials, checks that some are configured
/// (`imgforge login`, `--authfile`, Docker's config), without contacting the registry.
pub fn check_push_credentials(dest: &ImageRef, opts: &RegistryOptions) -> Result<(), TransportError> {
    let ImageRef::Registry(n) = dest else { return Ok(()) };
    if !needs_credentials_to_push(&n.registry) {
        return Ok(());
    }
    match registry::credentials::lookup(&n.registry, opts.auth_file.as_deref())? {
        Some(_) => Ok(()),
        None => Err(TransportError::NotFound(format!(
            "{dest}: pushing to {} needs credentials, and none are configured: run `imgforge login {}` \
             (or pass --authfile FILE)",
            n.registry, n.registry
        ))),
    }
}

fn write_unsupported(dest: &ImageRef) -> Result<(), TransportError> {
    Err(TransportError::Unsupported(format!("{dest} cannot be a destination")))
}

/// Reads a small blob (manifest, config) whole: size-capped and verified before parsing.
pub(crate) fn read_small_verified(
    mut r: impl Read,
    d: &Descriptor,
    max: u64,
    what: &str,
) -> Result<Vec<u8>, TransportError> {
    if d.size > max {
        return Err(
            manifest::format_error(what, format!("descriptor size {} exceeds the {max}-byte limit", d.size)).into()
        );
    }
    let mut buf = Vec::with_capacity(d.size as usize);
    (&mut r).take(d.size + 1).read_to_end(&mut buf).map_err(io_error(what))?;
    if buf.len() as u64 != d.size {
        return Err(
            manifest::format_error(what, format!("{} bytes, but its descriptor says {}", buf.len(), d.size)).into()
        );
    }
    let actual = Digest::of(&buf);
    if actual != d.digest {
        return Err(manifest::format_error(
            what,
            format!("content hashes to {actual}, not {} as referenced: refusing it", d.digest),
        )
        .into());
    }
    Ok(buf)
}

/// The OCI layer media type for a layer given in any accepted form (Docker types map to OCI).
pub fn oci_layer_media_type(mt: &str) -> Option<&'static str> {
    Compression::from_media_type(mt).map(Compression::media_type)
}

/// Builds a [`ResolvedImage`] from a manifest document and its verified config bytes.
pub(crate) fn base_from_manifest(
    reference: String,
    manifest_digest: Digest,
    manifest: Vec<u8>,
    doc: Document,
    config_bytes: &[u8],
) -> Result<ResolvedImage, TransportError> {
    let Document::Manifest(m) = doc else {
        return Err(manifest::format_error(&reference, "expected an image manifest, found an index").into());
    };
    let config = parse_config(config_bytes, &format!("{reference}: config {}", m.config.digest))?;
    if config.diff_ids.len() != m.layers.len() {
        return Err(manifest::format_error(
            &reference,
            format!("manifest lists {} layers but the config has {} diff_ids", m.layers.len(), config.diff_ids.len()),
        )
        .into());
    }
    let layers = m
        .layers
        .into_iter()
        .zip(config.diff_ids.iter().copied())
        .map(|(descriptor, diff_id)| ImageLayer { descriptor, diff_id })
        .collect();
    Ok(ResolvedImage {
        reference,
        manifest_digest: Some(manifest_digest),
        manifest: Some(manifest),
        config: Some(config),
        config_bytes: Some(config_bytes.to_vec()),
        layers,
    })
}

/// Reads a small blob by descriptor, capped and verified: `(descriptor, max bytes, what)`.
pub(crate) type FetchSmall<'a> = dyn Fn(&Descriptor, u64, &str) -> Result<Vec<u8>, TransportError> + 'a;

/// Parses a manifest blob reached through a descriptor, following nested indexes to `platform`.
pub(crate) fn follow_to_manifest(
    fetch: &FetchSmall<'_>,
    mut desc: Descriptor,
    platform: &Platform,
    reference: &str,
) -> Result<(Digest, Vec<u8>, Document), TransportError> {
    for _ in 0..=manifest::MAX_INDEX_DEPTH {
        let what = format!("{reference}: manifest {}", desc.digest);
        let bytes = fetch(&desc, manifest::MAX_MANIFEST_BYTES, &what)?;
        match parse_document(&bytes, Some(&desc.media_type), &what)? {
            Document::Index(idx) => desc = idx.select(platform, &what)?.clone(),
            doc @ Document::Manifest(_) => return Ok((desc.digest, bytes, doc)),
        }
    }
    Err(manifest::format_error(reference, format!("indexes nested deeper than {}", manifest::MAX_INDEX_DEPTH)).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(arch: &str) -> (Platform, NewImage) {
        let manifest = format!("{{\"arch\":\"{arch}\"}}").into_bytes();
        let image = NewImage {
            manifest_digest: Digest::of(&manifest),
            manifest,
            manifest_media_type: manifest::media::OCI_MANIFEST.into(),
            config: Vec::new(),
            config_digest: Digest::of(b""),
            layers: Vec::new(),
        };
        (Platform::parse(arch).unwrap(), image)
    }

    #[test]
    fn an_index_is_ordered_by_platform_whatever_the_order_given() {
        let a = NewIndex::of(vec![image("linux/arm64/v8"), image("linux/amd64"), image("linux/arm/v7")]);
        let b = NewIndex::of(vec![image("linux/amd64"), image("linux/arm/v7"), image("linux/arm64/v8")]);
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.digest, Digest::of(&a.bytes));
        let Document::Index(i) = parse_document(&a.bytes, None, "i").unwrap() else { panic!("an index") };
        let order: Vec<String> = i.manifests.iter().map(|d| d.platform.as_ref().unwrap().to_string()).collect();
        assert_eq!(order, ["linux/amd64", "linux/arm/v7", "linux/arm64/v8"]);
        assert_eq!(a.images[0].manifest, br#"{"arch":"linux/amd64"}"#);
    }
}
