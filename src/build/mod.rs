//! The build pipeline, the only place that knows the order of steps:
//! resolve base → stage app → write layers → config + manifest → write each destination.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use imgforge_layers::{
    scan_and_write, scan_tree, CompressOptions, ContentHash, Digest, LayerDigests, LayerWriter, Normalize, Owner,
    TarWriter, Tree, DEFAULT_EPOCH,
};

use crate::buildpack;
use crate::image::manifest::{Descriptor, Platform};
use crate::image::reference::ImageRef;
use crate::report::{Event, Reporter};
use crate::sandbox::{Isolation, Network};
use crate::store::layer_cache::{tree_key, tree_key_with, LayerCache, LayerKey};
use crate::store::stat_cache::StatCache;
use crate::store::{trash, BlobStore, StoreError, WritebackFile};
use crate::transport::{self, BaseImage, BaseLayer, Blobs, NewImage, Source, TransportError};

pub mod base_facts;
pub mod cnb;
pub mod config;
pub mod git;
pub mod launch;
pub mod procfile;
pub mod split;

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
    #[error("{what}")]
    Buildpack { what: String, source: buildpack::HerokuError },
    #[error("{what}")]
    Cnb { what: String, source: buildpack::cnb::CnbError },
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
    /// The base reference as the user wrote it (for messages).
    pub base_name: String,
    pub destinations: Vec<ImageRef>,
    /// Absolute path of the app in the image [default: /workspace, or /app for buildpack builds].
    pub workdir: Option<String>,
    pub chown: Option<Owner>,
    /// Image environment, in the order given (also the buildpacks' config vars).
    pub env: Vec<(String, String)>,
    pub default_process: Option<String>,
    pub compress: CompressOptions,
    pub platform: Option<Platform>,
    pub cache_dir: PathBuf,
    /// SOURCE_DATE_EPOCH: every timestamp in the image.
    pub source_date_epoch: Option<u64>,
    pub keep_special_bits: bool,
    /// `--buildpack` paths, in order.
    pub buildpacks: Vec<PathBuf>,
    pub buildpacks_dir: Option<PathBuf>,
    pub stack: Option<String>,
    /// Start the buildpacks' CACHE_DIRs empty (and skip the build cache).
    pub clear_cache: bool,
    /// Where buildpacks run.
    pub isolation: Isolation,
    /// The image buildpacks run on in the sandbox (default: the base).
    pub build_image: Option<ImageRef>,
    pub network: Network,
    /// How to talk to registries (`--tls-verify`, `--authfile`).
    pub registry: transport::RegistryOptions,
}

impl BuildOptions {
    fn transport(&self) -> transport::TransportOptions {
        transport::TransportOptions { cache_dir: Some(self.cache_dir.clone()), registry: self.registry.clone() }
    }
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
const DEFAULT_STACK: &str = "heroku-24";
const STACK_LABEL: &str = "io.buildpacks.stack.id";

/// What the layer-producing step hands to the rest of the pipeline.
#[derive(Default)]
struct Produced {
    layers: Vec<(LayerDigests, String)>,
    processes: BTreeMap<String, String>,
    /// Image env from the buildpacks (bin/release config_vars), below the user's --env.
    release_env: Vec<(String, String)>,
    heroku: bool,
    outcome: Option<buildpack::Outcome>,
    build_key: Option<(BuildCache, String)>,
    /// The build's scratch directory: holds the buildpacks' new caches until they are committed.
    _work: Option<tempfile::TempDir>,
    /// CNB: launch env scripts by process type (`_` for other commands).
    launch_env: BTreeMap<String, String>,
    /// CNB: image labels (io.buildpacks.*, launch.toml labels).
    labels: BTreeMap<String, String>,
    /// CNB: the process a buildpack marked default.
    default_process: Option<String>,
    cnb: Option<cnb::Pending>,
}

pub fn build(opts: &BuildOptions, reporter: &dyn Reporter) -> Result<BuildResult, BuildError> {
    let app_dir = &opts.app_dir;
    if !app_dir.is_dir() {
        return Err(BuildError::Invalid(format!(
            "app directory {} does not exist or is not a directory",
            app_dir.display()
        )));
    }
    if opts.destinations.is_empty() {
        return Err(BuildError::Invalid(
            "no destination: pass -t oci:DIR:TAG (or oci-archive:FILE, docker-archive:FILE)".into(),
        ));
    }
    for d in &opts.destinations {
        transport::check_destination(d)
            .map_err(|source| BuildError::Destination { reference: d.to_string(), source })?;
    }
    let uses_buildpacks = !opts.buildpacks.is_empty()
        || opts.buildpacks_dir.is_some()
        || app_dir.join(".buildpacks").is_file()
        || app_dir.join("project.toml").is_file();
    if let Some(w) = &opts.workdir {
        validate_workdir(w)?;
    }
    let store = BlobStore::open(&opts.cache_dir)?;
    let _lock = store.lock(false)?;
    // The buildpacks first (found, and copied somewhere writable): their kind decides where
    // the app goes. Cloud Native Buildpacks keep it at /workspace, Heroku's at /app.
    let buildpacks = if uses_buildpacks {
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(store.tmp_dir())
            .map_err(io_err("Failed to make a build directory in the cache"))?;
        let plan = buildpack::plan(&opts.buildpacks, app_dir, opts.buildpacks_dir.as_deref(), work.path())
            .map_err(|e| BuildError::Buildpack { what: "Failed to find the buildpacks".into(), source: e })?;
        let is_cnb = cnb::is_cnb(&plan)?;
        Some((work, plan, is_cnb))
    } else {
        None
    };
    let workdir = validate_workdir(opts.workdir.as_deref().unwrap_or(match &buildpacks {
        Some((_, _, false)) => "/app",
        _ => "/workspace",
    }))?;
    let epoch = opts.source_date_epoch.unwrap_or(DEFAULT_EPOCH);
    let rules = Normalize { mtime: epoch, keep_special_bits: opts.keep_special_bits, keep_capabilities: false };

    // 1. Base: manifest and config only.
    reporter.report(Event::Step("Resolving the base image"));
    let base_err = |source| BuildError::Base { reference: opts.base_name.clone(), source };
    let source = Source::open(&opts.base, &opts.transport()).map_err(base_err)?;
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let base = source.resolve(&platform).map_err(base_err)?;
    reporter.report(Event::BaseResolved {
        reference: &base.reference,
        digest: base.manifest_digest.map(|d| d.to_string()),
        layers: base.layers.len(),
    });
    // What the base's filesystem holds (shell, accounts) costs a pass over its layers: learn
    // it only if something may need it, on a thread beside the app's layers.
    let base_user = base.config.as_ref().and_then(|c| c.string("User")).unwrap_or_default();
    let user_needs_facts = opts.chown.is_none() && !base_user.is_empty();
    let mut facts = if user_needs_facts || uses_buildpacks || app_dir.join("Procfile").exists() {
        LazyFacts::start(opts, &base, &platform)
    } else {
        LazyFacts::unneeded()
    };
    let owner = match opts.chown {
        Some(o) => o,
        None if base_user.is_empty() => Owner::ROOT,
        None => base_facts::resolve_user(&base_user, facts.get()?).map_err(BuildError::Invalid)?,
    };

    // 2. The app, and its layers (with or without buildpacks).
    reporter.report(Event::Step("Reading the app"));
    let filter = AppFilter::load(app_dir)?;
    let git = git::read(app_dir);
    let ctx = LayerCtx {
        store: &store,
        cache: LayerCache::open(&store)?,
        rules,
        compress: opts.compress,
        owner,
        prefix: workdir.trim_start_matches('/').as_bytes().to_vec(),
        scope: app_dir.canonicalize().unwrap_or_else(|_| app_dir.clone()).display().to_string(),
        reporter,
    };
    let mut app_stat = StatCache::load(&store, app_dir)?;
    let mut background = Background(None);
    let produced = if let Some((work, plan, is_cnb)) = buildpacks {
        let tree = filter.scan(app_dir)?;
        report_skipped(reporter, &tree);
        let app_key = ctx.key(&tree, &mut app_stat)?;
        let stack = opts
            .stack
            .clone()
            .or_else(|| base.config.as_ref().and_then(|c| c.label(STACK_LABEL)))
            .unwrap_or_else(|| DEFAULT_STACK.to_string());
        let build_cache = BuildCache::open(&store)?;
        let build_key = build_cache.key(opts, &store, &app_key, &plan, &base, &stack, &git, &workdir, is_cnb)?;
        if !opts.clear_cache {
            if let Some(image) = build_cache.get(&store, &build_key) {
                reporter.report(Event::Step("Nothing changed since the last build: reusing its image"));
                let _ = app_stat.save();
                publish(opts, &image, &store, &source, reporter)?;
                let layers = Vec::new();
                return Ok(BuildResult {
                    manifest_digest: image.manifest_digest,
                    config_digest: image.config_digest,
                    layers,
                });
            }
        }
        // Real work ahead: delete what earlier builds left in the trash beside it.
        trash::sweep(store.trash_dir());
        let mut p = if is_cnb {
            cnb::cnb_layers(
                opts,
                &ctx,
                &plan,
                work.path(),
                &tree,
                &mut app_stat,
                &workdir,
                (&source, &base, &platform),
                &git,
                facts.get()?.distro(),
            )?
        } else {
            buildpack_layers(
                opts,
                &ctx,
                &plan,
                work.path(),
                &tree,
                &app_key,
                &mut app_stat,
                &stack,
                git.revision.clone(),
                (&source, &base, &platform),
            )?
        };
        let _ = app_stat.save();
        p.build_key = Some((build_cache, build_key));
        p._work = Some(work);
        p
    } else {
        let app = if app_stat.is_cold() {
            // First build from this path: nothing to reuse is likely, so scan and write the
            // layer in one go and derive its key from the hashes taken while streaming (each
            // file read once).
            let (app, job) = ctx.write_then_key("app", app_stat, |tar, on_file| {
                let include = |rel: &Path, is_dir| filter.includes(rel, is_dir);
                scan_and_write(app_dir, &include, tar, &ctx.prefix, ctx.owner, on_file)
            })?;
            background = job;
            app
        } else {
            let tree = filter.scan(app_dir)?;
            report_skipped(reporter, &tree);
            let key = ctx.key(&tree, &mut app_stat)?;
            let app = ctx.cached_layer("app", &tree, &key)?;
            let _ = app_stat.save();
            app
        };
        Produced {
            layers: vec![(app, format!("imgforge build: app at {workdir}"))],
            processes: read_procfile(app_dir)?,
            ..Default::default()
        }
    };
    let Produced {
        mut layers,
        processes,
        release_env,
        heroku,
        outcome,
        build_key,
        _work: work,
        launch_env,
        labels: cnb_labels,
        default_process: bp_default,
        cnb: cnb_pending,
    } = produced;
    let default_process =
        choose_default_process(&processes, opts.default_process.as_deref().or(bp_default.as_deref()))?;

    // 3. How processes start.
    let mut changes =
        ConfigChanges { created: config::rfc3339(epoch), working_dir: Some(workdir.clone()), ..Default::default() };
    let has_shell = !processes.is_empty() && facts.get()?.has_shell;
    if !processes.is_empty() && !has_shell && !launch_env.is_empty() {
        return Err(BuildError::Invalid(
            "the base image has no /bin/sh: imgforge's launcher needs it to apply the Cloud Native Buildpacks' launch environment (env files, profile.d); use a base with a shell".into(),
        ));
    }
    if has_shell {
        let launch = write_layer(&store, opts.compress, rules, "launch", None, reporter, |tar| {
            launch::write_launch_layer(tar, &processes, &launch_env)
        })?;
        layers.push((launch, "imgforge build: launcher".into()));
        changes.entrypoint = Some(vec![launch::LAUNCHER_PATH.into()]);
        changes.cmd = default_process.clone().map(|p| vec![p]);
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

    // 4. Config and manifest. Env precedence: base < buildpack config_vars < --env.
    changes.env = release_env;
    changes.env.extend(opts.env.iter().cloned());
    let base_env = base.config.as_ref().map(|c| c.list("Env")).unwrap_or_default();
    let set_anywhere =
        |k: &str| changes.env.iter().any(|(e, _)| e == k) || base_env.iter().any(|e| e.starts_with(&format!("{k}=")));
    let mut defaults = vec![("PORT".to_string(), "5000".to_string())];
    if heroku {
        // Heroku-classic buildpacks write profile scripts that find their files under $HOME.
        defaults.push(("HOME".to_string(), workdir.clone()));
    }
    let defaults: Vec<_> = defaults.into_iter().filter(|(k, _)| !set_anywhere(k)).collect();
    changes.env.extend(defaults);
    let mut annotations = BTreeMap::new();
    if let Some(d) = base.manifest_digest {
        annotations.insert(LABEL_BASE_NAME.to_string(), opts.base.portable_name());
        annotations.insert(LABEL_BASE_DIGEST.to_string(), d.to_string());
    }
    if let Some(s) = git.source {
        annotations.insert(LABEL_SOURCE.to_string(), s);
    }
    if let Some(r) = git.revision {
        annotations.insert(LABEL_REVISION.to_string(), r);
    }
    changes.labels = annotations.clone();
    changes.labels.extend(cnb_labels);
    changes.new_layers = layers.iter().map(|(l, by)| (l.diff_id, by.clone())).collect();
    let config_bytes = config::compose_config(base.config.as_ref(), &platform, &changes);
    let config_digest = store.put_bytes(&config_bytes)?;
    let all = all_layers(&base, &layers);
    let descriptors: Vec<Descriptor> = all.iter().map(|l| l.descriptor.clone()).collect();
    let manifest = config::compose_manifest(&config_bytes, config_digest, &descriptors, &annotations);
    let manifest_digest = store.put_bytes(&manifest)?;
    let image = NewImage {
        manifest,
        manifest_digest,
        manifest_media_type: crate::image::manifest::media::OCI_MANIFEST.into(),
        config: config_bytes,
        config_digest,
        layers: all,
    };

    // 5. Destinations; only then do the buildpacks' new caches replace the old ones.
    publish(opts, &image, &store, &source, reporter)?;
    if let Some(outcome) = outcome {
        outcome
            .commit_caches(&store.trash_dir())
            .map_err(|e| BuildError::Buildpack { what: "Failed to keep the buildpack caches".into(), source: e })?;
    }
    if let Some(pending) = cnb_pending {
        pending.commit(&store.trash_dir())?;
    }
    if let Some((cache, key)) = build_key {
        let _ = cache.put(&key, &manifest_digest);
    }
    if let Some(work) = work {
        // Thousands of files: deleted off the critical path.
        let _ = trash::discard(&store.trash_dir(), &work.keep());
    }
    drop(background);
    Ok(BuildResult { manifest_digest, config_digest, layers: layers.into_iter().map(|(l, _)| l).collect() })
}

fn publish(
    opts: &BuildOptions,
    image: &NewImage,
    store: &BlobStore,
    source: &Source,
    reporter: &dyn Reporter,
) -> Result<(), BuildError> {
    let blobs = BuildBlobs { store, source };
    let topts = opts.transport();
    // Base layers are fetched only for destinations that are not registries (a registry
    // gets them by mount or from the registry it already has them in), all at once.
    if opts.destinations.iter().any(|d| !matches!(d, ImageRef::Registry(_))) {
        source
            .prefetch(&image.layers, reporter)
            .map_err(|source| BuildError::Base { reference: opts.base_name.clone(), source })?;
    }
    for dest in &opts.destinations {
        let reference = dest.to_string();
        reporter.report(Event::Step(&format!("Writing {reference}")));
        let s = transport::write(dest, image, &blobs, &topts, reporter)
            .map_err(|source| BuildError::Destination { reference: reference.clone(), source })?;
        reporter.report(Event::Destination {
            reference: &reference,
            written: s.blobs_written,
            linked: s.blobs_linked,
            mounted: s.blobs_mounted,
            present: s.blobs_present,
            bytes: s.bytes_written,
        });
    }
    Ok(())
}

/// Work left running beside the build; waited for when dropped, so it ends before the build
/// returns (whether it succeeds or fails).
struct Background(Option<std::thread::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            let _ = job.join();
        }
    }
}

/// What every layer written from a tree shares.
struct LayerCtx<'a> {
    store: &'a BlobStore,
    cache: LayerCache,
    rules: Normalize,
    compress: CompressOptions,
    owner: Owner,
    prefix: Vec<u8>,
    /// Identifies the app, for explaining cache misses.
    scope: String,
    reporter: &'a dyn Reporter,
}

impl LayerCtx<'_> {
    /// The layer for `tree` from the cache, or written now (and cached).
    fn cached_layer(&self, name: &str, tree: &Tree, key: &LayerKey) -> Result<LayerDigests, BuildError> {
        let scope = format!("{}:{name}", self.scope);
        let digests = match self.cache.get(self.store, key) {
            Some(hit) => {
                self.reporter.report(Event::LayerDone { name, digests: &hit, reused: true, why: None });
                hit
            }
            None => {
                let why = self.cache.explain_miss(&scope, key);
                let owner = self.owner;
                let written =
                    write_layer(self.store, self.compress, self.rules, name, Some(&why), self.reporter, |tar| {
                        tree.write_to(tar, &self.prefix, owner)
                    })?;
                let _ = self.cache.put(key, &written);
                written
            }
        };
        let _ = self.cache.record(&scope, key);
        Ok(digests)
    }

    /// Writes the layer for `tree` (a first build here: no key worth computing first), then
    /// leaves to a background thread computing its key from the content hashes taken while
    /// streaming, caching it and teaching `stat` those hashes. Nothing else in the build waits
    /// for that; the returned guard waits for it when dropped.
    fn write_then_key(
        &self,
        name: &str,
        mut stat: StatCache,
        fill: impl FnOnce(&mut LayerTar<'_>, &mut dyn FnMut(usize, ContentHash)) -> io::Result<Tree>,
    ) -> Result<(LayerDigests, Background), BuildError> {
        let mut hashes = Vec::new();
        let mut tree = None;
        let written =
            write_layer(self.store, self.compress, self.rules, name, Some("first build here"), self.reporter, |tar| {
                tree = Some(fill(tar, &mut |i, h| {
                    if hashes.len() <= i {
                        hashes.resize(i + 1, None);
                    }
                    hashes[i] = Some(h);
                })?);
                Ok(())
            })?;
        let tree = tree.expect("write_layer ran fill");
        report_skipped(self.reporter, &tree);
        let owner = self.owner;
        let (cache, prefix, rules, compress) = (self.cache.clone(), self.prefix.clone(), self.rules, self.compress);
        let (scope, digests) = (format!("{}:{name}", self.scope), written.clone());
        let job = std::thread::spawn(move || {
            let key = tree_key_with(&tree, &prefix, owner, &rules, &compress, &mut |i, e| {
                let h = hashes
                    .get(i)
                    .copied()
                    .flatten()
                    .ok_or_else(|| io::Error::other(format!("{} was not read", e.rel.display())))?;
                stat.remember(&tree.root.join(&e.rel), e, h);
                Ok(h)
            });
            // Caches are advisory: a failure here costs the next build a re-read, nothing more.
            if let Ok(key) = key {
                let _ = cache.put(&key, &digests);
                let _ = cache.record(&scope, &key);
                let _ = stat.save();
            }
        });
        Ok((written, Background(Some(job))))
    }

    fn key(&self, tree: &Tree, stat: &mut StatCache) -> Result<LayerKey, BuildError> {
        tree_key(tree, &self.prefix, self.owner, &self.rules, &self.compress, stat)
            .map_err(io_err(format!("Failed to read {}", tree.root.display())))
    }
}

/// Runs the buildpacks on a private copy of the app and splits the result into layers.
#[allow(clippy::too_many_arguments)]
fn buildpack_layers(
    opts: &BuildOptions,
    ctx: &LayerCtx<'_>,
    plan: &buildpack::Plan,
    work: &Path,
    tree: &Tree,
    app_key: &LayerKey,
    app_stat: &mut StatCache,
    stack: &str,
    source_version: Option<String>,
    base: (&Source, &BaseImage, &Platform),
) -> Result<Produced, BuildError> {
    let store = ctx.store;
    let build_dir = work.join("app");

    let mut build_stat = StatCache::ephemeral();
    split::copy_app(tree, &build_dir, app_stat, &mut build_stat)
        .map_err(io_err(format!("Failed to copy the app into {}", build_dir.display())))?;
    // Primed hashes rely on ctime showing any later change: let the clock move past our copies.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let removed = buildpack::apply_slugignore(&build_dir)
        .map_err(|e| BuildError::Buildpack { what: "Failed to apply .slugignore".into(), source: e })?;
    for r in removed {
        ctx.reporter.report(Event::Detail(format!(".slugignore removed {}", r.display())));
    }
    ctx.reporter.report(Event::Step("Running buildpacks"));
    let env = buildpack::HerokuEnv { config_vars: opts.env.clone(), stack: stack.to_string(), source_version };
    let cache_root = store.bucket(crate::store::buckets::BUILDPACK_CACHE)?;
    let workdir = opts.workdir.clone().unwrap_or_else(|| "/app".to_string());
    let runner = sandbox_for(opts, store, plan, work, &build_dir, &workdir, base, ctx.reporter, Vec::new())?
        .map_or_else(crate::sandbox::Runner::host, crate::sandbox::Runner::image);
    let outcome =
        buildpack::run(plan, &build_dir, work, &cache_root, &ctx.scope, &env, opts.clear_cache, ctx.reporter, &runner);
    // Files the buildpacks chowned to other uids: readable by us, writable by nobody else;
    // all ours again once the layers are written.
    if let Err(e) = runner.make_host_accessible(work) {
        ctx.reporter.report(Event::Warning(format!("Failed to make the build directory readable: {e}")));
    }
    let warn = |e| ctx.reporter.report(Event::Warning(format!("Failed to take back the build directory: {e}")));
    let _give_back = runner.give_back_on_drop(work, &warn);
    let outcome = outcome.map_err(|e| BuildError::Buildpack { what: "Buildpack build failed".into(), source: e })?;

    ctx.reporter.report(Event::Detail("Splitting the built app into layers".into()));
    let mut built = imgforge_layers::scan_tree(&build_dir, &|_, _| true)
        .map_err(io_err(format!("Failed to read the built app in {}", build_dir.display())))?;
    map_owners(&mut built, &runner);
    let built_key = ctx.key(&built, &mut build_stat)?;
    let original: HashMap<PathBuf, String> =
        tree.entries.iter().map(|e| e.rel.clone()).zip(app_key.items.iter().map(|i| i.1.clone())).collect();
    let mut layers = Vec::new();
    for part in split::split(&built, &built_key.items, &original) {
        let key = ctx.key(&part.tree, &mut build_stat)?;
        let digests = ctx.cached_layer(&part.name, &part.tree, &key)?;
        layers.push((digests, format!("imgforge build: {}", part.name)));
    }
    // The Procfile wins over the buildpacks' default process types, type by type.
    let mut processes = outcome.default_process_types.clone();
    processes.extend(read_procfile(&build_dir)?);
    let release_env = outcome.config_vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(Produced { layers, processes, release_env, heroku: true, outcome: Some(outcome), ..Default::default() })
}

/// Owners a buildpack set inside the sandbox become the owners in the layer; what belongs
/// to root inside (the invoking user outside) gets the app owner, as on the host.
fn map_owners(tree: &mut Tree, runner: &crate::sandbox::Runner) {
    let Some(ids) = runner.ids() else { return };
    for e in &mut tree.entries {
        if let (Some(uid), Some(gid)) = (ids.inside_uid(e.host_uid), ids.inside_gid(e.host_gid)) {
            if (uid, gid) != (0, 0) {
                e.owner = Some(Owner { uid, gid });
            }
        }
    }
}

/// The sandbox buildpacks run in, or `None` to run them on the host (with a notice saying
/// why when `--isolation auto` fell back).
#[allow(clippy::too_many_arguments)]
fn sandbox_for(
    opts: &BuildOptions,
    store: &BlobStore,
    plan: &buildpack::Plan,
    work: &Path,
    build_dir: &Path,
    workdir: &str,
    (base_source, base, platform): (&Source, &BaseImage, &Platform),
    reporter: &dyn Reporter,
    extra_binds: Vec<crate::sandbox::Bind>,
) -> Result<Option<crate::sandbox::Sandbox>, BuildError> {
    use crate::sandbox::{rootfs, userns_available, Bind, Sandbox};
    let auto = opts.isolation == Isolation::Auto;
    let host = |why: String| -> Result<Option<Sandbox>, BuildError> {
        if opts.network == Network::None {
            return Err(BuildError::Invalid(format!(
                "--network none needs the userns sandbox, which is not available: {why}"
            )));
        }
        if auto {
            reporter.report(Event::Warning(format!("buildpacks run on the host: {why}")));
            reporter.report(Event::Isolation("on the host".into()));
            Ok(None)
        } else {
            Err(BuildError::Invalid(format!("--isolation userns: {why}")))
        }
    };
    if opts.isolation == Isolation::Host {
        if opts.network == Network::None {
            return Err(BuildError::Invalid("--network none needs --isolation userns (or auto)".into()));
        }
        reporter.report(Event::Isolation("on the host".into()));
        return Ok(None);
    }
    if let Err(why) = userns_available() {
        return host(why);
    }
    let separate;
    let (source, image, name) = match &opts.build_image {
        Some(r) => {
            let err = |source| BuildError::Base { reference: r.to_string(), source };
            let s = Source::open(r, &opts.transport()).map_err(err)?;
            let img = s.resolve(platform).map_err(err)?;
            separate = (s, img);
            (&separate.0, &separate.1, r.to_string())
        }
        None => (base_source, base, opts.base_name.clone()),
    };
    if image.manifest_digest.is_none() {
        return host(format!("the build image {name} is empty (scratch)"));
    }
    let facts = base_facts::base_facts(source, image, store).map_err(BuildError::Invalid)?;
    if !facts.has_shell {
        return host(format!("the build image {name} has no /bin/sh"));
    }
    let rootfs = rootfs::rootfs(source, image, store, reporter).map_err(|e| BuildError::Invalid(e.to_string()))?;
    let mut binds = vec![
        Bind { host: work.to_path_buf(), inside: "/imgforge/work".into() },
        Bind { host: build_dir.to_path_buf(), inside: workdir.to_string() },
    ];
    for (i, bp) in plan.buildpacks.iter().enumerate() {
        binds.push(Bind { host: bp.dir.clone(), inside: format!("/imgforge/buildpacks/{i}") });
    }
    binds.extend(extra_binds);
    match Sandbox::new(&rootfs.path, store.tmp_dir(), binds, opts.network) {
        Ok(sb) => {
            let net = if opts.network == Network::None { "no network" } else { "host network" };
            reporter.report(Event::Isolation(format!(
                "in a user namespace on {name} ({} root; {}; {net})",
                sb.root_kind(),
                sb.ids.describe()
            )));
            Ok(Some(sb))
        }
        Err(e) => host(e.to_string()),
    }
}

/// The base image's filesystem facts, learned on a background thread and waited for only
/// when first asked for.
struct LazyFacts {
    job: Option<std::thread::JoinHandle<Result<base_facts::BaseFacts, String>>>,
    value: Option<base_facts::BaseFacts>,
}

impl LazyFacts {
    fn start(opts: &BuildOptions, base: &BaseImage, platform: &Platform) -> LazyFacts {
        // The thread owns what it reads: its own handle on the source and the store.
        let (reference, base, platform, cache_dir, topts) =
            (opts.base.clone(), base.clone(), platform.clone(), opts.cache_dir.clone(), opts.transport());
        let job = std::thread::spawn(move || {
            let source = Source::open(&reference, &topts).map_err(|e| e.to_string())?;
            // A docker-archive learns where its blobs are while resolving.
            let base = match source {
                Source::DockerArchive(_) => source.resolve(&platform).map_err(|e| e.to_string())?,
                _ => base,
            };
            let store = BlobStore::open(&cache_dir).map_err(|e| e.to_string())?;
            base_facts::base_facts(&source, &base, &store)
        });
        LazyFacts { job: Some(job), value: None }
    }

    fn unneeded() -> LazyFacts {
        LazyFacts { job: None, value: Some(base_facts::BaseFacts::default()) }
    }

    fn get(&mut self) -> Result<&base_facts::BaseFacts, BuildError> {
        if let Some(job) = self.job.take() {
            let facts = job
                .join()
                .map_err(|_| {
                    BuildError::Invalid("Failed to inspect the base image: the inspecting thread panicked".into())
                })?
                .map_err(|e| BuildError::Invalid(format!("Failed to inspect the base image: {e}")))?;
            self.value = Some(facts);
        }
        Ok(self.value.as_ref().expect("set above or at construction"))
    }
}

/// Whole-build cache for buildpack builds: when every input is as it was, the buildpacks
/// are not run again and the previous image is written as it is.
struct BuildCache {
    dir: PathBuf,
}

/// Bump when the image a build produces for the same inputs changes.
const BUILD_FORMAT: &str = concat!("imgforge-build-v1 ", env!("CARGO_PKG_VERSION"));

impl BuildCache {
    fn open(store: &BlobStore) -> Result<BuildCache, BuildError> {
        Ok(BuildCache { dir: store.bucket(crate::store::buckets::BUILDS)? })
    }

    #[allow(clippy::too_many_arguments)]
    fn key(
        &self,
        opts: &BuildOptions,
        store: &BlobStore,
        app_key: &LayerKey,
        plan: &buildpack::Plan,
        base: &BaseImage,
        stack: &str,
        git: &git::GitInfo,
        workdir: &str,
        cnb: bool,
    ) -> Result<String, BuildError> {
        let mut bp_keys = Vec::new();
        for bp in &plan.buildpacks {
            bp_keys.push(source_key(store, &bp.source)?);
        }
        // CNB order entries are looked up in --buildpacks-dir and next to each buildpack.
        if cnb {
            let mut dirs: Vec<&Path> = plan.buildpacks.iter().filter_map(|b| b.source.parent()).collect();
            dirs.extend(opts.buildpacks_dir.as_deref());
            dirs.sort();
            dirs.dedup();
            for d in dirs {
                let found = buildpack::cnb::order::buildpack_dirs(d)
                    .map_err(|e| BuildError::Cnb { what: format!("Failed to read {}", d.display()), source: e })?;
                for bp in found {
                    bp_keys.push(source_key(store, &bp)?);
                }
            }
        }
        let selection = match plan.selection {
            buildpack::Selection::All => "all",
            buildpack::Selection::FirstThatDetects => "first",
        };
        let material = serde_json::json!({
            "format": BUILD_FORMAT,
            "app": app_key.key,
            "buildpacks": bp_keys,
            "selection": selection,
            "base": base.manifest_digest.map(|d| d.to_string()),
            "base_name": opts.base.portable_name(),
            "env": opts.env,
            "stack": stack,
            "git": [git.source, git.revision],
            "workdir": workdir,
            "default_process": opts.default_process,
            "platform": opts.platform.as_ref().map(ToString::to_string),
            "isolation": format!("{:?}", opts.isolation),
            "build_image": opts.build_image.as_ref().map(ToString::to_string),
            "network": format!("{:?}", opts.network),
        });
        Ok(imgforge_layers::Sha256Hash::of(&serde_json::to_vec(&material).expect("json")).hex())
    }

    fn get(&self, store: &BlobStore, key: &str) -> Option<NewImage> {
        let text = fs::read_to_string(self.dir.join(key)).ok()?;
        let manifest_digest: Digest = text.trim().parse().ok()?;
        let manifest = store.read_small(&manifest_digest, crate::image::manifest::MAX_MANIFEST_BYTES).ok()?;
        let crate::image::manifest::Document::Manifest(m) =
            crate::image::manifest::parse_document(&manifest, None, "cached build").ok()?
        else {
            return None;
        };
        let config = store.read_small(&m.config.digest, crate::image::manifest::MAX_CONFIG_BYTES).ok()?;
        let parsed = crate::image::manifest::parse_config(&config, "cached build").ok()?;
        let layers: Vec<BaseLayer> = m
            .layers
            .into_iter()
            .zip(parsed.diff_ids)
            .map(|(descriptor, diff_id)| BaseLayer { descriptor, diff_id })
            .collect();
        Some(NewImage {
            manifest,
            manifest_digest,
            manifest_media_type: crate::image::manifest::media::OCI_MANIFEST.into(),
            config,
            config_digest: m.config.digest,
            layers,
        })
    }

    fn put(&self, key: &str, manifest: &Digest) -> io::Result<()> {
        crate::store::write_hint(&self.dir.join(key), manifest.to_string().as_bytes())
    }
}

/// Identity of a buildpack source: its tree (through a stat cache) or its archive's bytes.
fn source_key(store: &BlobStore, path: &Path) -> Result<String, BuildError> {
    let what = || format!("Failed to read buildpack {}", path.display());
    if path.is_dir() {
        let tree = imgforge_layers::scan_tree(path, &|_, _| true).map_err(io_err(what()))?;
        let mut stat = StatCache::load(store, path)?;
        let opts = CompressOptions { compression: imgforge_layers::Compression::None, level: None, threads: 1 };
        let key = tree_key(&tree, b"", Owner { uid: 0, gid: 0 }, &Normalize::default(), &opts, &mut stat)
            .map_err(io_err(what()))?;
        let _ = stat.save();
        Ok(key.key)
    } else {
        let mut f = File::open(path).map_err(io_err(what()))?;
        let mut h = imgforge_layers::HashingReader::new(&mut f);
        io::copy(&mut h, &mut io::sink()).map_err(io_err(what()))?;
        Ok(h.finish().1.hex())
    }
}

/// Base layers (media types in OCI spelling, bytes untouched) followed by the new ones.
fn all_layers(base: &BaseImage, new: &[(LayerDigests, String)]) -> Vec<BaseLayer> {
    let mut out = base.oci_layers();
    out.extend(new.iter().map(|(l, _)| BaseLayer {
        descriptor: Descriptor::new(l.compression.media_type(), l.digest, l.size),
        diff_id: l.diff_id,
    }));
    out
}

/// Whether a directory holds a Cloud Native Buildpack (a subdirectory with buildpack.toml).
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
/// Which of the app's files go into the image: `.imgforgeignore` (gitignore syntax) is
/// honoured and `.git` is never taken.
pub struct AppFilter(ignore::gitignore::Gitignore);

impl AppFilter {
    pub fn load(app_dir: &Path) -> Result<AppFilter, BuildError> {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(app_dir);
        let ignore_file = app_dir.join(IGNORE_FILE);
        if ignore_file.is_file() {
            if let Some(e) = builder.add(&ignore_file) {
                return Err(BuildError::Invalid(format!("{}: {e}", ignore_file.display())));
            }
        }
        let matcher = builder.build().map_err(|e| BuildError::Invalid(format!("{}: {e}", ignore_file.display())))?;
        Ok(AppFilter(matcher))
    }

    pub fn includes(&self, rel: &Path, is_dir: bool) -> bool {
        !rel.iter().any(|c| c == ALWAYS_SKIPPED) && !self.0.matched(rel, is_dir).is_ignore()
    }

    /// Scans the app directory.
    pub fn scan(&self, app_dir: &Path) -> Result<Tree, BuildError> {
        scan_tree(app_dir, &|rel: &Path, is_dir: bool| self.includes(rel, is_dir))
            .map_err(io_err(format!("Failed to read the app directory {}", app_dir.display())))
    }
}

fn report_skipped(reporter: &dyn Reporter, tree: &Tree) {
    for s in &tree.skipped {
        reporter.report(Event::Warning(format!(
            "skipped {} {} (only files, directories and links go into layers)",
            s.what,
            s.rel.display()
        )));
    }
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
    fill: impl FnOnce(&mut LayerTar<'_>) -> io::Result<()>,
) -> Result<LayerDigests, BuildError> {
    let pending = store.pending()?;
    let file = pending.try_clone_file().map_err(io_err("Failed to open a temp file in the cache"))?;
    let writer = LayerWriter::new(BufWriter::with_capacity(1 << 20, WritebackFile::new(file)), compress)
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

/// The tar writer a layer is written through.
type LayerTar<'a> = TarWriter<Progress<'a, LayerWriter<BufWriter<WritebackFile>>>>;

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

    fn mount_source(&self, d: &Digest) -> Option<crate::image::reference::DockerName> {
        self.source.mount_source(d)
    }
}
