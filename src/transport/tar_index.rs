//! Random access to the regular files of a tar archive on disk: one pass over the headers
//! records where each file's bytes are, so blobs are read in place, never extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{io_error, TransportError};

const MAX_ENTRIES: usize = 1_000_000;

pub struct TarIndex {
    path: PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

impl TarIndex {
    pub fn open(path: &Path) -> Result<TarIndex, TransportError> {
        let what = path.display().to_string();
        let file = File::open(path).map_err(io_error(&what))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive.entries().map_err(io_error(&what))? {
            let entry = entry.map_err(io_error(format!("{what}: reading the archive")))?;
            if entries.len() >= MAX_ENTRIES {
                return Err(TransportError::Unsupported(format!("{what}: more than {MAX_ENTRIES} entries")));
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let raw = entry.path_bytes();
            let name = String::from_utf8_lossy(&raw);
            let name = name.trim_start_matches("./").to_string();
            let pos = (entry.raw_file_position(), entry.size());
            if entries.insert(name.clone(), pos).is_some() {
                return Err(TransportError::Unsupported(format!(
                    "{what}: {name:?} appears twice in the archive; refusing an ambiguous archive"
                )));
            }
        }
        Ok(TarIndex { path: path.to_path_buf(), entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self, name: &str) -> Option<u64> {
        self.entries.get(name).map(|e| e.1)
    }

    pub fn open_file(&self, name: &str) -> Result<Box<dyn Read + Send>, TransportError> {
        let (offset, size) = *self.entries.get(name).ok_or_else(|| {
            TransportError::NotFound(format!("{}: no file {name:?} in the archive", self.path.display()))
        })?;
        let what = format!("{}: {name}", self.path.display());
        let mut f = File::open(&self.path).map_err(io_error(&what))?;
        f.seek(SeekFrom::Start(offset)).map_err(io_error(&what))?;
        Ok(Box::new(f.take(size)))
    }

    pub fn read_small(&self, name: &str, max: u64) -> Result<Vec<u8>, TransportError> {
        let size = self.size(name).ok_or_else(|| {
            TransportError::NotFound(format!("{}: no file {name:?} in the archive", self.path.display()))
        })?;
        if size > max {
            return Err(TransportError::Unsupported(format!(
                "{}: {name} is {size} bytes, over the {max}-byte limit",
                self.path.display()
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.open_file(name)?.read_to_end(&mut buf).map_err(io_error(format!("{}: {name}", self.path.display())))?;
        Ok(buf)
    }
}
