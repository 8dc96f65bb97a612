//! Random access to the regular files of a tar archive on disk: one pass over the headers
//! records where each file's bytes are, so blobs are read in place, never extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use imgforge_layers::{EntryType, LayerReader, Limits};
use std::path::{Path, PathBuf};

use super::{io_error, TransportError};

const MAX_ENTRIES: usize = 1_000_000;

pub struct TarIndex {
    path: PathBuf,
    /// The archive as it was indexed: entries are read from this open file, never by
    /// opening the path again (which may have been replaced since).
    file: Arc<File>,
    entries: HashMap<String, (u64, u64)>,
}

impl TarIndex {
    /// Indexes the archive with imgforge's strict reader (PAX records parsed by their
    /// lengths, size disagreements and truncation refused), never the lenient one.
    pub fn open(path: &Path) -> Result<TarIndex, TransportError> {
        let what = path.display().to_string();
        let file = Arc::new(File::open(path).map_err(io_error(&what))?);
        let mut reader = LayerReader::new(BufReader::new(&*file), Limits::default());
        let mut entries = HashMap::new();
        loop {
            let entry = match reader.next_entry() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return Err(TransportError::Unsupported(format!("{what}: not a valid tar archive: {e}"))),
            };
            if entries.len() >= MAX_ENTRIES {
                return Err(TransportError::Unsupported(format!("{what}: more than {MAX_ENTRIES} entries")));
            }
            if entry.kind != EntryType::File {
                continue;
            }
            // The reader has consumed the header(s) and none of the data: this is where it starts.
            let pos = (reader.position(), entry.size);
            let name = String::from_utf8_lossy(&entry.path).into_owned();
            if entries.insert(name.clone(), pos).is_some() {
                return Err(TransportError::Unsupported(format!(
                    "{what}: {name:?} appears twice in the archive; refusing an ambiguous archive"
                )));
            }
        }
        drop(reader);
        Ok(TarIndex { path: path.to_path_buf(), file, entries })
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
        Ok(Box::new(EntryReader { file: self.file.clone(), pos: offset, end: offset + size }))
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

/// One entry's bytes, read by position from the shared archive file.
struct EntryReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for EntryReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive is shorter than when it was indexed",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
