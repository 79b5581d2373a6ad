#!/usr/bin/env python3
"""Twelve monthly periods of one generated book, for the backtest bench (benches/backtest.sh).

    python3 benches/history.py ACCOUNTS.jsonl OUT_DIR [PERIODS]

Period 1 is the file as generated (examples/gen_portfolio.rs); period k (k = 1..PERIODS-1)
moves `as_of` k months later and drifts `revenue_12m` with a fixed seed: most accounts by
+-3 % noise, one in ten grows 4 % a month, one in ten shrinks 4 % a month, so tiers move
and the replay has real promotions, demotions and alerts to count. Same bytes every run.
"""
import json, os, random, sys

src, out = sys.argv[1], sys.argv[2]
periods = int(sys.argv[3]) if len(sys.argv) > 3 else 12
os.makedirs(out, exist_ok=True)
lines = open(src, encoding="utf-8").read().splitlines()

def month_after(as_of, k):
    y, m, d = (int(x) for x in as_of.split("-"))
    m += k
    y += (m - 1) // 12
    m = (m - 1) % 12 + 1
    return f"{y:04d}-{m:02d}-{min(d, 28):02d}"

rng = random.Random(20261204)
trend = [rng.random() for _ in lines]
for k in range(periods):
    r = random.Random(1000 + k)
    with open(os.path.join(out, f"period-{k + 1:02d}.jsonl"), "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            try:
                a = json.loads(line)
            except ValueError:
                f.write(line + "\n")  # an invalid line stays invalid in every period
                continue
            if k > 0 and isinstance(a, dict):
                if isinstance(a.get("as_of"), str) and len(a["as_of"]) == 10:
                    a["as_of"] = month_after(a["as_of"], k)
                fields = a.get("fields")
                if isinstance(fields, dict) and isinstance(fields.get("revenue_12m"), (int, float)):
                    g = 1.04 ** k if trend[i] < 0.1 else (0.96 ** k if trend[i] < 0.2 else 1.0)
                    fields["revenue_12m"] = max(0, round(fields["revenue_12m"] * g * (1 + r.uniform(-0.03, 0.03))))
            f.write(json.dumps(a, separators=(",", ":")) + "\n")
