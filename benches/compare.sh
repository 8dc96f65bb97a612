#!/usr/bin/env bash
# End-to-end comparison of imgforge with other tools doing the same work. See benches/README.md.
#
# usage: benches/compare.sh [-n RUNS] [CASE...]
#   CASE: gzip_vs_umoci zstd_vs_floor gzip_floor big_layer_rss rebuild_vs_buildah push_vs_skopeo
#         build_image_unpack cnb_rebuild noop_vs_find push_known_blobs
#         (default: all of them, in that order)
# env:
#   RUNS=3                          runs per command; the table shows the median (also min and max)
#   BENCH_DIR=/var/tmp/imgforge-bench   cache of the base image and trees, and scratch space
#   MAKE_BASE=<repo>/tests/make-base.sh   what makes the Debian base image
#   MAKE_TREE=<repo>/benches/make-tree.py what makes the app trees
#   IMGFORGE=<path>                 imgforge binary to measure [default: cargo build --release here]
#   REV=<git revision>              build and measure that commit instead of the work tree, from a
#                                   clean export under $BENCH_DIR/src (for a repo with others'
#                                   uncommitted edits in it); also used for the write_layer example
#   TREES="synthetic node python"  the app trees cases 1-3, 6, 9 and 10 run on, side by side:
#                                   synthetic (make-tree.py), node (benches/apps/node + npm ci),
#                                   python (benches/apps/python + pip install --target)
#   TREE_FILES=12000 TREE_MB=100    the synthetic tree, also case 5's and 8's dependency store
#                                   (make-tree.py's default profile)
#   BIG_FILES=2000 BIG_MB=1024      app tree for the peak-RSS case
#   WAIT_LOAD=<cores>               before each case, wait (up to WAIT_MAX=1800 s) until other work
#                                   keeps at most this many cores busy (sampled over 3 s from
#                                   /proc/stat), e.g. 0.3 on a shared machine
#   KEEP=1                          keep the outputs of the last run under $BENCH_DIR/run
#   REBUILD_DIR=$BENCH_DIR/run/rebuild  case 5's scratch: the app, imgforge's cache and output,
#                                   buildah's storage (e.g. /dev/shm/imgforge-rebuild for tmpfs)
#   BUILDAH_USER=imgforge-test      as root, case 5 runs buildah rootless as this user
#   BUILDAH_STORAGE_DRIVER=overlay  its storage driver
#
# Exit status: 0 when every command ran and every output checked out, whether or not a target
# was met (this is a measurement); 1 when a tool failed or an output did not check out; 2 on
# bad usage.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/imgforge-bench}
MAKE_BASE=${MAKE_BASE:-$repo/tests/make-base.sh}
MAKE_TREE=${MAKE_TREE:-$here/make-tree.py}
TREE_FILES=${TREE_FILES:-12000}
TREE_MB=${TREE_MB:-100}
BIG_FILES=${BIG_FILES:-2000}
BIG_MB=${BIG_MB:-1024}
TREES=${TREES:-synthetic node python}
ALL_CASES=(gzip_vs_umoci zstd_vs_floor gzip_floor big_layer_rss rebuild_vs_buildah push_vs_skopeo build_image_unpack
  cnb_rebuild noop_vs_find push_known_blobs)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
cases=()
while [ $# -gt 0 ]; do
  case $1 in
    -n) RUNS=${2:?-n needs a number}; shift 2 ;;
    -n*) RUNS=${1#-n}; shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) cases+=("$1"); shift ;;
  esac
done
[ ${#cases[@]} -gt 0 ] || cases=("${ALL_CASES[@]}")
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive whole number, not $RUNS" >&2; exit 2; }
for t in $TREES; do
  case $t in
    synthetic | node | python) ;;
    *) echo "unknown tree $t in TREES (trees: synthetic node python)" >&2; exit 2 ;;
  esac
done

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools and inputs

need_tools() {
  local missing=() t
  for t in "$@"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing tools (Debian packages: ${missing[*]}); install them or run as root"
  log "installing ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# A cached input is a directory with a DIR.stamp file beside it naming what made it; anything else is
# made again (into a temporary name, renamed when complete, so an interrupted run leaves no
# half-made input behind).
stamp_of() { printf '%s %s\n' "$(sha256sum "$1" | cut -c1-16)" "${*:2}"; }

ensure_base() {
  local dir=$BENCH_DIR/base stamp
  stamp=$(stamp_of "$MAKE_BASE" bookworm)
  if [ -f "$dir/index.json" ] && [ "$(cat "$dir.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "making the Debian base needs root (debootstrap); run once as root"
  log "making the Debian base image (debootstrap, a few minutes) in $dir"
  rm -rf "$dir.tmp" "$dir.stamp"
  bash "$MAKE_BASE" "$dir.tmp" >&2
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  printf '%s\n' "$stamp" >"$dir.stamp"
}

ensure_tree() { # NAME FILES MB -> prints the tree's path
  local dir=$BENCH_DIR/$1 stamp
  stamp=$(stamp_of "$MAKE_TREE" "--files $2 --mb $3")
  if [ "$(cat "$dir.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -d "$dir" ]; then
    log "making app tree $dir (--files $2 --mb $3)"
    rm -rf "$dir" "$dir.tmp" "$dir.stamp"
    python3 "$MAKE_TREE" "$dir.tmp" --files "$2" --mb "$3"
    mv "$dir.tmp" "$dir"
    printf '%s\n' "$stamp" >"$dir.stamp"
  fi
  printf '%s\n' "$dir"
}

# A real app (benches/apps/NAME, with its Procfile) and its dependencies from the package
# registry: node_modules through `npm ci` from the committed package-lock.json (install scripts
# off: none of its packages needs one), or site-packages through `pip install --target` of the
# pinned requirements.txt. The stamp names the app's files (by hash) and the tools' versions;
# DIR.size records "FILES TAR_BYTES" of the tree as it was made.
ensure_real_app() { # NAME -> prints the tree's path
  local name=$1 src=$here/apps/$1 dir=$BENCH_DIR/app-$1 stamp tools
  case $name in
    node) tools="node $(node --version) npm $(npm --version)" ;;
    python) tools="$(python3 --version) pip $(python3 -m pip --version | cut -d' ' -f2)" ;;
  esac
  stamp="$(cd "$src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
  stamp="$stamp $name app, $tools"
  if [ "$(cat "$dir.stamp" 2>/dev/null)" != "$stamp" ] || [ ! -d "$dir" ]; then
    log "making the $name app tree $dir ($tools; dependencies from the registry)"
    rm -rf "$dir" "$dir.tmp" "$dir.stamp" "$dir.size"
    cp -a "$src" "$dir.tmp"
    case $name in
      node) (cd "$dir.tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2 ;;
      python) python3 -m pip install --no-cache-dir --disable-pip-version-check --no-input -q \
        --root-user-action=ignore --target "$dir.tmp/site-packages" -r "$dir.tmp/requirements.txt" >&2 ;;
    esac || die "installing the $name app's dependencies into $dir.tmp failed"
    printf '%s %s\n' "$(regular_files "$dir.tmp")" "$(warm_tree "$dir.tmp")" >"$dir.size"
    mv "$dir.tmp" "$dir"
    printf '%s\n' "$stamp" >"$dir.stamp"
  fi
  printf '%s\n' "$dir"
}

# Read every byte of a tree once so that it is in the page cache for every tool alike. (GNU tar
# skips reading file data when its output is /dev/null, hence the pipe.) Prints the tar size.
warm_tree() { tar -C "$1" -cf - . | wc -c; }

regular_files() { find "$1" -type f | wc -l; }

# SRC is the source tree that is built: the repo's work tree, or with REV a clean export of that
# commit (its own target dir under $BENCH_DIR, kept between runs so rebuilds are incremental).
prepare_src() {
  if [ -z "${REV:-}" ]; then
    SRC=$repo TARGET=${CARGO_TARGET_DIR:-$repo/target}
    COMMIT="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')"
    git -C "$repo" diff --quiet HEAD -- 2>/dev/null ||
      COMMIT="$COMMIT + uncommitted changes (git diff HEAD sha256 $(git -C "$repo" diff HEAD | sha256sum | cut -c1-12))"
    return 0
  fi
  local sha
  sha=$(git -C "$repo" rev-parse --verify "$REV^{commit}") || die "REV=$REV is not a commit"
  SRC=$BENCH_DIR/src/$sha TARGET=$BENCH_DIR/target COMMIT="$(git -C "$repo" rev-parse --short "$sha") (clean export)"
  if [ ! -f "$SRC/Cargo.toml" ]; then
    rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
    git -C "$repo" archive --format=tar "$sha" | tar -x -C "$SRC.tmp"
    mv "$SRC.tmp" "$SRC"
  fi
}

build_imgforge() {
  if [ -n "${IMGFORGE:-}" ]; then
    [ -x "$IMGFORGE" ] || die "IMGFORGE=$IMGFORGE is not an executable"
    COMMIT="? (IMGFORGE given)"
    return 0
  fi
  log "cargo build --release (imgforge) in $SRC"
  (cd "$SRC" && CARGO_TARGET_DIR=$TARGET cargo build --release -q --bin imgforge) ||
    die "cargo build --release failed"
  # A private copy, so that someone else's cargo build in the same target dir cannot swap
  # the binary in the middle of the measurements.
  mkdir -p "$BENCH_DIR/bin"
  cp "$TARGET/release/imgforge" "$BENCH_DIR/bin/imgforge"
  IMGFORGE=$BENCH_DIR/bin/imgforge
}

# ---------------------------------------------------------------------------------------------
# Measuring. Every measured command gets a KEY; each run appends "wall_ns rss_kib cpu_s" to
# $res/KEY.runs. Wall time comes from the clock around the command, peak RSS and CPU time from
# /usr/bin/time (for a pipeline run by bash -c, the RSS is that of its largest process).

measure() { # KEY CMD...
  local key=$1 t0 t1 out
  shift
  out=$res/$key
  t0=$(date +%s%N)
  if ! /usr/bin/time -f '%M %U %S' -o "$out.time" "$@" >"$out.stdout" 2>"$out.stderr"; then
    log "error: $key failed: $*"
    tail -n 20 "$out.stderr" >&2
    exit 1
  fi
  t1=$(date +%s%N)
  tail -n 1 "$out.time" | awk -v ns=$((t1 - t0)) '{ printf "%s %s %.2f\n", ns, $1, $2 + $3 }' >>"$out.runs"
}

# Statistics over a key's runs: median|min|max of wall seconds (median_fine: to the
# microsecond, for ratios of short runs), max RSS in KiB, median CPU s.
stat_of() { # KEY FIELD
  awk -v f="$2" '
    { w[NR] = $1 / 1e9; r = ($2 > r ? $2 : r); c[NR] = $3 }
    function med(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END {
      if (f == "median") printf "%.3f", med(w, NR)
      else if (f == "median_fine") printf "%.6f", med(w, NR)
      else if (f == "min") { m = w[1]; for (i in w) if (w[i] < m) m = w[i]; printf "%.3f", m }
      else if (f == "max") { m = w[1]; for (i in w) if (w[i] > m) m = w[i]; printf "%.3f", m }
      else if (f == "rss") printf "%d", r
      else if (f == "cpu") printf "%.2f", med(c, NR)
    }' "$res/$1.runs"
}

# A / B to 2 decimals (4 below 0.1, so that a ratio like 0.0031 is not printed as 0.00).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { r = (b > 0 ? a / b : 0); printf (r < 0.1 ? "%.4f" : "%.2f"), r }'; }

# A table row: CASE KEY LABEL REFKEY COMPRESSED_BYTES UNCOMPRESSED_BYTES [TREE] (REFKEY, sizes
# may be "-"; TREE is the app tree of the row, "-" when the case has its own input)
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${7:--}" >>"$res/table"; }

# A target: NAME MEASURED LIMIT UNIT [OP] (PASS when MEASURED <= LIMIT; OP ge: when MEASURED >=
# LIMIT; OP eq: when MEASURED is the string LIMIT, UNIT -); info: NAME MEASURED UNIT.
target() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-le}" >>"$res/targets"; }
info() { printf '%s\t%s\t-\t%s\tle\n' "$@" >>"$res/targets"; }
note() { printf '%s\n' "$*" >>"$res/notes"; }

# A command against its reference, in one case and tree: a row for each (SIZE, REFSIZE and TAR
# as for `row`, "-" when none) and the target median(KEY) / median(REF) <= LIMIT, named
# "TARGET [TREE]".
versus() { # CASE TREE TARGET LIMIT KEY LABEL SIZE REF REFLABEL REFSIZE TAR
  row "$1" "$5" "$6" "$8" "$7" "${11}" "$2"
  row "$1" "$8" "$9" "$8" "${10}" "${11}" "$2"
  target "$3 [$2]" "$(ratio "$(stat_of "$5" median_fine)" "$(stat_of "$8" median_fine)")" "$4" x
}

fresh() { rm -rf "$@"; sync; } # a fresh output, and no writeback left over from the last run

load1() { cut -d' ' -f1 /proc/loadavg; }

# How many cores were busy over the last 3 seconds (the load average lags by minutes).
busy_cores() {
  local a b
  a=$(head -n 1 /proc/stat)
  sleep 3
  b=$(head -n 1 /proc/stat)
  printf '%s\n%s\n' "$a" "$b" | awk '
    { idle[NR] = $5 + $6; tot[NR] = 0; for (i = 2; i <= NF; i++) tot[NR] += $i }
    END { d = tot[2] - tot[1]; printf "%.2f", (d > 0 ? (1 - (idle[2] - idle[1]) / d) * n : 0) }' n="$(nproc)"
}

wait_for_load() {
  [ -n "${WAIT_LOAD:-}" ] || return 0
  local waited=0 busy
  while busy=$(busy_cores) && awk -v b="$busy" -v m="$WAIT_LOAD" 'BEGIN { exit !(b > m) }'; do
    if [ "$waited" -ge "${WAIT_MAX:-1800}" ]; then
      log "still $busy cores busy after ${waited}s: going on anyway"
      return 0
    fi
    sleep 5
    waited=$((waited + 8))
  done
  log "$busy cores busy before the case (waited ${waited}s)"
}

# ---------------------------------------------------------------------------------------------
# Checks on outputs

# The manifest of an OCI layout, by tag, as JSON on stdout; skopeo must accept the image.
check_layout() { # DIR TAG
  skopeo inspect "oci:$1:$2" >/dev/null 2>"$res/skopeo.err" || {
    cat "$res/skopeo.err" >&2
    die "skopeo inspect oci:$1:$2 failed"
  }
  skopeo inspect --raw "oci:$1:$2"
}

# Compressed size and path of the image's top layer: "SIZE PATH".
top_layer() { # DIR TAG
  check_layout "$1" "$2" | python3 -c '
import json, sys
m = json.load(sys.stdin)
l = m["layers"][-1]
print(l["size"], sys.argv[1] + "/blobs/" + l["digest"].replace(":", "/"))' "$1"
}

# The layer must hold every regular file of the tree, so that every tool did the same work.
# A complaint from tar about the end of the stream is noted, not fatal (umoci 0.4.7's layers
# end without the end-of-archive blocks, which tar -t reports as "Unexpected EOF").
check_layer_files() { # BLOB DECOMPRESSOR EXPECTED WHO
  local n list=$res/layer.list rc
  set +e
  "$2" -dc <"$1" | tar -tvf - >"$list" 2>"$list.err"
  rc=("${PIPESTATUS[@]}")
  set -e
  [ "${rc[0]}" = 0 ] || die "$4: $2 -dc of its layer failed"
  n=$(grep -c '^-' "$list" || true)
  [ "$n" = "$3" ] || die "$4: its layer holds $n regular files, the tree $3"
  [ "${rc[1]}" = 0 ] || note "$4: all $n files are there, but tar -t says: $(head -n 1 "$list.err")"
}

# ---------------------------------------------------------------------------------------------
# Cases. Each is a function case_NAME, run in a subshell in the order given; it measures with
# `measure`, adds table rows with `row` and targets with `target`/`info`. To add a case, write
# case_NAME and add NAME to ALL_CASES.

imgforge_build() { # KEY TREE OUT CACHE COMPRESSION
  fresh "$3" "$4"
  measure "$1" "$IMGFORGE" build "$2" --base "oci:$BASE:bookworm" -t "oci:$3:app" \
    --compression "$5" --cache-dir "$4" -q
}

# The app layer of an imgforge image, "SIZE PATH": the layer whose history says "app at" (an
# app with a Procfile also gets a launcher layer on top).
app_layer() { # DIR TAG
  local name digest size
  while read -r name digest size; do
    case $name in app_at_*)
      printf '%s %s\n' "$size" "$1/blobs/${digest/://}"
      return 0
      ;;
    esac
  done < <(layout_layers "$1" "$2")
  die "the image at $1:$2 has no app layer"
}

# 1. imgforge gzip cold build vs umoci insert of the same tree into a copy of the base, for each
# tree. The real trees have a Procfile, so imgforge's cold build also learns the base's facts
# (its shell and accounts) and writes a launcher layer.
case_gzip_vs_umoci() {
  local t tree out cache u size blob usize ublob al
  for t in $TREES; do
    tree=${TPATH[$t]} out=$run/if-gzip-$t cache=$run/cache-gzip-$t u=$run/umoci-$t
    for _ in $(seq "$RUNS"); do
      imgforge_build "imgforge_gzip_$t" "$tree" "$out" "$cache" gzip
      fresh "$u"
      cp -a "$BASE" "$u" && sync
      measure "umoci_insert_$t" umoci insert --rootless --image "$u:bookworm" "$tree" /workspace
    done
    al=$(app_layer "$out" app)
    read -r size blob <<<"$al"
    read -r usize ublob < <(top_layer "$u" bookworm)
    check_layer_files "$blob" gzip "${TREG[$t]}" "imgforge gzip ($t)"
    check_layer_files "$ublob" gzip "${TREG[$t]}" "umoci insert ($t)"
    versus 1 "$t" "gzip build vs umoci insert" 0.80 "imgforge_gzip_$t" "imgforge build, gzip, cold" "$size" \
      "umoci_insert_$t" "umoci insert --rootless" "$usize" "${TTAR[$t]}"
  done
}

# 2. imgforge zstd cold build vs tar --sort=name | zstd -T0 -3, the floor for a zstd layer, for
# each tree.
case_zstd_vs_floor() {
  local t tree out cache f size blob al
  for t in $TREES; do
    tree=${TPATH[$t]} out=$run/if-zstd-$t cache=$run/cache-zstd-$t f=$run/floor-$t.tar.zst
    for _ in $(seq "$RUNS"); do
      imgforge_build "imgforge_zstd_$t" "$tree" "$out" "$cache" zstd
      fresh "$f"
      # shellcheck disable=SC2016 # expanded by the inner bash
      measure "zstd_floor_$t" bash -c 'set -o pipefail; tar --sort=name -C "$1" -cf - . | zstd -q -T0 -3 >"$2"' _ "$tree" "$f"
    done
    al=$(app_layer "$out" app)
    read -r size blob <<<"$al"
    check_layer_files "$blob" zstd "${TREG[$t]}" "imgforge zstd ($t)"
    versus 2 "$t" "zstd build vs tar|zstd -T0 -3" 1.20 "imgforge_zstd_$t" "imgforge build, zstd, cold" "$size" \
      "zstd_floor_$t" "tar | zstd -T0 -3 (floor)" "$(stat -c %s "$f")" "${TTAR[$t]}"
  done
}

# 3. tar --sort=name | pigz -4: a parallel gzip of the same bytes, for each tree; the gzip
# build (case 1, when it ran) must not take longer.
case_gzip_floor() {
  local t f
  for t in $TREES; do
    f=$run/floor-$t.tar.gz
    for _ in $(seq "$RUNS"); do
      fresh "$f"
      # shellcheck disable=SC2016 # expanded by the inner bash
      measure "pigz_floor_$t" bash -c 'set -o pipefail; tar --sort=name -C "$1" -cf - . | pigz -4 >"$2"' _ "${TPATH[$t]}" "$f"
    done
    row 3 "pigz_floor_$t" "tar | pigz -4 (floor)" "pigz_floor_$t" "$(stat -c %s "$f")" "${TTAR[$t]}" "$t"
    if [ -s "$res/imgforge_gzip_$t.runs" ]; then
      target "gzip build vs tar|pigz -4 [$t]" \
        "$(ratio "$(stat_of "imgforge_gzip_$t" median)" "$(stat_of "pigz_floor_$t" median)")" 1.00 x
    fi
  done
}

# 4. Peak RSS of imgforge writing a ~1 GiB gzip layer (and of the write_layer example, if any).
case_big_layer_rss() {
  local big out=$run/if-big cache=$run/cache-big size blob tar_bytes ex
  big=$(ensure_tree "app-${BIG_FILES}f-${BIG_MB}m" "$BIG_FILES" "$BIG_MB")
  tar_bytes=$(warm_tree "$big")
  for _ in $(seq "$RUNS"); do
    imgforge_build imgforge_big "$big" "$out" "$cache" gzip
  done
  read -r size blob < <(top_layer "$out" app)
  row 4 imgforge_big "imgforge build, gzip, ${BIG_MB} MB tree" - "$size" "$tar_bytes"
  target "peak RSS, ${BIG_MB} MB gzip layer" \
    "$(awk -v k="$(stat_of imgforge_big rss)" 'BEGIN { printf "%.1f", k / 1024 }')" 64 MiB
  rm -rf "$out" "$cache"

  if [ -f "$SRC/layers/examples/write_layer.rs" ]; then
    log "cargo build --release -p imgforge-layers --example write_layer"
    (cd "$SRC" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p imgforge-layers --example write_layer) ||
      die "building the write_layer example failed"
    cp "$TARGET/release/examples/write_layer" "$BENCH_DIR/bin/write_layer"
    ex=$BENCH_DIR/bin/write_layer
    mkdir -p "$run/write_layer"
    for _ in $(seq "$RUNS"); do
      (cd "$run/write_layer" && measure write_layer "$ex" 1024)
    done
    row 4 write_layer "example write_layer 1024" - - -
    note "write_layer 1024 (last run) says: $(tail -n 1 "$res/write_layer.stdout")"
    target "peak RSS, example write_layer 1024" \
      "$(awk -v k="$(stat_of write_layer rss)" 'BEGIN { printf "%.1f", k / 1024 }')" 64 MiB
  else
    log "layers/examples/write_layer.rs is absent: skipping the example"
  fi
}

# 5. Rebuilds of a buildpack app: imgforge vs `buildah bud --layers` (rootless, --isolation
# chroot) with an equivalent Containerfile, on the same workload: a small app (a few files)
# whose dependencies, the make-tree.py tree, an offline buildpack (benches/buildpack) copies
# to /app/node_modules. Per run, for each tool in turn: a cold build, a no-op rebuild and a
# rebuild after one app source file changed. imgforge keeps its --cache-dir (fresh for the
# cold build) and writes to the same OCI layout; buildah commits to a private storage from
# which the app's images and cached layers are removed (untimed) before its cold build.

# The app: package.json, package-lock.json (its "integrity" names the dependency store, so a
# new store is a new lockfile), server.js, lib/*.js, public/index.html. lib/greeting.js is the
# file the one-file rebuild changes: VERSION goes into it.
make_rebuild_app() { # DIR VERSION
  local d=$1 integrity
  integrity=$(cut -d' ' -f1-3 "$TREE.stamp" | sha256sum | cut -c1-32)
  mkdir -p "$d/lib" "$d/public"
  cat >"$d/package.json" <<'JSON'
{
  "name": "imgforge-bench-app",
  "version": "1.0.0",
  "private": true,
  "main": "server.js",
  "scripts": { "start": "node server.js" },
  "dependencies": { "bench-deps": "1.0.0" }
}
JSON
  cat >"$d/package-lock.json" <<JSON
{
  "name": "imgforge-bench-app",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": { "name": "imgforge-bench-app", "version": "1.0.0", "dependencies": { "bench-deps": "1.0.0" } },
    "node_modules/bench-deps": { "version": "1.0.0", "integrity": "sha256-$integrity" }
  }
}
JSON
  cat >"$d/server.js" <<'JS'
'use strict';
const http = require('http');
const routes = require('./lib/routes');
const port = Number(process.env.PORT || 5000);
http.createServer(routes.handle).listen(port, '0.0.0.0', () => console.log(`listening on ${port}`));
JS
  cat >"$d/lib/routes.js" <<'JS'
'use strict';
const fs = require('fs');
const path = require('path');
const greeting = require('./greeting');
const index = fs.readFileSync(path.join(__dirname, '..', 'public', 'index.html'));
exports.handle = (req, res) => {
  if (req.url === '/') { res.writeHead(200, { 'Content-Type': 'text/html' }); return res.end(index); }
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(greeting.hello(req.url.slice(1)) + '\n');
};
JS
  # shellcheck disable=SC2016 # JavaScript, not shell
  printf '%s\n' "'use strict';" "// $2" 'exports.hello = (who) => `hello, ${who || "world"}`;' \
    >"$d/lib/greeting.js"
  printf '%s\n' '<!doctype html>' '<title>imgforge bench app</title>' '<h1>imgforge bench app</h1>' \
    >"$d/public/index.html"
}

# buildah as $BUILDAH_USER (when root; else as ourselves) with a private storage under DIR:
# sets the array BH (the command up to and including buildah's global options).
buildah_setup() { # DIR
  local user=${BUILDAH_USER:-imgforge-test} uid home rt
  if [ "$(id -u)" = 0 ]; then
    uid=$(id -u "$user" 2>/dev/null) ||
      die "buildah runs rootless as BUILDAH_USER=$user, which does not exist (tests/run.sh creates imgforge-test)"
    home=$(getent passwd "$user" | cut -d: -f6)
    rt=/run/user/$uid
    [ -d "$rt" ] || { mkdir -p "$rt" && chown "$user:" "$rt" && chmod 0700 "$rt"; }
    BH=(runuser -u "$user" -- env -C / -u XDG_CONFIG_HOME -u XDG_DATA_HOME -u TMPDIR
      -u CONTAINERS_CONF -u CONTAINERS_STORAGE_CONF HOME="$home" USER="$user" LOGNAME="$user"
      XDG_RUNTIME_DIR="$rt")
  else
    user=$(id -un)
    rt=${XDG_RUNTIME_DIR:?rootless buildah needs XDG_RUNTIME_DIR}
    BH=(env -C /)
  fi
  BH_ROOT=$1/buildah-storage BH_RUNROOT=$rt/imgforge-bench-$$ BH_USER=$user
  mkdir -p "$BH_ROOT"
  [ "$(id -u)" != 0 ] || chown "$user:" "$BH_ROOT"
  BH+=(buildah --root "$BH_ROOT" --runroot "$BH_RUNROOT" --storage-driver "${BUILDAH_STORAGE_DRIVER:-overlay}")
}

# At the end of the case: buildah's storage goes (unless KEEP=1; its run root always), and so
# does the case's scratch dir (unless KEEP=1).
rebuild_cleanup() { # DIR
  local gone=("$BH_RUNROOT")
  if [ "${KEEP:-0}" != 1 ]; then
    "${BH[@]}" rmi --all --force >/dev/null 2>&1 || true
    gone+=("$BH_ROOT" "$1")
  fi
  if [ "$(id -u)" = 0 ]; then
    rm -rf "${gone[@]}"
  else # files of the storage belong to subordinate ids
    buildah unshare rm -rf "${gone[@]}" 2>/dev/null || rm -rf "${gone[@]}"
  fi
}

# "NAME DIGEST SIZE" for every layer of an image in a layout, NAME from the layer's history
# entry: the part after "imgforge build: " (app, runtime:node_modules, launcher), else
# "base". skopeo must accept the image.
layout_layers() { # DIR TAG
  check_layout "$1" "$2" | python3 -c '
import json, sys
m = json.load(sys.stdin)
alg, hex_ = m["config"]["digest"].split(":")
cfg = json.load(open(sys.argv[1] + "/blobs/" + alg + "/" + hex_))
names = [h.get("created_by", "?") for h in cfg.get("history", []) if not h.get("empty_layer")]
if len(names) != len(m["layers"]):
    names = ["?"] * len(m["layers"])
for n, l in zip(names, m["layers"]):
    n = n.split("imgforge build: ", 1)[1] if n.startswith("imgforge build: ") else "base"
    print(n.replace(" ", "_"), l["digest"], l["size"])' "$1"
}

# The names of the layers whose digest differs between two layout_layers listings ("none"),
# or "layer-list:A,B->A,C" when the lists themselves differ.
changed_layers() { # BEFORE AFTER
  python3 - "$1" "$2" <<'PY'
import sys
a = [l.split() for l in open(sys.argv[1]) if l.strip()]
b = [l.split() for l in open(sys.argv[2]) if l.strip()]
if [x[0] for x in a] != [x[0] for x in b]:
    print("layer-list:" + ",".join(x[0] for x in a) + "->" + ",".join(x[0] for x in b))
else:
    print(",".join(x[0] for x, y in zip(a, b) if x[1] != y[1]) or "none")
PY
}

# The first 12 hex digits of each diff_id of a `buildah inspect --type image` document.
buildah_diff_ids() { # JSON
  python3 -c 'import json, sys
print(" ".join(d.split(":")[1][:12] for d in json.load(open(sys.argv[1]))["OCIv1"]["rootfs"]["diff_ids"]))' "$1"
}

# One run of imgforge in a rebuild case, with KEY_cold, KEY_noop and KEY_one measured: a cold
# build (fresh OUT and CACHE), a no-op rebuild (checked to give the cold build's manifest and
# to leave it at OUT:app) and a rebuild after one app file changed (with run number RUN).
# $res/KEY.before and KEY.after list the layers; sets `changed` to what the change changed.
imgforge_rebuilds() { # KEY RUN APP OUT CACHE CMD...
  local key=$1 i=$2 app=$3 out=$4 cache=$5 cold
  shift 5
  make_rebuild_app "$app" v0
  fresh "$out" "$cache"
  measure "${key}_cold" "$@"
  cold=$(tr -d '\n' <"$res/${key}_cold.stdout")
  layout_layers "$out" app >"$res/$key.before"
  sync
  measure "${key}_noop" "$@"
  [ "$(tr -d '\n' <"$res/${key}_noop.stdout")" = "$cold" ] ||
    die "imgforge's no-op rebuild ($key) made $(cat "$res/${key}_noop.stdout"), its cold build $cold"
  [ "sha256:$(check_layout "$out" app | sha256sum | cut -d' ' -f1)" = "$cold" ] ||
    die "after the no-op rebuild ($key), $out:app is not the cold build's manifest $cold"
  make_rebuild_app "$app" "v$i"
  sync
  measure "${key}_one" "$@"
  layout_layers "$out" app >"$res/$key.after"
  changed=$(changed_layers "$res/$key.before" "$res/$key.after")
}

case_rebuild_vs_buildah() {
  local rb=${REBUILD_DIR:-$run/rebuild} bp ctx app out cache i changed bad=0 id kept \
    nm_blob nm_size base_ref=localhost/imgforge-bench-base:bookworm
  command -v buildah >/dev/null || die "buildah is not installed (Debian package buildah)"
  umask 022
  fresh "$rb"
  mkdir -p "$rb"
  chmod 0755 "$rb"
  bp=$rb/buildpack ctx=$rb/ctx app=$rb/ctx/app out=$rb/if-out cache=$rb/if-cache

  # The buildpack, pointed at its dependency store; the buildah context: the same app dir, a
  # copy of the store as node_modules (hard links when it can), and the Containerfile.
  cp -a "$here/buildpack" "$bp"
  ln -s "$TREE" "$bp/store"
  mkdir -p "$ctx"
  make_rebuild_app "$app" v0
  cp -al "$TREE" "$ctx/node_modules" 2>/dev/null || { rm -rf "$ctx/node_modules"; cp -a "$TREE" "$ctx/node_modules"; }
  printf '%s\n' "FROM $base_ref" 'COPY node_modules /app/node_modules' 'COPY app /app' 'WORKDIR /app' \
    'ENV PORT=5000 HOME=/app' 'CMD ["/bin/sh", "-c", "node server.js"]' >"$ctx/Containerfile"

  # The base for both: a copy of the layout (blobs hard-linked when it can) in the scratch dir,
  # so that imgforge links its blob into its output as it does for cases 1-4 and buildah's
  # user can read its index.json. buildah pulls it into its private storage once, untimed.
  buildah_setup "$rb"
  # shellcheck disable=SC2064 # rb is expanded now, on purpose
  trap "rebuild_cleanup '$rb'" EXIT
  mkdir -p "$rb/base"
  cp -al "$BASE/blobs" "$rb/base/" 2>/dev/null || { rm -rf "$rb/base/blobs"; cp -a "$BASE/blobs" "$rb/base/"; }
  cp "$BASE/index.json" "$BASE/oci-layout" "$rb/base/"
  chmod a+r "$rb/base/index.json" "$rb/base/oci-layout"
  log "buildah: pulling the base into $BH_ROOT as $BH_USER (untimed)"
  id=$("${BH[@]}" pull -q "oci:$rb/base:bookworm" 2>"$res/buildah-pull.err") ||
    { cat "$res/buildah-pull.err" >&2; die "buildah pull oci:$rb/base:bookworm failed"; }
  "${BH[@]}" tag "$id" "$base_ref" >/dev/null || die "buildah tag $id $base_ref failed"

  # --isolation host: the buildpack reads its dependency store through a host symlink, and
  # buildah runs no RUN step either; case 7 measures the sandbox on its own.
  local ifb=("$IMGFORGE" build "$app" --base "oci:$rb/base:bookworm" -b "$bp" -t "oci:$out:app" --isolation host
    --cache-dir "$cache" -q)
  local bud=("${BH[@]}" bud --layers --isolation chroot --pull=never -q
    -t localhost/imgforge-bench-app:latest -f "$ctx/Containerfile" "$ctx")

  for i in $(seq "$RUNS"); do
    imgforge_rebuilds rb_if "$i" "$app" "$out" "$cache" "${ifb[@]}"
    # The floor under any Heroku-classic rebuild: the contract reruns bin/compile, so time
    # the buildpack's own compile for this change alone, on copies (untimed) of the changed
    # app and of the cache imgforge kept.
    kept=("$cache"/buildpack-cache-v1/*/)
    if [ "${#kept[@]}" != 1 ] || [ ! -d "${kept[0]}" ]; then
      die "expected one kept buildpack cache under $cache/buildpack-cache-v1, found: ${kept[*]}"
    fi
    rm -rf "$rb/floor"
    mkdir -p "$rb/floor/env"
    cp -a "$app" "$rb/floor/build"
    cp -a "${kept[0]}" "$rb/floor/cache"
    sync
    measure rb_bp_compile env STACK=heroku-24 "$bp/bin/compile" "$rb/floor/build" "$rb/floor/cache" "$rb/floor/env"
    rm -rf "$rb/floor"
    if [ "$changed" != app ]; then
      bad=1
      log "run $i: imgforge's one-file rebuild changed these layers: $changed (expected: app only)"
      note "run $i: imgforge's one-file rebuild changed these layers: $changed (expected: app only)"
    fi

    # buildah: no image of the app and no cached layer left, then the same three builds.
    "${BH[@]}" rmi -f localhost/imgforge-bench-app:latest >/dev/null 2>&1 || true
    "${BH[@]}" rmi --prune >/dev/null 2>&1 || true
    [ "$("${BH[@]}" images -a -q | wc -l)" = 1 ] ||
      die "buildah's storage still holds more than the base: $("${BH[@]}" images -a 2>&1)"
    make_rebuild_app "$app" v0
    sync
    measure rb_bh_cold "${bud[@]}"
    id=$(tail -n 1 "$res/rb_bh_cold.stdout")
    "${BH[@]}" inspect --type image localhost/imgforge-bench-app:latest >"$res/bh.before.json"
    sync
    measure rb_bh_noop "${bud[@]}"
    [ "$(tail -n 1 "$res/rb_bh_noop.stdout")" = "$id" ] ||
      note "run $i: buildah's no-op rebuild made image $(tail -n 1 "$res/rb_bh_noop.stdout"), its cold build $id"
    make_rebuild_app "$app" "v$i"
    sync
    measure rb_bh_one "${bud[@]}"
    "${BH[@]}" inspect --type image localhost/imgforge-bench-app:latest >"$res/bh.after.json"
  done

  # The last run's images: imgforge's layers before and after the one-file change, its
  # node_modules layer holding every file of the tree; buildah's diff_ids.
  note "imgforge layers, cold build (v0) -> after the one-file change (v$RUNS):"
  paste -d' ' "$res/rb_if.before" "$res/rb_if.after" | while read -r n1 d1 s1 _ d2 s2; do
    note "$(printf '  %-22s %s %9s -> %s %9s  %s' "$n1" "${d1:7:12}" "$s1" "${d2:7:12}" "$s2" \
      "$([ "$d1" = "$d2" ] && echo same || echo CHANGED)")"
  done
  read -r _ nm_blob nm_size < <(grep '^runtime:node_modules ' "$res/rb_if.after") ||
    die "imgforge's image has no runtime:node_modules layer (it has: $(cut -d' ' -f1 "$res/rb_if.after" | tr '\n' ' '))"
  check_layer_files "$out/blobs/${nm_blob/://}" gzip "$TREE_REGULAR" "imgforge node_modules layer"
  note "buildah diff_ids, cold build -> after the one-file change: $(buildah_diff_ids "$res/bh.before.json") -> $(buildah_diff_ids "$res/bh.after.json")"

  row 5 rb_if_cold "imgforge buildpack build, cold" rb_if_cold "$nm_size" "$TREE_TAR"
  row 5 rb_if_noop "imgforge rebuild, nothing changed" rb_if_cold - -
  row 5 rb_if_one "imgforge rebuild, 1 file changed" rb_if_cold - -
  row 5 rb_bp_compile "bin/compile alone, 1 file changed" rb_if_cold - -
  row 5 rb_bh_cold "buildah bud --layers, cold" rb_bh_cold - -
  row 5 rb_bh_noop "buildah bud, nothing changed" rb_bh_cold - -
  row 5 rb_bh_one "buildah bud, 1 file changed" rb_bh_cold - -
  target "imgforge no-op rebuild / cold build" \
    "$(ratio "$(stat_of rb_if_noop median_fine)" "$(stat_of rb_if_cold median_fine)")" 0.02 x
  target "buildah no-op / imgforge no-op" \
    "$(ratio "$(stat_of rb_bh_noop median_fine)" "$(stat_of rb_if_noop median_fine)")" 100 x ge
  target "imgforge 1-file rebuild / cold build" \
    "$(ratio "$(stat_of rb_if_one median_fine)" "$(stat_of rb_if_cold median_fine)")" 0.10 x
  info "floor: bin/compile alone (1 file changed) / imgforge cold" \
    "$(ratio "$(stat_of rb_bp_compile median_fine)" "$(stat_of rb_if_cold median_fine)")" x
  info "imgforge's own part: (1-file rebuild - bin/compile alone) / cold" \
    "$(ratio "$(awk -v a="$(stat_of rb_if_one median_fine)" -v b="$(stat_of rb_bp_compile median_fine)" \
      'BEGIN { printf "%.6f", a - b }')" "$(stat_of rb_if_cold median_fine)")" x
  target "layers a 1-file edit changes (imgforge)" "$( ((bad)) && echo not-only-app || echo app)" app - eq
  info "buildah cold / imgforge cold (no target)" \
    "$(ratio "$(stat_of rb_bh_cold median_fine)" "$(stat_of rb_if_cold median_fine)")" x
  info "buildah 1-file / imgforge 1-file (no target)" \
    "$(ratio "$(stat_of rb_bh_one median_fine)" "$(stat_of rb_if_one median_fine)")" x
  ((bad == 0)) || die "imgforge's one-file rebuild changed more than the app layer (see the notes)"
}

# 6. Pushing a fresh image (the Debian base + an app tree, gzip) from an OCI layout to a local
# docker-registry, for each tree: imgforge copy vs skopeo copy. Each run of each tool gets a
# registry with empty storage.
REG_PID=
start_registry() { # DIR -> sets REG_PID, REG_HOST
  local dir=$1 port
  fresh "$dir" && mkdir -p "$dir/storage"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  REG_HOST=127.0.0.1:$port
  printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: bench\n' \
    "$dir/storage" "$REG_HOST" >"$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  die "docker-registry did not start: $(cat "$dir/log")"
}
stop_registry() {
  [ -n "$REG_PID" ] || return 0
  kill "$REG_PID" 2>/dev/null || true
  wait "$REG_PID" 2>/dev/null || true
  REG_PID=
}

# The image cases 6 and 10 push: the Debian base + a tree, gzip, built once (not measured).
# Prints its manifest digest.
push_image() { # TREE IMG CACHE
  fresh "$2" "$3"
  "$IMGFORGE" build "$1" --base "oci:$BASE:bookworm" -t "oci:$2:app" --cache-dir "$3" -q >"$res/push-digest" ||
    die "building the image to push from $1 failed"
  cat "$res/push-digest"
}

# Push the image IMG (an OCI layout, tag app) to REPO of the running registry with imgforge
# (keeping CACHE) or skopeo, measured as KEY (untimed when KEY is -); the registry must then
# serve DIGEST there.
push_with() { # imgforge|skopeo KEY IMG CACHE REPO DIGEST
  local ref=$REG_HOST/$5 cmd d
  case $1 in
    imgforge) cmd=("$IMGFORGE" copy "oci:$3:app" "docker://$ref" --cache-dir "$4" -q) ;;
    skopeo) cmd=(skopeo copy --quiet --dest-tls-verify=false "oci:$3:app" "docker://$ref") ;;
  esac
  if [ "$2" = - ]; then
    "${cmd[@]}" >/dev/null 2>"$res/push.err" || die "$1's push to $ref failed: $(tail -n 5 "$res/push.err")"
  else
    measure "$2" "${cmd[@]}"
  fi
  d=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$ref") || die "$1: skopeo inspect docker://$ref failed"
  [ "$d" = "$6" ] || die "$1 pushed $d to $ref, expected $6"
}

# A push case (6, 10), for each tree: build the image to push once (push_image), then RUNS
# times start a registry with empty storage, empty CACHE, call BODY TREE IMG CACHE DIGEST RUN
# (which measures KEY_imgforge_TREE and KEY_skopeo_TREE, and may restart the registry) and stop
# the registry; then the rows and the target imgforge / skopeo <= 1.0.
push_case() { # CASE BODY KEY TARGET IMGFORGE_LABEL SKOPEO_LABEL
  local t img cache digest i
  trap stop_registry EXIT
  for t in $TREES; do
    img=$run/$3-img-$t cache=$run/$3-cache-$t
    digest=$(push_image "${TPATH[$t]}" "$img" "$cache")
    for i in $(seq "$RUNS"); do
      start_registry "$run/registry"
      fresh "$cache"
      "$2" "$t" "$img" "$cache" "$digest" "$i"
      stop_registry
    done
    note "case $1 [$t]: image $(du -sb "$img/blobs" | cut -f1) bytes of blobs"
    versus "$1" "$t" "$4" 1.00 "${3}_imgforge_$t" "$5" - "${3}_skopeo_$t" "$6" - -
  done
  note "case $1: registry: docker-registry $(docker-registry --version | awk '{print $3}') on 127.0.0.1"
}

# One run of case 6: each tool pushes to a registry of its own with empty storage.
push_fresh_run() { # TREE IMG CACHE DIGEST RUN
  push_with imgforge "push_imgforge_$1" "$2" "$3" bench/app:1 "$4"
  stop_registry
  start_registry "$run/registry"
  push_with skopeo "push_skopeo_$1" "$2" - bench/app:1 "$4"
}

case_push_vs_skopeo() {
  push_case 6 push_fresh_run push "push fresh image vs skopeo copy" "imgforge copy oci: docker:// (fresh)" \
    "skopeo copy oci: docker:// (fresh)"
}

# 10. Pushing to a fresh repository of a registry that already holds every blob in another
# repository. Per run, one registry: each tool first pushes the image to its own seed repository
# (untimed: imgforge with the --cache-dir it then keeps, skopeo filling its persistent blob-info
# cache), then, measured, to a repository of the same registry that it has never pushed to. A
# tool that remembers where the blobs live mounts them across repositories instead of uploading.
push_known_run() { # TREE IMG CACHE DIGEST RUN
  push_with imgforge - "$2" "$3" bench/seed-imgforge:1 "$4"
  push_with skopeo - "$2" - bench/seed-skopeo:1 "$4"
  sync
  push_with imgforge "pushk_imgforge_$1" "$2" "$3" "bench/fresh-imgforge-$5:1" "$4"
  push_with skopeo "pushk_skopeo_$1" "$2" - "bench/fresh-skopeo-$5:1" "$4"
}

case_push_known_blobs() {
  push_case 10 push_known_run pushk "push to fresh repo, blobs known" "imgforge copy, blobs in another repo" \
    "skopeo copy, warm blob-info cache"
}

# 8. Rebuilds of the same app with a Cloud Native Buildpack (benches/cnb-buildpack): cold,
# nothing changed (the whole-build cache), one app file changed (the buildpack writes only
# deps.toml: the deps layer comes from the previous image). Only the app layer may change.
case_cnb_rebuild() {
  local rb=$run/cnb-rebuild bp app out cache i changed bad=0
  umask 022
  fresh "$rb"
  mkdir -p "$rb"
  bp=$rb/buildpack app=$rb/app out=$rb/out cache=$rb/cache
  cp -a "$here/cnb-buildpack" "$bp"
  ln -s "$TREE" "$bp/store"
  # --isolation host, as for case 5: the buildpack reads its dependency store through a host
  # symlink.
  local ifb=("$IMGFORGE" build "$app" --base "oci:$BASE:bookworm" -b "$bp" -t "oci:$out:app"
    --isolation host --cache-dir "$cache" -q)
  for i in $(seq "$RUNS"); do
    imgforge_rebuilds cnb "$i" "$app" "$out" "$cache" "${ifb[@]}"
    if [ "$changed" != "app_at_/workspace" ]; then
      bad=1
      note "run $i: the CNB one-file rebuild changed these layers: $changed (expected: app_at_/workspace only)"
    fi
  done
  row 8 cnb_cold "imgforge CNB build, cold" cnb_cold - "$TREE_TAR"
  row 8 cnb_noop "imgforge CNB rebuild, nothing changed" cnb_cold - -
  row 8 cnb_one "imgforge CNB rebuild, 1 file changed" cnb_cold - -
  target "imgforge CNB 1-file rebuild / cold build" \
    "$(ratio "$(stat_of cnb_one median_fine)" "$(stat_of cnb_cold median_fine)")" 0.10 x
  target "layers a 1-file edit changes (imgforge CNB)" "$( ((bad)) && echo not-only-app || echo app)" app - eq
  ((bad == 0)) || die "imgforge's CNB one-file rebuild changed more than the app layer (see the notes)"
}

# ---------------------------------------------------------------------------------------------
# Report

print_table() {
  local c key label ref size tar tree med
  printf '\n%-4s %-9s %-34s %8s %8s %8s %7s %8s %8s %9s %6s\n' \
    case tree command "median s" "min s" "max s" ratio "cpu s" "RSS MiB" "layer MB" "tar:z"
  while IFS=$'\t' read -r c key label ref size tar tree; do
    med=$(stat_of "$key" median)
    printf '%-4s %-9s %-34s %8s %8s %8s %7s %8s %8s %9s %6s\n' "$c" "$tree" "$label" "$med" \
      "$(stat_of "$key" min)" "$(stat_of "$key" max)" \
      "$([ "$ref" != - ] && echo "$(ratio "$(stat_of "$key" median_fine)" "$(stat_of "$ref" median_fine)")x" || echo -)" \
      "$(stat_of "$key" cpu)" "$(awk -v k="$(stat_of "$key" rss)" 'BEGIN { printf "%.1f", k / 1024 }')" \
      "$([ "$size" != - ] && awk -v s="$size" 'BEGIN { printf "%.2f", s / 1e6 }' || echo -)" \
      "$([ "$size" != - ] && ratio "$tar" "$size" || echo -)"
  done <"$res/table"
  printf '\nratio: median / median of the case'"'"'s reference (umoci for 1, the zstd floor for 2,\n'
  printf 'each tool'"'"'s cold build for 5 and 8, tar -xf for 7, find for 9, skopeo for 6 and 10).\n'
  printf 'tree: the app tree of the row (synthetic: make-tree.py, no Procfile; node, python: the real\n'
  printf 'apps of benches/apps, with a Procfile); - for a case with its own input.\n'
  printf 'layer MB: compressed size of the layer (of the output file for the floors).\n'
  printf 'cpu s: user+sys, median. RSS: peak over runs. tar:z: uncompressed tar bytes / compressed.\n'
}

print_targets() {
  local name val limit unit op verdict
  printf '\n== targets ==\n'
  while IFS=$'\t' read -r name val limit unit op; do
    if [ "$limit" = - ]; then
      verdict=info
      printf '%-5s %-40s %8s%s\n' "$verdict" "$name" "$val" "$unit"
    elif [ "$op" = eq ]; then
      verdict=$([ "$val" = "$limit" ] && echo PASS || echo FAIL)
      printf '%-5s %-40s %8s  (target: %s)\n' "$verdict" "$name" "$val" "$limit"
    else
      verdict=$(awk -v v="$val" -v l="$limit" -v op="$op" \
        'BEGIN { print ((op == "ge" ? v >= l : v <= l) ? "PASS" : "FAIL") }')
      printf '%-5s %-40s %8s%s  (target %s %s%s)\n' "$verdict" "$name" "$val" "$unit" \
        "$([ "$op" = ge ] && echo '>=' || echo '<=')" "$limit" "$unit"
    fi
  done <"$res/targets"
}

# 7. The userns sandbox's build image: the first buildpack build on the Debian base unpacks it
# into the cache (hardened extractor); a second build (app changed, so the buildpack runs again)
# reuses it. References: umoci unpack --rootless of the same image, and tar -xf of its layers
# in order into an empty directory (what the unpack alone, as imgforge reports it, compares
# with). The case has its own input (the base), not a tree.
case_build_image_unpack() {
  local cache=$run/cache-unpack out=$run/if-unpack app=$run/unpack-app bp=$run/noop-bp u=$run/umoci-unpack
  local tx=$run/tar-unpack reuse_s s layers=() topts=()
  # Not root: tar can make no device nodes (nor can imgforge's rootless extractor), so it skips
  # /dev's entries and keeps its own ids.
  [ "$(id -u)" = 0 ] || topts=(--no-same-owner --anchored --exclude='dev/*' --exclude='./dev/*')
  mkdir -p "$bp/bin"
  printf '#!/bin/sh\necho Noop\n' >"$bp/bin/detect"
  # shellcheck disable=SC2016 # expanded by the buildpack in the build image, not here
  printf '#!/bin/sh\necho "-----> noop on Debian $(cat /etc/debian_version)"\n' >"$bp/bin/compile"
  chmod +x "$bp/bin/detect" "$bp/bin/compile"
  mapfile -t layers < <(check_layout "$BASE" bookworm | python3 -c '
import json, sys
for l in json.load(sys.stdin)["layers"]:
    print(sys.argv[1] + "/blobs/" + l["digest"].replace(":", "/"))' "$BASE")
  [ ${#layers[@]} -gt 0 ] || die "the base image has no layers"
  : >"$res/unpack_alone.runs"
  for i in $(seq "$RUNS"); do
    fresh "$cache" "$out" "$app"
    mkdir -p "$app" && echo "$i" >"$app/rev.txt"
    measure unpack_first "$IMGFORGE" build "$app" --base "oci:$BASE:bookworm" --isolation userns \
      -b "$bp" -t "oci:$out:app" --cache-dir "$cache"
    # imgforge's own report of the unpack: "Build image REF: unpacked (SIZE) in S s" (0.1 s steps).
    s=$(sed -n 's/.*Build image .*: unpacked (.*) in \([0-9.]*\) s.*/\1/p' "$res/unpack_first.stderr" | tail -1)
    [ -n "$s" ] || die "the first build did not unpack (or said nothing of it: see $res/unpack_first.stderr)"
    awk -v s="$s" 'BEGIN { printf "%.0f 0 0.00\n", s * 1e9 }' >>"$res/unpack_alone.runs"
    echo "$i-again" >"$app/rev.txt"
    measure unpack_reuse "$IMGFORGE" build "$app" --base "oci:$BASE:bookworm" --isolation userns \
      -b "$bp" -t "oci:$out:app" --cache-dir "$cache"
    grep -q 'reusing its unpacked filesystem' "$res/unpack_reuse.stderr" ||
      die "the second build unpacked the build image again"
    fresh "$u"
    measure umoci_unpack umoci unpack --rootless --image "$BASE:bookworm" "$u"
    fresh "$tx"
    mkdir -p "$tx"
    # shellcheck disable=SC2016 # expanded by the inner bash
    measure tar_xf bash -c 'set -e; d=$1 n=$2; shift 2; o=("${@:1:n}"); shift "$n"; for l; do tar "${o[@]}" -xf "$l" -C "$d"; done' \
      _ "$tx" "${#topts[@]}" "${topts[@]}" "${layers[@]}"
  done
  row 7 unpack_first "imgforge build, new build image (unpack + sandbox)" umoci_unpack - -
  row 7 unpack_reuse "imgforge build, build image already unpacked" umoci_unpack - -
  row 7 umoci_unpack "umoci unpack --rootless, same image" umoci_unpack - -
  row 7 unpack_alone "imgforge's unpack alone (its report)" tar_xf - -
  row 7 tar_xf "tar -xf of the same layers" tar_xf - -
  target "build image unpack vs tar -xf of its layers" \
    "$(ratio "$(stat_of unpack_alone median_fine)" "$(stat_of tar_xf median_fine)")" 1.00 x
  reuse_s=$(ratio "$(stat_of unpack_reuse median)" "$(stat_of unpack_first median)")
  target "reuse build vs first build" "$reuse_s" 0.50 x
}

# 9. A rebuild with nothing changed (no-op) vs a single-threaded stat walk of the same tree,
# `find TREE -printf '%s %T@ %C@ %i\n'`, the least a tool must do to see that nothing changed.
# Per tree: one cold build (untimed), then the no-op rebuilds with the same --cache-dir and
# output, interleaved with find. Every no-op must give the cold build's digest.
case_noop_vs_find() {
  local t tree out cache cold
  for t in $TREES; do
    tree=${TPATH[$t]} out=$run/if-noop-$t cache=$run/cache-noop-$t
    fresh "$out" "$cache"
    local ifb=("$IMGFORGE" build "$tree" --base "oci:$BASE:bookworm" -t "oci:$out:app" --cache-dir "$cache" -q)
    "${ifb[@]}" >"$res/noop-cold-$t" || die "the cold build of the $t tree failed"
    cold=$(tr -d '\n' <"$res/noop-cold-$t")
    for _ in $(seq "$RUNS"); do
      sync
      measure "noop_$t" "${ifb[@]}"
      [ "$(tr -d '\n' <"$res/noop_$t.stdout")" = "$cold" ] ||
        die "imgforge's no-op rebuild of the $t tree made $(cat "$res/noop_$t.stdout"), its cold build $cold"
      measure "find_$t" find "$tree" -printf '%s %T@ %C@ %i\n'
    done
    versus 9 "$t" "no-op rebuild vs find stat walk" 1.00 "noop_$t" "imgforge rebuild, nothing changed" - \
      "find_$t" "find -printf (stat walk, 1 thread)" - -
  done
}

# ---------------------------------------------------------------------------------------------

for c in "${cases[@]}"; do
  declare -F "case_$c" >/dev/null || { echo "unknown case $c (cases: ${ALL_CASES[*]})" >&2; exit 2; }
done
[ -f "$MAKE_BASE" ] || die "MAKE_BASE=$MAKE_BASE: no such file"
[ -f "$MAKE_TREE" ] || die "MAKE_TREE=$MAKE_TREE: no such file"

need_tools time:time python3:python3 skopeo:skopeo umoci:umoci pigz:pigz zstd:zstd \
  debootstrap:debootstrap cargo:cargo docker-registry:docker-registry
case " $TREES " in *" node "*) need_tools npm:npm ;; esac
case " $TREES " in *" python "*) need_tools pip3:python3-pip ;; esac
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
prepare_src
build_imgforge
ensure_base
BASE=$BENCH_DIR/base
TREE=$(ensure_tree "app-${TREE_FILES}f-${TREE_MB}m" "$TREE_FILES" "$TREE_MB")
declare -A TPATH TTAR TREG
for t in $TREES; do
  if [ "$t" = synthetic ]; then TPATH[$t]=$TREE; else TPATH[$t]=$(ensure_real_app "$t"); fi
done
run=$BENCH_DIR/run
res=$run/results
rm -rf "$run" && mkdir -p "$res"
: >"$res/table"
: >"$res/targets"
: >"$res/notes"

TREE_TAR=$(warm_tree "$TREE")
TREE_REGULAR=$(regular_files "$TREE")
for t in $TREES; do
  TTAR[$t]=$(warm_tree "${TPATH[$t]}")
  TREG[$t]=$(regular_files "${TPATH[$t]}")
done

printf '== imgforge end-to-end comparison ==\n'
printf 'date:     %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf 'commit:   %s\n' "$COMMIT"
printf 'machine:  %s cores, %s (family %s model %s), %s GiB, kernel %s\n' "$(nproc)" \
  "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
  "$(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
  "$(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
  "$(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)"
printf 'imgforge: %s (%s)\n' "$IMGFORGE" "$("$IMGFORGE" --version 2>/dev/null)"
printf 'tools:    umoci %s; zstd %s; pigz %s; %s; buildah %s\n' "$(umoci --version | awk '{print $3}')" \
  "$(zstd --version | grep -o 'v[0-9.]*' | head -1)" "$(pigz --version 2>&1 | awk '{print $2}')" \
  "$(tar --version | head -1)" "$(buildah --version 2>/dev/null | awk '{print $3}' || echo -)"
printf 'tree:     %s: %s regular files, %s tar bytes (warm in page cache)\n' "$TREE" "$TREE_REGULAR" "$TREE_TAR"
for t in $TREES; do
  printf 'trees:    %-9s %s regular files, %s MB of tar, %s; %s (made by: %s)\n' "$t" "${TREG[$t]}" \
    "$(awk -v b="${TTAR[$t]}" 'BEGIN { printf "%.1f", b / 1e6 }')" \
    "$([ -f "${TPATH[$t]}/Procfile" ] && echo Procfile || echo 'no Procfile')" "${TPATH[$t]}" \
    "$(cat "${TPATH[$t]}.stamp")"
done
printf 'base:     %s:bookworm\n' "$BASE"
printf 'runs:     %s per command, interleaved; load average at start %s\n' "$RUNS" "$(cut -d' ' -f1-3 /proc/loadavg)"

errors=()
for c in "${cases[@]}"; do
  wait_for_load
  printf 'case %s ... (load %s)\n' "$c" "$(load1)"
  set +e
  (set -e; "case_$c")
  case_rc=$?
  set -e
  [ "$case_rc" -eq 0 ] || errors+=("$c")
done
printf 'load average at end %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"

print_table
print_targets
if [ -s "$res/notes" ]; then
  printf '\n== notes ==\n'
  cat "$res/notes"
fi
[ "${KEEP:-0}" = 1 ] || rm -rf "$run"
if [ ${#errors[@]} -gt 0 ]; then
  printf '\nERROR in case(s): %s (see messages above)\n' "${errors[*]}"
  exit 1
fi
