#!/usr/bin/env bash
# Two builds of our nydus-image against each other (say, before and after a change) on
# the same tree, taking turns so that this machine's drift falls on both alike: median
# wall time and peak RSS of `create` (zstd, 2 threads), and median cold and warm read
# times of a FUSE mount of the image each built (tar of every file, after dropping
# caches for cold). Needs root.
#   bench/ab.sh OLD_BIN NEW_BIN [TREE]   default TREE: the Linux 6.1 source
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2
work=${BENCH_DIR:-/var/tmp/nydus-bench}
runs=${RUNS:-5}
mkdir -p "$work"
. bench/data.sh
tree=${3:-}
if [ -z "$tree" ]; then ensure_linux; tree="$work/linux-source-6.1"; fi
out="$work/ab-out"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { printf "%s\n" "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
# build BIN DIR -> "wall rss_kb"
build() {
  rm -rf "$2" && mkdir -p "$2"
  NYDUS_BUILD_THREADS=2 /usr/bin/time -o "$2.time" -f "%e %M" \
    "$1" create --log-level warn -B "$2/boot" -D "$2" "$tree" >/dev/null
  cat "$2.time"
}
# readall BIN DIR COLD -> seconds for a tar of every file through a fresh mount
readall() {
  local mnt="$2.mnt" s e
  mkdir -p "$mnt"
  "$1" mount --daemon -B "$2/boot" -D "$2" "$mnt" 2>/dev/null
  [ "$3" = cold ] && drop
  s=$(date +%s.%N); tar -cf - -C "$mnt" . | wc -c >/dev/null; e=$(date +%s.%N)
  if [ "$3" = warm ]; then
    s=$(date +%s.%N); tar -cf - -C "$mnt" . | wc -c >/dev/null; e=$(date +%s.%N)
  fi
  "$1" umount "$mnt"
  echo "$e - $s" | bc
}
declare -A wall rss cold warm
for i in $(seq "$runs"); do
  for side in old new; do
    bin=${!side}
    read -r w m <<< "$(build "$bin" "$out-$side")"
    wall[$side]+="$w "; rss[$side]+="$m "
    cold[$side]+="$(readall "$bin" "$out-$side" cold) "
    warm[$side]+="$(readall "$bin" "$out-$side" warm) "
  done
done
echo "tree: $tree; cores: $(nproc); median of $runs runs each, taking turns"
printf "%-5s %10s %12s %10s %10s\n" side create_s create_rss_KiB cold_read_s warm_read_s
for side in old new; do
  # shellcheck disable=SC2086
  printf "%-5s %10.2f %12d %10.2f %10.2f\n" "$side" "$(median ${wall[$side]})" \
    "$(printf "%s\n" ${rss[$side]} | sort -n | tail -1)" "$(median ${cold[$side]})" "$(median ${warm[$side]})"
done
# shellcheck disable=SC2086
printf "new/old: create %.3f, cold read %.3f, warm read %.3f\n" \
  "$(echo "$(median ${wall[new]}) / $(median ${wall[old]})" | bc -l)" \
  "$(echo "$(median ${cold[new]}) / $(median ${cold[old]})" | bc -l)" \
  "$(echo "$(median ${warm[new]}) / $(median ${warm[old]})" | bc -l)"
rm -rf "$out-old" "$out-new" "$out-old.time" "$out-new.time"
