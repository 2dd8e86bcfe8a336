#!/usr/bin/env bash
# Start cost of the `bridge` container network (needs root, overlayfs, busybox-static, nft and
# unshare; installs busybox-static and nftables with apt-get if missing). Usage:
# bench/bridge.sh [N] [M]
#  (a) N x each of `--network host` (for reference), `none`, `bridge` and bridge with `--port 80` of
#      `--image busybox -- true`, interleaved, each submit (POST /v1/jobs) -> job succeeded, side
#      by side with the difference of the medians (target: bridge adds at most 5 ms), and where
#      the time goes (submit -> attempt started, started -> ended, ended -> job final, from the
#      server's timestamps of the job and its attempt).
#  (b) M bridge containers at once (one job, --array M, `sleep 2`, each with a mapped port whose
#      host port the server picks): all get distinct addresses and host ports, and afterwards no
#      `gv*` veth, no attempt namespace and no DNAT rule is left.
# Everything runs in a private network namespace (`unshare -n`, loopback up), so gaffer's
# bridge, veths, routes and nftables table never touch this machine's network.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_in_netns "$0" "$@"
N="${1:-20}"
M="${2:-50}"

start_dev --cpus "$((M + 4))"
trap stop_dev EXIT
echo "gaffer $("$GAFFER" --version 2>/dev/null | head -1), $(nproc) CPUs, network namespace $(readlink /proc/self/ns/net)"

ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS"/{bin,etc,tmp,proc,dev,sys,work}
chmod 1777 "$ROOTFS/tmp"
cp /bin/busybox "$ROOTFS/bin/busybox"
for a in sh true sleep; do ln -s busybox "$ROOTFS/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\n' >"$ROOTFS/etc/group"
tar -C "$ROOTFS" -czf "$WORK/busybox.tar.gz" .
"$GAFFER" image import busybox "$WORK/busybox.tar.gz" --all-nodes >/dev/null
for _ in $(seq 1 200); do
    curl -s "$GAFFER_ADDR/v1/nodes" | grep -q '"busybox"' && break
    sleep 0.1
done

python3 - "$GAFFER_ADDR" "$N" "$M" "$WORK/data" <<'PY'
import json, os, subprocess, sys, time, urllib.request, urllib.error
addr, n, m, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def req(path, body=None):
    r = urllib.request.Request(addr + path, data=None if body is None else json.dumps(body).encode(),
                               headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        sys.exit(f"{path}: HTTP {e.code}: {e.read().decode()}")

def submit(spec):
    return req("/v1/jobs", spec)["ids"][0]

KINDS = {"host": {"network": "host"}, "none": {"network": "none"}, "bridge": {"network": "bridge"},
         "bridge+port": {"network": "bridge", "ports": [{"container": 80}]}}

def run_one(kind):
    t0 = time.perf_counter()
    jid = submit({"image": "busybox", "command": ["true"], "resources": {"cpus": 0.1}, **KINDS[kind]})
    deadline = t0 + 60
    while True:
        j = req(f"/v1/jobs/{jid}?tasks_limit=1")
        if j["state"] == "succeeded":
            total = (time.perf_counter() - t0) * 1e3
            break
        assert j["state"] not in ("failed", "killed", "lost") and time.perf_counter() < deadline, f"{jid}: {j['state']}"
        time.sleep(0.001)
    a = j["task_list"][0]["attempts"][-1]
    assert kind.startswith("bridge") == ("ip" in a), a
    # The server's own timestamps (ms): created -> attempt started -> attempt ended -> job finished.
    return total, a["started_at"] - j["created_at"], a["ended_at"] - a["started_at"], j["finished_at"] - a["ended_at"]

def med(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

def q(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)]

print(f"== (a) start cost: {n} x host (for reference), none, bridge and bridge with --port 80, interleaved,"
      " --image busybox -- true (submit -> succeeded)")
for k in KINDS:  # warm-up: the bridge and the nftables table are made here
    run_one(k)
rows = {k: [] for k in KINDS}
for i in range(n):
    for k in (list(KINDS) if i % 2 == 0 else list(KINDS)[::-1]):
        rows[k].append(run_one(k))
for net in KINDS:
    t = [r[0] for r in rows[net]]
    print(f"{net:>11}: median={med(t):.1f}ms p90={q(t, .9):.1f}ms min={min(t):.1f}ms max={max(t):.1f}ms"
          f"  | medians: submit->started {med([r[1] for r in rows[net]]):.0f}ms,"
          f" started->ended {med([r[2] for r in rows[net]]):.0f}ms, ended->final {med([r[3] for r in rows[net]]):.0f}ms")
d = med([r[0] for r in rows["bridge"]]) - med([r[0] for r in rows["none"]])
print(f"bridge - none: {d:+.1f}ms on the median (target: at most +5ms) -> {'OK' if d <= 5 else 'OVER TARGET'}")
for k, name in ((1, "submit->started"), (2, "started->ended"), (3, "ended->final")):
    print(f"  {name}: {med([r[k] for r in rows['bridge']]) - med([r[k] for r in rows['none']]):+.0f}ms")
d = med([r[0] for r in rows["bridge+port"]]) - med([r[0] for r in rows["bridge"]])
print(f"bridge+port - bridge: {d:+.1f}ms on the median (the nftables table replaced at start and at end)")

print(f"== (b) {m} bridge containers at once (--array {m}, --port 8080 each, sleep 2)")
t0 = time.perf_counter()
jid = submit({"image": "busybox", "network": "bridge", "array": m, "ports": [{"container": 8080}],
              "command": ["sleep", "2"], "resources": {"cpus": 0.1}})
max_veths, all_running = 0, None
while True:
    j = req(f"/v1/jobs/{jid}?tasks_limit={m}")
    veths = sum(": gv" in l for l in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines())
    max_veths = max(max_veths, veths)
    up = sum(1 for t in j["task_list"] if t["attempts"] and t["attempts"][-1]["state"] == "running")
    if all_running is None and up == m:
        all_running = (time.perf_counter() - t0) * 1e3
    if j["state"] in ("succeeded", "failed", "killed"):
        break
    assert time.perf_counter() - t0 < 120, j["tasks"]
    time.sleep(0.05)
done = (time.perf_counter() - t0) * 1e3
attempts = [t["attempts"][-1] for t in j["task_list"]]
ips = [a.get("ip") for a in attempts]
key = lambda ip: tuple(int(x) for x in ip.split("."))
hosts = [p["host"] for a in attempts for p in a.get("ports", [])]
print(f"state {j['state']}, {len(attempts)} tasks; all {m} running after "
      + (f"{all_running:.0f}ms" if all_running else "(never all at once)")
      + f"; all done after {done:.0f}ms; at most {max_veths} gv* veths seen at once")
got = sorted((ip for ip in ips if ip), key=key) or ["-"]
print(f"addresses: {len(set(ips) - {None})} distinct of {len(ips)} ({got[0]} .. {got[-1]}); "
      f"host ports: {len(set(hosts))} distinct of {len(hosts)} ({min(hosts, default='-')} .. {max(hosts, default='-')})")
ok = j["state"] == "succeeded" and None not in ips and len(set(ips)) == m and len(set(hosts)) == m

def leftovers():
    veths = [l.split(":")[1].strip() for l in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines() if ": gv" in l]
    nft = subprocess.run(["nft", "list", "table", "inet", "gaffer"], capture_output=True, text=True)
    dnat = nft.stdout.count("dnat ip to")
    netns = os.listdir(os.path.join(data, "agent/netns")) if os.path.isdir(os.path.join(data, "agent/netns")) else []
    return veths, dnat, netns, nft.returncode == 0
t1 = time.perf_counter()
while True:
    veths, dnat, netns, table = leftovers()
    if not veths and not dnat and not netns:
        break
    if time.perf_counter() - t1 > 10:
        break
    time.sleep(0.05)
print(f"afterwards (within {(time.perf_counter() - t1) * 1e3:.0f}ms of the job's end): {len(veths)} gv* veths, "
      f"{len(netns)} attempt namespaces, {dnat} DNAT rules (table inet gaffer {'present' if table else 'absent'})")
ok = ok and not veths and not dnat and not netns
print("(b) " + ("OK: distinct addresses and ports, nothing left" if ok else "FAILED"))
sys.exit(0 if ok else 1)
PY
