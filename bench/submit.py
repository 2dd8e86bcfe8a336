#!/usr/bin/env python3
"""Submit throughput: POST /v1/jobs one job per request from several client threads, against a
release `gaffer dev` started by this script. Jobs are held pending (they need more CPUs than the
node has) so that only the submit path is measured. Prints jobs/s."""
import http.client, json, os, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAFFER = os.environ.get("GAFFER", os.path.join(ROOT, "target/release/gaffer"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
THREADS = int(sys.argv[2]) if len(sys.argv) > 2 else 8

if not os.path.exists(GAFFER):
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
work = tempfile.mkdtemp(prefix="gaffer-bench.")
dev = subprocess.Popen([GAFFER, "dev", "--data-dir", work + "/data", "--listen", f"127.0.0.1:{port}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1); c.request("GET", "/healthz")
            if c.getresponse().status == 200: break
        except OSError:
            time.sleep(0.05)
    body = json.dumps({"command": ["/bin/true"], "resources": {"cpus": 4096}})
    per = N // THREADS
    errors = []

    def worker():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(per):
            c.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
            r = c.getresponse(); r.read()
            if r.status != 201: errors.append(r.status)

    t0 = time.time()
    ts = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in ts: t.start()
    for t in ts: t.join()
    d = time.time() - t0
    print(f"submit: {per * THREADS} jobs, {THREADS} client threads, one job per request: "
          f"{d:.2f} s, {per * THREADS / d:.0f} jobs/s, errors: {len(errors)}")
    # One request carrying a batch of 1000 specs.
    batch = json.dumps([{"command": ["/bin/true"], "resources": {"cpus": 4096}}] * 1000)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.time()
    for _ in range(10):
        c.request("POST", "/v1/jobs", batch, {"Content-Type": "application/json"}); c.getresponse().read()
    d = time.time() - t0
    print(f"submit: 10 batches of 1000 jobs: {d:.2f} s, {10000 / d:.0f} jobs/s")
finally:
    dev.terminate(); dev.wait()
    subprocess.run(["rm", "-rf", work])
