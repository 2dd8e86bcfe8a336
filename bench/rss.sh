#!/usr/bin/env bash
# Server memory with a large history: runs N (default 100,000) `/bin/true` tasks to completion,
# then prints the RSS of the `gaffer dev` process and how fast `gaffer jobs` and
# `gaffer status` still answer. Usage: bench/rss.sh [N] [JOBS]
source "$(dirname "$0")/lib.sh"
N="${1:-100000}"
JOBS="${2:-100}"
start_dev
trap stop_dev EXIT
rss() { awk '/VmRSS/ {print $2/1024 " MiB"}' "/proc/$DEV_PID/status"; }
echo "RSS at start: $(rss)"
per=$((N / JOBS))
t0=$(now)
ids=$(for _ in $(seq 1 "$JOBS"); do echo '{"command":["/bin/true"],"array":'"$per"',"resources":{"cpus":0.2}}'; done | python3 -c 'import sys,json; print(json.dumps([json.loads(l) for l in sys.stdin]))' >"$WORK/b.json"; "$GAFFER" submit -q -f "$WORK/b.json")
echo "RSS with $N tasks queued: $(rss)"
# shellcheck disable=SC2086
"$GAFFER" wait $ids >/dev/null
t1=$(now)
python3 -c "print(f'ran {$N} tasks in {$t1-$t0:.0f} s ({$N/($t1-$t0):.0f} tasks/s)')"
echo "RSS after $N finished tasks: $(rss)"
t0=$(now); "$GAFFER" jobs --limit 50 >/dev/null; t1=$(now)
python3 -c "print(f'gaffer jobs --limit 50: {($t1-$t0)*1000:.0f} ms')"
first=$(echo "$ids" | head -1)
t0=$(now); "$GAFFER" status "$first" >/dev/null; t1=$(now)
python3 -c "print(f'gaffer status (first 100 of {$per} tasks): {($t1-$t0)*1000:.0f} ms')"
du -sh "$WORK/data/state.db" | awk '{print "state.db size: " $1}'
