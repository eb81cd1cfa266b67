#!/usr/bin/env bash
# The cost of the block core against fio's null engine, side by side.
#
# blkstack: bench/core_null_bench (Google Benchmark), one 4 KiB read at a
# random offset through submit_bio() on a null disk with inline completion,
# one thread, BENCH_REPS repetitions; the median of its ns_per_io counter
# (CPU time per I/O). The table also shows wall-clock and CPU figures for
# both sides, which differ when the machine is busy.
# fio: --ioengine=null, 4k random reads at iodepth 1 for FIO_RUNTIME seconds,
# FIO_RUNS runs; ns per I/O = 1e9 / IOPS, the median run.
#
# Prints a table and ends with one line:
#   RESULT blkstack_ns=N fio_null_ns=N ratio=R      (ratio = blkstack / fio)
#
# Usage: bench/core-null.sh        (env: JOBS=2 BENCH_REPS=5 FIO_RUNS=3 FIO_RUNTIME=5)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
BENCH_REPS=${BENCH_REPS:-5}
FIO_RUNS=${FIO_RUNS:-3}
FIO_RUNTIME=${FIO_RUNTIME:-5}
bench_setup core-null cmake ninja fio python3
bench_build core_null_bench

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
med = statistics.median

with open(f"{tmp}/blkstack.json") as f:
    runs = [b for b in json.load(f)["benchmarks"] if b.get("run_type") == "iteration"]
if not runs:
    sys.exit("core-null: no benchmark results from core_null_bench")
scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}
# ns_per_io is an inverted rate over CPU time: seconds of CPU per I/O.
bk = [b["ns_per_io"] * 1e9 for b in runs]
bk_wall = [b["real_time"] * scale[b["time_unit"]] for b in runs]

fio, fio_cpu = [], []
for path in sorted(glob.glob(f"{tmp}/fio-*.json")):
    with open(path) as f:
        job = json.load(f)["jobs"][0]
    rd = job["read"]
    fio.append(1e9 / rd["iops"])
    cpu_share = (job["usr_cpu"] + job["sys_cpu"]) / 100
    fio_cpu.append(cpu_share * rd["runtime"] * 1e6 / rd["total_ios"])
if len(fio) != fio_runs:
    sys.exit("core-null: missing fio results")

b_med, f_med = med(bk), med(fio)
print()
print(f"{'side':<44} {'runs':>4} {'ns/IO':>7} {'min':>7} {'max':>7} {'IOPS':>8}"
      f"   {'wall ns':>7} {'CPU ns':>7}")
rows = (("blkstack submit_bio, null disk, 4k read [1]", bk, med(bk_wall), b_med),
        ("fio --ioengine=null, 4k randread QD1 [2]", fio, f_med, med(fio_cpu)))
for name, xs, wall, cpu in rows:
    m = med(xs)
    print(f"{name:<44} {len(xs):>4} {m:>7.1f} {min(xs):>7.1f} {max(xs):>7.1f} "
          f"{1e9 / m / 1e6:>7.2f}M   {wall:>7.1f} {cpu:>7.1f}")
print("[1] median of core_null_bench's ns_per_io (CPU time per I/O)")
print("[2] 1e9 / IOPS (wall-clock time per I/O); CPU ns from fio's usr_cpu + sys_cpu")
if med(bk_wall) > 1.2 * b_med or f_med > 1.2 * med(fio_cpu):
    print("note: wall time exceeds CPU time by more than 20%: the machine is busy and the "
          "figures are noisy; the CPU column compares like with like")
print()
print(f"RESULT blkstack_ns={b_med:.0f} fio_null_ns={f_med:.0f} ratio={b_med / f_med:.2f}")
PY
