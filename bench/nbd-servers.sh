#!/usr/bin/env bash
# blkstack serve against the NBD servers people use, the same fio jobs
# (fio's nbd engine, libnbd) on each, each server on a unix socket with a
# 1 GiB export:
#   blkstack        blkstack serve --export disk=ram:1G
#   nbdkit          nbdkit memory 1G, its default threads (16)
#   nbdkit-t1       nbdkit --threads=1 memory 1G (faster on 2 cores)
#   qsd             qemu-storage-daemon, null-co with read-zeroes=off (no
#                   copy at all: an upper bound for qemu's NBD server)
#   nbd-server      nbd-server on a 1 GiB file in /dev/shm
# First the cold rows, on fresh exports, once per server: 4 KiB random
# writes at depth 32 over 512 MiB of a fresh export, then (on another fresh
# export) the prefill, 1 MiB sequential writes at depth 8 over the whole
# export, which is the cold sequential row. Then the warm jobs run time
# based (RUNTIME s), RUNS times, alternating the servers within each run;
# medians. Server CPU per I/O: utime+stime (+ reaped
# children, for nbd-server's per-connection processes) from /proc/PID/stat
# before and after each job, over the I/Os fio did.
#
# Jobs: 4k randread QD1 and QD32 (the headline), 4k randwrite QD32, 1M
# sequential read and write QD8.
#
# Prints a table (IOPS, or GB/s for the 1M rows; the ratio to the better
# nbdkit on the row; server CPU µs per I/O) and ends with one line:
#   RESULT blkstack_iops=N nbdkit_iops=N qsd_iops=N vs_nbdkit=R cpu_vs_nbdkit=R
# for 4k randread QD32, nbdkit being the better of its two configurations
# and cpu_vs_nbdkit our CPU per I/O over that configuration's. If blkstack
# cannot be built or has no serve command it is reported as missing and
# the other servers are still measured.
#
# Usage: bench/nbd-servers.sh        (env: JOBS=2 RUNS=3 RUNTIME=5)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
bench_setup nbd-servers cmake ninja fio python3 nbdkit qemu-storage-daemon nbd-server

SHM_IMG=/dev/shm/blkstack-nbd-servers.img
declare -A PIDS=() URIS=()
stop_servers() {
  bench_stop "${PIDS[@]}"
  rm -rf "$tmp" "$SHM_IMG"
}
trap stop_servers EXIT

# stop NAME: stops server NAME and waits for it, so that a fresh one can
# take its place.
stop() {
  bench_stop "${PIDS[$1]}"
  unset "PIDS[$1]"
  rm -f "$tmp/$1.sock" "$tmp/$1.pid"
}

# blkstack: built here (Release); missing if that fails or has no serve.
BLKSTACK=missing
echo "nbd-servers: building $BUILD (Release): blkstack_cli"
if (bench_build blkstack_cli) >"$tmp/blkstack-build.out" 2>&1 &&
   "$BUILD/blkstack" serve --help >/dev/null 2>&1; then
  BLKSTACK=$BUILD/blkstack
else
  tail -n 5 "$tmp/blkstack-build.out" >&2
  echo "nbd-servers: blkstack serve is not available (build failed or no serve command):" \
       "blkstack is reported as missing" >&2
fi

# start NAME: starts server NAME on $tmp/NAME.sock; sets PIDS and URIS.
start() {
  local name=$1 sock=$tmp/$1.sock pid=$tmp/$1.pid log=$tmp/$1.log
  case $name in
    blkstack)
      "$BLKSTACK" serve --socket "$sock" --pidfile "$pid" --export disk=ram:1G >"$log" 2>&1 &
      URIS[$name]="nbd+unix:///disk?socket=$sock" ;;
    nbdkit)
      nbdkit -U "$sock" --pidfile "$pid" memory 1G >"$log" 2>&1 ||
        bench_fail "nbdkit did not start" "$log"
      URIS[$name]="nbd+unix:///?socket=$sock" ;;
    nbdkit-t1)
      nbdkit -U "$sock" --pidfile "$pid" --threads=1 memory 1G >"$log" 2>&1 ||
        bench_fail "nbdkit --threads=1 did not start" "$log"
      URIS[$name]="nbd+unix:///?socket=$sock" ;;
    qsd)
      qemu-storage-daemon \
        --blockdev driver=null-co,node-name=null0,size=1073741824,read-zeroes=off \
        --nbd-server addr.type=unix,addr.path="$sock" \
        --export type=nbd,id=e0,node-name=null0,writable=on \
        --pidfile "$pid" --daemonize >"$log" 2>&1 || bench_fail "qemu-storage-daemon did not start" "$log"
      URIS[$name]="nbd+unix:///null0?socket=$sock" ;;
    nbd-server)
      rm -f "$SHM_IMG"
      truncate -s 1G "$SHM_IMG"
      printf '[generic]\nunixsock = %s\n[mem]\nexportname = %s\n' "$sock" "$SHM_IMG" >"$tmp/nbd-server.conf"
      nbd-server -C "$tmp/nbd-server.conf" -p "$pid" >"$log" 2>&1 ||
        bench_fail "nbd-server did not start" "$log"
      URIS[$name]="nbd+unix:///mem?socket=$sock" ;;
  esac
  bench_wait "$name" "$log" test -s "$pid"
  PIDS[$name]=$(cat "$pid")
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
}

SERVERS=(nbdkit nbdkit-t1 qsd nbd-server)
[ "$BLKSTACK" != missing ] && SERVERS=(blkstack "${SERVERS[@]}")
# name|fio options
CASES=(
  "rr-qd1|--rw=randread --bs=4k --iodepth=1"
  "rr-qd32|--rw=randread --bs=4k --iodepth=32"
  "rw-qd32|--rw=randwrite --bs=4k --iodepth=32"
  "seqr-1m-qd8|--rw=read --bs=1M --iodepth=8"
  "seqw-1m-qd8|--rw=write --bs=1M --iodepth=8"
)

for s in "${SERVERS[@]}"; do
  start "$s"
  fio --name=cold-rand --ioengine=nbd --uri="${URIS[$s]}" --rw=randwrite --bs=4k \
    --iodepth=32 --size=512M --output-format=json >"$tmp/$s-coldrand.json" 2>&1 ||
    bench_fail "cold random writes on $s failed" "$tmp/$s-coldrand.json"
  stop "$s"
  start "$s"
  fio --name=prefill --ioengine=nbd --uri="${URIS[$s]}" --rw=write --bs=1M --iodepth=8 \
    --output-format=json >"$tmp/$s-coldseq.json" 2>&1 ||
    bench_fail "prefill of $s failed" "$tmp/$s-coldseq.json"
done

echo "nbd-servers: ${#CASES[@]} jobs x ${#SERVERS[@]} servers, $RUNS runs of ${RUNTIME}s;" \
     "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
for i in $(seq 1 "$RUNS"); do
  for c in "${CASES[@]}"; do
    IFS='|' read -r name opts <<<"$c"
    for s in "${SERVERS[@]}"; do
      # (0.2 s: nbd-server's connection process is reaped by then.)
      # shellcheck disable=SC2086
      measure_job "$name on $s" "$tmp/$s-$name-$i" "${PIDS[$s]}" 0.2 \
        --name="$name" --ioengine=nbd --uri="${URIS[$s]}" $opts
    done
  done
done

python3 - "$tmp" "$RUNS" "$BLKSTACK" "${#CASES[@]}" "${CASES[@]}" "${SERVERS[@]}" <<'PY'
import json, statistics, sys

tmp, runs, blkstack, ncases = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
cases = [c.split("|", 1)[0] for c in sys.argv[5:5 + ncases]]
servers = sys.argv[5 + ncases:]
med = statistics.median
ALL = ["blkstack", "nbdkit", "nbdkit-t1", "qsd", "nbd-server"]

def load(s, name, i):
    with open(f"{tmp}/{s}-{name}-{i}.json") as f:
        text = f.read()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    d = job["read"] if job["read"]["total_ios"] > 0 else job["write"]
    with open(f"{tmp}/{s}-{name}-{i}.cpu") as f:
        ticks, hz = (int(x) for x in f.read().split())
    return d["iops"], d["bw_bytes"], ticks / hz * 1e6 / max(1, d["total_ios"])

res = {}
for name in cases:
    for s in servers:
        fs = [load(s, name, i) for i in range(1, runs + 1)]
        res[name, s] = {"iops": med(f[0] for f in fs), "bw": med(f[1] for f in fs),
                        "cpu": med(f[2] for f in fs),
                        "min": min(f[0] for f in fs), "max": max(f[0] for f in fs)}

def load_cold(s, key):
    with open(f"{tmp}/{s}-{key}.json") as f:
        text = f.read()
    return json.loads(text[text.index("{"):])["jobs"][0]["write"]

print()
print("Cold: fresh exports, one of each per server (not medians): sequential 1 MiB writes at")
print("depth 8 over the whole export (the prefill), random 4 KiB writes at depth 32 over 512 MiB.")
print(f"{'job':<14} {'server':<11} {'IOPS':>9} {'MiB/s':>7} {'vs nbdkit':>9}")
for key, job in (("coldseq", "cold seqw 1M"), ("coldrand", "cold randw 4k")):
    cold = {s: load_cold(s, key) for s in servers}
    ref = max(cold[s]["iops"] for s in ("nbdkit", "nbdkit-t1") if s in cold)
    for s in ALL:
        if s not in servers:
            print(f"{job:<14} {s:<11} {'missing':>9}")
            continue
        w = cold[s]
        print(f"{job:<14} {s:<11} {w['iops']:>9,.0f} {w['bw_bytes'] / 2**20:>7,.0f}"
              f" {w['iops'] / ref:>9.2f}")
    print()

def best_nbdkit(name):
    return max(("nbdkit", "nbdkit-t1"), key=lambda s: res[name, s]["iops"])

print()
print(f"{'job':<12} {'server':<11} {'IOPS':>9} {'GB/s':>6} {'min..max IOPS':>17}"
      f" {'vs nbdkit':>9} {'CPU us/IO':>9}")
for name in cases:
    ref = res[name, best_nbdkit(name)]["iops"]
    for s in ALL:
        if s not in servers:
            print(f"{name:<12} {s:<11} {'missing':>9}")
            continue
        r = res[name, s]
        big = name.startswith("seq")
        rate = f"{r['bw'] / 1e9:>6.2f}" if big else f"{'':>6}"
        print(f"{name:<12} {s:<11} {r['iops']:>9,.0f} {rate}"
              f" {r['min']:>8,.0f}..{r['max']:<8,.0f} {r['iops'] / ref:>9.2f} {r['cpu']:>9.1f}")
    print()
print(f"Medians of {runs} runs. vs nbdkit: IOPS over the better nbdkit configuration on the row.")
print("CPU us/IO: the server's user+system CPU during the job over the I/Os fio did. Client and")
print("server share the machine's cores. qsd: null-co, read-zeroes=off (nothing is stored).")
print()
h = "rr-qd32"
nk = best_nbdkit(h)
nbdkit_iops, nbdkit_cpu = res[h, nk]["iops"], res[h, nk]["cpu"]
qsd = res[h, "qsd"]["iops"]
if "blkstack" in servers:
    b = res[h, "blkstack"]
    print(f"RESULT blkstack_iops={b['iops']:.0f} nbdkit_iops={nbdkit_iops:.0f} qsd_iops={qsd:.0f}"
          f" vs_nbdkit={b['iops'] / nbdkit_iops:.2f} cpu_vs_nbdkit={b['cpu'] / nbdkit_cpu:.2f}")
else:
    print(f"RESULT blkstack_iops=missing nbdkit_iops={nbdkit_iops:.0f} qsd_iops={qsd:.0f}"
          f" vs_nbdkit=missing cpu_vs_nbdkit=missing")
PY
