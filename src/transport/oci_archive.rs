//! `oci-archive:FILE[:TAG]`: a tar of an OCI image layout. Read in place through a tar
//! index; written as a fresh, reproducible archive (replacing any previous one, as skopeo does).

use std::fs;
use std::io::{BufWriter, Read};
use std::path::Path;

use imgforge_layers::{Digest, Normalize, Owner, TarWriter};

use super::layout::{self, LayoutRead, WriteSummary, OCI_LAYOUT_FILE};
use super::tar_index::TarIndex;
use super::{io_error, Blobs, NewImage, NewIndex, TransportError};
use crate::image::manifest::{self, media, Descriptor};
use crate::store::sync_dir;

pub struct OciArchiveSource {
    index: TarIndex,
    tag: Option<String>,
}

impl OciArchiveSource {
    pub fn open(file: &Path, tag: Option<String>) -> Result<OciArchiveSource, TransportError> {
        let index = TarIndex::open(file)?;
        if index.size("index.json").is_none() {
            return Err(TransportError::NotFound(format!(
                "oci-archive:{}: no index.json in the archive",
                file.display()
            )));
        }
        Ok(OciArchiveSource { index, tag })
    }

    pub fn path(&self) -> &Path {
        self.index.path()
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

impl LayoutRead for OciArchiveSource {
    fn read_index(&self) -> Result<Vec<u8>, TransportError> {
        self.index.read_small("index.json", manifest::MAX_MANIFEST_BYTES)
    }

    fn open_blob(&self, d: &Digest) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        self.index.open_file(&format!("blobs/sha256/{}", d.hex()))
    }

    fn describe(&self) -> String {
        format!("oci-archive:{}", self.path().display())
    }
}

pub(super) fn write(
    file: &Path,
    tag: &str,
    image: &NewImage,
    blobs: &dyn Blobs,
) -> Result<WriteSummary, TransportError> {
    let mut entries = Vec::new();
    image_entries(image, &mut entries);
    write_archive(file, entries, layout::manifest_descriptor(image, tag), blobs)
}

/// Every image of `index` and the index, which `tag` names.
pub(super) fn write_index(
    file: &Path,
    tag: &str,
    index: &NewIndex,
    blobs: &dyn Blobs,
) -> Result<WriteSummary, TransportError> {
    let mut entries = Vec::new();
    for image in &index.images {
        image_entries(image, &mut entries);
    }
    entries.push((Descriptor::new(&index.media_type, index.digest, index.bytes.len() as u64), Some(&index.bytes)));
    write_archive(file, entries, layout::index_descriptor(index, tag), blobs)
}

/// A blob of the archive: its descriptor, and its bytes when they are in memory.
type Entry<'a> = (Descriptor, Option<&'a [u8]>);

fn image_entries<'a>(image: &'a NewImage, entries: &mut Vec<Entry<'a>>) {
    entries.extend(image.layers.iter().map(|l| (l.descriptor.clone(), None)));
    entries.push((
        Descriptor::new(media::OCI_CONFIG, image.config_digest, image.config.len() as u64),
        Some(&image.config),
    ));
    entries.push((
        Descriptor::new(media::OCI_MANIFEST, image.manifest_digest, image.manifest.len() as u64),
        Some(&image.manifest),
    ));
}

fn write_archive(
    file: &Path,
    mut entries: Vec<Entry<'_>>,
    tagged: Descriptor,
    blobs: &dyn Blobs,
) -> Result<WriteSummary, TransportError> {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let what = format!("oci-archive:{}", file.display());
    let tmp = tempfile::Builder::new().prefix(".imgforge-").tempfile_in(dir).map_err(io_error(&what))?;
    let mut tar =
        TarWriter::new(BufWriter::new(tmp.as_file().try_clone().map_err(io_error(&what))?), Normalize::default());
    let root = Owner { uid: 0, gid: 0 };
    let mut summary = WriteSummary::default();

    // Canonical order: blobs/ (sorted by digest), index.json, oci-layout.
    entries.sort_by_key(|e| e.0.digest.hex());
    entries.dedup_by_key(|e| e.0.digest);

    (|| -> Result<(), TransportError> {
        tar.dir(b"blobs", 0o755, root).map_err(io_error(&what))?;
        tar.dir(b"blobs/sha256", 0o755, root).map_err(io_error(&what))?;
        for (d, inline) in &entries {
            let name = format!("blobs/sha256/{}", d.digest.hex());
            match inline {
                Some(bytes) => tar.file(name.as_bytes(), 0o644, root, bytes.len() as u64, &mut &bytes[..]),
                None => tar.file(name.as_bytes(), 0o644, root, d.size, &mut blobs.open(d)?),
            }
            .map_err(io_error(format!("{what}: {name}")))?;
            summary.blobs_written += 1;
            summary.bytes_written += d.size;
        }
        // the name podman load gives what it loads (docs/image-format.md)
        let mut tagged = tagged;
        let name = tagged.annotations.get(layout::REF_NAME).and_then(|tag| layout::archive_image_name(file, tag));
        if let Some(name) = name {
            tagged.annotations.insert(layout::IMAGE_NAME.to_string(), name);
        }
        let index = layout::index_json(&[tagged]);
        tar.file(b"index.json", 0o644, root, index.len() as u64, &mut &index[..]).map_err(io_error(&what))?;
        tar.file(b"oci-layout", 0o644, root, OCI_LAYOUT_FILE.len() as u64, &mut &OCI_LAYOUT_FILE[..])
            .map_err(io_error(&what))?;
        Ok(())
    })()?;
    let out = tar.finish().map_err(io_error(&what))?;
    out.into_inner()
        .map_err(|e| TransportError::Io { what: what.clone(), source: e.into_error() })?
        .sync_all()
        .map_err(io_error(&what))?;
    persist(tmp, file, dir)?;
    Ok(summary)
}

/// Renames a finished temp file over the destination, then syncs the directory.
pub(super) fn persist(tmp: tempfile::NamedTempFile, file: &Path, dir: &Path) -> Result<(), TransportError> {
    use std::os::unix::fs::PermissionsExt;
    let _ = tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644));
    tmp.persist(file).map_err(|e| TransportError::Io { what: file.display().to_string(), source: e.error })?;
    sync_dir(dir).map_err(io_error(dir.display()))?;
    Ok(())
}
