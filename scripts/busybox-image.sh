#!/usr/bin/env bash
# Makes an OCI image layout holding Debian's busybox-static, for the example
# and the tests: scripts/busybox-image.sh LAYOUT_DIR TAG
# Needs a built hafen (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
layout=$1 tag=${2:-1}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,etc,tmp,root}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
target/release/hafen image import "$rootfs" -o "$layout" --tag "$tag" \
  --env PATH=/bin --cmd /bin/sh
