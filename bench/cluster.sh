#!/usr/bin/env bash
# Cluster throughput: a release `gaffer server` and 3 `gaffer agent` processes on 127.0.0.1
# (separate data dirs, --allow-host-tasks, --cpus 2 each), then one array job of N `/bin/true`
# tasks (--cpus 0.1) per size, submit -> all succeeded (`gaffer wait`). Prints tasks/s.
# Usage: bench/cluster.sh [N...]   (default: 1000 10000)
source "$(dirname "$0")/lib.sh"
SIZES=("$@")
[ "${#SIZES[@]}" -gt 0 ] || SIZES=(1000 10000)
AGENTS=3
AGENT_CPUS=2

WORK="$(mktemp -d /tmp/gaffer-bench.XXXXXX)"
PIDS=()
stop_cluster() {
    local rc=$?
    # Agents first (they stop their tasks), then the server; only the processes started here.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$rc" -ne 0 ]; then
        for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f (last lines)" >&2; tail -n 20 "$f" >&2; }; done
    fi
    rm -rf "$WORK"
}
trap stop_cluster EXIT

PORT="$(free_port)"
export GAFFER_ADDR="http://127.0.0.1:$PORT"
"$GAFFER" server --data-dir "$WORK/server" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 200); do
    curl -sf "$GAFFER_ADDR/healthz" >/dev/null 2>&1 && break
    sleep 0.05
done
curl -sf "$GAFFER_ADDR/healthz" >/dev/null || { echo "gaffer server did not start" >&2; exit 1; }

for i in $(seq 1 "$AGENTS"); do
    "$GAFFER" agent --server "$GAFFER_ADDR" --name "bench-$i" --data-dir "$WORK/agent$i" \
        --cpus "$AGENT_CPUS" --allow-host-tasks >"$WORK/agent$i.log" 2>&1 &
    PIDS+=($!)
done
ready_nodes() {
    "$GAFFER" nodes -o json | python3 -c 'import json,sys; print(sum(n["state"] == "ready" for n in json.load(sys.stdin)))'
}
for _ in $(seq 1 200); do
    [ "$(ready_nodes)" -ge "$AGENTS" ] && break
    sleep 0.05
done
[ "$(ready_nodes)" -ge "$AGENTS" ] || { echo "only $(ready_nodes) of $AGENTS agents joined" >&2; exit 1; }

echo "cluster: 1 gaffer server + $AGENTS gaffer agents (--cpus $AGENT_CPUS each, $((AGENTS * AGENT_CPUS)) cpus offered)" \
    "on 127.0.0.1; all processes, tasks included, share this machine's $(nproc) cores"
# Warm-up: one task end to end.
"$GAFFER" submit -q --cpus 0.1 --wait -- /bin/true >/dev/null

for n in "${SIZES[@]}"; do
    t0=$(now)
    id=$("$GAFFER" submit -q --array "$n" --cpus 0.1 -- /bin/true)
    "$GAFFER" wait --timeout 10m "$id" >/dev/null
    t1=$(now)
    python3 -c "import sys; n=int(sys.argv[1]); d=float(sys.argv[3])-float(sys.argv[2]); print(f'array job: {n} x /bin/true, cpus=0.1, {sys.argv[4]} agents: {d:.2f} s, {n/d:.0f} tasks/s')" \
        "$n" "$t0" "$t1" "$AGENTS"
done
