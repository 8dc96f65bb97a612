//! The Dockerfile front end. It lowers a Dockerfile into steps and never runs, caches or
//! exports anything: that is the pipeline's job, shared with the other build modes.
//!
//! - [`parse()`]: text → typed instructions with line numbers ([`instruction`]);
//! - [`substitute`]: BuildKit's variable substitution;
//! - [`stages::resolve`]: stages, bases, `--target`, ARG scopes, build args;
//! - [`plan::lower`]: each needed stage lowered to mode-neutral [`plan::Step`]s, each with
//!   its cache definition, the image config after it and its history entry;
//! - [`dockerignore`]: Docker's `.dockerignore` rules.
//!
//! An executor drives it like this:
//!
//! ```no_run
//! # fn demo(text: &str, resolve_base: impl Fn(&str) -> imgforge::dockerfile::config::ImageConfig)
//! # -> Result<(), imgforge::dockerfile::DockerfileError> {
//! use imgforge::dockerfile::{parse, plan, stages};
//! let df = parse(text, "Dockerfile")?;
//! let build = stages::resolve(&df, &stages::BuildOptions::host())?;
//! let plan = plan::lower(&build, |image, _platform| Ok::<_, imgforge::dockerfile::DockerfileError>(resolve_base(image)))?;
//! for stage in &plan.stages {
//!     for step in &stage.steps {
//!         // step.kind says what to run; step.digest() keys the step cache (with the parent
//!         // key and the content of the files a COPY reads); step.created_by and
//!         // step.empty_layer make the history entry; step.config is the config after it.
//!         let _ = (&step.kind, step.digest());
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod config;
#[cfg(test)]
mod corpus;
pub mod dockerignore;
pub mod error;
pub mod instruction;
pub mod parse;
pub mod plan;
pub mod stages;
pub mod substitute;

pub use error::{DockerfileError, ErrorKind, Location};
pub use instruction::{Instruction, Located};
pub use parse::{parse, Dockerfile};
