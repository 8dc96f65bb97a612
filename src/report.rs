//! Progress and diagnostics leave the library only through a [`Reporter`]; the CLI decides
//! how (or whether) to draw them. The library never prints.

use imgforge_layers::LayerDigests;

#[derive(Debug)]
pub enum Event<'a> {
    /// A step of the pipeline begins.
    Step(&'a str),
    /// The base image is known.
    BaseResolved { reference: &'a str, digest: Option<String>, layers: usize },
    /// A layer is being written; `bytes` is how much of its input was read so far.
    LayerProgress { name: &'a str, bytes: u64 },
    /// A layer is done: written now, or reused.
    LayerDone { name: &'a str, digests: &'a LayerDigests, reused: bool, why: Option<&'a str> },
    /// Written to a destination: blobs copied or uploaded (`bytes`), hard-linked, mounted
    /// from another repository of the same registry, and already there.
    Destination { reference: &'a str, written: usize, linked: usize, mounted: usize, present: usize, bytes: u64 },
    /// A blob transfer's progress (`action` is "push" or "pull"); `done == total` at the end.
    BlobProgress { action: &'a str, digest: &'a str, done: u64, total: u64 },
    /// A buildpack's detect answered (`framework` is what it printed, when it applies).
    Detected { buildpack: &'a str, applies: bool, framework: &'a str },
    /// A line a buildpack (or app hook) printed while compiling; `----->` headings included.
    BuildpackOutput { buildpack: &'a str, line: &'a str },
    /// The build image's filesystem is ready: unpacked now (taking `millis` for `bytes`
    /// of tar), or reused from the cache.
    BuildImageReady { reference: &'a str, unpacked: bool, millis: u64, bytes: u64 },
    /// Where buildpacks run: "host", or the sandbox and how it was set up.
    Isolation(String),
    /// Something the user should know; the build goes on.
    Warning(String),
    /// Detail shown with -v.
    Detail(String),
}

pub trait Reporter: Send + Sync {
    fn report(&self, event: Event<'_>);
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {
    fn report(&self, _: Event<'_>) {}
}
