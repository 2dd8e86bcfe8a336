#!/usr/bin/env bash
# Scale: a store holding 1,000,000 finished tasks (10,000 jobs x 100 tasks, with their attempts
# and events) and 100,000 queued tasks. Prints how long the server takes to start, its RSS, and
# how fast listings answer. Usage: bench/scale.sh [FINISHED_JOBS] [TASKS_PER_JOB] [QUEUED]
source "$(dirname "$0")/lib.sh"
JOBS="${1:-10000}"
PER="${2:-100}"
QUEUED="${3:-100000}"
(cd "$ROOT" && cargo build --release --quiet -p gaffer-store --example fill_store)
WORK="$(mktemp -d /tmp/gaffer-scale.XXXXXX)"
mkdir -p "$WORK/data"
"$ROOT/target/release/examples/fill_store" "$WORK/data/state.db" "$JOBS" "$PER" "$QUEUED"
du -sh "$WORK/data/state.db" | awk '{print "state.db: " $1}'
PORT="$(free_port)"
export GAFFER_ADDR="http://127.0.0.1:$PORT"
t0=$(now)
"$GAFFER" dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/dev.log" 2>&1 &
DEV_PID=$!
trap 'kill $DEV_PID 2>/dev/null; wait $DEV_PID 2>/dev/null; rm -rf "$WORK"' EXIT
until curl -sf "$GAFFER_ADDR/healthz" >/dev/null 2>&1; do sleep 0.02; done
t1=$(now)
python3 -c "print(f'server start with this store: {($t1-$t0)*1000:.0f} ms')"
awk '/VmRSS/ {print "server RSS: " $2/1024 " MiB"}' "/proc/$DEV_PID/status"
time_it() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); python3 -c "print(f'{($t1-$t0)*1000:7.0f} ms  $*')" | sed "s|$GAFFER|gaffer|"; }
time_it "$GAFFER" jobs --limit 50
time_it "$GAFFER" jobs --state succeeded --limit 50
time_it "$GAFFER" jobs --state pending
time_it "$GAFFER" jobs --name fill-5000
time_it "$GAFFER" status j-005000
time_it "$GAFFER" status "j-$(printf %06d $((JOBS + 1)))"
time_it curl -sf "$GAFFER_ADDR/metrics"
time_it curl -sf "$GAFFER_ADDR/v1/jobs/j-000001?tasks_limit=100"
awk '/VmRSS/ {print "server RSS after the queries: " $2/1024 " MiB"}' "/proc/$DEV_PID/status"
