#!/usr/bin/env bash
# blkstack bench against fio, the same jobs on the same kind of target, side
# by side, one thread, the job's iodepth, time based, RUNS runs each
# (alternating), medians: blkstack bench on a null disk with inline
# completion (null:1G) against fio's null engine (--ioengine=null
# --size=1G), so the figures are the cost of each tool's own path.
# (The file driver against fio and the loop device: bench/file-vs-fio.sh.)
#
# The jobs: 4k randread QD1, 4k randread QD32 (the headline), 4k randwrite
# QD32, 128k sequential read QD8.
#
# Prints a table (IOPS, mean latency, clat p50/p99, CPU per I/O) and ends
# with one line for the headline job:
#   RESULT blkstack_iops=N fio_iops=N ratio=R      (ratio = blkstack / fio)
#
# Usage: bench/bench-vs-fio.sh        (env: JOBS=2 RUNS=3 RUNTIME=3)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-3}
bench_setup bench-vs-fio cmake ninja fio python3
bench_build blkstack_cli

# name|options shared by both sides (fio's names)
CASES=(
  "rr-qd1|--rw=randread --bs=4k --iodepth=1"
  "rr-qd32|--rw=randread --bs=4k --iodepth=32"
  "rw-qd32|--rw=randwrite --bs=4k --iodepth=32"
  "seq-128k-qd8|--rw=read --bs=128k --iodepth=8"
)

echo "bench-vs-fio: ${#CASES[@]} jobs, $RUNS runs of ${RUNTIME}s per side"
for i in $(seq 1 "$RUNS"); do
  for c in "${CASES[@]}"; do
    IFS='|' read -r name opts <<<"$c"
    ours="--filename=null:1G"
    theirs="--ioengine=null --size=1G"
    # shellcheck disable=SC2086
    "$BUILD/blkstack" bench --name="$name" $ours $opts --time_based \
      --runtime="$RUNTIME" --output-format=json >"$tmp/blkstack-$name-$i.json" ||
      { cat "$tmp/blkstack-$name-$i.json"; echo "bench-vs-fio: blkstack bench failed" >&2; exit 1; }
    # shellcheck disable=SC2086
    fio --name="$name" $theirs $opts --time_based --runtime="$RUNTIME" \
      --output-format=json >"$tmp/fio-$name-$i.json" ||
      { cat "$tmp/fio-$name-$i.json"; echo "bench-vs-fio: fio failed" >&2; exit 1; }
  done
done

python3 - "$tmp" "$RUNS" "${CASES[@]}" <<'PY'
import json, statistics, sys

tmp, runs, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = statistics.median

def load(side, name, i):
    with open(f"{tmp}/{side}-{name}-{i}.json") as f:
        text = f.read()
    # fio may print notes before its JSON.
    return json.loads(text[text.index("{"):])["jobs"][0]

def figures(job):
    d = job["read"] if job["read"]["total_ios"] > 0 else job["write"]
    cpu = (job["usr_cpu"] + job["sys_cpu"]) / 100 * d["runtime"] * 1e6 / max(1, d["total_ios"])
    pct = d["clat_ns"].get("percentile", {})
    return {"iops": d["iops"], "lat": d["lat_ns"]["mean"], "p50": pct.get("50.000000", 0),
            "p99": pct.get("99.000000", 0), "cpu": cpu}

print()
print(f"{'job':<14} {'side':<9} {'runs':>4} {'IOPS':>10} {'min':>10} {'max':>10}"
      f" {'lat ns':>8} {'clat p50':>9} {'clat p99':>9} {'CPU ns/IO':>10}")
headline = None
for c in cases:
    name = c.split("|", 1)[0]
    row = {}
    for side in ("blkstack", "fio"):
        fs = [figures(load(side, name, i)) for i in range(1, runs + 1)]
        iops = [f["iops"] for f in fs]
        row[side] = med(iops)
        print(f"{name:<14} {side:<9} {len(fs):>4} {med(iops):>10,.0f} {min(iops):>10,.0f}"
              f" {max(iops):>10,.0f} {med(f['lat'] for f in fs):>8.0f}"
              f" {med(f['p50'] for f in fs):>9.0f} {med(f['p99'] for f in fs):>9.0f}"
              f" {med(f['cpu'] for f in fs):>10.0f}")
    ratio = row["blkstack"] / row["fio"] if row["fio"] else 0
    print(f"{'':<14} {'ratio':<9} {'':>4} {ratio:>10.2f}")
    if name == "rr-qd32":
        headline = (row["blkstack"], row["fio"], ratio)
print()
print("IOPS: median of the runs (per side, one thread). lat: mean total latency. clat p50/p99:")
print("completion latency percentiles (fio's log-linear histogram on both sides). CPU ns/IO:")
print("(usr + sys CPU) / I/Os. null rows: blkstack null:1G, inline completion, through IoContext;")
print("fio --ioengine=null. With inline completion an I/O completes inside the submit call, so")
print("clat is mostly the time until the batch is reaped, on both sides.")
print()
b, f, r = headline
print(f"RESULT blkstack_iops={b:.0f} fio_iops={f:.0f} ratio={r:.2f}")
PY
