#!/usr/bin/env bash
# Control plane benchmark, under TCG: medians of the `hafen ps` round trip
# and of `hafen exec VM c /bin/true` (hyperfine), log throughput from a
# container writing to its stdout to `hafen logs -f` on the host, and PID
# 1's RSS with 20 running containers whose 1 MiB log rings are full.
# Targets: ps < 20 ms, exec < 100 ms, logs >= 20 MB/s, RSS < 4 MiB + rings.
#
# Usage: bench/control.sh [RUNS] [FLOOD_MIB]   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
flood_mib=${2:-64}
. bench/common.sh
need hyperfine
work=$(mktemp -d)
vm=bench-$$
rings=bench-rings-$$
cleanup() {
  "$hafen" kill "$vm" >/dev/null 2>&1 || true
  "$hafen" kill "$rings" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/images"
scripts/busybox-image.sh "$work/images/busybox" 1 >/dev/null

# VM 1: `c` idles (ps, exec); `flood` makes FLOOD_MIB MiB of 64-byte lines
# in a file first, then `cat`s it to stdout once /go exists and exits
# (which ends `hafen logs -f`): the figure is the path from the container's
# stdout to the host, not a generator sharing the guest's one vCPU.
cat > "$work/hafen.toml" <<EOF
name = "controlbench"
[[container]]
name = "c"
image = "oci:images/busybox:1"
command = ["/bin/sh", "-c", "while true; do sleep 1; done"]
[[container]]
name = "flood"
image = "oci:images/busybox:1"
command = ["/bin/sh", "-c", "yes 012345678901234567890123456789012345678901234567890123456789012 | head -c $((flood_mib << 20)) > /tmp/flood; touch /tmp/made; while [ ! -e /go ]; do usleep 20000; done; cat /tmp/flood"]
EOF
"$hafen" build "$work/hafen.toml" -o "$work/image" >/dev/null
"$hafen" run -d --accel tcg --memory 512 --name "$vm" "$work/image" >/dev/null

hyperfine -N --warmup 5 --runs "$runs" --export-json "$work/ps.json" \
  -n ps "$hafen ps $vm" >&2
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/exec.json" \
  -n exec "$hafen exec $vm c /bin/true" >&2

# Log throughput: bytes that reach `hafen logs -f` on the host, from the
# trigger until the container's output has ended, three times.
: > "$work/logs.txt"
for i in 1 2 3; do
  "$hafen" restart -t 1 "$vm" flood >/dev/null
  "$hafen" logs -f --tail 0 "$vm" flood > "$work/out" &
  follower=$!
  # The follower is subscribed once a line written after it started shows.
  until grep -q subscribed "$work/out"; do
    kill -0 "$follower" 2>/dev/null || { echo "bench: hafen logs -f ended early" >&2; exit 1; }
    "$hafen" exec "$vm" flood sh -c 'echo subscribed > /proc/1/fd/1'
  done
  "$hafen" exec "$vm" flood sh -c 'while [ ! -e /tmp/made ]; do usleep 20000; done'
  start=$(date +%s%N)
  "$hafen" exec "$vm" flood touch /go
  wait "$follower"
  end=$(date +%s%N)
  bytes=$(grep -v '^subscribed$' "$work/out" | wc -c)
  echo "$bytes $(( end - start ))" >> "$work/logs.txt"
done

# VM 2: 20 containers, each writes 1.5 MiB of output (its 1 MiB ring
# wraps) and then sleeps.
{
  echo 'name = "ringbench"'
  for i in $(seq -w 1 20); do
    cat <<EOF
[[container]]
name = "r$i"
image = "oci:images/busybox:1"
command = ["/bin/sh", "-c", "yes 0123456789012345678901234567890123456789012345678901234567890 | head -c 1572864; exec sleep 1000000"]
EOF
  done
} > "$work/rings.toml"
"$hafen" build "$work/rings.toml" -o "$work/rings-image" >/dev/null
"$hafen" run -d --accel tcg --name "$rings" --memory 512 "$work/rings-image" >/dev/null
# Full once the rings hold 20 MB and stop growing (every writer is done).
previous=-1
for _ in $(seq 300); do
  "$hafen" inspect "$rings" > "$work/guest.json"
  used=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["guest"]["log_bytes"])' "$work/guest.json")
  if [ "$used" = "$previous" ] && [ "$used" -ge 20000000 ]; then break; fi
  previous=$used
  sleep 1
done

python3 - "$work/ps.json" "$work/exec.json" "$work/logs.txt" "$work/guest.json" "$flood_mib" <<'PY'
import json, statistics, sys
ps, ex, logs, guest, flood_mib = sys.argv[1:6]
med = lambda path: json.load(open(path))["results"][0]["median"] * 1000
rates = []
for line in open(logs):
    nbytes, ns = map(int, line.split())
    rates.append(nbytes / (ns / 1e9) / 1e6)
    if nbytes != int(flood_mib) << 20:
        print("  note: logs -f got %d of %d bytes" % (nbytes, int(flood_mib) << 20))
g = json.load(open(guest))["guest"]
rss, rings = g["init_rss_bytes"] / 2**20, g["log_bytes"] / 2**20
beyond = rss - rings
def verdict(ok):
    return "met" if ok else "NOT met"
print("control plane under TCG (medians):")
print("  hafen ps round trip        %7.1f ms   (target < 20 ms: %s)" % (med(ps), verdict(med(ps) < 20)))
print("  hafen exec c /bin/true     %7.1f ms   (target < 100 ms: %s)" % (med(ex), verdict(med(ex) < 100)))
print("  logs -f throughput         %7.1f MB/s (target >= 20 MB/s: %s; runs: %s)"
      % (statistics.median(rates), verdict(statistics.median(rates) >= 20), ", ".join("%.1f" % r for r in rates)))
print("  PID 1 RSS, 20 full rings   %7.2f MiB  (rings %.2f MiB, beyond them %.2f MiB; target < 4 MiB: %s)"
      % (rss, rings, beyond, verdict(beyond < 4)))
PY
