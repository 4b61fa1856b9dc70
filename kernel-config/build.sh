#!/usr/bin/env bash
# Builds Hafen's guest kernel from Debian's linux-source-6.1 package:
# tinyconfig + hafen.config. Output: vmlinux (PVH entry, for `-M microvm`)
# and bzImage, cached outside the repository under
#   ${HAFEN_CACHE:-$HOME/.cache/hafen}/kernel/<key>/
# where <key> hashes the fragment, this script and the source version, so a
# build happens only when one of them changes. The cache's `default` symlink
# points at the newest build; `hafen build` uses it when no kernel is given.
#
# Usage: kernel-config/build.sh [--print-dir]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${HAFEN_CACHE:-$HOME/.cache/hafen}/kernel
tarball=/usr/src/linux-source-6.1.tar.xz

if [ ! -f "$tarball" ]; then
  echo "kernel-config/build.sh: $tarball is missing; install it with: apt-get install linux-source-6.1" >&2
  exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s-%Y "$tarball")
key=$( { echo "$src_version"; cat "$here/hafen.config" "$here/build.sh"; } | sha256sum | cut -c1-16)
out=$cache/$key

if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
  ln -sfn "$key" "$cache/default"
  [ "${1:-}" = "--print-dir" ] && echo "$out" || echo "kernel: cached at $out" >&2
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "kernel: building linux-source-6.1 ($src_version), key $key; this takes several minutes" >&2
tar -C "$work" -xf "$tarball"
cd "$work"/linux-source-6.1
make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$here/hafen.config" >/dev/null
make -s olddefconfig

# Every option the fragment asks for must have survived olddefconfig.
missing=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  opt=${line%%=*} val=${line#*=}
  if [ "$val" = n ]; then
    grep -qx "$opt=y" .config && { echo "kernel: $opt is set but the fragment asks for n" >&2; missing=1; }
  elif ! grep -qx "$line" .config; then
    echo "kernel: $line did not survive olddefconfig (a dependency is missing)" >&2
    missing=1
  fi
done < "$here/hafen.config"
[ "$missing" = 0 ] || exit 1

make -s -j"$(nproc)" vmlinux bzImage >&2
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp arch/x86/boot/bzImage "$out.tmp/bzImage"
cp .config "$out.tmp/config"
rm -rf "$out"
mv "$out.tmp" "$out"
ln -sfn "$key" "$cache/default"
echo "kernel: built $out" >&2
[ "${1:-}" = "--print-dir" ] && echo "$out"
exit 0
