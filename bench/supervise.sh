#!/usr/bin/env bash
# Supervision benchmark, under TCG: what a crash-looping container (restart
# "always", exits at once) costs PID 1. Samples PID 1's CPU time (`hafen
# inspect VM`, CLOCK_PROCESS_CPUTIME_ID in the guest) and the restart count
# over a window, after the back-off has grown; prints CPU per restart, the
# share over the window, and the share once the back-off sits at its 30 s
# cap, next to the same VM's PID 1 with no crash loop over the same window.
# Target: a crash loop costs PID 1 under 1% CPU.
#
# Usage: bench/supervise.sh [WINDOW_SECONDS]   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-40}
. bench/common.sh
need jq
work=$(mktemp -d)
loop=bench-crash-$$
calm=bench-calm-$$
cleanup() {
  "$hafen" kill "$loop" >/dev/null 2>&1 || true
  "$hafen" kill "$calm" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/images"
scripts/busybox-image.sh "$work/images/busybox" 1 >/dev/null

manifest() { # NAME CRASH_RESTART
  cat <<EOF2
name = "$1"
[[container]]
name = "idle"
image = "oci:images/busybox:1"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait \$!; done"]
[[container]]
name = "crash"
image = "oci:images/busybox:1"
restart = "$2"
command = ["/bin/sh", "-c", "exit 1"]
EOF2
}
manifest crashloop always > "$work/loop.toml"
manifest calm no > "$work/calm.toml"
"$hafen" build "$work/loop.toml" -o "$work/loop" >/dev/null
"$hafen" build "$work/calm.toml" -o "$work/calm" >/dev/null
"$hafen" run -d --accel tcg --name "$loop" "$work/loop" >/dev/null
"$hafen" run -d --accel tcg --name "$calm" "$work/calm" >/dev/null

sample() { # VM -> "cpu_ns boottime_ns restarts"
  local cpu restarts
  cpu=$("$hafen" inspect "$1" | jq -r '.guest.init_cpu_ns')
  restarts=$("$hafen" inspect "$1" crash | jq -r '.restart_count')
  echo "$cpu $(date +%s%N) $restarts"
}
# Let the back-off grow past its first steps (0.1 + 0.2 + ... + 3.2 s).
sleep 8
read -r l_cpu0 l_t0 l_r0 < <(sample "$loop")
read -r c_cpu0 c_t0 _ < <(sample "$calm")
sleep "$window"
read -r l_cpu1 l_t1 l_r1 < <(sample "$loop")
read -r c_cpu1 c_t1 _ < <(sample "$calm")

awk -v lc=$((l_cpu1 - l_cpu0)) -v lt=$((l_t1 - l_t0)) -v r=$((l_r1 - l_r0)) \
    -v cc=$((c_cpu1 - c_cpu0)) -v ct=$((c_t1 - c_t0)) -v total="$l_r1" 'BEGIN {
  printf "window %.1f s, %d restarts in it (%d in all)\n", lt / 1e9, r, total
  printf "%-34s %12s %10s\n", "", "PID 1 CPU", "share"
  printf "%-34s %9.1f ms %9.3f%%\n", "crash loop (restart always)", lc / 1e6, 100 * lc / lt
  printf "%-34s %9.1f ms %9.3f%%\n", "no crash loop (restart no)", cc / 1e6, 100 * cc / ct
  if (r > 0) {
    per = (lc - cc * lt / ct) / r
    printf "PID 1 CPU per restart: %.1f ms; at the 30 s back-off cap: %.3f%% (target < 1%%)\n", per / 1e6, 100 * per / 30e9
  }
}'
