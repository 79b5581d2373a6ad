#!/usr/bin/env python3
"""Interleaved `/usr/bin/time -v` runs: medians of wall, user + sys and max RSS per command.

    python3 benches/timev.py RUNS NAME='CMD ...' [NAME='CMD ...' ...]

stdout of each command goes to /dev/null; a non-zero exit is recorded, not fatal (the generated
books hold invalid accounts on purpose, so `eval` exits 1). The load average at each run is
kept beside it: on the shared 2-core machine wall time is only meaningful when it is low.
"""
import re, shlex, statistics, subprocess, sys

runs = int(sys.argv[1])
cmds = [a.split("=", 1) for a in sys.argv[2:]]
rows = {n: [] for n, _ in cmds}
for i in range(runs):
    for name, cmd in cmds:
        load = open("/proc/loadavg").read().split()[0]
        p = subprocess.run(["/usr/bin/time", "-v"] + shlex.split(cmd), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        t = p.stderr
        g = lambda pat: re.search(pat, t).group(1)
        wall = g(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)")
        parts = [float(x) for x in wall.split(":")]
        secs = sum(x * 60 ** (len(parts) - 1 - k) for k, x in enumerate(parts))
        user, sys_ = float(g(r"User time \(seconds\): (\S+)")), float(g(r"System time \(seconds\): (\S+)"))
        rss = int(g(r"Maximum resident set size \(kbytes\): (\d+)")) / 1024
        rows[name].append((secs, user + sys_, user, sys_, rss, float(load), p.returncode))
        print(f"run {i + 1} {name:<14} wall {secs:6.2f} s  cpu {user + sys_:5.2f} s (user {user:.2f} sys {sys_:.2f})  maxRSS {rss:7.1f} MiB  load {load}  exit {p.returncode}", flush=True)
print(f"\nmedians of {runs} interleaved runs")
med = {}
for name, r in rows.items():
    m = [statistics.median(x[k] for x in r) for k in range(5)]
    med[name] = m
    print(f"{name:<14} wall {m[0]:6.2f} s  cpu {m[1]:5.2f} s (user {m[2]:.2f} sys {m[3]:.2f})  maxRSS {m[4]:7.1f} MiB  (load {min(x[5] for x in r):.1f}-{max(x[5] for x in r):.1f})")
base = cmds[-1][0]
for name in med:
    if name != base:
        a, b = med[name], med[base]
        print(f"{name} / {base}: wall {a[0] / b[0]:.2f}x, cpu {a[1] / b[1]:.2f}x, maxRSS {a[4] / b[4]:.2f}x")
