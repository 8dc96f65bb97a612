//! Helpers for this module's tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::report::{Event, Reporter};

/// `testdata/buildpacks/unit/<name>`.
pub(crate) fn unit_bp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/buildpacks/unit").join(name)
}

/// Remembers every event as one line of text.
#[derive(Default)]
pub(crate) struct Collect(pub Mutex<Vec<String>>);

impl Collect {
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Output lines of one buildpack (or "app hook"), in the order reported.
    pub(crate) fn output_of(&self, who: &str) -> Vec<String> {
        let prefix = format!("{who}| ");
        self.lines().iter().filter_map(|l| l.strip_prefix(&prefix).map(str::to_string)).collect()
    }
}

impl Reporter for Collect {
    fn report(&self, event: Event<'_>) {
        let line = match event {
            Event::Detected { candidate, applies, detail } => format!("detected {candidate} {applies} {detail}"),
            Event::CommandOutput { from, line } => format!("{from}| {line}"),
            Event::Warning(w) => format!("warning: {w}"),
            Event::Detail(d) => format!("detail: {d}"),
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(line);
    }
}

/// A gzipped tar of `dir`, its contents under `prefix` (e.g. "" or "name-1.0").
pub(crate) fn make_tgz(dir: &Path, prefix: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(if prefix.is_empty() { "." } else { prefix }, dir).unwrap();
    let tar = b.into_inner().unwrap();
    let opts = imgforge_layers::CompressOptions { threads: 1, ..Default::default() };
    let mut gz = imgforge_layers::Compressor::new(Vec::new(), opts).unwrap();
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}
