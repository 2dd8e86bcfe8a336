#!/usr/bin/env bash
# End-to-end throughput: N `/bin/true` tasks (one array job, and N separate jobs in one batch),
# submit -> all succeeded, on a release `gaffer dev`. Usage: bench/e2e.sh [N] [CPUS_PER_TASK]
source "$(dirname "$0")/lib.sh"
N="${1:-1000}"
CPUS="${2:-1}"
start_dev
trap stop_dev EXIT
"$GAFFER" submit -q --cpus 0.1 -- /bin/true >/dev/null && "$GAFFER" wait -o json "$("$GAFFER" jobs -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["id"])')" >/dev/null

t0=$(now)
id=$("$GAFFER" submit -q --array "$N" --cpus "$CPUS" -- /bin/true)
"$GAFFER" wait "$id" >/dev/null
t1=$(now)
python3 -c "import sys; n=$N; d=$t1-$t0; print(f'array job: {n} x /bin/true, cpus={sys.argv[1]}: {d:.2f} s, {n/d:.0f} tasks/s')" "$CPUS"

python3 - "$N" "$CPUS" >"$WORK/batch.json" <<'PY'
import json, sys
n, cpus = int(sys.argv[1]), float(sys.argv[2])
print(json.dumps([{"command": ["/bin/true"], "resources": {"cpus": cpus}} for _ in range(n)]))
PY
t0=$(now)
ids=$("$GAFFER" submit -q -f "$WORK/batch.json")
# shellcheck disable=SC2086
"$GAFFER" wait $ids >/dev/null
t1=$(now)
python3 -c "import sys; n=$N; d=$t1-$t0; print(f'{n} separate jobs (one batch) x /bin/true, cpus={sys.argv[1]}: {d:.2f} s, {n/d:.0f} tasks/s')" "$CPUS"
