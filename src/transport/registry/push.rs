//! Writing an image to a registry: for each blob, does the repository have it (HEAD)? Can
//! it be mounted from another repository on the same registry (the base image's, one this
//! process pushed it to, or one the cache's [`Locations`] remember)? Only then is it uploaded: in one PUT when small, in PATCH chunks
//! when large. Then the config, then the manifest with its media type.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use imgforge_layers::Digest;

use super::client::{self, Body, Client};
use super::locations::Locations;
use super::RegistryOptions;
use crate::image::manifest::Descriptor;
use crate::image::reference::{DockerName, DEFAULT_TAG};
use crate::report::{Event, Reporter};
use crate::transport::{Blobs, NewImage, NewIndex, TransportError, WriteSummary};

/// Where this process has seen blobs: (registry, digest) → repository. A second `-t` to
/// another repository of the same registry mounts instead of uploading again.
fn known() -> &'static Mutex<HashMap<(String, Digest), String>> {
    static K: OnceLock<Mutex<HashMap<(String, Digest), String>>> = OnceLock::new();
    K.get_or_init(Default::default)
}

/// Records that `repo` holds `d`: for this process, and in the cache for later runs.
fn remember(registry: &str, d: Digest, repo: &str, locations: Option<&Locations>) {
    known().lock().expect("lock").insert((registry.to_string(), d), repo.to_string());
    if let Some(l) = locations {
        l.add(&d, repo);
    }
}

/// Repositories a blob is tried to be mounted from before it is uploaded.
const MOUNT_CANDIDATES: usize = 3;

#[derive(Default)]
struct Counts {
    uploaded: AtomicUsize,
    bytes: AtomicU64,
    present: AtomicUsize,
    mounted: AtomicUsize,
}

enum Outcome {
    Present,
    Mounted,
    Uploaded(u64),
}

struct Pusher<'a> {
    client: Arc<Client>,
    name: &'a DockerName,
    opts: &'a RegistryOptions,
    reporter: &'a dyn Reporter,
}

/// Pushes `image` to `name`. `blobs` opens what must be uploaded and says where a blob may be
/// mounted from.
pub fn push(
    name: &DockerName,
    image: &NewImage,
    blobs: &dyn Blobs,
    opts: &RegistryOptions,
    cache_dir: Option<&Path>,
    reporter: &dyn Reporter,
) -> Result<WriteSummary, TransportError> {
    if let Some(d) = &name.digest {
        if *d != image.manifest_digest {
            return Err(TransportError::Unsupported(format!(
                "docker://{name}: the destination names digest {d}, but the image is {}; name a tag instead",
                image.manifest_digest
            )));
        }
    }
    let repo = &name.repository;
    let locations = cache_dir.map(|c| Locations::open(c, &name.registry));
    // Mount candidates on this registry, best first: the source's repository, where this
    // process already put the blob, and where earlier runs saw it (the cache).
    let mut sources: HashMap<Digest, Vec<String>> = HashMap::new();
    for d in image.layers.iter().map(|l| l.descriptor.digest).chain([image.config_digest]) {
        let mut c: Vec<String> = Vec::new();
        c.extend(blobs.mount_source(&d).filter(|s| s.registry == name.registry).map(|s| s.repository));
        c.extend(known().lock().expect("lock").get(&(name.registry.clone(), d)).cloned());
        c.extend(locations.iter().flat_map(|l| l.get(&d)));
        let mut seen = HashSet::new();
        c.retain(|r| r != repo && seen.insert(r.clone()));
        c.truncate(MOUNT_CANDIDATES);
        if !c.is_empty() {
            sources.insert(d, c);
        }
    }
    let mut scopes = vec![format!("repository:{repo}:pull,push")];
    let from: BTreeSet<&String> = sources.values().flatten().collect();
    scopes.extend(from.iter().map(|r| format!("repository:{r}:pull")));
    let client = Arc::new(Client::new(&name.registry, opts, scopes)?);
    let p = Pusher { client, name, opts, reporter };
    let counts = Counts::default();
    let tally = |o: Outcome| match o {
        Outcome::Present => {
            counts.present.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Mounted => {
            counts.mounted.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Uploaded(n) => {
            counts.uploaded.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(n, Ordering::Relaxed);
        }
    };
    // Layers (several at once, each digest once), then the config, then the manifest.
    let mut layers: Vec<&Descriptor> = Vec::new();
    for l in &image.layers {
        if !layers.iter().any(|x| x.digest == l.descriptor.digest) {
            layers.push(&l.descriptor);
        }
    }
    super::parallel(&layers, opts.jobs, |d| {
        let o = p.blob(d, sources.get(&d.digest).map_or(&[], Vec::as_slice), &mut || blobs.open(d))?;
        remember(&name.registry, d.digest, repo, locations.as_ref());
        tally(o);
        Ok::<(), TransportError>(())
    })?;
    let config =
        Descriptor::new(crate::image::manifest::media::OCI_CONFIG, image.config_digest, image.config.len() as u64);
    let o = p.blob(&config, sources.get(&config.digest).map_or(&[], Vec::as_slice), &mut || {
        Ok(Box::new(io::Cursor::new(image.config.clone())))
    })?;
    remember(&name.registry, config.digest, repo, locations.as_ref());
    tally(o);
    p.manifest(&image.manifest, &image.manifest_media_type, image.manifest_digest)?;
    Ok(WriteSummary {
        blobs_written: counts.uploaded.into_inner(),
        blobs_linked: 0,
        blobs_mounted: counts.mounted.into_inner(),
        blobs_present: counts.present.into_inner(),
        bytes_written: counts.bytes.into_inner(),
    })
}

/// Pushes every image of `index` by digest, then the index under `name`'s tag (or digest).
pub fn push_index(
    name: &DockerName,
    index: &NewIndex,
    blobs: &dyn Blobs,
    opts: &RegistryOptions,
    cache_dir: Option<&Path>,
    reporter: &dyn Reporter,
) -> Result<WriteSummary, TransportError> {
    if name.digest.is_some_and(|d| d != index.digest) {
        return Err(TransportError::Unsupported(format!(
            "docker://{name}: the destination names a digest, but the index is {}; name a tag instead",
            index.digest
        )));
    }
    let mut total = WriteSummary::default();
    for image in &index.images {
        let by_digest = DockerName { tag: None, digest: Some(image.manifest_digest), ..name.clone() };
        let s = push(&by_digest, image, blobs, opts, cache_dir, reporter)?;
        total.blobs_written += s.blobs_written;
        total.blobs_mounted += s.blobs_mounted;
        total.blobs_present += s.blobs_present;
        total.bytes_written += s.bytes_written;
    }
    let client =
        Arc::new(Client::new(&name.registry, opts, vec![format!("repository:{}:pull,push", name.repository)])?);
    let p = Pusher { client, name, opts, reporter };
    p.manifest(&index.bytes, &index.media_type, index.digest)?;
    Ok(total)
}

type Opener<'o> = dyn FnMut() -> Result<Box<dyn Read + Send + 'o>, TransportError> + 'o;

impl Pusher<'_> {
    fn repo_ref(&self) -> String {
        format!("docker://{}/{}", self.name.registry, self.name.repository)
    }

    fn blob(&self, d: &Descriptor, mount_from: &[String], open: &mut Opener<'_>) -> Result<Outcome, TransportError> {
        let c = &self.client;
        let repo = &self.name.repository;
        let op = format!("HEAD blob {} in {}", d.digest, self.repo_ref());
        let r = c.send("HEAD", &c.url(&format!("/v2/{repo}/blobs/{}", d.digest)), &[], Body::Empty, &op)?;
        match r.status().as_u16() {
            200 => return Ok(Outcome::Present),
            404 => {}
            _ => return Err(c.status_error(r, &op).into()),
        }
        let mut session = None;
        for (i, from) in mount_from.iter().enumerate() {
            let op = format!("mount blob {} from {from} into {}", d.digest, self.repo_ref());
            let url = c.url(&format!("/v2/{repo}/blobs/uploads/?mount={}&from={from}", d.digest));
            match c.send("POST", &url, &[], Body::Empty, &op) {
                Ok(r) => match r.status().as_u16() {
                    201 => return Ok(Outcome::Mounted),
                    // Not mountable from there: the answer is an upload session. The last
                    // candidate's is used for the upload; the others are cancelled.
                    202 => {
                        let l = client::header(&r, "location").map(|l| c.resolve_location(&l));
                        match l {
                            Some(l) if i + 1 == mount_from.len() => session = Some(l),
                            Some(l) => {
                                let _ = c.send("DELETE", &l, &[], Body::Empty, &format!("cancel {op}"));
                            }
                            None => {}
                        }
                    }
                    // Mounting is an optimisation: anything else falls back to an upload.
                    _ => {}
                },
                // Not allowed to read the source repository: upload instead.
                Err(super::RegistryError::Unauthorized { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut attempt = 0;
        let started = std::time::Instant::now();
        loop {
            let location = match session.take() {
                Some(l) => l,
                None => self.start_upload()?,
            };
            match self.upload(&location, d, open) {
                Ok(()) => return Ok(Outcome::Uploaded(d.size)),
                Err(e) if e.retryable && c.may_retry(attempt + 1, started) => {
                    std::thread::sleep(client::backoff(attempt, e.wait));
                    attempt += 1;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    fn start_upload(&self) -> Result<String, TransportError> {
        let c = &self.client;
        let op = format!("start an upload to {}", self.repo_ref());
        let r =
            c.send("POST", &c.url(&format!("/v2/{}/blobs/uploads/", self.name.repository)), &[], Body::Empty, &op)?;
        if r.status().as_u16() != 202 {
            return Err(c.status_error(r, &op).into());
        }
        client::header(&r, "location")
            .map(|l| c.resolve_location(&l))
            .ok_or_else(|| super::RegistryError::Protocol(format!("{op}: 202 without a Location header")).into())
    }

    fn upload(&self, location: &str, d: &Descriptor, open: &mut Opener<'_>) -> Result<(), UploadError> {
        let c = &self.client;
        let digest = d.digest.to_string();
        let reporter = self.reporter;
        let mut reader = Progress {
            inner: open().map_err(UploadError::fatal)?,
            done: 0,
            last: 0,
            report: &|done| {
                reporter.report(Event::BlobProgress { action: "push", digest: &digest, done, total: d.size })
            },
        };
        let octet = ("content-type", "application/octet-stream".to_string());
        let with_digest = |loc: &str| format!("{loc}{}digest={}", if loc.contains('?') { '&' } else { '?' }, d.digest);
        let op = format!("upload blob {} to {}", d.digest, self.repo_ref());
        let r = if d.size <= self.opts.chunk_size {
            c.send("PUT", &with_digest(location), &[octet], Body::Stream(&mut reader, d.size), &op)
        } else {
            let mut loc = location.to_string();
            let mut start = 0u64;
            while start < d.size {
                let len = self.opts.chunk_size.min(d.size - start);
                let range = ("content-range", format!("{start}-{}", start + len - 1));
                let r = c
                    .send("PATCH", &loc, &[octet.clone(), range], Body::Stream(&mut reader, len), &op)
                    .map_err(UploadError::from_registry)?;
                if r.status().as_u16() != 202 {
                    return Err(UploadError::from_status(c, r, &op));
                }
                loc = client::header(&r, "location").map(|l| c.resolve_location(&l)).unwrap_or(loc);
                start += len;
            }
            c.send("PUT", &with_digest(&loc), &[], Body::Empty, &op)
        };
        let r = r.map_err(UploadError::from_registry)?;
        if r.status().as_u16() != 201 {
            return Err(UploadError::from_status(c, r, &op));
        }
        // The stream must have been exactly the blob (the verified reader checks at EOF).
        let mut rest = Vec::new();
        reader
            .read_to_end(&mut rest)
            .map_err(|e| UploadError::fatal(TransportError::Io { what: op.clone(), source: e }))?;
        if !rest.is_empty() {
            return Err(UploadError::fatal(
                super::RegistryError::Protocol(format!("{op}: the blob is longer than its descriptor")).into(),
            ));
        }
        Ok(())
    }

    fn manifest(&self, bytes: &[u8], media_type: &str, digest: Digest) -> Result<(), TransportError> {
        let c = &self.client;
        let reference = match &self.name.digest {
            Some(d) => d.to_string(),
            None => self.name.tag.clone().unwrap_or_else(|| DEFAULT_TAG.to_string()),
        };
        let op = format!("PUT manifest {}:{reference}", self.repo_ref());
        let url = c.url(&format!("/v2/{}/manifests/{reference}", self.name.repository));
        let r = c.send("PUT", &url, &[("content-type", media_type.to_string())], Body::Bytes(bytes), &op)?;
        if r.status().as_u16() != 201 {
            return Err(c.status_error(r, &op).into());
        }
        if let Some(h) = client::header(&r, "docker-content-digest") {
            if h != digest.to_string() {
                return Err(super::RegistryError::Protocol(format!(
                    "{op}: the registry stored the manifest as {h}, not {digest}"
                ))
                .into());
            }
        }
        Ok(())
    }
}

struct UploadError {
    error: TransportError,
    retryable: bool,
    wait: Option<std::time::Duration>,
}

impl UploadError {
    fn fatal(error: TransportError) -> Self {
        UploadError { error, retryable: false, wait: None }
    }

    fn from_registry(e: super::RegistryError) -> Self {
        let retryable = matches!(
            &e,
            super::RegistryError::Http {
                source: ureq::Error::Io(_)
                    | ureq::Error::Timeout(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::Protocol(_),
                ..
            }
        ) || matches!(&e, super::RegistryError::Unauthorized { status: 401, .. });
        UploadError { error: e.into(), retryable, wait: None }
    }

    fn from_status(c: &Client, r: client::Resp, op: &str) -> Self {
        let status = r.status().as_u16();
        let wait = client::header(&r, "retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| std::time::Duration::from_secs(s.min(60)));
        let retryable = matches!(status, 408 | 429 | 500 | 502 | 503 | 504);
        UploadError { error: c.status_error(r, op).into(), retryable, wait }
    }
}

/// Reports how much of a blob has been read, every 1 MiB and at the end.
struct Progress<'a> {
    inner: Box<dyn Read + Send + 'a>,
    done: u64,
    last: u64,
    report: &'a (dyn Fn(u64) + Sync),
}

impl Read for Progress<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.last >= 1 << 20 || (n == 0 && self.done != self.last) {
            self.last = self.done;
            (self.report)(self.done);
        }
        Ok(n)
    }
}
