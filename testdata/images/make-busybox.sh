#!/usr/bin/env bash
# Build testdata/images/busybox: a tiny, reproducible OCI image layout
# (one layer, linux/amd64, tag "latest") made from Debian's busybox-static.
#
# Usage: testdata/images/make-busybox.sh [OUT_DIR]
#   OUT_DIR        default: the busybox/ directory next to this script
#   BUSYBOX_DEB    use this local busybox-static .deb instead of downloading
#   BUSYBOX_VERSION  Debian version to download (default: the pinned one below;
#                  set it to the empty string to take apt's candidate)
#
# Needs: apt-get (unless BUSYBOX_DEB), dpkg-deb, GNU tar, gzip, sha256sum, python3.
# Running it twice with the same .deb gives the same digests (tests/run.sh does
# not rebuild the fixture; the committed layout is the fixture).
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/busybox}
pinned='1:1.35.0-4+deb12u1+b1'
version=${BUSYBOX_VERSION-$pinned}

for tool in dpkg-deb tar gzip sha256sum python3; do
  command -v "$tool" >/dev/null || { echo "make-busybox: missing tool: $tool" >&2; exit 1; }
done
tar --version | head -1 | grep -q 'GNU tar' || { echo "make-busybox: GNU tar is required" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- 1. the package -----------------------------------------------------------
if [[ -n ${BUSYBOX_DEB:-} ]]; then
  deb=$BUSYBOX_DEB
else
  chmod 0777 "$work" # apt-get download drops privileges to _apt when run as root
  spec=busybox-static${version:+=$version}
  if ! (cd "$work" && apt-get download -q "$spec" >/dev/null); then
    echo "make-busybox: 'apt-get download $spec' failed; run 'apt-get update'," >&2
    echo "  or BUSYBOX_VERSION= $0 to take the current candidate (this changes the digests)" >&2
    exit 1
  fi
  deb=$(ls "$work"/busybox-static_*.deb)
fi
pkg_version=$(dpkg-deb -f "$deb" Version)
pkg_arch=$(dpkg-deb -f "$deb" Architecture)
[[ $pkg_arch == amd64 ]] || { echo "make-busybox: need an amd64 .deb, got $pkg_arch" >&2; exit 1; }
dpkg-deb -x "$deb" "$work/deb"

# --- 2. the root filesystem ---------------------------------------------------
root=$work/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,home/app,usr/share/doc/busybox-static}
install -m 0755 "$work/deb/bin/busybox" "$root/bin/busybox"
install -m 0644 "$work/deb/usr/share/doc/busybox-static/copyright" \
  "$root/usr/share/doc/busybox-static/copyright"
if [[ -r /usr/share/common-licenses/GPL-2 ]]; then
  # the copyright file refers to it; keep the image self-contained
  mkdir -p "$root/usr/share/common-licenses"
  install -m 0644 /usr/share/common-licenses/GPL-2 "$root/usr/share/common-licenses/GPL-2"
fi

# One relative symlink per applet, at the path busybox itself chooses
# (bin/sh, usr/bin/env, ...). linuxrc (an initramfs entry point) is left out.
"$root/bin/busybox" --list-full | sort | while read -r path; do
  [[ $path == */* ]] || continue
  [[ $path == bin/busybox ]] && continue
  dir=$(dirname "$path")
  case $dir in
    bin|sbin) target=busybox; [[ $dir == sbin ]] && target=../bin/busybox ;;
    usr/bin|usr/sbin) target=../../bin/busybox ;;
    *) echo "make-busybox: unexpected applet path $path" >&2; exit 1 ;;
  esac
  ln -s "$target" "$root/$path"
done
for applet in sh ls cat echo env id httpd wget sleep test printf pwd stat find readlink nc; do
  found=
  for d in bin sbin usr/bin usr/sbin; do [[ -L $root/$d/$applet ]] && found=1; done
  [[ -n $found ]] || { echo "make-busybox: busybox lacks applet $applet" >&2; exit 1; }
done

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
app:x:1000:
nobody:x:65534:
EOF
chmod 0644 "$root/etc/passwd" "$root/etc/group"

find "$root" -type d -exec chmod 0755 {} +
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"

# --- 3. the layer -------------------------------------------------------------
taropts=(--sort=name --mtime=@0 --numeric-owner --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime
  --no-acls --no-xattrs --no-selinux)
layer_tar=$work/layer.tar
# everything owned by 0:0 except /home/app (1000:1000), which is appended last
(cd "$root" && tar -cf "$layer_tar" "${taropts[@]}" --owner=0 --group=0 \
  --exclude=home/app bin etc home root sbin tmp usr)
(cd "$root" && tar -rf "$layer_tar" "${taropts[@]}" --owner=1000 --group=1000 home/app)
gzip -n -9 -c "$layer_tar" >"$work/layer.tar.gz"

# --- 4. config, manifest, index, oci-layout -----------------------------------
rm -rf "$out"
mkdir -p "$out/blobs/sha256"
python3 - "$work/layer.tar" "$work/layer.tar.gz" "$out" "$pkg_version" <<'PY'
import hashlib, json, os, sys

layer_tar, layer_gz, out, pkg_version = sys.argv[1:5]

def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()

def put(data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return digest

def dump(obj) -> bytes:
    return json.dumps(obj, indent=None, separators=(",", ":"), sort_keys=False).encode()

created = "1980-01-01T00:00:01Z"
diff_id = sha(layer_tar)
with open(layer_gz, "rb") as f:
    layer_bytes = f.read()
layer_digest = put(layer_bytes)

config = {
    "created": created,
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
    },
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{
        "created": created,
        "created_by": "testdata/images/make-busybox.sh: busybox-static " + pkg_version,
        "comment": "imgforge test fixture",
    }],
}
config_bytes = dump(config)
config_digest = put(config_bytes)

manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": config_digest,
        "size": len(config_bytes),
    },
    "layers": [{
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": layer_digest,
        "size": len(layer_bytes),
    }],
}
manifest_bytes = dump(manifest)
manifest_digest = put(manifest_bytes)

index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": len(manifest_bytes),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }],
}
with open(os.path.join(out, "index.json"), "wb") as f:
    f.write(dump(index))
with open(os.path.join(out, "oci-layout"), "wb") as f:
    f.write(dump({"imageLayoutVersion": "1.0.0"}))

print(f"manifest {manifest_digest}")
print(f"config   {config_digest}")
print(f"layer    {layer_digest} ({len(layer_bytes)} bytes, diff_id {diff_id})")
PY
find "$out" -type d -exec chmod 0755 {} +
find "$out" -type f -exec chmod 0644 {} +
echo "make-busybox: wrote $out from busybox-static $pkg_version"
