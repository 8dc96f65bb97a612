//! Strict layer reading.
//!
//! [`LayerReader`] parses tar headers itself and rejects, never guesses:
//! * header checksum failures (the unsigned sum; the historic signed sum is accepted too,
//!   as every tar does);
//! * malformed numeric fields and PAX records (bad length, missing '=', overrun, NUL in
//!   a path);
//! * a PAX `size` that disagrees with a non-zero ustar size; when the ustar size is 0 the
//!   PAX size is authoritative and is used to skip the data (TARmageddon,
//!   CVE-2025-62518; tar-rs CVE-2026-33055);
//! * any size on a header-only entry (hard link, symlink, device, directory, fifo): every
//!   parser agrees on where the next header is only if there is no data;
//! * two extension headers of the same kind in a row, or PAX and GNU long names that
//!   disagree;
//! * PAX global headers (`g`) that set a field this reader uses (path, linkpath, size,
//!   uid, gid, mtime, xattrs); other global records (e.g. git archive's `comment`) are
//!   ignored;
//! * GNU sparse files (old `S` type or PAX `GNU.sparse.*`);
//! * truncated streams (EOF inside a header or data: "truncated");
//! * data after the end-of-archive marker other than zeros (the reader reads to EOF after
//!   the marker, so a hashing reader underneath sees the whole stream);
//! * anything over [`Limits`].
//!
//! A stream that ends cleanly at a header boundary without the two zero blocks is
//! accepted, as GNU tar, Go and containerd do.

use std::io::{self, Read};

use crate::compress::Compression;

/// Wraps `r` in the decompressor for `c`. gzip is multi-member aware.
pub fn decompress<'a, R: Read + 'a>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(256 * 1024, r))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Caps applied while reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: u64,
    /// Size of one PAX extended header (`x` or `g`).
    pub max_pax_bytes: u64,
    /// Length of a path or link target.
    pub max_name_len: usize,
    pub max_entry_size: u64,
    /// Total bytes of the tar stream.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_pax_bytes: 1 << 20,
            max_name_len: 4096,
            max_entry_size: 64 << 30,
            max_total_bytes: 256 << 30,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
    Other(u8),
}

impl EntryType {
    fn from_flag(b: u8) -> EntryType {
        match b {
            b'0' | 0 | b'7' => EntryType::File,
            b'1' => EntryType::HardLink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::CharDevice,
            b'4' => EntryType::BlockDevice,
            b'5' => EntryType::Dir,
            b'6' => EntryType::Fifo,
            o => EntryType::Other(o),
        }
    }

    /// Entries that never carry data.
    fn header_only(self) -> bool {
        !matches!(self, EntryType::File | EntryType::Other(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Normalized: no leading "./" or "/", no trailing "/". The root is "".
    pub path: Vec<u8>,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    /// Link target of a symlink or hard link, verbatim.
    pub link: Option<Vec<u8>>,
    /// `SCHILY.xattr.*` records (name without the prefix).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("malformed tar entry #{entry} ({path:?}): {why}")]
    Malformed { entry: u64, path: String, why: String },
    #[error("truncated tar stream in entry #{entry} ({path:?})")]
    Truncated { entry: u64, path: String },
    #[error("tar limit exceeded: {what} over {limit}")]
    Limit { what: &'static str, limit: u64 },
}

const BLOCK: usize = 512;

/// Reads entries one by one. After [`LayerReader::next_entry`] returns an entry, its data
/// can be read with [`LayerReader::read_data`] (or through [`LayerReader::data`]);
/// whatever is left unread is skipped by the next `next_entry`.
pub struct LayerReader<R: Read> {
    r: R,
    limits: Limits,
    /// Entries returned so far (index of the next one).
    index: u64,
    /// Path of the current entry, for messages.
    cur_path: String,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    total: u64,
    done: bool,
    /// Set by any error: the stream position is then unknown, so nothing more is read.
    failed: bool,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<u64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl<R: Read> LayerReader<R> {
    pub fn new(r: R, limits: Limits) -> Self {
        LayerReader {
            r,
            limits,
            index: 0,
            cur_path: String::new(),
            remaining: 0,
            padding: 0,
            total: 0,
            done: false,
            failed: false,
        }
    }

    /// Bytes of tar stream consumed so far.
    pub fn position(&self) -> u64 {
        self.total
    }

    pub fn into_inner(self) -> R {
        self.r
    }

    fn malformed(&self, why: impl Into<String>) -> ReadError {
        ReadError::Malformed { entry: self.index, path: self.cur_path.clone(), why: why.into() }
    }

    fn truncated(&self) -> ReadError {
        ReadError::Truncated { entry: self.index, path: self.cur_path.clone() }
    }

    fn count(&mut self, n: u64) -> Result<(), ReadError> {
        self.total += n;
        if self.total > self.limits.max_total_bytes {
            return Err(ReadError::Limit { what: "total tar bytes", limit: self.limits.max_total_bytes });
        }
        Ok(())
    }

    /// Fills `buf` completely; Ok(false) on EOF before the first byte.
    fn read_block(&mut self, buf: &mut [u8]) -> Result<bool, ReadError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(self.truncated()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.count(buf.len() as u64)?;
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), ReadError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            match self.r.read(&mut buf[..want]) {
                Ok(0) => return Err(self.truncated()),
                Ok(k) => {
                    n -= k as u64;
                    self.count(k as u64)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads the data of an extension header (`x`, `g`, `L`, `K`) plus its padding.
    fn read_ext(&mut self, size: u64) -> Result<Vec<u8>, ReadError> {
        let mut v = vec![0u8; size as usize];
        if !v.is_empty() && !self.read_block(&mut v)? {
            return Err(self.truncated());
        }
        self.skip(pad(size))?;
        Ok(v)
    }

    /// Reads data of the current entry. Returns 0 at its end. A stream that ends early is
    /// an `UnexpectedEof` error.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("tar stream already failed"));
        }
        let r = self.read_data_inner(buf);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn read_data_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = self.remaining.min(buf.len() as u64) as usize;
        let n = loop {
            match self.r.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, self.truncated().to_string()));
        }
        self.remaining -= n as u64;
        self.count(n as u64).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(n)
    }

    /// The current entry's data as a `Read`.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }

    /// The next entry, or `None` at the end of the archive. After an error every call
    /// fails: the position in the stream is no longer trustworthy.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ReadError> {
        if self.failed {
            return Err(ReadError::Malformed {
                entry: self.index,
                path: self.cur_path.clone(),
                why: "tar stream already failed".into(),
            });
        }
        if self.done {
            return Ok(None);
        }
        let r = self.next_entry_inner();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn next_entry_inner(&mut self) -> Result<Option<Entry>, ReadError> {
        let skip = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        self.skip(skip)?;
        self.cur_path.clear();

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut block = [0u8; BLOCK];
        loop {
            if !self.read_block(&mut block)? {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(self.truncated());
                }
                // Clean EOF at a header boundary without end-of-archive marker: accepted.
                self.done = true;
                return Ok(None);
            }
            if block.iter().all(|&b| b == 0) {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(self.malformed("extension header followed by end of archive"));
                }
                self.drain_trailer()?;
                self.done = true;
                return Ok(None);
            }
            self.verify_checksum(&block)?;
            let flag = block[156];
            let size = self.parse_num(&block[124..136], "size")?;
            match flag {
                b'x' | b'g' => {
                    if size > self.limits.max_pax_bytes {
                        return Err(ReadError::Limit { what: "PAX header bytes", limit: self.limits.max_pax_bytes });
                    }
                    let data = self.read_ext(size)?;
                    let recs = self.parse_pax(&data)?;
                    if flag == b'g' {
                        self.check_global(&recs)?;
                        continue;
                    }
                    if pax.is_some() {
                        return Err(self.malformed("two PAX headers for one entry"));
                    }
                    pax = Some(self.interpret_pax(recs)?);
                }
                b'L' | b'K' => {
                    let cap = self.limits.max_name_len as u64 + 1;
                    if size > cap {
                        return Err(ReadError::Limit { what: "name length", limit: self.limits.max_name_len as u64 });
                    }
                    let data = self.read_ext(size)?;
                    let name = self.gnu_long(data)?;
                    let slot = if flag == b'L' { &mut long_name } else { &mut long_link };
                    if slot.is_some() {
                        return Err(self.malformed("two GNU long name headers of one kind for one entry"));
                    }
                    *slot = Some(name);
                }
                b'S' => return Err(self.malformed("GNU sparse files are not supported")),
                _ => return self.finish_entry(&block, size, pax.unwrap_or_default(), long_name, long_link).map(Some),
            }
        }
    }

    fn finish_entry(
        &mut self,
        h: &[u8; BLOCK],
        ustar_size: u64,
        pax: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Entry, ReadError> {
        let posix = &h[257..263] == b"ustar\0";
        let mut ustar_name = cstr(&h[..100]).to_vec();
        if posix {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                let mut p = prefix.to_vec();
                p.push(b'/');
                p.extend_from_slice(&ustar_name);
                ustar_name = p;
            }
        }
        let raw_path = match (pax.path, long_name) {
            (Some(p), Some(l)) if p != l => return Err(self.malformed("PAX path and GNU long name disagree")),
            (Some(p), _) => p,
            (None, Some(l)) => l,
            (None, None) => ustar_name,
        };
        self.cur_path = String::from_utf8_lossy(&raw_path).into_owned();
        if raw_path.len() > self.limits.max_name_len {
            return Err(ReadError::Limit { what: "name length", limit: self.limits.max_name_len as u64 });
        }
        if raw_path.is_empty() {
            return Err(self.malformed("empty name"));
        }
        let kind = EntryType::from_flag(h[156]);
        let link = match (pax.linkpath, long_link) {
            (Some(p), Some(l)) if p != l => return Err(self.malformed("PAX linkpath and GNU long link disagree")),
            (Some(p), _) => Some(p),
            (None, Some(l)) => Some(l),
            (None, None) => Some(cstr(&h[157..257]).to_vec()),
        };
        let link = match kind {
            EntryType::Symlink | EntryType::HardLink => {
                let l = link.unwrap_or_default();
                if l.len() > self.limits.max_name_len {
                    return Err(ReadError::Limit { what: "name length", limit: self.limits.max_name_len as u64 });
                }
                if l.is_empty() {
                    return Err(self.malformed("empty link target"));
                }
                Some(l)
            }
            _ => None,
        };
        let size = match pax.size {
            Some(ps) if ustar_size != 0 && ps != ustar_size => {
                return Err(self.malformed(format!("PAX size {ps} disagrees with ustar size {ustar_size}")))
            }
            Some(ps) => ps,
            None => ustar_size,
        };
        if kind.header_only() && size != 0 {
            return Err(self.malformed(format!("size {size} on a header-only entry")));
        }
        if size > self.limits.max_entry_size {
            return Err(ReadError::Limit { what: "entry size", limit: self.limits.max_entry_size });
        }
        if self.total.saturating_add(size).saturating_add(pad(size)) > self.limits.max_total_bytes {
            return Err(ReadError::Limit { what: "total tar bytes", limit: self.limits.max_total_bytes });
        }
        if self.index >= self.limits.max_entries {
            return Err(ReadError::Limit { what: "entries", limit: self.limits.max_entries });
        }
        let mode = self.parse_num(&h[100..108], "mode")?;
        if mode > 0o7_777_777 {
            return Err(self.malformed("mode out of range"));
        }
        let uid = match pax.uid {
            Some(u) => u,
            None => self.parse_num(&h[108..116], "uid")?,
        };
        let gid = match pax.gid {
            Some(g) => g,
            None => self.parse_num(&h[116..124], "gid")?,
        };
        let mtime = match pax.mtime {
            Some(m) => m,
            None => self.parse_num(&h[136..148], "mtime")?,
        };
        let path = normalize_path(&raw_path);
        self.index += 1;
        self.remaining = size;
        self.padding = pad(size);
        Ok(Entry { path, kind, mode: (mode & 0o7777) as u32, uid, gid, size, mtime, link, xattrs: pax.xattrs })
    }

    /// After the first zero block: the rest of the stream must be zeros.
    fn drain_trailer(&mut self) -> Result<(), ReadError> {
        let mut buf = [0u8; 8192];
        loop {
            let n = match self.r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.count(n as u64)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(self.malformed("data after the end-of-archive marker"));
            }
        }
    }

    fn verify_checksum(&self, h: &[u8; BLOCK]) -> Result<(), ReadError> {
        let stored = self.parse_num(&h[148..156], "checksum")?;
        let mut unsigned: u64 = 0;
        let mut signed: i64 = 0;
        for (i, &b) in h.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += u64::from(b);
            signed += i64::from(b as i8);
        }
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err(self.malformed(format!("header checksum mismatch (stored {stored}, computed {unsigned})")));
        }
        Ok(())
    }

    /// Octal (leading spaces/NULs allowed, terminated by space or NUL) or GNU base-256.
    fn parse_num(&self, f: &[u8], what: &str) -> Result<u64, ReadError> {
        if f[0] & 0x80 != 0 {
            if f[0] == 0xff {
                return Err(self.malformed(format!("negative {what}")));
            }
            let mut v: u64 = u64::from(f[0] & 0x7f);
            for &b in &f[1..] {
                if v >> 56 != 0 {
                    return Err(self.malformed(format!("{what} overflows")));
                }
                v = (v << 8) | u64::from(b);
            }
            return Ok(v);
        }
        let mut i = 0;
        while i < f.len() && (f[i] == b' ' || f[i] == 0) {
            i += 1;
        }
        let mut v: u64 = 0;
        while i < f.len() && (b'0'..=b'7').contains(&f[i]) {
            v = v.checked_mul(8).ok_or_else(|| self.malformed(format!("{what} overflows")))? + u64::from(f[i] - b'0');
            i += 1;
        }
        if f[i..].iter().any(|&b| b != b' ' && b != 0) {
            return Err(self.malformed(format!("invalid octal {what} field {:?}", String::from_utf8_lossy(f))));
        }
        Ok(v)
    }

    fn parse_pax(&self, data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ReadError> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            // Trailing NUL padding inside the declared size is tolerated by nobody sane;
            // reject it like any other malformed record.
            let sp = rest.iter().position(|&b| b == b' ').ok_or_else(|| self.malformed("PAX record without length"))?;
            let len_s = &rest[..sp];
            if len_s.is_empty() || len_s.len() > 20 || !len_s.iter().all(u8::is_ascii_digit) || (len_s[0] == b'0') {
                return Err(self.malformed("PAX record with a bad length field"));
            }
            let len: usize = std::str::from_utf8(len_s)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.malformed("PAX record with a bad length field"))?;
            if len > rest.len() || len < sp + 3 {
                return Err(self.malformed("PAX record length overruns the header"));
            }
            let rec = &rest[sp + 1..len];
            if rec.last() != Some(&b'\n') {
                return Err(self.malformed("PAX record not terminated by newline"));
            }
            let rec = &rec[..rec.len() - 1];
            let eq = rec.iter().position(|&b| b == b'=').ok_or_else(|| self.malformed("PAX record without '='"))?;
            let key = std::str::from_utf8(&rec[..eq]).map_err(|_| self.malformed("PAX key is not UTF-8"))?;
            if key.is_empty() {
                return Err(self.malformed("PAX record with an empty key"));
            }
            out.push((key.to_string(), rec[eq + 1..].to_vec()));
            rest = &rest[len..];
        }
        Ok(out)
    }

    fn check_global(&self, recs: &[(String, Vec<u8>)]) -> Result<(), ReadError> {
        for (k, _) in recs {
            if matches!(k.as_str(), "path" | "linkpath" | "size" | "uid" | "gid" | "mtime")
                || k.starts_with("SCHILY.xattr.")
                || k.starts_with("GNU.sparse.")
            {
                return Err(self.malformed(format!("PAX global header sets {k:?}: not supported")));
            }
        }
        Ok(())
    }

    fn interpret_pax(&self, recs: Vec<(String, Vec<u8>)>) -> Result<Pax, ReadError> {
        let mut p = Pax::default();
        for (k, v) in recs {
            let dup = || self.malformed(format!("duplicate PAX record {k:?}"));
            match k.as_str() {
                "path" | "linkpath" => {
                    if v.contains(&0) {
                        return Err(self.malformed(format!("NUL in PAX {k}")));
                    }
                    if v.len() > self.limits.max_name_len {
                        return Err(ReadError::Limit { what: "name length", limit: self.limits.max_name_len as u64 });
                    }
                    let slot = if k == "path" { &mut p.path } else { &mut p.linkpath };
                    if slot.replace(v).is_some() {
                        return Err(dup());
                    }
                }
                "size" | "uid" | "gid" => {
                    let n = self.pax_decimal(&k, &v)?;
                    let slot = match k.as_str() {
                        "size" => &mut p.size,
                        "uid" => &mut p.uid,
                        _ => &mut p.gid,
                    };
                    if slot.replace(n).is_some() {
                        return Err(dup());
                    }
                }
                "mtime" => {
                    // "seconds[.fraction]"; the fraction is dropped.
                    let int = match v.iter().position(|&b| b == b'.') {
                        Some(i) => {
                            if !v[i + 1..].iter().all(u8::is_ascii_digit) {
                                return Err(self.malformed("PAX mtime is not a number"));
                            }
                            &v[..i]
                        }
                        None => &v[..],
                    };
                    let n = self.pax_decimal("mtime", int)?;
                    if p.mtime.replace(n).is_some() {
                        return Err(dup());
                    }
                }
                _ if k.starts_with("GNU.sparse.") => {
                    return Err(self.malformed("GNU sparse files are not supported"));
                }
                _ => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        p.xattrs.push((name.to_string(), v));
                    }
                    // Other records (atime, ctime, uname, gname, comment, charset, …) are
                    // not used.
                }
            }
        }
        Ok(p)
    }

    fn pax_decimal(&self, key: &str, v: &[u8]) -> Result<u64, ReadError> {
        if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
            return Err(self.malformed(format!("PAX {key} is not a decimal number")));
        }
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.malformed(format!("PAX {key} is out of range")))
    }

    fn gnu_long(&self, mut data: Vec<u8>) -> Result<Vec<u8>, ReadError> {
        while data.last() == Some(&0) {
            data.pop();
        }
        if data.contains(&0) {
            return Err(self.malformed("NUL inside a GNU long name"));
        }
        if data.is_empty() {
            return Err(self.malformed("empty GNU long name"));
        }
        Ok(data)
    }
}

/// `Read` over the current entry's data.
pub struct EntryData<'a, R: Read> {
    reader: &'a mut LayerReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read_data(buf)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The bytes up to the first NUL.
fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|&b| b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

/// Strips leading "/" and "./" and trailing "/"; "." and "./" become "".
fn normalize_path(p: &[u8]) -> Vec<u8> {
    let mut s = p;
    loop {
        if let Some(r) = s.strip_prefix(b"/") {
            s = r;
        } else if let Some(r) = s.strip_prefix(b"./") {
            s = r;
        } else {
            break;
        }
    }
    while let Some(r) = s.strip_suffix(b"/") {
        s = r;
    }
    if s == b"." {
        s = b"";
    }
    s.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw ustar header with a correct checksum.
    fn hdr(name: &[u8], flag: u8, size_field: &[u8]) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..124 + size_field.len()].copy_from_slice(size_field);
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = flag;
        h[257..265].copy_from_slice(b"ustar\x0000");
        cksum(&mut h);
        h
    }

    fn cksum(h: &mut [u8; BLOCK]) {
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn size(n: u64) -> Vec<u8> {
        format!("{n:011o}\0").into_bytes()
    }

    fn data(d: &[u8]) -> Vec<u8> {
        let mut v = d.to_vec();
        v.resize(d.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    fn pax(records: &[u8], flag: u8) -> Vec<u8> {
        let mut v = hdr(b"PaxHeaders/x", flag, &size(records.len() as u64)).to_vec();
        v.extend(data(records));
        v
    }

    fn rec(k: &str, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::normalize::pax_record(&mut out, k, v);
        out
    }

    fn end() -> Vec<u8> {
        vec![0; 1024]
    }

    fn read_all(tar: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, ReadError> {
        read_all_with(tar, Limits::default())
    }

    fn read_all_with(tar: &[u8], limits: Limits) -> Result<Vec<(Entry, Vec<u8>)>, ReadError> {
        let mut r = LayerReader::new(tar, limits);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut d = Vec::new();
            r.data().read_to_end(&mut d)?;
            out.push((e, d));
        }
        Ok(out)
    }

    fn why(e: ReadError) -> String {
        match e {
            ReadError::Malformed { why, .. } => why,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn reads_plain_entries_and_skips_unread_data() {
        let mut t = Vec::new();
        t.extend(hdr(b"./a.txt", b'0', &size(5)));
        t.extend(data(b"hello"));
        t.extend(hdr(b"./dir/", b'5', &size(0)));
        let mut l = hdr(b"dir/link", b'2', &size(0));
        l[157..163].copy_from_slice(b"../a.t");
        cksum(&mut l);
        t.extend(l);
        t.extend(end());
        // Read only the first data partially, then skip.
        let mut r = LayerReader::new(&t[..], Limits::default());
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.path.as_slice(), e.kind, e.size, e.mode), (&b"a.txt"[..], EntryType::File, 5, 0o644));
        let mut two = [0u8; 2];
        assert_eq!(r.read_data(&mut two).unwrap(), 2);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.path.as_slice(), e.kind), (&b"dir"[..], EntryType::Dir));
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.kind, EntryType::Symlink);
        assert_eq!(e.link.as_deref(), Some(&b"../a.t"[..]));
        assert!(r.next_entry().unwrap().is_none());
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.position(), t.len() as u64);
    }

    #[test]
    fn clean_eof_without_end_marker_is_accepted() {
        let mut t = hdr(b"a", b'0', &size(1)).to_vec();
        t.extend(data(b"x"));
        assert_eq!(read_all(&t).unwrap().len(), 1);
    }

    #[test]
    fn trailing_zeros_ignored_trailing_garbage_rejected() {
        let mut t = hdr(b"a", b'0', &size(0)).to_vec();
        t.extend(end());
        t.extend(vec![0; 10 * 512 + 7]);
        assert_eq!(read_all(&t).unwrap().len(), 1);
        let mut t2 = hdr(b"a", b'0', &size(0)).to_vec();
        t2.extend(vec![0; 512]);
        t2.extend(hdr(b"smuggled", b'0', &size(0)));
        assert!(why(read_all(&t2).unwrap_err()).contains("after the end-of-archive"));
    }

    #[test]
    fn pax_size_is_authoritative_when_ustar_size_is_zero() {
        // TARmageddon shape: ustar size 0, PAX size 1024, and the "data" looks like a tar
        // header. A reader that ignores the PAX size would see the smuggled entry.
        let mut inner = hdr(b"smuggled", b'0', &size(0)).to_vec();
        inner.extend(vec![0u8; 512]);
        let mut t = pax(&rec("size", b"1024"), b'x');
        t.extend(hdr(b"outer", b'0', &size(0)));
        t.extend(&inner);
        t.extend(end());
        let entries = read_all(&t).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0.path, b"outer");
        assert_eq!(entries[0].0.size, 1024);
        assert_eq!(entries[0].1, inner);
    }

    #[test]
    fn pax_size_mismatch_is_rejected_and_errors_are_sticky() {
        let mut t = pax(&rec("size", b"1024"), b'x');
        t.extend(hdr(b"outer", b'0', &size(512)));
        t.extend(hdr(b"smuggled", b'0', &size(0)));
        t.extend(vec![0u8; 512]);
        t.extend(end());
        assert!(why(read_all(&t).unwrap_err()).contains("PAX size 1024 disagrees with ustar size 512"));
        // Calling again must not resynchronise on the smuggled header.
        let mut r = LayerReader::new(&t[..], Limits::default());
        assert!(r.next_entry().is_err());
        assert!(why(r.next_entry().unwrap_err()).contains("already failed"));
        assert!(r.read_data(&mut [0u8; 10]).is_err());
    }

    #[test]
    fn size_on_header_only_entries_is_rejected() {
        for flag in [b'1', b'2', b'3', b'4', b'5', b'6'] {
            let mut h = hdr(b"x", flag, &size(512));
            h[157] = b't';
            cksum(&mut h);
            let mut t = h.to_vec();
            t.extend(vec![0u8; 512]);
            t.extend(end());
            assert!(why(read_all(&t).unwrap_err()).contains("header-only"), "{}", flag as char);
            // Same through PAX with ustar size 0.
            let mut t = pax(&rec("size", b"512"), b'x');
            t.extend(h_with_size0(flag));
            t.extend(vec![0u8; 512]);
            t.extend(end());
            assert!(why(read_all(&t).unwrap_err()).contains("header-only"), "pax {}", flag as char);
        }
    }

    fn h_with_size0(flag: u8) -> [u8; BLOCK] {
        let mut h = hdr(b"x", flag, &size(0));
        h[157] = b't';
        cksum(&mut h);
        h
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let mut h = hdr(b"a", b'0', &size(0));
        h[0] = b'b';
        let mut t = h.to_vec();
        t.extend(end());
        assert!(why(read_all(&t).unwrap_err()).contains("checksum"));
    }

    #[test]
    fn truncation_is_detected() {
        let mut t = hdr(b"a", b'0', &size(1000)).to_vec();
        t.extend(vec![b'x'; 700]);
        // In the data, read through read_data:
        let e = read_all(&t).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // In the data, skipped by next_entry:
        let mut r = LayerReader::new(&t[..], Limits::default());
        r.next_entry().unwrap();
        assert!(matches!(r.next_entry(), Err(ReadError::Truncated { entry: 1, .. })));
        // Inside a header:
        let t = hdr(b"a", b'0', &size(0))[..300].to_vec();
        assert!(matches!(read_all(&t), Err(ReadError::Truncated { entry: 0, .. })));
        // After an extension header:
        let t = pax(&rec("path", b"abc"), b'x');
        assert!(matches!(read_all(&t), Err(ReadError::Truncated { .. })));
    }

    #[test]
    fn malformed_pax_records_are_rejected() {
        for (rec, want) in [
            (&b"11 path=abc"[..], "newline"),
            (b"12 path=abc", "overruns"),
            (b"99 path=abc\n", "overruns"),
            (b"x1 path=abc\n", "length"),
            (b"011 path=ab\n", "length"),
            (b"12 pathxabc\n", "'='"),
            (b"11 path=ab\n\n", "without length"),
            (b"9 size=x\n", "decimal"),
            (b"11 size=-1\n", "decimal"),
            (b"13 path=a\0bc\n", "NUL"),
            (b"3 =\n", "overruns"),
            (b"10 path=a\n10 path=b\n", "duplicate"),
            (b"22 GNU.sparse.major=1\n", "sparse"),
            (b"noLength", "length"),
        ] {
            let mut t = pax(rec, b'x');
            t.extend(hdr(b"f", b'0', &size(0)));
            t.extend(end());
            let w = why(read_all(&t).unwrap_err());
            assert!(w.contains(want), "{:?}: {w}", String::from_utf8_lossy(rec));
        }
    }

    #[test]
    fn pax_fields_apply() {
        let mut recs = Vec::new();
        for (k, v) in [
            ("path", &b"long/name"[..]),
            ("uid", b"3000000"),
            ("gid", b"7"),
            ("mtime", b"1700000000.5"),
            ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
            ("atime", b"1"),
        ] {
            crate::normalize::pax_record(&mut recs, k, v);
        }
        let mut t = pax(&recs, b'x');
        t.extend(hdr(b"short", b'0', &size(0)));
        t.extend(end());
        let e = &read_all(&t).unwrap()[0].0;
        assert_eq!(e.path, b"long/name");
        assert_eq!((e.uid, e.gid, e.mtime), (3_000_000, 7, 1_700_000_000));
        assert_eq!(e.xattrs, vec![("security.capability".to_string(), vec![1, 0, 0, 2])]);
    }

    #[test]
    fn gnu_long_names_and_conflicts() {
        let name = vec![b'n'; 300];
        let mut t = hdr(b"././@LongLink", b'L', &size(301)).to_vec();
        t.extend(data(&[&name[..], b"\0"].concat()));
        t.extend(hdr(b"truncated", b'0', &size(0)));
        t.extend(end());
        assert_eq!(read_all(&t).unwrap()[0].0.path, name);

        // PAX path and GNU long name that disagree.
        let mut t2 = pax(b"10 path=x\n", b'x');
        t2.extend(hdr(b"././@LongLink", b'L', &size(2)));
        t2.extend(data(b"y\0"));
        t2.extend(hdr(b"z", b'0', &size(0)));
        t2.extend(end());
        assert!(why(read_all(&t2).unwrap_err()).contains("disagree"));

        // Two long names.
        let mut t3 = hdr(b"././@LongLink", b'L', &size(2)).to_vec();
        t3.extend(data(b"y\0"));
        t3.extend(hdr(b"././@LongLink", b'L', &size(2)));
        t3.extend(data(b"w\0"));
        t3.extend(hdr(b"z", b'0', &size(0)));
        assert!(why(read_all(&t3).unwrap_err()).contains("two GNU"));

        // NUL inside.
        let mut t4 = hdr(b"././@LongLink", b'L', &size(4)).to_vec();
        t4.extend(data(b"a\0b\0"));
        t4.extend(hdr(b"z", b'0', &size(0)));
        assert!(why(read_all(&t4).unwrap_err()).contains("NUL"));

        // Two PAX headers.
        let mut t5 = pax(b"10 path=a\n", b'x');
        t5.extend(pax(b"10 path=b\n", b'x'));
        t5.extend(hdr(b"z", b'0', &size(0)));
        assert!(why(read_all(&t5).unwrap_err()).contains("two PAX"));
    }

    #[test]
    fn global_headers() {
        // git archive's comment is fine.
        let mut t = pax(b"52 comment=0123456789012345678901234567890123456789\n", b'g');
        t.extend(hdr(b"f", b'0', &size(0)));
        t.extend(end());
        assert_eq!(read_all(&t).unwrap().len(), 1);
        let mut t = pax(&rec("size", b"1024"), b'g');
        t.extend(hdr(b"f", b'0', &size(0)));
        t.extend(end());
        assert!(why(read_all(&t).unwrap_err()).contains("global"));
    }

    #[test]
    fn limits() {
        let mut t = Vec::new();
        for i in 0..5 {
            t.extend(hdr(format!("f{i}").as_bytes(), b'0', &size(0)));
        }
        t.extend(end());
        let l = Limits { max_entries: 4, ..Limits::default() };
        assert!(matches!(read_all_with(&t, l), Err(ReadError::Limit { what: "entries", limit: 4 })));
        assert_eq!(read_all_with(&t, Limits { max_entries: 5, ..l }).unwrap().len(), 5);

        let mut t = pax(b"13 path=abcd\n", b'x');
        t.extend(hdr(b"f", b'0', &size(0)));
        let l = Limits { max_name_len: 3, ..Limits::default() };
        assert!(matches!(read_all_with(&t, l), Err(ReadError::Limit { what: "name length", .. })));
        let l = Limits { max_pax_bytes: 12, ..Limits::default() };
        assert!(matches!(read_all_with(&t, l), Err(ReadError::Limit { what: "PAX header bytes", .. })));
        let mut t = hdr(b"big", b'0', &size(2048)).to_vec();
        t.extend(vec![0; 2048]);
        let l = Limits { max_entry_size: 2047, ..Limits::default() };
        assert!(matches!(read_all_with(&t, l), Err(ReadError::Limit { what: "entry size", .. })));
        let l = Limits { max_total_bytes: 2048, ..Limits::default() };
        assert!(matches!(read_all_with(&t, l), Err(ReadError::Limit { what: "total tar bytes", .. })));
        let t = hdr(b"././@LongLink", b'L', &size(5000));
        assert!(matches!(read_all(&t), Err(ReadError::Limit { what: "name length", .. })));
    }

    #[test]
    fn numeric_fields() {
        // base-256 size
        let mut h = hdr(b"b", b'0', &[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0]);
        cksum(&mut h);
        let mut t = h.to_vec();
        t.extend(vec![7u8; 512]);
        t.extend(end());
        assert_eq!(read_all(&t).unwrap()[0].0.size, 512);
        // garbage in an octal field
        let mut h = hdr(b"b", b'0', b"0000000009\0");
        cksum(&mut h);
        assert!(why(read_all(&h).unwrap_err()).contains("octal size"));
        // Space-padded (old GNU style) is fine.
        let h = hdr(b"c", b'0', b"         0 ");
        assert_eq!(read_all(&h).unwrap().len(), 1);
    }

    #[test]
    fn sparse_and_unknown_types() {
        let h = hdr(b"s", b'S', &size(0));
        assert!(why(read_all(&h).unwrap_err()).contains("sparse"));
        // Unknown type with data: skipped by its size.
        let mut t = hdr(b"v", b'V', &size(3)).to_vec();
        t.extend(data(b"abc"));
        t.extend(hdr(b"f", b'0', &size(0)));
        let got = read_all(&t).unwrap();
        assert_eq!(got[0].0.kind, EntryType::Other(b'V'));
        assert_eq!(got[0].1, b"abc");
        assert_eq!(got[1].0.path, b"f");
    }

    #[test]
    fn path_normalization() {
        assert_eq!(normalize_path(b"./"), b"");
        assert_eq!(normalize_path(b"."), b"");
        assert_eq!(normalize_path(b"/./a/b/"), b"a/b");
        assert_eq!(normalize_path(b"../a"), b"../a");
        let h = hdr(b"", b'0', &size(0));
        assert!(why(read_all(&h).unwrap_err()).contains("empty name"));
    }
}
