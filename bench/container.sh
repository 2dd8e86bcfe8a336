#!/usr/bin/env bash
# Container start latency (needs root, overlayfs, busybox-static and crun; installs the last two
# with apt-get if missing). Usage: bench/container.sh [N]
#  (a) through gaffer: a release `gaffer dev`, a busybox image imported, then N sequential
#      `gaffer submit --image busybox -- echo hi`: submit -> first byte of stdout (polling
#      /v1/jobs/ID/logs) and submit -> job succeeded.
#  (b) the runtime alone: N x (prepare + `gaffer shim DIR` + remove) of a container running
#      /bin/true (examples/container_bench.rs), side by side with N x `crun run` of the same
#      rootfs as an OCI bundle with the same memory/cpu limits, from the same harness.
source "$(dirname "$0")/lib.sh"
N="${1:-100}"
MEMORY=$((256 * 1024 * 1024))
CPUS=1

if [ "$(id -u)" != 0 ]; then echo "bench/container.sh needs root (namespaces, cgroups, overlayfs)" >&2; exit 1; fi
missing=()
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v crun >/dev/null 2>&1 || missing+=(crun)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
# The release binary must contain the current runtime; build the harness next to it.
(cd "$ROOT" && cargo build --release --quiet --bin gaffer && cargo build --release --quiet -p gaffer-runtime --example container_bench)
HARNESS="$ROOT/target/release/examples/container_bench"

start_dev
trap stop_dev EXIT

# A busybox root filesystem, packed and imported like tests/containers.rs does.
ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS"/{bin,etc,tmp,proc,dev,sys,work}
chmod 1777 "$ROOTFS/tmp"
cp /bin/busybox "$ROOTFS/bin/busybox"
for a in sh echo true cat ls; do ln -s busybox "$ROOTFS/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
tar -C "$ROOTFS" -czf "$WORK/busybox.tar.gz" .
"$GAFFER" image import busybox "$WORK/busybox.tar.gz" --all-nodes >/dev/null
for _ in $(seq 1 200); do
    curl -s "$GAFFER_ADDR/v1/nodes" | grep -q '"busybox"' && break
    sleep 0.1
done

echo "== (a) through gaffer dev: $N sequential tasks --image busybox -- echo hi"
python3 - "$GAFFER" "$GAFFER_ADDR" "$N" <<'PY'
import json, subprocess, sys, time, urllib.request, urllib.error
gaffer, addr, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def get(path):
    try:
        with urllib.request.urlopen(addr + path, timeout=10) as r:
            return r.read()
    except urllib.error.HTTPError:
        return b""
def run_one():
    t0 = time.perf_counter()
    jid = subprocess.run([gaffer, "submit", "-q", "--image", "busybox", "--", "echo", "hi"],
                         check=True, capture_output=True, text=True).stdout.strip()
    t_sub = time.perf_counter()
    deadline = t0 + 60
    while True:
        if get(f"/v1/jobs/{jid}/logs"):
            t_out = time.perf_counter(); break
        assert time.perf_counter() < deadline, f"{jid}: no output"
        time.sleep(0.001)
    while True:
        j = json.loads(get(f"/v1/jobs/{jid}?tasks_limit=0") or b"{}")
        st = j.get("state") or j.get("job", {}).get("state")
        if st == "succeeded":
            t_end = time.perf_counter(); break
        assert st not in ("failed", "killed") and time.perf_counter() < deadline, f"{jid}: {st}"
        time.sleep(0.001)
    return (t_sub - t0) * 1e3, (t_out - t0) * 1e3, (t_end - t0) * 1e3
run_one()  # warm-up
rows = [run_one() for _ in range(n)]
def stats(name, xs):
    xs = sorted(xs)
    q = lambda p: xs[round((len(xs) - 1) * p)]
    print(f"{name}: n={len(xs)} median={q(.5):.1f}ms p90={q(.9):.1f}ms min={xs[0]:.1f}ms max={xs[-1]:.1f}ms")
stats("submit (CLI returned)", [r[0] for r in rows])
stats("submit -> first output byte", [r[1] for r in rows])
stats("submit -> succeeded", [r[2] for r in rows])
PY

echo "== (b) runtime alone: $N x create+start+wait+delete of /bin/true (memory 256MiB, cpus $CPUS)"
BUNDLE="$WORK/bundle"
mkdir -p "$BUNDLE"
(cd "$BUNDLE" && crun spec)
python3 - "$BUNDLE/config.json" "$ROOTFS" "$MEMORY" "$CPUS" <<'PY'
import json, sys
path, rootfs, memory, cpus = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
c = json.load(open(path))
c["root"] = {"path": rootfs, "readonly": True}
c["hostname"] = "bench"
p = c["process"]
p["terminal"] = False
p["args"] = ["/bin/true"]
p["env"] = ["PATH=/bin"]
p["cwd"] = "/"
res = c["linux"].setdefault("resources", {})
res["memory"] = {"limit": memory, "swap": memory}
res["cpu"] = {"quota": int(cpus * 100000), "period": 100000}
json.dump(c, open(path, "w"), indent=2)
PY
HARNESS_ARGS=(--gaffer "$GAFFER" --rootfs "$ROOTFS" --n "$N" --memory "$MEMORY" --cpus "$CPUS" --crun-bundle "$BUNDLE")
if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] && [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ] &&
    [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]; then
    # A hybrid v1 host with controllers on the v2 hierarchy: crun refuses it. Run both runtimes
    # in a private mount namespace without the cgroup2 mount (pure v1, which gaffer uses anyway).
    OUT="$(unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified && exec "$0" "$@"' "$HARNESS" "${HARNESS_ARGS[@]}")"
else
    OUT="$("$HARNESS" "${HARNESS_ARGS[@]}")"
fi
echo "$OUT"
echo "$OUT" | python3 -c '
import re, sys
m = dict(re.findall(r"^(.*?): n=\d+ median=([\d.]+)ms", sys.stdin.read(), re.M))
g, c = float(m["gaffer shim"]), float(m["crun"])
print(f"median gaffer shim {g:.2f}ms, crun {c:.2f}ms, ratio gaffer/crun {g / c:.2f}")'
