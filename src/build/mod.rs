//! The build pipeline, the only place that knows the order of steps:
//! resolve base → stage app → write layers → config + manifest → write each destination.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use imgforge_layers::{
    scan_tree, CompressOptions, Digest, LayerDigests, LayerWriter, Normalize, Owner, TarWriter, Tree, DEFAULT_EPOCH,
};

use crate::image::manifest::{Descriptor, Platform};
use crate::image::reference::ImageRef;
use crate::report::{Event, Reporter};
use crate::store::layer_cache::{tree_key, LayerCache};
use crate::store::stat_cache::StatCache;
use crate::store::{BlobStore, StoreError};
use crate::transport::{self, BaseImage, BaseLayer, Blobs, NewImage, Source, TransportError};

pub mod base_facts;
pub mod config;
pub mod git;
pub mod launch;
pub mod procfile;

use config::{ConfigChanges, LABEL_BASE_DIGEST, LABEL_BASE_NAME, LABEL_REVISION, LABEL_SOURCE};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Failed to read the base image {reference}")]
    Base { reference: String, source: TransportError },
    #[error("Failed to write {reference}")]
    Destination { reference: String, source: TransportError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

pub struct BuildOptions {
    pub app_dir: PathBuf,
    pub base: ImageRef,
    /// The base reference as the user wrote it (recorded in the image).
    pub base_name: String,
    pub destinations: Vec<ImageRef>,
    /// Absolute path of the app in the image.
    pub workdir: String,
    pub chown: Option<Owner>,
    /// Image environment, in the order given.
    pub env: Vec<(String, String)>,
    pub default_process: Option<String>,
    pub compress: CompressOptions,
    pub platform: Option<Platform>,
    pub cache_dir: PathBuf,
    /// SOURCE_DATE_EPOCH: every timestamp in the image.
    pub source_date_epoch: Option<u64>,
    pub keep_special_bits: bool,
}

#[derive(Debug)]
pub struct BuildResult {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<LayerDigests>,
}

/// Files never taken into the image, whatever the ignore file says.
const ALWAYS_SKIPPED: &str = ".git";
pub const IGNORE_FILE: &str = ".imgforgeignore";
const MAX_PROCFILE: u64 = 1 << 20;

pub fn build(opts: &BuildOptions, reporter: &dyn Reporter) -> Result<BuildResult, BuildError> {
    let app_dir = &opts.app_dir;
    if !app_dir.is_dir() {
        return Err(BuildError::Invalid(format!(
            "app directory {} does not exist or is not a directory",
            app_dir.display()
        )));
    }
    let workdir = validate_workdir(&opts.workdir)?;
    if opts.destinations.is_empty() {
        return Err(BuildError::Invalid(
            "no destination: pass -t oci:DIR:TAG (or oci-archive:FILE, docker-archive:FILE)".into(),
        ));
    }
    for d in &opts.destinations {
        transport::check_destination(d)
            .map_err(|source| BuildError::Destination { reference: d.to_string(), source })?;
    }
    let store = BlobStore::open(&opts.cache_dir)?;
    let _lock = store.lock(false)?;
    let epoch = opts.source_date_epoch.unwrap_or(DEFAULT_EPOCH);
    let rules = Normalize { mtime: epoch, keep_special_bits: opts.keep_special_bits, keep_capabilities: false };

    // 1. Base: manifest and config only.
    reporter.report(Event::Step("Resolving the base image"));
    let base_err = |source| BuildError::Base { reference: opts.base_name.clone(), source };
    let source = Source::open(&opts.base).map_err(base_err)?;
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let base = source.resolve(&platform).map_err(base_err)?;
    reporter.report(Event::BaseResolved {
        reference: &base.reference,
        digest: base.manifest_digest.map(|d| d.to_string()),
        layers: base.layers.len(),
    });
    let facts = base_facts::base_facts(&source, &base, &store)
        .map_err(|e| BuildError::Invalid(format!("Failed to inspect the base image: {e}")))?;
    let base_user = base.config.as_ref().and_then(|c| c.string("User")).unwrap_or_default();
    let owner = match opts.chown {
        Some(o) => o,
        None => base_facts::resolve_user(&base_user, &facts).map_err(BuildError::Invalid)?,
    };

    // 2. The app: ignore rules, Procfile.
    reporter.report(Event::Step("Reading the app"));
    let tree = stage_app(app_dir)?;
    for s in &tree.skipped {
        reporter.report(Event::Warning(format!(
            "skipped {} {} (only files, directories and links go into layers)",
            s.what,
            s.rel.display()
        )));
    }
    let processes = read_procfile(app_dir)?;
    let default_process = choose_default_process(&processes, opts.default_process.as_deref())?;

    // 3. Layers.
    let mut new_layers: Vec<(LayerDigests, String)> = Vec::new();
    let prefix = workdir.trim_start_matches('/').as_bytes();
    let mut stat = StatCache::load(&store, app_dir)?;
    let key = tree_key(&tree, prefix, owner, &rules, &opts.compress, &mut stat)
        .map_err(io_err(format!("Failed to read the app directory {}", app_dir.display())))?;
    let _ = stat.save();
    let scope = format!("{}:app", app_dir.canonicalize().unwrap_or_else(|_| app_dir.clone()).display());
    let layer_cache = LayerCache::open(&store)?;
    let app_layer = match layer_cache.get(&store, &key) {
        Some(hit) => {
            reporter.report(Event::LayerDone { name: "app", digests: &hit, reused: true, why: None });
            hit
        }
        None => {
            let why = layer_cache.explain_miss(&scope, &key);
            let written = write_layer(&store, opts.compress, rules, "app", Some(&why), reporter, |tar| tree.write_to(tar, prefix, owner))?;
            let _ = layer_cache.put(&key, &written);
            written
        }
    };
    let _ = layer_cache.record(&scope, &key);
    new_layers.push((app_layer, format!("imgforge build: app at {workdir}")));

    let mut changes =
        ConfigChanges { created: config::rfc3339(epoch), working_dir: Some(workdir.clone()), ..Default::default() };
    if facts.has_shell {
        if !processes.is_empty() {
            let launch = write_layer(&store, opts.compress, rules, "launch", None, reporter, |tar| {
                launch::write_launch_layer(tar, &processes)
            })?;
            new_layers.push((launch, "imgforge build: launcher".into()));
            changes.entrypoint = Some(vec![launch::LAUNCHER_PATH.into()]);
            changes.cmd = default_process.clone().map(|p| vec![p]);
        }
    } else if let Some(p) = &default_process {
        let argv = procfile::split_without_shell(&processes[p]).map_err(|why| {
            BuildError::Invalid(format!(
                "process {p:?} needs a shell ({why}), but the base image has no /bin/sh; write it as a plain command or use a base with a shell"
            ))
        })?;
        for other in processes.keys().filter(|k| *k != p) {
            reporter.report(Event::Warning(format!(
                "process {other:?} cannot be started by name: the base image has no /bin/sh for the launcher"
            )));
        }
        changes.entrypoint = Some(Vec::new());
        changes.cmd = Some(argv);
    }

    // 4. Config and manifest.
    changes.env = opts.env.clone();
    let base_env = base.config.as_ref().map(|c| c.list("Env")).unwrap_or_default();
    let has_port = |k: &str| k == "PORT";
    if !opts.env.iter().any(|(k, _)| has_port(k)) && !base_env.iter().any(|e| e.starts_with("PORT=")) {
        changes.env.push(("PORT".into(), "5000".into()));
    }
    let mut annotations = BTreeMap::new();
    if let Some(d) = base.manifest_digest {
        annotations.insert(LABEL_BASE_NAME.to_string(), opts.base_name.clone());
        annotations.insert(LABEL_BASE_DIGEST.to_string(), d.to_string());
    }
    let git = git::read(app_dir);
    if let Some(s) = git.source {
        annotations.insert(LABEL_SOURCE.to_string(), s);
    }
    if let Some(r) = git.revision {
        annotations.insert(LABEL_REVISION.to_string(), r);
    }
    changes.labels = annotations.clone();
    changes.new_layers = new_layers.iter().map(|(l, by)| (l.diff_id, by.clone())).collect();
    let config_bytes = config::compose_config(base.config.as_ref(), &platform, &changes);
    let config_digest = store.put_bytes(&config_bytes)?;
    let layers = all_layers(&base, &new_layers);
    let descriptors: Vec<Descriptor> = layers.iter().map(|l| l.descriptor.clone()).collect();
    let manifest = config::compose_manifest(&config_bytes, config_digest, &descriptors, &annotations);
    let manifest_digest = store.put_bytes(&manifest)?;
    let image = NewImage { manifest, manifest_digest, config: config_bytes, config_digest, layers };

    // 5. Destinations.
    let blobs = BuildBlobs { store: &store, source: &source };
    for dest in &opts.destinations {
        let reference = dest.to_string();
        reporter.report(Event::Step(&format!("Writing {reference}")));
        let s = transport::write(dest, &image, &blobs)
            .map_err(|source| BuildError::Destination { reference: reference.clone(), source })?;
        reporter.report(Event::Destination {
            reference: &reference,
            written: s.blobs_written,
            present: s.blobs_present,
            bytes: s.bytes_written,
        });
    }
    Ok(BuildResult { manifest_digest, config_digest, layers: new_layers.into_iter().map(|(l, _)| l).collect() })
}

/// Base layers (media types in OCI spelling, bytes untouched) followed by the new ones.
fn all_layers(base: &BaseImage, new: &[(LayerDigests, String)]) -> Vec<BaseLayer> {
    let mut out: Vec<BaseLayer> = base
        .layers
        .iter()
        .map(|l| {
            let mut d = l.descriptor.clone();
            if let Some(mt) = transport::oci_layer_media_type(&d.media_type) {
                d.media_type = mt.to_string();
            }
            BaseLayer { descriptor: d, diff_id: l.diff_id }
        })
        .collect();
    out.extend(new.iter().map(|(l, _)| BaseLayer {
        descriptor: Descriptor::new(l.compression.media_type(), l.digest, l.size),
        diff_id: l.diff_id,
    }));
    out
}

fn validate_workdir(w: &str) -> Result<String, BuildError> {
    let ok =
        w.starts_with('/') && !w.split('/').any(|c| c == ".." || c == ".") && !w.contains("//") && !w.contains('\0');
    if !ok {
        return Err(BuildError::Invalid(format!(
            "--workdir {w:?} must be an absolute path without . or .. components"
        )));
    }
    Ok(if w.len() > 1 { w.trim_end_matches('/').to_string() } else { w.to_string() })
}

/// Scans the app directory, honouring `.imgforgeignore` (gitignore syntax) and never taking `.git`.
pub fn stage_app(app_dir: &Path) -> Result<Tree, BuildError> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new(app_dir);
    let ignore_file = app_dir.join(IGNORE_FILE);
    if ignore_file.is_file() {
        if let Some(e) = builder.add(&ignore_file) {
            return Err(BuildError::Invalid(format!("{}: {e}", ignore_file.display())));
        }
    }
    let matcher = builder.build().map_err(|e| BuildError::Invalid(format!("{}: {e}", ignore_file.display())))?;
    scan_tree(app_dir, &mut |rel: &Path, is_dir: bool| {
        !rel.iter().any(|c| c == ALWAYS_SKIPPED) && !matcher.matched(rel, is_dir).is_ignore()
    })
    .map_err(io_err(format!("Failed to read the app directory {}", app_dir.display())))
}

fn read_procfile(app_dir: &Path) -> Result<BTreeMap<String, String>, BuildError> {
    let path = app_dir.join("Procfile");
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err(path.display().to_string())(e)),
    };
    if !meta.is_file() {
        return Err(BuildError::Invalid(format!("{} is not a regular file", path.display())));
    }
    let mut text = String::new();
    File::open(&path)
        .and_then(|f| f.take(MAX_PROCFILE).read_to_string(&mut text))
        .map_err(io_err(format!("Failed to read {}", path.display())))?;
    procfile::parse(&text).map_err(|e| BuildError::Invalid(format!("{}: {e}", path.display())))
}

fn choose_default_process(
    processes: &BTreeMap<String, String>,
    wanted: Option<&str>,
) -> Result<Option<String>, BuildError> {
    if let Some(w) = wanted {
        if !processes.contains_key(w) {
            let have: Vec<&str> = processes.keys().map(String::as_str).collect();
            return Err(BuildError::Invalid(format!(
                "--default-process {w:?} is not in the Procfile (it has: {})",
                if have.is_empty() { "no processes".into() } else { have.join(", ") }
            )));
        }
        return Ok(Some(w.to_string()));
    }
    if processes.contains_key("web") {
        return Ok(Some("web".into()));
    }
    match processes.len() {
        0 => Ok(None),
        1 => Ok(processes.keys().next().cloned()),
        _ => Err(BuildError::Invalid(format!(
            "the Procfile has several processes ({}) and none is `web`: choose the default with --default-process",
            processes.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Streams one layer into the store: tar → diff_id → compress → digest → temp file → rename.
fn write_layer(
    store: &BlobStore,
    compress: CompressOptions,
    rules: Normalize,
    name: &str,
    why: Option<&str>,
    reporter: &dyn Reporter,
    fill: impl FnOnce(&mut TarWriter<Progress<'_, LayerWriter<BufWriter<File>>>>) -> io::Result<()>,
) -> Result<LayerDigests, BuildError> {
    let pending = store.pending()?;
    let file = pending.try_clone_file().map_err(io_err("Failed to open a temp file in the cache"))?;
    let writer = LayerWriter::new(BufWriter::with_capacity(1 << 20, file), compress)
        .map_err(io_err("Failed to start the compressor"))?;
    let mut tar = TarWriter::new(Progress { inner: writer, name, reporter, bytes: 0, next: PROGRESS_STEP }, rules);
    let what = format!("Failed to write the {name} layer");
    fill(&mut tar).map_err(io_err(&what))?;
    let progress = tar.finish().map_err(io_err(&what))?;
    let (digests, sink) = progress.inner.finish().map_err(io_err(&what))?;
    sink.into_inner().map_err(|e| io_err(&what)(e.into_error()))?;
    store.commit(pending, &digests.digest)?;
    reporter.report(Event::LayerDone { name, digests: &digests, reused: false, why });
    Ok(digests)
}

const PROGRESS_STEP: u64 = 8 << 20;

/// Counts the tar bytes going into a layer and reports them every few MiB.
pub struct Progress<'a, W> {
    inner: W,
    name: &'a str,
    reporter: &'a dyn Reporter,
    bytes: u64,
    next: u64,
}

impl<W: Write> Write for Progress<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        if self.bytes >= self.next {
            self.next = self.bytes + PROGRESS_STEP;
            self.reporter.report(Event::LayerProgress { name: self.name, bytes: self.bytes });
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// New layers come from the store, base layers from the base image's source.
struct BuildBlobs<'a> {
    store: &'a BlobStore,
    source: &'a Source,
}

impl Blobs for BuildBlobs<'_> {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        if self.store.contains(&d.digest) {
            return Ok(Box::new(self.store.open_blob(&d.digest, Some(d.size))?));
        }
        self.source.open_verified(d)
    }

    fn local_path(&self, d: &Digest) -> Option<PathBuf> {
        if self.store.contains(d) {
            return Some(self.store.blob_path(d));
        }
        self.source.local_path(d)
    }
}
