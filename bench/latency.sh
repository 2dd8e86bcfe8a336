#!/usr/bin/env bash
# One-job latency as a user sees it: `gaffer submit --wait -- true` (a new CLI process each
# time: submit, then wait for the job's end on the event stream), 21 runs against a release
# `gaffer dev`, the first dropped as warm-up. Usage: bench/latency.sh [RUNS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
RUNS="${1:-21}"
start_dev --no-bridge
trap stop_dev EXIT
python3 - "$GAFFER" "$RUNS" <<'PY'
import subprocess, sys, time
g, runs = sys.argv[1], int(sys.argv[2])
xs = []
for _ in range(runs):
    t = time.perf_counter()
    subprocess.run([g, "submit", "-q", "--wait", "--", "true"], check=True, stdout=subprocess.DEVNULL)
    xs.append((time.perf_counter() - t) * 1e3)
xs = sorted(xs[1:])
print(f"gaffer submit --wait -- true: median {xs[len(xs) // 2]:.1f} ms, min {xs[0]:.1f} ms, max {xs[-1]:.1f} ms ({len(xs)} runs)")
PY
