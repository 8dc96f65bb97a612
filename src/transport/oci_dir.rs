//! `oci:DIR[:TAG]`: an OCI image layout directory, read in place and added to in place.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use imgforge_layers::Digest;

use super::layout::{self, LayoutRead, WriteSummary, OCI_LAYOUT_FILE, REF_NAME};
use super::{io_error, Blobs, LocalBlob, NewImage, NewIndex, TransportError};
use crate::image::manifest::{self, Descriptor};
use crate::store::{open_regular_beneath, sync_dir, write_atomic, VerifyCache};

pub struct OciDirSource {
    dir: PathBuf,
    tag: Option<String>,
    verified: VerifyCache,
}

impl OciDirSource {
    /// The layout at `dir`; blobs it lends for hard links are remembered as verified in the
    /// cache at `cache_root`.
    pub fn open(dir: &Path, tag: Option<String>, cache_root: Option<&Path>) -> Result<OciDirSource, TransportError> {
        if fs::symlink_metadata(dir.join("index.json")).is_err() {
            return Err(TransportError::NotFound(format!(
                "oci:{}: not an OCI image layout (no index.json there)",
                dir.display()
            )));
        }
        Ok(OciDirSource { dir: dir.to_path_buf(), tag, verified: VerifyCache::new(cache_root) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// A blob's file, opened without following a link anywhere below the layout's directory
    /// and refused unless it is a regular file.
    fn open_file(&self, d: &Digest) -> Result<File, TransportError> {
        open_regular_beneath(&self.dir, &["blobs", "sha256", &d.hex()]).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                TransportError::NotFound(format!("oci:{}: blob {d} is missing", self.dir.display()))
            }
            _ => TransportError::Io { what: format!("oci:{}: blob {d}", self.dir.display()), source: e },
        })
    }

    /// A blob's file, verified against its descriptor (read once per file identity).
    pub fn local_blob(&self, d: &Descriptor) -> Result<LocalBlob<'_>, TransportError> {
        let mut f = self.open_file(&d.digest)?;
        let what = format!("oci:{}", self.dir.display());
        let id = self.verified.check(&mut f, &d.digest, d.size, "the layout").map_err(io_error(what))?;
        Ok(LocalBlob::new(f, id, &self.verified))
    }
}

impl LayoutRead for OciDirSource {
    fn read_index(&self) -> Result<Vec<u8>, TransportError> {
        let what = format!("oci:{}: index.json", self.dir.display());
        let f = open_regular_beneath(&self.dir, &["index.json"]).map_err(io_error(&what))?;
        read_capped(f, &what, manifest::MAX_MANIFEST_BYTES)
    }

    fn open_blob(&self, d: &Digest) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        Ok(Box::new(self.open_file(d)?))
    }

    fn describe(&self) -> String {
        format!("oci:{}", self.dir.display())
    }
}

fn read_capped(f: File, what: &str, max: u64) -> Result<Vec<u8>, TransportError> {
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(io_error(what))?;
    if buf.len() as u64 > max {
        return Err(manifest::format_error(what, format!("larger than the {max}-byte limit")).into());
    }
    Ok(buf)
}

/// Exclusive lock on the layout directory itself (flock on the directory's fd): index.json
/// is replaced by rename, so locking the file would lock a stale inode.
struct DirLock(#[allow(dead_code)] File);

fn lock_dir(dir: &Path) -> Result<DirLock, TransportError> {
    let f = File::open(dir).map_err(io_error(dir.display()))?;
    f.lock().map_err(io_error(format!("locking {}", dir.display())))?;
    Ok(DirLock(f))
}

pub(super) fn write(
    dir: &Path,
    tag: &str,
    image: &NewImage,
    blobs: &dyn Blobs,
) -> Result<WriteSummary, TransportError> {
    let mut summary = WriteSummary::default();
    put_image(dir, image, blobs, &mut summary)?;
    set_tag(dir, tag, layout::manifest_descriptor(image, tag))?;
    Ok(summary)
}

/// Writes every image of `index`, then the index, and tags the index.
pub(super) fn write_index(
    dir: &Path,
    tag: &str,
    index: &NewIndex,
    blobs: &dyn Blobs,
) -> Result<WriteSummary, TransportError> {
    let mut summary = WriteSummary::default();
    for image in &index.images {
        put_image(dir, image, blobs, &mut summary)?;
    }
    put_bytes(&dir.join("blobs/sha256"), &index.bytes, index.digest, &mut summary)?;
    set_tag(dir, tag, layout::index_descriptor(index, tag))?;
    Ok(summary)
}

/// One image's layers, config and manifest into the layout's blobs (nothing tagged yet).
fn put_image(
    dir: &Path,
    image: &NewImage,
    blobs: &dyn Blobs,
    summary: &mut WriteSummary,
) -> Result<(), TransportError> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).map_err(io_error(blob_dir.display()))?;
    let layout_file = dir.join("oci-layout");
    if !layout_file.exists() {
        write_atomic(&layout_file, OCI_LAYOUT_FILE).map_err(io_error(layout_file.display()))?;
    }
    for layer in &image.layers {
        put_blob(&blob_dir, &layer.descriptor, blobs, summary)?;
    }
    for (bytes, digest) in [(&image.config, image.config_digest), (&image.manifest, image.manifest_digest)] {
        put_bytes(&blob_dir, bytes, digest, summary)?;
    }
    Ok(())
}

fn put_bytes(blob_dir: &Path, bytes: &[u8], digest: Digest, summary: &mut WriteSummary) -> Result<(), TransportError> {
    let dest = blob_dir.join(digest.hex());
    if dest.exists() {
        summary.blobs_present += 1;
    } else {
        write_atomic(&dest, bytes).map_err(io_error(dest.display()))?;
        summary.blobs_written += 1;
        summary.bytes_written += bytes.len() as u64;
    }
    Ok(())
}

/// Points `tag` at `desc` in index.json: read-modify-write under the directory lock, so
/// concurrent writers of one layout never lose each other's tags.
fn set_tag(dir: &Path, tag: &str, desc: Descriptor) -> Result<(), TransportError> {
    let _lock = lock_dir(dir)?;
    let index_path = dir.join("index.json");
    let mut manifests = if index_path.exists() {
        let what = index_path.display().to_string();
        let f = File::open(&index_path).map_err(io_error(&what))?;
        layout::parse_index(&read_capped(f, &what, manifest::MAX_MANIFEST_BYTES)?, &what)?.manifests
    } else {
        Vec::new()
    };
    manifests.retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
    manifests.push(desc);
    write_atomic(&index_path, &layout::index_json(&manifests)).map_err(io_error(index_path.display()))
}

/// Puts one blob into a layout's blob dir: hard link from a local copy when possible, else a
/// verified streamed copy into a temp file that is renamed into place.
fn put_blob(
    blob_dir: &Path,
    d: &Descriptor,
    blobs: &dyn Blobs,
    summary: &mut WriteSummary,
) -> Result<(), TransportError> {
    let dest = blob_dir.join(d.digest.hex());
    if dest.exists() {
        summary.blobs_present += 1;
        return Ok(());
    }
    if let Some(local) = blobs.local_file(d)?.filter(LocalBlob::linkable) {
        // The very file that was verified, by its descriptor: a path could be swapped meanwhile.
        match link_fd(&local.file, &dest) {
            Ok(()) => {
                local.linked(&d.digest);
                sync_dir(blob_dir).map_err(io_error(blob_dir.display()))?;
                summary.blobs_linked += 1;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                summary.blobs_present += 1;
                return Ok(());
            }
            Err(_) => {} // another filesystem, no /proc, or not allowed: copy instead
        }
    }
    let mut tmp =
        tempfile::Builder::new().prefix(".imgforge-").tempfile_in(blob_dir).map_err(io_error(blob_dir.display()))?;
    let mut reader = blobs.open(d)?;
    let n = {
        let mut w = io::BufWriter::new(tmp.as_file_mut());
        io::copy(&mut reader, &mut w).and_then(|n| w.flush().map(|_| n))
    }
    .map_err(io_error(format!("copying blob {}", d.digest)))?;
    tmp.as_file().sync_all().map_err(io_error(dest.display()))?;
    tmp.persist(&dest).map_err(|e| TransportError::Io { what: dest.display().to_string(), source: e.error })?;
    sync_dir(blob_dir).map_err(io_error(blob_dir.display()))?;
    summary.blobs_written += 1;
    summary.bytes_written += n;
    Ok(())
}

/// Hard-links the open file `f` at `dest` (through `/proc/self/fd`, which any user may do).
fn link_fd(f: &File, dest: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let src = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    let dst = std::ffi::CString::new(dest.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths that outlive the call.
    let r =
        unsafe { libc::linkat(libc::AT_FDCWD, src.as_ptr(), libc::AT_FDCWD, dst.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
