#!/usr/bin/env bash
# The file driver against the kernel's own paths to the same file, in one
# run: for a file in /dev/shm and a file on disk (/var/tmp), each job runs
#   blkstack  blkstack bench on file:IMG (io_uring, O_DIRECT, one poll
#             queue, --hipri: the bench thread reaps its own ring)
#   fio       fio --ioengine=io_uring --direct=1 on the file itself
#   loop      the same fio job on a kernel loop device over the file
#             (losetup --direct-io=on), the loop driver blkstack's file
#             driver is the user-space twin of
# Jobs: 4 KiB random read and random write at depth 1 and 32, 1 MiB
# sequential read at depth 8. One thread, time based, RUNS runs per side
# (sides alternating), medians.
#
# Ends with the headline (4 KiB random read, depth 32, the /dev/shm file):
#   RESULT blkstack_iops=N fio_iops=N loop_iops=N vs_fio=R vs_loop=R
#
# Usage: bench/file-vs-fio.sh     (env: RUNS=3 RUNTIME=3 SIZE=512M JOBS=2)
# Needs root for the loop device; without one the loop column says so.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-3}
SIZE=${SIZE:-512M}
bench_setup file-vs-fio cmake ninja fio python3 losetup
bench_build blkstack_cli

declare -A IMG=([shm]=/dev/shm/blkstack-file-vs-fio.img [disk]=/var/tmp/blkstack-file-vs-fio.img)
declare -A LOOP=()
cleanup() {
  for dev in "${LOOP[@]}"; do losetup -d "$dev" 2>/dev/null || true; done
  rm -f "${IMG[@]}"
  rm -rf "$tmp"
}
trap cleanup EXIT

for where in shm disk; do
  echo "file-vs-fio: writing $SIZE of random data to ${IMG[$where]}"
  head -c "$SIZE" /dev/urandom >"${IMG[$where]}"
  if dev=$(losetup -f --show --direct-io=on "${IMG[$where]}" 2>"$tmp/losetup.log"); then
    LOOP[$where]=$dev
  else
    echo "file-vs-fio: no loop device for $where ($(cat "$tmp/losetup.log")); its column stays empty"
  fi
done

# name|fio options shared by all three sides
CASES=(
  "rr-qd1|--rw=randread --bs=4k --iodepth=1"
  "rr-qd32|--rw=randread --bs=4k --iodepth=32"
  "rw-qd1|--rw=randwrite --bs=4k --iodepth=1"
  "rw-qd32|--rw=randwrite --bs=4k --iodepth=32"
  "seq-1m|--rw=read --bs=1M --iodepth=8"
)

run_side() {  # WHERE SIDE NAME RUN OPTS
  local where=$1 side=$2 name=$3 i=$4 opts=$5 out="$tmp/$1-$2-$3-$4.json"
  local common="--name=$name $opts --time_based --runtime=$RUNTIME --output-format=json"
  case $side in
    blkstack)
      # shellcheck disable=SC2086
      "$BUILD/blkstack" bench --filename="file:${IMG[$where]},poll_queues=1" --direct=1 --hipri=1 \
        $common >"$out" 2>&1 || bench_fail "blkstack bench failed ($where $name)" "$out" ;;
    fio)
      # shellcheck disable=SC2086
      fio --ioengine=io_uring --direct=1 --filename="${IMG[$where]}" $common >"$out" 2>&1 ||
        bench_fail "fio failed ($where $name)" "$out" ;;
    loop)
      [ -n "${LOOP[$where]:-}" ] || return 0
      # shellcheck disable=SC2086
      fio --ioengine=io_uring --direct=1 --filename="${LOOP[$where]}" $common >"$out" 2>&1 ||
        bench_fail "fio on ${LOOP[$where]} failed ($where $name)" "$out" ;;
  esac
}

echo "file-vs-fio: ${#CASES[@]} jobs x 2 files x 3 sides, $RUNS runs of ${RUNTIME}s each"
for i in $(seq 1 "$RUNS"); do
  for where in shm disk; do
    for c in "${CASES[@]}"; do
      IFS='|' read -r name opts <<<"$c"
      for side in blkstack fio loop; do run_side "$where" "$side" "$name" "$i" "$opts"; done
    done
  done
done

python3 - "$tmp" "$RUNS" "${CASES[@]}" <<'PY'
import json, os, statistics, sys

tmp, runs, cases = sys.argv[1], int(sys.argv[2]), [c.split("|", 1)[0] for c in sys.argv[3:]]
sides = ("blkstack", "fio", "loop")

def figure(where, side, name):
    """Median IOPS (or MB/s for the 1 MiB job) over the runs, or None."""
    vals = []
    for i in range(1, runs + 1):
        path = f"{tmp}/{where}-{side}-{name}-{i}.json"
        if not os.path.exists(path):
            return None
        text = open(path).read()
        job = json.loads(text[text.index("{"):])["jobs"][0]  # fio may print notes first
        d = job["read"] if job["read"]["total_ios"] > 0 else job["write"]
        vals.append(d["bw_bytes"] / 1e6 if name.startswith("seq") else d["iops"])
    return statistics.median(vals)

def fmt(v, name):
    if v is None:
        return "—"
    return f"{v:,.0f} MB/s" if name.startswith("seq") else f"{v / 1000:,.1f}k"

print()
print(f"| file | job | blkstack | fio io_uring direct | kernel loop | vs fio | vs loop |")
print(f"|---|---|---|---|---|---|---|")
head = None
for where in ("shm", "disk"):
    for name in cases:
        b, f, l = (figure(where, s, name) for s in sides)
        vf = b / f if b and f else None
        vl = b / l if b and l else None
        print(f"| {where} | {name} | {fmt(b, name)} | {fmt(f, name)} | {fmt(l, name)} |"
              f" {'—' if vf is None else f'{vf:.2f}'} | {'—' if vl is None else f'{vl:.2f}'} |")
        if where == "shm" and name == "rr-qd32":
            head = (b, f, l, vf, vl)
print()
print("Medians of the runs, one thread per side. rr/rw: 4 KiB random read/write; seq-1m:")
print("1 MiB sequential read at depth 8. shm: a file in /dev/shm; disk: a file in /var/tmp.")
print("blkstack: file:IMG,poll_queues=1 with --direct=1 --hipri=1.")
print()
b, f, l, vf, vl = head
print(f"RESULT blkstack_iops={b:.0f} fio_iops={f:.0f} loop_iops={l or 0:.0f}"
      f" vs_fio={vf or 0:.2f} vs_loop={vl or 0:.2f}")
PY
