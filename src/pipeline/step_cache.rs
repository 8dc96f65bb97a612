//! The step cache: a step's result, found by what decides it.
//!
//! A [`StepKey`] is the parent's key (what the step starts from: the base image), the
//! digest of the step's definition (what it runs, with which settings) and the content key
//! of the files it reads (a [`LayerKey`], whose ingredients explain a miss path by path).
//! A [`StepRecord`] is what the step made: its layers' digests, its config changes, its
//! processes and launch env. [`StepCache`] is a small get/put interface; [`LocalStepCache`]
//! keeps records in the cache directory (a registry-backed one will keep the same records
//! beside the image, its layers being ordinary blobs).
//!
//! [`Cached`] wraps any build mode in the step cache: when nothing that decides the mode's
//! result changed since an earlier build, that build's record is the result and the mode does
//! not run. The record is written only once the whole build succeeded (a pending commit).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;

use imgforge_layers::{LayerDigests, Sha256Hash};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::ConfigChanges;
use super::modes::{BuildContext, BuildMode, ModeOutput, NewLayer, PendingCommit, Processes};
use super::BuildError;
use crate::report::Event;
use crate::store::buckets::STEPS;
use crate::store::layer_cache::{digests_from_json, digests_json, LayerKey};
use crate::store::{write_hint, BlobStore};

/// Bump when the image a step makes from the same inputs changes.
const FORMAT: &str = concat!("imgforge-step-v1 ", env!("CARGO_PKG_VERSION"));

/// What decides a step's result, kept whole to explain a miss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepKey {
    /// What the step starts from (canonical JSON).
    pub parent: String,
    /// What the step runs, with which settings (canonical JSON).
    pub definition: String,
    /// The files the step reads.
    pub content: LayerKey,
}

impl StepKey {
    pub fn new(parent: &Value, definition: &Value, content: LayerKey) -> StepKey {
        StepKey { parent: parent.to_string(), definition: definition.to_string(), content }
    }

    /// The key records are stored under.
    pub fn digest(&self) -> String {
        let material = json!({ "format": FORMAT, "parent": self.parent, "definition": self.definition, "content": self.content.key });
        Sha256Hash::of(material.to_string().as_bytes()).hex()
    }

    /// What differs from `prev` (`None`: nothing).
    pub fn what_changed(&self, prev: &StepKey) -> Option<String> {
        if prev.parent != self.parent {
            return Some("the base image changed".into());
        }
        if prev.definition != self.definition {
            let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
            let (old, new) = (parse(&prev.definition), parse(&self.definition));
            let mut changed = changed_fields(&old, &new, "");
            if changed.is_empty() {
                changed.push("the definition".into());
            }
            return Some(format!("changed: {}", changed.join(", ")));
        }
        self.content.what_changed(&prev.content)
    }
}

/// The paths of the fields that differ between two JSON objects (`a.b` for nested ones).
fn changed_fields(old: &Value, new: &Value, prefix: &str) -> Vec<String> {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .flat_map(|k| {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    match (a.get(k), b.get(k)) {
                        (Some(x @ Value::Object(_)), Some(y @ Value::Object(_))) => changed_fields(x, y, &path),
                        _ => vec![path],
                    }
                })
                .collect()
        }
        _ if old != new => vec![if prefix.is_empty() { "the definition".into() } else { prefix.into() }],
        _ => Vec::new(),
    }
}

/// What a step made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub layers: Vec<RecordedLayer>,
    pub config: ConfigChanges,
    pub env_defaults: Vec<(String, String)>,
    pub processes: Processes,
    pub launch_env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedLayer {
    pub name: String,
    pub created_by: String,
    /// As [`digests_json`] writes them.
    pub digests: Value,
}

impl StepRecord {
    pub fn of(out: &ModeOutput) -> StepRecord {
        StepRecord {
            layers: out
                .layers
                .iter()
                .map(|l| RecordedLayer {
                    name: l.name.clone(),
                    created_by: l.created_by.clone(),
                    digests: digests_json(&l.digests),
                })
                .collect(),
            config: out.config.clone(),
            env_defaults: out.env_defaults.clone(),
            processes: out.processes.clone(),
            launch_env: out.launch_env.clone(),
        }
    }

    /// The record's layers, if each is well formed.
    fn layers(&self) -> Option<Vec<NewLayer>> {
        self.layers
            .iter()
            .map(|l| {
                let digests: LayerDigests = digests_from_json(&l.digests)?;
                Some(NewLayer { name: l.name.clone(), created_by: l.created_by.clone(), digests })
            })
            .collect()
    }
}

/// Where step records are kept.
pub trait StepCache {
    /// The record stored under `key`, if every layer it names can still be had.
    fn get(&self, key: &StepKey) -> Option<StepRecord>;
    /// Stores `record` under `key`, and `key` as the last one of `scope` (a step of one app).
    fn put(&self, scope: &str, key: &StepKey, record: &StepRecord) -> io::Result<()>;
    /// Why `key` was not found: what changed since the last key of `scope`.
    fn explain_miss(&self, scope: &str, key: &StepKey) -> String;
}

/// Step records in the cache directory: `steps-v1/<key>.json`, and the last key of each
/// scope in `steps-v1/scopes/<sha256 of scope>.bin`.
pub struct LocalStepCache<'a> {
    store: &'a BlobStore,
    dir: PathBuf,
}

impl<'a> LocalStepCache<'a> {
    pub fn open(store: &'a BlobStore) -> Result<LocalStepCache<'a>, BuildError> {
        let dir = store.bucket(STEPS)?;
        Ok(LocalStepCache { store, dir })
    }

    fn scope_file(&self, scope: &str) -> PathBuf {
        self.dir.join("scopes").join(format!("{}.bin", Sha256Hash::of(scope.as_bytes()).hex()))
    }
}

impl StepCache for LocalStepCache<'_> {
    fn get(&self, key: &StepKey) -> Option<StepRecord> {
        let bytes = fs::read(self.dir.join(format!("{}.json", key.digest()))).ok()?;
        let record: StepRecord = serde_json::from_slice(&bytes).ok()?;
        let layers = record.layers()?;
        layers.iter().all(|l| self.store.contains(&l.digests.digest)).then_some(record)
    }

    fn put(&self, scope: &str, key: &StepKey, record: &StepRecord) -> io::Result<()> {
        write_hint(&self.dir.join(format!("{}.json", key.digest())), &serde_json::to_vec(record)?)?;
        let scope_file = self.scope_file(scope);
        fs::create_dir_all(self.dir.join("scopes"))?;
        // postcard: the content key has one item per file the step read.
        write_hint(&scope_file, &postcard::to_stdvec(key).map_err(io::Error::other)?)
    }

    fn explain_miss(&self, scope: &str, key: &StepKey) -> String {
        let previous = fs::read(self.scope_file(scope)).ok().and_then(|b| postcard::from_bytes::<StepKey>(&b).ok());
        match previous {
            None => "first build".into(),
            Some(prev) => key.what_changed(&prev).unwrap_or_else(|| "its record is no longer in the cache".into()),
        }
    }
}

/// Any build mode through the step cache (see the module docs).
pub struct Cached {
    inner: Box<dyn BuildMode>,
}

impl Cached {
    pub fn new(inner: Box<dyn BuildMode>) -> Cached {
        Cached { inner }
    }

    /// The key of the mode's result, or `None` when the app is not keyed first (a first
    /// build that streams it: nothing to reuse, and keying would read every file twice).
    fn key(&self, cx: &mut BuildContext<'_>) -> Result<Option<StepKey>, BuildError> {
        if self.inner.streams_first_build() && cx.app.is_cold() {
            return Ok(None);
        }
        let content = cx.app.scan(cx.layers)?.key.clone();
        let image = &cx.base.image;
        let parent = json!({
            "base": image.manifest_digest.map(|d| d.to_string()),
            "name": cx.opts.base.portable_name(),
            "platform": cx.base.platform.to_string(),
        });
        let definition = json!({
            "mode": self.inner.name(),
            "workdir": cx.workdir,
            "of_mode": self.inner.definition(cx)?,
        });
        Ok(Some(StepKey::new(&parent, &definition, content)))
    }
}

impl BuildMode for Cached {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn default_workdir(&self) -> &'static str {
        self.inner.default_workdir()
    }

    fn needs_base_facts(&self) -> bool {
        self.inner.needs_base_facts()
    }

    fn streams_first_build(&self) -> bool {
        self.inner.streams_first_build()
    }

    fn may_reuse(&self) -> bool {
        self.inner.may_reuse()
    }

    fn definition(&self, cx: &BuildContext<'_>) -> Result<Value, BuildError> {
        self.inner.definition(cx)
    }

    fn produce(self: Box<Self>, cx: &mut BuildContext<'_>) -> Result<ModeOutput, BuildError> {
        let Some(key) = self.key(cx)? else { return self.inner.produce(cx) };
        let scope = format!("{}:{}", cx.layers.scope, self.inner.name());
        if self.inner.may_reuse() {
            if let Some(record) = cx.steps.get(&key) {
                return Ok(reuse(cx, record));
            }
            let why = cx.steps.explain_miss(&scope, &key);
            cx.reporter.report(Event::Detail(format!("Building ({} build: {why})", self.inner.name())));
        }
        let mut out = self.inner.produce(cx)?;
        let record = StepRecord::of(&out);
        out.pending.push(Box::new(RecordStep { scope, key, record }));
        Ok(out)
    }
}

/// An earlier build's result, as the mode would have returned it.
fn reuse(cx: &BuildContext<'_>, record: StepRecord) -> ModeOutput {
    cx.reporter.report(Event::Step("Nothing changed since the last build: reusing its result"));
    let layers = record.layers().unwrap_or_default();
    for l in &layers {
        cx.reporter.report(Event::LayerDone { name: &l.name, digests: &l.digests, reused: true, why: None });
    }
    ModeOutput {
        layers,
        config: record.config,
        env_defaults: record.env_defaults,
        processes: record.processes,
        launch_env: record.launch_env,
        pending: Vec::new(),
    }
}

/// Keeps a step's record once the build succeeded (advisory: a failure costs a rebuild).
struct RecordStep {
    scope: String,
    key: StepKey,
    record: StepRecord,
}

impl PendingCommit for RecordStep {
    fn commit(self: Box<Self>, _: &BlobStore, steps: &dyn StepCache) -> Result<(), BuildError> {
        let _ = steps.put(&self.scope, &self.key, &self.record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgforge_layers::{Compression, DiffId, Digest};

    fn key(parent: &str, definition: Value, items: &[(&str, &str)]) -> StepKey {
        let content = LayerKey {
            key: format!("{items:?}"),
            settings: "s".into(),
            items: items.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect(),
        };
        StepKey::new(&json!(parent), &definition, content)
    }

    #[test]
    fn a_miss_says_what_changed() {
        let k1 = key("base-1", json!({ "mode": "heroku", "of_mode": { "env": ["A"], "stack": "s" } }), &[("a", "1")]);
        assert_eq!(k1.what_changed(&k1), None);
        let base = key("base-2", json!({ "mode": "heroku", "of_mode": { "env": ["A"], "stack": "s" } }), &[("a", "1")]);
        assert_eq!(base.what_changed(&k1).unwrap(), "the base image changed");
        let env = key("base-1", json!({ "mode": "heroku", "of_mode": { "env": ["B"], "stack": "s" } }), &[("a", "1")]);
        assert_eq!(env.what_changed(&k1).unwrap(), "changed: of_mode.env");
        let file = key("base-1", json!({ "mode": "heroku", "of_mode": { "env": ["A"], "stack": "s" } }), &[("a", "2")]);
        assert_eq!(file.what_changed(&k1).unwrap(), "a changed");
        assert_ne!(k1.digest(), file.digest());
        assert_ne!(k1.digest(), env.digest());
    }

    #[test]
    fn records_are_found_by_key_while_their_layers_exist() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let steps = LocalStepCache::open(&store).unwrap();
        let blob = store.put_bytes(b"layer").unwrap();
        let digests = LayerDigests {
            diff_id: DiffId::of(b"t"),
            digest: blob,
            size: 5,
            tar_size: 1,
            compression: Compression::Gzip,
        };
        let out = ModeOutput {
            layers: vec![NewLayer { name: "app".into(), created_by: "made".into(), digests }],
            env_defaults: vec![("HOME".into(), "/app".into())],
            ..Default::default()
        };
        let record = StepRecord::of(&out);
        let k = key("base", json!({ "mode": "app" }), &[("a", "1")]);
        assert_eq!(steps.get(&k), None);
        assert_eq!(steps.explain_miss("scope", &k), "first build");
        steps.put("scope", &k, &record).unwrap();
        assert_eq!(steps.get(&k), Some(record.clone()));
        assert_eq!(record.layers().unwrap(), out.layers);
        let k2 = key("base", json!({ "mode": "app" }), &[("a", "1"), ("b", "2")]);
        assert_eq!(steps.get(&k2), None);
        assert_eq!(steps.explain_miss("scope", &k2), "b was added");

        // A record whose layer left the store is no result.
        let gone = LayerDigests { digest: Digest::of(b"gone"), ..record.layers().unwrap()[0].digests.clone() };
        let stale = StepRecord::of(&ModeOutput {
            layers: vec![NewLayer { name: "app".into(), created_by: "made".into(), digests: gone }],
            ..Default::default()
        });
        steps.put("scope", &k2, &stale).unwrap();
        assert_eq!(steps.get(&k2), None);
    }
}
