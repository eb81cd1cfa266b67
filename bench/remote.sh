#!/usr/bin/env bash
# blkstack's remote drivers beside fio's own engines on the same server,
# the same jobs, one run each:
#   nbd       blkstack bench on nbd:URI (the nbd client driver, libnbd)
#   fio-nbd   fio's nbd engine (libnbd) on the same URI
# both against one nbdkit (--threads=1, the memory plugin, SIZE bytes) on
# a unix socket, prefilled once with 1 MiB sequential writes. The rbd rows
# (the rbd driver beside fio's rbd engine on one image of a throwaway Ceph
# cluster) come from bench/remote-rbd.sh; n/a where it cannot run.
#
# Jobs: 4 KiB random read and write at depth 1 and 32, 1 MiB sequential
# read at depth 8; each time based (RUNTIME s).
#
# Prints a table (IOPS, or GB/s for the 1M row; ratio to fio) and ends with
#   RESULT nbd_iops=N fio_nbd_iops=N nbd_vs_fio=R rbd_iops=N fio_rbd_iops=N rbd_vs_fio=R
# for 4 KiB random reads at depth 32 (n/a where a side did not run).
#
# Usage: bench/remote.sh        (env: JOBS=2 RUNTIME=5 SIZE=1G)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-1G}
bench_setup remote cmake ninja fio python3 nbdkit
bench_build blkstack_cli

NBDKIT_PID=
cleanup() {
  [ -n "$NBDKIT_PID" ] && bench_stop "$NBDKIT_PID"
  rm -rf "$tmp"
}
trap cleanup EXIT

SOCK=$tmp/nbdkit.sock
URI="nbd+unix:///?socket=$SOCK"
nbdkit -U "$SOCK" --pidfile "$tmp/nbdkit.pid" --threads=1 memory "$SIZE" \
  >"$tmp/nbdkit.log" 2>&1 || bench_fail "nbdkit did not start" "$tmp/nbdkit.log"
bench_wait nbdkit "$tmp/nbdkit.log" test -s "$tmp/nbdkit.pid"
NBDKIT_PID=$(cat "$tmp/nbdkit.pid")

echo "remote: prefilling $SIZE"
fio --name=prefill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --iodepth=8 \
  --output-format=json >"$tmp/prefill.json" 2>&1 ||
  bench_fail "prefill failed" "$tmp/prefill.json"

source bench/remote-cases.sh

# run SIDE NAME OPTS: one job, its JSON in $tmp/SIDE-NAME.json.
run() {
  local side=$1 name=$2 opts=$3 out="$tmp/$1-$2.json"
  local common="--name=$name $opts --time_based --runtime=$RUNTIME --output-format=json"
  echo "remote: $side $name"
  case $side in
    nbd)
      # shellcheck disable=SC2086
      "$BUILD/blkstack" bench --filename="nbd:$URI" --direct=1 $common >"$out" 2>&1 ||
        bench_fail "blkstack bench failed ($name)" "$out" ;;
    fio-nbd)
      # shellcheck disable=SC2086
      fio --ioengine=nbd --uri="$URI" $common >"$out" 2>&1 ||
        bench_fail "fio failed ($name)" "$out" ;;
  esac
}

for c in "${CASES[@]}"; do
  name=${c%%|*}
  opts=${c#*|}
  for side in nbd fio-nbd; do run "$side" "$name" "$opts"; done
done

# --- rbd rows: the rbd driver beside fio's rbd engine on one image, by
# bench/remote-rbd.sh (its own throwaway Ceph cluster), which leaves its
# jobs' JSON here as rbd-NAME.json and fio-rbd-NAME.json.
RBD="not run: $BUILD/blkstack has no rbd driver (librbd-dev)"
if "$BUILD/blkstack" disk --types 2>/dev/null | grep -q '^rbd:'; then
  if ! command -v ceph-mon >/dev/null || ! command -v ceph-osd >/dev/null; then
    RBD="not run: no ceph-mon/ceph-osd (scripts/install-deps.sh)"
  elif RUNTIME=$RUNTIME RESULT_DIR=$tmp bench/remote-rbd.sh >"$tmp/rbd.log" 2>&1; then
    RBD="bench/remote-rbd.sh, one memstore OSD (rbd-nbd not run: no nbd module)"
  else
    tail -5 "$tmp/rbd.log" >&2
    RBD="bench/remote-rbd.sh failed"
  fi
fi

python3 - "$tmp" "$RBD" "${CASES[@]%%|*}" <<'PY'
import json, sys
tmp, rbd, names = sys.argv[1], sys.argv[2], sys.argv[3:]

def iops(side, name):
    try:
        text = open(f"{tmp}/{side}-{name}.json").read()
        job = json.loads(text[text.index("{"):])["jobs"][0]  # fio may print notes first
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return job["read"]["iops"] + job["write"]["iops"]

def show(name, v):
    if v is None:
        return "n/a"
    return f"{v * 1048576 / 1e9:.2f} GB/s" if name == "seq1m" else f"{v:.0f}"

labels = {"rr1": "4k randread QD1", "rr32": "4k randread QD32", "rw1": "4k randwrite QD1",
          "rw32": "4k randwrite QD32", "seq1m": "1M read QD8"}
print("| job | nbd driver | fio nbd | vs fio | rbd driver | fio rbd | vs fio |")
print("|---|---|---|---|---|---|---|")
for n in names:
    a, f = iops("nbd", n), iops("fio-nbd", n)
    ratio = f"{a / f:.2f}" if a and f else "n/a"
    r, g = iops("rbd", n), iops("fio-rbd", n)
    rratio = f"{r / g:.2f}" if r and g else "n/a"
    print(f"| {labels[n]} | {show(n, a)} | {show(n, f)} | {ratio} | {show(n, r)} | {show(n, g)}"
          f" | {rratio} |")
print("nbd: blkstack bench --direct=1 on nbd:URI (one connection, bio-based);"
      " fio-nbd: fio --ioengine=nbd; one nbdkit --threads=1 memory; rbd: " + rbd + ".")
a, f = iops("nbd", "rr32"), iops("fio-nbd", "rr32")
fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
ratio = f"{a / f:.3f}" if a and f else "n/a"
r, g = iops("rbd", "rr32"), iops("fio-rbd", "rr32")
rratio = f"{r / g:.3f}" if r and g else "n/a"
print(f"RESULT nbd_iops={fmt(a)} fio_nbd_iops={fmt(f)} nbd_vs_fio={ratio}"
      f" rbd_iops={fmt(r)} fio_rbd_iops={fmt(g)} rbd_vs_fio={rratio}")
PY
