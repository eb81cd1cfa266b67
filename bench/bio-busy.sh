#!/usr/bin/env bash
# The cost of a declared bio depth (BioGate, docs/drivers.md "When the
# driver is full") beside none, on a bio-based null disk.
#
# blkstack bench: 4 KiB random reads through IoContext on null:1G with
# inline completion, iodepth=32 submitted 32 at a time, one thread,
# RUNTIME seconds: once plain (null:1G), once with bio_depth=32 (every bio
# counted by the core, never more than 32 inside the driver). ns per I/O =
# 1e9 / IOPS. One run each; goal: under 30 ns added.
#
# Ends with one line:
#   RESULT plain_ns=N busy_ns=N added_ns=N
#
# Usage: bench/bio-busy.sh        (env: JOBS=2 RUNTIME=5)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNTIME=${RUNTIME:-5}
bench_setup bio-busy cmake ninja python3
bench_build blkstack_cli

run() {
  "$BUILD/blkstack" bench --name="$1" --filename="$2" --rw=randread --bs=4k \
    --iodepth=32 --iodepth_batch=32 --time_based --runtime="$RUNTIME" \
    --output-format=json --output="$tmp/$1.json" >"$tmp/$1.log" 2>&1 ||
    bench_fail "blkstack bench failed ($2)" "$tmp/$1.log"
}
echo "bio-busy: null:1G plain and with bio_depth=32, ${RUNTIME}s each"
run plain null:1G
run busy null:1G,bio_depth=32

python3 - "$tmp" <<'PY'
import json, sys

tmp = sys.argv[1]
def ns(name):
    with open(f"{tmp}/{name}.json") as f:
        return 1e9 / json.load(f)["jobs"][0]["read"]["iops"]
plain, busy = ns("plain"), ns("busy")
print(f"{'case':<24} {'ns/IO':>8}")
print(f"{'null:1G':<24} {plain:>8.1f}")
print(f"{'null:1G,bio_depth=32':<24} {busy:>8.1f}")
print(f"RESULT plain_ns={plain:.0f} busy_ns={busy:.0f} added_ns={busy - plain:.0f}")
PY
