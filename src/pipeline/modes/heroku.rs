//! Heroku-classic buildpacks (see [`crate::buildpack`]): they compile a private copy of the
//! app at its workdir (`/app` by default), in the build-image sandbox or on the host. The
//! result is split into layers that change at different rates ([`crate::pipeline::split`]):
//! runtime directories, other changes, the unchanged app. The Procfile wins over the
//! buildpacks' default process types; `bin/release` config vars become image env, below the
//! user's `--env`; `HOME` defaults to the workdir (their profile scripts look there). The new
//! `CACHE_DIR`s replace the kept ones only once the whole build succeeded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::buildpacks::{sweep_trash, DiscardWork, Found};
use super::isolation::{map_owners, sandbox_for};
use super::{BuildContext, BuildMode, ModeOutput, NewLayer, PendingCommit, Processes};
use crate::buildpack;
use crate::pipeline::app::read_procfile;
use crate::pipeline::step_cache::StepCache;
use crate::pipeline::{io_err, split, BuildError};
use crate::report::Event;
use crate::sandbox::Runner;
use crate::store::stat_cache::StatCache;
use crate::store::BlobStore;

const DEFAULT_STACK: &str = "heroku-24";
const STACK_LABEL: &str = "io.buildpacks.stack.id";

pub struct Heroku {
    found: Found,
}

impl Heroku {
    pub fn new(found: Found) -> Heroku {
        Heroku { found }
    }

    /// The `STACK` buildpacks see: `--stack`, the base's stack label, or Heroku's current one.
    fn stack(&self, cx: &BuildContext<'_>) -> String {
        self.found
            .options
            .stack
            .clone()
            .or_else(|| cx.base.label(STACK_LABEL))
            .unwrap_or_else(|| DEFAULT_STACK.to_string())
    }
}

impl BuildMode for Heroku {
    fn name(&self) -> &'static str {
        "heroku"
    }

    fn default_workdir(&self) -> &'static str {
        "/app"
    }

    fn needs_base_facts(&self) -> bool {
        true
    }

    fn may_reuse(&self) -> bool {
        !self.found.options.clear_cache
    }

    fn definition(&self, cx: &BuildContext<'_>) -> Result<serde_json::Value, BuildError> {
        let mut d = self.found.definition(cx, &[])?;
        d["stack"] = json!(self.stack(cx));
        Ok(d)
    }

    /// Runs the buildpacks on a private copy of the app and splits the result into layers.
    fn produce(self: Box<Self>, cx: &mut BuildContext<'_>) -> Result<ModeOutput, BuildError> {
        sweep_trash(cx.store);
        let stack = self.stack(cx);
        let Found { work, plan, options } = self.found;
        let work_dir = work.path();
        let (opts, store, layers) = (cx.opts, cx.store, cx.layers);
        let build_dir = work_dir.join("app");

        let mut build_stat = StatCache::ephemeral();
        let (app, app_stat) = cx.app.scan_with_stat(layers)?;
        split::copy_app(&app.tree, &build_dir, app_stat, &mut build_stat)
            .map_err(io_err(format!("Failed to copy the app into {}", build_dir.display())))?;
        // What each of the app's files was, to tell what compile changed.
        let original: HashMap<PathBuf, String> =
            app.tree.entries.iter().map(|e| e.rel.clone()).zip(app.key.items.iter().map(|i| i.1.clone())).collect();
        // Primed hashes rely on ctime showing any later change: let the clock move past our copies.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let removed = buildpack::apply_slugignore(&build_dir)
            .map_err(|e| BuildError::Buildpack { what: "Failed to apply .slugignore".into(), source: e })?;
        for r in removed {
            cx.reporter.report(Event::Detail(format!(".slugignore removed {}", r.display())));
        }
        cx.reporter.report(Event::Step("Running buildpacks"));
        let env = buildpack::HerokuEnv {
            config_vars: opts.buildpack_vars(),
            stack: stack.to_string(),
            source_version: cx.app.git.revision.clone(),
        };
        let cache_root = store.bucket(crate::store::buckets::BUILDPACK_CACHE)?;
        let runner = sandbox_for(cx, &plan, work_dir, &build_dir, Vec::new())?.map_or_else(Runner::host, Runner::image);
        let caches = buildpack::Caches { root: &cache_root, app_key: &layers.scope, clear: options.clear_cache };
        let outcome = buildpack::run(&plan, &build_dir, work_dir, &caches, &env, cx.reporter, &runner);
        // Files the buildpacks chowned to other uids: readable by us, writable by nobody else;
        // all ours again once the layers are written.
        if let Err(e) = runner.make_host_accessible(work_dir) {
            cx.reporter.report(Event::Warning(format!("Failed to make the build directory readable: {e}")));
        }
        let reporter = cx.reporter;
        let warn = |e| reporter.report(Event::Warning(format!("Failed to take back the build directory: {e}")));
        let give_back = runner.give_back_on_drop(work_dir, &warn);
        let outcome =
            outcome.map_err(|e| BuildError::Buildpack { what: "Buildpack build failed".into(), source: e })?;

        cx.reporter.report(Event::Detail("Splitting the built app into layers".into()));
        let new_layers = split_built(cx, &build_dir, &original, &runner, &mut build_stat)?;
        // The Procfile wins over the buildpacks' default process types, type by type.
        let mut commands = outcome.default_process_types.clone();
        commands.extend(read_procfile(&build_dir)?);
        let mut out = ModeOutput {
            layers: new_layers,
            processes: Processes { commands, default: None },
            env_defaults: vec![("HOME".to_string(), cx.workdir.to_string())],
            ..Default::default()
        };
        out.config.env = outcome.config_vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.pending.push(Box::new(KeepCaches(outcome)));
        drop(give_back);
        out.pending.push(Box::new(DiscardWork(work)));
        Ok(out)
    }
}

/// The layers of the built app: what compile added or changed, apart from the unchanged app.
fn split_built(
    cx: &BuildContext<'_>,
    build_dir: &Path,
    original: &HashMap<PathBuf, String>,
    runner: &Runner,
    build_stat: &mut StatCache,
) -> Result<Vec<NewLayer>, BuildError> {
    let layers = cx.layers;
    let mut built = imgforge_layers::scan_tree(build_dir, &|_, _| true)
        .map_err(io_err(format!("Failed to read the built app in {}", build_dir.display())))?;
    map_owners(&mut built, runner);
    let built_key = layers.key(&built, build_stat)?;
    let mut out = Vec::new();
    for part in split::split(&built, &built_key.items, original) {
        let key = layers.key(&part.tree, build_stat)?;
        let digests = layers.cached_layer(&part.name, &part.tree, &key)?;
        out.push(NewLayer { created_by: format!("imgforge build: {}", part.name), name: part.name, digests });
    }
    Ok(out)
}

/// The buildpacks' new `CACHE_DIR`s, kept once the build succeeded.
struct KeepCaches(buildpack::Outcome);

impl PendingCommit for KeepCaches {
    fn commit(self: Box<Self>, store: &BlobStore, _: &dyn StepCache) -> Result<(), BuildError> {
        self.0
            .commit_caches(&store.trash_dir())
            .map_err(|e| BuildError::Buildpack { what: "Failed to keep the buildpack caches".into(), source: e })
    }
}
