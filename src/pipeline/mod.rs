//! The build pipeline. [`build`] is the order of steps, each a named call:
//! check inputs → open the store → select the mode → resolve the base → stage the app →
//! the mode's result (from the step cache, or produced now) → add the launcher → compose
//! config and manifest → publish → commit what the mode left pending.
//!
//! What varies between builds lives behind small seams: the build mode ([`modes`]: plain
//! app, Heroku buildpacks, Cloud Native Buildpacks), the step cache ([`step_cache`]) that
//! wraps whichever mode runs, and the destinations (`transport::write`).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use imgforge_layers::{CompressOptions, Digest, LayerDigests, Owner};

use self::modes::BuildMode as _;
use crate::buildpack;
use crate::image::manifest::Platform;
use crate::image::reference::ImageRef;
use crate::report::Reporter;
use crate::sandbox::{rootfs::RootfsError, Isolation, Network, SandboxError, UsernsError};
use crate::store::{BlobStore, StoreError};
use crate::transport::{self, TransportError};

pub mod app;
pub mod base;
pub mod base_facts;
pub mod compose;
pub mod config;
pub mod git;
pub mod launch;
pub mod layers;
pub mod modes;
pub mod procfile;
pub mod publish;
pub mod split;
pub mod step_cache;

pub use app::IGNORE_FILE;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("Failed to read the base image {reference}")]
    Base { reference: String, source: TransportError },
    #[error("Failed to inspect the base image {reference}")]
    BaseFacts { reference: String, source: Arc<base_facts::FactsError> },
    #[error(transparent)]
    User(#[from] base_facts::UserError),
    #[error("Failed to write {reference}")]
    Destination { reference: String, source: TransportError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error("{}: {source}", path.display())]
    IgnoreFile { path: PathBuf, source: ignore::Error },
    #[error("{}: {source}", path.display())]
    Procfile { path: PathBuf, source: procfile::ProcfileError },
    #[error(transparent)]
    Slices(#[from] split::SliceError),
    #[error("{what}")]
    Buildpack { what: String, source: buildpack::HerokuError },
    #[error("{what}")]
    Cnb { what: String, source: buildpack::cnb::CnbError },
    #[error("Failed to prepare the build image {reference}")]
    BuildImage { reference: String, source: Box<RootfsError> },
    #[error("--isolation userns: the sandbox cannot be set up")]
    Sandbox { source: Box<SandboxError> },
    #[error("--network none needs the userns sandbox, which is not available: {source}")]
    NetworkNeedsSandbox { source: NoSandbox },
    #[error("--isolation userns: {source}")]
    IsolationUserns { source: NoSandbox },
    /// A usage or validation error: the message says what to change.
    #[error("{0}")]
    Invalid(String),
}

/// Why commands cannot run in the build-image sandbox (with `--isolation auto`, they then
/// run on the host).
#[derive(Debug, thiserror::Error)]
pub enum NoSandbox {
    #[error(transparent)]
    Userns(#[from] UsernsError),
    #[error("the build image {0} is empty (scratch)")]
    EmptyBuildImage(String),
    #[error("the build image {0} has no /bin/sh")]
    NoShell(String),
    #[error(transparent)]
    Setup(Box<SandboxError>),
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
    /// Absolute path of the app in the image [default: the mode's: /workspace, or /app for
    /// Heroku buildpacks].
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
    /// The buildpack modes' options.
    pub buildpacks: BuildpackOptions,
    /// Where commands (buildpacks) run.
    pub isolation: Isolation,
    /// The image commands run on in the sandbox (default: the base).
    pub build_image: Option<ImageRef>,
    pub network: Network,
    /// How to talk to registries (`--tls-verify`, `--authfile`).
    pub registry: transport::RegistryOptions,
}

/// What the buildpack modes (Heroku, CNB) take from the command line.
#[derive(Clone, Debug, Default)]
pub struct BuildpackOptions {
    /// `--buildpack` paths, in order.
    pub buildpacks: Vec<PathBuf>,
    pub buildpacks_dir: Option<PathBuf>,
    pub stack: Option<String>,
    /// Start the buildpacks' caches empty (and reuse no earlier result).
    pub clear_cache: bool,
    /// Build-only variables (`--build-env`): the buildpacks see them (ENV_DIR, CNB's platform
    /// env) after the `--env` ones, but they reach neither the image nor any cache or record.
    pub build_env: Vec<(String, String)>,
}

impl BuildOptions {
    /// What buildpacks see as config vars: `--env`, then `--build-env` (a later one wins).
    pub fn buildpack_vars(&self) -> Vec<(String, String)> {
        self.env.iter().chain(&self.buildpacks.build_env).cloned().collect()
    }

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

pub fn build(opts: &BuildOptions, reporter: &dyn Reporter) -> Result<BuildResult, BuildError> {
    let user_workdir = check_inputs(opts)?;
    let store = BlobStore::open(&opts.cache_dir)?;
    let _lock = store.lock(false)?;
    let mode = modes::select(opts, &store)?;
    let workdir = user_workdir.unwrap_or_else(|| mode.default_workdir().to_string());
    let base = base::ResolvedBase::resolve(opts, mode.needs_base_facts(), reporter)?;
    let layers = layers::LayerCtx::new(opts, &store, base.app_owner(opts.chown)?, &workdir, reporter)?;
    let mut app = app::StagedApp::stage(&opts.app_dir, &store, reporter)?;
    let steps = step_cache::LocalStepCache::open(&store)?;
    let mut cx = modes::BuildContext {
        opts,
        store: &store,
        layers: &layers,
        base: &base,
        app: &mut app,
        workdir: &workdir,
        steps: &steps,
        reporter,
    };
    let mut out = Box::new(step_cache::Cached::new(mode)).produce(&mut cx)?;
    app.save_stat();
    compose::add_launcher(&mut out, &layers, &base, opts.default_process.as_deref())?;
    let image = compose::image(opts, &store, &base, &app.git, &workdir, &out)?;
    publish::publish(opts, &image, &store, &base.source, reporter)?;
    for pending in out.pending {
        pending.commit(&store, &steps)?;
    }
    let layers = out.layers.into_iter().map(|l| l.digests).collect();
    Ok(BuildResult { manifest_digest: image.manifest_digest, config_digest: image.config_digest, layers })
}

/// What can be refused before any work: the app directory, the destinations, `--workdir`
/// (returned normalized).
fn check_inputs(opts: &BuildOptions) -> Result<Option<String>, BuildError> {
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
    opts.workdir.as_deref().map(validate_workdir).transpose()
}

/// An absolute path without `.` or `..` components, without a trailing `/`.
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
