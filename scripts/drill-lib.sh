# Shared by scripts/drill-reload, scripts/drill-redis and scripts/soak (sourced, not run):
# builds the release binary and the load generator (examples/drill), starts `tierwise serve`
# on a free loopback port, and stops everything this run started on exit.
#
# Environment: CARGO_TARGET_DIR (honoured), SKIP_BUILD=1 (use the binaries already built),
# WORK (the run's folder; default a new one under /tmp, removed unless KEEP=1),
# CARGO_PROFILE_RELEASE_LTO=thin for a quicker build than the profile's fat LTO.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/tierwise
# The load generator is built in the dev profile, whose dependencies are optimised (opt-level
# 2): a release build of an example unifies the dev-dependencies' features into every
# dependency and rebuilds them all, for no gain in a client this small.
DRILL=$TARGET/debug/examples/drill
WORK=${WORK:-$(mktemp -d /tmp/tierwise-drill.XXXXXX)}
mkdir -p "$WORK"
OWNED_PIDS=()

drill_build() {
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        nice -n 10 cargo build --release --locked --bin tierwise
        nice -n 10 cargo build --locked --example drill
    fi
    [ -x "$BIN" ] && [ -x "$DRILL" ] || { echo "missing $BIN or $DRILL" >&2; exit 2; }
}

drill_cleanup() {
    local p
    for p in "${OWNED_PIDS[@]}"; do
        kill -CONT "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    for p in "${OWNED_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "work folder kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap drill_cleanup EXIT

# A free loopback port (for redis-server; tierwise itself listens on port 0).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# drill_serve ARGS... : starts `tierwise serve --listen 127.0.0.1:0 ARGS`; sets SERVER_PID and
# URL once /readyz answers 200.
drill_serve() {
    "$BIN" serve --listen 127.0.0.1:0 "$@" 2> "$WORK/serve.err" &
    SERVER_PID=$!
    OWNED_PIDS+=("$SERVER_PID")
    local addr=""
    for _ in $(seq 300); do
        addr=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$WORK/serve.err" | head -1)
        [ -n "$addr" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.err" >&2; echo "tierwise serve exited" >&2; exit 2; }
        sleep 0.1
    done
    [ -n "$addr" ] || { cat "$WORK/serve.err" >&2; echo "tierwise serve did not listen" >&2; exit 2; }
    URL="http://$addr"
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "$URL/readyz" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "tierwise serve at $URL is not ready" >&2
    exit 2
}

# Stops the server with SIGTERM (as an orchestrator would) and says how it went.
drill_stop() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local status=0
    wait "$SERVER_PID" || status=$?
    echo "server stopped (exit $status); its stderr: $(grep -c . "$WORK/serve.err") lines, e.g.:" >&2
    grep -E "rejected|removed|applied" "$WORK/serve.err" | tail -3 >&2 || true
    return 0
}

# The machine's load, so a reader knows whether other work competed with the run.
drill_machine() {
    echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
}
