//! Writing layers into the store: one streaming pass (tar → diff_id → compress → digest →
//! temp file → rename), and the layer cache around it, so a layer whose inputs are known is
//! never written again. Every build mode writes its layers through [`LayerCtx`].

use std::io::{self, BufWriter, Write};

use imgforge_layers::{CompressOptions, ContentHash, LayerDigests, LayerWriter, Normalize, Owner, TarWriter, Tree};

use super::app::report_skipped;
use super::{io_err, BuildError, BuildOptions};
use crate::report::{Event, Reporter};
use crate::store::layer_cache::{tree_key, tree_key_with, LayerCache, LayerKey};
use crate::store::stat_cache::StatCache;
use crate::store::{BlobStore, WritebackFile};

/// What every layer written from a tree shares: the store, the layer cache and the
/// settings that decide a layer's bytes.
pub struct LayerCtx<'a> {
    pub store: &'a BlobStore,
    pub cache: LayerCache,
    pub rules: Normalize,
    pub compress: CompressOptions,
    /// Who owns the files (unless an entry says otherwise).
    pub owner: Owner,
    /// Where the tree goes in the image (no leading `/`).
    pub prefix: Vec<u8>,
    /// Identifies the app, for explaining cache misses.
    pub scope: String,
    pub reporter: &'a dyn Reporter,
}

impl<'a> LayerCtx<'a> {
    /// The settings of a build: the app's files go to `workdir`, owned by `owner`.
    pub fn new(
        opts: &BuildOptions,
        store: &'a BlobStore,
        owner: Owner,
        workdir: &str,
        reporter: &'a dyn Reporter,
    ) -> Result<LayerCtx<'a>, BuildError> {
        let epoch = opts.source_date_epoch.unwrap_or(imgforge_layers::DEFAULT_EPOCH);
        let app_dir = &opts.app_dir;
        Ok(LayerCtx {
            store,
            cache: LayerCache::open(store)?,
            rules: Normalize { mtime: epoch, keep_special_bits: opts.keep_special_bits, keep_capabilities: false },
            compress: opts.compress,
            owner,
            prefix: workdir.trim_start_matches('/').as_bytes().to_vec(),
            scope: app_dir.canonicalize().unwrap_or_else(|_| app_dir.clone()).display().to_string(),
            reporter,
        })
    }

    /// The same settings for a tree that goes to `prefix` instead.
    pub fn at(&self, prefix: &str) -> LayerCtx<'a> {
        LayerCtx {
            store: self.store,
            cache: self.cache.clone(),
            rules: self.rules,
            compress: self.compress,
            owner: self.owner,
            prefix: prefix.as_bytes().to_vec(),
            scope: self.scope.clone(),
            reporter: self.reporter,
        }
    }

    /// The layer for `tree` from the cache, or written now (and cached).
    pub fn cached_layer(&self, name: &str, tree: &Tree, key: &LayerKey) -> Result<LayerDigests, BuildError> {
        let scope = format!("{}:{name}", self.scope);
        let digests = match self.cache.get(self.store, key) {
            Some(hit) => {
                self.reporter.report(Event::LayerDone { name, digests: &hit, reused: true, why: None });
                hit
            }
            None => {
                let why = self.cache.explain_miss(&scope, key);
                let owner = self.owner;
                let written = self.write(name, Some(&why), |tar| tree.write_to(tar, &self.prefix, owner))?;
                let _ = self.cache.put(key, &written);
                written
            }
        };
        let _ = self.cache.record(&scope, key);
        Ok(digests)
    }

    /// Writes the layer for `tree` (a first build here: no key worth computing first), then
    /// leaves to a background thread computing its key from the content hashes taken while
    /// streaming, caching it and teaching `stat` those hashes. Nothing else in the build waits
    /// for that; the returned guard waits for it when dropped.
    pub fn write_then_key(
        &self,
        name: &str,
        mut stat: StatCache,
        fill: impl FnOnce(&mut LayerTar<'_>, &mut dyn FnMut(usize, ContentHash)) -> io::Result<Tree>,
    ) -> Result<(LayerDigests, Background), BuildError> {
        let mut hashes = Vec::new();
        let mut tree = None;
        let written = self.write(name, Some("first build here"), |tar| {
            tree = Some(fill(tar, &mut |i, h| {
                if hashes.len() <= i {
                    hashes.resize(i + 1, None);
                }
                hashes[i] = Some(h);
            })?);
            Ok(())
        })?;
        let tree = tree.expect("write_layer ran fill");
        report_skipped(self.reporter, &tree);
        let owner = self.owner;
        let (cache, prefix, rules, compress) = (self.cache.clone(), self.prefix.clone(), self.rules, self.compress);
        let (scope, digests) = (format!("{}:{name}", self.scope), written.clone());
        let job = std::thread::spawn(move || {
            let key = tree_key_with(&tree, &prefix, owner, &rules, &compress, &mut |i, e| {
                let h = hashes
                    .get(i)
                    .copied()
                    .flatten()
                    .ok_or_else(|| io::Error::other(format!("{} was not read", e.rel.display())))?;
                stat.remember(&tree.root.join(&e.rel), e, h);
                Ok(h)
            });
            // Caches are advisory: a failure here costs the next build a re-read, nothing more.
            if let Ok(key) = key {
                let _ = cache.put(&key, &digests);
                let _ = cache.record(&scope, &key);
                let _ = stat.save();
            }
        });
        Ok((written, Background(Some(job))))
    }

    /// The key of the layer `tree` would make with these settings.
    pub fn key(&self, tree: &Tree, stat: &mut StatCache) -> Result<LayerKey, BuildError> {
        tree_key(tree, &self.prefix, self.owner, &self.rules, &self.compress, stat)
            .map_err(io_err(format!("Failed to read {}", tree.root.display())))
    }

    /// Streams one layer into the store with these settings (`why` it is written, for -v).
    pub fn write(
        &self,
        name: &str,
        why: Option<&str>,
        fill: impl FnOnce(&mut LayerTar<'_>) -> io::Result<()>,
    ) -> Result<LayerDigests, BuildError> {
        let (store, reporter) = (self.store, self.reporter);
        let pending = store.pending()?;
        let file = pending.try_clone_file().map_err(io_err("Failed to open a temp file in the cache"))?;
        let writer = LayerWriter::new(BufWriter::with_capacity(1 << 20, WritebackFile::new(file)), self.compress)
            .map_err(io_err("Failed to start the compressor"))?;
        let progress = Progress { inner: writer, name, reporter, bytes: 0, next: PROGRESS_STEP };
        let mut tar = TarWriter::new(progress, self.rules);
        let what = format!("Failed to write the {name} layer");
        fill(&mut tar).map_err(io_err(&what))?;
        let progress = tar.finish().map_err(io_err(&what))?;
        let (digests, sink) = progress.inner.finish().map_err(io_err(&what))?;
        sink.into_inner().map_err(|e| io_err(&what)(e.into_error()))?;
        store.commit(pending, &digests.digest)?;
        reporter.report(Event::LayerDone { name, digests: &digests, reused: false, why });
        Ok(digests)
    }
}

/// The tar writer a layer is written through.
pub type LayerTar<'a> = TarWriter<Progress<'a, LayerWriter<BufWriter<WritebackFile>>>>;

const PROGRESS_STEP: u64 = 8 << 20;

/// Counts the tar bytes going into a layer and reports them every few MiB.
pub struct Progress<'a, W> {
    inner: W,
    name: &'a str,
    reporter: &'a dyn Reporter,
    bytes: u64,
    next: u64,
}

impl<W: Write> Write for Progress<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        if self.bytes >= self.next {
            self.next = self.bytes + PROGRESS_STEP;
            self.reporter.report(Event::LayerProgress { name: self.name, bytes: self.bytes });
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Work left running beside the build; waited for when dropped, so it ends before the build
/// returns (whether it succeeds or fails).
pub struct Background(Option<std::thread::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            let _ = job.join();
        }
    }
}
