#!/usr/bin/env bash
# Cold RAM disks: what a fresh device does with its first writes, beside
# nbdkit's memory plugin (over NBD) and a fresh tmpfs file (in process).
# Every other benchmark prefills its device first, so it measures a warm
# one; a user's first contact (mkfs, the first copy, the demo) is a cold one.
#
# Rows, each on a fresh device, ROUNDS times, alternating the sides:
#   NBD (fio's nbd engine, unix socket; blkstack serve --export disk=ram:1G
#   against nbdkit --threads=1 memory 1G):
#     cold seq    1 MiB writes, depth 8, the whole 1 GiB export
#     warm seq    the same again on the same export (its second pass)
#     cold rand   4 KiB random writes, depth 32, over 512 MiB of another
#                 fresh export
#   In process (blkstack bench on ram:1G against fio's psync engine on a
#   fresh 1 GiB file in /dev/shm, the kernel's own first write to tmpfs):
#     cold seq    1 MiB writes, depth 8 (fio: one at a time, psync)
# Before each fresh device the machine idles SETTLE seconds, so that memory
# freed by the side before is not handed to the next one warm (a VM may
# have returned it to its host by then, as after any pause; see
# docs/bench.md, "Cold devices").
#
# Prints a table of medians (MiB/s, or IOPS for the random rows) and ends
# with one line:
#   RESULT cold_seq_mibs=N nbdkit_cold_seq_mibs=N cold_vs_nbdkit=R
#          inproc_cold_mibs=N tmpfs_cold_mibs=N inproc_vs_tmpfs=R
#
# Usage: bench/cold-ram.sh          (env: ROUNDS=3 SETTLE=4 JOBS=2)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
ROUNDS=${ROUNDS:-3}
SETTLE=${SETTLE:-4}
bench_setup cold-ram cmake ninja fio python3 nbdkit
bench_build blkstack_cli
SHM_FILE=/dev/shm/blkstack-cold-ram.img
PID=
stop_server() {
  [ -n "$PID" ] || return 0
  bench_stop "$PID"
  PID=
}
trap 'stop_server; rm -rf "$tmp" "$SHM_FILE"' EXIT

# serve SIDE: a fresh 1 GiB export from SIDE on $tmp/SIDE.sock; sets PID, URI.
serve() {
  local side=$1 sock=$tmp/$1.sock pidf=$tmp/$1.pid log=$tmp/$1.log
  rm -f "$sock" "$pidf"
  sleep "$SETTLE"
  case $side in
    blkstack)
      "$BUILD/blkstack" serve --socket "$sock" --pidfile "$pidf" --export disk=ram:1G \
        >"$log" 2>&1 &
      URI="nbd+unix:///disk?socket=$sock" ;;
    nbdkit)
      nbdkit -U "$sock" --pidfile "$pidf" --threads=1 memory 1G >"$log" 2>&1 ||
        bench_fail "nbdkit did not start" "$log"
      URI="nbd+unix:///?socket=$sock" ;;
  esac
  bench_wait "$side" "$log" test -s "$pidf"
  PID=$(cat "$pidf")
  bench_wait "$side socket" "$log" test -S "$sock"
}

# nbd_job OUT FIO_ARG...: one fio job on $URI, JSON in OUT.
nbd_job() {
  local out=$1
  shift
  fio --name=cold --ioengine=nbd --uri="$URI" "$@" --output-format=json >"$out" 2>&1 ||
    bench_fail "fio $* failed" "$out"
}

echo "cold-ram: $ROUNDS rounds, ${SETTLE}s idle before each fresh device;" \
  "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
for r in $(seq 1 "$ROUNDS"); do
  for side in blkstack nbdkit; do
    serve "$side"
    nbd_job "$tmp/$side-coldseq-$r.json" --rw=write --bs=1M --iodepth=8
    nbd_job "$tmp/$side-warmseq-$r.json" --rw=write --bs=1M --iodepth=8
    stop_server
    serve "$side"
    nbd_job "$tmp/$side-coldrand-$r.json" --rw=randwrite --bs=4k --iodepth=32 --size=512M
    stop_server
  done
  sleep "$SETTLE"
  "$BUILD/blkstack" bench --name=cold --filename=ram:1G --rw=write --bs=1M --iodepth=8 \
    --output-format=json >"$tmp/inproc-$r.json" 2>&1 ||
    bench_fail "blkstack bench failed" "$tmp/inproc-$r.json"
  rm -f "$SHM_FILE"
  sleep "$SETTLE"
  # --fallocate=none: fio would otherwise fallocate the file before the
  # clock starts, and on tmpfs that allocates its pages: not a first write.
  fio --name=cold --filename="$SHM_FILE" --size=1G --rw=write --bs=1M --ioengine=psync \
    --fallocate=none --output-format=json >"$tmp/tmpfs-$r.json" 2>&1 || bench_fail "fio on tmpfs failed" "$tmp/tmpfs-$r.json"
  rm -f "$SHM_FILE"
done

python3 - "$tmp" "$ROUNDS" <<'PY'
import json, statistics, sys

tmp, rounds = sys.argv[1], int(sys.argv[2])

def load(name, r):
    with open(f"{tmp}/{name}-{r}.json") as f:
        text = f.read()
    w = json.loads(text[text.index("{"):])["jobs"][0]["write"]
    return w["bw_bytes"] / 2**20, w["iops"]

def row(name, field):
    vals = [load(name, r)[field] for r in range(1, rounds + 1)]
    return statistics.median(vals), min(vals), max(vals)

rows = [
    ("NBD", "cold seq 1M QD8", "coldseq", 0, "MiB/s"),
    ("NBD", "warm seq 1M QD8", "warmseq", 0, "MiB/s"),
    ("NBD", "cold rand 4k QD32", "coldrand", 1, "IOPS"),
]
print()
print(f"{'path':<10} {'job':<18} {'unit':<6} {'blkstack':>9} {'min..max':>13}"
      f" {'anchor':>9} {'min..max':>13} {'ratio':>6}")
res = {}
for path, job, key, field, unit in rows:
    b = row(f"blkstack-{key}", field)
    n = row(f"nbdkit-{key}", field)
    res[key] = (b[0], n[0])
    print(f"{path:<10} {job:<18} {unit:<6} {b[0]:>9,.0f} {b[1]:>6,.0f}..{b[2]:<6,.0f}"
          f" {n[0]:>9,.0f} {n[1]:>6,.0f}..{n[2]:<6,.0f} {b[0] / n[0]:>6.2f}")
i = row("inproc", 0)
t = row("tmpfs", 0)
print(f"{'in process':<10} {'cold seq 1M':<18} {'MiB/s':<6} {i[0]:>9,.0f} {i[1]:>6,.0f}..{i[2]:<6,.0f}"
      f" {t[0]:>9,.0f} {t[1]:>6,.0f}..{t[2]:<6,.0f} {i[0] / t[0]:>6.2f}")
print()
print(f"Medians of {rounds} fresh devices per side. Anchors: nbdkit --threads=1 memory 1G over NBD;")
print("a fresh 1 GiB tmpfs file written by fio (psync) in process.")
print()
cs, ncs = res["coldseq"]
print(f"RESULT cold_seq_mibs={cs:.0f} nbdkit_cold_seq_mibs={ncs:.0f} cold_vs_nbdkit={cs / ncs:.2f}"
      f" inproc_cold_mibs={i[0]:.0f} tmpfs_cold_mibs={t[0]:.0f} inproc_vs_tmpfs={i[0] / t[0]:.2f}")
PY
