#!/usr/bin/env bash
# Time to ready and time to gone, as a user sees them: `hafen run -d` of
# examples/hello until `hafen ps` answers (with the service Up), and
# `hafen stop` until it returns (it returns once QEMU has exited), RUNS
# times each (default 5), medians and every run. The hello service traps
# SIGTERM and exits at once, so its own stop time is near zero and the stop
# figure is the machine's shutdown: PID 1 stopping it, unmounting, powering
# off, QEMU exiting. Issue 14's target: shutdown within the slowest
# container's stop time plus 100 ms.
#
# Usage: bench/ready.sh [RUNS]   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
. bench/common.sh
work=$(mktemp -d)
name=ready-$$
cleanup() {
  "$hafen" kill "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export XDG_RUNTIME_DIR=$work/run
mkdir -p "$work/hello/images"
scripts/busybox-image.sh "$work/hello/images/busybox" 1 >/dev/null
cp examples/hello/hafen.toml "$work/hello/"
"$hafen" build "$work/hello/hafen.toml" -o "$work/image" >/dev/null

ms() { python3 -c 'import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) / 1e6))' "$1" "$2"; }
ready=() gone=()
for i in $(seq "$runs"); do
  t0=$(date +%s%N)
  "$hafen" run -d --name "$name" "$work/image" >/dev/null
  until "$hafen" ps "$name" 2>/dev/null | grep -q 'web.*Up'; do sleep 0.01; done
  t1=$(date +%s%N)
  "$hafen" stop "$name" >/dev/null
  t2=$(date +%s%N)
  ready+=("$(ms "$t0" "$t1")")
  gone+=("$(ms "$t1" "$t2")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "examples/hello (TCG on this machine: nested KVM fails), median of $runs (ms):"
echo "  hafen run -d until hafen ps shows the service Up: $(median "${ready[@]}")   (${ready[*]})"
echo "  hafen stop until QEMU has exited:                 $(median "${gone[@]}")   (${gone[*]})"
echo "  target: stop <= the slowest container's stop time (about 0 here: web exits on SIGTERM) + 100 ms"
