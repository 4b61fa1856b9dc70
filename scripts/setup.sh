#!/usr/bin/env bash
# Installs everything Hafen needs on a Debian 12 machine (run as root) and
# builds it: Debian packages, the musl target, the guest kernel (cached),
# the host CLI and the static hafen-init. Safe to run again: each step is
# skipped when its result is already there.
#
# Prints nothing but progress on stderr; `source scripts/env.sh` afterwards
# (or let scripts/demo.sh and scripts/test.sh do it) to get HAFEN_INIT.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }

# 1. Debian packages (apt-get update once, only when something is missing).
mapfile -t packages < <(grep -v '^\s*#' scripts/packages.txt | sed 's/\s.*//' | grep .)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Rust: the musl target for the static init (static glibc is the fallback).
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl >&2 \
    || log "could not add the musl target; falling back to a static glibc build"
fi

# 3. The guest kernel, built once per config and source version.
kernel-config/build.sh >&2

# 4. The host CLI and the static init.
log "building hafen and hafen-init"
cargo build --release --quiet -p hafen
scripts/build-init.sh >/dev/null
log "ready"
