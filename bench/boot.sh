#!/usr/bin/env bash
# Boot benchmark: kernel start -> first container exec with hafen-init,
# against kernel start -> a trivial static /init on the same kernel and the
# same QEMU command line (`hafen run`), each booted RUNS times (default 5).
# Figures come from CLOCK_BOOTTIME inside the guest; wall time from
# `hafen run` start to exit is printed too. Target: ratio <= 1.05.
#
# Usage: bench/boot.sh [RUNS]     (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
hafen=target/release/hafen
HAFEN_INIT=${HAFEN_INIT:-$(scripts/build-init.sh)}
export HAFEN_INIT
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The Hafen image: busybox image, one `once` container running /bin/true.
mkdir -p "$work/hafen/images"
scripts/busybox-image.sh "$work/hafen/images/busybox" 1 >/dev/null
cp bench/boot/hafen.toml "$work/hafen/"
$hafen build "$work/hafen/hafen.toml" -o "$work/hafen-image" >/dev/null

# The floor: same kernel, an initramfs holding only a trivial static /init.
mkdir -p "$work/trivial/root/dev" "$work/trivial-image"
gcc -static -O2 -o "$work/trivial/root/init" bench/boot/trivial-init.c
mknod "$work/trivial/root/dev/console" c 5 1
(cd "$work/trivial/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9n) > "$work/trivial-image/initramfs.cpio.gz"
cp "$work/hafen-image/vmlinux" "$work/trivial-image/vmlinux"
printf '{"name":"trivial","kernel":"vmlinux","initrd":"initramfs.cpio.gz","memory_mib":256}\n' > "$work/trivial-image/image.json"

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

boot() { # image pattern -> "guest_ms wall_ms"
  local start end out ms
  start=$(date +%s%N)
  out=$($hafen run "$1" 2>&1) || { echo "bench: boot of $1 failed:" >&2; echo "$out" >&2; exit 1; }
  end=$(date +%s%N)
  ms=$(echo "$out" | sed -n "s|.*$2 \([0-9]*\) ms after kernel start.*|\1|p" | head -1)
  [ -n "$ms" ] || { echo "bench: no timing line in:" >&2; echo "$out" >&2; exit 1; }
  echo "$ms $(( (end - start) / 1000000 ))"
}

: > "$work/hafen.txt"; : > "$work/trivial.txt"
for i in $(seq "$runs"); do
  boot "$work/trivial-image" "reached /init" >> "$work/trivial.txt"
  boot "$work/hafen-image" "started" >> "$work/hafen.txt"
done
t_guest=$(cut -d' ' -f1 "$work/trivial.txt" | median)
h_guest=$(cut -d' ' -f1 "$work/hafen.txt" | median)
t_wall=$(cut -d' ' -f2 "$work/trivial.txt" | median)
h_wall=$(cut -d' ' -f2 "$work/hafen.txt" | median)
accel=$($hafen run "$work/trivial-image" 2>&1 | sed -n 's/.*accelerator: \([a-z]*\).*/\1/p' | head -1)
echo "boot benchmark, $runs runs each, median (accelerator: ${accel:-see hafen run})"
printf '  %-44s %8s ms   (wall, hafen run start to exit: %s ms)\n' "kernel start -> trivial /init" "$t_guest" "$t_wall"
printf '  %-44s %8s ms   (wall, hafen run start to exit: %s ms)\n' "kernel start -> first container exec (hafen)" "$h_guest" "$h_wall"
awk -v h="$h_guest" -v t="$t_guest" 'BEGIN { printf "  ratio hafen / trivial init: %.3f (target <= 1.05)\n", h / t }'
