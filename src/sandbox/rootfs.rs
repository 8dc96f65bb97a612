//! Build images unpacked once into the cache, keyed by manifest digest, with the hardened
//! extractor (`imgforge_layers::extract`).
//!
//! Layout: `rootfs-v1/<manifest hex>/rootfs/` (complete when `<hex>/complete` exists),
//! `rootfs-v1/<hex>.lock` (exclusive flock while unpacking). A build unpacks into
//! `<hex>.tmp-<pid>-<n>/` and renames it into place, so a crash never leaves a partial
//! rootfs under the final name; a concurrent build waits on the lock and then reuses the
//! result. The rootfs is never written after that: sandboxes use it as an overlay's lower
//! layer (or copy it).

use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::time::Instant;

use imgforge_layers::{extract_compressed, Compression, ExtractError, ExtractOptions};

use crate::report::{Event, Reporter};
use crate::store::BlobStore;
use crate::transport::{ResolvedImage, Source};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("Failed to unpack the build image {image}, layer {layer} ({digest}): {source}")]
    Layer { image: String, layer: usize, digest: String, source: ExtractError },
    #[error("Failed to unpack the build image {image}: {why}")]
    Other { image: String, why: String },
}

/// An unpacked build image.
pub struct Rootfs {
    pub path: PathBuf,
    /// Whether this call unpacked it (false: reused from the cache).
    pub unpacked: bool,
}

/// The unpacked rootfs of `image`, from the cache or unpacked now.
pub fn rootfs(
    source: &Source,
    image: &ResolvedImage,
    store: &BlobStore,
    reporter: &dyn Reporter,
) -> Result<Rootfs, RootfsError> {
    let other = |why: String| RootfsError::Other { image: image.reference.clone(), why };
    let Some(digest) = image.manifest_digest else {
        return Err(other("scratch has no filesystem to build in".into()));
    };
    let bucket = store.bucket(crate::store::buckets::ROOTFS).map_err(|e| other(e.to_string()))?;
    let dir = bucket.join(digest.hex());
    let done = |d: &PathBuf| d.join("complete").is_file();
    let reused = || {
        reporter.report(Event::BuildImageReady { reference: &image.reference, unpacked: false, millis: 0, bytes: 0 });
        Ok(Rootfs { path: dir.join("rootfs"), unpacked: false })
    };
    if done(&dir) {
        return reused();
    }
    let lock_path = bucket.join(format!("{}.lock", digest.hex()));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| other(format!("{}: {e}", lock_path.display())))?;
    lock.lock().map_err(|e| other(format!("{}: {e}", lock_path.display())))?;
    if done(&dir) {
        return reused();
    }
    let _ = remove_writable(&dir);
    let tmp = bucket.join(format!("{}.tmp-{}", digest.hex(), std::process::id()));
    let _ = remove_writable(&tmp);
    let root = tmp.join("rootfs");
    fs::create_dir_all(&root).map_err(|e| other(format!("{}: {e}", root.display())))?;
    let started = Instant::now();
    reporter.report(Event::Step(&format!(
        "Unpacking the build image {} ({} layers)",
        image.reference,
        image.layers.len()
    )));
    let opts = ExtractOptions::default();
    let mut bytes = 0;
    for (i, layer) in image.layers.iter().enumerate() {
        let d = &layer.descriptor;
        let wrap = |source: ExtractError| RootfsError::Layer {
            image: image.reference.clone(),
            layer: i + 1,
            digest: d.digest.to_string(),
            source,
        };
        let compression = Compression::from_media_type(&d.media_type)
            .ok_or_else(|| other(format!("layer {} ({}): unsupported media type {}", i + 1, d.digest, d.media_type)))?;
        let raw = source.open_verified(d).map_err(|e| other(format!("layer {} ({}): {e}", i + 1, d.digest)))?;
        let r = extract_compressed(&root, raw, compression, &opts);
        let stats = match r {
            Ok(s) => s,
            Err(e) => {
                let _ = remove_writable(&tmp);
                return Err(wrap(e));
            }
        };
        bytes += stats.tar_bytes;
        for w in stats.warnings {
            reporter.report(Event::Warning(format!("build image {} layer {}: {w}", image.reference, i + 1)));
        }
    }
    fs::write(tmp.join("complete"), b"").map_err(|e| other(e.to_string()))?;
    fs::rename(&tmp, &dir).map_err(|e| other(format!("Failed to move {} into place: {e}", tmp.display())))?;
    reporter.report(Event::BuildImageReady {
        reference: &image.reference,
        unpacked: true,
        millis: started.elapsed().as_millis() as u64,
        bytes,
    });
    drop(lock);
    Ok(Rootfs { path: dir.join("rootfs"), unpacked: true })
}

/// Removes a tree the extractor made (it gave the owner rwx on every directory).
fn remove_writable(p: &std::path::Path) -> std::io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
