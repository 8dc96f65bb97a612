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
    /// A candidate of the build mode answered whether it applies (a buildpack's detect;
    /// `detail` is what it printed, when it applies).
    Detected { candidate: &'a str, applies: bool, detail: &'a str },
    /// A line a command of the build printed (a buildpack's script, an app hook), as it came.
    CommandOutput { from: &'a str, line: &'a str },
    /// The build image's filesystem is ready: unpacked now (taking `millis` for `bytes`
    /// of tar), or reused from the cache.
    BuildImageReady { reference: &'a str, unpacked: bool, millis: u64, bytes: u64 },
    /// Where the build's commands run: "on the host", or the sandbox and how it was set up.
    CommandsRun(String),
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
