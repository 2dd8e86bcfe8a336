# Shared helpers for the bench scripts: start a release `gaffer dev` in a temp dir on a free port.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GAFFER="${GAFFER:-$ROOT/target/release/gaffer}"
if [ ! -x "$GAFFER" ]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_dev() { # start_dev [extra dev args...]; sets WORK, PORT, DEV_PID, GAFFER_ADDR
    WORK="$(mktemp -d /tmp/gaffer-bench.XXXXXX)"
    PORT="$(free_port)"
    "$GAFFER" dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" "$@" >"$WORK/dev.log" 2>&1 &
    DEV_PID=$!
    export GAFFER_ADDR="http://127.0.0.1:$PORT"
    for _ in $(seq 1 200); do
        curl -sf "$GAFFER_ADDR/healthz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "gaffer dev did not start; log:" >&2; cat "$WORK/dev.log" >&2; return 1
}
stop_dev() {
    kill "$DEV_PID" 2>/dev/null || true
    wait "$DEV_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
now() { date +%s.%N; }
# run_in_netns SCRIPT [ARGS...]: for the container-network benches. Outside the namespace:
# needs root, installs busybox-static and nftables if missing, builds the release binary (cargo
# may need the network, which the namespace has not), then runs SCRIPT again in a private
# network namespace (`unshare -n`, loopback up), so gaffer's bridge, veths, routes and nftables
# table never touch this machine's network. Inside it, it returns at once.
run_in_netns() {
    local script="$1"; shift
    if [ -n "${GAFFER_BENCH_IN_NETNS:-}" ]; then
        ip link set lo up
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then echo "$script needs root (namespaces, cgroups, overlayfs, nftables)" >&2; exit 1; fi
    local missing=()
    [ -x /bin/busybox ] || missing+=(busybox-static)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
    (cd "$ROOT" && cargo build --release --quiet --bin gaffer)
    exec env GAFFER_BENCH_IN_NETNS=1 unshare --net -- bash "$script" "$@"
}
