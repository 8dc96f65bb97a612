//! Build modes: what turns the staged app into new layers on top of the base. Each mode is
//! one [`BuildMode`] in its own file, and all return the same [`ModeOutput`]; the pipeline
//! never asks which one it has.
//!
//! - [`plain::PlainApp`]: the app's files as one layer at the workdir, the processes of its
//!   `Procfile`. A first build from a path streams the files into the layer while reading
//!   them, without keying them first.
//! - [`heroku::Heroku`]: Heroku-classic buildpacks (`bin/detect`, `bin/compile`,
//!   `bin/release`) compile a private copy of the app at `/app`; the result is split into
//!   runtime layers and the app layer, the Procfile wins over the buildpacks' default
//!   processes, `bin/release` config vars become image env. Their new `CACHE_DIR`s are a
//!   pending commit.
//! - [`cnb::Cnb`]: Cloud Native Buildpacks (Buildpack API 0.7–0.12, no lifecycle) build
//!   the app at `/workspace`; launch layers, the SBOM layer, `[[slices]]` and the rest of
//!   the app become layers, `launch.toml` gives processes, the launch environment and
//!   labels. The kept state (record, cache layers) is a pending commit.
//!
//! Which mode runs is decided once, by [`select`]; the step cache wraps whichever it is
//! ([`super::step_cache::Cached`]).

use std::collections::BTreeMap;

use imgforge_layers::LayerDigests;
use serde::{Deserialize, Serialize};

use super::app::StagedApp;
use super::base::ResolvedBase;
use super::config::ConfigChanges;
use super::layers::LayerCtx;
use super::step_cache::StepCache;
use super::{BuildError, BuildOptions};
use crate::report::Reporter;
use crate::store::BlobStore;

mod buildpacks;
pub mod cnb;
pub mod heroku;
mod isolation;
pub mod plain;

/// One way of building an image from an app.
pub trait BuildMode {
    /// For messages and the step key: `app`, `heroku`, `cnb`.
    fn name(&self) -> &'static str;

    /// Where the app goes in the image unless `--workdir` says otherwise.
    fn default_workdir(&self) -> &'static str {
        "/workspace"
    }

    /// Whether the mode reads the base's filesystem facts (shell, accounts, distribution):
    /// they are then learned beside the build from the start.
    fn needs_base_facts(&self) -> bool;

    /// Whether a first build may stream the app into its layer while reading it, with no
    /// key computed first (and so no earlier result looked up).
    fn streams_first_build(&self) -> bool {
        false
    }

    /// Whether an earlier build's result may be reused (`--clear-cache` says no).
    fn may_reuse(&self) -> bool {
        true
    }

    /// Everything besides the base and the app's files that decides what [`produce`]
    /// returns (the step definition).
    ///
    /// [`produce`]: BuildMode::produce
    fn definition(&self, cx: &BuildContext<'_>) -> Result<serde_json::Value, BuildError>;

    /// Builds: new layers (written to the store), config changes, processes.
    fn produce(self: Box<Self>, cx: &mut BuildContext<'_>) -> Result<ModeOutput, BuildError>;
}

/// What a mode works with.
pub struct BuildContext<'a> {
    /// The options every mode shares (env, where commands run, registries).
    pub opts: &'a BuildOptions,
    pub store: &'a BlobStore,
    /// Layer settings and the layer cache.
    pub layers: &'a LayerCtx<'a>,
    pub base: &'a ResolvedBase,
    pub app: &'a mut StagedApp,
    /// Where the app lives in the image (absolute, validated).
    pub workdir: &'a str,
    pub steps: &'a dyn StepCache,
    pub reporter: &'a dyn Reporter,
}

/// What every mode returns.
#[derive(Default)]
pub struct ModeOutput {
    /// The new layers, in image order.
    pub layers: Vec<NewLayer>,
    /// Set in the config. Its env goes below the user's `--env`.
    pub config: ConfigChanges,
    /// Env set only when neither the base, the mode nor the user sets it.
    pub env_defaults: Vec<(String, String)>,
    pub processes: Processes,
    /// Launch env scripts by process type (`_` for other commands); empty: none.
    pub launch_env: BTreeMap<String, String>,
    /// Run in order once the image is written to every destination; dropped (undone)
    /// when the build fails.
    pub pending: Vec<Box<dyn PendingCommit>>,
}

/// A layer a mode made (written now or reused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLayer {
    /// For messages: `app`, `runtime:.heroku`, `imgforge-test/runtime:runtime`.
    pub name: String,
    /// The history's `created_by`.
    pub created_by: String,
    pub digests: LayerDigests,
}

/// The image's processes: commands by type, and the default one a mode chose (the user's
/// `--default-process` wins).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processes {
    pub commands: BTreeMap<String, String>,
    pub default: Option<String>,
}

/// Something a mode keeps only if the whole build succeeds (buildpack caches, CNB state,
/// step records).
pub trait PendingCommit {
    fn commit(self: Box<Self>, store: &BlobStore, steps: &dyn StepCache) -> Result<(), BuildError>;
}

/// The mode for `opts`: buildpacks when any are named, found in `--buildpacks-dir` or
/// listed by the app (`.buildpacks`, `project.toml`), of the kind they are; else the plain app.
pub fn select(opts: &BuildOptions, store: &BlobStore) -> Result<Box<dyn BuildMode>, BuildError> {
    let app_dir = &opts.app_dir;
    let bp = &opts.buildpacks;
    let uses_buildpacks = !bp.buildpacks.is_empty()
        || bp.buildpacks_dir.is_some()
        || app_dir.join(".buildpacks").is_file()
        || app_dir.join("project.toml").is_file();
    if !uses_buildpacks {
        return Ok(Box::new(plain::PlainApp::new(app_dir)));
    }
    let found = buildpacks::Found::plan(opts, store)?;
    Ok(if found.is_cnb()? { Box::new(cnb::Cnb::new(found)) } else { Box::new(heroku::Heroku::new(found)) })
}
