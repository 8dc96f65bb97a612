//! The Dockerfile front end. It lowers a Dockerfile into steps and never runs, caches or
//! exports anything: that is the pipeline's job, shared with the other build modes.
//!
//! - [`parse()`]: text → typed instructions with line numbers ([`instruction`]);
//! - [`substitute`]: BuildKit's variable substitution;
//! - [`stages::resolve`]: stages, bases, `--target`, ARG scopes, build args;
//! - [`plan`]: each needed stage lowered to mode-neutral steps with their cache
//!   definitions, image-config effects and history entries;
//! - [`dockerignore`]: Docker's `.dockerignore` rules.

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
