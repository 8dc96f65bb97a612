//! The plain app: its files as they are, one layer at the workdir (`/workspace` by default),
//! and the processes of its `Procfile`.
//!
//! A first build from a path (no stat cache yet: nothing to reuse is likely) scans and
//! writes the layer in one go and derives the layer's key from the hashes taken while
//! streaming, on a thread beside the rest of the build: each file is read once.

use std::path::{Path, PathBuf};

use imgforge_layers::scan_and_write;
use serde_json::json;

use super::{BuildContext, BuildMode, ModeOutput, NewLayer, PendingCommit, Processes};
use crate::pipeline::app::read_procfile;
use crate::pipeline::layers::Background;
use crate::pipeline::step_cache::StepCache;
use crate::pipeline::BuildError;
use crate::store::stat_cache::StatCache;
use crate::store::BlobStore;

pub struct PlainApp {
    dir: PathBuf,
}

impl PlainApp {
    pub fn new(app_dir: &Path) -> PlainApp {
        PlainApp { dir: app_dir.to_path_buf() }
    }
}

impl BuildMode for PlainApp {
    fn name(&self) -> &'static str {
        "app"
    }

    /// Only for the launcher: whether the base has a shell to run the Procfile's commands.
    fn needs_base_facts(&self) -> bool {
        self.dir.join("Procfile").exists()
    }

    fn streams_first_build(&self) -> bool {
        true
    }

    /// The Procfile (which `.imgforgeignore` may leave out of the app's files).
    fn definition(&self, _: &BuildContext<'_>) -> Result<serde_json::Value, BuildError> {
        Ok(json!({ "processes": read_procfile(&self.dir)? }))
    }

    fn produce(self: Box<Self>, cx: &mut BuildContext<'_>) -> Result<ModeOutput, BuildError> {
        let layers = cx.layers;
        let mut pending: Vec<Box<dyn PendingCommit>> = Vec::new();
        let digests = if cx.app.is_cold() {
            let stat = std::mem::replace(&mut cx.app.stat, StatCache::ephemeral());
            let filter = &cx.app.filter;
            let (app, job) = layers.write_then_key("app", stat, |tar, on_file| {
                let include = |rel: &Path, is_dir| filter.includes(rel, is_dir);
                scan_and_write(&self.dir, &include, tar, &layers.prefix, layers.owner, on_file)
            })?;
            pending.push(Box::new(WaitFor(job)));
            app
        } else {
            let app = cx.app.scan(layers)?;
            layers.cached_layer("app", &app.tree, &app.key)?
        };
        let created_by = format!("imgforge build: app at {}", cx.workdir);
        Ok(ModeOutput {
            layers: vec![NewLayer { name: "app".into(), created_by, digests }],
            processes: Processes { commands: read_procfile(&self.dir)?, default: None },
            pending,
            ..Default::default()
        })
    }
}

/// The thread keying a streamed layer: waited for at the end of the build, whether it
/// succeeds or fails.
struct WaitFor(Background);

impl PendingCommit for WaitFor {
    fn commit(self: Box<Self>, _: &BlobStore, _: &dyn StepCache) -> Result<(), BuildError> {
        drop(self.0);
        Ok(())
    }
}
