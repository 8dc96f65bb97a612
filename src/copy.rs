//! `imgforge copy SRC DEST`: one image from any transport to any other. Lazy and mount-first
//! like a build: a registry destination on the source's registry mounts the layers, and layers
//! are fetched only when the destination lacks them.

use std::io::Read;

use imgforge_layers::Digest;

use crate::image::manifest::{media, Descriptor, Platform};
use crate::image::reference::{DockerName, ImageRef};
use crate::report::{Event, Reporter};
use crate::store::BlobStore;
use crate::transport::{
    self, Blobs, LocalBlob, NewImage, NewIndex, ResolvedImage, Source, TransportError, TransportOptions,
};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("Failed to read {reference}")]
    Source {
        reference: String,
        #[source]
        source: TransportError,
    },
    #[error("Failed to write {reference}")]
    Destination {
        reference: String,
        #[source]
        source: TransportError,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The source's blobs; those a registry source pulled are in the store.
struct SourceBlobs<'a>(&'a Source, Option<BlobStore>);

impl Blobs for SourceBlobs<'_> {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        self.0.open_verified(d)
    }

    fn local_file(&self, d: &Descriptor) -> Result<Option<LocalBlob<'_>>, TransportError> {
        if let Some(store) = &self.1 {
            if let Some((f, id)) = store.local_file(&d.digest, d.size)? {
                return Ok(Some(LocalBlob::new(f, id, store.verified())));
            }
        }
        self.0.local_file(d)
    }

    fn mount_source(&self, d: &Digest) -> Option<DockerName> {
        self.0.mount_source(d)
    }
}

/// Copies the image `src` names (for `platform`, from a multi-platform index) to `dest`, and
/// returns the manifest digest written. The manifest's bytes are kept, so the digest stays
/// the same; a docker-archive, which has no manifest, gets an OCI one.
///
/// With `all`, a multi-platform source is copied whole: every image of its index and the
/// index itself, bytes unchanged (so its digest stays the same), and the index digest is
/// returned. A single-platform source is copied as without `all`.
pub fn copy(
    src: &ImageRef,
    dest: &ImageRef,
    platform: &Platform,
    all: bool,
    opts: &TransportOptions,
    reporter: &dyn Reporter,
) -> Result<Digest, CopyError> {
    let src_err = |source| CopyError::Source { reference: src.to_string(), source };
    let dest_err = |source| CopyError::Destination { reference: dest.to_string(), source };
    if matches!(src, ImageRef::Scratch) {
        return Err(CopyError::Invalid("scratch is not an image to copy; use `imgforge build --base scratch`".into()));
    }
    transport::check_destination(dest).map_err(dest_err)?;
    let source = Source::open(src, opts).map_err(src_err)?;
    reporter.report(Event::Step(&format!("Resolving {src}")));
    if all && !matches!(source, Source::DockerArchive(_)) {
        let top = source.top().map_err(src_err)?;
        if let Some(index) = top.index() {
            if matches!(dest, ImageRef::DockerArchive { .. }) {
                return Err(CopyError::Invalid(format!(
                    "{src} is an index of {} images, and a docker-archive holds single-platform images only: \
                     copy to oci-archive: or oci: instead, or copy one platform without --all (--platform picks it)",
                    index.manifests.len()
                )));
            }
            let mut images = Vec::with_capacity(index.manifests.len());
            for d in &index.manifests {
                let base = source.image_at(&top, d).map_err(src_err)?;
                images.push(new_image(src, &base)?);
            }
            let media_type = index.media_type.clone();
            let new = NewIndex { bytes: top.bytes.clone(), digest: top.digest, media_type, images };
            let layers = new.layers();
            report_source(reporter, &top.reference, Some(top.digest), layers.len());
            if !matches!(dest, ImageRef::Registry(_)) {
                source.prefetch(&layers, reporter).map_err(src_err)?;
            }
            reporter.report(Event::Step(&format!("Writing {dest}")));
            let s = transport::write_index(dest, &new, &source_blobs(&source, opts).map_err(src_err)?, opts, reporter)
                .map_err(dest_err)?;
            report_written(dest, &s, reporter);
            return Ok(new.digest);
        }
    }
    let base = source.resolve(platform).map_err(src_err)?;
    report_source(reporter, &base.reference, base.manifest_digest, base.layers.len());
    let image = new_image(src, &base)?;
    if !matches!(dest, ImageRef::Registry(_)) {
        source.prefetch(&image.layers, reporter).map_err(src_err)?;
    }
    reporter.report(Event::Step(&format!("Writing {dest}")));
    let s = transport::write(dest, &image, &source_blobs(&source, opts).map_err(src_err)?, opts, reporter)
        .map_err(dest_err)?;
    report_written(dest, &s, reporter);
    Ok(image.manifest_digest)
}

/// The source's blobs, with the store a registry source pulls into.
fn source_blobs<'a>(source: &'a Source, opts: &TransportOptions) -> Result<SourceBlobs<'a>, TransportError> {
    let store = match (source, &opts.cache_dir) {
        (Source::Registry(_), Some(dir)) => Some(BlobStore::open(dir)?),
        _ => None,
    };
    Ok(SourceBlobs(source, store))
}

/// The source, resolved: a step line (it is no base: nothing is built on it).
fn report_source(reporter: &dyn Reporter, reference: &str, digest: Option<Digest>, layers: usize) {
    let digest = digest.map_or_else(|| "no digest".to_string(), |d| d.to_string());
    let layers = if layers == 1 { "1 layer".to_string() } else { format!("{layers} layers") };
    reporter.report(Event::Step(&format!("Source {reference} ({digest}, {layers})")));
}

fn report_written(dest: &ImageRef, s: &transport::WriteSummary, reporter: &dyn Reporter) {
    reporter.report(Event::Destination {
        reference: &dest.to_string(),
        written: s.blobs_written,
        linked: s.blobs_linked,
        mounted: s.blobs_mounted,
        present: s.blobs_present,
        bytes: s.bytes_written,
    });
}

/// The image to write for a resolved source image: its manifest bytes kept (an OCI manifest
/// made for a docker-archive, which has none).
fn new_image(src: &ImageRef, base: &ResolvedImage) -> Result<NewImage, CopyError> {
    let src_err = |source| CopyError::Source { reference: src.to_string(), source };
    let config = base.config_bytes.clone().ok_or_else(|| CopyError::Invalid(format!("{src} has no config")))?;
    let config_digest = Digest::of(&config);
    let (manifest, manifest_media_type, layers) = match &base.manifest {
        Some(m) => {
            let doc = crate::image::manifest::parse_document(m, None, &base.reference)
                .map_err(|e| src_err(TransportError::Format(e)))?;
            let crate::image::manifest::Document::Manifest(parsed) = doc else {
                return Err(CopyError::Invalid(format!("{src}: resolved to an index")));
            };
            (m.clone(), parsed.media_type.clone(), base.layers.clone())
        }
        None => {
            let layers = base.oci_layers();
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_MANIFEST,
                "config": Descriptor::new(media::OCI_CONFIG, config_digest, config.len() as u64).to_json(),
                "layers": layers.iter().map(|l| l.descriptor.to_json()).collect::<Vec<_>>(),
            });
            (serde_json::to_vec(&m).expect("json"), media::OCI_MANIFEST.to_string(), layers)
        }
    };
    let manifest_media_type =
        if manifest_media_type.is_empty() { media::OCI_MANIFEST.to_string() } else { manifest_media_type };
    Ok(NewImage {
        manifest_digest: Digest::of(&manifest),
        manifest,
        manifest_media_type,
        config,
        config_digest,
        layers,
    })
}
