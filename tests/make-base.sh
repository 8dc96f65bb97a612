#!/usr/bin/env bash
# tests/make-base.sh — make the Debian base image that the buildpack tests and the
# benchmarks build on.
#
#   tests/make-base.sh DIR [PACKAGES [ARCH]]
#
# DIR becomes an OCI image layout holding one image, tagged `bookworm`: Debian bookworm
# as `debootstrap --variant=minbase` lays it down, plus PACKAGES (comma-separated, default
# python3; "" for none), in a single layer that umoci packs, with /bin/bash as the command.
# Whatever was at DIR is replaced.
#
# ARCH is a Debian architecture (default: this machine's). For another one, e.g. arm64,
# debootstrap runs in two stages: `--foreign` unpacks the packages here, and
# `--second-stage` configures them inside the new root, whose programs then run under
# qemu-user through binfmt_misc. That needs an interpreter for ARCH registered with the F
# (fix-binary) flag (tests/run.sh registers qemu-aarch64 from qemu-user-static). The
# image's config says ARCH.
#
# Needs root (debootstrap) and the Debian packages debootstrap and umoci, which it installs
# when they are missing. Packages come from the mirror apt already uses. The bytes differ
# from one day to the next (the mirror moves on), so nothing may pin the image's digest.
#
# Callers cache the result under a name that records these inputs (tests/run.sh step 3,
# benches/compare.sh): change what this script puts into the image, and they must change
# that name too.
set -euo pipefail

usage() { echo "usage: tests/make-base.sh DIR [PACKAGES [ARCH]]" >&2; exit 2; }
(($# >= 1 && $# <= 3)) || usage
out=$1
packages=${2-python3}
host_arch=$(dpkg --print-architecture)
arch=${3:-$host_arch}
[[ -n $out ]] || usage
die() { echo "make-base.sh: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root: run this as root"

need=()
for tool in debootstrap umoci; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if ((${#need[@]})); then
  echo "make-base.sh: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Debian mirror this machine's apt reads from: deb822 sources first, then the
# one-line format, then Debian's own redirector.
mirror_of_apt() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    sed -n 's|^URIs:[[:space:]]*\([^[:space:]]*/debian\)/\{0,1\}[[:space:]]*$|\1|p' "$f"
  done
  if [[ -f /etc/apt/sources.list ]]; then
    awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { sub(/\/$/, "", $2); print $2 }' /etc/apt/sources.list
  fi
}
mirror=$(mirror_of_apt | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

# Scratch space beside DIR: the root file system is a few hundred MB, and the same file
# system keeps the final move cheap.
parent=$(dirname "$out")
mkdir -p "$parent"
scratch=$(mktemp -d "$parent/.make-base.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

debootstrap_args=(--variant=minbase)
[[ -n $packages ]] && debootstrap_args+=(--include="$packages")
if [[ $arch != "$host_arch" ]]; then
  case $arch in
    arm64) qemu=aarch64 ;;
    armhf | armel) qemu=arm ;;
    ppc64el) qemu=ppc64le ;;
    *) qemu=$arch ;;
  esac
  entry=/proc/sys/fs/binfmt_misc/qemu-$qemu
  grep -qx enabled "$entry" 2>/dev/null && grep -q '^flags:.*F' "$entry" ||
    die "no qemu-$qemu interpreter registered in binfmt_misc with the F flag, so $arch programs cannot run here: apt-get install qemu-user-static, then register it (tests/run.sh does: cat /usr/lib/binfmt.d/qemu-$qemu.conf > /proc/sys/fs/binfmt_misc/register)"
  debootstrap_args+=(--arch="$arch" --foreign)
fi
echo "make-base.sh: debootstrap bookworm $arch (minbase${packages:+ + $packages}) from $mirror" >&2
if ! debootstrap "${debootstrap_args[@]}" bookworm "$scratch/rootfs" "$mirror" \
    >"$scratch/debootstrap.log" 2>&1; then
  tail -n 20 "$scratch/debootstrap.log" >&2
  die "debootstrap failed (the last lines of its log are above)"
fi
if [[ $arch != "$host_arch" ]]; then
  echo "make-base.sh: debootstrap --second-stage under qemu-$qemu" >&2
  if ! chroot "$scratch/rootfs" /debootstrap/debootstrap --second-stage >>"$scratch/debootstrap.log" 2>&1; then
    tail -n 20 "$scratch/debootstrap.log" >&2
    die "debootstrap --second-stage failed (the last lines of its log are above)"
  fi
fi

# umoci makes an empty image, unpacks it into a bundle, and packs the bundle back with our
# root file system in place of the empty one: one layer, umoci's usual config.
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:bookworm"
umoci unpack --image "$out:bookworm" "$scratch/bundle" >/dev/null
rm -rf "$scratch/bundle/rootfs"
mv "$scratch/rootfs" "$scratch/bundle/rootfs"
umoci repack --image "$out:bookworm" "$scratch/bundle"
case $arch in # the config's architecture is Go's name for it (OCI image spec)
  armhf | armel) oci_arch=arm ;;
  ppc64el) oci_arch=ppc64le ;;
  i386) oci_arch=386 ;;
  *) oci_arch=$arch ;;
esac
umoci config --image "$out:bookworm" --config.cmd /bin/bash --architecture "$oci_arch"
echo "$out:bookworm"
