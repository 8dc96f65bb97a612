//! Buildpacks, run through the build's [`Runner`](crate::sandbox::Runner): on the host or in
//! the build-image sandbox.
//!
//! Two APIs (see docs/buildpack-contracts.md): Cloud Native Buildpacks in [`cnb`]
//! (a buildpack with `buildpack.toml`), and Heroku classic here:
//! * [`plan`] decides which buildpacks to run and makes a private, writable copy of each
//!   under `work/buildpacks/` (directories are copied, `.tgz` archives extracted safely);
//! * [`run`] runs detect, the app's pre-compile hook, every compile, the post-compile hook and
//!   every release, streaming their output through the [`Reporter`](crate::report::Reporter);
//! * [`Outcome::commit_caches`] moves the new CACHE_DIRs into place once the whole build has
//!   succeeded, so a failed build never damages the previous cache;
//! * [`apply_slugignore`] removes what the app's `.slugignore` lists.

use std::fmt;
use std::io;
use std::path::PathBuf;

mod archive;
pub mod cnb;
mod heroku;
mod plan;
mod release;
mod slugignore;

pub use heroku::{run, Caches, HerokuEnv, Outcome};
pub use plan::plan;
pub use slugignore::apply_slugignore;

/// A buildpack ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buildpack {
    /// For messages: the directory name, or the file name of a `.tgz`.
    pub name: String,
    /// Where it came from (canonical).
    pub source: PathBuf,
    /// A writable private copy (buildpacks write `BUILDPACK_DIR/export`); holds `bin/`.
    pub dir: PathBuf,
    /// Stable identity for the CACHE_DIR: sha256 (hex) of the canonical source path.
    pub key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every buildpack must detect, and all of them run, in order.
    All,
    /// The first buildpack that detects runs, alone.
    FirstThatDetects,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub buildpacks: Vec<Buildpack>,
    pub selection: Selection,
}

/// What a `bin/detect` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectAnswer {
    pub buildpack: String,
    /// `exit code 1`, `signal 9`.
    pub status: String,
    /// The first line it printed (stdout, else stderr), trimmed; may be empty.
    pub first_line: String,
}

impl fmt::Display for DetectAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: bin/detect ended with {}", self.buildpack, self.status)?;
        if self.first_line.is_empty() {
            write!(f, " and printed nothing")
        } else {
            write!(f, ", printing {:?}", self.first_line)
        }
    }
}

/// What went wrong running Heroku buildpacks.
#[derive(Debug, thiserror::Error)]
pub enum HerokuError {
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    /// A script (or the app's hook) could not be started: `who` is `buildpack NAME` or `app
    /// hook`.
    #[error("{who}: {} cannot be run", path.display())]
    Start { who: String, path: PathBuf, source: Box<crate::sandbox::RunError> },
    #[error("{0}")]
    Invalid(String),
    #[error("buildpack archive {}: {why}", path.display())]
    UnsafeArchive { path: PathBuf, why: String },
    #[error("buildpack {buildpack}: {} {why}", path.display())]
    Script { buildpack: String, path: PathBuf, why: String },
    #[error("no buildpack applies to this app; tried:{}", list_answers(answers))]
    NoneDetected { answers: Vec<DetectAnswer> },
    #[error("buildpack {} does not apply to this app ({answer})", answer.buildpack)]
    NotDetected { answer: DetectAnswer },
    #[error("{who}: {script} failed with {status}")]
    Failed { who: String, script: String, status: String },
    #[error("buildpack {buildpack}: bin/release printed unusable output: {why}")]
    Release { buildpack: String, why: String },
}

fn list_answers(answers: &[DetectAnswer]) -> String {
    answers.iter().map(|a| format!("\n  {a}")).collect()
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HerokuError {
    let what = what.into();
    move |source| HerokuError::Io { what, source }
}

/// Environment variable names as a shell accepts them: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn valid_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
pub(crate) mod test_support;
