#!/usr/bin/env python3
"""Regenerates the binary seeds of fuzz/corpus/tar_roundtrip/ and fuzz/corpus/tar_reader/.

    python3 fuzz/make-seeds.py

Needs GNU tar, gzip and zstd. The output is deterministic (fixed mtimes, owners and
order); files this script does not name (hand-written seeds, regression-* files found by
fuzzing) are left alone. The JSON and reference seeds are hand-written files.
"""

import gzip
import io
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------
# tar_roundtrip: inputs in the layout decoded by `tar_roundtrip` in fuzz/src/lib.rs.

def raw(b):  # component: raw bytes (at most 63)
    assert len(b) < 64
    return bytes([len(b)]) + b


def fill(byte, n):  # component: `byte` repeated 1 + 5k times (n is rounded down to that)
    k = (n - 1) // 5
    assert 0 <= k < 64
    return bytes([0x40 | k, byte])


def word(i):  # component: WORDS[i]
    return bytes([0x80 | i])


def num(i):  # component: "n<i>"
    return bytes([0xC0 | i])


def name(*comps, lead=False, trail=False):
    assert 1 <= len(comps) <= 8
    return bytes([(len(comps) - 1) | (0x40 if lead else 0) | (0x80 if trail else 0)]) + b"".join(comps)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def header(flags=0, mtime=None, write_size=3, uid=0, gid=0):
    out = bytes([flags])
    if flags & 4:
        out += struct.pack("<Q", mtime)
    return out + bytes([write_size]) + u32(uid) + u32(gid)


def owner_op(op, owner):
    if owner is None:
        return bytes([op])
    return bytes([op | 4]) + u32(owner[0]) + u32(owner[1])


def d(path, mode=0o755, owner=None):
    return owner_op(0, owner) + path + u16(mode)


def contents(data):
    assert len(data) < 128
    return bytes([len(data)]) + data


def pattern(pat, n):  # (k & 0x7f) * 97 + extra bytes of a 4-byte pattern
    k, extra = divmod(n, 97)
    assert k < 128 and extra < 256 and len(pat) == 4
    return bytes([0x80 | k]) + pat + bytes([extra])


def f(path, body, mode=0o644, owner=None, cap=None):
    op = 1 | (0x10 if cap is not None else 0)
    out = owner_op(op, owner) + path + u16(mode) + body
    if cap is not None:
        out += bytes([len(cap)]) + cap
    return out


def sym(path, target, owner=None):
    return owner_op(2, owner) + path + target


def hard(path, pick=0, target=None, mode=None, owner=None):
    op = 3 | (0x20 if target is not None else 0) | (0x10 if mode is not None else 0)
    out = owner_op(op, owner) + path + bytes([pick])
    if target is not None:
        out += target
    if mode is not None:
        out += u16(mode)
    return out


def roundtrip_seeds():
    put("tar_roundtrip", "basic", header() + b"".join([
        d(name(raw(b"etc"))),
        f(name(raw(b"etc"), raw(b"hello.txt")), contents(b"hi\n"), mode=0o600),
        sym(name(raw(b"etc"), raw(b"link")), name(raw(b"hello.txt"))),
        hard(name(raw(b"etc"), raw(b"hard"))),
        d(name(raw(b"tmp")), mode=0o1777),
    ]))
    put("tar_roundtrip", "long-names", header(write_size=1) + b"".join([
        f(name(fill(ord("a"), 251)), contents(b"over 100 bytes: PAX path")),
        f(name(fill(ord("b"), 301)), contents(b"over 255 bytes")),
        d(name(fill(ord("d"), 151), raw(b"sub"))),
        f(name(fill(ord("d"), 151), fill(ord("e"), 96)), contents(b"ustar prefix + name")),
        f(name(fill(ord("p"), 156), raw(b"f")), contents(b"prefix over 155: PAX")),
        sym(name(raw(b"long-link")), name(fill(ord("t"), 151), lead=True)),
        hard(name(fill(ord("h"), 201)), pick=1),
        d(name(*[fill(ord("x"), 96)] * 8)),
    ]))
    put("tar_roundtrip", "non-utf8-and-unicode", header() + b"".join([
        d(name(word(5))),
        f(name(word(5), raw(b"\xc3\x28\xa0\xa1")), contents(b"\xff\xfe")),
        f(name(word(4), word(17), word(15)), contents("été".encode())),
        sym(name(word(12)), name(word(13), word(14))),
        f(name(word(6), raw(b"@LongLink"), word(16)), contents(b"names tar uses for its own headers")),
        f(name(word(6), word(7)), contents(b"rejected: '.' components")),
    ]))
    put("tar_roundtrip", "big-ids", header(uid=0xFFFFFFFF, gid=2097152) + b"".join([
        f(name(raw(b"max")), contents(b"u32::MAX / 2097152")),
        d(name(raw(b"ustar-max")), owner=(2097151, 2097151)),
        sym(name(raw(b"pax-uid")), name(raw(b"t")), owner=(3000000, 5)),
        hard(name(raw(b"pax-gid")), owner=(1000, 0x80000000)),
    ]))
    put("tar_roundtrip", "rejected-names", header() + b"".join([
        d(name(word(8))),                                  # ".."
        d(name(word(9), raw(b"a"))),                        # "./a"
        f(name(raw(b"abs"), lead=True), contents(b"x")),   # "/abs"
        f(name(raw(b"dir"), trail=True), contents(b"x")),  # "dir/"
        f(name(raw(b"a\x00b")), contents(b"x")),           # NUL
        f(name(raw(b"a"), word(10), raw(b"b")), contents(b"x")),  # "a//b"
        sym(name(raw(b"l")), name(word(10))),               # empty target
        sym(name(raw(b"l2")), name(raw(b"t\x00"))),         # NUL in target
        hard(name(raw(b"h")), target=name(word(8), raw(b"x"))),  # "../x"
        f(name(raw(b"ok")), contents(b"still written")),
        hard(name(raw(b"h2")), target=name(raw(b"ok")), mode=0o755),
    ]))
    put("tar_roundtrip", "capabilities-special-bits-mtime",
        header(flags=0b111, mtime=0xFFFFFFFFFFFFFFFF) + b"".join([
            f(name(raw(b"ping")), contents(b"\x7fELF"), mode=0o4755, cap=b"\x01\x00\x00\x02\x00\x20\x00\x00\n=\x00"),
            d(name(raw(b"sticky")), mode=0o1777),
            f(name(raw(b"rejected"), trail=True), contents(b""), cap=b"pending"),
            f(name(raw(b"plain")), contents(b""), mode=0o2711),
        ]))
    put("tar_roundtrip", "big-file-zstd-rechecked", header(flags=0x80, write_size=7) + b"".join([
        f(name(raw(b"big")), pattern(b"abcd", 12000), mode=0o700),
        f(name(raw(b"block")), pattern(b"\x00\x00\x00\x01", 512)),
        f(name(raw(b"block+1")), pattern(b"\x00\x00\x00\x01", 513)),
    ]))
    put("tar_roundtrip", "gzip-rechecked", header(flags=0x40, write_size=0) + b"".join([
        f(name(num(1)), pattern(b"gzip", 3000)),
        f(name(num(2)), contents(bytes(range(127)))),
    ]))


# ---------------------------------------------------------------------------------------
# tar_reader: real archives from GNU tar and Python's tarfile, damaged ones, compressed ones.

def gnu_tar(src, fmt, *extra, files=None):
    cmd = ["tar", "-c", "-b1", f"--format={fmt}", "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
           "--numeric-owner", "-C", src, *extra, *(files or ["."])]
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout


def make_tree(root):
    os.makedirs(os.path.join(root, "dir", "sub"))
    with open(os.path.join(root, "dir", "file.txt"), "wb") as fh:
        fh.write(b"hello\n")
    long_dir = os.path.join(root, "d" * 60, "e" * 60)
    os.makedirs(long_dir)
    long_file = os.path.join(long_dir, "f" * 120)
    with open(long_file, "wb") as fh:
        fh.write(b"long name\n")
    with open(os.path.join(long_dir, "short.txt"), "wb") as fh:
        fh.write(b"fits ustar prefix + name\n")
    os.link(long_file, os.path.join(root, "hardlink"))
    os.symlink("t" * 150, os.path.join(root, "longlink"))
    os.symlink("dir/file.txt", os.path.join(root, "symlink"))
    with open(os.path.join(root, b"non-utf8-\xff\xfe".decode("utf-8", "surrogateescape")), "wb") as fh:
        fh.write(b"bytes\n")
    with open(os.path.join(root, "été.txt"), "wb") as fh:
        fh.write("unicode\n".encode())
    os.chmod(os.path.join(root, "dir", "file.txt"), 0o4755)


def make_sparse(root):
    path = os.path.join(root, "sparse")
    with open(path, "wb") as fh:
        fh.seek(64 * 1024)
        fh.write(b"data after a hole")
    return ["sparse"]


def fixed_pid(tar):
    """GNU tar names a PAX sparse member `./GNUSparseFile.<its pid>/…`: make that 0."""
    out = bytearray(tar)
    for off in range(0, len(out) - 511, 512):
        name = bytes(out[off:off + 100])
        if name.startswith(b"./GNUSparseFile."):
            rest = name[len(b"./GNUSparseFile."):]
            digits = len(rest) - len(rest.lstrip(b"0123456789"))
            new = (b"./GNUSparseFile.0" + rest[digits:])[:100].ljust(100, b"\x00")
            out[off:off + 100] = new
            out[off + 148:off + 156] = b" " * 8
            out[off + 148:off + 156] = b"%06o\x00 " % sum(out[off:off + 512])
    return bytes(out)


def pytar(members, fmt=tarfile.PAX_FORMAT, pax_headers=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers or {}) as t:
        for info, data in members:
            info.mtime = 0
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return trim(buf.getvalue())


def trim(tar):
    """Drops tarfile's padding to a 10 KiB record: data, then the two zero blocks."""
    end = len(tar)
    while end >= 512 and tar[end - 512:end] == bytes(512):
        end -= 512
    return tar[:end] + bytes(1024)


def info(name, type=tarfile.REGTYPE, size=0, **kw):
    i = tarfile.TarInfo(name)
    i.type = type
    i.size = size
    for k, v in kw.items():
        setattr(i, k, v)
    return i


def ustar_header(name, typeflag=b"0", size=0, size_field=None, mode=0o644):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"%07o\x00" % mode
    h[108:116] = b"0000000\x00"
    h[116:124] = b"0000000\x00"
    h[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    h[136:148] = b"00000000000\x00"
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def pad(b):
    return b + b"\x00" * (-len(b) % 512)


def pax_record(key, value):
    rest = len(key) + len(value) + 3
    n = rest + 1
    while n != rest + len(str(n)):
        n = rest + len(str(n))
    return b"%d %s=%s\n" % (n, key, value)


def reader_seeds():
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        os.makedirs(tree)
        make_tree(tree)
        gnu = gnu_tar(tree, "gnu")
        put("tar_reader", "gnu-longnames.tar", gnu)
        pax = gnu_tar(tree, "pax", "--pax-option=delete=atime,delete=ctime", "--owner=3000000",
                      "--group=4000000")
        put("tar_reader", "pax-longnames-big-ids.tar", pax)
        put("tar_reader", "ustar.tar", gnu_tar(tree, "ustar", files=["dir", "symlink", "d" * 60 + "/" + "e" * 60 + "/short.txt"]))
        put("tar_reader", "v7.tar", gnu_tar(tree, "v7", files=["dir", "symlink"]))
        put("tar_reader", "oldgnu.tar", gnu_tar(tree, "oldgnu", files=["dir", "hardlink", "d" * 60]))
        sparse_dir = os.path.join(tmp, "sparse")
        os.makedirs(sparse_dir)
        files = make_sparse(sparse_dir)
        put("tar_reader", "gnu-sparse.tar", gnu_tar(sparse_dir, "gnu", "--sparse", files=files))
        put("tar_reader", "pax-sparse.tar", fixed_pid(gnu_tar(sparse_dir, "pax", "--sparse",
                                                              "--pax-option=delete=atime,delete=ctime", files=files)))

        put("tar_reader", "pax-global-comment.tar", pytar(
            [(info("a.txt", size=3), b"abc")], pax_headers={"comment": "git archive style"}))
        put("tar_reader", "pax-global-path.tar", pytar(
            [(info("a.txt", size=3), b"abc")], pax_headers={"path": "smuggled"}))
        put("tar_reader", "pax-xattrs-mtime-fraction.tar", pytar([(info(
            "cap", size=4, mode=0o755,
            pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "mtime": "1.5",
                         "uname": "root"}), b"\x7fELF")]))
        put("tar_reader", "devices-fifo.tar", pytar([
            (info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
            (info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
            (info("fifo", tarfile.FIFOTYPE), None),
            (info("contiguous", tarfile.CONTTYPE, size=2), b"ok"),
        ], fmt=tarfile.USTAR_FORMAT))
        put("tar_reader", "gnu-base256-ids.tar", pytar([
            (info("big", size=1, uid=2 ** 40, gid=2 ** 33), b"x")], fmt=tarfile.GNU_FORMAT))

        # Hand-made edge cases.
        body = b"smuggled"
        # PAX size 1024 over a ustar size of 0: the "inner" header is x's data (tar-rs before
        # 0.4.44 used the ustar size and saw "inner" as an entry).
        tarmageddon = (pad(ustar_header(b"PaxHeaders/x", b"x", len(pax_record(b"size", b"1024")))
                           + pax_record(b"size", b"1024"))
                       + ustar_header(b"x", size=0) + pad(ustar_header(b"inner", size=len(body)) + body)
                       + b"\x00" * 1024)
        put("tar_reader", "tarmageddon-pax-size-over-zero.tar", tarmageddon)
        put("tar_reader", "pax-size-disagrees.tar",
            pad(ustar_header(b"PaxHeaders/y", b"x", len(pax_record(b"size", b"5"))) + pax_record(b"size", b"5"))
            + pad(ustar_header(b"y", size=4) + b"abcd") + b"\x00" * 1024)
        put("tar_reader", "symlink-with-size.tar", pad(ustar_header(b"l", b"2", size=3) + b"abc") + b"\x00" * 1024)
        put("tar_reader", "two-pax-headers.tar",
            pad(ustar_header(b"P", b"x", len(pax_record(b"path", b"a"))) + pax_record(b"path", b"a")) * 2
            + ustar_header(b"z") + b"\x00" * 1024)
        put("tar_reader", "gnu-longname-vs-pax.tar",
            pad(ustar_header(b"././@LongLink", b"L", 4) + b"one\x00")
            + pad(ustar_header(b"P", b"x", len(pax_record(b"path", b"two"))) + pax_record(b"path", b"two"))
            + ustar_header(b"z") + b"\x00" * 1024)
        put("tar_reader", "base256-size.tar", ustar_header(b"huge", size_field=b"\x80" + b"\x00" * 3 + b"\xff" * 8))
        put("tar_reader", "dot-paths.tar", b"".join(
            ustar_header(n, b"5") for n in [b"./", b".", b"/", b"./a/", b"//b", b"././c//"]) + b"\x00" * 1024)
        put("tar_reader", "truncated-in-data.tar", gnu[:700])
        put("tar_reader", "truncated-in-header.tar", gnu[:300])
        put("tar_reader", "trailing-garbage.tar", gnu + b"garbage")
        put("tar_reader", "trailing-zeros-odd.tar", gnu + b"\x00" * 100)
        end = len(gnu)
        while gnu[end - 512:end] == b"\x00" * 512:
            end -= 512
        put("tar_reader", "no-end-marker.tar", gnu[:end])
        bad = bytearray(gnu)
        bad[10] ^= 1
        put("tar_reader", "bad-checksum.tar", bytes(bad))
        put("tar_reader", "empty.tar", b"\x00" * 1024)
        put("tar_reader", "empty-file", b"")

        small = gnu_tar(tree, "ustar", files=["dir"])
        gz = gzip.compress(small, mtime=0)
        put("tar_reader", "ustar.tar.gz", gz)
        put("tar_reader", "multi-member.tar.gz", gzip.compress(small[:512], mtime=0) + gzip.compress(small[512:], mtime=0))
        put("tar_reader", "gzip-garbage-after.tar.gz", gz + b"not gzip")
        put("tar_reader", "gzip-truncated.tar.gz", gz[: len(gz) // 2])
        zst = subprocess.run(["zstd", "-q", "-c", "--no-check"], input=small, check=True, stdout=subprocess.PIPE).stdout
        put("tar_reader", "ustar.tar.zst", zst)
        zst_ck = subprocess.run(["zstd", "-q", "-c", "-19"], input=pax, check=True, stdout=subprocess.PIPE).stdout
        put("tar_reader", "pax-checksum.tar.zst", zst_ck)
        put("tar_reader", "zstd-two-frames.tar.zst", zst + zst)
        put("tar_reader", "zstd-truncated.tar.zst", zst_ck[: len(zst_ck) - 7])


if __name__ == "__main__":
    os.umask(0o022)  # file modes in the generated tars
    for tool in ["tar", "zstd"]:
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed")
    roundtrip_seeds()
    reader_seeds()
