#!/usr/bin/env bash
# The multi-queue request path against the bio path, side by side.
#
# bench/mq_null_bench (Google Benchmark): 4 KiB random reads on a null disk
# with inline completion, bio-based and multi-queue (none scheduler, 2
# hardware queues, 256 tags), `depth` I/Os per batch (under a plug when
# depth > 1), on 1 and 2 threads, BENCH_REPS repetitions; medians. A bfq
# row (the same queue with sched=bfq, depth 32) gives the scheduler's cost.
# ns/IO is per thread (wall-clock time per I/O of one submitting thread);
# IOPS is the total of all threads.
#
# Prints a table and ends with one line (depth 32):
#   RESULT bio_ns=N mq_ns=N mq_over_bio=R scale_2t=R bfq_ns=N bfq_over_none_ns=N
# scale_2t = mq IOPS on 2 threads / mq IOPS on 1 thread; bfq_over_none_ns =
# bfq's ns/IO minus none's (1 thread, depth 32).
#
# Usage: bench/mq-null.sh        (env: JOBS=2 BENCH_REPS=5 MIN_TIME=1)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
BENCH_REPS=${BENCH_REPS:-5}
MIN_TIME=${MIN_TIME:-1}
bench_setup mq-null cmake ninja python3
bench_build mq_null_bench

echo "mq-null: mq_null_bench, $BENCH_REPS repetitions of each case"
"$BUILD/bench/mq_null_bench" --benchmark_repetitions="$BENCH_REPS" \
  --benchmark_min_time="$MIN_TIME" --benchmark_report_aggregates_only=false \
  --benchmark_out="$tmp/bench.json" --benchmark_out_format=json >"$tmp/bench.log" 2>&1 ||
  { cat "$tmp/bench.log"; echo "mq-null: mq_null_bench failed" >&2; exit 1; }

python3 - "$tmp/bench.json" <<'PY'
import json, re, statistics, sys

with open(sys.argv[1]) as f:
    runs = [b for b in json.load(f)["benchmarks"] if b.get("run_type") == "iteration"]
cases = {}
for b in runs:
    m = re.search(r"mq:(\d)/depth:(\d+)/real_time/threads:(\d+)", b["name"])
    if not m:
        continue
    mq, depth, threads = (int(x) for x in m.groups())
    iops = b["items_per_second"]
    cases.setdefault((mq, depth, threads), []).append(iops)
if not cases:
    sys.exit("mq-null: no results")

med = {k: statistics.median(v) for k, v in cases.items()}
def ns(mq, depth, threads):
    return 1e9 * threads / med[(mq, depth, threads)]

print()
print(f"{'path':<6} {'depth':>5} {'threads':>7} {'ns/IO':>8} {'IOPS':>12} {'mq/bio':>7}")
for depth in (1, 32, 128):
    for threads in (1, 2):
        for mq in (0, 1, 2):
            if (mq, depth, threads) not in med:
                continue
            ratio = f"{ns(mq, depth, threads) / ns(0, depth, threads):7.2f}" if mq else ""
            print(f"{('bio', 'mq', 'bfq')[mq]:<6} {depth:>5} {threads:>7} {ns(mq, depth, threads):>8.1f}"
                  f" {med[(mq, depth, threads)]:>12,.0f} {ratio:>7}")
print()
print("ns/IO: wall-clock time per I/O of one submitting thread; IOPS: all threads together.")
print("Goal: mq ns/IO <= 1.5x bio; 2 threads >= 1.7x the IOPS of one (needs 2 idle cores).")
bio, mq = ns(0, 32, 1), ns(1, 32, 1)
scale = med[(1, 32, 2)] / med[(1, 32, 1)]
bfq = ns(2, 32, 1)
print(f"RESULT bio_ns={bio:.1f} mq_ns={mq:.1f} mq_over_bio={mq / bio:.2f} scale_2t={scale:.2f}"
      f" bfq_ns={bfq:.1f} bfq_over_none_ns={bfq - mq:.1f}")
PY
