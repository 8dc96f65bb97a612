//! The staged app: its directory, which of its files go into the image, its git revision
//! and the stat cache that spares re-reading unchanged files. Its files are scanned and
//! keyed at most once per build, when a mode or the step cache first asks.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use imgforge_layers::{scan_tree, Tree};

use super::git::{self, GitInfo};
use super::layers::LayerCtx;
use super::{io_err, procfile, BuildError};
use crate::report::{Event, Reporter};
use crate::store::layer_cache::LayerKey;
use crate::store::stat_cache::StatCache;
use crate::store::BlobStore;

/// Files never taken into the image, whatever the ignore file says.
const ALWAYS_SKIPPED: &str = ".git";
pub const IGNORE_FILE: &str = ".imgforgeignore";
const MAX_PROCFILE: u64 = 1 << 20;

pub struct StagedApp {
    pub dir: PathBuf,
    pub filter: AppFilter,
    pub git: GitInfo,
    /// Content hashes of the app's files from earlier builds.
    pub stat: StatCache,
    /// The app's files and the key of the layer they make, once scanned.
    pub scanned: Option<Scanned>,
}

pub struct Scanned {
    pub tree: Tree,
    pub key: LayerKey,
}

impl StagedApp {
    pub fn stage(dir: &Path, store: &BlobStore, reporter: &dyn Reporter) -> Result<StagedApp, BuildError> {
        reporter.report(Event::Step("Reading the app"));
        Ok(StagedApp {
            dir: dir.to_path_buf(),
            filter: AppFilter::load(dir)?,
            git: git::read(dir),
            stat: StatCache::load(store, dir)?,
            scanned: None,
        })
    }

    /// Whether no earlier build read this app (nothing is likely to be reused).
    pub fn is_cold(&self) -> bool {
        self.scanned.is_none() && self.stat.is_cold()
    }

    /// The app's files and their layer key (in `layers`' settings), scanned now or before.
    pub fn scan(&mut self, layers: &LayerCtx<'_>) -> Result<&Scanned, BuildError> {
        Ok(self.scan_with_stat(layers)?.0)
    }

    /// [`StagedApp::scan`], and the stat cache to read the files through (copying them).
    pub fn scan_with_stat(&mut self, layers: &LayerCtx<'_>) -> Result<(&Scanned, &mut StatCache), BuildError> {
        let scanned = match self.scanned.take() {
            Some(s) => s,
            None => {
                let tree = self.filter.scan(&self.dir)?;
                report_skipped(layers.reporter, &tree);
                let key = layers.key(&tree, &mut self.stat)?;
                Scanned { tree, key }
            }
        };
        Ok((self.scanned.insert(scanned), &mut self.stat))
    }

    /// Keeps what was learned about the app's files for the next build (advisory).
    pub fn save_stat(&self) {
        let _ = self.stat.save();
    }
}

/// Which of the app's files go into the image: `.imgforgeignore` (gitignore syntax) is
/// honoured and `.git` is never taken.
pub struct AppFilter(ignore::gitignore::Gitignore);

impl AppFilter {
    pub fn load(app_dir: &Path) -> Result<AppFilter, BuildError> {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(app_dir);
        let path = app_dir.join(IGNORE_FILE);
        if path.is_file() {
            if let Some(source) = builder.add(&path) {
                return Err(BuildError::IgnoreFile { path, source });
            }
        }
        let matcher = builder.build().map_err(|source| BuildError::IgnoreFile { path, source })?;
        Ok(AppFilter(matcher))
    }

    pub fn includes(&self, rel: &Path, is_dir: bool) -> bool {
        !rel.iter().any(|c| c == ALWAYS_SKIPPED) && !self.0.matched(rel, is_dir).is_ignore()
    }

    /// Scans the app directory.
    pub fn scan(&self, app_dir: &Path) -> Result<Tree, BuildError> {
        scan_tree(app_dir, &|rel: &Path, is_dir: bool| self.includes(rel, is_dir))
            .map_err(io_err(format!("Failed to read the app directory {}", app_dir.display())))
    }
}

pub fn report_skipped(reporter: &dyn Reporter, tree: &Tree) {
    for s in &tree.skipped {
        reporter.report(Event::Warning(format!(
            "skipped {} {} (only files, directories and links go into layers)",
            s.what,
            s.rel.display()
        )));
    }
}

/// The processes of `dir/Procfile` (none without one).
pub fn read_procfile(dir: &Path) -> Result<BTreeMap<String, String>, BuildError> {
    let path = dir.join("Procfile");
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err(path.display().to_string())(e)),
    };
    if !meta.is_file() {
        return Err(BuildError::Invalid(format!("{} is not a regular file", path.display())));
    }
    let mut text = String::new();
    File::open(&path)
        .and_then(|f| f.take(MAX_PROCFILE).read_to_string(&mut text))
        .map_err(io_err(format!("Failed to read {}", path.display())))?;
    procfile::parse(&text).map_err(|source| BuildError::Procfile { path, source })
}
