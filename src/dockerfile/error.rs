//! Errors of the Dockerfile front end: each names the file, the line and the instruction.

use std::fmt;

use super::substitute::SubstError;

/// A Dockerfile that cannot be parsed, resolved or lowered.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {kind}")]
pub struct DockerfileError {
    pub at: Location,
    #[source]
    pub kind: Box<ErrorKind>,
}

/// Where an error is: `Dockerfile:12: RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The Dockerfile's name as the user gave it (`-` for stdin).
    pub file: String,
    /// 1-based line where the instruction starts (0: the file as a whole).
    pub line: usize,
    /// The instruction keyword, upper-case, when the error belongs to one.
    pub instruction: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        match &self.instruction {
            Some(i) => write!(f, ": {i}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("unknown instruction {name}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownInstruction { name: String, suggestion: Option<String> },
    #[error("unknown flag --{flag} ({instruction} takes {})", list_flags(allowed))]
    UnknownFlag { instruction: &'static str, flag: String, allowed: &'static [&'static str] },
    #[error("flag --{flag} given twice")]
    DuplicateFlag { flag: String },
    #[error("invalid --{flag}={value:?}: {why}")]
    BadFlag { flag: String, value: String, why: String },
    #[error("{0}")]
    Syntax(String),
    #[error("unterminated heredoc {name:?}: no line {name} ends it")]
    UnterminatedHeredoc { name: String },
    #[error("{what} is not supported by imgforge{}", if hint.is_empty() { String::new() } else { format!(": {hint}") })]
    Unsupported { what: String, hint: String },
    #[error(transparent)]
    Substitution(#[from] SubstError),
    #[error("the file has no instructions")]
    Empty,
    #[error("{0} before the first FROM: only ARG may come before FROM")]
    BeforeFrom(String),
    #[error("the Dockerfile has no FROM")]
    NoStages,
    #[error("stage name {name:?} is used twice (first at line {first_line})")]
    DuplicateStage { name: String, first_line: usize },
    #[error("target stage {name:?} not found (stages: {})", if available.is_empty() { "none named".into() } else { available.join(", ") })]
    TargetNotFound { name: String, available: Vec<String> },
    #[error("{what} refers to stage {reference}, which is not defined before this stage")]
    StageNotBefore { what: String, reference: String },
    #[error("stages depend on each other in a cycle: {0}")]
    Cycle(String),
}

fn list_flags(allowed: &[&str]) -> String {
    if allowed.is_empty() {
        "no flags".into()
    } else {
        allowed.iter().map(|f| format!("--{f}")).collect::<Vec<_>>().join(", ")
    }
}

impl ErrorKind {
    pub fn at(self, file: &str, line: usize, instruction: Option<&str>) -> DockerfileError {
        DockerfileError {
            at: Location { file: file.to_string(), line, instruction: instruction.map(str::to_uppercase) },
            kind: Box::new(self),
        }
    }
}

pub(crate) fn syntax(msg: impl Into<String>) -> ErrorKind {
    ErrorKind::Syntax(msg.into())
}

pub(crate) fn unsupported(what: impl Into<String>, hint: impl Into<String>) -> ErrorKind {
    ErrorKind::Unsupported { what: what.into(), hint: hint.into() }
}
