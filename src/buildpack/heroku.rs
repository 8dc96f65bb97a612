//! The Heroku buildpack API: detect, the app's pre-compile hook, compile, the post-compile
//! hook, release. Scripts run through the build's [`Runner`]: on the host as the invoking
//! user, or in the build-image sandbox (as root there; paths are translated to where the
//! sandbox binds them, and compile runs through the image's `/bin/sh`).
//!
//! Every script runs with a cleared environment plus `PATH` (fixed), `HOME` (the parent
//! of the build directory, as on Heroku), `LANG=C.UTF-8`, `STACK` and `SOURCE_VERSION`
//! (when known), with stdin from /dev/null and its working directory in the build
//! directory. Compile and the hooks run through `bash`, which first sources the `export`
//! file of every buildpack that compiled before. Config vars reach compile only as files
//! in ENV_DIR, never in its environment. Children get SIGKILL when imgforge dies.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use super::release::{self, Release};
use super::{io_err, valid_var_name, Buildpack, DetectAnswer, HerokuError, Plan, Selection};
use crate::fsutil::{copy_tree, remove_tree, Links, RemoveOnDrop};
use crate::report::{Event, Reporter};
use crate::sandbox::process::{describe, Stream};
use crate::sandbox::runner::PATH;
use crate::sandbox::{Cmd, Runner};
use crate::store::swap::{install, unique_suffix};
/// The name app hooks' output is reported under.
pub const APP_HOOK: &str = "app hook";
/// Most bytes of `bin/release` output read as YAML.
const MAX_RELEASE: usize = 1 << 20;

/// [`WRAPPER`] for POSIX sh (the sandbox runs the build image's `/bin/sh`, which may not be
/// bash).
const POSIX_WRAPPER: &str = r#"__imgforge_n=$1
shift
while [ "$__imgforge_n" -gt 0 ]; do
  __imgforge_n=$((__imgforge_n - 1))
  __imgforge_f=$1
  shift
  . "$__imgforge_f"
done
exec "$@"
"#;

/// Sources each `export` file named in its arguments, then execs the command that follows
/// them. Arguments: N, N export files, the command and its arguments. Paths are only ever
/// arguments, never part of the script text.
const WRAPPER: &str = r#"__imgforge_n=$1
shift
__imgforge_exports=("${@:1:__imgforge_n}")
shift "$__imgforge_n"
__imgforge_cmd=("$@")
set --
for __imgforge_f in "${__imgforge_exports[@]}"; do
  . "$__imgforge_f"
done
exec "${__imgforge_cmd[@]}"
"#;

/// Where the buildpacks' caches are kept between builds: `root/<sha256(app_key "\0"
/// buildpack key)>/`. `root` must be on the same filesystem as the run's `work` for the
/// commit to be a rename (else it is a copy).
#[derive(Clone, Copy, Debug)]
pub struct Caches<'a> {
    pub root: &'a Path,
    /// Identifies the app (its caches are its own).
    pub app_key: &'a str,
    /// Start every CACHE_DIR empty.
    pub clear: bool,
}

/// What Heroku's platform gives the buildpacks.
#[derive(Clone, Debug, Default)]
pub struct HerokuEnv {
    /// Written to ENV_DIR, one file per variable (a later duplicate wins).
    pub config_vars: Vec<(String, String)>,
    pub stack: String,
    pub source_version: Option<String>,
}

/// What the buildpacks produced. The new caches stay aside until [`Outcome::commit_caches`].
#[derive(Debug)]
pub struct Outcome {
    /// Buildpacks that ran, with the framework their detect printed.
    pub ran: Vec<(String, String)>,
    /// From every `bin/release`, merged; a later buildpack wins for the same type.
    pub default_process_types: BTreeMap<String, String>,
    /// From every `bin/release`, merged; a later buildpack wins for the same name.
    pub config_vars: BTreeMap<String, String>,
    caches: Vec<PendingCache>,
}

#[derive(Debug)]
struct PendingCache {
    buildpack: String,
    /// The CACHE_DIR compile was given (under `work`).
    fresh: PathBuf,
    /// Where it is kept between builds.
    dest: PathBuf,
}

impl Outcome {
    /// Moves each buildpack's new CACHE_DIR into place (replacing the previous one, which is
    /// deleted). Call only after the whole build succeeded: until then the previous caches
    /// are untouched.
    pub fn commit_caches(self, trash: &Path) -> Result<(), HerokuError> {
        for c in &self.caches {
            commit_cache(c, trash)?;
        }
        Ok(())
    }
}

/// The directory name of the cache of one buildpack for one app.
fn cache_name(app_key: &str, buildpack_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(app_key.as_bytes());
    h.update([0]);
    h.update(buildpack_key.as_bytes());
    hex::encode(h.finalize())
}

struct Ctx<'a> {
    build_dir: PathBuf,
    /// The shell that runs compile and the hooks (a path inside the sandbox there).
    bash: PathBuf,
    wrapper: &'static str,
    runner: &'a Runner,
    env: Vec<(&'static str, OsString)>,
    reporter: &'a dyn Reporter,
}

/// Runs the plan's buildpacks on `build_dir` (the staged app, a private copy).
///
/// Detect (all of them, or until one applies), the app's `bin/pre_compile` (or
/// `bin/pre-compile`), each `bin/compile BUILD_DIR CACHE_DIR ENV_DIR` in order, the app's
/// `bin/post_compile` (or `bin/post-compile`), then each `bin/release BUILD_DIR`.
///
/// `work` gets `env/` (ENV_DIR) and `cache-<n>/` (each CACHE_DIR: a copy of the kept cache,
/// or empty with [`Caches::clear`]). Use one `work` per run.
pub fn run(
    plan: &Plan,
    build_dir: &Path,
    work: &Path,
    caches: &Caches<'_>,
    env: &HerokuEnv,
    reporter: &dyn Reporter,
    runner: &Runner,
) -> Result<Outcome, HerokuError> {
    let Caches { root: cache_root, app_key, clear: clear_cache } = *caches;
    let canonical = |p: &Path| fs::canonicalize(p).map_err(io_err(format!("Failed to resolve {}", p.display())));
    let build_dir = canonical(build_dir)?;
    let work = canonical(work)?;
    fs::create_dir_all(cache_root).map_err(io_err(format!("Failed to create {}", cache_root.display())))?;
    let cache_root = canonical(cache_root)?;
    let inside = runner.inside(&build_dir);
    let home = inside.parent().unwrap_or(&inside).as_os_str().to_os_string();
    let mut child_env = vec![
        ("PATH", OsString::from(PATH)),
        ("HOME", home),
        ("LANG", OsString::from("C.UTF-8")),
        ("STACK", OsString::from(&env.stack)),
    ];
    if let Some(v) = &env.source_version {
        child_env.push(("SOURCE_VERSION", OsString::from(v)));
    }
    let shell = runner
        .shell()
        .ok_or_else(|| HerokuError::Invalid(format!("bash is needed to run Heroku buildpacks; it is not in {PATH}")))?;
    let wrapper = if shell.bash { WRAPPER } else { POSIX_WRAPPER };
    let ctx = Ctx { build_dir, bash: shell.path, wrapper, runner, env: child_env, reporter };
    // The config vars are secrets: gone when the buildpacks are done, whatever happened.
    let _secrets = RemoveOnDrop(work.join("env"));
    let env_dir = write_env_dir(&work, &env.config_vars)?;

    let selected = detect(plan, &ctx)?;
    let compiles = selected.iter().map(|(bp, _)| required_script(bp, "compile")).collect::<Result<Vec<_>, _>>()?;

    let mut exports: Vec<PathBuf> = Vec::new();
    run_hook(&ctx, "pre", &exports)?;
    let mut caches = Vec::new();
    for (n, ((bp, _), compile)) in selected.iter().zip(&compiles).enumerate() {
        let cache = prepare_cache(&ctx, &cache_root, &work, n, app_key, bp, clear_cache)?;
        let args = [ctx.p(compile), ctx.p(&ctx.build_dir), ctx.p(&cache.fresh), ctx.p(&env_dir)];
        let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let status = ctx.run_streaming(&bp.name, "bin/compile", &exports, &args)?;
        if !status.success() {
            return Err(failed(&format!("buildpack {}", bp.name), "bin/compile", status));
        }
        caches.push(cache);
        let export = bp.dir.join("export");
        if export.is_file() {
            exports.push(export);
        }
    }
    run_hook(&ctx, "post", &exports)?;

    let mut outcome = Outcome {
        ran: selected.iter().map(|(bp, fw)| (bp.name.clone(), fw.clone())).collect(),
        default_process_types: BTreeMap::new(),
        config_vars: BTreeMap::new(),
        caches,
    };
    for (bp, _) in &selected {
        if let Some(r) = release_of(&ctx, bp)? {
            outcome.default_process_types.extend(r.default_process_types);
            outcome.config_vars.extend(r.config_vars);
        }
    }
    Ok(outcome)
}

fn failed(who: &str, script: &str, status: ExitStatus) -> HerokuError {
    HerokuError::Failed { who: who.to_string(), script: script.to_string(), status: describe(status) }
}

/// `bin/<name>` of a buildpack: `Ok(None)` when absent; an error when present but not an
/// executable file.
fn script(bp: &Buildpack, name: &str) -> Result<Option<PathBuf>, HerokuError> {
    let path = bp.dir.join("bin").join(name);
    let err = |why: &str| HerokuError::Script { buildpack: bp.name.clone(), path: path.clone(), why: why.into() };
    match fs::metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HerokuError::Io { what: format!("Failed to read {}", path.display()), source: e }),
        Ok(m) if !m.is_file() => Err(err("is not a file")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(err("is not executable (chmod +x it)")),
        Ok(_) => Ok(Some(path)),
    }
}

fn required_script(bp: &Buildpack, name: &str) -> Result<PathBuf, HerokuError> {
    script(bp, name)?.ok_or_else(|| HerokuError::Script {
        buildpack: bp.name.clone(),
        path: bp.dir.join("bin").join(name),
        why: "is missing".into(),
    })
}

fn write_env_dir(work: &Path, vars: &[(String, String)]) -> Result<PathBuf, HerokuError> {
    let dir = work.join("env");
    remove_tree(&dir)?;
    crate::fsutil::private_dir(&dir)?;
    for (name, value) in vars {
        if !valid_var_name(name) {
            return Err(HerokuError::Invalid(format!(
                "config var {name:?}: a name is a letter or '_' followed by letters, digits and '_'"
            )));
        }
        crate::fsutil::write_private(&dir.join(name), value.as_bytes())?;
    }
    Ok(dir)
}

/// Runs detect; returns the buildpacks to compile with their framework names.
fn detect<'p>(plan: &'p Plan, ctx: &Ctx<'_>) -> Result<Vec<(&'p Buildpack, String)>, HerokuError> {
    if plan.buildpacks.is_empty() {
        return Err(HerokuError::Invalid("no buildpacks to run".into()));
    }
    let mut selected = Vec::new();
    let mut answers = Vec::new();
    for bp in &plan.buildpacks {
        let (applies, answer) = detect_one(bp, ctx)?;
        match (applies, plan.selection) {
            (true, Selection::FirstThatDetects) => return Ok(vec![(bp, answer.first_line)]),
            (true, Selection::All) => selected.push((bp, answer.first_line)),
            (false, Selection::All) => return Err(HerokuError::NotDetected { answer }),
            (false, Selection::FirstThatDetects) => answers.push(answer),
        }
    }
    match plan.selection {
        Selection::All => Ok(selected),
        Selection::FirstThatDetects => Err(HerokuError::NoneDetected { answers }),
    }
}

fn detect_one(bp: &Buildpack, ctx: &Ctx<'_>) -> Result<(bool, DetectAnswer), HerokuError> {
    let path = required_script(bp, "detect")?;
    // First line of stdout, first non-empty line of stderr.
    let firsts: Mutex<(Option<String>, Option<String>)> = Mutex::new((None, None));
    let mut cmd = ctx.command(&path);
    cmd.arg(ctx.p(&ctx.build_dir));
    let on_line = |stream: Stream, line: &str| {
        let mut f = firsts.lock().unwrap_or_else(|p| p.into_inner());
        match stream {
            Stream::Out if f.0.is_none() => f.0 = Some(line.trim().to_string()),
            Stream::Err if f.1.is_none() && !line.trim().is_empty() => f.1 = Some(line.trim().to_string()),
            _ => {}
        }
        drop(f);
        ctx.reporter.report(Event::Detail(format!("{} bin/detect: {line}", bp.name)));
    };
    let status = ctx.run(&cmd, &on_line, &format!("buildpack {}", bp.name), &path)?.status;
    let (out, err) = firsts.into_inner().unwrap_or_else(|p| p.into_inner());
    let applies = status.success();
    let framework = out.clone().unwrap_or_default();
    let first_line = match out {
        Some(o) if !o.is_empty() => o,
        _ if applies => String::new(),
        _ => err.unwrap_or_default(),
    };
    ctx.reporter.report(Event::Detected {
        candidate: &bp.name,
        applies,
        detail: if applies { &framework } else { "" },
    });
    let answer = DetectAnswer { buildpack: bp.name.clone(), status: describe(status), first_line };
    Ok((applies, answer))
}

/// The app's hook for `stage` ("pre" or "post"): `bin/<stage>_compile`, else
/// `bin/<stage>-compile`.
fn run_hook(ctx: &Ctx<'_>, stage: &str, exports: &[PathBuf]) -> Result<(), HerokuError> {
    let under = format!("bin/{stage}_compile");
    let dash = format!("bin/{stage}-compile");
    let hook = match (ctx.build_dir.join(&under).is_file(), ctx.build_dir.join(&dash).is_file()) {
        (true, true) => {
            ctx.reporter.report(Event::Warning(format!("the app has both {under} and {dash}: running {under} only")));
            under
        }
        (true, false) => under,
        (false, true) => dash,
        (false, false) => return Ok(()),
    };
    let path = ctx.build_dir.join(&hook);
    let executable = fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    let mut argv: Vec<OsString> = Vec::new();
    if !executable {
        argv.push(ctx.bash.clone().into_os_string());
    }
    argv.push(ctx.p(&path));
    let argv: Vec<&OsStr> = argv.iter().map(|a| a.as_os_str()).collect();
    let status = ctx.run_streaming(APP_HOOK, &hook, exports, &argv)?;
    if !status.success() {
        return Err(failed(APP_HOOK, &hook, status));
    }
    Ok(())
}

fn release_of(ctx: &Ctx<'_>, bp: &Buildpack) -> Result<Option<Release>, HerokuError> {
    let Some(path) = script(bp, "release")? else { return Ok(None) };
    let out: Mutex<(String, bool)> = Mutex::new((String::new(), false));
    let mut cmd = ctx.command(&path);
    cmd.arg(ctx.p(&ctx.build_dir));
    let on_line = |stream: Stream, line: &str| match stream {
        Stream::Out => {
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            if o.0.len() + line.len() < MAX_RELEASE {
                o.0.push_str(line);
                o.0.push('\n');
            } else {
                o.1 = true;
            }
        }
        Stream::Err => ctx.reporter.report(Event::CommandOutput { from: &bp.name, line }),
    };
    let status = ctx.run(&cmd, &on_line, &format!("buildpack {}", bp.name), &path)?.status;
    if !status.success() {
        return Err(failed(&format!("buildpack {}", bp.name), "bin/release", status));
    }
    let (text, too_big) = out.into_inner().unwrap_or_else(|p| p.into_inner());
    if too_big {
        return Err(HerokuError::Release { buildpack: bp.name.clone(), why: format!("over {MAX_RELEASE} bytes") });
    }
    release::parse(&text).map(Some).map_err(|e| HerokuError::Release { buildpack: bp.name.clone(), why: e.to_string() })
}

impl Ctx<'_> {
    /// A host path as the script sees it (inside the sandbox, when there is one).
    fn p(&self, host: &Path) -> OsString {
        self.runner.inside(host).into_os_string()
    }

    /// A command for `program` (a host path, or a path inside), in the build directory, with
    /// the scripts' environment.
    fn command(&self, program: &Path) -> Cmd {
        let mut cmd = Cmd::new(self.p(program));
        cmd.cwd(self.p(&self.build_dir)).envs(self.env.iter().map(|(k, v)| (*k, v)));
        cmd
    }

    /// Runs `cmd`; `who` and `path` name it when it cannot be started. (A script without a
    /// `#!` line is run by /bin/sh, as execvp does.)
    fn run(
        &self,
        cmd: &Cmd,
        on_line: &(dyn Fn(Stream, &str) + Sync),
        who: &str,
        path: &Path,
    ) -> Result<crate::sandbox::Exit, HerokuError> {
        self.runner.run(cmd, on_line).map_err(|source| HerokuError::Start {
            who: who.to_string(),
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Runs `argv` through bash after sourcing `exports`, reporting its output under `who`.
    fn run_streaming(
        &self,
        who: &str,
        script: &str,
        exports: &[PathBuf],
        argv: &[&OsStr],
    ) -> Result<ExitStatus, HerokuError> {
        let mut cmd = self.command(&self.bash);
        let exports: Vec<OsString> = exports.iter().map(|e| self.p(e)).collect();
        cmd.arg("-c").arg(self.wrapper).arg("imgforge").arg(exports.len().to_string()).args(&exports).args(argv);
        let on_line = |_: Stream, line: &str| self.reporter.report(Event::CommandOutput { from: who, line });
        let exit = self.run(&cmd, &on_line, who, &self.bash)?;
        let (status, abandoned) = (exit.status, exit.abandoned);
        if abandoned {
            self.reporter.report(Event::Warning(format!(
                "{who}: a process that {script} left running still holds its output open; its further output is not shown"
            )));
        }
        Ok(status)
    }
}

/// A CACHE_DIR for compile number `n`: a copy of the kept cache (or empty).
fn prepare_cache(
    ctx: &Ctx<'_>,
    cache_root: &Path,
    work: &Path,
    n: usize,
    app_key: &str,
    bp: &Buildpack,
    clear: bool,
) -> Result<PendingCache, HerokuError> {
    let name = cache_name(app_key, &bp.key);
    let dest = cache_root.join(&name);
    sweep_leftovers(cache_root, &name);
    let fresh = work.join(format!("cache-{n}"));
    remove_tree(&fresh)?;
    let kept = fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
    if kept && clear {
        // Deleted now, not replaced at commit: a full disk may be this cache's doing, and a
        // build that then fails (ENOSPC) must still have freed it. Moved aside first, so a
        // build reading it meanwhile never sees half of it.
        let old = dest.with_file_name(format!("{name}.old-{}", unique_suffix()));
        if fs::rename(&dest, &old).is_ok() {
            remove_tree(&old)?;
        }
    }
    if kept && !clear {
        let skipped = copy_tree(&dest, &fresh, 0, Links::Verbatim)?;
        for s in skipped {
            ctx.reporter.report(Event::Warning(format!(
                "buildpack {}: cache entry {} skipped (only files, directories and symlinks are kept)",
                bp.name,
                s.display()
            )));
        }
        ctx.reporter.report(Event::Detail(format!("buildpack {}: cache restored from {}", bp.name, dest.display())));
    } else {
        fs::create_dir(&fresh).map_err(io_err(format!("Failed to create {}", fresh.display())))?;
        let why = if kept { "cleared" } else { "none yet" };
        ctx.reporter.report(Event::Detail(format!("buildpack {}: empty cache ({why})", bp.name)));
    }
    Ok(PendingCache { buildpack: bp.name.clone(), fresh, dest })
}

/// Old caches left behind by a commit that was interrupted (or could not delete them).
fn sweep_leftovers(cache_root: &Path, name: &str) {
    let Ok(listing) = fs::read_dir(cache_root) else { return };
    let prefixes = [format!("{name}.old-"), format!("{name}.new-")];
    for entry in listing.flatten() {
        let file_name = entry.file_name();
        let n = file_name.to_string_lossy();
        if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
            let _ = remove_tree(&entry.path());
        }
    }
}

fn commit_cache(c: &PendingCache, trash: &Path) -> Result<(), HerokuError> {
    let what = || format!("Failed to save the cache of buildpack {} to {}", c.buildpack, c.dest.display());
    match install(&c.fresh, &c.dest, trash) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            // Another filesystem: copy next to the destination first.
            let name = c.dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let staged = c.dest.with_file_name(format!("{name}.new-{}", unique_suffix()));
            copy_tree(&c.fresh, &staged, 0, Links::Verbatim)?;
            install(&staged, &c.dest, trash).map_err(|e| HerokuError::Io { what: what(), source: e })?;
            Ok(remove_tree(&c.fresh)?)
        }
        r => r.map_err(|e| HerokuError::Io { what: what(), source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildpack::plan;
    use crate::buildpack::test_support::{make_tgz, unit_bp, Collect};
    use std::os::unix::ffi::OsStrExt;
    use std::time::{Duration, Instant};

    /// A temp dir with `app/` (the build dir), `work/` and `cache/`.
    struct Fixture {
        t: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let t = tempfile::tempdir().unwrap();
            for d in ["app", "work", "cache"] {
                fs::create_dir(t.path().join(d)).unwrap();
            }
            Fixture { t }
        }

        fn app(&self) -> PathBuf {
            self.t.path().join("app")
        }

        fn work(&self) -> PathBuf {
            self.t.path().join("work")
        }

        fn cache(&self) -> PathBuf {
            self.t.path().join("cache")
        }

        fn plan(&self, names: &[&str], selection: Selection) -> Plan {
            let paths: Vec<PathBuf> = names.iter().map(|n| unit_bp(n)).collect();
            let mut p = plan(&paths, &self.app(), None, &self.work()).unwrap();
            p.selection = selection;
            p
        }

        fn run(&self, plan: &Plan, r: &Collect) -> Result<Outcome, HerokuError> {
            self.run_with(plan, r, &env(), false)
        }

        fn run_with(&self, plan: &Plan, r: &Collect, env: &HerokuEnv, clear: bool) -> Result<Outcome, HerokuError> {
            let caches = Caches { root: &self.cache(), app_key: "app-1", clear };
            run(plan, &self.app(), &self.work(), &caches, env, r, &Runner::host())
        }

        fn read(&self, name: &str) -> String {
            fs::read_to_string(self.app().join(name)).unwrap()
        }

        fn touch(&self, name: &str) {
            fs::write(self.app().join(name), "").unwrap();
        }

        /// A fresh build: a new app dir and work dir, same cache root.
        fn rebuild(&self) {
            for d in ["app", "work"] {
                remove_tree(&self.t.path().join(d)).unwrap();
                fs::create_dir(self.t.path().join(d)).unwrap();
            }
        }
    }

    fn env() -> HerokuEnv {
        HerokuEnv {
            config_vars: vec![("SECRET".into(), "s3cr3t".into()), ("MULTI".into(), "a b".into())],
            stack: "heroku-24".into(),
            source_version: Some("0123abc".into()),
        }
    }

    fn names(o: &Outcome) -> Vec<(&str, &str)> {
        o.ran.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }

    #[test]
    fn first_that_detects_picks_the_first_in_order() {
        let f = Fixture::new();
        f.touch("beta.marker");
        let r = Collect::default();
        let o = f.run(&f.plan(&["nope", "beta", "alpha"], Selection::FirstThatDetects), &r).unwrap();
        assert_eq!(names(&o), [("beta", "Beta")]);
        let detected: Vec<_> = r.lines().into_iter().filter(|l| l.starts_with("detected")).collect();
        assert_eq!(detected, ["detected nope false ", "detected beta true Beta"]);
        assert_eq!(f.read("order.log"), "compile beta\n");
    }

    #[test]
    fn no_buildpack_detects_lists_every_answer() {
        let f = Fixture::new();
        let r = Collect::default();
        let e = f.run(&f.plan(&["nope", "beta"], Selection::FirstThatDetects), &r).unwrap_err();
        match &e {
            HerokuError::NoneDetected { answers } => {
                let got: Vec<_> =
                    answers.iter().map(|a| (a.buildpack.as_str(), a.status.as_str(), a.first_line.as_str())).collect();
                assert_eq!(got, [("nope", "exit code 1", "not for me"), ("beta", "exit code 1", "no beta.marker")]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "no buildpack applies to this app; tried:\n  nope: bin/detect ended with exit code 1, printing \"not for me\"\
             \n  beta: bin/detect ended with exit code 1, printing \"no beta.marker\""
        );
        assert!(!f.app().join("order.log").exists());
    }

    #[test]
    fn all_requires_every_buildpack_to_detect() {
        let f = Fixture::new();
        let r = Collect::default();
        let e = f.run(&f.plan(&["alpha", "nope"], Selection::All), &r).unwrap_err();
        assert!(matches!(&e, HerokuError::NotDetected { answer } if answer.buildpack == "nope"), "{e:?}");
        assert_eq!(
            e.to_string(),
            "buildpack nope does not apply to this app (nope: bin/detect ended with exit code 1, printing \"not for me\")"
        );
        // Nothing compiled.
        assert!(!f.app().join("order.log").exists());
    }

    #[test]
    fn compile_gets_its_three_dirs_env_dir_and_platform_env() {
        let f = Fixture::new();
        let r = Collect::default();
        let o = f.run(&f.plan(&["alpha"], Selection::All), &r).unwrap();
        assert_eq!(names(&o), [("alpha", "Alpha")]);
        let app = f.app().canonicalize().unwrap();
        let work = f.work().canonicalize().unwrap();
        let home = app.parent().unwrap();
        assert_eq!(
            f.read("alpha-args.txt"),
            format!(
                "3|{}|{}|{}|{}|{}|heroku-24|0123abc|C.UTF-8\n",
                app.display(),
                work.join("cache-0").display(),
                work.join("env").display(),
                app.display(),
                home.display()
            )
        );
        assert_eq!(f.read("alpha-envdir.txt"), "MULTI=a b\nSECRET=s3cr3t\n");
        assert_eq!(r.output_of("alpha"), ["-----> Alpha compile", "       done"]);

        // Without SOURCE_VERSION it is not set at all.
        f.rebuild();
        let e = HerokuEnv { source_version: None, ..env() };
        f.run_with(&f.plan(&["alpha"], Selection::All), &r, &e, false).unwrap();
        assert!(f.read("alpha-args.txt").contains("|heroku-24|unset|"), "{}", f.read("alpha-args.txt"));
    }

    #[test]
    fn invalid_config_var_names_are_refused() {
        let f = Fixture::new();
        let e = HerokuEnv { config_vars: vec![("A-B".into(), "x".into())], ..env() };
        let err = f.run_with(&f.plan(&["alpha"], Selection::All), &Collect::default(), &e, false).unwrap_err();
        assert!(err.to_string().contains("config var \"A-B\""), "{err}");
    }

    #[test]
    fn cache_persists_only_when_committed() {
        let f = Fixture::new();
        let r = Collect::default();
        let counter = || {
            let kept = f.cache().join(cache_name("app-1", &unit_bp_key("alpha")));
            fs::read_to_string(kept.join("counter")).map(|s| s.trim().to_string()).unwrap_or_default()
        };
        let plan = |f: &Fixture| f.plan(&["alpha"], Selection::All);

        f.run(&plan(&f), &r).unwrap().commit_caches(&f.work().join("trash")).unwrap();
        assert_eq!((f.read("alpha-count").trim(), counter().as_str()), ("1", "1"));
        f.rebuild();
        f.run(&plan(&f), &r).unwrap().commit_caches(&f.work().join("trash")).unwrap();
        assert_eq!((f.read("alpha-count").trim(), counter().as_str()), ("2", "2"));

        // A failing compile: the kept cache is untouched (compile saw a copy).
        f.rebuild();
        f.touch("fail-alpha");
        let e = f.run(&plan(&f), &r).unwrap_err();
        assert_eq!(e.to_string(), "buildpack alpha: bin/compile failed with exit code 3");
        assert_eq!((f.read("alpha-count").trim(), counter().as_str()), ("3", "2"));
        assert!(r.output_of("alpha").contains(&"alpha fails on purpose".to_string()));

        // Success, but the build fails later: the outcome is dropped, not committed.
        f.rebuild();
        let o = f.run(&plan(&f), &r).unwrap();
        drop(o);
        assert_eq!((f.read("alpha-count").trim(), counter().as_str()), ("3", "2"));

        // Another app has its own cache.
        f.rebuild();
        let caches = Caches { root: &f.cache(), app_key: "app-2", clear: false };
        run(&plan(&f), &f.app(), &f.work(), &caches, &env(), &r, &Runner::host())
            .unwrap()
            .commit_caches(&f.work().join("trash"))
            .unwrap();
        assert_eq!((f.read("alpha-count").trim(), counter().as_str()), ("1", "2"));

        // clear_cache starts empty, and deletes the kept one at once: a build that fails
        // (a disk full of the old cache) must still have freed it.
        f.rebuild();
        let o = f.run_with(&plan(&f), &r, &env(), true).unwrap();
        assert_eq!((f.read("alpha-count").trim(), counter().as_str()), ("1", ""));
        o.commit_caches(&f.work().join("trash")).unwrap();
        assert_eq!(counter(), "1");
        // No leftovers next to the caches.
        let mut left: Vec<_> = fs::read_dir(f.cache()).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    fn unit_bp_key(name: &str) -> String {
        hex::encode(Sha256::digest(unit_bp(name).canonicalize().unwrap().as_os_str().as_bytes()))
    }

    #[test]
    fn commit_replaces_read_only_caches() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("kept");
        fs::create_dir_all(dest.join("ro/sub")).unwrap();
        fs::write(dest.join("ro/sub/old"), "").unwrap();
        fs::set_permissions(dest.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        let fresh = t.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        fs::write(fresh.join("new"), "").unwrap();
        let trash = t.path().join("trash");
        commit_cache(&PendingCache { buildpack: "x".into(), fresh: fresh.clone(), dest: dest.clone() }, &trash)
            .unwrap();
        assert!(dest.join("new").exists() && !dest.join("ro").exists() && !fresh.exists());
        assert_eq!(fs::read_dir(&trash).unwrap().count(), 1, "the old cache waits in the trash");
        // Into a place where nothing was kept yet.
        fs::create_dir(&fresh).unwrap();
        let dest2 = t.path().join("kept2");
        commit_cache(&PendingCache { buildpack: "x".into(), fresh: fresh.clone(), dest: dest2.clone() }, &trash)
            .unwrap();
        assert!(dest2.is_dir() && !fresh.exists());
    }

    #[test]
    fn exports_reach_later_compiles_but_config_vars_never_do() {
        let f = Fixture::new();
        f.touch("beta.marker");
        let r = Collect::default();
        let o = f.run(&f.plan(&["alpha", "beta"], Selection::All), &r).unwrap();
        assert_eq!(names(&o), [("alpha", "Alpha"), ("beta", "Beta")]);
        let env = f.read("beta-env.txt");
        assert!(env.lines().any(|l| l == "FROM_ALPHA=hello from alpha"), "{env}");
        assert!(env.lines().any(|l| l == format!("PATH={PATH}")), "{env}");
        assert!(env.lines().any(|l| l == "STACK=heroku-24"), "{env}");
        assert!(!env.contains("SECRET") && !env.contains("s3cr3t") && !env.contains("MULTI"), "{env}");
        assert!(!env.contains("__imgforge"), "{env}");
        assert_eq!(f.read("order.log"), "compile alpha\ncompile beta\n");
        // The source buildpack was not written to; its private copy was.
        assert!(!unit_bp("alpha").join("export").exists());
        assert!(f.work().join("buildpacks/0-alpha/export").exists());
    }

    #[test]
    fn release_yaml_is_merged_later_buildpacks_win() {
        let f = Fixture::new();
        f.touch("beta.marker");
        let r = Collect::default();
        let o = f.run(&f.plan(&["alpha", "beta"], Selection::All), &r).unwrap();
        let m = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<BTreeMap<_, _>>();
        assert_eq!(o.default_process_types, m(&[("web", "beta-web"), ("worker", "alpha-worker")]));
        assert_eq!(o.config_vars, m(&[("ALPHA_ONLY", "1"), ("FROM_RELEASE", "beta")]));
        assert!(r.output_of("beta").contains(&"release beta on stderr".to_string()));
    }

    #[test]
    fn invalid_release_yaml_names_the_buildpack_and_line() {
        let f = Fixture::new();
        let e = f.run(&f.plan(&["badrelease"], Selection::All), &Collect::default()).unwrap_err().to_string();
        assert!(e.starts_with("buildpack badrelease: bin/release printed unusable output: invalid YAML"), "{e}");
        assert!(e.contains("line 3: \"   bad: [unclosed\""), "{e}");
    }

    fn write_script(path: &Path, body: &str, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn hooks_run_around_the_compiles_with_exports() {
        let f = Fixture::new();
        f.touch("beta.marker");
        // Not executable: run with bash.
        write_script(&f.app().join("bin/pre-compile"), "echo pre >> order.log\necho hook says hi\n", 0o644);
        write_script(&f.app().join("bin/post_compile"), "#!/bin/sh\necho \"post $FROM_ALPHA\" >> order.log\n", 0o755);
        let r = Collect::default();
        f.run(&f.plan(&["alpha", "beta"], Selection::All), &r).unwrap();
        assert_eq!(f.read("order.log"), "pre\ncompile alpha\ncompile beta\npost hello from alpha\n");
        assert_eq!(r.output_of(APP_HOOK), ["hook says hi"]);

        // Both spellings: the underscore one runs, with a warning.
        f.rebuild();
        write_script(&f.app().join("bin/pre_compile"), "#!/bin/sh\necho pre_underscore >> order.log\n", 0o755);
        write_script(&f.app().join("bin/pre-compile"), "#!/bin/sh\necho pre_dash >> order.log\n", 0o755);
        write_script(&f.app().join("bin/post-compile"), "#!/bin/sh\necho post_dash >> order.log\n", 0o755);
        let r = Collect::default();
        f.run(&f.plan(&["alpha"], Selection::All), &r).unwrap();
        assert_eq!(f.read("order.log"), "pre_underscore\ncompile alpha\npost_dash\n");
        assert!(r
            .lines()
            .iter()
            .any(|l| l.starts_with("warning: the app has both bin/pre_compile and bin/pre-compile")));

        // A failing hook fails the build.
        f.rebuild();
        write_script(&f.app().join("bin/post_compile"), "#!/bin/sh\nexit 7\n", 0o755);
        let e = f.run(&f.plan(&["alpha"], Selection::All), &r).unwrap_err();
        assert_eq!(e.to_string(), "app hook: bin/post_compile failed with exit code 7");
    }

    #[test]
    fn output_lines_are_reported_in_order() {
        let f = Fixture::new();
        let r = Collect::default();
        f.run(&f.plan(&["noisy"], Selection::All), &r).unwrap();
        let out = r.output_of("noisy");
        let numbered: Vec<_> = out.iter().filter(|l| l.starts_with("line ")).cloned().collect();
        assert_eq!(numbered, (1..=300).map(|i| format!("line {i}")).collect::<Vec<_>>());
        // stdout and stderr are read by two threads: only the order within each is fixed.
        assert!(out.contains(&"on stderr".to_string()));
        let stdout: Vec<_> = out.iter().filter(|l| *l != "on stderr").collect();
        assert_eq!(stdout.last().map(|s| s.as_str()), Some("no newline at the end"));
        assert_eq!(out.len(), 302);
    }

    #[test]
    fn missing_or_non_executable_scripts_are_named() {
        let f = Fixture::new();
        let bp = f.t.path().join("bp");
        write_script(&bp.join("bin/detect"), "#!/bin/sh\necho X\n", 0o755);
        let r = Collect::default();
        let e = f.run(&plan(std::slice::from_ref(&bp), &f.app(), None, &f.work()).unwrap(), &r).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("buildpack bp: {}/buildpacks/0-bp/bin/compile is missing", f.work().display())
        );
        write_script(&bp.join("bin/compile"), "#!/bin/sh\n", 0o644);
        let e = f.run(&plan(std::slice::from_ref(&bp), &f.app(), None, &f.work()).unwrap(), &r).unwrap_err();
        assert!(e.to_string().ends_with("0-bp/bin/compile is not executable (chmod +x it)"), "{e}");
        fs::remove_file(bp.join("bin/detect")).unwrap();
        let e = f.run(&plan(std::slice::from_ref(&bp), &f.app(), None, &f.work()).unwrap(), &r).unwrap_err();
        assert!(e.to_string().ends_with("0-bp/bin/detect is missing"), "{e}");
        // No #! line: run by /bin/sh, as execvp does.
        write_script(&bp.join("bin/compile"), "#!/bin/sh\n", 0o755);
        write_script(&bp.join("bin/detect"), "echo X\n", 0o755);
        let o = f.run(&plan(std::slice::from_ref(&bp), &f.app(), None, &f.work()).unwrap(), &r).unwrap();
        assert_eq!(names(&o), [("bp", "X")]);
    }

    #[test]
    fn a_compile_killed_by_a_signal_says_so() {
        let f = Fixture::new();
        let bp = f.t.path().join("sig");
        write_script(&bp.join("bin/detect"), "#!/bin/sh\necho Sig\n", 0o755);
        write_script(&bp.join("bin/compile"), "#!/bin/sh\nkill -9 $$\n", 0o755);
        let e = f.run(&plan(&[bp], &f.app(), None, &f.work()).unwrap(), &Collect::default()).unwrap_err();
        assert_eq!(e.to_string(), "buildpack sig: bin/compile failed with signal 9");
    }

    #[test]
    fn processes_a_compile_leaves_running_are_killed_when_it_ends() {
        let f = Fixture::new();
        let bp = f.t.path().join("bg");
        write_script(&bp.join("bin/detect"), "#!/bin/sh\necho Bg\n", 0o755);
        let compile = "#!/bin/sh\necho started\nsleep 60 &\necho $! > bg.pids\nsetsid sleep 60 &\necho $! >> bg.pids\n\
                       (sleep 60 &) \nnohup sleep 60 >/dev/null 2>&1 &\necho $! >> bg.pids\necho leaving\n";
        write_script(&bp.join("bin/compile"), compile, 0o755);
        let r = Collect::default();
        let t0 = Instant::now();
        f.run(&plan(&[bp], &f.app(), None, &f.work()).unwrap(), &r).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(r.output_of("bg"), ["started", "leaving"]);
        // Killed (and reaped) as compile ended: nothing held the output open.
        assert!(!r.lines().iter().any(|l| l.contains("still holds its output open")), "{:?}", r.lines());
        let pids = f.read("bg.pids");
        assert_eq!(pids.lines().count(), 3, "{pids}");
        for pid in pids.lines() {
            assert!(!Path::new("/proc").join(pid.trim()).exists(), "process {pid} is still there");
        }
    }

    #[test]
    fn tgz_buildpacks_work() {
        let f = Fixture::new();
        for (prefix, file) in [("", "alpha.tgz"), ("heroku-buildpack-alpha-1.0", "alpha-1.0.tar.gz")] {
            f.rebuild();
            let tgz = f.t.path().join(file);
            fs::write(&tgz, make_tgz(&unit_bp("alpha"), prefix)).unwrap();
            let p = plan(std::slice::from_ref(&tgz), &f.app(), None, &f.work()).unwrap();
            assert_eq!(p.buildpacks[0].name, file);
            let o = f.run(&p, &Collect::default()).unwrap();
            assert_eq!(names(&o), [(file, "Alpha")]);
            assert_eq!(o.default_process_types.get("web").map(String::as_str), Some("alpha-web"));
        }
    }

    #[test]
    fn malicious_tgz_buildpacks_are_rejected() {
        let f = Fixture::new();
        let bad = |name: &str, tar: &[(&str, tar::EntryType, &str)]| {
            let mut out = Vec::new();
            for (path, kind, link) in tar {
                let mut h = tar::Header::new_gnu();
                let raw = &mut h.as_old_mut().name;
                raw[..path.len()].copy_from_slice(path.as_bytes());
                h.set_entry_type(*kind);
                h.set_mode(0o755);
                h.set_size(0);
                if !link.is_empty() {
                    let raw = &mut h.as_old_mut().linkname;
                    raw[..link.len()].copy_from_slice(link.as_bytes());
                }
                h.set_cksum();
                out.extend_from_slice(h.as_bytes());
            }
            out.extend_from_slice(&[0; 1024]);
            let path = f.t.path().join(name);
            fs::write(&path, out).unwrap();
            plan(&[path], &f.app(), None, &f.work()).unwrap_err().to_string()
        };
        use tar::EntryType::{Regular, Symlink};
        let e = bad("dotdot.tar", &[("bin/compile", Regular, ""), ("../../escaped", Regular, "")]);
        assert!(e.contains("'..'"), "{e}");
        let e = bad("abs-link.tar", &[("bin/compile", Regular, ""), ("bin/tmp", Symlink, "/tmp")]);
        assert!(e.contains("absolute path"), "{e}");
        let e = bad("through.tar", &[("bin/compile", Regular, ""), ("up", Symlink, ".."), ("up/escaped", Regular, "")]);
        assert!(e.contains("beneath the symlink"), "{e}");
        assert!(!f.t.path().join("escaped").exists());
    }
}
