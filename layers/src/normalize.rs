//! The normalizing tar writer: identical logical input gives identical bytes, whatever the
//! host (user names, umask, clock, locale, uid of the builder).
//!
//! Headers are POSIX ustar (`ustar\0` `00`): mtime = [`Normalize::mtime`], empty
//! uname/gname, numeric uid/gid from [`Owner`], device numbers written as octal 0, modes
//! normalized by [`Normalize::file_mode`]. Whatever does not fit ustar goes into a PAX
//! extended header (`x`) placed just before the entry: paths that do not fit name/prefix,
//! link targets over 100 bytes, sizes of 8 GiB and more, uid/gid over 2097151, mtimes
//! after 2242, and
//! (optionally) the `security.capability` xattr. The PAX header itself is deterministic:
//! named `PaxHeaders/<file name>` (truncated to 100 bytes), mode 0644, uid/gid 0, the same
//! mtime, records in a fixed order. A field that only the PAX header carries is written as
//! 0 in the ustar header.

use std::io::{self, Read, Write};

/// 1980-01-01T00:00:01Z, the timestamp the CNB lifecycle gives every layer entry.
pub const DEFAULT_EPOCH: u64 = 315_532_801;

/// Numeric owner of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// Normalization rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Normalize {
    /// mtime of every entry, seconds since the epoch.
    pub mtime: u64,
    /// Keep setuid/setgid/sticky bits.
    pub keep_special_bits: bool,
    /// Emit `SCHILY.xattr.security.capability` given by [`TarWriter::set_capability`].
    pub keep_capabilities: bool,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize { mtime: DEFAULT_EPOCH, keep_special_bits: false, keep_capabilities: false }
    }
}

impl Normalize {
    /// The owner's bits decide: owner r → everyone r, owner x → everyone x, owner w →
    /// owner w only (0600→0644, 0700→0755, 0775→0755, 0444→0444, 0555→0555), so the
    /// builder's umask never changes the output. setuid/setgid/sticky are dropped unless
    /// `keep_special_bits`.
    pub fn file_mode(&self, host_mode: u32) -> u32 {
        let mut m = 0;
        if host_mode & 0o400 != 0 {
            m |= 0o444;
        }
        if host_mode & 0o200 != 0 {
            m |= 0o200;
        }
        if host_mode & 0o100 != 0 {
            m |= 0o111;
        }
        if self.keep_special_bits {
            m |= host_mode & 0o7000;
        }
        m
    }

    /// Same rule as [`Normalize::file_mode`].
    pub fn dir_mode(&self, host_mode: u32) -> u32 {
        self.file_mode(host_mode)
    }
}

const BLOCK: usize = 512;
const USTAR_NAME: usize = 100;
const USTAR_PREFIX: usize = 155;
const USTAR_LINK: usize = 100;
/// Largest value of an 11-digit octal field (size, mtime): 8 GiB - 1.
const USTAR_MAX_SIZE: u64 = 0o77777777777;
/// Largest value of a 7-digit octal id field.
const USTAR_MAX_ID: u64 = 0o7777777;

/// Checks a relative archive path: non-empty, no leading or trailing '/', no empty, `.`
/// or `..` components, no NUL.
pub fn validate_rel_path(path: &[u8]) -> io::Result<()> {
    let bad = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid path in layer {:?}: {why}", String::from_utf8_lossy(path)),
        ))
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.contains(&0) {
        return bad("contains NUL");
    }
    if path[0] == b'/' {
        return bad("absolute");
    }
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" => return bad("empty component (// or trailing /)"),
            b"." | b".." => return bad("'.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// Writes normalized tar entries to `out`.
pub struct TarWriter<W: Write> {
    out: W,
    rules: Normalize,
    capability: Option<Vec<u8>>,
    buf: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    HardLink,
}

impl Kind {
    fn typeflag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Dir => b'5',
        }
    }
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, rules: Normalize) -> Self {
        TarWriter { out, rules, capability: None, buf: Vec::new() }
    }

    pub fn rules(&self) -> &Normalize {
        &self.rules
    }

    /// A directory; the trailing '/' is added here.
    pub fn dir(&mut self, path: &[u8], host_mode: u32, owner: Owner) -> io::Result<()> {
        validate_rel_path(path)?;
        let mut name = Vec::with_capacity(path.len() + 1);
        name.extend_from_slice(path);
        name.push(b'/');
        let mode = self.rules.dir_mode(host_mode);
        self.header(&name, Kind::Dir, mode, owner, 0, None, None)
    }

    /// A regular file with exactly `size` bytes read from `data`. If `data` yields fewer or
    /// more bytes, fails with "file changed while it was being read: PATH" (the archive is
    /// then unusable: the header was already written).
    pub fn file(
        &mut self,
        path: &[u8],
        host_mode: u32,
        owner: Owner,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        validate_rel_path(path)?;
        let cap = self.capability.take().filter(|_| self.rules.keep_capabilities);
        let mode = self.rules.file_mode(host_mode);
        self.header(path, Kind::File, mode, owner, size, None, cap.as_deref())?;
        self.copy_data(path, size, data)
    }

    /// A symbolic link (mode 0777); `target` is written verbatim.
    pub fn symlink(&mut self, path: &[u8], target: &[u8], owner: Owner) -> io::Result<()> {
        validate_rel_path(path)?;
        check_link_target(path, target)?;
        self.header(path, Kind::Symlink, 0o777, owner, 0, Some(target), None)
    }

    /// A hard link to `target` (a path written earlier in the same archive), mode 0644.
    pub fn hardlink(&mut self, path: &[u8], target: &[u8], owner: Owner) -> io::Result<()> {
        self.hardlink_with_mode(path, target, 0o644, owner)
    }

    /// A hard link whose header carries the (normalized) mode of the file it links to.
    pub fn hardlink_with_mode(&mut self, path: &[u8], target: &[u8], host_mode: u32, owner: Owner) -> io::Result<()> {
        validate_rel_path(path)?;
        validate_rel_path(target)?;
        let mode = self.rules.file_mode(host_mode);
        self.header(path, Kind::HardLink, mode, owner, 0, Some(target), None)
    }

    /// The `security.capability` xattr of the next [`TarWriter::file`] (ignored unless
    /// `keep_capabilities`). `None` clears it.
    pub fn set_capability(&mut self, cap: Option<Vec<u8>>) {
        self.capability = cap;
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    fn copy_data(&mut self, path: &[u8], size: u64, data: &mut dyn Read) -> io::Result<()> {
        const BUF: usize = 256 * 1024;
        if self.buf.len() < BUF {
            self.buf.resize(BUF, 0);
        }
        let changed =
            || io::Error::other(format!("file changed while it was being read: {}", String::from_utf8_lossy(path)));
        let mut left = size;
        while left > 0 {
            let want = left.min(BUF as u64) as usize;
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => return Err(changed()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.out.write_all(&self.buf[..n])?;
            left -= n as u64;
        }
        // The reader must be exhausted now.
        loop {
            match data.read(&mut self.buf[..1]) {
                Ok(0) => break,
                Ok(_) => return Err(changed()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        if pad > 0 {
            self.out.write_all(&[0u8; BLOCK][..pad])?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &[u8],
        kind: Kind,
        mode: u32,
        owner: Owner,
        size: u64,
        link: Option<&[u8]>,
        cap: Option<&[u8]>,
    ) -> io::Result<()> {
        let mut h = [0u8; BLOCK];
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();

        // Records in a fixed order.
        let gid = u64::from(owner.gid);
        if gid > USTAR_MAX_ID {
            pax.push(("gid", gid.to_string().into_bytes()));
        }
        if let Some(l) = link {
            if l.len() > USTAR_LINK {
                pax.push(("linkpath", l.to_vec()));
            }
        }
        let mtime = self.rules.mtime;
        if mtime > USTAR_MAX_SIZE {
            pax.push(("mtime", mtime.to_string().into_bytes()));
        }
        let split = split_ustar_path(name);
        if split.is_none() {
            pax.push(("path", name.to_vec()));
        }
        if size > USTAR_MAX_SIZE {
            pax.push(("size", size.to_string().into_bytes()));
        }
        if let Some(c) = cap {
            pax.push(("SCHILY.xattr.security.capability", c.to_vec()));
        }
        let uid = u64::from(owner.uid);
        if uid > USTAR_MAX_ID {
            pax.push(("uid", uid.to_string().into_bytes()));
        }
        if !pax.is_empty() {
            self.pax_header(name, &pax)?;
        }

        // name / prefix
        match split {
            Some((prefix, rest)) => {
                h[..rest.len()].copy_from_slice(rest);
                h[345..345 + prefix.len()].copy_from_slice(prefix);
            }
            None => {
                // Truncated fallback for readers that ignore PAX: the last bytes are the
                // most telling, but we keep it simple and deterministic: the first 100.
                let n = name.len().min(USTAR_NAME);
                h[..n].copy_from_slice(&name[..n]);
            }
        }
        put_octal(&mut h[100..108], u64::from(mode));
        put_octal(&mut h[108..116], if uid > USTAR_MAX_ID { 0 } else { uid });
        put_octal(&mut h[116..124], if gid > USTAR_MAX_ID { 0 } else { gid });
        put_octal(&mut h[124..136], if size > USTAR_MAX_SIZE { 0 } else { size });
        put_octal(&mut h[136..148], if mtime > USTAR_MAX_SIZE { 0 } else { mtime });
        h[156] = kind.typeflag();
        if let Some(l) = link {
            let n = l.len().min(USTAR_LINK);
            h[157..157 + n].copy_from_slice(&l[..n]);
        }
        finish_ustar(&mut h);
        self.out.write_all(&h)
    }

    fn pax_header(&mut self, name: &[u8], records: &[(&str, Vec<u8>)]) -> io::Result<()> {
        let mut body = Vec::new();
        for (k, v) in records {
            pax_record(&mut body, k, v);
        }
        let mut h = [0u8; BLOCK];
        let trimmed = name.strip_suffix(b"/").unwrap_or(name);
        let base = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(i) => &trimmed[i + 1..],
            None => trimmed,
        };
        let mut pname = b"PaxHeaders/".to_vec();
        pname.extend_from_slice(base);
        pname.truncate(USTAR_NAME);
        h[..pname.len()].copy_from_slice(&pname);
        put_octal(&mut h[100..108], 0o644);
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        put_octal(&mut h[124..136], body.len() as u64);
        put_octal(&mut h[136..148], self.rules.mtime.min(USTAR_MAX_SIZE));
        h[156] = b'x';
        finish_ustar(&mut h);
        self.out.write_all(&h)?;
        self.out.write_all(&body)?;
        let pad = (BLOCK - body.len() % BLOCK) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])
    }
}

fn check_link_target(path: &[u8], target: &[u8]) -> io::Result<()> {
    if target.is_empty() || target.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid link target for {:?}: empty or contains NUL", String::from_utf8_lossy(path)),
        ));
    }
    Ok(())
}

/// Appends one PAX record `"<len> <key>=<value>\n"`, where len counts the whole record.
pub(crate) fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Splits `name` into ustar (prefix, name) if possible: whole in name if ≤ 100 bytes,
/// else at the last '/' that leaves a prefix ≤ 155 and a non-empty name ≤ 100 (the same
/// rule as Go's archive/tar).
fn split_ustar_path(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= USTAR_NAME {
        return Some((&[], name));
    }
    let mut len = name.len();
    if len > USTAR_PREFIX + 1 {
        len = USTAR_PREFIX + 1;
    } else if name[len - 1] == b'/' {
        len -= 1;
    }
    let i = name[..len].iter().rposition(|&b| b == b'/')?;
    let (prefix, rest) = (&name[..i], &name[i + 1..]);
    if i == 0 || rest.is_empty() || rest.len() > USTAR_NAME || prefix.len() > USTAR_PREFIX {
        return None;
    }
    Some((prefix, rest))
}

/// Zero-padded octal with a trailing NUL, filling the field.
fn put_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    debug_assert!(s.len() == digits, "octal value {v} does not fit {digits} digits");
    let b = s.as_bytes();
    let b = &b[b.len().saturating_sub(digits)..];
    field[..digits].copy_from_slice(b);
    field[digits] = 0;
}

/// Magic, version, zeroed device numbers, checksum.
fn finish_ustar(h: &mut [u8; BLOCK]) {
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put_octal(&mut h[329..337], 0);
    put_octal(&mut h[337..345], 0);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_rule_follows_owner_bits() {
        let n = Normalize::default();
        for (host, want) in [
            (0o600, 0o644),
            (0o700, 0o755),
            (0o775, 0o755),
            (0o644, 0o644),
            (0o664, 0o644),
            (0o444, 0o444),
            (0o555, 0o555),
            (0o400, 0o444),
            (0o500, 0o555),
            (0o200, 0o200),
            (0o077, 0),
            (0o4755, 0o755),
            (0o2755, 0o755),
            (0o1777, 0o755),
        ] {
            assert_eq!(n.file_mode(host), want, "{host:o}");
            assert_eq!(n.dir_mode(host), want, "{host:o}");
        }
        let keep = Normalize { keep_special_bits: true, ..n };
        assert_eq!(keep.file_mode(0o4700), 0o4755);
        assert_eq!(keep.dir_mode(0o1777), 0o1755);
        assert_eq!(keep.file_mode(0o6711), 0o6755);
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for vlen in 0..200 {
            let mut out = Vec::new();
            let v = vec![b'a'; vlen];
            pax_record(&mut out, "path", &v);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let n: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(n, out.len(), "value length {vlen}");
            assert!(out.ends_with(b"\n"));
        }
    }

    #[test]
    fn ustar_split_rules() {
        assert_eq!(split_ustar_path(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long_dir = [b'd'; 150];
        let mut p = long_dir.to_vec();
        p.extend_from_slice(b"/file");
        assert_eq!(split_ustar_path(&p), Some((&long_dir[..], &b"file"[..])));
        // Component over 100 bytes: cannot split.
        assert_eq!(split_ustar_path(&[b'x'; 101]), None);
        // Prefix would be over 155.
        let mut p = vec![b'd'; 156];
        p.extend_from_slice(b"/f");
        assert_eq!(split_ustar_path(&p), None);
        // Directory: trailing slash stays in the name part.
        let mut p = vec![b'd'; 120];
        p.extend_from_slice(b"/sub/");
        assert_eq!(split_ustar_path(&p), Some((&p[..120], &b"sub/"[..])));
    }

    #[test]
    fn bad_paths_are_rejected() {
        let mut w = TarWriter::new(Vec::new(), Normalize::default());
        for bad in [&b""[..], b"/abs", b"a/", b"a//b", b"./a", b"a/./b", b"../x", b"a/..", b"nul\0"] {
            let e = w.dir(bad, 0o755, Owner::ROOT).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            let e = w.file(bad, 0o644, Owner::ROOT, 0, &mut io::empty()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(w.symlink(b"l", b"", Owner::ROOT).is_err());
        assert!(w.hardlink(b"l", b"../x", Owner::ROOT).is_err());
        assert!(w.get_ref().is_empty(), "nothing written for rejected entries");
    }

    #[test]
    fn file_that_changed_size_is_an_error() {
        let mut w = TarWriter::new(Vec::new(), Normalize::default());
        let e = w.file(b"short", 0o644, Owner::ROOT, 10, &mut &b"12345"[..]).unwrap_err();
        assert_eq!(e.to_string(), "file changed while it was being read: short");
        let mut w = TarWriter::new(Vec::new(), Normalize::default());
        let e = w.file(b"long", 0o644, Owner::ROOT, 3, &mut &b"12345"[..]).unwrap_err();
        assert_eq!(e.to_string(), "file changed while it was being read: long");
        let mut w = TarWriter::new(Vec::new(), Normalize::default());
        w.file(b"exact", 0o644, Owner::ROOT, 5, &mut &b"12345"[..]).unwrap();
        assert_eq!(w.finish().unwrap().len(), 512 + 512 + 1024);
    }

    #[test]
    fn header_bytes_are_exact() {
        let mut w = TarWriter::new(Vec::new(), Normalize::default());
        w.file(b"etc/hello.txt", 0o600, Owner { uid: 1000, gid: 1001 }, 3, &mut &b"hi\n"[..]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len(), 512 * 4);
        let h = &out[..512];
        assert_eq!(&h[..14], b"etc/hello.txt\0");
        assert_eq!(&h[100..108], b"0000644\0");
        assert_eq!(&h[108..116], b"0001750\0");
        assert_eq!(&h[116..124], b"0001751\0");
        assert_eq!(&h[124..136], b"00000000003\0");
        assert_eq!(&h[136..148], format!("{:011o}\0", DEFAULT_EPOCH).as_bytes());
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert!(h[265..329].iter().all(|&b| b == 0), "uname/gname empty");
        assert_eq!(&h[329..345], b"0000000\x000000000\0");
        // Cross-check with the tar crate.
        let th = tar::Header::from_byte_slice(h);
        assert_eq!(th.cksum().unwrap(), {
            let mut c = h.to_vec();
            c[148..156].fill(b' ');
            c.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(th.mode().unwrap(), 0o644);
        assert_eq!(&out[512..515], b"hi\n");
        assert!(out[515..].iter().all(|&b| b == 0));
    }

    #[test]
    fn pax_header_is_deterministic_and_named() {
        let long: Vec<u8> = [&b"dir/"[..], &[b'n'; 120][..]].concat();
        let mut w = TarWriter::new(Vec::new(), Normalize::default());
        w.symlink(&long, &[b't'; 150], Owner { uid: 3_000_000, gid: 5 }).unwrap();
        let out = w.finish().unwrap();
        let h = &out[..512];
        assert_eq!(h[156], b'x');
        let name = &h[..100];
        let mut want = b"PaxHeaders/".to_vec();
        want.extend_from_slice(&[b'n'; 89]);
        assert_eq!(name, &want[..]);
        let size = usize::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap();
        let body = std::str::from_utf8(&out[512..512 + size]).unwrap();
        let keys: Vec<&str> = body.lines().map(|l| l.split_once(' ').unwrap().1.split_once('=').unwrap().0).collect();
        assert_eq!(keys, ["linkpath", "path", "uid"]);
        assert!(body.contains(" uid=3000000\n"));
        // The ustar uid is 0 when PAX carries it.
        let eh = &out[1024..1536];
        assert_eq!(&eh[108..116], b"0000000\0");
        assert_eq!(eh[156], b'2');
    }

    #[test]
    fn huge_sizes_and_mtimes_go_to_pax() {
        let rules = Normalize { mtime: 1 << 34, ..Normalize::default() };
        let mut w = TarWriter::new(Vec::new(), rules);
        w.header(b"big", Kind::File, 0o644, Owner::ROOT, 8 << 30, None, None).unwrap();
        let out = w.out;
        assert_eq!(out[156], b'x');
        let body = std::str::from_utf8(&out[512..512 + 40]).unwrap();
        assert!(body.starts_with("21 mtime=17179869184\n19 size=8589934592\n"), "{body:?}");
        let h = &out[1024..1536];
        assert_eq!(&h[124..136], b"00000000000\0");
        assert_eq!(&h[136..148], b"00000000000\0");
        // Our reader takes the PAX values.
        let mut r = crate::LayerReader::new(&out[..], crate::Limits::default());
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.size, e.mtime), (8 << 30, 1 << 34));
        // Just under the limit: plain ustar.
        let mut w = TarWriter::new(Vec::new(), Normalize::default());
        w.header(b"big", Kind::File, 0o644, Owner::ROOT, (8 << 30) - 1, None, None).unwrap();
        assert_eq!(&w.out[124..136], b"77777777777\0");
    }

    #[test]
    fn capability_only_when_kept() {
        for keep in [false, true] {
            let mut w = TarWriter::new(Vec::new(), Normalize { keep_capabilities: keep, ..Normalize::default() });
            w.set_capability(Some(vec![1, 0, 0, 2]));
            w.file(b"ping", 0o755, Owner::ROOT, 0, &mut io::empty()).unwrap();
            w.file(b"other", 0o755, Owner::ROOT, 0, &mut io::empty()).unwrap();
            let out = w.finish().unwrap();
            // file, file, end (+ pax header when kept)
            assert_eq!(out.len(), 512 * (4 + if keep { 2 } else { 0 }), "keep={keep}");
            assert_eq!(out[156] == b'x', keep);
        }
    }
}
