#!/usr/bin/env bash
# Container start benchmark: `hafen-init runtime run` against crun and runc
# (Debian's packages) on the same busybox `/bin/true` bundle from
# `runc spec`, plus the floor: unshare + chroot with no runtime at all.
# Target: hafen <= 0.6x crun's median wall time.
#
# A second run keeps `runc spec`'s linux.resources (a deny-all device rule,
# so each runtime loads its eBPF device filter) for hafen against runc; crun
# cannot load its filter here (it raises RLIMIT_MEMLOCK, which this sandbox
# forbids), so it sits that one out.
#
# crun 1.8 refuses this machine's hybrid cgroup layout (v1 controllers
# plus a v2 hierarchy), so everything runs inside a private mount namespace
# with a pure cgroup2 mount on /sys/fs/cgroup; the host's mounts are untouched.
#
# Usage: bench/runtime.sh [RUNS]   (after scripts/setup.sh; needs root)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
for tool in crun runc hyperfine unshare; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing; run scripts/setup.sh" >&2; exit 1; }
done
init=${HAFEN_INIT:-$(scripts/build-init.sh)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One bundle for every runtime: busybox-static, `runc spec`, /bin/true.
bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/true"
(cd "$bundle" && runc spec)
devices=$work/devices
mkdir -p "$devices"
python3 - "$bundle/config.json" "$devices/config.json" <<'PY'
import json, sys
path, with_devices = sys.argv[1], sys.argv[2]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["/bin/true"]
spec["root"]["path"] = path.rsplit("/", 1)[0] + "/rootfs"
json.dump(spec, open(with_devices, "w"), indent=1)
spec["root"]["path"] = "rootfs"
# crun loads an eBPF device filter for linux.resources.devices and raises
# RLIMIT_MEMLOCK for it, which this sandbox forbids, so the three-way
# comparison leaves the rule out for everyone.
spec["linux"].pop("resources", None)
json.dump(spec, open(path, "w"), indent=1)
PY

inner=$work/inner.sh
cat > "$inner" <<INNER
#!/usr/bin/env bash
set -euo pipefail
mount --make-rprivate /
umount -R /sys/fs/cgroup 2>/dev/null || true
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p $work/root-hafen $work/root-crun $work/root-runc
# Each runtime deletes its container when \`run\` returns, so ids can repeat.
for r in "$init runtime --root $work/root-hafen" "crun --root $work/root-crun" "runc --root $work/root-runc"; do
  \$r run --bundle $bundle check-\$RANDOM >/dev/null || { echo "bench: \$r cannot run the bundle" >&2; exit 1; }
done
hyperfine -N --warmup 20 --runs $runs --export-json $work/result.json \
  -n hafen "$init runtime --root $work/root-hafen run --bundle $bundle hafen" \
  -n crun "crun --root $work/root-crun run --bundle $bundle crun" \
  -n runc "runc --root $work/root-runc run --bundle $bundle runc" \
  -n floor "unshare --pid --mount --uts --ipc --net --fork chroot $bundle/rootfs /bin/true" >&2
for r in "$init runtime --root $work/root-hafen" "runc --root $work/root-runc"; do
  \$r run --bundle $devices check-\$RANDOM >/dev/null || { echo "bench: \$r cannot run the bundle with devices" >&2; exit 1; }
done
hyperfine -N --warmup 20 --runs $runs --export-json $work/devices.json \
  -n hafen "$init runtime --root $work/root-hafen run --bundle $devices hafen" \
  -n runc "runc --root $work/root-runc run --bundle $devices runc" >&2
INNER
chmod +x "$inner"
unshare --mount --propagation private "$inner"

python3 - "$work/result.json" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
med = {name: results[name]["median"] * 1000 for name in results}
print("container start, median wall time over %d runs each:" % len(results["hafen"]["times"]))
for name in ("floor", "hafen", "crun", "runc"):
    print("  %-6s %7.2f ms   (%.2fx the floor)" % (name, med[name], med[name] / med["floor"]))
print("  hafen / crun = %.2f (target <= 0.60)" % (med["hafen"] / med["crun"]))
print("  hafen / runc = %.2f" % (med["hafen"] / med["runc"]))
PY
python3 - "$work/devices.json" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
med = {name: results[name]["median"] * 1000 for name in results}
print("with runc spec's default devices and resources (eBPF device filter):")
for name in ("hafen", "runc"):
    print("  %-6s %7.2f ms" % (name, med[name]))
print("  hafen / runc = %.2f" % (med["hafen"] / med["runc"]))
PY
