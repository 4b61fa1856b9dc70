#!/usr/bin/env bash
# Time to ready and time to gone, as a user sees them: `hafen run -d` of
# examples/hello until `hafen ps` answers (with the service Up), and
# `hafen stop` until it returns (it returns once QEMU has exited), RUNS
# times each (default 5), medians and every run. The hello service traps
# SIGTERM and exits at once, so its own stop time is near zero and the stop
# figure is the machine's shutdown: PID 1 stopping it, unmounting, powering
# off, QEMU exiting. Issue 14's target: shutdown within the slowest
# container's stop time plus 100 ms; the guest's debug timeline gives the
# container's part (power button read -> supervisor done).
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
ready=() gone=() stopping=()
for i in $(seq "$runs"); do
  t0=$(date +%s%N)
  # hafen.log=debug: the guest's timeline tells the container's own stop
  # time (power button read -> every container gone) from the rest.
  "$hafen" run -d --name "$name" --append hafen.log=debug "$work/image" >/dev/null
  until "$hafen" ps "$name" 2>/dev/null | grep -q 'web.*Up'; do sleep 0.01; done
  t_ready=$(date +%s%N)
  console=$(ls -d "$XDG_RUNTIME_DIR/hafen/vms/$name"-*)/console.log
  tail -n0 -F "$console" > "$work/stop.log" 2>/dev/null &
  tail_pid=$!
  sleep 0.2
  t1=$(date +%s%N)
  "$hafen" stop "$name" >/dev/null
  t2=$(date +%s%N)
  sleep 0.2
  kill "$tail_pid" 2>/dev/null; wait "$tail_pid" 2>/dev/null || true
  ready+=("$(ms "$t0" "$t_ready")")
  gone+=("$(ms "$t1" "$t2")")
  stopping+=("$(tr -d '\r' < "$work/stop.log" | sed -n 's/^hafen: \[\([0-9.]*\) ms\] \(power button read\|supervisor done\)$/\1/p' |
    awk 'NR == 1 { a = $1 } NR == 2 { printf "%d\n", $1 - a }')")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "examples/hello (TCG on this machine: nested KVM fails), median of $runs (ms):"
echo "  hafen run -d until hafen ps shows the service Up: $(median "${ready[@]}")   (${ready[*]})"
echo "  hafen stop until QEMU has exited:                 $(median "${gone[@]}")   (${gone[*]})"
echo "    of which the container stopping (guest: power button read -> all exited): $(median "${stopping[@]}")   (${stopping[*]})"
echo "  target: stop <= the container's stop time + 100 ms"
