#!/usr/bin/env python3
"""Regenerates the malicious and malformed layer corpus and its manifest, cases.json.

    python3 testdata/layers/malicious/make-corpus.py

Needs python3 and the zstd CLI. Output is deterministic: headers are written byte by
byte here (no tarfile module), mtimes and owners are fixed, gzip members have mtime 0.

Each case is one or more layers applied in order onto an empty root `T/root`, beside
which the test puts sentinels: `T/outside/secret` (a file), `T/outside/dir/` and
`T/sentinel`. Relative symlinks like `../outside` from an entry at the root therefore
point at real files outside the root if anything follows them unscoped.

Expectations (checked by layers/tests/malicious_corpus.rs, for both path resolvers):
  "error": {"kind": refused|malformed|truncated|limit|io, "contains": substring}
  "tree":  the complete root afterwards, path -> "dir" | "file:CONTENT" | "link:TARGET"
           | "file-sha256:HEX" | "fifo" | "placeholder" (an empty file standing in for a
           device node)
  "warnings": substrings, one per expected warning (ok cases)
  "limits": overrides of imgforge_layers::Limits for the case
Nothing outside the root may change in any case.
"""

import gzip
import hashlib
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
MTIME = 315532801
BLOCK = 512


def octal(n, width):
    return ("%0*o" % (width - 1, n)).encode() + b"\0"


def header(name, flag=b"0", size=0, link=b"", mode=0o644, size_field=None, checksum=True):
    if isinstance(name, str):
        name = name.encode()
    if isinstance(link, str):
        link = link.encode()
    h = bytearray(BLOCK)
    h[0 : len(name)] = name[:100]
    h[100:108] = octal(mode, 8)
    h[108:116] = octal(0, 8)
    h[116:124] = octal(0, 8)
    h[124:136] = size_field if size_field is not None else octal(size, 12)
    h[136:148] = octal(MTIME, 12)
    h[156:157] = flag
    h[157 : 157 + len(link)] = link[:100]
    h[257:265] = b"ustar\x0000"
    h[148:156] = b" " * 8
    if checksum:
        s = sum(h)
        h[148:156] = ("%06o" % s).encode() + b"\0 "
    return bytes(h)


def pad(data):
    return data + b"\0" * ((-len(data)) % BLOCK)


def pax_record(key, value):
    if isinstance(value, str):
        value = value.encode()
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def pax(records, flag=b"x"):
    data = b"".join(pax_record(k, v) for k, v in records)
    return header("PaxHeaders/x", flag, len(data)) + pad(data)


def f(name, content=b"", mode=0o644):
    if isinstance(content, str):
        content = content.encode()
    return header(name, b"0", len(content), mode=mode) + pad(content)


def d(name, mode=0o755):
    return header(name, b"5", mode=mode)


def sym(name, target):
    return header(name, b"2", link=target, mode=0o777)


def hard(name, target):
    return header(name, b"1", link=target)


END = b"\0" * 1024


def tar(*entries, end=True):
    return b"".join(entries) + (END if end else b"")


CASES = []


def case(name, description, layers, expect, limits=None):
    """layers: list of (suffix, bytes); expect: dict."""
    files = []
    for i, data in enumerate(layers):
        ext = "tar"
        if isinstance(data, tuple):
            ext, data = data
        fname = "%s.%d.%s" % (name, i + 1, ext) if len(layers) > 1 else "%s.%s" % (name, ext)
        with open(os.path.join(HERE, fname), "wb") as out:
            out.write(data)
        files.append(fname)
    c = {"name": name, "description": description, "layers": files}
    c.update(expect)
    if limits:
        c["limits"] = limits
    CASES.append(c)


def err(kind, contains):
    return {"error": {"kind": kind, "contains": contains}}


def ok(tree, warnings=()):
    e = {"tree": tree}
    if warnings:
        e["warnings"] = list(warnings)
    return e


def zstd(data):
    return subprocess.run(["zstd", "-19", "-q", "-c", "--no-check"], input=data, capture_output=True, check=True).stdout


def main():
    for old in os.listdir(HERE):
        if old.endswith((".tar", ".tar.gz", ".tar.zst")):
            os.remove(os.path.join(HERE, old))

    # --- path traversal -------------------------------------------------------------
    case("dotdot-file", "a file named ../outside/pwned",
         [tar(f("../outside/pwned", "x"))], err("refused", "\"..\""))
    case("dotdot-nested", "a/../../outside/pwned: .. in the middle",
         [tar(d("a/"), f("a/../../outside/pwned", "x"))], err("refused", "\"..\""))
    case("dotdot-pax-path", "a harmless ustar name, ../../pwned in the PAX path",
         [tar(pax([("path", "../../pwned")]), f("harmless", "x"))], err("refused", "\"..\""))
    case("absolute-path", "/etc/passwd-abs: the leading / is dropped, as every tar does",
         [tar(f("/etc/passwd-abs", "root"))], ok({"etc": "dir", "etc/passwd-abs": "file:root"}))
    case("dot-prefixed", "./a and ././b/./c: dots are ignored",
         [tar(d("./"), f("./a", "1"), f("././b/./c", "2"))],
         ok({"a": "file:1", "b": "dir", "b/c": "file:2"}))

    # --- symlinks -----------------------------------------------------------------------
    case("symlink-dotdot-then-write", "link -> ../.. then link/pwned: resolved inside the root",
         [tar(sym("link", "../.."), f("link/pwned", "x"))],
         ok({"link": "link:../..", "pwned": "file:x"}))
    case("symlink-absolute-then-write", "link -> / then link/outside/pwned: / is the root",
         [tar(sym("link", "/"), f("link/outside/pwned", "x"))],
         ok({"link": "link:/", "outside": "dir", "outside/pwned": "file:x"}))
    case("symlink-outside-then-write", "link -> ../outside then link/pwned: the target is missing inside the root",
         [tar(sym("link", "../outside"), f("link/pwned", "x"))],
         err("io", "symlink to a missing directory"))
    case("symlink-etc-passwd-then-file", "passwd -> /etc/passwd then a file passwd: the link is replaced, not written through",
         [tar(d("etc/"), f("etc/passwd", "orig"), sym("passwd", "/etc/passwd"), f("passwd", "new"))],
         ok({"etc": "dir", "etc/passwd": "file:orig", "passwd": "file:new"}))
    case("symlink-etc-then-write", "etcl -> /etc then etcl/passwd: lands in the root's /etc",
         [tar(d("etc/"), sym("etcl", "/etc"), f("etcl/passwd", "new"))],
         ok({"etc": "dir", "etc/passwd": "file:new", "etcl": "link:/etc"}))
    case("symlink-outside-secret-then-file", "secret -> ../outside/secret, then a file of that name",
         [tar(sym("secret", "../outside/secret"), f("secret", "mine"))], ok({"secret": "file:mine"}))
    case("cross-layer-symlink-write", "layer 1: link -> ../outside; layer 2: link/pwned",
         [tar(sym("link", "../outside")), tar(f("link/pwned", "x"))],
         err("io", "symlink to a missing directory"))
    case("cross-layer-symlink-replace", "layer 1: f -> ../outside/secret; layer 2: a file f replaces the link",
         [tar(sym("f", "../outside/secret")), tar(f("f", "x"))], ok({"f": "file:x"}))
    case("symlink-then-dir", "x -> ../outside then a directory x mode 0777: replaces the link, never chmods through it (CVE-2026-33056)",
         [tar(sym("x", "../outside"), d("x/", 0o777))], ok({"x": "dir"}))
    case("cross-layer-symlink-then-dir", "layer 1: x -> ../outside; layer 2: directory x and x/f",
         [tar(sym("x", "../outside")), tar(d("x/", 0o777), f("x/f", "1"))], ok({"x": "dir", "x/f": "file:1"}))
    case("symlink-chain-escape", "a -> b -> c -> ../../outside, then a/pwned",
         [tar(sym("a", "b"), sym("b", "c"), sym("c", "../../outside"), f("a/pwned", "x"))],
         err("io", "symlink to a missing directory"))
    case("symlink-chain-inside", "a -> b -> /d, then a/f lands in d/f",
         [tar(d("d/"), sym("b", "/d"), sym("a", "b"), f("a/f", "1"))],
         ok({"a": "link:b", "b": "link:/d", "d": "dir", "d/f": "file:1"}))
    case("symlink-loop", "a -> b, b -> a, then a/x",
         [tar(sym("a", "b"), sym("b", "a"), f("a/x", "1"))], err("io", "symbolic links"))
    case("symlink-to-file-as-parent", "p -> f (a file), then p/x",
         [tar(f("f", "1"), sym("p", "f"), f("p/x", "2"))], err("io", "Not a directory"))

    # --- hard links ---------------------------------------------------------------------
    case("hardlink-dotdot", "h => ../outside/secret",
         [tar(hard("h", "../outside/secret"))], err("refused", "\"..\""))
    case("hardlink-absolute", "h => /etc/shadow: the target is looked up inside the root, and is missing",
         [tar(hard("h", "/etc/shadow"))], err("refused", "does not exist"))
    case("hardlink-through-symlink", "s -> ../outside, then h => s/secret",
         [tar(sym("s", "../outside"), hard("h", "s/secret"))], err("refused", "does not exist"))
    case("hardlink-through-symlink-cross-layer", "layer 1: s -> /, f; layer 2: h => s/f links the root's f",
         [tar(sym("s", "/"), f("f", "data")), tar(hard("h", "s/f"))],
         ok({"s": "link:/", "f": "file:data", "h": "file:data"}))
    case("hardlink-to-symlink", "s -> ../outside/secret, h => s links the symlink itself; then a file h replaces it",
         [tar(sym("s", "../outside/secret"), hard("h", "s")), tar(f("h", "mine"))],
         ok({"s": "link:../outside/secret", "h": "file:mine"}))
    case("hardlink-to-dir", "d/ then h => d", [tar(d("d/"), hard("h", "d"))], err("refused", "directory"))
    case("hardlink-to-self", "f, then h => h", [tar(hard("h", "h"))], err("refused", "itself"))
    case("hardlink-ok", "f then h => f", [tar(f("f", "same"), hard("h", "f"))], ok({"f": "file:same", "h": "file:same"}))

    # --- the root -----------------------------------------------------------------------
    case("root-symlink", "./ as a symlink to ../outside", [tar(sym("./", "../outside"), f("pwned", "x"))],
         err("refused", "root entry"))
    case("root-slash-symlink", "/ as a symlink to /tmp", [tar(sym("/", "/tmp"))], err("refused", "root entry"))
    case("root-file", ". as a regular file", [tar(f(".", "x"))], err("refused", "root entry"))
    case("root-dir-ok", "./ as a directory is fine", [tar(d("./"), f("a", "1"))], ok({"a": "file:1"}))

    # --- whiteouts ----------------------------------------------------------------------
    case("whiteout-semantics", "layer 1: a/x a/y b/z c; layer 2: a/.wh.x, b/.wh..wh..opq, b/new, .wh.c",
         [tar(d("a/"), f("a/x", "x"), f("a/y", "y"), d("b/"), f("b/z", "z"), f("c", "c")),
          tar(f("a/.wh.x"), d("b/"), f("b/.wh..wh..opq"), f("b/new", "n"), f(".wh.c"))],
         ok({"a": "dir", "a/y": "file:y", "b": "dir", "b/new": "file:n"}))
    case("whiteout-same-layer", "a whiteout hides lower layers only: f and .wh.f in one layer keep f",
         [tar(f("f", "1"), f(".wh.f"))], ok({"f": "file:1"}))
    case("whiteout-dir", "layer 1: d/ with files; layer 2: .wh.d removes it all",
         [tar(d("d/"), d("d/e/"), f("d/e/f", "1")), tar(f(".wh.d"))], ok({}))
    case("whiteout-dotdot", ".wh... would remove the parent", [tar(f("a/.wh..."))], err("refused", "whiteout of \"..\""))
    case("whiteout-dot", ".wh.. would remove the directory itself", [tar(f("a/.wh.."))], err("refused", "whiteout of \".\""))
    case("whiteout-empty", ".wh. names nothing", [tar(f(".wh."))], err("refused", "empty name"))
    case("whiteout-reserved", ".wh..wh.plnk (an AUFS internal)", [tar(f(".wh..wh.plnk"))], err("refused", "reserved"))
    case("whiteout-parent-dotdot", "../.wh.outside", [tar(f("../.wh.outside"))], err("refused", "\"..\""))
    case("whiteout-as-directory", ".wh.a/b: a whiteout name as a directory",
         [tar(f(".wh.a/b", "x"))], err("refused", "used as a directory"))
    case("whiteout-through-symlink", "layer 1: s -> ../outside; layer 2: s/.wh.secret removes nothing outside",
         [tar(sym("s", "../outside")), tar(f("s/.wh.secret"))], ok({"s": "link:../outside"}))
    case("whiteout-through-symlink-inside", "layer 1: d/x, s -> /d; layer 2: s/.wh.x removes d/x inside the root",
         [tar(d("d/"), f("d/x", "1"), sym("s", "/d")), tar(f("s/.wh.x"))], ok({"d": "dir", "s": "link:/d"}))
    case("opaque-through-symlink", "layer 1: s -> ../outside; layer 2: s/.wh..wh..opq empties nothing outside",
         [tar(sym("s", "../outside")), tar(f("s/.wh..wh..opq"))], ok({"s": "link:../outside"}))
    case("opaque-through-root-symlink", "layer 1: a, s -> /; layer 2: s/.wh..wh..opq empties the root only",
         [tar(f("a", "1"), sym("s", "/")), tar(f("s/.wh..wh..opq"), f("b", "2"))], ok({"b": "file:2"}))

    # --- replacement and duplicates -----------------------------------------------------
    case("duplicate-entries", "f twice: the later one wins", [tar(f("f", "first"), f("f", "second"))], ok({"f": "file:second"}))
    case("dir-replaced-by-file", "d/ with d/x, then a file d", [tar(d("d/"), f("d/x", "1"), f("d", "file"))], ok({"d": "file:file"}))
    case("file-replaced-by-dir", "a file d, then d/ and d/x", [tar(f("d", "file"), d("d/"), f("d/x", "1"))],
         ok({"d": "dir", "d/x": "file:1"}))
    case("implicit-parents", "a/b/c without its parents", [tar(f("a/b/c", "1"))], ok({"a": "dir", "a/b": "dir", "a/b/c": "file:1"}))

    # --- special files ------------------------------------------------------------------
    case("device-nodes", "a char device, a block device and a fifo",
         [tar(d("dev/"), header("dev/null", b"3", mode=0o666), header("dev/sda", b"4", mode=0o660), header("dev/fifo", b"6"))],
         ok({"dev": "dir", "dev/null": "placeholder", "dev/sda": "placeholder", "dev/fifo": "fifo"},
            ["2 device nodes replaced by empty placeholder files (device nodes cannot be created without root): "
             "dev/null (character), dev/sda (block)"]))
    case("unknown-type", "an entry of type 'V' (volume label) is skipped with a warning",
         [tar(header("label", b"V"), f("a", "1"))], ok({"a": "file:1"}, ["unknown type"]))

    # --- malformed streams --------------------------------------------------------------
    case("pax-size-disagrees", "PAX size 1024, ustar size 512: which is right?",
         [tar(pax([("size", "1024")]), header("outer", b"0", 512), header("smuggled", b"0", 0), b"\0" * 512)],
         err("malformed", "PAX size 1024 disagrees with ustar size 512"))
    smuggled = header("smuggled", b"0", 0) + b"\0" * 512
    case("tarmageddon", "ustar size 0, PAX size 1024: the data looks like a header and must stay data (CVE-2025-62518)",
         [tar(pax([("size", "1024")]), header("outer", b"0", 0), smuggled)],
         ok({"outer": "file-sha256:" + hashlib.sha256(smuggled).hexdigest()}))
    case("size-on-symlink", "a symlink header with a size: where is the next header?",
         [tar(header("l", b"2", 512, link="t"), header("smuggled", b"0", 0), b"\0" * 512)],
         err("malformed", "header-only"))
    case("bad-checksum", "a header whose checksum is wrong",
         [tar(header("a", b"0", 0, checksum=False))], err("malformed", "checksum"))
    case("garbage-after-end", "a header after the end-of-archive marker",
         [f("a", "1") + b"\0" * 512 + header("smuggled", b"0", 0)], err("malformed", "after the end-of-archive"))
    case("truncated-data", "size 1000, 700 bytes of data, then EOF",
         [header("a", b"0", 1000) + b"x" * 700], err("truncated", "truncated"))
    case("truncated-header", "EOF in the middle of a header", [f("a", "1") + header("b", b"0", 0)[:300]],
         err("truncated", "truncated"))
    case("huge-declared-size", "declares almost 8 GiB, carries 1 KiB",
         [header("big", b"0", (8 << 30) - 512) + b"x" * 1024], err("truncated", "truncated"))
    case("nul-in-pax-path", "a NUL inside a PAX path", [tar(pax([("path", b"a\0b")]), f("a", "1"))], err("malformed", "NUL"))
    case("long-name-over-limit", "a 5000-byte PAX path (the limit is 4096)",
         [tar(pax([("path", "n" * 5000)]), f("a", "1"))], err("limit", "name length"))
    long_dir = "d/" + "n" * 150
    long_name = long_dir + "/" + "m" * 150
    case("gnu-long-name", "a 303-byte name through a GNU ././@LongLink header is fine",
         [tar(d("d/"), header("././@LongLink", b"L", len(long_name) + 1) + pad(long_name.encode() + b"\0"), f("short", "1"))],
         ok({"d": "dir", long_dir: "dir", long_name: "file:1"}))
    case("component-too-long", "a 300-byte file name: the filesystem refuses it, the extractor says which entry",
         [tar(header("././@LongLink", b"L", 301) + pad(b"n" * 300 + b"\0"), f("short", "1"))],
         err("io", "File name too long"))
    case("gnu-sparse", "GNU sparse files are refused", [tar(header("s", b"S", 0))], err("malformed", "sparse"))
    case("pax-sparse", "PAX GNU.sparse records are refused", [tar(pax([("GNU.sparse.major", "1")]), f("s", ""))],
         err("malformed", "sparse"))
    case("too-many-entries", "10 entries with a limit of 8",
         [tar(*[f("f%d" % i, "") for i in range(10)])], err("limit", "entries"), limits={"max_entries": 8})
    case("file-over-size-limit", "a 4 KiB file with a per-file limit of 1 KiB",
         [tar(f("big", b"x" * 4096))], err("limit", "entry size"), limits={"max_entry_size": 1024})

    # --- decompression bombs ------------------------------------------------------------
    bomb = tar(header("zeros", b"0", 64 << 20) + b"\0" * (64 << 20))
    case("gzip-bomb", "~64 KiB of gzip expanding to 64 MiB, with a 16 MiB cap on decompressed bytes",
         [("tar.gz", gzip.compress(bomb, compresslevel=9, mtime=0))], err("limit", "total tar bytes"),
         limits={"max_total_bytes": 16 << 20})
    case("zstd-bomb", "a few KiB of zstd expanding to 64 MiB, with a 16 MiB cap",
         [("tar.zst", zstd(bomb))], err("limit", "total tar bytes"), limits={"max_total_bytes": 16 << 20})
    case("gzip-trailer-bomb", "a small tar followed by 64 MiB of zeros after the end marker, gzipped",
         [("tar.gz", gzip.compress(f("a", "1") + b"\0" * (64 << 20), compresslevel=9, mtime=0))],
         err("limit", "total tar bytes"), limits={"max_total_bytes": 16 << 20})
    case("gzip-corrupt", "a gzip stream cut in half",
         [("tar.gz", gzip.compress(tar(f("a", "x" * 5000)), mtime=0)[:40])], err("io", "incomplete deflate stream"))

    with open(os.path.join(HERE, "cases.json"), "w") as out:
        json.dump({"cases": CASES}, out, indent=1, sort_keys=True)
        out.write("\n")
    print("%d cases" % len(CASES))


if __name__ == "__main__":
    main()
