#!/usr/bin/env bash
# The rbd driver beside fio's own rbd engine on one image of a throwaway
# one-node Ceph cluster (scripts/ceph-up.sh: one monitor, one memstore OSD
# on 127.0.0.1), the same jobs, one run each, and `rbd bench` (librbd's own
# load generator, 16 threads) as a further row. rbd-nbd cannot run here:
# it needs the kernel's nbd module, which these machines do not have.
#   rbd       blkstack bench on rbd:rbd/bench (librbd, request-based)
#   fio-rbd   fio --ioengine=rbd on the same image
# The image (SIZE) is written in full first, so reads find data.
#
# Jobs: 4 KiB random read and write at depth 1 and 32, 1 MiB sequential
# read at depth 8; each time based (RUNTIME s). Prints a table (IOPS, or
# GB/s for the 1M row; ratio to fio) and ends with
#   RESULT rbd_iops=N fio_rbd_iops=N rbd_vs_fio=R
# for 4 KiB random reads at depth 32. bench/remote.sh reads that line for
# its rbd rows.
#
# Usage: bench/remote-rbd.sh        (env: JOBS=2 RUNTIME=5 SIZE=512M;
#        RESULT_DIR=DIR keeps the jobs' JSON there, as bench/remote.sh asks)
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-512M}
bench_setup remote-rbd cmake ninja fio python3 ceph-mon ceph-osd rbd
fio --enghelp 2>/dev/null | grep -qw rbd || bench_fail "this fio has no rbd engine"
bench_build blkstack_cli
"$BUILD/blkstack" disk --types 2>/dev/null | grep -q '^rbd:' ||
  bench_fail "$BUILD/blkstack has no rbd driver (librbd-dev missing at configure time)"

export CEPH_DIR=$tmp/cluster CEPH_CONF=$tmp/cluster/ceph.conf
trap 'FAST=1 scripts/ceph-down.sh; rm -rf "$tmp"' EXIT
MON_PORT=${MON_PORT:-46800} MEM_BYTES=$((2 << 30)) scripts/ceph-up.sh >"$tmp/up.log" 2>&1 ||
  bench_fail "ceph-up.sh failed" "$tmp/up.log"
rbd create --size "$SIZE" rbd/bench
echo "remote-rbd: prefilling $SIZE"
fio --name=prefill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench \
  --rw=write --bs=1M --iodepth=8 --output-format=json >"$tmp/prefill.json" 2>&1 ||
  bench_fail "prefill failed" "$tmp/prefill.json"

source bench/remote-cases.sh

run() {
  local side=$1 name=$2 opts=$3 out="$tmp/$1-$2.json"
  local common="--name=$name $opts --time_based --runtime=$RUNTIME --output-format=json"
  echo "remote-rbd: $side $name"
  case $side in
    rbd)
      # shellcheck disable=SC2086
      "$BUILD/blkstack" bench --filename=rbd:rbd/bench --direct=1 $common >"$out" 2>&1 ||
        bench_fail "blkstack bench failed ($name)" "$out" ;;
    fio-rbd)
      # shellcheck disable=SC2086
      fio --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench $common \
        >"$out" 2>&1 || bench_fail "fio failed ($name)" "$out" ;;
  esac
}

for c in "${CASES[@]}"; do
  for side in rbd fio-rbd; do run "$side" "${c%%|*}" "${c#*|}"; done
done
[ -n "${RESULT_DIR:-}" ] && cp "$tmp"/rbd-*.json "$tmp"/fio-rbd-*.json "$RESULT_DIR"/
echo "remote-rbd: rbd bench (4k randread, 16 threads)"
timeout $((RUNTIME * 10 + 60)) rbd bench --io-type read --io-pattern rand --io-size 4K \
  --io-threads 16 --io-total $((RUNTIME * 20))M rbd/bench >"$tmp/rbd-bench.txt" 2>&1 ||
  bench_fail "rbd bench failed" "$tmp/rbd-bench.txt"

python3 - "$tmp" "${CASES[@]%%|*}" <<'PY'
import json, re, sys
tmp, names = sys.argv[1], sys.argv[2:]

def iops(side, name):
    try:
        text = open(f"{tmp}/{side}-{name}.json").read()
        job = json.loads(text[text.index("{"):])["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return job["read"]["iops"] + job["write"]["iops"]

def show(name, v):
    if v is None:
        return "n/a"
    return f"{v * 1048576 / 1e9:.2f} GB/s" if name == "seq1m" else f"{v:.0f}"

labels = {"rr1": "4k randread QD1", "rr32": "4k randread QD32", "rw1": "4k randwrite QD1",
          "rw32": "4k randwrite QD32", "seq1m": "1M read QD8"}
print("| job | rbd driver | fio rbd | vs fio |")
print("|---|---|---|---|")
for n in names:
    a, f = iops("rbd", n), iops("fio-rbd", n)
    ratio = f"{a / f:.2f}" if a and f else "n/a"
    print(f"| {labels[n]} | {show(n, a)} | {show(n, f)} | {ratio} |")
m = re.search(r"ops/sec:\s*([\d.]+)", open(f"{tmp}/rbd-bench.txt").read())
print(f"| 4k randread, rbd bench 16 threads | | {m.group(1) if m else 'n/a'} | |")
print("rbd: blkstack bench --direct=1 on rbd:rbd/bench; fio-rbd: fio --ioengine=rbd;"
      " one memstore OSD; rbd-nbd: not run (no nbd module here).")
a, f = iops("rbd", "rr32"), iops("fio-rbd", "rr32")
fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
ratio = f"{a / f:.3f}" if a and f else "n/a"
print(f"RESULT rbd_iops={fmt(a)} fio_rbd_iops={fmt(f)} rbd_vs_fio={ratio}")
PY
