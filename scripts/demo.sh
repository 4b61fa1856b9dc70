#!/usr/bin/env bash
# The example, end to end: install and build everything, make a busybox OCI
# image, build examples/hello into out/hello, boot it in QEMU with its
# console here, and shut it down gracefully once its service is up (or when
# you press Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
HAFEN_INIT=$(scripts/build-init.sh)
export HAFEN_INIT

scripts/busybox-image.sh examples/hello/images/busybox 1 >/dev/null
target/release/hafen build examples/hello/hafen.toml -o out/hello

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "demo: booting out/hello (Ctrl-C shuts it down gracefully)"
target/release/hafen run out/hello > >(tee "$log") 2>&1 &
run=$!
trap 'kill -TERM $run 2>/dev/null || true' INT
for _ in $(seq 600); do
  grep -q "waiting for SIGTERM" "$log" && break
  kill -0 $run 2>/dev/null || break
  sleep 0.1
done
sleep 2
echo "demo: asking the guest to shut down (SIGTERM to hafen run)"
kill -TERM $run 2>/dev/null || true
status=0
wait $run || status=$?
echo "demo: hafen run exited with status $status"
exit $status
