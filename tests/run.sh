#!/usr/bin/env bash
# tests/run.sh — the project's test command (CI runs it through .ci/run).
#
#   tests/run.sh [ARGS...]      ARGS go to `cargo test --workspace`, e.g. `-- --nocapture`
#
# On a fresh Debian 12 machine with only the Rust toolchain, run as root, it:
#   1. installs the container tools the integration tests drive (podman, skopeo,
#      umoci, ...), only if one is missing;
#   2. creates the unprivileged user $IMGFORGE_TEST_USER (default imgforge-test)
#      with subordinate uid/gid ranges and an XDG_RUNTIME_DIR, and checks that
#      rootless podman works for it (choosing the storage driver);
#   2b. makes (once; cached) a Debian bookworm base image with python3 and nodejs
#      for tests/buildpacks.rs and exports IMGFORGE_TEST_DEBIAN_BASE; registers
#      qemu-aarch64 in binfmt_misc, makes a Debian arm64 base under it and an OCI
#      index of both, and exports IMGFORGE_TEST_MULTIARCH_BASE;
#   3. runs cargo fmt --check, cargo clippy -D warnings and cargo test
#      (--no-fail-fast).
# Run as a normal user, it installs nothing: it says what is missing and exits 1,
# and the tests run podman as that user directly. See docs/testing.md.
#
# Environment:
#   IMGFORGE_TEST_USER            unprivileged user for podman/umoci (root only)
#   IMGFORGE_TEST_STORAGE_DRIVER  force a podman storage driver (overlay|vfs)
#   IMGFORGE_SKIP_LINT=1          skip fmt and clippy (for a quick local loop)
#   IMGFORGE_TEST_BASE_DIR        where the Debian base is cached (default /var/tmp/imgforge-test-base)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

if [[ -t 1 ]]; then
  export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-auto}
else
  export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
  export CARGO_TERM_PROGRESS_WHEN=${CARGO_TERM_PROGRESS_WHEN:-never}
fi
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
export DEBIAN_FRONTEND=noninteractive
# Root's PATH usually has these; a normal user's may not (runc, runuser live there).
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

step_no=0
step_start=$SECONDS
section() {
  if ((step_no > 0)); then echo "    (took $((SECONDS - step_start)) s)"; fi
  step_no=$((step_no + 1))
  step_start=$SECONDS
  echo
  echo "==> [$step_no] $*"
}
die() { echo "tests/run.sh: error: $*" >&2; exit 1; }

is_root=0
[[ $(id -u) -eq 0 ]] && is_root=1

# --- 1. tools -------------------------------------------------------------------
section "Container tools"
# command -> Debian package
declare -A tool_pkg=(
  [podman]=podman [skopeo]=skopeo [umoci]=umoci [buildah]=buildah [runc]=runc
  [newuidmap]=uidmap [newgidmap]=uidmap [slirp4netns]=slirp4netns
  [fuse-overlayfs]=fuse-overlayfs [pigz]=pigz [zstd]=zstd [git]=git
  [docker-registry]=docker-registry [/usr/bin/time]=time [python3]=python3
  [runuser]=util-linux [useradd]=passwd [tar]=tar [gzip]=gzip [catatonit]=catatonit
  [openssl]=openssl [htpasswd]=apache2-utils [qemu-aarch64-static]=qemu-user-static
  [debootstrap]=debootstrap
)
missing_pkgs=()
for tool in "${!tool_pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing_pkgs+=("${tool_pkg[$tool]}")
done
# TZ=Pacific/Auckland in the reproducibility tests only means something with tzdata
[[ -e /usr/share/zoneinfo/Pacific/Auckland ]] || missing_pkgs+=(tzdata)
mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u | sed '/^$/d')

if ((${#missing_pkgs[@]})); then
  if ((is_root)); then
    echo "installing: ${missing_pkgs[*]}"
    log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}"; } >"$log" 2>&1; then
      cat "$log" >&2
      die "apt-get install ${missing_pkgs[*]} failed"
    fi
    rm -f "$log"
  else
    echo "missing: ${missing_pkgs[*]}" >&2
    echo "install them with:" >&2
    echo "  sudo apt-get install --no-install-recommends ${missing_pkgs[*]}" >&2
    echo "or run tests/run.sh as root, which installs them." >&2
    exit 1
  fi
else
  echo "all present"
fi
for c in cargo rustc; do
  command -v "$c" >/dev/null || die "$c not found: install the Rust toolchain (rust-version in Cargo.toml)"
done
cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
echo "podman $(podman --version | awk '{print $3}'), skopeo $(skopeo --version | awk '{print $3}'), umoci $(umoci --version | awk '{print $3}'), $(cargo --version)"

# --- 2. the unprivileged test user -------------------------------------------------
# Rootless podman needs: a user with subordinate id ranges (newuidmap), a private
# XDG_RUNTIME_DIR, runc + cgroupfs (there is no systemd user session), and a
# storage driver that works here (native overlay in a user namespace when the
# kernel allows it, else vfs). The tests pass the same global flags.
podman_flags=(--runtime runc --cgroup-manager=cgroupfs)

if ((is_root)); then
  section "Rootless podman user"
  user=${IMGFORGE_TEST_USER:-imgforge-test}
  export IMGFORGE_TEST_USER=$user
  if ! getent passwd "$user" >/dev/null; then
    useradd --create-home --shell /bin/bash --user-group "$user"
    echo "created user $user"
  fi
  uid=$(id -u "$user")
  home=$(getent passwd "$user" | cut -d: -f6)
  [[ -d $home ]] || { mkdir -p "$home"; chown "$user:" "$home"; }
  migrate=0
  for f in /etc/subuid /etc/subgid; do
    touch "$f"
    if ! grep -q "^$user:" "$f" && ! grep -q "^$uid:" "$f"; then
      # first free 65536-block at or above 200000
      start=200000
      while awk -F: -v s="$start" '$2 < s + 65536 && $2 + $3 > s { found = 1 } END { exit !found }' "$f"; do
        start=$((start + 65536))
      done
      echo "$user:$start:65536" >>"$f"
      echo "added $user:$start:65536 to $f"
      migrate=1
    fi
  done
  runtime_dir=/run/user/$uid
  mkdir -p "$runtime_dir"
  chown "$user:" "$runtime_dir"
  chmod 0700 "$runtime_dir"

  as_user() {
    # cwd / : the checkout may live under a directory the user cannot enter
    (cd / && runuser -u "$user" -- env -u XDG_CONFIG_HOME -u XDG_DATA_HOME -u TMPDIR \
      -u CONTAINERS_CONF -u CONTAINERS_STORAGE_CONF -u DBUS_SESSION_BUS_ADDRESS \
      HOME="$home" USER="$user" LOGNAME="$user" XDG_RUNTIME_DIR="$runtime_dir" "$@")
  }
  if ((migrate)); then
    as_user podman "${podman_flags[@]}" system migrate >/dev/null 2>&1 || true
  fi

  # A copy of the busybox fixture the user can read, for the probe. Lowercase
  # path: podman names the image after it and rejects upper case.
  probe_dir=/tmp/imgforge-probe-$$
  rm -rf "$probe_dir"
  mkdir -m 0755 "$probe_dir"
  trap 'rm -rf "$probe_dir"' EXIT
  cp -R testdata/images/busybox "$probe_dir/busybox"
  chmod -R a+rX "$probe_dir"
  reset_storage() {
    as_user podman "${podman_flags[@]}" system reset --force >/dev/null 2>&1 || true
    rm -rf "$home/.local/share/containers/storage" "$runtime_dir/containers" "$runtime_dir/libpod"
  }
  probe() { # probe DRIVER -> 0 if a container runs with it
    as_user podman "${podman_flags[@]}" --storage-driver "$1" run --rm --network none \
      "oci:$probe_dir/busybox:latest" true >"$probe_dir/probe.log" 2>&1
  }
  drivers=(overlay vfs)
  [[ -n ${IMGFORGE_TEST_STORAGE_DRIVER:-} ]] && drivers=("$IMGFORGE_TEST_STORAGE_DRIVER")
  driver=
  for d in "${drivers[@]}"; do
    if probe "$d"; then driver=$d; break; fi
    if grep -q 'does not match our storage graph driver\|database configuration mismatch' "$probe_dir/probe.log"; then
      # Storage was set up with another driver. This user and its storage exist
      # only for the tests: start afresh.
      echo "resetting $user's podman storage (it was made with another storage driver)"
      reset_storage
      if probe "$d"; then driver=$d; break; fi
    fi
    echo "storage driver $d does not work here:"; sed 's/^/    /' "$probe_dir/probe.log"
  done
  [[ -n $driver ]] || die "rootless podman does not work for $user (see above)"
  export IMGFORGE_TEST_STORAGE_DRIVER=$driver
  # Same driver for anyone who runs podman as this user by hand.
  conf_dir=$home/.config/containers
  mkdir -p "$conf_dir"
  printf '[storage]\ndriver = "%s"\n' "$driver" >"$conf_dir/storage.conf"
  chown -R "$user:" "$home/.config"
  # Leftovers from an earlier, interrupted run.
  as_user podman "${podman_flags[@]}" --storage-driver "$driver" rm --all --force >/dev/null 2>&1 || true
  as_user podman "${podman_flags[@]}" --storage-driver "$driver" image prune --all --force >/dev/null 2>&1 || true
  echo "user $user (uid $uid), subuid $(grep "^$user:" /etc/subuid | cut -d: -f2-), XDG_RUNTIME_DIR $runtime_dir"
  echo "podman ${podman_flags[*]} --storage-driver $driver"
else
  section "Rootless podman (as $(id -un))"
  unset IMGFORGE_TEST_USER
  grep -q "^$(id -un):" /etc/subuid 2>/dev/null || grep -q "^$(id -u):" /etc/subuid 2>/dev/null ||
    die "no /etc/subuid range for $(id -un): sudo usermod --add-subuids 200000-265535 --add-subgids 200000-265535 $(id -un)"
  [[ -n ${XDG_RUNTIME_DIR:-} && -d ${XDG_RUNTIME_DIR:-} ]] ||
    die "XDG_RUNTIME_DIR is not set to an existing directory (rootless podman needs one)"
  # lowercase path: podman names the image after it and rejects upper case
  probe_dir=/tmp/imgforge-probe-$(id -u)-$$
  rm -rf "$probe_dir"
  mkdir -m 0755 "$probe_dir"
  trap 'rm -rf "$probe_dir"' EXIT
  cp -R testdata/images/busybox "$probe_dir/busybox"
  driver_flag=()
  [[ -n ${IMGFORGE_TEST_STORAGE_DRIVER:-} ]] && driver_flag=(--storage-driver "$IMGFORGE_TEST_STORAGE_DRIVER")
  if ! podman "${podman_flags[@]}" "${driver_flag[@]}" run --rm --network none \
      "oci:$probe_dir/busybox:latest" true >"$probe_dir/probe.log" 2>&1; then
    cat "$probe_dir/probe.log" >&2
    die "rootless podman does not work for $(id -un) (see above)"
  fi
  podman "${podman_flags[@]}" "${driver_flag[@]}" rmi --force "localhost$probe_dir/busybox:latest" >/dev/null 2>&1 || true
  echo "podman ${podman_flags[*]} ${driver_flag[*]} works"
fi

# --- 2b. Debian base images for tests/buildpacks.rs and tests/multiarch.rs ------------
# The Python and Node sample apps run on a real Debian (bookworm minbase + python3 +
# python3-pip + nodejs: buildpacks compile inside it, in the userns sandbox), made once
# with tests/make-base.sh (debootstrap, so root and network to the Debian mirror) and
# cached as an OCI layout. The tests read its reference from IMGFORGE_TEST_DEBIAN_BASE.
# The multi-platform tests also get a Debian arm64 root (minbase only: its packages are
# configured under qemu-user, which is slow) and an OCI index of both (amd64 with the
# extras, arm64/v8), IMGFORGE_TEST_MULTIARCH_BASE. Delete a cache directory to rebuild it.
debian_root=${IMGFORGE_TEST_BASE_DIR:-/var/tmp/imgforge-test-base}

# cached_layout DIR WHAT COMMAND...: runs COMMAND with the temporary layout path appended,
# once; DIR counts as made when its index.json names the bookworm tag.
layout_ready() { [[ -f $1/index.json ]] && grep -q '"bookworm"' "$1/index.json"; }
cached_layout() {
  local layout=$1 what=$2 lock tmp
  shift 2
  if layout_ready "$layout"; then
    echo "cached: $layout"
    return
  fi
  ((is_root)) || die "$what $layout is missing and making it needs root (debootstrap): run tests/run.sh once as root, or point IMGFORGE_TEST_BASE_DIR at a directory that has it"
  mkdir -p "$debian_root"
  chmod 0755 "$debian_root"
  # one builder at a time; a second run.sh waits and then finds it cached
  exec {lock}>"$debian_root/.lock"
  flock "$lock"
  if layout_ready "$layout"; then
    echo "cached (made by a concurrent run): $layout"
  else
    echo "making $what with tests/make-base.sh (debootstrap; takes a few minutes)"
    tmp=$layout.tmp-$$
    rm -rf "$tmp"
    if ! "$@" "$tmp"; then
      rm -rf "$tmp"
      die "making $what failed (see above)"
    fi
    # the unprivileged test user reads it (imgforge as that user, umoci, podman)
    chmod -R a+rX "$tmp"
    chmod 0755 "$tmp"
    rm -rf "$layout"
    mv "$tmp" "$layout"   # atomic: a half-made layout is never "cached"
    echo "made $layout ($(du -sh "$layout" | cut -f1))"
  fi
  flock -u "$lock"
  exec {lock}>&-
}
make_base() { bash "$repo/tests/make-base.sh" "$3" "$1" "$2"; } # PACKAGES ARCH DIR

section "Debian base image (bookworm + python3, python3-pip, nodejs)"
debian_extra=python3,python3-pip,nodejs
# the name carries everything that changes the contents: bump v1 when make-base.sh changes
debian_layout=$debian_root/debian-bookworm-${debian_extra//,/-}-v1
cached_layout "$debian_layout" "the Debian base image" make_base "$debian_extra" ""
export IMGFORGE_TEST_DEBIAN_BASE=oci:$debian_layout:bookworm

# The sample Python buildpack (testdata/buildpacks/python) installs from a local
# wheelhouse with `python3 -m pip`: the base's in the sandbox, the host's with
# --isolation host.
if ! python3 -m pip --version >/dev/null 2>&1; then
  if ((is_root)); then
    echo "installing: python3-pip"
    log=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip; } >"$log" 2>&1; then
      cat "$log" >&2
      die "apt-get install python3-pip failed"
    fi
    rm -f "$log"
  else
    die "python3 -m pip is missing: sudo apt-get install --no-install-recommends python3-pip"
  fi
fi
echo "IMGFORGE_TEST_DEBIAN_BASE=$IMGFORGE_TEST_DEBIAN_BASE"

section "Debian arm64 base image and the multi-platform index (qemu-user)"
# qemu-user through binfmt_misc, registered with the F flag (the kernel opens the
# interpreter once, so it works inside any root file system and user namespace).
binfmt=/proc/sys/fs/binfmt_misc
if ((is_root)); then
  [[ -f $binfmt/register ]] || mount -t binfmt_misc binfmt_misc "$binfmt" ||
    die "cannot mount binfmt_misc on $binfmt (a container without it cannot emulate arm64)"
  if [[ -f $binfmt/qemu-aarch64 ]] && ! grep -q '^flags:.*F' "$binfmt/qemu-aarch64"; then
    echo "re-registering qemu-aarch64 with the F flag"
    echo -1 >"$binfmt/qemu-aarch64"
  fi
  if [[ ! -f $binfmt/qemu-aarch64 ]]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf >"$binfmt/register"
    echo "registered qemu-aarch64 (qemu-user-static) in binfmt_misc"
  fi
fi
grep -qx enabled "$binfmt/qemu-aarch64" 2>/dev/null && grep -q '^flags:.*F' "$binfmt/qemu-aarch64" ||
  die "no qemu-aarch64 interpreter registered in binfmt_misc with the F flag: as root, apt-get install qemu-user-static, then cat /usr/lib/binfmt.d/qemu-aarch64.conf > $binfmt/register (or run tests/run.sh as root)"
echo "binfmt_misc: qemu-aarch64 $(sed -n 's/^flags: //p' "$binfmt/qemu-aarch64")"
arm64_layout=$debian_root/debian-bookworm-arm64-v1
cached_layout "$arm64_layout" "the Debian arm64 base image" make_base "" arm64
# The index only links the two layouts' blobs (a second): remade whenever either is newer.
multi_layout=$debian_root/debian-bookworm-amd64-${debian_extra//,/-}+arm64-v1
if [[ -f $multi_layout/index.json && ! $debian_layout/index.json -nt $multi_layout/index.json &&
      ! $arm64_layout/index.json -nt $multi_layout/index.json ]]; then
  echo "cached: $multi_layout"
else
  python3 "$repo/tests/make-index.py" "$multi_layout.tmp-$$" bookworm \
    "$debian_layout:bookworm" "$arm64_layout:bookworm:v8" || die "tests/make-index.py failed"
  chmod -R a+rX "$multi_layout.tmp-$$"
  rm -rf "$multi_layout"
  mv "$multi_layout.tmp-$$" "$multi_layout"
fi
export IMGFORGE_TEST_MULTIARCH_BASE=oci:$multi_layout:bookworm
echo "IMGFORGE_TEST_MULTIARCH_BASE=$IMGFORGE_TEST_MULTIARCH_BASE"

# --- 3. Rust checks ----------------------------------------------------------------
if [[ ${IMGFORGE_SKIP_LINT:-} != 1 ]]; then
  section "cargo fmt --all -- --check"
  cargo fmt --all -- --check

  section "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi

# --no-fail-fast: report every failing test binary, not just the first
section "cargo test --workspace --no-fail-fast $*"
cargo test --workspace --no-fail-fast "$@"
echo "    (took $((SECONDS - step_start)) s)"
echo
echo "tests/run.sh: all steps passed"
