#!/usr/bin/env bash
# Busy bio-based devices behind the FUSE export (seed 000, docs/drivers.md
# "When the driver is full"): fio at depth 128 (libaio, direct) on the
# files of RAM disks that take 1, 2 and 64 bios at a time (bio_depth=): a
# verified random write and a mixed job with fsync; no job may see an
# error.
source "$(dirname "$0")/fuse_lib.sh" "$@"
fuse_require fio python3

# check_py DESC JSON_FILE CODE: CODE asserts on d, the parsed file.
check_py() {
  check "$1" python3 -c "import json,sys; d=json.load(open(sys.argv[1]))
$3" "$2"
}

fuse_start d1=ram:64M,bio_depth=1 d2=ram:64M,bio_depth=2 d64=ram:64M,bio_depth=64
for d in d1 d2 d64; do
  check "$d: verified randwrite at QD128" \
    fio --ioengine=libaio --direct=1 --filename="$MNT/$d" --output-format=json --name=v \
      --rw=randwrite --bs=4k --iodepth=128 --size=16M --verify=crc32c --verify_fatal=1 \
      --do_verify=1
  check_py "$d: no errors, every block verified" "$OUT" '
j = d["jobs"][0]
assert j["error"] == 0, j["error"]
assert j["read"]["io_bytes"] == 16 << 20, j["read"]["io_bytes"]'
  check "$d: randrw with fsync at QD128" \
    fio --ioengine=libaio --direct=1 --filename="$MNT/$d" --output-format=json --name=m \
      --rw=randrw --bsrange=4k-64k --iodepth=128 --fsync=16 --size=32M --time_based \
      --runtime=2
  check_py "$d: no errors, I/O done" "$OUT" '
j = d["jobs"][0]
assert j["error"] == 0, j["error"]'
done
fuse_stop
finish
