#!/usr/bin/env bash
# The I/O schedulers on the model device, each beside `none` in the same
# run, on two stacks with the same fio jobs:
#   blkstack   blkstack bench on the model device with sched=NAME
#   kernel     fio (io_uring, direct=1) on a loop device (--direct-io=on)
#              over the same model exported as a FUSE file by blkstack
#              serve with sched=none, the kernel's scheduler set on the
#              loop device. The loop device's driver tags are first cut to
#              the model's queue depth (nr_requests written while its
#              scheduler is none resizes the hardware tags), so requests
#              beyond it wait in the kernel's scheduler, as over a SATA
#              disk with that NCQ depth, not in blkstack's queue.
# Rows:
#   deadline   rotational model: a sequential writer (64 KiB, depth 32)
#              against a reader of one 4 KiB random read every 10 ms (fio
#              rate_iops=100, depth 1): read latency p50/p99/max (ms, total
#              latency), writer MB/s.
#   bfq        two sequential readers with weights 100 and 200 (ratio),
#              and an interactive reader against a write flood: run by
#              bench/sched-study-bfq.sh when bfq is registered and that
#              script is there (it defines bfq_rows), else n/a.
#   kyber      flash model: a random writer (64 KiB, depth 64) against a
#              reader (4 KiB random, depth 1): read p50/p99/max, writer MB/s.
#   cost       null device (queue_mode=mq), 4 KiB random reads at depth 32
#              on one thread: ns per I/O, and above none.
# Ends with:
#   RESULT deadline_read_p99_ms=N kernel_deadline_read_p99_ms=N
#   deadline_vs_kernel=R bfq_weight_ratio=R kyber_read_p99_ms=N
#   deadline_overhead_ns=N
#
# Usage: bench/sched-study.sh   (env: RUNTIME=10 SIZE=4G JOBS=2; root)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-4G}
bench_setup sched-study cmake ninja fio python3 losetup fusermount3
[ "$(id -u)" -eq 0 ] || bench_fail "needs root (a FUSE mount, loop devices)"

ROT="model:$SIZE,kind=rotational"
FLASH="model:$SIZE,kind=flash"
ROT_QUEUE=4 FLASH_QUEUE=32  # the models' default queue= (their NCQ depth)
SERVER_PID="" LOOP="" MNT=$tmp/mnt
teardown() {
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && sleep 1
  mountpoint -q "$MNT" 2>/dev/null && { fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT"; }
  [ -n "$SERVER_PID" ] && kill -KILL "$SERVER_PID" 2>/dev/null
  rm -rf "$tmp"
}
trap teardown EXIT

bench_build blkstack_cli
B=$BUILD/blkstack
registered() { "$B" disk "null:1M,queue_mode=mq,sched=$1" >/dev/null 2>&1; }
SCHEDS=(none mq-deadline kyber)
registered bfq && SCHEDS+=(bfq)

# The jobs, as fio arguments (blkstack bench takes the same).
deadline_jobs() {  # FILENAME
  echo "--name=writer --filename=$1 --rw=write --bs=64k --iodepth=32" \
    "--name=reader --filename=$1 --rw=randread --bs=4k --iodepth=1 --rate_iops=100"
}
kyber_jobs() {
  echo "--name=writer --filename=$1 --rw=randwrite --bs=64k --iodepth=64" \
    "--name=reader --filename=$1 --rw=randread --bs=4k --iodepth=1"
}

# ROW STACK SCHED: runs the row's jobs, JSON in $tmp/ROW-STACK-SCHED.json.
run_blkstack() {
  local row=$1 sched=$2 spec=$3
  # shellcheck disable=SC2046
  "$B" bench --output-format=json --output="$tmp/$row-blkstack-$sched.json" --eta=never \
    --time_based --runtime="$RUNTIME" --lat_percentiles=1 $("${row}_jobs" "$spec,sched=$sched") \
    >"$tmp/bench.log" 2>&1 || bench_fail "blkstack bench $row $sched failed" "$tmp/bench.log"
}

start_export() {  # SPEC QUEUE: the model over FUSE, a loop device with QUEUE driver tags
  local spec=$1 queue=$2 dev
  mkdir -p "$MNT"
  "$B" serve --fuse "$MNT" --pidfile "$tmp/serve.pid" --export "disk=$spec,sched=none" \
    >"$tmp/serve.log" 2>&1 &
  bench_wait "blkstack serve" "$tmp/serve.log" test -s "$tmp/serve.pid"
  SERVER_PID=$(cat "$tmp/serve.pid")
  bench_wait "the FUSE file" "$tmp/serve.log" test -f "$MNT/disk"
  LOOP=$(losetup -f --show --direct-io=on "$MNT/disk" 2>"$tmp/losetup.log") ||
    bench_fail "no loop device over the FUSE file" "$tmp/losetup.log"
  dev=$(basename "$LOOP")
  echo none >"/sys/block/$dev/queue/scheduler"
  echo "$queue" >"/sys/block/$dev/queue/nr_requests" ||
    bench_fail "cannot cut $dev's tags to $queue"
}
stop_export() {
  losetup -d "$LOOP"
  LOOP=""
  bench_stop "$SERVER_PID"
  SERVER_PID=""
  fusermount3 -u -z "$MNT" 2>/dev/null || true
}
run_kernel() {
  local row=$1 sched=$2
  echo "$sched" >"/sys/block/$(basename "$LOOP")/queue/scheduler"
  # shellcheck disable=SC2046
  fio --ioengine=io_uring --direct=1 --time_based --runtime="$RUNTIME" --lat_percentiles=1 \
    --output-format=json $("${row}_jobs" "$LOOP") >"$tmp/$row-kernel-$sched.json" 2>&1 ||
    bench_fail "fio $row $sched on $LOOP failed" "$tmp/$row-kernel-$sched.json"
}

echo "sched-study: ${SCHEDS[*]}; ${RUNTIME}s per job, model size $SIZE"
for s in none mq-deadline; do run_blkstack deadline "$s" "$ROT"; done
for s in none kyber; do run_blkstack kyber "$s" "$FLASH"; done

start_export "$ROT" "$ROT_QUEUE"
for s in none mq-deadline; do run_kernel deadline "$s"; done
stop_export
start_export "$FLASH" "$FLASH_QUEUE"
for s in none kyber; do run_kernel kyber "$s"; done
stop_export

for s in "${SCHEDS[@]}"; do
  "$B" bench --output-format=json --output="$tmp/cost-$s.json" --eta=never --name=cost \
    --filename="null:1G,queue_mode=mq,sched=$s" --rw=randread --bs=4k --iodepth=32 \
    --time_based --runtime="$RUNTIME" >"$tmp/bench.log" 2>&1 ||
    bench_fail "cost of $s failed" "$tmp/bench.log"
done

BFQ_RATIO=n/a
if [[ " ${SCHEDS[*]} " == *" bfq "* ]] && [ -f bench/sched-study-bfq.sh ]; then
  # shellcheck source=/dev/null
  source bench/sched-study-bfq.sh
  bfq_rows >"$tmp/bfq.rows"  # table rows; sets BFQ_RATIO
fi
touch "$tmp/bfq.rows"

python3 - "$tmp" "$BFQ_RATIO" "${SCHEDS[@]}" <<'PY'
import json, sys

tmp, bfq_ratio, scheds = sys.argv[1], sys.argv[2], sys.argv[3:]

def job(path, name):
    for j in json.load(open(path))["jobs"]:
        if j["jobname"] == name:
            return j
    raise SystemExit(f"sched-study: no job {name} in {path}")

def row(r, stack, sched):
    path = f"{tmp}/{r}-{stack}-{sched}.json"
    rd, wr = job(path, "reader")["read"], job(path, "writer")["write"]
    lat = rd["lat_ns"]
    pct = lat.get("percentile") or rd["clat_ns"].get("percentile", {})
    ms = lambda ns: ns / 1e6
    return (ms(pct.get("50.000000", 0)), ms(pct.get("99.000000", 0)), ms(lat["max"]),
            wr["bw"] * 1024 / 1e6)

print("| row | stack | scheduler | read p50 ms | read p99 ms | read max ms | writer MB/s |")
print("|---|---|---|---:|---:|---:|---:|")
res = {}
for r, scheds_of_row in (("deadline", ("none", "mq-deadline")), ("kyber", ("none", "kyber"))):
    for stack in ("blkstack", "kernel"):
        for s in scheds_of_row:
            p50, p99, mx, bw = res[(r, stack, s)] = row(r, stack, s)
            print(f"| {r} | {stack} | {s} | {p50:.1f} | {p99:.1f} | {mx:.1f} | {bw:.1f} |")
print(open(f"{tmp}/bfq.rows").read().rstrip() or
      "| bfq | blkstack | bfq | n/a | n/a | n/a | n/a |")
print()
print("| cost (null, depth 32, one thread) | ns per I/O | above none |")
print("|---|---:|---:|")
cost = {}
for s in scheds:
    iops = job(f"{tmp}/cost-{s}.json", "cost")["read"]["iops"]
    cost[s] = 1e9 / iops if iops else 0
for s in scheds:
    print(f"| {s} | {cost[s]:.0f} | {cost[s] - cost['none']:.0f} |")

ours = res[("deadline", "blkstack", "mq-deadline")][1]
kern = res[("deadline", "kernel", "mq-deadline")][1]
print()
print(f"RESULT deadline_read_p99_ms={ours:.1f} kernel_deadline_read_p99_ms={kern:.1f} "
      f"deadline_vs_kernel={ours / kern if kern else 0:.2f} bfq_weight_ratio={bfq_ratio} "
      f"kyber_read_p99_ms={res[('kyber', 'blkstack', 'kyber')][1]:.1f} "
      f"deadline_overhead_ns={cost['mq-deadline'] - cost['none']:.0f}")
PY
