#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), seeded from small real images of
# ours and of upstream (read_image: RAFS v6 and v5 bootstraps of both). Fails on any
# crash, hang (-timeout) or out-of-memory (-rss_limit).
#   fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1   # cargo-fuzz's sanitizer flags on the stable toolchain
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
mkdir -p "$seeds/src/d" corpus/read_image corpus/blob_meta corpus/stargz_toc corpus/build_tree corpus/tar_layer
printf hello > "$seeds/src/a"; ln -s a "$seeds/src/l"; printf x > "$seeds/src/d/b"
setfattr -n user.k -v v "$seeds/src/a" 2>/dev/null || true
cargo run -q --manifest-path ../Cargo.toml --bin nydus-image -- \
  create --log-level warn -B "$seeds/ours.boot" -D "$seeds" "$seeds/src" >/dev/null
cargo run -q --manifest-path ../Cargo.toml --bin nydus-image -- \
  create --log-level warn -v 5 -B "$seeds/ours-v5.boot" -D "$seeds" "$seeds/src" >/dev/null
cp "$seeds/ours.boot" "$seeds/ours-v5.boot" corpus/read_image/
# With a prefetch table (a directory, a file, a symlink and a path that is not there).
printf '/d\n/a\n/l\n/missing\n' | cargo run -q --manifest-path ../Cargo.toml --bin nydus-image -- \
  create --log-level warn --prefetch-policy fs -B "$seeds/ours-prefetch.boot" -D "$seeds" "$seeds/src" >/dev/null
cp "$seeds/ours-prefetch.boot" corpus/read_image/
printf '/d\n/a\n/l\n/missing\n' | cargo run -q --manifest-path ../Cargo.toml --bin nydus-image -- \
  create --log-level warn -v 5 --prefetch-policy fs -B "$seeds/ours-v5-prefetch.boot" -D "$seeds" "$seeds/src" >/dev/null
cp "$seeds/ours-v5-prefetch.boot" corpus/read_image/
up="${NYDUS_UPSTREAM_ROOT:-/opt/nydus-upstream-2.2.0}/bin/nydus-image"
if [ -x "$up" ]; then
  "$up" create --log-level warn -B "$seeds/up.boot" -D "$seeds" "$seeds/src" >/dev/null 2>&1 && cp "$seeds/up.boot" corpus/read_image/
  printf '/d\n/a\n/l\n/missing\n' | "$up" create --log-level warn --prefetch-policy fs -B "$seeds/up-prefetch.boot" -D "$seeds" "$seeds/src" >/dev/null 2>&1 && cp "$seeds/up-prefetch.boot" corpus/read_image/
  "$up" create --log-level warn --fs-version 5 -B "$seeds/up-v5.boot" -D "$seeds" "$seeds/src" >/dev/null 2>&1 && cp "$seeds/up-v5.boot" corpus/read_image/
fi
for b in "$seeds"/*; do [ -f "$b" ] && [ ${#b} -gt 60 ] && tail -c 4200 "$b" > corpus/blob_meta/$(basename "$b" | cut -c1-16); done
cp ../tests/fuzz-seeds/*.toc.json corpus/stargz_toc/
head -c 600 /dev/urandom > corpus/build_tree/random-seed
# tar_layer: a first byte (even: plain tar, odd: gzip) and the stream, in POSIX and GNU
# formats.
for fmt in posix gnu; do
  { printf '\0'; tar --format=$fmt --xattrs -cf - -C "$seeds/src" .; } > corpus/tar_layer/seed-$fmt
  { printf '\1'; tar --format=$fmt --xattrs -cf - -C "$seeds/src" . | gzip; } > corpus/tar_layer/seed-$fmt-gz
done
for t in read_image blob_meta stargz_toc build_tree tar_layer; do
  extra=()
  # tar_layer builds through the stream chunker, whose scoped worker threads are still
  # running their thread-local destructors (crossbeam's channel context) when libFuzzer's
  # per-input leak check looks: LeakSanitizer then reports those 112 bytes as leaked. The
  # input that showed it did not leak when replayed alone (0 of 5 runs), so leak checks
  # are off for this target only; crashes, hangs and memory limits still fail it.
  [ "$t" = tar_layer ] && extra=(-detect_leaks=0)
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 "${extra[@]}"
done
