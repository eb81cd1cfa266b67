#!/usr/bin/env bash
# The cost of the block core against fio's null engine, side by side.
#
# blkstack: bench/core_null_bench (Google Benchmark), one 4 KiB read at a
# random offset through submit_bio() on a null disk with inline completion,
# one thread, BENCH_REPS repetitions; the median of its ns_per_io counter.
# fio: --ioengine=null, 4k random reads at iodepth 1 for FIO_RUNTIME seconds,
# FIO_RUNS runs; ns per I/O = 1e9 / IOPS, the median run.
#
# Prints a table and ends with one line:
#   RESULT blkstack_ns=N fio_null_ns=N ratio=R      (ratio = blkstack / fio)
#
# Usage: bench/core-null.sh        (env: JOBS=2 BENCH_REPS=5 FIO_RUNS=3 FIO_RUNTIME=5)
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=${JOBS:-2}
BENCH_REPS=${BENCH_REPS:-5}
FIO_RUNS=${FIO_RUNS:-3}
FIO_RUNTIME=${FIO_RUNTIME:-5}
BUILD=build-bench

for tool in cmake ninja fio python3; do
  command -v "$tool" >/dev/null || { echo "core-null: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done

echo "core-null: building $BUILD (Release)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBLKSTACK_TESTS=OFF \
  -DBLKSTACK_BENCH=ON --log-level=WARNING
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --build "$BUILD" -j "$JOBS" --target core_null_bench >"$tmp/build.log" 2>&1 ||
  { cat "$tmp/build.log"; echo "core-null: build failed" >&2; exit 1; }

echo "core-null: blkstack core_null_bench, $BENCH_REPS repetitions"
"$BUILD/bench/core_null_bench" --benchmark_repetitions="$BENCH_REPS" \
  --benchmark_out="$tmp/blkstack.json" --benchmark_out_format=json >"$tmp/bench.log" 2>&1 ||
  { cat "$tmp/bench.log"; echo "core-null: core_null_bench failed" >&2; exit 1; }

echo "core-null: fio null engine, $FIO_RUNS runs of ${FIO_RUNTIME}s"
for i in $(seq 1 "$FIO_RUNS"); do
  fio --name=null --ioengine=null --rw=randread --bs=4k --size=1G --iodepth=1 \
      --time_based --runtime="$FIO_RUNTIME" --output-format=json >"$tmp/fio-$i.json" ||
    { cat "$tmp/fio-$i.json"; echo "core-null: fio failed" >&2; exit 1; }
done

python3 - "$tmp" "$FIO_RUNS" <<'PY'
import glob, json, statistics, sys

tmp, fio_runs = sys.argv[1], int(sys.argv[2])

with open(f"{tmp}/blkstack.json") as f:
    runs = [b for b in json.load(f)["benchmarks"] if b.get("run_type") == "iteration"]
# ns_per_io is an inverted rate: seconds per iteration.
bk = [b["ns_per_io"] * 1e9 for b in runs]
if not bk:
    sys.exit("core-null: no benchmark results from core_null_bench")

fio = []
for path in sorted(glob.glob(f"{tmp}/fio-*.json")):
    with open(path) as f:
        iops = json.load(f)["jobs"][0]["read"]["iops"]
    fio.append(1e9 / iops)
if len(fio) != fio_runs:
    sys.exit("core-null: missing fio results")

b_med, f_med = statistics.median(bk), statistics.median(fio)
print()
print(f"{'side':<40} {'runs':>4} {'median ns/IO':>12} {'min':>8} {'max':>8} {'IOPS':>10}")
for name, xs, med in (("blkstack submit_bio, null disk, 4k read", bk, b_med),
                      ("fio --ioengine=null, 4k randread QD1", fio, f_med)):
    print(f"{name:<40} {len(xs):>4} {med:>12.1f} {min(xs):>8.1f} {max(xs):>8.1f} "
          f"{1e9 / med / 1e6:>9.2f}M")
print()
print(f"RESULT blkstack_ns={b_med:.0f} fio_null_ns={f_med:.0f} ratio={b_med / f_med:.2f}")
PY
