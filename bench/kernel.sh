#!/usr/bin/env bash
# Kernel-readable images: `export --block` of a compressed (zstd) image of TREE, timed
# from cold caches, against the time our FUSE mount needs to read the whole tree cold
# (the target: export no slower than that read); then the whole tree read cold
# (tar | wc -c after dropping caches, each on a fresh mount) through
#   - the kernel's EROFS mount of the export (one loop device),
#   - the kernel's EROFS mount of a --compressor none image (bootstrap and blob on two
#     loop devices, `-o device=`),
#   - our FUSE mount and upstream nydusd 2.2.0 (localfs, blobcache) of the zstd image.
# Medians of RUNS runs (default 3), the kinds interleaved so that drift falls on all.
# Needs root and loop devices; run it alone, under the shared cargo lock (it builds):
#   flock /tmp/cargo.lock bench/kernel.sh [TREE]    default TREE: the Linux 6.1 source
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/var/tmp/nydus-bench}
runs=${RUNS:-3}
mkdir -p "$work"
. bench/data.sh
tree=${1:-}
if [ -z "$tree" ]; then
  ensure_linux
  tree=$work/linux-source-6.1
fi
cargo build --release -q
ours=$PWD/target/release/nydus-image
nydusd="${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}/bin/nydusd"
img=$(mktemp -d "$work/kernel-bench.XXXXXX")
# Detaches every loop device over a file of this run.
detach_all() {
  local f l
  for f in "$img/export.img" "$img/n/boot" "$img"/n/blobs/*; do
    [ -e "$f" ] || continue
    for l in $(losetup -j "$f" -O NAME -n 2>/dev/null); do losetup -d "$l" || true; done
  done
}
cleanup() {
  for m in "$img"/m-*; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  detach_all
  rm -rf "$img"
}
trap cleanup EXIT
mkdir -p "$img/z/blobs" "$img/n/blobs" "$img/cache"
for k in ours nydusd export none; do mkdir -p "$img/m-$k"; done
$ours create --log-level warn --compressor zstd -B "$img/z/boot" -D "$img/z/blobs" "$tree" >/dev/null
$ours create --log-level warn --compressor none -B "$img/n/boot" -D "$img/n/blobs" "$tree" >/dev/null
echo "tree: $tree ($(find "$tree" -type f | wc -l) files, $(du -sb "$tree" | cut -f1) bytes); cores: $(nproc)"
echo "zstd image: blob $(du -cb "$img"/z/blobs/* | tail -1 | cut -f1) bytes;" \
  "none image: blob $(du -cb "$img"/n/blobs/* | tail -1 | cut -f1) bytes"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
readall() { tar -cf - -C "$1" . | wc -c; }
median() { printf "%s\n" "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
attach() { losetup -f --show -r "$1"; }

export_image() {
  rm -f "$img/export.img"
  $ours export --log-level warn --block -B "$img/z/boot" -D "$img/z/blobs" -O "$img/export.img"
}
mount_ours() { $ours mount --daemon --bootstrap "$img/z/boot" --blob-dir "$img/z/blobs" "$img/m-ours"; }
mount_nydusd() {
  rm -rf "$img/cache" && mkdir -p "$img/cache"
  cat > "$img/nydusd.json" <<JSON
{"device":{"backend":{"type":"localfs","config":{"dir":"$img/z/blobs"}},
 "cache":{"type":"blobcache","config":{"work_dir":"$img/cache"}}},
 "mode":"direct","digest_validate":false,"enable_xattr":true}
JSON
  "$nydusd" --config "$img/nydusd.json" --mountpoint "$img/m-nydusd" --bootstrap "$img/z/boot" \
    --rlimit-nofile 0 --log-level warn >/dev/null 2>&1 &
  for _ in $(seq 300); do mountpoint -q "$img/m-nydusd" && return; sleep 0.1; done
  echo "nydusd did not mount" >&2; exit 1
}
mount_export() { mount -t erofs -o ro "$(attach "$img/export.img")" "$img/m-export"; }
mount_none() {
  local boot blob
  boot=$(attach "$img/n/boot")
  blob=$(attach "$(ls "$img"/n/blobs/*)")
  mount -t erofs -o "ro,device=$blob" "$boot" "$img/m-none"
}
unmount() { umount "$1"; detach_all; }

declare -A cold
exports=()
export_image
for _ in $(seq "$runs"); do
  drop; exports+=("$(secs export_image)")
  for kind in ours nydusd export none; do
    "mount_$kind"
    drop; cold[$kind]+=" $(secs readall "$img/m-$kind")"
    unmount "$img/m-$kind"
    sleep 0.5
  done
done
echo "export --block: ${exports[*]}; export image $(stat -c %s "$img/export.img") bytes"
for kind in ours nydusd export none; do echo "$kind cold read:${cold[$kind]}"; done
e=$(median "${exports[@]}")
for kind in ours nydusd export none; do
  # shellcheck disable=SC2086
  cold[$kind]=$(median ${cold[$kind]})
done
echo "median of $runs runs; caches dropped before each"
printf "%-44s %9s %12s\n" measure seconds "ours FUSE = 1"
row() { printf "%-44s %9.2f %12.2f\n" "$1" "$2" "$(echo "$2 / ${cold[ours]}" | bc -l)"; }
row "export --block (zstd image, cold)" "$e"
row "cold read: our FUSE mount (zstd)" "${cold[ours]}"
row "cold read: nydusd 2.2.0 (zstd)" "${cold[nydusd]}"
row "cold read: kernel EROFS of the export" "${cold[export]}"
row "cold read: kernel EROFS, --compressor none" "${cold[none]}"
