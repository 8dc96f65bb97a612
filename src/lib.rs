//! imgforge: build OCI images from source without a daemon, without root, reproducibly.
//!
//! The library never prints: progress and warnings go through [`report::Reporter`].

pub mod buildpack;
pub mod copy;
pub mod dockerfile;
pub mod fsutil;
pub mod image;
pub mod inspect;
pub mod parallel;
pub mod pipeline;
pub mod report;
pub mod sandbox;
pub mod store;
pub mod transport;

pub use imgforge_layers as layers;
