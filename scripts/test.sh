#!/usr/bin/env bash
# The whole test suite: installs what is missing (scripts/setup.sh), checks
# formatting and lints, then runs every test, including the ones that boot
# VMs in QEMU and the ones that need root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
HAFEN_INIT=$(scripts/build-init.sh)
export HAFEN_INIT
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast
