#!/usr/bin/env bash
# HTTP load test of `tierwise serve` (release build) beside a bare axum JSON echo measured in
# the same run (the ceiling: what HTTP + JSON alone cost on this machine).
#
#   bash benches/load.sh                     # RUNS=3 DURATION=10s
#   RUNS=1 DURATION=5s bash benches/load.sh
#
# Measures, each RUNS times (figures are the median of the runs):
#   echo         POST /echo, one generated account (~360 B), wrk -t2 -c32
#   evaluate-1   POST /v1/evaluate, 1 account, wrk -t2 -c32
#   evaluate-100 POST /v1/evaluate, 100 accounts, wrk -t2 -c32
#   portfolio-10k POST /v1/portfolio, 10,000 accounts, wrk -t1 -c1 (one book at a time), new
#                 account ids on every request (the engine, not the cache, is measured)
#   portfolio-10k-warm  the same book again and again (answered whole from the cache)
#   evaluate-*-cold  evaluate with new account ids on every request (nothing to hit)
#   evaluate-1-logs-off  evaluate-1 against a second server with TIERWISE_LOG=warn (no access
#                 lines, no request spans); every other case logs at info (the default: one
#                 access line per request, to a file in the work folder)
# then against a second `tierwise serve --redis` and a redis-server this script starts on a
# free loopback port (no persistence), evaluate-1 and evaluate-100 with:
#   redis-warm-*     the same body again and again (the default cost gate decides reads)
#   redis-cold-*     new account ids on every request
#   redis-paused-*   redis-server SIGSTOPped (a hang: the breaker opens after 5 deadlines)
#   redis-down-*     redis-server SIGKILLed (connections refused)
# and checks the budgets: evaluate-1 >= 30,000 req/s and >= 1/3 of the echo, p99 <= 5 ms;
# portfolio-10k p50 <= 100 ms. Exits 1 when a budget is missed.
# The client runs on the same cores as the server, as the budgets assume. The decision log
# is on (to a file in the work folder), as in production.
# Needs wrk (Debian: apt-get install wrk) and redis-server (apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WORK=${WORK:-bench-data/load}
PORT_ECHO=${PORT_ECHO:-18081}
PORT=${PORT:-18080}

if ! command -v wrk >/dev/null; then
    echo "wrk is missing: apt-get update && apt-get install -y wrk" >&2
    exit 2
fi
if ! command -v redis-server >/dev/null; then
    echo "redis-server is missing: apt-get update && apt-get install -y redis-server" >&2
    exit 2
fi

cargo build --release --bin tierwise --example gen_portfolio --example echo
mkdir -p "$WORK"
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/tierwise

# Request bodies from the deterministic generator. Valid accounts only for the single one.
"$TARGET"/release/examples/gen_portfolio 10000 --format json > "$WORK/accounts.json"
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
accounts = json.load(open(f"{work}/accounts.json"))
single = next(a for a in accounts if a.get("current_tier") and a.get("manager"))
def body(name, accts):
    open(f"{work}/{name}.json", "w").write(json.dumps({"accounts": accts}, separators=(",", ":")))
body("one", [single])
body("hundred", accounts[:100])
body("book", accounts)
open(f"{work}/echo.json", "w").write(json.dumps(single, separators=(",", ":")))
PY

# wrk script: POST the file named by BODY.
cat > "$WORK/post.lua" <<'LUA'
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests, errors))
end
LUA

# wrk script: POST the file named by BODY with every account id made new on each request (a
# cold cache: nothing to hit, and the doorkeeper writes nothing seen once).
cat > "$WORK/post-cold.lua" <<'LUA'
local f = assert(io.open(os.getenv("BODY"), "rb"))
local body = f:read("*a")
f:close()
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
local salt = os.getenv("SALT") or "0"
request = function()
  n = n + 1
  local b = body:gsub('"id":"', '"id":"c' .. salt .. '-' .. tid .. '-' .. n .. '-')
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, b)
end
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests, errors))
end
LUA

PIDS=()
REDIS_PID=""
cleanup() {
  [ -n "$REDIS_PID" ] && kill -CONT "$REDIS_PID" 2>/dev/null || true
  for p in "${PIDS[@]}" $REDIS_PID; do kill "$p" 2>/dev/null || true; done
  # The decision logs of a run reach ~2 GB: kept only with KEEP_LOGS=1.
  [ "${KEEP_LOGS:-0}" = 1 ] || rm -f "$WORK"/decisions*.jsonl "$WORK"/serve*.err
}
trap cleanup EXIT

wait_for() { # url
    for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "server at $1 did not come up" >&2; exit 2
}

"$TARGET"/release/examples/echo "127.0.0.1:$PORT_ECHO" 2>/dev/null &
ECHO_PID=$!
PIDS+=($ECHO_PID)
rm -f "$WORK/decisions.jsonl"
"$BIN" serve --listen "127.0.0.1:$PORT" --policies policies --decision-log "$WORK/decisions.jsonl" --no-watch 2>"$WORK/serve.err" &
SERVE_PID=$!
PIDS+=($SERVE_PID)
curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' --data @"$WORK/echo.json" "http://127.0.0.1:$PORT_ECHO/echo" || sleep 1
wait_for "http://127.0.0.1:$PORT/readyz"
PORT_QUIET=${PORT_QUIET:-18083}
TIERWISE_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT_QUIET" --policies policies --decision-log "$WORK/decisions-quiet.jsonl" --no-watch 2>"$WORK/serve-quiet.err" &
QUIET_PID=$!
PIDS+=($QUIET_PID)
wait_for "http://127.0.0.1:$PORT_QUIET/readyz"

# Redis on a free loopback port (never a developer's 6379), and a serve process using it.
PORT_REDIS=${PORT_REDIS:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
PORT_SR=${PORT_SR:-18082}
start_redis() {
  redis-server --port "$PORT_REDIS" --bind 127.0.0.1 --save '' --appendonly no --daemonize no --loglevel warning \
    --dir "$WORK" >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$PORT_REDIS" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server did not come up on $PORT_REDIS" >&2; exit 2
}
start_redis
rm -f "$WORK/decisions-redis.jsonl"
"$BIN" serve --listen "127.0.0.1:$PORT_SR" --policies policies --decision-log "$WORK/decisions-redis.jsonl" --no-watch \
  --redis "redis://127.0.0.1:$PORT_REDIS/" 2>"$WORK/serve-redis.err" &
SR_PID=$!
PIDS+=($SR_PID)
wait_for "http://127.0.0.1:$PORT_SR/readyz"
# The cache is in use again (breaker closed): /readyz says `"cache":"ok"`.
wait_cache_ok() {
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$PORT_SR/readyz" | grep -q '"cache":"ok"' && return 0; sleep 0.1; done
  echo "the Redis cache did not come back" >&2; exit 2
}

# CPU time (user + system, in clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# name, body file, url, threads, connections, server pid
CASES=(
  "echo $WORK/echo.json http://127.0.0.1:$PORT_ECHO/echo 2 32 $ECHO_PID"
  "evaluate-1 $WORK/one.json http://127.0.0.1:$PORT/v1/evaluate 2 32 $SERVE_PID"
  "evaluate-1-logs-off $WORK/one.json http://127.0.0.1:$PORT_QUIET/v1/evaluate 2 32 $QUIET_PID"
  "evaluate-100 $WORK/hundred.json http://127.0.0.1:$PORT/v1/evaluate 2 32 $SERVE_PID"
  "portfolio-10k $WORK/book.json http://127.0.0.1:$PORT/v1/portfolio 1 1 $SERVE_PID cold"
  "portfolio-10k-warm $WORK/book.json http://127.0.0.1:$PORT/v1/portfolio 1 1 $SERVE_PID"
)
COLD=(
  "evaluate-1-cold $WORK/one.json http://127.0.0.1:$PORT/v1/evaluate 2 32 $SERVE_PID"
  "evaluate-100-cold $WORK/hundred.json http://127.0.0.1:$PORT/v1/evaluate 2 32 $SERVE_PID"
)
RESULTS="$WORK/results.txt"
: > "$RESULTS"
# name body url threads conns pid [cold]
measure() {
  local name=$1 body=$2 url=$3 threads=$4 conns=$5 pid=$6 script=$WORK/post.lua
  [ "${7:-}" = cold ] && script=$WORK/post-cold.lua
  local before after line
  before=$(ticks "$pid")
  line=$(SALT="$RANDOM$RANDOM" BODY="$body" wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "$script" "$url" | grep '^RESULT')
  after=$(ticks "$pid")
  echo "$name $line $((after - before))" | tee -a "$RESULTS" >&2
}
SR=http://127.0.0.1:$PORT_SR/v1/evaluate
for run in $(seq "$RUNS"); do
  for c in "${CASES[@]}"; do measure $c; done
  for c in "${COLD[@]}"; do measure $c cold; done
  # Redis: warm (the same body again and again), cold, paused, down.
  wait_cache_ok
  measure redis-warm-1 "$WORK/one.json" "$SR" 2 32 "$SR_PID"
  measure redis-warm-100 "$WORK/hundred.json" "$SR" 2 32 "$SR_PID"
  measure redis-cold-1 "$WORK/one.json" "$SR" 2 32 "$SR_PID" cold
  measure redis-cold-100 "$WORK/hundred.json" "$SR" 2 32 "$SR_PID" cold
  kill -STOP "$REDIS_PID"
  measure redis-paused-1 "$WORK/one.json" "$SR" 2 32 "$SR_PID"
  measure redis-paused-100 "$WORK/hundred.json" "$SR" 2 32 "$SR_PID"
  curl -fsS "http://127.0.0.1:$PORT_SR/readyz" >&2; echo >&2
  kill -CONT "$REDIS_PID"
  kill -KILL "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
  measure redis-down-1 "$WORK/one.json" "$SR" 2 32 "$SR_PID"
  measure redis-down-100 "$WORK/hundred.json" "$SR" 2 32 "$SR_PID"
  start_redis
done
curl -fsS "http://127.0.0.1:$PORT_SR/metrics" | grep '^tierwise_cache_' >&2 || true

echo "load average during the run: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores; above ~2.5 another job competed)" >&2
python3 - "$RESULTS" "$HZ" <<'PY'
import statistics, sys
hz = float(sys.argv[2])
rows = {}
for line in open(sys.argv[1]):
    name, _, rps, p50, p99, n, errors, ticks = line.split()
    # server CPU per request (µs): independent of how busy the machine was
    cpu_us = float(ticks) / hz * 1e6 / max(int(n), 1)
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), cpu_us, int(errors)))
med = {k: tuple(statistics.median(r[i] for r in v) for i in range(4)) + (sum(r[4] for r in v),) for k, v in rows.items()}
print(f"{'case':<14} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'server CPU/req':>15} {'errors':>7}   (median of {len(next(iter(rows.values())))} runs)")
for k, (rps, p50, p99, cpu, err) in med.items():
    cpu_s = f"{cpu:.0f} us" if cpu < 10000 else f"{cpu / 1000:.1f} ms"
    print(f"{k:<14} {rps:>10.0f} {p50:>8.2f} {p99:>8.2f} {cpu_s:>15} {err:>7}")
ok = True
def check(what, cond):
    global ok
    print(f"{'ok  ' if cond else 'MISS'} {what}")
    ok &= cond
e1, echo, book = med["evaluate-1"], med["echo"], med["portfolio-10k"]
check(f"evaluate-1 >= 30000 req/s ({e1[0]:.0f})", e1[0] >= 30000)
check(f"evaluate-1 >= 1/3 of the echo ceiling ({e1[0] / echo[0]:.2f} of {echo[0]:.0f})", e1[0] >= echo[0] / 3)
check(f"evaluate-1 p99 <= 5 ms ({e1[2]:.2f})", e1[2] <= 5.0)
if "evaluate-1-logs-off" in med:
    off = med["evaluate-1-logs-off"]
    check(f"evaluate-1 with access logs at info >= 0.9 of logs off ({e1[0] / off[0]:.2f}: {e1[0]:.0f} vs {off[0]:.0f} req/s)", e1[0] >= 0.9 * off[0])
    check(f"evaluate-1 with access logs at info >= 0.6 of the echo ({e1[0] / echo[0]:.2f})", e1[0] >= 0.6 * echo[0])
check(f"portfolio-10k <= 100 ms (p50 {book[1]:.1f}, p99 {book[2]:.1f})", book[1] <= 100.0)
check("no failed request", all(v[4] == 0 for v in med.values()))
if "redis-warm-1" in med:
    w1, c1 = med["redis-warm-1"], med["evaluate-1"]
    print(f"info redis-warm-1 at {w1[0] / c1[0]:.2f} of in-memory evaluate-1 req/s; "
          f"redis-warm-100 at {med['redis-warm-100'][0] / med['evaluate-100'][0]:.2f} of in-memory evaluate-100")
    check(f"Redis paused: evaluate-1 p99 <= 25 ms deadline + 10 ms ({med['redis-paused-1'][2]:.2f})", med["redis-paused-1"][2] <= 35.0)
sys.exit(0 if ok else 1)
PY
