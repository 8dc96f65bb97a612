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
        LayerReader { r, limits, index: 0, cur_path: String::new(), remaining: 0, padding: 0, total: 0, done: false }
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

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let skip = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        self.skip(skip)?;
        if self.index > 0 || !self.cur_path.is_empty() {
            // cur_path is from the previous entry until the new one is known.
            self.cur_path.clear();
        }

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
        if self.index >= self.limits.max_entries {
            return Err(ReadError::Limit { what: "entries", limit: self.limits.max_entries });
        }
        let mode = self.parse_num(&h[100..108], "mode")?;
        if mode > 0o7777_777 {
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
            let sp = rest
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| self.malformed("PAX record without length"))?;
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
            let eq = rec
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| self.malformed("PAX record without '='"))?;
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
