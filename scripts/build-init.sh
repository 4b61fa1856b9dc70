#!/usr/bin/env bash
# Builds the static hafen-init (and the static hafen-check the isolation
# tests run inside containers) and prints hafen-init's path: musl when the
# target is installed, otherwise glibc with crt-static (both give binaries
# that need no libc in the guest).
set -euo pipefail
cd "$(dirname "$0")/.."
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  cargo build --release --quiet -p hafen-init -p hafen-check --target x86_64-unknown-linux-musl
  echo "$PWD/target/x86_64-unknown-linux-musl/release/hafen-init"
else
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet -p hafen-init -p hafen-check --target x86_64-unknown-linux-gnu
  echo "$PWD/target/x86_64-unknown-linux-gnu/release/hafen-init"
fi
