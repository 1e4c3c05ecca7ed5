#!/usr/bin/env bash
# Peak memory: `create` (ours against upstream nydus-image 2.2.0) and the mount serving a
# full read of the image (our FUSE mount against upstream nydusd with the localfs
# backend), on the Linux 6.1 source tree and on one 4 GiB file (half random, half text).
# Peak RSS is the kernel's VmHWM of the process (for create: /usr/bin/time's maximum
# resident set). Needs root.
#   bench/memory.sh [TREE...]   default: Linux 6.1 source, the 4 GiB file of bench/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/var/tmp/nydus-bench}
mkdir -p "$work"
. bench/data.sh
cargo build --release -q
ours=$PWD/target/release/nydus-image
up_image="${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}/bin/nydus-image"
up_nydusd="${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}/bin/nydusd"

trees=("$@")
if [ ${#trees[@]} -eq 0 ]; then
  ensure_linux
  ensure_big4g
  trees=("$work/linux-source-6.1" "$work/big4g")
fi

out="$work/memory-out"
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
readall() { tar -cf - -C "$1" . | wc -c >/dev/null; }
wait_mount() { for _ in $(seq 300); do mountpoint -q "$1" && return; sleep 0.1; done; echo "no mount at $1" >&2; exit 1; }

printf "%-22s %-8s %12s %12s %8s\n" tree phase ours_kb upstream_kb ratio
for tree in "${trees[@]}"; do
  name=$(basename "$tree")
  rm -rf "$out" && mkdir -p "$out/o" "$out/u" "$out/m-ours" "$out/m-nydusd" "$out/cache"
  # create
  o=$( { /usr/bin/time -f "%M" "$ours" create --log-level warn -B "$out/o/boot" -D "$out/o" "$tree" >/dev/null; } 2>&1 | tail -1)
  u=$( { /usr/bin/time -f "%M" "$up_image" create --log-level warn -B "$out/u/boot" -D "$out/u" "$tree" >/dev/null; } 2>&1 | tail -1)
  printf "%-22s %-8s %12s %12s %8.2f\n" "$name" create "$o" "$u" "$(echo "$o / $u" | bc -l)"
  # mount + full cold read, each serving our image
  sync; echo 3 > /proc/sys/vm/drop_caches
  "$ours" mount --bootstrap "$out/o/boot" --blob-dir "$out/o" "$out/m-ours" >/dev/null 2>&1 &
  opid=$!
  wait_mount "$out/m-ours"
  readall "$out/m-ours"
  o=$(hwm "$opid")
  umount "$out/m-ours"; wait "$opid" || true
  cat > "$out/nydusd.json" <<JSON
{"device":{"backend":{"type":"localfs","config":{"dir":"$out/o"}},
 "cache":{"type":"blobcache","config":{"work_dir":"$out/cache"}}},
 "mode":"direct","digest_validate":false,"enable_xattr":true}
JSON
  sync; echo 3 > /proc/sys/vm/drop_caches
  "$up_nydusd" --config "$out/nydusd.json" --mountpoint "$out/m-nydusd" --bootstrap "$out/o/boot" \
    --rlimit-nofile 0 --log-level warn >/dev/null 2>&1 &
  upid=$!
  wait_mount "$out/m-nydusd"
  readall "$out/m-nydusd"
  u=$(hwm "$upid")
  umount "$out/m-nydusd"; kill "$upid" 2>/dev/null || true; wait "$upid" 2>/dev/null || true
  printf "%-22s %-8s %12s %12s %8.2f\n" "$name" mount "$o" "$u" "$(echo "$o / $u" | bc -l)"
done
rm -rf "$out"
