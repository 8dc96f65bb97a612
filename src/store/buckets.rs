//! Every bucket of the cache directory, named and versioned in one place (as uv does).
//!
//! A bucket is a directory beside `blobs/`. Its name carries a version: when the layout or
//! the meaning of its entries changes, the name changes (`-v1` → `-v2`), and the old
//! bucket is simply no longer read. Entries are advisory unless said otherwise: a missing
//! or unreadable one costs a rebuild or a re-read, never a wrong result.

/// A named, versioned subdirectory of the cache (see [`super::BlobStore::bucket`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket(&'static str);

impl Bucket {
    pub const fn name(self) -> &'static str {
        self.0
    }
}

/// The layer cache (`store::layer_cache`): `<key>.json` holds the digests of the layer
/// whose input key is `<key>`; `scopes/<sha256 of scope>.bin` the key's ingredients from
/// a scope's last build (postcard), to explain the next miss.
pub const LAYERS: Bucket = Bucket("layers-v1");

/// Stat caches (`store::stat_cache`): `<sha256 of a tree's root>.bin`, the content hashes
/// of its files by (path, device, inode, size, mtime, ctime). v3: BLAKE3 hashes, postcard.
pub const STAT: Bucket = Bucket("stat-v3");

/// What a base image's filesystem holds (`pipeline::base_facts`): `<manifest hex>.json`
/// (shell, accounts, os-release). v2: with os-release.
pub const BASE_FACTS: Bucket = Bucket("base-facts-v2");

/// Build images unpacked for the sandbox (`sandbox::rootfs`): `<manifest hex>/rootfs/`,
/// complete when `<hex>/complete` exists; `<hex>.lock` while unpacking.
pub const ROOTFS: Bucket = Bucket("rootfs-v1");

/// Heroku buildpacks' kept `CACHE_DIR`s: `<sha256(app scope, buildpack key)>/`, replaced
/// only when a whole build succeeded. Durable: a buildpack's cache is its own state.
pub const BUILDPACK_CACHE: Bucket = Bucket("buildpack-cache-v1");

/// Cloud Native Buildpacks' kept state per app: `<sha256 of the app scope>/` holds
/// `record.json` (layers, their image digests and env snapshots) and the cache layers.
pub const CNB_STATE: Bucket = Bucket("cnb-v1");

/// The whole-build cache: `<build key>` holds the manifest digest of the image built.
pub const BUILDS: Bucket = Bucket("builds-v1");

/// The step cache (`pipeline::step_cache`): `<step key>.json` holds a step record (new
/// layers, config changes, processes, launch env); `scopes/<sha256 of scope>.json` the
/// last step key of a scope, to explain the next miss.
pub const STEPS: Bucket = Bucket("steps-v1");

/// Where blobs live on registries (`transport::registry::locations`):
/// `<registry, ':' as '+'>/<digest hex>` lists the repositories holding the blob, one a line,
/// oldest first. Only a hint for cross-repository mounts.
pub const BLOB_LOCATIONS: Bucket = Bucket("blob-locations-v1");

/// Local files found to hold a blob (`store::VerifyCache`): `<digest hex>`, one line per
/// file identity (`dev ino size mtime_ns ctime_ns`) whose bytes hashed to that digest, so
/// a layout's blob is read once, not at every build that hard-links it.
pub const VERIFIED: Bucket = Bucket("verified-v1");
