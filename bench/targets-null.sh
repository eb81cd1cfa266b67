#!/usr/bin/env bash
# What device-mapper targets add to an I/O, beside the bare device.
#
# bench/targets_null_bench (Google Benchmark): one 4 KiB read at a random
# offset through submit_bio(), one thread, null disks with inline
# completion, BENCH_REPS repetitions, the median of each ns_per_io (CPU time
# per I/O): the bare null disk; a linear table on it; striped (2 stripes,
# 64 KiB chunks); mirror (2 legs, when a mirror target is registered, else
# n/a); 16 linear tables stacked.
#
# Prints a table and ends with one line (the target figures are ns added
# to the bare device's; per_layer = stack16 / 16; goal: linear under 50):
#   RESULT bare_ns=N linear_ns=N striped_ns=N mirror_ns=N stack16_ns=N per_layer_ns=N
#
# Usage: bench/targets-null.sh        (env: JOBS=2 BENCH_REPS=5 BENCH_MIN_TIME=0.5)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
BENCH_REPS=${BENCH_REPS:-5}
BENCH_MIN_TIME=${BENCH_MIN_TIME:-0.5}
bench_setup targets-null cmake ninja python3
bench_build targets_null_bench

echo "targets-null: targets_null_bench, $BENCH_REPS repetitions"
"$BUILD/bench/targets_null_bench" --benchmark_repetitions="$BENCH_REPS" \
  --benchmark_min_time="$BENCH_MIN_TIME" \
  --benchmark_out="$tmp/bench.json" --benchmark_out_format=json >"$tmp/bench.log" 2>&1 ||
  bench_fail "targets_null_bench failed" "$tmp/bench.log"

python3 - "$tmp/bench.json" <<'PY'
import json, statistics, sys

with open(sys.argv[1]) as f:
    runs = [b for b in json.load(f)["benchmarks"] if b.get("run_type") == "iteration"]
ns = {}
for b in runs:
    if b.get("error_occurred"):
        continue
    name = b["name"].split("/")[0].removeprefix("BM_").lower()
    ns.setdefault(name, []).append(b["ns_per_io"] * 1e9)
if "bare" not in ns:
    sys.exit("targets-null: no result for the bare device")
med = {k: statistics.median(v) for k, v in ns.items()}
bare = med["bare"]

def added(k):
    return med[k] - bare if k in med else None

print()
print(f"{'device':<34} {'runs':>4} {'ns/IO':>7} {'added':>7}")
labels = (("bare", "null disk (bare)"), ("linear", "linear on it"),
          ("striped", "striped 2 x 64 KiB"), ("mirror", "mirror 2 legs"),
          ("stack16", "16 linear tables stacked"))
for k, label in labels:
    if k in med:
        print(f"{label:<34} {len(ns[k]):>4} {med[k]:>7.1f} {med[k] - bare:>7.1f}")
    else:
        print(f"{label:<34} {'-':>4} {'n/a':>7} {'n/a':>7}")
print("ns/IO: median of targets_null_bench's ns_per_io (CPU time per 4 KiB read, QD1)")

def fmt(v):
    return "n/a" if v is None else f"{v:.0f}"

stack = added("stack16")
per_layer = None if stack is None else stack / 16
print()
print(f"RESULT bare_ns={bare:.0f} linear_ns={fmt(added('linear'))} "
      f"striped_ns={fmt(added('striped'))} mirror_ns={fmt(added('mirror'))} "
      f"stack16_ns={fmt(stack)} per_layer_ns={fmt(per_layer)}")
PY
