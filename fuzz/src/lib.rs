//! Fuzz checks shared by the cargo-fuzz targets and the seed-corpus tests.
//!
//! Every target is one `pub fn NAME(data: &[u8])` here: it takes the raw fuzz input and
//! panics when an invariant is broken (a panic is a bug; an `Err` from the code under test
//! is fine unless the function says otherwise). `fuzz_targets/NAME.rs` hands libFuzzer's
//! input to it, and `tests/corpus.rs` runs every file of `corpus/NAME/` through it on
//! stable, so the seeds and every regression found by fuzzing are checked in CI.

use std::io::{self, Read, Write};

use imgforge::image::manifest::{
    self, media, parse_config, parse_document, Descriptor, Document, Index, Platform, MAX_FANOUT,
};
use imgforge::image::reference::ImageRef;
use imgforge::pipeline::config::{compose_config, rfc3339, ConfigChanges, History};
use imgforge::transport::registry::auth::{parse_challenge, AuthState};
use imgforge::transport::registry::client::{origin_of, resolve_redirect, same_origin};
use imgforge_layers::{
    decompress, extract_compressed, extract_layer, CompressOptions, Compression, DiffId, Digest, Entry, EntryType,
    ExtractOptions, LayerReader, LayerWriter, Limits, Normalize, Owner, Resolve, TarWriter, DEFAULT_EPOCH,
};
use serde_json::Value;

/// A check function: panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` binary and `corpus/` directory.
pub const TARGETS: &[(&str, Check)] = &[
    ("tar_roundtrip", tar_roundtrip),
    ("tar_reader", tar_reader),
    ("manifest", manifest),
    ("config", config),
    ("index", index),
    ("reference", reference),
    ("extract", extract),
    ("auth_challenge", auth_challenge),
    ("redirect", redirect),
];

// ---------------------------------------------------------------------------------------
// Input decoding

/// Reads structured values off the fuzz input; past its end every read gives zeros, so
/// every input decodes to something.
struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
}

// ---------------------------------------------------------------------------------------
// tar_roundtrip

/// Most entries one input produces.
const MAX_ENTRIES: usize = 24;
/// Names and link targets are cut to this length: longer ones are legal for the writer but
/// over the reader's default `max_name_len` (4096), which is a limit, not a bug.
const MAX_GENERATED_NAME: usize = 3000;

/// Name components the fuzzer can pick by number: ordinary, UTF-8, non-UTF-8, the names
/// tar implementations use for their extension headers, and the ones the writer rejects.
const WORDS: &[&[u8]] = &[
    b"usr",
    b"bin",
    b"etc",
    b"a",
    "été".as_bytes(),
    b"\xff\xfe\x80",
    b"PaxHeaders",
    b"././@LongLink",
    b"..",
    b".",
    b"",
    b"with space",
    b"tab\tand\nnewline",
    b"back\\slash",
    b"colon:name",
    "\u{202e}rtl".as_bytes(),
    b"ustar\x0000",
    "日本語".as_bytes(),
    b"-",
    b"...",
];

/// A path (or link target) built from the input: 1–8 components, each raw bytes, a run of
/// one byte (up to 316 bytes: long components), a word from [`WORDS`] or `nN`; optionally
/// with a leading or trailing '/'. The result may well be invalid: that is the point.
fn gen_name(b: &mut Bytes) -> Vec<u8> {
    let spec = b.u8();
    let mut out = Vec::new();
    if spec & 0x40 != 0 {
        out.push(b'/');
    }
    for i in 0..1 + usize::from(spec & 7) {
        if i > 0 {
            out.push(b'/');
        }
        let c = b.u8();
        let arg = usize::from(c & 0x3f);
        match c >> 6 {
            0 => out.extend_from_slice(b.take(arg)),
            1 => {
                let fill = b.u8();
                out.extend(std::iter::repeat_n(fill, 1 + arg * 5));
            }
            2 => out.extend_from_slice(WORDS[arg % WORDS.len()]),
            _ => out.extend_from_slice(format!("n{arg}").as_bytes()),
        }
    }
    if spec & 0x80 != 0 {
        out.push(b'/');
    }
    out.truncate(MAX_GENERATED_NAME);
    out
}

/// The writer's path rule, restated independently: non-empty, no NUL, no empty, `.` or
/// `..` component (which also excludes a leading or trailing '/' and "//").
fn expect_valid_path(p: &[u8]) -> bool {
    !p.is_empty() && !p.contains(&0) && p.split(|&c| c == b'/').all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Link targets: anything but empty or containing NUL.
fn expect_valid_target(t: &[u8]) -> bool {
    !t.is_empty() && !t.contains(&0)
}

#[derive(Debug)]
struct Expected {
    path: Vec<u8>,
    kind: EntryType,
    mode: u32,
    owner: Owner,
    link: Option<Vec<u8>>,
    data: Vec<u8>,
    capability: Option<Vec<u8>>,
}

/// File contents: up to 127 bytes of the input, or (high bit set) up to ~12 KiB of a
/// repeated pattern, so that multi-block data and padding are covered cheaply.
fn gen_contents(b: &mut Bytes) -> Vec<u8> {
    let l = b.u8();
    if l & 0x80 == 0 {
        b.take(usize::from(l)).to_vec()
    } else {
        let pat = b.take(4).to_vec();
        let len = usize::from(l & 0x7f) * 97 + usize::from(b.u8());
        if pat.is_empty() {
            vec![0; len]
        } else {
            pat.iter().copied().cycle().take(len).collect()
        }
    }
}

/// Asserts how the writer answered one entry: `Ok` for a valid one, `InvalidInput` and
/// nothing written for an invalid one. Returns whether it was written.
fn check_written(res: io::Result<()>, valid: bool, before: usize, after: usize, what: &str) -> bool {
    match res {
        Ok(()) => {
            assert!(valid, "writer accepted an invalid {what}");
            true
        }
        Err(e) => {
            assert!(!valid, "writer rejected a valid {what}: {e}");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "rejected {what}: {e}");
            assert_eq!(before, after, "bytes were written for a rejected {what}");
            false
        }
    }
}

/// Writes a list of entries derived from `data` with [`TarWriter`], reads the tar back
/// with [`LayerReader`] and checks every field; then takes the tar through
/// [`LayerWriter`] with each compression and checks the digests and the decompressed
/// bytes.
///
/// Input layout: a flags byte (bit 0 `keep_special_bits`, bit 1 `keep_capabilities`, bit 2
/// an mtime from the next 8 bytes; all clear = `Normalize::default()`), a write-size byte
/// for the chunked compression check, the first owner (uid, gid as u32 LE), then entries,
/// each an op byte (bits 0–1 kind: dir, file, symlink, hard link; bit 2: new owner
/// follows; bit 4: a capability (file) or an explicit mode (hard link); bit 5: a hard
/// link target from the name generator instead of an earlier file) and its fields.
pub fn tar_roundtrip(data: &[u8]) {
    let mut b = Bytes { data };
    let flags = b.u8();
    let rules = Normalize {
        keep_special_bits: flags & 1 != 0,
        keep_capabilities: flags & 2 != 0,
        mtime: if flags & 4 != 0 { b.u64() } else { DEFAULT_EPOCH },
    };
    let write_size = 1 + usize::from(b.u8()) * 61;
    let mut owner = Owner { uid: b.u32(), gid: b.u32() };

    let mut w = TarWriter::new(Vec::new(), rules);
    let mut expected: Vec<Expected> = Vec::new();
    let mut files: Vec<Vec<u8>> = Vec::new();
    while !b.is_empty() && expected.len() < MAX_ENTRIES {
        let op = b.u8();
        if op & 4 != 0 {
            owner = Owner { uid: b.u32(), gid: b.u32() };
        }
        let path = gen_name(&mut b);
        let before = w.get_ref().len();
        match op & 3 {
            0 => {
                let host_mode = u32::from(b.u16());
                let res = w.dir(&path, host_mode, owner);
                if check_written(res, expect_valid_path(&path), before, w.get_ref().len(), "directory path") {
                    let mode = rules.dir_mode(host_mode);
                    expected.push(Expected {
                        path,
                        kind: EntryType::Dir,
                        mode,
                        owner,
                        link: None,
                        data: vec![],
                        capability: None,
                    });
                }
            }
            1 => {
                let host_mode = u32::from(b.u16());
                let contents = gen_contents(&mut b);
                let cap = if op & 0x10 != 0 {
                    let n = usize::from(b.u8() % 40);
                    Some(b.take(n).to_vec())
                } else {
                    None
                };
                w.set_capability(cap.clone());
                let res = w.file(&path, host_mode, owner, contents.len() as u64, &mut &contents[..]);
                // A rejected file leaves the capability pending: clear it either way.
                w.set_capability(None);
                if check_written(res, expect_valid_path(&path), before, w.get_ref().len(), "file path") {
                    let mode = rules.file_mode(host_mode);
                    files.push(path.clone());
                    expected.push(Expected {
                        path,
                        kind: EntryType::File,
                        mode,
                        owner,
                        link: None,
                        data: contents,
                        capability: cap.filter(|_| rules.keep_capabilities),
                    });
                }
            }
            2 => {
                let target = gen_name(&mut b);
                let res = w.symlink(&path, &target, owner);
                let valid = expect_valid_path(&path) && expect_valid_target(&target);
                if check_written(res, valid, before, w.get_ref().len(), "symlink") {
                    expected.push(Expected {
                        path,
                        kind: EntryType::Symlink,
                        mode: 0o777,
                        owner,
                        link: Some(target),
                        data: vec![],
                        capability: None,
                    });
                }
            }
            _ => {
                let pick = b.u8();
                let target = if op & 0x20 == 0 && !files.is_empty() {
                    files[usize::from(pick) % files.len()].clone()
                } else {
                    gen_name(&mut b)
                };
                let (res, mode) = if op & 0x10 != 0 {
                    let host_mode = u32::from(b.u16());
                    (w.hardlink_with_mode(&path, &target, host_mode, owner), rules.file_mode(host_mode))
                } else {
                    (w.hardlink(&path, &target, owner), rules.file_mode(0o644))
                };
                let valid = expect_valid_path(&path) && expect_valid_path(&target);
                if check_written(res, valid, before, w.get_ref().len(), "hard link") {
                    expected.push(Expected {
                        path,
                        kind: EntryType::HardLink,
                        mode,
                        owner,
                        link: Some(target),
                        data: vec![],
                        capability: None,
                    });
                }
            }
        }
    }
    let tar = w.finish().expect("finishing a tar in memory");
    assert_eq!(tar.len() % 512, 0, "tar length is not a multiple of 512");

    check_read_back(&tar, &expected, &rules);
    check_tar_crate_agrees(&tar, &expected);
    check_compression(&tar, write_size, flags);
}

fn check_read_back(tar: &[u8], expected: &[Expected], rules: &Normalize) {
    let mut r = LayerReader::new(tar, Limits::default());
    for (i, want) in expected.iter().enumerate() {
        let got = match r.next_entry() {
            Ok(Some(e)) => e,
            other => panic!("entry #{i} ({:?}): expected an entry, got {other:?}", lossy(&want.path)),
        };
        let ctx = format!("entry #{i} ({:?})", lossy(&want.path));
        assert_eq!(got.path, want.path, "{ctx}: path");
        assert_eq!(got.kind, want.kind, "{ctx}: kind");
        assert_eq!(got.mode, want.mode, "{ctx}: mode");
        assert_eq!(got.uid, u64::from(want.owner.uid), "{ctx}: uid");
        assert_eq!(got.gid, u64::from(want.owner.gid), "{ctx}: gid");
        assert_eq!(got.size, want.data.len() as u64, "{ctx}: size");
        // Over 11 octal digits the writer puts the mtime in a PAX record: exact either way.
        assert_eq!(got.mtime, rules.mtime, "{ctx}: mtime");
        assert_eq!(got.link, want.link, "{ctx}: link target");
        let want_xattrs: Vec<(String, Vec<u8>)> =
            want.capability.iter().map(|c| ("security.capability".to_string(), c.clone())).collect();
        assert_eq!(got.xattrs, want_xattrs, "{ctx}: xattrs");
        let mut body = Vec::new();
        r.data().read_to_end(&mut body).unwrap_or_else(|e| panic!("{ctx}: reading data: {e}"));
        assert!(body == want.data, "{ctx}: data differs");
    }
    match r.next_entry() {
        Ok(None) => {}
        other => panic!("expected the end of the archive after {} entries, got {other:?}", expected.len()),
    }
    assert_eq!(r.position(), tar.len() as u64, "reader did not consume the whole tar");
}

/// The `tar` crate, an independent reader, must see the same names, kinds, link targets,
/// sizes and data.
///
/// Not when a name, link target or capability holds a '\n': tar-rs (0.4.46,
/// `src/pax.rs`) splits PAX data at newlines instead of using the record lengths, so it
/// drops such a record and falls back to the truncated ustar name, and could take the text
/// after the newline for a record of its own (`size`, `path`). Our reader is right there;
/// GNU tar and Go agree with it. Regression seed: `regression-tar-crate-pax-newline`.
fn check_tar_crate_agrees(tar: &[u8], expected: &[Expected]) {
    let newline = |b: &[u8]| b.contains(&b'\n');
    if expected.iter().any(|e| {
        newline(&e.path) || e.link.as_deref().is_some_and(newline) || e.capability.as_deref().is_some_and(newline)
    }) {
        return;
    }
    let mut a = tar::Archive::new(tar);
    let entries = a.entries().expect("tar crate: entries");
    let mut n = 0;
    for (i, e) in entries.enumerate() {
        let mut e = e.unwrap_or_else(|err| panic!("tar crate: entry #{i}: {err}"));
        let want = expected.get(i).unwrap_or_else(|| panic!("tar crate sees an extra entry #{i}"));
        let ctx = format!("tar crate, entry #{i} ({:?})", lossy(&want.path));
        let mut path = e.path_bytes().into_owned();
        if want.kind == EntryType::Dir {
            assert_eq!(path.pop(), Some(b'/'), "{ctx}: directory name without '/'");
        }
        assert_eq!(path, want.path, "{ctx}: path");
        let kind = match e.header().entry_type() {
            tar::EntryType::Regular => EntryType::File,
            tar::EntryType::Directory => EntryType::Dir,
            tar::EntryType::Symlink => EntryType::Symlink,
            tar::EntryType::Link => EntryType::HardLink,
            other => panic!("{ctx}: unexpected type {other:?}"),
        };
        assert_eq!(kind, want.kind, "{ctx}: kind");
        assert_eq!(e.link_name_bytes().map(|l| l.into_owned()), want.link, "{ctx}: link target");
        assert_eq!(e.size(), want.data.len() as u64, "{ctx}: size");
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap_or_else(|err| panic!("{ctx}: reading data: {err}"));
        assert!(body == want.data, "{ctx}: data differs");
        n += 1;
    }
    assert_eq!(n, expected.len(), "tar crate saw fewer entries");
}

/// Compressed with each [`Compression`] through [`LayerWriter`]: `decompress` gives the
/// tar back, diff_id is sha256(tar), digest and size describe the blob. The same stream
/// written in other write sizes and with two threads must give the same blob
/// (the compressor's determinism contract).
fn check_compression(tar: &[u8], write_size: usize, flags: u8) {
    let diff_id = DiffId::of(tar);
    let rechecked = [Compression::None, Compression::Gzip, Compression::Zstd][usize::from(flags >> 6) % 3];
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let blob = compress(tar, c, 1, tar.len().max(1));
        let (d, blob) = blob;
        assert_eq!(d.diff_id, diff_id, "{c}: diff_id");
        assert_eq!(d.tar_size, tar.len() as u64, "{c}: tar_size");
        assert_eq!(d.digest, Digest::of(&blob), "{c}: digest");
        assert_eq!(d.size, blob.len() as u64, "{c}: size");
        assert_eq!(d.compression, c, "{c}: compression");
        if c == Compression::None {
            assert!(blob == tar, "uncompressed blob differs from the tar");
        } else {
            assert_eq!(Compression::detect(&blob), c, "{c}: detect");
        }
        let mut back = Vec::new();
        decompress(&blob[..], c)
            .and_then(|mut r| r.read_to_end(&mut back))
            .unwrap_or_else(|e| panic!("{c}: decompressing: {e}"));
        assert!(back == tar, "{c}: decompressed bytes differ from the tar");
        if c == rechecked {
            let (d2, blob2) = compress(tar, c, 2, write_size);
            assert!(blob2 == blob, "{c}: output depends on write sizes ({write_size}) or threads");
            assert_eq!(d2, d, "{c}: digests depend on write sizes or threads");
        }
    }
}

fn compress(tar: &[u8], c: Compression, threads: usize, write_size: usize) -> (imgforge_layers::LayerDigests, Vec<u8>) {
    let mut w = LayerWriter::new(Vec::new(), CompressOptions { compression: c, level: None, threads })
        .unwrap_or_else(|e| panic!("{c}: LayerWriter::new: {e}"));
    for chunk in tar.chunks(write_size) {
        w.write_all(chunk).unwrap_or_else(|e| panic!("{c}: write: {e}"));
    }
    assert_eq!(w.tar_size(), tar.len() as u64, "{c}: tar_size before finish");
    w.finish().unwrap_or_else(|e| panic!("{c}: finish: {e}"))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------
// tar_reader

/// Tight limits, so that every limit is reachable with small inputs.
const TIGHT: Limits =
    Limits { max_entries: 4, max_pax_bytes: 700, max_name_len: 200, max_entry_size: 3000, max_total_bytes: 16 * 1024 };

/// Decompressed input read at most (a small zstd frame can expand a lot).
const MAX_DECOMPRESSED: u64 = 8 << 20;

/// Arbitrary bytes through [`LayerReader`] (default and tight limits), and through
/// [`decompress`] when [`Compression::detect`] says so: every entry and all data read;
/// errors are fine, panics and endless loops are not. Also checks what the reader
/// promises about what it returns (see [`read_all`]).
pub fn tar_reader(data: &[u8]) {
    read_all(data, Limits::default(), Some(data.len() as u64));
    read_all(data, TIGHT, Some(data.len() as u64));
    let c = Compression::detect(data);
    if c != Compression::None {
        if let Ok(r) = decompress(data, c) {
            read_all(r.take(MAX_DECOMPRESSED), Limits::default(), None);
        }
    }
}

/// Reads everything. Checks: each returned entry obeys `limits` and the documented shape
/// (normalized path, link target exactly on links, no data on header-only entries, mode
/// within 0o7777); each entry takes at least one 512-byte block; the data read has the
/// entry's size; `Ok(None)` is sticky; after `Ok(None)` the whole input was consumed.
fn read_all<R: Read>(r: R, limits: Limits, input_len: Option<u64>) -> Option<Vec<Entry>> {
    let mut rd = LayerReader::new(r, limits);
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let e = match rd.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => {
                assert!(matches!(rd.next_entry(), Ok(None)), "end of archive is not sticky");
                if let Some(len) = input_len {
                    assert_eq!(rd.position(), len, "archive ended before the end of the input");
                }
                return Some(entries);
            }
            Err(_) => {
                // Must not panic when called again after an error.
                let _ = rd.next_entry();
                return None;
            }
        };
        let n = entries.len() as u64 + 1;
        assert!(n <= limits.max_entries, "more entries than max_entries");
        if let Some(len) = input_len {
            assert!(n * 512 <= rd.position() && rd.position() <= len, "entry #{n} took less than one block");
        }
        assert!(rd.position() <= limits.max_total_bytes, "read past max_total_bytes");
        let p = &e.path;
        assert!(!p.starts_with(b"/") && !p.starts_with(b"./") && !p.ends_with(b"/") && p != b".", "path {p:?}");
        assert!(p.len() <= limits.max_name_len, "path over max_name_len");
        assert!(!p.contains(&0), "NUL in path");
        match e.kind {
            EntryType::Symlink | EntryType::HardLink => {
                let l = e.link.as_ref().expect("link without target");
                assert!(!l.is_empty() && l.len() <= limits.max_name_len && !l.contains(&0), "link target {l:?}");
            }
            _ => assert!(e.link.is_none(), "link target on a {:?}", e.kind),
        }
        if !matches!(e.kind, EntryType::File | EntryType::Other(_)) {
            assert_eq!(e.size, 0, "data on a header-only {:?}", e.kind);
        }
        assert!(e.size <= limits.max_entry_size, "entry over max_entry_size");
        assert!(e.mode <= 0o7777, "mode {:o}", e.mode);
        // Read the data in uneven pieces.
        let mut got = 0u64;
        let mut step = 1 + (e.size as usize % 7);
        loop {
            match rd.read_data(&mut buf[..step.min(4096)]) {
                Ok(0) => break,
                Ok(k) => {
                    got += k as u64;
                    assert!(got <= e.size, "read more data than the entry's size");
                    step = step * 3 + 1;
                }
                Err(_) => {
                    let _ = rd.next_entry();
                    return None;
                }
            }
        }
        assert_eq!(got, e.size, "data shorter than the entry's size without an error");
        entries.push(e);
    }
}

// ---------------------------------------------------------------------------------------
// manifest, index

const DECLARED: &[&str] = &[
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_LIST,
    media::DOCKER_SCHEMA1,
    media::DOCKER_SCHEMA1_SIGNED,
    media::OCI_CONFIG,
];

/// [`parse_document`] with no declared media type and with each one. See
/// [`check_document`] for what a successful parse must satisfy.
pub fn manifest(data: &[u8]) {
    let undeclared = parse_document(data, None, "fuzz");
    if let Ok(doc) = &undeclared {
        check_document(data, doc, None);
    }
    for &d in DECLARED {
        if let Ok(doc) = parse_document(data, Some(d), "fuzz") {
            check_document(data, &doc, Some(d));
        }
    }
    // A document that names its own media type parses the same when the descriptor
    // declares that type.
    if let Ok(doc) = &undeclared {
        if let Some(inner) =
            json_object(data).and_then(|o| o.get("mediaType").and_then(Value::as_str).map(String::from))
        {
            let again = parse_document(data, Some(&inner), "fuzz")
                .unwrap_or_else(|e| panic!("accepted undeclared, rejected when declared as {inner:?}: {e}"));
            assert_eq!(is_index(&again), is_index(doc), "kind changes with the declared media type");
        }
    }
}

/// [`parse_document`] with the OCI and Docker index media types declared, then
/// [`Index::select`] (see [`check_index`]).
pub fn index(data: &[u8]) {
    for d in [media::OCI_INDEX, media::DOCKER_LIST] {
        if let Ok(doc) = parse_document(data, Some(d), "fuzz") {
            assert!(is_index(&doc), "declared {d} but parsed as a manifest");
            check_document(data, &doc, Some(d));
        }
    }
}

fn is_index(d: &Document) -> bool {
    matches!(d, Document::Index(_))
}

fn json_object(data: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

/// What an accepted manifest or index must satisfy: within the size and fan-out limits; a
/// media type that fits its kind and the declared one; never readable as the other kind
/// (CVE-2021-41190); every digest exactly as written in the JSON (canonical `sha256:` +
/// 64 lowercase hex, so strict parsing really happened); a manifest's config is an image
/// config and every layer has a supported media type; an index's `select` does not
/// panic, returns one of its descriptors, and finds each image it lists for that image's
/// own platform.
fn check_document(data: &[u8], doc: &Document, declared: Option<&str>) {
    assert!(data.len() as u64 <= manifest::MAX_MANIFEST_BYTES);
    let obj = json_object(data).expect("accepted document is not a JSON object");
    assert_eq!(obj.get("schemaVersion").and_then(Value::as_u64), Some(2), "schemaVersion");
    let media_type = match doc {
        Document::Manifest(m) => &m.media_type,
        Document::Index(i) => &i.media_type,
    };
    if let Some(d) = declared {
        assert_eq!(media_type, d, "media type differs from the declared one");
    }
    if let Some(inner) = obj.get("mediaType") {
        assert_eq!(inner.as_str(), Some(media_type.as_str()), "media type differs from the document's");
    }
    match doc {
        Document::Manifest(m) => {
            assert!(
                matches!(m.media_type.as_str(), media::OCI_MANIFEST | media::DOCKER_MANIFEST),
                "manifest media type {:?}",
                m.media_type
            );
            assert!(!obj.contains_key("manifests"), "manifest with manifests (CVE-2021-41190)");
            assert!(m.layers.len() <= MAX_FANOUT, "over MAX_FANOUT layers");
            assert!(
                matches!(m.config.media_type.as_str(), media::OCI_CONFIG | media::DOCKER_CONFIG),
                "config media type {:?}",
                m.config.media_type
            );
            check_descriptor(&m.config, obj.get("config"), "config");
            let raw_layers = obj.get("layers").and_then(Value::as_array);
            assert_eq!(raw_layers.map_or(0, Vec::len), m.layers.len(), "layer count");
            for (i, l) in m.layers.iter().enumerate() {
                assert!(
                    Compression::from_media_type(&l.media_type).is_some(),
                    "layers[{i}]: unsupported media type {:?}",
                    l.media_type
                );
                check_descriptor(l, raw_layers.and_then(|a| a.get(i)), &format!("layers[{i}]"));
            }
        }
        Document::Index(idx) => {
            assert!(
                matches!(idx.media_type.as_str(), media::OCI_INDEX | media::DOCKER_LIST),
                "index media type {:?}",
                idx.media_type
            );
            assert!(!obj.contains_key("config") && !obj.contains_key("layers"), "index with config/layers");
            let raw = obj.get("manifests").and_then(Value::as_array);
            assert_eq!(raw.map_or(0, Vec::len), idx.manifests.len(), "manifest count");
            for (i, d) in idx.manifests.iter().enumerate() {
                check_descriptor(d, raw.and_then(|a| a.get(i)), &format!("manifests[{i}]"));
            }
            check_index(idx);
        }
    }
}

fn check_descriptor(d: &Descriptor, raw: Option<&Value>, what: &str) {
    let s = d.digest.to_string();
    assert_eq!(s.parse::<Digest>().as_ref(), Ok(&d.digest), "{what}: digest does not round-trip");
    let raw_digest = raw.and_then(|v| v.get("digest")).and_then(Value::as_str);
    assert_eq!(raw_digest, Some(s.as_str()), "{what}: digest accepted in a non-canonical spelling");
    assert_eq!(raw.and_then(|v| v.get("size")).and_then(Value::as_u64), Some(d.size), "{what}: size");
    // Serialising the parsed descriptor must not panic and must keep the digest.
    let j = d.to_json();
    assert_eq!(j["digest"].as_str(), Some(s.as_str()), "{what}: to_json digest");
}

fn check_index(idx: &Index) {
    let mut platforms = vec![
        Platform::host(),
        Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) },
        Platform { os: "windows".into(), architecture: "amd64".into(), variant: None },
    ];
    for d in &idx.manifests {
        if let Some(p) = &d.platform {
            platforms.push(p.clone());
            // Display must not panic. A platform whose fields `--platform` can spell prints
            // as that spelling. (Fields from an index may hold anything, e.g. a '/': then the
            // printed form in `select`'s error message is ambiguous, as the regression seed
            // `regression-platform-os-with-slash.json` shows; that is not asserted.)
            let shown = p.to_string();
            let spellable =
                |f: &str| !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
            if spellable(&p.os) && spellable(&p.architecture) && p.variant.as_deref().is_none_or(spellable) {
                assert_eq!(Platform::parse(&shown).as_ref(), Ok(p), "platform {shown:?} does not round-trip");
            }
        }
    }
    platforms.truncate(64);
    for p in &platforms {
        if let Ok(d) = idx.select(p, "fuzz") {
            assert!(idx.manifests.iter().any(|m| std::ptr::eq(m, d)), "select returned a foreign descriptor");
            if let Some(dp) = &d.platform {
                assert!(p.accepts(dp), "select({p}) returned an image for {dp}");
            } else {
                assert_eq!(idx.manifests.len(), 1, "select({p}) returned a platform-less image of several");
            }
        }
    }
    // Every image the index offers for a platform is found for that platform.
    for d in &idx.manifests {
        let image = matches!(
            d.media_type.as_str(),
            media::OCI_MANIFEST | media::DOCKER_MANIFEST | media::OCI_INDEX | media::DOCKER_LIST
        );
        if let (true, Some(p)) = (image, &d.platform) {
            assert!(idx.select(p, "fuzz").is_ok(), "index offers an image for {p} but select({p}) fails");
        }
    }
}

// ---------------------------------------------------------------------------------------
// config

/// [`parse_config`]; when it accepts, [`compose_config`] on top of it gives JSON that
/// parses again, keeps the base's diff_ids followed by the new one, keeps os and
/// architecture, applies the Env changes, adds one history entry, and is deterministic.
pub fn config(data: &[u8]) {
    let Ok(base) = parse_config(data, "fuzz") else { return };
    assert!(data.len() as u64 <= manifest::MAX_CONFIG_BYTES);
    let new_layer = DiffId::of(b"fuzz layer");
    let ch = ConfigChanges {
        env: vec![("FUZZ_NEW".into(), "1".into()), ("PATH".into(), "/fuzz/bin:/usr/bin".into())],
        cmd: Some(vec!["/fuzz/run".into()]),
        working_dir: Some("/workspace".into()),
        labels: [("org.opencontainers.image.source".to_string(), "fuzz".to_string())].into_iter().collect(),
        ..Default::default()
    };
    let history = History { created: rfc3339(DEFAULT_EPOCH), new_layers: vec![(new_layer, "fuzz layer".into())] };
    let out = compose_config(Some(&base), &Platform::host(), &ch, &history);
    assert!(
        out == compose_config(Some(&base), &Platform::host(), &ch, &history),
        "compose_config is not deterministic"
    );
    let again = parse_config(&out, "composed")
        .unwrap_or_else(|e| panic!("composed config does not parse: {e}\n{}", String::from_utf8_lossy(&out)));
    let mut want = base.diff_ids.clone();
    want.push(new_layer);
    assert_eq!(again.diff_ids, want, "diff_ids not kept");
    assert_eq!(again.platform(), base.platform(), "platform not kept");
    let env = again.list("Env");
    assert!(env.iter().any(|e| e == "FUZZ_NEW=1"), "Env lacks FUZZ_NEW: {env:?}");
    assert!(env.iter().any(|e| e == "PATH=/fuzz/bin:/usr/bin"), "Env lacks PATH: {env:?}");
    // Every base variable is still there (replaced in place if it was changed).
    let key = |e: &str| e.split_once('=').map_or(e, |p| p.0).to_string();
    for e in base.list("Env") {
        assert!(env.iter().any(|n| key(n) == key(&e)), "base Env entry {e:?} lost");
    }
    assert_eq!(again.list("Cmd"), vec!["/fuzz/run".to_string()], "Cmd");
    assert_eq!(again.string("WorkingDir").as_deref(), Some("/workspace"), "WorkingDir");
    let base_history = match base.raw.get("history") {
        Some(Value::Array(h)) => h.len(),
        _ => 0,
    };
    let history = again.raw.get("history").and_then(Value::as_array).map_or(0, Vec::len);
    assert_eq!(history, base_history + 1, "history entries");
}

// ---------------------------------------------------------------------------------------
// reference

/// Parsing a reference must not panic; an accepted one prints as a string that parses
/// back to an equal value, and printing that gives the same string again (except for the
/// known `docker-archive:` issue, see [`expected_round_trip`]); the tag used for writing
/// never changes.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(r) = s.parse::<ImageRef>() else { return };
    let _ = r.tag_or_default();
    let shown = r.to_string();
    let back = shown
        .parse::<ImageRef>()
        .unwrap_or_else(|e| panic!("{s:?} parsed as {r:?}, printed as {shown:?}, which does not parse: {e}"));
    assert_eq!(back, r, "{s:?} printed as {shown:?}, which parses differently");
    assert_eq!(back.to_string(), shown, "printing is not stable for {s:?}");
    assert_eq!(back.tag_or_default(), r.tag_or_default(), "tag changes in the round trip of {s:?}");
}

// ---------------------------------------------------------------------------------------
// extract

/// Arbitrary bytes applied with [`extract_layer`] to an empty root `T/root`, beside
/// sentinels (`T/outside/secret`, `T/outside/dir/`, `T/sentinel`) that symlinks such as
/// `../outside` reach if anything follows them unscoped. The input is applied as a tar,
/// twice onto the same root (what the first application planted is then a lower layer
/// for the second), with both resolvers; and decompressed when it is gzip or zstd.
/// Errors are fine. Checks: nothing outside the root changed (type, mode, owner, size,
/// mtime, inode, content or link target of every path in `T` but the root's subtree, and
/// the root's own mode and owner), and the root is still a directory.
pub fn extract(data: &[u8]) {
    let limits =
        Limits { max_entries: 4096, max_entry_size: 1 << 20, max_total_bytes: MAX_DECOMPRESSED, ..Limits::default() };
    for resolve in [Resolve::Auto, Resolve::Walk] {
        let opts = ExtractOptions { limits, resolve, ..ExtractOptions::default() };
        extract_checked(|root| {
            let _ = extract_layer(root, data, &opts);
            let _ = extract_layer(root, data, &opts);
        });
    }
    let c = Compression::detect(data);
    if c != Compression::None {
        let opts = ExtractOptions { limits, ..ExtractOptions::default() };
        extract_checked(|root| {
            let _ = extract_compressed(root, data, c, &opts);
        });
    }
}

fn extract_checked(apply: impl FnOnce(&std::path::Path)) {
    let t = tempfile::tempdir().expect("temp dir");
    let base = t.path();
    let root = base.join("root");
    std::fs::create_dir(&root).expect("root");
    std::fs::create_dir_all(base.join("outside/dir")).expect("outside");
    std::fs::write(base.join("outside/secret"), "secret").expect("secret");
    std::fs::write(base.join("sentinel"), "sentinel").expect("sentinel");
    let before = snapshot_outside(base, &root);
    apply(&root);
    let after = snapshot_outside(base, &root);
    assert_eq!(before, after, "something outside the root changed");
    assert!(std::fs::symlink_metadata(&root).expect("root").is_dir(), "the root is no longer a directory");
}

/// Every path under `dir` but the subtree `skip`, described without following symlinks.
fn snapshot_outside(dir: &std::path::Path, skip: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).expect("snapshot");
        let ft = m.file_type();
        if p == skip {
            out.push((p, format!("root {:o} {}:{}", m.mode(), m.uid(), m.gid())));
            continue;
        }
        let what = if ft.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link {:?}", std::fs::read_link(&p).expect("readlink"))
        } else {
            format!("file {:?}", std::fs::read(&p).expect("read"))
        };
        out.push((p, format!("{what} {:o} {}:{} {} {}", m.mode(), m.uid(), m.gid(), m.mtime(), m.ino())));
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// auth_challenge

/// A `WWW-Authenticate` header value, as a registry (any registry) may send it. Checks: no
/// panic; a parsed challenge has a non-empty lowercase scheme without whitespace and
/// lowercase, non-empty parameter names; printed back with every value quoted and escaped
/// it parses to the same challenge (when scheme and names are tokens); turning it into what
/// the client will send never panics.
pub fn auth_challenge(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Some(c) = parse_challenge(s) else { return };
    assert!(!c.scheme.is_empty() && !c.scheme.contains(char::is_whitespace), "{s:?} gave scheme {:?}", c.scheme);
    assert_eq!(c.scheme, c.scheme.to_ascii_lowercase(), "{s:?}");
    for k in c.params.keys() {
        assert!(!k.is_empty() && *k == k.to_ascii_lowercase(), "{s:?} gave parameter {k:?}");
    }
    let token = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && !b"\",=\\".contains(&b));
    if token(&c.scheme) && c.params.keys().all(|k| token(k)) {
        let params: Vec<String> =
            c.params.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
        let again = format!("{} {}", c.scheme, params.join(", "));
        assert_eq!(parse_challenge(&again).as_ref(), Some(&c), "{s:?} printed as {again:?} parses differently");
    }
    let _ = AuthState::from_challenge(&c);
}

// ---------------------------------------------------------------------------------------
// redirect

/// `CURRENT\nLOCATION` (or just a location, from `https://registry.example:5000/v2/x`): a
/// redirect the registry's client may follow. Checks: no panic; where it leads has an
/// origin; an absolute-path location stays on the current origin; the registry's
/// credentials go to the result (same origin) only if its authority, as any naive reader of
/// the URL text would see it (what follows `scheme://` up to `/`, `?`, `#` or `\`), is the
/// registry's own host and port; `same_origin` is reflexive and symmetric.
pub fn redirect(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (current, location) = s.split_once('\n').unwrap_or(("https://registry.example:5000/v2/x", s));
    if let Some(o) = origin_of(current) {
        assert!(same_origin(current, current), "{current:?} ({o}) is not its own origin");
    }
    let Some(next) = resolve_redirect(current, location) else { return };
    let next_origin = origin_of(&next).unwrap_or_else(|| panic!("{s:?} led to {next:?}, which has no origin"));
    assert_eq!(same_origin(&next, current), same_origin(current, &next), "{s:?}");
    if location.starts_with('/') && !location.starts_with("//") {
        assert!(same_origin(&next, current), "{s:?}: an absolute path left the origin: {next:?}");
    }
    if same_origin(&next, current) {
        let naive = |u: &str| -> String {
            let after = &u[u.find("://").map_or(0, |i| i + 3)..];
            let end = after.find(['/', '?', '#', '\\']).unwrap_or(after.len());
            let auth = after[..end].to_ascii_lowercase();
            let scheme = u.split("://").next().unwrap_or("").to_ascii_lowercase();
            let split = if auth.starts_with('[') { auth.find(']').map(|i| i + 1) } else { auth.rfind(':') };
            let (host, rest) = auth.split_at(split.unwrap_or(auth.len()));
            let port = match rest {
                "" if scheme == "https" => "443".to_string(),
                "" => "80".to_string(),
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .map_or(format!("bad port {p}"), |p| p.to_string()),
            };
            format!("{scheme}://{host}:{port}")
        };
        assert!(!naive(&next).contains('@'), "{s:?}: credentials would go to {next:?}, which has user info");
        assert_eq!(naive(&next), next_origin, "{s:?}: {next:?} reads as another host than its origin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_reads_zeros_past_the_end() {
        let mut b = Bytes { data: &[1, 2, 3] };
        assert_eq!(b.u16(), 0x0201);
        assert_eq!(b.u32(), 3);
        assert!(b.is_empty());
        assert_eq!(b.take(5), b"");
    }

    #[test]
    fn path_rule_matches_examples() {
        for ok in [&b"a"[..], b"a/b", b"...", b".a", b"a\xff"] {
            assert!(expect_valid_path(ok), "{ok:?}");
        }
        for bad in [&b""[..], b"/a", b"a/", b"a//b", b"./a", b"a/..", b"nul\0"] {
            assert!(!expect_valid_path(bad), "{bad:?}");
        }
    }
}
