#!/usr/bin/env bash
# Volume benchmark, under TCG: sequential write (dd with conv=fsync) and
# fsync rate (append a line, `sync -d`, repeat) on a data-disk volume, on
# a host directory mapped with -v (virtio-9p), and on the host's own file
# system next to data.img, side by side; then kernel start to first
# container with a data disk vs the same image without volumes (median of
# RUNS boots each).
#
# Usage: bench/volumes.sh [MIB] [FSYNCS] [RUNS]   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-64}
fsyncs=${2:-200}
runs=${3:-3}
. bench/common.sh
work=$(mktemp -d)
vm=bench-vol-$$
cleanup() {
  "$hafen" kill "$vm" >/dev/null 2>&1 || true
  rm -rf "$work"
  # The VM's persistent directory (its data disk).
  rm -rf "${XDG_DATA_HOME:-$HOME/.local/share}/hafen/vms/$vm" "/var/lib/hafen/vms/$vm"
}
trap cleanup EXIT
mkdir -p "$work/images" "$work/hostdir"
scripts/busybox-image.sh "$work/images/busybox" 1 >/dev/null

now='cut -d " " -f 1 /proc/uptime'
cat > "$work/vol.toml" <<EOF2
name = "volbench"
data_size = "$((mib * 2 + 64))M"
[[volume]]
name = "v"
[[container]]
name = "bench"
image = "oci:images/busybox:1"
phase = "once"
volumes = ["v:/v"]
command = ["/bin/sh", "-c", """
t0=\$($now); dd if=/dev/zero of=/v/seq bs=1M count=$mib conv=fsync 2>/dev/null; t1=\$($now)
i=0; while [ \$i -lt $fsyncs ]; do echo record \$i >> /v/fs; sync -d /v/fs; i=\$((i + 1)); done; t2=\$($now)
rm -f /v/seq /v/fs
echo RESULT \$t0 \$t1 \$t2
"""]
EOF2
sed -e 's/^volumes = .*//' -e '/^\[\[volume\]\]/,+1d' -e 's/^data_size.*//' \
    -e 's|/v/|/tmp/|g' "$work/vol.toml" > "$work/novol.toml"
"$hafen" build "$work/vol.toml" -o "$work/vol" >/dev/null
"$hafen" build "$work/novol.toml" -o "$work/novol" >/dev/null

# One boot; prints "t0 t1 t2" from the container and the boot figure.
boot() { # IMAGE [ARGS...]
  local image=$1; shift
  "$hafen" run --accel tcg --name "$vm" "$@" "$image" 2>&1 |
    awk '/RESULT/ { r = $(NF-2) " " $(NF-1) " " $NF }
         /first container .* started/ { for (i = 1; i <= NF; i++) if ($i == "ms") { b = $(i-1); break } }
         END { print r, b }'
}
rates() { # "t0 t1 t2" -> "MB/s fsyncs/s"
  awk -v m="$mib" -v n="$fsyncs" '{ printf "%.1f %.0f\n", m * 1.048576 / ($2 - $1), n / ($3 - $2) }' <<<"$1"
}

read -r a b c disk_boot < <(boot "$work/vol")
read -r disk_mbs disk_fs < <(rates "$a $b $c")
read -r a b c _ < <(boot "$work/vol" -v "$work/hostdir:v")
read -r nine_mbs nine_fs < <(rates "$a $b $c")

# The host's own file system, where data.img lives.
hostdir=$(dirname "$(ls -d "${XDG_DATA_HOME:-$HOME/.local/share}/hafen/vms/$vm" /var/lib/hafen/vms/"$vm" 2>/dev/null | head -1)/x")
t0=$(date +%s.%N); dd if=/dev/zero of="$hostdir/seq" bs=1M count="$mib" conv=fsync 2>/dev/null; t1=$(date +%s.%N)
for i in $(seq "$fsyncs"); do echo "record $i" >> "$hostdir/fs"; sync -d "$hostdir/fs"; done; t2=$(date +%s.%N)
rm -f "$hostdir/seq" "$hostdir/fs"
read -r host_mbs host_fs < <(rates "$t0 $t1 $t2")

with=(); without=()
for _ in $(seq "$runs"); do
  with+=("$(boot "$work/vol" | awk '{ print $4 }')")
  without+=("$(boot "$work/novol" | awk '{ print $4 }')")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mw=$(median "${with[@]}"); mo=$(median "${without[@]}")

printf '%-40s %12s %12s\n' "($mib MiB written, $fsyncs fsyncs)" "seq MB/s" "fsyncs/s"
printf '%-40s %12s %12s\n' "volume on the data disk (virtio-blk)" "$disk_mbs" "$disk_fs"
printf '%-40s %12s %12s\n' "host directory, -v (virtio-9p)" "$nine_mbs" "$nine_fs"
printf '%-40s %12s %12s\n' "host file system (dd, sync -d)" "$host_mbs" "$host_fs"
awk -v d="$disk_mbs" -v h="$host_mbs" -v df="$disk_fs" -v hf="$host_fs" \
  'BEGIN { printf "data disk / host: %.2f (seq), %.2f (fsync)\n", d / h, df / hf }'
echo "kernel start -> first container, median of $runs: with a data disk ${mw} ms, without ${mo} ms (+$((mw - mo)) ms)"
