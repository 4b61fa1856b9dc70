#!/usr/bin/env bash
# Registry pull benchmark, side by side in one run: an image of LAYERS
# layers of MIB MiB each (random, gzip) served by Debian's docker-registry
# on 127.0.0.1, pulled cold (empty store) by `hafen image pull` and copied
# by `skopeo copy docker://… oci:…` (the peer), then pulled warm (every
# blob in the store), then `hafen build` of a manifest using it with
# hafen.lock and the store warm (nothing to fetch). Medians of RUNS.
#
# Usage: bench/pull.sh [LAYERS] [MIB] [RUNS]   (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${1:-8}
mib=${2:-4}
runs=${3:-5}
. bench/common.sh
need docker-registry
need skopeo
need python3
work=$(mktemp -d)
registry_pid=
cleanup() {
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
EOF
env $(env | sed -n 's/^\(REGISTRY_[^=]*\)=.*/-u \1/p') docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null; do sleep 0.1; done

# The image: an OCI layout with LAYERS random layers.
python3 - "$work/layout" "$layers" "$mib" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
out, layers, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
blobs = os.path.join(out, "blobs", "sha256"); os.makedirs(blobs)
def put(data):
    digest = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, digest), "wb").write(data)
    return "sha256:" + digest, len(data)
descs, diffs = [], []
for i in range(layers):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(f"layer{i}/data"); payload = os.urandom(mib << 20)
        info.size = len(payload); info.mtime = 0; t.addfile(info, io.BytesIO(payload))
    diffs.append("sha256:" + hashlib.sha256(raw.getvalue()).hexdigest())
    digest, size = put(gzip.compress(raw.getvalue(), compresslevel=1, mtime=0))
    descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/layer0/data"]},
                     "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
cd, cs = put(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                       "layers": descs}).encode()
md, ms = put(manifest)
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "t"}}]},
          open(os.path.join(out, "index.json"), "w"))
PY
image=127.0.0.1:$port/bench:1
skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$work/layout:t" "docker://$image"

ms() { python3 -c 'import sys; print(round((int(sys.argv[2]) - int(sys.argv[1])) / 1e6, 1))' "$1" "$2"; }
timed() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N); ms "$t0" "$t1"; }
cold_hafen=() cold_skopeo=() warm_hafen=() warm_build=()
for i in $(seq "$runs"); do
  rm -rf "$work/cache" "$work/skopeo"
  cold_hafen+=("$(XDG_CACHE_HOME=$work/cache timed "$hafen" image pull --quiet "$image")")
  cold_skopeo+=("$(timed skopeo --insecure-policy copy --quiet --src-tls-verify=false "docker://$image" "oci:$work/skopeo:t")")
  warm_hafen+=("$(XDG_CACHE_HOME=$work/cache timed "$hafen" image pull --quiet "$image")")
done
# A warm build: hafen.lock pins the image and the store has it.
mkdir -p "$work/app"
printf 'name = "pullbench"\n[[container]]\nname = "app"\nimage = "%s"\n' "$image" > "$work/app/hafen.toml"
XDG_CACHE_HOME=$work/cache "$hafen" build "$work/app/hafen.toml" -o "$work/out" >/dev/null
for i in $(seq "$runs"); do
  warm_build+=("$(XDG_CACHE_HOME=$work/cache timed "$hafen" build "$work/app/hafen.toml" -o "$work/out")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ch=$(median "${cold_hafen[@]}"); cs=$(median "${cold_skopeo[@]}")
wh=$(median "${warm_hafen[@]}"); wb=$(median "${warm_build[@]}")
echo "image: $layers layers x $mib MiB (gzip, random), registry on 127.0.0.1; median of $runs (ms):"
echo "  cold pull, hafen image pull:        $ch   (${cold_hafen[*]})"
echo "  cold copy, skopeo copy to oci:      $cs   (${cold_skopeo[*]})"
echo "  ratio hafen/skopeo:                 $(python3 -c "print(round($ch / $cs, 2))")  (target <= 1)"
echo "  warm pull (all blobs in the store): $wh   (${warm_hafen[*]})"
echo "  warm hafen build (pinned, cached):  $wb   (${warm_build[*]})  (target < 1000)"
