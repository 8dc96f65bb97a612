//! Reading images from a registry. The manifest (through an index, to the platform) and the
//! config are fetched when the image is resolved; layers only when something needs their
//! bytes. Everything is hashed as it arrives and kept in the store under its digest only if
//! it matches, so the second pull of the same content is free.

use std::collections::HashSet;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use imgforge_layers::{Digest, Sha256Hash};
use sha2::Digest as _;

use super::client::{self, Body, Client};
use super::{RegistryError, RegistryOptions};
use crate::image::manifest::{self, media, parse_document, Descriptor, Document, Platform};
use crate::image::reference::{DockerName, DEFAULT_TAG};
use crate::report::{Event, Reporter};
use crate::store::{BlobStore, StoreError};
use crate::transport::{
    base_from_manifest, follow_to_manifest, read_small_verified, ResolvedImage, Top, TransportError,
};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

pub struct RegistrySource {
    name: DockerName,
    opts: RegistryOptions,
    store: Option<BlobStore>,
    client: Mutex<Option<Arc<Client>>>,
    /// Blobs of the resolved image: these may be mounted from this repository.
    layers: Mutex<HashSet<Digest>>,
}

impl RegistrySource {
    pub fn open(
        name: &DockerName,
        opts: &RegistryOptions,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Self, TransportError> {
        let store = cache_dir.map(BlobStore::open).transpose()?;
        Ok(RegistrySource {
            name: name.clone(),
            opts: opts.clone(),
            store,
            client: Mutex::new(None),
            layers: Mutex::new(HashSet::new()),
        })
    }

    pub fn name(&self) -> &DockerName {
        &self.name
    }

    pub fn describe(&self) -> String {
        format!("docker://{}", self.name)
    }

    fn repo_ref(&self) -> String {
        format!("docker://{}/{}", self.name.registry, self.name.repository)
    }

    /// Connected on first use: a pull whose content is all in the store needs no network.
    fn client(&self) -> Result<Arc<Client>, TransportError> {
        let mut c = self.client.lock().expect("lock");
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let scopes = vec![format!("repository:{}:pull", self.name.repository)];
        let new = Arc::new(Client::new(&self.name.registry, &self.opts, scopes)?);
        *c = Some(new.clone());
        Ok(new)
    }

    /// Whether `d` is a blob of the image this source resolved (and can be mounted from it).
    pub fn has_layer(&self, d: &Digest) -> bool {
        self.layers.lock().expect("lock").contains(d)
    }

    /// What the name points to: a manifest or an index, unresolved.
    pub fn top(&self) -> Result<Top, TransportError> {
        let reference = self.describe();
        let top = match (&self.name.digest, &self.name.tag) {
            (Some(d), _) => self.manifest(&d.to_string(), Some((*d, None)), &reference)?,
            (None, t) => self.manifest(t.as_deref().unwrap_or(DEFAULT_TAG), None, &reference)?,
        };
        let (digest, bytes, content_type) = top;
        let doc = parse_document(&bytes, content_type.as_deref(), &format!("{reference}: manifest {digest}"))?;
        Ok(Top { reference, digest, bytes, doc })
    }

    /// The image an entry of the index `top` points to.
    pub fn image_at(&self, top: &Top, d: &Descriptor) -> Result<ResolvedImage, TransportError> {
        let what = format!("{}: manifest {}", top.reference, d.digest);
        let (digest, bytes, _) = self.manifest_at(d, manifest::MAX_MANIFEST_BYTES, &what)?;
        let doc = parse_document(&bytes, Some(&d.media_type), &what)?;
        self.image_of(format!("{}@{}", top.reference, d.digest), digest, bytes, doc)
    }

    fn manifest_at(
        &self,
        d: &Descriptor,
        max: u64,
        what: &str,
    ) -> Result<(Digest, Vec<u8>, Option<String>), TransportError> {
        if d.size > max {
            return Err(manifest::format_error(
                what,
                format!("descriptor size {} exceeds the {max}-byte limit", d.size),
            )
            .into());
        }
        self.manifest(&d.digest.to_string(), Some((d.digest, Some(d.size))), what)
    }

    pub fn resolve(&self, platform: &Platform) -> Result<ResolvedImage, TransportError> {
        let Top { reference, digest, bytes, doc } = self.top()?;
        let (digest, bytes, doc) = match doc {
            Document::Manifest(_) => (digest, bytes, doc),
            Document::Index(idx) => {
                let desc = idx.select(platform, &format!("{reference}: index {digest}"))?.clone();
                let fetch = |d: &Descriptor, max: u64, what: &str| self.manifest_at(d, max, what).map(|(_, b, _)| b);
                follow_to_manifest(&fetch, desc, platform, &reference)?
            }
        };
        self.image_of(reference, digest, bytes, doc)
    }

    /// A manifest already fetched, with its config; its blobs become mountable from here.
    fn image_of(
        &self,
        reference: String,
        digest: Digest,
        bytes: Vec<u8>,
        doc: Document,
    ) -> Result<ResolvedImage, TransportError> {
        let Document::Manifest(m) = &doc else {
            return Err(manifest::format_error(&reference, "expected an image manifest, found an index").into());
        };
        let config = self.small_blob(
            &m.config,
            manifest::MAX_CONFIG_BYTES,
            &format!("{reference}: config {}", m.config.digest),
        )?;
        {
            let mut layers = self.layers.lock().expect("lock");
            layers.extend(m.layers.iter().map(|l| l.digest));
            layers.insert(m.config.digest);
        }
        base_from_manifest(reference, digest, bytes, doc, &config)
    }

    /// A manifest by tag or digest: `(digest, bytes, content type)`, verified against
    /// `expected` (digest and size) when given, and kept in the store.
    fn manifest(
        &self,
        reference: &str,
        expected: Option<(Digest, Option<u64>)>,
        what: &str,
    ) -> Result<(Digest, Vec<u8>, Option<String>), TransportError> {
        if let (Some((d, _)), Some(store)) = (expected, &self.store) {
            if store.contains(&d) {
                let bytes = store.read_small(&d, manifest::MAX_MANIFEST_BYTES)?;
                return Ok((d, bytes, None));
            }
        }
        let client = self.client()?;
        let url = client.url(&format!("/v2/{}/manifests/{reference}", self.name.repository));
        let op = format!("GET manifest {}:{reference}", self.name.repository);
        let mut r = client.send("GET", &url, &[("accept", ACCEPT.to_string())], Body::Empty, &op)?;
        match r.status().as_u16() {
            200 => {}
            404 => {
                return Err(TransportError::NotFound(format!(
                    "{}: no manifest {reference} in repository {} ({})",
                    self.repo_ref(),
                    self.name.repository,
                    client.error_message(&mut r)
                )))
            }
            _ => return Err(client.status_error(r, &op).into()),
        }
        let content_type =
            client::header(&r, "content-type").map(|c| c.split(';').next().unwrap_or("").trim().to_string());
        let bytes = client.read_body(&mut r, manifest::MAX_MANIFEST_BYTES, &op)?;
        let actual = Digest::of(&bytes);
        if let Some((want, size)) = expected {
            if actual != want {
                return Err(manifest::format_error(
                    what,
                    format!(
                        "the registry sent a manifest that hashes to {actual}, not {want} as requested: refusing it"
                    ),
                )
                .into());
            }
            if size.is_some_and(|s| s != bytes.len() as u64) {
                return Err(manifest::format_error(
                    what,
                    format!("{} bytes, but its descriptor says {}", bytes.len(), size.unwrap_or(0)),
                )
                .into());
            }
        } else if let Some(h) = client::header(&r, "docker-content-digest") {
            if h != actual.to_string() {
                return Err(manifest::format_error(
                    what,
                    format!("the registry says the manifest is {h}, but its bytes hash to {actual}: refusing it"),
                )
                .into());
            }
        }
        if let Some(store) = &self.store {
            store.put_bytes(&bytes)?;
        }
        let content_type = content_type.filter(|c| {
            [media::OCI_MANIFEST, media::OCI_INDEX, media::DOCKER_MANIFEST, media::DOCKER_LIST].contains(&c.as_str())
        });
        Ok((actual, bytes, content_type))
    }

    /// A config: from the store, or fetched, verified and stored.
    fn small_blob(&self, d: &Descriptor, max: u64, what: &str) -> Result<Vec<u8>, TransportError> {
        if let Some(store) = &self.store {
            if store.contains(&d.digest) {
                return Ok(store.read_small(&d.digest, max)?);
            }
        }
        let client = self.client()?;
        let url = client.url(&format!("/v2/{}/blobs/{}", self.name.repository, d.digest));
        let op = format!("GET blob {} from {}", d.digest, self.repo_ref());
        let mut r = client.send("GET", &url, &[], Body::Empty, &op)?;
        if r.status().as_u16() != 200 {
            return Err(client.status_error(r, &op).into());
        }
        let bytes = read_small_verified(client.body(&mut r), d, max, what)?;
        if let Some(store) = &self.store {
            store.put_bytes(&bytes)?;
        }
        Ok(bytes)
    }

    /// The store's copy of a blob, if it has one.
    pub fn local_path(&self, d: &Digest) -> Option<PathBuf> {
        let store = self.store.as_ref()?;
        store.contains(d).then(|| store.blob_path(d))
    }

    /// A blob's bytes: from the store, after downloading it there (verified) if needed.
    pub fn open_blob(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        match &self.store {
            Some(store) => {
                self.download(d, &|_| {})?;
                Ok(Box::new(store.open_blob(&d.digest, Some(d.size))?))
            }
            None => {
                let client = self.client()?;
                let url = client.url(&format!("/v2/{}/blobs/{}", self.name.repository, d.digest));
                let op = format!("GET blob {} from {}", d.digest, self.repo_ref());
                let r = client.send("GET", &url, &[], Body::Empty, &op)?;
                if r.status().as_u16() != 200 {
                    return Err(client.status_error(r, &op).into());
                }
                Ok(Box::new(client.into_body(r)))
            }
        }
    }

    /// Downloads the layers the store lacks, `jobs` at once.
    pub fn prefetch(&self, layers: &[Descriptor], reporter: &dyn Reporter) -> Result<(), TransportError> {
        let Some(store) = &self.store else { return Ok(()) };
        let wanted: Vec<&Descriptor> =
            layers.iter().filter(|d| self.has_layer(&d.digest) && !store.contains(&d.digest)).collect();
        super::parallel(&wanted, self.opts.jobs, |d| {
            let digest = d.digest.to_string();
            self.download(d, &|done| {
                reporter.report(Event::BlobProgress { action: "pull", digest: &digest, done, total: d.size })
            })
        })
    }

    /// Streams a blob into a pending store file while hashing it; resumes with `Range`
    /// after a dropped connection; commits it only if digest and size match.
    fn download(&self, d: &Descriptor, progress: &(dyn Fn(u64) + Sync)) -> Result<(), TransportError> {
        let store = self.store.as_ref().expect("download needs the store");
        if store.contains(&d.digest) {
            return Ok(());
        }
        let client = self.client()?;
        let url = client.url(&format!("/v2/{}/blobs/{}", self.name.repository, d.digest));
        let op = format!("GET blob {} from {}", d.digest, self.repo_ref());
        let mut pending = store.pending()?;
        let tmp_err = |e: io::Error| StoreError::Io { path: store.tmp_dir().to_path_buf(), source: e };
        let mut hasher = sha2::Sha256::new();
        let mut got: u64 = 0;
        let mut failures = 0;
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let headers: Vec<(&str, String)> =
                if got > 0 { vec![("range", format!("bytes={got}-"))] } else { Vec::new() };
            let mut r = client.send("GET", &url, &headers, Body::Empty, &op)?;
            match r.status().as_u16() {
                206 if got > 0 => {
                    let start = client::header(&r, "content-range")
                        .and_then(|c| c.strip_prefix("bytes ").and_then(|c| c.split('-').next()?.parse::<u64>().ok()));
                    if start != Some(got) {
                        return Err(RegistryError::Protocol(format!(
                            "{op}: asked to resume at byte {got}, got a range starting at {start:?}"
                        ))
                        .into());
                    }
                }
                200 => {
                    // A full answer, also to a Range request: start over.
                    if got > 0 {
                        let f = pending.file();
                        f.set_len(0).map_err(tmp_err)?;
                        f.rewind().map_err(tmp_err)?;
                        hasher = sha2::Sha256::new();
                        got = 0;
                    }
                }
                404 => {
                    return Err(TransportError::NotFound(format!(
                        "{}: blob {} is missing ({})",
                        self.repo_ref(),
                        d.digest,
                        client.error_message(&mut r)
                    )))
                }
                _ => return Err(client.status_error(r, &op).into()),
            }
            let mut reader = client.body(&mut r);
            let outcome: io::Result<()> = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        got += n as u64;
                        if got > d.size {
                            return Err(StoreError::Mismatch {
                                expected: d.digest,
                                actual: Digest(Sha256Hash(hasher.clone().finalize().into())),
                                size: got,
                                from: format!(
                                    "{} (more than the {} bytes its descriptor gives)",
                                    self.repo_ref(),
                                    d.size
                                ),
                            }
                            .into());
                        }
                        hasher.update(&buf[..n]);
                        pending.file().write_all(&buf[..n]).map_err(tmp_err)?;
                        progress(got);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            match outcome {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    if !client.may_retry(failures, started) {
                        return Err(client.io_error(&format!("{op}: {got} of {} bytes", d.size), e).into());
                    }
                    std::thread::sleep(client::backoff(failures - 1, None));
                }
            }
        }
        let actual = Digest(Sha256Hash(hasher.finalize().into()));
        if actual != d.digest || got != d.size {
            return Err(StoreError::Mismatch {
                expected: d.digest,
                actual,
                size: got,
                from: format!(
                    "{}: the registry's copy is damaged or was tampered with, and was not stored",
                    self.repo_ref()
                ),
            }
            .into());
        }
        store.commit(pending, &d.digest)?;
        Ok(())
    }
}
