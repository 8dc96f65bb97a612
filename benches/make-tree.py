#!/usr/bin/env python3
"""Write the application tree the end-to-end benchmarks build (benches/compare.sh).

    benches/make-tree.py DIR [--files N] [--mb M] [--seed S]

The default profile looks like an installed node_modules: about 12,000 files spread over
nested package folders, most of them small source-like text (it compresses about 4:1), one
large file per thousand, a few random-byte ".bin" files, some executables and symlinks.

The tree is a pure function of the arguments: every choice comes from one seeded random
stream, drawn in a fixed order, so two machines (and two runs) measure the same bytes,
paths and modes. Keep that order when changing this file, or cached trees and published
numbers stop being comparable (compare.sh re-makes its cached trees when this file
changes).
"""
import argparse
import os
import random

VOCABULARY = (
    "function return const let var if else for while module exports require "
    "import from default class extends this new null undefined true false "
    "async await promise resolve reject value key index length push map filter "
    "reduce object array string number buffer stream error callback options"
).split()

# File name endings, weighted by repetition: mostly code, some metadata, one binary kind.
SUFFIXES = (
    [".js"] * 12 + [".json"] * 4 + [".md"] * 3 + [".d.ts"] * 3 + [".map"] * 2 + [".bin"]
)


def source_text(rng, size):
    """`size` bytes of indented, semicolon-terminated word salad."""
    lines, length = [], 0
    while length < size:
        words = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(3, 12)))
        line = "  " * rng.randint(0, 4) + words + ";\n"
        lines.append(line)
        length += len(line)
    return "".join(lines).encode()[:size]


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="where to write the tree (created if missing)")
    parser.add_argument("--files", type=int, default=12000, help="number of files")
    parser.add_argument("--mb", type=int, default=100, help="total size in MiB (roughly)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random stream")
    return parser.parse_args()


def write_tree(root, files, mib, seed):
    rng = random.Random(seed)
    budget = mib * 1024 * 1024
    # 90% of the bytes go to the small files, 10% to the few large ones.
    large = max(1, files // 1000)
    small = files - large
    small_mean = int(budget * 0.9 / max(1, small))
    large_mean = int(budget * 0.1 / large)

    folders = [""]
    os.makedirs(root, exist_ok=True)
    for n in range(files):
        # Now and then (and always for the first few files) open a new folder under an
        # existing one, so the tree grows deep as well as wide.
        if rng.random() < 0.15 or len(folders) < 4:
            folder = os.path.join(rng.choice(folders), "pkg%05d" % len(folders))
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            folders.append(folder)
        folder = rng.choice(folders)
        suffix = rng.choice(SUFFIXES)
        path = os.path.join(root, folder, "f%06d%s" % (n, suffix))
        if n < large:
            size = int(large_mean * rng.uniform(0.5, 1.5))
        else:
            size = max(1, int(rng.expovariate(1.0 / small_mean)))
        content = rng.randbytes(size) if suffix == ".bin" else source_text(rng, size)
        with open(path, "wb") as out:
            out.write(content)
        os.chmod(path, 0o755 if rng.random() < 0.03 else 0o644)
        if rng.random() < 0.01:
            link = os.path.join(root, folder, "link%06d" % n)
            if not os.path.lexists(link):
                os.symlink(os.path.basename(path), link)


if __name__ == "__main__":
    args = arguments()
    write_tree(args.dir, args.files, args.mb, args.seed)
