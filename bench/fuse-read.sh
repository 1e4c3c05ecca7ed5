#!/usr/bin/env bash
# Read performance of a mounted image: our FUSE mount against upstream nydusd (localfs
# backend), with the kernel's EROFS mount of an equivalent uncompressed EROFS image
# (mkfs.erofs) as the limit. For each: cold sequential read of every file (tar | wc -c
# after dropping caches, on a fresh mount), warm re-read, and a cold metadata walk
# (find -ls). Needs root.
#   bench/fuse-read.sh [TREE]     default TREE: the Linux 6.1 source (linux-source-6.1)
#   FS_VERSION=5 bench/fuse-read.sh   our image (which both FUSE mounts read) is RAFS v5
#                                     (default 6); the EROFS limit is the same either way
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/var/tmp/nydus-bench}
mkdir -p "$work"
tree=${1:-}
if [ -z "$tree" ]; then
  tree="$work/linux-source-6.1"
  if [ ! -d "$tree" ]; then
    [ -f /usr/src/linux-source-6.1.tar.xz ] || apt-get install -y -qq linux-source-6.1
    tar -xf /usr/src/linux-source-6.1.tar.xz -C "$work"
  fi
fi
fs_version=${FS_VERSION:-6}
case "$fs_version" in 5|6) ;; *) echo "FS_VERSION must be 5 or 6" >&2; exit 2 ;; esac
cargo build --release -q
ours=target/release/nydus-image
upstream="${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}/bin/nydusd"
img="$work/img"
rm -rf "$img" && mkdir -p "$img/blobs" "$img/m-ours" "$img/m-nydusd" "$img/m-erofs" "$img/cache"
$ours create --log-level warn --fs-version "$fs_version" --bootstrap "$img/boot" --blob-dir "$img/blobs" "$tree" >/dev/null
mkfs.erofs "$img/erofs.img" "$tree" >/dev/null
files=$(find "$tree" -type f | wc -l)
bytes=$(du -sb "$tree" | cut -f1)
echo "tree: $tree ($files files, $bytes bytes); RAFS v$fs_version; cores: $(nproc)"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
readall() { tar -cf - -C "$1" . | wc -c; }
walk() { find "$1" -ls; }

mount_ours() { $ours mount --daemon --bootstrap "$img/boot" --blob-dir "$img/blobs" "$img/m-ours"; }
mount_nydusd() {
  rm -rf "$img/cache" && mkdir -p "$img/cache"
  cat > "$img/nydusd.json" <<JSON
{"device":{"backend":{"type":"localfs","config":{"dir":"$img/blobs"}},
 "cache":{"type":"blobcache","config":{"work_dir":"$img/cache"}}},
 "mode":"direct","digest_validate":false,"enable_xattr":true}
JSON
  "$upstream" --config "$img/nydusd.json" --mountpoint "$img/m-nydusd" --bootstrap "$img/boot" \
    --rlimit-nofile 0 --log-level warn >/dev/null 2>&1 &
  for _ in $(seq 300); do mountpoint -q "$img/m-nydusd" && return; sleep 0.1; done
  echo "nydusd did not mount" >&2; exit 1
}
mount_erofs() { mount -t erofs -o ro,loop "$img/erofs.img" "$img/m-erofs"; }

median() { printf "%s\n" "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
runs=${RUNS:-3}
kinds=(ours nydusd erofs)
declare -A cold warm find_
# Rounds interleave the three mounts, so that drift in this machine's disk and CPU
# speed over the run affects all of them alike.
for _ in $(seq "$runs"); do
  for kind in "${kinds[@]}"; do
    mnt="$img/m-$kind"
    "mount_$kind"
    drop; cold[$kind]+=" $(secs readall "$mnt")"
    warm[$kind]+=" $(secs readall "$mnt")"
    umount "$mnt"; "mount_$kind"
    drop; find_[$kind]+=" $(secs walk "$mnt")"
    umount "$mnt"
    sleep 0.5
  done
done
for kind in "${kinds[@]}"; do
  echo "$kind: cold${cold[$kind]}; warm${warm[$kind]}; find${find_[$kind]}"
  # shellcheck disable=SC2086
  cold[$kind]=$(median ${cold[$kind]}); warm[$kind]=$(median ${warm[$kind]})
  # shellcheck disable=SC2086
  find_[$kind]=$(median ${find_[$kind]})
done
echo "median of $runs runs each; every run on a fresh mount after dropping caches"
printf "%-28s %10s %10s %10s %12s\n" measure ours nydusd erofs ours/nydusd
for m in cold warm find_; do
  declare -n t=$m
  printf "%-28s %10.3f %10.3f %10.3f %12.2f\n" "$m (s)" "${t[ours]}" "${t[nydusd]}" "${t[erofs]}" \
    "$(echo "${t[ours]} / ${t[nydusd]}" | bc -l)"
done
