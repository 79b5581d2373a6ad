#!/usr/bin/env bash
# Whole process, 100,000 accounts: `tierwise eval --portfolio --format jsonl` against the
# hand-written program (examples/handwritten.rs) that does the same job for policies/enterprise.
#
#   bash benches/cli.sh                 # N=100000 RUNS=10
#   N=20000 RUNS=5 bash benches/cli.sh
#
# Builds release, generates the accounts (examples/gen_portfolio.rs, fixed seed) into
# bench-data/ (git-ignored), checks that both programs write the same bytes, then
# `hyperfine -N --warmup 2 --runs $RUNS` (stdout to /dev/null; both exit 1 because ~0.5 % of
# the generated accounts are invalid on purpose, hence -i) and `/usr/bin/time -v` for max RSS.
# Needs hyperfine (Debian: apt-get install hyperfine) and GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
RUNS=${RUNS:-10}
DATA=${DATA:-bench-data}

if ! command -v hyperfine >/dev/null; then
    echo "hyperfine is missing: apt-get update && apt-get install -y hyperfine" >&2
    exit 2
fi
if [ ! -x /usr/bin/time ]; then
    echo "/usr/bin/time is missing: apt-get install -y time" >&2
    exit 2
fi

cargo build --release --bin tierwise --example gen_portfolio --example handwritten

mkdir -p "$DATA"
F="$DATA/accounts-$N.jsonl"
if [ ! -s "$F" ]; then
    target/release/examples/gen_portfolio "$N" > "$F"
fi
echo "accounts: $F ($(wc -l < "$F") lines, $(( $(stat -c %s "$F") / 1024 / 1024 )) MiB)"

CLI=(target/release/tierwise eval --policy policies/enterprise --accounts "$F" --portfolio --format jsonl)
# The same decision with its script written with a mutable local, a loop and a switch.
LOOPS=(target/release/tierwise eval --policy tests/corpus/enterprise-loops --accounts "$F" --portfolio --format jsonl)
HW=(target/release/examples/handwritten "$F")
HW2=(target/release/examples/handwritten "$F" --threads 2)

# Same job, same bytes?
"${CLI[@]}" > "$DATA/out-cli.jsonl" 2>/dev/null || true
"${HW[@]}" > "$DATA/out-handwritten.jsonl" 2>/dev/null || true
if cmp -s "$DATA/out-cli.jsonl" "$DATA/out-handwritten.jsonl"; then
    echo "outputs: byte-identical ($(( $(stat -c %s "$DATA/out-cli.jsonl") / 1024 / 1024 )) MiB)"
else
    echo "outputs DIFFER: compare $DATA/out-cli.jsonl and $DATA/out-handwritten.jsonl" >&2
fi
rm -f "$DATA/out-cli.jsonl" "$DATA/out-handwritten.jsonl"

hyperfine -N -i --warmup 2 --runs "$RUNS" --output=null --export-json "$DATA/hyperfine.json" \
    -n cli "${CLI[*]}" \
    -n cli-loops "${LOOPS[*]}" \
    -n handwritten "${HW[*]}" \
    -n "handwritten --threads 2" "${HW2[*]}"

python3 - "$DATA/hyperfine.json" <<'EOF' || true
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
print("\nmedians: " + ", ".join(f'{k} {v["median"]:.3f} s (user {v["user"]:.3f} + sys {v["system"]:.3f})' for k, v in r.items()))
for k in ("cli", "cli-loops"):
    if k in r and "handwritten" in r:
        cpu = lambda x: x["user"] + x["system"]
        print(f'{k} / handwritten (1 thread): CPU {cpu(r[k]) / cpu(r["handwritten"]):.2f}x, wall {r[k]["median"] / r["handwritten"]["median"]:.2f}x')
if "cli" in r and "handwritten" in r:
    print(f'cli / handwritten (1 thread): {r["cli"]["median"] / r["handwritten"]["median"]:.2f}x')
if "cli" in r and "handwritten --threads 2" in r:
    print(f'cli / handwritten (2 threads): {r["cli"]["median"] / r["handwritten --threads 2"]["median"]:.2f}x')
EOF

echo
for name in cli cli-loops handwritten "handwritten --threads 2"; do
    case "$name" in
        cli) cmd=("${CLI[@]}") ;;
        cli-loops) cmd=("${LOOPS[@]}") ;;
        handwritten) cmd=("${HW[@]}") ;;
        *) cmd=("${HW2[@]}") ;;
    esac
    /usr/bin/time -v "${cmd[@]}" > /dev/null 2> "$DATA/time.txt" || true
    rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$DATA/time.txt")
    wall=$(awk '/Elapsed \(wall clock\)/ {print $NF}' "$DATA/time.txt")
    printf '%-26s max RSS %6d MB   wall %s\n' "$name" $(( rss / 1024 )) "$wall"
done
rm -f "$DATA/time.txt"
