#!/usr/bin/env bash
# Tar layers through FIFOs, our nydus-image against upstream 2.2.0 in one run, as
# containerd's converter runs them: the layer fed into one FIFO, the blob read from
# another, prefetch patterns ("/") on stdin.
#   create --type tar-rafs    tar FIFO in, blob FIFO out, --blob-inline-meta --features blob-toc
#   create --type targz-rafs  the same tar gzip-compressed (gzip -6, pigz if present)
#   unpack                    the image our tar-rafs run built, to a tar FIFO drained by
#                             cat (both tools unpack the same image; upstream needs
#                             --blob-dir and --blob to read a blob with inline metadata,
#                             and leaves NAME.image.boot in that directory)
# For each: median wall time of RUNS runs (the tools alternate, so that the machine's
# drift falls on both alike), our/upstream ratio, and peak RSS (max over the runs, from
# /usr/bin/time). Then one single-file tar (BIG_MIB MiB, default the 4 GiB mixed file of
# bench/data.sh: random and text MiBs alternating): peak RSS of tar-rafs and of unpack.
#
# Run it alone on a quiet machine, under the shared cargo lock (it builds in release):
#   flock /tmp/cargo.lock bench/tar.sh
# Environment: SRC=DIR (default: the Linux 6.1 source, made by bench/data.sh), RUNS=N
# (default 3), BIG_MIB=N (size of the single file; 0 skips it), BENCH_DIR (default
# /var/tmp/nydus-bench). A small trial: SRC=/usr/share/doc RUNS=1 BIG_MIB=64 bench/tar.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/var/tmp/nydus-bench}
runs=${RUNS:-3}
big_mib=${BIG_MIB:-4096}
mkdir -p "$work"
. bench/data.sh
cargo build --release -q
ours=$PWD/target/release/nydus-image
upstream="${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}/bin/nydus-image"
[ -x "$upstream" ] || { echo "no upstream nydus-image at $upstream (scripts/setup)" >&2; exit 1; }
[ -x /usr/bin/time ] || apt-get install -y -qq time

if [ -n "${SRC:-}" ]; then
  src=$SRC
  inputs=$(mktemp -d "$work/tar-inputs.XXXXXX")
  keep_inputs=0
else
  ensure_linux
  src=$work/linux-source-6.1
  inputs=$work/tar-inputs-linux-6.1
  keep_inputs=1
  mkdir -p "$inputs"
fi
out=$(mktemp -d "$work/tar-bench.XXXXXX")
cleanup() {
  rm -rf "$out"
  [ "$keep_inputs" = 1 ] || rm -rf "$inputs"
}
trap cleanup EXIT

# The layer as the converter gets it: a POSIX tar (PAX records for what ustar cannot
# hold), numeric owners; and gzip-compressed.
if [ ! -s "$inputs/layer.tar" ]; then
  tar --format=posix --numeric-owner -cf "$inputs/layer.tar.part" -C "$src" .
  mv "$inputs/layer.tar.part" "$inputs/layer.tar"
fi
if [ ! -s "$inputs/layer.tar.gz" ]; then
  gz=gzip; command -v pigz >/dev/null && gz=pigz
  $gz -6 -c "$inputs/layer.tar" > "$inputs/layer.tar.gz.part"
  mv "$inputs/layer.tar.gz.part" "$inputs/layer.tar.gz"
fi

in_fifo=$out/in.fifo
out_fifo=$out/out.fifo
timing=$out/time
errors=$out/stderr
median() { printf "%s\n" "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
maximum() { printf "%s\n" "$@" | sort -n | tail -1; }

# through FEED SINK CMD...: runs CMD (its stdin "/") while FEED (a shell command, or
# nothing) writes into $in_fifo and $out_fifo is drained into SINK (COUNT: its byte count
# into $out/count). Prints "wall rss_kib".
# A failed CMD stops the bench with its stderr, after letting the FIFO ends go.
through() {
  local feed=$1 sink=$2; shift 2
  rm -f "$in_fifo" "$out_fifo"
  mkfifo "$in_fifo" "$out_fifo"
  local feeder=""
  if [ -n "$feed" ]; then
    ( eval "$feed" > "$in_fifo" ) 2>/dev/null &
    feeder=$!
  fi
  if [ "$sink" = COUNT ]; then
    wc -c < "$out_fifo" > "$out/count" &
  else
    cat "$out_fifo" > "$sink" &
  fi
  local drain=$!
  local rc=0
  echo / | /usr/bin/time -o "$timing" -f "%e %M" "$@" >/dev/null 2>"$errors" || rc=$?
  if [ "$rc" != 0 ]; then
    # Give a feeder or drain still waiting in open() its other end, then stop.
    exec 7<>"$in_fifo" 8<>"$out_fifo"; exec 7<&- 8<&-
    wait $feeder $drain 2>/dev/null || true
    echo "failed ($rc): $*" >&2
    cat "$errors" >&2
    exit 1
  fi
  wait $feeder $drain || true
  cat "$timing"
}

# The converter's command line, with the layer type.
create_args() {
  echo create --log-level warn --prefetch-policy fs --blob "$out_fifo" --whiteout-spec none \
    --fs-version 6 --type "$1" --blob-inline-meta --features blob-toc "$in_fifo"
}

# create TOOL TYPE INPUT BLOB -> "wall rss"
create() {
  # shellcheck disable=SC2046
  through "cat '$3'" "$4" "$1" $(create_args "$2")
}

# unpack TOOL BLOB_DIR BLOB [SINK] -> "wall rss", the tar drained by cat into SINK
# (default /dev/null; COUNT: its size into $out/count)
unpack() {
  local sink=${4:-/dev/null}
  if [ "$1" = "$ours" ]; then
    through "" "$sink" "$1" unpack --log-level warn --bootstrap "$3" --output "$out_fifo"
  else
    through "" "$sink" "$1" unpack --log-level warn --bootstrap "$3" --blob-dir "$2" \
      --blob "$3" --output "$out_fifo"
  fi
}

# tar_bytes TOOL BLOB_DIR BLOB: the size of the tar TOOL writes (an untimed run)
tar_bytes() {
  unpack "$1" "$2" "$3" COUNT > /dev/null
  cat "$out/count"
}

# The blob moved into DIR under its sha256 (upstream names an inline blob by its file
# name); prints the new path.
by_digest() {
  local dir=$1 blob=$2 id
  mkdir -p "$dir"
  id=$(sha256sum "$blob" | cut -c1-64)
  mv "$blob" "$dir/$id"
  echo "$dir/$id"
}

report() {
  local what=$1 ow=$2 orss=$3 uw=$4 urss=$5
  printf "%-22s %9.2f %9.2f %7.2f %10d %10d %7.2f\n" "$what" "$ow" "$uw" \
    "$(echo "$ow / $uw" | bc -l)" "$orss" "$urss" "$(echo "$orss / $urss" | bc -l)"
}

echo "source: $src ($(find "$src" -type f | wc -l) files); tar $(stat -c %s "$inputs/layer.tar") bytes,"\
  "tar.gz $(stat -c %s "$inputs/layer.tar.gz") bytes"
echo "cores: $(nproc); median wall of $runs runs, tools alternating; peak RSS: max over the runs"
printf "%-22s %9s %9s %7s %10s %10s %7s\n" step ours_s upstr_s ratio ours_KiB upstr_KiB ratio

# Warm the page cache with the inputs, as every run after the first has it.
cat "$inputs/layer.tar" "$inputs/layer.tar.gz" > /dev/null
for kind in tar-rafs targz-rafs; do
  input=$inputs/layer.tar
  [ "$kind" = targz-rafs ] && input=$inputs/layer.tar.gz
  ow=(); orss=(); uw=(); urss=()
  for _ in $(seq "$runs"); do
    read -r w m <<< "$(create "$ours" "$kind" "$input" "$out/ours.blob")"
    ow+=("$w"); orss+=("$m")
    read -r w m <<< "$(create "$upstream" "$kind" "$input" "$out/upstream.blob")"
    uw+=("$w"); urss+=("$m")
  done
  report "create $kind" "$(median "${ow[@]}")" "$(maximum "${orss[@]}")" \
    "$(median "${uw[@]}")" "$(maximum "${urss[@]}")"
  if [ "$kind" = tar-rafs ]; then
    echo "  blob bytes: ours $(stat -c %s "$out/ours.blob"), upstream $(stat -c %s "$out/upstream.blob")"
    image=$(by_digest "$out/image" "$out/ours.blob")
  fi
done

ow=(); orss=(); uw=(); urss=()
for _ in $(seq "$runs"); do
  read -r w m <<< "$(unpack "$ours" "$out/image" "$image")"
  ow+=("$w"); orss+=("$m")
  read -r w m <<< "$(unpack "$upstream" "$out/image" "$image")"
  uw+=("$w"); urss+=("$m")
done
report "unpack (our image)" "$(median "${ow[@]}")" "$(maximum "${orss[@]}")" \
  "$(median "${uw[@]}")" "$(maximum "${urss[@]}")"
echo "  tar bytes: ours $(tar_bytes "$ours" "$out/image" "$image"), upstream $(tar_bytes "$upstream" "$out/image" "$image")"
rm -rf "$out/image" "$out"/*.blob

# One big file, streamed as a tar (never stored as one): wall and peak RSS.
if [ "$big_mib" != 0 ]; then
  if [ "$big_mib" = 4096 ]; then
    ensure_big4g
    big_dir=$work/big4g
  else
    big_dir=$out/big
    mkdir -p "$big_dir"
    python3 - "$big_dir/mixed" "$big_mib" <<'PY'
import os, sys
text = (b"The quick brown fox jumps over the lazy dog; compressible text. " * 16384)[:1 << 20]
with open(sys.argv[1], "wb") as f:
    for i in range(int(sys.argv[2])):
        f.write(os.urandom(1 << 20) if i % 2 else text)
PY
  fi
  feed="tar --format=posix --numeric-owner -cf - -C '$big_dir' ."
  # Like the tree: RUNS runs each, the tools alternating, medians (a 2 GiB blob written
  # to disk makes single runs swing by 2x with writeback).
  ow=(); om=(); uw=(); um=()
  for _ in $(seq "$runs"); do
    # shellcheck disable=SC2046
    read -r w m <<< "$(through "$feed" "$out/ours.blob" "$ours" $(create_args tar-rafs))"
    ow+=("$w"); om+=("$m")
    # shellcheck disable=SC2046
    read -r w m <<< "$(through "$feed" "$out/upstream.blob" "$upstream" $(create_args tar-rafs))"
    uw+=("$w"); um+=("$m")
    rm -f "$out/upstream.blob"
  done
  report "big: create tar-rafs" "$(median "${ow[@]}")" "$(maximum "${om[@]}")" \
    "$(median "${uw[@]}")" "$(maximum "${um[@]}")"
  echo "  big: blob bytes: ours $(stat -c %s "$out/ours.blob")"
  image=$(by_digest "$out/image" "$out/ours.blob")
  ow=(); om=(); uw=(); um=()
  for _ in $(seq "$runs"); do
    read -r w m <<< "$(unpack "$ours" "$out/image" "$image")"
    ow+=("$w"); om+=("$m")
    read -r w m <<< "$(unpack "$upstream" "$out/image" "$image")"
    uw+=("$w"); um+=("$m")
  done
  ow=$(median "${ow[@]}"); om=$(maximum "${om[@]}"); uw=$(median "${uw[@]}"); um=$(maximum "${um[@]}")
  report "big: unpack" "$ow" "$om" "$uw" "$um"
  echo "  big: tar bytes: ours $(tar_bytes "$ours" "$out/image" "$image")," \
    "upstream $(tar_bytes "$upstream" "$out/image" "$image")"
  echo "  big: one file of $(stat -c %s "$big_dir/mixed") bytes (random and text MiBs alternating)"
fi
