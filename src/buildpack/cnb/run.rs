//! Detect and build: the lifecycle's detector and builder. Scripts run through the build's
//! [`Runner`] (the build-image sandbox, or the host-tree namespace on the host); either way the
//! layers are at `/layers` and the app at its image path, and every path a script is given
//! is the path it has there.
//!
//! Every script runs with a cleared environment: `PATH` (fixed, as for Heroku builds, plus
//! earlier build layers' `bin`), `HOME` (a scratch directory), `LANG=C.UTF-8`, the
//! `CNB_*` variables of its phase and, unless the buildpack sets `clear-env`, the user's
//! `--env` variables (also given as files in `$CNB_PLATFORM_DIR/env/`). Detect and build get
//! the positional arguments older buildpacks read (`PLATFORM PLAN`, `LAYERS PLATFORM
//! PLAN`). Output goes to the reporter as it comes.
//!
//! Between builds, imgforge keeps per app a [`Record`] (each layer's metadata and, for
//! launch layers, its image layer) and the contents of `cache` layers. Before a buildpack
//! builds, `<layer>.toml` is restored with its `[metadata]` only (Buildpack API 0.6 and
//! later: the buildpack sets `[types]` again to keep a layer), cache layers get their
//! contents back and `store.toml` is restored. [`commit`] replaces the kept state only once
//! the whole build succeeded.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::descriptor::{escape_id, Descriptor};
use super::env::{changes_for_layer, Change, Env, Phase};
use super::layers::{read_output, Output, StoreToml, STORE_TOML};
use super::order::{expand, Index, Member};
use super::plan::{buildpack_plan, remove_met, resolve, DetectPlan, Entry, Passed, Unmet};
use super::{io_err, CnbError};
use crate::fsutil::{copy_tree, Links, RemoveOnDrop};
use crate::report::{Event, Reporter};
use crate::sandbox::process::{describe, Stream};
use crate::sandbox::runner::PATH;
use crate::sandbox::{Cmd, Exit, Runner};
use crate::store::swap::install;

/// Where layers are, during the build and in the image.
pub const LAYERS: &str = "/layers";

/// What imgforge keeps between builds of one app, per buildpack id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub buildpacks: BTreeMap<String, BuildpackRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildpackRecord {
    pub layers: BTreeMap<String, LayerRecord>,
    /// `store.toml`, as TOML text.
    #[serde(default)]
    pub store: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// `[metadata]`, as TOML text.
    pub metadata: String,
    pub launch: bool,
    pub build: bool,
    pub cache: bool,
    /// The image layer a launch layer became (set by the pipeline), to reuse when the
    /// buildpack writes only the `.toml` next time.
    #[serde(default)]
    pub image_layer: Option<serde_json::Value>,
    /// What the launch environment needs of a launch layer: see [`snapshot`].
    #[serde(default)]
    pub env_snapshot: Option<BTreeMap<String, String>>,
}

/// The parts of a layer the launch environment is computed from: `bin/` and `lib/` (as
/// markers), the files of `env/`, `env.launch/`, `env.launch/<process>/` (with contents)
/// and of `profile.d/`, `profile.d/<process>/` (names only). Kept so that a layer reused
/// from the previous image (its directory empty now) still gives its environment.
pub fn snapshot(layer: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for d in ["bin", "lib"] {
        if layer.join(d).is_dir() {
            out.insert(format!("{d}/"), String::new());
        }
    }
    fn files(
        dir: &Path,
        rel: &str,
        contents: bool,
        depth: u8,
        out: &mut BTreeMap<String, String>,
    ) -> std::io::Result<()> {
        let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
        for e in entries {
            let e = e?;
            let Ok(name) = e.file_name().into_string() else { continue };
            let path = e.path();
            let m = fs::metadata(&path)?;
            if m.is_file() {
                out.insert(format!("{rel}/{name}"), if contents { fs::read_to_string(&path)? } else { String::new() });
            } else if m.is_dir() && depth > 0 {
                files(&path, &format!("{rel}/{name}"), contents, depth - 1, out)?;
            }
        }
        Ok(())
    }
    files(&layer.join("env"), "env", true, 0, &mut out)?;
    files(&layer.join("env.launch"), "env.launch", true, 1, &mut out)?;
    files(&layer.join("profile.d"), "profile.d", false, 1, &mut out)?;
    Ok(out)
}

/// Writes a [`snapshot`] back as files under `dir`.
pub fn materialize_snapshot(snap: &BTreeMap<String, String>, dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for (rel, contents) in snap {
        if rel.split('/').any(|c| c == ".." || c == ".") || rel.starts_with('/') {
            continue;
        }
        let path = dir.join(rel);
        if rel.ends_with('/') {
            fs::create_dir_all(&path)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, contents)?;
    }
    Ok(())
}

/// What the platform gives the buildpacks.
pub struct Platform<'a> {
    /// The app's private copy (host path), and where it is inside (`/workspace`).
    pub app: &'a Path,
    pub workdir: &'a str,
    /// Scratch directory for this build (gets `layers/`, `platform/`, plans, `root/`).
    pub work: &'a Path,
    /// `--env`, in order.
    pub env: &'a [(String, String)],
    pub previous: &'a Record,
    /// Kept contents of cache layers: `<escaped id>/<layer>/`; `None` to start empty.
    pub cache: Option<&'a Path>,
    pub os: &'a str,
    pub arch: &'a str,
    /// The base image's distribution (os-release `ID`, `VERSION_ID`), if it says.
    pub distro: Option<(&'a str, &'a str)>,
    pub reporter: &'a dyn Reporter,
    /// Where scripts run: it puts the layers at `/layers` and the app at `workdir`.
    pub runner: &'a Runner,
}

/// One buildpack that built.
#[derive(Debug)]
pub struct Built {
    pub bp: Arc<Descriptor>,
    /// Host path of its layers directory.
    pub dir: PathBuf,
    pub output: Output,
}

#[derive(Debug)]
pub struct Outcome {
    pub built: Vec<Built>,
    /// Host path of the directory mounted at `/layers`.
    pub layers_root: PathBuf,
}

struct Ctx<'a> {
    p: &'a Platform<'a>,
    platform_dir: PathBuf,
    home: PathBuf,
}

/// Detects (trying each candidate group of each top-level group in order) then builds the
/// first group that passes.
pub fn run(top: &[Vec<(Arc<Descriptor>, bool)>], index: &Index, p: &Platform<'_>) -> Result<Outcome, CnbError> {
    let work = p.work;
    let layers_root = work.join("layers");
    let home = work.join("home");
    for d in [&layers_root, &home] {
        fs::create_dir_all(d).map_err(io_err(format!("Failed to create {}", d.display())))?;
    }
    // The `--env` values are secrets: gone when the buildpacks are done, whatever happened.
    let _secrets = RemoveOnDrop(work.join("platform").join("env"));
    let platform_dir = write_platform(work, p.env)?;
    let ctx = Ctx { p, platform_dir, home };

    let (group, entries) = detect(&ctx, top, index)?;
    let built = build(&ctx, &group, entries, &layers_root)?;
    Ok(Outcome { built, layers_root })
}

fn write_platform(work: &Path, vars: &[(String, String)]) -> Result<PathBuf, CnbError> {
    let dir = work.join("platform");
    let env = dir.join("env");
    fs::create_dir_all(&dir).map_err(io_err(format!("Failed to create {}", dir.display())))?;
    crate::fsutil::private_dir(&env)?;
    for (k, v) in vars {
        if !crate::buildpack::valid_var_name(k) {
            return Err(CnbError::Invalid(format!(
                "--env {k:?}: a name is a letter or '_' followed by letters, digits and '_'"
            )));
        }
        crate::fsutil::write_private(&env.join(k), v.as_bytes())?;
    }
    Ok(dir)
}

/// A detect's answer.
#[derive(Clone, Debug)]
enum Answer {
    Pass(DetectPlan),
    Fail(String),
}

fn detect(
    ctx: &Ctx<'_>,
    top: &[Vec<(Arc<Descriptor>, bool)>],
    index: &Index,
) -> Result<(Vec<Member>, Vec<Entry>), CnbError> {
    let mut answers: HashMap<String, Answer> = HashMap::new();
    let mut tried = Vec::new();
    for group in top {
        for candidate in expand(group, index)? {
            let mut passed = Vec::new();
            let mut members = Vec::new();
            let mut failed = None;
            for m in &candidate {
                let key = m.bp.key();
                let answer = match answers.get(&key) {
                    Some(a) => a.clone(),
                    None => {
                        let a = detect_one(ctx, &m.bp)?;
                        answers.insert(key.clone(), a.clone());
                        a
                    }
                };
                match answer {
                    Answer::Pass(plan) => {
                        passed.push(Passed { id: m.bp.info.id.clone(), optional: m.optional, plan });
                        members.push(m.clone());
                    }
                    Answer::Fail(_) if m.optional => {}
                    Answer::Fail(why) => {
                        failed = Some(format!("{key} did not pass detect ({why})"));
                        break;
                    }
                }
            }
            let names = candidate.iter().map(|m| m.bp.key()).collect::<Vec<_>>().join(", ");
            if let Some(why) = failed {
                tried.push(format!("[{names}]: {why}"));
                continue;
            }
            if passed.is_empty() {
                tried.push(format!("[{names}]: no buildpack passed detect"));
                continue;
            }
            match resolve(&passed) {
                Ok(r) => {
                    let group: Vec<Member> = r.members.iter().map(|&i| members[i].clone()).collect();
                    let list = group.iter().map(|m| m.bp.key()).collect::<Vec<_>>().join(", ");
                    ctx.p.reporter.report(Event::Detail(format!("group [{list}] passes detection")));
                    return Ok((group, r.entries));
                }
                Err(reasons) => {
                    let why = reasons.iter().map(Unmet::to_string).collect::<Vec<_>>().join("; ");
                    tried.push(format!("[{names}]: {why}"));
                }
            }
        }
    }
    Err(CnbError::NoGroup { tried })
}

fn script(bp: &Descriptor, name: &str) -> Result<PathBuf, CnbError> {
    use std::os::unix::fs::PermissionsExt;
    let path = bp.dir.join("bin").join(name);
    match fs::metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path),
        Ok(_) => Err(CnbError::File { path, why: format!("{}: not an executable file (chmod +x it)", bp.key()) }),
        Err(_) => Err(CnbError::File {
            path,
            why: format!("{}: missing (a buildpack needs bin/detect and bin/build)", bp.key()),
        }),
    }
}

impl Ctx<'_> {
    /// The environment of one script: base, user vars unless `clear-env`, then `changes`.
    fn env(&self, bp: &Descriptor, changes: &[Change]) -> Env {
        let mut env = Env::from_pairs([("PATH", PATH), ("LANG", "C.UTF-8")]);
        env.vars.insert("HOME".into(), self.inside(&self.home));
        if !bp.info.clear_env {
            for (k, v) in self.p.env {
                env.vars.insert(k.clone(), v.clone());
            }
        }
        for c in changes {
            env.apply(c);
        }
        env.vars.insert("CNB_PLATFORM_DIR".into(), self.inside(&self.platform_dir));
        env.vars.insert("CNB_BUILDPACK_DIR".into(), self.inside(&bp.dir));
        env.vars.insert("CNB_TARGET_OS".into(), self.p.os.into());
        env.vars.insert("CNB_TARGET_ARCH".into(), self.p.arch.into());
        if let Some((name, version)) = self.p.distro {
            env.vars.insert("CNB_TARGET_DISTRO_NAME".into(), name.into());
            env.vars.insert("CNB_TARGET_DISTRO_VERSION".into(), version.into());
        }
        env
    }

    /// A host path as the scripts see it.
    fn inside(&self, host: &Path) -> String {
        self.p.runner.inside(host).display().to_string()
    }

    /// A command for `program` (a host path), in the app, with `env`.
    fn command(&self, program: &Path, env: &Env) -> Cmd {
        let mut cmd = Cmd::new(self.inside(program));
        cmd.cwd(self.p.workdir).envs(env.vars.iter());
        cmd
    }

    /// Runs `cmd`, streaming its lines; a failure to start says why (and why the sandbox
    /// could not be entered, when it could not).
    fn run(
        &self,
        cmd: &Cmd,
        on_line: &(dyn Fn(Stream, &str) + Sync),
        path: &Path,
        who: &str,
    ) -> Result<Exit, CnbError> {
        self.p.runner.run(cmd, on_line).map_err(|source| CnbError::Start {
            who: who.to_string(),
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }
}

fn detect_one(ctx: &Ctx<'_>, bp: &Descriptor) -> Result<Answer, CnbError> {
    if !bp.targets.is_empty() && !bp.targets.iter().any(|t| t.matches(ctx.p.os, ctx.p.arch, ctx.p.distro)) {
        let distro = match ctx.p.distro {
            Some((name, version)) => format!(" ({name} {version})"),
            None => " (no os-release)".into(),
        };
        let why = format!("its [[targets]] do not include {}/{}{distro}", ctx.p.os, ctx.p.arch);
        ctx.p.reporter.report(Event::Detail(format!("{}: {why}", bp.key())));
        return Ok(Answer::Fail(why));
    }
    let path = script(bp, "detect")?;
    let dir = ctx.p.work.join("detect").join(escape_id(&bp.info.id));
    fs::create_dir_all(&dir).map_err(io_err(format!("Failed to create {}", dir.display())))?;
    let plan_path = dir.join("plan.toml");
    fs::write(&plan_path, "").map_err(io_err(format!("Failed to write {}", plan_path.display())))?;
    let mut env = ctx.env(bp, &[]);
    env.vars.insert("CNB_BUILD_PLAN_PATH".into(), ctx.inside(&plan_path));
    let mut cmd = ctx.command(&path, &env);
    cmd.arg(ctx.inside(&ctx.platform_dir)).arg(ctx.inside(&plan_path));
    let key = bp.key();
    let first = Mutex::new(None::<String>);
    let on_line = |_: Stream, line: &str| {
        let mut f = first.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() && !line.trim().is_empty() {
            *f = Some(line.trim().to_string());
        }
        drop(f);
        ctx.p.reporter.report(Event::Detail(format!("{key} bin/detect: {line}")));
    };
    let status = ctx.run(&cmd, &on_line, &path, &key)?.status;
    let answer = match status.code() {
        Some(0) => {
            let plan: DetectPlan = super::read_toml(&plan_path)?.unwrap_or_default();
            Answer::Pass(plan)
        }
        Some(100) => Answer::Fail("exit code 100".into()),
        _ => {
            let printed = first.into_inner().unwrap_or_else(|p| p.into_inner());
            return Err(CnbError::Failed {
                who: key,
                script: "bin/detect".into(),
                status: match printed {
                    Some(l) => format!(
                        "{} (detect fails with 100; anything else is an error), printing {l:?}",
                        describe(status)
                    ),
                    None => format!("{} (detect fails with 100; anything else is an error)", describe(status)),
                },
            });
        }
    };
    ctx.p.reporter.report(Event::Detected {
        candidate: &bp.key(),
        applies: matches!(answer, Answer::Pass(_)),
        detail: if matches!(answer, Answer::Pass(_)) { &bp.info.name } else { "" },
    });
    Ok(answer)
}

fn build(ctx: &Ctx<'_>, group: &[Member], mut entries: Vec<Entry>, layers_root: &Path) -> Result<Vec<Built>, CnbError> {
    let mut changes: Vec<Change> = Vec::new();
    let mut built = Vec::new();
    let plans = ctx.p.work.join("plans");
    fs::create_dir_all(&plans).map_err(io_err(format!("Failed to create {}", plans.display())))?;
    for m in group {
        let bp = &m.bp;
        let key = bp.key();
        let path = script(bp, "build")?;
        let esc = escape_id(&bp.info.id);
        let dir = layers_root.join(&esc);
        fs::create_dir_all(&dir).map_err(io_err(format!("Failed to create {}", dir.display())))?;
        restore(ctx, &bp.info.id, &dir)?;
        let plan_path = plans.join(format!("{esc}.toml"));
        let plan = buildpack_plan(&entries, &bp.info.id);
        let text =
            toml::to_string(&plan).map_err(|e| CnbError::Invalid(format!("Failed to write the plan of {key}: {e}")))?;
        fs::write(&plan_path, text).map_err(io_err(format!("Failed to write {}", plan_path.display())))?;
        let inside = format!("{LAYERS}/{esc}");
        let mut env = ctx.env(bp, &changes);
        env.vars.insert("CNB_LAYERS_DIR".into(), inside.clone());
        env.vars.insert("CNB_BP_PLAN_PATH".into(), ctx.inside(&plan_path));
        let mut cmd = ctx.command(&path, &env);
        cmd.arg(&inside).arg(ctx.inside(&ctx.platform_dir)).arg(ctx.inside(&plan_path));
        let on_line = |_: Stream, line: &str| ctx.p.reporter.report(Event::CommandOutput { from: &key, line });
        let Exit { status, abandoned } = ctx.run(&cmd, &on_line, &path, &key)?;
        if abandoned {
            ctx.p.reporter.report(Event::Warning(format!(
                "{key}: a process that bin/build left running still holds its output open; its further output is not shown"
            )));
        }
        if !status.success() {
            return Err(CnbError::Failed { who: key, script: "bin/build".into(), status: describe(status) });
        }
        let output = read_output(&dir, bp.api, &key)?;
        for l in output.layers.iter().filter(|l| l.toml.types.build) {
            let layer = format!("{inside}/{}", l.name);
            let c = changes_for_layer(&layer, &l.dir, Phase::Build, None)
                .map_err(io_err(format!("Failed to read the env of layer {}", l.dir.display())))?;
            changes.extend(c);
        }
        let unmet: Vec<String> = output.build.unmet.iter().map(|u| u.name.clone()).collect();
        remove_met(&mut entries, &bp.info.id, &unmet);
        built.push(Built { bp: bp.clone(), dir, output });
    }
    Ok(built)
}

/// Puts back what the previous build kept for buildpack `id`: launch and cache layers'
/// `<layer>.toml` (metadata only), cache layers' contents, `store.toml`.
fn restore(ctx: &Ctx<'_>, id: &str, dir: &Path) -> Result<(), CnbError> {
    let Some(rec) = ctx.p.previous.buildpacks.get(id) else { return Ok(()) };
    // Launch layers come back as metadata (their contents are in the image), cache layers
    // with their contents; build-only layers are not kept.
    for (name, l) in rec.layers.iter().filter(|(_, l)| l.launch || l.cache) {
        let toml_path = dir.join(format!("{name}.toml"));
        let metadata: toml::Table = toml::from_str(&l.metadata).unwrap_or_default();
        let text = if metadata.is_empty() {
            String::new()
        } else {
            let mut t = toml::Table::new();
            t.insert("metadata".into(), toml::Value::Table(metadata));
            toml::to_string(&t).unwrap_or_default()
        };
        fs::write(&toml_path, text).map_err(io_err(format!("Failed to write {}", toml_path.display())))?;
        if l.cache {
            if let Some(cache) = ctx.p.cache {
                let kept = cache.join(escape_id(id)).join(name);
                if kept.is_dir() {
                    copy_tree(&kept, &dir.join(name), 0, Links::Verbatim)?;
                }
            }
        }
    }
    if let Some(store) = &rec.store {
        let path = dir.join(STORE_TOML);
        fs::write(&path, store).map_err(io_err(format!("Failed to write {}", path.display())))?;
    }
    Ok(())
}

/// The record of this build (image layers are filled in by the pipeline).
pub fn record(outcome: &Outcome) -> Record {
    let mut r = Record::default();
    for b in &outcome.built {
        let mut rec = BuildpackRecord::default();
        for l in &b.output.layers {
            rec.layers.insert(
                l.name.clone(),
                LayerRecord {
                    metadata: toml::to_string(&l.toml.metadata).unwrap_or_default(),
                    launch: l.toml.types.launch,
                    build: l.toml.types.build,
                    cache: l.toml.types.cache,
                    image_layer: None,
                    env_snapshot: None,
                },
            );
        }
        rec.store = b.output.store.as_ref().map(|s: &StoreToml| {
            let mut t = toml::Table::new();
            t.insert("metadata".into(), toml::Value::Table(s.metadata.clone()));
            toml::to_string(&t).unwrap_or_default()
        });
        r.buildpacks.insert(b.bp.info.id.clone(), rec);
    }
    r
}

pub const RECORD_FILE: &str = "record.json";
pub const CACHE_DIR: &str = "cache";

/// Reads the kept state of an app: its record (empty when missing or unreadable).
pub fn load_record(state: &Path) -> Record {
    fs::read(state.join(RECORD_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Replaces the kept state at `dest` with this build's: `record` and the cache layers'
/// contents (moved out of the layers directory: call after the image is written).
pub fn commit(outcome: &Outcome, record: &Record, work: &Path, dest: &Path, trash: &Path) -> Result<(), CnbError> {
    let staged = work.join("state");
    let cache = staged.join(CACHE_DIR);
    fs::create_dir_all(&cache).map_err(io_err(format!("Failed to create {}", cache.display())))?;
    for b in &outcome.built {
        for l in b.output.layers.iter().filter(|l| l.toml.types.cache && l.dir.is_dir()) {
            let to = cache.join(escape_id(&b.bp.info.id));
            fs::create_dir_all(&to).map_err(io_err(format!("Failed to create {}", to.display())))?;
            fs::rename(&l.dir, to.join(&l.name))
                .map_err(io_err(format!("Failed to keep cache layer {}", l.dir.display())))?;
        }
    }
    let json = serde_json::to_vec_pretty(record).expect("json");
    fs::write(staged.join(RECORD_FILE), json).map_err(io_err("Failed to write the build record"))?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err(format!("Failed to create {}", parent.display())))?;
    }
    install(&staged, dest, trash).map_err(io_err(format!("Failed to save the CNB cache to {}", dest.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Silent;
    use std::os::unix::fs::PermissionsExt;

    fn buildpack(root: &Path, id: &str, detect: &str, build: &str) -> Arc<Descriptor> {
        let dir = root.join(escape_id(id));
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("buildpack.toml"), format!("api = \"0.10\"\n[buildpack]\nid = \"{id}\"\nversion = \"1\"\n"))
            .unwrap();
        for (name, body) in [("detect", detect), ("build", build)] {
            let p = dir.join("bin").join(name);
            fs::write(&p, format!("#!/bin/sh\nset -e\n{body}\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Arc::new(Descriptor::load(&dir).unwrap())
    }

    struct Fixture {
        _t: tempfile::TempDir,
        app: PathBuf,
        work: PathBuf,
        bps: PathBuf,
        runner: Runner,
    }

    fn fixture() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let (app, work, bps) = (t.path().join("app"), t.path().join("work"), t.path().join("bps"));
        for d in [&app, &work, &bps] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(app.join("package.json"), "{}").unwrap();
        let runner = host_tree(&t, &app, &work);
        Fixture { _t: t, app, work, bps, runner }
    }

    /// What the pipeline gives a CNB build on the host: the layers at /layers, the app at
    /// /workspace.
    fn host_tree(t: &tempfile::TempDir, app: &Path, work: &Path) -> Runner {
        use crate::sandbox::Bind;
        let root = t.path().join("root");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(work.join("layers")).unwrap();
        let binds = [
            Bind { host: work.join("layers"), inside: LAYERS.into() },
            Bind { host: app.to_path_buf(), inside: "/workspace".into() },
        ];
        Runner::host_tree(&root, &binds).unwrap()
    }

    fn platform<'a>(
        f: &'a Fixture,
        env: &'a [(String, String)],
        previous: &'a Record,
        cache: Option<&'a Path>,
    ) -> Platform<'a> {
        Platform {
            app: &f.app,
            workdir: "/workspace",
            work: &f.work,
            env,
            previous,
            cache,
            os: "linux",
            arch: "amd64",
            distro: Some(("debian", "12")),
            reporter: &Silent,
            runner: &f.runner,
        }
    }

    #[test]
    fn detects_resolves_and_builds_with_layers_at_slash_layers() {
        let f = fixture();
        let node = buildpack(
            &f.bps,
            "acme/node",
            r#"test -f package.json; printf '[[provides]]\nname = "node"\n' > "$CNB_BUILD_PLAN_PATH""#,
            r#"cat "$CNB_BP_PLAN_PATH" > "$CNB_LAYERS_DIR/plan-seen"
mkdir -p "$1/node/bin" "$1/node/env"
printf '#!/bin/sh\necho node-ran\n' > "$1/node/bin/node"; chmod +x "$1/node/bin/node"
printf 'v20' > "$1/node/env/NODE_VERSION"
printf '[types]\nbuild = true\nlaunch = true\n[metadata]\nv = "20"\n' > "$1/node.toml"
echo "$PWD $GREETING" > "$1/where""#,
        );
        let app = buildpack(
            &f.bps,
            "acme/app",
            r#"printf '[[requires]]\nname = "node"\n[requires.metadata]\nversion = "20"\n' > "$2""#,
            r#"node > "$CNB_LAYERS_DIR/out"; echo "$NODE_VERSION" >> "$CNB_LAYERS_DIR/out"
printf '[[processes]]\ntype = "web"\ncommand = ["node"]\ndefault = true\n' > "$1/launch.toml""#,
        );
        let env = [("GREETING".to_string(), "hi".to_string())];
        let previous = Record::default();
        let p = platform(&f, &env, &previous, None);
        let out = run(&[vec![(node, false), (app, false)]], &Index::default(), &p).unwrap();
        assert_eq!(out.built.len(), 2);
        let node_dir = &out.built[0].dir;
        assert_eq!(fs::read_to_string(node_dir.join("where")).unwrap(), "/workspace hi\n");
        let plan = fs::read_to_string(node_dir.join("plan-seen")).unwrap();
        assert!(plan.contains("name = \"node\"") && plan.contains("version = \"20\""), "{plan}");
        assert_eq!(fs::read_to_string(out.built[1].dir.join("out")).unwrap(), "node-ran\nv20\n");
        assert_eq!(out.built[1].output.launch.processes[0].kind, "web");
        let rec = record(&out);
        assert_eq!(rec.buildpacks["acme/node"].layers["node"].metadata.trim(), "v = \"20\"");
    }

    #[test]
    fn clear_env_hides_the_user_env_but_not_the_platform_dir() {
        let f = fixture();
        let bp = buildpack(
            &f.bps,
            "acme/clean",
            "true",
            r#"echo "${GREETING:-unset} $(cat "$2/env/GREETING")" > "$1/seen""#,
        );
        let toml = fs::read_to_string(bp.dir.join("buildpack.toml"))
            .unwrap()
            .replace("version = \"1\"", "version = \"1\"\nclear-env = true");
        fs::write(bp.dir.join("buildpack.toml"), toml).unwrap();
        let bp = Arc::new(Descriptor::load(&bp.dir).unwrap());
        let env = [("GREETING".to_string(), "hi".to_string())];
        let previous = Record::default();
        let out = run(&[vec![(bp, false)]], &Index::default(), &platform(&f, &env, &previous, None)).unwrap();
        assert_eq!(fs::read_to_string(out.built[0].dir.join("seen")).unwrap(), "unset hi\n");
    }

    #[test]
    fn no_group_says_which_requirement_was_unmet_and_by_whom() {
        let f = fixture();
        let a = buildpack(&f.bps, "acme/a", r#"printf '[[requires]]\nname = "jdk"\n' > "$2""#, "true");
        let b = buildpack(&f.bps, "acme/b", "exit 100", "true");
        let previous = Record::default();
        let p = platform(&f, &[], &previous, None);
        let e = run(&[vec![(a.clone(), false)], vec![(b, false)]], &Index::default(), &p).unwrap_err().to_string();
        assert!(
            e.contains("[acme/a@1]: acme/a requires \"jdk\", which neither it nor an earlier buildpack provides"),
            "{e}"
        );
        assert!(e.contains("[acme/b@1]: acme/b@1 did not pass detect (exit code 100)"), "{e}");
        // [[targets]] that exclude the image's platform: not detected, bin/detect not run.
        let arm = buildpack(&f.bps, "acme/arm", "echo ran > /dev/null", "true");
        fs::write(
            arm.dir.join("buildpack.toml"),
            "api = \"0.10\"\n[buildpack]\nid = \"acme/arm\"\nversion = \"1\"\n[[targets]]\nos = \"linux\"\narch = \"arm64\"\n",
        )
        .unwrap();
        let arm = Arc::new(Descriptor::load(&arm.dir).unwrap());
        let e = run(&[vec![(arm, false)]], &Index::default(), &p).unwrap_err().to_string();
        assert!(
            e.contains("acme/arm@1 did not pass detect (its [[targets]] do not include linux/amd64 (debian 12))"),
            "{e}"
        );
        // A distro the base is not.
        let alpine = buildpack(&f.bps, "acme/alpine", "echo ran > /dev/null", "true");
        fs::write(
            alpine.dir.join("buildpack.toml"),
            "api = \"0.12\"\n[buildpack]\nid = \"acme/alpine\"\nversion = \"1\"\n[[targets]]\nos = \"linux\"\n[[targets.distros]]\nname = \"alpine\"\n",
        )
        .unwrap();
        let alpine = Arc::new(Descriptor::load(&alpine.dir).unwrap());
        let e = run(&[vec![(alpine, false)]], &Index::default(), &p).unwrap_err().to_string();
        assert!(
            e.contains("acme/alpine@1 did not pass detect (its [[targets]] do not include linux/amd64 (debian 12))"),
            "{e}"
        );
        let bad = buildpack(&f.bps, "acme/bad", "exit 3", "true");
        let e = run(&[vec![(bad, false)]], &Index::default(), &p).unwrap_err().to_string();
        assert!(e.contains("acme/bad@1: bin/detect failed with exit code 3"), "{e}");
    }

    #[test]
    fn cache_layers_and_store_come_back_and_launch_metadata_is_restored() {
        let f = fixture();
        let bp = buildpack(
            &f.bps,
            "acme/c",
            "true",
            r#"cat "$1/deps.toml" > "$1/seen-toml" 2>/dev/null || true
cat "$1/deps/count" > "$1/seen-count" 2>/dev/null || echo none > "$1/seen-count"
cat "$1/store.toml" > "$1/seen-store" 2>/dev/null || true
mkdir -p "$1/deps"; echo 1 >> "$1/deps/count"
printf '[types]\ncache = true\n[metadata]\nk = "v"\n' > "$1/deps.toml"
printf '[metadata]\nruns = 1\n' > "$1/store.toml"
test -f "$1/tmp.toml" && echo restored > "$1/seen-tmp" || echo absent > "$1/seen-tmp"
mkdir -p "$1/tmp"; printf '[types]\nbuild = true\n[metadata]\nx = 1\n' > "$1/tmp.toml""#,
        );
        let previous = Record::default();
        let out = run(&[vec![(bp.clone(), false)]], &Index::default(), &platform(&f, &[], &previous, None)).unwrap();
        assert_eq!(fs::read_to_string(out.built[0].dir.join("seen-count")).unwrap(), "none\n");
        let rec = record(&out);
        let state = f.work.parent().unwrap().join("state");
        let trash = f.work.parent().unwrap().join("trash");
        commit(&out, &rec, &f.work, &state, &trash).unwrap();
        assert_eq!(load_record(&state), rec);

        let work2 = f.work.parent().unwrap().join("work2");
        fs::create_dir_all(&work2).unwrap();
        let t2 = tempfile::tempdir().unwrap();
        let runner = host_tree(&t2, &f.app, &work2);
        let f2 = Fixture { _t: t2, app: f.app.clone(), work: work2, bps: f.bps.clone(), runner };
        let previous = load_record(&state);
        let cache = state.join(CACHE_DIR);
        let out = run(&[vec![(bp, false)]], &Index::default(), &platform(&f2, &[], &previous, Some(&cache))).unwrap();
        let d = &out.built[0].dir;
        assert_eq!(fs::read_to_string(d.join("seen-count")).unwrap(), "1\n");
        assert_eq!(fs::read_to_string(d.join("seen-toml")).unwrap().trim(), "[metadata]\nk = \"v\"");
        assert!(fs::read_to_string(d.join("seen-store")).unwrap().contains("runs = 1"));
        assert_eq!(fs::read_to_string(d.join("seen-tmp")).unwrap(), "absent\n", "build-only layers are not kept");
    }
}
