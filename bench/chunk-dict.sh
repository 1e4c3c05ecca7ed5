#!/usr/bin/env bash
# Chunk-dictionary savings on real data: a Debian bookworm minbase rootfs is the
# dictionary image; a second rootfs with python3 is built with and without it, by us and
# by upstream nydus-image 2.2.0 in the same run. Prints new-blob sizes, chunks reused and
# build times (median of 3, warm page cache). Needs root and debootstrap (Debian's mirror).
#   bench/chunk-dict.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/var/tmp/nydus-bench}
mkdir -p "$work"
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
[ -d "$work/rootfs-min" ] || debootstrap --variant=minbase bookworm "$work/rootfs-min" >/dev/null
[ -d "$work/rootfs-py" ] || debootstrap --variant=minbase --include=python3 bookworm "$work/rootfs-py" >/dev/null
cargo build --release -q
ours=target/release/nydus-image
upstream="${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}/bin/nydus-image"
d="$work/dict"
rm -rf "$d" && mkdir -p "$d"
median() { printf "%s\n" "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
# Warm page cache for both trees, so neither tool pays for the first read.
tar -cf - -C "$work" rootfs-min rootfs-py | cat >/dev/null
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
newblob() { # largest blob file newer than the dictionary's, in $1
  find "$1" -maxdepth 1 -type f -newer "$d/$2" ! -name '*.boot' ! -name '*.json' -printf '%s %f\n' | sort -n | tail -1
}
for tool in ours upstream; do
  bin=${!tool}
  mkdir -p "$d/$tool"
  $bin create --log-level warn -B "$d/$tool/dict.boot" -D "$d/$tool" "$work/rootfs-min" >/dev/null 2>&1
  sleep 1
  tw=(); to=()
  for _ in 1 2 3; do
    rm -rf "$d/$tool/plain" && mkdir -p "$d/$tool/plain"
    to+=("$(secs $bin create --log-level warn -B "$d/$tool/plain.boot" -D "$d/$tool/plain" "$work/rootfs-py")")
    find "$d/$tool" -maxdepth 1 -type f -newer "$d/$tool/dict.boot" ! -name '*.boot' -delete
    tw+=("$(secs $bin create --log-level warn -J "$d/$tool/with.json" --chunk-dict "bootstrap=$d/$tool/dict.boot" \
      -B "$d/$tool/with.boot" -D "$d/$tool" "$work/rootfs-py")")
  done
  t_without=$(median "${to[@]}"); t_with=$(median "${tw[@]}")
  plain=$(find "$d/$tool/plain" -type f -printf '%s\n' | sort -n | tail -1)
  with=$(newblob "$d/$tool" "$tool/dict.boot" | cut -d' ' -f1)
  eval "${tool}_plain=$plain ${tool}_with=${with:-0} ${tool}_tw=$t_with ${tool}_to=$t_without"
done
reused=$(python3 -c "import json;d=json.load(open('$d/ours/with.json'));print(d['dict_chunks'], d['dict_bytes'], d['chunks'])")
printf "%-34s %14s %14s %8s\n" measure ours upstream ratio
printf "%-34s %14d %14d %8.3f\n" "new blob without dict (bytes)" "$ours_plain" "$upstream_plain" "$(echo "$ours_plain/$upstream_plain" | bc -l)"
printf "%-34s %14d %14d %8.3f\n" "new blob with dict (bytes)" "$ours_with" "$upstream_with" "$(echo "$ours_with/$upstream_with" | bc -l)"
printf "%-34s %14.3f %14.3f %8.3f\n" "build time without dict (s)" "$ours_to" "$upstream_to" "$(echo "$ours_to/$upstream_to" | bc -l)"
printf "%-34s %14.3f %14.3f %8.3f\n" "build time with dict (s)" "$ours_tw" "$upstream_tw" "$(echo "$ours_tw/$upstream_tw" | bc -l)"
set -- $reused
echo "ours: $1 of $3 chunks ($2 bytes) reused from the dictionary"
