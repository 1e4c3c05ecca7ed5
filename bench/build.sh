#!/usr/bin/env bash
# Build speed and memory: our nydus-image against upstream 2.2.0 on the same trees and
# settings (blake3, 1 MiB chunks; zstd and none), in one run. For each: wall time (median
# of RUNS warm runs, plus one cold run after dropping caches), user+sys CPU, peak RSS,
# bootstrap and blob sizes, and our/upstream ratios; our wall time with 1 and 2 threads
# (each a median of RUNS); and `tar -cf - -C TREE . | zstd -1 -T0 > /dev/null` as the
# practical limit. Needs root.
#   bench/build.sh [TREE...]   default: Linux 6.1 source, Debian minbase rootfs,
#                              one 4 GiB mixed file, 200,000 small files
#   FS_VERSION=5 bench/build.sh ...   both tools write RAFS v5 (default 6)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/var/tmp/nydus-bench}
runs=${RUNS:-3}
fs_version=${FS_VERSION:-6}
case "$fs_version" in 5|6) ;; *) echo "FS_VERSION must be 5 or 6" >&2; exit 2 ;; esac
mkdir -p "$work"
. bench/data.sh
cargo build --release -q
ours=$PWD/target/release/nydus-image
upstream="${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}/bin/nydus-image"
command -v zstd >/dev/null || apt-get install -y -qq zstd

trees=("$@")
if [ ${#trees[@]} -eq 0 ]; then
  ensure_linux
  if [ ! -d "$work/rootfs-min" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
    debootstrap --variant=minbase bookworm "$work/rootfs-min" >/dev/null
  fi
  ensure_big4g
  if [ ! -d "$work/small200k" ]; then
    python3 - "$work/small200k" <<'PY'
import os, sys, random
root = sys.argv[1]
rnd = random.Random(7)
for d in range(200):
    p = os.path.join(root, f"d{d:03}")
    os.makedirs(p)
    for i in range(1000):
        n = rnd.randint(1, 4096)
        with open(os.path.join(p, f"f{i:04}"), "wb") as f:
            f.write((f"{d}/{i} " * (n // 6 + 1)).encode()[:n])
PY
  fi
  trees=("$work/linux-source-6.1" "$work/rootfs-min" "$work/big4g" "$work/small200k")
fi

out="$work/build-out"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { printf "%s\n" "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
# run TOOL TREE COMPRESSOR THREADS -> "wall cpu rss_kb boot_bytes blob_bytes"
run() {
  local bin=$1 tree=$2 comp=$3 threads=$4
  rm -rf "$out" && mkdir -p "$out"
  NYDUS_BUILD_THREADS=$threads /usr/bin/time -o "$out.time" -f "%e %U %S %M" \
    "$bin" create --log-level warn --compressor "$comp" --digester blake3 --chunk-size 0x100000 \
    --fs-version "$fs_version" -B "$out/boot" -D "$out" "$tree" >/dev/null 2>&1
  read -r wall user sys rss < "$out.time"
  local boot blob
  boot=$(stat -c %s "$out/boot")
  blob=$(find "$out" -type f ! -name boot -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  echo "$wall $(echo "$user + $sys" | bc) $rss $boot $blob"
}
# measure TREE COMP THREADS -> two lines, ours then upstream: median wall, median cpu,
# max rss, boot, blob, cold wall. The two tools' runs alternate, so that this machine's
# drift in CPU and disk speed falls on both alike.
measure() {
  local tree=$1 comp=$2 threads=$3 ow=() oc=() orr=() uw=() uc=() ur=() a b m ocold ucold
  drop; read -r ocold _ <<< "$(run "$ours" "$tree" "$comp" "$threads")"
  drop; read -r ucold _ <<< "$(run "$upstream" "$tree" "$comp" "$threads")"
  for _ in $(seq "$runs"); do
    read -r a b m obo obl <<< "$(run "$ours" "$tree" "$comp" "$threads")"
    ow+=("$a"); oc+=("$b"); orr+=("$m")
    read -r a b m ubo ubl <<< "$(run "$upstream" "$tree" "$comp" "$threads")"
    uw+=("$a"); uc+=("$b"); ur+=("$m")
  done
  echo "$(median "${ow[@]}") $(median "${oc[@]}") $(printf "%s\n" "${orr[@]}" | sort -n | tail -1) $obo $obl $ocold"
  echo "$(median "${uw[@]}") $(median "${uc[@]}") $(printf "%s\n" "${ur[@]}" | sort -n | tail -1) $ubo $ubl $ucold"
}

echo "RAFS v$fs_version; cores: $(nproc); median of $runs warm runs, plus one cold run; sizes in bytes, RSS in KiB"
printf "%-14s %-5s %-9s %8s %8s %8s %9s %11s %12s\n" tree comp tool wall_s cold_s cpu_s rss_KiB bootstrap blob
for tree in "${trees[@]}"; do
  name=$(basename "$tree")
  tar -cf - -C "$tree" . | cat >/dev/null
  lim=()
  for _ in $(seq "$runs"); do
    s=$(date +%s.%N); tar -cf - -C "$tree" . | zstd -1 -T0 >/dev/null; e=$(date +%s.%N)
    lim+=("$(echo "$e - $s" | bc)")
  done
  for comp in zstd none; do
    both=$(measure "$tree" "$comp" 2)
    read -r ow oc orss ob obl ocold <<< "$(sed -n 1p <<< "$both")"
    read -r uw uc urss ub ubl ucold <<< "$(sed -n 2p <<< "$both")"
    printf "%-14s %-5s %-9s %8.2f %8.2f %8.2f %9d %11d %12d\n" "$name" "$comp" ours "$ow" "$ocold" "$oc" "$orss" "$ob" "$obl"
    printf "%-14s %-5s %-9s %8.2f %8.2f %8.2f %9d %11d %12d\n" "$name" "$comp" upstream "$uw" "$ucold" "$uc" "$urss" "$ub" "$ubl"
    printf "%-14s %-5s %-9s %8.2f %8.2f %8.2f %9.2f %11.3f %12.4f\n" "$name" "$comp" ratio \
      "$(echo "$ow/$uw" | bc -l)" "$(echo "$ocold/$ucold" | bc -l)" "$(echo "$oc/$uc" | bc -l)" \
      "$(echo "$orss/$urss" | bc -l)" "$(echo "$ob/$ub" | bc -l)" "$(echo "$obl/$ubl" | bc -l)"
    if [ "$comp" = zstd ]; then
      one=()
      for _ in $(seq "$runs"); do
        read -r w1 _ <<< "$(run "$ours" "$tree" zstd 1)"
        one+=("$w1")
      done
      w1=$(median "${one[@]}")
      printf "%-14s %-5s ours: 1 thread %.2f s, 2 threads %.2f s; tar|zstd -1 -T0 limit %.2f s (ours/limit %.2f)\n" \
        "$name" zstd "$w1" "$ow" "$(median "${lim[@]}")" "$(echo "$ow/$(median "${lim[@]}")" | bc -l)"
    fi
  done
done
rm -rf "$out" "$out.time"
