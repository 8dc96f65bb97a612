//! `docker-archive:FILE[:NAME[:TAG]]`: the `docker save` format (`manifest.json` naming a
//! config and a list of layer tars), which `docker load` and `podman load` read.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use imgforge_layers::{decompress, Compression, DiffId, Digest, HashingReader};
use serde::Deserialize;
use serde_json::json;

use super::layout::WriteSummary;
use super::tar_index::TarIndex;
use super::{io_error, Blobs, ImageLayer, NewImage, ResolvedImage, TransportError};
use crate::image::manifest::{self, parse_config, Descriptor};
use crate::image::reference::DockerName;

#[derive(Deserialize)]
struct ArchiveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

pub struct DockerArchiveSource {
    index: TarIndex,
    name: Option<DockerName>,
    /// digest → path in the archive, filled by `resolve`.
    blobs: std::sync::Mutex<Vec<(Digest, String)>>,
}

impl DockerArchiveSource {
    pub fn open(file: &Path, name: Option<DockerName>) -> Result<DockerArchiveSource, TransportError> {
        let index = TarIndex::open(file)?;
        if index.size("manifest.json").is_none() {
            return Err(TransportError::NotFound(format!(
                "docker-archive:{}: no manifest.json in the archive",
                file.display()
            )));
        }
        Ok(DockerArchiveSource { index, name, blobs: Default::default() })
    }

    pub fn path(&self) -> &Path {
        self.index.path()
    }

    /// Turns the archive's manifest.json into a base image. Uncompressed layers (what
    /// `docker save` writes) are their own blobs: digest = diff_id, checked when read.
    /// Compressed ones are hashed here, once.
    pub fn resolve(&self) -> Result<ResolvedImage, TransportError> {
        let what = format!("docker-archive:{}", self.path().display());
        let bytes = self.index.read_small("manifest.json", manifest::MAX_MANIFEST_BYTES)?;
        let entries: Vec<ArchiveManifest> = serde_json::from_slice(&bytes)
            .map_err(|e| manifest::format_error(format!("{what}: manifest.json"), format!("invalid: {e}")))?;
        let entry = match &self.name {
            None if entries.len() == 1 => &entries[0],
            None => {
                return Err(TransportError::NotFound(format!(
                    "{what}: holds {} images; name one as {what}:NAME:TAG",
                    entries.len()
                )))
            }
            Some(n) => {
                let want = n.familiar();
                entries
                    .iter()
                    .find(|e| {
                        e.repo_tags
                            .iter()
                            .flatten()
                            .any(|t| *t == want || DockerName::parse(t).is_ok_and(|p| p.familiar() == want))
                    })
                    .ok_or_else(|| TransportError::NotFound(format!("{what}: no image tagged {want}")))?
            }
        };
        let config_bytes = self.index.read_small(&entry.config, manifest::MAX_CONFIG_BYTES)?;
        let config_digest = Digest::of(&config_bytes);
        let config = parse_config(&config_bytes, &format!("{what}: {}", entry.config))?;
        if config.diff_ids.len() != entry.layers.len() {
            return Err(manifest::format_error(
                &what,
                format!("{} layers but the config has {} diff_ids", entry.layers.len(), config.diff_ids.len()),
            )
            .into());
        }
        let mut blobs = vec![(config_digest, entry.config.clone())];
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(&config.diff_ids) {
            let size = self
                .index
                .size(path)
                .ok_or_else(|| TransportError::NotFound(format!("{what}: layer {path:?} is missing")))?;
            let mut magic = [0u8; 4];
            let n = read_up_to(&mut self.index.open_file(path)?, &mut magic)
                .map_err(io_error(format!("{what}: {path}")))?;
            let compression = Compression::detect(&magic[..n]);
            let digest = match compression {
                Compression::None => Digest(diff_id.0),
                _ => {
                    let mut h = HashingReader::new(self.index.open_file(path)?);
                    io::copy(&mut h, &mut io::sink()).map_err(io_error(format!("{what}: {path}")))?;
                    Digest(h.finish().1)
                }
            };
            blobs.push((digest, path.clone()));
            layers.push(ImageLayer {
                descriptor: Descriptor::new(compression.media_type(), digest, size),
                diff_id: *diff_id,
            });
        }
        *self.blobs.lock().expect("not poisoned") = blobs;
        // The archive has no manifest of its own: its identity is the config's digest.
        Ok(ResolvedImage {
            reference: what,
            manifest_digest: Some(config_digest),
            manifest: None,
            config: Some(config),
            config_bytes: Some(config_bytes),
            layers,
        })
    }

    pub fn open_blob(&self, d: &Digest) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        let path = self.blobs.lock().expect("not poisoned").iter().find(|(b, _)| b == d).map(|(_, p)| p.clone());
        match path {
            Some(p) => self.index.open_file(&p),
            None => Err(TransportError::NotFound(format!("docker-archive:{}: no blob {d}", self.path().display()))),
        }
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Tar writing with size back-patching: layers are decompressed on the way in, so their
/// size is known only after streaming. The file is ours and seekable, so the header is
/// written last, in place; no temp copy of the layer is made.
struct PatchingTar<W: Write + Seek> {
    out: W,
}

impl<W: Write + Seek> PatchingTar<W> {
    fn header(name: &str, size: u64) -> io::Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(imgforge_layers::DEFAULT_EPOCH);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        Ok(h)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (512 - size % 512) % 512;
        self.out.write_all(&[0u8; 512][..rem as usize])
    }

    fn file(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.out.write_all(Self::header(name, data.len() as u64)?.as_bytes())?;
        self.out.write_all(data)?;
        self.pad(data.len() as u64)
    }

    /// Streams `data` as entry `name`, returning the number of bytes written.
    fn stream(&mut self, name: &str, data: &mut dyn Read) -> io::Result<u64> {
        let start = self.out.stream_position()?;
        self.out.write_all(&[0u8; 512])?;
        let size = io::copy(data, &mut self.out)?;
        self.pad(size)?;
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(start))?;
        self.out.write_all(Self::header(name, size)?.as_bytes())?;
        self.out.seek(SeekFrom::Start(end))?;
        Ok(size)
    }

    fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        Ok(self.out)
    }
}

pub(super) fn write(
    file: &Path,
    name: Option<&DockerName>,
    image: &NewImage,
    blobs: &dyn Blobs,
) -> Result<WriteSummary, TransportError> {
    let what = format!("docker-archive:{}", file.display());
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".imgforge-").tempfile_in(dir).map_err(io_error(&what))?;
    let out: File = tmp.as_file().try_clone().map_err(io_error(&what))?;
    let mut tar = PatchingTar { out: BufWriter::new(out) };
    let config_name = format!("{}.json", image.config_digest.hex());
    // gzip layers go in as they are (docker load and podman load decompress them); others,
    // zstd above all, which older docker load cannot read, go in as plain tar
    let stored_as_is = |l: &super::ImageLayer| {
        matches!(Compression::from_media_type(&l.descriptor.media_type), Some(Compression::Gzip | Compression::None))
    };
    let layer_names: Vec<String> = image
        .layers
        .iter()
        .map(|l| match Compression::from_media_type(&l.descriptor.media_type) {
            Some(Compression::Gzip) => format!("{}.tar.gz", l.descriptor.digest.hex()),
            _ => format!("{}.tar", l.diff_id.hex()),
        })
        .collect();
    let repo_tags: Vec<String> = name.map(|n| vec![n.familiar()]).unwrap_or_default();
    let manifest =
        serde_json::to_vec(&json!([{ "Config": config_name, "RepoTags": repo_tags, "Layers": layer_names }]))
            .expect("json");
    let mut summary = WriteSummary::default();
    tar.file("manifest.json", &manifest).map_err(io_error(&what))?;
    tar.file(&config_name, &image.config).map_err(io_error(&what))?;
    let mut seen = std::collections::HashSet::new();
    for (layer, layer_name) in image.layers.iter().zip(&layer_names) {
        if !seen.insert(layer.diff_id) {
            continue; // the same layer twice in one image is stored once
        }
        let d = &layer.descriptor;
        let compression = Compression::from_media_type(&d.media_type).ok_or_else(|| {
            TransportError::Unsupported(format!("layer {} has media type {:?}", d.digest, d.media_type))
        })?;
        let raw = blobs.open(d)?;
        if stored_as_is(layer) {
            // verified against the descriptor's digest as it is read
            let size = tar.stream(layer_name, &mut { raw }).map_err(io_error(format!("{what}: layer {}", d.digest)))?;
            summary.blobs_written += 1;
            summary.bytes_written += size;
            continue;
        }
        let mut plain =
            HashingReader::new(decompress(raw, compression).map_err(io_error(format!("{what}: layer {}", d.digest)))?);
        let size = tar.stream(layer_name, &mut plain).map_err(io_error(format!("{what}: layer {}", d.digest)))?;
        let (_, hash, _) = plain.finish();
        if DiffId(hash) != layer.diff_id {
            return Err(manifest::format_error(
                format!("layer {}", d.digest),
                format!("uncompressed content hashes to {}, but the config says {}", DiffId(hash), layer.diff_id),
            )
            .into());
        }
        summary.blobs_written += 1;
        summary.bytes_written += size;
    }
    let out = tar.finish().map_err(io_error(&what))?;
    out.into_inner()
        .map_err(|e| TransportError::Io { what: what.clone(), source: e.into_error() })?
        .sync_all()
        .map_err(io_error(&what))?;
    super::oci_archive::persist(tmp, file, dir)?;
    Ok(summary)
}
