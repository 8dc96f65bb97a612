//! Cloud Native Buildpacks (Buildpack API 0.7 to 0.12), run without the lifecycle.
//!
//! Split by concern:
//! * [`descriptor`]: `buildpack.toml` (api, id, version, targets, order);
//! * [`order`]: finding buildpacks by id and version, and expanding composite orders into
//!   the candidate groups detection tries;
//! * [`plan`]: the build plan: resolving provides and requires (with `or` alternatives and
//!   optional buildpacks) as the lifecycle does, and each buildpack's plan entries;
//! * [`env`]: environment directories (`env/`, `env.build/`, `env.launch/`) and the
//!   `bin`/`lib` layer directories;
//! * [`layers`]: what a build leaves in its layers directory (`<layer>.toml`,
//!   `launch.toml`, `build.toml`, `store.toml`, SBOM files);
//! * [`run`]: detect and build, and the state kept between builds.
//!
//! Turning the result into an image is `crate::pipeline::modes::cnb`'s work.

use std::io;
use std::path::PathBuf;

pub mod descriptor;
pub mod env;
pub mod layers;
pub mod order;
pub mod plan;
pub mod run;

pub use descriptor::{escape_id, Api, Descriptor};

#[derive(Debug, thiserror::Error)]
pub enum CnbError {
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error("{}: {why}", path.display())]
    Descriptor { path: PathBuf, why: String },
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("{0}")]
    Order(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no group of buildpacks passes detection; tried:{}", tried.iter().map(|t| format!("\n  {t}")).collect::<String>())]
    NoGroup { tried: Vec<String> },
    #[error("{who}: {script} failed with {status}")]
    Failed { who: String, script: String, status: String },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("{who}: {} cannot be run", path.display())]
    Start { who: String, path: PathBuf, source: Box<crate::sandbox::RunError> },
    #[error("Cloud Native Buildpacks need their layers at /layers and the app at its image path; build in the sandbox, or with Heroku-classic buildpacks")]
    Sandbox(#[source] Box<crate::sandbox::SandboxError>),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> CnbError {
    let what = what.into();
    move |source| CnbError::Io { what, source }
}

/// Reads a small TOML file written by a buildpack; `Ok(None)` when it does not exist.
pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<Option<T>, CnbError> {
    use std::io::Read;
    const MAX: u64 = 16 << 20;
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => f.take(MAX).read_to_string(&mut text).map_err(io_err(format!("Failed to read {}", path.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("Failed to read {}", path.display()))(e)),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| CnbError::File { path: path.to_path_buf(), why: e.to_string().trim().to_string() })
}
