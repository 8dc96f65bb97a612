//! The resolved base image: its source, manifest and config, and what its filesystem holds
//! ([`BaseFacts`]), learned on a thread beside the build and waited for only when first
//! asked for.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use imgforge_layers::Owner;

use super::base_facts::{self, BaseFacts, FactsError};
use super::{BuildError, BuildOptions};
use crate::image::manifest::Platform;
use crate::report::{Event, Reporter};
use crate::store::BlobStore;
use crate::transport::{ResolvedImage, Source};

pub struct ResolvedBase {
    pub source: Source,
    pub image: ResolvedImage,
    pub platform: Platform,
    /// The base as the user wrote it (for messages).
    pub name: String,
    facts: LazyFacts,
}

impl ResolvedBase {
    /// Resolves the base (manifest and config only). Its filesystem's facts cost a pass over
    /// its layers: they are learned, on a thread, only when `needs_facts` or the app's owner
    /// depends on them.
    pub fn resolve(opts: &BuildOptions, needs_facts: bool, reporter: &dyn Reporter) -> Result<Self, BuildError> {
        reporter.report(Event::Step("Resolving the base image"));
        let base_err = |source| BuildError::Base { reference: opts.base_name.clone(), source };
        let source = Source::open(&opts.base, &opts.transport()).map_err(base_err)?;
        let platform = opts.platform.clone().unwrap_or_else(Platform::host);
        let image = source.resolve(&platform).map_err(base_err)?;
        reporter.report(Event::BaseResolved {
            reference: &image.reference,
            digest: image.manifest_digest.map(|d| d.to_string()),
            layers: image.layers.len(),
        });
        let mut base = ResolvedBase { source, image, platform, name: opts.base_name.clone(), facts: LazyFacts::none() };
        if needs_facts || (opts.chown.is_none() && !base.user().is_empty()) {
            base.facts = LazyFacts::start(opts, &base.image, &base.platform);
        }
        Ok(base)
    }

    /// The base config's `User` (empty when unset).
    pub fn user(&self) -> String {
        self.image.config.as_ref().and_then(|c| c.string("User")).unwrap_or_default()
    }

    /// A label of the base config.
    pub fn label(&self, key: &str) -> Option<String> {
        self.image.config.as_ref().and_then(|c| c.label(key))
    }

    /// Who owns the app's files: `--chown`, else the base's user (resolved through its
    /// accounts), else root.
    pub fn app_owner(&self, chown: Option<Owner>) -> Result<Owner, BuildError> {
        let user = self.user();
        match chown {
            Some(o) => Ok(o),
            None if user.is_empty() => Ok(Owner::ROOT),
            None => Ok(base_facts::resolve_user(&user, self.facts()?)?),
        }
    }

    /// What the base's filesystem holds (waits for the thread learning it).
    pub fn facts(&self) -> Result<&BaseFacts, BuildError> {
        let value = self.facts.value.get_or_init(|| {
            let job = self.facts.job.lock().unwrap_or_else(|e| e.into_inner()).take();
            match job {
                None => Ok(BaseFacts::default()),
                Some(job) => job.join().unwrap_or(Err(FactsError::Panicked)).map_err(Arc::new),
            }
        });
        value.as_ref().map_err(|source| BuildError::BaseFacts { reference: self.name.clone(), source: source.clone() })
    }
}

/// The base image's filesystem facts, learned on a background thread.
struct LazyFacts {
    job: Mutex<Option<JoinHandle<Result<BaseFacts, FactsError>>>>,
    value: OnceLock<Result<BaseFacts, Arc<FactsError>>>,
}

impl LazyFacts {
    fn start(opts: &BuildOptions, base: &ResolvedImage, platform: &Platform) -> LazyFacts {
        // The thread owns what it reads: its own handle on the source and the store.
        let (reference, base, platform, cache_dir, topts) =
            (opts.base.clone(), base.clone(), platform.clone(), opts.cache_dir.clone(), opts.transport());
        let job = std::thread::spawn(move || {
            let source = Source::open(&reference, &topts)?;
            // A docker-archive learns where its blobs are while resolving.
            let base = match source {
                Source::DockerArchive(_) => source.resolve(&platform)?,
                _ => base,
            };
            let store = BlobStore::open(&cache_dir)?;
            base_facts::base_facts(&source, &base, &store)
        });
        LazyFacts { job: Mutex::new(Some(job)), value: OnceLock::new() }
    }

    /// Facts nobody will ask for: the defaults.
    fn none() -> LazyFacts {
        LazyFacts { job: Mutex::new(None), value: OnceLock::new() }
    }
}
