#!/usr/bin/env python3
"""tests/make-index.py — put single-platform images of OCI layouts into one OCI image index.

    tests/make-index.py OUT TAG LAYOUT:TAG[:VARIANT] ...

OUT becomes an OCI image layout whose TAG names an image index (as `skopeo copy --all`
writes one) listing each source image, with the platform its config gives (os,
architecture, variant). VARIANT, when given, is first written into that image's config
(umoci cannot set one), as Docker Hub's arm64 images carry `"variant": "v8"`. The index
lists its entries in imgforge's order (os, then architecture, then variant, none first).
Blobs are hard-linked from the sources when they share a file system, else copied.
Whatever was at OUT is replaced. Used by tests/run.sh for the multi-platform test base.
"""

import hashlib
import json
import os
import shutil
import sys

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def die(msg):
    print(f"make-index.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def blob(layout, digest):
    algo, hexpart = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexpart)


def put(out, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blob(out, digest), "wb") as f:
        f.write(data)
    return digest, len(data)


def link_or_copy(src, dst):
    if os.path.exists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    out, tag, sources = argv[0], argv[1], argv[2:]
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for spec in sources:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            die(f"{spec!r}: expected LAYOUT:TAG[:VARIANT] (LAYOUT without a colon)")
        layout, src_tag, variant = parts[0], parts[1], parts[2] if len(parts) == 3 else None
        with open(os.path.join(layout, "index.json")) as f:
            top = json.load(f)
        found = [m for m in top["manifests"] if m.get("annotations", {}).get(REF_NAME) == src_tag]
        if len(found) != 1:
            die(f"{layout}: expected one image tagged {src_tag!r}, found {len(found)}")
        with open(blob(layout, found[0]["digest"]), "rb") as f:
            manifest = json.load(f)
        for layer in manifest["layers"]:
            link_or_copy(blob(layout, layer["digest"]), blob(out, layer["digest"]))
        with open(blob(layout, manifest["config"]["digest"]), "rb") as f:
            config = json.load(f)
        if variant:
            config["variant"] = variant
            digest, size = put(out, json.dumps(config, separators=(",", ":")).encode())
            manifest["config"]["digest"], manifest["config"]["size"] = digest, size
            mdigest, msize = put(out, json.dumps(manifest, separators=(",", ":")).encode())
        else:  # the image as it is, bytes and digests unchanged
            mdigest, msize = found[0]["digest"], found[0]["size"]
            for d in (mdigest, manifest["config"]["digest"]):
                link_or_copy(blob(layout, d), blob(out, d))
        platform = {"architecture": config["architecture"], "os": config["os"]}
        if config.get("variant"):
            platform["variant"] = config["variant"]
        entries.append(
            {"mediaType": found[0]["mediaType"], "digest": mdigest, "size": msize, "platform": platform}
        )
    entries.sort(key=lambda e: (e["platform"]["os"], e["platform"]["architecture"], e["platform"].get("variant", "")))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    idigest, isize = put(out, json.dumps(index, separators=(",", ":")).encode())
    top = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": idigest, "size": isize, "annotations": {REF_NAME: tag}}],
    }
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(top, f, separators=(",", ":"))
    print(f"oci:{out}:{tag} ({idigest}: {', '.join(spec for spec in sources)})")


if __name__ == "__main__":
    main(sys.argv[1:])
