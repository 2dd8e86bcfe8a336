#!/usr/bin/env python3
"""High-availability benchmarks (issue 6), on a release build, everything on this machine:

1. submit throughput over REST: a single `gaffer server` on SQLite, then three servers on a
   3-member etcd cluster (`--store etcd`), submitting to the leader and through a follower
   (which forwards writes); one job per request from several client threads, and lists of 1,000;
2. fail-over: the leader is killed with SIGKILL ROUNDS times (and restarted as a follower after
   each round), then stopped with SIGTERM ROUNDS times; for each, the time from the signal until
   a survivor names a new leader and until a submit through a survivor is acknowledged (201);
3. large state: 100,000 finished jobs (300,000 events) restored into etcd with
   `gaffer admin restore` plus QUEUED pending jobs submitted through the API; the time a new
   leader takes to load the state (its log) and the fail-over times with that state.

Jobs ask for more CPUs than any node has, so they stay pending: no agent runs, only the submit
path and the election are measured. Usage: bench/ha.py [JOBS] [THREADS] [ROUNDS]
(defaults 4000, 8, 5). Environment: LEASE_TTL (default 2s), BIG_JOBS (default 100000),
QUEUED (default 20000), KEEP=1 keeps the work directory."""
import http.client, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile
import threading, time, uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAFFER = os.environ.get("GAFFER", os.path.join(ROOT, "target/release/gaffer"))
FILL = os.path.join(ROOT, "target/release/examples/fill_store")
JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
LEASE_TTL = os.environ.get("LEASE_TTL", "2s")
BIG_JOBS = int(os.environ.get("BIG_JOBS", "100000"))
QUEUED = int(os.environ.get("QUEUED", "20000"))
PENDING = {"command": ["/bin/true"], "resources": {"cpus": 4096}}

if not os.path.exists(GAFFER):
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
if not os.path.exists(FILL):
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "gaffer-store",
                    "--example", "fill_store"], cwd=ROOT, check=True)
if not shutil.which("etcd"):
    sys.exit("bench/ha.py needs etcd (Debian package etcd-server)")

WORK = tempfile.mkdtemp(prefix="gaffer-bench-ha.")
PROCS = []


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    return p


def spawn(args, log):
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=open(log, "ab"),
                         stderr=subprocess.STDOUT)
    PROCS.append(p)
    return p


def request(port, method, path, body=None, headers=None, timeout=5):
    """(status, parsed JSON or None); (0, None) on a connection error."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        c.request(method, path, body, h)
        r = c.getresponse(); data = r.read(); c.close()
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, None
    except OSError:
        return 0, None


def wait_for(what, cond, timeout=60, step=0.01):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}; logs in {WORK}")


def start_etcd():
    ports = [(free_port(), free_port()) for _ in range(3)]
    cluster = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
    for i, (c, p) in enumerate(ports):
        spawn(["etcd", "--name", f"e{i}", "--data-dir", f"{WORK}/etcd-{i}",
               "--listen-client-urls", f"http://127.0.0.1:{c}",
               "--advertise-client-urls", f"http://127.0.0.1:{c}",
               "--listen-peer-urls", f"http://127.0.0.1:{p}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
               "--initial-cluster", cluster, "--initial-cluster-state", "new"],
              f"{WORK}/etcd-{i}.log")
    for c, _ in ports:
        wait_for("etcd", lambda: b"true" in (curl(c, "/health") or b""))
    return ",".join(f"http://127.0.0.1:{c}" for c, _ in ports)


def curl(port, path):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path); return c.getresponse().read()
    except OSError:
        return None


class Cluster:
    """Three `gaffer server --store etcd` processes on loopback ports."""

    def __init__(self, endpoints, prefix):
        self.endpoints, self.prefix = endpoints, prefix
        self.ports = [free_port() for _ in range(3)]
        self.procs = [None, None, None]
        for i in range(3):
            self.start(i)
        # Named leader first, then serving writes (it loads the state in between).
        ld = self.leader()
        wait_for("the leader to serve writes", lambda: load_ms(self, ld, 0) is not None, timeout=120)

    def log(self, i):
        return f"{WORK}/{self.prefix}-server-{i}.log"

    def start(self, i):
        p = self.ports[i]
        self.procs[i] = spawn([GAFFER, "server", "--store", "etcd", "--etcd-endpoints",
                               self.endpoints, "--etcd-prefix", self.prefix,
                               "--listen", f"127.0.0.1:{p}", "--advertise", f"http://127.0.0.1:{p}",
                               "--lease-ttl", LEASE_TTL,
                               "--data-dir", f"{WORK}/{self.prefix}-server-{i}"], self.log(i))

    def members(self, i):
        s, v = request(self.ports[i], "GET", "/v1/servers", timeout=2)
        return v if s == 200 else None

    def leader(self, asking=None, not_=None):
        """Index of the leader as seen by server `asking` (any live one by default)."""
        def seen():
            for i in ([asking] if asking is not None else range(3)):
                if self.procs[i] is None:
                    continue
                v = self.members(i)
                if v and v.get("leader") and v["leader"] != not_:
                    return self.index(v["leader"]) + 1
        return wait_for("a leader", seen, timeout=120) - 1

    def index(self, member_id):
        return self.ports.index(int(member_id.rsplit(":", 1)[1]))

    def stop(self, i, sig):
        p = self.procs[i]; self.procs[i] = None
        p.send_signal(sig); p.wait()

    def stop_all(self):
        for i in range(3):
            if self.procs[i] is not None:
                self.stop(i, signal.SIGTERM)


def submit_rate(port, n, threads, what):
    body = json.dumps(PENDING)
    per = n // threads
    errors = []

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(per):
            c.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
            r = c.getresponse(); r.read()
            if r.status != 201:
                errors.append(r.status)

    t0 = time.time()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts: t.start()
    for t in ts: t.join()
    d = time.time() - t0
    print(f"  {what}, one job per request, {threads} clients: {per * threads} jobs in {d:.2f} s "
          f"= {per * threads / d:,.0f} jobs/s, errors: {len(errors)}", flush=True)
    return per * threads / d


def list_rate(port, lists, what):
    body = json.dumps([PENDING] * 1000)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.time()
    for _ in range(lists):
        c.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status != 201:
            raise SystemExit(f"list submit failed: {r.status}")
    d = time.time() - t0
    print(f"  {what}, lists of 1,000 jobs: {lists * 1000} jobs in {d:.2f} s "
          f"= {lists * 1000 / d:,.0f} jobs/s", flush=True)
    return lists * 1000 / d


def sqlite_server():
    port = free_port()
    p = spawn([GAFFER, "server", "--listen", f"127.0.0.1:{port}", "--data-dir",
               f"{WORK}/sqlite-server"], f"{WORK}/sqlite-server.log")
    wait_for("the SQLite server", lambda: curl(port, "/healthz"))
    return p, port


def load_ms(cl, i, since):
    """The 'serving writes (X ms after winning the election)' figure server i logged after byte `since`."""
    with open(cl.log(i), "rb") as f:
        f.seek(since)
        m = re.findall(rb"serving writes \((\d+) ms after winning", f.read())
    return int(m[-1]) if m else None


def failovers(cl, rounds, sig, label):
    elected, accepted, loads = [], [], []
    for _ in range(rounds):
        old = cl.leader()
        old_id = f"127.0.0.1:{cl.ports[old]}"
        survivors = [i for i in range(3) if i != old]
        offsets = {i: os.path.getsize(cl.log(i)) for i in survivors}
        key = str(uuid.uuid4())
        body = json.dumps(PENDING)
        t0 = time.time()
        cl.stop(old, sig)
        t_elected = t_accepted = None
        k = 0
        while t_accepted is None or t_elected is None:
            if time.time() - t0 > 60:
                raise SystemExit(f"no fail-over within 60 s; logs in {WORK}")
            s = survivors[k % 2]; k += 1
            if t_elected is None:
                v = cl.members(s)
                if v and v.get("leader") and v["leader"] != old_id:
                    t_elected = time.time() - t0
            if t_accepted is None:
                st, _ = request(cl.ports[s], "POST", "/v1/jobs", body,
                                {"Idempotency-Key": key}, timeout=2)
                if st == 201:
                    t_accepted = time.time() - t0
            time.sleep(0.005)
        new = cl.leader(not_=old_id)
        elected.append(t_elected); accepted.append(t_accepted)
        # The leader logs its load time as it starts serving: a submit may beat the line.
        loads.append(wait_for("the new leader's log line", lambda: load_ms(cl, new, offsets[new]),
                              timeout=10))
        cl.start(old)
        # Back to three members before the next round.
        wait_for("the restarted server to rejoin",
                 lambda: (v := cl.members(old)) and len(v["servers"]) == 3 and v.get("leader"),
                 timeout=60)
    fmt = lambda xs: (f"median {statistics.median(xs):.2f} s, min {min(xs):.2f}, "
                      f"max {max(xs):.2f} (n={len(xs)})")
    print(f"  {label}: new leader named {fmt(elected)}", flush=True)
    print(f"  {label}: first submit acknowledged {fmt(accepted)}", flush=True)
    print(f"  {label}: state loaded by the new leader in median {statistics.median(loads):.0f} ms "
          f"(max {max(loads)} ms)", flush=True)
    return statistics.median(accepted)


def main():
    print(f"bench/ha.py: {JOBS} jobs, {THREADS} clients, {ROUNDS} rounds, lease TTL {LEASE_TTL}; "
          f"work dir {WORK}", flush=True)
    print("== submit throughput", flush=True)
    p, port = sqlite_server()
    submit_rate(port, JOBS, THREADS, "SQLite, single server")
    list_rate(port, 10, "SQLite, single server")
    p.send_signal(signal.SIGTERM); p.wait()

    endpoints = start_etcd()
    cl = Cluster(endpoints, "bench")
    ld = cl.leader()
    fo = next(i for i in range(3) if i != ld)
    submit_rate(cl.ports[ld], JOBS, THREADS, "etcd (3 members), to the leader")
    submit_rate(cl.ports[fo], JOBS, THREADS, "etcd (3 members), through a follower")
    list_rate(cl.ports[ld], 10, "etcd (3 members), to the leader")
    list_rate(cl.ports[fo], 10, "etcd (3 members), through a follower")

    print(f"== fail-over (lease TTL {LEASE_TTL}, {2 * (JOBS // THREADS * THREADS) + 20000:,} jobs stored)",
          flush=True)
    failovers(cl, ROUNDS, signal.SIGKILL, "kill -9 of the leader")
    failovers(cl, ROUNDS, signal.SIGTERM, "SIGTERM of the leader")
    cl.stop_all()

    print(f"== large state: {BIG_JOBS:,} finished jobs restored into etcd + {QUEUED:,} pending",
          flush=True)
    big = f"{WORK}/big"
    os.makedirs(big)
    t0 = time.time()
    subprocess.run([FILL, f"{big}/state.db", str(BIG_JOBS), "1", "0"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([GAFFER, "admin", "snapshot", "--data-dir", big, f"{WORK}/big.snap"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t1 = time.time()
    subprocess.run([GAFFER, "admin", "restore", "--store", "etcd", "--etcd-endpoints", endpoints,
                    "--etcd-prefix", "big", f"{WORK}/big.snap"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t2 = time.time()
    subprocess.run([GAFFER, "admin", "snapshot", "--store", "etcd", "--etcd-endpoints", endpoints,
                    "--etcd-prefix", "big", f"{WORK}/big2.snap"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t3 = time.time()
    same = open(f"{WORK}/big.snap", "rb").readlines()[1:] == open(f"{WORK}/big2.snap", "rb").readlines()[1:]
    print(f"  filled and snapshotted from SQLite in {t1 - t0:.1f} s "
          f"({os.path.getsize(WORK + '/big.snap') / 2**20:.1f} MiB); gaffer admin restore into etcd: "
          f"{t2 - t1:.1f} s; gaffer admin snapshot from etcd: {t3 - t2:.1f} s "
          f"({'same records' if same else 'RECORDS DIFFER'})", flush=True)
    t0 = time.time()
    cl = Cluster(endpoints, "big")
    ld = cl.leader()
    print(f"  3 servers started, leader serving after {time.time() - t0:.2f} s "
          f"(state loaded in {load_ms(cl, ld, 0)} ms)", flush=True)
    list_rate(cl.ports[ld], QUEUED // 1000, f"etcd, {BIG_JOBS:,} jobs stored, to the leader")
    fo = next(i for i in range(3) if i != ld)
    for i, what in ((ld, "leader"), (fo, "follower")):
        t0 = time.time()
        s, v = request(cl.ports[i], "GET", "/v1/jobs?limit=50", timeout=30)
        print(f"  GET /v1/jobs?limit=50 from the {what}: {1000 * (time.time() - t0):.0f} ms "
              f"(status {s})", flush=True)
    failovers(cl, ROUNDS, signal.SIGKILL, f"kill -9 with {BIG_JOBS + QUEUED:,} jobs")
    cl.stop_all()


try:
    main()
finally:
    for p in PROCS:
        if p.poll() is None:
            p.kill(); p.wait()
    if os.environ.get("KEEP"):
        print(f"work dir kept: {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
