//! What both buildpack modes share: the buildpacks found (copied into the build's scratch
//! directory), their kind, the part of the step definition they decide, and the scratch
//! directory's end.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::store::WorkDir;
use imgforge_layers::{CompressOptions, Normalize, Owner};
use serde_json::json;

use super::{BuildContext, PendingCommit};
use crate::buildpack::{self, Buildpack, Plan, Selection};
use crate::pipeline::step_cache::StepCache;
use crate::pipeline::{io_err, BuildError, BuildpackOptions};
use crate::store::layer_cache::tree_key;
use crate::store::stat_cache::StatCache;
use crate::store::{trash, BlobStore};

/// The buildpacks of a build, ready to run.
pub struct Found {
    /// The build's scratch directory (in the cache, on the same file system as its buckets):
    /// the buildpacks' copies, the app's build copy, the new caches until committed.
    pub work: WorkDir,
    pub plan: Plan,
    pub options: BuildpackOptions,
}

impl Found {
    /// Finds the buildpacks and copies them somewhere writable.
    pub fn plan(opts: &crate::pipeline::BuildOptions, store: &BlobStore) -> Result<Found, BuildError> {
        let work = store.work_dir("build-").map_err(io_err("Failed to make a build directory in the cache"))?;
        let bp = &opts.buildpacks;
        let plan = buildpack::plan(&bp.buildpacks, &opts.app_dir, bp.buildpacks_dir.as_deref(), work.path())
            .map_err(|e| BuildError::Buildpack { what: "Failed to find the buildpacks".into(), source: e })?;
        Ok(Found { work, plan, options: bp.clone() })
    }

    /// Whether the buildpacks are Cloud Native (all with buildpack.toml) or Heroku-classic;
    /// an error when one group mixes them.
    pub fn is_cnb(&self) -> Result<bool, BuildError> {
        let (cnb, classic): (Vec<_>, Vec<_>) = self
            .plan
            .buildpacks
            .iter()
            .partition(|bp| bp.dir.join(crate::buildpack::cnb::descriptor::DESCRIPTOR).is_file());
        match (cnb.is_empty(), classic.is_empty()) {
            (_, true) => Ok(!cnb.is_empty()),
            (true, false) => Ok(false),
            (false, false) => {
                let names = |v: &[&Buildpack]| v.iter().map(|b| b.name.clone()).collect::<Vec<_>>().join(", ");
                Err(BuildError::Invalid(format!(
                    "the buildpacks mix Cloud Native Buildpacks ({}, with buildpack.toml) and Heroku-classic buildpacks ({}, bin/compile): one build runs one kind; split them or use only one kind",
                    names(&cnb),
                    names(&classic)
                )))
            }
        }
    }

    /// The step definition both kinds share: the buildpacks (by content, plus `extra`
    /// sources, such as where CNB order entries are looked up), how they are chosen, and
    /// what they see (env, revision, where they run).
    pub fn definition(
        &self,
        cx: &BuildContext<'_>,
        extra: &[std::path::PathBuf],
    ) -> Result<serde_json::Value, BuildError> {
        let mut keys = Vec::new();
        for path in self.plan.buildpacks.iter().map(|b| b.source.as_path()).chain(extra.iter().map(|p| p.as_path())) {
            keys.push(source_key(cx.store, path)?);
        }
        let opts = cx.opts;
        let git = &cx.app.git;
        // Env values may be secrets: the key (kept on disk to explain misses) holds their digests.
        let digests = |vars: &[(String, String)]| -> Vec<(String, String)> {
            vars.iter().map(|(k, v)| (k.clone(), imgforge_layers::Sha256Hash::of(v.as_bytes()).hex())).collect()
        };
        Ok(json!({
            "buildpacks": keys,
            "selection": match self.plan.selection {
                Selection::All => "all",
                Selection::FirstThatDetects => "first",
            },
            "env": digests(&opts.env),
            "build_env": digests(&opts.buildpacks.build_env),
            "git": [git.source, git.revision],
            "isolation": format!("{:?}", opts.isolation),
            "build_image": opts.build_image.as_ref().map(ToString::to_string),
            "network": format!("{:?}", opts.network),
        }))
    }
}

/// Real work ahead: deletes what earlier builds left in the trash beside it, and the work
/// directories of builds that died.
pub fn sweep_trash(store: &BlobStore) {
    store.sweep();
}

/// Identity of a buildpack source: its tree (through a stat cache) or its archive's bytes.
fn source_key(store: &BlobStore, path: &Path) -> Result<String, BuildError> {
    let what = || format!("Failed to read buildpack {}", path.display());
    if path.is_dir() {
        let tree = imgforge_layers::scan_tree(path, &|_, _| true).map_err(io_err(what()))?;
        let mut stat = StatCache::load(store, path)?;
        let opts = CompressOptions { compression: imgforge_layers::Compression::None, level: None, threads: 1 };
        let key = tree_key(&tree, b"", Owner { uid: 0, gid: 0 }, &Normalize::default(), &opts, &mut stat)
            .map_err(io_err(what()))?;
        let _ = stat.save();
        Ok(key.key)
    } else {
        let mut f = File::open(path).map_err(io_err(what()))?;
        let mut h = imgforge_layers::HashingReader::new(&mut f);
        io::copy(&mut h, &mut io::sink()).map_err(io_err(what()))?;
        Ok(h.finish().1.hex())
    }
}

/// The scratch directory, thousands of files: moved to the trash (deleted off the critical
/// path) once the build succeeded; deleted at once when it fails.
pub struct DiscardWork(pub WorkDir);

impl PendingCommit for DiscardWork {
    fn commit(self: Box<Self>, store: &BlobStore, _: &dyn StepCache) -> Result<(), BuildError> {
        let _ = trash::discard(&store.trash_dir(), &self.0.keep());
        Ok(())
    }
}
