//! Cloud Native Buildpacks as a build mode: run the buildpacks (see
//! [`crate::buildpack::cnb`]), then turn what they left into image layers, processes, the
//! launch environment and the labels the lifecycle writes.
//!
//! Image layers, in order: each buildpack's launch layers (group order, then layer name) at
//! `/layers/<escaped id>/<layer>`; the SBOM layer (`/layers/sbom/launch/<escaped
//! id>/[<layer>/]sbom.<ext>`, as the lifecycle lays it out); one layer per `[[slices]]`
//! entry that matches app files; the rest of the app. Layers are input-addressed through
//! the layer cache, so an unchanged launch layer is not written again. A launch layer whose
//! directory the buildpack left empty (only `<layer>.toml` written) is the previous image's
//! layer, taken from imgforge's record of that build.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imgforge_layers::{scan_tree, LayerDigests};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::buildpacks::{sweep_trash, DiscardWork, Found};
use super::isolation::{map_owners, sandbox_for};
use super::{BuildContext, BuildMode, ModeOutput, NewLayer, PendingCommit, Processes};
use crate::buildpack::cnb::descriptor::{escape_id, Descriptor};
use crate::buildpack::cnb::env::{changes_for_layer, Change, Phase};
use crate::buildpack::cnb::layers::Process;
use crate::buildpack::cnb::order::{self, Index};
use crate::buildpack::cnb::run::{self, Outcome, Platform, Record, CACHE_DIR, LAYERS};
use crate::buildpack::cnb::CnbError;
use crate::buildpack::{self, Selection};
use crate::pipeline::base::ResolvedBase;
use crate::pipeline::config::ConfigChanges;
use crate::pipeline::layers::LayerCtx;
use crate::pipeline::step_cache::StepCache;
use crate::pipeline::{io_err, launch, split, BuildError, BuildpackOptions};
use crate::report::Event;
use crate::sandbox::{Bind, Runner};
use crate::store::layer_cache::{digests_from_json, digests_json};
use crate::store::stat_cache::StatCache;
use crate::store::BlobStore;

pub const LABEL_BUILD: &str = "io.buildpacks.build.metadata";
pub const LABEL_LIFECYCLE: &str = "io.buildpacks.lifecycle.metadata";
pub const LABEL_PROJECT: &str = "io.buildpacks.project.metadata";
/// Where SBOM files go in the image.
pub const SBOM_DIR: &str = "layers/sbom/launch";

pub struct Cnb {
    found: Found,
}

impl Cnb {
    pub fn new(found: Found) -> Cnb {
        Cnb { found }
    }

    /// Where order entries are looked up: `--buildpacks-dir` and next to each buildpack.
    fn order_dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = self.found.plan.buildpacks.iter().filter_map(|b| b.source.parent()).collect();
        dirs.extend(self.found.options.buildpacks_dir.as_deref());
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

impl BuildMode for Cnb {
    fn name(&self) -> &'static str {
        "cnb"
    }

    fn needs_base_facts(&self) -> bool {
        true
    }

    fn may_reuse(&self) -> bool {
        !self.found.options.clear_cache
    }

    /// The buildpacks, and every buildpack an order entry may name.
    fn definition(&self, cx: &BuildContext<'_>) -> Result<Value, BuildError> {
        let mut candidates = Vec::new();
        for d in self.order_dirs() {
            candidates
                .extend(order::buildpack_dirs(d).map_err(|e| cnb_err(&format!("Failed to read {}", d.display()), e))?);
        }
        self.found.definition(cx, &candidates)
    }

    fn produce(self: Box<Self>, cx: &mut BuildContext<'_>) -> Result<ModeOutput, BuildError> {
        sweep_trash(cx.store);
        let distro = cx.base.facts()?.distro();
        let Found { work, plan, options } = self.found;
        let mut out = cnb_layers(cx, &plan, &options, work.path(), distro)?;
        out.pending.push(Box::new(DiscardWork(work)));
        Ok(out)
    }
}

/// What must happen once the image is written: the kept state replaced.
struct KeepState {
    outcome: Outcome,
    record: Record,
    work: PathBuf,
    dest: PathBuf,
}

impl PendingCommit for KeepState {
    fn commit(self: Box<Self>, store: &BlobStore, _: &dyn StepCache) -> Result<(), BuildError> {
        run::commit(&self.outcome, &self.record, &self.work, &self.dest, &store.trash_dir())
            .map_err(|e| cnb_err("Failed to keep the buildpacks' cache", e))
    }
}

fn cnb_err(what: &str, source: CnbError) -> BuildError {
    BuildError::Cnb { what: what.to_string(), source }
}

fn cnb_layers(
    cx: &mut BuildContext<'_>,
    plan: &buildpack::Plan,
    options: &BuildpackOptions,
    work: &Path,
    distro: Option<(String, String)>,
) -> Result<ModeOutput, BuildError> {
    let (opts, store, reporter, workdir, ctx) = (cx.opts, cx.store, cx.reporter, cx.workdir, cx.layers);
    let base: &ResolvedBase = cx.base;
    let platform = &base.platform;
    // The buildpacks, and where order entries are looked up.
    let mut index = Index::default();
    if let Some(dir) = &options.buildpacks_dir {
        index.add_dir(dir).map_err(|e| cnb_err("Failed to read --buildpacks-dir", e))?;
    }
    let mut top = Vec::new();
    for bp in &plan.buildpacks {
        let d = Descriptor::load(&bp.dir).map_err(|e| cnb_err(&format!("Failed to read buildpack {}", bp.name), e))?;
        if let Some(parent) = bp.source.parent() {
            for e in index.add_dir_lenient(parent) {
                reporter.report(Event::Warning(format!("a buildpack next to {} cannot be used: {e}", bp.name)));
            }
        }
        top.push(index.add(d));
    }
    let groups: Vec<Vec<(Arc<Descriptor>, bool)>> = match plan.selection {
        Selection::All => vec![top.into_iter().map(|d| (d, false)).collect()],
        Selection::FirstThatDetects => {
            top.into_iter().filter(|d| !index.is_referenced(&d.info.id)).map(|d| vec![(d, false)]).collect()
        }
    };

    // The app, a private copy, at its image path during the build.
    let app = work.join("app");
    let mut build_stat = StatCache::ephemeral();
    let (scanned, app_stat) = cx.app.scan_with_stat(ctx)?;
    split::copy_app(&scanned.tree, &app, app_stat, &mut build_stat)
        .map_err(io_err(format!("Failed to copy the app into {}", app.display())))?;
    std::thread::sleep(std::time::Duration::from_millis(20));

    let state = state_dir(store, &ctx.scope)?;
    let previous = if options.clear_cache { Record::default() } else { run::load_record(&state) };
    let cache = state.join(CACHE_DIR);
    let cnb_work = work.join("cnb");
    fs::create_dir_all(&cnb_work).map_err(io_err(format!("Failed to create {}", cnb_work.display())))?;
    // Buildpacks run elsewhere (their own root): every path they are given is absolute.
    let cnb_work = fs::canonicalize(&cnb_work).map_err(io_err(format!("Failed to resolve {}", cnb_work.display())))?;
    let app = fs::canonicalize(&app).map_err(io_err(format!("Failed to resolve {}", app.display())))?;
    reporter.report(Event::Step("Running buildpacks"));
    // In the build-image sandbox: the layers at /layers, every buildpack an order may name at
    // the lifecycle's /cnb/buildpacks/<id>/<version> (the app and the work dir are bound by
    // `sandbox_for`). On the host, a host-tree runner puts the layers and the app there.
    let layers_root = cnb_work.join("layers");
    fs::create_dir_all(&layers_root).map_err(io_err(format!("Failed to create {}", layers_root.display())))?;
    let mut binds = vec![Bind { host: layers_root.clone(), inside: run::LAYERS.into() }];
    for d in index.all() {
        let inside = format!("/cnb/buildpacks/{}/{}", escape_id(&d.info.id), d.info.version.replace('/', "_"));
        binds.push(Bind { host: d.dir.clone(), inside });
    }
    let runner = match sandbox_for(cx, plan, work, &app, binds)? {
        Some(sb) => Runner::image(sb),
        // On the host too, the layers and the app must be at their image paths.
        None => {
            let root = cnb_work.join("root");
            fs::create_dir_all(&root).map_err(io_err(format!("Failed to create {}", root.display())))?;
            let binds = [
                Bind { host: layers_root.clone(), inside: LAYERS.into() },
                Bind { host: app.clone(), inside: workdir.into() },
            ];
            Runner::host_tree(&root, &binds)
                .map_err(|e| cnb_err("Buildpack build failed", CnbError::Sandbox(Box::new(e))))?
        }
    };
    let vars = opts.buildpack_vars();
    let p = Platform {
        app: &app,
        workdir,
        work: &cnb_work,
        env: &vars,
        previous: &previous,
        cache: (!options.clear_cache).then_some(cache.as_path()),
        os: &platform.os,
        arch: &platform.architecture,
        distro: distro.as_ref().map(|(n, v)| (n.as_str(), v.as_str())),
        reporter,
        runner: &runner,
    };
    let outcome = run::run(&groups, &index, &p);
    // Files the buildpacks chowned to other uids: readable by us, writable by nobody else;
    // all ours again once the layers are written.
    if let Err(e) = runner.make_host_accessible(work) {
        reporter.report(Event::Warning(format!("Failed to make the build directory readable: {e}")));
    }
    let warn = |e| reporter.report(Event::Warning(format!("Failed to take back the build directory: {e}")));
    let _give_back = runner.give_back_on_drop(work, &warn);
    let outcome = outcome.map_err(|e| cnb_err("Buildpack build failed", e))?;
    let mut record = run::record(&outcome);

    reporter.report(Event::Detail("Writing the buildpacks' layers".into()));
    let mut layers: Vec<NewLayer> = Vec::new();
    let mut lifecycle_bps = Vec::new();
    let mut launch_layers: Vec<(String, PathBuf)> = Vec::new(); // (inside path, host dir for env)
    let mut sboms: Vec<(String, PathBuf)> = Vec::new(); // (path in image, host file)
    for b in &outcome.built {
        let id = &b.bp.info.id;
        let esc = escape_id(id);
        let mut layer_meta = serde_json::Map::new();
        for l in &b.output.layers {
            if l.toml.types.launch && l.dir.join("exec.d").exists() {
                return Err(BuildError::Invalid(format!(
                    "buildpack {}: layer {} has exec.d, which imgforge does not support (its launcher is a shell script, without the lifecycle's exec.d runner); write the variables to env.launch/ instead",
                    b.bp.key(),
                    l.name
                )));
            }
            let mut meta = json!({
                "data": serde_json::to_value(&l.toml.metadata).unwrap_or(Value::Null),
                "launch": l.toml.types.launch, "build": l.toml.types.build, "cache": l.toml.types.cache,
            });
            if l.toml.types.launch {
                let inside = format!("{LAYERS}/{esc}/{}", l.name);
                let name = format!("{id}:{}", l.name);
                let (digests, env_dir) = if l.metadata_only() {
                    let prev = previous.buildpacks.get(id).and_then(|r| r.layers.get(&l.name));
                    let reused = prev
                        .and_then(|r| r.image_layer.as_ref())
                        .and_then(digests_from_json)
                        .filter(|d| store.contains(&d.digest))
                        .ok_or_else(|| {
                            BuildError::Invalid(format!(
                                "buildpack {}: launch layer {} has no contents and there is no previous image layer to reuse (write the layer's files, or keep the previous build's cache)",
                                b.bp.key(),
                                l.name
                            ))
                        })?;
                    reporter.report(Event::LayerDone {
                        name: &name,
                        digests: &reused,
                        reused: true,
                        why: Some("only its metadata was written: the previous image's layer"),
                    });
                    let snapshot = prev.and_then(|r| r.env_snapshot.clone()).unwrap_or_default();
                    let dir = cnb_work.join("reused").join(&esc).join(&l.name);
                    run::materialize_snapshot(&snapshot, &dir)
                        .map_err(io_err(format!("Failed to restore the env files of layer {name}")))?;
                    (reused, dir)
                } else {
                    let prefix = format!("layers/{esc}/{}", l.name);
                    let digests = layer_from_dir(ctx, &name, &l.dir, &prefix, Some(&runner))?;
                    (digests, l.dir.clone())
                };
                if let Some(r) = record.buildpacks.get_mut(id).and_then(|r| r.layers.get_mut(&l.name)) {
                    r.image_layer = Some(digests_json(&digests));
                    r.env_snapshot = Some(
                        run::snapshot(&env_dir).map_err(io_err(format!("Failed to read the env files of {name}")))?,
                    );
                }
                meta["sha"] = json!(digests.diff_id.to_string());
                layers.push(NewLayer { name, created_by: format!("imgforge build: layer {inside}"), digests });
                launch_layers.push((inside, env_dir));
                for (ext, file) in &l.sboms {
                    sboms.push((format!("{SBOM_DIR}/{esc}/{}/sbom.{ext}", l.name), file.clone()));
                }
            }
            layer_meta.insert(l.name.clone(), meta);
        }
        for (ext, file) in &b.output.launch_sboms {
            sboms.push((format!("{SBOM_DIR}/{esc}/sbom.{ext}"), file.clone()));
        }
        let mut entry = json!({ "key": id, "version": b.bp.info.version, "layers": layer_meta });
        if let Some(s) = &b.output.store {
            entry["store"] = json!({ "metadata": serde_json::to_value(&s.metadata).unwrap_or(Value::Null) });
        }
        lifecycle_bps.push(entry);
    }
    let mut lifecycle = json!({ "buildpacks": lifecycle_bps });
    if !sboms.is_empty() {
        let dir = cnb_work.join("sbom");
        for (inside, file) in &sboms {
            let to = dir.join(inside.trim_start_matches(&format!("{SBOM_DIR}/")));
            fs::create_dir_all(to.parent().unwrap_or(&dir))
                .map_err(io_err(format!("Failed to create {}", dir.display())))?;
            fs::copy(file, &to).map_err(io_err(format!("Failed to copy {}", file.display())))?;
        }
        let digests = layer_from_dir(ctx, "sbom", &dir, SBOM_DIR, None)?;
        lifecycle["sbom"] = json!({ "sha": digests.diff_id.to_string() });
        layers.push(NewLayer { name: "sbom".into(), created_by: "imgforge build: SBOM".into(), digests });
    }

    // The app: slices first, then the rest.
    let globs: Vec<Vec<String>> =
        outcome.built.iter().flat_map(|b| b.output.launch.slices.iter().map(|s| s.paths.clone())).collect();
    let mut built =
        scan_tree(&app, &|_, _| true).map_err(io_err(format!("Failed to read the built app in {}", app.display())))?;
    map_owners(&mut built, &runner);
    let parts = split::slices(&built, &globs)?;
    let mut app_shas = Vec::new();
    for part in parts {
        let key = ctx.key(&part.tree, &mut build_stat)?;
        let digests = ctx.cached_layer(&part.name, &part.tree, &key)?;
        app_shas.push(json!({ "sha": digests.diff_id.to_string() }));
        let created_by = format!("imgforge build: {} at {workdir}", part.name);
        layers.push(NewLayer { name: part.name, created_by, digests });
    }
    lifecycle["app"] = json!(app_shas);
    if let Some(top) = base.image.layers.last() {
        lifecycle["runImage"] = json!({
            "topLayer": top.diff_id.to_string(),
            "reference": base.image.manifest_digest.map(|d| d.to_string()).unwrap_or_default(),
        });
    }

    // Processes in the order declared; a later buildpack's type replaces an earlier one's
    // (and moves to its place, as the lifecycle merges them); the last default wins.
    let mut procs: Vec<(String, String, Process)> = Vec::new();
    let mut default = None;
    for b in &outcome.built {
        for p in &b.output.launch.processes {
            if p.default {
                default = Some(p.kind.clone());
            }
            procs.retain(|(kind, _, _)| *kind != p.kind);
            procs.push((p.kind.clone(), b.bp.info.id.clone(), p.clone()));
        }
    }
    let mut processes = BTreeMap::new();
    let mut build_procs = Vec::new();
    for (kind, bp_id, p) in &procs {
        let (argv, shell) = p.argv();
        processes.insert(kind.clone(), launch::sh_command(&argv, shell, p.working_dir.as_deref()));
        let (command, args) = match &p.command {
            crate::buildpack::cnb::layers::Command::List(c) => (json!(c), json!(p.args)),
            crate::buildpack::cnb::layers::Command::One(c) => (json!([c]), json!(p.args)),
        };
        let mut v = json!({
            "type": kind, "command": command, "args": args, "direct": !shell,
            "default": default.as_deref() == Some(kind.as_str()), "buildpackID": bp_id,
        });
        if let Some(w) = &p.working_dir {
            v["working-dir"] = json!(w);
        }
        build_procs.push(v);
    }
    let mut launch_env = BTreeMap::new();
    for name in procs.iter().map(|(kind, _, _)| kind.as_str()).chain(["_"]) {
        let process = (name != "_").then_some(name);
        let mut changes: Vec<Change> = Vec::new();
        let mut sources = Vec::new();
        for (inside, host) in &launch_layers {
            changes.extend(
                changes_for_layer(inside, host, Phase::Launch, process)
                    .map_err(io_err(format!("Failed to read the env files of {}", host.display())))?,
            );
            sources.extend(profile_scripts(inside, host, process));
        }
        sources.push(format!("{workdir}/.profile"));
        launch_env.insert(name.to_string(), launch::cnb_env_script(&changes, &sources));
    }

    let buildpacks: Vec<Value> = outcome
        .built
        .iter()
        .map(|b| {
            let mut v = json!({ "id": b.bp.info.id, "version": b.bp.info.version });
            if !b.bp.info.homepage.is_empty() {
                v["homepage"] = json!(b.bp.info.homepage);
            }
            v
        })
        .collect();
    let mut labels = BTreeMap::new();
    labels.insert(
        LABEL_BUILD.to_string(),
        json!({ "buildpacks": buildpacks, "processes": build_procs, "bom": null, "launcher": {} }).to_string(),
    );
    labels.insert(LABEL_LIFECYCLE.to_string(), lifecycle.to_string());
    let git = &cx.app.git;
    let project = match (&git.source, &git.revision) {
        (_, Some(rev)) => {
            json!({ "source": { "type": "git", "version": { "commit": rev }, "metadata": { "repository": git.source } } })
        }
        _ => json!({}),
    };
    labels.insert(LABEL_PROJECT.to_string(), project.to_string());
    for b in &outcome.built {
        for l in &b.output.launch.labels {
            labels.insert(l.key.clone(), l.value.clone());
        }
    }
    Ok(ModeOutput {
        layers,
        config: ConfigChanges { labels, ..Default::default() },
        processes: Processes { commands: processes, default },
        launch_env,
        pending: vec![Box::new(KeepState { outcome, record, work: cnb_work, dest: state })],
        ..Default::default()
    })
}

/// `profile.d/*` then `profile.d/<process>/*` of one layer, as paths inside the image.
fn profile_scripts(inside: &str, host: &Path, process: Option<&str>) -> Vec<String> {
    let list = |rel: &str| -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(host.join(rel))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.into_iter().map(|n| format!("{inside}/{rel}/{n}")).collect()
    };
    let mut out = list("profile.d");
    if let Some(p) = process {
        out.extend(list(&format!("profile.d/{p}")));
    }
    out
}

/// One layer of a directory's contents at `prefix` in the image, through the layer cache.
fn layer_from_dir(
    ctx: &LayerCtx<'_>,
    name: &str,
    dir: &Path,
    prefix: &str,
    runner: Option<&Runner>,
) -> Result<LayerDigests, BuildError> {
    let mut tree = scan_tree(dir, &|_, _| true).map_err(io_err(format!("Failed to read {}", dir.display())))?;
    if let Some(runner) = runner {
        map_owners(&mut tree, runner);
    }
    let sub = ctx.at(prefix);
    let key = sub.key(&tree, &mut StatCache::ephemeral())?;
    sub.cached_layer(name, &tree, &key)
}

/// Where imgforge keeps an app's CNB state (record and cache layers).
fn state_dir(store: &BlobStore, scope: &str) -> Result<PathBuf, BuildError> {
    Ok(store.bucket(crate::store::buckets::CNB_STATE)?.join(hex::encode(Sha256::digest(scope.as_bytes()))))
}
