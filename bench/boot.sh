#!/usr/bin/env bash
# Boot benchmark: kernel start -> first container exec with hafen-init,
# against kernel start -> a trivial static /init on the same kernel and the
# same QEMU command line (`hafen run` of the same image.json, with only the
# initramfs swapped: the same NIC, control port, data disk and forwards),
# boots alternating, RUNS each (default 7). Two Hafen images:
#   hello  examples/hello as it is (a once container, then a service);
#   full   a data disk (a volume the first container mounts), a published
#          port on its bridge network, and the control channel.
# Figures come from CLOCK_BOOTTIME inside the guest: the trivial /init
# prints when it was reached, hafen-init when it started and when the first
# container exec'd. Printed: medians with min-max, the whole ratio (target
# <= 1.05) and hafen-init's own share (its start to the first exec) as a
# part of the trivial boot (target <= 5%).
#
# Usage: bench/boot.sh [RUNS]     (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
. bench/common.sh
work=$(mktemp -d)
vm=bench-boot-$$
run_pid=
cleanup() {
  [ -n "$run_pid" ] && kill -KILL "$run_pid" 2>/dev/null || true
  rm -rf "$work" "${XDG_DATA_HOME:-$HOME/.local/share}/hafen/vms/$vm" "/var/lib/hafen/vms/$vm"
}
trap cleanup EXIT

# examples/hello, with its busybox image made here.
cp -r examples/hello "$work/hello"
scripts/busybox-image.sh "$work/hello/images/busybox" 1 >/dev/null
$hafen build "$work/hello/hafen.toml" -o "$work/hello-image" >/dev/null

# The full example: volume on the data disk, a published port, control channel.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/full"
cp -r "$work/hello/images" "$work/full/"
cat > "$work/full/hafen.toml" <<EOF
name = "bootfull"
data_size = "64M"
[[volume]]
name = "data"
[[container]]
name = "web"
image = "oci:images/busybox:1"
volumes = ["data:/data"]
ports = ["127.0.0.1:$port:80"]
command = ["/bin/sh", "-c", "echo up > /data/state; exec httpd -f -p 80 -h /data"]
EOF
$hafen build "$work/full/hafen.toml" -o "$work/full-image" >/dev/null

# The floor: each example's image with an initramfs holding only a trivial
# static /init instead of its own.
mkdir -p "$work/trivial/root/dev"
gcc -static -O2 -o "$work/trivial/root/init" bench/boot/trivial-init.c
mknod "$work/trivial/root/dev/console" c 5 1
(cd "$work/trivial/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9n) > "$work/trivial.cpio.gz"
for ex in hello full; do
  mkdir -p "$work/$ex-trivial"
  cp "$work/$ex-image/vmlinux" "$work/trivial.cpio.gz" "$work/$ex-trivial/"
  sed 's/"initrd": *"[^"]*"/"initrd": "trivial.cpio.gz"/' "$work/$ex-image/image.json" > "$work/$ex-trivial/image.json"
  grep -q trivial.cpio.gz "$work/$ex-trivial/image.json" || { echo "bench: cannot swap the initramfs in $ex's image.json" >&2; exit 1; }
done

stats() { # numbers on stdin -> "median (min-max)"
  sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s (%s-%s)", m, a[1], a[NR]}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }

trivial() { # IMAGE -> "ms"
  local out
  out=$($hafen run --name "$vm" "$1" 2>&1) || { echo "bench: trivial boot failed:" >&2; echo "$out" >&2; exit 1; }
  echo "$out" | sed -n 's/.*reached \/init \([0-9]*\) ms after kernel start.*/\1/p' | head -1
}

hafen_boot() { # IMAGE -> "exec_ms share_ms"; boots until the first exec, then stops the VM
  local log=$work/run.log line=
  : > "$log"
  $hafen run --name "$vm" "$1" > "$log" 2>&1 &
  run_pid=$!
  for _ in $(seq 600); do
    line=$(sed -n "s/.*first container (.*) started \([0-9]*\) ms after kernel start (hafen-init's share: \([0-9]*\) ms).*/\1 \2/p" "$log")
    [ -n "$line" ] && break
    kill -0 "$run_pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -TERM "$run_pid" 2>/dev/null || true
  wait "$run_pid" || true
  run_pid=
  [ -n "$line" ] || { echo "bench: no first-container line from $1:" >&2; cat "$log" >&2; exit 1; }
  echo "$line"
}

for ex in hello full; do : > "$work/$ex.txt"; : > "$work/$ex-trivial.txt"; done
for _ in $(seq "$runs"); do
  for ex in hello full; do
    trivial "$work/$ex-trivial" >> "$work/$ex-trivial.txt"
    hafen_boot "$work/$ex-image" >> "$work/$ex.txt"
  done
done

echo "boot benchmark under $(grep -q tcg "$work/run.log" && echo TCG || echo KVM), $runs boots each, alternating; median (min-max), ms"
for ex in hello full; do
  t=$(median < "$work/$ex-trivial.txt")
  e=$(cut -d' ' -f1 "$work/$ex.txt" | median)
  s=$(cut -d' ' -f2 "$work/$ex.txt" | median)
  printf '  %-50s %s\n' "$ex: kernel start -> trivial /init" "$(stats < "$work/$ex-trivial.txt")"
  printf '  %-50s %s\n' "$ex: kernel start -> first container exec" "$(cut -d' ' -f1 "$work/$ex.txt" | stats)"
  printf '  %-50s %s\n' "$ex: hafen-init start -> first exec (its share)" "$(cut -d' ' -f2 "$work/$ex.txt" | stats)"
  awk -v e="$e" -v s="$s" -v t="$t" 'BEGIN { printf "  %-50s ratio %.3f (target <= 1.05), share %.1f%% of the trivial boot (target <= 5%%)\n", "", e / t, 100 * s / t }'
done
