//! Cross-module tests: scan → normalize → compress → read back, determinism across hosts
//! (paths, mtimes, umask, creation order, thread counts) and digest correctness.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::*;

const OWNER: Owner = Owner { uid: 1000, gid: 1000 };

/// Builds the test tree. `private` creates files as a umask of 077 would (0600/0700),
/// `reverse` creates entries in the opposite order, `mtime` is set on everything.
fn build(root: &Path, private: bool, reverse: bool, mtime: SystemTime) {
    let (fmode, xmode, dmode) = if private { (0o600, 0o700, 0o700) } else { (0o644, 0o755, 0o755) };
    let long_component = "c".repeat(120);
    let deep = format!("{}/{}/{}", "d".repeat(90), "e".repeat(90), "f".repeat(90)); // > 255 bytes total
    let non_utf8 = OsStr::from_bytes(b"caf\xe9-latin1");
    let mut steps: Vec<Box<dyn Fn()>> = vec![
        Box::new(move || fs::create_dir_all(root.join("empty-dir")).unwrap()),
        Box::new(move || fs::write(root.join("empty-file"), b"").unwrap()),
        Box::new(move || fs::write(root.join("hello.txt"), b"hello\n").unwrap()),
        Box::new(move || fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap()),
        Box::new(move || fs::write(root.join("suid"), b"x").unwrap()),
        Box::new(move || fs::write(root.join(non_utf8), b"bytes").unwrap()),
        Box::new(move || fs::create_dir_all(root.join(&deep)).unwrap()),
        Box::new({
            let deep = format!("{}/{}/{}", "d".repeat(90), "e".repeat(90), "f".repeat(90));
            move || {
                fs::create_dir_all(root.join(&deep)).unwrap();
                fs::write(root.join(&deep).join("deep-file"), vec![7u8; 70_000]).unwrap()
            }
        }),
        Box::new(move || fs::write(root.join(&long_component), b"long").unwrap()),
        Box::new(move || symlink("t".repeat(150), root.join("long-link")).unwrap()),
        Box::new(move || symlink("hello.txt", root.join("short-link")).unwrap()),
        Box::new(move || fs::create_dir_all(root.join("sub")).unwrap()),
    ];
    if reverse {
        steps.reverse();
        // dirs first where needed
        fs::create_dir_all(root.join("sub")).unwrap();
    }
    for s in &steps {
        s();
    }
    fs::hard_link(root.join("hello.txt"), root.join("sub/hello-link")).unwrap();
    // Modes after creation (as a umask would have left them).
    for (p, m) in [
        ("hello.txt", fmode),
        ("empty-file", fmode),
        ("run.sh", xmode),
        ("suid", 0o4000 | xmode),
        ("empty-dir", dmode),
        ("sub", dmode),
    ] {
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
    }
    // Set mtimes on every regular file and dir (not symlinks).
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        if e.file_type().is_symlink() {
            continue;
        }
        let f = fs::File::open(e.path()).unwrap();
        f.set_modified(mtime).unwrap();
    }
}

fn layer(root: &Path, compression: Compression, threads: usize, rules: Normalize) -> (LayerDigests, Vec<u8>) {
    let tree = scan_tree(root, &|_, _| true).unwrap();
    let opts = CompressOptions { compression, level: None, threads };
    write_tree_layer(Vec::new(), opts, rules, &tree, b"workspace", OWNER).unwrap()
}

fn read_entries(tar: &[u8]) -> Vec<(Entry, Vec<u8>)> {
    let mut r = LayerReader::new(tar, Limits::default());
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        let mut d = Vec::new();
        r.data().read_to_end(&mut d).unwrap();
        out.push((e, d));
    }
    out
}

#[test]
fn round_trip_through_reader_gnu_tar_and_tar_crate() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("app");
    fs::create_dir(&root).unwrap();
    build(&root, true, false, SystemTime::now());
    let (digests, tar) = layer(&root, Compression::None, 1, Normalize::default());
    assert_eq!(digests.digest.0, digests.diff_id.0);
    assert_eq!(digests.size, tar.len() as u64);

    let entries = read_entries(&tar);
    let by_path = |p: &[u8]| entries.iter().find(|(e, _)| e.path == p).unwrap_or_else(|| panic!("{p:?} missing"));
    let names: Vec<&[u8]> = entries.iter().map(|(e, _)| e.path.as_slice()).collect();
    let deep = format!("workspace/{}/{}/{}", "d".repeat(90), "e".repeat(90), "f".repeat(90));
    let long = format!("workspace/{}", "c".repeat(120));
    let mut want: Vec<Vec<u8>> = vec![
        b"workspace".to_vec(),
        b"workspace/caf\xe9-latin1".to_vec(),
        long.clone().into_bytes(),
        format!("workspace/{}", "d".repeat(90)).into_bytes(),
        format!("workspace/{}/{}", "d".repeat(90), "e".repeat(90)).into_bytes(),
        deep.clone().into_bytes(),
        format!("{deep}/deep-file").into_bytes(),
        b"workspace/empty-dir".to_vec(),
        b"workspace/empty-file".to_vec(),
        b"workspace/hello.txt".to_vec(),
        b"workspace/long-link".to_vec(),
        b"workspace/run.sh".to_vec(),
        b"workspace/short-link".to_vec(),
        b"workspace/sub".to_vec(),
        b"workspace/sub/hello-link".to_vec(),
        b"workspace/suid".to_vec(),
    ];
    want.sort();
    assert_eq!(names, want.iter().map(|v| v.as_slice()).collect::<Vec<_>>());
    for (e, _) in &entries {
        assert_eq!(e.mtime, DEFAULT_EPOCH, "{}", e.path_lossy());
        assert_eq!((e.uid, e.gid), (1000, 1000));
    }
    let (e, _) = by_path(b"workspace");
    assert_eq!((e.kind, e.mode), (EntryType::Dir, 0o755));
    let (e, data) = by_path(b"workspace/hello.txt");
    assert_eq!((e.kind, e.mode, e.size, data.as_slice()), (EntryType::File, 0o644, 6, &b"hello\n"[..]));
    let (e, _) = by_path(b"workspace/sub/hello-link");
    assert_eq!((e.kind, e.link.as_deref(), e.size), (EntryType::HardLink, Some(&b"workspace/hello.txt"[..]), 0));
    assert_eq!(e.mode, 0o644);
    let (e, _) = by_path(b"workspace/run.sh");
    assert_eq!(e.mode, 0o755);
    let (e, _) = by_path(b"workspace/suid");
    assert_eq!(e.mode, 0o755, "setuid dropped by default");
    let (e, _) = by_path(b"workspace/empty-dir");
    assert_eq!((e.kind, e.mode), (EntryType::Dir, 0o755));
    let (e, d0) = by_path(b"workspace/empty-file");
    assert_eq!((e.size, d0.len()), (0, 0));
    let (e, _) = by_path(b"workspace/long-link");
    assert_eq!((e.kind, e.mode), (EntryType::Symlink, 0o777));
    assert_eq!(e.link.as_deref(), Some("t".repeat(150).as_bytes()));
    let (e, _) = by_path(b"workspace/short-link");
    assert_eq!(e.link.as_deref(), Some(&b"hello.txt"[..]));
    let (_, data) = by_path(format!("{deep}/deep-file").as_bytes());
    assert_eq!(data, &vec![7u8; 70_000]);
    let (_, data) = by_path(long.as_bytes());
    assert_eq!(data, b"long");
    let (_, data) = by_path(b"workspace/caf\xe9-latin1");
    assert_eq!(data, b"bytes");

    // keep_special_bits keeps setuid.
    let (_, tar2) = layer(&root, Compression::None, 1, Normalize { keep_special_bits: true, ..Normalize::default() });
    let e2 = read_entries(&tar2);
    let suid = e2.iter().find(|(e, _)| e.path == b"workspace/suid").unwrap();
    assert_eq!(suid.0.mode, 0o4755);

    // A prefix with parents: parents root-owned, prefix owned by OWNER.
    let tree = scan_tree(&root, &|_, _| true).unwrap();
    let (_, tar3) = write_tree_layer(
        Vec::new(),
        CompressOptions::new(Compression::None),
        Normalize::default(),
        &tree,
        b"layers/sample",
        OWNER,
    )
    .unwrap();
    let e3 = read_entries(&tar3);
    assert_eq!((e3[0].0.path.as_slice(), e3[0].0.uid), (&b"layers"[..], 0));
    assert_eq!((e3[1].0.path.as_slice(), e3[1].0.uid), (&b"layers/sample"[..], 1000));
    let (_, tar4) =
        write_tree_layer(Vec::new(), CompressOptions::new(Compression::None), Normalize::default(), &tree, b"", OWNER)
            .unwrap();
    assert_eq!(read_entries(&tar4)[0].0.path, b"caf\xe9-latin1");

    // The tar crate agrees on names, sizes and link targets.
    let mut ar = tar::Archive::new(&tar[..]);
    let mut from_crate = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let mut p = e.path_bytes().into_owned();
        if p.ends_with(b"/") {
            p.pop();
        }
        from_crate.push(p);
    }
    assert_eq!(from_crate, want);

    // GNU tar lists the same names.
    let tar_path = d.path().join("layer.tar");
    fs::write(&tar_path, &tar).unwrap();
    if let Ok(out) = Command::new("tar").arg("--quoting-style=literal").arg("-tf").arg(&tar_path).output() {
        assert!(out.status.success(), "tar -tf failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "tar warned: {}", String::from_utf8_lossy(&out.stderr));
        let listed: Vec<Vec<u8>> = out
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| l.strip_suffix(b"/").unwrap_or(l).to_vec())
            .collect();
        assert_eq!(listed, want);
        let v = Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(&tar_path).output().unwrap();
        let v = String::from_utf8_lossy(&v.stdout);
        assert!(v.lines().all(|l| l.contains("1000/1000") && l.contains("1980-01-01 00:00")), "{v}");
    }
}

#[test]
fn identical_across_paths_mtimes_umask_order_and_threads() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("one");
    let b = d.path().join("some/other/place");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    build(&a, false, false, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000));
    build(&b, true, true, SystemTime::now());
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let (reference, blob) = layer(&a, compression, 1, Normalize::default());
        for threads in [1, 2, 7] {
            let (other, blob2) = layer(&b, compression, threads, Normalize::default());
            assert_eq!(other, reference, "{compression:?} threads {threads}");
            assert!(blob == blob2);
        }
    }
}

#[test]
fn reported_digests_match_independent_hashes() {
    let d = tempfile::tempdir().unwrap();
    build(d.path(), false, false, SystemTime::now());
    // Big enough for several gzip chunks.
    fs::write(d.path().join("big"), crate::compress::tests::sample(3 * GZIP_CHUNK_SIZE + 99, 4)).unwrap();
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let (dg, blob) = layer(d.path(), compression, 3, Normalize::default());
        assert_eq!(dg.compression, compression);
        assert_eq!(dg.size, blob.len() as u64);
        assert_eq!(dg.digest, Digest::of(&blob), "{compression:?}");
        let mut tar = Vec::new();
        decompress(&blob[..], compression).unwrap().read_to_end(&mut tar).unwrap();
        assert_eq!(Compression::detect(&blob), compression);
        assert_eq!(dg.tar_size, tar.len() as u64);
        assert_eq!(dg.diff_id, DiffId::of(&tar), "{compression:?}");
        assert_eq!(read_entries(&tar).len(), 17);
    }
}

#[test]
fn layer_writer_streams_arbitrary_bytes() {
    // The writer does not care that the input is a tar: any split of writes, same result.
    let data = crate::compress::tests::sample(2 * GZIP_CHUNK_SIZE + 1, 8);
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let opts = CompressOptions { compression, level: None, threads: 2 };
        let mut w = LayerWriter::new(Vec::new(), opts).unwrap();
        for c in data.chunks(3333) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.tar_size(), data.len() as u64);
        let (dg, blob) = w.finish().unwrap();
        assert_eq!(dg.diff_id, DiffId::of(&data));
        assert_eq!(dg.digest, Digest::of(&blob));
        // Empty layer.
        let (dg, blob) = LayerWriter::new(Vec::new(), opts).unwrap().finish().unwrap();
        assert_eq!(dg.diff_id, DiffId::of(b""));
        assert_eq!(dg.digest, Digest::of(&blob));
        assert_eq!(dg.tar_size, 0);
    }
}

#[test]
fn multi_member_gzip_is_read_whole() {
    let mut blob = Vec::new();
    for part in [&b"first "[..], b"second"] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(part).unwrap();
        blob.extend(e.finish().unwrap());
    }
    let mut out = Vec::new();
    decompress(&blob[..], Compression::Gzip).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, b"first second");
}

#[test]
fn reader_never_panics_on_mutated_or_truncated_layers() {
    let d = tempfile::tempdir().unwrap();
    build(d.path(), false, false, SystemTime::now());
    let (_, tar) = layer(d.path(), Compression::None, 1, Normalize::default());
    let drain = |bytes: &[u8]| {
        let mut r = LayerReader::new(bytes, Limits::default());
        let mut buf = [0u8; 4096];
        loop {
            match r.next_entry() {
                Ok(Some(_)) => loop {
                    match r.read_data(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                },
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    assert!(drain(&tar));
    for cut in (0..tar.len()).step_by(97) {
        drain(&tar[..cut]);
    }
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut m = tar.clone();
        for _ in 0..(1 + rnd() % 4) {
            let i = (rnd() % m.len() as u64) as usize;
            m[i] = rnd() as u8;
        }
        if !drain(&m) {
            rejected += 1;
        }
    }
    // Most mutations hit file data or padding and are legitimately accepted; header
    // mutations are caught by the checksum.
    assert!(rejected > 0);
}
