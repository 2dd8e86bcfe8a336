#!/usr/bin/env bash
# Cluster jobs (needs root, overlayfs, busybox-static, nft and unshare; installs busybox-static
# and nftables with apt-get if missing). Usage: bench/cluster.sh [N]
#  (a) N times: submit a 5-replica job (`--replicas 5 --image busybox`, 0.1 CPU each) -> all 5
#      replicas running (every one placed, prepared, past the start barrier); median and
#      spread, and the server's view (submit -> first and last replica started).
#  (b) N times: 2 replicas behind `--service 18090:80 --ready-cmd 'test -f /work/leader'`; the
#      leader file moves from one replica's workspace to the other's, and the time until a
#      request through the service port reaches the new one is measured (the check runs
#      every second, so expect up to ~1 s plus the round trip).
# Everything runs in a private network namespace (`unshare -n`), as bench/bridge.sh does.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
run_in_netns "$0" "$@"
N="${1:-5}"

start_dev
trap stop_dev EXIT
echo "gaffer $("$GAFFER" --version 2>/dev/null | head -1), $(nproc) CPUs, network namespace $(readlink /proc/self/ns/net)"

ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS"/{bin,etc,tmp}
chmod 1777 "$ROOTFS/tmp"
cp /bin/busybox "$ROOTFS/bin/busybox"
for a in sh sleep httpd hostname mkdir test; do ln -s busybox "$ROOTFS/bin/$a"; done
tar -C "$ROOTFS" -czf "$WORK/busybox.tar.gz" .
"$GAFFER" image import busybox "$WORK/busybox.tar.gz" >/dev/null

python3 - "$GAFFER_ADDR" "$N" "$WORK/data" <<'PY'
import json, os, socket, sys, time, urllib.request
addr, n, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def req(path, body=None, method=None):
    r = urllib.request.Request(addr + path, data=None if body is None else json.dumps(body).encode(),
                               headers={"content-type": "application/json"}, method=method)
    with urllib.request.urlopen(r, timeout=30) as resp:
        return json.loads(resp.read() or b"null")

def submit(spec):
    return req("/v1/jobs", spec)["ids"][0]

def med(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

def wait(jid, pred, limit=60):
    t0 = time.perf_counter()
    while True:
        j = req(f"/v1/jobs/{jid}?tasks_limit=10")
        if pred(j):
            return j
        assert time.perf_counter() - t0 < limit, j["tasks"]
        time.sleep(0.002)

def running(j, k):
    return sum(1 for t in j["task_list"] if t["attempts"] and t["attempts"][-1]["state"] == "running") == k

print(f"== (a) {n} x submit a 5-replica job -> all 5 running")
rows = []
for i in range(n):
    t0 = time.perf_counter()
    jid = submit({"name": f"ring{i}", "image": "busybox", "replicas": 5, "command": ["sleep", "60"],
                  "resources": {"cpus": 0.1}})
    j = wait(jid, lambda j: running(j, 5))
    total = (time.perf_counter() - t0) * 1e3
    starts = sorted(t["attempts"][-1]["started_at"] for t in j["task_list"])
    rows.append((total, starts[0] - j["created_at"], starts[-1] - j["created_at"]))
    req(f"/v1/jobs/{jid}/kill", {}, "POST")
    wait(jid, lambda j: j["state"] in ("killed", "failed", "succeeded"))
t = [r[0] for r in rows]
print(f"all 5 running: median={med(t):.1f}ms min={min(t):.1f}ms max={max(t):.1f}ms"
      f"  | server: submit->first started {med([r[1] for r in rows]):.0f}ms, ->last started {med([r[2] for r in rows]):.0f}ms")

print(f"== (b) {n} x the leader moves between 2 replicas -> the service port follows")
jid = submit({"name": "pair", "image": "busybox", "replicas": 2, "resources": {"cpus": 0.1},
              "service": {"host": 18090, "port": 80}, "ready_cmd": "test -f /work/leader",
              "shell": 'mkdir -p www && hostname > www/index.html && httpd -f -p 80 -h "$PWD/www"'})
j = wait(jid, lambda j: running(j, 2))
work = lambda i: os.path.join(data, "agent/attempts", jid, str(i), "1", "work")

def through_port():
    try:
        s = socket.create_connection(("127.0.0.1", 18090), timeout=1)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        body = b""
        while chunk := s.recv(4096):
            body += chunk
        return body.decode(errors="replace").strip().splitlines()[-1] if body else None
    except OSError:
        return None

moves = []
for k in range(n + 1):
    leader, follower = k % 2, (k + 1) % 2
    try:
        os.remove(os.path.join(work(follower), "leader"))
    except FileNotFoundError:
        pass
    t0 = time.perf_counter()
    open(os.path.join(work(leader), "leader"), "w").close()
    want = f"pair-{leader}"
    while through_port() != want:
        assert time.perf_counter() - t0 < 10, f"the port never reached {want}"
        time.sleep(0.005)
    if k:  # the first is the initial election, not a move
        moves.append((time.perf_counter() - t0) * 1e3)
print(f"readiness moved -> port follows: median={med(moves):.0f}ms min={min(moves):.0f}ms max={max(moves):.0f}ms (target: within 2000ms)")
req(f"/v1/jobs/{jid}/kill", {}, "POST")
PY
