#!/usr/bin/env bash
# Lazy loading from a registry: our mount against upstream nydusd 2.2 (blobcache), the
# same images served to both from Debian's docker-registry on 127.0.0.1 behind a proxy
# that adds latency to each request and caps the bandwidth (bench/lazy/proxy.py), which
# also counts the requests and body bytes that cross it.
#
# Cases, interleaved round by round (RUNS rounds, medians), each after dropping caches,
# timed from starting the mount to the end of the workload:
#   ours-cold / nydusd-cold        a Debian bookworm rootfs with python3, a fresh cache
#                                  dir: chroot MNT python3 -c 'import ...'
#   ours-restart / nydusd-restart  the same again, mounted over the cache dir just filled;
#                                  RESTARTS times per round, alternating (restarts are
#                                  short, and their run-to-run spread is as large as the
#                                  gap between the two daemons: more samples per median)
#   ours-pre / nydusd-pre          an image whose prefetch table (create --prefetch-policy
#                                  fs) is our mount's --access-log of the workload, fresh
#                                  cache dirs; nydusd with fs_prefetch enabled (upstream's
#                                  default prefetch_all: true), nydusd-pre-table also
#                                  with prefetch_all: false (the table only)
#   ours-linux / nydusd-linux      the Linux 6.1 tree read whole: tar -cf - -C MNT . | wc -c
#   up-ours-cold / up-nydusd-cold  an image built by upstream's nydus-image from the same
#                                  rootfs, cold, both
# Our mount gets --cache-dir only when `mount --help` lists it, and OURS_FLAGS if set
# (OURS_PRE_FLAGS too in ours-pre).
# Needs root, docker-registry, curl, debootstrap (installed if missing).
#   RUNS=3 RESTARTS=5 LATENCY_MS=20 RATE_MBPS=40 bench/lazy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
work=${BENCH_DIR:-/var/tmp/nydus-bench}
runs=${RUNS:-3}
restarts=${RESTARTS:-5}
latency_ms=${LATENCY_MS:-20}
rate_mbps=${RATE_MBPS:-40}
imports='import json, email.parser, http.client, urllib.request, decimal'
rootfs="$work/rootfs-python"
linux="$work/linux-source-6.1"
b="$work/lazy"
upstream_root=${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}
nydusd="$upstream_root/bin/nydusd"
upstream_image="$upstream_root/bin/nydus-image"
ours="$top/target/release/nydus-image"
repo=bench/lazy
read -r -a ours_flags <<<"${OURS_FLAGS:-}"
read -r -a ours_pre_flags <<<"${OURS_PRE_FLAGS:-}"

mkdir -p "$work"
if [ ! -d "$rootfs" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
  rm -rf "$rootfs.tmp"
  debootstrap --variant=minbase --include=python3 bookworm "$rootfs.tmp" \
    http://deb.debian.org/debian >/dev/null
  rm -f "$rootfs.tmp"/var/cache/apt/archives/*.deb
  mv "$rootfs.tmp" "$rootfs"
fi
if [ ! -d "$linux" ]; then
  [ -f /usr/src/linux-source-6.1.tar.xz ] || apt-get install -y -qq linux-source-6.1
  tar -xf /usr/src/linux-source-6.1.tar.xz -C "$work"
fi
cargo build --release -q
ours_has() { "$ours" mount --help | grep -q -- "$1"; }
if ours_has --cache-dir; then cache_flag=1; else cache_flag=0; fi

# Everything below lives in $b and is removed at exit, with every process started here:
# the registry and the proxy (pids), the mount daemon running now, if any (daemon).
pids=()
daemon=
cleanup() {
  local status=$?
  set +e
  if [ "$status" != 0 ]; then
    for l in "$b"/*.log "$b"/registry/log; do
      [ -s "$l" ] && { echo "--- last lines of $l" >&2; tail -n 15 "$l" >&2; }
    done
  fi
  for m in "$b"/m-*; do
    if grep -q " $m " /proc/mounts 2>/dev/null; then umount "$m" 2>/dev/null || umount -l "$m"; fi
  done
  for p in "${pids[@]}" $daemon; do kill "$p" 2>/dev/null; done
  sleep 0.5
  rm -rf "$b"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$b" && mkdir -p "$b/m-ours" "$b/m-nydusd"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_http() { # URL: up to 20 s
  for _ in $(seq 200); do curl -fs -o /dev/null "$1" && return; sleep 0.1; done
  echo "$1 does not answer" >&2; exit 1
}

# The registry, and the proxy in front of it.
reg="127.0.0.1:$(free_port)"
mkdir -p "$b/registry/data"
cat > "$b/registry/config.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $b/registry/data
http:
  addr: $reg
YML
docker-registry serve "$b/registry/config.yml" >"$b/registry/log" 2>&1 &
pids+=($!)
wait_http "http://$reg/v2/"
python3 bench/lazy/proxy.py --upstream "$reg" --latency-ms "$latency_ms" --rate-mbps "$rate_mbps" \
  --port-file "$b/proxy.port" >/dev/null 2>"$b/proxy.log" &
pids+=($!)
for _ in $(seq 100); do [ -f "$b/proxy.port" ] && break; sleep 0.1; done
proxy="127.0.0.1:$(cat "$b/proxy.port")"
wait_http "http://$proxy/__stats"

# Pushes FILE as a blob of $repo (POST an upload, PUT its data with the digest).
push() {
  local file=$1 digest loc sep
  digest=$(sha256sum "$file" | cut -d' ' -f1)
  loc=$(curl -fsS -X POST -D - -o /dev/null "http://$reg/v2/$repo/blobs/uploads/" |
    tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case $loc in http*) ;; *) loc="http://$reg$loc" ;; esac
  case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -fsS -o /dev/null -T "$file" -H 'Content-Type: application/octet-stream' \
    "$loc${sep}digest=sha256:$digest"
  curl -fsS -o /dev/null -I "http://$reg/v2/$repo/blobs/sha256:$digest"
}

# Builds SRC into $b/NAME/boot with BUILDER (ours or upstream's) and pushes its one blob
# (named by its sha256, which is the blob id); stdin goes to create (prefetch patterns).
build() {
  local name=$1 builder=$2 src=$3 blob
  shift 3
  mkdir -p "$b/$name/blobs"
  "$builder" create --log-level warn "$@" --bootstrap "$b/$name/boot" \
    --blob-dir "$b/$name/blobs" "$src" >/dev/null
  blob=$(ls "$b/$name/blobs")
  [ "$(echo "$blob" | wc -l)" = 1 ] || { echo "$name: not one blob: $blob" >&2; exit 1; }
  [ "$(sha256sum "$b/$name/blobs/$blob" | cut -d' ' -f1)" = "$blob" ] ||
    { echo "$name: blob $blob is not named by its sha256" >&2; exit 1; }
  push "$b/$name/blobs/$blob"
  echo "$name: $(du -b "$b/$name/boot" | cut -f1) B bootstrap, $(du -b "$b/$name/blobs/$blob" | cut -f1) B blob"
  rm -rf "$b/$name/blobs" # the registry has it
}

cat > "$b/ours-backend.json" <<JSON
{"scheme":"http","host":"$proxy","repo":"$repo","timeout":60,"retry_limit":2}
JSON
# nydusd's configuration: CACHE_DIR, fs_prefetch enable, prefetch_all.
nydusd_config() {
  cat <<JSON
{"device":{"backend":{"type":"registry","config":{"scheme":"http","host":"$proxy","repo":"$repo",
  "timeout":60,"retry_limit":2}},
  "cache":{"type":"blobcache","config":{"work_dir":"$1"}}},
 "mode":"direct","digest_validate":false,"iostats_files":false,"enable_xattr":true,
 "fs_prefetch":{"enable":$2,"threads_count":4,"merging_size":131072,"prefetch_all":$3}}
JSON
}

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
mounted() { grep -q " $1 " /proc/mounts; }
wait_gone() { # PID: up to 20 s
  for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  echo "process $1 did not exit after unmount" >&2; exit 1
}

# mount_ours IMAGE CACHE_DIR [flags...]
mount_ours() {
  local image=$1 cache=$2 out
  shift 2
  local flags=("${ours_flags[@]}" "$@")
  [ "$cache_flag" = 1 ] && flags+=(--cache-dir "$cache")
  out=$("$ours" mount --daemon --log-level warn --log-file "$b/ours.log" --bootstrap "$b/$image/boot" \
    --backend-type registry --backend-config-file "$b/ours-backend.json" "${flags[@]}" \
    "$b/m-ours" 2>&1) || { echo "$out" >&2; exit 1; }
  daemon=$(sed -n 's/^daemon \([0-9]*\) serving.*/\1/p' <<<"$out")
  [ -n "$daemon" ] || { echo "no daemon pid in: $out" >&2; exit 1; }
}
# mount_nydusd IMAGE CACHE_DIR PREFETCH PREFETCH_ALL
mount_nydusd() {
  nydusd_config "$2" "$3" "$4" > "$b/nydusd.json"
  "$nydusd" --config "$b/nydusd.json" --mountpoint "$b/m-nydusd" --bootstrap "$b/$1/boot" \
    --rlimit-nofile 0 --log-level warn >>"$b/nydusd.log" 2>&1 &
  daemon=$!
  for _ in $(seq 1000); do mounted "$b/m-nydusd" && return; sleep 0.01; done
  echo "nydusd did not mount; its log:" >&2; cat "$b/nydusd.log" >&2; exit 1
}
unmount() { umount "$1"; wait_gone "$daemon"; daemon=; }

python_run() {
  chroot "$1" python3 -c "$imports" ||
    { echo "the workload failed in $1 (exit $?)" >&2; exit 1; }
}
tar_run() { tar -cf - -C "$1" . | wc -c; }

declare -A wall bytes reqs tarbytes
# run CASE KIND IMAGE CACHE FRESH WORKLOAD [mount args...]: one timed run.
run() {
  local case=$1 kind=$2 image=$3 cache=$4 fresh=$5 workload=$6 s e stats out
  shift 6
  if [ "$fresh" = 1 ]; then rm -rf "$cache"; fi
  mkdir -p "$cache"
  drop
  curl -fsS -o /dev/null "http://$proxy/__reset"
  s=$(now)
  "mount_$kind" "$image" "$cache" "$@"
  out=$("${workload}_run" "$b/m-$kind")
  e=$(now)
  stats=$(curl -fsS "http://$proxy/__stats")
  unmount "$b/m-$kind"
  wall[$case]+=" $(echo "$e - $s" | bc)"
  bytes[$case]+=" $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["bytes"])' "$stats")"
  reqs[$case]+=" $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$stats")"
  if [ "$workload" = tar ]; then tarbytes[$case]+=" $out"; fi
}

echo "building and pushing images"
build py "$ours" "$rootfs"
build linux "$ours" "$linux"
# The access log of one run of the workload (not timed), as the prefetch list.
mkdir -p "$b/cache-log"
mount_ours py "$b/cache-log" --access-log "$b/access.log"
python_run "$b/m-ours"
unmount "$b/m-ours"
rm -rf "$b/cache-log"
echo "access log: $(wc -l < "$b/access.log") files read by the workload"
build pre "$ours" "$rootfs" --prefetch-policy fs < "$b/access.log"
build up-py "$upstream_image" "$rootfs"

co="$b/cache-ours"
cn="$b/cache-nydusd"
cases=(ours-cold ours-restart nydusd-cold nydusd-restart ours-pre nydusd-pre nydusd-pre-table
  ours-linux nydusd-linux up-ours-cold up-nydusd-cold)
for round in $(seq "$runs"); do
  echo "round $round of $runs"
  run ours-cold ours py "$co" 1 python
  run nydusd-cold nydusd py "$cn" 1 python false false
  for _ in $(seq "$restarts"); do
    run ours-restart ours py "$co" 0 python
    run nydusd-restart nydusd py "$cn" 0 python false false
  done
  run ours-pre ours pre "$co" 1 python "${ours_pre_flags[@]}"
  run nydusd-pre nydusd pre "$cn" 1 python true true
  run nydusd-pre-table nydusd pre "$cn" 1 python true false
  run ours-linux ours linux "$co" 1 tar
  run nydusd-linux nydusd linux "$cn" 1 tar false false
  run up-ours-cold ours up-py "$co" 1 python
  run up-nydusd-cold nydusd up-py "$cn" 1 python false false
done

# The Linux tree must read back the same through both.
read -r -a t <<<"${tarbytes[ours-linux]} ${tarbytes[nydusd-linux]}"
for x in "${t[@]}"; do
  [ "$x" = "${t[0]}" ] || { echo "tar bytes differ: ${t[*]}" >&2; exit 1; }
done

median() { printf "%s\n" "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
declare -A mw mb mr
echo
echo "raw: case: wall (s); bytes; requests"
for c in "${cases[@]}"; do
  echo "$c:${wall[$c]};${bytes[$c]};${reqs[$c]}"
  # shellcheck disable=SC2086
  mw[$c]=$(median ${wall[$c]}); mb[$c]=$(median ${bytes[$c]}); mr[$c]=$(median ${reqs[$c]})
done
echo
echo "python3 workload: chroot MNT python3 -c '$imports'; Linux 6.1: tar of the whole tree" \
  "(${t[0]} bytes through each)"
echo "link: +${latency_ms} ms per request, ${rate_mbps} MB/s shared; medians of $runs runs" \
  "($((runs * restarts)) for restarts);" \
  "our mount flags: ${ours_flags[*]:-none}$([ "$cache_flag" = 1 ] && echo ' --cache-dir' ||
    echo ' (no --cache-dir: our restart is another cold start)'); $(nproc) cores"
printf "%-18s %9s %12s %9s\n" case wall-s bytes requests
for c in "${cases[@]}"; do
  printf "%-18s %9.3f %12d %9d\n" "$c" "${mw[$c]}" "${mb[$c]}" "${mr[$c]}"
done
echo
ratio() { echo "scale=3; $1 / $2" | bc -l; }
# what, ours case, nydusd case, target on the time ratio, whether bytes must not exceed
check() {
  local rt rb ok=yes
  rt=$(ratio "${mw[$2]}" "${mw[$3]}")
  if [ "${mb[$3]}" = 0 ]; then rb=-; else rb=$(ratio "${mb[$2]}" "${mb[$3]}"); fi
  [ "$(echo "$rt <= $4" | bc -l)" = 1 ] || ok=no
  if [ "$5" = bytes ] && [ "${mb[$2]}" -gt "${mb[$3]}" ]; then ok=no; fi
  if [ "$5" = zero ] && [ "${mb[$2]}" != 0 ]; then ok=no; fi
  printf "%-36s %-34s time %6s  bytes %6s  target: time <= %sx%s: %s\n" "$1" "$2 / $3" "$rt" "$rb" "$4" \
    "$([ "$5" = bytes ] && echo ', bytes <=' || { [ "$5" = zero ] && echo ', no bytes'; })" "$ok"
}
check "cold start" ours-cold nydusd-cold 0.8 bytes
check "restart over the cache dir" ours-restart nydusd-restart 1 zero
check "prefetch table vs nydusd without" ours-pre nydusd-cold 0.5 -
check "prefetch table vs nydusd fs_prefetch" ours-pre nydusd-pre 1 -
check "prefetch table vs nydusd table only" ours-pre nydusd-pre-table 1 -
check "Linux tree read whole" ours-linux nydusd-linux 1 -
check "upstream-built image, cold" up-ours-cold up-nydusd-cold 0.8 bytes
