#!/usr/bin/env bash
# Network benchmark, under TCG. One VM with two containers running the same
# servers: `bridged` (its own network namespace, reached through a
# published port: QEMU's hostfwd to the container's address, routed and
# proxy-ARPed by the VM) and `hostnet` (`network = "host"`, QEMU's hostfwd
# straight to the VM's own address: the floor under slirp). Measured from
# the host, alternating the two: bulk TCP host -> container (MIB MiB into
# `nc -e wc -c`, timed until the byte count comes back) and request
# latency (connect, HTTP GET of a 3-byte file from busybox httpd, close).
# Then kernel start to first container, bridge vs host networking (median
# of RUNS boots each).
#
# Usage: bench/network.sh [MIB] [REQUESTS] [RUNS]   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-32}
requests=${2:-200}
runs=${3:-5}
. bench/common.sh
need python3
work=$(mktemp -d)
vm=bench-net-$$
cleanup() {
  "$hafen" kill "$vm" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/busybox-image.sh "$work/images/busybox" 1 >/dev/null
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
bulk_b=$(free_port); http_b=$(free_port); bulk_h=$(free_port); http_h=$(free_port)
server() { # BULK_PORT HTTP_PORT
  echo "[\"/bin/sh\", \"-c\", \"mkdir -p /www && echo ok > /www/i && httpd -p $2 -h /www && echo ready && exec nc -ll -p $1 -e wc -c\"]"
}
cat > "$work/net.toml" <<EOF
name = "netbench"
[[container]]
name = "bridged"
image = "oci:images/busybox:1"
ports = ["$bulk_b:9000", "$http_b:80"]
command = $(server 9000 80)
[[container]]
name = "hostnet"
image = "oci:images/busybox:1"
network = "host"
ports = ["$bulk_h:9001", "$http_h:81"]
command = $(server 9001 81)
EOF
"$hafen" build "$work/net.toml" -o "$work/net" >/dev/null
"$hafen" run -d --accel tcg --name "$vm" "$work/net" >/dev/null

python3 - "$mib" "$requests" "$bulk_b" "$http_b" "$bulk_h" "$http_h" <<'PY'
import socket, statistics, sys, time
mib, requests, bulk_b, http_b, bulk_h, http_h = map(int, sys.argv[1:])
size = mib << 20
chunk = b"\0" * (1 << 20)

def bulk(port):
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.perf_counter()
    for _ in range(mib):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while (data := s.recv(64)):
        reply += data
    t = time.perf_counter() - t0
    s.close()
    if int(reply) != size:
        sys.exit(f"bulk to {port}: the container counted {reply!r}, not {size}")
    return size / t / 1e6

def request(port):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /i HTTP/1.0\r\n\r\n")
    answer = b""
    while (data := s.recv(4096)):
        answer += data
    s.close()
    if not answer.startswith(b"HTTP/1.") or not answer.endswith(b"ok\n"):
        sys.exit(f"request to {port}: {answer!r}")
    return (time.perf_counter() - t0) * 1e3

def ready(port):
    deadline = time.time() + 120
    while True:
        try:
            return request(port)
        except (OSError, ValueError):
            if time.time() > deadline:
                sys.exit(f"port {port} never answered")
            time.sleep(0.2)

ready(http_b); ready(http_h)
bulk(bulk_b); bulk(bulk_h)  # warm both paths
rates = {"bridged": [], "host": []}
for _ in range(5):
    rates["bridged"].append(bulk(bulk_b))
    rates["host"].append(bulk(bulk_h))
lat = {"bridged": [], "host": []}
for _ in range(requests):
    lat["bridged"].append(request(http_b))
    lat["host"].append(request(http_h))
med = {k: statistics.median(v) for k, v in rates.items()}
lmed = {k: statistics.median(v) for k, v in lat.items()}
spread = lambda v: f"{min(v):.1f}-{max(v):.1f}"
print(f"bulk TCP host -> container, {mib} MiB x 5 (MB/s, median, min-max):")
print(f"  published port (bridge): {med['bridged']:7.1f}  ({spread(rates['bridged'])})")
print(f"  host network (floor):    {med['host']:7.1f}  ({spread(rates['host'])})")
print(f"  ratio bridge/floor:      {med['bridged'] / med['host']:7.2f}  (target >= 0.8)")
print(f"HTTP request (connect, GET, close), {requests} each (ms, median, min-max):")
print(f"  published port (bridge): {lmed['bridged']:7.2f}  ({spread(lat['bridged'])})")
print(f"  host network (floor):    {lmed['host']:7.2f}  ({spread(lat['host'])})")
print(f"  ratio bridge/floor:      {lmed['bridged'] / lmed['host']:7.2f}")
PY
"$hafen" kill "$vm" >/dev/null 2>&1 || true

# Boot: kernel start to first container, one container, bridge vs host.
for mode in bridge host; do
  cat > "$work/boot-$mode.toml" <<EOF
name = "netboot"
[[container]]
name = "hello"
image = "oci:images/busybox:1"
network = "$mode"
phase = "once"
command = ["/bin/true"]
EOF
  "$hafen" build "$work/boot-$mode.toml" -o "$work/boot-$mode" >/dev/null
done
first_exec() {
  "$hafen" run --accel tcg --name "$vm" "$1" 2>&1 |
    awk '/first container .* started/ { for (i = 1; i <= NF; i++) if ($i == "ms") { print $(i-1); exit } }'
}
declare -A boots=([bridge]="" [host]="")
for _ in $(seq "$runs"); do
  for mode in bridge host; do
    boots[$mode]+="$(first_exec "$work/boot-$mode") "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
b=$(median <<<"${boots[bridge]}"); h=$(median <<<"${boots[host]}")
echo "kernel start to first container, median of $runs (ms):"
echo "  bridge (own namespace, veth, routes): $b   (${boots[bridge]% })"
echo "  host network:                         $h   (${boots[host]% })"
echo "  networking's cost:                    $((b - h)) ms"
