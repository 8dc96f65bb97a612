//! Typed Dockerfile instructions, as written (before substitution). One variant per
//! instruction; flags are parsed into typed fields.

use serde::Serialize;

/// An instruction and where it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// 1-based first and last line (a heredoc's body included).
    pub line: usize,
    pub end_line: usize,
    /// The logical line as written (continuations joined, comments dropped), for messages.
    pub source: String,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Instruction {
    From(FromImage),
    Run(Run),
    Cmd(CommandLine),
    Label(Vec<KeyValue>),
    Maintainer(String),
    Expose(Vec<String>),
    Env(Vec<KeyValue>),
    Add(AddFiles),
    Copy(CopyFiles),
    Entrypoint(CommandLine),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Arg(Vec<ArgDecl>),
    Onbuild(Onbuild),
    Stopsignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
}

impl Instruction {
    /// The keyword, upper-case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Arg(_) => "ARG",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::Stopsignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
        }
    }
}

/// `FROM [--platform=P] IMAGE [AS NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FromImage {
    pub image: String,
    /// Lower-cased, as BuildKit compares stage names.
    pub name: Option<String>,
    pub platform: Option<String>,
}

/// Shell form (run through the stage's `SHELL`) or exec form (a JSON array, run as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CommandLine {
    Shell(String),
    Exec(Vec<String>),
}

/// A here-document attached to `RUN`, `COPY` or `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word (`EOF`), quotes removed; for `COPY <<name` also the file name.
    pub name: String,
    /// The body, each line with its newline, the delimiter line excluded.
    pub content: String,
    /// `false` when the delimiter was quoted (`<<"EOF"`): the body is taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body.
    pub chomp: bool,
    /// `2<<EOF`: the file descriptor it feeds (0 when not given).
    pub fd: u32,
}

impl Heredoc {
    /// The body as it will be used: leading tabs removed for `<<-`.
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content.split_inclusive('\n').map(|l| l.trim_start_matches('\t')).collect()
    }
}

/// `RUN [--mount=…]… [--network=…] COMMAND`.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub mounts: Vec<MountSpec>,
    pub network: Option<Network>,
    pub command: CommandLine,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Default,
    None,
    Host,
}

/// One `--mount=…` of `RUN`, its values as written (substituted at lowering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    pub kind: MountKind,
    pub target: Option<String>,
    pub source: Option<String>,
    /// `from=`: a stage name or index, or an image (bind and cache).
    pub from: Option<String>,
    pub id: Option<String>,
    /// `None`: the type's default (bind: read-only; cache: read-write).
    pub readonly: Option<bool>,
    pub sharing: Sharing,
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
    /// secret: expose it as this environment variable.
    pub env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Cache,
    Secret,
    Tmpfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// `KEY=VALUE` of `ENV` and `LABEL`, quotes still in (removed by substitution).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `ARG NAME[=DEFAULT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

/// Flags and operands shared by `COPY` and `ADD`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CopyCommon {
    /// Source paths (or URLs for `ADD`), as written.
    pub sources: Vec<String>,
    /// `<<NAME` sources: files made from heredocs.
    pub inline: Vec<Heredoc>,
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopyFiles {
    pub common: CopyCommon,
    /// `--from=`: a stage name or index, or an image.
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AddFiles {
    pub common: CopyCommon,
    /// `--checksum=sha256:…` for URL sources.
    pub checksum: Option<String>,
}

/// `ONBUILD INSTRUCTION`: the trigger parsed, and the expression stored in the image.
#[derive(Debug, Clone, PartialEq)]
pub struct Onbuild {
    pub trigger: Box<Instruction>,
    pub expression: String,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [--interval=…]… CMD …`. Durations in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args…]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    pub interval: u64,
    pub timeout: u64,
    pub start_period: u64,
    pub start_interval: u64,
    pub retries: u32,
}
