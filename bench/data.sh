# Benchmark inputs, made once under $work (sourced by the bench scripts).

# The Linux 6.1 source tree (Debian package linux-source-6.1), 78,611 files.
ensure_linux() {
  if [ ! -d "$work/linux-source-6.1" ]; then
    [ -f /usr/src/linux-source-6.1.tar.xz ] || apt-get install -y -qq linux-source-6.1
    tar -xf /usr/src/linux-source-6.1.tar.xz -C "$work"
  fi
}

# One 4 GiB file: 1 MiB random and 1 MiB of text, alternating.
ensure_big4g() {
  if [ ! -f "$work/big4g/mixed" ]; then
    mkdir -p "$work/big4g"
    python3 - "$work/big4g/mixed" <<'PY'
import os, sys
text = (b"The quick brown fox jumps over the lazy dog; compressible text. " * 16384)[:1 << 20]
with open(sys.argv[1], "wb") as f:
    for i in range(4096):
        f.write(os.urandom(1 << 20) if i % 2 else text)
PY
  fi
}
