#!/usr/bin/env bash
# The page cache against the kernel's, and the file driver at depth 1
# against the loop device, in one run (docs/page-cache.md):
#   cached read   4 KiB random reads at depth 1 over a working set that fits
#                 the cache (read once first): blkstack bench --direct=0 on
#                 ram:WSET, beside fio --ioengine=psync --direct=0 on a tmpfs
#                 file of the same size (tmpfs data is the kernel page cache)
#   seq write     1 MiB sequential buffered writes: blkstack bench --direct=0
#                 on ram:SIZE, beside fio psync buffered on a tmpfs file
#   qd1           4 KiB random reads at depth 1, direct: blkstack bench on
#                 file:IMG (a tmpfs file), beside fio io_uring on a kernel loop
#                 device over the same file
# RUNS runs per row (sides alternating), medians. Ends with
#   RESULT cached_read_iops=N kernel_cached_read_iops=N cache_vs_kernel=R
#          seq_write_mbs=N fio_seq_write_mbs=N qd1_iops=N loop_qd1_iops=N qd1_vs_loop=R
#
# Usage: bench/page-cache.sh   (env: RUNS=3 RUNTIME=3 WSET=32M SIZE=256M JOBS=2;
#        BUILD_DIR=DIR uses an existing build of blkstack instead of building one)
# Needs root for the loop device; without one the loop figure is 0.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-3}
WSET=${WSET:-32M}
SIZE=${SIZE:-256M}
bench_setup page-cache fio python3 losetup
if [ -n "${BUILD_DIR:-}" ]; then
  BUILD=$BUILD_DIR
else
  bench_build blkstack_cli
fi

SHM=/dev/shm/blkstack-page-cache
LOOP=""
cleanup() {
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  rm -f "$SHM".*
  rm -rf "$tmp"
}
trap cleanup EXIT

head -c "$WSET" /dev/urandom >"$SHM.read"
head -c "$SIZE" /dev/urandom >"$SHM.qd1"
if ! LOOP=$(losetup -f --show --direct-io=on "$SHM.qd1" 2>"$tmp/losetup.log"); then
  echo "page-cache: no loop device ($(cat "$tmp/losetup.log")); its figure is 0"
  LOOP=""
fi

run() {  # ROW SIDE RUN
  local row=$1 side=$2 i=$3 out="$tmp/$1-$2-$3.json"
  local tb="--time_based --runtime=$RUNTIME --output-format=json"
  case $row-$side in
    read-blkstack)
      # The first job fills the cache; the second (measured) reads from it.
      "$BUILD/blkstack" bench --filename="ram:$WSET" --direct=0 --output-format=json \
        --name=fill --rw=read --bs=1M \
        --name=measured --stonewall --rw=randread --bs=4k --iodepth=1 \
        --time_based --runtime="$RUNTIME" >"$out" 2>&1 ;;
    read-kernel)
      fio --name=measured --filename="$SHM.read" --ioengine=psync --direct=0 \
        --rw=randread --bs=4k $tb >"$out" 2>&1 ;;
    write-blkstack)
      "$BUILD/blkstack" bench --name=measured --filename="ram:$SIZE" --direct=0 \
        --rw=write --bs=1M $tb >"$out" 2>&1 ;;
    write-kernel)
      rm -f "$SHM.write"
      fio --name=measured --filename="$SHM.write" --size="$SIZE" --ioengine=psync \
        --direct=0 --rw=write --bs=1M $tb >"$out" 2>&1 ;;
    qd1-blkstack)
      "$BUILD/blkstack" bench --name=measured --filename="file:$SHM.qd1" --direct=1 \
        --rw=randread --bs=4k --iodepth=1 $tb >"$out" 2>&1 ;;
    qd1-kernel)
      [ -n "$LOOP" ] || return 0
      fio --name=measured --filename="$LOOP" --ioengine=io_uring --direct=1 \
        --rw=randread --bs=4k --iodepth=1 $tb >"$out" 2>&1 ;;
  esac || bench_fail "$row $side failed" "$out"
}

echo "page-cache: 3 rows x 2 sides, $RUNS runs of ${RUNTIME}s each"
for i in $(seq 1 "$RUNS"); do
  for row in read write qd1; do
    for side in blkstack kernel; do run "$row" "$side" "$i"; done
  done
done

python3 - "$tmp" "$RUNS" <<'PY'
import json, os, statistics, sys

tmp, runs = sys.argv[1], int(sys.argv[2])

def figure(row, side):
    """Median IOPS (MB/s for the write row) of the job named 'measured'."""
    vals = []
    for i in range(1, runs + 1):
        path = f"{tmp}/{row}-{side}-{i}.json"
        if not os.path.exists(path):
            return 0.0
        text = open(path).read()
        if "{" not in text:
            return 0.0
        jobs = json.loads(text[text.index("{"):])["jobs"]
        job = next(j for j in jobs if j.get("jobname", j.get("name")) == "measured")
        d = job["write"] if row == "write" else job["read"]
        vals.append(d["bw_bytes"] / 1e6 if row == "write" else d["iops"])
    return statistics.median(vals)

rows = {r: (figure(r, "blkstack"), figure(r, "kernel")) for r in ("read", "write", "qd1")}
ratio = lambda a, b: a / b if b else 0.0
print()
print("| row | blkstack | kernel | ratio |")
print("|---|---|---|---|")
names = {"read": "cached 4k randread (IOPS) vs fio psync buffered, tmpfs",
         "write": "seq 1M buffered write (MB/s) vs fio psync buffered, tmpfs",
         "qd1": "file driver 4k randread qd1 (IOPS) vs fio on loop"}
for r, (b, k) in rows.items():
    print(f"| {names[r]} | {b:,.0f} | {k:,.0f} | {ratio(b, k):.2f} |")
print()
(rb, rk), (wb, wk), (qb, qk) = rows["read"], rows["write"], rows["qd1"]
print(f"RESULT cached_read_iops={rb:.0f} kernel_cached_read_iops={rk:.0f}"
      f" cache_vs_kernel={ratio(rb, rk):.2f} seq_write_mbs={wb:.0f}"
      f" fio_seq_write_mbs={wk:.0f} qd1_iops={qb:.0f} loop_qd1_iops={qk:.0f}"
      f" qd1_vs_loop={ratio(qb, qk):.2f}")
PY
