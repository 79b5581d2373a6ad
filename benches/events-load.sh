#!/usr/bin/env bash
# What logs, events and a hung webhook cost single-account `/v1/evaluate` (issues 18 and 19),
# on the same set-up as benches/load.sh (release build, wrk -t2 -c32 on the same 2 cores,
# decision log to a file, servers on their defaults), the cases interleaved run by run:
#
#   RUNS=5 DURATION=10s bash benches/events-load.sh
#
#   echo            the bare axum echo (examples/echo.rs): the ceiling
#   info            events off, logs at info (the default: one access line per request)
#   warn            TIERWISE_LOG=warn (what load.sh calls logs-off)
#   off             TIERWISE_LOG=off
#   events          --events (state and outbox in memory)
#   hook-hang       --webhook to a receiver that accepts connections and never answers
#   hook-refused    --webhook to a loopback port nobody listens on
# each with the same account on every request ("warm": after the first, the same as_of again,
# so no event), then the events cases again with new account ids on every request ("cold":
# each request is an account seen for the first time, so it emits its `alert.raised`).
# Then, on two fresh servers with --cache-memory-mb 8 (so the decision cache does not hide
# what the outbox holds): events off and hook-hang, cold load until the hung webhook's
# outbox holds 100,000 undelivered events; VmRSS and VmHWM of both then, and after as much
# load again (the outbox is trimmed at its retention, 100,000 by default).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
WORK=${WORK:-bench-data/events-load}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/tierwise
BASE=${BASE_PORT:-18180}

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --bin tierwise --example gen_portfolio --example echo
mkdir -p "$WORK"

"$TARGET"/release/examples/gen_portfolio 10000 --format json > "$WORK/accounts.json"
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
accounts = json.load(open(f"{work}/accounts.json"))
# An account that raises an alert (revenue_decline) and keeps its tier: seen for the first
# time it emits one `alert.raised`; sent again (same as_of) it emits nothing.
single = next(a for a in accounts if a["id"] == "acc-0000009")
open(f"{work}/one.json", "w").write(json.dumps({"accounts": [single]}, separators=(",", ":")))
open(f"{work}/echo.json", "w").write(json.dumps(single, separators=(",", ":")))
PY

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
# A webhook receiver that accepts every connection and never reads or answers.
cat > "$WORK/hang.py" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1024)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
PY

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ "${KEEP_LOGS:-0}" = 1 ] || rm -f "$WORK"/decisions-*.jsonl
}
trap cleanup EXIT
wait_for() {
  for _ in $(seq 150); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "server at $1 did not come up" >&2; exit 2
}
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
P_HANG=$((BASE + 9))
P_REFUSED=$((BASE + 10)) # nobody listens there
python3 "$WORK/hang.py" "$P_HANG" & PIDS+=($!)

declare -A PORT PID
serve() { # name port env... -- flags...
  local name=$1 port=$2; shift 2
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" "$BIN" serve --listen "127.0.0.1:$port" --policies policies \
    --decision-log "$WORK/decisions-$name.jsonl" --no-watch "$@" 2>"$WORK/serve-$name.err" &
  PID[$name]=$!; PORT[$name]=$port; PIDS+=($!)
  wait_for "http://127.0.0.1:$port/readyz"
}
"$TARGET"/release/examples/echo "127.0.0.1:$BASE" 2>/dev/null & PID[echo]=$!; PORT[echo]=$BASE; PIDS+=($!)
serve info $((BASE + 1)) TIERWISE_LOG=info --
serve warn $((BASE + 2)) TIERWISE_LOG=warn --
serve off $((BASE + 3)) TIERWISE_LOG=off --
serve events $((BASE + 4)) TIERWISE_LOG=info -- --events
serve hook-hang $((BASE + 5)) TIERWISE_LOG=info -- --webhook "http://127.0.0.1:$P_HANG/hook" --webhook-secret "$SECRET"
serve hook-refused $((BASE + 6)) TIERWISE_LOG=info -- --webhook "http://127.0.0.1:$P_REFUSED/hook" --webhook-secret "$SECRET"
curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' --data @"$WORK/echo.json" "http://127.0.0.1:$BASE/echo"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
RESULTS="$WORK/results.txt"
: > "$RESULTS"
measure() { # label name path [cold]
  local label=$1 name=$2 path=$3 script=$WORK/post.lua body=$WORK/one.json before after line
  [ "${4:-}" = cold ] && script=$WORK/post-cold.lua
  [ "$name" = echo ] && body=$WORK/echo.json
  before=$(ticks "${PID[$name]}")
  line=$(SALT="$RANDOM$RANDOM" BODY="$body" wrk -t2 -c32 -d"$DURATION" --latency -s "$script" \
    "http://127.0.0.1:${PORT[$name]}$path" | grep '^RESULT')
  after=$(ticks "${PID[$name]}")
  echo "$label $line $((after - before)) $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$RESULTS" >&2
}
for run in $(seq "$RUNS"); do
  measure echo echo /echo
  for n in info warn off events hook-hang hook-refused; do measure "$n" "$n" /v1/evaluate; done
  for n in info events hook-hang hook-refused; do measure "$n-cold" "$n" /v1/evaluate cold; done
done
for n in events hook-hang hook-refused; do
  echo "$n: $(curl -fsS "http://127.0.0.1:${PORT[$n]}/metrics" | grep -E '^tierwise_(events_emitted_total|events_outbox_retained|webhook_(outbox_depth|delivered_total|retried_total|dropped_total))' | tr '\n' ' ')" >&2
done

python3 - "$RESULTS" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
hz = float(sys.argv[2])
rows = {}
for line in open(sys.argv[1]):
    name, _, rps, p50, p99, n, errors, ticks, load = line.split()
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), float(ticks) / hz * 1e6 / max(int(n), 1), int(errors), float(load)))
med = {k: [statistics.median(r[i] for r in v) for i in range(4)] + [sum(r[4] for r in v), max(r[5] for r in v)] for k, v in rows.items()}
print(f"{'case':<18} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU/req':>8} {'errors':>6} {'max load':>8}  (median of {len(rows['echo'])} runs)")
for k, (rps, p50, p99, cpu, err, load) in med.items():
    print(f"{k:<18} {rps:>9.0f} {p50:>7.2f} {p99:>7.2f} {cpu:>6.1f}us {err:>6} {load:>8.2f}")
r = lambda a, b, i=0: med[a][i] / med[b][i]
print(f"issue 18: info / warn req/s {r('info', 'warn'):.2f}; info / off {r('info', 'off'):.2f}; info / echo {r('info', 'echo'):.2f} (budgets >= 0.9, >= 0.6)")
print(f"issue 19: events / info req/s warm {r('events', 'info'):.2f}, cold {r('events-cold', 'info-cold'):.2f} (budget >= 0.8)")
for h in ("hook-hang", "hook-refused"):
    print(f"issue 19: {h} p99 / events-off p99: warm {r(h, 'info', 2):.2f}, cold {r(h + '-cold', 'info-cold', 2):.2f} (budget <= 1.2); req/s {r(h, 'info'):.2f} / {r(h + '-cold', 'info-cold'):.2f}")
PY

# Memory while 100,000 events wait behind a hung webhook.
serve mem-off $((BASE + 7)) TIERWISE_LOG=info -- --cache-memory-mb 8
serve mem-hang $((BASE + 8)) TIERWISE_LOG=info -- --cache-memory-mb 8 --webhook "http://127.0.0.1:$P_HANG/hook" --webhook-secret "$SECRET"
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %.1f MiB  ", $1, $2 / 1024}' "/proc/$1/status"; }
depth() { curl -fsS "http://127.0.0.1:${PORT[mem-hang]}/metrics" | awk '/^tierwise_webhook_outbox_depth/ {print $2; exit}'; }
echo "start: mem-off $(rss "${PID[mem-off]}")| mem-hang $(rss "${PID[mem-hang]}")" >&2
reqs=0
for _ in $(seq 60); do
  d=$(depth); d=${d:-0}
  [ "${d%.*}" -ge 100000 ] && break
  for n in mem-off mem-hang; do
    line=$(SALT="$RANDOM$RANDOM" BODY="$WORK/one.json" wrk -t2 -c32 -d2s -s "$WORK/post-cold.lua" "http://127.0.0.1:${PORT[$n]}/v1/evaluate" | grep '^RESULT')
    [ "$n" = mem-hang ] && reqs=$((reqs + $(echo "$line" | awk '{print $5}')))
  done
done
echo "outbox depth $(depth) after $reqs cold requests: mem-off $(rss "${PID[mem-off]}")| mem-hang $(rss "${PID[mem-hang]}")" >&2
for n in mem-off mem-hang; do
  SALT="$RANDOM$RANDOM" BODY="$WORK/one.json" wrk -t2 -c32 -d20s -s "$WORK/post-cold.lua" "http://127.0.0.1:${PORT[$n]}/v1/evaluate" | grep '^RESULT' >&2
done
echo "after 20 s more cold load each: depth $(depth): mem-off $(rss "${PID[mem-off]}")| mem-hang $(rss "${PID[mem-hang]}")" >&2
curl -fsS "http://127.0.0.1:${PORT[mem-hang]}/metrics" | grep -E '^tierwise_(events_emitted_total|events_outbox_retained|webhook_)' >&2 || true
