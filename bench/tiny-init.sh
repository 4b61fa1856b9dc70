#!/usr/bin/env bash
# hafen-init as a container's init, side by side with tini, tini-static,
# dumb-init and catatonit (Debian's packages). Every init runs as PID 1 of a
# fresh pid namespace: unshare --pid --fork --mount-proc INIT -- CMD.
#   1. RSS of the init while it supervises `sleep`       (target: <= tini-static)
#   2. 20,000 orphans exiting at once, all reaped         (target: <= fastest peer)
#   3. SIGTERM from outside to the child, median latency  (target: <= tini)
#   4. INIT -- /bin/true vs /bin/true, start-up overhead   (target: ratio <= catatonit's)
# 1-3 run ROUNDS times, the inits taking turns in each round so drift
# on this shared machine hits all alike; printed are the median and the
# spread (min-max) of the rounds, so a difference can be told from noise.
# Usage: bench/tiny-init.sh [ORPHANS] [SIGNALS] [ROUNDS]   (root; after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
orphans=${1:-20000}
signals=${2:-300}
rounds=${3:-9}
for tool in tini tini-static dumb-init catatonit hyperfine gcc python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing; run scripts/setup.sh" >&2; exit 1; }
done
hafen=${HAFEN_INIT:-$(scripts/build-init.sh)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -static -o "$work/orphans" bench/tiny/orphans.c
gcc -O2 -static -o "$work/sigwait" bench/tiny/sigwait.c

declare -A inits=(
  [hafen-init]="$hafen --"
  [tini]="$(command -v tini) --"
  [tini-static]="$(command -v tini-static) --"
  [dumb-init]="$(command -v dumb-init) --"
  [catatonit]="$(command -v catatonit) --"
)
order=(hafen-init tini tini-static dumb-init catatonit)
ns="unshare --pid --fork --mount-proc"

# The init is unshare's only child.
init_pid() { local u=$1 p=""; for _ in $(seq 500); do p=$(pgrep -P "$u" | head -1) && [ -n "$p" ] && break; sleep 0.01; done; echo "$p"; }

results=$work/results.txt
: > "$results"
for _ in $(seq "$rounds"); do
for name in "${order[@]}"; do
  init=${inits[$name]}
  # 1. RSS while supervising sleep (file pages count as they are mapped,
  #    which the kernel's fault-around makes vary: hence every round).
  $ns $init sleep 30 2>/dev/null & u=$!
  p=$(init_pid $u)
  for _ in $(seq 500); do pgrep -P "$p" >/dev/null && break; sleep 0.01; done
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$p/status)
  kill -KILL "$p" 2>/dev/null || true
  wait $u 2>/dev/null || true
  # 2. Reaping a storm of orphans.
  reap=$($ns $init "$work/orphans" "$orphans" | sed -n 's/.* in \([0-9.]*\) s/\1/p')
  # 3. SIGTERM latency to the child.
  lat=$(python3 - "$signals" $ns $init "$work/sigwait" <<'PY'
import os, signal, statistics, subprocess, sys, time
n = int(sys.argv[1])
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, text=True)
assert proc.stdout.readline().strip() == "ready"
init = None
for _ in range(500):
    kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    if kids:
        init = int(kids[0]); break
    time.sleep(0.01)
samples = []
for _ in range(n):
    t0 = time.monotonic_ns()
    os.kill(init, signal.SIGTERM)
    t1 = int(proc.stdout.readline())
    samples.append((t1 - t0) / 1000)
    time.sleep(0.002)
os.kill(init, signal.SIGKILL)
proc.wait()
print("%.1f" % statistics.median(samples))
PY
)
  echo "$name $reap $lat $rss" >> "$results"
done
done

# 4. Start-up overhead: INIT -- /bin/true against /bin/true, both as PID 1 of a new namespace.
hyperfine -N --warmup 10 --runs 100 --export-json "$work/start.json" -n bare "$ns /bin/true" \
  -n hafen-init "$ns ${inits[hafen-init]} /bin/true" -n tini "$ns ${inits[tini]} /bin/true" \
  -n tini-static "$ns ${inits[tini-static]} /bin/true" -n dumb-init "$ns ${inits[dumb-init]} /bin/true" \
  -n catatonit "$ns ${inits[catatonit]} /bin/true" >/dev/null

python3 - "$results" "$work/start.json" "$orphans" "$rounds" <<'PY'
import json, statistics, sys
reap, lat, rss = {}, {}, {}
for line in open(sys.argv[1]):
    name, r, l, m = line.split()
    reap.setdefault(name, []).append(float(r))
    lat.setdefault(name, []).append(float(l))
    rss.setdefault(name, []).append(int(m))
start = {r["command"]: r["median"] * 1000 for r in json.load(open(sys.argv[2]))["results"]}
med = statistics.median
def spread(v):
    return "%s-%s" % (fmt(min(v)), fmt(max(v)))
fmt = lambda x: "%.3f" % x if x < 10 else "%.1f" % x
print("tiny init, each as PID 1 of a new pid namespace (%s orphans; %s rounds, median and min-max)" % (sys.argv[3], sys.argv[4]))
print("  %-12s %17s %21s %23s %13s" % ("init", "RSS kB", "reap s", "TERM us (med/round)", "start / bare"))
for name in reap:
    print("  %-12s %5d (%9s) %8s (%11s) %8s (%12s) %13.2f" % (name, med(rss[name]), "%d-%d" % (min(rss[name]), max(rss[name])),
          fmt(med(reap[name])), spread(reap[name]), fmt(med(lat[name])), spread(lat[name]), start[name] / start["bare"]))
h = "hafen-init"
peers = [k for k in reap if k != h]
print("  RSS hafen / tini-static: %.2f (target <= 1)" % (med(rss[h]) / med(rss["tini-static"])))
fastest = min(peers, key=lambda k: med(reap[k]))
print("  reap hafen / fastest peer (%s): %.2f (target <= 1)" % (fastest, med(reap[h]) / med(reap[fastest])))
print("  TERM latency hafen / tini: %.2f (target <= 1)" % (med(lat[h]) / med(lat["tini"])))
hs, cs = start[h] / start["bare"], start["catatonit"] / start["bare"]
print("  start-up overhead hafen %.2fx vs catatonit %.2fx of bare /bin/true (target: hafen <= catatonit)" % (hs, cs))
PY
