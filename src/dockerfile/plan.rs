//! Lowering: each needed stage becomes a list of mode-neutral steps for the pipeline to run.
//! A step says what it does ([`StepKind`]), carries the bytes its cache key is made from
//! ([`Step::definition`]), its history entry, and the image config after it. Nothing here
//! runs, reads files or touches a cache.
//!
//! One function per instruction (`on_env`, `on_copy`, `on_run`, …) over the typed
//! instruction and the stage's state.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::config::{go_quote_list, healthcheck_history, set_pair, HealthConfig, ImageConfig, DEFAULT_PATH};
use super::dockerignore::clean_path;
use super::error::{syntax, unsupported, DockerfileError, ErrorKind};
use super::instruction::*;
use super::parse::parse_trigger;
use super::stages::{arg_value, err_at, stage_ref, Base, Build, Stage, StageRef, PROXY_ARGS};
use super::substitute::Lexer;
use crate::image::manifest::Platform;

/// Where files come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The build context (after `.dockerignore`).
    Context,
    /// The result of a stage, by index.
    Stage(usize),
    /// An image, as written (resolved by the pipeline).
    Image(String),
}

/// A file the step creates from the Dockerfile itself (a heredoc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineFile {
    pub path: String,
    pub data: String,
    pub mode: u32,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Only the image config changes; `change` is the instruction after substitution.
    Config {
        change: String,
    },
    /// `WORKDIR`: create `path` (and parents) owned by `user` if missing. BuildKit records a
    /// layer for it; a directory that already existed changes nothing.
    Mkdir {
        path: String,
        user: String,
    },
    /// `COPY`, and `ADD` of local files or heredocs.
    Copy(CopyStep),
    /// `ADD https://…`.
    AddUrl(AddUrlStep),
    Run(RunStep),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyStep {
    pub from: Source,
    /// Paths (globs allowed) relative to the source's root, after substitution.
    pub sources: Vec<String>,
    pub inline: Vec<InlineFile>,
    /// Absolute destination (relative ones are joined to the `WORKDIR`).
    pub dest: String,
    /// The destination is a directory (it ended with `/`, or was `.`).
    pub dest_is_dir: bool,
    /// `--chown` after substitution, resolved against the stage's `/etc/passwd` by the pipeline.
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    pub link: bool,
    pub exclude: Vec<String>,
    /// `ADD`: a local tar archive (plain or compressed) is extracted, not copied.
    pub unpack_archives: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddUrlStep {
    pub urls: Vec<String>,
    /// `--checksum=sha256:…`: the download must match.
    pub checksum: Option<String>,
    pub dest: String,
    pub dest_is_dir: bool,
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    pub link: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunStep {
    /// The full command: the stage's `SHELL` + the command for shell form.
    pub argv: Vec<String>,
    /// `K=V`: the stage's environment and its ARGs (as BuildKit gives them to RUN).
    pub env: Vec<String>,
    /// `HTTP_PROXY` & co. from `--build-arg` without an `ARG`: set, but never in the key.
    #[serde(skip)]
    pub proxy_env: Vec<String>,
    /// `USER` (empty: root).
    pub user: String,
    pub workdir: String,
    pub mounts: Vec<Mount>,
    /// `RUN --network`; `None`: the build's `--network`.
    pub network: Option<Network>,
    /// Heredoc scripts, mounted read-only (a single-heredoc `RUN` runs its file).
    pub inline: Vec<InlineFile>,
}

/// A `RUN --mount`, substituted and with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mount {
    Bind {
        target: String,
        from: Source,
        source: String,
        readwrite: bool,
    },
    Cache {
        target: String,
        id: String,
        sharing: Sharing,
        from: Option<Source>,
        source: String,
        readonly: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// The secret's content never appears here, in a layer, the cache or a log.
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

/// One step of a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Line of the instruction (of the `FROM` for a base's ONBUILD triggers).
    pub line: usize,
    pub instruction: &'static str,
    pub kind: StepKind,
    /// The history entry, as BuildKit writes it.
    pub created_by: String,
    pub empty_layer: bool,
    /// The ARGs the step uses, with their values (part of the definition).
    pub args_used: BTreeMap<String, String>,
    /// The step's cache definition: the instruction after substitution and the args it
    /// uses. Left out on purpose: line numbers, spelling and comments, the history text,
    /// proxy build args, secret contents.
    pub definition: Vec<u8>,
    /// The image config after this step.
    pub config: ImageConfig,
}

impl Step {
    /// `sha256:…` of [`Step::definition`].
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.definition)))
    }
}

/// One stage, lowered.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    pub platform: Platform,
    /// The base's ONBUILD triggers come first (their `line` is the `FROM`'s).
    pub steps: Vec<Step>,
    /// The config after the last step.
    pub config: ImageConfig,
    /// `MAINTAINER` (the image's `author`).
    pub author: Option<String>,
}

/// The stages to build, dependencies first; the last one is the target.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
}

impl Plan {
    pub fn target(&self) -> &StagePlan {
        self.stages.last().expect("a plan has at least the target stage")
    }
}

/// Lowers every stage the target needs. `image_config` gives the config of a base image
/// (as Docker's `config` object) for a stage's platform.
pub fn lower<E: std::convert::From<DockerfileError>>(
    build: &Build,
    mut image_config: impl FnMut(&str, &Platform) -> Result<ImageConfig, E>,
) -> Result<Plan, E> {
    let mut done: BTreeMap<usize, ImageConfig> = BTreeMap::new();
    let mut stages = Vec::new();
    for &i in &build.order {
        let stage = &build.stages[i];
        let base = match &stage.base {
            Base::Scratch => ImageConfig::scratch(),
            Base::Stage(j) => done.get(j).cloned().expect("the build order puts bases first"),
            Base::Image(name) => image_config(name, &stage.platform)?,
        };
        let plan = lower_stage(build, i, base)?;
        done.insert(i, plan.config.clone());
        stages.push(plan);
    }
    Ok(Plan { stages })
}

/// Lowers one stage on top of its base's config.
pub fn lower_stage(build: &Build, index: usize, base: ImageConfig) -> Result<StagePlan, DockerfileError> {
    let stage = &build.stages[index];
    let state_env = base
        .env
        .iter()
        .map(|e| e.split_once('=').map_or((e.clone(), String::new()), |(k, v)| (k.into(), v.into())))
        .collect();
    let mut l = Lowerer {
        build,
        stage,
        lexer: Lexer::new(build.escape),
        names: build.stages.iter().map(|s| s.name.clone()).collect(),
        config: base,
        state_env,
        args: Vec::new(),
        cmd_set: false,
        author: None,
        steps: Vec::new(),
        line: stage.line,
        kw: "FROM",
        matched: BTreeSet::new(),
    };
    for expression in std::mem::take(&mut l.config.on_build) {
        let trigger = parse_trigger(&expression, &build.file, stage.line)?;
        l.instruction(&trigger)?;
    }
    for located in &stage.instructions {
        l.instruction(located)?;
    }
    Ok(StagePlan {
        index,
        name: stage.name.clone(),
        base: stage.base.clone(),
        platform: stage.platform.clone(),
        steps: l.steps,
        config: l.config,
        author: l.author,
    })
}

struct Lowerer<'a> {
    build: &'a Build,
    stage: &'a Stage,
    lexer: Lexer,
    names: Vec<Option<String>>,
    config: ImageConfig,
    /// What substitution and RUN see: the config's Env plus the stage's ARGs, last set wins.
    state_env: Vec<(String, String)>,
    /// The stage's ARGs in declaration order (value `None`: declared, unset).
    args: Vec<(String, Option<String>)>,
    cmd_set: bool,
    author: Option<String>,
    steps: Vec<Step>,
    line: usize,
    kw: &'static str,
    /// Names substitution found while lowering the current instruction.
    matched: BTreeSet<String>,
}

#[derive(Serialize)]
struct Definition<'a> {
    format: &'static str,
    instruction: &'static str,
    platform: String,
    kind: &'a StepKind,
    args: &'a BTreeMap<String, String>,
}

impl Lowerer<'_> {
    fn err(&self, kind: ErrorKind) -> DockerfileError {
        err_at(&self.build.file, self.line, self.kw)(kind)
    }

    fn instruction(&mut self, located: &Located) -> Result<(), DockerfileError> {
        self.line = located.line;
        self.kw = located.instruction.keyword();
        self.matched.clear();
        match &located.instruction {
            Instruction::From(_) => unreachable!("stages are split at FROM"),
            Instruction::Run(r) => self.on_run(r),
            Instruction::Cmd(c) => self.on_cmd(c),
            Instruction::Label(kv) => self.on_label(kv),
            Instruction::Maintainer(m) => self.on_maintainer(m),
            Instruction::Expose(p) => self.on_expose(p),
            Instruction::Env(kv) => self.on_env(kv),
            Instruction::Add(a) => self.on_add(a),
            Instruction::Copy(c) => self.on_copy(c),
            Instruction::Entrypoint(c) => self.on_entrypoint(c),
            Instruction::Volume(v) => self.on_volume(v),
            Instruction::User(u) => self.on_user(u),
            Instruction::Workdir(w) => self.on_workdir(w),
            Instruction::Arg(a) => self.on_arg(a),
            Instruction::Onbuild(o) => self.on_onbuild(o),
            Instruction::Stopsignal(s) => self.on_stopsignal(s),
            Instruction::Healthcheck(h) => self.on_healthcheck(h),
            Instruction::Shell(s) => self.on_shell(s),
        }
    }

    // ---- helpers ----

    fn expand(&mut self, word: &str) -> Result<String, DockerfileError> {
        let e = self.lexer.process_with(word, &self.state_env).map_err(|e| self.err(e.into()))?;
        self.matched.extend(e.matched);
        Ok(e.value)
    }

    fn expand_words(&mut self, word: &str) -> Result<Vec<String>, DockerfileError> {
        let e = self.lexer.process_with(word, &self.state_env).map_err(|e| self.err(e.into()))?;
        self.matched.extend(e.matched);
        Ok(e.words)
    }

    fn set_state(&mut self, key: &str, value: &str) {
        match self.state_env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.state_env.push((key.to_string(), value.to_string())),
        }
    }

    fn state(&self, key: &str) -> Option<&str> {
        self.state_env.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The args among the names substitution used, with their current values.
    fn used_args(&self) -> BTreeMap<String, String> {
        self.args
            .iter()
            .filter(|(k, _)| self.matched.contains(k))
            .map(|(k, v)| (k.clone(), self.state(k).map(str::to_string).or(v.clone()).unwrap_or_default()))
            .collect()
    }

    fn push(&mut self, kind: StepKind, created_by: String, empty_layer: bool, args_used: BTreeMap<String, String>) {
        let definition = serde_json::to_vec(&Definition {
            format: "imgforge.dockerfile.step/v1",
            instruction: self.kw,
            platform: self.stage.platform.to_string(),
            kind: &kind,
            args: &args_used,
        })
        .expect("step definitions serialize");
        self.steps.push(Step {
            line: self.line,
            instruction: self.kw,
            kind,
            created_by,
            empty_layer,
            args_used,
            definition,
            config: self.config.clone(),
        });
    }

    /// A metadata-only step.
    fn config_step(&mut self, change: String) {
        let used = self.used_args();
        self.push(StepKind::Config { change: change.clone() }, change, true, used);
    }

    fn shell(&self) -> Vec<String> {
        self.config.shell.clone().unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// The argv of CMD/ENTRYPOINT: exec form as is, shell form through `SHELL`.
    fn command_args(&self, c: &CommandLine) -> Vec<String> {
        match c {
            CommandLine::Exec(a) => a.clone(),
            CommandLine::Shell(s) => self.shell().into_iter().chain([s.clone()]).collect(),
        }
    }

    fn workdir(&self) -> String {
        if self.config.working_dir.is_empty() {
            "/".into()
        } else {
            self.config.working_dir.clone()
        }
    }

    /// An absolute path; relative ones are joined to the `WORKDIR`.
    fn absolute(&self, p: &str) -> String {
        if p.starts_with('/') {
            clean_path(p)
        } else {
            clean_path(&format!("{}/{p}", self.workdir()))
        }
    }

    fn source(&mut self, from: &Option<String>, what: &str) -> Result<Source, DockerfileError> {
        let Some(from) = from else { return Ok(Source::Context) };
        let v = self.expand(from)?;
        match stage_ref(&v, self.stage.index, &self.names).map_err(|e| self.err(e.kind(what)))? {
            StageRef::Stage(i) => Ok(Source::Stage(i)),
            StageRef::Image(name) => Ok(Source::Image(name)),
        }
    }

    fn chmod(&mut self, chmod: &Option<String>) -> Result<Option<u32>, DockerfileError> {
        let Some(raw) = chmod else { return Ok(None) };
        let v = self.expand(raw)?;
        match u32::from_str_radix(&v, 8) {
            Ok(m) if m <= 0o7777 => Ok(Some(m)),
            _ => Err(self.err(ErrorKind::BadFlag {
                flag: "chmod".into(),
                value: v,
                why: "expected an octal mode such as 755".into(),
            })),
        }
    }

    // ---- one handler per instruction ----

    fn on_env(&mut self, pairs: &[KeyValue]) -> Result<(), DockerfileError> {
        // All pairs are substituted with the environment from before the instruction.
        let mut expanded = Vec::new();
        for kv in pairs {
            expanded.push((self.expand(&kv.key)?, self.expand(&kv.value)?));
        }
        for (k, v) in &expanded {
            self.config.set_env(k, v);
            self.set_state(k, v);
        }
        let text: Vec<String> = expanded.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.config_step(format!("ENV {}", text.join(" ")));
        Ok(())
    }

    fn on_label(&mut self, pairs: &[KeyValue]) -> Result<(), DockerfileError> {
        let mut text = Vec::new();
        for kv in pairs {
            let (k, v) = (self.expand(&kv.key)?, self.expand(&kv.value)?);
            text.push(format!("{k}={v}"));
            self.config.labels.insert(k, v);
        }
        self.config_step(format!("LABEL {}", text.join(" ")));
        Ok(())
    }

    fn on_arg(&mut self, decls: &[ArgDecl]) -> Result<(), DockerfileError> {
        let mut text = Vec::new();
        for d in decls {
            let vars = self.state_env.clone();
            let value = arg_value(d, &self.build.options, &self.build.global_args, &self.lexer, &vars)
                .map_err(|k| self.err(k))?;
            if let Some(v) = &value {
                self.set_state(&d.name, v);
                text.push(format!("{}={v}", d.name));
            } else {
                text.push(d.name.clone());
            }
            self.args.retain(|(k, _)| *k != d.name);
            self.args.push((d.name.clone(), value));
        }
        self.config_step(format!("ARG {}", text.join(" ")));
        Ok(())
    }

    fn on_workdir(&mut self, raw: &str) -> Result<(), DockerfileError> {
        let p = self.expand(raw)?;
        let wd = self.absolute(&p);
        self.config.working_dir = wd.clone();
        let created_by = format!("WORKDIR {wd}");
        let used = self.used_args();
        if wd == "/" {
            self.push(StepKind::Config { change: created_by.clone() }, created_by, true, used);
        } else {
            let user = self.config.user.clone();
            self.push(StepKind::Mkdir { path: wd, user }, created_by, false, used);
        }
        Ok(())
    }

    fn on_user(&mut self, raw: &str) -> Result<(), DockerfileError> {
        self.config.user = self.expand(raw)?;
        let change = format!("USER {}", self.config.user);
        self.config_step(change);
        Ok(())
    }

    fn on_expose(&mut self, raw: &[String]) -> Result<(), DockerfileError> {
        let mut ports = BTreeSet::new();
        for r in raw {
            for word in self.expand_words(r)? {
                ports.extend(expose_ports(&word).map_err(|k| self.err(k))?);
            }
        }
        for p in &ports {
            self.config.exposed_ports.insert(p.clone(), Default::default());
        }
        // Go's `%v` of a map[nat.Port]struct{}: keys sorted as strings.
        let text: Vec<String> = ports.iter().map(|p| format!("{p}:{{}}")).collect();
        self.config_step(format!("EXPOSE map[{}]", text.join(" ")));
        Ok(())
    }

    fn on_volume(&mut self, raw: &[String]) -> Result<(), DockerfileError> {
        let mut vols = Vec::new();
        for r in raw {
            let v = self.expand(r)?;
            if v.trim().is_empty() {
                return Err(self.err(syntax("VOLUME specified can not be an empty string")));
            }
            self.config.volumes.insert(v.clone(), Default::default());
            vols.push(v);
        }
        self.config_step(format!("VOLUME [{}]", vols.join(" ")));
        Ok(())
    }

    fn on_stopsignal(&mut self, raw: &str) -> Result<(), DockerfileError> {
        let sig = self.expand(raw)?;
        let name = sig.strip_prefix("SIG").unwrap_or(&sig);
        let valid = name.parse::<u32>().map_or(
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-'),
            |n| n > 0 && n < 65,
        );
        if !valid {
            return Err(self.err(syntax(format!("Invalid signal: {sig}"))));
        }
        self.config.stop_signal = Some(sig.clone());
        self.config_step(format!("STOPSIGNAL {sig}"));
        Ok(())
    }

    fn on_cmd(&mut self, c: &CommandLine) -> Result<(), DockerfileError> {
        let args = self.command_args(c);
        self.config.cmd = Some(args.clone());
        self.cmd_set = true;
        self.config_step(format!("CMD {}", go_quote_list(&args)));
        Ok(())
    }

    fn on_entrypoint(&mut self, c: &CommandLine) -> Result<(), DockerfileError> {
        let args = self.command_args(c);
        self.config.entrypoint = (!args.is_empty()).then(|| args.clone());
        if !self.cmd_set {
            self.config.cmd = None;
        }
        self.config_step(format!("ENTRYPOINT {}", go_quote_list(&args)));
        Ok(())
    }

    fn on_shell(&mut self, shell: &[String]) -> Result<(), DockerfileError> {
        self.config.shell = Some(shell.to_vec());
        self.config_step(format!("SHELL {}", go_quote_list(shell)));
        Ok(())
    }

    fn on_healthcheck(&mut self, h: &Healthcheck) -> Result<(), DockerfileError> {
        let hc = HealthConfig {
            test: h.test.clone(),
            interval: h.interval,
            timeout: h.timeout,
            start_period: h.start_period,
            start_interval: h.start_interval,
            retries: u64::from(h.retries),
        };
        let text = healthcheck_history(&hc);
        self.config.healthcheck = Some(hc);
        self.config_step(text);
        Ok(())
    }

    fn on_onbuild(&mut self, o: &Onbuild) -> Result<(), DockerfileError> {
        self.config.on_build.push(o.expression.clone());
        self.config_step(format!("ONBUILD {}", o.expression));
        Ok(())
    }

    fn on_maintainer(&mut self, m: &str) -> Result<(), DockerfileError> {
        self.author = Some(m.to_string());
        self.config_step(format!("MAINTAINER {m}"));
        Ok(())
    }

    fn on_run(&mut self, r: &Run) -> Result<(), DockerfileError> {
        let mut mounts = Vec::new();
        for m in &r.mounts {
            mounts.push(self.mount(m)?);
        }
        let mut inline = Vec::new();
        let argv = match &r.command {
            CommandLine::Exec(a) => a.clone(),
            CommandLine::Shell(cmd) => {
                let single = (r.heredocs.len() == 1)
                    .then(|| super::parse::heredoc_word(cmd.trim()))
                    .flatten()
                    .filter(|(name, ..)| *name == r.heredocs[0].name);
                let script = if single.is_some() {
                    let h = &r.heredocs[0];
                    let path = format!("/dev/pipes/{}", h.name);
                    inline.push(InlineFile { path: path.clone(), data: h.body(), mode: 0o755 });
                    path
                } else {
                    // The shell reads the heredocs itself.
                    r.heredocs.iter().fold(cmd.clone(), |acc, h| format!("{acc}\n{}{}", h.content, h.name))
                };
                self.shell().into_iter().chain([script]).collect()
            }
        };
        let mut env: Vec<String> = Vec::new();
        for (k, v) in &self.state_env {
            set_pair(&mut env, k, v);
        }
        if !self.state_env.iter().any(|(k, _)| k == "PATH") {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let declared: BTreeSet<&str> = self.args.iter().map(|(k, _)| k.as_str()).collect();
        let proxy_env = self
            .build
            .options
            .build_args
            .iter()
            .filter(|(k, _)| PROXY_ARGS.contains(&k.as_str()) && !declared.contains(k.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // BuildKit's `RUN |N K=V … cmd`: every ARG of the stage, with its current value.
        let mut shown: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.args {
            let value = self.state(k).map(str::to_string).or(v.clone()).unwrap_or_default();
            match shown.iter_mut().find(|(s, _)| s == k) {
                Some(slot) => slot.1 = value,
                None => shown.push((k.clone(), value)),
            }
        }
        let prefix = if shown.is_empty() {
            String::new()
        } else {
            let kv: Vec<String> = shown.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("|{} {} ", shown.len(), kv.join(" "))
        };
        let created_by = format!("RUN {prefix}{} # buildkit", argv.join(" "));
        let step = RunStep {
            argv,
            env,
            proxy_env,
            user: self.config.user.clone(),
            workdir: self.workdir(),
            mounts,
            network: r.network,
            inline,
        };
        self.push(StepKind::Run(step), created_by, false, shown.into_iter().collect());
        Ok(())
    }

    fn mount(&mut self, m: &MountSpec) -> Result<Mount, DockerfileError> {
        let opt = |v: &Option<String>, me: &mut Self| v.as_ref().map(|s| me.expand(s)).transpose();
        let target = opt(&m.target, self)?.map(|t| self.absolute(&t));
        let source = opt(&m.source, self)?.unwrap_or_default();
        let id = opt(&m.id, self)?;
        let env = opt(&m.env, self)?;
        let from = match &m.from {
            Some(_) => Some(self.source(&m.from, "RUN --mount from")?),
            None => None,
        };
        let target_or_err = |t: Option<String>| {
            t.ok_or_else(|| ErrorKind::BadFlag {
                flag: "mount".into(),
                value: String::new(),
                why: "the mount needs target=".into(),
            })
        };
        Ok(match m.kind {
            MountKind::Bind => Mount::Bind {
                target: target_or_err(target).map_err(|k| self.err(k))?,
                from: from.unwrap_or(Source::Context),
                source,
                readwrite: m.readonly == Some(false),
            },
            MountKind::Cache => {
                let target = target_or_err(target).map_err(|k| self.err(k))?;
                Mount::Cache {
                    id: id.unwrap_or_else(|| target.clone()),
                    target,
                    sharing: m.sharing,
                    from,
                    source,
                    readonly: m.readonly == Some(true),
                    mode: m.mode.unwrap_or(0o755),
                    uid: m.uid.unwrap_or(0),
                    gid: m.gid.unwrap_or(0),
                }
            }
            MountKind::Secret => {
                let id = match id {
                    Some(id) => id,
                    None => target.as_deref().and_then(|t| t.rsplit('/').next()).unwrap_or_default().to_string(),
                };
                let target = match (target, &env) {
                    (Some(t), _) => Some(t),
                    (None, None) => Some(format!("/run/secrets/{id}")),
                    (None, Some(_)) => None,
                };
                Mount::Secret {
                    id,
                    target,
                    env,
                    required: m.required,
                    mode: m.mode.unwrap_or(0o400),
                    uid: m.uid.unwrap_or(0),
                    gid: m.gid.unwrap_or(0),
                }
            }
            MountKind::Tmpfs => Mount::Tmpfs { target: target_or_err(target).map_err(|k| self.err(k))?, size: m.size },
        })
    }

    fn on_copy(&mut self, c: &CopyFiles) -> Result<(), DockerfileError> {
        let from = self.source(&c.from, "COPY --from")?;
        let step = self.copy_step(&c.common, from, false)?;
        let created_by = self.copy_history("COPY", &step.sources, &step.inline, &c.common.dest)?;
        let used = self.used_args();
        self.push(StepKind::Copy(step), created_by, false, used);
        Ok(())
    }

    fn on_add(&mut self, a: &AddFiles) -> Result<(), DockerfileError> {
        let step = self.copy_step(&a.common, Source::Context, true)?;
        let created_by = self.copy_history("ADD", &step.sources, &step.inline, &a.common.dest)?;
        let is_url = |s: &String| s.starts_with("http://") || s.starts_with("https://");
        if let Some(git) = step
            .sources
            .iter()
            .find(|s| s.starts_with("git@") || s.starts_with("git://") || (is_url(s) && s.ends_with(".git")))
        {
            return Err(self.err(unsupported(format!("ADD of a git repository ({git})"), "clone it in a RUN step")));
        }
        let urls = step.sources.iter().filter(|s| is_url(s)).count();
        let checksum = a.checksum.as_ref().map(|c| self.expand(c)).transpose()?;
        let used = self.used_args();
        if urls == 0 {
            if checksum.is_some() {
                return Err(self.err(syntax("checksum can't be specified for non-HTTP(S) sources")));
            }
            self.push(StepKind::Copy(step), created_by, false, used);
            return Ok(());
        }
        if urls != step.sources.len() || !step.inline.is_empty() {
            return Err(self.err(unsupported(
                "ADD mixing URLs with local files",
                "split it into one ADD for the URLs and one for the files",
            )));
        }
        if let Some(c) = &checksum {
            let ok =
                c.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err(self.err(ErrorKind::BadFlag {
                    flag: "checksum".into(),
                    value: c.clone(),
                    why: "expected sha256: and 64 hex digits".into(),
                }));
            }
        }
        let add = AddUrlStep {
            urls: step.sources,
            checksum,
            dest: step.dest,
            dest_is_dir: step.dest_is_dir,
            chown: step.chown,
            chmod: step.chmod,
            link: step.link,
        };
        self.push(StepKind::AddUrl(add), created_by, false, used);
        Ok(())
    }

    fn copy_step(&mut self, c: &CopyCommon, from: Source, unpack_archives: bool) -> Result<CopyStep, DockerfileError> {
        let mut sources = Vec::new();
        for s in &c.sources {
            sources.push(self.expand(s)?);
        }
        let mut inline = Vec::new();
        let heredoc_lexer = Lexer { skip_quotes: true, ..Lexer::new('\\') };
        for h in &c.inline {
            let data = if h.expand {
                let e = heredoc_lexer.process_with(&h.body(), &self.state_env).map_err(|e| self.err(e.into()))?;
                self.matched.extend(e.matched);
                e.value
            } else {
                h.body()
            };
            inline.push(InlineFile { path: h.name.clone(), data, mode: 0o644 });
        }
        let dest = self.expand(&c.dest)?;
        let dest_is_dir = dest.is_empty() || dest == "." || dest.ends_with('/');
        if sources.len() + inline.len() > 1 && !dest_is_dir {
            return Err(self.err(syntax(format!(
                "When using {} with more than one source file, the destination must be a directory and end with a /",
                self.kw
            ))));
        }
        let chown = c.chown.as_ref().map(|s| self.expand(s)).transpose()?;
        let chmod = self.chmod(&c.chmod)?;
        let mut exclude = Vec::new();
        for e in &c.exclude {
            exclude.push(self.expand(e)?);
        }
        Ok(CopyStep {
            from,
            sources,
            inline,
            dest: self.absolute(&dest),
            dest_is_dir,
            chown,
            chmod,
            link: c.link,
            exclude,
            unpack_archives,
        })
    }

    /// `COPY a b /dest # buildkit`, as BuildKit writes it.
    fn copy_history(
        &mut self,
        kw: &str,
        sources: &[String],
        inline: &[InlineFile],
        dest: &str,
    ) -> Result<String, DockerfileError> {
        let mut text = kw.to_string();
        for s in sources {
            text.push(' ');
            text.push_str(s);
        }
        for f in inline {
            text.push_str(" <<");
            text.push_str(&f.path);
        }
        let dest = self.expand(dest)?;
        Ok(format!("{text} {dest} # buildkit"))
    }
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, … (ranges expanded, protocol lower-cased).
fn expose_ports(word: &str) -> Result<Vec<String>, ErrorKind> {
    let bad = || syntax(format!("invalid port {word:?}: use PORT[/PROTOCOL] or FIRST-LAST[/PROTOCOL]"));
    if word.contains(':') {
        return Err(syntax(format!("EXPOSE takes container ports only, not IP or host mappings: {word:?}")));
    }
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let parse = |s: &str| s.parse::<u16>().ok();
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (parse(a).ok_or_else(bad)?, parse(b).ok_or_else(bad)?),
        None => {
            let p = parse(ports).ok_or_else(bad)?;
            (p, p)
        }
    };
    if last < first {
        return Err(bad());
    }
    Ok((first..=last).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;
    use crate::dockerfile::stages::{resolve, BuildOptions};

    fn opts(args: &[(&str, &str)]) -> BuildOptions {
        BuildOptions {
            build_args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            target: None,
            target_platform: Platform::parse("linux/arm64").unwrap(),
            build_platform: Platform::parse("linux/amd64").unwrap(),
        }
    }

    /// Lowers with every image base having `base`'s config.
    fn plan_with(text: &str, o: &BuildOptions, base: &ImageConfig) -> Result<Plan, DockerfileError> {
        let b = resolve(&parse(text, "Dockerfile")?, o)?;
        lower(&b, |_, _| Ok::<_, DockerfileError>(base.clone()))
    }

    fn plan(text: &str) -> Plan {
        let base = ImageConfig { env: vec!["PATH=/usr/bin:/bin".into()], ..ImageConfig::default() };
        plan_with(text, &opts(&[]), &base).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(s: &Step) -> &RunStep {
        match &s.kind {
            StepKind::Run(r) => r,
            other => panic!("not RUN: {other:?}"),
        }
    }

    fn copy(s: &Step) -> &CopyStep {
        match &s.kind {
            StepKind::Copy(c) => c,
            other => panic!("not COPY: {other:?}"),
        }
    }

    #[test]
    fn config_effects_and_history_as_buildkit_writes_them() {
        let p = plan(
            "FROM busybox\nENV A=1 B=\"two words\"\nLABEL org.x=\"$A\"\nWORKDIR app\nWORKDIR ../srv\nUSER 1000:1000\nEXPOSE 80 53/UDP 8000-8001\n\
             VOLUME /data /cache\nSTOPSIGNAL SIGTERM\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo $A\nENTRYPOINT [\"/e\"]\n\
             HEALTHCHECK --interval=30s --retries=3 CMD curl -f http://localhost/\nONBUILD RUN make\nMAINTAINER Jane\n",
        );
        let st = p.target();
        let c = &st.config;
        assert_eq!(c.env, ["PATH=/usr/bin:/bin", "A=1", "B=two words"]);
        assert_eq!(c.labels["org.x"], "1");
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.exposed_ports.keys().collect::<Vec<_>>(), ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert_eq!(c.volumes.keys().collect::<Vec<_>>(), ["/cache", "/data"]);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(c.shell.as_deref(), Some(&["/bin/bash".to_string(), "-c".into()][..]));
        assert_eq!(c.entrypoint, Some(vec!["/e".to_string()]));
        assert_eq!(
            c.cmd,
            Some(vec!["/bin/bash".to_string(), "-c".into(), "echo $A".into()]),
            "CMD set in the stage survives ENTRYPOINT"
        );
        assert_eq!(c.healthcheck.as_ref().unwrap().test, ["CMD-SHELL", "curl -f http://localhost/"]);
        assert_eq!(c.on_build, ["RUN make"]);
        assert_eq!(st.author.as_deref(), Some("Jane"));
        let history: Vec<(&str, bool)> = st.steps.iter().map(|s| (s.created_by.as_str(), s.empty_layer)).collect();
        assert_eq!(
            history,
            [
                ("ENV A=1 B=two words", true),
                ("LABEL org.x=1", true),
                ("WORKDIR /app", false),
                ("WORKDIR /srv", false),
                ("USER 1000:1000", true),
                ("EXPOSE map[53/udp:{} 80/tcp:{} 8000/tcp:{} 8001/tcp:{}]", true),
                ("VOLUME [/data /cache]", true),
                ("STOPSIGNAL SIGTERM", true),
                ("SHELL [\"/bin/bash\" \"-c\"]", true),
                ("CMD [\"/bin/bash\" \"-c\" \"echo $A\"]", true),
                ("ENTRYPOINT [\"/e\"]", true),
                (
                    "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://localhost/\"] \"30s\" \"0s\" \"0s\" \"0s\" '\\x03'}",
                    true
                ),
                ("ONBUILD RUN make", true),
                ("MAINTAINER Jane", true),
            ]
        );
        // each step carries the config after it
        assert_eq!(st.steps[0].config.env.len(), 3);
        assert!(st.steps[0].config.labels.is_empty());
    }

    #[test]
    fn entrypoint_resets_an_inherited_cmd() {
        let base = ImageConfig { cmd: Some(vec!["sh".into()]), ..ImageConfig::default() };
        let p = plan_with("FROM busybox\nENTRYPOINT [\"/e\"]\n", &opts(&[]), &base).unwrap();
        assert_eq!(p.target().config.cmd, None);
        let p = plan_with("FROM busybox\nENTRYPOINT []\n", &opts(&[]), &base).unwrap();
        assert_eq!((p.target().config.entrypoint.clone(), p.target().config.cmd.clone()), (None, None));
    }

    #[test]
    fn env_pairs_see_the_environment_from_before_the_instruction() {
        let p = plan("FROM busybox\nENV A=hello\nENV A=bye B=$A\nENV C=${A}_x D=\\$A\n");
        assert_eq!(p.target().config.env[1..], ["A=bye", "B=hello", "C=bye_x", "D=$A"]);
    }

    #[test]
    fn run_shell_exec_heredoc_env_and_history() {
        let p = plan_with(
            "FROM busybox\nARG V=1\nARG UNSET\nENV E=e\nRUN echo $V\nRUN [\"echo\", \"$V\"]\nRUN <<EOF\necho one\nEOF\n\
             RUN <<A cat >/a && <<-B cat >/b\naaa\nA\n\tbbb\n\tB\nUSER app\nWORKDIR /w\nRUN --network=none id\n",
            &opts(&[("HTTP_PROXY", "http://proxy")]),
            &ImageConfig::default(),
        )
        .unwrap();
        let steps = &p.target().steps;
        let r = run(&steps[3]);
        assert_eq!(r.argv, ["/bin/sh", "-c", "echo $V"], "RUN text is left to the shell");
        assert_eq!(r.env, ["V=1", "E=e", format!("PATH={DEFAULT_PATH}").as_str()]);
        assert_eq!(r.proxy_env, ["HTTP_PROXY=http://proxy"]);
        assert_eq!((r.user.as_str(), r.workdir.as_str()), ("", "/"));
        assert_eq!(steps[3].created_by, "RUN |2 V=1 UNSET= /bin/sh -c echo $V # buildkit");
        assert_eq!(steps[3].args_used, BTreeMap::from([("UNSET".into(), String::new()), ("V".into(), "1".into())]));
        assert!(!String::from_utf8_lossy(&steps[3].definition).contains("proxy"), "proxies never reach the key");
        assert_eq!(run(&steps[4]).argv, ["echo", "$V"]);
        let h = run(&steps[5]);
        assert_eq!(h.argv, ["/bin/sh", "-c", "/dev/pipes/EOF"]);
        assert_eq!(h.inline, [InlineFile { path: "/dev/pipes/EOF".into(), data: "echo one\n".into(), mode: 0o755 }]);
        let m = run(&steps[6]);
        assert_eq!(m.argv[2], "<<A cat >/a && <<-B cat >/b\naaa\nA\n\tbbb\nB", "the shell reads the heredocs");
        assert!(m.inline.is_empty());
        let last = run(&steps[9]);
        assert_eq!((last.user.as_str(), last.workdir.as_str(), last.network), ("app", "/w", Some(Network::None)));
    }

    #[test]
    fn mounts_get_their_defaults_and_substitution() {
        let p = plan(
            "FROM busybox AS build\nFROM busybox\nARG C=/root/.cache\nWORKDIR /src\n\
             RUN --mount=type=cache,target=$C --mount=type=secret,id=tok --mount=type=secret,target=/k/key.pem \
             --mount=type=secret,id=e,env=TOKEN --mount=from=build,source=/out,target=out --mount=type=tmpfs,target=/t true\n",
        );
        let r = run(p.target().steps.last().unwrap());
        assert_eq!(
            r.mounts,
            [
                Mount::Cache {
                    target: "/root/.cache".into(),
                    id: "/root/.cache".into(),
                    sharing: Sharing::Shared,
                    from: None,
                    source: String::new(),
                    readonly: false,
                    mode: 0o755,
                    uid: 0,
                    gid: 0
                },
                Mount::Secret {
                    id: "tok".into(),
                    target: Some("/run/secrets/tok".into()),
                    env: None,
                    required: false,
                    mode: 0o400,
                    uid: 0,
                    gid: 0
                },
                Mount::Secret {
                    id: "key.pem".into(),
                    target: Some("/k/key.pem".into()),
                    env: None,
                    required: false,
                    mode: 0o400,
                    uid: 0,
                    gid: 0
                },
                Mount::Secret {
                    id: "e".into(),
                    target: None,
                    env: Some("TOKEN".into()),
                    required: false,
                    mode: 0o400,
                    uid: 0,
                    gid: 0
                },
                Mount::Bind {
                    target: "/src/out".into(),
                    from: Source::Stage(0),
                    source: "/out".into(),
                    readwrite: false
                },
                Mount::Tmpfs { target: "/t".into(), size: None },
            ]
        );
    }

    #[test]
    fn copy_and_add_steps() {
        let p = plan(
            "FROM busybox AS build\nFROM busybox\nARG NAME=app\nWORKDIR /srv\nCOPY --from=build --chown=$NAME --chmod=640 --exclude=*.md a b ./\n\
             COPY $NAME.conf conf/\nCOPY <<EOF /etc/motd\nhi $NAME \"q\"\nEOF\nADD site.tar.gz /www\n\
             ADD --checksum=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef https://example.com/x.tgz /x\nCOPY --from=alpine:3 /etc/os-release .\n",
        );
        let steps = &p.target().steps;
        let c = copy(&steps[2]);
        assert_eq!(
            (c.from.clone(), c.sources.clone(), c.dest.as_str(), c.dest_is_dir),
            (Source::Stage(0), vec!["a".to_string(), "b".into()], "/srv", true)
        );
        assert_eq!(
            (c.chown.as_deref(), c.chmod, c.exclude.clone()),
            (Some("app"), Some(0o640), vec!["*.md".to_string()])
        );
        assert_eq!(steps[2].created_by, "COPY a b ./ # buildkit");
        assert_eq!(steps[2].args_used, BTreeMap::from([("NAME".into(), "app".into())]));
        let c = copy(&steps[3]);
        assert_eq!(
            (c.sources[0].as_str(), c.dest.as_str(), c.from.clone()),
            ("app.conf", "/srv/conf", Source::Context)
        );
        let c = copy(&steps[4]);
        assert_eq!(c.inline, [InlineFile { path: "EOF".into(), data: "hi app \"q\"\n".into(), mode: 0o644 }]);
        assert_eq!(steps[4].created_by, "COPY <<EOF /etc/motd # buildkit");
        assert!(copy(&steps[5]).unpack_archives);
        match &steps[6].kind {
            StepKind::AddUrl(a) => {
                assert_eq!((a.urls[0].as_str(), a.dest.as_str()), ("https://example.com/x.tgz", "/x"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(copy(&steps[7]).from, Source::Image("alpine:3".into()));
        assert!(!copy(&steps[7]).dest_is_dir || copy(&steps[7]).dest == "/srv");
    }

    #[test]
    fn copy_errors_name_the_line() {
        let base = ImageConfig::default();
        let e = |t: &str| plan_with(t, &opts(&[]), &base).unwrap_err().to_string();
        assert_eq!(e("FROM a\nCOPY a b /dest\n"), "Dockerfile:2: COPY: When using COPY with more than one source file, the destination must be a directory and end with a /");
        assert_eq!(
            e("FROM a\nCOPY --chmod=abc a /d\n"),
            "Dockerfile:2: COPY: invalid --chmod=\"abc\": expected an octal mode such as 755"
        );
        assert_eq!(
            e("FROM a\nADD --checksum=sha256:00 a /d\n"),
            "Dockerfile:2: ADD: checksum can't be specified for non-HTTP(S) sources"
        );
        assert!(e("FROM a\nADD https://x/y.git /d\n").contains("git repository"));
        assert!(e("FROM a\nADD https://x/y local /d/\n").contains("ADD mixing URLs"));
        assert_eq!(
            e("FROM a\nEXPOSE 80:80\n"),
            "Dockerfile:2: EXPOSE: EXPOSE takes container ports only, not IP or host mappings: \"80:80\""
        );
        assert_eq!(e("FROM a\nLABEL x=${Y:?needs_Y}\n"), "Dockerfile:2: LABEL: Y: needs_Y");
    }

    #[test]
    fn arg_scoping_per_stage() {
        let text = "ARG GLOBAL=g\nARG OVER=default\nFROM busybox AS one\nARG GLOBAL\nARG LOCAL=l-$GLOBAL\nARG OVER\nRUN x\n\
                    FROM busybox AS two\nRUN y $GLOBAL\nARG TARGETARCH\nARG BUILDPLATFORM\nLABEL a=$GLOBAL/$LOCAL/$TARGETARCH/$BUILDPLATFORM\n";
        let base = ImageConfig::default();
        let p =
            plan_with(text, &BuildOptions { target: Some("one".into()), ..opts(&[("OVER", "cli")]) }, &base).unwrap();
        assert_eq!(p.target().steps[3].created_by, "RUN |3 GLOBAL=g LOCAL=l-g OVER=cli /bin/sh -c x # buildkit");
        let p = plan_with(text, &opts(&[("OVER", "cli")]), &base).unwrap();
        let two = p.target();
        assert_eq!(
            two.steps[0].created_by, "RUN /bin/sh -c y $GLOBAL # buildkit",
            "a global ARG needs a stage ARG to be seen"
        );
        assert_eq!(two.config.labels["a"], "//arm64/linux/amd64");
        assert_eq!(p.stages.len(), 1, "stage one is not needed for two");
    }

    #[test]
    fn definitions_change_with_what_matters_only() {
        let d = |t: &str, args: &[(&str, &str)]| {
            let p = plan_with(t, &opts(args), &ImageConfig::default()).unwrap();
            p.target().steps.last().unwrap().digest()
        };
        let a = d("FROM a\nARG V\nRUN echo $V\n", &[("V", "1")]);
        assert_eq!(
            a,
            d("# comment\nFROM a\n\nARG V\nRUN   echo $V\n", &[("V", "1")]),
            "spacing and lines do not count"
        );
        assert_ne!(a, d("FROM a\nARG V\nRUN echo $V\n", &[("V", "2")]), "an arg's value counts");
        assert_eq!(d("FROM a\nARG V\nRUN echo $V\n", &[("V", "1"), ("HTTP_PROXY", "x")]), a, "proxy args do not count");
        assert_ne!(d("FROM a\nCOPY x /y\n", &[]), d("FROM a\nCOPY x /z\n", &[]));
        assert!(a.starts_with("sha256:") && a.len() == 71);
    }

    #[test]
    fn onbuild_triggers_of_a_base_run_first_and_are_not_inherited() {
        let p = plan("FROM busybox AS base\nONBUILD RUN echo triggered\nONBUILD ENV T=1\nFROM base\nRUN after\n");
        let child = p.target();
        assert_eq!(
            child.steps.iter().map(|s| (s.line, s.created_by.as_str())).collect::<Vec<_>>(),
            [(4, "RUN /bin/sh -c echo triggered # buildkit"), (4, "ENV T=1"), (5, "RUN /bin/sh -c after # buildkit"),]
        );
        assert!(child.config.on_build.is_empty());
        assert_eq!(p.stages[0].config.on_build, ["RUN echo triggered", "ENV T=1"]);
        // an image base's triggers too
        let base = ImageConfig { on_build: vec!["COPY . /app".into()], ..ImageConfig::default() };
        let p = plan_with("FROM onbuild-image\nRUN x\n", &opts(&[]), &base).unwrap();
        assert_eq!(copy(&p.target().steps[0]).dest, "/app");
        let bad = ImageConfig { on_build: vec!["FROM x".into()], ..ImageConfig::default() };
        let e = plan_with("FROM a\nRUN x\n", &opts(&[]), &bad).unwrap_err();
        assert_eq!(e.to_string(), "Dockerfile:1: ONBUILD: FROM isn't allowed as an ONBUILD trigger");
    }

    #[test]
    fn scratch_gets_buildkits_empty_image_config() {
        let p = plan("FROM scratch\nCOPY a /\n");
        assert_eq!(p.target().config.env, [format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(p.target().config.working_dir, "/");
    }
}
