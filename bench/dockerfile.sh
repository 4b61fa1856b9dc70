#!/usr/bin/env bash
# Dockerfile build benchmark, side by side in one run: one multi-stage
# Dockerfile with five RUN steps and a COPY of FILES files, built by
# `hafen image build` (RUN steps in a builder VM, under TCG here) and by
# Debian's `buildah bud --isolation chroot --storage-driver vfs --layers`
# (RUN steps in a chroot on the host), from the same busybox base (an OCI
# archive for buildah, the local store for hafen). Three measures, medians
# of RUNS each:
#   cold     every step executed (--no-cache; base images already local)
#   cached   nothing changed: every step from the cache
#   changed  one copied file changed: the COPY and every later step again
#
# Usage: bench/dockerfile.sh [FILES] [RUNS]   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-300}
runs=${2:-3}
. bench/common.sh
need buildah
need python3
work=$(mktemp -d)
cleanup() {
  # buildah's vfs storage holds read-only directories.
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# The kernel stays where kernel-config/build.sh cached it; the store is
# private to this run.
export HAFEN_KERNEL=${HAFEN_KERNEL:-${HAFEN_CACHE:-$HOME/.cache/hafen}/kernel/default}
export HAFEN_CACHE=$work/store XDG_RUNTIME_DIR=$work/run
unset SOURCE_DATE_EPOCH

# The base: busybox-static and its applets.
mkdir -p "$work/base/bin" "$work/base/etc" "$work/base/tmp"
cp /bin/busybox "$work/base/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$work/base/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$work/base/etc/passwd"
printf 'root:x:0:\n' > "$work/base/etc/group"
"$hafen" image import "$work/base" --tag busybox:bench --env PATH=/bin --cmd /bin/sh >/dev/null
"$hafen" image save busybox:bench --format oci-archive -o "$work/base.tar"

# The context: FILES small files in 10 directories, and the Dockerfile.
ctx=$work/ctx
python3 - "$ctx" "$files" <<'PY'
import os, sys
ctx, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(ctx, "src", f"d{i % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"file {i}\n" * (1 + i % 50))
PY
cat > "$ctx/Dockerfile" <<'EOF'
ARG BASE=busybox:bench
FROM ${BASE} AS build
WORKDIR /work
COPY src/ ./src/
RUN find src -type f | wc -l > count
RUN find src -type f | sort | xargs cat | md5sum > sum
RUN mkdir out && cp -r src out/ && cp count sum out/
FROM ${BASE}
COPY --from=build /work/out /app
RUN ls -R /app | wc -l > /app/listing
RUN echo built > /app/done && sync
CMD ["cat", "/app/sum"]
EOF

bah() {
  buildah --root "$work/buildah/root" --runroot "$work/buildah/runroot" --storage-driver vfs "$@"
}
hafen_build() { "$hafen" image build -t bench:hafen "$@" "$ctx"; }
buildah_build() {
  BUILDAH_ISOLATION=chroot bah bud --isolation chroot --layers \
    --build-arg "BASE=oci-archive:$work/base.tar" -t bench:buildah "$@" "$ctx"
}
ms() { python3 -c 'import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) / 1e6))' "$1" "$2"; }
timed() {
  local t0 t1
  t0=$(date +%s%N)
  if ! "$@" >"$work/last.log" 2>&1; then cat "$work/last.log" >&2; exit 1; fi
  t1=$(date +%s%N)
  ms "$t0" "$t1"
}
change=$ctx/src/d3/f3.txt
cold_h=() cold_b=() cached_h=() cached_b=() changed_h=() changed_b=()
# Warm-up: both builders have every layer once, so `cached` is cached.
timed hafen_build >/dev/null
timed buildah_build >/dev/null
for i in $(seq "$runs"); do
  cold_h+=("$(timed hafen_build --no-cache)")
  cold_b+=("$(timed buildah_build --no-cache)")
  cached_h+=("$(timed hafen_build)")
  grep -q "no VM booted" "$work/last.log" || { echo "bench: a cached hafen build booted a VM" >&2; exit 1; }
  cached_b+=("$(timed buildah_build)")
  echo "change $i" >> "$change"
  changed_h+=("$(timed hafen_build)")
  changed_b+=("$(timed buildah_build)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { python3 -c "print(round($1 / $2, 2))"; }
row() {
  local name=$1 h b
  h=$(median "${@:2:$runs}")
  b=$(median "${@:$((runs + 2)):$runs}")
  printf '  %-8s %8s %8s   %5s\n' "$name" "$h" "$b" "$(ratio "$h" "$b")"
}
echo "Dockerfile: 2 stages, 5 RUN steps, COPY of $files files; median of $runs (ms); accel: hafen's builder VM under TCG (no nested KVM here), buildah chroot on the host"
printf '  %-8s %8s %8s   %5s\n' measure hafen buildah ratio
row cold "${cold_h[@]}" "${cold_b[@]}"
row cached "${cached_h[@]}" "${cached_b[@]}"
row changed "${changed_h[@]}" "${changed_b[@]}"
echo "  runs: hafen cold ${cold_h[*]}; buildah cold ${cold_b[*]}"
echo "  runs: hafen cached ${cached_h[*]}; buildah cached ${cached_b[*]}"
echo "  runs: hafen changed ${changed_h[*]}; buildah changed ${changed_b[*]}"
echo "  targets: cached hafen < 1000 ms; cold ratio <= 2"
