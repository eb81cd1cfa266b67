#!/usr/bin/env bash
# blkstack's FUSE export against the other ways to see a block device as a
# file through FUSE, with the same fio jobs (io_uring, direct=1) on the FUSE
# file itself and on a loop device over it (losetup --direct-io=on, the way
# a file system reaches the disk, see docs/export-fuse.md):
#   blkstack   blkstack serve --fuse DIR --export disk=ram:1G
#   nbdfuse    nbdfuse over nbdkit --threads=1 memory 1G (unix socket)
#   qsd        qemu-storage-daemon's FUSE export of a 1 GiB /dev/shm file
#              (aio=io_uring, cache.direct=off)
# First the cold rows, on each server's fresh file, once: 1 MiB sequential
# writes at depth 8 over its first half, then 4 KiB random writes at depth
# 32 over its second half (neither touched before). The file is then
# prefilled (1 MiB writes, depth 8); the warm jobs run time based (RUNTIME
# s), RUNS times, alternating the servers within each run; medians. Server CPU per I/O: utime+stime of the server processes
# (nbdfuse and nbdkit together) from /proc/PID/stat around each job.
#
# Jobs: 4 KiB random read and write at depth 32, 1 MiB sequential read and
# write at depth 8, on the FUSE file and on the loop device.
#
# Ends with one line for 4 KiB random read, depth 32, on the FUSE file:
#   RESULT blkstack_iops=N qsd_iops=N nbdfuse_iops=N vs_qsd=R
#
# Usage: bench/fuse-servers.sh      (env: JOBS=2 RUNS=3 RUNTIME=3; root)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-3}
bench_setup fuse-servers cmake ninja fio python3 nbdkit nbdfuse qemu-storage-daemon losetup \
  fusermount3
[ "$(id -u)" -eq 0 ] || bench_fail "needs root (FUSE mounts for others, loop devices)"

SHM_IMG=/dev/shm/blkstack-fuse-servers.img
declare -A PIDS=() FILES=() LOOPS=() MOUNTS=() CPU_PIDS=()
teardown() {
  local s
  for s in "${!LOOPS[@]}"; do losetup -d "${LOOPS[$s]}" 2>/dev/null || true; done
  for s in "${!PIDS[@]}"; do kill -TERM "${PIDS[$s]}" 2>/dev/null || true; done
  sleep 1
  for s in "${!MOUNTS[@]}"; do
    mountpoint -q "${MOUNTS[$s]}" && { fusermount3 -u -z "${MOUNTS[$s]}" 2>/dev/null || umount -l "${MOUNTS[$s]}" 2>/dev/null || true; }
  done
  for s in "${!PIDS[@]}"; do kill -KILL "${PIDS[$s]}" 2>/dev/null || true; done
  rm -rf "$tmp" "$SHM_IMG"
}
trap teardown EXIT

bench_build blkstack_cli

start() {
  local name=$1 log=$tmp/$1.log
  case $name in
    blkstack)
      mkdir -p "$tmp/bmnt"
      "$BUILD/blkstack" serve --fuse "$tmp/bmnt" --pidfile "$tmp/blkstack.pid" \
        --export disk=ram:1G >"$log" 2>&1 &
      bench_wait "blkstack serve" "$log" test -s "$tmp/blkstack.pid"
      PIDS[$name]=$(cat "$tmp/blkstack.pid")
      CPU_PIDS[$name]=${PIDS[$name]}
      MOUNTS[$name]=$tmp/bmnt
      FILES[$name]=$tmp/bmnt/disk ;;
    nbdfuse)
      mkdir -p "$tmp/nmnt"
      nbdkit -U "$tmp/nbdkit.sock" --pidfile "$tmp/nbdkit.pid" --threads=1 memory 1G >"$log" 2>&1 ||
        bench_fail "nbdkit did not start" "$log"
      bench_wait "nbdkit" "$log" test -s "$tmp/nbdkit.pid"
      nbdfuse "$tmp/nmnt/disk" --unix "$tmp/nbdkit.sock" >>"$log" 2>&1 &
      PIDS[$name]=$!
      PIDS[nbdkit]=$(cat "$tmp/nbdkit.pid")
      bench_wait "nbdfuse" "$log" test -f "$tmp/nmnt/disk"
      CPU_PIDS[$name]="${PIDS[$name]} ${PIDS[nbdkit]}"
      MOUNTS[$name]=$tmp/nmnt
      FILES[$name]=$tmp/nmnt/disk ;;
    qsd)
      truncate -s 1G "$SHM_IMG"
      touch "$tmp/qsd-disk"
      qemu-storage-daemon \
        --blockdev driver=file,node-name=f0,filename="$SHM_IMG",aio=io_uring,cache.direct=off \
        --export type=fuse,id=e0,node-name=f0,mountpoint="$tmp/qsd-disk",writable=on \
        --pidfile "$tmp/qsd.pid" --daemonize >"$log" 2>&1 ||
        bench_fail "qemu-storage-daemon did not start" "$log"
      PIDS[$name]=$(cat "$tmp/qsd.pid")
      CPU_PIDS[$name]=${PIDS[$name]}
      MOUNTS[$name]=$tmp/qsd-disk
      FILES[$name]=$tmp/qsd-disk ;;
  esac
  LOOPS[$name]=$(losetup -f --show --direct-io=on "${FILES[$name]}" 2>"$tmp/losetup.log") ||
    bench_fail "no loop device over $name's file" "$tmp/losetup.log"
}

SERVERS=(blkstack nbdfuse qsd)
TARGETS=(file loop)
CASES=(
  "rr-qd32|--rw=randread --bs=4k --iodepth=32"
  "rw-qd32|--rw=randwrite --bs=4k --iodepth=32"
  "seqr-1m|--rw=read --bs=1M --iodepth=8"
  "seqw-1m|--rw=write --bs=1M --iodepth=8"
)

for s in "${SERVERS[@]}"; do
  start "$s"
  fio --name=cold-seq --ioengine=io_uring --direct=1 --filename="${FILES[$s]}" --rw=write \
    --bs=1M --iodepth=8 --size=512M --output-format=json >"$tmp/$s-coldseq.json" 2>&1 ||
    bench_fail "cold sequential writes on $s failed" "$tmp/$s-coldseq.json"
  fio --name=cold-rand --ioengine=io_uring --direct=1 --filename="${FILES[$s]}" \
    --rw=randwrite --bs=4k --iodepth=32 --offset=512M --size=512M \
    --output-format=json >"$tmp/$s-coldrand.json" 2>&1 ||
    bench_fail "cold random writes on $s failed" "$tmp/$s-coldrand.json"
  fio --name=prefill --ioengine=io_uring --direct=1 --filename="${FILES[$s]}" --rw=write \
    --bs=1M --iodepth=8 --output-format=json >"$tmp/prefill-$s.json" 2>&1 ||
    bench_fail "prefill of $s failed" "$tmp/prefill-$s.json"
done

echo "fuse-servers: ${#CASES[@]} jobs x ${#TARGETS[@]} targets x ${#SERVERS[@]} servers," \
  "$RUNS runs of ${RUNTIME}s"
for i in $(seq 1 "$RUNS"); do
  for t in "${TARGETS[@]}"; do
    for c in "${CASES[@]}"; do
      IFS='|' read -r name opts <<<"$c"
      for s in "${SERVERS[@]}"; do
        dev=${FILES[$s]}
        [ "$t" = loop ] && dev=${LOOPS[$s]}
        # shellcheck disable=SC2086
        measure_job "$name on $s ($t)" "$tmp/$s-$t-$name-$i" "${CPU_PIDS[$s]}" 0 \
          --name="$name" --ioengine=io_uring --direct=1 --filename="$dev" $opts
      done
    done
  done
done

python3 - "$tmp" "$RUNS" "${CASES[@]}" <<'PY'
import json, statistics, sys

tmp, runs, cases = sys.argv[1], int(sys.argv[2]), [c.split("|", 1)[0] for c in sys.argv[3:]]
servers, targets = ("blkstack", "nbdfuse", "qsd"), ("file", "loop")
med = statistics.median

def load(s, t, name, i):
    base = f"{tmp}/{s}-{t}-{name}-{i}"
    text = open(base + ".json").read()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    d = job["read"] if job["read"]["total_ios"] > 0 else job["write"]
    ticks, hz = (int(x) for x in open(base + ".cpu").read().split())
    return d["iops"], d["bw_bytes"], ticks / hz * 1e6 / max(1, d["total_ios"])

def load_cold(s, key):
    text = open(f"{tmp}/{s}-{key}.json").read()
    return json.loads(text[text.index("{"):])["jobs"][0]["write"]

print()
print("Cold: each server's fresh file, once (not medians): 1 MiB sequential writes at depth 8")
print("over its first half, 4 KiB random writes at depth 32 over its second half.")
print(f"{'job':<14} {'server':<9} {'IOPS':>9} {'MiB/s':>7} {'vs qsd':>7}")
for key, job in (("coldseq", "cold seqw 1M"), ("coldrand", "cold randw 4k")):
    cold = {s: load_cold(s, key) for s in servers}
    for s in servers:
        w = cold[s]
        print(f"{job:<14} {s:<9} {w['iops']:>9,.0f} {w['bw_bytes'] / 2**20:>7,.0f}"
              f" {w['iops'] / cold['qsd']['iops']:>7.2f}")
    print()

res = {}
for t in targets:
    for name in cases:
        for s in servers:
            fs = [load(s, t, name, i) for i in range(1, runs + 1)]
            res[t, name, s] = (med(f[0] for f in fs), med(f[1] for f in fs), med(f[2] for f in fs))

def show(t, name, s):
    iops, bw, _ = res[t, name, s]
    return f"{bw / 1e9:.2f} GB/s" if name.startswith("seq") else f"{iops / 1000:.1f}k"

print()
print("| on | job | blkstack | nbdfuse+nbdkit | qsd FUSE | vs qsd | vs nbdfuse | server CPU µs/IO (blkstack / nbdfuse / qsd) |")
print("|---|---|---|---|---|---|---|---|")
for t in targets:
    for name in cases:
        b, n, q = (res[t, name, s] for s in servers)
        print(f"| {t} | {name} | {show(t, name, 'blkstack')} | {show(t, name, 'nbdfuse')} |"
              f" {show(t, name, 'qsd')} | {b[0] / q[0]:.2f} | {b[0] / n[0]:.2f} |"
              f" {b[2]:.1f} / {n[2]:.1f} / {q[2]:.1f} |")
print()
print(f"Medians of {runs} runs; fio io_uring direct=1, one job. file: fio on the FUSE file;")
print("loop: on a loop device (direct I/O) over it. Client, kernel and servers share 2 cores.")
print()
b, q, n = (res["file", "rr-qd32", s][0] for s in ("blkstack", "qsd", "nbdfuse"))
print(f"RESULT blkstack_iops={b:.0f} qsd_iops={q:.0f} nbdfuse_iops={n:.0f} vs_qsd={b / q:.2f}")
PY
