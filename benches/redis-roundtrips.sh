#!/usr/bin/env bash
# Redis commands and round trips per 1,000-account `/v1/evaluate` with events on (issue 19's
# budget: <= 3 round trips for state + outbox + cache), against a redis-server this script
# starts on a free loopback port (never 6379).
#
#   ROUNDS=5 bash benches/redis-roundtrips.sh
#
# For each round: a batch of 1,000 generated accounts with new ids (all seen for the first
# time: every account's state is written and its events appended), then the same batch again
# (nothing changed: no state written). Per request, from the server's side:
# - commands: `INFO commandstats` delta (every command Redis ran, the cache's included);
# - round trips: from `strace` of the serve process, the bursts of writes to Redis sockets
#   that follow a read from them (a burst = the writes after the last read, before the next
#   read: pipelined commands in one burst are one round trip; commands waiting for an answer
#   start a new one). Background cache writes after the answer count too (we wait 1 s).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
WORK=${WORK:-bench-data/redis-rt}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/tierwise
PORT=${PORT:-18290}
command -v strace >/dev/null || { echo "strace is missing: apt-get install -y strace" >&2; exit 2; }
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --bin tierwise --example gen_portfolio
mkdir -p "$WORK"
"$TARGET"/release/examples/gen_portfolio 1000 --format json > "$WORK/accounts.json"

PR=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PR" --bind 127.0.0.1 --save '' --appendonly no --daemonize no --loglevel warning --dir "$WORK" >/dev/null 2>&1 &
RPID=$!
SPID=""
trap 'kill $SPID $RPID 2>/dev/null || true' EXIT
for _ in $(seq 100); do redis-cli -p "$PR" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$BIN" serve --listen "127.0.0.1:$PORT" --policies policies --decision-log /dev/null --no-watch \
  --redis "redis://127.0.0.1:$PR/" --events ${EXTRA:-} 2>"$WORK/serve.err" &
SPID=$!
for _ in $(seq 150); do curl -fsS "http://127.0.0.1:$PORT/readyz" 2>/dev/null | grep -q '"cache":"ok"' && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$PORT/readyz"; echo

stats() { redis-cli -p "$PR" info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ {sub("cmdstat_", "", $1); printf "%s=%s ", $1, $3}'; }
total() { redis-cli -p "$PR" info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" {n += $3} END {print n + 0}'; }
one() { # label body
  local before after b0 st
  b0=$(stats)
  before=$(total)
  strace -f -qq -e trace=read,recvfrom,recvmsg,write,writev,sendto,sendmsg -e signal=none -o "$WORK/strace.txt" -p "$SPID" &
  st=$!
  sleep 0.5
  curl -fsS -o "$WORK/answer.json" -w "%{http_code} %{time_total}s " -X POST -H 'Content-Type: application/json' \
    --data-binary @"$2" "http://127.0.0.1:$PORT/v1/evaluate"
  sleep 1
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  after=$(total)
  # Redis sockets: the serve process's fds connected to the Redis port.
  local fds
  fds=$(for f in /proc/"$SPID"/fd/*; do
          ino=$(readlink "$f" | sed -n 's/socket:\[\([0-9]*\)\]/\1/p'); [ -n "$ino" ] || continue
          awk -v ino="$ino" -v pr="$(printf '%04X' "$PR")" '$10 == ino && substr($3, index($3, ":") + 1) == pr {print 1}' /proc/net/tcp | grep -q 1 && basename "$f"
        done | tr '\n' ' ')
  python3 - "$WORK/strace.txt" "$fds" "$1" "$((after - before))" <<'PY'
import re, sys
path, fds, label, cmds = sys.argv[1], set(sys.argv[2].split()), sys.argv[3], sys.argv[4]
pat = re.compile(r"^\d+\s+(read|recvfrom|recvmsg|write|writev|sendto|sendmsg)\((\d+),.*= (-?\d+)")
bursts, writes, reads, last = 0, 0, 0, "read"
for line in open(path):
    m = pat.match(line)
    if not m or m.group(2) not in fds or int(m.group(3)) <= 0:
        continue
    kind = "write" if m.group(1) in ("write", "writev", "sendto", "sendmsg") else "read"
    if kind == "write":
        writes += 1
        if last == "read":
            bursts += 1
    else:
        reads += 1
    last = kind
print(f"{label}: {cmds} Redis commands, {bursts} round trips (write bursts), {writes} writes, {reads} reads on fds {sorted(fds)}")
PY
  echo "   commandstats after: $(stats)"
}
for r in $(seq "$ROUNDS"); do
  python3 - "$WORK" "$r" <<'PY'
import json, sys
work, r = sys.argv[1], sys.argv[2]
acc = json.load(open(f"{work}/accounts.json"))
for a in acc:
    a["id"] = f"r{r}-{a['id']}"
open(f"{work}/batch.json", "w").write(json.dumps({"accounts": acc}, separators=(",", ":")))
PY
  one "round $r, 1,000 new accounts" "$WORK/batch.json"
  one "round $r, the same 1,000 again" "$WORK/batch.json"
done
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^tierwise_(events_emitted_total|cache_)' | head -20
